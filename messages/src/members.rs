//! Membership changes as operators ask for them (`/admin/members/*`, `haseqd ctl`) and as a
//! follower forwards them to its leader over the node port.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// One change to the cluster's members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add `id` at `addr` (its node-to-node `host:port`) as a learner: it receives the log
    /// and catches up, but does not vote.
    AddLearner {
        /// The new node's id.
        id: NodeId,
        /// Its node-to-node address.
        addr: String,
    },
    /// Make the learner `id` a voter; refused while it lags by more than
    /// `max_exec_lag_blocks`, unless `force`.
    Promote {
        /// The learner.
        id: NodeId,
        /// Promote whatever its lag.
        force: bool,
    },
    /// Remove `id` (voter or learner). Removing the leader hands leadership over first.
    Remove {
        /// The member.
        id: NodeId,
        /// Remove even when the voters left could not form a quorum of live nodes.
        force: bool,
    },
}

impl MemberChange {
    /// The member the change is about.
    pub fn id(&self) -> &NodeId {
        match self {
            MemberChange::AddLearner { id, .. }
            | MemberChange::Promote { id, .. }
            | MemberChange::Remove { id, .. } => id,
        }
    }

    /// A short name for logs (`add_learner`, `promote`, `remove`).
    pub fn kind(&self) -> &'static str {
        match self {
            MemberChange::AddLearner { .. } => "add_learner",
            MemberChange::Promote { .. } => "promote",
            MemberChange::Remove { .. } => "remove",
        }
    }
}

/// Why a membership change was not made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MemberChangeError {
    /// The request names something impossible (unknown member, a voter added as a learner,
    /// a malformed address).
    #[error("{0}")]
    Invalid(String),
    /// Refused by a guard that `force` overrides, or by Raft (a change already in progress).
    #[error("{why}")]
    Refused {
        /// What was wrong.
        why: String,
        /// For a promotion refused for lag: the learner's lag in blocks.
        lag_blocks: Option<u64>,
    },
    /// This node does not lead and could not hand the change to its leader.
    #[error("not the leader (leader: {}): {why}", leader.as_ref().map_or("unknown", |l| l.as_str()))]
    NotLeader {
        /// The leader, when known.
        leader: Option<NodeId>,
        /// What happened.
        why: String,
    },
    /// The node could not do it now (Raft busy or shutting down, an actor being rebuilt).
    #[error("{0}")]
    Unavailable(String),
}

/// One member as a change's answer lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// Its id.
    pub id: NodeId,
    /// Its node-to-node address as the membership records it (empty for the members a
    /// cluster was bootstrapped with: each node has those in its own `raft.peers`).
    pub addr: String,
}

/// The membership after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersReport {
    /// The node that made the change (the leader).
    pub leader: NodeId,
    /// The Raft log index of the membership entry that the change committed.
    pub log_index: u64,
    /// Voters, by id.
    pub voters: Vec<MemberEntry>,
    /// Learners, by id.
    pub learners: Vec<MemberEntry>,
}
