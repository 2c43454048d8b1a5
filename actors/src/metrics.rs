//! The node's Prometheus metrics: one recorder per process, every metric described.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for latencies, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use.
///
/// # Errors
/// When another metrics recorder was installed in this process first.
pub fn prometheus() -> Result<PrometheusHandle, String> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    // One installer at a time: a thread that lost the race to a winner still describing the
    // metrics would otherwise find no handle yet (seen with nodes started on parallel tests).
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS_SECONDS)
        .map_err(|e| format!("prometheus buckets: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_ok() {
        describe_all();
        zero_all();
        let _ = HANDLE.set(handle);
    }
    HANDLE
        .get()
        .cloned()
        .ok_or_else(|| "another metrics recorder is installed in this process".to_string())
}

/// Register the help line of every metric the node exports.
fn describe_all() {
    haseq_storage::describe_metrics();
    haseq_net::describe_metrics();
    haseq_engine::describe_metrics();
    describe_gauge!(
        "haseq_role",
        "1 for the node's current Raft role (label role), else 0"
    );
    describe_gauge!(
        "haseq_is_leader",
        "1 while this node is the Raft leader, else 0"
    );
    describe_gauge!("haseq_term", "Current Raft term");
    describe_counter!(
        "haseq_crash_fast_total",
        Unit::Count,
        "Crash-fast failover attempts after the leader's connections closed without a goodbye, \
         by outcome (campaigned, no_quorum, deferred, stale, ineligible)"
    );
    describe_gauge!(
        "haseq_timing_too_tight",
        "1 while a configured Raft timing is below the operator guide's rule for the largest \
         round trip measured to a peer (see /status timing, haseqd ctl tune)"
    );
    describe_gauge!(
        "haseq_committed_index",
        Unit::Count,
        "Highest Raft log index known committed"
    );
    describe_gauge!(
        "haseq_applied_index",
        Unit::Count,
        "Highest Raft log index applied to the state machine"
    );
    describe_gauge!(
        "haseq_last_log_index",
        Unit::Count,
        "Highest Raft log index in the local log"
    );
    describe_counter!(
        "haseq_leader_changes_total",
        "Times this node saw a new leader"
    );
    describe_counter!(
        "haseq_elections_started_total",
        "Times this node became a candidate"
    );
    describe_counter!("haseq_elections_won_total", "Times this node became leader");
    describe_gauge!(
        "haseq_peer_rtt_seconds",
        Unit::Seconds,
        "Round-trip time of the last status poll to each peer (label peer)"
    );
    describe_gauge!(
        "haseq_sync_remaining_blocks",
        Unit::Count,
        "Historical blocks the Syncer still has to fetch from peers (0 when idle)"
    );
    describe_counter!(
        "haseq_p2p_peer_penalties_total",
        "Times a peer served blocks that broke a rule and was banned from block requests (labels peer, reason)"
    );
    describe_counter!(
        "haseq_p2p_blocks_served_total",
        Unit::Count,
        "Blocks this node served to peers"
    );
    describe_counter!(
        "haseq_p2p_serve_refused_total",
        "Block requests refused for a peer's concurrency or rate limit (label peer)"
    );
    describe_counter!(
        "haseq_task_panics_total",
        "Tasks that panicked and restarted their actor (label task)"
    );
    describe_counter!(
        "haseq_actor_restarts_total",
        "Actors rebuilt by the supervisor after they stopped or panicked (label actor)"
    );
    describe_gauge!("haseq_up", "1 while the node is running");
    describe_gauge!(
        "haseq_exec_height",
        Unit::Count,
        "The execution engine's head height, read back from the engine"
    );
    describe_gauge!(
        "haseq_exec_lag_blocks",
        Unit::Count,
        "Blocks the execution engine is behind the applied head"
    );
    describe_gauge!(
        "haseq_exec_healthy",
        "1 while the execution engine's last call succeeded, else 0"
    );
    describe_counter!(
        "haseq_blocks_replayed_total",
        "Committed blocks imported into the execution engine"
    );
    describe_counter!(
        "haseq_blocks_produced_total",
        "Blocks this node produced and got committed as leader"
    );
    describe_counter!(
        "haseq_produce_errors_total",
        "Failed attempts to build or propose a block"
    );
    describe_histogram!(
        "haseq_block_interval_seconds",
        Unit::Seconds,
        "Time between consecutive blocks produced by this leader"
    );
    describe_histogram!(
        "haseq_commit_latency_seconds",
        Unit::Seconds,
        "Proposal to applied on the leader, per block"
    );
    describe_gauge!(
        "haseq_eligible",
        "1 while this node may lead (caught up, healthy, not paused), else 0"
    );
    describe_gauge!(
        "haseq_peer_exec_height",
        Unit::Count,
        "A peer's execution height as last polled (label peer)"
    );
    describe_counter!(
        "haseq_leader_transfers_total",
        "Leadership transfers this node started (admin, pause, sick or lagging engine, shutdown)"
    );
    describe_counter!(
        "haseq_votes_refused_exec_lag_total",
        "Votes and pre-votes refused because the candidate's engine lagged (label kind)"
    );
    describe_counter!(
        "haseq_votes_refused_not_member_total",
        "Votes and pre-votes refused because the candidate is not a voter of this node's \
         membership and its log ends at or before that membership (label kind)"
    );
    describe_counter!(
        "haseq_blocks_fetched_total",
        "Committed blocks fetched from peers into the block store"
    );
    describe_counter!(
        "haseq_api_connections_refused_total",
        "API connections closed at once because api.max_connections were open"
    );
    describe_counter!(
        "haseq_api_event_subscribers_refused_total",
        "/events streams refused (503) because api.max_event_subscribers were open"
    );
    describe_counter!(
        "haseq_api_accept_errors_total",
        "Errors accepting an API connection (retried with a backoff)"
    );
    describe_gauge!(
        "haseq_sync_active",
        "1 while the Syncer is fetching a hole of committed blocks from peers (catch-up), else 0"
    );
}

