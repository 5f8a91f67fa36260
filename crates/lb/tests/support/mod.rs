//! What the balancer's integration tests share: a balancer on an ephemeral port, stopped when its
//! handle is dropped or [`Lb::stop`]ped.

#![allow(dead_code)]

use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running balancer.
pub struct Lb {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub authority: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Lb {
    /// Starts `lb::serve` with `config` on a fresh port.
    pub async fn start(config: lb::Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            lb::serve(
                listener,
                config,
                common::Instance::new("lb", "lb-1"),
                async {
                    let _ = rx.await;
                },
            )
            .await
            .unwrap();
        });
        Self {
            url: format!("http://{authority}"),
            authority,
            stop: Some(tx),
            task,
        }
    }

    /// Asks it to stop; returns the task, which ends once every connection has.
    pub fn stop(self) -> tokio::task::JoinHandle<()> {
        let Lb { stop, task, .. } = self;
        if let Some(s) = stop {
            let _ = s.send(());
        }
        task
    }
}

/// A balancer configuration over `backends` with quick health checks and short timeouts.
pub fn config(backends: &[&str]) -> lb::Config {
    lb::Config {
        backends: backends.iter().map(|b| b.to_string()).collect(),
        pool: balance::PoolConfig {
            connect_timeout_ms: 500,
            response_timeout_ms: 2000,
            health: balance::HealthConfig {
                interval_ms: 100,
                ..balance::HealthConfig::default()
            },
            ..balance::PoolConfig::default()
        },
        ..lb::Config::default()
    }
}
