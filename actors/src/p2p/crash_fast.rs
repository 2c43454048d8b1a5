//! Crash-fast failover: a follower whose leader's connections all closed without a goodbye
//! (the leader's process died; see [`super::links`]) asks the other voters whether theirs
//! did too, and campaigns at once if a quorum, itself included, says so, instead of waiting
//! out the election timeout.
//!
//! The steps, each a guard against an election nobody needed:
//! 1. only a follower that may lead (the Elector's `eligible`), of a leader that is a voter,
//!    in the term it saw the leader in;
//! 2. after a random [`SPREAD`], so that the followers that saw the same close do not all
//!    campaign at once (a split vote would fall back to the timeouts);
//! 3. not if another voter already asked about the same leader and term: it is campaigning;
//! 4. only with a quorum of "gone too" answers: a reset of one connection, while the leader
//!    still reaches the others, leaves them answering "no" and causes nothing;
//! 5. of two voters whose questions crossed, the one with the smaller id campaigns.
//!
//! The campaign is an ordinary Raft election ([`CrashFastElect`] to RaftCore): voters grant
//! it by Raft's rules and the exec-height gate; only the leader lease is waived, by each
//! voter on its own evidence (`serve::NodeHandler`), never on the candidate's word.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use haseq_messages::wire::{RpcRequest, RpcResponse};
use haseq_messages::{NodeId, PeerNode, Term};

use super::links::{Asked, PeerLinks};
use crate::raft_core::{CrashFastElect, RaftCore};
use crate::supervisor::Slot;

/// The widest random delay before a follower asks (see step 2).
pub const SPREAD: Duration = Duration::from_millis(20);
/// The longest the question waits for answers.
pub const ASK_TIMEOUT_MAX: Duration = Duration::from_millis(250);

/// How an attempt ended (`outcome` label of `haseq_crash_fast_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A quorum agreed; RaftCore was told to campaign.
    Campaigned,
    /// Too few voters lost the leader too (a reset, not a crash).
    NoQuorum,
    /// Another voter asked first, or asked too and has the smaller id.
    Deferred,
    /// The leader came back, or the term or leader changed, before the question.
    Stale,
    /// This node may not lead now.
    Ineligible,
}

impl Outcome {
    /// Every value, for the metric created at 0.
    pub const ALL: [Outcome; 5] = [
        Outcome::Campaigned,
        Outcome::NoQuorum,
        Outcome::Deferred,
        Outcome::Stale,
        Outcome::Ineligible,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Campaigned => "campaigned",
            Outcome::NoQuorum => "no_quorum",
            Outcome::Deferred => "deferred",
            Outcome::Stale => "stale",
            Outcome::Ineligible => "ineligible",
        }
    }
}

/// Counts one attempt's outcome.
pub fn count(o: Outcome) {
    metrics::counter!("haseq_crash_fast_total", "outcome" => o.as_str()).increment(1);
}

/// Creates `haseq_crash_fast_total` at 0 for every outcome.
pub fn zero_metrics() {
    for o in Outcome::ALL {
        metrics::counter!("haseq_crash_fast_total", "outcome" => o.as_str()).increment(0);
    }
}

/// One voter's answer to this node's question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Who answered.
    pub by: NodeId,
    /// It lost the leader too.
    pub gone: bool,
    /// It had asked the same question itself before it answered.
    pub asking: bool,
}

/// Steps 3 and 5, once the answers are in: may `me` campaign, given the answers and the
/// questions others asked it (`askers`) since it started asking?
///
/// At most one of several voters that ask about the same leader and term gets `true`: of
/// two, A < B, that both asked, either A recorded its own question before it answered B (A
/// tells B `asking`, and B defers to the smaller id), or after (then B's question was already
/// recorded at A when A started, and A deferred at once, before asking anyone: see
/// [`PeerLinks::start_asking`]). A question from a smaller id that reached this node while it
/// waited for answers defers it too.
pub fn may_campaign(me: &NodeId, answers: &[Answer], askers: &[Asked]) -> bool {
    let smaller_asking = answers.iter().any(|a| a.asking && a.by < *me);
    let smaller_asked = askers.iter().any(|a| a.by < *me && &a.by != me);
    !smaller_asking && !smaller_asked
}

/// Votes needed out of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// A random delay in `[0, SPREAD)` (std's per-instance random hasher keys; no dependency).
pub fn spread() -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    let r = h.finish();
    Duration::from_micros(r % SPREAD.as_micros() as u64)
}

/// One attempt, from the moment `leader`'s links vanished in `term`.
pub struct Attempt {
    /// This node.
    pub me: NodeId,
    /// The leader that vanished.
    pub leader: NodeId,
    /// Its term.
    pub term: Term,
    /// The other voters (not this node, not the leader) and their addresses.
    pub others: Vec<(NodeId, String)>,
    /// Voters in all, this node and the leader included.
    pub voters: usize,
    /// The links' evidence.
    pub links: PeerLinks,
    /// The transport's client side.
    pub network: haseq_net::Network,
    /// How long the question waits (`raft.send_timeout`, capped at [`ASK_TIMEOUT_MAX`]).
    pub ask_timeout: Duration,
    /// Where the campaign is started.
    pub raft_core: Slot<RaftCore>,
}

