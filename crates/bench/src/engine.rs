//! The generator: one task per virtual connection, each with its own keep-alive HTTP/1.1
//! connection (spoken by [`crate::h1`] on the task itself: no connection task, no channel), its own
//! scratch buffers and its own per-second [`Chunk`];
//! chunks go to the aggregator in [`execute`] over a channel, so no lock is taken per request.
//!
//! Invariants: a connection has at most one request in flight; in the open model request `k` of
//! connection `i` is due at `start + i/rate + k*connections/rate`, and when the connection was
//! still busy at that time its latency is measured from that intended time, however late it was
//! actually sent.

use std::future::Future;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::Error;
use crate::h1::{self, Cache, Conn, Failure};
use crate::plan::{Load, Plan, RunConfig};
use crate::report::{Aggregate, Chunk, Report, ReportConfig, SIGFIG, new_histogram};

/// The parts of an answer the report needs.
struct Answer {
    status: u16,
    served_by: Option<Vec<u8>>,
    cache: Option<Cache>,
    /// The value of the plan's `count_field` in the body, when asked for and present.
    field: Option<String>,
}

/// One distinct `host:port` among the plan's URLs.
struct Target {
    addr: SocketAddr,
    /// Everything of a request after its request target, serialized once: the version, the
    /// plan's headers plus `Host` (and `Content-Length` when there is a body), the empty line and
    /// the body.
    tail: Vec<u8>,
}

/// What every connection task shares (read-only but for the atomics).
struct Shared {
    plan: Plan,
    /// Index into `targets` of each URL template.
    url_target: Vec<usize>,
    /// The whole request of each URL template without placeholders, serialized once.
    fixed: Vec<Option<Vec<u8>>>,
    targets: Vec<Target>,
    start: Instant,
    deadline: Option<Instant>,
    limit: Option<u64>,
    /// Requests issued so far (for `limit`).
    issued: AtomicU64,
    /// The `{seq}` counter.
    seq: AtomicU64,
    /// Set when the stop signal fired; checked before every request.
    stopped: AtomicBool,
    timeout: Duration,
    /// Open model: the interval between two sends of one connection and the offset between
    /// consecutive connections' schedules.
    pacing: Option<(Duration, Duration)>,
}

/// Resolves the plan's hosts and pre-builds each target's headers.
async fn resolve(plan: &Plan) -> Result<(Vec<usize>, Vec<Target>), Error> {
    let mut names: Vec<String> = Vec::new();
    let mut url_target = Vec::with_capacity(plan.urls.len());
    for url in &plan.urls {
        let name = url.authority.as_str();
        let index = match names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                names.push(name.to_owned());
                names.len() - 1
            }
        };
        url_target.push(index);
    }
    let mut targets = Vec::with_capacity(names.len());
    for name in names {
        let addr = lookup(&name).await?;
        let host = HeaderValue::try_from(name.as_str()).map_err(|_| Error::Url {
            url: name.clone(),
            reason: "host is not a valid header value".into(),
        })?;
        let mut headers = plan.headers.clone();
        if !headers.contains_key(HOST) {
            headers.insert(HOST, host);
        }
        let tail = serialize_tail(&plan.method, &headers, &plan.body);
        targets.push(Target { addr, tail });
    }
    Ok((url_target, targets))
}

/// The request line's start: `METHOD `.
fn request_line_start(out: &mut Vec<u8>, method: &Method) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
}

