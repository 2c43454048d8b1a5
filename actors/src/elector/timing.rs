//! The timing advisor: the operator guide's formulas applied to the round-trip times this
//! node measures to its peers (the P2P actor's status polls), against the configured
//! timings. Pure: [`advise`] is a function of the samples and the settings.
//!
//! The guide: heartbeat = 4 x RTT_MAX, election = 4 x heartbeat, lease = heartbeat / 2,
//! send = 3 x RTT_MAX, where RTT_MAX is the largest average round trip between two nodes
//! (here: from this node to each peer, averaged over the last [`RTT_WINDOW`]). Too tight for the measured
//! network, by the guide's tuning rules' lower bounds: a heartbeat timeout below 4 x RTT_MAX,
//! an election timeout below 16 x RTT_MAX, a send timeout below 2 x RTT_MAX (heartbeats and
//! messages miss their deadlines, followers campaign against a healthy leader).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use haseq_messages::NodeId;
use serde::Serialize;

use crate::settings::RaftTiming;

/// How far back the largest round trip is taken from.
pub const RTT_WINDOW: Duration = Duration::from_secs(30);
/// Samples kept per peer (a poll every 100 ms over [`RTT_WINDOW`]).
const SAMPLES_PER_PEER_MAX: usize = 300;

/// The four timings, in milliseconds (as the configuration writes them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TimingsMs {
    /// `raft.heartbeat_timeout`.
    pub heartbeat_timeout_ms: f64,
    /// `raft.election_timeout`.
    pub election_timeout_ms: f64,
    /// `raft.leader_lease_timeout`.
    pub leader_lease_timeout_ms: f64,
    /// `raft.send_timeout`.
    pub send_timeout_ms: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

impl TimingsMs {
    fn of(t: &RaftTiming) -> TimingsMs {
        TimingsMs {
            heartbeat_timeout_ms: ms(t.heartbeat_timeout),
            election_timeout_ms: ms(t.election_timeout),
            leader_lease_timeout_ms: ms(t.leader_lease_timeout),
            send_timeout_ms: ms(t.send_timeout),
        }
    }
}

/// The advisor's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every timing is at or above its formula.
    Ok,
    /// A timing is below its formula for the measured network.
    TooTight,
    /// No round trip measured yet (no peer answered in the window, or no peers).
    Unknown,
}

/// `/status` `timing`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimingAdvice {
    /// RTT_MAX: the largest of the peers' average round trips over the window, in ms.
    pub rtt_max_ms: Option<f64>,
    /// The peer it was measured to.
    pub rtt_max_peer: Option<NodeId>,
    /// What the node runs with.
    pub configured: TimingsMs,
    /// The guide's values for `rtt_max_ms`.
    pub suggested: Option<TimingsMs>,
    /// Ok, too tight, or unknown.
    pub verdict: Verdict,
    /// One line per timing below its formula, naming the peer.
    pub reasons: Vec<String>,
}

/// The fewest round trips of a peer (half a second of polls) before its average counts.
pub const RTT_SAMPLES_MIN: u32 = 5;

/// Round trips to each peer over the last [`RTT_WINDOW`].
#[derive(Debug, Default)]
pub struct RttSamples(BTreeMap<NodeId, VecDeque<(Instant, Duration)>>);

impl RttSamples {
    /// Take in one poll's round trip.
    pub fn add(&mut self, peer: &NodeId, rtt: Duration, now: Instant) {
        let q = self.0.entry(peer.clone()).or_default();
        q.push_back((now, rtt));
        while q.len() > SAMPLES_PER_PEER_MAX
            || q.front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RTT_WINDOW)
        {
            q.pop_front();
        }
    }

    /// RTT_MAX as the guide measures it: each peer's average round trip over the window,
    /// the largest of them, and to whom. (An average, not the largest sample: the first poll
    /// of a new connection, or a moment of load, would otherwise decide it for 30 s.)
    pub fn max(&self, now: Instant) -> Option<(NodeId, Duration)> {
        self.0
            .iter()
            .filter_map(|(id, q)| {
                // Read on every Elector tick: summed in place, nothing allocated.
                let (sum, n) = q
                    .iter()
                    .filter(|(t, _)| now.duration_since(*t) <= RTT_WINDOW)
                    .fold((Duration::ZERO, 0u32), |(sum, n), (_, rtt)| {
                        (sum + *rtt, n + 1)
                    });
                // A peer's first round trips include opening the connection (8-39 ms seen on a
                // 0.4 ms link): judged once it has a few.
                (n >= RTT_SAMPLES_MIN).then(|| (id, sum / n))
            })
            .max_by_key(|(_, avg)| *avg)
            .map(|(id, avg)| (id.clone(), avg))
    }
}

