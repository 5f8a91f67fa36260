//! The harness itself, against a stand-in for `scalelab up` (`tests/support/fake_up.py`), so that it
//! can be tested without the real services.

use std::path::PathBuf;

use nix::sys::signal::Signal;

fn fake_up() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/fake_up.py")
}

#[tokio::test]
async fn starts_a_topology_on_free_ports_and_stops_it_with_exit_0() {
    let system = e2e::Topology::new()
        .program(fake_up())
        .counts("service", 1)
        .counts("auth", 0)
        .toml_extra("[gateway]\nanonymous_tokens = true\n[instances]\nhost = \"127.0.0.1\"")
        .start()
        .await
        .unwrap();

    assert_eq!(
        system.ids(),
        [
            "cache-1",
            "db-1",
            "gateway-1",
            "gateway-2",
            "lb-1",
            "service-1"
        ]
    );
    let health = system
        .client()
        .get(format!("{}/health", system.url("gateway", 2)))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_ne!(system.url("gateway", 1), system.url("gateway", 2));

    // The topology file has the picked ports, the data directory and the extra settings.
    let config: toml::Table = std::fs::read_to_string(system.config_path())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(config["gateway"]["anonymous_tokens"].as_bool(), Some(true));
    assert_eq!(
        config["data_dir"].as_str().map(PathBuf::from).as_deref(),
        Some(system.data_dir())
    );
    let lb_port = config["instances"]["lb"][0].as_integer().unwrap();
    assert_eq!(system.lb_url(), format!("http://127.0.0.1:{lb_port}"));
    assert!(config["instances"].get("auth").is_none());

    // The admin password reaches the instances through the environment.
    assert_eq!(system.admin_token().await.unwrap(), system.admin_password());

    system.wait_log("[up] fake up ready").await.unwrap();
    let status = system.stop().await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_killed_instance_is_seen_restarted_with_a_new_pid() {
    let system = e2e::Topology::new()
        .program(fake_up())
        .counts("service", 0)
        .counts("auth", 0)
        .counts("db", 0)
        .counts("cache", 0)
        .start()
        .await
        .unwrap();

    let old = system.kill("gateway-1", Signal::SIGKILL).unwrap();
    let new = system.wait_restarted("gateway-1", old).await.unwrap();

    assert_ne!(old, new);
    assert_eq!(system.pid("gateway-1").unwrap(), new);
    system.wait_healthy("gateway-1").await.unwrap();
    system.wait_log("gateway-1 exited (-9)").await.unwrap();
}

#[tokio::test]
async fn invalid_extra_settings_fail_the_start() {
    let err = e2e::Topology::new()
        .program(fake_up())
        .toml_extra("this is not toml")
        .start()
        .await
        .err()
        .expect("invalid TOML fails the start")
        .to_string();

    assert!(err.starts_with("toml_extra is not valid TOML"), "{err}");
}

#[tokio::test]
async fn a_failed_start_reports_the_output_of_up() {
    let err = e2e::Topology::new()
        .program(fake_up())
        .env("FAKE_UP_FAIL", "1")
        .start()
        .await
        .err()
        .expect("`up` exiting fails the start");

    let message = format!("{err:#}");
    assert!(message.contains("`up` exited"), "{message}");
    assert!(
        message.contains("port 5000 (gateway gateway-1) is already in use"),
        "{message}"
    );
}