/// Counters of this crate without labels.
const COUNTERS: [&str; 12] = [
    "haseq_leader_changes_total",
    "haseq_elections_started_total",
    "haseq_elections_won_total",
    "haseq_p2p_blocks_served_total",
    "haseq_blocks_replayed_total",
    "haseq_blocks_produced_total",
    "haseq_produce_errors_total",
    "haseq_leader_transfers_total",
    "haseq_blocks_fetched_total",
    "haseq_api_connections_refused_total",
    "haseq_api_event_subscribers_refused_total",
    "haseq_api_accept_errors_total",
];

/// Creates every counter the node exports at 0, with its label values where they are known
/// before the first event (vote kinds, RPC kinds, refusal reasons, engine methods; peers and
/// actors when those start), and the histograms with no sample yet. A series that exists from
/// start-up lets `increase()` see the first event, and lets "no block in 2 minutes" fire on a
/// node that never produced one.
fn zero_all() {
    haseq_storage::zero_metrics();
    haseq_net::zero_metrics();
    haseq_engine::zero_metrics();
    crate::p2p::crash_fast::zero_metrics();
    for name in COUNTERS {
        metrics::counter!(name).increment(0);
    }
    for kind in VOTE_KINDS {
        metrics::counter!("haseq_votes_refused_exec_lag_total", "kind" => kind).increment(0);
        metrics::counter!("haseq_votes_refused_not_member_total", "kind" => kind).increment(0);
    }
    let _ = metrics::histogram!("haseq_block_interval_seconds");
    let _ = metrics::histogram!("haseq_commit_latency_seconds");
}

/// The `kind` label of the vote-refusal counters.
pub(crate) const VOTE_KINDS: [&str; 2] = ["vote", "pre_vote"];
