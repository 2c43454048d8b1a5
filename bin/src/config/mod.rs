//! The node's configuration: layered, typed, validated once at start-up.
//!
//! [`load`] merges four layers with the `config` crate, each winning over the ones before:
//! 1. built-in defaults (the operator guide's, for the `raft` keys);
//! 2. the YAML file (`haseqd run --config node.yaml`);
//! 3. environment variables `HASEQ_<SECTION>__<KEY>`, e.g. `HASEQ_RAFT__SECRET_FILE`
//!    sets `raft.secret_file` and `HASEQ_ENGINE__EMBEDDED__TX_BYTES` sets
//!    `engine.embedded.tx_bytes`;
//! 4. overrides from command-line flags, as `("raft.node_id", "node-2")`.
//!
//! The `raft` section takes the operator guide's key names, value formats and defaults, so the
//! guide's "Recommended Production Configuration" loads as it is. Values:
//! - durations are text with a unit: `"92ms"`, `"1s"`, `"1m30s"`, `"1.5s"`. A bare number is
//!   refused (is `92` seconds or milliseconds?), except `0`;
//! - booleans are `true`/`false` (as text from the environment, any case);
//! - `raft.peers` is comma-separated `id@host:port` (whitespace and newlines around entries are
//!   ignored, so a YAML `>-` block works) or a YAML list;
//! - an empty value (`""`, or YAML null) means unset: the default applies. This lets an
//!   environment variable unset a key that the file sets;
//! - relative paths are taken relative to the working directory, as given.
//!
//! Every error is one line naming the key, the value and what is allowed ([`ConfigError`]).
//! Unknown keys are errors wherever they come from, including a `HASEQ_…__…` variable;
//! `HASEQ_` variables without `__` are left to whatever else reads them (`HASEQ_TEST_SEED`)
//! unless they start with a section name (`HASEQ_RAFT_NODE_ID`, a typo for
//! `HASEQ_RAFT__NODE_ID`).
//!
//! Loading also touches the disk: it creates `raft.raft_dir` and writes a probe file in it, and
//! reads the secret and token files, so that each of these fails here, with its key, rather
//! than later in the middle of a Raft append or a peer handshake.

mod error;
mod files;
mod layers;
mod peers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::ConfigError;
pub use files::{AdminToken, CLUSTER_SECRET_LEN_MIN, ClusterSecret, JWT_SECRET_LEN, JwtSecret};
pub use layers::{ENV_PREFIX, env_var_for, known_keys, parse_duration};
pub use peers::{NODE_ID_LEN_MAX, PEERS_MAX, Peer, parse_peers};

use layers::Layers;

/// Longest Raft timing value we accept; anything longer is a unit mistake (`"350m"` for ms).
pub const RAFT_TIMEOUT_MAX: Duration = Duration::from_secs(600);
/// Longest `node.block_time`, `raft.handoff_after`, `raft.unhealthy_leader_grace` and
/// `engine.embedded.delay_per_block` we accept.
pub const SLOW_DURATION_MAX: Duration = Duration::from_secs(3600);
/// Most snapshot files `raft.snap_count` may keep.
pub const SNAP_COUNT_MAX: u64 = 1000;
/// Largest synthetic payload per block of the embedded engine
/// (`txs_per_block × tx_bytes`).
pub const EMBEDDED_BLOCK_BYTES_MAX: u64 = 128 * 1024 * 1024;

/// A node's whole configuration, typed and validated by [`load`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `node.*`: the sequencer itself.
    pub node: NodeConfig,
    /// `raft.*`: the cluster, with the operator guide's keys.
    pub raft: RaftConfig,
    /// `api.*`: the HTTP API (status, admin, metrics).
    pub api: ApiConfig,
    /// `engine.*`: the execution client.
    pub engine: EngineConfig,
    /// `log.*`: logging.
    pub log: LogConfig,
}

