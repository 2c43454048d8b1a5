//! A cluster of separate `haseqd run` processes on loopback, shared by `haseqd devnet` and
//! `haseqd bench`: ports, per-node directories and configurations written from the operator
//! guide's recommended timings, spawning, and stopping (SIGTERM, then SIGKILL after a bounded
//! wait).
//!
//! Separate processes, not tasks, so that a node's crash is a real crash and its fsyncs are
//! its own. A child is also tied to the thread that spawned it (`PR_SET_PDEATHSIG`): if the
//! parent dies without stopping it (SIGKILL, a test's timeout), the kernel kills it, so no
//! node outlives its cluster.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// How long a node may take to exit after SIGTERM before it is killed.
pub(crate) const STOP_WAIT: Duration = Duration::from_secs(10);

/// One node of a local cluster: its addresses, files and process.
pub(crate) struct LocalNode {
    /// Its `raft.node_id`, `node-1`, `node-2`, …
    pub(crate) id: String,
    /// Its node-to-node address, `127.0.0.1:PORT`.
    pub(crate) raft: String,
    /// Its HTTP API address, `127.0.0.1:PORT`.
    pub(crate) api: String,
    /// Its configuration file.
    pub(crate) config: PathBuf,
    /// Where its stdout and stderr go.
    pub(crate) log: PathBuf,
    /// The running process, once spawned.
    pub(crate) child: Option<Child>,
}

/// Lays out `count` nodes under `dir` (one subdirectory each) on ports from `base_port` on
/// (node i: raft base+2i, api base+2i+1) or on free ones. Writes nothing but the directories.
///
/// # Errors
/// Ports past 65535, no free port, a directory that cannot be created.
pub(crate) fn layout(
    dir: &Path,
    count: usize,
    base_port: Option<u16>,
) -> anyhow::Result<Vec<LocalNode>> {
    let mut nodes = Vec::with_capacity(count);
    for i in 1..=count {
        let (raft_port, api_port) = match base_port {
            Some(b) => {
                let base = b as usize + 2 * (i - 1);
                anyhow::ensure!(
                    base < u16::MAX as usize,
                    "--base-port {b}: ports run past 65535"
                );
                (base as u16, (base + 1) as u16)
            }
            None => (free_port()?, free_port()?),
        };
        let id = format!("node-{i}");
        let node_dir = dir.join(&id);
        std::fs::create_dir_all(&node_dir)
            .with_context(|| format!("creating {}", node_dir.display()))?;
        nodes.push(LocalNode {
            raft: format!("127.0.0.1:{raft_port}"),
            api: format!("127.0.0.1:{api_port}"),
            config: node_dir.join("node.yaml"),
            log: node_dir.join("haseqd.log"),
            id,
            child: None,
        });
    }
    Ok(nodes)
}

/// Writes `dir/cluster.secret` (32 random bytes as hex) unless it exists; returns its path.
///
/// # Errors
/// The file cannot be written.
pub(crate) fn ensure_secret(dir: &Path) -> anyhow::Result<PathBuf> {
    let secret_file = dir.join("cluster.secret");
    if !secret_file.exists() {
        let secret: [u8; 32] = rand::random();
        std::fs::write(&secret_file, hex::encode(secret) + "\n")
            .with_context(|| format!("writing {}", secret_file.display()))?;
    }
    Ok(secret_file)
}

/// Writes every node's configuration: the operator guide's recommended `raft` block with the
/// other nodes as peers, `node.block_time`, then `extra_yaml` (whole top-level sections not
/// otherwise written, e.g. `engine:` or `log:`).
///
/// # Errors
/// A file that cannot be written.
pub(crate) fn write_configs(
    dir: &Path,
    nodes: &[LocalNode],
    secret: &Path,
    block_time: Duration,
    extra_yaml: &str,
) -> anyhow::Result<()> {
    write_configs_sized(dir, nodes, secret, block_time, LogSizes::GUIDE, extra_yaml)
}

