//! Node assembly: storage, transport, openraft, the supervised actors and the HTTP API.
//!
//! [`start`] must run inside an actix `System` built on a multi-threaded tokio runtime
//! ([`crate::system`]): actors live on the arbiter thread; openraft, the transport and the
//! HTTP server are tokio tasks on the worker threads, so none of them waits behind an actor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use haseq_engine::{
    EmbeddedConfig, EmbeddedEngine, EngineApiClient, EngineApiConfig, ExecutionEngine,
};
use haseq_messages::{NodeId, PeerNode, TC};
use haseq_net::{NetConfig, Network};
use haseq_storage::StoreOptions;
use openraft::RaftNetworkFactory;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::HaseqRaft;
use crate::api::{ApiState, PeerInfo};
use crate::elector::{Elector, ElectorDeps, ElectorView, vote_gate};
use crate::exec_replayer::{ExecReplayer, ExecStatus};
use crate::faults::PanicKnobs;
use crate::p2p::serve::{NodeHandler, ServeFaults, ServeLimits};
use crate::p2p::{P2p, P2pDeps, PeerFeed};
use crate::producer::{Producer, ProducerDeps};
use crate::raft_core::{GetStatus, RaftCore, RaftFeed};
use crate::settings::{EngineSettings, NodeSettings, RaftTiming, openraft_config};
use crate::supervisor::{Slot, Supervisor};
use crate::syncer::{SyncProgress, Syncer, SyncerDeps};

/// How long shutdown waits for the node's tasks after telling them to stop.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// How long start-up waits for a first answer from a peer before serving the API.
const PEERS_FIRST_WAIT: Duration = Duration::from_secs(1);
/// How long [`Node::alive`] and [`Node::readiness`] wait for an actor's answer.
const LIVENESS_CALL: Duration = Duration::from_secs(1);
/// How long shutdown waits for the actors to stop.
const ACTOR_STOP_WAIT: Duration = Duration::from_secs(2);
/// The shortest time the transport gives a connection to a peer to be established.
const CONNECT_TIMEOUT_MIN: Duration = Duration::from_millis(500);
/// How long a whole snapshot transfer may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node with an empty `raft_dir` asks its peers whether their leader knew it,
/// before it serves Raft (every peer answered, or this long).
const IDENTITY_PROBE_MAX: Duration = Duration::from_secs(1);
/// Pause between two rounds of that probe.
const IDENTITY_PROBE_EVERY: Duration = Duration::from_millis(100);

/// How long the transport gives a connection (TCP connect and the handshake's round trips) to
/// be established. The guide sizes `send_timeout` at 3 x RTT_MAX, and a connection takes about
/// three round trips, so three send timeouts leave a margin of three; never below
/// [`CONNECT_TIMEOUT_MIN`]. A fixed 500 ms kept a node 300 ms away (timings sized for it) from
/// ever reconnecting, so the other survivor of a 3-node cluster could not elect.
pub fn connect_timeout(timing: &RaftTiming) -> Duration {
    (timing.send_timeout * 3).max(CONNECT_TIMEOUT_MIN)
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A port could not be bound.
    #[error("cannot listen on {key} = {addr:?}: {source}")]
    Bind {
        /// The configuration key naming the address.
        key: &'static str,
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store under `raft_dir` could not be opened.
    #[error("cannot open storage in {dir}: {reason}")]
    Storage {
        /// `raft.raft_dir`.
        dir: String,
        /// What went wrong.
        reason: String,
    },
    /// openraft refused the configuration or failed to start.
    #[error("raft: {0}")]
    Raft(String),
    /// The execution engine could not be opened.
    #[error("engine: {0}")]
    Engine(String),
    /// The metrics recorder could not be installed.
    #[error("metrics: {0}")]
    Metrics(String),
    /// `raft_dir` is empty, yet the cluster's leader has replicated its log to this node id:
    /// the node lost its state, and started afresh it would forget the votes it gave.
    #[error(
        "raft.raft_dir {dir} is empty, but the cluster's leader {leader} has replicated its log \
         to this node up to index {matched}: this node lost its Raft state (and the votes it gave); \
         restore raft_dir, or bring the machine back under a new node id (raft.join: true is for \
         an id the cluster never replicated to)"
    )]
    ForgottenIdentity {
        /// `raft.raft_dir`.
        dir: String,
        /// The leader that answered.
        leader: NodeId,
        /// The highest index it says this node acknowledged.
        matched: u64,
    },
    /// `raft_dir` is empty and `raft.join` is off, but a peer already runs a cluster that
    /// does not count this node a member: bootstrapping would start a second cluster.
    #[error(
        "raft.raft_dir {dir} is empty and raft.join is off, but peer {peer} already runs a \
         cluster without this node ({why}): a node added to a running cluster starts with \
         raft.join: true and is added with `haseqd ctl add-learner ID@HOST:PORT`"
    )]
    NotAMember {
        /// `raft.raft_dir`.
        dir: String,
        /// The peer that refused.
        peer: NodeId,
        /// Its words.
        why: String,
    },
}

