//! Property test of the apply rule through `RaftStateMachine::apply`.
//!
//! Goal: whatever mix of proposals is committed (valid next blocks, stale heights, exact
//! duplicates, blocks from the future, forks off an older block or an unknown parent), the
//! applied chain is exactly the accepted blocks: `head.height` = number accepted, each accepted
//! block's parent is the previous head's hash, and a rejected entry changes nothing but the
//! applied log id.
//! Method: a model computes the expected chain; the same entries, mixed with blank and
//! membership entries, are applied to a fresh store in random chunks (one `apply` call each);
//! after every call the stored state, the watch channel and the block reader must equal the
//! model, and at the end the block store must hold exactly the model's chain.
//! Seeded from `HASEQ_TEST_SEED` (or a drawn seed), printed first.

use std::collections::BTreeSet;

use futures::stream;
use haseq_messages::{Block, BlockHash, Command, Height, NodeId, TC};
use haseq_storage::{Head, StoreOptions};
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::{EntryOf, LogIdOf};
use openraft::vote::leader_id_std::CommittedLeaderId;
use openraft::{LogId, Membership};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// One committed entry, as the generator describes it (resolved against the model's head).
#[derive(Debug, Clone)]
enum Op {
    /// A valid next block.
    Next,
    /// Re-propose exactly the block `k` below the head (a duplicated proposal).
    Duplicate(u64),
    /// A block at a height at or below the head, with a fresh hash.
    Stale(u64),
    /// A block `k + 2` heights above the head.
    Future(u64),
    /// The next height, built on the block `k` below the head (a fork), or on an unknown
    /// parent when there is no such block.
    Fork(u64),
    /// A blank entry (a new leader's first).
    Blank,
    /// A membership entry.
    Membership,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Next),
        1 => (0u64..4).prop_map(Op::Duplicate),
        1 => (0u64..4).prop_map(Op::Stale),
        1 => (0u64..3).prop_map(Op::Future),
        2 => (0u64..4).prop_map(Op::Fork),
        1 => Just(Op::Blank),
        1 => Just(Op::Membership),
    ]
}

/// A case: the ops, and where to cut them into `apply` calls.
fn case() -> impl Strategy<Value = (Vec<Op>, Vec<usize>)> {
    (
        proptest::collection::vec(op(), 1..60),
        proptest::collection::vec(1usize..12, 1..20),
    )
}

/// A hash no other entry uses and never zero: the entry's sequence number, tagged.
fn unique_hash(seq: u64) -> BlockHash {
    let mut h = [0xA5u8; 32];
    h[..8].copy_from_slice(&seq.to_be_bytes());
    BlockHash(h)
}

fn log_id(index: u64) -> LogIdOf<TC> {
    LogId::new(CommittedLeaderId::new(1), index)
}

fn block(height: u64, parent_hash: BlockHash, hash: BlockHash) -> Block {
    Block {
        height: Height(height),
        parent_hash,
        hash,
        timestamp: 1_700_000_000 + height,
        proposer: NodeId::from("n1"),
        payload: height.to_be_bytes().to_vec().into(),
    }
}

/// The expected chain.
#[derive(Default)]
struct Model {
    /// Accepted blocks, `chain[i]` at height `i + 1`.
    chain: Vec<Block>,
    /// Hashes of proposals that were rejected and never accepted.
    rejected: BTreeSet<BlockHash>,
}

impl Model {
    fn head(&self) -> Head {
        self.chain.last().map_or(Head::GENESIS, |b| Head {
            height: b.height,
            hash: b.hash,
        })
    }

    /// The block `k` below the head, if the chain is that long.
    fn below_head(&self, k: u64) -> Option<&Block> {
        let len = self.chain.len() as u64;
        if k < len {
            self.chain.get((len - 1 - k) as usize)
        } else {
            None
        }
    }

