//! `haseqd bench-catch-up`: how fast a node that was down far longer than the log keeps
//! comes back: snapshot, history fetched from its peers over P2P, replay into its engine,
//! while the cluster keeps producing; and what serving it costs its peers in memory.
//!
//! Method: `--nodes` `haseqd run` processes on loopback (as `haseqd bench`), durable storage,
//! the guide's timings, `node.block_time: 0s`, `trailing_logs: 100` and a snapshot every
//! `--snapshot-threshold` entries, embedded engines filling blocks with `--block-bytes`. Once
//! a leader has produced a warm-up, one follower is killed (SIGKILL); when the leader has
//! produced `--down-blocks` more, the follower is started again. Its `/status` is read every
//! 20 ms until its engine reaches the height the leader had at the restart:
//! - fetch: from the first `sync` report to the last, the blocks of every sync job, per s;
//! - catch-up: from the restart until the engine is at that height, the blocks the engine
//!   replayed (that height minus where it started), per s;
//! - phases: restart to the first `sync` report, the fetch, and the replay of what was left
//!   when the fetch ended (the hole is filled newest range first, since only the chain above
//!   vouches for a block, so the replay of the hole waits for its bottom range);
//! - the leader's production rate over the catch-up;
//! - the serving nodes' resident memory (`VmRSS`) before the restart and at its peak.
//!
//! With `--learner`, no follower is killed: once the cluster has produced `--down-blocks`
//! blocks, a new node started with `raft.join: true` is added as a learner
//! (`POST /admin/members/learner` on the leader), and the time until the leader's
//! `GET /members` shows its lag within `max_exec_lag_blocks` (it may be promoted) is measured;
//! then it is promoted (`POST /admin/members/promote`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use haseq_actors::api_client as http;

use crate::bench::{check_processes, parse_bytes, show_logs, tx_split, wait_for_leader};
use crate::local_cluster::{self, LocalNode, LogSizes};

/// Blocks produced before the follower is killed.
const WARMUP_BLOCKS: u64 = 50;
/// How often the restarted node's progress is read.
const POLL: Duration = Duration::from_millis(20);
/// Deadline of one `/status` call.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// The Raft log kept behind a snapshot: small, so the follower must come back by snapshot.
const TRAILING_LOGS: u64 = 100;

/// Options of `haseqd bench-catch-up`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CatchUpArgs {
    /// Number of nodes (3, 5 or 7).
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: usize,
    /// Synthetic payload per block, e.g. `1KiB`, `10KiB`, `100KiB`.
    #[arg(long, default_value = "10KiB", value_parser = parse_bytes)]
    pub(crate) block_bytes: u64,
    /// Blocks produced while the follower is down.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) down_blocks: u64,
    /// `raft.snapshot_threshold` of every node.
    #[arg(long, default_value_t = 1000)]
    pub(crate) snapshot_threshold: u64,
    /// Give up after this long (e.g. `10m`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
    /// Keep the cluster's data and logs here (must be empty or missing).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Measure a new node added as a learner instead of a follower coming back.
    #[arg(long)]
    pub(crate) learner: bool,
}

/// `raft.max_exec_lag_blocks` (the default): a learner within it may be promoted.
const PROMOTABLE_LAG: u64 = 10;

/// What a run measured.
#[derive(Debug, Clone, Default)]
struct Figures {
    hole_blocks: u64,
    fetch_s: f64,
    replayed_blocks: u64,
    catch_up_s: f64,
    /// From the restart to the first `sync` report (start-up, snapshot install).
    to_sync_s: f64,
    /// From the end of the fetch to the engine at the target: blocks and seconds.
    replay_after_fetch: Option<(u64, f64)>,
    produced_during: u64,
    rss_before_kib: BTreeMap<String, u64>,
    rss_peak_kib: BTreeMap<String, u64>,
}

