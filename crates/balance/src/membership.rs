//! Where a pool's membership comes from while it runs, besides the static list it starts with:
//!
//! - **the supervisor** (`scalelab up`): its control API lists each role's instances with their
//!   state (`GET /members/{role}`); an instance joins once `active` (healthy), stays but gets no new
//!   requests while `draining`, and leaves when it is no longer listed;
//! - **DNS**: each backend URL whose host is a name expands to one backend per address the name
//!   resolves to, re-resolved on an interval (nginx's `resolve`, HAProxy's `server-template`), so
//!   an orchestrator's headless service is followed without a restart.
//!
//! A source that cannot be read leaves the membership as it was (a stale list beats an empty pool).
//! [`spawn`] runs one source for one pool until the returned task is dropped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use api::wire::control::Members;

use crate::pool::{Member, Pool};

/// Where membership comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The supervisor's `GET /members/{role}` at this URL.
    Supervisor {
        /// `http://127.0.0.1:PORT/members/gateway`.
        url: String,
    },
    /// These URLs, each name re-resolved (IP literals stay as written).
    Dns {
        /// `http://gateway.scalelab.svc:5000`, ...
        urls: Vec<String>,
        /// Who answers the lookups (the system resolver, or a test's).
        resolver: Arc<dyn Resolver>,
    },
}

/// Name lookups, so that tests can change a record set.
pub trait Resolver: Send + Sync + std::fmt::Debug {
    /// The addresses of `host` (with `port`).
    fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>>;
}

/// The system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>> {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

/// Whether any of `urls` names its host (rather than an IP address): those need [`Source::Dns`] to
/// follow their record set.
pub fn has_names(urls: &[String]) -> bool {
    urls.iter()
        .filter_map(|u| split(u))
        .any(|(host, _)| host.parse::<IpAddr>().is_err())
}

/// `(host, port)` of `http://host:port[/...]` (port 80 when absent; brackets of IPv6 removed).
fn split(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, tail) = v6.split_once(']')?;
        let port = tail
            .strip_prefix(':')
            .map_or(Some(80), |p| p.parse().ok())?;
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), 80)),
    }
}

fn url_of(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("http://{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("http://[{}]:{}", a.ip(), a.port()),
    }
}

/// The members `urls` stand for now: IP URLs as written, each name expanded to its addresses.
/// A name that does not resolve keeps what it had in `previous` (by name), and the error is logged.
pub async fn expand(
    urls: &[String],
    resolver: &dyn Resolver,
    previous: &HashMap<String, Vec<String>>,
) -> HashMap<String, Vec<String>> {
    let mut out = HashMap::new();
    for url in urls {
        let Some((host, port)) = split(url) else {
            out.insert(url.clone(), vec![url.clone()]);
            continue;
        };
        if host.parse::<IpAddr>().is_ok() {
            out.insert(url.clone(), vec![url.trim_end_matches('/').to_string()]);
            continue;
        }
        match resolver.lookup(&host, port).await {
            Ok(addrs) if !addrs.is_empty() => {
                let mut urls: Vec<String> = addrs.into_iter().map(url_of).collect();
                urls.sort();
                urls.dedup();
                out.insert(url.clone(), urls);
            }
            result => {
                let why = result
                    .err()
                    .map_or_else(|| "no address".to_string(), |e| e.to_string());
                tracing::warn!(%host, %why, "backend name does not resolve; keeping its last addresses");
                out.insert(url.clone(), previous.get(url).cloned().unwrap_or_default());
            }
        }
    }
    out
}

/// The members the supervisor's answer lists for pools: `active` and `draining` instances.
pub fn members_of(answer: &Members) -> Vec<Member> {
    answer
        .members
        .iter()
        .filter_map(|m| match m.state.as_str() {
            "active" => Some(Member::active(m.url.clone())),
            "draining" => Some(Member {
                url: m.url.clone(),
                draining: true,
            }),
            _ => None,
        })
        .collect()
}

/// A running membership source; dropping it stops it.
#[derive(Debug)]
pub struct MembershipTask(tokio::task::JoinHandle<()>);

