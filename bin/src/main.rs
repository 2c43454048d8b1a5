//! `haseqd`: the haseq daemon and its tools.
//!
//! - `haseqd run --config FILE`: one node of a cluster;
//! - `haseqd devnet --nodes 3`: a whole local cluster in one command.
//!
//! Only `main` exits the process: with status 2 on a configuration error at start-up, 1 when
//! the node cannot start, 0 after a clean shutdown.

mod bench;
mod catch_up_bench;
mod ctl;
mod devnet;
mod json_log;
mod local_cluster;
mod systemd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use haseq_actors::settings::{EngineSettings, NodeSettings, RaftTiming};
use haseq_messages::NodeId;
use haseqd::config::{self, Config};

#[derive(Debug, Parser)]
#[command(
    name = "haseqd",
    version,
    about = "haseq: a highly available block sequencer on Raft"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one node.
    Run {
        /// The node's YAML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Override a key, e.g. `--set raft.node_id=node-2` (repeatable; beats file and env).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
        set: Vec<(String, String)>,
    },
    /// Run a whole local cluster on loopback until Ctrl-C.
    Devnet(devnet::DevnetArgs),
    /// Drive a node's API: status, ready, members, membership changes, transfer-leader, pause, resume, engine-fault.
    Ctl(ctl::CtlArgs),
    /// The embedded execution engine on its own, served over the Engine API (JWT).
    Engine {
        #[command(subcommand)]
        cmd: EngineCmd,
    },
    /// Benchmark a local cluster of separate processes: commit latency and blocks per second.
    Bench(bench::BenchArgs),
    /// Benchmark a node's catch-up after it was down past the log: snapshot, P2P fetch, replay.
    BenchCatchUp(catch_up_bench::CatchUpArgs),
}

#[derive(Debug, Subcommand)]
enum EngineCmd {
    /// Serve the embedded engine over HTTP JSON-RPC with JWT, as reth and geth do.
    Serve {
        /// Listen address, e.g. `127.0.0.1:8551`.
        #[arg(long)]
        addr: String,
        /// File holding the 32-byte JWT secret as hex.
        #[arg(long)]
        jwt_secret: PathBuf,
        /// Where the engine keeps its chain.
        #[arg(long)]
        data_dir: PathBuf,
        /// Synthetic transactions per block.
        #[arg(long, default_value_t = 0)]
        txs_per_block: usize,
        /// Bytes per synthetic transaction.
        #[arg(long, default_value_t = 100)]
        tx_bytes: usize,
    },
}

