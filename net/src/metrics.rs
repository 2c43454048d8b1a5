//! The transport's metrics: names, help lines, and the few helpers that record them.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};

/// Counter: handshakes refused, by `reason` (see [`crate::RefusalReason`]).
pub const METRIC_PEER_AUTH_REFUSED: &str = "haseq_peer_auth_refused_total";
/// Counter: RPCs sent to peers, by `kind` (`append_entries`, `vote`, `pre_vote`, ...).
pub const METRIC_RPC_SENT: &str = "haseq_rpc_sent_total";
/// Counter: RPCs to peers that failed (no answer, unreachable, refused), by `kind`.
pub const METRIC_RPC_ERRORS: &str = "haseq_rpc_errors_total";
/// Counter: connections from members that ended, by `how` (`vanished`: closed or reset
/// without a goodbye; `goodbye`; `local`: closed by this node).
pub const METRIC_PEER_LINKS_CLOSED: &str = "haseq_peer_links_closed_total";
/// Histogram: seconds from sending an RPC to its answer or failure, by `kind`.
pub const METRIC_RPC_SECONDS: &str = "haseq_rpc_seconds";

/// Register a help line for each of the transport's metrics with the installed recorder.
/// Call once at start-up, after installing the exporter.
pub fn describe_metrics() {
    describe_counter!(
        METRIC_PEER_AUTH_REFUSED,
        Unit::Count,
        "Node-to-node handshakes refused (bad proof, not a member, wrong version or target, \
         malformed, timeout), by reason."
    );
    describe_counter!(METRIC_RPC_SENT, Unit::Count, "RPCs sent to peers, by kind.");
    describe_counter!(
        METRIC_RPC_ERRORS,
        Unit::Count,
        "RPCs to peers that failed (timeout, unreachable, connection lost, refused), by kind."
    );
    describe_counter!(
        METRIC_PEER_LINKS_CLOSED,
        Unit::Count,
        "Connections from members that ended, by how: vanished (closed or reset without a \
         goodbye), goodbye, local (closed by this node)."
    );
    describe_histogram!(
        METRIC_RPC_SECONDS,
        Unit::Seconds,
        "Time from sending an RPC to a peer to its answer or failure, by kind."
    );
}

/// Creates the transport's series at 0 for every refusal reason and RPC kind: an alert on their
/// increase then sees the first refusal or error of a node that never had one.
pub fn zero_metrics() {
    for reason in crate::RefusalReason::ALL {
        counter!(METRIC_PEER_AUTH_REFUSED, "reason" => reason.as_str()).increment(0);
    }
    for how in crate::server::LinkClosed::ALL {
        counter!(METRIC_PEER_LINKS_CLOSED, "how" => how.as_str()).increment(0);
    }
    for kind in haseq_messages::wire::RpcRequest::KINDS {
        counter!(METRIC_RPC_SENT, "kind" => kind).increment(0);
        counter!(METRIC_RPC_ERRORS, "kind" => kind).increment(0);
        let _ = histogram!(METRIC_RPC_SECONDS, "kind" => kind);
    }
}

pub(crate) fn auth_refused(reason: &'static str) {
    counter!(METRIC_PEER_AUTH_REFUSED, "reason" => reason).increment(1);
}

pub(crate) fn link_closed(how: &'static str) {
    counter!(METRIC_PEER_LINKS_CLOSED, "how" => how).increment(1);
}

pub(crate) fn rpc_sent(kind: &'static str) {
    debug_assert!(
        haseq_messages::wire::RpcRequest::KINDS.contains(&kind),
        "{kind} missing from RpcRequest::KINDS"
    );
    counter!(METRIC_RPC_SENT, "kind" => kind).increment(1);
}

pub(crate) fn rpc_done(kind: &'static str, elapsed: Duration, ok: bool) {
    histogram!(METRIC_RPC_SECONDS, "kind" => kind).record(elapsed.as_secs_f64());
    if !ok {
        counter!(METRIC_RPC_ERRORS, "kind" => kind).increment(1);
    }
}
