#!/usr/bin/env bash
# Benchmark of the task queue (issue 4): scalelab's three backends (SQLite, PostgreSQL, RabbitMQ)
# against Celery on Redis, side by side in one run on this machine. Each system gets two worker
# processes of SLOTS slots and the same no-op task (`add` 1 + 2), and is measured the same way:
#   1. the workers are paused (SIGSTOP), N tasks are submitted by C concurrent clients: submission
#      latency p50/p99 and submissions per second;
#   2. the workers are resumed (SIGCONT) and the time until the last result is stored gives the
#      drain rate (tasks per second through the backend).
# scalelab is driven through its real binary (`scalelab up` with a topology selecting the backend,
# `scalelab bench` against POST /tasks, GET /tasks/stats for the drain), so its figures include
# what a user's submission really costs: HTTP, token check, validation, the store's commit.
# Celery's client calls `apply_async` from C processes (a Redis LPUSH, no HTTP in between).
#
# Needs: PostgreSQL, RabbitMQ and Redis on 127.0.0.1 (root@postgres, guest@rabbitmq), and
# `pip install celery redis packaging`. Usage: bench/queue-vs-celery.sh [N=20000] [C=8] [SLOTS=4]
# SYSTEMS (default "sqlite postgresql rabbitmq celery") picks the systems run; the ratios need celery.
# KEEP_WORK=1 keeps the run's directory (topologies, `up` logs, bench reports) and prints its path.
# After each scalelab backend's burn-down, the steady state: RATES (500 1000 2000) submissions per
# second for STEADY_SECS (10) each, open model, and the submission-to-start wait's p50/p99; Celery
# (acks_late) at the same rates after its burn-down, the wait measured inside its task.
# The burn-down table: the drain rate of each system beside Celery's with acks_late
# (`reliable`, the guarantee scalelab gives), as a ratio. After each PostgreSQL-backed run the
# size of the `tasks` table and its dead rows are printed (what retention and vacuum must keep
# in check).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
C=${2:-8}
SLOTS=${3:-4}
BIN=${SCALELAB_BIN:-target/release/scalelab}
PG=${PG_URL:-postgres://root@127.0.0.1:5432}
AMQP=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
[ -x "$BIN" ] || cargo build --release -p cli
python3 -c 'import celery, redis, packaging' 2>/dev/null || { echo "needs: pip install celery redis packaging" >&2; exit 1; }
HELPER="python3 bench/queue_vs_celery.py"

WORK=$(mktemp -d /tmp/scalelab-queue-bench.XXXXXX)
TAG="qb_$$_$RANDOM"
UP=
CELERY_PGIDS=()
DBS=()
REDIS_DB=
cleanup() {
  [ -n "$UP" ] && { kill -TERM "$UP" 2>/dev/null; wait "$UP" 2>/dev/null || true; }
  for g in "${CELERY_PGIDS[@]}"; do kill -CONT -- "-$g" 2>/dev/null; kill -TERM -- "-$g" 2>/dev/null; done
  for db in "${DBS[@]}"; do dropdb -h 127.0.0.1 -U root --if-exists "$db" 2>/dev/null || true; done
  [ -n "$REDIS_DB" ] && redis-cli -n "$REDIS_DB" flushdb >/dev/null
  $HELPER rabbit-cleanup "scalelab-bench-$TAG" 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

export SCALELAB_ADMIN_PASSWORD="bench-$TAG"
# Warnings only, as the Celery workers below (`-l warning`): at info a worker writes two lines
# per task, which `up` forwards, and at thousands of tasks per second that is measured too.
export RUST_LOG=${RUST_LOG:-warn}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
fmt() { python3 -c "import json,sys; print('%.2f' % json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
ROWS=()
STEADY=()
declare -A DRAIN=()
row() { ROWS+=("$(printf '%-28s %12s %12s %14s %14s' "$@")"); }

# One scalelab backend: $1 name, $2 the [queue] section.
scalelab_run() {
  local name=$1 queue=$2 dir="$WORK/$1"
  mkdir -p "$dir"
  cat > "$dir/topology.toml" <<EOF
[instances]
host = "127.0.0.1"
gateway = [5000]
auth = [5011]
db = [5002]
worker = [5005, 5008]
[gateway]
cache = "local"
[auth]
argon2_memory_kib = 1024
argon2_iterations = 1
[worker]
concurrency = $SLOTS
# Short no-op tasks: a slot claims 16 at once (the default, 1, spreads long tasks over idle slots).
prefetch = ${PREFETCH:-16}
poll_ms = ${POLL_MS:-200}
$queue
EOF
  "$BIN" up --free-ports --config "$dir/topology.toml" --data-dir "$dir/data" > "$dir/up.log" 2>&1 &
  UP=$!
  for _ in $(seq 1 300); do [ -s "$dir/data/instances.json" ] && break; sleep 0.1; done
  [ -s "$dir/data/instances.json" ] || { cat "$dir/up.log" >&2; exit 1; }
  local gw pids token
  gw=$(python3 -c "import json; print([i['url'] for i in json.load(open('$dir/data/instances.json')) if i['id']=='gateway-1'][0])")
  pids=$(python3 -c "import json; print(' '.join(str(i['pid']) for i in json.load(open('$dir/data/instances.json')) if i['role']=='worker'))")
  token=$(curl -s -X POST "$gw/login" -H 'content-type: application/json' \
    -d "{\"username\":\"admin\",\"password\":\"$SCALELAB_ADMIN_PASSWORD\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  # Paused, but never inside a write to the SQLite file: a worker stopped holding its write lock
  # (an idle slot's claim every poll_ms) would refuse every submission until it is resumed.
  local paused=0
  for _ in $(seq 1 100); do
    # shellcheck disable=SC2086
    kill -STOP $pids
    [ -z "$queue" ] || { paused=1; break; }
    python3 - "$dir/data/queue.sqlite" <<'PY' && { paused=1; break; }
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=0.05, isolation_level=None)
try:
    db.execute("BEGIN IMMEDIATE")
    db.execute("ROLLBACK")
except sqlite3.OperationalError:
    sys.exit(1)
PY
    # shellcheck disable=SC2086
    kill -CONT $pids
    sleep 0.05
  done
  [ "$paused" = 1 ] || { echo "$name: could not pause the workers outside a write" >&2; exit 1; }
  "$BIN" bench "$gw/tasks" -m POST --body '{"type":"add","payload":{"a":1,"b":2}}' --token "$token" \
    -c "$C" -n "$N" --json "$dir/submit.json" > "$dir/bench.txt" 2>&1
  local submit drain
  submit=$($HELPER summary "$dir/submit.json")
  [ "$(field "$submit" accepted)" = "$N" ] || { echo "$name: not every submission was accepted: $submit" >&2; exit 1; }
  # shellcheck disable=SC2086
  drain=$($HELPER scalelab-drain "$gw" "$token" "$N" "$(python3 -c "import json; print(','.join(i['url'] for i in json.load(open('$dir/data/instances.json')) if i['role']=='worker'))")" $pids)
  echo "$name: submit $submit; drain $drain" >&2
  DRAIN["scalelab $name"]=$(fmt "$drain" rate)
  case "$queue" in
    *postgres*) psql -h 127.0.0.1 -U root -d "$(sed -n 's|.*url = "[^"]*/\([^"/]*\)"|\1|p' <<< "$queue" | head -1)" -Atc \
      "SELECT 'tasks table: ' || pg_size_pretty(pg_total_relation_size('tasks')) || ', ' || n_live_tup || ' live rows, ' || n_dead_tup || ' dead rows' FROM pg_stat_user_tables WHERE relname = 'tasks'" \
      | sed "s/^/$name: /" >&2 ;;
  esac
  row "scalelab $name" "$(fmt "$drain" rate)" "$(fmt "$submit" rate)" "$(fmt "$submit" p50_ms)" "$(fmt "$submit" p99_ms)"
  # Steady state (open model): a fixed submission rate through the gateway for STEADY_SECS; the
  # wait from submission to start, from the workers' histogram, over the tasks of that run.
  local workers before after waits sub r
  workers=$(python3 -c "import json; print(' '.join(i['url'] for i in json.load(open('$dir/data/instances.json')) if i['role']=='worker'))")
  for r in ${RATES:-500 1000 2000}; do
    # shellcheck disable=SC2086
    before=$($HELPER wait-buckets $workers)
    "$BIN" bench "$gw/tasks" -m POST --body '{"type":"add","payload":{"a":1,"b":2}}' --token "$token" \
      -c 64 --rate "$r" -d "${STEADY_SECS:-10}s" --json "$dir/steady-$r.json" > "$dir/steady-$r.txt" 2>&1
    sub=$($HELPER summary "$dir/steady-$r.json")
    # Until the queue is empty again (or 30 s): what was not started yet counts in the histogram.
    for _ in $(seq 1 300); do
      [ "$(curl -s "$gw/tasks/stats" -H "Authorization: Bearer $token" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(d["depth_by_priority"].values()) + d["by_status"]["running"])')" = "0" ] && break
      sleep 0.1
    done
    # shellcheck disable=SC2086
    after=$($HELPER wait-buckets $workers)
    waits=$($HELPER wait-quantiles "$before" "$after")
    STEADY+=("$(printf '%-22s %8s %12s %12s %14s %14s' "scalelab $name" "$r" "$(fmt "$sub" rate)" "$(field "$waits" tasks | cut -d. -f1)" \
      "$(python3 -c "import json,sys; v=json.loads(sys.argv[1])['p50_ms']; print('-' if v is None else '%.2f' % v)" "$waits")" \
      "$(python3 -c "import json,sys; v=json.loads(sys.argv[1])['p99_ms']; print('-' if v is None else '%.2f' % v)" "$waits")")")
  done
  kill -TERM "$UP"; wait "$UP" || true; UP=
}

# Celery with two workers of SLOTS processes; $1 the profile (reliable | default).
celery_run() {
  local profile=$1 dir="$WORK/celery-$1"
  mkdir -p "$dir"
  redis-cli -n "$REDIS_DB" flushdb >/dev/null
  export CELERY_PROFILE=$profile
  CELERY_PGIDS=()
  for w in 1 2; do
    (cd bench && exec setsid celery -A queue_vs_celery worker -c "$SLOTS" -P prefork -l warning \
       -n "w$w-$TAG@%h" --without-gossip --without-mingle --without-heartbeat > "$dir/w$w.log" 2>&1) &
    CELERY_PGIDS+=("$!")
  done
  # Ready once both answer a ping.
  (cd bench && python3 -c "
import time, queue_vs_celery as q
for _ in range(120):
    if len(q.app.control.ping(timeout=0.5)) >= 2: break
    time.sleep(0.25)
else: raise SystemExit('celery workers did not start')")
  for g in "${CELERY_PGIDS[@]}"; do kill -STOP -- "-$g"; done
  local submit drain
  submit=$(cd bench && python3 queue_vs_celery.py celery-submit "$N" "$C")
  drain=$(cd bench && python3 queue_vs_celery.py celery-drain "$N" "${CELERY_PGIDS[@]}")
  echo "celery $profile: submit $submit; drain $drain" >&2
  DRAIN["celery redis ($profile)"]=$(fmt "$drain" rate)
  row "celery redis ($profile)" "$(fmt "$drain" rate)" "$(fmt "$submit" rate)" "$(fmt "$submit" p50_ms)" "$(fmt "$submit" p99_ms)"
  # The steady state with the guarantees scalelab gives (acks_late): the same rates, submitted by
  # 4 processes with `apply_async` (no HTTP), the wait measured in the task from its intended
  # submission time to its start.
  if [ "$profile" = reliable ]; then
    local r waits
    for r in ${RATES:-500 1000 2000}; do
      waits=$(cd bench && python3 queue_vs_celery.py celery-steady "$r" "${STEADY_SECS:-10}" 4)
      STEADY+=("$(printf '%-22s %8s %12s %12s %14s %14s' "celery reliable" "$r" "$(fmt "$waits" rate)" "$(field "$waits" tasks)" \
        "$(python3 -c "import json,sys; v=json.loads(sys.argv[1])['p50_ms']; print('-' if v is None else '%.2f' % v)" "$waits")" \
        "$(python3 -c "import json,sys; v=json.loads(sys.argv[1])['p99_ms']; print('-' if v is None else '%.2f' % v)" "$waits")")")
    done
  fi
  for g in "${CELERY_PGIDS[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${CELERY_PGIDS[@]}"; do while kill -0 -- "-$g" 2>/dev/null; do sleep 0.1; done; done
  CELERY_PGIDS=()
}

# A Redis database nobody uses (empty), flushed again at the end.
for n in $(seq 15 -1 1); do
  if [ "$(redis-cli -n "$n" dbsize)" = "0" ]; then REDIS_DB=$n; break; fi
done
[ -n "$REDIS_DB" ] || { echo "no empty Redis database" >&2; exit 1; }
export CELERY_REDIS_DB=$REDIS_DB

echo "machine: $(nproc) cores, $(uname -r); load before: $(uptime | sed 's/.*load average: //')"
echo "$N no-op tasks (add 1 + 2), 2 workers x $SLOTS slots, $C concurrent submitters; Redis db $REDIS_DB"

wanted() { [[ " ${SYSTEMS:-sqlite postgresql rabbitmq celery} " == *" $1 "* ]]; }
if wanted sqlite; then scalelab_run sqlite ""; fi
if wanted postgresql; then
  DBS+=("${TAG}_pg")
  createdb -h 127.0.0.1 -U root "${TAG}_pg"
  scalelab_run postgresql "[queue]
url = \"$PG/${TAG}_pg\""
fi
if wanted rabbitmq; then
  DBS+=("${TAG}_rmq")
  createdb -h 127.0.0.1 -U root "${TAG}_rmq"
  scalelab_run rabbitmq "[queue]
url = \"$PG/${TAG}_rmq\"
amqp_url = \"$AMQP\"
amqp_queue = \"scalelab-bench-$TAG\""
fi
if wanted celery; then
  celery_run reliable
  celery_run default
fi

echo
printf '%-28s %12s %12s %14s %14s\n' "system" "drain task/s" "submit/s" "submit p50 ms" "submit p99 ms"
printf '%s\n' "${ROWS[@]}"
echo
echo "burn-down: $N no-op tasks queued while the workers are paused, then released"
printf '%-28s %12s %18s\n' "system" "drain task/s" "x celery acks_late"
base=${DRAIN["celery redis (reliable)"]:-}
for sys in "scalelab sqlite" "scalelab postgresql" "scalelab rabbitmq" "celery redis (reliable)" "celery redis (default)"; do
  [ -n "${DRAIN[$sys]:-}" ] || continue
  ratio=-
  [ -n "$base" ] && ratio=$(python3 -c "print('%.2f' % (${DRAIN[$sys]} / $base))")
  printf '%-28s %12s %18s\n' "$sys" "${DRAIN[$sys]}" "$ratio"
done
echo
echo "steady state: a fixed submission rate through the gateway for ${STEADY_SECS:-10} s (open model, 64 connections; Celery: apply_async from 4 processes);"
echo "wait = submission to start, from the workers' scalelab_task_wait_seconds (as fine as its buckets); Celery's measured in its task"
printf '%-22s %8s %12s %12s %14s %14s\n' "system" "rate/s" "submitted/s" "tasks run" "wait p50 ms" "wait p99 ms"
printf '%s\n' "${STEADY[@]}"
# Per backend, the highest rate it sustained: at least 95% of the rate submitted, and the wait's
# p50 under 10 ms (the issue's bar); "none" when not even the lowest rate passed.
echo
echo "highest sustained rate (>= 95% of the rate submitted, wait p50 < 10 ms):"
printf '%s\n' "${STEADY[@]}" | python3 -c '
import sys
best = {}
for line in sys.stdin:
    f = line.split()
    if len(f) < 7:
        continue
    name, rate, sub, p50 = f[0] + " " + f[1], float(f[2]), float(f[3]), f[5]
    best.setdefault(name, None)
    if sub >= 0.95 * rate and p50 != "-" and float(p50) < 10:
        best[name] = max(rate, best[name] or 0)
for name, rate in best.items():
    print("%-22s %s" % (name, "none" if rate is None else "%d/s" % rate))
'
echo "load after: $(uptime | sed 's/.*load average: //')"
