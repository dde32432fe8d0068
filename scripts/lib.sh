# Shared by the scripts: where things are cached, and how missing tools get installed.
# Sourced, not run. Everything installed goes under $KAIROS_CACHE (outside the clone), so repeated
# runs are fast; nothing here assumes the cache exists.

set -euo pipefail

KAIROS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAIROS_CACHE="${KAIROS_CACHE:-$HOME/.cache/kairos}"
KAIROS_TOOLS="$KAIROS_CACHE/tools"
KAIROS_RUN="${KAIROS_RUN:-$KAIROS_ROOT/.kairos}"   # pids, logs, data of the local stack
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KAIROS_CACHE/target}"
export PATH="$KAIROS_TOOLS/bin:$HOME/.cargo/bin:$PATH"

NISSHI_VERSION="0.8.1"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages the build needs: libclang for RocksDB's bindings, OpenSSL headers for
# librdkafka's TLS support, a C/C++ toolchain, and curl for the health checks.
ensure_packages() {
  local missing=()
  [ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || missing+=(libclang-dev)
  dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  command -v g++ >/dev/null || missing+=(g++)
  command -v make >/dev/null || missing+=(make)
  command -v curl >/dev/null || missing+=(curl)
  # The independent implementation the signing keys and signatures are tested against.
  command -v openssl >/dev/null || missing+=(openssl)
  if [ ${#missing[@]} -gt 0 ]; then
    log "Installing Debian packages: ${missing[*]}"
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || die "cargo is not installed; install Rust from https://rustup.rs"
}

# Headless Chromium, for the test that renders the aggregator's status page as a browser does.
ensure_chromium() {
  command -v chromium >/dev/null && return
  log "Installing Chromium (Debian package) for the status page test"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
}

# The independent implementations the tests compare Kairos with (test-only): croniter, fastavro,
# the official avro library, and kafka-python for the shipped Python client (PyPI, pinned) in a virtualenv of its own, and Quartz's CronExpression (Debian's
# libquartz2-java) on a headless JDK.
CRONITER_VERSION="7.0.0"
FASTAVRO_VERSION="1.13.1"
KAFKA_PYTHON_VERSION="3.0.12"
AVRO_VERSION="1.12.2"
# The property-based tester the REST API is checked with against its OpenAPI document.
SCHEMATHESIS_VERSION="4.32.5"
KAIROS_VENV="$KAIROS_CACHE/venv"
QUARTZ_CLASSPATH="/usr/share/java/quartz2.jar"
ensure_oracles() {
  local wanted="import importlib.metadata as m, sys
sys.exit(m.version('croniter') != '$CRONITER_VERSION' or m.version('fastavro') != '$FASTAVRO_VERSION'
         or m.version('kafka-python') != '$KAFKA_PYTHON_VERSION' or m.version('avro') != '$AVRO_VERSION'
         or m.version('schemathesis') != '$SCHEMATHESIS_VERSION')"
  if ! "$KAIROS_VENV/bin/python" -c "$wanted" 2>/dev/null; then
    log "Installing croniter, fastavro, avro, kafka-python and schemathesis into $KAIROS_VENV (test oracles and the Python client)"
    python3 -m venv "$KAIROS_VENV"
    "$KAIROS_VENV/bin/pip" install --quiet --disable-pip-version-check \
      "croniter==$CRONITER_VERSION" "fastavro==$FASTAVRO_VERSION" "kafka-python==$KAFKA_PYTHON_VERSION" \
      "avro==$AVRO_VERSION" "schemathesis==$SCHEMATHESIS_VERSION"
  fi
  local missing=()
  # javac too: the oracle runs as a single source file, which needs the JDK's compiler module.
  command -v javac >/dev/null || missing+=(default-jdk-headless)
  [ -e "$QUARTZ_CLASSPATH" ] || missing+=(libquartz2-java)
  if [ ${#missing[@]} -gt 0 ]; then
    log "Installing Debian packages for the Quartz oracle: ${missing[*]}"
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The peer benchmark (scripts/bench/peer.sh): Debian's redis-server, and BullMQ with its Redis
# client from the npm registry, pinned by scripts/bench/bullmq/package-lock.json and installed
# under $KAIROS_CACHE (peer.mjs loads them from $BULLMQ_DIR), so the clone stays clean.
BULLMQ_DIR="$KAIROS_CACHE/bullmq"
ensure_redis() {
  command -v redis-server >/dev/null && return
  log "Installing redis-server (Debian package) for the peer benchmark"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
}
ensure_bullmq() {
  local src="$KAIROS_ROOT/scripts/bench/bullmq"
  command -v npm >/dev/null || die "node and npm are needed for the peer benchmark"
  if [ -d "$BULLMQ_DIR/node_modules" ] && cmp -s "$src/package-lock.json" "$BULLMQ_DIR/package-lock.json"; then
    return
  fi
  log "Installing BullMQ ($src/package-lock.json) into $BULLMQ_DIR"
  mkdir -p "$BULLMQ_DIR"
  cp "$src/package.json" "$src/package-lock.json" "$BULLMQ_DIR/"
  # A half-done install must not pass the check above next time.
  (cd "$BULLMQ_DIR" && npm ci --no-audit --no-fund --loglevel=error </dev/null >&2) \
    || { rm -rf "$BULLMQ_DIR/node_modules"; die "npm ci failed in $BULLMQ_DIR"; }
}

# The Kafka-protocol broker for local runs and tests (about 18 minutes to build the first time).
ensure_nisshi() {
  if [ -x "$KAIROS_TOOLS/bin/nisshi" ] && "$KAIROS_TOOLS/bin/nisshi" --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then
    return
  fi
  log "Installing nisshi $NISSHI_VERSION into $KAIROS_TOOLS (first run only; takes a while)"
  mkdir -p "$KAIROS_TOOLS"
  cargo install "nisshi@$NISSHI_VERSION" --locked --ignore-rust-version \
    --no-default-features --features libsql,dynostore --root "$KAIROS_TOOLS"
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until a TCP port accepts connections.
wait_for_port() {
  local port=$1 what=$2 deadline=$((SECONDS + ${3:-60}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$what did not open port $port in time (see $KAIROS_RUN/logs)"
    sleep 0.2
  done
}
