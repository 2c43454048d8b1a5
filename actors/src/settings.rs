//! What a node needs to start, in typed form, and how the operator's Raft timings map onto
//! openraft's settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use haseq_messages::NodeId;

/// The operator guide's four Raft timings (`raft.heartbeat_timeout`, `raft.election_timeout`,
/// `raft.leader_lease_timeout`, `raft.send_timeout`), validated by the configuration loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Guide: how long a follower tolerates silence from the leader; sized 4-5 x RTT_MAX.
    pub heartbeat_timeout: Duration,
    /// Guide: how long a follower waits without hearing from the leader before it campaigns.
    pub election_timeout: Duration,
    /// Guide: how long a leader trusts its leadership after the last quorum acknowledgement.
    pub leader_lease_timeout: Duration,
    /// Guide: the longest the leader waits for one message to a peer.
    pub send_timeout: Duration,
}

impl Default for RaftTiming {
    /// The guide's defaults.
    fn default() -> Self {
        RaftTiming {
            heartbeat_timeout: Duration::from_millis(350),
            election_timeout: Duration::from_millis(1000),
            leader_lease_timeout: Duration::from_millis(175),
            send_timeout: Duration::from_millis(200),
        }
    }
}

/// Everything [`crate::node::start`] needs.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// This node's id (`raft.node_id`).
    pub node_id: NodeId,
    /// Address the node-to-node port binds (`raft.raft_addr`).
    pub raft_addr: String,
    /// Where all on-disk state lives (`raft.raft_dir`).
    pub raft_dir: PathBuf,
    /// The other members and their node-to-node addresses (`raft.peers`).
    pub peers: Vec<(NodeId, String)>,
    /// The four Raft timings.
    pub timing: RaftTiming,
    /// Entries since the last snapshot before the next one is built (`raft.snapshot_threshold`).
    pub snapshot_threshold: u64,
    /// Entries kept in the log behind a snapshot (`raft.trailing_logs`).
    pub trailing_logs: u64,
    /// Never bootstrap: with an empty `raft_dir`, wait for the cluster to add this node
    /// (`raft.join`).
    pub join: bool,
    /// Campaign at once when the leader's connections all close without a goodbye and a
    /// quorum of voters saw the same (`raft.crash_fast_failover`).
    pub crash_fast_failover: bool,
    /// Snapshot files kept on disk (`raft.snap_count`).
    pub snap_count: usize,
    /// The cluster's shared secret (`raft.secret_file`).
    pub secret: Arc<Vec<u8>>,
    /// Address of the HTTP API (`api.addr`).
    pub api_addr: String,
    /// Bearer token admitting admin calls from beyond loopback (`api.admin_token_file`).
    pub admin_token: Option<String>,
    /// Admin calls need the token even from loopback (`api.admin_require_token`).
    pub admin_require_token: bool,
    /// What the API port admits (`api.max_connections`, `api.max_event_subscribers`,
    /// `api.header_read_timeout`).
    pub api_limits: crate::api_server::ApiLimits,
    /// Whether this node produces blocks when it leads (`node.aggregator`). A node that does
    /// not still replicates and replays every block.
    pub aggregator: bool,
    /// Time between blocks on the leader (`node.block_time`); zero: as fast as commits allow.
    pub block_time: Duration,
    /// The execution engine this node drives (`engine.*`).
    pub engine: EngineSettings,
    /// `raft.max_exec_lag_blocks`: the most blocks a node's engine may lag and still lead.
    pub max_exec_lag_blocks: u64,
    /// `raft.handoff_after`: a leader whose engine stays behind this long hands over.
    pub handoff_after: Duration,
    /// `raft.unhealthy_leader_grace`: a leader whose engine stays sick this long hands over.
    pub unhealthy_leader_grace: Duration,
}

