#!/usr/bin/env bash
# The local Nisshi broker: install, start, stop, status.
#   scripts/broker.sh install          build nisshi into the cache if missing
#   scripts/broker.sh start [PORT]     start on 127.0.0.1:PORT (default 9092), data under .kairos/broker
#   scripts/broker.sh stop | status
source "$(dirname "$0")/lib.sh"

dir="$KAIROS_RUN/broker"
pidfile="$dir/nisshi.pid"

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "${1:-}" in
  install)
    ensure_packages
    ensure_nisshi
    ;;
  start)
    port="${2:-9092}"
    ensure_packages
    ensure_nisshi
    if running; then
      [ "$(cat "$dir/port")" = "$port" ] || die "a broker is already running on port $(cat "$dir/port"); stop it with scripts/broker.sh stop, or use KAIROS_BROKER_PORT=$(cat "$dir/port")"
      log "Broker already running (pid $(cat "$pidfile"), port $port)"; exit 0
    fi
    mkdir -p "$dir" "$KAIROS_RUN/logs"
    echo "$port" > "$dir/port"
    # Nisshi's sqlite path is relative to its working directory.
    (cd "$dir" && exec nohup nisshi broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "sqlite://nisshi.db" >"$KAIROS_RUN/logs/broker.log" 2>&1) &
    echo $! > "$pidfile"
    wait_for_port "$port" "the broker"
    log "Broker listening on 127.0.0.1:$port (pid $(cat "$pidfile"))"
    ;;
  stop)
    if running; then kill "$(cat "$pidfile")"; log "Broker stopped"; fi
    rm -f "$pidfile"
    ;;
  status)
    if running; then echo "running on 127.0.0.1:$(cat "$dir/port") (pid $(cat "$pidfile"))"; else echo "stopped"; exit 1; fi
    ;;
  *)
    echo "usage: $0 install | start [PORT] | stop | status" >&2; exit 2 ;;
esac
