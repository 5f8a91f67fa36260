#!/usr/bin/env bash
# Instructions per proxied request of the balancer (the noise-free figure beside bench/lb-hop.sh):
# two nginx `return 200` backends, `scalelab serve lb` in front of them under
# `valgrind --tool=callgrind`; 500 warm-up requests, counters zeroed, exactly N requests over 8
# connections, counters dumped, total divided by N.
# Needs: nginx, valgrind; a release build. Usage: bench/lb-callgrind.sh [requests]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
BIN=$(realpath "${SCALELAB_BIN:-target/release/scalelab}")
[ -x "$BIN" ] || cargo build --release
WORK=$(mktemp -d /tmp/scalelab-lbcg.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
B1=$(free_port); B2=$(free_port); P=$(free_port)
cat > "$WORK/backends.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/b.pid; error_log $WORK/b-error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $WORK; proxy_temp_path $WORK; fastcgi_temp_path $WORK; uwsgi_temp_path $WORK; scgi_temp_path $WORK;
  server { listen 127.0.0.1:$B1; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$B2; location / { return 200 "ok\n"; } } }
CONF
nginx -c "$WORK/backends.conf" -p "$WORK" & PIDS+=($!)
printf '[lb]\nbackends = ["http://127.0.0.1:%s", "http://127.0.0.1:%s"]\n' "$B1" "$B2" > "$WORK/lb.toml"
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$BIN" serve lb --id lb-1 --port "$P" \
  --config "$WORK/lb.toml" --data-dir "$WORK/data" > "$WORK/lb.log" 2>&1 &
VG=$!; PIDS+=($VG)
for _ in $(seq 1 200); do curl -fs "127.0.0.1:$P/" >/dev/null 2>&1 && break; sleep 0.2; done
"$BIN" bench "http://127.0.0.1:$P/" -c 8 -n 500 > /dev/null
callgrind_control -z "$VG" > /dev/null 2>&1
"$BIN" bench "http://127.0.0.1:$P/" -c 8 -n "$N" > /dev/null
callgrind_control -d "$VG" > /dev/null 2>&1
sleep 1
TOTAL=$(grep -E '^summary:' "$WORK/cg.out.1" | awk '{print $2}')
echo "$(basename "$BIN"): $((TOTAL / N)) instructions per proxied request ($N requests, 8 connections)"
[ -n "${KEEP_PROFILE:-}" ] && cp "$WORK/cg.out.1" "$KEEP_PROFILE" && echo "profile: $KEEP_PROFILE (callgrind_annotate)"
exit 0
