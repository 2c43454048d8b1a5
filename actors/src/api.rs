//! The node's HTTP API on `api.addr`: `/health`, `/ready`, `/status`, `/metrics`.
//!
//! Handlers run on tokio workers and reach actors through their supervised [`Slot`]s, each
//! call under a deadline, so a busy or rebuilding actor gives a 503, never a hung request.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::json;

use crate::raft_core::{GetStatus, RaftCore, RaftStatus, Role};
use crate::supervisor::Slot;

/// A follower that has not heard from its leader for this long is not ready.
const LEADER_SILENT_MS_MAX: u64 = 2_000;
/// How long an API call waits for an actor's answer.
const ACTOR_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// RaftCore's current address.
    pub raft_core: Slot<RaftCore>,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// The configured peers, for `/status`.
    pub peers: Vec<PeerInfo>,
    /// Reads the applied head and committed blocks.
    pub blocks: haseq_storage::BlockReader,
    /// The execution engine's position, from ExecReplayer.
    pub exec: tokio::sync::watch::Receiver<crate::exec_replayer::ExecStatus>,
    /// The embedded engine, for the fault knobs.
    pub embedded: Option<std::sync::Arc<haseq_engine::EmbeddedEngine>>,
    /// Bearer token that admits admin calls from beyond loopback.
    pub admin_token: Option<String>,
    /// Admin calls need the token even from loopback (`api.admin_require_token`).
    pub admin_require_token: bool,
    /// One permit per open `/events` stream (`api.max_event_subscribers`).
    pub event_slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Commit latencies of the blocks this node produced.
    pub latencies: crate::stats::LatencyLog,
    /// The Elector, for admin calls.
    pub elector: Slot<crate::elector::Elector>,
    /// The Elector's view: eligibility and peers.
    pub view: tokio::sync::watch::Receiver<crate::elector::ElectorView>,
    /// The event feed.
    pub events: tokio::sync::broadcast::Sender<crate::events::NodeEvent>,
    /// The Syncer's progress.
    pub sync: tokio::sync::watch::Receiver<Option<crate::syncer::SyncProgress>>,
    /// Membership changes.
    pub members: crate::members::MembersCtx,
    /// This node's `raft.raft_addr`, for `GET /members`.
    pub raft_addr: String,
}

/// A configured peer as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    /// The peer's id.
    pub id: String,
    /// Its node-to-node address.
    pub addr: String,
}

/// The full `/status` document.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The Raft view: role, term, leader, indexes, members.
    #[serde(flatten)]
    pub raft: RaftStatus,
    /// Height of the applied head (0 before the first block).
    pub applied_height: u64,
    /// Hash of the applied head.
    pub head_hash: String,
    /// The execution engine's head height, read back from the engine.
    pub exec_height: u64,
    /// The engine's canonical head hash, read back from the engine (all zeros for genesis):
    /// compared with the committed block at `exec_height`, it shows the engine never holds an
    /// uncommitted block as canonical.
    pub exec_hash: String,
    /// Blocks the engine is behind the applied head.
    pub exec_lag: u64,
    /// The engine's last call succeeded.
    pub exec_healthy: bool,
    /// The engine's canonical chain is not the committed one (never built on).
    pub exec_on_other_chain: bool,
    /// The engine's last problem, if any.
    pub exec_error: Option<String>,
    /// May this node lead?
    pub eligible: bool,
    /// Why not (null when eligible).
    pub ineligible_reason: Option<String>,
    /// Paused by an operator (persisted).
    pub paused: bool,
    /// Told to produce right now (leader with a valid lease, not paused).
    pub producing: bool,
    /// The highest execution height this node knows of.
    pub best_exec_height: u64,
    /// Each configured peer as this node last saw it.
    pub peer_status: Vec<crate::elector::PeerView>,
    /// The configured peers.
    pub peers: Vec<PeerInfo>,
    /// The history being fetched from peers (`{from, to, done, blocks_per_s, eta_s}`), or
    /// null while the store lacks nothing.
    pub sync: Option<crate::syncer::SyncProgress>,
    /// Learners with their address, lag (`lag_blocks`), engine height, last contact and, on
    /// the leader, the log index each has acknowledged.
    pub learners: Vec<crate::members::MemberView>,
    /// This node is no longer a member of the cluster: why (null while it is). A removed
    /// node neither campaigns nor produces.
    pub removed: Option<String>,
    /// The timing advisor: the largest round trip measured to a peer, the configured
    /// timings, the guide's values for that round trip, and a verdict (`ok`, `too_tight`,
    /// `unknown`) with its reasons. Null before the Elector's first decision.
    pub timing: Option<crate::elector::timing::TimingAdvice>,
}

