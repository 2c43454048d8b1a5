//! Shared test fixtures: configs, a recording fake handler, a server guard.
#![allow(dead_code, unreachable_pub)]

pub mod memstore;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haseq_messages::wire::{RemoteError, RpcRequest, RpcResponse};
use haseq_messages::{NodeId, PeerNode, TC};
use haseq_net::{IsMember, NetConfig, Network, PeerClient, RpcHandler, serve};
use openraft::RaftNetworkFactory;
use openraft::raft::{AppendEntriesResponse, SnapshotResponse, VoteResponse};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &[u8] = b"cluster secret for tests";

/// A config for `node` with short deadlines, so failing tests fail fast.
pub fn config(node: &str, secret: &[u8]) -> NetConfig {
    NetConfig {
        node_id: NodeId::from(node),
        secret: Arc::new(secret.to_vec()),
        send_timeout: Duration::from_millis(500),
        snapshot_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
    }
}

/// What the fake handler saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub from: NodeId,
    pub kind: &'static str,
    pub exec_height: Option<u64>,
    pub data_len: usize,
}

/// Records each request and answers it, except requests of the kinds in `hang_on`, which
/// it never answers.
#[derive(Default)]
pub struct FakeHandler {
    pub seen: Mutex<Vec<Seen>>,
    pub hang_on: Vec<&'static str>,
}

impl FakeHandler {
    /// Answers nothing at all.
    pub fn hanging() -> FakeHandler {
        FakeHandler {
            hang_on: vec![
                "append_entries",
                "vote",
                "pre_vote",
                "install_snapshot",
                "transfer_leader",
            ],
            ..Default::default()
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl RpcHandler for FakeHandler {
    async fn handle(&self, from: NodeId, req: RpcRequest) -> RpcResponse {
        let kind = req.kind();
        let (exec_height, data_len) = match &req {
            RpcRequest::Vote { exec_height, .. } | RpcRequest::PreVote { exec_height, .. } => {
                (*exec_height, 0)
            }
            RpcRequest::InstallSnapshot { data, .. } => (None, data.len()),
            _ => (None, 0),
        };
        self.seen.lock().unwrap().push(Seen {
            from,
            kind,
            exec_height,
            data_len,
        });
        if self.hang_on.contains(&kind) {
            std::future::pending::<()>().await;
        }
        match req {
            RpcRequest::AppendEntries(_) => {
                RpcResponse::AppendEntries(AppendEntriesResponse::Success)
            }
            // Grant votes, refuse pre-votes: the client must see the server's answer,
            // not openraft's default grant.
            RpcRequest::Vote { req, .. } => {
                RpcResponse::Vote(VoteResponse::new(req.vote, req.last_log_id, true))
            }
            RpcRequest::PreVote { req, .. } => {
                RpcResponse::Vote(VoteResponse::new(req.vote, req.last_log_id, false))
            }
            RpcRequest::InstallSnapshot { vote, .. } => {
                RpcResponse::Snapshot(SnapshotResponse::new(vote))
            }
            RpcRequest::TransferLeader(_) => RpcResponse::TransferLeader,
            RpcRequest::PeerStatus => RpcResponse::PeerStatus(Default::default()),
            RpcRequest::MemberHistory => RpcResponse::MemberHistory {
                matched: None,
                is_leader: false,
            },
            RpcRequest::FetchBlocks { .. } => RpcResponse::Blocks(Vec::new()),
            RpcRequest::LeaderGone { .. } => RpcResponse::LeaderGone {
                gone: false,
                asking: false,
            },
            RpcRequest::Goodbye => RpcResponse::Error(RemoteError::Refused("goodbye".into())),
            RpcRequest::ChangeMembers { .. } | RpcRequest::TransferLeadership { .. } => {
                RpcResponse::Error(RemoteError::Refused("no admin calls here".into()))
            }
        }
    }
}

/// A running `serve`, stopped on drop (or explicitly with `stop`).
pub struct Server {
    pub addr: SocketAddr,
    pub handler: Arc<FakeHandler>,
    /// Connections that proved the secret and reached the membership check.
    pub authenticated: Arc<AtomicUsize>,
    pub token: CancellationToken,
    pub task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Serve as `node` on `addr` ("127.0.0.1:0" for a fresh port); members are `members`.
    pub async fn start(
        node: &str,
        secret: &[u8],
        addr: &str,
        members: &[&str],
        handler: FakeHandler,
    ) -> Server {
        let listener = TcpListener::bind(addr).await.expect("bind");
        Self::start_on(listener, node, secret, members, handler)
    }

    pub fn start_on(
        listener: TcpListener,
        node: &str,
        secret: &[u8],
        members: &[&str],
        handler: FakeHandler,
    ) -> Server {
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(handler);
        let authenticated = Arc::new(AtomicUsize::new(0));
        let members: Vec<NodeId> = members.iter().map(|m| NodeId::from(*m)).collect();
        let count = authenticated.clone();
        let is_member: IsMember = Arc::new(move |id: &NodeId| {
            count.fetch_add(1, Ordering::SeqCst);
            members.contains(id)
        });
        let token = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            config(node, secret),
            handler.clone(),
            is_member,
            token.clone(),
        ));
        Server {
            addr,
            handler,
            authenticated,
            token,
            task: Some(task),
        }
    }

    pub fn authenticated(&self) -> usize {
        self.authenticated.load(Ordering::SeqCst)
    }

    /// Cancel and wait for `serve` to return; panics if it takes longer than `within`.
    pub async fn stop(mut self, within: Duration) -> Duration {
        let started = tokio::time::Instant::now();
        self.token.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(within, task)
            .await
            .unwrap_or_else(|_| panic!("serve still running {within:?} after cancel"))
            .expect("serve panicked")
            .expect("serve failed");
        started.elapsed()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A client network for `me`, and its client for `target` at `addr`.
pub async fn client(
    me: &str,
    secret: &[u8],
    target: &str,
    addr: SocketAddr,
) -> (Network, PeerClient) {
    client_with(config(me, secret), target, addr).await
}

pub async fn client_with(cfg: NetConfig, target: &str, addr: SocketAddr) -> (Network, PeerClient) {
    let mut net = Network::new(cfg);
    let c = net
        .new_client(
            NodeId::from(target),
            &PeerNode {
                addr: addr.to_string(),
            },
        )
        .await;
    (net, c)
}

/// The openraft type config, for turbofish-free helpers.
pub type C = TC;
