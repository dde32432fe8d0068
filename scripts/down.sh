#!/usr/bin/env bash
# Stops what scripts/demo.sh started: the four services, then the broker. Data stays in .kairos/
# (delete it for a clean start).
source "$(dirname "$0")/lib.sh"
for pidfile in "$KAIROS_RUN"/pids/*.pid; do
  [ -e "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "Stopped $(basename "$pidfile" .pid)"
  fi
  rm -f "$pidfile"
done
"$(dirname "$0")/broker.sh" stop
