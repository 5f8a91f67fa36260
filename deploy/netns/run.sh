#!/usr/bin/env bash
# scalelab across simulated machines: network namespaces joined by a bridge, each its own host.
#   sl-db    10.77.0.2   PostgreSQL and Redis (the shared engines)
#   sl-app1  10.77.0.11  gateway, service, auth, db, users, worker
#   sl-app2  10.77.0.12  the same
#   sl-edge  10.77.0.20  the balancer (least connections over the two gateways)
# Backends are names (gateways.sl, services.sl, auths.sl) that resolve to both app hosts.
# The host (10.77.0.1 on the bridge) drives load with `scalelab bench` and injects faults with
# `tc netem` and `ip link`, then prints what it injected and what clients saw. Exits non-zero if a
# request that should have failed over did not, or a task was lost.
# Needs root, PostgreSQL's server binaries, redis-server, openssl, iptables (where the kernel has
# no netem). Usage: deploy/netns/run.sh [scalelab binary]; KEEP_W=1 keeps the work directory (logs).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "${1:-target/debug/scalelab}")
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
W=$(mktemp -d /tmp/scalelab-netns.XXXXXX)
chmod 755 "$W"
NETS=(sl-db sl-app1 sl-app2 sl-edge)
declare -A IP=([sl-db]=10.77.0.2 [sl-app1]=10.77.0.11 [sl-app2]=10.77.0.12 [sl-edge]=10.77.0.20)
PIDS=()
TOKEN=$(openssl rand -hex 24)
ADMIN=$(openssl rand -hex 12)
FAIL=0

# Every process in the namespaces: $! of a backgrounded `in_ns` is a subshell, not the role's
# process, so the namespaces are asked who runs in them.
ns_pids() { for n in "${NETS[@]}"; do ip netns pids "$n" 2>/dev/null; done; }
cleanup() {
  set +e
  for p in "${PIDS[@]}" $(ns_pids); do kill "$p" 2>/dev/null; done
  for _ in $(seq 1 50); do [ -z "$(ns_pids)" ] && break; sleep 0.1; done
  for p in $(ns_pids); do kill -9 "$p" 2>/dev/null; done
  for n in "${NETS[@]}"; do
    ip netns del "$n" 2>/dev/null; ip link del "v-$n" 2>/dev/null; rm -rf "/etc/netns/$n"
  done
  ip link del br-sl 2>/dev/null
  [ -n "${KEEP_W:-}" ] && echo "kept $W" || rm -rf "$W"
}
trap cleanup EXIT

say() { echo "[netns] $*"; }

# --- the machines --------------------------------------------------------------------------
ip link add br-sl type bridge
ip addr add 10.77.0.1/24 dev br-sl
ip link set br-sl up
for n in "${NETS[@]}"; do
  ip netns add "$n"
  ip link add "v-$n" type veth peer name eth0 netns "$n"
  ip link set "v-$n" master br-sl up
  ip -n "$n" addr add "${IP[$n]}/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" link set lo up
done
in_ns() { local n=$1; shift; ip netns exec "$n" "$@"; }
# Each host's resolver (`ip netns exec` mounts /etc/netns/NAME/hosts over /etc/hosts): the roles
# that run on both app hosts have one name with both addresses, as an orchestrator's DNS gives a
# headless service, and the pools expand and re-resolve it (`resolve = true`).
for n in "${NETS[@]}"; do
  mkdir -p "/etc/netns/$n"
  printf '127.0.0.1 localhost\n' > "/etc/netns/$n/hosts"
  for name in gateways services auths; do
    printf '10.77.0.11 %s.sl\n10.77.0.12 %s.sl\n' "$name" "$name" >> "/etc/netns/$n/hosts"
  done
done