/// Run the benchmark.
///
/// # Errors
/// Bad arguments, a cluster that does not start or produce, a follower that does not catch
/// up within `--timeout`, Ctrl-C.
pub(crate) async fn run(args: CatchUpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(args.nodes, 3 | 5 | 7),
        "--nodes {}: 3, 5 or 7 (one is stopped, the others must keep a quorum)",
        args.nodes
    );
    anyhow::ensure!(
        args.down_blocks > args.snapshot_threshold + TRAILING_LOGS,
        "--down-blocks {}: more than --snapshot-threshold + {TRAILING_LOGS}, or no snapshot is needed",
        args.down_blocks
    );
    let (dir, _temp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            let used = std::fs::read_dir(d)?.next().is_some();
            anyhow::ensure!(!used, "--dir {}: must be empty or missing", d.display());
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("haseq-catch-up-")
                .tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let (txs, tx_bytes) = tx_split(args.block_bytes);
    let secret = local_cluster::ensure_secret(&dir)?;
    let joiners = usize::from(args.learner);
    let mut nodes = local_cluster::layout(&dir, args.nodes + joiners, None)?;
    let extra = format!(
        "engine:\n  kind: embedded\n  embedded:\n    txs_per_block: {txs}\n    tx_bytes: {tx_bytes}\n\
         log:\n  level: \"warn\"\n"
    );
    let sizes = LogSizes {
        trailing_logs: TRAILING_LOGS,
        snapshot_threshold: args.snapshot_threshold,
    };
    local_cluster::write_configs_sized(&dir, &nodes, &secret, Duration::ZERO, sizes, &extra)?;
    if args.learner {
        // The founders know only each other; the new node knows them all and joins.
        let founders = &nodes[..args.nodes];
        local_cluster::write_configs_sized(&dir, founders, &secret, Duration::ZERO, sizes, &extra)?;
        let joiner = &nodes[args.nodes];
        let text = std::fs::read_to_string(&joiner.config)?;
        let text = text.replacen(
            "raft:\n  enable: true\n",
            "raft:\n  enable: true\n  join: true\n",
            1,
        );
        std::fs::write(&joiner.config, text)?;
    }
    let exe = std::env::current_exe().context("locating the haseqd executable")?;
    eprintln!(
        "haseq bench-catch-up: {} nodes, blocks of {} bytes, {} for {} blocks, \
         trailing_logs {TRAILING_LOGS}, snapshot every {} entries, in {}",
        args.nodes,
        txs * tx_bytes,
        if args.learner {
            "a learner added after"
        } else {
            "a follower down"
        },
        args.down_blocks,
        args.snapshot_threshold,
        dir.display()
    );
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let deadline = Instant::now() + args.timeout;
    let result = tokio::select! {
        r = async {
            if args.learner {
                measure_learner(&exe, &mut nodes, &args, deadline).await.map(Measured::Learner)
            } else {
                measure(&exe, &mut nodes, &args, deadline).await.map(Measured::Follower)
            }
        } => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (Ctrl-C)")),
        _ = sigterm.recv() => Err(anyhow!("interrupted (SIGTERM)")),
    };
    if result.is_err() {
        show_logs(&nodes);
    }
    local_cluster::stop_all(&mut nodes).await;
    match result? {
        Measured::Follower(f) => print(&f, &args),
        Measured::Learner(l) => print_learner(&l, &args),
    }
    Ok(())
}

/// A run's figures, by mode.
enum Measured {
    Follower(Figures),
    Learner(LearnerFigures),
}

fn rate(blocks: u64, s: f64) -> f64 {
    (blocks as f64 / s.max(1e-3) * 10.0).round() / 10.0
}

