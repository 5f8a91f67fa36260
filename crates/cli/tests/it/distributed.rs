//! End to end on the real engines: `scalelab.distributed.toml` (PostgreSQL for auth and db, Redis
//! for the gateways' cache and rate limits) against the servers on 127.0.0.1, with a fresh
//! database per store and a fresh Redis key prefix.

use std::collections::HashSet;

use e2e::Topology;
use serde_json::json;

use crate::support::{login, send};

/// The shipped distributed file, minus the ports and data directory the harness chooses, with
/// this test's own databases and key prefix.
async fn distributed() -> Option<(Topology, common::testing::TestDb, common::testing::TestDb)> {
    let auth_db = common::testing::fresh_postgres("e2e_auth").await?;
    let data_db = common::testing::fresh_postgres("e2e_db").await?;
    let prefix = common::testing::fresh_redis_prefix().await?;
    let shipped = include_str!("../../../../scalelab.distributed.toml");
    let mut file: toml::Table = toml::from_str(shipped).unwrap();
    file.remove("instances");
    file.remove("data_dir");
    let topo = Topology::new()
        .program(env!("CARGO_BIN_EXE_scalelab"))
        .toml_extra(&toml::to_string(&file).unwrap())
        .toml_extra(&format!(
            "[auth]\ndatabase_url = \"{}\"\nargon2_memory_kib = 1024\nargon2_iterations = 1\n\
             [db]\ndatabase_url = \"{}\"\nlatency_ms = 20\njitter_ms = 0\nseed_records = 10\n\
             [gateway]\nredis_url = \"{}\"\nredis_prefix = \"{prefix}\"\n\
             [gateway.rate_limit]\nlogin_per_minute = 4\n",
            auth_db.url,
            data_db.url,
            common::testing::redis_url(),
        ));
    Some((topo, auth_db, data_db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_distributed_topology_serves_every_flow_with_global_limits() {
    let Some((topo, _auth_db, _data_db)) = distributed().await else {
        return;
    };
    let sys = topo.start().await.expect("scalelab up (distributed)");
    let lb = sys.lb_url();
    let http = sys.client().clone();

    // Login 1 of the 4 the whole system admits per minute from this address.
    let (status, _, body) = login(&sys, "admin", sys.admin_password()).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_string();

    // Cache-aside in Redis, shared by both gateways.
    let (status, h, body) =
        send(http.get(format!("{lb}/data?key=key-3")).bearer_auth(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["x-cache"], "MISS");
    let mut gateways = HashSet::new();
    for _ in 0..4 {
        let (_, h, body) = send(http.get(format!("{lb}/data?key=key-3")).bearer_auth(&token)).await;
        assert_eq!(h["x-cache"], "HIT", "{body}");
        gateways.insert(h["x-served-by"].to_str().unwrap().to_string());
    }
    assert_eq!(gateways.len(), 2);

    // Writes land in PostgreSQL and invalidate the Redis entry.
    let (status, _, body) = send(
        http.put(format!("{lb}/data/key-3"))
            .bearer_auth(&token)
            .json(&json!({"value": "rewritten"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, h, body) = send(http.get(format!("{lb}/data?key=key-3")).bearer_auth(&token)).await;
    assert_eq!(h["x-cache"], "MISS");
    assert_eq!(body["data"], "rewritten");

    // Registration lands in PostgreSQL.
    let (status, _, body) = send(
        http.post(format!("{lb}/register"))
            .json(&json!({"username": "bob", "password": "a long enough password"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let mut services = HashSet::new();
    for _ in 0..6 {
        let (status, _, body) = send(http.get(format!("{lb}/process")).bearer_auth(&token)).await;
        assert_eq!(status, 200, "{body}");
        services.insert(body["service_id"].as_str().unwrap().to_string());
    }
    assert_eq!(services.len(), 3);

    // The global login limit: 4 a minute for the whole system, although two gateways answer in
    // turn (with local limits they would admit 8). One was used above: 3 more, then 429.
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        let (status, _, _) = login(&sys, "bob", "wrong password!").await;
        outcomes.push(status);
    }
    assert_eq!(outcomes, vec![401, 401, 401, 429, 429, 429], "{outcomes:?}");

    assert!(sys.stop().await.unwrap().success());
}
