#!/usr/bin/env bash
# The benchmark harness: builds the services in release mode, starts a broker of its own, and
# measures the broker's ceiling, end-to-end throughput, firing precision, a million-job rebuild
# and recovery after kill -9 (see tests/src/bench.rs).
#   scripts/bench.sh [kairos-bench options]     e.g. --only precision,scale  --scale-jobs 200000
# Figures go to stdout and to bench/results/bench-<date>.{json,md}; a full run (no --only, no
# --smoke) also replaces the table in README.md.
source "$(dirname "$0")/lib.sh"
cd "$KAIROS_ROOT"

ensure_packages
ensure_nisshi
log "Building (release)"
cargo build --release --workspace --bins --quiet
export KAIROS_TEST_BIN_DIR="$CARGO_TARGET_DIR/release"
export KAIROS_BENCH_COMMIT="$(git describe --always --dirty 2>/dev/null || echo unknown)"
mkdir -p bench/results
out="bench/results/bench-$(date -u +%Y%m%dT%H%MZ)"
readme=()
case " $* " in
  *" --only"*|*" --smoke "*) ;;
  *) readme=(--readme README.md) ;;
esac
# The peer, BullMQ on Redis, in the same shapes and the same run (unless KAIROS_BENCH_PEER=0 or
# --only names neither precision nor throughput): Kairos's figures are reported beside it.
peer=()
want_peer="${KAIROS_BENCH_PEER:-1}"
case " $* " in
  *" --only"*precision*|*" --only"*throughput*) ;;
  *" --only"*) want_peer=0 ;;
esac
if [ "$want_peer" != 0 ]; then
  case " $* " in
    *" --smoke "*) peer_args=(--smoke) ;;
    *) peer_args=() ;;
  esac
  if "$KAIROS_ROOT/scripts/bench/peer.sh" --out "$out.peer.json" "${peer_args[@]}" >/dev/null; then
    peer=(--peer "$out.peer.json")
  else
    log "The peer benchmark failed; reporting Kairos alone"
  fi
fi
log "Running the benchmark (report: $out.json, $out.md)"
RUST_LOG="${RUST_LOG:-warn}" "$KAIROS_TEST_BIN_DIR/kairos-bench" --nisshi "$(command -v nisshi)" \
  --out "$out" "${readme[@]}" "${peer[@]}" "$@"