/// A committed block's header, as `GET /block/{height}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BlockHeader {
    /// Its height.
    pub height: u64,
    /// Its hash.
    pub hash: String,
    /// The hash of the block before it.
    pub parent_hash: String,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    /// The node that proposed it.
    pub proposer: String,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let admin = Router::new()
        .route("/admin/engine/fault", post(crate::admin::engine_fault))
        .route(
            "/admin/transfer-leader",
            post(crate::admin::transfer_leader),
        )
        .route("/admin/pause", post(crate::admin::pause))
        .route("/admin/resume", post(crate::admin::resume))
        .route("/admin/members/learner", post(crate::admin::add_learner))
        .route("/admin/members/promote", post(crate::admin::promote))
        .route("/admin/members/remove", post(crate::admin::remove))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::admin::guard,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/members", get(members))
        .route("/metrics", get(metrics_text))
        .route("/block/{height}", get(block))
        .route("/stats/commit-latency", get(commit_latency))
        .route("/events", get(events))
        .merge(admin)
        .with_state(state)
}

async fn raft_status(state: &ApiState) -> Result<RaftStatus, Response> {
    let addr = state.raft_core.get();
    match tokio::time::timeout(ACTOR_CALL_TIMEOUT, addr.send(GetStatus)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(unavailable(&format!("RaftCore unavailable: {e}"))),
        Err(_) => Err(unavailable("RaftCore did not answer within 2 s")),
    }
}

fn unavailable(why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({ "error": why })),
    )
        .into_response()
}

