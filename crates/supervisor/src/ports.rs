//! Free ports for instances that are started later, by another process.
//!
//! A port from `bind(:0)` comes from the kernel's ephemeral range, the same range `connect()` draws
//! the source ports of outgoing connections from: once the picker lets go of it, any outgoing
//! connection on the machine may take it before the instance binds it (and keep it for as long as
//! it lives), and another picker may be handed it again. Ports below that range are never handed
//! out by the kernel, so only someone choosing that very port can take one. That range is where
//! services are configured, though, so the ports `/etc/services` names are left alone.

use std::collections::HashSet;
use std::io;
use std::net::TcpListener;
use std::sync::OnceLock;

use rand::Rng;

/// The lowest port this picks from: below it are the well-known and registered ports services are
/// configured on.
const FLOOR: u16 = 10_000;

/// Random tries below the ephemeral range before giving up and asking the kernel for any port.
const TRIES: usize = 64;

/// Binds a free port on `host`, chosen at random below the kernel's ephemeral port range when that
/// leaves room (a `bind(:0)` port otherwise). The caller holds the listener until the instance has
/// it, or drops it just before the instance binds the port.
pub fn bind_free(host: &str) -> io::Result<TcpListener> {
    let low = ephemeral_low().unwrap_or(32_768);
    if low > FLOOR + 1_000 {
        let mut rng = rand::thread_rng();
        for _ in 0..TRIES {
            let port = rng.gen_range(FLOOR..low);
            if named().contains(&port) {
                continue;
            }
            match TcpListener::bind((host, port)) {
                Ok(listener) => return Ok(listener),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
    TcpListener::bind((host, 0))
}

/// The TCP ports `/etc/services` names (none if it cannot be read).
fn named() -> &'static HashSet<u16> {
    static NAMED: OnceLock<HashSet<u16>> = OnceLock::new();
    NAMED.get_or_init(|| {
        std::fs::read_to_string("/etc/services")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                line.split_whitespace()
                    .nth(1)?
                    .strip_suffix("/tcp")?
                    .parse()
                    .ok()
            })
            .collect()
    })
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), where known.
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_distinct_while_held() {
        let low = ephemeral_low().expect("Linux names its ephemeral range");
        let held: Vec<TcpListener> = (0..50).map(|_| bind_free("127.0.0.1").unwrap()).collect();
        let mut ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert!(ports.iter().all(|p| (FLOOR..low).contains(p)), "{ports:?}");
        assert!(!ports.iter().any(|p| named().contains(p)), "{ports:?}");
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 50, "a held port was handed out twice");
    }
}
