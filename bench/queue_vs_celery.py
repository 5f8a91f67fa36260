"""Helpers of bench/queue-vs-celery.sh: the Celery side (the app, its no-op task, a submitter)
and the drain timers of both sides.

    celery -A queue_vs_celery worker ...                 the Celery app (broker and results: Redis)
    python3 queue_vs_celery.py celery-submit N C         submit N add(1, 2) tasks from C processes
    python3 queue_vs_celery.py celery-drain N PGID...    resume the paused workers, time the drain
    python3 queue_vs_celery.py scalelab-drain URL TOKEN N WORKERS PID...   the same for scalelab
                                                         (WORKERS: the workers' URLs, comma-separated)
    python3 queue_vs_celery.py celery-steady RATE SECS C  submit RATE stamp() tasks/s for SECS from C
                                                         processes (open model); the wait from each
                                                         task's intended submission to its start
    python3 queue_vs_celery.py summary FILE              p50/p99/rate of a `scalelab bench --json`
    python3 queue_vs_celery.py rabbit-cleanup NAME       delete the run's RabbitMQ queues

Environment: CELERY_REDIS_DB (the Redis database number, fresh for the run), CELERY_PROFILE
(`reliable`: acks_late and prefetch 1, the guarantees scalelab gives; `default`: Celery's
defaults, early ack and prefetch 4).
"""

import json
import multiprocessing
import os
import signal
import sys
import time
import urllib.request

from celery import Celery

REDIS = f"redis://127.0.0.1:6379/{os.environ.get('CELERY_REDIS_DB', '13')}"
PROFILE = os.environ.get("CELERY_PROFILE", "reliable")

app = Celery("queue_vs_celery", broker=REDIS, backend=REDIS)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
if PROFILE == "reliable":
    # What scalelab promises: the message is acknowledged after the task ran and its result is
    # stored, and a worker holds one task per slot.
    app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1)


@app.task(name="add")
def add(a, b):
    """The no-op task: scalelab's `add` type does the same."""
    return a + b


@app.task(name="stamp")
def stamp(sent):
    """The steady state's no-op task: how long after its intended submission (`sent`, wall clock
    on this machine) it started, in milliseconds."""
    return (time.time() - sent) * 1000.0


def percentile(sorted_values, q):
    """Nearest rank."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def _submit_share(count, barrier, out):
    # Connect first, so that the timed part is the submissions, not connection set-up.
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection(max_retries=3)
    barrier.wait()
    started = time.perf_counter()
    latencies = []
    for _ in range(count):
        t = time.perf_counter()
        add.apply_async((1, 2))
        latencies.append((time.perf_counter() - t) * 1000.0)
    out.put((started, time.perf_counter(), latencies))


def _in_processes(target, args):
    """Runs target(*a, barrier, out) in one process per `a` in `args` (no GIL between them), all
    released together by the barrier once each is connected; what each put on `out`."""
    barrier = multiprocessing.Barrier(len(args))
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=target, args=(*a, barrier, out)) for a in args]
    for p in procs:
        p.start()
    parts = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return parts


def celery_submit(n, c):
    """Submits n tasks from c processes (no GIL between them), all starting together once
    connected; prints the figures as JSON."""
    shares = [n // c + (1 if i < n % c else 0) for i in range(c)]
    parts = _in_processes(_submit_share, [(k,) for k in shares])
    elapsed = max(p[1] for p in parts) - min(p[0] for p in parts)
    lat = sorted(x for part in parts for x in part[2])
    print(json.dumps({
        "requests": len(lat),
        "rate": len(lat) / elapsed,
        "p50_ms": percentile(lat, 0.50),
        "p99_ms": percentile(lat, 0.99),
    }))


def _steady_share(rate, secs, barrier, out):
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection(max_retries=3)
    barrier.wait()
    start = time.time()
    interval = 1.0 / rate
    n = int(rate * secs)
    for i in range(n):
        intended = start + i * interval
        delay = intended - time.time()
        if delay > 0:
            time.sleep(delay)
        # Late sends keep their intended time: the wait counts from it (no coordinated omission).
        stamp.apply_async((intended,))
    out.put((start, time.time(), n))


def celery_steady(rate, secs, c):
    """Submits `rate` stamp() tasks per second for `secs` from c processes, each at rate/c on its
    own schedule; waits (30 s at most) for their results; prints the submission rate reached and
    the wait quantiles of the tasks that ran, as JSON."""
    import redis

    r = redis.Redis.from_url(REDIS)
    r.flushdb()
    parts = _in_processes(_steady_share, [(rate / c, secs)] * c)
    sent = sum(p[2] for p in parts)
    elapsed = max(p[1] for p in parts) - min(p[0] for p in parts)
    deadline = time.time() + 30
    keys = []
    while time.time() < deadline:
        keys = list(r.scan_iter(match="celery-task-meta-*", count=10000))
        if len(keys) >= sent:
            break
        time.sleep(0.1)
    waits = []
    for i in range(0, len(keys), 1000):
        for raw in r.mget(keys[i:i + 1000]):
            if raw is not None:
                waits.append(float(json.loads(raw)["result"]))
    waits.sort()
    print(json.dumps({
        "rate": sent / elapsed,
        "tasks": len(waits),
        "p50_ms": percentile(waits, 0.50) if waits else None,
        "p99_ms": percentile(waits, 0.99) if waits else None,
    }))


def _signal_all(ids, sig, group):
    for i in ids:
        if group:
            os.killpg(int(i), sig)
        else:
            os.kill(int(i), sig)


def celery_drain(n, pgids):
    """Resumes the paused workers and waits until n results are stored; prints seconds."""
    import redis

    r = redis.Redis.from_url(REDIS)
    started = time.perf_counter()
    _signal_all(pgids, signal.SIGCONT, group=True)
    deadline = started + 600
    while time.perf_counter() < deadline:
        # DBSIZE is cheap; the exact count (a SCAN) only once it can be reached.
        if r.dbsize() >= n:
            done = sum(1 for _ in r.scan_iter(match="celery-task-meta-*", count=10000))
            if done >= n:
                elapsed = time.perf_counter() - started
                sample = r.get(next(r.scan_iter(match="celery-task-meta-*")))
                assert json.loads(sample)["result"] == 3, sample
                print(json.dumps({"tasks": done, "seconds": elapsed, "rate": done / elapsed}))
                return
        time.sleep(0.025)
    sys.exit("celery did not drain within 600 s")


def _metric_lines(urls):
    """Every line of the workers' `/metrics` pages, one worker after another."""
    for url in urls:
        with urllib.request.urlopen(f"{url}/metrics") as resp:
            yield from resp.read().decode().splitlines()


