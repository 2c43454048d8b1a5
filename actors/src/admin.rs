//! Admin calls on the HTTP API: accepted from loopback, or from anywhere with the bearer token
//! in `api.admin_token_file`; otherwise 403.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use haseq_messages::NodeId;
use haseq_messages::members::MemberChange;
use serde::Deserialize;
use serde_json::json;

use crate::api::ApiState;

/// Refuse an admin call that is neither from loopback nor carries the admin token.
pub async fn guard(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if (peer.ip().is_loopback() && !state.admin_require_token) || bearer_ok(&state, &req) {
        return under_deadline(req, next).await;
    }
    let why = match (state.admin_token.is_some(), state.admin_require_token) {
        (true, true) => "admin calls need the admin bearer token (api.admin_require_token is on)",
        (true, false) => "admin calls need a loopback client or the admin bearer token",
        (false, true) => {
            "admin calls are refused: api.admin_require_token is on (the default when api.addr is \
             not loopback) and no api.admin_token_file is configured"
        }
        (false, false) => {
            "admin calls are accepted from loopback only (no api.admin_token_file configured)"
        }
    };
    (StatusCode::FORBIDDEN, Json(json!({ "error": why }))).into_response()
}

/// The longest a membership change may take to answer: the forward to the leader (25 s, see
/// `p2p::FORWARD_TIMEOUT_FIRST`) and a little more.
const MEMBERS_DEADLINE: Duration = Duration::from_secs(30);
/// The longest any other admin call may take.
const ADMIN_DEADLINE: Duration = Duration::from_secs(10);

/// Every admin call answers within its deadline: 503 when it did not (what it asked may still
/// happen; the answer says so).
async fn under_deadline(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let deadline = if path.starts_with("/admin/members/") {
        MEMBERS_DEADLINE
    } else {
        ADMIN_DEADLINE
    };
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(path = %path, ?deadline, "admin call not answered within its deadline");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "error": format!(
                        "{path}: no answer within {deadline:?}; it may still take effect: check /status or /members before trying again"
                    )
                })),
            )
                .into_response()
        }
    }
}

fn bearer_ok(state: &ApiState, req: &Request) -> bool {
    let (Some(token), Some(given)) = (
        state.admin_token.as_deref(),
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let Some(given) = given.strip_prefix("Bearer ") else {
        return false;
    };
    constant_time_eq(token.as_bytes(), given.trim().as_bytes())
}

/// Compare without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Body of `POST /admin/engine/fault`; a missing field is cleared, so `{}` clears all.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// Delay per imported block, e.g. `"200ms"`.
    pub delay_per_block: Option<String>,
    /// Fail every engine call.
    pub fail: Option<bool>,
    /// Drop the newest N blocks on the engine's next restart.
    pub lose_newest_on_restart: Option<u64>,
}

/// `POST /admin/engine/fault`: set the embedded engine's fault knobs (tests and drills).
pub async fn engine_fault(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    let bad =
        |why: String| (StatusCode::BAD_REQUEST, Json(json!({ "error": why }))).into_response();
    let req: FaultRequest = if body.iter().all(|b| b.is_ascii_whitespace()) {
        FaultRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return bad(format!(
                    "body: {e}; expected {{\"delay_per_block\": \"200ms\", \"fail\": false, \"lose_newest_on_restart\": 50}}"
                ));
            }
        }
    };
    let delay = match req.delay_per_block.as_deref() {
        None => Duration::ZERO,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) => d,
            Err(e) => return bad(format!("delay_per_block = {s:?}: {e} (e.g. \"200ms\")")),
        },
    };
    let Some(engine) = state.embedded.as_ref() else {
        return (
            StatusCode::CONFLICT,
            Json(json!({ "error": "fault knobs exist on the embedded engine only (engine.kind: embedded)" })),
        )
            .into_response();
    };
    let faults = haseq_engine::Faults {
        delay_per_block: delay,
        fail: req.fail.unwrap_or(false),
        lose_newest_on_restart: req.lose_newest_on_restart.unwrap_or(0),
    };
    match engine.set_faults(faults).await {
        Ok(()) => {
            tracing::warn!(?faults, "engine fault knobs set through the admin API");
            Json(json!({
                "delay_per_block": humantime::format_duration(faults.delay_per_block).to_string(),
                "fail": faults.fail,
                "lose_newest_on_restart": faults.lose_newest_on_restart,
            }))
            .into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}

/// Body of `POST /admin/transfer-leader`, `/admin/pause`, `/admin/resume`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminRequest {
    /// Transfer target; the best peer when absent.
    pub to: Option<String>,
    /// Override a guard.
    #[serde(default)]
    pub force: bool,
}

fn parse_admin(body: &[u8]) -> Result<AdminRequest, String> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(AdminRequest::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| format!("body: {e}; expected {{\"to\": \"node-2\", \"force\": false}}"))
}

fn bad_request(why: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": why }))).into_response()
}

fn refused(why: String) -> Response {
    (StatusCode::CONFLICT, Json(json!({ "error": why }))).into_response()
}

fn elector_down(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": format!("Elector unavailable: {e}") })),
    )
        .into_response()
}