fn print(f: &Figures, args: &CatchUpArgs) {
    let fetch_rate = rate(f.hole_blocks, f.fetch_s);
    let catch_up_rate = rate(f.replayed_blocks, f.catch_up_s);
    let production = rate(f.produced_during, f.catch_up_s);
    let replay_rate = f.replay_after_fetch.map(|(b, s)| rate(b, s));
    if args.json {
        let v = serde_json::json!({
            "hole_blocks": f.hole_blocks,
            "fetch_s": f.fetch_s,
            "fetch_blocks_per_s": fetch_rate,
            "replayed_blocks": f.replayed_blocks,
            "catch_up_s": f.catch_up_s,
            "catch_up_blocks_per_s": catch_up_rate,
            "to_sync_s": f.to_sync_s,
            "replay_after_fetch_blocks": f.replay_after_fetch.map(|(b, _)| b),
            "replay_after_fetch_s": f.replay_after_fetch.map(|(_, s)| s),
            "replay_after_fetch_blocks_per_s": replay_rate,
            "produced_blocks_per_s": production,
            "serving_rss_before_kib": f.rss_before_kib,
            "serving_rss_peak_kib": f.rss_peak_kib,
            "block_bytes": args.block_bytes,
            "nodes": args.nodes,
        });
        println!("{v}");
        return;
    }
    println!(
        "haseq bench-catch-up: {} nodes, {}-byte blocks, follower down for {} blocks",
        args.nodes, args.block_bytes, args.down_blocks
    );
    println!(
        "  fetched over P2P: {} blocks in {:.2} s: {fetch_rate} blocks/s",
        f.hole_blocks, f.fetch_s
    );
    println!(
        "  caught up (restart -> engine at the head it restarted under): {} blocks replayed in {:.2} s: {catch_up_rate} blocks/s",
        f.replayed_blocks, f.catch_up_s
    );
    println!(
        "  phases: restart -> first sync report {:.2} s; fetch {:.2} s; then replay{}",
        f.to_sync_s,
        f.fetch_s,
        match f.replay_after_fetch {
            Some((b, s)) => format!(
                " of the {b} blocks left: {s:.2} s, {} blocks/s",
                replay_rate.unwrap_or(0.0)
            ),
            None => ": none left".to_string(),
        }
    );
    println!("  meanwhile the leader produced {production} blocks/s");
    for (id, before) in &f.rss_before_kib {
        let peak = f.rss_peak_kib.get(id).copied().unwrap_or(0);
        println!("  serving {id}: resident {before} KiB before, {peak} KiB at peak");
    }
}

struct Seen {
    role: String,
    applied_height: u64,
    exec_height: u64,
    sync: Option<(u64, u64)>,
}

async fn read(api: &str) -> anyhow::Result<Seen> {
    let r = http::request(api, "GET", "/status", None, STATUS_TIMEOUT)
        .await
        .map_err(|e| anyhow!(e))?;
    anyhow::ensure!(r.status == 200, "GET http://{api}/status: {}", r.status);
    let v: serde_json::Value = serde_json::from_str(&r.body)?;
    let sync = v["sync"]
        .as_object()
        .and_then(|s| Some((s.get("from")?.as_u64()?, s.get("to")?.as_u64()?)));
    Ok(Seen {
        role: v["role"].as_str().unwrap_or_default().to_string(),
        applied_height: v["applied_height"].as_u64().unwrap_or(0),
        exec_height: v["exec_height"].as_u64().unwrap_or(0),
        sync,
    })
}