def _succeeded_runs(urls):
    """How many tasks the workers ran to success, from their `scalelab_tasks_total` counters:
    cheap (each worker's memory), and ahead of the store by the results not stored yet."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in _metric_lines(urls)
               if line.startswith("scalelab_tasks_total{") and 'outcome="succeeded"' in line)


def scalelab_drain(url, token, n, workers, pids):
    """Resumes the paused workers and waits until n results are stored; prints seconds.

    As with Celery (DBSIZE first, the exact count once it can be reached), the poll is cheap
    until the workers' counters say n tasks ran, and only then asks the store (GET /tasks/stats,
    which counts the table) whether n results are stored. Polling the stats all along took a
    third of this two-core machine from the workers being measured (docs/PERFORMANCE.md)."""
    req = urllib.request.Request(f"{url}/tasks/stats", headers={"Authorization": f"Bearer {token}"})
    started = time.perf_counter()
    _signal_all(pids, signal.SIGCONT, group=False)
    deadline = started + 600
    stats = None
    while time.perf_counter() < deadline:
        if _succeeded_runs(workers) >= n:
            with urllib.request.urlopen(req) as resp:
                stats = json.load(resp)
            done = stats["by_status"]["succeeded"]
            if done >= n:
                elapsed = time.perf_counter() - started
                print(json.dumps({"tasks": done, "seconds": elapsed, "rate": done / elapsed,
                                  "backend": stats.get("backend")}))
                return
        time.sleep(0.025)
    sys.exit(f"scalelab did not drain within 600 s: {stats}")


def rabbit_cleanup(name):
    """Deletes the RabbitMQ queues and exchange scalelab declared for this run."""
    import amqp

    conn = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest")
    conn.connect()
    ch = conn.channel()
    for q in (name, f"{name}.dead"):
        ch.queue_delete(q)
    ch.exchange_delete(f"{name}.dlx")
    conn.close()


def summary(path):
    with open(path) as f:
        report = json.load(f)
    print(json.dumps({
        "requests": report["requests"]["total"],
        "accepted": report["status_codes"].get("202", 0),
        "rate": report["rps"],
        "p50_ms": report["latency"]["p50_ms"],
        "p99_ms": report["latency"]["p99_ms"],
    }))


def wait_buckets(urls):
    """The workers' `scalelab_task_wait_seconds` histogram (submission to start), summed over
    workers and task types: {le: count}."""
    import re
    out = {}
    for line in _metric_lines(urls):
        m = re.match(r'scalelab_task_wait_seconds_bucket\{.*le="([^"]+)".*\} ([0-9.e+-]+)', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
    print(json.dumps(out))


def wait_quantiles(before, after):
    """p50 and p99 (ms) of the waits observed between two `wait_buckets` readings, interpolated
    inside a bucket as Prometheus's histogram_quantile does (as fine as the buckets)."""
    b, a = json.loads(before), json.loads(after)
    les = sorted(a, key=lambda le: float("inf") if le == "+Inf" else float(le))
    cum = [(float("inf") if le == "+Inf" else float(le), a[le] - b.get(le, 0)) for le in les]
    total = cum[-1][1] if cum else 0
    def q(x):
        rank, prev = x * total, (0.0, 0.0)
        for le, n in cum:
            if n >= rank:
                if le == float("inf"):
                    return prev[0] * 1000
                inside = n - prev[1]
                share = (rank - prev[1]) / inside if inside else 1
                return (prev[0] + (le - prev[0]) * share) * 1000
            prev = (le, n)
        return prev[0] * 1000
    print(json.dumps({"tasks": total, "p50_ms": q(0.5) if total else None, "p99_ms": q(0.99) if total else None}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "celery-submit":
        celery_submit(int(args[0]), int(args[1]))
    elif cmd == "celery-steady":
        celery_steady(float(args[0]), float(args[1]), int(args[2]))
    elif cmd == "celery-drain":
        celery_drain(int(args[0]), args[1:])
    elif cmd == "scalelab-drain":
        scalelab_drain(args[0], args[1], int(args[2]), args[3].split(","), args[4:])
    elif cmd == "rabbit-cleanup":
        rabbit_cleanup(args[0])
    elif cmd == "summary":
        summary(args[0])
    elif cmd == "wait-buckets":
        wait_buckets(args)
    elif cmd == "wait-quantiles":
        wait_quantiles(args[0], args[1])
    else:
        sys.exit(f"unknown command {cmd}")
