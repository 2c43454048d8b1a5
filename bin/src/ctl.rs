//! `haseqd ctl`: drive a node's HTTP API from the command line.
//!
//! Exit status 0 when the node did what was asked, 1 when it refused (the reason is printed)
//! or could not be reached.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use haseq_actors::api_client;
use serde_json::{Value, json};

/// Deadline of one API call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// `ctl watch`'s pause before reconnecting, doubled while the node cannot be reached.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest such pause.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Deadline of a membership change: forwarded to the leader, committed twice (joint
/// consensus), and for the leader's own removal a hand-over first.
const MEMBERS_CALL_TIMEOUT: Duration = Duration::from_secs(40);

/// `ID@HOST:PORT` of `ctl add-learner`.
fn parse_member(s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('@') {
        Some((id, addr)) if !id.is_empty() && !addr.is_empty() => {
            Ok((id.to_string(), addr.to_string()))
        }
        _ => bail!("{s:?}: expected ID@HOST:PORT, e.g. node-4@10.0.0.4:5001"),
    }
}

/// Options of `haseqd ctl`.
#[derive(Debug, clap::Args)]
pub(crate) struct CtlArgs {
    /// The node's API, e.g. `http://127.0.0.1:7700`.
    #[arg(long, default_value = "http://127.0.0.1:7700", env = "HASEQ_API")]
    pub(crate) api: String,
    /// A file holding the admin bearer token (needed beyond loopback).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) cmd: CtlCmd,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CtlCmd {
    /// Print the node's status.
    Status,
    /// Exit 0 when the node is ready (a live leader known, all it knows committed applied,
    /// its engine within max_exec_lag_blocks), 1 otherwise with the reason: for health checks.
    Ready,
    /// Print a committed block's header.
    Block {
        /// Its height.
        height: u64,
    },
    /// Print every role, term, leader and eligibility change as it happens (Ctrl-C stops).
    Watch,
    /// Print the timing advisor's verdict: the largest round trip measured to a peer, the
    /// configured Raft timings, and the operator guide's values for that round trip.
    Tune,
    /// Hand leadership to a node (or the best peer).
    TransferLeader {
        /// The target node id; the most caught-up healthy peer when absent.
        #[arg(long)]
        to: Option<String>,
        /// Transfer even to a lagging, unhealthy or paused node.
        #[arg(long)]
        force: bool,
    },
    /// Stop this node from producing (persisted across restarts) until `resume`.
    Pause {
        /// Pause even if this is the last eligible node.
        #[arg(long)]
        force: bool,
    },
    /// Let this node produce again.
    Resume,
    /// List the voters and learners: address, role, lag, last contact.
    Members {
        /// Print the JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Add a node as a learner: it receives the log and catches up, without a vote.
    AddLearner {
        /// `ID@HOST:PORT`, the node's id and its node-to-node address, e.g.
        /// `node-4@10.0.0.4:5001`.
        member: String,
    },
    /// Make a learner a voter (refused while it lags more than max_exec_lag_blocks).
    Promote {
        /// The learner's id.
        id: String,
        /// Promote whatever its lag.
        #[arg(long)]
        force: bool,
    },
    /// Remove a voter or learner (the leader hands leadership over first).
    Remove {
        /// The member's id.
        id: String,
        /// Remove even if the voters left would not form a quorum of live nodes.
        #[arg(long)]
        force: bool,
    },
    /// Set the embedded engine's fault knobs (tests and drills).
    EngineFault {
        /// Delay each imported block, e.g. `200ms`.
        #[arg(long)]
        delay: Option<String>,
        /// Fail every engine call.
        #[arg(long)]
        fail: bool,
        /// Drop the newest N blocks on the engine's next restart.
        #[arg(long = "lose-on-restart")]
        lose_on_restart: Option<u64>,
        /// Clear every knob.
        #[arg(long, conflicts_with_all = ["delay", "fail", "lose_on_restart"])]
        clear: bool,
    },
}

fn host_port(api: &str) -> anyhow::Result<String> {
    let rest = api.strip_prefix("http://").unwrap_or(api);
    if api.starts_with("https://") {
        bail!("--api {api}: https is not supported; use the node's plain HTTP address");
    }
    let hp = rest.trim_end_matches('/');
    if hp.is_empty() || !hp.contains(':') || hp.contains('/') {
        bail!("--api {api}: expected http://HOST:PORT");
    }
    Ok(hp.to_string())
}

/// Run a ctl command.
///
/// # Errors
/// The node is unreachable or refused.
pub(crate) async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let addr = host_port(&args.api)?;
    let token = match &args.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("--token-file {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let (method, path, body) = match &args.cmd {
        CtlCmd::Status => ("GET", "/status", None),
        CtlCmd::Ready => ("GET", "/ready", None),
        CtlCmd::Block { .. } => ("GET", "/block/", None),
        CtlCmd::Watch => return watch(&addr).await,
        CtlCmd::Tune => return tune(&addr).await,
        CtlCmd::TransferLeader { to, force } => (
            "POST",
            "/admin/transfer-leader",
            Some(json!({ "to": to, "force": force })),
        ),
        CtlCmd::Pause { force } => ("POST", "/admin/pause", Some(json!({ "force": force }))),
        CtlCmd::Resume => ("POST", "/admin/resume", Some(json!({}))),
        CtlCmd::Members { json: false } => return members(&addr).await,
        CtlCmd::Members { json: true } => ("GET", "/members", None),
        CtlCmd::AddLearner { member } => {
            let (id, member_addr) = parse_member(member)?;
            (
                "POST",
                "/admin/members/learner",
                Some(json!({ "id": id, "addr": member_addr })),
            )
        }
        CtlCmd::Promote { id, force } => (
            "POST",
            "/admin/members/promote",
            Some(json!({ "id": id, "force": force })),
        ),
        CtlCmd::Remove { id, force } => (
            "POST",
            "/admin/members/remove",
            Some(json!({ "id": id, "force": force })),
        ),
        CtlCmd::EngineFault {
            delay,
            fail,
            lose_on_restart,
            clear,
        } => {
            let mut b = serde_json::Map::new();
            if !clear {
                if let Some(d) = delay {
                    b.insert("delay_per_block".into(), json!(d));
                }
                if *fail {
                    b.insert("fail".into(), json!(true));
                }
                if let Some(n) = lose_on_restart {
                    b.insert("lose_newest_on_restart".into(), json!(n));
                }
            }
            ("POST", "/admin/engine/fault", Some(Value::Object(b)))
        }
    };
    let body = body.map(|b| b.to_string());
    let path = match &args.cmd {
        CtlCmd::Block { height } => format!("{path}{height}"),
        _ => path.to_string(),
    };
    let path = path.as_str();
    let deadline = if path.starts_with("/admin/members/") {
        MEMBERS_CALL_TIMEOUT
    } else {
        CALL_TIMEOUT
    };
    let r = api_client::request_auth(
        &addr,
        method,
        path,
        body.as_deref(),
        token.as_deref(),
        deadline,
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let pretty = serde_json::from_str::<Value>(&r.body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(r.body.clone());
    if (200..300).contains(&r.status) {
        println!("{pretty}");
        Ok(())
    } else {
        bail!("{method} {path}: HTTP {}: {pretty}", r.status)
    }
}

/// `GET path` as JSON; an error unless it answers 200.
async fn get_json(addr: &str, path: &str) -> anyhow::Result<Value> {
    let r = api_client::request(addr, "GET", path, None, CALL_TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    if r.status != 200 {
        bail!("GET {path}: HTTP {}: {}", r.status, r.body);
    }
    serde_json::from_str(&r.body).with_context(|| format!("GET {path}: not JSON"))
}

/// The Raft timings `ctl tune` shows, as `raft.<key>`.
const TIMING_KEYS: [&str; 4] = [
    "heartbeat_timeout",
    "election_timeout",
    "leader_lease_timeout",
    "send_timeout",
];

/// `ctl tune`: `/status` `timing` as a table, with the lines to put in the configuration.
async fn tune(addr: &str) -> anyhow::Result<()> {
    let v = get_json(addr, "/status").await?;
    let t = &v["timing"];
    if t.is_null() {
        bail!("the node has no timing advice yet (it has just started); try again");
    }
    let verdict = t["verdict"].as_str().unwrap_or("unknown");
    match (t["rtt_max_ms"].as_f64(), t["rtt_max_peer"].as_str()) {
        (Some(rtt), Some(peer)) => {
            println!("largest round trip over the last 30 s: {rtt} ms (to {peer})")
        }
        _ => println!("no round trip measured yet (no peer answered)"),
    }
    println!("{:<22} {:>12} {:>12}", "timing", "configured", "suggested");
    for key in TIMING_KEYS {
        let field = format!("{key}_ms");
        let have = t["configured"][&field].as_f64();
        let want = t["suggested"][&field].as_f64();
        let show = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x} ms"));
        println!("{key:<22} {:>12} {:>12}", show(have), show(want));
    }
    println!("verdict: {verdict}");
    for reason in t["reasons"].as_array().into_iter().flatten() {
        println!("  {}", reason.as_str().unwrap_or_default());
    }
    // Only raise: below the configured values the formulas leave no room for load or
    // jitter the 30 s window did not see (on loopback they suggest single milliseconds).
    if verdict == "too_tight"
        && let Some(s) = t["suggested"].as_object()
    {
        println!("suggested configuration (raft section), at least:");
        for key in TIMING_KEYS {
            if let Some(ms) = s.get(&format!("{key}_ms")).and_then(Value::as_f64) {
                println!("  {key}: \"{}ms\"", ms.ceil());
            }
        }
    }
    Ok(())
}

/// `ctl members`: `GET /members` as a table.
async fn members(addr: &str) -> anyhow::Result<()> {
    let v = get_json(addr, "/members").await?;
    println!(
        "membership at log index {} (asked {}; leader {})",
        v["membership_log_index"],
        v["node_id"].as_str().unwrap_or("?"),
        v["leader_id"].as_str().unwrap_or("unknown")
    );
    println!(
        "{:<12} {:<8} {:<22} {:>10} {:>12} {:>10}",
        "id", "role", "addr", "lag", "last seen", "matched"
    );
    let show = |x: &Value, unit: &str| x.as_u64().map_or("-".to_string(), |n| format!("{n}{unit}"));
    for m in ["voters", "learners"]
        .iter()
        .flat_map(|k| v[*k].as_array().cloned().unwrap_or_default())
    {
        let addr = m["addr"].as_str().unwrap_or("");
        println!(
            "{:<12} {:<8} {:<22} {:>10} {:>12} {:>10}",
            m["id"].as_str().unwrap_or("?"),
            m["role"].as_str().unwrap_or("?"),
            if addr.is_empty() { "-" } else { addr },
            show(&m["lag_blocks"], ""),
            show(&m["last_seen_ms"], " ms"),
            show(&m["matched_index"], ""),
        );
    }
    Ok(())
}

/// Follow `/events` (server-sent events) and print each event's data line.
/// `ctl watch`: print each event's JSON as it comes; when the stream ends or fails (the node
/// restarted, the network dropped), say so on stderr and reconnect, backing off from 100 ms to
/// 2 s while the node cannot be reached, until Ctrl-C. The node sends its current state first
/// on every connection, so a change made while away is printed on the return.
async fn watch(addr: &str) -> anyhow::Result<()> {
    let mut backoff = WATCH_BACKOFF_MIN;
    let mut ever_connected = false;
    loop {
        let (connected, why) = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            r = watch_once(addr, ever_connected) => r,
        };
        if connected {
            // A stream that ran, then ended: try again soon.
            backoff = WATCH_BACKOFF_MIN;
            ever_connected = true;
        }
        eprintln!("haseqd ctl watch: {why}; reconnecting in {backoff:?}");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        if !connected {
            backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
        }
    }
}

/// One connection of `ctl watch`: whether it was made, and why it ended.
async fn watch_once(addr: &str, reconnect: bool) -> (bool, String) {
    let mut events = match api_client::EventStream::open(addr, CALL_TIMEOUT).await {
        Ok(e) => e,
        Err(why) => return (false, why),
    };
    if reconnect {
        eprintln!("haseqd ctl watch: reconnected to {addr}");
    }
    loop {
        match events.next_data().await {
            Ok(Some(data)) => println!("{data}"),
            Ok(None) => return (true, "the node closed the event stream".into()),
            Err(why) => return (true, why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls() {
        assert_eq!(
            host_port("http://127.0.0.1:7700").unwrap(),
            "127.0.0.1:7700"
        );
        assert_eq!(host_port("127.0.0.1:7700/").unwrap(), "127.0.0.1:7700");
        assert!(host_port("https://x:1").is_err());
        assert!(host_port("http://nohost").is_err());
    }

    #[test]
    fn learner_arguments() {
        assert_eq!(
            parse_member("node-4@10.0.0.4:5001").unwrap(),
            ("node-4".to_string(), "10.0.0.4:5001".to_string())
        );
        let e = parse_member("node-4").unwrap_err().to_string();
        assert!(e.contains("ID@HOST:PORT"), "{e}");
        assert!(parse_member("@10.0.0.4:5001").is_err());
    }
}