/// `node.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// `node.aggregator` (default false): this node produces blocks when it leads. Required
    /// by `raft.enable: true`, as in the operator guide.
    pub aggregator: bool,
    /// `node.block_time` (default `1s`): the interval between blocks on the leader. Zero
    /// means as fast as possible: the next block starts as soon as the previous one commits.
    pub block_time: Duration,
}

/// `raft.*`: the operator guide's keys, formats and defaults, plus haseq's own
/// (`secret_file`, `max_exec_lag_blocks`, `handoff_after`, `unhealthy_leader_grace`).
///
/// The four timing keys carry the guide's meanings, as typed values; how they map onto
/// openraft's settings is decided where the `Raft` handle is built. `RTT_MAX` below is the
/// largest round-trip time between any two members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftConfig {
    /// `raft.enable` (default false): run as a member of a Raft cluster. Requires
    /// `node.aggregator: true`, `node_id`, `raft_addr` and `secret_file`.
    pub enable: bool,
    /// `raft.node_id`: this node's unique, stable id in the cluster (e.g. `node-1`); never
    /// change it once the cluster is bootstrapped. Always `Some` when `enable` is true.
    pub node_id: Option<String>,
    /// `raft.raft_addr`: `host:port` this node listens on for Raft (and peer) traffic, e.g.
    /// `0.0.0.0:5001`. Always `Some` when `enable` is true.
    pub raft_addr: Option<String>,
    /// `raft.raft_dir` (default `<home>/raft`, home = `$HOME/.haseq`): the node's persistent
    /// Raft state; losing it is losing the node's cluster identity. Created and checked
    /// writable by [`load`].
    pub raft_dir: PathBuf,
    /// `raft.peers`: the *other* members (never this node), `id@host:port` each, where
    /// `host:port` is that member's `raft_addr` as reachable from here. Bootstraps the
    /// cluster on first start; empty means a cluster of this node alone.
    pub peers: Vec<Peer>,
    /// `raft.bootstrap` (default false): accepted for compatibility, no effect. Whether to
    /// bootstrap or rejoin is decided from the state in `raft_dir`.
    pub bootstrap: bool,
    /// `raft.join` (default false): this node never bootstraps a cluster. Started with an
    /// empty `raft_dir`, it serves its API and waits for a leader to replicate to it (it is
    /// added to the membership, or is in it already), `/status` role `joining` meanwhile.
    /// Without it, a node with an empty `raft_dir` whose peers already form a cluster
    /// refuses to start (exit status 2): it would come back under its old id having
    /// forgotten its votes.
    pub join: bool,
    /// `raft.crash_fast_failover` (default true): when every connection from the leader
    /// closes without the goodbye a node says when it closes them on purpose (its process
    /// died), a follower asks the other voters whether they lost it too and, if a quorum
    /// did, campaigns at once instead of waiting out `election_timeout`. A frozen process,
    /// a dead host or a cut network still falls to the timeouts.
    pub crash_fast_failover: bool,
    /// `raft.heartbeat_timeout` (default 350ms): the longest a follower waits without a
    /// heartbeat from the leader before it starts a new election; a follower-side timeout,
    /// the leader sends heartbeats more often. Tuning: 4-5 × RTT_MAX (92ms for RTT_MAX
    /// 23ms); below 2 × RTT_MAX, jitter causes spurious elections.
    pub heartbeat_timeout: Duration,
    /// `raft.election_timeout` (default 1000ms): how long a follower waits without hearing
    /// from the leader before it concludes the leader is dead and starts an election. At
    /// least `heartbeat_timeout`. Tuning: 4 × `heartbeat_timeout` (≈ 16-20 × RTT_MAX).
    /// Failover takes about this long.
    pub election_timeout: Duration,
    /// `raft.leader_lease_timeout` (default 175ms): how long a leader considers its
    /// leadership valid after the last quorum acknowledgement of its heartbeats; past it, the
    /// leader stops producing. Strictly below `election_timeout`, or an old leader could
    /// still act after followers elected a new one. Tuning: ≈ `heartbeat_timeout` / 2.
    pub leader_lease_timeout: Duration,
    /// `raft.send_timeout` (default 200ms): the longest the leader waits for one message (log
    /// entries, heartbeat) to reach a peer before counting the delivery as failed and
    /// retrying. Tuning: 2-3 × RTT_MAX.
    pub send_timeout: Duration,
    /// `raft.snapshot_threshold` (default 500, at least 1): committed entries since the last
    /// snapshot that trigger a new snapshot, after which older entries are compacted.
    pub snapshot_threshold: u64,
    /// `raft.trailing_logs` (default 200): entries kept after a snapshot, so a node that
    /// missed fewer than this catches up from the log instead of a full snapshot.
    pub trailing_logs: u64,
    /// `raft.snap_count` (default 3, 1 to [`SNAP_COUNT_MAX`]): snapshot files kept on disk.
    pub snap_count: u64,
    /// `raft.secret_file`: the file holding the cluster's shared secret; required when
    /// `enable` is true.
    pub secret_file: Option<PathBuf>,
    /// The secret read from `secret_file` (hex decoded, or raw bytes), at least
    /// [`CLUSTER_SECRET_LEN_MIN`] bytes. `Some` whenever `secret_file` is.
    pub secret: Option<ClusterSecret>,
    /// `raft.max_exec_lag_blocks` (default 10): a node whose execution client is more than
    /// this many blocks behind the applied head is not eligible to lead, and voters refuse
    /// a candidate this far behind the best execution height they know.
    pub max_exec_lag_blocks: u64,
    /// `raft.handoff_after` (default 5s): a leader that is behind and would need longer than
    /// this to catch up transfers leadership to a caught-up peer.
    pub handoff_after: Duration,
    /// `raft.unhealthy_leader_grace` (default 2s): how long a leader whose engine fails or
    /// stalls waits before handing leadership to the most caught-up healthy peer.
    pub unhealthy_leader_grace: Duration,
}

