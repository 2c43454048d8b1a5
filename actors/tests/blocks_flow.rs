//! Goal: with production on, blocks flow in a 3-node in-process cluster: the leader builds
//! them through its embedded engine, every node commits the same contiguous chain, and every
//! node's engine replays it and reaches the same head; S1-S3 hold throughout.
//!
//! Method: 3 nodes with embedded engines producing every 50 ms. Wait for 40 blocks on every
//! node and its engine, then for a moment when every engine sits at the same head as every
//! applied head; check each node's chain is contiguous (block `h` at height `h`, linked to
//! block `h - 1`, nothing missing), that each engine's canonical chain is the committed chain
//! block for block, and the shared invariants after each phase.

mod harness;

use std::time::Duration;

use futures::FutureExt as _;
use harness::{Cluster, enable_production, run, wait_until};
use haseq_engine::ExecutionEngine as _;
use haseq_messages::{BlockHash, Height};

const BLOCK_TIME: Duration = Duration::from_millis(50);
const BLOCKS: u64 = 40;

#[test]
fn blocks_flow_and_every_engine_reaches_the_same_head() {
    run(async {
        let mut c = Cluster::start_configured(3, |s| enable_production(s, BLOCK_TIME)).await;
        let (leader, term) = c.wait_leader(Duration::from_secs(10)).await;
        eprintln!(
            "phase: {} leads term {term}; production on every {BLOCK_TIME:?}",
            c.members[leader].id
        );
        c.check_invariants();

        let low = c.wait_engines_reach(BLOCKS, Duration::from_secs(20)).await;
        eprintln!("phase: every node applied and replayed >= {BLOCKS} blocks (lowest {low})");
        c.check_invariants();

        // Production goes on; between two blocks (50 ms) every replayer catches up within a
        // few ms, so a moment when all engines and all applied heads agree must come.
        let (height, hash) = wait_until(
            Duration::from_secs(10),
            "every engine and every applied head at one block",
            || async {
                let mut seen = Vec::new();
                for i in 0..c.members.len() {
                    let (eh, ehash) = c.engine_head(i).expect("embedded engine");
                    let applied = c.node(i).blocks.head().map_err(|e| e.to_string())?;
                    seen.push((applied.height.0, applied.hash, eh, ehash));
                }
                let (h, hash) = (seen[0].0, seen[0].1);
                if seen.iter().all(|&(ah, ahash, eh, ehash)| {
                    ah == h && ahash == hash && eh == h && ehash == hash
                }) {
                    Ok((h, hash))
                } else {
                    Err(format!("(applied, engine) per node: {seen:?}"))
                }
            },
        )
        .await;
        eprintln!("phase: all 3 engines and applied heads at block {height} {hash}");
        c.check_invariants();

        // Contiguity and engine == committed chain, on every node, up to that common head.
        for i in 0..c.members.len() {
            let node = c.node(i);
            let engine = node.embedded.as_ref().expect("embedded engine");
            let mut parent = BlockHash::ZERO;
            for h in 1..=height {
                let b = node
                    .blocks
                    .block(Height(h))
                    .expect("read block")
                    .unwrap_or_else(|| panic!("{} lacks block {h} below head {height}", node.id));
                assert_eq!(
                    b.height,
                    Height(h),
                    "{} block at {h} says {}",
                    node.id,
                    b.height
                );
                // Block 1's parent is genesis, which the state machine calls BlockHash::ZERO.
                assert_eq!(
                    b.parent_hash,
                    parent,
                    "{} block {h} does not link to {}",
                    node.id,
                    h - 1
                );
                parent = b.hash;
                let on_engine = engine
                    .block_hash_at(Height(h))
                    .now_or_never()
                    .expect("embedded engine answers at once")
                    .expect("engine block_hash_at");
                assert_eq!(
                    on_engine,
                    Some(b.hash),
                    "{}'s engine canonical block {h} is not the committed one",
                    node.id
                );
            }
        }
        let proposers: std::collections::BTreeSet<String> = (1..=height)
            .filter_map(|h| c.node(0).blocks.block(Height(h)).ok().flatten())
            .map(|b| b.proposer.to_string())
            .collect();
        eprintln!(
            "phase: heights 1..={height} contiguous and linked on every node, every engine's \
             canonical chain is the committed chain; proposers {proposers:?}"
        );
        c.check_invariants();
        c.stop_all().await;
    });
}

/// A one-node cluster is its own quorum: its leader's lease never lapses, so it produces
/// on and on (it used to stop after two blocks with "leader lease expired", openraft not
/// refreshing its quorum acknowledgement without followers).
#[test]
fn single_node_cluster_keeps_producing() {
    run(async {
        let mut c = Cluster::start_configured(1, |s| enable_production(s, BLOCK_TIME)).await;
        c.wait_leader(Duration::from_secs(10)).await;
        // 20 blocks at 50 ms: well past the 46 ms lease many times over.
        c.wait_block_above(20, Duration::from_secs(10)).await;
        c.stop_all().await;
    });
}