impl NodeError {
    /// Whether the error is the operator's to fix in the configuration or on disk (the
    /// process exits with status 2, as for a bad configuration).
    pub fn is_operator_error(&self) -> bool {
        matches!(
            self,
            NodeError::ForgottenIdentity { .. } | NodeError::NotAMember { .. }
        )
    }
}

/// What a fresh node's peers said about it.
enum Probe {
    /// None knew it, none refused it: a new cluster may start.
    Clear,
    /// A leader replicated its log to this node id up to `.1`.
    KnewUs(NodeId, u64),
    /// A peer runs a cluster that does not count this node a member.
    Refused(NodeId, String),
}

/// Asks each peer whether its leader ever replicated to this node, and whether it counts
/// this node a member at all. Bounded by [`IDENTITY_PROBE_MAX`]; a peer that does not
/// answer counts as not knowing (a brand-new cluster starting together answers nothing).
async fn probe_identity(net: &Network, peers: &[(NodeId, String)], budget: Duration) -> Probe {
    use haseq_messages::wire::{RpcRequest, RpcResponse};
    let deadline = tokio::time::Instant::now() + IDENTITY_PROBE_MAX;
    let mut answered = HashSet::new();
    for _round in 0..(IDENTITY_PROBE_MAX.as_millis() / IDENTITY_PROBE_EVERY.as_millis() + 1) {
        let pending: Vec<&(NodeId, String)> = peers
            .iter()
            .filter(|(id, _)| !answered.contains(id))
            .collect();
        for (id, addr) in pending {
            let client = net.client(id.clone(), &PeerNode { addr: addr.clone() });
            let call = client.call(RpcRequest::MemberHistory, budget);
            match tokio::time::timeout(budget, call).await {
                Ok(Ok(RpcResponse::MemberHistory { matched, is_leader })) => {
                    answered.insert(id.clone());
                    // Index 0 is the membership every node of a new cluster writes itself.
                    if let Some(m) = matched.filter(|&m| is_leader && m > 0) {
                        return Probe::KnewUs(id.clone(), m);
                    }
                }
                Ok(Err(e)) if e.refused_as_not_a_member() => {
                    return Probe::Refused(id.clone(), e.kind.to_string());
                }
                _ => {}
            }
        }
        if answered.len() == peers.len() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(IDENTITY_PROBE_EVERY).await;
    }
    Probe::Clear
}

/// A running node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// The openraft handle.
    pub raft: HaseqRaft,
    /// RaftCore's current address.
    pub raft_core: Slot<RaftCore>,
    /// Reads the applied head and committed blocks.
    pub blocks: haseq_storage::BlockReader,
    /// The execution engine's position, as ExecReplayer reports it.
    pub exec: watch::Receiver<ExecStatus>,
    /// The embedded engine, when this node runs one (fault knobs for tests and drills).
    pub embedded: Option<Arc<EmbeddedEngine>>,
    /// The Producer's current address.
    pub producer: Slot<Producer>,
    /// ExecReplayer's current address.
    pub replayer: Slot<ExecReplayer>,
    /// The Elector's current address.
    pub elector: Slot<Elector>,
    /// The Syncer's current address.
    pub syncer: Slot<Syncer>,
    /// The P2P actor's current address.
    pub p2p: Slot<P2p>,
    /// The Syncer's progress (`None` while it has nothing to fetch).
    pub sync: watch::Receiver<Option<SyncProgress>>,
    /// Panic knobs of this node's actors and tasks (fault injection for tests).
    pub faults: PanicKnobs,
    /// What the serving side of P2P does wrong on purpose (fault injection for tests).
    pub serve_faults: ServeFaults,
    /// The Elector's view: eligibility, peers.
    pub view: watch::Receiver<ElectorView>,
    /// Cut links to peers (fault injection for tests and drills).
    pub link_cuts: haseq_net::LinkCuts,
    /// Where the node-to-node port listens.
    pub raft_addr: SocketAddr,
    /// Where the HTTP API listens.
    pub api_addr: SocketAddr,
    /// Set when a part the node cannot run without has stopped for good (the node-to-node
    /// listener gave up, the HTTP API server failed): the process should exit non-zero so
    /// that its supervisor starts it again.
    pub failed: watch::Receiver<Option<String>>,
    supervisor: Supervisor,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    net: Network,
}

