#!/usr/bin/env bash
# Installs what is missing and runs the whole test suite: unit and property tests, then the
# integration tests against a real Nisshi broker started here on a free port and stopped after.
source "$(dirname "$0")/lib.sh"
cd "$KAIROS_ROOT"

ensure_packages
ensure_nisshi
ensure_chromium
ensure_oracles
started=$SECONDS

log "Building"
cargo build --workspace --all-targets --quiet

# A broker of its own, so a running demo is never touched.
broker_dir="$(mktemp -d "${TMPDIR:-/tmp}/kairos-test-broker.XXXXXX")"
port="$(free_port)"
(cd "$broker_dir" && exec nisshi broker \
    --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "sqlite://nisshi.db" >"$broker_dir/broker.log" 2>&1) &
broker_pid=$!
cleanup() { kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; rm -rf "$broker_dir"; }
trap cleanup EXIT
wait_for_port "$port" "the test broker"
export KAIROS_TEST_BROKERS="127.0.0.1:$port"
export KAIROS_TEST_BIN_DIR="$CARGO_TARGET_DIR/debug"
export KAIROS_TEST_CHROMIUM="$(command -v chromium)"
export KAIROS_TEST_PYTHON="$KAIROS_VENV/bin/python"
export KAIROS_TEST_QUARTZ_CLASSPATH="$QUARTZ_CLASSPATH"

log "Running the tests (broker on $KAIROS_TEST_BROKERS)"
status=0
# No doc tests (there are none). pipefail makes cargo's failure the status; tee keeps the output
# so the totals can be summed. --no-fail-fast: one failing test binary must not hide the others.
cargo test --workspace --lib --bins --tests --no-fail-fast -- --test-threads 2 2>&1 | tee "$broker_dir/test.log" || status=$?
if [ $status -ne 0 ]; then
  echo "--- last lines of the broker log ---" >&2
  tail -n 30 "$broker_dir/broker.log" >&2 || true
fi
log "Test suite finished in $((SECONDS - started)) s (exit $status)"
# One closing line with the totals of every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$broker_dir/test.log"
exit $status
