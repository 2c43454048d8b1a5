//! `haseqd devnet`: a whole local cluster in one command.
//!
//! Starts `--nodes` separate `haseqd run` processes on loopback (so killing one is a real
//! crash), with configurations written from the operator guide's recommended timings, prints
//! each node's API URL, then a live table of every node's role, term, leader and indexes,
//! until Ctrl-C (or `--exit-after`), when it stops every node: SIGTERM, then SIGKILL after a
//! bounded wait.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::local_cluster::{self, LocalNode};
use haseq_actors::api_client as http;

/// How often the table is refreshed.
const REFRESH: Duration = Duration::from_millis(500);
/// Deadline for one `/status` call.
const STATUS_TIMEOUT: Duration = Duration::from_millis(400);

/// Options of `haseqd devnet`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DevnetArgs {
    /// Number of nodes (an odd number: 1, 3, 5 or 7).
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: usize,
    /// Keep all data here (created if missing) instead of a temporary directory.
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Use ports from here on (node i: raft base+2i, api base+2i+1) instead of free ones.
    #[arg(long)]
    pub(crate) base_port: Option<u16>,
    /// Time between blocks (`node.block_time`), e.g. `100ms`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) block_time: Duration,
    /// Stop by itself after this long (e.g. `30s`); runs until Ctrl-C without it.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) exit_after: Option<Duration>,
}

/// Run the devnet until Ctrl-C, SIGTERM or `--exit-after`.
///
/// # Errors
/// Bad arguments, unwritable directory, a node that cannot be spawned.
pub(crate) async fn run(args: DevnetArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(args.nodes, 1 | 3 | 5 | 7),
        "--nodes {}: a Raft cluster needs an odd number of nodes: 1, 3, 5 or 7",
        args.nodes
    );
    let (dir, _temp) = match &args.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new().prefix("haseq-devnet-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret_file = local_cluster::ensure_secret(&dir)?;
    let mut nodes = local_cluster::layout(&dir, args.nodes, args.base_port)?;
    local_cluster::write_configs(&dir, &nodes, &secret_file, args.block_time, "")?;

    let exe = std::env::current_exe().context("locating the haseqd executable")?;
    for n in &mut nodes {
        n.child = Some(local_cluster::spawn(&exe, n)?);
    }
    println!(
        "haseq devnet: {} nodes, data in {}",
        nodes.len(),
        dir.display()
    );
    for n in &nodes {
        println!(
            "  {}  api http://{}  raft {}  log {}",
            n.id,
            n.api,
            n.raft,
            n.log.display()
        );
    }
    println!("Ctrl-C stops every node.\n");

    let result = watch(&mut nodes, args.exit_after).await;
    local_cluster::stop_all(&mut nodes).await;
    println!("devnet stopped");
    result
}

async fn watch(nodes: &mut [LocalNode], exit_after: Option<Duration>) -> anyhow::Result<()> {
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut last_table = String::new();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = tick.tick() => {}
        }
        if exit_after.is_some_and(|d| started.elapsed() >= d) {
            return Ok(());
        }
        let table = render(nodes).await;
        if tty {
            print!("\x1b[H\x1b[2J{table}");
        } else if table != last_table {
            // Not a terminal: print only changes, so a log of the devnet stays readable.
            print!("[{:>7.1}s]\n{table}", started.elapsed().as_secs_f64());
        }
        last_table = table;
    }
}

async fn render(nodes: &mut [LocalNode]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<8} {:<10} {:>5} {:<8} {:>10} {:>10} {:>8} {:>8} {:>6}  sync",
        "node",
        "process",
        "role",
        "term",
        "leader",
        "committed",
        "applied",
        "height",
        "exec",
        "lag"
    );
    for n in nodes.iter_mut() {
        let process = match n.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => "up".to_string(),
            Some(Ok(Some(st))) => {
                format!("exit {}", st.code().map_or("sig".into(), |c| c.to_string()))
            }
            _ => "down".to_string(),
        };
        let status = http::request(&n.api, "GET", "/status", None, STATUS_TIMEOUT).await;
        let v: Option<serde_json::Value> = status
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| serde_json::from_str(&r.body).ok());
        let field = |k: &str| -> String {
            match v.as_ref().and_then(|v| v.get(k)) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => "-".into(),
                Some(x) => x.to_string(),
            }
        };
        let sync = v
            .as_ref()
            .and_then(|v| v.get("sync"))
            .map(sync_cell)
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<8} {:<8} {:<10} {:>5} {:<8} {:>10} {:>10} {:>8} {:>8} {:>6}  {}",
            n.id,
            process,
            field("role"),
            field("term"),
            field("leader_id"),
            field("committed_index"),
            field("applied_index"),
            field("applied_height"),
            field("exec_height"),
            field("exec_lag"),
            sync,
        );
    }
    out
}

/// `/status` `sync` as one table cell: blocks stored of the hole, rate and time left, or `-`
/// while the node lacks nothing.
fn sync_cell(sync: &serde_json::Value) -> String {
    let n = |k: &str| sync.get(k).and_then(|x| x.as_f64());
    match (n("from"), n("to"), n("done")) {
        (Some(from), Some(to), Some(done)) => {
            let total = (to - from + 1.0).max(1.0);
            let eta = n("eta_s").map_or("?".to_string(), |s| format!("{s:.0}s"));
            format!(
                "fetching {from:.0}..{to:.0}: {done:.0}/{total:.0} ({:.0}%), {:.0} blocks/s, eta {eta}",
                100.0 * done / total,
                n("blocks_per_s").unwrap_or(0.0),
            )
        }
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::sync_cell;

    #[test]
    fn the_sync_cell_shows_progress_rate_and_eta() {
        let v = serde_json::json!({"from": 1, "to": 1000, "done": 250, "blocks_per_s": 5000.0, "eta_s": 1.0});
        assert_eq!(
            sync_cell(&v),
            "fetching 1..1000: 250/1000 (25%), 5000 blocks/s, eta 1s"
        );
        assert_eq!(sync_cell(&serde_json::Value::Null), "-");
    }
}
