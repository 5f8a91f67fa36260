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
mkdir -p "$WORK/www" "$WORK/tmp"
head -c 612 /dev/zero | tr '\0' 'x' > "$WORK/www/index.html"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s|__DIR__|$WORK|g" -e "s|__PORT__|$PORT|" bench/nginx-static.conf > "$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK" &
NGINX=$!
trap 'kill $NGINX 2>/dev/null; rm -rf "$WORK"' EXIT
URL="http://127.0.0.1:$PORT/index.html"
for _ in $(seq 1 50); do curl -sf "$URL" >/dev/null && break; sleep 0.1; done
echo "machine: $(nproc) cores; target: nginx 1 worker, 612-byte file; -c $CONNS, ${DUR}s per run"
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round: wrk -t2 -c$CONNS -d${DUR}s --latency"
  wrk -t2 -c"$CONNS" -d"${DUR}s" --latency "$URL" | grep -E "Requests/sec|^ +(50|99)%"
  echo "== round $round: scalelab bench -c $CONNS -d ${DUR}s"
  "$BIN" bench "$URL" -c "$CONNS" -d "${DUR}s" --json "$WORK/bench.json" >/dev/null 2>&1
  python3 - "$WORK/bench.json" <<'PY'
import json,sys
r=json.load(open(sys.argv[1]))
lat=r.get("latency") or {}
def ms(v): return f"{v:.2f}ms" if isinstance(v,(int,float)) else v
print(f"     50%  {ms(lat.get('p50_ms'))}\n     99%  {ms(lat.get('p99_ms'))}\nRequests/sec: {r['rps']:.2f}")
PY
  if command -v oha >/dev/null; then
    echo "== round $round: oha -c $CONNS -z ${DUR}s"
    oha -c "$CONNS" -z "${DUR}s" --no-tui "$URL" | grep -E "Requests/sec|50.00%|99.00%"
  fi
done
