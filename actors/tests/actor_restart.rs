//! Goal: an actor that panics in a running cluster is rebuilt by our supervisor (actix's own
//! would leave its mailbox closed), the node keeps serving its HTTP API meanwhile, and the
//! restart is counted in `haseq_actor_restarts_total{actor="raft_core"}`.
//!
//! Method: 3 in-process nodes; the leader's RaftCore is made to panic three times; after each,
//! `/health` must answer at once, and `/status` must answer again (from the rebuilt actor)
//! with the same leader.

mod harness;

use std::time::Duration;

use harness::{Cluster, run, wait_until};
use haseq_actors::api_client;
use haseq_actors::raft_core::{CrashForTest, GetStatus};

const CALL: Duration = Duration::from_secs(2);

fn restarts(metrics_text: &str) -> f64 {
    harness::metric_value(
        metrics_text,
        "haseq_actor_restarts_total{actor=\"raft_core\"}",
    )
}

#[test]
fn panicked_raft_core_is_rebuilt_and_node_keeps_serving() {
    run(async {
        let mut c = Cluster::start(3).await;
        let (leader, _) = c.wait_leader(Duration::from_secs(10)).await;
        let api = c.node(leader).api_addr.to_string();
        let m0 = api_client::request(&api, "GET", "/metrics", None, CALL)
            .await
            .unwrap();
        let before = restarts(&m0.body);

        for round in 1..=3 {
            let old = c.node(leader).raft_core.get();
            assert!(
                old.send(CrashForTest).await.is_err(),
                "the panicking call gets no answer"
            );
            assert!(
                old.send(GetStatus).await.is_err(),
                "a panicked actor's old mailbox is closed"
            );
            let h = api_client::request(&api, "GET", "/health", None, CALL)
                .await
                .unwrap();
            assert_eq!(h.status, 200, "/health while RaftCore is being rebuilt");
            let status = wait_until(
                Duration::from_secs(5),
                "/status from the rebuilt RaftCore",
                || async {
                    match api_client::request(&api, "GET", "/status", None, CALL).await {
                        Ok(r) if r.status == 200 => Ok(r.body),
                        other => Err(format!("{other:?}")),
                    }
                },
            )
            .await;
            let v: serde_json::Value = serde_json::from_str(&status).unwrap();
            assert_eq!(v["role"], "leader", "round {round}: {v}");
            let m = api_client::request(&api, "GET", "/metrics", None, CALL)
                .await
                .unwrap();
            assert_eq!(
                restarts(&m.body),
                before + round as f64,
                "restart counted, round {round}"
            );
        }
        // The cluster never noticed: still one agreed leader.
        assert_eq!(c.wait_leader(Duration::from_secs(5)).await.0, leader);
        c.stop_all().await;
    });
}

/// openraft stopping by itself (a fatal storage error, say) leaves a node that can neither
/// vote nor apply yet still answers `/health`: the node must report a failure, on which
/// haseqd exits non-zero so that systemd or Docker restarts it on its state. Here Raft is
/// stopped from outside [`haseq_actors::node::Node::shutdown`]; the rest keep producing.
#[test]
fn raft_stopping_by_itself_fails_the_node() {
    run(async {
        let mut c = Cluster::start_configured(3, |s| {
            harness::enable_production(s, Duration::from_millis(100))
        })
        .await;
        let (leader, _) = c.wait_leader(Duration::from_secs(10)).await;
        let victim = (leader + 1) % 3;
        c.node(victim).raft.shutdown().await.expect("raft shutdown");
        let why = tokio::time::timeout(Duration::from_secs(5), c.node(victim).failure())
            .await
            .expect("the node reports its failure within 5 s");
        assert!(why.starts_with("Raft stopped"), "failure reason: {why}");
        let top = c.node(leader).blocks.head().unwrap().height.0;
        c.wait_block_above(top + 2, Duration::from_secs(10)).await;
        c.stop_all().await;
    });
}
