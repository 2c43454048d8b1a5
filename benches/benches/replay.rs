//! The embedded engine's replay rate: a chain of N blocks built in one `EmbeddedEngine`, then
//! imported into a fresh one as the node's ExecReplayer fills a gap (each block made the head,
//! as the replayer does for an engine whose head moves cheaply; batches of
//! `REPLAY_BATCH_BLOCKS_MAX`), on durable storage.
//!
//! `cargo bench -p haseq-benches --bench replay` prints:
//! - one pass over the whole gap: blocks/s as acknowledged and with the engine's last write on
//!   disk, and each import's p50 / p99 / max; then the rate over each tenth of the gap, and
//!   each busy thread's CPU per block and time waiting for a CPU (both from the scheduler);
//! - criterion's statistics for one batch imported into a fresh engine.
//!
//! Settings (environment):
//! - `HASEQ_BENCH_REPLAY_BLOCKS` (default 10000; well under a minute in all here): the gap, e.g. `100000`
//!   for the 100,000-block gap (its chain takes ~1 GiB of memory at 10 KiB blocks);
//! - `HASEQ_BENCH_REPLAY_BLOCK_BYTES` (default 10240): synthetic payload per block;
//! - `TMPDIR`: where the replaying engine's LMDB goes (durable disk by default, `/tmp`).
//!
//! The source chain is built on `/dev/shm` when it exists: its fsyncs are not what is
//! measured, and a 100,000-block chain would otherwise take longer to build than to replay.
//! Under `cargo test --benches` (criterion's quick test mode) the gap is a few blocks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use haseq_actors::exec_replayer::REPLAY_BATCH_BLOCKS_MAX;
use haseq_benches::{build_chain, percentile, replay, thread_times, thread_times_since};
use haseq_engine::{BuiltPayload, EmbeddedConfig, EmbeddedEngine, ExecutionEngine};

const BLOCKS_DEFAULT: u64 = 10_000;
const BLOCK_BYTES_DEFAULT: usize = 10 * 1024;
/// Bytes of one synthetic transaction at most (as `haseqd bench` fills its blocks).
const TX_BYTES_MAX: usize = 1024;
/// The gap in criterion's quick test mode: enough to cross a batch boundary.
const TEST_MODE_BLOCKS: u64 = 8;
const TEST_MODE_BATCH: usize = 3;

/// Whether criterion will measure (`cargo bench`) rather than run each bench once
/// (`cargo test --benches`, or `--test`): criterion's own rule.
fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

fn env_number(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?}: expected a whole number")),
        Err(_) => default,
    }
}

fn open(dir: &std::path::Path, block_bytes: usize) -> EmbeddedEngine {
    let mut cfg = EmbeddedConfig::new(dir);
    if block_bytes > 0 {
        cfg.txs_per_block = block_bytes.div_ceil(TX_BYTES_MAX);
        cfg.tx_bytes = block_bytes / cfg.txs_per_block;
    }
    EmbeddedEngine::open(cfg).expect("opening an embedded engine")
}

