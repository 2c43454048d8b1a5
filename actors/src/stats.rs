//! Per-block commit latencies kept for `haseqd bench` (the Prometheus histogram only has
//! buckets): a bounded log of the most recent samples.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The most samples kept; older ones are dropped first.
pub const LATENCY_SAMPLES_MAX: usize = 1_000_000;

/// A shared, bounded log of commit latencies. Cheap to clone.
#[derive(Clone, Default)]
pub struct LatencyLog {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    samples_us: VecDeque<u64>,
    first_unix_ms: Option<u64>,
    last_unix_ms: Option<u64>,
    total: u64,
}

/// What `GET /stats/commit-latency` returns.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Blocks committed by this node as leader since it started.
    pub total: u64,
    /// When the first of them committed (ms since the Unix epoch).
    pub first_unix_ms: Option<u64>,
    /// When the last of them committed.
    pub last_unix_ms: Option<u64>,
    /// The most recent latencies, proposal to applied on this leader, in microseconds.
    pub samples_us: Vec<u64>,
}

impl LatencyLog {
    /// Record one commit that took `d`.
    pub fn record(&self, d: Duration) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|t| t.as_millis() as u64)
            .unwrap_or(0);
        // A poisoned lock only means a recorder panicked between two plain field writes.
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.samples_us.len() == LATENCY_SAMPLES_MAX {
            g.samples_us.pop_front();
        }
        g.samples_us.push_back(d.as_micros() as u64);
        g.first_unix_ms.get_or_insert(now);
        g.last_unix_ms = Some(now);
        g.total += 1;
    }

    /// A copy of what is recorded.
    pub fn report(&self) -> LatencyReport {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        LatencyReport {
            total: g.total,
            first_unix_ms: g.first_unix_ms,
            last_unix_ms: g.last_unix_ms,
            samples_us: g.samples_us.iter().copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_samples_in_order() {
        let l = LatencyLog::default();
        l.record(Duration::from_micros(5));
        l.record(Duration::from_micros(7));
        let r = l.report();
        assert_eq!((r.total, r.samples_us), (2, vec![5, 7]));
        assert!(r.first_unix_ms <= r.last_unix_ms);
    }
}
