//! haseq-actors: a node's moving parts.
//!
//! - `supervisor`: rebuilds actors that stop or panic, hands out their current address;
//! - `raft_core`: the RaftCore actor, owner of the openraft handle and its status;
//! - `elector`: the Elector actor, the role policy (eligibility, lease, handover);
//! - `producer`: the Producer actor, the leader's block production loop;
//! - `syncer`: the Syncer actor, fetching blocks the store lacks from peers (through P2P);
//! - `p2p`: the P2P actor (peer status exchange, block fetches, penalties) and the serving
//!   side of the node-to-node port;
//! - `exec_replayer`: the ExecReplayer actor, keeping the engine at the applied head;
//! - `members`: membership changes as operators ask for them (guards, hand-over,
//!   forwarding to the leader);
//! - `feed`: a publisher's named subscribers, kept across rebuilds of either side;
//! - `faults`: panic knobs, to test that every actor and task is rebuilt;
//! - `settings`: what a node needs to start, and the timing map onto openraft;
//! - `node`: assembles storage, transport, Raft, actors and the HTTP API;
//! - `api`: the HTTP API; `metrics`: the Prometheus recorder and metric descriptions.
//!
//! Not here: configuration files and the CLI (`haseqd`), the wire format (`haseq-messages`),
//! the disk (`haseq-storage`), sockets (`haseq-net`).

pub mod admin;
pub mod api;
pub mod api_client;
pub mod api_server;
pub mod elector;
pub mod events;
pub mod exec_replayer;
pub mod faults;
pub mod feed;
pub mod log_context;
pub mod members;
pub mod metrics;
pub mod node;
pub mod p2p;
pub mod producer;
pub mod raft_core;
pub mod settings;
pub mod stats;
pub mod supervisor;
pub mod syncer;

/// The node's openraft handle: haseq's types over the LMDB state machine.
pub type HaseqRaft = openraft::Raft<haseq_messages::TC, haseq_storage::StateMachineStore>;

/// Build the actix `System` on a multi-threaded tokio runtime, so openraft's heartbeats and
/// the HTTP server never wait behind an actor's handler on one thread.
///
/// # Errors
/// When the tokio runtime cannot be built (no threads available).
pub fn system() -> std::io::Result<actix_rt::SystemRunner> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(actix_rt::System::with_tokio_rt(move || rt))
}
