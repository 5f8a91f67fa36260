//! Follows the cache service's invalidation stream for the near cache (`near.rs`): applies each
//! event, then acknowledges it, which renews the near cache's lease from the moment the
//! acknowledgement was sent. Anything unexpected (the stream ends or breaks, an event is late, an
//! acknowledgement fails or is refused because this subscriber was cut off) ends the
//! subscription: the near cache stops serving and empties, and a new subscription starts after a
//! short backoff, with an empty near cache.

use std::sync::Arc;
use std::time::Duration;

use api::client::{CacheClient, InvalidationStream};
use api::wire::cache::InvalidationEvent;
use tokio::time::Instant;

use super::near::NearCache;

/// The first wait before subscribing again, doubled up to [`MAX_BACKOFF`] while it keeps failing.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the subscription loop needs.
#[derive(Debug)]
pub(crate) struct Follower {
    pub(crate) near: Arc<NearCache>,
    /// For the acknowledgements.
    pub(crate) client: CacheClient,
    /// The cache service's base URL, for the stream.
    pub(crate) url: String,
    /// The deployment's service credential.
    pub(crate) token: Option<Arc<str>>,
    /// How long to wait for the stream's answer (the gateway's upstream timeout).
    pub(crate) connect_timeout: Duration,
    /// This gateway's id, in the metrics.
    pub(crate) id: Arc<str>,
}

/// Follows the stream until the task is aborted.
pub(crate) fn spawn(follower: Follower) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let live = metrics::gauge!("scalelab_gateway_near_cache_subscribed", "id" => follower.id.to_string());
        let subscriptions = metrics::counter!(
            "scalelab_gateway_near_cache_subscriptions_total",
            "id" => follower.id.to_string()
        );
        let mut backoff = MIN_BACKOFF;
        loop {
            let mut connected = false;
            let result = follower.run(&mut connected, &live, &subscriptions).await;
            follower.near.disconnected();
            live.set(0.0);
            match result {
                Ok(()) => tracing::info!(
                    "the cache service ended the invalidation stream; subscribing again"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "invalidation stream lost; the near cache is off until it is back")
                }
            }
            if connected {
                backoff = MIN_BACKOFF;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

impl Follower {
    /// One subscription, until it ends; `connected` turns true once its `Hello` came.
    async fn run(
        &self,
        connected: &mut bool,
        live: &metrics::Gauge,
        subscriptions: &metrics::Counter,
    ) -> Result<(), String> {
        let rid = format!("{}-near", self.id);
        let mut stream =
            InvalidationStream::open(&self.url, self.token.as_deref(), self.connect_timeout, &rid)
                .await
                .map_err(|e| e.to_string())?;
        let first = tokio::time::timeout(self.connect_timeout, stream.next_event())
            .await
            .map_err(|_| "no hello from the cache service".to_string())?
            .map_err(|e| e.to_string())?;
        let Some(InvalidationEvent::Hello {
            subscriber,
            lease_ms,
            heartbeat_ms,
        }) = first
        else {
            return Err(format!("the stream did not open with a hello: {first:?}"));
        };
        let lease = Duration::from_millis(lease_ms);
        // A live service sends something every heartbeat; silence for a whole lease means the
        // lease is lapsing anyway: give up on this connection and subscribe again.
        let silence = lease.max(Duration::from_millis(heartbeat_ms) * 2);
        let connection = self.near.connected();
        *connected = true;
        subscriptions.increment(1);
        tracing::info!(
            subscriber,
            lease_ms,
            "near cache subscribed to the cache service's invalidations"
        );
        let invalidations = metrics::counter!(
            "scalelab_gateway_near_cache_invalidations_total",
            "id" => self.id.to_string()
        );
        loop {
            let event = tokio::time::timeout(silence, stream.next_event())
                .await
                .map_err(|_| format!("no event for {} ms", silence.as_millis()))?
                .map_err(|e| e.to_string())?;
            let Some(event) = event else {
                return Ok(());
            };
            match &event {
                InvalidationEvent::Invalidate { keys, .. } => {
                    self.near.invalidate(keys);
                    invalidations.increment(keys.len() as u64);
                }
                InvalidationEvent::Flush { .. } => self.near.clear(),
                InvalidationEvent::Heartbeat { .. } => {}
                InvalidationEvent::Hello { .. } => {
                    return Err("a second hello on one stream".into());
                }
            }
            // Noted before sending: the service counts the lease from when it received this,
            // which is later, so this side's lease never outlasts the service's idea of it.
            let sent_at = Instant::now();
            let renewed = self
                .client
                .ack(subscriber, event.seq(), &rid)
                .await
                .map_err(|e| format!("acknowledgement refused or failed: {e}"))?;
            self.near.renewed(
                connection,
                sent_at,
                Duration::from_millis(renewed.lease_ms).min(lease),
            );
            live.set(1.0);
        }
    }
}
