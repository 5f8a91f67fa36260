//! Header names shared by every service.

/// Correlates one client request across every service it touches; taken from the client or made.
pub const REQUEST_ID: &str = "x-request-id";
/// The id of the instance that answered (`gateway-1`, `service-2`, ...): lets clients and the
/// load generator see how requests spread over instances.
pub const SERVED_BY: &str = "x-served-by";
/// `HIT` or `MISS` on every cache-aside answer of the gateway.
pub const CACHE: &str = "x-cache";
/// On a cache hit of the gateway: `near` (its own near cache) or `shared` (the cache backend).
pub const CACHE_LAYER: &str = "x-cache-layer";
/// The credential a deployment gives its roles (`SCALELAB_SERVICE_TOKEN`): an internal role bound
/// beyond loopback refuses a request that changes something without it.
pub const SERVICE_TOKEN: &str = "x-service-token";
/// The alternative token header the lab's scripts send.
pub const X_TOKEN: &str = "x-token";