/// `api.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// `api.addr` (default `127.0.0.1:7700`): where the HTTP API listens (IP and port).
    pub addr: SocketAddr,
    /// `api.admin_token_file`: a file holding the bearer token that admits admin calls from
    /// other hosts (loopback needs none). Unset: admin calls from loopback only.
    pub admin_token_file: Option<PathBuf>,
    /// The token read from `admin_token_file`. `Some` whenever that is.
    pub admin_token: Option<AdminToken>,
    /// `api.admin_require_token` (default: on when `api.addr` is not a loopback address):
    /// admin calls need the bearer token even from loopback (in a container or on a shared
    /// host, "loopback" is any process beside the node). On without a token file, admin
    /// calls are refused.
    pub admin_require_token: bool,
    /// `api.max_connections` (default 256): API connections open at once; beyond, a new one
    /// is closed at once (`haseq_api_connections_refused_total`).
    pub max_connections: usize,
    /// `api.max_event_subscribers` (default 64): `/events` streams open at once; beyond, 503.
    pub max_event_subscribers: usize,
    /// `api.header_read_timeout` (default 5s): how long a client may take to send a request's
    /// headers before its connection is closed.
    pub header_read_timeout: Duration,
}

/// `engine.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// `engine.kind` (`embedded`, the default, or `engine_api`), with what that kind needs.
    pub kind: EngineKind,
    /// `engine.data_dir` (default `<raft_dir>/../engine`): the embedded engine's storage.
    pub data_dir: PathBuf,
    /// `engine.embedded.*`: the embedded engine's synthetic load and fault knobs.
    pub embedded: EmbeddedEngineConfig,
}

/// Which execution client the node drives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// `engine.kind: embedded`: the in-process engine; needs nothing else.
    Embedded,
    /// `engine.kind: engine_api`: an external client (reth, geth) over the Engine API.
    EngineApi(EngineApiConfig),
}