    /// Turns an op into an entry at `index`, updating the model with what must happen.
    fn entry(&mut self, index: u64, op: &Op) -> EntryOf<TC> {
        let id = log_id(index);
        let head = self.head();
        let fresh = unique_hash(index);
        let proposal = match op {
            Op::Blank => return EntryOf::<TC>::new_blank(id),
            Op::Membership => {
                let voters: BTreeSet<NodeId> = [1u64, 2, 3].into_iter().map(NodeId::from).collect();
                return EntryOf::<TC>::new_membership(
                    id,
                    Membership::new_with_defaults(vec![voters], []),
                );
            }
            Op::Next => block(head.height.0 + 1, head.hash, fresh),
            Op::Duplicate(k) => match self.below_head(*k) {
                Some(b) => b.clone(),
                None => block(head.height.0 + 1, unique_hash(u64::MAX - index), fresh),
            },
            Op::Stale(k) => block(head.height.0.saturating_sub(*k), head.hash, fresh),
            Op::Future(k) => block(head.height.0 + 2 + k, head.hash, fresh),
            Op::Fork(k) => {
                let parent = self
                    .below_head(k + 1)
                    .map_or(unique_hash(u64::MAX - index), |b| b.hash);
                block(head.height.0 + 1, parent, fresh)
            }
        };
        // The model's own statement of the rule, independent of the store's code.
        if proposal.height.0 == head.height.0 + 1 && proposal.parent_hash == head.hash {
            self.chain.push(proposal.clone());
        } else if !self.chain.iter().any(|b| b.hash == proposal.hash) {
            self.rejected.insert(proposal.hash);
        }
        EntryOf::<TC>::new_normal(id, Command::Block(proposal))
    }
}

fn seed() -> u64 {
    let seed = std::env::var("HASEQ_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("HASEQ_TEST_SEED={seed}");
    seed
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

async fn run_case(ops: Vec<Op>, cuts: Vec<usize>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let opts = StoreOptions {
        map_size_bytes: 64 << 20,
        ..StoreOptions::default()
    };
    let mut store =
        haseq_storage::open(dir.path(), opts).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let watch = store.sm.subscribe();
    let mut model = Model::default();

    let mut index = 0u64;
    let mut rest = &ops[..];
    let mut cuts = cuts.into_iter().cycle();
    while !rest.is_empty() {
        let n = cuts.next().unwrap_or(1).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let entries: Vec<EntryOf<TC>> = chunk
            .iter()
            .map(|op| {
                index += 1;
                model.entry(index, op)
            })
            .collect();
        let items = entries.into_iter().map(|e| Ok((e, None)));
        store
            .sm
            .apply(stream::iter(items))
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;

        let want = model.head();
        let got = store
            .sm
            .applied()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(got.applied == Some(log_id(index)), || {
            format!("applied {:?}, want index {index}", got.applied)
        })?;
        check(got.head() == want, || {
            format!("head {:?}, want {want:?}", got.head())
        })?;
        check(*watch.borrow() == got, || {
            format!("watch {:?}, store {got:?}", *watch.borrow())
        })?;
        let reader_head = store
            .reader
            .head()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(reader_head == want, || {
            format!("reader head {reader_head:?}, want {want:?}")
        })?;
        let (applied, _) = store
            .sm
            .applied_state()
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(applied == Some(log_id(index)), || {
            format!("applied_state {applied:?}")
        })?;
    }

    // The block store holds exactly the model's chain, linked by parent hashes.
    let head = model.head();
    check(head.height.0 == model.chain.len() as u64, || {
        "model head".into()
    })?;
    let mut parent = BlockHash::ZERO;
    for want in &model.chain {
        let got = store
            .reader
            .block(want.height)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(got.as_ref() == Some(want), || {
            format!("block at {}: {got:?}, want {want:?}", want.height)
        })?;
        check(want.parent_hash == parent, || {
            format!("block {} does not extend its predecessor", want.height)
        })?;
        parent = want.hash;
        let h = store
            .reader
            .height_of(&want.hash)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(h == Some(want.height), || {
            format!("height_of({}) = {h:?}", want.hash)
        })?;
    }
    let above = store
        .reader
        .block(head.height.next())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    check(above.is_none(), || {
        format!("a block above the head is stored: {above:?}")
    })?;
    for hash in &model.rejected {
        let h = store
            .reader
            .height_of(hash)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(h.is_none(), || {
            format!("rejected proposal {hash} is indexed at {h:?}")
        })?;
    }
    Ok(())
}

#[test]
fn apply_keeps_the_chain_of_accepted_blocks() {
    let seed = seed();
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let res = runner.run(&case(), |(ops, cuts)| rt.block_on(run_case(ops, cuts)));
    if let Err(e) = res {
        panic!("seed {seed}: {e}");
    }
}
