//! Goal: the timing advisor turns to "too tight" when a peer's round trip grows past what the
//! configured timings allow, and names that peer with the timing it breaks.
//!
//! Method: 3 in-process nodes with the guide's timings (heartbeat 92 ms, election 368 ms,
//! send 50 ms). First node-1's `/status` `timing` must show a measured round trip (its
//! verdict is printed: between in-process debug nodes on a loaded 2-core machine the average
//! round trip can already be 25 ms, which is tight). Then node-3 holds every status answer
//! 40 ms (a test-only serve fault: what a slow link looks like to the polls, below the 50 ms
//! poll budget); node-1, which polls it, must report `too_tight` naming node-3 once node-3's
//! average is the largest (4 x 40 ms is above the 92 ms heartbeat). `haseq_timing_too_tight`
//! is one gauge per process, shared by the three in-process nodes, so it is not checked here.

mod harness;

use std::time::Duration;

use harness::{Cluster, run, wait_until};
use haseq_actors::api_client;

const CALL: Duration = Duration::from_millis(500);

async fn timing(c: &Cluster, i: usize) -> Result<serde_json::Value, String> {
    let api = c.node(i).api_addr.to_string();
    let r = api_client::request(&api, "GET", "/status", None, CALL).await?;
    let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
    Ok(v["timing"].clone())
}

#[test]
fn a_slow_peer_makes_the_timings_too_tight_and_is_named() {
    run(async {
        let mut c = Cluster::start(3).await;
        // Loopback between in-process debug nodes is usually "ok" with the guide's timings,
        // but a loaded 2-core machine may already be "too tight": only the measurement is
        // required here, the verdict is printed.
        let ok = wait_until(
            Duration::from_secs(10),
            "node-1 measures a round trip",
            || async {
                let t = timing(&c, 0).await?;
                if t["rtt_max_ms"].as_f64().is_some() {
                    Ok(t)
                } else {
                    Err(t.to_string())
                }
            },
        )
        .await;
        eprintln!("phase: loopback: {ok}");

        c.node(2)
            .serve_faults
            .set_status_delay(Duration::from_millis(40));
        let tight = wait_until(
            Duration::from_secs(20),
            "node-1 says too tight, naming node-3",
            || async {
                let t = timing(&c, 0).await?;
                if t["verdict"] == "too_tight" && t["rtt_max_peer"] == "node-3" {
                    Ok(t)
                } else {
                    Err(t.to_string())
                }
            },
        )
        .await;
        eprintln!("phase: node-3 40 ms slower: {tight}");
        assert_eq!(tight["rtt_max_peer"], "node-3", "{tight}");
        let reasons = tight["reasons"].as_array().expect("reasons");
        assert!(
            reasons.iter().any(|r| {
                let r = r.as_str().unwrap_or_default();
                r.contains("heartbeat_timeout") && r.contains("node-3")
            }),
            "{tight}"
        );
        c.node(2).serve_faults.set_status_delay(Duration::ZERO);
        c.check_invariants();
        c.stop_all().await;
    });
}
