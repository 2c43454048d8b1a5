//! haseq-benches: benchmarks that print their figures, and what they share.
//!
//! - `benches/codec.rs`: encode and decode of a [`haseq_messages::Block`] with a 100 KiB
//!   payload through `haseq_messages::{encode, decode}`;
//! - `benches/replay.rs`: the embedded engine's replay rate (blocks/s) over a gap, built here
//!   by [`build_chain`] and imported by [`replay`] the way the node's ExecReplayer does it;
//! - `etcd-compare.sh`: `haseqd bench` beside a 3-member etcd cluster on loopback.
//!
//! Not here: timing targets in tests. `cargo test --workspace` runs only the small unit tests
//! below; the bench targets run under `cargo bench`.

use std::time::{Duration, Instant};

use haseq_engine::{
    BuildParams, BuiltPayload, EmbeddedEngine, EngineError, ExecutionEngine, PayloadStatus,
};
use haseq_messages::{BlockHash, Height};

/// Timestamp of block 1 of a built chain (seconds); each next block is one second later.
const CHAIN_TIMESTAMP_START: u64 = 1_700_000_000;

/// Why building or replaying a chain failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An engine call failed.
    #[error("block {height}: {call}: {source}")]
    Engine {
        /// The block being built or imported.
        height: u64,
        /// The engine method.
        call: &'static str,
        /// The engine's error.
        source: EngineError,
    },
    /// The engine did not accept a block of the chain.
    #[error("block {height}: engine answered {status:?} to new_payload")]
    Refused {
        /// The block.
        height: u64,
        /// The engine's verdict.
        status: PayloadStatus,
    },
    /// After the replay the engine's head is not the chain's tip.
    #[error("engine head is {got_height} {got}, expected {expected_height} {expected}")]
    WrongHead {
        /// The tip's height.
        expected_height: u64,
        /// The tip's hash.
        expected: BlockHash,
        /// The engine's head height.
        got_height: u64,
        /// The engine's head hash.
        got: BlockHash,
    },
}

/// Builds `blocks` blocks on `engine`'s genesis, each on the previous one, and returns them in
/// order (block 1 first). The engine keeps them as its canonical chain.
///
/// # Errors
/// An engine call fails or refuses a block it built itself.
pub async fn build_chain(
    engine: &EmbeddedEngine,
    blocks: u64,
) -> Result<Vec<BuiltPayload>, BenchError> {
    let mut chain = Vec::with_capacity(usize::try_from(blocks).unwrap_or(0));
    let mut parent = engine.genesis_hash();
    for h in 1..=blocks {
        let err = |call| {
            move |source| BenchError::Engine {
                height: h,
                call,
                source,
            }
        };
        let params = BuildParams {
            parent,
            parent_height: Height(h - 1),
            timestamp: CHAIN_TIMESTAMP_START + h,
            fee_recipient: [0u8; 20],
        };
        let id = engine
            .build_payload(params)
            .await
            .map_err(err("build_payload"))?;
        let built = engine.get_payload(id).await.map_err(err("get_payload"))?;
        // Stored, so that the next block can be built on it.
        let status = engine
            .new_payload(&built.encoded)
            .await
            .map_err(err("new_payload"))?;
        if !status.is_valid() {
            return Err(BenchError::Refused { height: h, status });
        }
        parent = built.block_hash;
        chain.push(built);
    }
    Ok(chain)
}

/// What one replay measured.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Wall time of the whole replay, every import call included.
    pub elapsed: Duration,
    /// Time of each import call, in microseconds, in chain order.
    pub import_us: Vec<u64>,
}

