#!/usr/bin/env bash
# Issue 14, item 3 in requests per second: one gateway pinned to one core (taskset -c 1) answering
# GET /data hits (local cache, token remembered), wrk on the other core (taskset -c 0, one thread);
# in the same run the same gateway with `front_path = false` (the router for everything), and
# nginx (one worker, pinned the same way) returning the same body as a static file: the ceiling.
# The rest of the topology (`scalelab up`) idles beside them. Needs wrk and nginx.
# Usage: bench/gateway-one-core.sh [duration] [connections]; SCALELAB_BIN picks the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10s}
CONNS=${2:-32}
BIN=$(realpath "${SCALELAB_BIN:-target/release/scalelab}")
[ -x "$BIN" ] || cargo build --release
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx: apt-get install -y wrk nginx" >&2; exit 1; }
WORK=$(mktemp -d /tmp/scalelab-onecore.XXXXXX)
chmod 755 "$WORK"   # nginx workers run as nobody
export SCALELAB_ADMIN_PASSWORD=bench-password-$RANDOM
python3 -c '
import re, sys
s = open("scalelab.toml").read()
print(re.sub(r"(?m)^cache = \"service\"$", "cache = \"local\"", s))' > "$WORK/local.toml"
"$BIN" up --free-ports --config "$WORK/local.toml" --data-dir "$WORK/data" > "$WORK/up.log" 2>&1 &
UP=$!
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; kill -TERM $UP 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 1 300); do grep -q "healthy in" "$WORK/up.log" && break; sleep 0.1; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sed 's/^front_path = true$/front_path = false/' "$WORK/data/topology.effective.toml" > "$WORK/router.toml"
grep -q '^front_path = false$' "$WORK/router.toml" || { echo "front_path not found in the effective topology" >&2; exit 1; }
FRONT=$(free_port); ROUTER=$(free_port); STATIC=$(free_port)
taskset -c 1 "$BIN" serve gateway --id gateway-front --port "$FRONT" --host 127.0.0.1 \
  --config "$WORK/data/topology.effective.toml" --data-dir "$WORK/data" > "$WORK/front.log" 2>&1 &
PIDS+=($!)
taskset -c 1 "$BIN" serve gateway --id gateway-route --port "$ROUTER" --host 127.0.0.1 \
  --config "$WORK/router.toml" --data-dir "$WORK/data" > "$WORK/router.log" 2>&1 &
PIDS+=($!)
for p in $FRONT $ROUTER; do
  for _ in $(seq 1 300); do curl -fs "127.0.0.1:$p/ready" >/dev/null 2>&1 && break; sleep 0.1; done
done
TOKEN=$(curl -s -X POST "127.0.0.1:$FRONT/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$SCALELAB_ADMIN_PASSWORD\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
mkdir -p "$WORK/static/www" "$WORK/static/tmp"
curl -s "127.0.0.1:$FRONT/data" -H "Authorization: Bearer $TOKEN" > /dev/null   # fill
curl -s "127.0.0.1:$FRONT/data" -H "Authorization: Bearer $TOKEN" > "$WORK/static/www/data"   # a hit's body
curl -s "127.0.0.1:$ROUTER/data" -H "Authorization: Bearer $TOKEN" > /dev/null
sed -e "s|__DIR__|$WORK/static|g" -e "s|__PORT__|$STATIC|" bench/nginx-static.conf > "$WORK/static/nginx.conf"
taskset -c 1 nginx -c "$WORK/static/nginx.conf" -p "$WORK/static" &
PIDS+=($!)
for _ in $(seq 1 50); do curl -fs -o /dev/null "127.0.0.1:$STATIC/data" && break; sleep 0.1; done
echo "machine: $(nproc) cores, $(uname -r); server on core 1, wrk -t1 -c$CONNS -d$DUR on core 0; GET /data hits ($(wc -c < "$WORK/static/www/data") bytes)"
for target in "gateway, front path:$FRONT" "gateway, router only:$ROUTER" "nginx static file (one worker):$STATIC"; do
  name=${target%%:*}; p=${target##*:}
  printf '== %-34s ' "$name"
  taskset -c 0 wrk -t1 -c"$CONNS" -d"$DUR" --latency -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$p/data" \
    | awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF} END {printf "%10s req/s  p50 %8s  p99 %8s%s\n", rps, p50, p99, (bad ? "  non-2xx " bad : "")}'
done
