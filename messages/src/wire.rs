//! The node-to-node protocol: one TCP port per node (`raft.raft_addr`) carries Raft RPCs and,
//! later, P2P block transfer.
//!
//! A connection is a sequence of frames, each a big-endian `u32` length then that many bytes
//! of postcard. It opens with a mutual HMAC-SHA256 challenge-response on the cluster's shared
//! secret (the proofs are computed by the transport; this module only defines the messages and
//! the transcript they sign), then carries `Request`s and `Response`s matched by `id`, so one
//! connection serves many concurrent calls.

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, VoteOf};
use serde::{Deserialize, Serialize};

use crate::{Height, NodeId, TC, Term};

/// Protocol version; a peer speaking another version is refused at the handshake.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest frame either side accepts. A snapshot carries the head, the membership and a
/// bounded number of recent blocks, so it fits well below this.
pub const FRAME_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Length of the random nonces exchanged in the handshake.
pub const NONCE_BYTES: usize = 32;

/// First frame, client to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// Must equal [`PROTOCOL_VERSION`].
    pub version: u16,
    /// Who the client says it is; proven by `ClientProof`.
    pub node_id: NodeId,
    /// Who the client thinks it is talking to; a server with another id refuses.
    pub target: NodeId,
    /// Fresh random challenge for the server.
    pub nonce: [u8; NONCE_BYTES],
}

/// Second frame, server to client: the server proves it knows the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerHello {
    /// The server accepts to continue.
    Challenge {
        /// The server's own id.
        node_id: NodeId,
        /// Fresh random challenge for the client.
        nonce: [u8; NONCE_BYTES],
        /// HMAC over [`transcript`] with role `b"server"`.
        proof: [u8; 32],
    },
    /// The server refuses (wrong version, wrong target); the reason is for the log.
    Refused(String),
}

/// Third frame, client to server: the client proves it knows the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientProof {
    /// HMAC over [`transcript`] with role `b"client"`.
    pub proof: [u8; 32],
}

/// Fourth frame, server to client: the outcome of the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Welcome {
    /// Authenticated; requests may follow.
    Accepted,
    /// Refused (bad proof, not a member); the server closes the connection.
    Refused(String),
}

/// The bytes each side's HMAC covers: the role, both ids and both nonces, so a proof can't be
/// replayed on another connection, for another node, or reflected back in the other role.
pub fn transcript(
    role: &[u8],
    client: &NodeId,
    server: &NodeId,
    client_nonce: &[u8; NONCE_BYTES],
    server_nonce: &[u8; NONCE_BYTES],
) -> Vec<u8> {
    let mut t = Vec::with_capacity(64 + client.0.len() + server.0.len() + 2 * NONCE_BYTES);
    t.extend_from_slice(b"haseq-handshake-v1\0");
    t.extend_from_slice(role);
    t.push(0);
    for id in [client, server] {
        t.extend_from_slice(&(id.0.len() as u32).to_be_bytes());
        t.extend_from_slice(id.0.as_bytes());
    }
    t.extend_from_slice(client_nonce);
    t.extend_from_slice(server_nonce);
    t
}

/// A call from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Matches the response to the call on a shared connection.
    pub id: u64,
    /// What is asked.
    pub body: RpcRequest,
}

/// The answer to a [`Request`] with the same `id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// The answer.
    pub body: RpcResponse,
}

/// Everything a node can ask a peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RpcRequest {
    /// Raft AppendEntries (also the heartbeat).
    AppendEntries(AppendEntriesRequest<TC>),
    /// Raft RequestVote. `exec_height` is the candidate's execution height, for voters that
    /// refuse a lagging candidate.
    Vote {
        /// The Raft request.
        req: VoteRequest<TC>,
        /// The candidate's execution-layer height, when known.
        exec_height: Option<u64>,
    },
    /// Raft Pre-Vote: would you vote for me? Changes nothing on the receiver.
    PreVote {
        /// The Raft request.
        req: VoteRequest<TC>,
        /// The candidate's execution-layer height, when known.
        exec_height: Option<u64>,
    },
    /// A whole snapshot, installed at once.
    InstallSnapshot {
        /// The sender's vote.
        vote: VoteOf<TC>,
        /// What the snapshot covers.
        meta: SnapshotMetaOf<TC>,
        /// The snapshot bytes, as the state machine wrote them.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The leader hands leadership to the receiver.
    TransferLeader(TransferLeaderRequest<TC>),
    /// What is your execution height, health, eligibility? (Elector polling, P2P.)
    PeerStatus,
    /// Committed blocks from `from` upwards, at most `max` (Syncer, P2P).
    FetchBlocks {
        /// First height wanted.
        from: Height,
        /// At most this many blocks.
        max: u32,
    },
    /// Has the caller ever held this cluster's log? Asked by a node starting with an empty
    /// `raft_dir`, before it serves Raft: a leader that replicated to it says how far.
    MemberHistory,
    /// A membership change an operator asked a follower for, forwarded to the leader.
    /// `hops` counts forwards so far: a leader that must hand over before removing itself
    /// forwards once more, and no further.
    ChangeMembers {
        /// The change.
        change: crate::members::MemberChange,
        /// Forwards so far.
        hops: u8,
    },
    /// An operator's leadership transfer asked of a follower, forwarded to the leader.
    TransferLeadership {
        /// The target; `None` for the most caught-up eligible peer.
        to: Option<NodeId>,
        /// Transfer even to a lagging, unhealthy or paused node.
        force: bool,
    },
    /// Crash-fast failover: "my connections from `leader` closed without a goodbye; did
    /// yours?" Asked of the other voters before campaigning, so that one connection reset
    /// while the leader still reaches a quorum causes no election. Changes nothing on the
    /// receiver but what it remembers of the asker (see `RpcResponse::LeaderGone`).
    LeaderGone {
        /// The leader whose connections closed.
        leader: NodeId,
        /// The term it led.
        term: Term,
    },
    /// Sent, unanswered, by a node that closes a connection on purpose (shutdown, pool
    /// restart, a peer it presumes dead): the receiver must not read the close as a crash.
    Goodbye,
}

