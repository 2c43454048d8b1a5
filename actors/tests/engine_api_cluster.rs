//! Goal: a cluster whose nodes drive their execution engines through the Engine API client
//! (HTTP JSON-RPC with JWT), not in-process: blocks are produced, committed and replayed on
//! every node, so the client's path is exercised for real end to end.
//!
//! Method: three embedded engines served over HTTP on loopback (`haseq_engine::serve`, the
//! same server `haseqd engine serve` runs), one per node; nodes configured with
//! `engine.kind: engine_api`. Production at 50 ms until height 30 on every engine; the
//! leader is killed once and production must resume; S1/S2 hold and every node's engine
//! (read back over the Engine API) holds the committed block at its head height.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::{Cluster, run, wait_until};
use haseq_actors::settings::EngineSettings;
use haseq_engine::{EmbeddedConfig, EmbeddedEngine, ExecutionEngine};
use tokio_util::sync::CancellationToken;

const JWT: [u8; 32] = [7u8; 32];

#[test]
fn nodes_drive_their_engines_over_the_engine_api() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let mut urls = Vec::new();
        let mut engines = Vec::new();
        for i in 0..3 {
            let engine = Arc::new(
                EmbeddedEngine::open(EmbeddedConfig::new(dir.path().join(format!("el-{i}"))))
                    .unwrap(),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("http://{}", listener.local_addr().unwrap()));
            tokio::spawn(haseq_engine::serve(
                listener,
                JWT,
                engine.clone(),
                stop.clone(),
            ));
            engines.push(engine);
        }
        let urls = Arc::new(urls);
        let mut c = {
            let urls = urls.clone();
            Cluster::start_configured(3, move |s| {
                let i: usize = s
                    .node_id
                    .as_str()
                    .trim_start_matches("node-")
                    .parse::<usize>()
                    .unwrap()
                    - 1;
                s.aggregator = true;
                s.block_time = Duration::from_millis(50);
                s.engine = EngineSettings::EngineApi {
                    url: urls[i].clone(),
                    jwt_secret: JWT,
                };
            })
            .await
        };
        let (leader, _) = c.wait_leader(Duration::from_secs(10)).await;
        let reached = |h: u64| {
            let engines = engines.clone();
            move || {
                let engines = engines.clone();
                async move {
                    let mut heights = Vec::new();
                    for e in &engines {
                        heights.push(e.head().await.map_err(|e| e.to_string())?.0.0);
                    }
                    if heights.iter().all(|x| *x >= h) {
                        Ok(())
                    } else {
                        Err(format!("engine heights {heights:?}"))
                    }
                }
            }
        };
        wait_until(
            Duration::from_secs(30),
            "every engine at height 30",
            reached(30),
        )
        .await;
        c.check_invariants();
        eprintln!("phase: 30 blocks through the Engine API on every node");

        let top = c.node(leader).blocks.head().unwrap().height.0;
        c.kill(leader).await;
        let survivors: Vec<_> = engines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, e)| e.clone())
            .collect();
        wait_until(
            Duration::from_secs(15),
            "production resumed after the leader was killed",
            || {
                let survivors = survivors.clone();
                async move {
                    for e in &survivors {
                        let h = e.head().await.map_err(|e| e.to_string())?.0.0;
                        if h < top + 5 {
                            return Err(format!("a survivor's engine at {h}, want {}", top + 5));
                        }
                    }
                    Ok(())
                }
            },
        )
        .await;
        c.restart(leader).await;
        let low = c.check_invariants();
        // S3 over the wire: each engine's canonical block at the committed height is the
        // committed block.
        for (i, e) in engines.iter().enumerate() {
            if let Some(n) = c.members[i].node.as_ref() {
                let want = n
                    .blocks
                    .block(haseq_messages::Height(low))
                    .unwrap()
                    .unwrap()
                    .hash;
                let got = e.block_hash_at(haseq_messages::Height(low)).await.unwrap();
                assert_eq!(got, Some(want), "engine {i} at height {low}");
            }
        }
        eprintln!("phase: failover over the Engine API; S1-S3 hold up to height {low}");
        c.stop_all().await;
        stop.cancel();
    });
}
