//! The instances the supervisor runs now, and how they change while it runs: scale a role out
//! (new instances join once healthy) or in (the newest instances drain, then stop), drain or kill
//! one instance. The control API (`control.rs`) is its front; pools read its membership.
//!
//! An instance's life: `starting` (spawned, not healthy yet: in no pool) → `active` (healthy: pools
//! send it requests) → `draining` (pools send it no new request; in-flight ones finish) →
//! `stopping` (SIGTERM sent; its own graceful shutdown finishes what it has) → gone. A drain waits
//! `drain_delay` between `draining` and SIGTERM: long enough for every pool to have read the new
//! state (twice their refresh interval), so no request is sent to an instance that is stopping.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::{ChildSpec, Ctx, Supervised};

/// Makes the spec of a new instance of `role` with this id and port (what `up` would have written).
pub type SpecFactory = Arc<dyn Fn(&str, &str, u16) -> ChildSpec + Send + Sync>;

/// How the fleet may change while it runs.
#[derive(Clone)]
pub struct Elastic {
    /// Builds new instances' specs.
    pub factory: SpecFactory,
    /// The roles `scale` may change (the others are reached by one URL, or are the entry point).
    pub scalable: Vec<String>,
    /// Most instances of one role.
    pub max_per_role: usize,
    /// The roles with an autoscaler, and its policy.
    pub autoscale: Vec<(String, crate::autoscale::Policy)>,
    /// Time between `draining` and SIGTERM, so that every pool has seen the drain.
    pub drain_delay: Duration,
}

impl std::fmt::Debug for Elastic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elastic")
            .field("scalable", &self.scalable)
            .field("max_per_role", &self.max_per_role)
            .field("drain_delay", &self.drain_delay)
            .finish_non_exhaustive()
    }
}

/// An instance's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Spawned, not healthy yet.
    Starting,
    /// Healthy: in its pools.
    Active,
    /// Leaving: no new requests.
    Draining,
    /// SIGTERM sent.
    Stopping,
}

impl State {
    /// Its name, as the control API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Active => "active",
            State::Draining => "draining",
            State::Stopping => "stopping",
        }
    }
}

/// One instance as `scalelab status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InstanceStatus {
    /// Its role.
    pub role: String,
    /// Its id.
    pub id: String,
    /// Its base URL.
    pub url: String,
    /// Its current pid, once spawned.
    pub pid: Option<u32>,
    /// `starting`, `active`, `draining` or `stopping`.
    pub state: State,
    /// Seconds since it was started (by `up` or by a scale).
    pub uptime_secs: f64,
    /// How many times the supervisor restarted it (it exited or was killed).
    pub restarts: u32,
}

/// Something that happened to the fleet (`GET /events`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `started`, `active`, `draining`, `stopped`, `killed`, `scale`, `refused`, `failed`.
    pub kind: String,
    /// The instance it concerns, if one.
    pub id: Option<String>,
    /// One sentence.
    pub message: String,
}

struct Entry {
    spec: ChildSpec,
    state: State,
    since: Instant,
    supervised: Option<Supervised>,
}

struct Inner {
    /// In start order: the roles' order, then ids in creation order.
    entries: Vec<Entry>,
    /// The roles in start order (shutdown goes the other way).
    roles: Vec<String>,
    /// The next instance number per role.
    next: BTreeMap<String, usize>,
    events: VecDeque<Event>,
    /// The latest autoscaler decision per role.
    decisions: BTreeMap<String, crate::autoscale::Decision>,
    /// Set once shutdown begins: no more changes.
    closed: bool,
}

/// The running instances; shared by the supervisor and its control API.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Mutex<Inner>>,
    ctx: Arc<Ctx>,
    elastic: Option<Elastic>,
    /// Every event as it happens, for `GET /events/stream`.
    live: tokio::sync::broadcast::Sender<Event>,
}

