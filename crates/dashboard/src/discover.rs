//! Which instances there are: the supervisor's list under `scalelab up` (with states, uptimes and
//! restarts), or a fixed list of URLs per role from the topology, each name optionally resolved in
//! DNS every round so that every address behind a Kubernetes headless service is an instance.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One instance to watch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Target {
    pub(crate) id: String,
    pub(crate) role: String,
    pub(crate) url: String,
    /// `starting`, `active`, `draining`, `stopping` from the supervisor; `active` otherwise.
    pub(crate) state: String,
    pub(crate) uptime_secs: Option<f64>,
    pub(crate) restarts: Option<u64>,
}

/// Where the list comes from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// `GET {url}/instances` of the supervisor's control API.
    Control(String),
    /// Role → base URLs; with `resolve`, each URL's host is looked up every round.
    Fixed {
        targets: BTreeMap<String, Vec<String>>,
        resolve: bool,
    },
}

#[derive(Deserialize)]
struct Listing {
    instances: Vec<Listed>,
}

#[derive(Deserialize)]
struct Listed {
    role: String,
    id: String,
    url: String,
    state: String,
    #[serde(default)]
    uptime_secs: Option<f64>,
    #[serde(default)]
    restarts: Option<u64>,
}

impl Source {
    /// The instances now, in role order then id order as the source gives them.
    pub(crate) async fn list(&self, http: &reqwest::Client) -> Result<Vec<Target>, String> {
        match self {
            Source::Control(url) => {
                let listing: Listing = http
                    .get(format!("{url}/instances"))
                    .send()
                    .await
                    .map_err(|e| format!("the control API at {url} did not answer: {e}"))?
                    .error_for_status()
                    .map_err(|e| format!("the control API at {url} refused: {e}"))?
                    .json()
                    .await
                    .map_err(|e| format!("the control API at {url} answered no listing: {e}"))?;
                Ok(listing
                    .instances
                    .into_iter()
                    // The dashboard does not watch itself.
                    .filter(|i| i.role != "dashboard")
                    .map(|i| Target {
                        id: i.id,
                        role: i.role,
                        url: i.url,
                        state: i.state,
                        uptime_secs: i.uptime_secs,
                        restarts: i.restarts,
                    })
                    .collect())
            }
            Source::Fixed { targets, resolve } => {
                let mut out = Vec::new();
                for (role, urls) in targets {
                    let mut n = 0;
                    for url in urls {
                        let expanded = if *resolve {
                            expand(url).await
                        } else {
                            vec![url.clone()]
                        };
                        for url in expanded {
                            n += 1;
                            out.push(Target {
                                id: if *resolve {
                                    format!("{role}@{}", host_port(&url))
                                } else {
                                    format!("{role}-{n}")
                                },
                                role: role.clone(),
                                url,
                                state: "active".into(),
                                uptime_secs: None,
                                restarts: None,
                            });
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// Every address a URL's host resolves to, as URLs; the URL itself when it does not resolve (it is
/// then shown as down, not hidden).
async fn expand(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_string()];
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    match tokio::net::lookup_host(with_port).await {
        Ok(addrs) => {
            let mut urls: Vec<String> = addrs.map(|a| format!("{scheme}://{a}")).collect();
            urls.sort();
            urls.dedup();
            if urls.is_empty() {
                vec![url.to_string()]
            } else {
                urls
            }
        }
        Err(_) => vec![url.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fixed_targets_are_numbered_per_role_and_resolved_names_become_addresses() {
        let mut targets = BTreeMap::new();
        targets.insert(
            "service".to_string(),
            vec![
                "http://127.0.0.1:5001".into(),
                "http://127.0.0.1:5006".into(),
            ],
        );
        let fixed = Source::Fixed {
            targets: targets.clone(),
            resolve: false,
        };
        let http = reqwest::Client::new();
        let list = fixed.list(&http).await.unwrap();
        assert_eq!(
            list.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["service-1", "service-2"]
        );
        targets.insert("gateway".into(), vec!["http://localhost:5000".into()]);
        let resolved = Source::Fixed {
            targets,
            resolve: true,
        }
        .list(&http)
        .await
        .unwrap();
        let gateways: Vec<_> = resolved.iter().filter(|t| t.role == "gateway").collect();
        assert!(!gateways.is_empty());
        assert!(
            gateways
                .iter()
                .all(|t| t.url.contains("127.0.0.1:5000") || t.url.contains("[::1]:5000")),
            "{gateways:?}"
        );
        assert!(gateways[0].id.starts_with("gateway@"));
    }
}
