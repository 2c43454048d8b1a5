//! Membership changes through the HTTP API, and the production gap they cause.

use std::time::{Duration, Instant};

use haseq_actors::api_client;
use serde_json::Value;

use super::{Cluster, wait_until};

/// What one membership call may take (a leader's own removal waits for a hand-over).
pub const MEMBERS_CALL: Duration = Duration::from_secs(30);

/// `POST path` with `body` on node `i`'s API: the HTTP status and the JSON answer.
pub async fn admin(c: &Cluster, i: usize, path: &str, body: Value) -> (u16, Value) {
    let api = c.node(i).api_addr.to_string();
    let body = body.to_string();
    let r = api_client::request(&api, "POST", path, Some(&body), MEMBERS_CALL)
        .await
        .unwrap_or_else(|e| panic!("POST {path} on node {i}: {e}"));
    let v = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

/// `GET path` on node `i`'s API, as JSON.
pub async fn get(c: &Cluster, i: usize, path: &str) -> Result<Value, String> {
    let api = c.node(i).api_addr.to_string();
    let r = api_client::request(&api, "GET", path, None, Duration::from_secs(2)).await?;
    if r.status != 200 {
        return Err(format!("GET {path}: HTTP {}: {}", r.status, r.body));
    }
    serde_json::from_str(&r.body).map_err(|e| e.to_string())
}

/// The ids listed under `key` (`voters` or `learners`) of node `i`'s `GET /members`.
pub async fn listed(c: &Cluster, i: usize, key: &str) -> Result<Vec<String>, String> {
    let v = get(c, i, "/members").await?;
    Ok(v[key]
        .as_array()
        .ok_or_else(|| format!("no {key} in {v}"))?
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect())
}

/// Wait until node `i` lists exactly `voters` (sorted) as voters and no learner.
pub async fn wait_voters(c: &Cluster, i: usize, voters: &[&str], deadline: Duration) {
    let mut want: Vec<String> = voters.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_until(
        deadline,
        &format!("node {i} lists voters {want:?}"),
        || async {
            let mut v = listed(c, i, "voters").await?;
            v.sort();
            let l = listed(c, i, "learners").await?;
            if v == want && l.is_empty() {
                Ok(())
            } else {
                Err(format!("voters {v:?}, learners {l:?}"))
            }
        },
    )
    .await;
}

/// Run `op` while sampling the cluster's highest applied height every 5 ms, and for
/// `after` once it is done; returns its output and the longest time no new block appeared.
pub async fn with_gap<T>(
    c: &Cluster,
    after: Duration,
    op: impl std::future::Future<Output = T>,
) -> (T, Duration) {
    let mut op = std::pin::pin!(op);
    let mut last_height = c.top_applied();
    let mut last_change = Instant::now();
    let mut gap = Duration::ZERO;
    let mut out = None;
    let mut done_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for _ in 0..100_000 {
        if done_at.is_some_and(|t| t.elapsed() >= after) {
            break;
        }
        tokio::select! {
            v = &mut op, if out.is_none() => {
                out = Some(v);
                done_at = Some(Instant::now());
            }
            _ = tick.tick() => {
                let h = c.top_applied();
                let now = Instant::now();
                if h > last_height {
                    last_height = h;
                    last_change = now;
                }
                gap = gap.max(now - last_change);
            }
        }
    }
    (out.expect("the operation finished"), gap)
}