/// `POST /admin/transfer-leader`: hand leadership to `to` or the best peer; a lagging,
/// unhealthy or paused target is refused (409) unless `force`. Sent to a follower, it is
/// forwarded to the leader and the answer names it (`via`); 503 when no leader answers.
pub async fn transfer_leader(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    let req = match parse_admin(&body) {
        Ok(r) => r,
        Err(why) => return bad_request(why),
    };
    let to = req.to.map(haseq_messages::NodeId);
    match crate::members::transfer(&state.members, to, req.force, false).await {
        Ok(t) => Json(json!({
            "transferring_to": t.to.to_string(),
            "via": t.via.map(|v| v.to_string()),
        }))
        .into_response(),
        Err(crate::members::TransferFailed::Refused(why)) => refused(why),
        Err(crate::members::TransferFailed::Unavailable(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": why })),
        )
            .into_response(),
    }
}

/// `POST /admin/pause`: stop this node from producing (persisted) until resumed; refused
/// (409) when no other node could lead, unless `force`.
pub async fn pause(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    let req = match parse_admin(&body) {
        Ok(r) => r,
        Err(why) => return bad_request(why),
    };
    match state
        .elector
        .get()
        .send(crate::elector::Pause { force: req.force })
        .await
    {
        Ok(Ok(changed)) => Json(json!({ "paused": true, "changed": changed })).into_response(),
        Ok(Err(why)) => refused(why.to_string()),
        Err(e) => elector_down(e),
    }
}

/// `POST /admin/resume`: let this node produce again.
pub async fn resume(State(state): State<ApiState>) -> Response {
    match state.elector.get().send(crate::elector::Resume).await {
        Ok(Ok(changed)) => Json(json!({ "paused": false, "changed": changed })).into_response(),
        Ok(Err(why)) => refused(why.to_string()),
        Err(e) => elector_down(e),
    }
}

/// Body of `POST /admin/members/{learner,promote,remove}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    /// The member's node id.
    pub id: String,
    /// Its node-to-node `host:port` (learner only).
    pub addr: Option<String>,
    /// Override the lag guard (promote) or the quorum guard (remove).
    #[serde(default)]
    pub force: bool,
}

fn parse_member(body: &[u8], example: &str) -> Result<MemberRequest, String> {
    serde_json::from_slice(body).map_err(|e| format!("body: {e}; expected {example}"))
}

/// Run a membership change here or at the leader, and answer as the API does: 200 with the
/// membership after it, 400 for a request that makes no sense, 409 for a refusal (`force`
/// overrides the guards; a promotion refused for lag carries `lag_blocks`), 503 when no
/// leader could be reached.
async fn member_change(
    state: &ApiState,
    change: haseq_messages::members::MemberChange,
) -> Response {
    use haseq_messages::members::MemberChangeError as E;
    match crate::members::change(&state.members, change, 0).await {
        Ok(report) => Json(json!(report)).into_response(),
        Err(e @ E::Invalid(_)) => bad_request(e.to_string()),
        Err(E::Refused { why, lag_blocks }) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": why, "lag_blocks": lag_blocks })),
        )
            .into_response(),
        Err(e @ E::NotLeader { .. }) => {
            let leader = match &e {
                E::NotLeader { leader, .. } => leader.clone(),
                _ => None,
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": e.to_string(), "leader_id": leader })),
            )
                .into_response()
        }
        Err(e @ E::Unavailable(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

/// `POST /admin/members/learner {"id": "node-4", "addr": "10.0.0.4:5001"}`.
pub async fn add_learner(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    let example = r#"{"id": "node-4", "addr": "10.0.0.4:5001"}"#;
    let req = match parse_member(&body, example) {
        Ok(r) => r,
        Err(why) => return bad_request(why),
    };
    let Some(addr) = req.addr else {
        return bad_request(format!("body: addr is missing; expected {example}"));
    };
    let change = MemberChange::AddLearner {
        id: NodeId(req.id),
        addr,
    };
    member_change(&state, change).await
}

/// The `id` and `force` of a promote or remove body (`what`), which takes no `addr`.
fn id_and_force(body: &[u8], what: &str, example: &str) -> Result<(NodeId, bool), String> {
    let req = parse_member(body, example)?;
    if req.addr.is_some() {
        return Err(format!(
            "body: addr belongs to /admin/members/learner, not {what}"
        ));
    }
    Ok((NodeId(req.id), req.force))
}

/// `POST /admin/members/promote {"id": "node-4", "force": false}`.
pub async fn promote(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    match id_and_force(&body, "promote", r#"{"id": "node-4", "force": false}"#) {
        Ok((id, force)) => member_change(&state, MemberChange::Promote { id, force }).await,
        Err(why) => bad_request(why),
    }
}

/// `POST /admin/members/remove {"id": "node-1"}`.
pub async fn remove(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    match id_and_force(&body, "remove", r#"{"id": "node-1", "force": false}"#) {
        Ok((id, force)) => member_change(&state, MemberChange::Remove { id, force }).await,
        Err(why) => bad_request(why),
    }
}
