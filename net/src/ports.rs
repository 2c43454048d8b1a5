//! Picking loopback ports for local clusters (`haseqd devnet`, `haseqd bench`, tests).

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::TcpListener;
use std::sync::Mutex;

/// Lowest port handed out when drawing below the ephemeral range.
const DRAW_LOW: u16 = 10_000;
/// Ports tried before falling back to one the kernel picks.
const DRAW_ATTEMPTS_MAX: usize = 500;

/// A loopback port free now and never handed out before by this process.
///
/// Drawn below the kernel's ephemeral range (`ip_local_port_range`): a port from `bind(:0)`
/// comes from that range, and between this check and the node's own bind, an outgoing
/// connection (nodes dial each other while others are still starting) may take it as its
/// source port ("Address already in use", seen in `haseqd bench`). Falls back to `bind(:0)`
/// when the range below is too small.
///
/// # Errors
/// When no port can be bound at all.
pub fn free_loopback_port() -> io::Result<u16> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let high = ephemeral_low().unwrap_or(32_768);
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if high > DRAW_LOW + 1_000 {
        let span = u64::from(high - DRAW_LOW);
        for _ in 0..DRAW_ATTEMPTS_MAX {
            // std's per-process random keys: enough to spread draws, no RNG crate needed.
            let draw = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            let port = DRAW_LOW + (draw % span) as u16;
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return Ok(port);
            }
        }
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    given.push(port);
    Ok(port)
}

/// The first port of the kernel's ephemeral range, if readable.
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let high = ephemeral_low().unwrap_or(32_768);
        let ports: Vec<u16> = (0..50)
            .map(|_| free_loopback_port().expect("port"))
            .collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "a port was handed out twice");
        for p in ports {
            if high > DRAW_LOW + 1_000 {
                assert!((DRAW_LOW..high).contains(&p), "{p} not below {high}");
            }
            TcpListener::bind(("127.0.0.1", p)).expect("still free");
        }
    }
}
