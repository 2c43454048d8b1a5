//! [`RaftHandler`]: serves Raft RPCs from peers by handing them to the local `openraft::Raft`.

use std::sync::Arc;

use haseq_messages::wire::{RemoteError, RpcRequest, RpcResponse};
use haseq_messages::{NodeId, TC};
use openraft::Raft;
use openraft::Snapshot;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::storage::RaftStateMachine;

use crate::server::RpcHandler;

/// A vote or pre-vote request, as shown to a [`VoteGate`].
#[derive(Debug)]
pub struct VoteCandidate<'a> {
    /// The authenticated member that sent it.
    pub from: &'a NodeId,
    /// The Raft request.
    pub req: &'a VoteRequest<TC>,
    /// The candidate's execution height, as it reported it.
    pub exec_height: Option<u64>,
    /// Pre-vote (changes nothing here) rather than a real vote.
    pub pre_vote: bool,
}

/// Decides whether a vote or pre-vote request may reach Raft at all: `false` refuses the
/// candidate (say, its execution layer lags too far). The refusal carries this node's real
/// vote and last log id, as openraft's own refusals do, so it changes nothing here and
/// misleads no one.
pub type VoteGate = Arc<dyn Fn(&VoteCandidate<'_>) -> bool + Send + Sync>;

/// An [`RpcHandler`] that hands each request to an `openraft::Raft` whose state machine
/// keeps snapshots as bytes. Raft's errors become `RpcResponse::Error`.
pub struct RaftHandler<SM>
where
    SM: RaftStateMachine<TC, SnapshotData = Vec<u8>>,
{
    raft: Raft<TC, SM>,
    vote_gate: Option<VoteGate>,
}

impl<SM> RaftHandler<SM>
where
    SM: RaftStateMachine<TC, SnapshotData = Vec<u8>>,
{
    /// Serve `raft`, with every vote request passed to it.
    pub fn new(raft: Raft<TC, SM>) -> Self {
        RaftHandler {
            raft,
            vote_gate: None,
        }
    }

    /// Check vote and pre-vote requests with `gate` before Raft sees them.
    pub fn with_vote_gate(mut self, gate: VoteGate) -> Self {
        self.vote_gate = Some(gate);
        self
    }

    /// The Raft handle served.
    pub fn raft(&self) -> &Raft<TC, SM> {
        &self.raft
    }

    /// `Some(refusal)` when the gate turns the candidate away.
    fn gate(&self, candidate: &VoteCandidate<'_>) -> Option<VoteResponse<TC>> {
        let gate = self.vote_gate.as_ref()?;
        if gate(candidate) {
            return None;
        }
        let vote = self.raft.metrics().borrow_watched().vote.clone();
        let last_log = self.raft.data_metrics().borrow_watched().last_log;
        // Per request at debug: the gate itself logs once per term (a refused candidate
        // retries every few hundred milliseconds).
        tracing::debug!(
            candidate = %candidate.from, exec_height = ?candidate.exec_height,
            pre_vote = candidate.pre_vote, "vote refused by the gate"
        );
        Some(VoteResponse::new(vote, last_log, false))
    }
}

impl<SM> RpcHandler for RaftHandler<SM>
where
    SM: RaftStateMachine<TC, SnapshotData = Vec<u8>>,
{
    async fn handle(&self, from: NodeId, req: RpcRequest) -> RpcResponse {
        let raft = &self.raft;
        match req {
            RpcRequest::AppendEntries(r) => {
                reply(raft.append_entries(r).await, RpcResponse::AppendEntries)
            }
            RpcRequest::Vote { req, exec_height } => {
                let candidate = VoteCandidate {
                    from: &from,
                    req: &req,
                    exec_height,
                    pre_vote: false,
                };
                if let Some(refusal) = self.gate(&candidate) {
                    return RpcResponse::Vote(refusal);
                }
                reply(raft.vote(req).await, RpcResponse::Vote)
            }
            RpcRequest::PreVote { req, exec_height } => {
                let candidate = VoteCandidate {
                    from: &from,
                    req: &req,
                    exec_height,
                    pre_vote: true,
                };
                if let Some(refusal) = self.gate(&candidate) {
                    return RpcResponse::Vote(refusal);
                }
                reply(raft.pre_vote(req).await, RpcResponse::Vote)
            }
            RpcRequest::InstallSnapshot { vote, meta, data } => {
                let snapshot = Snapshot {
                    meta,
                    snapshot: data,
                };
                reply(
                    raft.install_full_snapshot(vote, snapshot).await,
                    RpcResponse::Snapshot,
                )
            }
            RpcRequest::TransferLeader(r) => match raft.handle_transfer_leader(r).await {
                Ok(Ok(())) => RpcResponse::TransferLeader,
                Ok(Err(refused)) => RpcResponse::Error(RemoteError::Refused(refused.to_string())),
                Err(fatal) => RpcResponse::Error(RemoteError::Unavailable(fatal.to_string())),
            },
            // Not Raft's: the node's own handler answers these before they reach here.
            other @ (RpcRequest::PeerStatus
            | RpcRequest::FetchBlocks { .. }
            | RpcRequest::MemberHistory
            | RpcRequest::ChangeMembers { .. }
            | RpcRequest::TransferLeadership { .. }
            | RpcRequest::LeaderGone { .. }
            | RpcRequest::Goodbye) => RpcResponse::Error(RemoteError::Refused(format!(
                "{} is not a Raft call",
                other.kind()
            ))),
        }
    }
}

/// Raft's answer, or why Raft could not give one (it is stopping, or has failed).
fn reply<T, E: std::fmt::Display>(
    r: Result<T, E>,
    wrap: impl FnOnce(T) -> RpcResponse,
) -> RpcResponse {
    match r {
        Ok(v) => wrap(v),
        Err(e) => RpcResponse::Error(RemoteError::Unavailable(e.to_string())),
    }
}
