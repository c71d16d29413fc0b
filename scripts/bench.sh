#!/usr/bin/env bash
# Benchmarks this tree against a baseline built in the same run, the server pinned to CPU 0 and
# the load generator (always this tree's `roost sim`) to CPU 1.
#
#   scripts/bench.sh [BASE_REF]          # default BASE_REF: main
#
# Environment: BENCH_DIR (scratch, default /tmp/roost-bench), ROUNDS (default 2: base, new,
# base, new), HOLD (held subscribes, default 10000), SKIP_BUILD=1 (reuse the binaries in
# BENCH_DIR), FLEET_MINUTES (if set, also runs `sim fleet` for that long against this tree),
# STEER_RX=1 (as root: the kernel's receive work for loopback runs on CPU 1, the load
# generator's, as it would on the client machines of a real network; restored on exit).
# Figures on a shared machine are noisy: compare the two columns of one run, not across runs.
set -euo pipefail

BASE_REF=${1:-main}
BENCH_DIR=${BENCH_DIR:-/tmp/roost-bench}
ROUNDS=${ROUNDS:-2}
HOLD=${HOLD:-10000}
DEVICE_PORT=${DEVICE_PORT:-18000}
CONTROL_PORT=${CONTROL_PORT:-18082}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
mkdir -p "$BENCH_DIR"

# Builds the tree in $1 and copies its binary to $2. Both trees share this tree's target
# directory for the dependencies, and cargo names roost's own build units the same for both
# (paths are hashed relative to each tree's root): with those units' fingerprints left in
# place, the second build can pass for fresh and the copy would be the first tree's binary.
build_into() {
    rm -rf "$TARGET"/release/.fingerprint/roost-*
    (cd "$1" && CARGO_TARGET_DIR=$TARGET cargo build --release --quiet)
    cp "$TARGET/release/roost" "$2"
}
if [[ -z ${SKIP_BUILD:-} ]]; then
    rm -rf "$BENCH_DIR/base-src" && mkdir -p "$BENCH_DIR/base-src"
    git -C "$ROOT" archive "$BASE_REF" | tar -x -C "$BENCH_DIR/base-src"
    build_into "$BENCH_DIR/base-src" "$BENCH_DIR/roost-base"
    build_into "$ROOT" "$BENCH_DIR/roost-new"
    if cmp -s "$BENCH_DIR/roost-base" "$BENCH_DIR/roost-new" && ! git -C "$ROOT" diff --quiet "$BASE_REF" -- src; then
        echo "the two builds are the same binary though the sources differ" && exit 1
    fi
fi
SIM="taskset -c 1 $BENCH_DIR/roost-new sim"

if [[ ! -f $BENCH_DIR/cert/fullchain.pem ]]; then
    mkdir -p "$BENCH_DIR/cert"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
        -keyout "$BENCH_DIR/cert/privkey.pem" -out "$BENCH_DIR/cert/fullchain.pem" 2>/dev/null
fi

PID=
start_server() { # binary [tls|streams]
    rm -rf "$BENCH_DIR/data" && mkdir -p "$BENCH_DIR/data"
    local extra=(env)
    [[ ${2:-} == tls ]] && extra+=(CERT_DIR="$BENCH_DIR/cert")
    # 10,000 event streams need more than the control port's default share of descriptors.
    [[ ${2:-} == streams ]] && extra+=(CONTROL_MAX_CONNECTIONS=10500)
    "${extra[@]}" env SERVER_HOST=127.0.0.1 SERVER_PORT=$DEVICE_PORT CONTROL_HOST=127.0.0.1 CONTROL_PORT=$CONTROL_PORT \
        SQLITE3_DB_PATH="$BENCH_DIR/data/db.sqlite" SSE_MAX_CLIENTS=20000 MAX_DEVICES=20000 RUST_LOG=warn \
        taskset -c 0 "$1" >"$BENCH_DIR/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        curl -sf http://127.0.0.1:$CONTROL_PORT/health >/dev/null && return 0
        sleep 0.1
    done
    echo "server did not start:" && cat "$BENCH_DIR/server.log" && exit 1
}
stop_server() {
    kill "$PID" && wait "$PID" 2>/dev/null || true
}
RPS=/sys/class/net/lo/queues/rx-0/rps_cpus
BACKLOG=/proc/sys/net/core/netdev_max_backlog
if [[ -n ${STEER_RX:-} ]]; then
    RPS_BEFORE=$(cat "$RPS") BACKLOG_BEFORE=$(cat "$BACKLOG")
    echo 2 >"$RPS"
    # A fan-out sends 10,000 packets faster than CPU 1 takes them in; past the default
    # backlog of 1,000 the kernel drops them and TCP resends them 200 ms later.
    echo 65536 >"$BACKLOG"
    echo "loopback receive work steered to CPU 1 (rps_cpus was $RPS_BEFORE, netdev_max_backlog $BACKLOG_BEFORE)"
fi
cleanup() {
    stop_server 2>/dev/null || true
    [[ -n ${RPS_BEFORE:-} ]] && echo "$RPS_BEFORE" >"$RPS" && echo "$BACKLOG_BEFORE" >"$BACKLOG"
    true
}
trap cleanup EXIT

URL=http://127.0.0.1:$DEVICE_PORT
CONTROL=http://127.0.0.1:$CONTROL_PORT
run() { # label binary
    local label=$1 bin=$2
    start_server "$bin"
    echo "== $label: bench-hold, $HOLD thermostats, real-size state, plain HTTP"
    $SIM bench-hold --url $URL --control-url $CONTROL --count "$HOLD" --server-pid "$PID"
    stop_server
    start_server "$bin" tls
    echo "== $label: bench-hold, $HOLD thermostats, real-size state, TLS 1.2"
    $SIM bench-hold --url https://127.0.0.1:$DEVICE_PORT --control-url $CONTROL --count "$HOLD" --server-pid "$PID"
    stop_server
    for streams in 1000 10000; do
        start_server "$bin" streams
        echo "== $label: bench-sse, $streams streams"
        $SIM bench-sse --url $URL --control-url $CONTROL --streams $streams --commands 20 --server-pid "$PID"
        stop_server
    done
}

for round in $(seq "$ROUNDS"); do
    echo "#### round $round (base: $BASE_REF at $(git -C "$ROOT" rev-parse --short "$BASE_REF"), new: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo ' + uncommitted'))"
    run "base" "$BENCH_DIR/roost-base"
    run "new" "$BENCH_DIR/roost-new"
done

if [[ -n ${FLEET_MINUTES:-} ]]; then
    start_server "$BENCH_DIR/roost-new"
    echo "== new: fleet, 10000 thermostats, 200 streams, $FLEET_MINUTES minutes"
    $SIM fleet --url $URL --control-url $CONTROL --thermostats 10000 --streams 200 --minutes "$FLEET_MINUTES" --server-pid "$PID"
    stop_server
fi