# --- the engines on sl-db ------------------------------------------------------------------
mkdir -p "$W/pg" "$W/pgsock" && chown postgres "$W/pg" "$W/pgsock"
runuser -u postgres -- "$PGBIN/initdb" -D "$W/pg" --auth=trust -U postgres > "$W/initdb.log"
echo "host all all 10.77.0.0/24 trust" >> "$W/pg/pg_hba.conf"
in_ns sl-db runuser -u postgres -- "$PGBIN/postgres" -D "$W/pg" -p 5432 \
  -c listen_addresses=10.77.0.2 -c unix_socket_directories="$W/pgsock" > "$W/pg.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do "$PGBIN/pg_isready" -h 10.77.0.2 -p 5432 -q && break; sleep 0.2; done
for db in auth db queue users_0 users_1 users_2; do
  "$PGBIN/psql" -h 10.77.0.2 -U postgres -qc "CREATE DATABASE scalelab_$db" > /dev/null
done
in_ns sl-db redis-server --bind 10.77.0.2 --port 6379 --save "" --appendonly no \
  --protected-mode no > "$W/redis.log" 2>&1 &
PIDS+=($!)

# --- scalelab ------------------------------------------------------------------------------
openssl genpkey -algorithm ed25519 -out "$W/signing.pem" 2> /dev/null
chmod 644 "$W/signing.pem"
PG=postgres://postgres@10.77.0.2:5432
topology() { # host address -> a topology file for that host
  local me=$1
  cat <<TOML
data_dir = "$W/data-$me"
[instances]
host = "$me"
lb = [8000]
gateway = [5000]
service = [5001]
db = [5002]
auth = [5011]
users = [5020]
worker = [5005]
[lb]
backends = ["http://gateways.sl:5000"]
[lb.pool]
resolve = true
refresh_ms = 500
strategy = "least_connections"
connect_timeout_ms = 300
response_timeout_ms = 1000
retry_timeouts = true
[lb.pool.health]
interval_ms = 300
timeout_ms = 300
fall = 2
rise = 2
[gateway]
auth_urls = ["http://auths.sl:5011"]
service_urls = ["http://services.sl:5001"]
db_url = "http://$me:5002"
users_url = "http://$me:5020"
cache = "redis"
redis_url = "redis://10.77.0.2:6379"
redis_prefix = "netns:"
upstream_timeout_ms = 3000
[gateway.services]
resolve = true
refresh_ms = 500
connect_timeout_ms = 300
response_timeout_ms = 1000
retry_timeouts = true
[gateway.services.health]
interval_ms = 300
timeout_ms = 300
fall = 2
[gateway.rate_limit]
backend = "redis"
login_per_minute = 100
[auth]
database_url = "$PG/scalelab_auth"
signing_key_file = "$W/signing.pem"
argon2_memory_kib = 1024
argon2_iterations = 1
[db]
database_url = "$PG/scalelab_db"
latency_ms = 5
jitter_ms = 0
seed_records = 20
unknown_keys = "generate"
[queue]
url = "$PG/scalelab_queue"
[worker]
concurrency = 2
lease_ms = 3000
heartbeat_ms = 500
poll_ms = 50
db_url = "http://$me:5002"
[[users.shards]]
url = "$PG/scalelab_users_0"
replicas = []
[[users.shards]]
url = "$PG/scalelab_users_1"
replicas = []
[[users.shards]]
url = "$PG/scalelab_users_2"
replicas = []
TOML
}
start() { # namespace role [port]
  local n=$1 role=$2 me=${IP[$1]} port=()
  [ -n "${3:-}" ] && port=(--port "$3")
  [ -f "$W/$n.toml" ] || topology "$me" > "$W/$n.toml"
  in_ns "$n" env SCALELAB_SERVICE_TOKEN="$TOKEN" SCALELAB_ADMIN_PASSWORD="$ADMIN" \
    "$BIN" serve "$role" --config "$W/$n.toml" --id "${n#sl-}-$role" "${port[@]}" > "$W/$n-$role.log" 2>&1 &
  PIDS+=($!)
}
healthy() { curl -fs -m 1 "$1" > /dev/null 2>&1; }
wait_for() {
  for _ in $(seq 1 150); do healthy "$1" && return 0; sleep 0.2; done
  echo "[netns] $1 never answered" >&2; tail -20 "$W"/*.log >&2; exit 1
}
for n in sl-app1 sl-app2; do
  for role in auth db users service; do start "$n" "$role"; done
done
for n in sl-app1 sl-app2; do
  for port in 5011 5002 5020 5001; do wait_for "http://${IP[$n]}:$port/health"; done
done
# Where the kernel has no netem, app1's gateway sits behind a proxy on its port that can add
# 20 ms ± 5 ms to every answer (deploy/netns/delay_proxy.py, switched by a flag file).
if in_ns sl-app1 tc qdisc add dev eth0 root netem delay 0ms 2> /dev/null; then
  in_ns sl-app1 tc qdisc del dev eth0 root
  NETEM=1
  start sl-app1 gateway
else
  NETEM=0
  start sl-app1 gateway 5100
  in_ns sl-app1 python3 deploy/netns/delay_proxy.py 10.77.0.11 5000 10.77.0.11 5100 "$W/slow" \
    > "$W/proxy.log" 2>&1 &
  PIDS+=($!)
fi
start sl-app2 gateway
for n in sl-app1 sl-app2; do start "$n" worker; done
for n in sl-app1 sl-app2; do wait_for "http://${IP[$n]}:5005/health"; wait_for "http://${IP[$n]}:5000/ready"; done
start sl-edge lb
LB=http://10.77.0.20:8000
wait_for "$LB/_lb/health"
say "4 hosts up: db 10.77.0.2, app1 .11, app2 .12, edge .20"

JWT=$(curl -fs -X POST "$LB/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$ADMIN\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# One bench run through the balancer: prints "answered failed p99_ms app1% app2%".
bench() { # duration
  "$BIN" bench "$LB/data?key=key-{uniform:20}" -c 16 -d "$1" --token "$JWT" --json "$W/b.json" > /dev/null 2>&1 || true
  python3 - "$W/b.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
bad = sum(n for c, n in r["status_codes"].items() if not c.startswith("2"))
share = {s["id"]: s["percent"] for s in r["instances"]}
print(r["requests"]["answered"], r["requests"]["failed"] + bad, round(r["latency"]["p99_ms"], 1),
      round(share.get("app1-gateway", 0), 1), round(share.get("app2-gateway", 0), 1))
PY
}
ROWS=()
row() { ROWS+=("$(printf '%-44s %-10s %-8s %-9s %-7s %-7s' "$@")"); }

read -r ok bad p99 a1 a2 <<< "$(bench 4s)"
row "baseline" "$ok" "$bad" "$p99" "$a1%" "$a2%"

# 1. 20 ms ± 5 ms of latency on app1: least connections moves load to app2; nothing fails. With
#    netem on app1's link; without, added to each answer by the proxy in front of app1's gateway.
if [ "$NETEM" = 1 ]; then
  in_ns sl-app1 tc qdisc add dev eth0 root netem delay 20ms 5ms
  SLOW="1. app1 +20ms±5ms latency (netem)"
else
  touch "$W/slow"
  SLOW="1. app1 +20ms±5ms latency (proxy; no netem)"
fi
read -r ok bad p99 a1 a2 <<< "$(bench 4s)"
row "$SLOW" "$ok" "$bad" "$p99" "$a1%" "$a2%"
[ "$bad" = 0 ] || FAIL=1
if [ "$NETEM" = 1 ]; then in_ns sl-app1 tc qdisc del dev eth0 root; else rm -f "$W/slow"; fi

# 2. app1's link cut mid-load (with tasks leased by its workers): reads fail over to app2;
#    the tasks app1's workers held run again on app2 once their lease lapses.
TASKS=()
for _ in $(seq 1 12); do
  TASKS+=("$(curl -fs -X POST "$LB/tasks" -H "authorization: Bearer $JWT" -H 'content-type: application/json' \
    -d '{"type":"sleep","payload":{"ms":1500}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')")
done
sleep 0.5
( sleep 1; ip link set v-sl-app1 down ) &
read -r ok bad p99 a1 a2 <<< "$(bench 5s)"
row "2. app1 link cut during the run" "$ok" "$bad" "$p99" "$a1%" "$a2%"
# The reads in flight on app1 when its link went down get no answer; the balancer sends them
# again to app2 after its response timeout (`retry_timeouts`, they are idempotent): none fails.
[ "$bad" = 0 ] || FAIL=1
LOST=0
for id in "${TASKS[@]}"; do
  st=""
  for _ in $(seq 1 100); do
    st=$(curl -fs "$LB/tasks/$id" -H "authorization: Bearer $JWT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' || true)
    [ "$st" = succeeded ] && break
    sleep 0.2
  done
  [ "$st" = succeeded ] || LOST=$((LOST + 1))
done
row "   tasks submitted before the cut: ${#TASKS[@]}" "-" "lost $LOST" "-" "-" "-"
[ "$LOST" = 0 ] || FAIL=1

# 3. The partition heals: app1 rejoins the balancer's pool by itself (health checks).
ip link set v-sl-app1 up
for _ in $(seq 1 100); do
  n=$(curl -fs "$LB/_lb/stats" | python3 -c 'import json,sys; print(sum(b["state"]=="active" for b in json.load(sys.stdin)["backends"]))')
  [ "$n" = 2 ] && break
  sleep 0.2
done
# Its health checks do not read through its gateway's connections to Redis and PostgreSQL, which
# the cut may have left waiting on TCP's retransmission backoff: wait (at most 10 s) until app1
# answers a read itself, and say how long that took.
T0=$(date +%s%N)
for _ in $(seq 1 50); do
  curl -fs -m 1 "http://10.77.0.11:5000/data?key=key-1" -H "authorization: Bearer $JWT" > /dev/null && break
  sleep 0.2
done
say "app1 answered a read $(( ($(date +%s%N) - T0) / 1000000 )) ms after the balancer had it active again"
curl -fs "$LB/_lb/stats" > "$W/stats-rejoin.json"
read -r ok bad p99 a1 a2 <<< "$(bench 4s)"
row "3. app1's link back: rejoined" "$ok" "$bad" "$p99" "$a1%" "$a2%"
awk -v a="$a1" 'BEGIN { exit !(a > 0) }' || {
  echo "[netns] the balancer before the rejoin run:" >&2; cat "$W/stats-rejoin.json" >&2; curl -fs "$LB/_lb/stats" >&2; echo >&2
  for log in sl-edge-lb sl-app1-gateway sl-app1-db; do
    echo "[netns] the last warnings of $log:" >&2; grep -E "WARN|ERROR" "$W/$log.log" | tail -15 >&2 || true
  done
}
awk -v a="$a1" 'BEGIN { exit !(a > 0) }' || FAIL=1

# 4. 1% packet loss on the edge, both ways: reported (TCP retransmits; no failure expected). With
#    netem `loss 1%`; without it, iptables' `statistic` match drops 1% of the packets instead.
if in_ns sl-edge tc qdisc add dev eth0 root netem loss 1% 2> /dev/null; then
  LOSS="4. edge 1% packet loss (netem)"
  undo_loss() { in_ns sl-edge tc qdisc del dev eth0 root; }
else
  in_ns sl-edge iptables -A INPUT -i eth0 -m statistic --mode random --probability 0.01 -j DROP
  in_ns sl-edge iptables -A OUTPUT -o eth0 -m statistic --mode random --probability 0.01 -j DROP
  LOSS="4. edge 1% packet loss (iptables)"
  undo_loss() { in_ns sl-edge iptables -F; }
fi
read -r ok bad p99 a1 a2 <<< "$(bench 4s)"
row "$LOSS" "$ok" "$bad" "$p99" "$a1%" "$a2%"
undo_loss

echo
printf '%-44s %-10s %-8s %-9s %-7s %-7s\n' "injected" "answered" "failed" "p99 ms" "app1" "app2"
for r in "${ROWS[@]}"; do echo "$r"; done
if [ "$FAIL" != 0 ]; then
  echo "[netns] FAILED: a failover lost requests, or a task was lost" >&2
  exit 1
fi
echo "[netns] ok: no task lost, failover and rejoin as expected"
