//! The openraft type configuration.

use serde::{Deserialize, Serialize};

use crate::{ApplyOutcome, Command, NodeId};

/// How to reach a member: its Raft/P2P address, as given in `raft.peers` or `raft.raft_addr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PeerNode {
    /// `host:port` of the member's node-to-node port.
    pub addr: String,
}

openraft::declare_raft_types!(
    /// haseq's openraft type configuration: named nodes, one leader per term
    /// (`leader_id_std`, classic Raft), blocks as application data.
    pub TC:
        D = Command,
        R = ApplyOutcome,
        NodeId = NodeId,
        Node = PeerNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
);
