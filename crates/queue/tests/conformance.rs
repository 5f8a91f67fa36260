//! The conformance suite: the same tests against every backend (`conformance!` expands them once
//! per engine). PostgreSQL tests use a fresh database per test and skip, saying so, when the server
//! is unreachable (a failure with `CI` set).
//!
//! Time: no test asserts how long anything took. Backoffs and leases are checked on the stored
//! times (`not_before`, `lease_until`, `started_at`) against the clock read around each call, and a
//! test that needs a lease or a backoff to run out waits for that state (the clock past the stored
//! time, or a claim that succeeds), with a generous deadline, never for a fixed time.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue::{Config, Error, ListQuery, NewTask, Priority, Queue, Status};
use serde_json::json;

/// A queue and what must live as long as it (a temporary directory, a test database).
struct Backend {
    queue: Arc<dyn Queue>,
    _keep: Box<dyn Any + Send>,
}

fn config() -> Config {
    Config {
        max_attempts: 3,
        // The second wait (200 ms before the ceiling) is capped: the ceiling is exercised too.
        retry_base_ms: 100,
        retry_max_ms: 150,
        ..Config::default()
    }
}

/// The wait the queue documents after failed attempt `attempt` (1-based): between half and all
/// of `retry_base_ms * 2^(attempt - 1)`, at most `retry_max_ms`.
fn backoff_window(attempt: u32) -> (i64, i64) {
    let c = config();
    let full = (c.retry_base_ms << (attempt - 1)).min(c.retry_max_ms) as i64;
    (full / 2, full)
}

async fn sqlite() -> Option<Backend> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..config()
    };
    let queue = queue::open(&config).await.expect("open sqlite queue");
    assert_eq!(queue.backend(), "sqlite");
    Some(Backend {
        queue,
        _keep: Box::new(dir),
    })
}

async fn postgres() -> Option<Backend> {
    let db = common::testing::fresh_postgres("queue").await?;
    let config = Config {
        url: Some(db.url.clone()),
        ..config()
    };
    let queue = queue::open(&config).await.expect("open postgres queue");
    assert_eq!(queue.backend(), "postgres");
    queue.ping().await.expect("postgres answers");
    Some(Backend {
        queue,
        _keep: Box::new(db),
    })
}

/// RabbitMQ on 127.0.0.1:5672 (`SCALELAB_TEST_AMQP`), with its state in a fresh PostgreSQL
/// database. The broker has no management API here, so each test gets a fresh queue name
/// (`scalelab-test-<uuid>`, deleted by the broker 10 minutes after its last use) instead of a
/// fresh vhost.
async fn rabbitmq() -> Option<Backend> {
    let amqp = std::env::var("SCALELAB_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let db = common::testing::fresh_postgres("queue_amqp").await?;
    let config = Config {
        url: Some(db.url.clone()),
        amqp_url: Some(amqp.clone()),
        ..config()
    };
    let name = format!("scalelab-test-{}", uuid::Uuid::new_v4().simple());
    let queue =
        match queue::RabbitQueue::connect(&amqp, &name, &config, Some(Duration::from_secs(600)))
            .await
        {
            Ok(q) => q,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("SKIP: RabbitMQ unreachable ({e}); set CI=1 to make this a failure");
                return None;
            }
            Err(e) => panic!("RabbitMQ is required in CI but unreachable: {e}"),
        };
    let queue: Arc<dyn Queue> = Arc::new(queue);
    assert_eq!(queue.backend(), "rabbitmq");
    Some(Backend {
        queue,
        _keep: Box::new(db),
    })
}

macro_rules! conformance {
    ($engine:ident) => {
        mod $engine {
            conformance!(@tests $engine:
                priorities_then_fifo,
                retry_with_backoff_then_dead_then_requeue,
                cancel_only_waiting_tasks,
                idempotency_key_returns_the_same_task,
                lapsed_lease_redelivers_and_the_result_is_recorded_once,
                heartbeats_and_progress_move_the_lease_forward,
                a_lease_lapsing_on_the_last_attempt_makes_the_task_dead,
                release_gives_the_task_back_without_an_attempt,
                list_filters_and_pages,
                stats_count_by_status_and_priority,
                a_thousand_tasks_two_claimers_one_dies,
                batch_claims_take_tasks_in_claim_order_each_under_its_own_lease,
                a_claimer_killed_holding_a_full_batch_loses_nothing,
                a_submission_wakes_a_waiting_claimer,
                a_submission_between_an_empty_claim_and_the_wait_is_not_missed,
                pruning_deletes_only_old_succeeded_and_cancelled_tasks,
            );
        }
    };
    (@tests $engine:ident: $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let Some(backend) = super::$engine().await else { return };
                super::$test(backend.queue.clone()).await;
            }
        )*
    };
}

conformance!(sqlite);
conformance!(postgres);
conformance!(rabbitmq);

const LEASE: Duration = Duration::from_secs(30);

fn task(kind: &str, priority: Priority, n: u64) -> NewTask {
    NewTask {
        priority,
        ..NewTask::new(kind, json!({ "ms": n }), "alice")
    }
}

fn now_ms() -> i64 {
    common::now_ms() as i64
}

/// Claims until a task comes (a backoff or a lease may be running), at most 30 s.
async fn claim_soon(q: &dyn Queue, worker: &str, lease: Duration) -> queue::Task {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(t) = q.claim(worker, lease).await.expect("claim") {
            return t;
        }
        assert!(Instant::now() < deadline, "no task became claimable");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the clock is past `at_ms` (a stored `lease_until` or `not_before`), at most 30 s.
async fn wait_past(at_ms: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = now_ms();
        if now > at_ms {
            return;
        }
        assert!(Instant::now() < deadline, "the clock never passed {at_ms}");
        tokio::time::sleep(Duration::from_millis((at_ms - now + 1) as u64)).await;
    }
}