/// Resident memory of a process, from `/proc/PID/status`.
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn wait_height(
    nodes: &mut [LocalNode],
    i: usize,
    height: u64,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        check_processes(nodes)?;
        if let Ok(s) = read(&nodes[i].api).await
            && s.applied_height >= height
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{} did not reach height {height} in time", nodes[i].id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn measure(
    exe: &std::path::Path,
    nodes: &mut [LocalNode],
    args: &CatchUpArgs,
    deadline: Instant,
) -> anyhow::Result<Figures> {
    for n in nodes.iter_mut() {
        n.child = Some(local_cluster::spawn(exe, n)?);
    }
    let leader = wait_for_leader(nodes, deadline).await?;
    wait_height(nodes, leader, WARMUP_BLOCKS, deadline).await?;
    let lagger = (leader + 1) % nodes.len();
    if let Some(mut c) = nodes[lagger].child.take() {
        c.kill().await.context("killing the follower")?;
    }
    let from = read(&nodes[leader].api).await?.applied_height;
    eprintln!(
        "haseq bench-catch-up: {} killed at height {from}; {} leads",
        nodes[lagger].id, nodes[leader].id
    );
    wait_height(nodes, leader, from + args.down_blocks, deadline).await?;

    let mut f = Figures::default();
    for (i, n) in nodes.iter().enumerate() {
        if i != lagger
            && let Some(kib) = rss_kib(n.child.as_ref().and_then(|c| c.id()))
        {
            f.rss_before_kib.insert(n.id.clone(), kib);
        }
    }
    let target = read(&nodes[leader].api).await?.applied_height;
    let leader_at_restart = target;
    nodes[lagger].child = Some(local_cluster::spawn(exe, &nodes[lagger])?);
    let restarted = Instant::now();
    eprintln!(
        "haseq bench-catch-up: {} restarted; leader at {target}",
        nodes[lagger].id
    );
    let mut exec_start: Option<u64> = None;
    let mut jobs: BTreeMap<(u64, u64), ()> = BTreeMap::new();
    let mut fetch_first: Option<Instant> = None;
    let mut fetch_last: Option<Instant> = None;
    // When the fetch was seen over (no `sync` report after one), and the engine's height then.
    let mut fetch_over: Option<(Instant, u64)> = None;
    let mut last_shown = Instant::now();
    loop {
        check_processes(nodes)?;
        for (i, n) in nodes.iter().enumerate() {
            if i != lagger
                && let Some(kib) = rss_kib(n.child.as_ref().and_then(|c| c.id()))
            {
                let peak = f.rss_peak_kib.entry(n.id.clone()).or_default();
                *peak = (*peak).max(kib);
            }
        }
        if let Ok(s) = read(&nodes[lagger].api).await {
            exec_start.get_or_insert(s.exec_height);
            if let Some(job) = s.sync {
                jobs.insert(job, ());
                if fetch_first.is_none() {
                    fetch_first = Some(Instant::now());
                    f.to_sync_s = restarted.elapsed().as_secs_f64();
                }
                fetch_last = Some(Instant::now());
                fetch_over = None;
            } else if fetch_first.is_some() && fetch_over.is_none() {
                fetch_over = Some((Instant::now(), s.exec_height));
            }
            if last_shown.elapsed() >= Duration::from_secs(1) {
                eprintln!(
                    "  {:.1}s: {} {} exec {} of {target}, sync {:?}",
                    restarted.elapsed().as_secs_f64(),
                    nodes[lagger].id,
                    s.role,
                    s.exec_height,
                    s.sync
                );
                last_shown = Instant::now();
            }
            if s.exec_height >= target {
                f.catch_up_s = restarted.elapsed().as_secs_f64();
                f.replayed_blocks = target - exec_start.unwrap_or(0);
                f.replay_after_fetch = fetch_over
                    .map(|(at, exec)| (target.saturating_sub(exec), at.elapsed().as_secs_f64()));
                break;
            }
        }
        if Instant::now() >= deadline {
            bail!("{} did not catch up within --timeout", nodes[lagger].id);
        }
        tokio::time::sleep(POLL).await;
    }
    f.hole_blocks = jobs.keys().map(|(a, b)| b - a + 1).sum();
    f.fetch_s = match (fetch_first, fetch_last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64() + POLL.as_secs_f64(),
        _ => 0.0,
    };
    let now = read(&nodes[leader].api).await?.applied_height;
    f.produced_during = now.saturating_sub(leader_at_restart);
    Ok(f)
}

/// What a `--learner` run measured.
#[derive(Debug, Clone, Default)]
struct LearnerFigures {
    /// The leader's height when the learner was added.
    behind_blocks: u64,
    /// From the add to the leader seeing the learner within [`PROMOTABLE_LAG`].
    promotable_s: f64,
    /// The promotion call.
    promote_s: f64,
    /// The learner's lag then.
    lag_then: u64,
}

