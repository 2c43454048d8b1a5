//! `haseqd bench`: drive a real cluster of separate processes at full speed and report
//! commit latency and throughput.
//!
//! Method: `--nodes` `haseqd run` processes on loopback (`local_cluster`), each with its own
//! durable LMDB storage in a temporary directory, the operator guide's Raft timings,
//! `node.block_time: 0s` (the next block starts as soon as the previous one commits) and
//! embedded engines filling each block with `--block-bytes` of synthetic transactions. Once a
//! leader is elected and has committed the warm-up blocks, its commit-latency log
//! (`GET /stats/commit-latency`: proposal → applied on the leader, with the entry durable on a
//! quorum before it commits) is read at two points, after the warm-up and after `--blocks`,
//! and the figures cover exactly the blocks committed between the two:
//! - latency p50 / p99 / max of those blocks, nearest rank;
//! - blocks per second = those blocks / the time between the last commit before and the last
//!   commit of the window, both as the leader recorded them.
//!
//! Every process started is stopped on the way out, on success, error, Ctrl-C or SIGTERM
//! (and the kernel kills them if this process dies: see `local_cluster`).

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use crate::local_cluster::{self, LocalNode};
use haseq_actors::api_client as http;

/// Bytes of one synthetic transaction at most; a block of N bytes carries ⌈N / this⌉ of them.
const TX_BYTES_MAX: u64 = 1024;
/// Largest `--block-bytes` (the embedded engine's limit is higher; a Raft entry this big is
/// already far from a sequencer's blocks).
const BLOCK_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Blocks always dropped as warm-up (first elections, cold caches, first LMDB pages).
const WARMUP_BLOCKS_MIN: u64 = 20;
/// Share of `--blocks` dropped as warm-up when it is more than [`WARMUP_BLOCKS_MIN`].
const WARMUP_PERCENT: u64 = 2;
/// Fewest `--blocks`: a warm-up and still enough blocks for a p99.
const BLOCKS_MIN: u64 = 2 * WARMUP_BLOCKS_MIN + 10;
/// How long the cluster may take to elect its first leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// How often the leader's progress is polled (also bounds how far past the warm-up the
/// measured window starts).
const POLL: Duration = Duration::from_millis(50);
/// How often progress is shown on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Deadline of one `/status` call.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// Deadline of one `/stats/commit-latency` call (a large body at the end of a long run).
const STATS_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of each node's log shown when the bench fails.
const LOG_TAIL_LINES: usize = 15;

/// Options of `haseqd bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Number of nodes (an odd number: 1, 3, 5 or 7).
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: usize,
    /// Synthetic payload per block, e.g. `512B`, `1KiB`, `10KiB`, `100KiB`, `1MiB`.
    #[arg(long, default_value = "10KiB", value_parser = parse_bytes)]
    pub(crate) block_bytes: u64,
    /// Blocks to commit; the first 2% (at least 20) are a warm-up and not measured.
    #[arg(long, default_value_t = 5000)]
    pub(crate) blocks: u64,
    /// Give up after this long (e.g. `10m`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
    /// Keep the cluster's data and logs here (created if missing) instead of a temporary
    /// directory that is removed at the end.
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Print one JSON object on stdout: `p50_ms`, `p99_ms`, `max_ms`, `mean_ms`,
    /// `blocks_per_s`, `blocks` (measured, after the warm-up), `block_bytes`, `nodes`.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Parses a size: a whole number with an optional unit `B`, `KiB`, `MiB` (case-insensitive;
