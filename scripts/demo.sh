#!/usr/bin/env bash
# Brings up Kairos on this machine: installs what is missing, starts a local broker and the four
# services, applies the example jobs and shows their first runs. The stack keeps running;
# scripts/down.sh stops it. Ports can be moved with KAIROS_BROKER_PORT and KAIROS_HTTP_PORT.
source "$(dirname "$0")/lib.sh"
cd "$KAIROS_ROOT"

broker_port="${KAIROS_BROKER_PORT:-9092}"
http_port="${KAIROS_HTTP_PORT:-8080}"
export KAIROS_BROKERS="127.0.0.1:$broker_port"
export KAIROS_API="http://127.0.0.1:$http_port"
bin="$CARGO_TARGET_DIR/debug"

ensure_packages
ensure_nisshi
log "Building Kairos (the first build compiles RocksDB and librdkafka: several minutes)"
cargo build --quiet --bins

scripts/broker.sh start "$broker_port"
log "Creating topics"
"$bin/kairosctl" topics apply

mkdir -p "$KAIROS_RUN/pids" "$KAIROS_RUN/logs" "$KAIROS_RUN/data" "$KAIROS_RUN/keys"
# The demo signs what it defines: the worker runs only job definitions signed by this key.
if [ ! -f "$KAIROS_RUN/keys/demo.key" ]; then
  log "Generating the demo's signing key"
  "$bin/kairosctl" keys generate "$KAIROS_RUN/keys/demo"
fi
export KAIROS_SIGNING_KEY="$KAIROS_RUN/keys/demo.key"
start() {
  local name=$1; shift
  local pidfile="$KAIROS_RUN/pids/$name.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    log "$name already running (pid $(cat "$pidfile"))"; return
  fi
  env "$@" nohup "$bin/kairos-$name" >"$KAIROS_RUN/logs/$name.log" 2>&1 &
  echo $! > "$pidfile"
  log "Started $name (pid $!, log .kairos/logs/$name.log)"
}
start trigger    KAIROS_DATA_DIR="$KAIROS_RUN/data/trigger"
start dispatcher KAIROS_DATA_DIR="$KAIROS_RUN/data/dispatcher"
start worker     KAIROS_WORKER_POLICY="$KAIROS_ROOT/deploy/worker-policy.yaml" KAIROS_TRUSTED_KEYS="$KAIROS_RUN/keys/demo.pub"
start aggregator KAIROS_DATA_DIR="$KAIROS_RUN/data/aggregator" KAIROS_HTTP_ADDR="127.0.0.1:$http_port"
wait_for_port "$http_port" "the aggregator"

log "Applying the example jobs"
"$bin/kairosctl" job apply $(printf -- '-f %s ' examples/*.yaml)

log "Waiting for the first runs of 'heartbeat' (every 2 s)"
deadline=$((SECONDS + 60))
until [ "$(curl -fsS "$KAIROS_API/api/v1/jobs/heartbeat/runs?limit=50" 2>/dev/null | grep -o '"status":"succeeded"' | wc -l)" -ge 3 ]; do
  [ $SECONDS -lt $deadline ] || die "no successful runs after 60 s; see .kairos/logs/"
  sleep 1
done
"$bin/kairosctl" runs list heartbeat --limit 5
echo
"$bin/kairosctl" job list
cat <<EOT

Kairos is running:
  status page   $KAIROS_API/
  REST API      $KAIROS_API/api/v1/jobs        (try: curl $KAIROS_API/api/v1/jobs/heartbeat/runs?limit=3)
  OpenAPI       $KAIROS_API/api/v1/openapi.json
  metrics       http://127.0.0.1:9401/metrics (trigger), :9402 dispatcher, :9403 worker, :9404 aggregator
  CLI           $bin/kairosctl runs list heartbeat
  logs          .kairos/logs/
Stop everything with scripts/down.sh
EOT
