//! The scrape loop and what it keeps: every `scrape_ms` it lists the instances, reads each one's
//! health and `/metrics` at once, turns the round into a [`Frame`], notes what changed as events
//! (an instance down or up again, and the supervisor's own events), keeps `history_secs` of
//! points and events, and hands the frame to every open stream.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::discover::{Source, Target};
use crate::model::{self, CacheStats, Counters, Frame, Point, Reading};
use crate::prom;

/// Something that happened, for the event log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Event {
    /// Milliseconds since the Unix epoch.
    pub(crate) at_ms: u64,
    /// The supervisor's kinds (`started`, `active`, `draining`, `stopped`, `killed`, `scale`,
    /// `autoscale`, ...) and the dashboard's own: `down`, `up`, `ejected`, `back`, `breaker`.
    pub(crate) kind: String,
    /// The instance it concerns, if one.
    #[serde(default)]
    pub(crate) id: Option<String>,
    /// One sentence.
    pub(crate) message: String,
}

/// What a stream receives: a new frame (with the events of its round).
#[derive(Debug, Clone)]
pub(crate) struct Update {
    /// The frame as JSON, serialized once for every subscriber.
    pub(crate) frame: Arc<str>,
}

/// What the loop keeps, shared with the HTTP handlers.
pub(crate) struct Hub {
    inner: Mutex<Kept>,
    tx: broadcast::Sender<Update>,
    /// How many points the history keeps.
    capacity: usize,
}

struct Kept {
    latest: Option<Arc<str>>,
    points: VecDeque<Point>,
    events: VecDeque<Event>,
    /// The last instance list: what the controls may name.
    targets: Vec<Target>,
}

/// Failed health checks in a row that make an instance down (a refused connection needs one).
const FALL: u32 = 2;

/// Why a check failed when nothing listens.
const REFUSED: &str = "connection refused";

/// How long an instance that restarted is shown as restarting.
const RESTART_SHOWN: Duration = Duration::from_secs(3);

/// Most events kept.
const EVENTS_KEPT: usize = 500;

impl Hub {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(16);
        Arc::new(Self {
            inner: Mutex::new(Kept {
                latest: None,
                points: VecDeque::new(),
                events: VecDeque::new(),
                targets: Vec::new(),
            }),
            tx,
            capacity: capacity.max(1),
        })
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.tx.subscribe()
    }

    /// The latest frame as JSON, once there is one.
    pub(crate) fn latest(&self) -> Option<Arc<str>> {
        self.kept().latest.clone()
    }

    /// The kept points and events (the stream's first message, and `GET /api/history`).
    pub(crate) fn history(&self) -> serde_json::Value {
        let k = self.kept();
        serde_json::json!({
            "points": k.points,
            "events": k.events,
        })
    }

    /// Events after `after_ms`.
    pub(crate) fn events_after(&self, after_ms: u64) -> Vec<Event> {
        self.kept()
            .events
            .iter()
            .filter(|e| e.at_ms > after_ms)
            .cloned()
            .collect()
    }

    /// The latest instance list.
    pub(crate) fn targets(&self) -> Vec<Target> {
        self.kept().targets.clone()
    }

    fn publish(&self, frame: Frame, events: Vec<Event>, targets: Vec<Target>) {
        #[derive(Serialize)]
        struct WithEvents<'a> {
            #[serde(flatten)]
            frame: &'a Frame,
            events: &'a [Event],
        }
        let json: Arc<str> = serde_json::to_string(&WithEvents {
            frame: &frame,
            events: &events,
        })
        .unwrap_or_else(|_| "{}".into())
        .into();
        {
            let mut k = self.kept();
            k.points.push_back(frame.point);
            while k.points.len() > self.capacity {
                k.points.pop_front();
            }
            for e in events {
                k.events.push_back(e);
            }
            while k.events.len() > EVENTS_KEPT {
                k.events.pop_front();
            }
            k.latest = Some(json.clone());
            k.targets = targets;
        }
        // Nobody listening is fine.
        let _ = self.tx.send(Update { frame: json });
    }
}

