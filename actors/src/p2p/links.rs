//! What the serving side saw of its members' connections, for crash-fast failover.
//!
//! When a leader's process dies, the kernel closes its sockets and every follower's server
//! sees the leader's connections end without the goodbye a node sends when it closes them on
//! purpose ([`haseq_net::LinkClosed::Vanished`]). That is evidence the leader is gone, long
//! before the election timeout says so. It is only evidence of this node's links: a reset on
//! one path looks the same. So a follower holding it asks the other voters whether they hold
//! it too ([`RpcRequest::LeaderGone`](haseq_messages::wire::RpcRequest::LeaderGone)), and
//! campaigns only if a quorum, itself included, does (see `p2p::crash_fast`).
//!
//! A peer has *vanished* once every connection from it has ended and the last one ended
//! without a goodbye, within [`EVIDENCE_MAX`]; a new connection from it clears that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use haseq_messages::{NodeId, Term};
use haseq_net::LinkClosed;
use tokio::sync::watch;

/// How long a vanished peer counts as gone. Past it, the election timeout has run out too
/// and Raft's own election has taken over.
pub const EVIDENCE_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Link {
    open: u32,
    vanished_at: Option<Instant>,
}

/// A peer asked this node whether `leader` was gone in `term` (it is about to campaign).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// Who asked.
    pub by: NodeId,
    /// The leader it asked about.
    pub leader: NodeId,
    /// In this term.
    pub term: Term,
    /// When.
    pub at: Instant,
}

#[derive(Debug, Default)]
struct State {
    links: HashMap<NodeId, Link>,
    asked: Vec<Asked>,
    /// The questions this node asked itself: leader, term, when.
    own: Vec<(NodeId, Term, Instant)>,
}

/// Shared by the serving side (which records) and the P2P actor (which acts). Cheap to
/// clone.
#[derive(Clone)]
pub struct PeerLinks {
    state: Arc<Mutex<State>>,
    /// The peer that vanished last (bumped at each vanishing).
    vanished: watch::Sender<Option<(NodeId, Instant)>>,
}

impl Default for PeerLinks {
    fn default() -> Self {
        PeerLinks {
            state: Arc::default(),
            vanished: watch::channel(None).0,
        }
    }
}

impl PeerLinks {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection from `peer` passed the handshake.
    pub fn opened(&self, peer: &NodeId) {
        let mut st = self.lock();
        let link = st.links.entry(peer.clone()).or_default();
        link.open += 1;
        link.vanished_at = None;
    }

    /// A connection from `peer` ended, `how`.
    pub fn closed(&self, peer: &NodeId, how: LinkClosed) {
        let now = Instant::now();
        let gone = {
            let mut st = self.lock();
            let link = st.links.entry(peer.clone()).or_default();
            link.open = link.open.saturating_sub(1);
            link.vanished_at = match how {
                LinkClosed::Vanished => Some(now),
                LinkClosed::Goodbye | LinkClosed::Local => None,
            };
            link.open == 0 && link.vanished_at.is_some()
        };
        if gone {
            self.vanished.send_replace(Some((peer.clone(), now)));
        }
    }

    /// Whether `peer` has vanished: no connection from it is open, the last one ended
    /// without a goodbye, within [`EVIDENCE_MAX`].
    pub fn vanished(&self, peer: &NodeId) -> bool {
        let st = self.lock();
        st.links.get(peer).is_some_and(|l| {
            l.open == 0 && l.vanished_at.is_some_and(|t| t.elapsed() <= EVIDENCE_MAX)
        })
    }

    /// Record that `by` asked about `leader` in `term`, and tell whether this node had
    /// already asked the same itself (one step with [`PeerLinks::start_asking`], so that of
    /// two voters asking each other at least one sees the other's question).
    pub fn asked(&self, by: &NodeId, leader: &NodeId, term: Term) -> bool {
        let mut st = self.lock();
        st.asked.retain(|a| a.at.elapsed() <= EVIDENCE_MAX);
        st.asked.push(Asked {
            by: by.clone(),
            leader: leader.clone(),
            term,
            at: Instant::now(),
        });
        st.own
            .iter()
            .any(|(l, t, at)| l == leader && *t == term && at.elapsed() <= EVIDENCE_MAX)
    }

    /// Record that this node asks about `leader` in `term` now; returns the questions others
    /// asked about it before.
    pub fn start_asking(&self, leader: &NodeId, term: Term) -> Vec<Asked> {
        let mut st = self.lock();
        st.own.retain(|(_, _, at)| at.elapsed() <= EVIDENCE_MAX);
        st.own.push((leader.clone(), term, Instant::now()));
        st.asked
            .iter()
            .filter(|a| &a.leader == leader && a.term == term && a.at.elapsed() <= EVIDENCE_MAX)
            .cloned()
            .collect()
    }

    /// Who asked about `leader` in `term`, recently.
    pub fn askers(&self, leader: &NodeId, term: Term) -> Vec<Asked> {
        let st = self.lock();
        st.asked
            .iter()
            .filter(|a| &a.leader == leader && a.term == term && a.at.elapsed() <= EVIDENCE_MAX)
            .cloned()
            .collect()
    }

    /// Told of each vanishing (the newest one).
    pub fn subscribe(&self) -> watch::Receiver<Option<(NodeId, Instant)>> {
        self.vanished.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId(s.into())
    }

    #[test]
    fn a_peer_vanishes_only_when_its_last_connection_ends_without_a_goodbye() {
        let links = PeerLinks::default();
        let l = id("node-1");
        let mut rx = links.subscribe();
        links.opened(&l);
        links.opened(&l);
        links.closed(&l, LinkClosed::Vanished);
        assert!(!links.vanished(&l), "one connection still open");
        assert!(!rx.has_changed().unwrap());
        links.closed(&l, LinkClosed::Vanished);
        assert!(links.vanished(&l));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().as_ref().map(|(p, _)| p), Some(&l));
        // It came back.
        links.opened(&l);
        assert!(!links.vanished(&l));
    }

    #[test]
    fn a_goodbye_or_a_local_close_is_no_evidence() {
        let links = PeerLinks::default();
        let l = id("node-1");
        let rx = links.subscribe();
        for how in [LinkClosed::Goodbye, LinkClosed::Local] {
            links.opened(&l);
            links.closed(&l, how);
            assert!(!links.vanished(&l), "{how:?}");
        }
        assert!(!rx.has_changed().unwrap());
        assert!(!links.vanished(&id("never-seen")));
    }

    #[test]
    fn questions_are_kept_per_leader_and_term() {
        let links = PeerLinks::default();
        let (a, b, l) = (id("node-2"), id("node-3"), id("node-1"));
        assert!(!links.asked(&a, &l, Term(4)), "this node has not asked");
        assert_eq!(links.start_asking(&l, Term(5)), Vec::new());
        assert!(links.asked(&b, &l, Term(5)), "this node asked first");
        assert_eq!(links.start_asking(&l, Term(4)).len(), 1);
        let askers = links.askers(&l, Term(4));
        assert_eq!(askers.len(), 1);
        assert_eq!(askers[0].by, a);
        assert!(links.askers(&a, Term(4)).is_empty());
    }
}