/// `K`/`KB` and `M`/`MB` are taken as binary units too).
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 512B, 1KiB, 10KiB, 100KiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        other => return Err(format!("{s:?}: unknown unit {other:?} (B, KiB or MiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// How a block of `bytes` is filled: (transactions per block, bytes per transaction).
pub(crate) fn tx_split(bytes: u64) -> (u64, u64) {
    if bytes == 0 {
        return (0, 1);
    }
    let txs = bytes.div_ceil(TX_BYTES_MAX);
    (txs, bytes / txs)
}

/// Blocks dropped as warm-up for a run of `blocks`.
fn warmup_blocks(blocks: u64) -> u64 {
    WARMUP_BLOCKS_MIN.max(blocks * WARMUP_PERCENT / 100)
}

/// The `p`-th percentile (0 < p ≤ 100) of sorted samples, nearest rank.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    p50_ms: f64,
    /// The mean: with one block in flight, what the rate follows (the p50 hides the tail).
    mean_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    blocks_per_s: f64,
    /// Blocks measured (after the warm-up).
    blocks: u64,
    /// Blocks dropped as warm-up.
    warmup: u64,
    /// Time between the last warm-up commit and the last measured one.
    window: Duration,
}

/// A reading of the leader's commit-latency log.
#[derive(Debug, Clone)]
struct LatencyLog {
    total: u64,
    last_unix_ms: u64,
    samples_us: Vec<u64>,
}

/// The figures for the blocks committed between two readings of the same leader's log.
fn figures(start: &LatencyLog, end: &LatencyLog) -> anyhow::Result<Figures> {
    anyhow::ensure!(
        end.total as usize == end.samples_us.len(),
        "the leader's latency log holds {} samples of {} commits: it dropped the oldest",
        end.samples_us.len(),
        end.total
    );
    let mut window: Vec<u64> = end
        .samples_us
        .get(start.total as usize..)
        .ok_or_else(|| anyhow!("latency log shrank from {} to {}", start.total, end.total))?
        .to_vec();
    anyhow::ensure!(
        window.len() >= 2,
        "only {} blocks committed after the warm-up",
        window.len()
    );
    window.sort_unstable();
    let mean_us = window.iter().sum::<u64>() as f64 / window.len() as f64;
    let elapsed_ms = end.last_unix_ms.saturating_sub(start.last_unix_ms).max(1);
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Figures {
        p50_ms: ms(percentile(&window, 50.0)),
        mean_ms: mean_us / 1000.0,
        p99_ms: ms(percentile(&window, 99.0)),
        max_ms: ms(*window.last().unwrap_or(&0)),
        blocks_per_s: window.len() as f64 * 1000.0 / elapsed_ms as f64,
        blocks: window.len() as u64,
        warmup: start.total,
        window: Duration::from_millis(elapsed_ms),
    })
}