/// What `engine.kind: engine_api` needs. (`engine.url` and `engine.jwt_secret` are ignored
/// for the embedded engine.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineApiConfig {
    /// `engine.url`: the client's authenticated Engine API endpoint, `http://` or
    /// `https://`, e.g. `http://127.0.0.1:8551`.
    pub url: String,
    /// `engine.jwt_secret`: the path of the JWT secret file, as reth and geth take it.
    pub jwt_secret_file: PathBuf,
    /// The 32-byte secret read from that file.
    pub jwt_secret: JwtSecret,
}

/// `engine.embedded.*`: settable at run time too, through the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedEngineConfig {
    /// `engine.embedded.txs_per_block` (default 0): synthetic transactions per block.
    pub txs_per_block: u64,
    /// `engine.embedded.tx_bytes` (default 100): size of each synthetic transaction.
    pub tx_bytes: u64,
    /// `engine.embedded.delay_per_block` (default 0): extra time to import each block (a
    /// slow engine).
    pub delay_per_block: Duration,
    /// `engine.embedded.fail` (default false): every engine call fails (a broken engine).
    pub fail: bool,
    /// `engine.embedded.lose_newest_on_restart` (default 0): on the next restart, forget the
    /// newest this-many blocks (an engine that persisted less than it acknowledged).
    pub lose_newest_on_restart: u64,
}

/// `log.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// `log.level` (default `info`): a level (`trace`, `debug`, `info`, `warn`, `error`,
    /// `off`) or comma-separated `target=level` directives after an optional level, as
    /// `tracing_subscriber::EnvFilter` reads them, e.g. `info,haseq_net=debug`.
    pub level: String,
    /// `log.format` (`text`, the default, or `json`).
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Load the configuration: built-in defaults, then `file` (YAML), then the `HASEQ_` variables
/// among `env` (`main` passes `std::env::vars()`; other variables are ignored, except `HOME`,
/// which sets the default `raft.raft_dir`), then `overrides` (`("raft.node_id", "node-2")`,
/// from flags). Then check everything, create `raft.raft_dir`, and read the secret files.
///
/// `HOME` comes from `env`, or from the process if `env` lacks it.
///
/// # Errors
/// The first problem found, naming the key and the value: see [`ConfigError`].
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[(String, String)],
) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env.into_iter().collect();
    let home = env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map(|(_, v)| PathBuf::from(v))
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
        .filter(|h| !h.as_os_str().is_empty());
    let mut computed = Vec::new();
    if let Some(home) = &home {
        let raft_dir = home.join(".haseq").join("raft");
        computed.push(("raft.raft_dir", raft_dir.to_string_lossy().into_owned()));
    }
    let layers = Layers::load(file, &env, overrides, &computed)?;
    let config = parse(&layers)?;
    read_files(config)
}

/// Every check that needs no disk: types, ranges, relations between keys, peers.
fn parse(l: &Layers) -> Result<Config, ConfigError> {
    let node = NodeConfig {
        aggregator: l.bool("node.aggregator")?,
        block_time: at_most(l, "node.block_time", SLOW_DURATION_MAX)?,
    };
    let raft = parse_raft(l, &node)?;
    let api = parse_api(l, &raft)?;
    let engine = parse_engine(l, &raft)?;
    let log = parse_log(l)?;
    Ok(Config {
        node,
        raft,
        api,
        engine,
        log,
    })
}

