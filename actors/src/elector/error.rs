//! Why an admin call to the Elector was refused. The texts are the API's `error` strings.

use std::path::PathBuf;

use haseq_messages::{Height, NodeId};

/// Why a leadership transfer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Only the leader can hand leadership over.
    #[error("this node is not the leader; ask the leader")]
    NotLeader,
    /// The target is this node.
    #[error("{0} already leads")]
    AlreadyLeads(NodeId),
    /// The target is not a voter (nor, before the membership is known, a configured peer).
    #[error("{0} is not a voter of this cluster")]
    NotAPeer(NodeId),
    /// The target has not answered a status poll lately.
    #[error("{0} has not answered recently; use force to transfer anyway")]
    NotHeard(NodeId),
    /// The target is paused.
    #[error("{0} is paused; use force to transfer anyway")]
    Paused(NodeId),
    /// The target's engine is unhealthy.
    #[error("{0}'s engine is unhealthy; use force to transfer anyway")]
    Unhealthy(NodeId),
    /// The target lags.
    #[error(
        "{id} is lagging (exec height {exec_height}, applied {applied_height}); use force to transfer anyway"
    )]
    Lagging {
        /// The target.
        id: NodeId,
        /// Its engine's head.
        exec_height: Height,
        /// Its applied head.
        applied_height: Height,
    },
    /// No target was named and no peer is fit to take over.
    #[error("no peer is eligible to take over")]
    NoFitPeer,
    /// The node has just started and does not know its Raft role yet.
    #[error("this node does not know its Raft role yet (just started); try again")]
    Starting,
}

/// Why pausing or resuming failed.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// Pausing the last node that could lead would halt production.
    #[error("no other node is eligible to lead: pausing this one would halt production; use force")]
    NoOtherEligible,
    /// The node has just started and cannot judge the others yet.
    #[error("this node does not know its Raft role yet (just started); try again")]
    Starting,
    /// The pause file could not be written or removed.
    #[error("{}: {source}", path.display())]
    File {
        /// The pause file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}
