#!/usr/bin/env bash
# Issue 14, item 3: a gateway's `/data` cache hit (local cache, valid token) against a bare hyper
# "hello" server answering a body of the same size, as instructions per request under
# `valgrind --tool=callgrind` (counters zeroed after a warm-up, exactly N keep-alive requests on one
# connection). The gateway figure comes from bench/gateway-callgrind.sh with `cache = "local"`.
# Usage: bench/gateway-vs-hello.sh [requests]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
BIN=$(realpath "${SCALELAB_BIN:-target/release/scalelab}")
[ -x target/release/examples/hello ] || cargo build --release -p bench --example hello
WORK=$(mktemp -d /tmp/scalelab-hello.XXXXXX)
VG=
cleanup() { [ -n "$VG" ] && kill "$VG" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" target/release/examples/hello "127.0.0.1:$PORT" > "$WORK/hello.log" 2>&1 &
VG=$!
for _ in $(seq 1 200); do curl -fs "127.0.0.1:$PORT/" >/dev/null 2>&1 && break; sleep 0.2; done
"$BIN" bench "http://127.0.0.1:$PORT/data" -c 1 -n 200 > /dev/null
callgrind_control -z "$VG" > /dev/null 2>&1
"$BIN" bench "http://127.0.0.1:$PORT/data" -c 1 -n "$N" > /dev/null
callgrind_control -d "$VG" > /dev/null 2>&1
sleep 1
DUMP=$(ls -t "$WORK"/cg.* | head -1)
HELLO=$(( $(grep -E '^summary:' "$DUMP" | awk '{print $2}') / N ))
cat scalelab.toml | python3 -c '
import sys, re
s = sys.stdin.read()
print(re.sub(r"(?m)^cache = \"service\"$", "cache = \"local\"", s))' > "$WORK/local.toml"
GW=$(SCALELAB_CONFIG="$WORK/local.toml" bench/gateway-callgrind.sh "$N" 2>/dev/null | tail -1)
GWN=$(echo "$GW" | awk '{print $(NF-2)}')
echo "bare hyper hello: $HELLO instructions per request"
echo "gateway /data hit, local cache, token remembered: $GWN instructions per request"
python3 -c "print(f'gateway / hello = {$GWN/$HELLO:.2f}x (goal: 1.25x or less)')"
