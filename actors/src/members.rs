//! Membership changes as an operator asks for them: `/admin/members/{learner,promote,remove}`
//! on any node, and the same change forwarded to the leader over the node port.
//!
//! [`change`] runs where it is asked. On a follower it hands the change to the leader
//! (through the P2P actor, [`ForwardMembers`]) and answers with the leader's answer. On the
//! leader it checks what only an operator's request needs, then asks RaftCore to make the
//! change ([`ChangeMembership`]):
//! - a learner is promoted only once it is within `max_exec_lag_blocks` of the cluster's
//!   head (else [`MemberChangeError::Refused`] with its lag), unless forced;
//! - a removal must leave voters that can still form a quorum of nodes heard from lately,
//!   unless forced; the last voter is never removed;
//! - removing the leader hands leadership over first (the Elector picks the most caught-up
//!   voter), then the new leader removes it: the cluster keeps producing.
//!
//! [`members`] lists voters and learners with address, lag and last contact, for
//! `GET /members` (`haseqd ctl members`) and `/status` `learners`.

use std::time::{Duration, Instant};

use haseq_messages::NodeId;
use haseq_messages::members::{MemberChange, MemberChangeError, MembersReport};
use serde::Serialize;
use tokio::sync::watch;

use crate::elector::{Elector, ElectorView, TransferError, TransferLeadership};
use crate::p2p::{ForwardMembers, ForwardRefused, ForwardTransfer, P2p};
use crate::raft_core::{ChangeMembership, GetStatus, RaftCore, RaftStatus, Role};
use crate::supervisor::Slot;

/// How long one actor call may take here.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a leader that removes itself waits for its successor to take over.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);
/// The most forwards of one change: follower to leader, then a leader that handed over to
/// its successor.
pub const FORWARD_HOPS_MAX: u8 = 2;

/// What a membership change needs; cheap to clone.
#[derive(Clone)]
pub struct MembersCtx {
    /// This node.
    pub node_id: NodeId,
    /// Makes the change.
    pub raft_core: Slot<RaftCore>,
    /// Hands leadership over before the leader is removed.
    pub elector: Slot<Elector>,
    /// Forwards the change to the leader.
    pub p2p: Slot<P2p>,
    /// Peers' last states (a learner's lag) and this node's view.
    pub view: watch::Receiver<ElectorView>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> MemberChangeError {
    MemberChangeError::Unavailable(format!("{what} unavailable: {e}"))
}

async fn status(ctx: &MembersCtx) -> Result<RaftStatus, MemberChangeError> {
    match tokio::time::timeout(CALL_TIMEOUT, ctx.raft_core.get().send(GetStatus)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(unavailable("RaftCore", e)),
        Err(_) => Err(unavailable("RaftCore", "no answer within 2 s")),
    }
}

/// The request's own sense, before any node's state is read.
pub fn validate(change: &MemberChange) -> Result<(), MemberChangeError> {
    let id = change.id();
    if id.0.is_empty() || id.0.chars().any(|c| c.is_whitespace() || c == '@') {
        return Err(MemberChangeError::Invalid(format!(
            "id {:?}: a node id is a non-empty name without spaces or '@'",
            id.0
        )));
    }
    if let MemberChange::AddLearner { addr, .. } = change {
        let port = addr
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
            return Err(MemberChangeError::Invalid(format!(
                "addr {addr:?}: expected the node's node-to-node host:port, e.g. \"10.0.0.4:5001\""
            )));
        }
    }
    Ok(())
}

