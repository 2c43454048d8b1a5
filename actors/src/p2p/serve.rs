//! The node's answer to its peers on the node-to-node port: Raft RPCs go to openraft (votes
//! through the Elector's exec-height gate); status polls and block fetches are the P2P
//! protocol's, answered here under per-peer limits.
//!
//! It runs in the transport's connection tasks, not in the P2P actor: a block read must not
//! wait behind the arbiter, and the limits are what keeps it cheap. Whatever a peer sends, one
//! peer holds at most [`SERVE_FETCHES_PER_PEER_MAX`] answers of at most
//! [`SERVE_ANSWER_BYTES_MAX`] payload bytes in memory here, and is served at most
//! [`SERVE_BYTES_PER_S_PER_PEER`] on average; past either limit it is told `Unavailable`
//! (and the fetcher backs off) instead of queueing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use haseq_messages::wire::{RemoteError, RpcRequest, RpcResponse};
use haseq_messages::{Block, Height, NodeId, Term};
use haseq_storage::{BlockReader, StateMachineStore};
use tokio::sync::watch;

use crate::elector::ElectorView;

/// The most blocks one FetchBlocks answer carries.
pub const SERVE_BLOCKS_MAX: u32 = 512;
/// The most payload bytes one answer carries (the first block goes whatever its size).
pub const SERVE_ANSWER_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Block fetches served to one peer at once; more are refused as busy.
pub const SERVE_FETCHES_PER_PEER_MAX: u32 = 2;
/// Payload bytes per second one peer is served on average.
pub const SERVE_BYTES_PER_S_PER_PEER: f64 = 256.0 * 1024.0 * 1024.0;
/// What one peer may take in a burst above that rate.
const SERVE_BURST_BYTES: f64 = 4.0 * SERVE_ANSWER_BYTES_MAX as f64;

/// What the serving side does wrong on purpose (fault injection for tests and drills).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeFault {
    /// Serve blocks as stored.
    None = 0,
    /// Flip a byte in every served block's payload (its hash no longer matches).
    CorruptPayload = 1,
    /// Serve blocks whose parent hashes are wrong (the range no longer hash-links).
    BreakLinks = 2,
}

/// The serving side's fault knobs; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ServeFaults(Arc<(AtomicU8, AtomicU64, AtomicU64)>);

impl ServeFaults {
    /// Serve blocks this way from now on.
    pub fn set(&self, f: ServeFault) {
        self.0.0.store(f as u8, Ordering::SeqCst);
    }

    /// Hold every block answer this long before reading it (a slow peer; zero: none).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.0.1.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Hold every status answer this long (a slow link, as peers' round trips see it).
    pub fn set_status_delay(&self, delay: std::time::Duration) {
        self.0.2.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    fn status_delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.2.load(Ordering::Relaxed))
    }

    fn delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.1.load(Ordering::Relaxed))
    }

    fn get(&self) -> ServeFault {
        match self.0.0.load(Ordering::Relaxed) {
            1 => ServeFault::CorruptPayload,
            2 => ServeFault::BreakLinks,
            _ => ServeFault::None,
        }
    }
}

struct PeerQuota {
    inflight: u32,
    /// Token bucket in bytes: refilled at SERVE_BYTES_PER_S_PER_PEER up to the burst; a
    /// request is admitted while it is positive and its answer is charged afterwards.
    tokens: f64,
    refilled: Instant,
}

/// Per-peer serving limits; cheap to clone.
#[derive(Clone, Default)]
pub struct ServeLimits(Arc<Mutex<HashMap<NodeId, PeerQuota>>>);

/// Returned to the quota when an answer has been built.
#[derive(Debug)]
struct Admission {
    limits: ServeLimits,
    peer: NodeId,
    bytes: usize,
}

impl std::fmt::Debug for ServeLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeLimits").finish_non_exhaustive()
    }
}

