use super::*;

const SCHEMA: Schema = Schema::same(
    "CREATE TABLE IF NOT EXISTS items (
        name TEXT PRIMARY KEY NOT NULL,
        note TEXT,
        n BIGINT
    );
    CREATE INDEX IF NOT EXISTS items_n ON items (n);",
);

/// One statement text with `$N` parameters, text, integers and NULLs, on whichever engine.
async fn round_trip(db: &Db) {
    db.ping().await.expect("ping");
    let insert =
        "INSERT INTO items (name, note, n) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING";
    assert_eq!(
        db.execute(insert, &["a".into(), Arg::Text(None), 7.into()])
            .await
            .expect("insert"),
        1
    );
    assert_eq!(
        db.execute(insert, &["a".into(), Some("x").into(), 8.into()])
            .await
            .expect("again"),
        0
    );
    let note = String::from("b's note");
    db.execute(insert, &["b".into(), (&note).into(), Arg::Int(None)])
        .await
        .expect("insert b");
    let row = db
        .fetch_one(
            "SELECT name, note, n FROM items WHERE name = $1",
            &["a".into()],
        )
        .await
        .expect("a");
    assert_eq!(row.get::<String>("name").unwrap(), "a");
    assert_eq!(row.get::<Option<String>>("note").unwrap(), None);
    assert_eq!(row.get::<i64>("n").unwrap(), 7);
    let rows = db
        .fetch_all(
            "SELECT name, note, n FROM items WHERE ($1 IS NULL OR name > $1) ORDER BY name",
            &[Arg::Text(None)],
        )
        .await
        .expect("all");
    let names: Vec<String> = rows.iter().map(|r| r.get("name").unwrap()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        rows[1].get::<Option<String>>("note").unwrap().as_deref(),
        Some("b's note")
    );
    assert_eq!(rows[1].get::<Option<i64>>("n").unwrap(), None);
    let missing = db
        .fetch_optional("SELECT name FROM items WHERE name = $1", &["zz".into()])
        .await
        .expect("none");
    assert!(missing.is_none());
    let dup = match db.pool().await.expect("pool") {
        Pool::Sqlite(p) => sqlx::query("INSERT INTO items (name) VALUES ('a')")
            .execute(p)
            .await
            .map(|_| ()),
        Pool::Postgres(p) => sqlx::query("INSERT INTO items (name) VALUES ('a')")
            .execute(p)
            .await
            .map(|_| ()),
    };
    let dup = dup.expect_err("duplicate");
    assert!(is_unique_violation(&dup) && !is_unavailable(&dup), "{dup}");
}

#[tokio::test]
async fn sqlite_files_are_created_in_wal_mode_and_shared_by_two_pools() {
    let dir = std::env::temp_dir().join(format!("scalelab-sql-{}", uuid::Uuid::new_v4().simple()));
    let path = dir.join("nested/dir/one.sqlite");
    // Two processes opening a new file at once: both succeed (the busy retry).
    let url = format!("sqlite://{}", path.display());
    let (a, b) = tokio::join!(
        Db::open_file(&path, SCHEMA, Options::default()),
        Db::open(&url, SCHEMA, Options::default())
    );
    let (a, b) = (a.expect("open a"), b.expect("open b"));
    assert_eq!((a.engine(), b.engine()), (Engine::Sqlite, Engine::Sqlite));
    round_trip(&a).await;
    let seen = b
        .fetch_all("SELECT name FROM items", &[])
        .await
        .expect("b reads a's rows");
    assert_eq!(seen.len(), 2);
    let Pool::Sqlite(pool) = a.pool().await.expect("pool") else {
        panic!("sqlite")
    };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
    a.close().await;
    b.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn other_schemes_are_a_configuration_error_without_the_url() {
    for url in [
        "mysql://u:secret@h/db",
        "redis://:secret@h",
        "data/x.sqlite",
    ] {
        match Db::open(url, SCHEMA, Options::default()).await {
            Err(sqlx::Error::Configuration(m)) => assert!(!m.to_string().contains("secret"), "{m}"),
            Err(e) => panic!("{url}: unexpected {e}"),
            Ok(_) => panic!("{url} opened"),
        }
    }
}

#[tokio::test]
async fn postgres_down_at_open_is_unavailable_on_first_use() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let options = Options {
        acquire_timeout: Duration::from_millis(300),
        ..Options::default()
    };
    let db = Db::open(
        &format!("postgres://root@127.0.0.1:{port}/x"),
        SCHEMA,
        options,
    )
    .await
    .expect("opening does not connect");
    assert_eq!(db.engine(), Engine::Postgres);
    let e = db.ping().await.expect_err("nothing listens");
    assert!(is_unavailable(&e), "{e}");
}

