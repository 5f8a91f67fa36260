#!/usr/bin/env bash
# Benchmark of the request path (issue 2): wrk on GET /data cache hits
#   1. through scalelab's balancer (lb -> 2 gateways),
#   2. directly against one gateway,
#   3. through nginx configured as the round-robin balancer over the same two gateways,
# all in one run against one `scalelab up` (release build), so the figures sit side by side.
# Needs: wrk and nginx (apt-get install -y wrk nginx). Usage: bench/request-path.sh [duration] [connections]
# SCALELAB_BIN picks the binary (to compare two builds), SCALELAB_CONFIG a topology file instead of the built-in one.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10s}
CONNS=${2:-64}
BIN=${SCALELAB_BIN:-target/release/scalelab}
[ -x "$BIN" ] || cargo build --release
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx: apt-get install -y wrk nginx" >&2; exit 1; }

WORK=$(mktemp -d /tmp/scalelab-bench.XXXXXX)
chmod 755 "$WORK"   # nginx workers run as nobody
export SCALELAB_ADMIN_PASSWORD=bench-password-$RANDOM
"$BIN" up --free-ports ${SCALELAB_CONFIG:+--config "$SCALELAB_CONFIG"} --data-dir "$WORK/data" > "$WORK/up.log" 2>&1 &
UP=$!
NGINX=
STATIC_PID=
cleanup() { [ -n "$NGINX" ] && kill "$NGINX" 2>/dev/null; [ -n "$STATIC_PID" ] && kill "$STATIC_PID" 2>/dev/null; kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 1 300); do [ -s "$WORK/data/instances.json" ] && break; sleep 0.1; done
port() { python3 -c "import json,sys; print([i['port'] for i in json.load(open('$WORK/data/instances.json')) if i['id']=='$1'][0])"; }
LB=$(port lb-1); G1=$(port gateway-1); G2=$(port gateway-2)
NGX=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

TOKEN=$(curl -s -X POST "127.0.0.1:$LB/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$SCALELAB_ADMIN_PASSWORD\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
curl -s "127.0.0.1:$LB/data" -H "Authorization: Bearer $TOKEN" >/dev/null   # fill the cache

mkdir -p "$WORK/tmp"
sed -e "s|__DIR__|$WORK|g" -e "s|__G1__|$G1|" -e "s|__G2__|$G2|" -e "s|__PORT__|$NGX|" bench/nginx-lb.conf > "$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK" &
NGINX=$!
for _ in $(seq 1 50); do curl -s "127.0.0.1:$NGX/data" -H "Authorization: Bearer $TOKEN" | grep -q cached && break; sleep 0.1; done

# The ceiling issue 14 measures against: nginx serving a small static file (one worker), same wrk.
STATIC=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/static/www" "$WORK/static/tmp"
printf '{"value": "cached"}\n' > "$WORK/static/www/data"
sed -e "s|__DIR__|$WORK/static|g" -e "s|__PORT__|$STATIC|" bench/nginx-static.conf > "$WORK/static/nginx.conf"
nginx -c "$WORK/static/nginx.conf" -p "$WORK/static" &
STATIC_PID=$!
for _ in $(seq 1 50); do curl -fs -o /dev/null "127.0.0.1:$STATIC/data" && break; sleep 0.1; done

echo "machine: $(nproc) cores, $(uname -r); wrk -t2 -c$CONNS -d$DUR --latency, GET /data (cache hits)"
for target in "scalelab lb (2 gateways):$LB" "one gateway, direct:$G1" "nginx round robin (2 gateways):$NGX" "nginx static file (the ceiling):$STATIC"; do
  name=${target%%:*}; p=${target##*:}
  echo "== $name"
  wrk -t2 -c"$CONNS" -d"$DUR" --latency -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$p/data" \
    | grep -E "Requests/sec|^ +(50|99)%|Non-2xx|Socket errors|requests in"
done
