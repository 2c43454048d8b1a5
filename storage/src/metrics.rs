//! The storage metrics, recorded through the `metrics` facade (the node installs the
//! Prometheus exporter).

/// Counter: proposals the state machine rejected (stale height or wrong parent).
pub const PROPOSALS_REJECTED_TOTAL: &str = "haseq_proposals_rejected_total";
/// Gauge: height of the applied head.
pub const APPLIED_HEIGHT: &str = "haseq_applied_height";
/// Counter: snapshots built.
pub const SNAPSHOT_BUILDS_TOTAL: &str = "haseq_snapshot_builds_total";
/// Counter: snapshots installed (received from a leader).
pub const SNAPSHOT_INSTALLS_TOTAL: &str = "haseq_snapshot_installs_total";
/// Histogram: time from a log append's start to its durable commit, in seconds.
pub const LOG_APPEND_SECONDS: &str = "haseq_log_append_seconds";

/// Registers the help line and unit of every storage metric. Call once at node start, after
/// the exporter is installed.
pub fn describe_metrics() {
    ::metrics::describe_counter!(
        PROPOSALS_REJECTED_TOTAL,
        "Block proposals the state machine rejected: not at head + 1, or not on the head's hash."
    );
    ::metrics::describe_gauge!(APPLIED_HEIGHT, "Height of the applied chain head.");
    ::metrics::describe_counter!(SNAPSHOT_BUILDS_TOTAL, "Raft snapshots built by this node.");
    ::metrics::describe_counter!(
        SNAPSHOT_INSTALLS_TOTAL,
        "Raft snapshots installed on this node (received from a leader)."
    );
    ::metrics::describe_histogram!(
        LOG_APPEND_SECONDS,
        ::metrics::Unit::Seconds,
        "Time from a Raft log append's start to its durable commit (one write transaction and one fsync)."
    );
}

/// Creates the storage counters and the log-append histogram at 0 (nothing rejected, built,
/// installed or appended yet), so that an alert on their increase sees the first event.
pub fn zero_metrics() {
    for name in [
        PROPOSALS_REJECTED_TOTAL,
        SNAPSHOT_BUILDS_TOTAL,
        SNAPSHOT_INSTALLS_TOTAL,
    ] {
        ::metrics::counter!(name).increment(0);
    }
    let _ = ::metrics::histogram!(LOG_APPEND_SECONDS);
}