impl ServeLimits {
    fn admit(&self, peer: &NodeId) -> Result<Admission, String> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let q = map.entry(peer.clone()).or_insert(PeerQuota {
            inflight: 0,
            tokens: SERVE_BURST_BYTES,
            refilled: now,
        });
        let dt = now.duration_since(q.refilled).as_secs_f64();
        q.tokens = (q.tokens + dt * SERVE_BYTES_PER_S_PER_PEER).min(SERVE_BURST_BYTES);
        q.refilled = now;
        if q.inflight >= SERVE_FETCHES_PER_PEER_MAX {
            return Err(format!(
                "busy: {} block fetches of yours in flight",
                q.inflight
            ));
        }
        if q.tokens <= 0.0 {
            let wait_ms = (-q.tokens / SERVE_BYTES_PER_S_PER_PEER * 1000.0).ceil();
            return Err(format!("rate limited: retry in {wait_ms} ms"));
        }
        q.inflight += 1;
        Ok(Admission {
            limits: self.clone(),
            peer: peer.clone(),
            bytes: 0,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut map = self.limits.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = map.get_mut(&self.peer) {
            q.inflight = q.inflight.saturating_sub(1);
            q.tokens -= self.bytes as f64;
        }
    }
}

/// Dispatches peer calls.
pub struct NodeHandler {
    /// Raft RPCs, with the vote gate.
    pub raft: haseq_net::RaftHandler<StateMachineStore>,
    /// This node's view, for status polls.
    pub view: watch::Receiver<ElectorView>,
    /// Committed blocks, for fetches.
    pub blocks: BlockReader,
    /// Peers whose links are cut (fault injection): their calls are dropped.
    pub cuts: haseq_net::LinkCuts,
    /// Per-peer serving limits.
    pub limits: ServeLimits,
    /// Deliberate misbehaviour (fault injection).
    pub faults: ServeFaults,
    /// What a forwarded membership change needs; set once the actors run (a change that
    /// arrives before is told to retry).
    pub members: Arc<std::sync::OnceLock<crate::members::MembersCtx>>,
    /// Notes a leader's hand-over to this node, for RaftCore's log line.
    pub handed: crate::raft_core::TransferSeen,
    /// How members' connections ended (crash-fast failover's evidence).
    pub links: super::links::PeerLinks,
}

impl NodeHandler {
    /// Whether this node has a membership and `peer` is not in it (removed, or never added).
    fn not_a_member(&self, peer: &NodeId) -> Option<String> {
        use openraft::async_runtime::WatchReceiver as _;
        let m = self.raft.raft().metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let empty =
            membership.voter_ids().next().is_none() && membership.learner_ids().next().is_none();
        if empty
            || membership.get_node(peer).is_some()
            || membership.voter_ids().any(|v| &v == peer)
        {
            return None;
        }
        let at = m.membership_config.log_id().as_ref().map_or(0, |l| l.index);
        Some(format!(
            "{peer} is not in the cluster's membership (log index {at}); add it as a learner to bring it back"
        ))
    }

    async fn fetch(&self, peer: NodeId, from: Height, max: u32) -> RpcResponse {
        let mut admission = match self.limits.admit(&peer) {
            Ok(a) => a,
            Err(why) => {
                metrics::counter!("haseq_p2p_serve_refused_total", "peer" => peer.to_string())
                    .increment(1);
                return RpcResponse::Error(RemoteError::Unavailable(why));
            }
        };
        let max = max.min(SERVE_BLOCKS_MAX) as usize;
        let delay = self.faults.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let blocks = self.blocks.clone();
        // An LMDB read of a few MiB may fault pages in from disk: not on a tokio worker.
        let read = tokio::task::spawn_blocking(move || {
            blocks.blocks_from_bounded(from, max, SERVE_ANSWER_BYTES_MAX)
        })
        .await;
        match read {
            Ok(Ok(mut blocks)) => {
                admission.bytes = blocks.iter().map(|b| b.payload.len()).sum();
                metrics::counter!("haseq_p2p_blocks_served_total").increment(blocks.len() as u64);
                corrupt(self.faults.get(), &mut blocks);
                RpcResponse::Blocks(blocks)
            }
            Ok(Err(e)) => RpcResponse::Error(RemoteError::Unavailable(format!(
                "reading blocks from {from}: {e}"
            ))),
            Err(e) => RpcResponse::Error(RemoteError::Unavailable(format!(
                "reading blocks from {from}: {e}"
            ))),
        }
    }
}

fn corrupt(fault: ServeFault, blocks: &mut [Block]) {
    match fault {
        ServeFault::None => {}
        ServeFault::CorruptPayload => {
            for b in blocks {
                let mut p = b.payload.to_vec();
                if let Some(last) = p.last_mut() {
                    *last ^= 0x01;
                }
                b.payload = p.into();
            }
        }
        ServeFault::BreakLinks => {
            for b in blocks {
                b.parent_hash.0[0] ^= 0x01;
            }
        }
    }
}

impl NodeHandler {
    /// The leader this node follows and its term, as openraft last reported them.
    fn leader_and_term(&self) -> (Option<NodeId>, Term) {
        use openraft::async_runtime::WatchReceiver as _;
        let m = self.raft.raft().metrics();
        let m = m.borrow_watched();
        (m.current_leader.clone(), Term(m.current_term))
    }

    /// Crash-fast failover, a voter's side: `from` lost its connections from `leader`;
    /// did this node too, and does it still follow `leader` in `term`?
    fn leader_gone(&self, from: &NodeId, leader: &NodeId, term: Term) -> RpcResponse {
        let asking = self.links.asked(from, leader, term);
        let (current, my_term) = self.leader_and_term();
        let gone =
            my_term == term && current.as_ref() == Some(leader) && self.links.vanished(leader);
        tracing::debug!(asker = %from, leader = %leader, term = term.0, gone, asking, "asked whether the leader is gone");
        RpcResponse::LeaderGone { gone, asking }
    }