fn source_dir() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    let b = tempfile::Builder::new()
        .prefix("haseq-replay-src-")
        .to_owned();
    if shm.is_dir() {
        b.tempdir_in(shm).expect("a directory in /dev/shm")
    } else {
        b.tempdir().expect("a temporary directory")
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn replay_bench(c: &mut Criterion) {
    let measuring = measuring();
    let blocks = if measuring {
        env_number("HASEQ_BENCH_REPLAY_BLOCKS", BLOCKS_DEFAULT)
    } else {
        TEST_MODE_BLOCKS
    };
    let block_bytes =
        env_number("HASEQ_BENCH_REPLAY_BLOCK_BYTES", BLOCK_BYTES_DEFAULT as u64) as usize;
    let batch = if measuring {
        REPLAY_BATCH_BLOCKS_MAX as usize
    } else {
        TEST_MODE_BATCH
    };
    assert!(blocks > 0, "HASEQ_BENCH_REPLAY_BLOCKS: at least 1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");

    let src_dir = source_dir();
    let t0 = Instant::now();
    let chain: Vec<BuiltPayload> = {
        let source = open(src_dir.path(), block_bytes);
        rt.block_on(build_chain(&source, blocks))
            .expect("building the chain")
    };
    let encoded_bytes: usize = chain.iter().map(|b| b.encoded.len()).sum();
    println!(
        "replay: built {blocks} blocks of {block_bytes} synthetic bytes ({} bytes encoded on average) \
         in {:.1} s on {}",
        encoded_bytes / chain.len(),
        t0.elapsed().as_secs_f64(),
        src_dir.path().display()
    );

    // One pass over the whole gap, as a node fills it after a restart.
    let dst_dir = tempfile::Builder::new()
        .prefix("haseq-replay-dst-")
        .tempdir()
        .expect("a temporary directory");
    let target = open(dst_dir.path(), block_bytes);
    let per_block_head = target.head_moves_with_each_import();
    let times_before = thread_times();
    let r = rt
        .block_on(replay(&target, &chain, batch))
        .expect("replaying the chain");
    // Imports written behind are on disk once the engine is closed: that wait counts too.
    let closing = Instant::now();
    // Read while the engine's threads still live (the writer is joined on drop; its drain is
    // short, and counted in the rates, not here).
    let times = thread_times_since(&times_before, &thread_times());
    drop(target);
    let drained = closing.elapsed();
    let total = r.elapsed + drained;
    let mut us = r.import_us.clone();
    us.sort_unstable();
    println!(
        "replay: {blocks}-block gap into a fresh engine on {} ({}, batches of {batch}): \
         {:.2} s, {:.1} blocks/s, written to disk {:.2} s later ({:.1} blocks/s in all); \
         import p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        dst_dir.path().display(),
        if per_block_head {
            "each block made the head"
        } else {
            "new_payload each, the head moved per batch"
        },
        r.elapsed.as_secs_f64(),
        r.blocks_per_s(),
        drained.as_secs_f64(),
        r.import_us.len() as f64 / total.as_secs_f64().max(f64::MIN_POSITIVE),
        ms(percentile(&us, 50.0)),
        ms(percentile(&us, 99.0)),
        ms(us.last().copied().unwrap_or(0)),
    );
    // Where the rate falls as the store grows: each tenth of the gap on its own (the import
    // calls' time, the loop's all but nothing else; the last write's wait is not in it).
    let tenth = (r.import_us.len() / 10).max(1);
    let rates: Vec<String> = r
        .import_us
        .chunks(tenth)
        .map(|c| {
            let us: u64 = c.iter().sum();
            format!("{:.0}", c.len() as f64 * 1e6 / us.max(1) as f64)
        })
        .collect();
    println!(
        "replay: blocks/s by tenths of the gap ({tenth} blocks each): {}",
        rates.join(" ")
    );
    // On a shared machine the rate follows the CPU the threads got: their CPU per block, and
    // how long they waited for one, say which side binds.
    let busy: Vec<String> = times
        .iter()
        .filter(|t| t.cpu_ns + t.wait_ns >= 10_000_000)
        .map(|t| {
            format!(
                "{} {:.1} us cpu, {:.1} us waiting",
                t.name,
                t.cpu_ns as f64 / 1e3 / blocks as f64,
                t.wait_ns as f64 / 1e3 / blocks as f64
            )
        })
        .collect();
    println!("replay: per block, by thread: {}", busy.join("; "));
    drop(dst_dir);

    // Criterion's statistics over one batch into a fresh engine (opening it is not timed).
    let one_batch = &chain[..batch.min(chain.len())];
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(one_batch.len() as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(15));
    g.bench_function(format!("batch_of_{}_blocks", one_batch.len()), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::Builder::new()
                    .prefix("haseq-replay-batch-")
                    .tempdir()
                    .expect("a temporary directory");
                let engine = open(dir.path(), block_bytes);
                let r = rt
                    .block_on(replay(&engine, one_batch, batch))
                    .expect("replaying a batch");
                total += r.elapsed;
            }
            total
        })
    });
    g.finish();
}

// By hand rather than `criterion_group!`, whose generated `pub fn` has no doc.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    replay_bench(&mut c);
    c.final_summary();
}