/// Bind the configured ports and start the node.
///
/// # Errors
/// See [`NodeError`]: a port in use, unopenable storage, a refused Raft configuration.
pub async fn start(settings: NodeSettings) -> Result<Node, NodeError> {
    let raft_listener = TcpListener::bind(&settings.raft_addr)
        .await
        .map_err(|source| NodeError::Bind {
            key: "raft.raft_addr",
            addr: settings.raft_addr.clone(),
            source,
        })?;
    let api_listener = TcpListener::bind(&settings.api_addr)
        .await
        .map_err(|source| NodeError::Bind {
            key: "api.addr",
            addr: settings.api_addr.clone(),
            source,
        })?;
    start_with_listeners(settings, raft_listener, api_listener).await
}

/// Start the node on listeners the caller bound (tests bind port 0 first, race-free).
///
/// # Errors
/// See [`NodeError`].
pub async fn start_with_listeners(
    settings: NodeSettings,
    raft_listener: TcpListener,
    api_listener: TcpListener,
) -> Result<Node, NodeError> {
    let prometheus = crate::metrics::prometheus().map_err(NodeError::Metrics)?;
    let raft_addr = local_addr(&raft_listener, "raft.raft_addr")?;
    let api_addr = local_addr(&api_listener, "api.addr")?;
    let id = settings.node_id.clone();

    let dir = settings.raft_dir.clone();
    let fresh = !haseq_storage::has_state(&dir);
    let opts = StoreOptions {
        snap_count: settings.snap_count,
        ..StoreOptions::default()
    };
    let open_dir = dir.clone();
    // Opening LMDB creates files and may fsync: keep it off the async workers.
    let storage = tokio::task::spawn_blocking(move || haseq_storage::open(&open_dir, opts))
        .await
        .map_err(|e| NodeError::Storage {
            dir: dir.display().to_string(),
            reason: e.to_string(),
        })?
        .map_err(|e| NodeError::Storage {
            dir: dir.display().to_string(),
            reason: e.to_string(),
        })?;

    let (engine, embedded) = open_engine(&settings.engine).await?;

    let config = openraft_config(
        &settings.timing,
        settings.snapshot_threshold,
        settings.trailing_logs,
    )
    .map_err(|e| NodeError::Raft(format!("invalid timing: {e}")))?;
    let net_cfg = NetConfig {
        node_id: id.clone(),
        secret: settings.secret.clone(),
        send_timeout: settings.timing.send_timeout,
        snapshot_timeout: SNAPSHOT_TIMEOUT,
        connect_timeout: connect_timeout(&settings.timing),
    };
    net_cfg
        .validate()
        .map_err(|e| NodeError::Raft(format!("transport settings: {e}")))?;
    let book: Arc<HashMap<NodeId, String>> = Arc::new(settings.peers.iter().cloned().collect());
    let net = Network::new(net_cfg.clone());
    if fresh && !settings.join {
        // Before this node serves Raft: a leader would otherwise bring it back at once,
        // votes forgotten.
        match probe_identity(&net, &settings.peers, settings.timing.send_timeout).await {
            Probe::Clear => {}
            Probe::KnewUs(leader, matched) => {
                return Err(NodeError::ForgottenIdentity {
                    dir: dir.display().to_string(),
                    leader,
                    matched,
                });
            }
            Probe::Refused(peer, why) => {
                return Err(NodeError::NotAMember {
                    dir: dir.display().to_string(),
                    peer,
                    why,
                });
            }
        }
    }
    let (exec_tx, exec_rx) = watch::channel(ExecStatus::unknown());
    {
        // Every vote and pre-vote carries this node's execution height.
        let exec_rx = exec_rx.clone();
        net.set_exec_height(Arc::new(move || Some(exec_rx.borrow().exec_height)));
    }
    let network = AddressBook {
        inner: net.clone(),
        book: book.clone(),
    };
    let backfill = storage.backfill();
    let raft = HaseqRaft::new(
        id.clone(),
        Arc::new(config),
        network,
        storage.log,
        storage.sm,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (failed_tx, failed_rx) = watch::channel(None::<String>);
    let failed_tx = Arc::new(failed_tx);

    // The node-to-node port admits every peer that proves the cluster secret. Membership is
    // judged per request, not at the handshake: a node that missed a membership change (down
    // while node-4 was added) must still accept the new leader's replication, as Raft requires
    // of a server behind on its configuration, or it never catches up and the cluster can
    // lose its quorum. Status polls and the identity probe of a non-member are answered
    // `NotAMember` (p2p/serve.rs), and votes of a non-voter are refused (the vote gate).
    let is_member = Arc::new(|_: &NodeId| true);
    let (view_tx, view_rx) = watch::channel(ElectorView {
        max_exec_lag_blocks: settings.max_exec_lag_blocks,
        ..ElectorView::default()
    });
    let serve_faults = ServeFaults::default();
    let members_ctx = Arc::new(std::sync::OnceLock::new());
    let handed = crate::raft_core::TransferSeen::default();
    let links = crate::p2p::links::PeerLinks::default();
    let handler = Arc::new(NodeHandler {
        raft: haseq_net::RaftHandler::new(raft.clone()).with_vote_gate(vote_gate(view_rx.clone())),
        view: view_rx.clone(),
        blocks: storage.reader.clone(),
        cuts: net.link_cuts(),
        limits: ServeLimits::default(),
        faults: serve_faults.clone(),
        members: members_ctx.clone(),
        handed: handed.clone(),
        links: links.clone(),
    });
    {
        let shutdown = shutdown.clone();
        let net_cfg = net_cfg.clone();
        let failed = failed_tx.clone();
        tasks.spawn(async move {
            if let Err(e) =
                haseq_net::serve(raft_listener, net_cfg, handler, is_member, shutdown).await
            {
                tracing::error!(error = %e, "node-to-node server stopped");
                failed.send_replace(Some(format!("the node-to-node listener gave up: {e}")));
            }
        });
    }

    // openraft stopped for good (a storage error, say): the node can neither vote nor apply
    // and would only look alive. Fail, so that its supervisor restarts it on its state.
    {
        let raft = raft.clone();
        let shutdown = shutdown.clone();
        let failed = failed_tx.clone();
        tasks.spawn(async move {
            let mut rx = raft.metrics();
            loop {
                let fatal = rx
                    .borrow_watched()
                    .running_state
                    .as_ref()
                    .err()
                    .map(|e| e.to_string());
                if let Some(e) = fatal {
                    if !shutdown.is_cancelled() {
                        tracing::error!(error = %e, "Raft stopped on a fatal error");
                        failed.send_replace(Some(format!("Raft stopped: {e}")));
                    }
                    return;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
            }
        });
    }

    if fresh && settings.join {
        // `raft.join`: the cluster adds this node (or has it as a member already) and its
        // leader replicates the log to it, membership included; bootstrapping here would
        // start a second history under the same cluster.
        tracing::info!(
            dir = %settings.raft_dir.display(),
            "raft.join: waiting for the cluster's leader to replicate to this node"
        );
    } else if fresh {
        // Every node of a new cluster initialises the same membership (ids only; addresses
        // come from each node's own `raft.peers`), so the entry at index 0 is identical on
        // all of them whichever initialises first.
        let mut members = BTreeMap::new();
        members.insert(id.clone(), PeerNode::default());
        for (peer, _) in &settings.peers {
            members.insert(peer.clone(), PeerNode::default());
        }
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(
                members = settings.peers.len() + 1,
                "bootstrapped a new cluster"
            ),
            Err(e) => tracing::info!(reason = %e, "not bootstrapping: already initialised"),
        }
    } else {
        tracing::info!(dir = %settings.raft_dir.display(), "rejoining with existing state");
    }

    let supervisor = Supervisor::new(shutdown.child_token());
    let faults = PanicKnobs::default();
    let (sync_tx, sync_rx) = watch::channel(None);
    let replayer = {
        let (engine, blocks, faults) = (engine.clone(), storage.reader.clone(), faults.clone());
        let sync = sync_rx.clone();
        supervisor.start("exec_replayer", move |exit| {
            ExecReplayer::new(
                engine.clone(),
                blocks.clone(),
                exec_tx.clone(),
                faults.clone(),
                sync.clone(),
                exit,
            )
        })
    };
    let peer_feed = PeerFeed::default();
    let raft_feed = RaftFeed::replaying();
    let latencies = crate::stats::LatencyLog::default();
    let core_raft = raft.clone();
    let core_faults = faults.clone();
    let core_feed = raft_feed.clone();
    let raft_core = supervisor.start("raft_core", move |exit| {
        RaftCore::new(
            core_raft.clone(),
            core_feed.clone(),
            core_faults.clone(),
            handed.clone(),
            exit,
        )
    });
    let p2p = {
        let deps = P2pDeps {
            node_id: id.clone(),
            raft_feed: raft_feed.clone(),
            peers: settings.peers.clone(),
            network: net.clone(),
            send_timeout: settings.timing.send_timeout,
            feed: peer_feed.clone(),
            faults: faults.clone(),
            links,
            view: view_rx.clone(),
            raft_core: raft_core.clone(),
            crash_fast: settings.crash_fast_failover,
        };
        supervisor.start("p2p", move |exit| P2p::new(deps.clone(), exit))
    };
    let deps = ProducerDeps {
        node_id: id.clone(),
        raft_core: raft_core.clone(),
        engine: engine.clone(),
        blocks: storage.reader.clone(),
        exec: exec_rx.clone(),
        block_time: settings.block_time,
        strict_timestamps: matches!(settings.engine, EngineSettings::EngineApi { .. }),
        aggregator: settings.aggregator,
        latencies: latencies.clone(),
        faults: faults.clone(),
    };
    let producer = supervisor.start("producer", move |exit| Producer::new(deps.clone(), exit));
    let events = crate::events::channel();
    let elector_deps = ElectorDeps {
        node_id: id.clone(),
        raft_core: raft_core.clone(),
        raft_feed,
        peer_feed: peer_feed.clone(),
        peers: settings.peers.clone(),
        exec: exec_rx.clone(),
        blocks: storage.reader.clone(),
        producer: producer.clone(),
        view: view_tx,
        events: events.clone(),
        aggregator: settings.aggregator,
        max_exec_lag_blocks: settings.max_exec_lag_blocks,
        handoff_after: settings.handoff_after,
        unhealthy_leader_grace: settings.unhealthy_leader_grace,
        leader_lease_timeout: settings.timing.leader_lease_timeout,
        election_timeout: settings.timing.election_timeout,
        timing: settings.timing,
        pause_file: settings.raft_dir.join("paused"),
        faults: faults.clone(),
    };
    let elector = supervisor.start("elector", move |exit| {
        Elector::new(elector_deps.clone(), exit)
    });
    let syncer_deps = SyncerDeps {
        blocks: storage.reader.clone(),
        backfill: backfill.clone(),
        exec: exec_rx.clone(),
        p2p: p2p.clone(),
        feed: peer_feed.clone(),
        progress: sync_tx,
        faults: faults.clone(),
    };
    let syncer = supervisor.start("syncer", move |exit| Syncer::new(syncer_deps.clone(), exit));
    let members = crate::members::MembersCtx {
        node_id: id.clone(),
        raft_core: raft_core.clone(),
        elector: elector.clone(),
        p2p: p2p.clone(),
        view: view_rx.clone(),
    };
    // Forwarded membership changes are served from now on.
    let _ = members_ctx.set(members.clone());

    metrics::gauge!("haseq_up").set(1.0);
    let upkeep = prometheus.clone();
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            // Histograms are drained on upkeep; without it they'd grow for ever.
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => upkeep.run_upkeep(),
                }
            }
        });
    }

    // Don't report status before the node has heard from a peer (bounded): a node that was
    // down would otherwise look caught up against its own stale head for a moment.
    let mut heard = view_rx.clone();
    let _ = tokio::time::timeout(PEERS_FIRST_WAIT, heard.wait_for(|v| v.peers_heard)).await;

    let peers = settings
        .peers
        .iter()
        .map(|(id, addr)| PeerInfo {
            id: id.to_string(),
            addr: addr.clone(),
        })
        .collect();
    let app = crate::api::router(ApiState {
        raft_core: raft_core.clone(),
        prometheus,
        peers,
        blocks: storage.reader.clone(),
        exec: exec_rx.clone(),
        embedded: embedded.clone(),
        admin_token: settings.admin_token.clone(),
        admin_require_token: settings.admin_require_token,
        event_slots: Arc::new(tokio::sync::Semaphore::new(
            settings.api_limits.max_event_subscribers,
        )),
        latencies,
        elector: elector.clone(),
        view: view_rx.clone(),
        events: events.clone(),
        sync: sync_rx.clone(),
        members,
        raft_addr: raft_addr.to_string(),
    });
    let blocks = storage.reader;
    {
        let shutdown = shutdown.clone();
        let api_limits = settings.api_limits;
        tasks.spawn(async move {
            crate::api_server::serve(api_listener, app, api_limits, shutdown.clone()).await;
            if !shutdown.is_cancelled() {
                tracing::error!("HTTP API stopped");
                failed_tx.send_replace(Some("the HTTP API server stopped".into()));
            }
        });
    }
    tracing::info!(node = %id, raft = %raft_addr, api = %api_addr, "node started");

    Ok(Node {
        id,
        raft,
        raft_core,
        blocks,
        exec: exec_rx,
        embedded,
        producer,
        replayer,
        elector,
        syncer,
        p2p,
        sync: sync_rx,
        faults,
        serve_faults,
        view: view_rx,
        link_cuts: net.link_cuts(),
        raft_addr,
        api_addr,
        failed: failed_rx,
        supervisor,
        shutdown,
        tasks,
        net,
    })
}

