#!/usr/bin/env bash
# The balancer hop alone (issue 14): wrk -> proxy -> two nginx `return 200` backends, so that only
# the proxy's work is measured. Each proxy runs pinned to the proxy cores (default: core 0, one
# worker/thread); the backends and wrk run on the other core. All three proxies are measured in one
# run, in turns, with the same wrk and the same backends:
#   nginx (Debian, keepalive upstream), HAProxy (Debian, http-reuse always), `scalelab serve lb`
#   (round robin; every feature on: health checks, X-Forwarded-*, request ids, metrics, retries,
#   body limit) with its own HTTP/1 hop (`engine = "direct"`, the default), then with hyper's.
# Needs: nginx, haproxy, wrk (apt-get install -y nginx haproxy wrk); a release build of scalelab.
# Usage: bench/lb-hop.sh [duration] [connections] [proxy cores, e.g. 0 or 0-1]
# ROUNDS=N (default 1) measures the proxies in turn N times over (interleaved, so that the shared
# machine's slow minutes fall on all of them) and ends with each proxy's median req/s and p99: a
# single run's p99 swings by 2x on this machine with nothing changed.
# HYPER=0 leaves out the hyper engine's row (a shorter run).
# RATE=R sends the same fixed rate to every proxy instead (open model: `scalelab bench -r R`, latency
# from each request's intended send time), so tails are compared at equal load: wrk's closed loop
# gives the fastest proxy the most requests to carry, and the most queueing on the shared core.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10s}
CONNS=${2:-32}
PCORES=${3:-0}
BIN=${SCALELAB_BIN:-target/release/scalelab}
[ -x "$BIN" ] || cargo build --release
for c in nginx haproxy wrk; do command -v $c >/dev/null || { echo "needs $c: apt-get install -y nginx haproxy wrk" >&2; exit 1; }; done
NCPU=$(nproc)
# The other side: every core not used by the proxy (on 2 cores with the proxy on 0: core 1).
if [ "$PCORES" = "0" ]; then OCORES=$(seq -s, 1 $((NCPU - 1))); else OCORES=$(seq -s, 0 $((NCPU - 1))); fi
NWORKERS=$(taskset -c "$PCORES" nproc)

