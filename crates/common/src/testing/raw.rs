//! Raw-socket helpers for tests that speak HTTP/1 by hand.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads `s` until the server (`who`, for the failure message) closes it, at most 30 s; returns
/// what it sent meanwhile.
pub async fn until_closed(s: &mut TcpStream, who: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut seen))
        .await
        .unwrap_or_else(|_| panic!("{who} never closed the connection"))
        .expect("read");
    seen
}
