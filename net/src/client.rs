//! The client side: [`Network`] (openraft's network factory) and [`PeerClient`] (one peer).
//!
//! Every call has one deadline covering connect, queueing, sending and the answer:
//! `min(send_timeout, option.soft_ttl())` for small RPCs (openraft may drop the call at
//! `hard_ttl`, so we answer before it with an error that says what happened), and
//! `snapshot_timeout` for a snapshot.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use haseq_messages::wire::{RpcRequest, RpcResponse};
use haseq_messages::{NodeId, PeerNode, TC};
use openraft::RaftNetworkFactory;
use openraft::error::{RPCError, ReplicationClosed, StreamingError};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use tokio::time::Instant;

use crate::config::NetConfig;
use crate::conn::CallError;
use crate::error::{NetError, NetErrorKind};
use crate::metrics;
use crate::pool::{Lane, Pool, Slot};

/// Reads this node's execution-layer height, sent with every vote and pre-vote request so
/// that voters can refuse a lagging candidate. `None` when unknown.
pub type ExecHeightFn = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

struct Shared {
    cfg: NetConfig,
    pool: Pool,
    exec_height: RwLock<Option<ExecHeightFn>>,
    cut: LinkCuts,
}

/// The client side of the transport: a pool of authenticated connections, one per peer,
/// shared by every clone and every client it makes. Cheap to clone.
///
/// Implements openraft's `RaftNetworkFactory`; [`Network::client`] serves other callers.
#[derive(Clone)]
pub struct Network {
    shared: Arc<Shared>,
}

impl Network {
    /// A network with no connections yet; they are dialled on first use.
    pub fn new(cfg: NetConfig) -> Network {
        Network {
            shared: Arc::new(Shared {
                pool: Pool::new(cfg.clone()),
                cfg,
                exec_height: RwLock::new(None),
                cut: LinkCuts::default(),
            }),
        }
    }

    /// Set where vote and pre-vote requests read this node's execution height from
    /// (until set, they carry `None`).
    pub fn set_exec_height(&self, f: ExecHeightFn) {
        *self
            .shared
            .exec_height
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// A client for `target`, reached at `node.addr`. No connection is made until a call.
    pub fn client(&self, target: NodeId, node: &PeerNode) -> PeerClient {
        let pool = &self.shared.pool;
        PeerClient {
            rpc: pool.slot(&target, &node.addr, Lane::Rpc),
            snapshot: pool.slot(&target, &node.addr, Lane::Snapshot),
            shared: self.shared.clone(),
            target,
            addr: node.addr.clone(),
        }
    }

    /// Close and forget the connections to `target` (say, once it left the cluster).
    /// The set of peers this node's links to are cut (fault injection): calls to them fail at
    /// once as unreachable; the node's own handler drops calls from them.
    pub fn link_cuts(&self) -> LinkCuts {
        self.shared.cut.clone()
    }

    /// Close the connections to `target`.
    pub fn forget(&self, target: &NodeId) {
        self.shared.pool.forget(target);
    }

    /// Close every connection this node holds, each with a goodbye so that its peers do not
    /// take the close for a crash (see crash-fast failover in DESIGN). For shutdown: a call
    /// made afterwards dials again.
    pub async fn close_all(&self) {
        self.shared.pool.close_all().await;
    }

    /// The settings this network was made with.
    pub fn config(&self) -> &NetConfig {
        &self.shared.cfg
    }
}

impl RaftNetworkFactory<TC> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerClient {
        self.client(target, node)
    }
}

/// Calls to one peer, over the [`Network`]'s shared connection to it. Implements
/// openraft's `RaftNetworkV2` (snapshots as `Vec<u8>`).
pub struct PeerClient {
    shared: Arc<Shared>,
    target: NodeId,
    addr: String,
    rpc: Arc<Slot>,
    snapshot: Arc<Slot>,
}

impl PeerClient {
    /// The peer called.
    pub fn target(&self) -> &NodeId {
        &self.target
    }