fn parse_raft(l: &Layers, node: &NodeConfig) -> Result<RaftConfig, ConfigError> {
    let enable = l.bool("raft.enable")?;
    let node_id = l.opt_text("raft.node_id")?;
    if let Some(id) = &node_id {
        peers::check_node_id(id).map_err(|r| l.invalid("raft.node_id", r))?;
    }
    let raft_addr = l.opt_text("raft.raft_addr")?;
    if let Some(addr) = &raft_addr {
        peers::check_host_port(addr).map_err(|r| l.invalid("raft.raft_addr", r))?;
    }
    let raft_dir = l
        .opt_path("raft.raft_dir")?
        .ok_or_else(|| ConfigError::Missing {
            key: "raft.raft_dir".into(),
            reason: "HOME is not set, so it has no default ($HOME/.haseq/raft); set it".into(),
        })?;

    let heartbeat_timeout = raft_timeout(l, "raft.heartbeat_timeout")?;
    let election_timeout = raft_timeout(l, "raft.election_timeout")?;
    let leader_lease_timeout = raft_timeout(l, "raft.leader_lease_timeout")?;
    let send_timeout = raft_timeout(l, "raft.send_timeout")?;
    if election_timeout < heartbeat_timeout {
        return Err(ConfigError::NotAtLeast {
            key: "raft.election_timeout".into(),
            value: show(election_timeout),
            limit_key: "raft.heartbeat_timeout".into(),
            limit_value: show(heartbeat_timeout),
        });
    }
    if leader_lease_timeout >= election_timeout {
        return Err(ConfigError::NotBelow {
            key: "raft.leader_lease_timeout".into(),
            value: show(leader_lease_timeout),
            limit_key: "raft.election_timeout".into(),
            limit_value: show(election_timeout),
        });
    }

    let snapshot_threshold = l.uint("raft.snapshot_threshold")?;
    if snapshot_threshold == 0 {
        return Err(l.invalid(
            "raft.snapshot_threshold",
            "must be at least 1 (entries between snapshots)",
        ));
    }
    let snap_count = l.uint("raft.snap_count")?;
    if !(1..=SNAP_COUNT_MAX).contains(&snap_count) {
        return Err(l.invalid(
            "raft.snap_count",
            format!("must be from 1 to {SNAP_COUNT_MAX} (snapshot files kept)"),
        ));
    }

    let secret_file = l.opt_path("raft.secret_file")?;
    if enable {
        if !node.aggregator {
            return Err(ConfigError::Requires {
                key: "raft.enable".into(),
                value: "true".into(),
                needed: "node.aggregator: true".into(),
                actual: "false".into(),
            });
        }
        let required = |key: &str| ConfigError::Missing {
            key: key.into(),
            reason: "it is required when raft.enable is true".into(),
        };
        if node_id.is_none() {
            return Err(required("raft.node_id"));
        }
        if raft_addr.is_none() {
            return Err(required("raft.raft_addr"));
        }
        if secret_file.is_none() {
            return Err(ConfigError::Missing {
                key: "raft.secret_file".into(),
                reason: format!(
                    "it is required when raft.enable is true (a file holding the cluster's \
                     shared secret; also settable as {})",
                    env_var_for("raft.secret_file")
                ),
            });
        }
    }
    let peers = peers::peers_from_items(
        &l.list("raft.peers")?,
        node_id.as_deref(),
        raft_addr.as_deref(),
    )?;

    Ok(RaftConfig {
        enable,
        node_id,
        raft_addr,
        raft_dir,
        peers,
        bootstrap: l.bool("raft.bootstrap")?,
        join: l.bool("raft.join")?,
        crash_fast_failover: l.bool("raft.crash_fast_failover")?,
        heartbeat_timeout,
        election_timeout,
        leader_lease_timeout,
        send_timeout,
        snapshot_threshold,
        trailing_logs: l.uint("raft.trailing_logs")?,
        snap_count,
        secret_file,
        secret: None,
        max_exec_lag_blocks: l.uint("raft.max_exec_lag_blocks")?,
        handoff_after: at_most(l, "raft.handoff_after", SLOW_DURATION_MAX)?,
        unhealthy_leader_grace: at_most(l, "raft.unhealthy_leader_grace", SLOW_DURATION_MAX)?,
    })
}