/// How much Raft log a node keeps: `raft.trailing_logs` and `raft.snapshot_threshold`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogSizes {
    /// `raft.trailing_logs`.
    pub(crate) trailing_logs: u64,
    /// `raft.snapshot_threshold`.
    pub(crate) snapshot_threshold: u64,
}

impl LogSizes {
    /// The operator guide's recommended values.
    pub(crate) const GUIDE: LogSizes = LogSizes {
        trailing_logs: 18000,
        snapshot_threshold: 5000,
    };
}

/// [`write_configs`] with other log sizes than the guide's.
///
/// # Errors
/// A file that cannot be written.
pub(crate) fn write_configs_sized(
    dir: &Path,
    nodes: &[LocalNode],
    secret: &Path,
    block_time: Duration,
    sizes: LogSizes,
    extra_yaml: &str,
) -> anyhow::Result<()> {
    for n in nodes {
        let peers: Vec<String> = nodes
            .iter()
            .filter(|p| p.id != n.id)
            .map(|p| format!("    {}@{}", p.id, p.raft))
            .collect();
        let mut text = node_config(
            n,
            &peers.join(",\n"),
            &dir.join(&n.id).join("raft"),
            secret,
            block_time,
            sizes,
        );
        text.push_str(extra_yaml);
        std::fs::write(&n.config, text)
            .with_context(|| format!("writing {}", n.config.display()))?;
    }
    Ok(())
}

fn node_config(
    n: &LocalNode,
    peers: &str,
    raft_dir: &Path,
    secret: &Path,
    block_time: Duration,
    sizes: LogSizes,
) -> String {
    format!(
        "node:\n  aggregator: true\n  block_time: \"{bt}\"\nraft:\n  enable: true\n  node_id: \"{id}\"\n  \
         raft_addr: \"{raft}\"\n  raft_dir: \"{dir}\"\n  peers: >-\n{peers}\n  \
         heartbeat_timeout: \"92ms\"\n  election_timeout: \"368ms\"\n  \
         leader_lease_timeout: \"46ms\"\n  send_timeout: \"50ms\"\n  trailing_logs: {trailing}\n  \
         snapshot_threshold: {threshold}\n  snap_count: 3\n  secret_file: \"{secret}\"\n\
         api:\n  addr: \"{api}\"\n",
        id = n.id,
        raft = n.raft,
        dir = raft_dir.display(),
        secret = secret.display(),
        api = n.api,
        trailing = sizes.trailing_logs,
        threshold = sizes.snapshot_threshold,
        // humantime writes zero as "0s", which the config accepts ("as fast as commits allow").
        bt = humantime::format_duration(block_time),
    )
}

/// Starts `exe run --config <node's config>`, output appended to the node's log.
///
/// # Errors
/// The log cannot be opened or the process cannot be started.
pub(crate) fn spawn(exe: &Path, n: &LocalNode) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&n.log)
        .with_context(|| format!("opening {}", n.log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--config")
        .arg(&n.config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and only makes two
    // async-signal-safe system calls (prctl, getppid); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            // Die with the parent, so no node outlives a killed `haseqd devnet` or `bench`.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::other(
                    "parent exited before the node started",
                ));
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {}", n.id))
}

/// A loopback port free at the time of the call (see [`haseq_net::free_loopback_port`]).
///
/// # Errors
/// No port can be bound.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(haseq_net::free_loopback_port()?)
}

/// Stops every running node: SIGTERM to all (a leader hands over first), then waits for each
/// up to [`STOP_WAIT`] and SIGKILLs the ones still running. Safe to call twice.
pub(crate) async fn stop_all(nodes: &mut [LocalNode]) {
    for n in nodes.iter_mut() {
        if let Some(pid) = n.child.as_ref().and_then(|c| c.id()) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped (`id()` is `None`
            // once it has been); no memory is touched.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for n in nodes.iter_mut() {
        if let Some(mut c) = n.child.take() {
            match tokio::time::timeout(STOP_WAIT, c.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    eprintln!("{} did not stop within {STOP_WAIT:?}; killing it", n.id);
                    let _ = c.kill().await;
                }
            }
        }
    }
}