impl Attempt {
    /// Run it to its outcome (logged, counted).
    pub async fn run(self) -> Outcome {
        let started = Instant::now();
        tokio::time::sleep(spread()).await;
        let outcome = self.decide().await;
        count(outcome);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match outcome {
            Outcome::Campaigned => tracing::info!(
                leader = %self.leader, term = self.term.0, after_ms = format!("{ms:.1}"),
                "the leader's connections closed without a goodbye and a quorum saw the same: campaigning now"
            ),
            o => tracing::info!(
                leader = %self.leader, term = self.term.0, outcome = o.as_str(),
                after_ms = format!("{ms:.1}"),
                "the leader's connections closed without a goodbye: not campaigning early"
            ),
        }
        outcome
    }

    async fn decide(&self) -> Outcome {
        if !self.links.vanished(&self.leader) {
            return Outcome::Stale;
        }
        // Someone asked before this node did: it is campaigning.
        if !self.links.start_asking(&self.leader, self.term).is_empty() {
            return Outcome::Deferred;
        }
        let asks = self.others.iter().map(|(id, addr)| {
            let client = self
                .network
                .client(id.clone(), &PeerNode { addr: addr.clone() });
            let req = RpcRequest::LeaderGone {
                leader: self.leader.clone(),
                term: self.term,
            };
            let budget = self.ask_timeout;
            let by = id.clone();
            async move {
                match client.call(req, budget).await {
                    Ok(RpcResponse::LeaderGone { gone, asking }) => Answer { by, gone, asking },
                    _ => Answer {
                        by,
                        gone: false,
                        asking: false,
                    },
                }
            }
        });
        let answers = futures::future::join_all(asks).await;
        let gone_too = answers.iter().filter(|a| a.gone).count();
        if 1 + gone_too < quorum(self.voters) {
            return Outcome::NoQuorum;
        }
        if !may_campaign(
            &self.me,
            &answers,
            &self.links.askers(&self.leader, self.term),
        ) {
            return Outcome::Deferred;
        }
        let msg = CrashFastElect {
            leader: self.leader.clone(),
            term: self.term,
        };
        match self.raft_core.get().send(msg).await {
            Ok(true) => Outcome::Campaigned,
            _ => Outcome::Stale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(by: &str, at: Instant) -> Asked {
        Asked {
            by: NodeId(by.into()),
            leader: NodeId("node-1".into()),
            term: Term(3),
            at,
        }
    }

    fn answer(by: &str, asking: bool) -> Answer {
        Answer {
            by: NodeId(by.into()),
            gone: true,
            asking,
        }
    }

    #[test]
    fn of_voters_that_asked_each_other_the_smaller_id_campaigns() {
        let t0 = Instant::now();
        let (two, three) = (NodeId("node-2".into()), NodeId("node-3".into()));
        // Nobody else asked: go on.
        assert!(may_campaign(&two, &[answer("node-3", false)], &[]));
        // Both asked, each told the other: node-2 goes on, node-3 defers.
        assert!(may_campaign(
            &two,
            &[answer("node-3", true)],
            &[asked("node-3", t0)]
        ));
        assert!(!may_campaign(
            &three,
            &[answer("node-2", true)],
            &[asked("node-2", t0)]
        ));
        // node-2 answered node-3 before it asked (so it deferred at its start): node-3 goes on.
        assert!(may_campaign(&three, &[answer("node-2", false)], &[]));
        // A smaller id's question that came in meanwhile defers this node.
        assert!(!may_campaign(
            &three,
            &[answer("node-2", false)],
            &[asked("node-2", t0)]
        ));
        // Its own question, as a peer would record it, does not count.
        assert!(may_campaign(&two, &[], &[asked("node-2", t0)]));
    }

    #[test]
    fn a_voter_asked_before_it_asks_defers_at_once() {
        let links = PeerLinks::default();
        let (l, three) = (NodeId("node-1".into()), NodeId("node-3".into()));
        assert!(!links.asked(&three, &l, Term(3)));
        assert_eq!(links.start_asking(&l, Term(3)).len(), 1);
    }

    #[test]
    fn a_quorum_is_a_majority_of_voters() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(5), 3);
    }

    #[test]
    fn the_spread_stays_below_its_bound_and_varies() {
        let all: Vec<Duration> = (0..200).map(|_| spread()).collect();
        assert!(all.iter().all(|d| *d < SPREAD));
        let distinct: std::collections::BTreeSet<_> = all.iter().collect();
        assert!(
            distinct.len() > 50,
            "only {} distinct delays",
            distinct.len()
        );
    }
}