fn parse_api(l: &Layers, raft: &RaftConfig) -> Result<ApiConfig, ConfigError> {
    let addr: SocketAddr = l.text("api.addr")?.parse().map_err(|_| {
        l.invalid(
            "api.addr",
            "expected an IP address and a port, e.g. 127.0.0.1:7700",
        )
    })?;
    let raft_socket = raft
        .raft_addr
        .as_deref()
        .and_then(|a| a.parse::<SocketAddr>().ok());
    if raft_socket == Some(addr) {
        return Err(l.invalid(
            "api.addr",
            "is also raft.raft_addr; the HTTP API and Raft need different ports",
        ));
    }
    let admin_require_token = if l.has("api.admin_require_token") {
        l.bool("api.admin_require_token")?
    } else {
        !addr.ip().is_loopback()
    };
    let count = |key: &str, max: u64| -> Result<usize, ConfigError> {
        match l.uint(key)? {
            0 => Err(l.invalid(key, "must be at least 1")),
            n if n > max => Err(l.invalid(key, format!("must be at most {max}"))),
            n => Ok(n as usize),
        }
    };
    let header_read_timeout = at_most(l, "api.header_read_timeout", API_HEADER_TIMEOUT_MAX)?;
    if header_read_timeout < API_HEADER_TIMEOUT_MIN {
        return Err(l.invalid(
            "api.header_read_timeout",
            format!("must be at least {}", show(API_HEADER_TIMEOUT_MIN)),
        ));
    }
    Ok(ApiConfig {
        addr,
        admin_token_file: l.opt_path("api.admin_token_file")?,
        admin_token: None,
        admin_require_token,
        max_connections: count("api.max_connections", 65_536)?,
        max_event_subscribers: count("api.max_event_subscribers", 65_536)?,
        header_read_timeout,
    })
}

fn parse_engine(l: &Layers, raft: &RaftConfig) -> Result<EngineConfig, ConfigError> {
    let kind = match l.text("engine.kind")?.as_str() {
        "embedded" => EngineKind::Embedded,
        "engine_api" => {
            let required = |key: &str| ConfigError::Missing {
                key: key.into(),
                reason: "it is required when engine.kind is engine_api".into(),
            };
            let url = l
                .opt_text("engine.url")?
                .ok_or_else(|| required("engine.url"))?;
            check_url(&url).map_err(|r| l.invalid("engine.url", r))?;
            let jwt_secret_file = l
                .opt_path("engine.jwt_secret")?
                .ok_or_else(|| required("engine.jwt_secret"))?;
            // Read in `read_files`; a placeholder until then keeps parsing free of I/O.
            EngineKind::EngineApi(EngineApiConfig {
                url,
                jwt_secret_file,
                jwt_secret: JwtSecret::new([0; JWT_SECRET_LEN]),
            })
        }
        _ => return Err(l.invalid("engine.kind", "expected embedded or engine_api")),
    };
    let data_dir = match l.opt_path("engine.data_dir")? {
        Some(dir) => dir,
        None => match raft.raft_dir.parent() {
            Some(parent) => parent.join("engine"),
            None => raft.raft_dir.join("engine"),
        },
    };

    let txs_per_block = l.uint("engine.embedded.txs_per_block")?;
    let tx_bytes = l.uint("engine.embedded.tx_bytes")?;
    if txs_per_block > 0 && tx_bytes == 0 {
        return Err(l.invalid(
            "engine.embedded.tx_bytes",
            "must be at least 1 when engine.embedded.txs_per_block is above 0",
        ));
    }
    if txs_per_block
        .checked_mul(tx_bytes)
        .is_none_or(|b| b > EMBEDDED_BLOCK_BYTES_MAX)
    {
        return Err(l.invalid(
            "engine.embedded.txs_per_block",
            format!(
                "txs_per_block × tx_bytes ({}) is over {EMBEDDED_BLOCK_BYTES_MAX} bytes per block",
                l.shown("engine.embedded.tx_bytes")
            ),
        ));
    }
    let embedded = EmbeddedEngineConfig {
        txs_per_block,
        tx_bytes,
        delay_per_block: at_most(l, "engine.embedded.delay_per_block", SLOW_DURATION_MAX)?,
        fail: l.bool("engine.embedded.fail")?,
        lose_newest_on_restart: l.uint("engine.embedded.lose_newest_on_restart")?,
    };
    Ok(EngineConfig {
        kind,
        data_dir,
        embedded,
    })
}

