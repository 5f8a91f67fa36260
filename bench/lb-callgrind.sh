#!/usr/bin/env bash
# Instructions per proxied request (the noise-free figure beside bench/lb-hop.sh): two nginx
# `return 200` backends; in turn, `scalelab serve lb` with each engine (`direct`, its own HTTP/1
# hop; `hyper`) and nginx as the proxy (one process, keepalive upstream), each under
# `valgrind --tool=callgrind`; 500 warm-up requests, counters zeroed, exactly N requests over 8
# connections, counters dumped, total divided by N. User-space instructions only: the kernel's
# share (the same four socket calls per request for all of them) is not counted.
# Needs: nginx, valgrind; a release build. Usage: bench/lb-callgrind.sh [requests]
#   KEEP_PROFILE=DIR keeps each profile there (for callgrind_annotate).
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
B1=$(free_port); B2=$(free_port)
TEMPS="client_body_temp_path $WORK; proxy_temp_path $WORK; fastcgi_temp_path $WORK; uwsgi_temp_path $WORK; scgi_temp_path $WORK;"
cat > "$WORK/backends.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/b.pid; error_log $WORK/b-error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; $TEMPS
  server { listen 127.0.0.1:$B1; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$B2; location / { return 200 "ok\n"; } } }
CONF
nginx -c "$WORK/backends.conf" -p "$WORK" & PIDS+=($!)

# Runs `$@` under callgrind, serving on port $P; prints instructions per request.
measure() {
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" "$@" > "$WORK/$name.log" 2>&1 &
  local vg=$!; PIDS+=($vg)
  for _ in $(seq 1 300); do curl -fs "127.0.0.1:$P/" >/dev/null 2>&1 && break; sleep 0.2; done
  "$BIN" bench "http://127.0.0.1:$P/" -c 8 -n 500 > /dev/null
  callgrind_control -z "$vg" > /dev/null 2>&1
  "$BIN" bench "http://127.0.0.1:$P/" -c 8 -n "$N" > /dev/null
  callgrind_control -d "$vg" > /dev/null 2>&1
  local dump=""
  for _ in $(seq 1 50); do dump=$(ls "$WORK/$name.out".* 2>/dev/null | head -1); [ -n "$dump" ] && break; sleep 0.2; done
  sleep 0.5
  local total; total=$(grep -E '^summary:' "$dump" | awk '{print $2}')
  printf '%-28s %8d instructions per proxied request\n' "$name" $((total / N))
  [ -n "${KEEP_PROFILE:-}" ] && mkdir -p "$KEEP_PROFILE" && cp "$dump" "$KEEP_PROFILE/$name.callgrind"
  kill "$vg" 2>/dev/null || true; wait "$vg" 2>/dev/null || true
}

echo "$N requests, 8 connections, GET / to two nginx 'return 200' backends ($(basename "$BIN"))"
for engine in direct hyper; do
  P=$(free_port)
  printf '[lb]\nengine = "%s"\nbackends = ["http://127.0.0.1:%s", "http://127.0.0.1:%s"]\n' "$engine" "$B1" "$B2" > "$WORK/lb-$engine.toml"
  measure "scalelab lb ($engine)" "$BIN" serve lb --id lb-1 --port "$P" --config "$WORK/lb-$engine.toml" --data-dir "$WORK/data-$engine"
done
P=$(free_port)
cat > "$WORK/proxy.conf" <<CONF
worker_processes 1; master_process off; daemon off; pid $WORK/p.pid; error_log $WORK/p-error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; $TEMPS
  upstream b { server 127.0.0.1:$B1; server 127.0.0.1:$B2; keepalive 64; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$P;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
CONF
measure "nginx" nginx -c "$WORK/proxy.conf" -p "$WORK"
[ -n "${KEEP_PROFILE:-}" ] && echo "profiles: $KEEP_PROFILE (callgrind_annotate)"
exit 0