async fn health() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// Ready when a leader is known and recently heard from, this node has applied everything it
/// knows committed, and its engine is within `max_exec_lag_blocks` of the cluster's head.
async fn ready(State(state): State<ApiState>) -> Response {
    let s = match raft_status(&state).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let view = state.view.borrow().clone();
    match readiness(&s, &view) {
        Ok(()) => axum::Json(json!({ "ready": true })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

/// Why the node is not ready (`GET /ready`, systemd's `READY=1`, `haseqd ctl ready`): no live
/// leader known, a leader without a quorum, its engine too far behind, or not all it knows
/// committed applied yet.
pub fn readiness(s: &RaftStatus, view: &crate::elector::ElectorView) -> Result<(), String> {
    // The leader as a peer: when did we last hear from it? (A node cut off from the cluster
    // keeps the last leader it knew; that leader's silence is what tells.)
    let leader_silent_ms = s.leader_id.as_ref().and_then(|l| {
        let p = view.peers.iter().find(|p| &p.id == l)?;
        Some(p.seen_ms_ago.unwrap_or(u64::MAX))
    });
    if s.role == Role::Shutdown {
        Err("raft is shut down".to_string())
    } else if let Some(why) = &view.removed {
        Err(format!("removed from the cluster: {why}"))
    } else if s.leader_id.is_none() {
        Err("no leader known".to_string())
    } else if s.role == Role::Leader && !view.producing && s.millis_since_quorum_ack.is_none() {
        Err("leader without a quorum acknowledgement".to_string())
    } else if let Some(ms) = leader_silent_ms.filter(|ms| *ms > LEADER_SILENT_MS_MAX) {
        Err(format!("leader not heard from for {ms} ms"))
    } else if view.exec_lag > view.max_exec_lag_blocks {
        Err(format!(
            "execution engine {} blocks behind (max_exec_lag_blocks {})",
            view.exec_lag, view.max_exec_lag_blocks
        ))
    } else if s.applied_index < s.committed_index {
        Err(format!(
            "applied index {:?} behind committed index {:?}",
            s.applied_index, s.committed_index
        ))
    } else {
        Ok(())
    }
}

async fn status(State(state): State<ApiState>) -> Response {
    let raft = match raft_status(&state).await {
        Ok(raft) => raft,
        Err(r) => return r,
    };
    let exec = state.exec.borrow().clone();
    let view = state.view.borrow().clone();
    let implied = implied_head(0, &raft);
    let (_, learners) = crate::members::members(&raft, &view, &state.raft_addr);
    let head = match state.blocks.head() {
        Ok(h) => h,
        Err(e) => return unavailable(&format!("reading the applied head: {e}")),
    };
    axum::Json(Status {
        raft,
        applied_height: head.height.0,
        head_hash: head.hash.to_string(),
        exec_height: exec.exec_height,
        exec_hash: exec.exec_hash.to_string(),
        // Against the cluster's head (a node that was down is behind on its log too), and
        // against the head read just now, so a fresh block shows as lag at once.
        exec_lag: head
            .height
            .0
            .max(view.cluster_head)
            .max(head.height.0 + implied)
            .saturating_sub(exec.exec_height),
        exec_healthy: exec.healthy,
        exec_on_other_chain: exec.on_other_chain,
        exec_error: exec.error,
        eligible: view.eligible,
        ineligible_reason: view.ineligible_reason.clone(),
        paused: view.me.paused,
        producing: view.producing,
        best_exec_height: view.best_exec_height,
        peer_status: view.peers.clone(),
        peers: state.peers.clone(),
        sync: state.sync.borrow().clone(),
        learners,
        removed: view.removed.clone(),
        timing: view.timing.clone(),
    })
    .into_response()
}

/// `GET /members`: voters and learners with address, role, lag and last contact.
async fn members(State(state): State<ApiState>) -> Response {
    let raft = match raft_status(&state).await {
        Ok(raft) => raft,
        Err(r) => return r,
    };
    let view = state.view.borrow().clone();
    let (voters, learners) = crate::members::members(&raft, &view, &state.raft_addr);
    axum::Json(json!({
        "node_id": raft.node_id,
        "leader_id": raft.leader_id,
        "membership_log_index": raft.member_addrs.log_index,
        "voters": voters,
        "learners": learners,
    }))
    .into_response()
}

/// Our applied height plus the entries the leader says are committed beyond what we applied.
fn implied_head(applied_height: u64, r: &RaftStatus) -> u64 {
    let gap = r
        .cluster_committed_index
        .unwrap_or(0)
        .saturating_sub(r.applied_index.unwrap_or(0));
    applied_height + gap
}

async fn block(State(state): State<ApiState>, Path(height): Path<String>) -> Response {
    let Ok(h) = height.parse::<u64>() else {
        let why = format!("height {height:?} is not a non-negative integer");
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": why }))).into_response();
    };
    match state.blocks.block(haseq_messages::Height(h)) {
        Ok(Some(b)) => axum::Json(BlockHeader {
            height: b.height.0,
            hash: b.hash.to_string(),
            parent_hash: b.parent_hash.to_string(),
            timestamp: b.timestamp,
            proposer: b.proposer.to_string(),
        })
        .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": format!("no committed block at height {h}") })),
        )
            .into_response(),
        Err(e) => unavailable(&format!("reading block {h}: {e}")),
    }
}

/// Server-sent events: the current state first, then every change as it happens.
async fn events(State(state): State<ApiState>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    // Held by the stream: released when the client goes.
    let Ok(slot) = state.event_slots.clone().try_acquire_owned() else {
        metrics::counter!("haseq_api_event_subscribers_refused_total").increment(1);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "error": "too many /events subscribers (api.max_event_subscribers); try again later"
            })),
        )
            .into_response();
    };
    let rx = state.events.subscribe();
    let v = state.view.borrow().clone();
    let raft = raft_status(&state).await.ok();
    let first = crate::events::NodeEvent {
        kind: "snapshot",
        node_id: v.me.node_id.to_string(),
        role: raft
            .as_ref()
            .map(|r| r.role.as_str().to_string())
            .unwrap_or_default(),
        term: v.me.term.0,
        leader_id: raft.and_then(|r| r.leader_id).map(|l| l.to_string()),
        eligible: v.eligible,
        ineligible_reason: v.ineligible_reason,
        at_unix_ms: crate::events::now_unix_ms(),
    };
    let head = futures::stream::once(async move { first });
    let rest = futures::stream::unfold((rx, slot), |(mut rx, slot)| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, (rx, slot))),
                // A slow client missed some: go on with the newest; the next event is current.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let stream = futures::StreamExt::map(futures::StreamExt::chain(head, rest), |e| {
        Ok::<_, std::convert::Infallible>(
            Event::default()
                .event(e.kind)
                .data(serde_json::to_string(&e).unwrap_or_default()),
        )
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn commit_latency(State(state): State<ApiState>) -> Response {
    axum::Json(state.latencies.report()).into_response()
}

async fn metrics_text(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
        .into_response()
}