/// What follows the request target: the version, the headers, `Content-Length` (when there is a
/// body or the method expects one, unless the headers have it), the empty line and the body.
fn serialize_tail(method: &Method, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let wants_body =
        !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if wants_body && !headers.contains_key(CONTENT_LENGTH) {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

async fn lookup(name: &str) -> Result<SocketAddr, Error> {
    tokio::net::lookup_host(name)
        .await
        .and_then(|mut it| {
            it.next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
        })
        .map_err(|source| Error::Resolve {
            host: name.to_owned(),
            source,
        })
}

/// Sends one request over `slot`'s connection (opening one if needed) and reads the whole answer.
async fn exchange(
    slot: &mut Option<Conn>,
    addr: SocketAddr,
    request: &[u8],
    head: bool,
    count_field: Option<&str>,
) -> Result<Answer, Failure> {
    let conn = match slot {
        Some(c) => c,
        None => slot.insert(h1::connect(addr).await?),
    };
    let keep_body = count_field.is_some();
    let response = match conn.round_trip(request, head, keep_body).await {
        Ok(r) => r,
        // The server closed the idle keep-alive connection before it read the request (nothing of
        // an answer came back): not a failure of this request, so send it on a new connection.
        Err(Failure::Reset) if conn.reused() && conn.nothing_received() => {
            let fresh = slot.insert(h1::connect(addr).await?);
            fresh.round_trip(request, head, keep_body).await?
        }
        Err(e) => return Err(e),
    };
    if response.close {
        *slot = None;
    }
    Ok(Answer {
        status: response.status,
        served_by: response.served_by,
        cache: response.cache,
        field: count_field
            .zip(response.body)
            .and_then(|(name, body)| json_field(&body, name)),
    })
}

/// The top-level field `name` of a JSON object body: a string as it is, any other value as JSON.
fn json_field(body: &[u8], name: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    match value.get(name)? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// One virtual connection: sends until the deadline, the request limit or the stop signal.
async fn connection(
    shared: Arc<Shared>,
    index: usize,
    mut sender: Option<Conn>,
    tx: mpsc::UnboundedSender<Chunk>,
    mut stop: oneshot::Receiver<()>,
) {
    let plan = &shared.plan;
    let mut senders: Vec<Option<Conn>> = (0..shared.targets.len()).map(|_| None).collect();
    // The pre-opened connection belongs to this connection's first URL.
    let first_url = index % plan.urls.len();
    senders[shared.url_target[first_url]] = sender.take();
    let mut next_url = first_url;
    let mut rng = StdRng::seed_from_u64(0x5ca1_ab1e ^ index as u64);
    let mut request_buf: Vec<u8> = Vec::with_capacity(1024);
    let head = plan.method == Method::HEAD;
    let mut chunk = Chunk::new(0);
    let mut k: u32 = 0;
    loop {
        if shared.stopped.load(Ordering::Relaxed) {
            break;
        }
        let intended = shared
            .pacing
            .map(|pacing| intended_send(shared.start, pacing, index, k));
        if let Some(deadline) = shared.deadline
            && intended.unwrap_or_else(Instant::now) >= deadline
        {
            break;
        }
        if let Some(limit) = shared.limit
            && shared.issued.fetch_add(1, Ordering::Relaxed) >= limit
        {
            break;
        }
        // Where latency is measured from (see [`pace`]); the closed model measures from the
        // actual send.
        let mut measure_from = None;
        let mut late = false;
        if let Some(intended) = intended {
            match pace(intended, Instant::now(), k) {
                Pace::Wait(at) => {
                    tokio::select! {
                        biased;
                        _ = &mut stop => break,
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                Pace::Now => {}
                Pace::Late(from) => {
                    measure_from = Some(from);
                    late = true;
                }
            }
        }
        k = k.wrapping_add(1);

        let url_index = next_url;
        let url = &plan.urls[url_index];
        let target_index = shared.url_target[url_index];
        next_url = (next_url + 1) % plan.urls.len();
        let target = &shared.targets[target_index];
        let sent_at = measure_from.unwrap_or_else(Instant::now);
        let request: &[u8] = match &shared.fixed[url_index] {
            Some(fixed) => fixed,
            None => {
                request_buf.clear();
                request_line_start(&mut request_buf, &plan.method);
                url.write_path(&mut request_buf, &shared.seq, &mut rng);
                request_buf.extend_from_slice(&target.tail);
                &request_buf
            }
        };
        let slot = &mut senders[target_index];
        let result = tokio::select! {
            biased;
            // An early stop abandons the request in flight; it is not counted.
            _ = &mut stop => break,
            r = tokio::time::timeout(
                shared.timeout,
                exchange(slot, target.addr, request, head, plan.count_field.as_deref()),
            ) => r,
        };
        let done = Instant::now();

        let second = done.saturating_duration_since(shared.start).as_secs();
        if second != chunk.second {
            if chunk.is_empty() {
                chunk.second = second;
            } else {
                let full = std::mem::replace(&mut chunk, Chunk::new(second));
                let _ = tx.send(full);
            }
        }
        match result {
            Ok(Ok(answer)) => {
                let us = (done.saturating_duration_since(sent_at).as_micros() as u64).max(1);
                record(&mut chunk, &answer, us);
                if late {
                    chunk.late += 1;
                }
            }
            Ok(Err(failure)) => {
                senders[target_index] = None;
                match failure {
                    Failure::Connect => {
                        chunk.errors.connect += 1;
                        if shared.pacing.is_none() {
                            // A closed-model loop against a dead port would spin at 100% CPU
                            // counting refusals; a short pause keeps the machine usable.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    Failure::Reset => chunk.errors.reset += 1,
                    Failure::Other => chunk.errors.other += 1,
                }
            }
            Err(_elapsed) => {
                // The connection is in an unknown state mid-request: drop it.
                senders[target_index] = None;
                chunk.errors.timeout += 1;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(chunk);
    }
}

/// When request `k` of connection `index` is due in the open model: connection `i` starts
/// `i * offset` after `start` and then sends every `interval` (`offset = 1/rate`,
/// `interval = connections/rate`), so that the connections' schedules interleave evenly.
fn intended_send(
    start: Instant,
    (interval, offset): (Duration, Duration),
    index: usize,
    k: u32,
) -> Instant {
    start + offset * index as u32 + interval * k
}

/// How an open-model request is sent, decided when its connection gets to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Not due yet: sleep until then and measure from the actual send, so that the timer's 1 ms
    /// resolution is not charged to the server.
    Wait(Instant),
    /// Due, and the connection had no earlier answer to wait for (its first request): send now
    /// and measure from the actual send.
    Now,
    /// Past due because the previous answer kept the connection busy: send now and measure from
    /// the intended time, so that the wait the server imposed is charged to this request too
    /// (coordinated omission corrected, as wrk2 does). Counted in `requests.late`.
    Late(Instant),
}

/// Decides how request `k` (0-based) of a connection, due at `intended`, is sent at `now`.
fn pace(intended: Instant, now: Instant, k: u32) -> Pace {
    if intended > now {
        Pace::Wait(intended)
    } else if k == 0 {
        Pace::Now
    } else {
        Pace::Late(intended)
    }
}

fn record(chunk: &mut Chunk, answer: &Answer, us: u64) {
    // Auto-resizing histograms accept any value.
    let _ = chunk.latency.record(us);
    chunk.answered += 1;
    chunk.record_status(answer.status);
    if let Some(id) = &answer.served_by {
        chunk.record_served_by(id);
    }
    if let Some(value) = &answer.field {
        chunk.record_field(value);
    }
    match answer.cache {
        Some(Cache::Hit) => {
            chunk.hits += 1;
            let _ = chunk
                .hit
                .get_or_insert_with(|| new_histogram(SIGFIG))
                .record(us);
        }
        Some(Cache::Miss) => {
            chunk.misses += 1;
            let _ = chunk
                .miss
                .get_or_insert_with(|| new_histogram(SIGFIG))
                .record(us);
        }
        None => {}
    }
}

/// Runs `plan` as `config` says and returns what was measured. `stop` resolving ends the run
/// early (requests in flight are abandoned) and the report still comes back, with
/// `stopped_early` set. Spawns one task per connection on the current runtime: use a
/// multi-thread runtime so that the generator is not the bottleneck.
///
/// Fails only before the first request: bad configuration or a host that does not resolve.
pub async fn execute(
    plan: Plan,
    config: RunConfig,
    stop: impl Future<Output = ()>,
) -> Result<Report, Error> {
    config.validate()?;
    let (url_target, targets) = resolve(&plan).await?;
    let fixed = plan
        .urls
        .iter()
        .zip(&url_target)
        .map(|(url, &t)| {
            url.fixed_path().map(|path| {
                let mut request = Vec::new();
                request_line_start(&mut request, &plan.method);
                request.extend_from_slice(path.as_bytes());
                request.extend_from_slice(&targets[t].tail);
                request
            })
        })
        .collect();
    let connections = config.connections;

    // Thread per core: each worker thread runs its share of the connections on its own
    // single-threaded runtime, so that a connection's request loop and the task driving its socket
    // wake each other on one thread (as wrk's event loops do) instead of across the work-stealing
    // pool; that cross-thread hand-off per request was the largest cost measured against wrk.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(connections)
        .max(1);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let mut go_senders = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    let first_addrs: Vec<SocketAddr> = (0..connections)
        .map(|i| targets[url_target[i % plan.urls.len()]].addr)
        .collect();
    for w in 0..workers {
        let mine: Vec<(usize, SocketAddr)> = (w..connections)
            .step_by(workers)
            .map(|i| (i, first_addrs[i]))
            .collect();
        let (go_tx, go_rx) = oneshot::channel::<Start>();
        go_senders.push(go_tx);
        let ready_tx = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("bench-{w}"))
            .spawn(move || run_worker(mine, ready_tx, go_rx))
            .map_err(|e| Error::Runtime(e.to_string()))?;
        threads.push(thread);
    }
    drop(ready_tx);
    // Every connection is opened before the clock starts, so that connect time is not charged to
    // the first requests (a failure here is retried, and counted, by the connection itself).
    for _ in 0..workers {
        if ready_rx.recv().await.is_none() {
            break;
        }
    }

    let pacing = match config.load {
        Load::Closed => None,
        Load::Open { rate } => Some((
            Duration::from_secs_f64(connections as f64 / rate),
            Duration::from_secs_f64(1.0 / rate),
        )),
    };
    let report_config = ReportConfig {
        urls: plan.urls(),
        method: plan.method.to_string(),
        model: match config.load {
            Load::Closed => "closed".into(),
            Load::Open { .. } => "open".into(),
        },
        connections: connections as u64,
        rate: match config.load {
            Load::Closed => None,
            Load::Open { rate } => Some(rate),
        },
        duration_s: config.effective_duration().map(|d| d.as_secs_f64()),
        request_limit: config.requests,
        timeout_s: config.timeout.as_secs_f64(),
        count_field: plan.count_field.clone(),
    };
    let started_at_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let start = Instant::now();
    let shared = Arc::new(Shared {
        plan,
        url_target,
        fixed,
        targets,
        start,
        deadline: config.effective_duration().map(|d| start + d),
        limit: config.requests,
        issued: AtomicU64::new(0),
        seq: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        timeout: config.timeout,
        pacing,
    });

    let (tx, mut rx) = mpsc::unbounded_channel();
    // One stop channel per connection rather than one shared watch: polling a shared `Notify`
    // on every request would take its lock, a contended one with many connections. Dropping the
    // senders is the stop signal.
    let mut stop_senders = Vec::with_capacity(connections);
    for go in go_senders {
        let mut stops = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..connections.div_ceil(workers) {
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            stops.push(stop_tx);
            receivers.push(stop_rx);
        }
        stop_senders.extend(stops);
        let _ = go.send(Start {
            shared: shared.clone(),
            tx: tx.clone(),
            stops: receivers,
        });
    }
    // The channel closes when the last connection task ends.
    drop(tx);

    let mut aggregate = Aggregate::new();
    // Progress is printed half a second after each second ends, when most connections have
    // handed in their chunk for it.
    let mut tick =
        tokio::time::interval_at(start + Duration::from_millis(1500), Duration::from_secs(1));
    let mut stopped_early = false;
    let mut progress_shown = false;
    // On a terminal the progress line rewrites itself; in a log it is one line per second.
    let terminal = std::io::stderr().is_terminal();
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Some(chunk) => aggregate.merge(chunk),
                None => break,
            },
            _ = &mut stop, if !stopped_early => {
                stopped_early = true;
                shared.stopped.store(true, Ordering::Relaxed);
                stop_senders.clear();
            }
            _ = tick.tick(), if config.progress => {
                progress_shown = true;
                print_progress(&aggregate, start, terminal);
            }
        }
    }
    let elapsed = start.elapsed();
    // The threads end with their last connection (whose chunks are all merged by now).
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            // A worker that panicked has lost its last chunks; the rest of the report stands.
            let _ = t.join();
        }
    })
    .await;
    if progress_shown && terminal {
        eprintln!();
    }
    Ok(aggregate.into_report(
        report_config,
        started_at_unix_s,
        elapsed.as_secs_f64(),
        stopped_early,
    ))
}

/// What a worker thread needs once the clock has started.
struct Start {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Chunk>,
    /// One stop receiver per connection of this worker (surplus ones are dropped).
    stops: Vec<oneshot::Receiver<()>>,
}

/// One worker thread: opens its connections, says it is ready, waits for the start, then runs
/// each connection as a task of its own single-threaded runtime.
fn run_worker(
    mine: Vec<(usize, SocketAddr)>,
    ready: mpsc::UnboundedSender<()>,
    go: oneshot::Receiver<Start>,
) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async move {
        let preopened = futures::future::join_all(
            mine.iter()
                .map(|&(_, addr)| async move { h1::connect(addr).await.ok() }),
        )
        .await;
        let _ = ready.send(());
        drop(ready);
        let Ok(Start { shared, tx, stops }) = go.await else {
            return;
        };
        let tasks: Vec<_> = mine
            .iter()
            .zip(preopened)
            .zip(stops)
            .map(|((&(i, _), sender), stop)| {
                tokio::spawn(connection(shared.clone(), i, sender, tx.clone(), stop))
            })
            .collect();
        drop(tx);
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn print_progress(aggregate: &Aggregate, start: Instant, terminal: bool) {
    let elapsed = start.elapsed();
    let last_second = elapsed.as_secs().saturating_sub(1);
    let p99 = aggregate.latency.value_at_quantile(0.99) as f64 / 1000.0;
    let mut err = std::io::stderr().lock();
    let (before, after) = if terminal {
        ("\r\x1b[2K", "")
    } else {
        ("", "\n")
    };
    let _ = write!(
        err,
        "{before}{:>6.1}s  {:>9} req/s  p99 {:>9.2} ms  {} answered  {} errors{after}",
        elapsed.as_secs_f64(),
        aggregate.requests_in(last_second),
        p99,
        aggregate.answered,
        aggregate.errors.total(),
    );
    let _ = err.flush();
}

/// Logs in: `POST http://{authority}/login` with `{"username","password"}`, returns the `token`
/// field of the JSON answer.
pub(crate) async fn login(url: &str, username: &str, password: &str) -> Result<String, Error> {
    let template = crate::template::UrlTemplate::parse(url)?;
    let authority = template.authority.as_str();
    let addr = lookup(authority).await?;
    let body = serde_json::to_vec(&api::wire::auth::LoginRequest {
        username: username.to_owned(),
        password: password.to_owned(),
    })
    .map_err(|e| Error::Login(e.to_string()))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        HOST,
        HeaderValue::try_from(authority).map_err(|_| Error::Login("bad host".into()))?,
    );
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut request = Vec::new();
    request_line_start(&mut request, &Method::POST);
    request.extend_from_slice(b"/login");
    request.extend_from_slice(&serialize_tail(&Method::POST, &headers, &body));
    let (status, bytes) = tokio::time::timeout(Duration::from_secs(30), async {
        let mut conn = h1::connect(addr)
            .await
            .map_err(|_| Error::Login(format!("cannot connect to {authority}")))?;
        let response = conn
            .round_trip(&request, false, true)
            .await
            .map_err(|e| Error::Login(format!("no valid answer from {authority} ({e:?})")))?;
        Ok::<_, Error>((response.status, response.body.unwrap_or_default()))
    })
    .await
    .map_err(|_| Error::Login("no answer within 30 s".into()))??;
    let status = http::StatusCode::from_u16(status)
        .map_err(|_| Error::Login(format!("bad status {status}")))?;
    if !status.is_success() {
        return Err(Error::Login(format!(
            "{status}: {}",
            String::from_utf8_lossy(&bytes)
        )));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::Login(e.to_string()))?;
    value
        .get("token")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
        .ok_or_else(|| Error::Login("the answer has no `token` field".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// 200 req/s over 4 connections: each connection sends every 20 ms, the connections 5 ms
    /// apart, so that together they send one request every 5 ms.
    #[test]
    fn the_open_model_schedule_interleaves_the_connections() {
        let start = Instant::now();
        let pacing = (ms(20), ms(5));
        let due = |i: usize, k: u32| intended_send(start, pacing, i, k) - start;
        assert_eq!(
            [due(0, 0), due(1, 0), due(3, 0), due(0, 1), due(2, 3)],
            [ms(0), ms(5), ms(15), ms(20), ms(70)]
        );
        let mut all: Vec<Duration> = (0..4)
            .flat_map(|i| (0..50).map(move |k| due(i, k)))
            .collect();
        all.sort();
        assert_eq!(all, (0..200).map(|n| ms(5 * n)).collect::<Vec<_>>());
    }

    #[test]
    fn only_a_request_held_up_by_the_previous_answer_is_late() {
        let t0 = Instant::now();
        // Not due yet: the connection waits, first request or not.
        assert_eq!(pace(t0 + ms(10), t0, 0), Pace::Wait(t0 + ms(10)));
        assert_eq!(pace(t0 + ms(10), t0, 7), Pace::Wait(t0 + ms(10)));
        // Past due with an earlier answer on the connection: late, measured from when it was due.
        assert_eq!(pace(t0, t0 + ms(500), 3), Pace::Late(t0));
        assert_eq!(pace(t0 + ms(10), t0 + ms(10), 1), Pace::Late(t0 + ms(10)));
        // The first request had nothing to wait for: sent now, not late.
        assert_eq!(pace(t0, t0 + ms(3), 0), Pace::Now);
    }
}
