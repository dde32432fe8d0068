#!/usr/bin/env bash
# The fault-injection suite, long form: builds the services, starts a broker of its own, runs a
# steady load of jobs while killing a random service instance (kill -9) again and again and
# restarting the broker once, then checks the ledger and rebuilds each stateful service.
#   scripts/chaos.sh [kairos-chaos options]     e.g. --jobs 30 --load 10m --seed 42
# Figures go to stdout and, as JSON, to bench/results/chaos-<date>.json.
source "$(dirname "$0")/lib.sh"
cd "$KAIROS_ROOT"

ensure_packages
ensure_nisshi
log "Building"
cargo build --workspace --bins --quiet
export KAIROS_TEST_BIN_DIR="$CARGO_TARGET_DIR/debug"
mkdir -p bench/results
report="bench/results/chaos-$(date -u +%Y%m%dT%H%M%SZ).json"
log "Running the chaos suite (report: $report)"
"$KAIROS_TEST_BIN_DIR/kairos-chaos" --nisshi "$(command -v nisshi)" --report "$report" "$@"