    /// A vote for a higher term while the leader this node follows has vanished from its
    /// links: the leader lease protects a live leader, and this one is gone by this node's
    /// own evidence, so the lease must not hold the vote back (openraft would refuse it
    /// until the lease runs out). Everything else about the vote is Raft's to judge.
    fn lease_waived(&self, req: &mut openraft::raft::VoteRequest<haseq_messages::TC>) {
        if req.leadership_transfer {
            return;
        }
        let (current, my_term) = self.leader_and_term();
        let Some(leader) = current else { return };
        if req.vote.leader_id.term > my_term.0 && self.links.vanished(&leader) {
            tracing::debug!(
                leader = %leader, term = req.vote.leader_id.term,
                "vote for a higher term: the leader's links vanished, its lease is waived"
            );
            req.leadership_transfer = true;
        }
    }
}

impl haseq_net::RpcHandler for NodeHandler {
    fn link_opened(&self, from: &NodeId) {
        self.links.opened(from);
    }

    fn link_closed(&self, from: &NodeId, how: haseq_net::LinkClosed) {
        self.links.closed(from, how);
    }

    async fn handle(&self, from: NodeId, req: RpcRequest) -> RpcResponse {
        if self.cuts.is_cut(&from) {
            return RpcResponse::Error(RemoteError::Unavailable(
                "link cut (fault injection)".into(),
            ));
        }
        match req {
            RpcRequest::PeerStatus => {
                if let Some(why) = self.not_a_member(&from) {
                    return RpcResponse::Error(RemoteError::NotAMember(why));
                }
                let delay = self.faults.status_delay();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                RpcResponse::PeerStatus(self.view.borrow().me.clone())
            }
            RpcRequest::FetchBlocks { from: start, max } => self.fetch(from, start, max).await,
            RpcRequest::MemberHistory => {
                use openraft::async_runtime::WatchReceiver as _;
                if let Some(why) = self.not_a_member(&from) {
                    return RpcResponse::Error(RemoteError::NotAMember(why));
                }
                let m = self.raft.raft().metrics();
                let m = m.borrow_watched();
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&from).cloned().flatten())
                    .map(|l| l.index);
                RpcResponse::MemberHistory {
                    matched,
                    is_leader: m.state == openraft::ServerState::Leader,
                }
            }
            RpcRequest::ChangeMembers { change, hops } => {
                let Some(ctx) = self.members.get() else {
                    return RpcResponse::MembersChanged(Err(
                        haseq_messages::members::MemberChangeError::Unavailable(
                            "the node is still starting; try again".into(),
                        ),
                    ));
                };
                tracing::info!(kind = change.kind(), member = %change.id(), from = %from, "membership change forwarded by a peer");
                RpcResponse::MembersChanged(crate::members::change(ctx, change, hops).await)
            }
            RpcRequest::TransferLeadership { to, force } => {
                let Some(ctx) = self.members.get() else {
                    return RpcResponse::Error(RemoteError::Unavailable(
                        "the node is still starting; try again".into(),
                    ));
                };
                tracing::info!(to = ?to, from = %from, "leadership transfer forwarded by a peer");
                match crate::members::transfer(ctx, to, force, true).await {
                    Ok(t) => RpcResponse::TransferStarted(Ok(t.to)),
                    Err(crate::members::TransferFailed::Refused(why)) => {
                        RpcResponse::TransferStarted(Err(why))
                    }
                    Err(crate::members::TransferFailed::Unavailable(why)) => {
                        RpcResponse::Error(RemoteError::Unavailable(why))
                    }
                }
            }
            RpcRequest::LeaderGone { leader, term } => self.leader_gone(&from, &leader, term),
            RpcRequest::Vote {
                mut req,
                exec_height,
            } => {
                self.lease_waived(&mut req);
                self.raft
                    .handle(from, RpcRequest::Vote { req, exec_height })
                    .await
            }
            RpcRequest::TransferLeader(r) => {
                self.handed.record(from.clone());
                self.raft.handle(from, RpcRequest::TransferLeader(r)).await
            }
            other => self.raft.handle(from, other).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_held_to_its_concurrency_and_rate() {
        let limits = ServeLimits::default();
        let a = NodeId("node-2".into());
        let b = NodeId("node-3".into());
        let first = limits.admit(&a).unwrap();
        let second = limits.admit(&a).unwrap();
        assert!(
            limits.admit(&a).unwrap_err().starts_with("busy"),
            "a third fetch at once is refused"
        );
        // Another peer has its own quota.
        drop(limits.admit(&b).unwrap());
        drop(first);
        let mut big = limits.admit(&a).unwrap();
        // An answer far past the burst drains the bucket: the next is refused until it refills.
        big.bytes = (SERVE_BURST_BYTES * 2.0) as usize;
        drop(big);
        drop(second);
        let refused = limits.admit(&a).unwrap_err();
        assert!(refused.starts_with("rate limited"), "{refused}");
    }
}
