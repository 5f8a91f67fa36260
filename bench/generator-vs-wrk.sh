#!/usr/bin/env bash
# Is `scalelab bench` fast enough not to be the bottleneck? Against one static target (nginx serving a
# small file), same connection count, alternating runs in one session: wrk, scalelab bench, and oha
# when installed (cargo install oha). Usage: bench/generator-vs-wrk.sh [duration] [connections] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-50}
ROUNDS=${3:-2}
BIN=${SCALELAB_BIN:-target/release/scalelab}
[ -x "$BIN" ] || cargo build --release
WORK=$(mktemp -d /tmp/scalelab-gen.XXXXXX)
# nginx's workers run as nobody: the directory mktemp makes (0700) would turn every answer into 403.
chmod 755 "$WORK"
mkdir -p "$WORK/www" "$WORK/tmp"
head -c 612 /dev/zero | tr '\0' 'x' > "$WORK/www/index.html"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s|__DIR__|$WORK|g" -e "s|__PORT__|$PORT|" bench/nginx-static.conf > "$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK" &
NGINX=$!
trap 'kill $NGINX 2>/dev/null; rm -rf "$WORK"' EXIT
URL="http://127.0.0.1:$PORT/index.html"
for _ in $(seq 1 50); do curl -sf "$URL" >/dev/null && break; sleep 0.1; done
# Measure the file, not an error page.
[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL")" = 200 ] || { echo "nginx does not serve $URL with 200" >&2; exit 1; }
echo "machine: $(nproc) cores; target: nginx 1 worker, 612-byte file; -c $CONNS, ${DUR}s per run"
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round: wrk -t2 -c$CONNS -d${DUR}s --latency"
  wrk -t2 -c"$CONNS" -d"${DUR}s" --latency "$URL" | grep -E "Requests/sec|^ +(50|99)%|Non-2xx"
  echo "== round $round: scalelab bench -c $CONNS -d ${DUR}s"
  "$BIN" bench "$URL" -c "$CONNS" -d "${DUR}s" --json "$WORK/bench.json" >/dev/null 2>&1
  python3 - "$WORK/bench.json" <<'PY'
import json,sys
r=json.load(open(sys.argv[1]))
lat=r.get("latency") or {}
def ms(v): return f"{v:.2f}ms" if isinstance(v,(int,float)) else v
print(f"     50%  {ms(lat.get('p50_ms'))}\n     99%  {ms(lat.get('p99_ms'))}\nRequests/sec: {r['rps']:.2f}")
print(f"     status codes: {r['status_codes']}")
PY
  if command -v oha >/dev/null; then
    echo "== round $round: oha -c $CONNS -z ${DUR}s"
    oha -c "$CONNS" -z "${DUR}s" --no-tui "$URL" | grep -E "Requests/sec|50.00%|99.00%"
  fi
done

# Latency agreement at a realistic latency: one scalelab service instance (20 ms of work, 4 at a
# time) answers GET /process in about 40 ms to 8 connections; both tools should report the same
# percentiles there, where scheduling noise no longer dominates.
SVC=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" serve service --port "$SVC" --data-dir "$WORK/data" > "$WORK/service.log" 2>&1 &
SVCPID=$!
trap 'kill $NGINX $SVCPID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$SVC/health" >/dev/null && break; sleep 0.1; done
echo "== latency agreement: GET /process on one service instance, 8 connections, ${DUR}s"
echo "-- wrk -t2 -c8"
wrk -t2 -c8 -d"${DUR}s" --latency "http://127.0.0.1:$SVC/process" | grep -E "Requests/sec|^ +(50|90|99)%"
echo "-- scalelab bench -c 8"
"$BIN" bench "http://127.0.0.1:$SVC/process" -c 8 -d "${DUR}s" 2>/dev/null | grep -A2 -E "Requests/sec|p50"