    /// The address dialled.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Send `req` and wait for the answer, for at most `budget` (connect included).
    ///
    /// A snapshot travels on its own connection, everything else on the shared one. If the
    /// shared connection turns out to have died since its last use, the call is sent once
    /// more on a fresh one, within the same budget (every request here is idempotent).
    ///
    /// # Errors
    /// [`NetError`] naming the call, the peer and its address: unreachable, refused at the
    /// handshake, no answer within `budget`, connection lost, or the peer's own
    /// `RpcResponse::Error` (as [`NetErrorKind::Remote`]).
    pub async fn call(&self, req: RpcRequest, budget: Duration) -> Result<RpcResponse, NetError> {
        let kind = req.kind();
        metrics::rpc_sent(kind);
        let started = Instant::now();
        let result = if self.shared.cut.is_cut(&self.target) {
            Err(NetErrorKind::Connect("link cut (fault injection)".into()))
        } else {
            self.call_once_or_twice(&req, started, budget).await
        };
        let result = match result {
            Ok(RpcResponse::Error(e)) => Err(NetErrorKind::Remote(e)),
            other => other,
        };
        metrics::rpc_done(kind, started.elapsed(), result.is_ok());
        result.map_err(|kind_| {
            let e = NetError {
                peer: self.target.clone(),
                addr: self.addr.clone(),
                call: kind,
                kind: kind_,
            };
            tracing::debug!("{e}");
            e
        })
    }

    async fn call_once_or_twice(
        &self,
        req: &RpcRequest,
        started: Instant,
        budget: Duration,
    ) -> Result<RpcResponse, NetErrorKind> {
        let deadline = started + budget;
        let slot = match req {
            // Bulk transfers (snapshots, block ranges) never hold up heartbeats behind them.
            RpcRequest::InstallSnapshot { .. } | RpcRequest::FetchBlocks { .. } => &self.snapshot,
            _ => &self.rpc,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let checkout = slot.get(deadline, budget).await?;
            match checkout.conn.call(req, started, deadline).await {
                Ok(resp) => return Ok(resp),
                Err(CallError::Lost(why)) if attempt == 1 && !checkout.fresh => {
                    tracing::debug!(
                        peer = %self.target, addr = %self.addr, call = req.kind(),
                        "pooled connection was dead ({why}); sending on a new one"
                    );
                }
                Err(CallError::Lost(why)) => return Err(NetErrorKind::ConnectionLost(why)),
                Err(CallError::Timeout) => return Err(NetErrorKind::Timeout(budget)),
                Err(CallError::NotSent(why)) => return Err(NetErrorKind::Request(why)),
            }
        }
    }

    fn small_budget(&self, option: &RPCOption) -> Duration {
        self.shared.cfg.send_timeout.min(option.soft_ttl())
    }

    fn exec_height(&self) -> Option<u64> {
        let hook = self
            .shared
            .exec_height
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        hook.and_then(|f| f())
    }

    fn unexpected(&self, call: &'static str, got: &RpcResponse) -> NetError {
        NetError {
            peer: self.target.clone(),
            addr: self.addr.clone(),
            call,
            kind: NetErrorKind::Protocol(format!("{} answer", response_kind(got))),
        }
    }

    /// A small RPC as openraft sees it: call, pick the expected answer, map errors.
    async fn raft_call<T>(
        &self,
        req: RpcRequest,
        option: &RPCOption,
        action: RPCTypes,
        pick: impl FnOnce(RpcResponse) -> Result<T, RpcResponse>,
    ) -> Result<T, RPCError<TC>> {
        let call = req.kind();
        let me = &self.shared.cfg.node_id;
        let resp = self
            .call(req, self.small_budget(option))
            .await
            .map_err(|e| e.to_rpc_error(me, action))?;
        pick(resp).map_err(|other| self.unexpected(call, &other).to_rpc_error(me, action))
    }
}

