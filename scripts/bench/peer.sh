#!/usr/bin/env bash
# The peer benchmark: BullMQ on Redis, measured in the shapes of Kairos's precision and
# throughput scenarios (scripts/bench/bullmq/peer.mjs), so Kairos's figures can be set beside it.
#   scripts/bench/peer.sh [--out FILE] [peer.mjs options]
#     e.g. --smoke    or    --precision-rates 1000,200 --precision-span 10 --throughput-step 15
# Starts a Redis of its own on a free port, with an append-only file fsynced every second (a
# durable setup, as Kairos's ledger is), and stops it on exit. The JSON goes to stdout and FILE.
# KAIROS_PEER_REDIS_ARGS adds redis-server options, e.g. "--hz 100" (see peer.mjs on hz).
source "$(dirname "$0")/../lib.sh"

out=""
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    *) pass+=("$1"); shift ;;
  esac
done
[ -z "$out" ] || out="$(realpath -m "$out")"   # relative to the caller's directory
cd "$KAIROS_ROOT"

ensure_redis
ensure_bullmq

dir="$(mktemp -d "${TMPDIR:-/tmp}/kairos-peer.XXXXXX")"
port="$(free_port)"
redis_pid=""
stop() {
  [ -z "$redis_pid" ] || { kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null || true; }
  rm -rf "$dir"
}
trap stop EXIT

# No config file: Redis's defaults, except the append-only file, and no RDB snapshots (their
# forks would land in the middle of a measurement; the AOF is the durability here).
log "Starting redis-server on 127.0.0.1:$port (data in $dir)"
redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save "" \
  --appendonly yes --appendfsync everysec --logfile "$dir/redis.log" ${KAIROS_PEER_REDIS_ARGS:-} </dev/null &
redis_pid=$!
wait_for_port "$port" "redis-server" 30

log "Running BullMQ peer benchmark"
result="$(BULLMQ_DIR="$BULLMQ_DIR" node scripts/bench/bullmq/peer.mjs --redis-port "$port" "${pass[@]}" </dev/null)" \
  || { tail -n 20 "$dir/redis.log" >&2; die "peer.mjs failed"; }
if [ -n "$out" ]; then
  mkdir -p "$(dirname "$out")"
  printf '%s\n' "$result" > "$out"
  log "Wrote $out"
fi
printf '%s\n' "$result"
