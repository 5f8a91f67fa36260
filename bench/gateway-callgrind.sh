#!/usr/bin/env bash
# Instructions per request of one gateway on `GET /data` cache hits (the noise-free figure beside
# req/s): starts `scalelab up` (release build), then one extra gateway of the same topology under
# `valgrind --tool=callgrind`, warms it up, zeroes its counters, sends exactly N requests through it
# (one connection at a time, keep-alive), dumps the counters and prints instructions per request.
# Compare two builds with SCALELAB_BIN; SCALELAB_CONFIG picks a topology file.
# Usage: bench/gateway-callgrind.sh [requests]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
BIN=$(realpath "${SCALELAB_BIN:-target/release/scalelab}")
[ -x "$BIN" ] || cargo build --release
WORK=$(mktemp -d /tmp/scalelab-callgrind.XXXXXX)
export SCALELAB_ADMIN_PASSWORD=bench-password-$RANDOM
"$BIN" up --free-ports ${SCALELAB_CONFIG:+--config "$SCALELAB_CONFIG"} --data-dir "$WORK/data" > "$WORK/up.log" 2>&1 &
UP=$!
VG=
cleanup() { [ -n "$VG" ] && kill "$VG" 2>/dev/null; kill -TERM $UP 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 1 300); do grep -q "healthy in" "$WORK/up.log" && break; sleep 0.1; done
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" \
  "$BIN" serve gateway --id gateway-cg --port "$PORT" --host 127.0.0.1 \
  --config "$WORK/data/topology.effective.toml" --data-dir "$WORK/data" > "$WORK/cg.log" 2>&1 &
VG=$!
for _ in $(seq 1 600); do curl -fs "127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break; sleep 0.2; done
TOKEN=$(curl -s -X POST "127.0.0.1:$PORT/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$SCALELAB_ADMIN_PASSWORD\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$BIN" bench "http://127.0.0.1:$PORT/data" -c 1 -n 200 --token "$TOKEN" > /dev/null   # warm: cache filled, connections open
callgrind_control -z "$VG" > /dev/null
"$BIN" bench "http://127.0.0.1:$PORT/data" -c 1 -n "$N" --token "$TOKEN" > "$WORK/bench.txt"
callgrind_control -d "$VG" > /dev/null
sleep 1   # the dump is written by the valgrind process itself
DUMP=$(ls -t "$WORK"/cg.* | grep -v '\.log$' | head -1)
TOTAL=$(grep -E '^(summary|totals):' "$DUMP" | tail -1 | awk '{print $2}')
echo "$(basename "$BIN"): $N requests, $TOTAL instructions in the gateway, $((TOTAL / N)) per request"
[ -n "${KEEP_PROFILE:-}" ] && cp "$DUMP" "$KEEP_PROFILE" && echo "profile: $KEEP_PROFILE (callgrind_annotate)"
exit 0