async fn priorities_then_fifo(q: Arc<dyn Queue>) {
    let order = [
        ("low-1", Priority::Low),
        ("normal-1", Priority::Normal),
        ("high-1", Priority::High),
        ("normal-2", Priority::Normal),
        ("high-2", Priority::High),
        ("low-2", Priority::Low),
    ];
    let mut names = HashMap::new();
    for (i, (name, p)) in order.iter().enumerate() {
        let t = q.submit(task("sleep", *p, i as u64)).await.unwrap();
        assert_eq!(t.status, Status::Queued);
        assert_eq!(t.attempts, 0);
        assert_eq!(t.priority, *p);
        names.insert(t.id, *name);
    }
    let mut claimed = Vec::new();
    while let Some(t) = q.claim("w", LEASE).await.unwrap() {
        assert_eq!(t.status, Status::Running);
        assert_eq!(t.attempts, 1);
        assert_eq!(t.worker_id.as_deref(), Some("w"));
        assert!(t.started_at.is_some() && t.lease_until.is_some());
        claimed.push(names[&t.id]);
    }
    assert_eq!(
        claimed,
        ["high-1", "high-2", "normal-1", "normal-2", "low-1", "low-2"]
    );
}

async fn retry_with_backoff_then_dead_then_requeue(q: Arc<dyn Queue>) {
    let submitted = q
        .submit(NewTask::new("fail", json!({}), "alice"))
        .await
        .unwrap();
    assert_eq!(submitted.max_attempts, 3);
    let mut run_at: Option<i64> = None;
    for attempt in 1..=3u32 {
        // Claimed from right after the failure on: a queue that handed the task out before its
        // run-at would do it at once.
        let t = claim_soon(&*q, "w", LEASE).await;
        assert_eq!(t.id, submitted.id);
        assert_eq!(t.attempts, attempt);
        if let Some(run_at) = run_at {
            let started = t.started_at.expect("a claimed task has started");
            assert!(
                started >= run_at,
                "attempt {attempt} claimed at {started}, before its run-at {run_at}"
            );
        }
        let before = now_ms();
        let failed = q
            .fail(&t.id, "w", &format!("boom {attempt}"))
            .await
            .unwrap();
        let after = now_ms();
        assert_eq!(failed.error.as_deref(), Some(&*format!("boom {attempt}")));
        assert_eq!(failed.lease_until, None);
        if attempt < 3 {
            assert_eq!(failed.status, Status::Failed);
            assert!(failed.finished_at.is_none());
            // The stored run-at is the failure's time plus a wait in the documented window of
            // this attempt (base 100 ms doubling, capped at 150 ms: 50-100, then 75-150 ms).
            let (shortest, longest) = backoff_window(attempt);
            assert!(
                (before + shortest..=after + longest).contains(&failed.not_before),
                "attempt {attempt}: run-at {} outside {}..={}",
                failed.not_before,
                before + shortest,
                after + longest
            );
            assert_eq!(
                q.get(&t.id).await.unwrap().unwrap().not_before,
                failed.not_before,
                "what fail returned is what was stored"
            );
            run_at = Some(failed.not_before);
        } else {
            assert_eq!(failed.status, Status::Dead);
            assert!(failed.finished_at.is_some());
        }
    }
    assert!(
        q.claim("w", LEASE).await.unwrap().is_none(),
        "dead tasks do not run"
    );

    // An admin re-queues it: fresh attempts, the last error kept for the record.
    let again = q.requeue(&submitted.id).await.unwrap();
    assert_eq!(again.status, Status::Queued);
    assert_eq!(again.attempts, 0);
    assert_eq!(again.error.as_deref(), Some("boom 3"));
    let t = claim_soon(&*q, "w", LEASE).await;
    assert_eq!((t.id.as_str(), t.attempts), (submitted.id.as_str(), 1));
    assert!(matches!(
        q.requeue(&submitted.id).await,
        Err(Error::Conflict {
            status: Status::Running,
            ..
        })
    ));
    assert!(matches!(q.requeue("nope").await, Err(Error::NotFound(_))));
}