/// Open the configured engine. The embedded one opens LMDB: off the async workers.
async fn open_engine(
    e: &EngineSettings,
) -> Result<(Arc<dyn ExecutionEngine>, Option<Arc<EmbeddedEngine>>), NodeError> {
    match e {
        EngineSettings::Embedded {
            data_dir,
            txs_per_block,
            tx_bytes,
            faults,
        } => {
            let mut cfg = EmbeddedConfig::new(data_dir.clone());
            cfg.txs_per_block = *txs_per_block;
            cfg.tx_bytes = *tx_bytes;
            cfg.faults = *faults;
            let dir = data_dir.display().to_string();
            let engine = tokio::task::spawn_blocking(move || EmbeddedEngine::open(cfg))
                .await
                .map_err(|e| NodeError::Engine(format!("opening {dir}: {e}")))?
                .map_err(|e| NodeError::Engine(format!("opening {dir}: {e}")))?;
            let engine = Arc::new(engine);
            Ok((engine.clone(), Some(engine)))
        }
        EngineSettings::EngineApi { url, jwt_secret } => {
            let client = EngineApiClient::new(EngineApiConfig::new(url.clone(), *jwt_secret))
                .map_err(|e| NodeError::Engine(format!("engine.url = {url:?}: {e}")))?;
            Ok((Arc::new(client), None))
        }
    }
}