fn print_learner(l: &LearnerFigures, args: &CatchUpArgs) {
    if args.json {
        let v = serde_json::json!({
            "learner_behind_blocks": l.behind_blocks,
            "promotable_s": l.promotable_s,
            "promotable_blocks_per_s": rate(l.behind_blocks, l.promotable_s),
            "promote_s": l.promote_s,
            "lag_at_promotion": l.lag_then,
            "block_bytes": args.block_bytes,
            "nodes": args.nodes,
        });
        println!("{v}");
        return;
    }
    println!(
        "haseq bench-catch-up --learner: {} nodes, {}-byte blocks, a learner added {} blocks behind",
        args.nodes, args.block_bytes, l.behind_blocks
    );
    println!(
        "  promotable (lag {} <= {PROMOTABLE_LAG}, as the leader sees it) {:.2} s after add-learner: {} blocks/s",
        l.lag_then,
        l.promotable_s,
        rate(l.behind_blocks, l.promotable_s)
    );
    println!("  promoted in {:.3} s", l.promote_s);
}

/// `POST path` with `body` on `api`; an error unless it answers 200.
async fn post(api: &str, path: &str, body: &serde_json::Value) -> anyhow::Result<()> {
    let body = body.to_string();
    let r = http::request(api, "POST", path, Some(&body), Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!(e))?;
    anyhow::ensure!(
        r.status == 200,
        "POST {path} {body}: HTTP {}: {}",
        r.status,
        r.body
    );
    Ok(())
}

/// The learner's lag in the leader's `GET /members`, when it is listed with one.
async fn learner_lag(leader_api: &str, id: &str) -> Option<u64> {
    let r = http::request(leader_api, "GET", "/members", None, STATUS_TIMEOUT)
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    v["learners"].as_array()?.iter().find(|m| m["id"] == id)?["lag_blocks"].as_u64()
}

async fn measure_learner(
    exe: &std::path::Path,
    nodes: &mut [LocalNode],
    args: &CatchUpArgs,
    deadline: Instant,
) -> anyhow::Result<LearnerFigures> {
    let n = args.nodes;
    for node in nodes[..n].iter_mut() {
        node.child = Some(local_cluster::spawn(exe, node)?);
    }
    let leader = wait_for_leader(&mut nodes[..n], deadline).await?;
    wait_height(nodes, leader, args.down_blocks, deadline).await?;
    nodes[n].child = Some(local_cluster::spawn(exe, &nodes[n])?);
    let (id, addr, api) = (
        nodes[n].id.clone(),
        nodes[n].raft.clone(),
        nodes[leader].api.clone(),
    );
    // The joiner answers its API once it serves (bounded by the deadline).
    while read(&nodes[n].api).await.is_err() {
        check_processes(nodes)?;
        anyhow::ensure!(Instant::now() < deadline, "{id} did not start in time");
        tokio::time::sleep(POLL).await;
    }
    let mut f = LearnerFigures {
        behind_blocks: read(&api).await?.applied_height,
        ..LearnerFigures::default()
    };
    let added = Instant::now();
    let body = serde_json::json!({ "id": id, "addr": addr });
    post(&api, "/admin/members/learner", &body).await?;
    eprintln!(
        "haseq bench-catch-up: {id} added as a learner {} blocks behind",
        f.behind_blocks
    );
    let mut last_shown = Instant::now();
    loop {
        check_processes(nodes)?;
        let lag = learner_lag(&api, &id).await;
        if let Some(lag) = lag.filter(|l| *l <= PROMOTABLE_LAG) {
            f.promotable_s = added.elapsed().as_secs_f64();
            f.lag_then = lag;
            break;
        }
        if last_shown.elapsed() >= Duration::from_secs(1) {
            let s = read(&nodes[n].api).await.ok();
            eprintln!(
                "  {:.1}s: {id} lag {lag:?}, exec {:?}, sync {:?}",
                added.elapsed().as_secs_f64(),
                s.as_ref().map(|s| s.exec_height),
                s.as_ref().and_then(|s| s.sync)
            );
            last_shown = Instant::now();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{id} did not become promotable within --timeout"
        );
        tokio::time::sleep(POLL).await;
    }
    let t = Instant::now();
    post(
        &api,
        "/admin/members/promote",
        &serde_json::json!({ "id": id }),
    )
    .await?;
    f.promote_s = t.elapsed().as_secs_f64();
    Ok(f)
}