async fn cancel_only_waiting_tasks(q: Arc<dyn Queue>) {
    let a = q.submit(task("sleep", Priority::Normal, 1)).await.unwrap();
    let cancelled = q.cancel(&a.id).await.unwrap();
    assert_eq!(cancelled.status, Status::Cancelled);
    assert!(cancelled.finished_at.is_some());
    assert!(
        q.claim("w", LEASE).await.unwrap().is_none(),
        "cancelled tasks never run"
    );
    assert!(matches!(
        q.cancel(&a.id).await,
        Err(Error::Conflict {
            status: Status::Cancelled,
            ..
        })
    ));

    let b = q.submit(task("sleep", Priority::Normal, 2)).await.unwrap();
    q.claim("w", LEASE).await.unwrap().expect("b");
    assert!(matches!(
        q.cancel(&b.id).await,
        Err(Error::Conflict {
            status: Status::Running,
            ..
        })
    ));
    q.complete(&b.id, "w", json!(1)).await.unwrap();
    assert!(matches!(
        q.cancel(&b.id).await,
        Err(Error::Conflict {
            status: Status::Succeeded,
            ..
        })
    ));
    assert!(matches!(
        q.cancel("no-such-task").await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        q.get(&b.id).await.unwrap().unwrap().status,
        Status::Succeeded
    );
}

async fn idempotency_key_returns_the_same_task(q: Arc<dyn Queue>) {
    let keyed = |owner: &str, key: Option<&str>| NewTask {
        idempotency_key: key.map(str::to_string),
        ..NewTask::new("add", json!({"a": 1, "b": 2}), owner)
    };
    let first = q.submit(keyed("alice", Some("k1"))).await.unwrap();
    let again = q.submit(keyed("alice", Some("k1"))).await.unwrap();
    assert_eq!(first.id, again.id);
    assert_eq!(first.idempotency_key.as_deref(), Some("k1"));
    // Still the same task once it has run.
    q.claim("w", LEASE).await.unwrap().expect("claim");
    q.complete(&first.id, "w", json!(3)).await.unwrap();
    let later = q.submit(keyed("alice", Some("k1"))).await.unwrap();
    assert_eq!(
        (later.id.as_str(), later.status),
        (first.id.as_str(), Status::Succeeded)
    );
    // Keys are per owner, and no key means a new task every time.
    let bob = q.submit(keyed("bob", Some("k1"))).await.unwrap();
    assert_ne!(bob.id, first.id);
    let x = q.submit(keyed("alice", None)).await.unwrap();
    let y = q.submit(keyed("alice", None)).await.unwrap();
    assert_ne!(x.id, y.id);
    let all = q
        .list(&ListQuery {
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(all.tasks.len(), 4);
}

async fn lapsed_lease_redelivers_and_the_result_is_recorded_once(q: Arc<dyn Queue>) {
    let t = q.submit(task("sleep", Priority::Normal, 1)).await.unwrap();
    let short = Duration::from_millis(150);
    let a = q.claim("worker-a", short).await.unwrap().expect("a claims");
    // Worker a "dies": b claims from right away on, and gets the task only once a's lease lapsed.
    let b = claim_soon(&*q, "worker-b", LEASE).await;
    assert_eq!(b.id, a.id);
    let (lapsed, taken) = (a.lease_until.unwrap(), b.started_at.unwrap());
    assert!(
        taken > lapsed,
        "claimed at {taken} under a lease until {lapsed}"
    );
    assert_eq!(b.attempts, 2, "a redelivery is an attempt");
    assert!(
        b.error.as_deref().unwrap_or("").contains("worker-a"),
        "{b:?}"
    );

    // The late worker can neither renew, nor report, nor complete, nor fail.
    assert!(matches!(
        q.heartbeat(&t.id, "worker-a", LEASE).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        q.complete(&t.id, "worker-a", json!("from a")).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        q.fail(&t.id, "worker-a", "late").await,
        Err(Error::LeaseLost { .. })
    ));
    let done = q
        .complete(&t.id, "worker-b", json!("from b"))
        .await
        .unwrap();
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(done.error, None);
    // And after the holder finished, the late completion still changes nothing.
    assert!(matches!(
        q.complete(&t.id, "worker-a", json!("from a")).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        q.complete(&t.id, "worker-b", json!("twice")).await,
        Err(Error::LeaseLost { .. })
    ));
    let stored = q.get(&t.id).await.unwrap().unwrap();
    assert_eq!(stored.result, Some(json!("from b")));
    assert_eq!(stored.worker_id.as_deref(), Some("worker-b"));
    assert!(stored.finished_at.is_some());
}

async fn heartbeats_and_progress_move_the_lease_forward(q: Arc<dyn Queue>) {
    let t = q.submit(task("sleep", Priority::Normal, 1)).await.unwrap();
    let short = Duration::from_millis(200);
    let before = now_ms();
    let claimed = q.claim("w", short).await.unwrap().expect("claim");
    let first = claimed.lease_until.unwrap();
    assert!((before + 200..=now_ms() + 200).contains(&first), "{first}");

    // A heartbeat renews the lease from now on.
    let before = now_ms();
    q.heartbeat(&t.id, "w", LEASE).await.unwrap();
    let renewed = q.get(&t.id).await.unwrap().unwrap().lease_until.unwrap();
    assert!(
        (before + 30_000..=now_ms() + 30_000).contains(&renewed),
        "{renewed}"
    );
    // Past the first lease the task is still held: nobody else can claim it.
    wait_past(first).await;
    assert!(
        q.claim("other", LEASE).await.unwrap().is_none(),
        "a renewed lease lapsed at its first end"
    );

    // A progress report renews it too, and is stored.
    let before = now_ms();
    q.progress(&t.id, "w", json!({"done": 1}), LEASE * 2)
        .await
        .unwrap();
    let stored = q.get(&t.id).await.unwrap().unwrap();
    let until = stored.lease_until.unwrap();
    assert!(
        (before + 60_000..=now_ms() + 60_000).contains(&until) && until > renewed,
        "{until}"
    );
    assert_eq!(stored.progress, Some(json!({"done": 1})));
    assert_eq!((stored.status, stored.attempts), (Status::Running, 1));

    // Renewed for 1 ms and not again (the worker died), the lease lapses: another worker claims
    // the task as a new attempt, and the old holder's calls are refused.
    q.heartbeat(&t.id, "w", Duration::from_millis(1))
        .await
        .unwrap();
    let taken = claim_soon(&*q, "other", LEASE).await;
    assert_eq!(
        (
            taken.id.as_str(),
            taken.attempts,
            taken.worker_id.as_deref()
        ),
        (t.id.as_str(), 2, Some("other"))
    );
    assert!(matches!(
        q.heartbeat(&t.id, "w", LEASE).await,
        Err(Error::LeaseLost { .. })
    ));
}

async fn a_lease_lapsing_on_the_last_attempt_makes_the_task_dead(q: Arc<dyn Queue>) {
    let t = q
        .submit(NewTask {
            max_attempts: Some(1),
            ..task("sleep", Priority::Normal, 1)
        })
        .await
        .unwrap();
    let claimed = q
        .claim("w", Duration::from_millis(10))
        .await
        .unwrap()
        .expect("claim");
    assert_eq!(q.get(&t.id).await.unwrap().unwrap().status, Status::Running);
    wait_past(claimed.lease_until.unwrap()).await;
    assert!(q.claim("other", LEASE).await.unwrap().is_none());
    let stored = q.get(&t.id).await.unwrap().unwrap();
    assert_eq!(stored.status, Status::Dead);
    assert!(stored.error.unwrap().contains("lapsed"));
}

async fn release_gives_the_task_back_without_an_attempt(q: Arc<dyn Queue>) {
    let t = q.submit(task("sleep", Priority::Normal, 1)).await.unwrap();
    q.claim("w", LEASE).await.unwrap().expect("claim");
    q.release(&t.id, "w").await.unwrap();
    let back = q.get(&t.id).await.unwrap().unwrap();
    assert_eq!((back.status, back.attempts), (Status::Queued, 0));
    assert!(matches!(
        q.release(&t.id, "w").await,
        Err(Error::LeaseLost { .. })
    ));
    let again = q.claim("v", LEASE).await.unwrap().expect("claimable again");
    assert_eq!((again.id, again.attempts), (t.id, 1));
}

async fn list_filters_and_pages(q: Arc<dyn Queue>) {
    for i in 0..5 {
        q.submit(task("sleep", Priority::Normal, i)).await.unwrap();
    }
    q.submit(NewTask::new("add", json!({"a": 1, "b": 1}), "bob"))
        .await
        .unwrap();
    let mine = |cursor: Option<String>| ListQuery {
        owner: Some("alice".into()),
        limit: 2,
        cursor,
        ..ListQuery::default()
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = q.list(&mine(cursor)).await.unwrap();
        assert!(page.tasks.len() <= 2);
        seen.extend(page.tasks.iter().map(|t| t.payload["ms"].as_u64().unwrap()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, [4, 3, 2, 1, 0], "newest first, every task once");
    let bobs = q
        .list(&ListQuery {
            kind: Some("add".into()),
            limit: 10,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(bobs.tasks.len(), 1);
    assert_eq!(bobs.tasks[0].owner, "bob");
    q.claim("w", LEASE).await.unwrap().expect("claim");
    let running = q
        .list(&ListQuery {
            status: Some(Status::Running),
            limit: 10,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(running.tasks.len(), 1);
    assert!(matches!(
        q.list(&ListQuery {
            cursor: Some("x".into()),
            limit: 1,
            ..ListQuery::default()
        })
        .await,
        Err(Error::InvalidQuery(_))
    ));
}

async fn stats_count_by_status_and_priority(q: Arc<dyn Queue>) {
    for p in [
        Priority::High,
        Priority::Low,
        Priority::Low,
        Priority::Normal,
    ] {
        q.submit(task("sleep", p, 1)).await.unwrap();
    }
    let t = q.claim("w", LEASE).await.unwrap().expect("high");
    assert_eq!(t.priority, Priority::High);
    let stats = q.stats().await.unwrap();
    assert_eq!(stats.by_status["queued"], 3);
    assert_eq!(stats.by_status["running"], 1);
    assert_eq!(stats.by_status["dead"], 0);
    assert_eq!(stats.depth_by_priority["high"], 0);
    assert_eq!(stats.depth_by_priority["normal"], 1);
    assert_eq!(stats.depth_by_priority["low"], 2);
    assert!(
        stats.oldest_queued_ms.is_some(),
        "three tasks wait: the oldest has an age"
    );
}

/// 1,000 tasks, two claimers; one "dies" (stops without completing) while holding a task. Every
/// task ends `succeeded`, each completed exactly once, none lost.
async fn a_thousand_tasks_two_claimers_one_dies(q: Arc<dyn Queue>) {
    const N: u64 = 1000;
    let mut ids = HashSet::new();
    for i in 0..N {
        let t = q.submit(task("sleep", Priority::Normal, i)).await.unwrap();
        ids.insert(t.id);
    }
    assert_eq!(ids.len() as u64, N);
    let lease = Duration::from_millis(1500);
    // How many tasks the dying claimer has completed. The other one never gets ahead of it until
    // it has done its 300, so that it reaches them however the two are scheduled (a fast
    // machine or a slow one), and then dies holding a task.
    let dying_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let claimer = |name: &'static str, die_after: Option<usize>| {
        let q = q.clone();
        let dying_done = dying_done.clone();
        tokio::spawn(async move {
            let mut done = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                assert!(Instant::now() < deadline, "{name} did not drain the queue");
                if die_after.is_none() {
                    loop {
                        let theirs = dying_done.load(std::sync::atomic::Ordering::SeqCst);
                        if theirs >= 300 || done.len() < theirs.max(1) {
                            break;
                        }
                        assert!(
                            Instant::now() < deadline,
                            "{name} waited too long for the other"
                        );
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                match q.claim(name, lease).await.expect("claim") {
                    Some(t) => {
                        if die_after.is_some_and(|n| done.len() == n) {
                            // Killed while holding `t`: no completion, no release.
                            return done;
                        }
                        match q.complete(&t.id, name, json!({ "by": name })).await {
                            Ok(_) => {
                                done.push(t.id);
                                if die_after.is_some() {
                                    dying_done
                                        .store(done.len(), std::sync::atomic::Ordering::SeqCst);
                                }
                            }
                            Err(Error::LeaseLost { .. }) => {}
                            Err(e) => panic!("complete: {e}"),
                        }
                    }
                    None => {
                        let stats = q.stats().await.expect("stats");
                        if stats.by_status["succeeded"] == N {
                            return done;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        })
    };
    let a = claimer("claimer-a", None);
    let b = claimer("claimer-b", Some(300));
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    assert_eq!(b.len(), 300);
    let mut completed: Vec<&String> = a.iter().chain(b.iter()).collect();
    assert_eq!(
        completed.len() as u64,
        N,
        "each task completed exactly once"
    );
    completed.sort();
    completed.dedup();
    assert_eq!(completed.len() as u64, N, "no task completed twice");
    assert!(completed.iter().all(|id| ids.contains(*id)));
    let stats = q.stats().await.unwrap();
    assert_eq!(stats.by_status["succeeded"], N);
    assert_eq!(stats.oldest_queued_ms, None, "nothing waits");
    // The abandoned task was redelivered after its lease and run by the survivor.
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = q
            .list(&ListQuery {
                limit: 500,
                cursor,
                ..ListQuery::default()
            })
            .await
            .unwrap();
        all.extend(page.tasks);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(all.len() as u64, N);
    // The abandoned task ran twice. Under heavy load a live claimer may also be slower than its
    // lease now and then; that task then runs twice too (at least once), still recorded once.
    let redelivered = all.iter().filter(|t| t.attempts >= 2).count();
    assert!(redelivered >= 1, "the abandoned task was never redelivered");
}

/// A batch claim takes the most urgent tasks in claim order (priority, then FIFO), each
/// `running` under its own lease for the claimer; a batch of results is stored task by task,
/// and a task whose lease was taken over is refused alone.
async fn batch_claims_take_tasks_in_claim_order_each_under_its_own_lease(q: Arc<dyn Queue>) {
    let mut submitted = Vec::new();
    for (i, p) in [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Normal,
    ]
    .into_iter()
    .enumerate()
    {
        submitted.push(q.submit(task("sleep", p, i as u64)).await.unwrap().id);
    }
    let batch = q.claim_batch("w", LEASE, 3).await.unwrap();
    let ids: Vec<&str> = batch.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [&submitted[2], &submitted[1], &submitted[3]]);
    for t in &batch {
        assert_eq!(t.status, Status::Running);
        assert_eq!(t.worker_id.as_deref(), Some("w"));
        assert_eq!(t.attempts, 1);
        assert!(t.lease_until.is_some());
        // Each task is leased on its own: the holder renews it, anyone else is refused.
        q.heartbeat(&t.id, "w", LEASE).await.unwrap();
        assert!(q.heartbeat(&t.id, "w2", LEASE).await.is_err());
    }
    // The low-priority task is still there, for one more.
    let rest = q.claim_batch("w2", LEASE, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, submitted[0]);

    let results = batch
        .iter()
        .map(|t| (t.id.clone(), json!({"n": t.id})))
        .chain([(rest[0].id.clone(), json!("not yours"))])
        .collect();
    let outcomes = q.complete_batch("w", results).await.unwrap();
    assert_eq!(outcomes.len(), 4);
    for (t, outcome) in batch.iter().zip(&outcomes) {
        let done = outcome.as_ref().expect("stored");
        assert_eq!(done.status, Status::Succeeded);
        assert_eq!(done.result, Some(json!({"n": t.id})));
    }
    assert!(matches!(outcomes[3], Err(Error::LeaseLost { .. })));
    assert_eq!(
        q.get(&rest[0].id).await.unwrap().unwrap().status,
        Status::Running
    );
}

/// A claimer "killed" (it stops without completing or releasing) holding a full batch: once the
/// leases lapse, another claimer runs every one of those tasks, and each task's result is stored
/// exactly once.
async fn a_claimer_killed_holding_a_full_batch_loses_nothing(q: Arc<dyn Queue>) {
    const N: usize = 200;
    const BATCH: usize = 32;
    for i in 0..N {
        q.submit(task("sleep", Priority::Normal, i as u64))
            .await
            .unwrap();
    }
    let short = Duration::from_millis(500);
    let lost = q.claim_batch("dying", short, BATCH).await.unwrap();
    assert_eq!(lost.len(), BATCH, "a full batch");

    let mut stored: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} tasks were stored",
            stored.len()
        );
        let batch = q.claim_batch("survivor", LEASE, BATCH).await.unwrap();
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let results = batch.iter().map(|t| (t.id.clone(), json!("ok"))).collect();
        for outcome in q.complete_batch("survivor", results).await.unwrap() {
            *stored.entry(outcome.expect("stored").id).or_insert(0) += 1;
        }
    }
    assert!(stored.values().all(|n| *n == 1), "a result stored twice");
    for t in &lost {
        let t = q.get(&t.id).await.unwrap().unwrap();
        assert_eq!(t.status, Status::Succeeded);
        assert_eq!(t.attempts, 2, "ran again after the lapse: {t:?}");
        assert_eq!(t.worker_id.as_deref(), Some("survivor"));
    }
    // The dead claimer's late results are refused.
    let late = q
        .complete_batch("dying", vec![(lost[0].id.clone(), json!("late"))])
        .await
        .unwrap();
    assert!(matches!(late[0], Err(Error::LeaseLost { .. })));
    assert_eq!(q.stats().await.unwrap().by_status["succeeded"], N as u64);
}

/// Retention: pruning deletes `succeeded` and `cancelled` tasks that finished before the cut,
/// oldest first and at most the limit, and never a waiting, running or dead one.
async fn pruning_deletes_only_old_succeeded_and_cancelled_tasks(q: Arc<dyn Queue>) {
    let mut done = Vec::new();
    for i in 0..3 {
        q.submit(task("sleep", Priority::Normal, i)).await.unwrap();
        let t = claim_soon(&*q, "w", LEASE).await;
        done.push(q.complete(&t.id, "w", json!(i)).await.unwrap());
    }
    let dead = q
        .submit(NewTask {
            max_attempts: Some(1),
            ..task("fail", Priority::Normal, 9)
        })
        .await
        .unwrap();
    let t = claim_soon(&*q, "w", LEASE).await;
    assert_eq!(t.id, dead.id);
    q.fail(&t.id, "w", "boom").await.unwrap();
    let cancelled = q.submit(task("sleep", Priority::Low, 7)).await.unwrap();
    let cancelled = q.cancel(&cancelled.id).await.unwrap();
    let running = q.submit(task("sleep", Priority::Normal, 8)).await.unwrap();
    claim_soon(&*q, "w", LEASE).await;
    let queued = q.submit(task("sleep", Priority::Low, 10)).await.unwrap();
    wait_past(cancelled.finished_at.unwrap()).await;

    // A limit of 2 takes the two oldest; a second pass the rest.
    assert_eq!(q.prune(Duration::ZERO, 2).await.unwrap(), 2);
    assert!(q.get(&done[0].id).await.unwrap().is_none());
    assert!(q.get(&done[1].id).await.unwrap().is_none());
    assert_eq!(q.prune(Duration::ZERO, 100).await.unwrap(), 2);
    assert!(q.get(&done[2].id).await.unwrap().is_none());
    assert!(q.get(&cancelled.id).await.unwrap().is_none());
    for (id, status) in [
        (&dead.id, Status::Dead),
        (&running.id, Status::Running),
        (&queued.id, Status::Queued),
    ] {
        assert_eq!(q.get(id).await.unwrap().unwrap().status, status);
    }
    // A long retention deletes nothing: a task that just succeeded stays.
    let t = claim_soon(&*q, "w", LEASE).await;
    assert_eq!(t.id, queued.id);
    q.complete(&t.id, "w", json!("recent")).await.unwrap();
    assert_eq!(q.prune(Duration::from_secs(3600), 100).await.unwrap(), 0);
    assert_eq!(
        q.get(&queued.id).await.unwrap().unwrap().status,
        Status::Succeeded
    );
}

/// Submits a task every 20 ms until `waiting` (a wait for work far longer than the test) ends:
/// it must end because a submission woke it, long before its own timeout.
async fn submit_until_woken(submitter: &dyn Queue, waiting: tokio::task::JoinHandle<()>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut waiting = std::pin::pin!(waiting);
    loop {
        submitter
            .submit(task("sleep", Priority::Normal, 1))
            .await
            .unwrap();
        tokio::select! {
            woken = &mut waiting => return woken.expect("the waiter"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        assert!(
            Instant::now() < deadline,
            "no submission woke the waiting claimer"
        );
    }
}

/// An idle claimer waiting for work is woken by a submission through the same queue, instead of
/// sleeping out its poll.
async fn a_submission_wakes_a_waiting_claimer(q: Arc<dyn Queue>) {
    let waiter = q.clone();
    let waiting = tokio::spawn(async move { waiter.wait_for_work(Duration::from_secs(600)).await });
    submit_until_woken(&*q, waiting).await;
}

/// A submission that lands after a claimer's claim came back empty but before it waits ends
/// that wait at once: the wake-up is kept for it, not lost (a lost one made the claimer sleep
/// out its poll with a task waiting).
async fn a_submission_between_an_empty_claim_and_the_wait_is_not_missed(q: Arc<dyn Queue>) {
    assert!(q.claim("w", LEASE).await.unwrap().is_none());
    q.submit(task("sleep", Priority::Normal, 1)).await.unwrap();
    // A guard against a hang, far longer than any wake-up; the wait's own timeout is longer still.
    tokio::time::timeout(
        Duration::from_secs(30),
        q.wait_for_work(Duration::from_secs(600)),
    )
    .await
    .expect("the submission made before the wait was missed");
    assert!(q.claim("w", LEASE).await.unwrap().is_some());
}

/// PostgreSQL only: a claimer waiting in one process is woken by a submission made by another
/// (two queues on one database, as a gateway and a worker are): `LISTEN`/`NOTIFY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_submission_elsewhere_wakes_a_waiting_claimer() {
    let Some(db) = common::testing::fresh_postgres("queue_wake").await else {
        return;
    };
    let config = Config {
        url: Some(db.url.clone()),
        ..config()
    };
    let worker = queue::open(&config).await.expect("worker's queue");
    let gateway = queue::open(&config).await.expect("gateway's queue");
    a_submission_elsewhere_wakes_a_waiting_claimer(&worker, &*gateway).await;
}

/// A claimer of `worker` waiting for work is woken by a submission through `gateway`, another
/// queue on the same store (another process, as far as wake-ups go); then a submission made
/// between its empty claim and its wait still ends the wait (the wake-up is kept, not lost).
async fn a_submission_elsewhere_wakes_a_waiting_claimer(
    worker: &Arc<dyn Queue>,
    gateway: &dyn Queue,
) {
    let waiter = worker.clone();
    let waiting = tokio::spawn(async move { waiter.wait_for_work(Duration::from_secs(600)).await });
    submit_until_woken(gateway, waiting).await;
    while !worker
        .claim_batch("w", LEASE, 100)
        .await
        .unwrap()
        .is_empty()
    {}
    gateway
        .submit(task("sleep", Priority::Normal, 1))
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        worker.wait_for_work(Duration::from_secs(600)),
    )
    .await
    .expect("a wake-up that came before the wait was missed");
}

/// SQLite only: a claimer waiting in one process is woken by a submission made by another (two
/// queues on one file, as a gateway and a worker are): the doorbells, SQLite's `NOTIFY`. Without
/// them the wait lasts its whole timeout (the poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_submission_elsewhere_wakes_a_waiting_claimer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..config()
    };
    let worker = queue::open(&config).await.expect("worker's queue");
    let gateway = queue::open(&config).await.expect("gateway's queue");
    a_submission_elsewhere_wakes_a_waiting_claimer(&worker, &*gateway).await;
    // The bell goes with the queue that bound it.
    drop(worker);
    let bells = dir.path().join("queue.sqlite.doorbells");
    assert_eq!(std::fs::read_dir(&bells).unwrap().count(), 0, "{bells:?}");
}

/// RabbitMQ only: a task that dies is dead-lettered into `<name>.dead` through the work queue's
/// dead-letter exchange, and the work queue is empty afterwards (its delivery was settled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_dead_tasks_reach_the_dead_letter_queue() {
    use lapin::options::BasicGetOptions;
    let amqp = std::env::var("SCALELAB_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let Some(db) = common::testing::fresh_postgres("queue_dlx").await else {
        return;
    };
    let config = Config {
        url: Some(db.url.clone()),
        ..config()
    };
    let name = format!("scalelab-test-{}", uuid::Uuid::new_v4().simple());
    let q = match queue::RabbitQueue::connect(&amqp, &name, &config, Some(Duration::from_secs(600)))
        .await
    {
        Ok(q) => q,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP: RabbitMQ unreachable ({e})");
            return;
        }
        Err(e) => panic!("RabbitMQ is required in CI but unreachable: {e}"),
    };
    let t = q
        .submit(NewTask {
            max_attempts: Some(1),
            ..NewTask::new("fail", json!({}), "alice")
        })
        .await
        .unwrap();
    let claimed = q.claim("w", LEASE).await.unwrap().expect("delivered");
    assert_eq!(claimed.id, t.id);
    assert_eq!(
        q.fail(&t.id, "w", "boom").await.unwrap().status,
        Status::Dead
    );

    let conn = lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        if let Some(m) = ch
            .basic_get(
                format!("{name}.dead").as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            break m;
        }
        assert!(Instant::now() < deadline, "nothing was dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(String::from_utf8_lossy(&dead.delivery.data), t.id);
    let work = ch
        .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(work.is_none(), "the work queue still holds the dead task");
}

/// RabbitMQ only: the processes of one deployment (gateways, workers) as separate queues on one
/// work queue and one store, and a channel of the test's own to read the broker's counts.
struct Rabbit {
    amqp: String,
    name: String,
    config: Config,
    side: lapin::Channel,
    _side: lapin::Connection,
    _db: common::testing::TestDb,
}

impl Rabbit {
    /// `None` (the test skips, saying so) when PostgreSQL or RabbitMQ is unreachable outside CI.
    async fn new(prefix: &str) -> Option<Self> {
        let amqp = std::env::var("SCALELAB_TEST_AMQP")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let db = common::testing::fresh_postgres(prefix).await?;
        let side =
            match lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default()).await {
                Ok(c) => c,
                Err(e) if std::env::var_os("CI").is_none() => {
                    eprintln!("SKIP: RabbitMQ unreachable ({e})");
                    return None;
                }
                Err(e) => panic!("RabbitMQ is required in CI but unreachable: {e}"),
            };
        Some(Self {
            side: side.create_channel().await.expect("a channel"),
            _side: side,
            amqp,
            name: format!("scalelab-test-{}", uuid::Uuid::new_v4().simple()),
            config: Config {
                url: Some(db.url.clone()),
                ..config()
            },
            _db: db,
        })
    }

    /// One more process's queue.
    async fn process(&self) -> queue::RabbitQueue {
        queue::RabbitQueue::connect(
            &self.amqp,
            &self.name,
            &self.config,
            Some(Duration::from_secs(600)),
        )
        .await
        .expect("connect")
    }

    /// The work queue's (ready messages, consumers), as the broker counts them: a message
    /// delivered to a consumer and not acked yet is not ready.
    async fn counts(&self) -> (u32, u32) {
        let q = self
            .side
            .queue_declare(
                self.name.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("the work queue exists");
        (q.message_count(), q.consumer_count())
    }

    /// Waits until the broker's counts are `(ready, consumers)`, at most 30 s.
    async fn wait_counts(&self, ready: u32, consumers: u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.counts().await;
            if now == (ready, consumers) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the broker counts {now:?} (ready, consumers), never {:?}",
                (ready, consumers)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Claims and completes batches through `q` as `worker` until `expected` tasks are stored (a
/// lapsed lease or a redelivery may be on its way meanwhile), at most 60 s; how many times each
/// task's result was stored.
async fn drain(q: &dyn Queue, worker: &str, expected: usize) -> HashMap<String, usize> {
    let mut stored: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored.len() < expected {
        assert!(
            Instant::now() < deadline,
            "only {} of {expected} tasks were stored",
            stored.len()
        );
        let batch = q.claim_batch(worker, LEASE, 8).await.unwrap();
        if batch.is_empty() {
            q.wait_for_work(Duration::from_millis(50)).await;
            continue;
        }
        let results = batch.iter().map(|t| (t.id.clone(), json!("ok"))).collect();
        for outcome in q.complete_batch(worker, results).await.unwrap() {
            *stored.entry(outcome.expect("stored").id).or_insert(0) += 1;
        }
    }
    stored
}

/// RabbitMQ only: a worker that dies holding deliveries it claimed and deliveries it only
/// prefetched (its queue dropped: the channel closes, as a killed process's does). The broker
/// delivers the prefetched ones again at once and another worker runs them on their first
/// attempt; the claimed ones come back when their leases lapse. Every task's result is stored
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_deliveries_prefetched_by_a_worker_that_dies_run_elsewhere() {
    let Some(env) = Rabbit::new("queue_amqp_dies").await else {
        return;
    };
    let gateway = env.process().await;
    let dying = env.process().await;
    // Its slots hold 5 tasks at most: a prefetch of 10.
    dying.set_claim_capacity(5);
    let mut ids = HashSet::new();
    for i in 0..30 {
        ids.insert(
            gateway
                .submit(task("sleep", Priority::Normal, i))
                .await
                .unwrap()
                .id,
        );
    }
    let claimed = dying
        .claim_batch("dying/1", Duration::from_millis(300), 3)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    // 10 delivered to the dying worker: 3 claimed, 7 waiting in its buffer; 20 ready.
    env.wait_counts(20, 1).await;
    drop(dying);

    let survivor = env.process().await;
    let stored = drain(&survivor, "survivor/1", 30).await;
    assert!(stored.values().all(|n| *n == 1), "a result stored twice");
    assert_eq!(stored.keys().cloned().collect::<HashSet<_>>(), ids);
    let claimed: HashSet<&str> = claimed.iter().map(|t| t.id.as_str()).collect();
    for id in &ids {
        let t = survivor.get(id).await.unwrap().unwrap();
        assert_eq!(t.status, Status::Succeeded);
        // The prefetched ones never ran before: not lost, and not waiting for a lease either.
        let attempts = if claimed.contains(id.as_str()) { 2 } else { 1 };
        assert_eq!(t.attempts, attempts, "{t:?}");
    }
    env.wait_counts(0, 1).await;
}

/// RabbitMQ only: a worker shutting down stops claiming first. Its prefetched deliveries go back
/// to the broker at once while it still runs what it claimed, another worker runs them, a task
/// it releases afterwards goes to the other worker too, and its own results are still stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_worker_that_stops_claiming_hands_back_its_prefetched_deliveries() {
    let Some(env) = Rabbit::new("queue_amqp_stops").await else {
        return;
    };
    let gateway = env.process().await;
    let stopping = env.process().await;
    stopping.set_claim_capacity(5);
    for i in 0..30 {
        gateway
            .submit(task("sleep", Priority::Normal, i))
            .await
            .unwrap();
    }
    let held = stopping.claim_batch("old/1", LEASE, 3).await.unwrap();
    assert_eq!(held.len(), 3);
    env.wait_counts(20, 1).await;

    stopping.stop_claiming().await;
    // The 7 prefetched are ready again; the 3 claimed stay with their worker, still running.
    env.wait_counts(27, 0).await;
    assert!(
        stopping
            .claim_batch("old/1", LEASE, 5)
            .await
            .unwrap()
            .is_empty(),
        "a worker that stopped claiming took a task"
    );
    stopping.release(&held[2].id, "old/1").await.unwrap();
    env.wait_counts(28, 0).await;

    let other = env.process().await;
    let stored = drain(&other, "new/1", 28).await;
    assert!(stored.values().all(|n| *n == 1), "a result stored twice");
    assert!(stored.contains_key(&held[2].id), "the released task");
    let results = held[..2]
        .iter()
        .map(|t| (t.id.clone(), json!("old")))
        .collect();
    for outcome in stopping.complete_batch("old/1", results).await.unwrap() {
        assert_eq!(outcome.expect("stored").status, Status::Succeeded);
    }
    let stats = gateway.stats().await.unwrap();
    assert_eq!(stats.by_status["succeeded"], 30);
    for t in &held {
        // Released, not lapsed: no attempt lost on the way.
        assert_eq!(gateway.get(&t.id).await.unwrap().unwrap().attempts, 1);
    }
    env.wait_counts(0, 1).await;
}

/// RabbitMQ only: a task cancelled while its delivery waits in a worker's buffer is not run,
/// and its delivery is acked (not handed back, not kept): once the worker is gone the work
/// queue is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_prefetched_task_that_is_cancelled_never_runs() {
    let Some(env) = Rabbit::new("queue_amqp_cancel").await else {
        return;
    };
    let gateway = env.process().await;
    let worker = env.process().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            gateway
                .submit(task("sleep", Priority::Normal, i))
                .await
                .unwrap()
                .id,
        );
    }
    let first = worker.claim("w", LEASE).await.unwrap().expect("a task");
    assert_eq!(first.id, ids[0]);
    // The other two are prefetched: delivered to the worker, not ready in the broker.
    env.wait_counts(0, 1).await;
    let cancelled = gateway.cancel(&ids[1]).await.unwrap();
    assert_eq!(cancelled.status, Status::Cancelled);
    let next = worker.claim("w", LEASE).await.unwrap().expect("a task");
    assert_eq!(next.id, ids[2], "the cancelled task was claimed");
    assert!(worker.claim("w", LEASE).await.unwrap().is_none());
    for t in [&first, &next] {
        worker.complete(&t.id, "w", json!("ok")).await.unwrap();
    }
    let stored = gateway.get(&ids[1]).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.attempts), (Status::Cancelled, 0));
    drop(worker);
    env.wait_counts(0, 0).await;
}

/// RabbitMQ only: while fresh deliveries keep the buffer full, a claim looks for due retries in
/// the store at most every 100 ms (`DUE_EVERY`), not never: a retry whose backoff ended is claimed
/// behind a stream of fresh tasks, soon after its run-at and not before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_due_retry_is_claimed_while_fresh_deliveries_keep_coming() {
    let Some(env) = Rabbit::new("queue_amqp_due").await else {
        return;
    };
    let gateway = env.process().await;
    let worker = env.process().await;
    let retried = gateway
        .submit(NewTask::new("fail", json!({}), "alice"))
        .await
        .unwrap();
    let t = claim_soon(&worker, "w", LEASE).await;
    assert_eq!(t.id, retried.id);
    let failed = worker.fail(&t.id, "w", "boom").await.unwrap();
    assert_eq!(failed.status, Status::Failed);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut fresh, mut ran) = (0, 0);
    let again = loop {
        // Two fresh tasks for each one claimed: deliveries always wait in the buffer.
        for _ in 0..2 {
            gateway
                .submit(task("sleep", Priority::High, fresh))
                .await
                .unwrap();
            fresh += 1;
        }
        if let Some(t) = worker.claim("w", LEASE).await.unwrap() {
            if t.id == retried.id {
                break t;
            }
            worker.complete(&t.id, "w", json!("ok")).await.unwrap();
            ran += 1;
        }
        assert!(
            Instant::now() < deadline,
            "the retry was never claimed ({ran} fresh tasks ran)"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert_eq!(again.attempts, 2);
    assert!(again.started_at.unwrap() >= failed.not_before, "{again:?}");
    assert!(ran > 0, "fresh tasks ran before the retry was due");
}