fn response_kind(r: &RpcResponse) -> &'static str {
    match r {
        RpcResponse::AppendEntries(_) => "append_entries",
        RpcResponse::Vote(_) => "vote",
        RpcResponse::Snapshot(_) => "snapshot",
        RpcResponse::TransferLeader => "transfer_leader",
        RpcResponse::PeerStatus(_) => "peer_status",
        RpcResponse::Blocks(_) => "blocks",
        RpcResponse::MemberHistory { .. } => "member_history",
        RpcResponse::MembersChanged(_) => "members_changed",
        RpcResponse::TransferStarted(_) => "transfer_started",
        RpcResponse::LeaderGone { .. } => "leader_gone",
        RpcResponse::Error(_) => "error",
    }
}

impl RaftNetworkV2<TC> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TC>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TC>, RPCError<TC>> {
        self.raft_call(
            RpcRequest::AppendEntries(rpc),
            &option,
            RPCTypes::AppendEntries,
            |r| match r {
                RpcResponse::AppendEntries(a) => Ok(a),
                other => Err(other),
            },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TC>,
        option: RPCOption,
    ) -> Result<VoteResponse<TC>, RPCError<TC>> {
        let req = RpcRequest::Vote {
            req: rpc,
            exec_height: self.exec_height(),
        };
        self.raft_call(req, &option, RPCTypes::Vote, |r| match r {
            RpcResponse::Vote(v) => Ok(v),
            other => Err(other),
        })
        .await
    }

    /// A real Pre-Vote round trip: openraft's default would grant every pre-vote.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TC>,
        option: RPCOption,
    ) -> Result<VoteResponse<TC>, RPCError<TC>> {
        let req = RpcRequest::PreVote {
            req: rpc,
            exec_height: self.exec_height(),
        };
        self.raft_call(req, &option, RPCTypes::Vote, |r| match r {
            RpcResponse::Vote(v) => Ok(v),
            other => Err(other),
        })
        .await
    }

    /// The whole snapshot in one frame, on the snapshot connection, under `snapshot_timeout`
    /// (openraft's `install_snapshot_timeout` in `option` is meant for one chunk).
    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TC>,
        snapshot: SnapshotOf<TC, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TC>, StreamingError<TC>> {
        let me = self.shared.cfg.node_id.clone();
        let req = RpcRequest::InstallSnapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let budget = self.shared.cfg.snapshot_timeout;
        let resp = tokio::select! {
            r = self.call(req, budget) => r.map_err(|e| e.to_streaming_error(&me))?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        match resp {
            RpcResponse::Snapshot(s) => Ok(s),
            other => Err(self
                .unexpected("install_snapshot", &other)
                .to_streaming_error(&me)),
        }
    }

    /// Tell the target to take over. A refusal by the target (vote changed, log not yet
    /// flushed) comes back as a `Network` error carrying its reason: the wire answer has no
    /// room for openraft's typed refusal, and openraft only logs the outcome.
    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TC>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TC>, RPCError<TC>> {
        self.raft_call(
            RpcRequest::TransferLeader(req),
            &option,
            RPCTypes::TransferLeader,
            |r| match r {
                RpcResponse::TransferLeader => Ok(Ok(())),
                other => Err(other),
            },
        )
        .await
    }
}

/// Peers whose links are cut, for fault-injection tests and drills: a one-way or two-way
/// partition on a live node without touching the OS network. Cheap to clone.
#[derive(Clone, Default)]
pub struct LinkCuts(Arc<RwLock<std::collections::HashSet<NodeId>>>);

impl LinkCuts {
    /// Cut (or restore) the link to `peer`.
    pub fn set(&self, peer: &NodeId, cut: bool) {
        let mut s = self.0.write().unwrap_or_else(|e| e.into_inner());
        if cut {
            s.insert(peer.clone());
        } else {
            s.remove(peer);
        }
    }

    /// Whether the link to `peer` is cut.
    pub fn is_cut(&self, peer: &NodeId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(peer)
    }
}