/// Run the benchmark.
///
/// # Errors
/// Bad arguments, a cluster that does not start, elect or produce within `--timeout`, a
/// leadership change during the run, Ctrl-C.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(args.nodes, 1 | 3 | 5 | 7),
        "--nodes {}: a Raft cluster needs an odd number of nodes: 1, 3, 5 or 7",
        args.nodes
    );
    anyhow::ensure!(
        args.block_bytes <= BLOCK_BYTES_MAX,
        "--block-bytes {}: at most {BLOCK_BYTES_MAX}",
        args.block_bytes
    );
    anyhow::ensure!(
        args.blocks >= BLOCKS_MIN,
        "--blocks {}: at least {BLOCKS_MIN} (the first {WARMUP_BLOCKS_MIN} are a warm-up)",
        args.blocks
    );
    // Dropping `_temp` at the end removes the directory (after every node has stopped).
    let (dir, _temp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            // A node with state rejoins at its old height: the warm-up would be wrong.
            let used = std::fs::read_dir(d)
                .with_context(|| format!("reading {}", d.display()))?
                .next()
                .is_some();
            anyhow::ensure!(!used, "--dir {}: must be empty or missing", d.display());
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("haseq-bench-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let (txs, tx_bytes) = tx_split(args.block_bytes);
    let block_bytes = txs * tx_bytes;
    let secret = local_cluster::ensure_secret(&dir)?;
    let mut nodes = local_cluster::layout(&dir, args.nodes, None)?;
    // Quiet nodes: a node logging every block at info would measure its logging too.
    let extra = format!(
        "engine:\n  kind: embedded\n  embedded:\n    txs_per_block: {txs}\n    tx_bytes: {tx_bytes}\n\
         log:\n  level: \"warn\"\n"
    );
    local_cluster::write_configs(&dir, &nodes, &secret, Duration::ZERO, &extra)?;
    let exe = std::env::current_exe().context("locating the haseqd executable")?;
    eprintln!(
        "haseq bench: {} nodes on loopback, blocks of {block_bytes} bytes ({txs} txs x {tx_bytes} B), \
         block_time 0s, durable storage in {}",
        args.nodes,
        dir.display()
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = {
        let spawned = spawn_all(&exe, &mut nodes);
        match spawned {
            Err(e) => Err(e),
            Ok(()) => {
                let deadline = Instant::now() + args.timeout;
                tokio::select! {
                    r = measure(&mut nodes, &args, deadline) => r,
                    _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (Ctrl-C)")),
                    _ = sigterm.recv() => Err(anyhow!("interrupted (SIGTERM)")),
                }
            }
        }
    };
    if result.is_err() {
        show_logs(&nodes);
    }
    local_cluster::stop_all(&mut nodes).await;
    let f = match result {
        Ok(f) => f,
        Err(e) if args.dir.is_none() => {
            return Err(e.context(
                "the cluster's data and logs are removed; rerun with --dir DIR to keep them",
            ));
        }
        Err(e) => return Err(e),
    };
    print_figures(&f, &args, block_bytes);
    Ok(())
}

fn spawn_all(exe: &Path, nodes: &mut [LocalNode]) -> anyhow::Result<()> {
    for n in nodes.iter_mut() {
        n.child = Some(local_cluster::spawn(exe, n)?);
    }
    Ok(())
}

fn print_figures(f: &Figures, args: &BenchArgs, block_bytes: u64) {
    // Rounded to the microsecond: the samples' own resolution.
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    if args.json {
        let v = serde_json::json!({
            "p50_ms": r3(f.p50_ms),
            "mean_ms": r3(f.mean_ms),
            "p99_ms": r3(f.p99_ms),
            "max_ms": r3(f.max_ms),
            "blocks_per_s": (f.blocks_per_s * 10.0).round() / 10.0,
            "blocks": f.blocks,
            "block_bytes": block_bytes,
            "nodes": args.nodes,
        });
        println!("{v}");
        return;
    }
    println!(
        "haseq bench: {} nodes, {block_bytes}-byte blocks, block_time 0s, durable, loopback",
        args.nodes
    );
    println!(
        "  warm-up: the first {} blocks are not measured; measured: the next {}",
        f.warmup, f.blocks
    );
    println!(
        "  commit latency (proposal -> applied on the leader): p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  mean {:.3} ms",
        f.p50_ms, f.p99_ms, f.max_ms, f.mean_ms
    );
    println!(
        "  throughput: {:.1} blocks/s ({} blocks in {:.3} s)",
        f.blocks_per_s,
        f.blocks,
        f.window.as_secs_f64()
    );
}

/// Waits for a leader, lets it pass the warm-up, then until it has applied `--blocks`, and
/// reads its latency log at both points.
async fn measure(
    nodes: &mut [LocalNode],
    args: &BenchArgs,
    deadline: Instant,
) -> anyhow::Result<Figures> {
    let leader = wait_for_leader(nodes, deadline.min(Instant::now() + LEADER_WAIT)).await?;
    let api = nodes[leader].api.clone();
    let id = nodes[leader].id.clone();
    eprintln!("haseq bench: {id} leads; producing {} blocks", args.blocks);

    let warmup = warmup_blocks(args.blocks);
    let mut progress = Progress::new();
    wait_height(nodes, leader, warmup, deadline, &mut progress).await?;
    let start = read_latency_log(&api).await?;
    wait_height(nodes, leader, args.blocks, deadline, &mut progress).await?;
    let end = read_latency_log(&api).await?;
    progress.finish();
    // The same leader throughout, or the window would mix two logs.
    let s = status(&api).await?;
    if s.role != "leader" {
        bail!(
            "{id} lost the leadership during the run (now {}, leader {}); one run measures one leader",
            s.role,
            s.leader_id.as_deref().unwrap_or("none")
        );
    }
    eprintln!(
        "haseq bench: dropped the first {} blocks as warm-up (first {WARMUP_PERCENT}%, at least {WARMUP_BLOCKS_MIN})",
        start.total
    );
    figures(&start, &end)
}

/// What the bench reads from `/status`.
#[derive(Debug, Clone)]
pub(crate) struct NodeStatus {
    role: String,
    leader_id: Option<String>,
    applied_height: u64,
}

pub(crate) async fn status(api: &str) -> anyhow::Result<NodeStatus> {
    let r = http::request(api, "GET", "/status", None, STATUS_TIMEOUT)
        .await
        .map_err(|e| anyhow!(e))?;
    anyhow::ensure!(
        r.status == 200,
        "GET http://{api}/status: {} {}",
        r.status,
        r.body
    );
    let v: serde_json::Value =
        serde_json::from_str(&r.body).with_context(|| format!("GET http://{api}/status"))?;
    Ok(NodeStatus {
        role: v["role"].as_str().unwrap_or_default().to_string(),
        leader_id: v["leader_id"].as_str().map(str::to_string),
        applied_height: v["applied_height"].as_u64().unwrap_or(0),
    })
}

async fn read_latency_log(api: &str) -> anyhow::Result<LatencyLog> {
    let path = "/stats/commit-latency";
    let r = http::request(api, "GET", path, None, STATS_TIMEOUT)
        .await
        .map_err(|e| anyhow!(e))?;
    anyhow::ensure!(
        r.status == 200,
        "GET http://{api}{path}: {} {}",
        r.status,
        r.body
    );
    let v: serde_json::Value =
        serde_json::from_str(&r.body).with_context(|| format!("GET http://{api}{path}"))?;
    let samples_us = v["samples_us"]
        .as_array()
        .ok_or_else(|| anyhow!("GET http://{api}{path}: no samples_us"))?
        .iter()
        .map(|x| {
            x.as_u64()
                .ok_or_else(|| anyhow!("sample {x} is not a number"))
        })
        .collect::<anyhow::Result<Vec<u64>>>()?;
    Ok(LatencyLog {
        total: v["total"].as_u64().unwrap_or(0),
        last_unix_ms: v["last_unix_ms"].as_u64().unwrap_or(0),
        samples_us,
    })
}

/// Fails if a node's process has exited: the run cannot be trusted any more.
pub(crate) fn check_processes(nodes: &mut [LocalNode]) -> anyhow::Result<()> {
    for n in nodes.iter_mut() {
        if let Some(c) = n.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            bail!("{} exited ({st}) during the run", n.id);
        }
    }
    Ok(())
}

pub(crate) async fn wait_for_leader(
    nodes: &mut [LocalNode],
    deadline: Instant,
) -> anyhow::Result<usize> {
    let mut last = String::from("no answer yet");
    loop {
        check_processes(nodes)?;
        let mut seen = String::new();
        for (i, n) in nodes.iter().enumerate() {
            match status(&n.api).await {
                Ok(s) if s.role == "leader" && s.leader_id.as_deref() == Some(&n.id) => {
                    return Ok(i);
                }
                Ok(s) => {
                    let _ = write!(seen, "{} {}; ", n.id, s.role);
                }
                Err(e) => {
                    let _ = write!(seen, "{} {e}; ", n.id);
                }
            }
        }
        last = if seen.is_empty() { last } else { seen };
        if Instant::now() >= deadline {
            bail!("no leader within {LEADER_WAIT:?}; last seen: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls the leader until its applied height reaches `height`.
async fn wait_height(
    nodes: &mut [LocalNode],
    leader: usize,
    height: u64,
    deadline: Instant,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let api = nodes[leader].api.clone();
    let id = nodes[leader].id.clone();
    loop {
        check_processes(nodes)?;
        // A failed poll is not fatal (a busy node may miss one deadline); the overall
        // deadline and the role check bound it.
        if let Ok(s) = status(&api).await {
            if s.role != "leader" {
                bail!(
                    "{id} lost the leadership at height {} (now {}, leader {}); one run measures one leader",
                    s.applied_height,
                    s.role,
                    s.leader_id.as_deref().unwrap_or("none")
                );
            }
            progress.show(s.applied_height, height);
            if s.applied_height >= height {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "height {height} not reached before the deadline (--timeout); last at {}",
                progress.last_height
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Progress on stderr: rewritten in place on a terminal, a line per second otherwise.
struct Progress {
    tty: bool,
    started: Instant,
    shown: Option<Instant>,
    last_height: u64,
    printed: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            shown: None,
            last_height: 0,
            printed: false,
        }
    }

    fn show(&mut self, height: u64, target: u64) {
        self.last_height = height;
        if self.shown.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.shown = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64();
        let line = format!("  height {height} / {target} after {secs:.1} s");
        if self.tty {
            eprint!("\r{line}\x1b[K");
            self.printed = true;
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&mut self) {
        if self.printed {
            eprintln!();
            self.printed = false;
        }
    }
}

pub(crate) fn show_logs(nodes: &[LocalNode]) {
    for n in nodes {
        let Ok(text) = std::fs::read_to_string(&n.log) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        eprintln!("--- {} ({}), last lines:", n.id, n.log.display());
        for l in &lines[from..] {
            eprintln!("  {l}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("512B"), Ok(512));
        assert_eq!(parse_bytes("1KiB"), Ok(1024));
        assert_eq!(parse_bytes("10KiB"), Ok(10 * 1024));
        assert_eq!(parse_bytes("100kib"), Ok(100 * 1024));
        assert_eq!(parse_bytes("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_bytes("77"), Ok(77));
        assert!(parse_bytes("KiB").is_err());
        assert!(parse_bytes("10 parsecs").is_err());
        assert!(parse_bytes("99999999999999999999MiB").is_err());
    }

    #[test]
    fn splits_blocks_into_transactions() {
        assert_eq!(tx_split(0), (0, 1));
        assert_eq!(tx_split(512), (1, 512));
        assert_eq!(tx_split(1024), (1, 1024));
        assert_eq!(tx_split(10 * 1024), (10, 1024));
        assert_eq!(tx_split(100 * 1024), (100, 1024));
        let (txs, b) = tx_split(1500);
        assert_eq!((txs, b), (2, 750));
    }

    #[test]
    fn warmup_is_two_percent_at_least_twenty() {
        assert_eq!(warmup_blocks(200), 20);
        assert_eq!(warmup_blocks(5000), 100);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
    }

    #[test]
    fn figures_cover_the_window_only() {
        let start = LatencyLog {
            total: 2,
            last_unix_ms: 1_000,
            samples_us: vec![90_000, 80_000],
        };
        let end = LatencyLog {
            total: 6,
            last_unix_ms: 3_000,
            samples_us: vec![90_000, 80_000, 1_000, 2_000, 3_000, 4_000],
        };
        let f = figures(&start, &end).unwrap();
        assert_eq!((f.blocks, f.warmup), (4, 2));
        assert_eq!((f.p50_ms, f.max_ms, f.mean_ms), (2.0, 4.0, 2.5));
        assert_eq!(f.blocks_per_s, 2.0);
    }
}