/// A node's view of itself, as its peers poll it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PeerState {
    /// The node's id.
    pub node_id: NodeId,
    /// Its Raft term.
    pub term: Term,
    /// Whether it is the Raft leader.
    pub is_leader: bool,
    /// Its applied head height.
    pub applied_height: Height,
    /// Term of its last Raft log entry (with the index: who can win an election).
    pub last_log_term: Term,
    /// Index of its last Raft log entry.
    pub last_log_index: u64,
    /// Its execution engine's head height.
    pub exec_height: Height,
    /// Its engine answers and is on the committed chain.
    pub healthy: bool,
    /// An operator paused it.
    pub paused: bool,
    /// It may lead (caught up, healthy, not paused).
    pub eligible: bool,
}

impl RpcRequest {
    /// Every value [`RpcRequest::kind`] returns (the `kind` label of the RPC metrics, created
    /// at 0 for each at start-up).
    pub const KINDS: [&'static str; 12] = [
        "append_entries",
        "vote",
        "pre_vote",
        "install_snapshot",
        "transfer_leader",
        "peer_status",
        "fetch_blocks",
        "member_history",
        "change_members",
        "transfer_leadership",
        "leader_gone",
        "goodbye",
    ];

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RpcRequest::AppendEntries(_) => "append_entries",
            RpcRequest::Vote { .. } => "vote",
            RpcRequest::PreVote { .. } => "pre_vote",
            RpcRequest::InstallSnapshot { .. } => "install_snapshot",
            RpcRequest::TransferLeader(_) => "transfer_leader",
            RpcRequest::PeerStatus => "peer_status",
            RpcRequest::FetchBlocks { .. } => "fetch_blocks",
            RpcRequest::MemberHistory => "member_history",
            RpcRequest::ChangeMembers { .. } => "change_members",
            RpcRequest::TransferLeadership { .. } => "transfer_leadership",
            RpcRequest::LeaderGone { .. } => "leader_gone",
            RpcRequest::Goodbye => "goodbye",
        }
    }
}

/// Everything a node can answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RpcResponse {
    /// Answer to AppendEntries.
    AppendEntries(AppendEntriesResponse<TC>),
    /// Answer to Vote or PreVote.
    Vote(VoteResponse<TC>),
    /// Answer to InstallSnapshot.
    Snapshot(SnapshotResponse<TC>),
    /// TransferLeader was handed to Raft.
    TransferLeader,
    /// Answer to PeerStatus.
    PeerStatus(PeerState),
    /// Answer to FetchBlocks: consecutive blocks from the requested height (fewer, or none,
    /// when the peer has fewer).
    Blocks(Vec<crate::Block>),
    /// Answer to MemberHistory: on a leader, the highest log index the caller acknowledged
    /// in this leader's term; `None` elsewhere, or when the caller never acknowledged one.
    MemberHistory {
        /// That index.
        matched: Option<u64>,
        /// Whether the answering node leads (only a leader knows).
        is_leader: bool,
    },
    /// Answer to ChangeMembers.
    MembersChanged(Result<crate::members::MembersReport, crate::members::MemberChangeError>),
    /// Answer to TransferLeadership: the target the leader hands over to, or why it refused.
    TransferStarted(Result<NodeId, String>),
    /// Answer to LeaderGone.
    LeaderGone {
        /// The receiver too lost every connection from that leader without a goodbye, and
        /// still follows it in that term.
        gone: bool,
        /// The receiver had already asked the same question itself (of two voters that
        /// asked each other, the smaller id campaigns).
        asking: bool,
    },
    /// The receiver could not serve the call (shutting down, not initialised, bad request).
    Error(RemoteError),
}

/// Why a peer could not serve a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteError {
    /// The receiver's Raft is shutting down or not running; try later.
    Unavailable(String),
    /// The request was not understood or not allowed.
    Refused(String),
    /// The caller is not a member of the receiver's cluster (removed, or never added).
    NotAMember(String),
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteError::Unavailable(s) => write!(f, "unavailable: {s}"),
            RemoteError::Refused(s) => write!(f, "refused: {s}"),
            RemoteError::NotAMember(s) => write!(f, "not a member: {s}"),
        }
    }
}
