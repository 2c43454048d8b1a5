//! haseq-net: the node-to-node transport. One TCP port per node (`raft.raft_addr`) carries
//! Raft RPCs (and, later, P2P block transfer) between authenticated cluster members.
//!
//! A connection opens with a mutual HMAC-SHA256 challenge-response on the cluster's shared
//! secret, then carries length-prefixed postcard frames (`haseq_messages::wire`): requests
//! tagged with an id, answered out of order, so one connection per peer serves every
//! concurrent call. Every call has a deadline that names the peer, its address and the call.
//!
//! Not here: what the messages mean (`haseq-messages`), role or vote policy (the actors decide;
//! [`RaftHandler`] only offers a hook for it), TLS (the secret authenticates, it does not
//! encrypt: run the port on a private network).
//!
//! Modules, bottom up:
//! - `frame`: bytes <-> typed frames (u32 big-endian length + postcard), size limits;
//! - `handshake`: the mutual challenge-response and its refusals;
//! - `conn`: one authenticated client connection, calls multiplexed by id;
//! - `pool`: one connection per peer, shared, connected lazily with a bounded backoff;
//! - `client`: [`Network`], openraft's `RaftNetworkFactory`, and [`PeerClient`];
//! - `server`: [`serve`] and the [`RpcHandler`] it dispatches to;
//! - `raft_handler`: [`RaftHandler`], an [`RpcHandler`] backed by an `openraft::Raft`;
//! - `config`, `error`, `metrics`.

mod client;
mod config;
mod conn;
mod error;
mod frame;
mod handshake;
mod metrics;
mod pool;
mod ports;
mod raft_handler;
mod server;

pub use client::{ExecHeightFn, LinkCuts, Network, PeerClient};
pub use config::{NetConfig, NetConfigError};
pub use error::{NetError, NetErrorKind};
pub use frame::FrameError;
pub use handshake::{NOT_A_MEMBER, RefusalReason};
pub use metrics::{
    METRIC_PEER_AUTH_REFUSED, METRIC_PEER_LINKS_CLOSED, METRIC_RPC_ERRORS, METRIC_RPC_SECONDS,
    METRIC_RPC_SENT, describe_metrics, zero_metrics,
};
pub use ports::free_loopback_port;
pub use raft_handler::{RaftHandler, VoteCandidate, VoteGate};
pub use server::{IsMember, LinkClosed, RpcHandler, serve};

/// Limits of the transport, named so that every queue, wait and retry has a visible bound.
pub mod limits {
    use std::time::Duration;

    /// Largest frame accepted before the handshake completes: an unauthenticated peer can't
    /// make us reserve more than this (after it, `FRAME_BYTES_MAX` applies).
    pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 4 * 1024;
    /// Calls awaiting an answer on one client connection; more wait (under their deadline).
    pub const CALLS_INFLIGHT_MAX: usize = 1024;
    /// Encoded requests queued for a connection's writer task.
    pub const OUTBOX_FRAMES_MAX: usize = 256;
    /// Frames the writer hands to the socket before one flush.
    pub const WRITE_BATCH_FRAMES_MAX: usize = 64;
    /// Requests a server runs concurrently for one connection; it stops reading beyond that.
    pub const REQUESTS_INFLIGHT_MAX: usize = 256;
    /// Responses queued for a server connection's writer task.
    pub const RESPONSES_QUEUED_MAX: usize = 256;
    /// Connections a server holds at once (handshaking or authenticated).
    pub const CONNECTIONS_MAX: usize = 128;
    /// A server closes a connection that sent nothing, with no request running, this long.
    pub const CONNECTION_IDLE_MAX: Duration = Duration::from_secs(300);
    /// First wait before reconnecting to a peer whose last connect failed.
    pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(10);
    /// Longest wait before reconnecting: a restarted peer is reached again within this.
    pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(100);
    /// Longest wait between retries of a failing `accept`.
    pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
    /// Consecutive `accept` failures after which `serve` gives up and returns the error.
    pub const ACCEPT_FAILURES_MAX: u32 = 64;
    /// How long `serve` waits for its connections to close after shutdown is requested.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
}