/// Most events kept for `GET /events`.
const EVENTS_KEPT: usize = 500;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The number in `role-N`.
fn number(id: &str) -> usize {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Fleet {
    pub(crate) fn new(specs: &[ChildSpec], ctx: Arc<Ctx>, elastic: Option<Elastic>) -> Self {
        let mut roles: Vec<String> = Vec::new();
        let mut next = BTreeMap::new();
        for s in specs {
            if !roles.contains(&s.role) {
                roles.push(s.role.clone());
            }
            let n = next.entry(s.role.clone()).or_insert(1);
            *n = (*n).max(number(&s.id) + 1);
        }
        let entries = specs
            .iter()
            .map(|s| Entry {
                spec: s.clone(),
                state: State::Starting,
                since: Instant::now(),
                supervised: None,
            })
            .collect();
        Fleet {
            inner: Arc::new(Mutex::new(Inner {
                entries,
                roles,
                next,
                events: VecDeque::new(),
                decisions: BTreeMap::new(),
                closed: false,
            })),
            ctx,
            elastic,
            live: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// Every event from now on (a slow reader misses the oldest, and is told how many).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an event and prints it.
    pub fn event(&self, kind: &str, id: Option<&str>, message: String) {
        self.ctx.log.line(format!("[up] {message}"));
        let mut inner = self.lock();
        if inner.events.len() == EVENTS_KEPT {
            inner.events.pop_front();
        }
        let event = Event {
            at_ms: now_ms(),
            kind: kind.into(),
            id: id.map(str::to_string),
            message,
        };
        inner.events.push_back(event.clone());
        drop(inner);
        // Nobody listening is fine.
        let _ = self.live.send(event);
    }

    /// The events since `after_ms` (all kept ones for 0).
    pub fn events(&self, after_ms: u64) -> Vec<Event> {
        self.lock()
            .events
            .iter()
            .filter(|e| e.at_ms > after_ms)
            .cloned()
            .collect()
    }

    /// Hands the fleet the task that runs `id` (start-up spawns them).
    pub(crate) fn attach(&self, id: &str, supervised: Supervised) {
        if let Some(e) = self.lock().entries.iter_mut().find(|e| e.spec.id == id) {
            e.supervised = Some(supervised);
        }
    }

    /// Marks `id` with `state`, unless it has moved past it already (a drain wins over a late
    /// health report).
    pub(crate) fn set_state(&self, id: &str, state: State) {
        if let Some(e) = self.lock().entries.iter_mut().find(|e| e.spec.id == id)
            && (e.state == State::Starting || state != State::Active)
        {
            e.state = state;
        }
    }

    /// Every instance, in start order.
    pub fn status(&self) -> Vec<InstanceStatus> {
        let pids = self.ctx.registry.pids();
        let restarts = self.ctx.registry.restarts();
        self.lock()
            .entries
            .iter()
            .map(|e| InstanceStatus {
                role: e.spec.role.clone(),
                id: e.spec.id.clone(),
                url: e.spec.url.clone(),
                pid: pids.get(&e.spec.id).copied().flatten(),
                state: e.state,
                uptime_secs: e.since.elapsed().as_secs_f64(),
                restarts: restarts.get(&e.spec.id).copied().unwrap_or(0),
            })
            .collect()
    }

    /// `role`'s instances with their states, for pools (`GET /members/{role}`).
    pub fn members(&self, role: &str) -> Vec<(String, String, State)> {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.spec.role == role)
            .map(|e| (e.spec.id.clone(), e.spec.url.clone(), e.state))
            .collect()
    }

    /// Whether shutdown has begun.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Keeps `decision` as its role's latest (`GET /autoscale`).
    pub fn record_decision(&self, decision: crate::autoscale::Decision) {
        self.lock()
            .decisions
            .insert(decision.role.clone(), decision);
    }

    /// The latest autoscaler decision of each role.
    pub fn decisions(&self) -> Vec<crate::autoscale::Decision> {
        self.lock().decisions.values().cloned().collect()
    }

    /// The autoscaled roles and their policies.
    pub fn autoscaled(&self) -> Vec<(String, crate::autoscale::Policy)> {
        self.elastic
            .as_ref()
            .map(|e| e.autoscale.clone())
            .unwrap_or_default()
    }

    /// Sets each role's instance count: starts the missing ones (they join their pools once
    /// healthy) and drains then stops the newest ones beyond it. Every request is checked before
    /// anything changes. Returns what it does, one line per role.
    pub fn scale(&self, wanted: &BTreeMap<String, usize>) -> Result<Vec<String>, String> {
        let done = self.scale_quietly(wanted)?;
        self.event("scale", None, format!("scale: {}", done.join("; ")));
        Ok(done)
    }

    /// [`Fleet::scale`] without its event (the autoscaler records its own, with its arithmetic).
    pub fn scale_quietly(&self, wanted: &BTreeMap<String, usize>) -> Result<Vec<String>, String> {
        let elastic = self
            .elastic
            .clone()
            .ok_or("this supervisor cannot change its instances")?;
        {
            let inner = self.lock();
            if inner.closed {
                return Err("the system is stopping".into());
            }
            for (role, &n) in wanted {
                if !elastic.scalable.contains(role) {
                    return Err(format!(
                        "{role} cannot be scaled; the roles that can are {}",
                        elastic.scalable.join(", ")
                    ));
                }
                if !inner.roles.contains(role) {
                    return Err(format!("this topology runs no {role}"));
                }
                if n == 0 || n > elastic.max_per_role {
                    return Err(format!(
                        "{role}={n}: a role runs 1 to {} instances",
                        elastic.max_per_role
                    ));
                }
            }
        }
        let mut done = Vec::new();
        for (role, &n) in wanted {
            let serving: Vec<String> = self
                .lock()
                .entries
                .iter()
                .filter(|e| {
                    &e.spec.role == role && matches!(e.state, State::Starting | State::Active)
                })
                .map(|e| e.spec.id.clone())
                .collect();
            if n > serving.len() {
                let mut started = Vec::new();
                for _ in serving.len()..n {
                    started.push(self.start_one(role, &elastic)?);
                }
                done.push(format!(
                    "{role}: {} → {n}, starting {}",
                    serving.len(),
                    started.join(", ")
                ));
            } else if n < serving.len() {
                // The newest go first: the original instances keep their well-known ports.
                let mut victims = serving.clone();
                victims.sort_by_key(|id| std::cmp::Reverse(number(id)));
                victims.truncate(serving.len() - n);
                for id in &victims {
                    self.drain(id)?;
                }
                done.push(format!(
                    "{role}: {} → {n}, draining {}",
                    serving.len(),
                    victims.join(", ")
                ));
            } else {
                done.push(format!("{role}: already {n}"));
            }
        }
        Ok(done)
    }

    /// Starts one more instance of `role` on a free port; returns its id.
    fn start_one(&self, role: &str, elastic: &Elastic) -> Result<String, String> {
        let free = crate::ports::bind_free("127.0.0.1")
            .map_err(|e| format!("no free port for a new {role}: {e}"))?;
        let addr = free
            .local_addr()
            .map_err(|e| format!("no free port for a new {role}: {e}"))?;
        let port = addr.port();
        let id = {
            let mut inner = self.lock();
            let n = inner.next.entry(role.to_string()).or_insert(1);
            let id = format!("{role}-{n}");
            *n += 1;
            id
        };
        let spec = (elastic.factory)(role, &id, port);
        // The probe's socket is the child's listener when it binds the same address (it then
        // cannot be taken before the child starts); otherwise the child's start binds its own.
        let listener = spec
            .listen_host
            .as_deref()
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            .filter(|ip| *ip == addr.ip())
            .map(|_| free);
        self.ctx.registry.add(&spec);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(crate::child::supervise(
            spec.clone(),
            listener,
            Arc::clone(&self.ctx),
            ready_tx,
            stop_rx,
        ));
        {
            let mut inner = self.lock();
            // After the last entry of its role, so that shutdown order stays by role.
            let at = inner
                .entries
                .iter()
                .rposition(|e| e.spec.role == role)
                .map_or(inner.entries.len(), |i| i + 1);
            inner.entries.insert(
                at,
                Entry {
                    spec: spec.clone(),
                    state: State::Starting,
                    since: Instant::now(),
                    supervised: Some(Supervised {
                        id: id.clone(),
                        stop: stop_tx,
                        task,
                    }),
                },
            );
        }
        self.event(
            "started",
            Some(&id),
            format!("{id} starting on {} (scale out)", spec.url),
        );
        let fleet = self.clone();
        let watched = id.clone();
        tokio::spawn(async move {
            match ready_rx.await {
                Ok(Ok(())) => {
                    fleet.set_state(&watched, State::Active);
                    fleet.event(
                        "active",
                        Some(&watched),
                        format!("{watched} is healthy: it joins its pools"),
                    );
                }
                Ok(Err(why)) => {
                    fleet.remove(&watched);
                    fleet.event(
                        "failed",
                        Some(&watched),
                        format!("{watched} did not start: {why}"),
                    );
                }
                Err(_) => {
                    fleet.remove(&watched);
                }
            }
        });
        Ok(id)
    }

    /// Forgets `id` (it stopped, or never started).
    fn remove(&self, id: &str) {
        self.lock().entries.retain(|e| e.spec.id != id);
        self.ctx.registry.remove(id);
    }

    /// Drains `id`: out of its pools now, SIGTERM after the drain delay, gone once stopped.
    pub fn drain(&self, id: &str) -> Result<(), String> {
        let elastic = self
            .elastic
            .clone()
            .ok_or("this supervisor cannot change its instances")?;
        {
            let mut inner = self.lock();
            if inner.closed {
                return Err("the system is stopping".into());
            }
            let Some(e) = inner.entries.iter_mut().find(|e| e.spec.id == id) else {
                return Err(format!("no instance {id}"));
            };
            if !elastic.scalable.contains(&e.spec.role) {
                return Err(format!(
                    "{id} cannot be drained: only {} instances can",
                    elastic.scalable.join(", ")
                ));
            }
            if matches!(e.state, State::Draining | State::Stopping) {
                return Ok(());
            }
            e.state = State::Draining;
        }
        self.event(
            "draining",
            Some(id),
            format!(
                "{id} draining: no new requests; stopping in {:?}",
                elastic.drain_delay
            ),
        );
        let fleet = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(elastic.drain_delay).await;
            let supervised = {
                let mut inner = fleet.lock();
                if inner.closed {
                    // Shutdown stops it with everything else.
                    return;
                }
                inner
                    .entries
                    .iter_mut()
                    .find(|e| e.spec.id == id)
                    .and_then(|e| {
                        e.state = State::Stopping;
                        e.supervised.take()
                    })
            };
            let Some(supervised) = supervised else {
                return;
            };
            let deadline = Instant::now() + fleet.ctx.opts.grace;
            let _ = supervised.stop.send(deadline);
            let problem = supervised.task.await.ok().flatten();
            fleet.remove(&id);
            match problem {
                None => fleet.event("stopped", Some(&id), format!("{id} drained and stopped")),
                Some(p) => fleet.event("stopped", Some(&id), format!("{id} stopped: {p}")),
            }
        });
        Ok(())
    }

    /// SIGKILLs `id`'s process (the demo of a crash): the supervisor restarts it.
    pub fn kill(&self, id: &str) -> Result<u32, String> {
        if !self.lock().entries.iter().any(|e| e.spec.id == id) {
            return Err(format!("no instance {id}"));
        }
        let pid = self
            .ctx
            .registry
            .pids()
            .get(id)
            .copied()
            .flatten()
            .ok_or_else(|| format!("{id} has no process yet"))?;
        let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(|e| format!("cannot kill {id} (pid {pid}): {e}"))?;
        self.event(
            "killed",
            Some(id),
            format!("{id} (pid {pid}) killed with SIGKILL; it will be restarted"),
        );
        Ok(pid)
    }

    /// Ends every change and hands over every instance's task, grouped by role in start order.
    pub(crate) fn close(&self) -> Vec<Vec<Supervised>> {
        let mut inner = self.lock();
        inner.closed = true;
        let roles = inner.roles.clone();
        let mut groups = Vec::new();
        for role in roles {
            let group: Vec<Supervised> = inner
                .entries
                .iter_mut()
                .filter(|e| e.spec.role == role)
                .filter_map(|e| e.supervised.take())
                .collect();
            groups.push(group);
        }
        groups
    }
}