/// How long SIGTERM on a leader waits for its successor to take over.
const HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn parse_set(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("--set {s:?}: expected KEY=VALUE"))?;
    Ok((k.trim().to_string(), v.to_string()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { config, set } => run(config, set),
        Cmd::Bench(args) => tool(bench::run(args), "bench"),
        Cmd::BenchCatchUp(args) => tool(catch_up_bench::run(args), "bench-catch-up"),
        Cmd::Ctl(args) => tool(ctl::run(args), "ctl"),
        Cmd::Engine {
            cmd:
                EngineCmd::Serve {
                    addr,
                    jwt_secret,
                    data_dir,
                    txs_per_block,
                    tx_bytes,
                },
        } => tool(
            engine_serve(addr, jwt_secret, data_dir, txs_per_block, tx_bytes),
            "engine serve",
        ),
        Cmd::Devnet(args) => {
            init_tracing("warn", false);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("haseqd devnet: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(devnet::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("haseqd devnet: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Run a tool subcommand on a multi-threaded runtime; exit 1 with its error.
fn tool(fut: impl std::future::Future<Output = anyhow::Result<()>>, name: &str) -> ExitCode {
    init_tracing("warn", false);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("haseqd {name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("haseqd {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn engine_serve(
    addr: String,
    jwt_secret: PathBuf,
    data_dir: PathBuf,
    txs_per_block: usize,
    tx_bytes: usize,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let secret = haseq_engine::read_jwt_secret_file(&jwt_secret)
        .with_context(|| format!("--jwt-secret {}", jwt_secret.display()))?;
    let mut cfg = haseq_engine::EmbeddedConfig::new(data_dir.clone());
    cfg.txs_per_block = txs_per_block;
    cfg.tx_bytes = tx_bytes;
    let engine = tokio::task::spawn_blocking(move || haseq_engine::EmbeddedEngine::open(cfg))
        .await?
        .with_context(|| format!("--data-dir {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("--addr {addr}"))?;
    eprintln!(
        "haseqd engine: serving the Engine API on http://{} (JWT required)",
        listener.local_addr()?
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        term.recv().await;
        stop.cancel();
    });
    haseq_engine::serve(listener, secret, std::sync::Arc::new(engine), shutdown).await?;
    Ok(())
}

fn run(path: PathBuf, set: Vec<(String, String)>) -> ExitCode {
    let cfg = match config::load(Some(&path), std::env::vars(), &set) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("haseqd: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing_for(
        &cfg.log.level,
        cfg.log.format == config::LogFormat::Json,
        cfg.raft.node_id.clone(),
    );
    let settings = match settings(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("haseqd: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let system = match haseq_actors::system() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("haseqd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    system.block_on(async move {
        let node = match haseq_actors::node::start(settings).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "node could not start");
                eprintln!("haseqd: {e}");
                if e.is_operator_error() {
                    return ExitCode::from(2);
                }
                return ExitCode::FAILURE;
            }
        };
        let code = tokio::select! {
            _ = wait_for_signal() => ExitCode::SUCCESS,
            why = node.failure() => {
                tracing::error!(why = %why, "the node cannot go on; exiting so that its supervisor restarts it");
                eprintln!("haseqd: {why}");
                ExitCode::FAILURE
            }
            () = systemd::run(&node) => ExitCode::SUCCESS,
        };
        systemd::stopping();
        tracing::info!("shutting down");
        // A leader hands over first, so the cluster barely notices (bounded wait).
        node.handover(HANDOVER_WAIT).await;
        node.shutdown().await;
        code
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

/// Map the validated configuration onto what the node needs.
fn settings(cfg: &Config) -> Result<NodeSettings, String> {
    let r = &cfg.raft;
    let secret = match &r.secret {
        Some(s) => s.as_bytes().to_vec(),
        None if !r.enable => Vec::new(),
        None => return Err("raft.secret_file: required when raft.enable is true".into()),
    };
    // Without `raft.enable` the node runs as a one-node cluster (the guide's single sequencer).
    let node_id = r.node_id.clone().unwrap_or_else(|| "node-1".to_string());
    let raft_addr = r
        .raft_addr
        .clone()
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    Ok(NodeSettings {
        node_id: NodeId(node_id),
        raft_addr,
        raft_dir: r.raft_dir.clone(),
        peers: r
            .peers
            .iter()
            .map(|p| (NodeId(p.id.clone()), p.addr.clone()))
            .collect(),
        timing: RaftTiming {
            heartbeat_timeout: r.heartbeat_timeout,
            election_timeout: r.election_timeout,
            leader_lease_timeout: r.leader_lease_timeout,
            send_timeout: r.send_timeout,
        },
        snapshot_threshold: r.snapshot_threshold,
        trailing_logs: r.trailing_logs,
        join: r.join,
        crash_fast_failover: r.crash_fast_failover,
        snap_count: r.snap_count as usize,
        secret: Arc::new(secret),
        api_addr: cfg.api.addr.to_string(),
        admin_token: cfg.api.admin_token.as_ref().map(|t| t.as_str().to_string()),
        admin_require_token: cfg.api.admin_require_token,
        api_limits: haseq_actors::api_server::ApiLimits {
            max_connections: cfg.api.max_connections,
            max_event_subscribers: cfg.api.max_event_subscribers,
            header_read_timeout: cfg.api.header_read_timeout,
        },
        aggregator: cfg.node.aggregator,
        block_time: cfg.node.block_time,
        engine: engine_settings(cfg),
        max_exec_lag_blocks: r.max_exec_lag_blocks,
        handoff_after: r.handoff_after,
        unhealthy_leader_grace: r.unhealthy_leader_grace,
    })
}

fn engine_settings(cfg: &Config) -> EngineSettings {
    match &cfg.engine.kind {
        config::EngineKind::Embedded => {
            let e = &cfg.engine.embedded;
            EngineSettings::Embedded {
                data_dir: cfg.engine.data_dir.clone(),
                txs_per_block: e.txs_per_block as usize,
                tx_bytes: e.tx_bytes as usize,
                faults: haseq_engine::Faults {
                    delay_per_block: e.delay_per_block,
                    fail: e.fail,
                    lose_newest_on_restart: e.lose_newest_on_restart,
                },
            }
        }
        config::EngineKind::EngineApi(api) => EngineSettings::EngineApi {
            url: api.url.clone(),
            jwt_secret: *api.jwt_secret.as_bytes(),
        },
    }
}

fn init_tracing(level: &str, json: bool) {
    init_tracing_for(level, json, None);
}

/// Logging to stderr at `level`; JSON lines when `json`, each carrying `node` (this node's
/// id, when known) and the node's current `term` and applied `height` (once known).
fn init_tracing_for(level: &str, json: bool, node: Option<String>) {
    // openraft warns on every failed heartbeat (several a second per unreachable peer), which
    // buries everything else while a node is down; haseq logs role and leader changes itself.
    // An explicit `openraft` directive in `log.level` or RUST_LOG wins.
    let level = if level.contains("openraft") {
        level.to_string()
    } else {
        format!("{level},openraft=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json_log::NodeJson::new(node))
            .try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = result {
        eprintln!("haseqd: logging not initialised: {e}");
    }
}