fn local_addr(l: &TcpListener, key: &'static str) -> Result<SocketAddr, NodeError> {
    l.local_addr().map_err(|source| NodeError::Bind {
        key,
        addr: String::new(),
        source,
    })
}

impl Node {
    /// Graceful hand-over before a shutdown: stop producing and, on a leader, transfer
    /// leadership to the most caught-up eligible peer and wait (bounded by `deadline`) until it
    /// leads. Returns the new leader when the hand-over was seen to complete.
    pub async fn handover(&self, deadline: Duration) -> Option<NodeId> {
        let to = match self.elector.get().send(crate::elector::Handover).await {
            Ok(Some(to)) => to,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "Elector unavailable; shutting down without hand-over");
                return None;
            }
        };
        let mut rx = self.raft.metrics();
        let until = tokio::time::Instant::now() + deadline;
        loop {
            {
                let m = rx.borrow_watched();
                if m.current_leader.as_ref() == Some(&to)
                    && m.state != openraft::ServerState::Leader
                {
                    tracing::info!(to = %to, "leadership handed over");
                    return Some(to);
                }
            }
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    tracing::warn!(to = %to, "hand-over not seen within {deadline:?}; shutting down anyway");
                    return None;
                }
            }
        }
    }

    /// Why the node is not ready (as `GET /ready` says), or `Ok` when it is.
    pub async fn readiness(&self) -> Result<(), String> {
        let s = tokio::time::timeout(LIVENESS_CALL, self.raft_core.get().send(GetStatus))
            .await
            .map_err(|_| "RaftCore did not answer".to_string())?
            .map_err(|e| format!("RaftCore unavailable: {e}"))?;
        crate::api::readiness(&s, &self.view.borrow())
    }

    /// Whether RaftCore and the Elector both answer a message within [`LIVENESS_CALL`]
    /// (systemd's watchdog is fed only then); `Err` names the one that did not.
    pub async fn alive(&self) -> Result<(), String> {
        tokio::time::timeout(LIVENESS_CALL, self.raft_core.get().send(GetStatus))
            .await
            .map_err(|_| format!("RaftCore did not answer within {LIVENESS_CALL:?}"))?
            .map_err(|e| format!("RaftCore unavailable: {e}"))?;
        tokio::time::timeout(
            LIVENESS_CALL,
            self.elector.get().send(crate::elector::GetView),
        )
        .await
        .map_err(|_| format!("the Elector did not answer within {LIVENESS_CALL:?}"))?
        .map_err(|e| format!("the Elector unavailable: {e}"))?;
        Ok(())
    }

    /// Resolves with the reason once a part the node cannot run without has failed for good.
    pub async fn failure(&self) -> String {
        let mut rx = self.failed.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The sender lives as long as the node's tasks; gone means they all ended.
            Err(_) => std::future::pending().await,
        }
    }

    /// How often each of this node's actors has been rebuilt since it started.
    pub fn restarts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.supervisor.restarts()
    }

    /// Stop the node: tell every part to stop, then wait for them, bounded.
    pub async fn shutdown(self) {
        let started = std::time::Instant::now();
        let ms = |since: std::time::Instant| since.elapsed().as_millis() as u64;
        // Actors first: the Producer stops proposing and ExecReplayer lets go of the engine.
        self.supervisor.shutdown(ACTOR_STOP_WAIT).await;
        let actors_ms = ms(started);
        self.shutdown.cancel();
        let t = std::time::Instant::now();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let raft_ms = ms(t);
        // Closed on purpose: each peer is told, so that none takes this for a crash and
        // campaigns at once (crash-fast failover).
        let t = std::time::Instant::now();
        self.net.close_all().await;
        let goodbye_ms = ms(t);
        self.tasks.close();
        let t = std::time::Instant::now();
        if tokio::time::timeout(SHUTDOWN_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("node tasks did not stop within {SHUTDOWN_WAIT:?}");
        }
        metrics::gauge!("haseq_up").set(0.0);
        tracing::info!(
            actors_ms,
            raft_ms,
            goodbye_ms,
            tasks_ms = ms(t),
            total_ms = ms(started),
            "node stopped"
        );
    }
}

