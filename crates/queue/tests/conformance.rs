//! The conformance suite: the same tests against every backend (`conformance!` expands them once
//! per engine). PostgreSQL tests use a fresh database per test and skip, saying so, when the server
//! is unreachable (a failure with `CI` set).

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
        retry_base_ms: 60,
        retry_max_ms: 1000,
        ..Config::default()
    }
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
                heartbeats_and_progress_keep_the_lease,
                a_lease_lapsing_on_the_last_attempt_makes_the_task_dead,
                release_gives_the_task_back_without_an_attempt,
                list_filters_and_pages,
                stats_count_by_status_and_priority,
                a_thousand_tasks_two_claimers_one_dies,
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

/// Claims until a task comes (a backoff or a lease may be running), at most 10 s.
async fn claim_soon(q: &dyn Queue, worker: &str, lease: Duration) -> queue::Task {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = q.claim(worker, lease).await.expect("claim") {
            return t;
        }
        assert!(Instant::now() < deadline, "no task became claimable");
        tokio::time::sleep(Duration::from_millis(10)).await;
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
    let mut waits = Vec::new();
    for attempt in 1..=3u32 {
        let t = claim_soon(&*q, "w", LEASE).await;
        assert_eq!(t.id, submitted.id);
        assert_eq!(t.attempts, attempt);
        let before = now_ms();
        let failed = q
            .fail(&t.id, "w", &format!("boom {attempt}"))
            .await
            .unwrap();
        assert_eq!(failed.error.as_deref(), Some(&*format!("boom {attempt}")));
        assert_eq!(failed.lease_until, None);
        if attempt < 3 {
            assert_eq!(failed.status, Status::Failed);
            assert!(failed.finished_at.is_none());
            waits.push(failed.not_before - before);
            // Not claimable before its backoff is over.
            let early = q.claim("w", LEASE).await.unwrap();
            if now_ms() < failed.not_before {
                assert!(early.is_none(), "claimed during its backoff");
            } else if let Some(t) = early {
                // The machine was slow enough for the backoff to pass; give it back.
                q.release(&t.id, "w").await.unwrap();
            }
        } else {
            assert_eq!(failed.status, Status::Dead);
            assert!(failed.finished_at.is_some());
        }
    }
    // Base 60 ms: the first wait is 30..=60 ms, the second 60..=120 ms (exponential, jittered).
    assert!((25..=70).contains(&waits[0]), "first backoff {waits:?}");
    assert!((55..=140).contains(&waits[1]), "second backoff {waits:?}");
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
    assert!(
        q.claim("worker-b", short).await.unwrap().is_none(),
        "held under a lease"
    );
    let b = claim_soon(&*q, "worker-b", LEASE).await;
    assert_eq!(b.id, a.id);
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

async fn heartbeats_and_progress_keep_the_lease(q: Arc<dyn Queue>) {
    let t = q.submit(task("sleep", Priority::Normal, 1)).await.unwrap();
    let lease = Duration::from_millis(300);
    q.claim("w", lease).await.unwrap().expect("claim");
    let until = Instant::now() + Duration::from_millis(900);
    let mut n = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(60)).await;
        if n % 2 == 0 {
            q.heartbeat(&t.id, "w", lease).await.unwrap();
        } else {
            q.progress(&t.id, "w", json!({"done": n}), lease)
                .await
                .unwrap();
        }
        n += 1;
        assert!(
            q.claim("other", lease).await.unwrap().is_none(),
            "a renewed lease never lapses"
        );
    }
    let stored = q.get(&t.id).await.unwrap().unwrap();
    assert_eq!(stored.status, Status::Running);
    assert_eq!(stored.attempts, 1);
    assert!(stored.progress.is_some());
}

async fn a_lease_lapsing_on_the_last_attempt_makes_the_task_dead(q: Arc<dyn Queue>) {
    let t = q
        .submit(NewTask {
            max_attempts: Some(1),
            ..task("sleep", Priority::Normal, 1)
        })
        .await
        .unwrap();
    q.claim("w", Duration::from_millis(50))
        .await
        .unwrap()
        .expect("claim");
    tokio::time::sleep(Duration::from_millis(120)).await;
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
    let claimer = |name: &'static str, die_after: Option<usize>| {
        let q = q.clone();
        tokio::spawn(async move {
            let mut done = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                assert!(Instant::now() < deadline, "{name} did not drain the queue");
                match q.claim(name, lease).await.expect("claim") {
                    Some(t) => {
                        if die_after.is_some_and(|n| done.len() == n) {
                            // Killed while holding `t`: no completion, no release.
                            return done;
                        }
                        match q.complete(&t.id, name, json!({ "by": name })).await {
                            Ok(_) => done.push(t.id),
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
    let deadline = Instant::now() + Duration::from_secs(5);
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