/// Make `change`, here if this node leads, else at the leader; `hops` forwards so far.
pub async fn change(
    ctx: &MembersCtx,
    change: MemberChange,
    hops: u8,
) -> Result<MembersReport, MemberChangeError> {
    validate(&change)?;
    let s = status(ctx).await?;
    if s.role != Role::Leader {
        return forward(ctx, &s, change, hops).await;
    }
    let view = ctx.view.borrow().clone();
    let m = &s.member_addrs;
    match &change {
        MemberChange::AddLearner { id, addr } => {
            if m.voters.contains_key(id) {
                return Err(MemberChangeError::Invalid(format!(
                    "{id} is already a voter"
                )));
            }
            if let Some(known) = m.learners.get(id) {
                if known == addr {
                    return Ok(m.report(ctx.node_id.clone()));
                }
                return Err(MemberChangeError::Invalid(format!(
                    "{id} is already a learner at {known:?}; remove it first to change its address"
                )));
            }
        }
        MemberChange::Promote { id, force } => {
            if m.voters.contains_key(id) {
                return Ok(m.report(ctx.node_id.clone()));
            }
            if !m.learners.contains_key(id) {
                return Err(MemberChangeError::Invalid(format!(
                    "{id} is not a learner; add it first (POST /admin/members/learner)"
                )));
            }
            promotable(&view, id, *force)?;
        }
        MemberChange::Remove { id, force } => {
            if !m.contains(id) {
                // Already done (say, a retry after a forward timed out): the same answer.
                return Ok(m.report(ctx.node_id.clone()));
            }
            if m.voters.contains_key(id) {
                let left: Vec<&NodeId> = m.voters.keys().filter(|v| *v != id).collect();
                if left.is_empty() {
                    return Err(MemberChangeError::Invalid(format!(
                        "{id} is the last voter; a cluster cannot remove its last voter"
                    )));
                }
                if !force {
                    // Joint consensus needs a live majority of the old voters and of the new.
                    let all: Vec<&NodeId> = m.voters.keys().collect();
                    quorum_stays(&view, &ctx.node_id, &all, id, "with")?;
                    quorum_stays(&view, &ctx.node_id, &left, id, "without")?;
                }
            }
            if id == &ctx.node_id {
                if hops >= FORWARD_HOPS_MAX {
                    return Err(MemberChangeError::NotLeader {
                        leader: Some(ctx.node_id.clone()),
                        why: format!(
                            "removing the leader takes one more forward after its hand-over, and this request was forwarded {hops} times already; ask the leader directly"
                        ),
                    });
                }
                return remove_self(ctx, change, hops).await;
            }
        }
    }
    match ctx.raft_core.get().send(ChangeMembership(change)).await {
        Ok(r) => r,
        Err(e) => Err(unavailable("RaftCore", e)),
    }
}

async fn forward(
    ctx: &MembersCtx,
    s: &RaftStatus,
    change: MemberChange,
    hops: u8,
) -> Result<MembersReport, MemberChangeError> {
    let Some(leader) = s.leader_id.clone().filter(|l| l != &ctx.node_id) else {
        return Err(MemberChangeError::NotLeader {
            leader: None,
            why: "no leader known; try again once one is elected".into(),
        });
    };
    if hops >= FORWARD_HOPS_MAX {
        return Err(MemberChangeError::NotLeader {
            leader: Some(leader),
            why: format!("forwarded {hops} times already; ask the leader"),
        });
    }
    tracing::info!(kind = change.kind(), member = %change.id(), to = %leader, "forwarding a membership change to the leader");
    let msg = ForwardMembers {
        to: leader,
        change,
        hops: hops + 1,
    };
    match ctx.p2p.get().send(msg).await {
        Ok(r) => r,
        Err(e) => Err(unavailable("P2P", e)),
    }
}

/// A learner may be promoted once it answers and its engine is within `max_exec_lag_blocks`
/// of the head; `force` overrides only the lag (a voter that cannot be reached could cost the
/// cluster its quorum).
fn promotable(view: &ElectorView, id: &NodeId, force: bool) -> Result<(), MemberChangeError> {
    let Some(state) = view
        .peers
        .iter()
        .find(|p| &p.id == id)
        .and_then(|p| p.state.as_ref())
    else {
        return Err(MemberChangeError::Refused {
            why: format!(
                "{id} has not answered a status poll lately: a voter that cannot be reached could cost the cluster its quorum; start it, check its address, try again"
            ),
            lag_blocks: None,
        });
    };
    if force {
        return Ok(());
    }
    let head = view.cluster_head.max(view.me.applied_height.0);
    let lag = head.saturating_sub(state.exec_height.0);
    if lag > view.max_exec_lag_blocks {
        return Err(MemberChangeError::Refused {
            why: format!(
                "{id} is {lag} blocks behind (exec height {}, head {head}; max_exec_lag_blocks {}); wait for it to catch up, or use force",
                state.exec_height, view.max_exec_lag_blocks
            ),
            lag_blocks: Some(lag),
        });
    }
    Ok(())
}