fn parse_log(l: &Layers) -> Result<LogConfig, ConfigError> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    let level = l.text("log.level")?;
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let lvl = directive.rsplit_once('=').map_or(directive, |(_, lvl)| lvl);
        if !LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
            return Err(l.invalid(
                "log.level",
                format!(
                    "{directive:?}: expected a level (trace, debug, info, warn, error, off) or \
                     target=level"
                ),
            ));
        }
    }
    let format = match l.text("log.format")?.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        _ => return Err(l.invalid("log.format", "expected text or json")),
    };
    Ok(LogConfig { level, format })
}

/// The checks that touch the disk, last, so that a typo is reported before a missing file.
fn read_files(mut config: Config) -> Result<Config, ConfigError> {
    files::ensure_writable_dir("raft.raft_dir", &config.raft.raft_dir)?;
    if let Some(path) = &config.raft.secret_file {
        config.raft.secret = Some(ClusterSecret::from_file(path)?);
    }
    if let Some(path) = &config.api.admin_token_file {
        config.api.admin_token = Some(AdminToken::from_file(path)?);
    }
    if let EngineKind::EngineApi(api) = &mut config.engine.kind {
        api.jwt_secret = JwtSecret::from_file(&api.jwt_secret_file)?;
    }
    Ok(config)
}

/// Bounds of `api.header_read_timeout`: a client needs some time, and a slow one must not
/// hold a connection for long.
const API_HEADER_TIMEOUT_MIN: Duration = Duration::from_millis(100);
const API_HEADER_TIMEOUT_MAX: Duration = Duration::from_secs(300);

/// A Raft timing value: above zero (a zero timeout can never be met) and at most
/// [`RAFT_TIMEOUT_MAX`].
fn raft_timeout(l: &Layers, key: &str) -> Result<Duration, ConfigError> {
    let d = l.duration(key)?;
    if d.is_zero() {
        return Err(l.invalid(key, "must be above zero, e.g. \"200ms\""));
    }
    if d > RAFT_TIMEOUT_MAX {
        return Err(l.invalid(key, format!("must be at most {}", show(RAFT_TIMEOUT_MAX))));
    }
    Ok(d)
}

/// A duration where zero makes sense, capped at `max`.
fn at_most(l: &Layers, key: &str, max: Duration) -> Result<Duration, ConfigError> {
    let d = l.duration(key)?;
    if d > max {
        return Err(l.invalid(key, format!("must be at most {}", show(max))));
    }
    Ok(d)
}

/// `http://host[:port][/path]`, with a non-empty host (`https://` is refused with the reason).
fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Err(
            "https:// is not supported: the Engine API client speaks HTTP with JWT \
                    authentication, as execution clients serve their authenticated port; reach \
                    the client on the same host or a private network (http://), or put a local \
                    TLS proxy in front of it"
                .into(),
        );
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or("expected an http:// URL, e.g. http://127.0.0.1:8551")?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.starts_with(':') {
        return Err("the URL has no host; e.g. http://127.0.0.1:8551".into());
    }
    if url.chars().any(char::is_whitespace) {
        return Err("the URL contains whitespace".into());
    }
    Ok(())
}

/// A duration as the guide writes it: `368ms`, `1s`, `1m 30s`.
fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
