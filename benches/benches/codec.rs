//! Encode and decode of a `haseq_messages::Block` with a 100 KiB payload, through
//! `haseq_messages::{encode, decode}` (postcard): what every Raft append, log read and block
//! store write pays per block.
//!
//! `cargo bench -p haseq-benches --bench codec` prints the time per call and the throughput.

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use haseq_messages::{Block, BlockHash, Height, NodeId, decode, encode};

/// The payload size the issue asks about.
const PAYLOAD_BYTES: usize = 100 * 1024;

fn block() -> Block {
    // Varied bytes rather than zeros, in case an encoding ever compresses runs.
    let payload = (0..PAYLOAD_BYTES)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    Block {
        height: Height(1_234_567),
        parent_hash: BlockHash([0x11; 32]),
        hash: BlockHash([0x22; 32]),
        timestamp: 1_700_000_000,
        proposer: NodeId("node-1".into()),
        payload,
    }
}

fn codec(c: &mut Criterion) {
    let b = block();
    let bytes = encode(&b).expect("a block encodes");
    let back: Block = decode(&bytes).expect("its encoding decodes");
    assert_eq!(back, b, "round trip");
    println!(
        "block codec: payload {PAYLOAD_BYTES} bytes, encoded {} bytes",
        bytes.len()
    );

    let mut g = c.benchmark_group("block_100KiB");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode", |bench| {
        bench.iter(|| encode(black_box(&b)).expect("a block encodes"))
    });
    g.bench_function("decode", |bench| {
        bench.iter(|| decode::<Block>(black_box(&bytes)).expect("its encoding decodes"))
    });
    g.finish();
}

// By hand rather than `criterion_group!`, whose generated `pub fn` has no doc.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    codec(&mut c);
    c.final_summary();
}