/// The voters `left` (those `with` or `without` `gone`) must include a majority heard from
/// lately.
fn quorum_stays(
    view: &ElectorView,
    me: &NodeId,
    left: &[&NodeId],
    gone: &NodeId,
    side: &str,
) -> Result<(), MemberChangeError> {
    let alive = left
        .iter()
        .filter(|v| **v == me || view.peers.iter().any(|p| &p.id == **v && p.state.is_some()))
        .count();
    if alive * 2 > left.len() {
        return Ok(());
    }
    Err(MemberChangeError::Refused {
        why: format!(
            "{side} {gone}, only {alive} of the {} voters have answered lately: no quorum for the change; bring the others back, or use force",
            left.len()
        ),
        lag_blocks: None,
    })
}

/// The leader removes itself: hand over first, then the successor removes it.
async fn remove_self(
    ctx: &MembersCtx,
    change: MemberChange,
    hops: u8,
) -> Result<MembersReport, MemberChangeError> {
    let ask = TransferLeadership {
        to: None,
        force: false,
    };
    let to = match ctx.elector.get().send(ask).await {
        Ok(Ok(to)) => to,
        Ok(Err(e)) => {
            return Err(MemberChangeError::Refused {
                why: format!(
                    "removing the leader hands leadership over first, and that was refused: {e}"
                ),
                lag_blocks: None,
            });
        }
        Err(e) => return Err(unavailable("Elector", e)),
    };
    tracing::info!(to = %to, "removing the leader: handing leadership over first");
    let until = Instant::now() + HANDOVER_WAIT;
    loop {
        let s = status(ctx).await?;
        if s.role != Role::Leader && s.leader_id.as_ref().is_some_and(|l| l != &ctx.node_id) {
            return forward(ctx, &s, change, hops).await;
        }
        if Instant::now() >= until {
            return Err(MemberChangeError::Unavailable(format!(
                "leadership was not handed to {to} within {HANDOVER_WAIT:?}; nothing was removed; try again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where an operator's leadership transfer went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferStarted {
    /// The node leadership is handed to.
    pub to: NodeId,
    /// The leader the request was forwarded to (`None` when this node leads).
    pub via: Option<NodeId>,
}

/// Why an operator's leadership transfer went nowhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferFailed {
    /// The leader refused (the target lags, is paused, ...): `force` may override.
    #[error("{0}")]
    Refused(String),
    /// No leader could be asked; try again.
    #[error("{0}")]
    Unavailable(String),
}

/// An operator's leadership transfer asked of this node: the Elector makes it if this node
/// leads; a follower forwards it to the leader through the P2P actor, once (`forwarded` is set
/// on the leader's side, which never forwards again).
pub async fn transfer(
    ctx: &MembersCtx,
    to: Option<NodeId>,
    force: bool,
    forwarded: bool,
) -> Result<TransferStarted, TransferFailed> {
    let ask = TransferLeadership {
        to: to.clone(),
        force,
    };
    match ctx.elector.get().send(ask).await {
        Ok(Ok(to)) => return Ok(TransferStarted { to, via: None }),
        Ok(Err(TransferError::NotLeader)) if !forwarded => {}
        Ok(Err(e)) => return Err(TransferFailed::Refused(e.to_string())),
        Err(e) => {
            return Err(TransferFailed::Unavailable(format!(
                "Elector unavailable: {e}"
            )));
        }
    }
    let s = status(ctx)
        .await
        .map_err(|e| TransferFailed::Unavailable(e.to_string()))?;
    let Some(leader) = s.leader_id.filter(|l| l != &ctx.node_id) else {
        return Err(TransferFailed::Unavailable(
            "this node does not lead and knows no leader; try again once one is elected".into(),
        ));
    };
    tracing::info!(to = ?to, leader = %leader, "forwarding a leadership transfer to the leader");
    let msg = ForwardTransfer {
        to: leader.clone(),
        target: to,
        force,
    };
    match ctx.p2p.get().send(msg).await {
        Ok(Ok(to)) => Ok(TransferStarted {
            to,
            via: Some(leader),
        }),
        Ok(Err(ForwardRefused::Refused(why))) => Err(TransferFailed::Refused(format!(
            "the leader {leader} refused: {why}"
        ))),
        Ok(Err(ForwardRefused::Unreachable(why))) => Err(TransferFailed::Unavailable(format!(
            "the leader {leader} could not be asked: {why}"
        ))),
        Err(e) => Err(TransferFailed::Unavailable(format!("P2P unavailable: {e}"))),
    }
}

/// One member as `GET /members` and `/status` `learners` show it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    /// Its id.
    pub id: NodeId,
    /// Its node-to-node address (from `raft.peers`, else from the log).
    pub addr: String,
    /// `leader`, `voter` or `learner`.
    pub role: &'static str,
    /// Blocks its engine is behind the cluster's head, when known.
    pub lag_blocks: Option<u64>,
    /// Its engine's head, when known.
    pub exec_height: Option<u64>,
    /// Milliseconds since it last answered a status poll (0 for this node).
    pub last_seen_ms: Option<u64>,
    /// On the leader: the highest log index it has acknowledged.
    pub matched_index: Option<u64>,
}

/// The voters and learners, as this node knows them; `own_addr` is this node's
/// `raft.raft_addr`.
pub fn members(
    s: &RaftStatus,
    view: &ElectorView,
    own_addr: &str,
) -> (Vec<MemberView>, Vec<MemberView>) {
    let head = view.cluster_head.max(view.me.applied_height.0);
    let one = |id: &NodeId, logged: &String, voter: bool| {
        let me = id == &s.node_id;
        let peer = view.peers.iter().find(|p| &p.id == id);
        let state = if me {
            Some(&view.me)
        } else {
            peer.and_then(|p| p.state.as_ref())
        };
        let role = if s.leader_id.as_ref() == Some(id) {
            "leader"
        } else if voter {
            "voter"
        } else {
            "learner"
        };
        MemberView {
            id: id.clone(),
            addr: if me {
                own_addr.to_string()
            } else {
                peer.map(|p| p.addr.clone())
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| logged.clone())
            },
            role,
            lag_blocks: state.map(|st| head.saturating_sub(st.exec_height.0)),
            exec_height: state.map(|st| st.exec_height.0),
            last_seen_ms: if me {
                Some(0)
            } else {
                peer.and_then(|p| p.seen_ms_ago)
            },
            matched_index: s.matched.get(id).cloned().flatten(),
        }
    };
    let m = &s.member_addrs;
    (
        m.voters.iter().map(|(id, a)| one(id, a, true)).collect(),
        m.learners.iter().map(|(id, a)| one(id, a, false)).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_that_make_no_sense_are_named() {
        let bad = |c: MemberChange| validate(&c).unwrap_err().to_string();
        let e = bad(MemberChange::AddLearner {
            id: NodeId("node-4".into()),
            addr: "10.0.0.4".into(),
        });
        assert!(
            e.contains("addr \"10.0.0.4\"") && e.contains("host:port"),
            "{e}"
        );
        let e = bad(MemberChange::Remove {
            id: NodeId("".into()),
            force: false,
        });
        assert!(e.contains("id \"\""), "{e}");
        assert!(
            validate(&MemberChange::AddLearner {
                id: NodeId("node-4".into()),
                addr: "10.0.0.4:5001".into()
            })
            .is_ok()
        );
    }
}
