//! The node's answer to its peers on the node-to-node port: Raft RPCs go to openraft (votes
//! through the Elector's exec-height gate); status polls and block fetches are answered here.

use haseq_messages::NodeId;
use haseq_messages::wire::{RemoteError, RpcRequest, RpcResponse};
use haseq_storage::{BlockReader, StateMachineStore};
use tokio::sync::watch;

use crate::elector::ElectorView;

/// The most blocks one FetchBlocks answer carries.
pub const FETCH_BLOCKS_MAX: u32 = 512;

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
}

impl haseq_net::RpcHandler for NodeHandler {
    async fn handle(&self, from: NodeId, req: RpcRequest) -> RpcResponse {
        if self.cuts.is_cut(&from) {
            return RpcResponse::Error(RemoteError::Unavailable(
                "link cut (fault injection)".into(),
            ));
        }
        match req {
            RpcRequest::PeerStatus => RpcResponse::PeerStatus(self.view.borrow().me.clone()),
            RpcRequest::FetchBlocks { from: start, max } => {
                let max = max.min(FETCH_BLOCKS_MAX) as usize;
                match self.blocks.blocks_from(start, max) {
                    Ok(blocks) => RpcResponse::Blocks(blocks),
                    Err(e) => RpcResponse::Error(RemoteError::Unavailable(format!(
                        "reading blocks from {start}: {e}"
                    ))),
                }
            }
            other => self.raft.handle(from, other).await,
        }
    }
}