#[tokio::test]
async fn postgres_two_processes_create_the_schema_together() {
    let Some(test) = crate::testing::fresh_postgres("common_sql").await else {
        return;
    };
    let open = || Db::open(&test.url, SCHEMA, Options::default());
    let (a, b, c) = tokio::join!(open(), open(), open());
    let (a, b, c) = (a.expect("a"), b.expect("b"), c.expect("c"));
    // The first statements of three pools race to create the schema; all succeed.
    let (x, y, z) = tokio::join!(a.ping(), b.ping(), c.ping());
    x.and(y)
        .and(z)
        .expect("schema created once, under the lock");
    round_trip(&a).await;
    // A replica runs no DDL: on a database without the schema, its queries fail.
    let empty = crate::testing::fresh_postgres("common_sql_replica")
        .await
        .expect("second database");
    let replica = Db::open(
        &empty.url,
        SCHEMA,
        Options {
            replica: true,
            ..Options::default()
        },
    )
    .await
    .expect("replica");
    replica.ping().await.expect("replica answers");
    let e = replica
        .fetch_all("SELECT name FROM items", &[])
        .await
        .expect_err("no table on the replica");
    assert!(!is_unavailable(&e), "{e}");
    for db in [a, b, c, replica] {
        db.close().await;
    }
}

/// A sibling pool keeps its parent's settings and adds its own; the parent's connections are
/// untouched. SQLite has none.
#[tokio::test]
async fn postgres_a_sibling_pool_adds_its_settings_to_its_parents() {
    let Some(test) = crate::testing::fresh_postgres("common_sql_sibling").await else {
        return;
    };
    let parent = Options {
        pg_settings: &[("enable_bitmapscan", "off")],
        ..Options::default()
    };
    let db = Db::open(&test.url, SCHEMA, parent).await.expect("open");
    db.ping().await.expect("schema");
    let sibling = db
        .sibling_pool(Options {
            max_connections: 2,
            pg_settings: &[("synchronous_commit", "off")],
            ..Options::default()
        })
        .expect("a PostgreSQL database has a sibling pool");
    let show = |pool: PgPool, name: &'static str| async move {
        sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
            .fetch_one(&pool)
            .await
            .expect(name)
    };
    let Pool::Postgres(own) = db.pool().await.expect("pool").clone() else {
        panic!("a PostgreSQL pool")
    };
    assert_eq!(show(sibling.clone(), "synchronous_commit").await, "off");
    assert_eq!(show(sibling.clone(), "enable_bitmapscan").await, "off");
    assert_eq!(show(own.clone(), "synchronous_commit").await, "on");
    assert_eq!(show(own, "enable_bitmapscan").await, "off");
    // The sibling reads the parent's schema.
    round_trip(&db).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
        .fetch_one(&sibling)
        .await
        .expect("the parent's table");
    assert!(n > 0);
    sibling.close().await;
    db.close().await;

    let file = Db::open("sqlite::memory:", SCHEMA, Options::default())
        .await
        .expect("sqlite");
    assert!(file.sibling_pool(Options::default()).is_none());
}

/// A connection the server dropped (a restart, an administrator) is replaced: before the next
/// statement when it sat idle for `ping_if_idle_for` (it is pinged), or after one statement
/// that fails as unavailable when it was used more recently than that (it is not pinged).
#[tokio::test]
async fn postgres_a_connection_the_server_dropped_is_replaced() {
    let Some(test) = crate::testing::fresh_postgres("common_sql_ping").await else {
        return;
    };
    let mut admin = sqlx::PgConnection::connect(&crate::testing::pg_admin_url())
        .await
        .expect("admin connection");
    for (ping_if_idle_for, first_fails) in
        [(Duration::ZERO, false), (Duration::from_secs(3600), true)]
    {
        let options = Options {
            max_connections: 1,
            ping_if_idle_for,
            ..Options::default()
        };
        let db = Db::open(&test.url, SCHEMA, options).await.expect("open");
        db.execute(
            "INSERT INTO items (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            &["kept".into()],
        )
        .await
        .expect("insert");
        // sqlx pings a connection on its way back to the pool in a task of its own; the backend
        // must be terminated after that ping, or the ping finds it dead and the pool replaces
        // it before the statement below (CI saw exactly that). Wait until it is idle again.
        let Ok(Pool::Postgres(pool)) = db.pool().await else {
            panic!("a PostgreSQL pool");
        };
        let back = tokio::time::timeout(Duration::from_secs(10), async {
            while pool.num_idle() < 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(back.is_ok(), "the connection went back to the pool");
        let pids: Vec<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
                .bind(&test.name)
                .fetch_all(&mut admin)
                .await
                .expect("the pool's connections");
        assert_eq!(pids.len(), 1, "the pool's one connection");
        // Waits (up to 5 s) until the backend is gone.
        let gone: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
            .bind(pids[0])
            .fetch_one(&mut admin)
            .await
            .expect("terminate");
        assert!(gone);
        let first = db.fetch_all("SELECT name FROM items", &[]).await;
        assert_eq!(
            first.is_err(),
            first_fails,
            "{ping_if_idle_for:?}: {first:?}"
        );
        if let Err(e) = first {
            assert!(is_unavailable(&e), "{e}");
        }
        let rows = db
            .fetch_all("SELECT name FROM items", &[])
            .await
            .expect("a new connection");
        assert!(!rows.is_empty());
        db.close().await;
    }
}

#[test]
fn pool_failures_are_unavailable_and_refusals_are_not() {
    assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
    assert!(is_unavailable(&sqlx::Error::PoolClosed));
    assert!(is_unavailable(&sqlx::Error::Io(
        std::io::ErrorKind::ConnectionRefused.into()
    )));
    assert!(!is_unavailable(&sqlx::Error::RowNotFound));
    assert!(!is_unavailable(&sqlx::Error::Protocol("bad".into())));
}
