//! The node's HTTP API on `api.addr`: `/health`, `/ready`, `/status`, `/metrics`.
//!
//! Handlers run on tokio workers and reach actors through their supervised [`Slot`]s, each
//! call under a deadline, so a busy or rebuilding actor gives a 503, never a hung request.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::json;

use crate::raft_core::{GetStatus, RaftCore, RaftStatus, Role};
use crate::supervisor::Slot;

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
    /// The configured peers.
    pub peers: Vec<PeerInfo>,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
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

/// Ready when a leader is known and this node has applied everything it knows committed.
async fn ready(State(state): State<ApiState>) -> Response {
    let s = match raft_status(&state).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let why_not = if s.role == Role::Shutdown {
        Some("raft is shut down".to_string())
    } else if s.leader_id.is_none() {
        Some("no leader known".to_string())
    } else if s.applied_index < s.committed_index {
        Some(format!(
            "applied index {:?} behind committed index {:?}",
            s.applied_index, s.committed_index
        ))
    } else {
        None
    };
    match why_not {
        None => axum::Json(json!({ "ready": true })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

async fn status(State(state): State<ApiState>) -> Response {
    match raft_status(&state).await {
        Ok(raft) => axum::Json(Status {
            raft,
            peers: state.peers.clone(),
        })
        .into_response(),
        Err(r) => r,
    }
}

async fn metrics_text(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
        .into_response()
}
