//! The node's event feed (`GET /events`): every role, term, leader and eligibility change,
//! pushed as it happens.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

/// How many events a slow `/events` client may fall behind before it misses some.
pub const EVENTS_BUFFERED_MAX: usize = 1024;

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeEvent {
    /// `role`, `term`, `leader` or `eligibility`.
    pub kind: &'static str,
    /// The node that reports it.
    pub node_id: String,
    /// Its role after the change.
    pub role: String,
    /// Its term after the change.
    pub term: u64,
    /// The leader it knows after the change.
    pub leader_id: Option<String>,
    /// Whether it may lead.
    pub eligible: bool,
    /// Why not, when it may not.
    pub ineligible_reason: Option<String>,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new event channel.
pub fn channel() -> broadcast::Sender<NodeEvent> {
    broadcast::channel(EVENTS_BUFFERED_MAX).0
}
