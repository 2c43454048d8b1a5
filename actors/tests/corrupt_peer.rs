//! Goal: a peer that serves corrupted blocks during a catch-up is penalised (no more blocks
//! are asked of it for a while, the offence is counted in
//! `haseq_p2p_peer_penalties_total{peer,reason}`), nothing it served reaches the store, and
//! the sync completes from the honest peer.
//!
//! Method: 3 in-process nodes producing every 2 ms with `trailing_logs: 100`; one follower
//! is stopped for 2,500 blocks, so a snapshot brings it back with a hole below its recent
//! blocks. The other follower is made to flip a byte in the payload of every block it serves
//! (`ServeFault::CorruptPayload`); the leader serves honestly. Checks: the stopped node's
//! history completes; its P2P actor has banned the corrupt peer; the penalty is counted with
//! reason `bad_payload`; every block equals the leader's (S1), S2 and S3 hold.

mod harness;

use std::time::Duration;

use harness::catch_up::{leave_behind, wait_caught_up};
use harness::{Cluster, enable_production, run, wait_until};
use haseq_actors::api_client;
use haseq_actors::p2p::GetPeers;
use haseq_actors::p2p::serve::ServeFault;

#[test]
fn a_peer_serving_corrupt_blocks_is_penalised_and_sync_completes_from_the_other() {
    run(async {
        let mut c = Cluster::start_configured(3, |s| {
            enable_production(s, Duration::from_millis(2));
            s.snapshot_threshold = 100;
            s.trailing_logs = 100;
            s.snap_count = 2;
        })
        .await;
        let (lagger, _) = leave_behind(&mut c, 2_500, Duration::from_secs(120)).await;
        let (leader, _) = c.agreed_leader().await.expect("leader");
        let liar = (0..3)
            .find(|&i| i != lagger && i != leader)
            .expect("a third node");
        let liar_id = c.members[liar].id.clone();
        c.node(liar).serve_faults.set(ServeFault::CorruptPayload);
        eprintln!("phase: {liar_id} now corrupts what it serves");

        c.restart(lagger).await;
        let target = c.top_applied();
        wait_caught_up(&c, lagger, target, Duration::from_secs(90)).await;
        eprintln!("phase: history complete up to {target}");

        let peers = c
            .node(lagger)
            .p2p
            .get()
            .send(GetPeers)
            .await
            .expect("P2P answers");
        let liar_seen = peers
            .iter()
            .find(|p| p.id == liar_id)
            .expect("liar is a peer");
        eprintln!("phase: the liar as the caught-up node sees it: {liar_seen:?}");
        assert!(
            liar_seen.banned_s.is_some(),
            "{liar_id} is banned: {liar_seen:?}"
        );
        let honest = peers.iter().find(|p| p.id != liar_id).expect("honest peer");
        assert!(
            honest.banned_s.is_none(),
            "the honest peer is not: {honest:?}"
        );

        let api = c.node(lagger).api_addr.to_string();
        let line =
            format!("haseq_p2p_peer_penalties_total{{peer=\"{liar_id}\",reason=\"bad_payload\"}}");
        let metrics = wait_until(
            Duration::from_secs(5),
            "the penalty in /metrics",
            || async {
                let m = api_client::request(&api, "GET", "/metrics", None, Duration::from_secs(2))
                    .await
                    .map_err(|e| e.to_string())?;
                // The series exists at 0 from the peer's arrival: wait for a counted penalty.
                let value = m
                    .body
                    .lines()
                    .find_map(|l| l.strip_prefix(&line)?.trim().parse::<f64>().ok());
                match value {
                    Some(v) if v >= 1.0 => Ok(m.body),
                    other => Err(format!("penalty count {other:?}")),
                }
            },
        )
        .await;
        let counted = metrics
            .lines()
            .find(|l| l.starts_with(&line))
            .unwrap_or_default();
        eprintln!("phase: {counted}");

        c.node(liar).serve_faults.set(ServeFault::None);
        c.check_invariants();
        eprintln!("phase: every block equals the leader's; S1-S3 hold");
        c.stop_all().await;
    });
}