impl Drop for MembershipTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads `source` every `interval` and makes its answer `pool`'s membership.
pub fn spawn(pool: Arc<Pool>, source: Source, interval: Duration) -> MembershipTask {
    MembershipTask(tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        let mut previous: HashMap<String, Vec<String>> = HashMap::new();
        let mut failing = false;
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let members = match &source {
                Source::Supervisor { url } => match fetch(&http, url).await {
                    Ok(answer) => {
                        failing = false;
                        members_of(&answer)
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(pool = %pool.name(), %url, error = %e, "cannot read the membership; keeping the pool as it is");
                        }
                        failing = true;
                        continue;
                    }
                },
                Source::Dns { urls, resolver } => {
                    previous = expand(urls, resolver.as_ref(), &previous).await;
                    urls.iter()
                        .flat_map(|u| previous.get(u).cloned().unwrap_or_default())
                        .map(Member::active)
                        .collect()
                }
            };
            pool.set_members(&members);
        }
    }))
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<Members, String> {
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    resp.json::<Members>().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A resolver whose records the test changes.
    #[derive(Debug, Default)]
    struct Records(Mutex<HashMap<String, Vec<IpAddr>>>);

    impl Resolver for Records {
        fn lookup(
            &self,
            host: &str,
            port: u16,
        ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>>
        {
            let found = self.0.lock().unwrap().get(host).cloned();
            Box::pin(async move {
                found
                    .map(|ips| {
                        ips.into_iter()
                            .map(|ip| SocketAddr::new(ip, port))
                            .collect()
                    })
                    .ok_or_else(|| std::io::Error::other("NXDOMAIN"))
            })
        }
    }

    #[test]
    fn urls_split_into_host_and_port() {
        assert_eq!(split("http://gw.svc:5000"), Some(("gw.svc".into(), 5000)));
        assert_eq!(split("http://10.0.0.1:80/x"), Some(("10.0.0.1".into(), 80)));
        assert_eq!(split("http://[::1]:8080"), Some(("::1".into(), 8080)));
        assert_eq!(split("http://gw"), Some(("gw".into(), 80)));
        assert!(has_names(&[
            "http://127.0.0.1:1".into(),
            "http://gw.svc:1".into()
        ]));
        assert!(!has_names(&[
            "http://127.0.0.1:1".into(),
            "http://[::1]:2".into()
        ]));
    }

    #[tokio::test]
    async fn a_name_expands_to_every_address_and_keeps_its_last_set_when_it_stops_resolving() {
        let records = Records::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        records.0.lock().unwrap().insert(
            "gw.svc".into(),
            vec![ip("10.0.0.2"), ip("10.0.0.1"), ip("fd00::1")],
        );
        let urls = vec![
            "http://gw.svc:5000".to_string(),
            "http://127.0.0.1:9".to_string(),
        ];
        let got = expand(&urls, &records, &HashMap::new()).await;
        assert_eq!(
            got["http://gw.svc:5000"],
            [
                "http://10.0.0.1:5000",
                "http://10.0.0.2:5000",
                "http://[fd00::1]:5000"
            ]
        );
        assert_eq!(got["http://127.0.0.1:9"], ["http://127.0.0.1:9"]);
        records.0.lock().unwrap().clear();
        let kept = expand(&urls, &records, &got).await;
        assert_eq!(kept, got, "a name that stops resolving keeps its addresses");
    }

    /// The record set changes while the pool runs: the pool follows it without a restart.
    #[tokio::test]
    async fn a_pool_follows_its_names_record_set() {
        let records = Arc::new(Records::default());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        records
            .0
            .lock()
            .unwrap()
            .insert("gw.test".into(), vec![ip("127.0.0.2")]);
        let urls = vec!["http://gw.test:5000".to_string()];
        let pool = Pool::new("gateway", &[], crate::PoolConfig::default());
        let resolver: Arc<dyn Resolver> = records.clone();
        let _task = spawn(
            pool.clone(),
            Source::Dns { urls, resolver },
            Duration::from_millis(10),
        );
        let urls_now = |pool: &Pool| -> Vec<String> {
            pool.backends().iter().map(|b| b.url.clone()).collect()
        };
        wait(|| urls_now(&pool) == ["http://127.0.0.2:5000"]).await;
        let first = pool.backends()[0].clone();
        records
            .0
            .lock()
            .unwrap()
            .insert("gw.test".into(), vec![ip("127.0.0.2"), ip("127.0.0.3")]);
        wait(|| urls_now(&pool) == ["http://127.0.0.2:5000", "http://127.0.0.3:5000"]).await;
        assert!(
            Arc::ptr_eq(&first, &pool.backends()[0]),
            "a kept address keeps its backend"
        );
        records
            .0
            .lock()
            .unwrap()
            .insert("gw.test".into(), vec![ip("127.0.0.3")]);
        wait(|| urls_now(&pool) == ["http://127.0.0.3:5000"]).await;
        assert!(
            first.is_draining(),
            "the address that left takes no new request"
        );
    }

    async fn wait(mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "condition not met in time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn the_supervisors_states_map_to_members() {
        let m = |id: &str, state: &str| api::wire::control::Member {
            id: id.into(),
            url: format!("http://127.0.0.1:1/{id}"),
            state: state.into(),
        };
        let answer = Members {
            role: "gateway".into(),
            members: vec![
                m("a", "starting"),
                m("b", "active"),
                m("c", "draining"),
                m("d", "stopping"),
            ],
        };
        let got = members_of(&answer);
        assert_eq!(
            got,
            [
                Member::active("http://127.0.0.1:1/b"),
                Member {
                    url: "http://127.0.0.1:1/c".into(),
                    draining: true
                }
            ]
        );
    }
}