/// Reads one instance: health and metrics at once (and the cache service's stats).
async fn read(http: &reqwest::Client, target: Target, clock: Instant) -> Reading {
    let (health, metrics) = if target.role == "lb" {
        ("/_lb/health", "/_lb/metrics")
    } else {
        ("/health", "/metrics")
    };
    let url = target.url.clone();
    let health = async {
        match http.get(format!("{url}{health}")).send().await {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("health check answered {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Some("health check timed out".to_string()),
            Err(e) if e.is_connect() => Some(REFUSED.to_string()),
            Err(_) => Some("health check failed".to_string()),
        }
    };
    let page = async {
        let r = http.get(format!("{url}{metrics}")).send().await.ok()?;
        r.text().await.ok()
    };
    let stats = async {
        if target.role != "cache" {
            return None;
        }
        let r = http.get(format!("{url}/cache/stats")).send().await.ok()?;
        r.json::<CacheStats>().await.ok()
    };
    let (down, page, stats) = tokio::join!(health, page, stats);
    let counters = page.map(|p| model::counters(&target.role, &prom::parse(&p), stats.as_ref()));
    Reading {
        target,
        down,
        counters,
        at: clock.elapsed().as_secs_f64(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Deserialize)]
struct SupervisorEvents {
    events: Vec<Event>,
}

/// Runs the loop until `stop` resolves.
pub(crate) async fn run(
    hub: Arc<Hub>,
    source: Source,
    control_url: Option<String>,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let http = reqwest::Client::builder()
        .no_proxy()
        // A round may take longer than the period on a busy machine (the ticker then skips).
        .timeout(every.max(Duration::from_secs(1)))
        .pool_max_idle_per_host(4)
        .build()
        .unwrap_or_default();
    let clock = Instant::now();
    let mut previous: BTreeMap<String, (Counters, f64)> = BTreeMap::new();
    let mut health: BTreeMap<String, bool> = BTreeMap::new();
    // Failed health checks in a row, by instance.
    let mut fails: BTreeMap<String, u32> = BTreeMap::new();
    // Restart counts seen, and when each instance was last seen restarting.
    let mut restarts: BTreeMap<String, u64> = BTreeMap::new();
    let mut restarted_at: BTreeMap<String, Instant> = BTreeMap::new();
    // The fuses as last seen: ejected instances, and each gateway's breakers that are not closed.
    let mut fuses: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
    let mut targets: Vec<Target> = Vec::new();
    // The supervisor's events are read from when the dashboard started: older ones are history
    // the supervisor's own `GET /events` keeps.
    let mut seen_ms = now_ms().saturating_sub(60_000);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
        }
        seq += 1;
        let discovery_error = match source.list(&http).await {
            Ok(list) => {
                targets = list;
                None
            }
            Err(why) => Some(why),
        };
        let mut readings =
            futures::future::join_all(targets.iter().cloned().map(|t| read(&http, t, clock))).await;
        // Like HAProxy's `fall`: a refused connection is down at once (nothing listens), but one
        // slow or failed check on a busy machine is not; two in a row are.
        for r in &mut readings {
            let n = fails.entry(r.target.id.clone()).or_insert(0);
            match &r.down {
                None => *n = 0,
                Some(why) => {
                    *n += 1;
                    if *n < FALL && why != REFUSED {
                        r.down = None;
                    }
                }
            }
        }
        fails.retain(|id, _| targets.iter().any(|t| &t.id == id));
        let at_ms = now_ms();
        let mut frame = model::frame(seq, at_ms, &readings, &previous);
        frame.discovery_error = discovery_error;
        let mut events = Vec::new();
        for r in &readings {
            let up = r.down.is_none();
            let was = health.insert(r.target.id.clone(), up);
            let message = match (was, up) {
                (Some(true), false) => format!(
                    "{} is down: {}",
                    r.target.id,
                    r.down.as_deref().unwrap_or("no answer")
                ),
                (Some(false), true) => format!("{} answers its health check again", r.target.id),
                _ => continue,
            };
            events.push(Event {
                at_ms,
                kind: if up { "up" } else { "down" }.into(),
                id: Some(r.target.id.clone()),
                message,
            });
        }
        for r in &readings {
            let Some(n) = r.target.restarts else { continue };
            let was = restarts.insert(r.target.id.clone(), n);
            if was.is_some_and(|w| n > w) {
                restarted_at.insert(r.target.id.clone(), Instant::now());
                events.push(Event {
                    at_ms,
                    kind: "restarted".into(),
                    id: Some(r.target.id.clone()),
                    message: format!(
                        "{} was restarted by the supervisor (restart #{n})",
                        r.target.id
                    ),
                });
            }
        }
        for i in &mut frame.instances {
            i.restarting = restarted_at
                .get(&i.id)
                .is_some_and(|at| at.elapsed() < RESTART_SHOWN);
        }
        for i in &frame.instances {
            let now = (i.ejected, i.breakers.clone());
            let Some(was) = fuses.insert(i.id.clone(), now.clone()) else {
                continue;
            };
            if was.0 != now.0 {
                events.push(Event {
                    at_ms,
                    kind: if now.0 { "ejected" } else { "back" }.into(),
                    id: Some(i.id.clone()),
                    message: if now.0 {
                        format!(
                            "{} was ejected from its pool: failing or slow answers",
                            i.id
                        )
                    } else {
                        format!("{} is back in its pool after its ejection", i.id)
                    },
                });
            }
            if was.1 != now.1 {
                events.push(Event {
                    at_ms,
                    kind: "breaker".into(),
                    id: Some(i.id.clone()),
                    message: if now.1.is_empty() {
                        format!("{}: every circuit breaker is closed again", i.id)
                    } else {
                        format!("{}: circuit breaker open for {}", i.id, now.1.join(", "))
                    },
                });
            }
        }
        fuses.retain(|id, _| targets.iter().any(|t| &t.id == id));
        health.retain(|id, _| targets.iter().any(|t| &t.id == id));
        restarts.retain(|id, _| targets.iter().any(|t| &t.id == id));
        restarted_at.retain(|_, at| at.elapsed() < RESTART_SHOWN);
        if let Some(url) = &control_url
            && let Ok(r) = http
                .get(format!("{url}/events?after={seen_ms}"))
                .send()
                .await
            && let Ok(list) = r.json::<SupervisorEvents>().await
        {
            for e in list.events {
                seen_ms = seen_ms.max(e.at_ms);
                events.push(e);
            }
        }
        previous = readings
            .into_iter()
            .filter_map(|r| r.counters.map(|c| (r.target.id, (c, r.at))))
            .collect();
        hub.publish(frame, events, targets.clone());
    }
}