/// The guide's timings for a network whose largest round trip is `rtt_max`.
pub fn suggested(rtt_max: Duration) -> RaftTiming {
    let heartbeat = rtt_max * 4;
    RaftTiming {
        heartbeat_timeout: heartbeat,
        election_timeout: heartbeat * 4,
        leader_lease_timeout: heartbeat / 2,
        send_timeout: rtt_max * 3,
    }
}

/// The advice for `configured` given the largest measured round trip.
pub fn advise(rtt_max: Option<(NodeId, Duration)>, configured: &RaftTiming) -> TimingAdvice {
    let Some((peer, rtt)) = rtt_max else {
        return TimingAdvice {
            rtt_max_ms: None,
            rtt_max_peer: None,
            configured: TimingsMs::of(configured),
            suggested: None,
            verdict: Verdict::Unknown,
            reasons: Vec::new(),
        };
    };
    let s = suggested(rtt);
    let mut reasons = Vec::new();
    let mut check = |key: &str, have: Duration, want: Duration, formula: &str| {
        if have < want {
            reasons.push(format!(
                "raft.{key} {} ms is below {formula} = {} ms (RTT_MAX {} ms, to {peer})",
                ms(have),
                ms(want),
                ms(rtt)
            ));
        }
    };
    check(
        "heartbeat_timeout",
        configured.heartbeat_timeout,
        s.heartbeat_timeout,
        "4 x RTT_MAX",
    );
    check(
        "election_timeout",
        configured.election_timeout,
        s.election_timeout,
        "16 x RTT_MAX",
    );
    check(
        "send_timeout",
        configured.send_timeout,
        rtt * 2,
        "2 x RTT_MAX",
    );
    TimingAdvice {
        rtt_max_ms: Some(ms(rtt)),
        rtt_max_peer: Some(peer),
        configured: TimingsMs::of(configured),
        suggested: Some(TimingsMs::of(&s)),
        verdict: if reasons.is_empty() {
            Verdict::Ok
        } else {
            Verdict::TooTight
        },
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guide() -> RaftTiming {
        RaftTiming {
            heartbeat_timeout: Duration::from_millis(92),
            election_timeout: Duration::from_millis(368),
            leader_lease_timeout: Duration::from_millis(46),
            send_timeout: Duration::from_millis(50),
        }
    }

    #[test]
    fn the_guide_timings_fit_its_rtt_and_not_a_slower_link() {
        let n2 = NodeId::from("node-2");
        let a = advise(Some((n2.clone(), Duration::from_millis(23))), &guide());
        assert_eq!(a.verdict, Verdict::Ok, "{a:?}");
        let s = a.suggested.expect("suggested");
        assert_eq!(s.heartbeat_timeout_ms, 92.0);
        assert_eq!(s.election_timeout_ms, 368.0);
        assert_eq!(s.leader_lease_timeout_ms, 46.0);
        assert_eq!(s.send_timeout_ms, 69.0);
        // The guide's own 50 ms send timeout is within its rule (2-3 x RTT_MAX) at 23 ms.
        assert_eq!(a.reasons.len(), 0, "{:?}", a.reasons);

        let slow = advise(Some((n2, Duration::from_millis(40))), &guide());
        assert_eq!(slow.verdict, Verdict::TooTight);
        assert_eq!(slow.reasons.len(), 3, "{:?}", slow.reasons);
        assert!(
            slow.reasons[0].contains("heartbeat_timeout 92 ms"),
            "{:?}",
            slow.reasons
        );
        assert!(slow.reasons.iter().all(|r| r.contains("to node-2")));
        assert_eq!(advise(None, &guide()).verdict, Verdict::Unknown);
    }

    #[test]
    fn rtt_max_is_the_largest_recent_average() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = RttSamples::default();
        let (a, b) = (NodeId::from("a"), NodeId::from("b"));
        let n = RTT_SAMPLES_MIN as usize;
        // A peer's first few round trips (its connection being opened) count for nothing.
        s.add(&a, ms(39), t0);
        assert_eq!(s.max(t0), None);
        for _ in 1..n {
            s.add(&a, ms(29), t0);
        }
        // a: 39 + 4 x 29 over 5 = 31 ms.
        assert_eq!(s.max(t0), Some((a.clone(), ms(31))));
        let t1 = t0 + Duration::from_secs(1);
        for i in 0..n {
            s.add(&b, if i == 0 { ms(35) } else { ms(5) }, t1);
        }
        // b's one 35 ms sample does not decide: its average is 11 ms, a's 31 ms.
        assert_eq!(
            s.max(t0 + Duration::from_secs(2)),
            Some((a.clone(), ms(31)))
        );
        // Past the window old samples no longer count.
        let later = t0 + RTT_WINDOW + Duration::from_secs(2);
        for _ in 0..n {
            s.add(&b, ms(7), later);
        }
        assert_eq!(s.max(later), Some((b, ms(7))));
        assert_eq!(RttSamples::default().max(later), None);
    }
}