/// Resolves a member's address from this node's own `raft.peers` first: membership entries
/// carry no addresses (see bootstrap above), and the operator's list is what this node can
/// reach.
#[derive(Clone)]
struct AddressBook {
    inner: Network,
    book: Arc<HashMap<NodeId, String>>,
}

impl RaftNetworkFactory<TC> for AddressBook {
    type Network = <Network as RaftNetworkFactory<TC>>::Network;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> Self::Network {
        let node = match self.book.get(&target) {
            Some(addr) => PeerNode { addr: addr.clone() },
            None => node.clone(),
        };
        self.inner.new_client(target, &node).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_timeout_follows_send_timeout_with_a_floor() {
        let guide = RaftTiming::default();
        assert_eq!(connect_timeout(&guide), Duration::from_millis(600));
        // Timings sized for 600 ms RTT (send = 3 x RTT_MAX) allow a handshake of 3 round trips.
        let wide = RaftTiming {
            send_timeout: Duration::from_millis(1800),
            ..guide
        };
        assert_eq!(connect_timeout(&wide), Duration::from_millis(5400));
        let tight = RaftTiming {
            send_timeout: Duration::from_millis(20),
            ..guide
        };
        assert_eq!(connect_timeout(&tight), CONNECT_TIMEOUT_MIN);
    }
}