impl ReplayReport {
    /// Blocks per second over the whole replay.
    pub fn blocks_per_s(&self) -> f64 {
        self.import_us.len() as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Imports `chain` (built by [`build_chain`] on the same genesis) into `engine` as the node's
/// ExecReplayer fills a gap: each block by `import_and_set_head` when the engine's head moves
/// cheaply ([`ExecutionEngine::head_moves_with_each_import`], the embedded engine), else
/// `new_payload` for every block and `import_and_set_head` for the last of every batch of
/// `batch_blocks`. Checks the engine's head at the end (not timed).
///
/// # Errors
/// An engine call fails or refuses a block, or the head is not the chain's tip afterwards.
///
/// # Panics
/// If `batch_blocks` is zero.
pub async fn replay(
    engine: &EmbeddedEngine,
    chain: &[BuiltPayload],
    batch_blocks: usize,
) -> Result<ReplayReport, BenchError> {
    assert!(batch_blocks > 0, "a batch holds at least one block");
    let mut import_us = Vec::with_capacity(chain.len());
    let started = Instant::now();
    let per_block_head = engine.head_moves_with_each_import();
    for batch in chain.chunks(batch_blocks) {
        for (i, b) in batch.iter().enumerate() {
            let as_head = per_block_head || i + 1 == batch.len();
            let t0 = Instant::now();
            let (call, status) = if as_head {
                let s = engine.import_and_set_head(&b.encoded, b.block_hash).await;
                ("import_and_set_head", s)
            } else {
                ("new_payload", engine.new_payload(&b.encoded).await)
            };
            let status = status.map_err(|source| BenchError::Engine {
                height: b.number.0,
                call,
                source,
            })?;
            import_us.push(t0.elapsed().as_micros() as u64);
            if !status.is_valid() {
                return Err(BenchError::Refused {
                    height: b.number.0,
                    status,
                });
            }
        }
    }
    let elapsed = started.elapsed();
    if let Some(tip) = chain.last() {
        let (height, hash) = engine.head().await.map_err(|source| BenchError::Engine {
            height: tip.number.0,
            call: "head",
            source,
        })?;
        if (height, hash) != (tip.number, tip.block_hash) {
            return Err(BenchError::WrongHead {
                expected_height: tip.number.0,
                expected: tip.block_hash,
                got_height: height.0,
                got: hash,
            });
        }
    }
    Ok(ReplayReport { elapsed, import_us })
}

/// One thread's scheduler times (`/proc/self/task/<tid>/schedstat`), for telling the CPU a
/// replay took from the time its threads waited for a CPU on a shared machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadTimes {
    /// The thread's name (`comm`).
    pub name: String,
    /// Its thread id.
    pub tid: u64,
    /// Time on a CPU, in nanoseconds.
    pub cpu_ns: u64,
    /// Time runnable but waiting for a CPU, in nanoseconds.
    pub wait_ns: u64,
}

/// The scheduler times of this process's live threads (Linux; empty where `/proc` lacks them).
pub fn thread_times() -> Vec<ThreadTimes> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("schedstat")),
        ) else {
            continue;
        };
        let mut f = stat
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        let (cpu_ns, wait_ns) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
        out.push(ThreadTimes {
            name: name.trim().to_string(),
            tid,
            cpu_ns,
            wait_ns,
        });
    }
    out.sort_by_key(|t| t.tid);
    out
}

/// Each thread's times in `after` less those in `before` (threads born since count from zero;
/// threads gone by `after` are left out).
pub fn thread_times_since(before: &[ThreadTimes], after: &[ThreadTimes]) -> Vec<ThreadTimes> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.tid == a.tid);
            ThreadTimes {
                name: a.name.clone(),
                tid: a.tid,
                cpu_ns: a.cpu_ns - b.map_or(0, |b| b.cpu_ns.min(a.cpu_ns)),
                wait_ns: a.wait_ns - b.map_or(0, |b| b.wait_ns.min(a.wait_ns)),
            }
        })
        .collect()
}

/// The `p`-th percentile (0 < p ≤ 100) of `sorted`, nearest rank; 0 for no samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use haseq_engine::EmbeddedConfig;

    fn engine(dir: &std::path::Path) -> EmbeddedEngine {
        let mut cfg = EmbeddedConfig::new(dir);
        cfg.txs_per_block = 2;
        cfg.tx_bytes = 64;
        cfg.map_size_bytes = 64 * 1024 * 1024;
        EmbeddedEngine::open(cfg).unwrap()
    }

    #[tokio::test]
    async fn a_built_chain_replays_into_a_fresh_engine() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = engine(a.path());
        let chain = build_chain(&source, 5).await.unwrap();
        assert_eq!(chain.len(), 5);
        assert_eq!(chain[4].number, Height(5));
        let target = engine(b.path());
        let r = replay(&target, &chain, 2).await.unwrap();
        assert_eq!(r.import_us.len(), 5);
        assert!(r.blocks_per_s() > 0.0);
    }

    #[tokio::test]
    async fn a_chain_without_its_start_is_refused() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let chain = build_chain(&engine(a.path()), 3).await.unwrap();
        let err = replay(&engine(b.path()), &chain[1..], 8).await.unwrap_err();
        // The embedded engine makes each block the head as it imports it, and refuses a head
        // on an unknown parent (the spec's SYNCING) as an error.
        assert!(
            matches!(
                err,
                BenchError::Engine {
                    height: 2,
                    call: "import_and_set_head",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn thread_times_count_from_a_start() {
        let t = |tid, cpu_ns, wait_ns| ThreadTimes {
            name: format!("t{tid}"),
            tid,
            cpu_ns,
            wait_ns,
        };
        let d = thread_times_since(&[t(1, 10, 5), t(2, 7, 7)], &[t(1, 30, 6), t(3, 4, 1)]);
        assert_eq!(d, vec![t(1, 20, 1), t(3, 4, 1)]);
        if std::path::Path::new("/proc/self/task").is_dir() {
            let now = thread_times();
            assert!(now.iter().any(|t| t.cpu_ns > 0), "{now:?}");
        }
    }

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), 2);
        assert_eq!(percentile(&[1, 2, 3, 4], 99.0), 4);
    }
}