/// Which execution engine a node drives.
#[derive(Debug, Clone)]
pub enum EngineSettings {
    /// The in-process engine (`engine.kind: embedded`), persisted under `data_dir`.
    Embedded {
        /// Its LMDB directory.
        data_dir: PathBuf,
        /// Synthetic transactions per block (`engine.embedded.txs_per_block`).
        txs_per_block: usize,
        /// Bytes per synthetic transaction (`engine.embedded.tx_bytes`).
        tx_bytes: usize,
        /// Fault knobs at start (`engine.embedded.*`); changeable at run time via the admin API.
        faults: haseq_engine::Faults,
    },
    /// A real execution client over the Engine API (`engine.kind: engine_api`).
    EngineApi {
        /// `engine.url`.
        url: String,
        /// The JWT secret read from `engine.jwt_secret`.
        jwt_secret: [u8; 32],
    },
}

/// The gap between the guide's `election_timeout` and openraft's two election settings.
///
/// openraft's follower campaigns once its leader lease (`election_timeout_max`, renewed by
/// each heartbeat) has run out *and then* a random timeout drawn from
/// `[election_timeout_min, election_timeout_max)` has passed. The guide's operators expect a
/// follower to act about one `election_timeout` after the leader falls silent, so:
///
/// - `election_timeout_max = election_timeout / 2`: the lease half;
/// - `election_timeout_min = election_timeout / 4`: so a follower campaigns between
///   `0.75 x` and `1.0 x election_timeout` after the last heartbeat, and the spread of a
///   quarter of the timeout keeps two followers from campaigning at the same moment;
/// - `heartbeat_interval = heartbeat_timeout / 3`: a follower hears at least three
///   heartbeats within its `heartbeat_timeout` (the guide's tolerance for lost packets), and
///   the lease is renewed many times before it runs out.
///
/// `leader_lease_timeout` is not an openraft setting: openraft keeps a cut-off leader in its
/// Leader state until it hears a higher term, so haseq enforces the lease itself (the leader
/// stops producing once its last quorum acknowledgement is older than the lease).
/// `send_timeout` bounds each RPC in the transport (`haseq-net`).
///
/// `snapshot_threshold` becomes `SnapshotPolicy::LogsSinceLast`, `trailing_logs` the entries
/// kept behind a snapshot (`max_in_snapshot_log_to_keep`) and the replication lag beyond which
/// the leader sends a snapshot instead of entries. Pre-Vote is always on.
pub fn openraft_config(
    timing: &RaftTiming,
    snapshot_threshold: u64,
    trailing_logs: u64,
) -> Result<openraft::Config, openraft::ConfigError> {
    let e_ms = timing.election_timeout.as_millis().max(4) as u64;
    let hb_ms = (timing.heartbeat_timeout.as_millis() as u64 / 3).max(1);
    let cfg = openraft::Config {
        cluster_name: "haseq".to_string(),
        heartbeat_interval: hb_ms,
        election_timeout_min: e_ms / 4,
        election_timeout_max: e_ms / 2,
        // A snapshot install may carry many blocks; give it the election timeout at least.
        install_snapshot_timeout: e_ms.max(2_000),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_threshold.max(1)),
        max_in_snapshot_log_to_keep: trailing_logs,
        replication_lag_threshold: trailing_logs.max(1),
        enable_pre_vote: Some(true),
        // A leader of before a restart must win an election like anyone else: restoring it
        // would bypass the eligibility gate (its engine may be far behind).
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    cfg.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guide_timings_give_about_one_election_timeout() {
        let t = RaftTiming {
            heartbeat_timeout: Duration::from_millis(92),
            election_timeout: Duration::from_millis(368),
            leader_lease_timeout: Duration::from_millis(46),
            send_timeout: Duration::from_millis(50),
        };
        let c = openraft_config(&t, 5000, 18000).unwrap();
        // Campaign window after the last heartbeat: lease (max) + [min, max).
        let earliest = c.election_timeout_max + c.election_timeout_min;
        let latest = 2 * c.election_timeout_max;
        assert_eq!((earliest, latest), (276, 368));
        assert!(c.heartbeat_interval * 3 <= 92);
        assert!(c.heartbeat_interval < c.election_timeout_min);
        assert_eq!(c.enable_pre_vote, Some(true));
    }

    #[test]
    fn defaults_are_valid() {
        openraft_config(&RaftTiming::default(), 500, 200).unwrap();
    }
}