WORK=$(mktemp -d /tmp/scalelab-lbhop.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/tmp"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do curl -fs -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; echo "port $1 did not answer" >&2; return 1; }

# Two backends: nginx returning a small body, on the other cores.
B1=$(free_port); B2=$(free_port)
cat > "$WORK/backends.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/b.pid; error_log $WORK/b-error.log warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp; uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  server { listen 127.0.0.1:$B1; location / { return 200 "ok\n"; } location /health { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$B2; location / { return 200 "ok\n"; } location /health { return 200 "ok\n"; } } }
CONF
taskset -c "$OCORES" nginx -c "$WORK/backends.conf" -p "$WORK" & PIDS+=($!)
wait_port "$B1"; wait_port "$B2"

# nginx as the proxy.
PN=$(free_port)
cat > "$WORK/proxy-nginx.conf" <<CONF
worker_processes $NWORKERS; daemon off; pid $WORK/p.pid; error_log $WORK/p-error.log warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp; uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  upstream b { server 127.0.0.1:$B1; server 127.0.0.1:$B2; keepalive 256; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$PN;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
CONF
taskset -c "$PCORES" nginx -c "$WORK/proxy-nginx.conf" -p "$WORK" & PIDS+=($!); NGINX_PID=$!

# HAProxy as the proxy.
PH=$(free_port)
cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread $NWORKERS
  maxconn 8000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option forwardfor
frontend f
  bind 127.0.0.1:$PH
  default_backend b
backend b
  balance roundrobin
  http-reuse always
  server s1 127.0.0.1:$B1
  server s2 127.0.0.1:$B2
CONF
taskset -c "$PCORES" haproxy -db -f "$WORK/haproxy.cfg" & PIDS+=($!); HAPROXY_PID=$!

# scalelab's balancer, with its own HTTP/1 hop (the default engine) and with hyper's.
PS=$(free_port)
cat > "$WORK/scalelab.toml" <<CONF
[lb]
backends = ["http://127.0.0.1:$B1", "http://127.0.0.1:$B2"]
${LB_EXTRA:-}
CONF
SCALELAB_LOG=${SCALELAB_LOG:-warn} taskset -c "$PCORES" "$BIN" serve lb --id lb-1 --port "$PS" --config "$WORK/scalelab.toml" --data-dir "$WORK/data" > "$WORK/lb.log" 2>&1 & PIDS+=($!); LB_PID=$!
PY=$(free_port)
cat > "$WORK/scalelab-hyper.toml" <<CONF
[lb]
engine = "hyper"
backends = ["http://127.0.0.1:$B1", "http://127.0.0.1:$B2"]
${LB_EXTRA:-}
CONF
SCALELAB_LOG=${SCALELAB_LOG:-warn} taskset -c "$PCORES" "$BIN" serve lb --id lb-2 --port "$PY" --config "$WORK/scalelab-hyper.toml" --data-dir "$WORK/data-hyper" > "$WORK/lb-hyper.log" 2>&1 & PIDS+=($!); LBH_PID=$!
for p in "$PN" "$PH" "$PS" "$PY"; do wait_port "$p"; done

echo "machine: $NCPU cores, $(uname -r); proxy on core(s) $PCORES ($NWORKERS worker(s)), backends and wrk on $OCORES"
if [ -n "${RATE:-}" ]; then
  echo "scalelab bench -r $RATE -c$CONNS -d$DUR (open model, same rate for all), GET / through each proxy to two nginx 'return 200' backends"
else
  echo "wrk -t1 -c$CONNS -d$DUR --latency, GET / through each proxy to two nginx 'return 200' backends"
fi
# "idle": how much of the other cores (wrk and the backends) was idle during the run, from /proc/stat;
# near 0% the other side, not the proxy, set the pace and the tail (the faster proxy gets the more
# queueing there in wrk's closed loop).
idle_ticks() {
  local c total=0 idle=0 f
  for c in $(echo "$OCORES" | tr , ' '); do
    read -r -a f < <(grep "^cpu$c " /proc/stat)
    idle=$((idle + f[4] + f[5]))
    total=$((total + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7] + f[8]))
  done
  echo "$idle $total"
}
# "waited": how long the proxy's threads were runnable but not running during the measured run
# (run-queue wait from /proc/PID/task/*/schedstat): another process on the proxy's core. The p99 of
# a run where one proxy waited much longer than the others says more about the machine than the proxy.
waited_ns() {
  local total=0 p t w
  for p in "$1" $(pgrep -P "$1" || true); do
    for t in /proc/"$p"/task/*/schedstat; do read -r _ w _ < "$t" 2>/dev/null && total=$((total + w)); done
  done
  echo "$total"
}
printf '%-34s %10s %9s %9s %8s %8s %6s\n' proxy "req/s" p50 p99 "vs nginx" waited idle
ROUNDS=${ROUNDS:-1}
ALL="$WORK/rounds.txt"
: > "$ALL"
for round in $(seq 1 "$ROUNDS"); do
  [ "$ROUNDS" -gt 1 ] && echo "# round $round of $ROUNDS"
  NGINX_RPS=
  TARGETS=("nginx:$PN:$NGINX_PID" "HAProxy:$PH:$HAPROXY_PID" "scalelab lb:$PS:$LB_PID")
  [ "${HYPER:-1}" = 0 ] || TARGETS+=("scalelab lb, engine hyper:$PY:$LBH_PID")
  for target in "${TARGETS[@]}"; do
    IFS=: read -r name p pid <<< "$target"
    wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$p/" > /dev/null   # warm the upstream connections
    w0=$(waited_ns "$pid"); read -r i0 t0 < <(idle_ticks)
    if [ -n "${RATE:-}" ]; then
      taskset -c "$OCORES" "$BIN" bench -r "$RATE" -c "$CONNS" -d "$DUR" --json "$WORK/open.json" "http://127.0.0.1:$p/" > /dev/null 2>&1
      waited=$(( ($(waited_ns "$pid") - w0) / 1000000 )); read -r i1 t1 < <(idle_ticks)
      read -r rps p50 p99 errs < <(python3 - "$WORK/open.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat, q = r["latency"], r["requests"]
extra = f"failed={q['failed']},late={q['late']}" if q["failed"] or q["late"] else ""
print(f"{r['rps']:.0f} {lat['p50_ms']:.2f}ms {lat['p99_ms']:.2f}ms {extra}")
PY
)
    else
      out=$(taskset -c "$OCORES" wrk -t1 -c"$CONNS" -d"$DUR" --latency "http://127.0.0.1:$p/")
      waited=$(( ($(waited_ns "$pid") - w0) / 1000000 )); read -r i1 t1 < <(idle_ticks)
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p50=$(echo "$out" | awk '$1=="50%" {print $2}')
      p99=$(echo "$out" | awk '$1=="99%" {print $2}')
      errs=$(echo "$out" | grep -E "Non-2xx|Socket errors" | tr '\n' ' ' || true)
    fi
    [ -z "$NGINX_RPS" ] && NGINX_RPS=$rps
    ratio=$(python3 -c "print(f'{$rps/$NGINX_RPS:.2f}x')")
    idle=$(( (i1 - i0) * 100 / (t1 - t0 > 0 ? t1 - t0 : 1) ))
    printf '%-34s %10s %9s %9s %8s %6sms %5s%% %s\n' "$name" "$rps" "$p50" "$p99" "$ratio" "$waited" "$idle" "$errs"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$rps" "$p99" "$waited" "$idle" >> "$ALL"
  done
done
if [ "$ROUNDS" -gt 1 ]; then
  echo "# over $ROUNDS rounds: medians, and each proxy against nginx and HAProxy in the same round (paired:"
  echo "# a slow minute of the machine falls on the proxies of one round alike, so paired ratios swing less)"
  python3 - "$ALL" <<'PY'
import statistics, sys
def ms(t):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if t.endswith(unit):
            return float(t[: -len(unit)]) * f
    return float(t)
rows, by_round = {}, {}
for line in open(sys.argv[1]):
    rnd, name, rps, p99, waited, idle = line.rstrip("\n").split("\t")
    row = (float(rps), ms(p99), float(waited), float(idle))
    rows.setdefault(name, []).append((rnd, row))
    by_round.setdefault(rnd, {})[name] = row
med = statistics.median
peers = [p for p in ("nginx", "HAProxy") if p in rows]
def paired(name, peer, i):
    return [r[i] / by_round[rnd][peer][i] for rnd, r in rows[name]]
head = f"{'proxy':34s} {'req/s':>8s} {'p99':>9s}"
for peer in peers:
    head += f" {'req/s vs ' + peer:>17s} {'p99 vs ' + peer:>15s} {'p99 <= ' + peer:>15s}"
print(head + f" {'waited':>7s} {'idle':>5s}")
for name, v in rows.items():
    line = f"{name:34s} {med(r[0] for _, r in v):8.0f} {med(r[1] for _, r in v):7.2f}ms"
    for peer in peers:
        rps, p99 = paired(name, peer, 0), paired(name, peer, 1)
        won = sum(x <= 1 for x in p99)
        line += f" {med(rps):16.2f}x {med(p99):14.2f}x {won:>8d} of {len(v):<3d}"
    print(line + f" {med(r[2] for _, r in v):5.0f}ms {med(r[3] for _, r in v):4.0f}%")
PY
fi
