//! Test helpers, behind the `testing` feature (crates enable it in their `[dev-dependencies]`, so
//! no production binary carries them).
//!
//! - Router calls without a socket: [`call`] sends a request built with [`get`], [`post_json`],
//!   [`put_json`], [`delete`], [`request`] (and [`with_bearer`]) and returns a [`Response`]
//!   (status, headers, JSON body). [`until_closed`] reads a raw connection until the server closes it.
//! - The real engines on 127.0.0.1: a fresh PostgreSQL database ([`fresh_postgres`]) or a fresh
//!   Redis key prefix ([`fresh_redis_prefix`]) per test, so that runs never see each other's data.
//!   When a server is unreachable: with `CI` set the helper fails the test (CI must not skip
//!   silently); without it, it prints why and returns `None`, and the test returns early.

mod http;
mod raw;

pub use http::{Response, call, delete, get, post_json, put_json, request, with_bearer};
pub use raw::until_closed;

use sqlx::Connection;

/// Where the test PostgreSQL server is (`SCALELAB_TEST_PG`, default `postgres://root@127.0.0.1:5432/test`).
pub fn pg_admin_url() -> String {
    std::env::var("SCALELAB_TEST_PG")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// Where the test Redis server is (`SCALELAB_TEST_REDIS`, default `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    std::env::var("SCALELAB_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unreachable(what: &str, err: impl std::fmt::Display) -> Option<()> {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is required in CI but unreachable: {err}");
    }
    eprintln!("SKIP: {what} unreachable ({err}); set CI=1 to make this a failure");
    None
}

/// A database made for one test, dropped (best effort) when this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// Connection URL of the fresh database.
    pub url: String,
    /// The database's name (dropped with the value).
    pub name: String,
}

/// Creates a fresh, empty PostgreSQL database named after `prefix` and a random suffix.
pub async fn fresh_postgres(prefix: &str) -> Option<TestDb> {
    let admin = pg_admin_url();
    let mut conn = match sqlx::PgConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) => {
            unreachable("PostgreSQL", e)?;
            return None;
        }
    };
    let name = format!(
        "{}_{}",
        prefix.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        uuid::Uuid::new_v4().simple()
    )
    .to_lowercase();
    if let Err(e) = sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
    {
        unreachable("PostgreSQL (CREATE DATABASE)", e)?;
        return None;
    }
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    Some(TestDb {
        url: format!("{base}/{name}"),
        name,
    })
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Dropping needs a runtime-independent connection: do it on a throwaway thread so that it
        // works from inside and outside a tokio runtime.
        let name = self.name.clone();
        let admin = pg_admin_url();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut c)
                            .await;
                }
            });
        })
        .join();
    }
}

/// A fresh key prefix on a reachable Redis (`scalelab-test:<uuid>:`), or `None` (see module doc).
pub async fn fresh_redis_prefix() -> Option<String> {
    let url = redis_url();
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            unreachable("Redis", e)?;
            return None;
        }
    };
    match client.get_multiplexed_async_connection().await {
        Ok(_) => Some(format!("scalelab-test:{}:", uuid::Uuid::new_v4().simple())),
        Err(e) => {
            unreachable("Redis", e)?;
            None
        }
    }
}
