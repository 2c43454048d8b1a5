//! The embedded engine's LMDB environment: its databases, records, the writer thread, and the
//! canonical-chain updates (import, fork choice, dropping the newest blocks).
//!
//! Layout under the engine's data dir:
//! ```text
//! <data_dir>/engine-db/data.mdb, lock.mdb
//! ```
//! Databases: `bodies` (height, big-endian, and hash -> compact payload), `headers` (hash ->
//! number, parent, timestamp), `canonical` (height, big-endian -> hash), `meta` (head, safe,
//! finalized, the persisted fault knob), and `payloads` (hash -> compact payload), where
//! environments written before `bodies` existed keep their blocks: read, never written.
//!
//! Why bodies are keyed by height first: the chain grows at its top, so each block's payload
//! lands at the right edge of `bodies`, next to the previous one, and a batch of blocks
//! rewrites one leaf there. Keyed by hash (as `payloads` was), every block landed on a random
//! leaf, and each commit rewrote one leaf page per block, a number that grows with the store
//! until it is the batch's size (the 100,000-block replay bench, 10 KiB blocks: the writer
//! wrote 15 KiB per block over its first 10,000 blocks, 21 KiB over its last; LMDB writes each
//! scattered page with a syscall of its own, and the file system's writeback walks every
//! cached page around it). `headers` is still keyed by hash: a lookup by hash alone needs it.
//!
//! Writes go through the storage crate's LMDB toolkit (`haseq_storage::lmdb`): one writer
//! thread runs every write transaction (`write_txn()` waits on LMDB's writer mutex and
//! `commit()` fsyncs, either blocking for milliseconds, which on a tokio worker would stall
//! every task scheduled there); async callers hand it a closure and await a oneshot that fires
//! after the commit returned. Every commit flushes its data pages, not the meta page
//! ([`DURABILITY`]). Reads use read transactions in place: they take no lock and, with
//! `WithoutTls`, may run on any thread.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use haseq_messages::{BlockHash, Height};
use haseq_storage::lmdb::{
    Durability, EnvOptions, LmdbEnv, Writer, WriterConfig, decode_rec, encode_rec, get_rec,
    open_env,
};
use heed::byteorder::BE;
use heed::types::{Bytes, Str, U64};
use heed::{CommitOrAbort, Database, RoTxn, RwTxn, WithoutTls};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::payload::ExecPayload;

/// Subdirectory of the data dir holding the environment.
pub(crate) const ENV_SUBDIR: &str = "engine-db";
/// Named databases in the environment (five used).
const DBS_MAX: u32 = 8;
/// Write jobs that may queue for the writer thread before submitters wait.
const WRITER_QUEUE_JOBS_MAX: usize = 256;
/// How durable every commit of the engine is: data pages flushed, the meta page written but
/// not flushed (`MDB_NOMETASYNC`), so a power loss may undo the last transactions (never
/// corrupt the database; a process crash loses nothing). That is an execution client's
/// ordinary behaviour (reth and geth persist in batches, behind what they acknowledged), and
/// haseq refills such a hole from its block store on start-up. It halves the flushes of every
/// import.
const DURABILITY: Durability = Durability::DataOnly;

const META_HEAD: &str = "head";
const META_SAFE: &str = "safe";
const META_FINALIZED: &str = "finalized";
const META_LOSE_NEWEST: &str = "lose_newest_on_restart";

/// The databases; `Copy` because a handle is only a number.
#[derive(Clone, Copy)]
pub(crate) struct Dbs {
    /// Legacy: read only (see the module doc).
    payloads: Database<'static, Bytes, Bytes>,
    bodies: Database<'static, Bytes, Bytes>,
    headers: Database<'static, Bytes, Bytes>,
    canonical: Database<'static, U64<BE>, Bytes>,
    meta: Database<'static, Str, Bytes>,
}

/// What the engine keeps per block to walk the chain without decoding payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeaderRec {
    pub(crate) number: u64,
    pub(crate) parent: [u8; 32],
    pub(crate) timestamp: u64,
}

/// A block pointer (height and hash) as stored in `meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct HeadRec {
    number: u64,
    hash: [u8; 32],
}

/// Why a fork-choice update was not applied (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ForkchoiceRefusal {
    /// The head block is unknown (Engine API: `SYNCING`).
    UnknownHead(BlockHash),
    /// Safe or finalized is not on the new canonical chain (Engine API error -38002).
    InvalidState(String),
}

/// Blocks imported as the new head whose transaction has not committed yet: a linear
/// extension of the stored canonical chain, oldest first, each the head, safe and finalized
/// block once it is the newest (see [`Store::extend_behind`]).
#[derive(Debug, Default)]
struct Unwritten {
    blocks: VecDeque<UnwrittenBlock>,
    /// The error of a queued write that failed: the engine's storage is broken.
    failed: Option<String>,
}

/// Reads a stored block pointer (head, safe or finalized).
type PointerRead = fn(&RoTxn<'_, WithoutTls>, &Dbs) -> Result<(Height, BlockHash), EngineError>;

/// Most queued writes (extensions, as a rule) committed in one transaction.
pub(crate) const EXTEND_BATCH_MAX: usize = 256;
/// How long the writer lets extensions gather before writing them, unless a full batch
/// ([`EXTEND_BATCH_MAX`]) is queued sooner: the most a process crash can lose of what the
/// engine acknowledged, and the least time between two of its flushes while blocks come at
/// under a batch per linger (as in production: 100 KiB blocks at 450/s fill a tenth of one).
/// 25 ms, with the storage writer's `DATA_ONLY_LINGER`: fewer flushes competing with the
/// Raft journal's on a shared disk (measurements there). A full batch ends the linger at once:
/// a writer that waited it out before every batch, full or not, could never write more than
/// `EXTEND_BATCH_MAX` blocks per linger (10,240 blocks/s; the 100,000-block replay bench ran
/// at 6,000, a third of each writer cycle spent asleep with a full batch queued).
pub(crate) const EXTEND_LINGER: Duration = Duration::from_millis(25);

#[derive(Debug)]
struct UnwrittenBlock {
    hash: BlockHash,
    header: HeaderRec,
    /// The compact encoding, as stored (shared by the unwritten list and the writer's job).
    encoded: Arc<Vec<u8>>,
}

/// The engine's environment and its writer thread. Dropping it drains the writer, joins it
/// and closes the environment, so the directory can be opened again at once.
pub(crate) struct Store {
    env: LmdbEnv,
    dbs: Dbs,
    path: PathBuf,
    /// Dropping it drains and joins the writer thread.
    writer: Writer<Dbs, EngineError>,
    /// Imports acknowledged whose transaction is still queued; consulted before every read.
    unwritten: Arc<Mutex<Unwritten>>,
}

fn lmdb(op: &str) -> impl FnOnce(heed::Error) -> EngineError + '_ {
    move |e| EngineError::storage(op, e)
}

impl Store {
    /// Opens (creating if needed) the environment under `data_dir`, writes `genesis` if the
    /// chain is empty, applies a pending "lose the newest N blocks" knob, and starts the writer
    /// thread. Blocks the calling thread: start-up only.
    ///
    /// `persist_lose_newest` (if above 0) is stored for the next open. `linger` is how long
    /// the writer lets extensions gather ([`EXTEND_LINGER`] but in tests). Returns the store
    /// and how many blocks were dropped by the knob.
    pub(crate) fn open(
        data_dir: &Path,
        map_size_bytes: usize,
        genesis: &ExecPayload,
        persist_lose_newest: u64,
        linger: Duration,
    ) -> Result<(Store, u64), EngineError> {
        let path = data_dir.join(ENV_SUBDIR);
        let opts = EnvOptions {
            map_size_bytes,
            max_dbs: DBS_MAX,
        };
        let env = open_env(&path, &opts)?;
        let dbs = create_dbs(&env)?;

        // Start-up work runs here, on the opening thread, before the writer exists.
        let mut wtxn = env.write_txn().map_err(lmdb("begin: open"))?;
        if dbs
            .canonical
            .get(&wtxn, &0)
            .map_err(lmdb("read genesis"))?
            .is_none()
        {
            put_payload(&mut wtxn, &dbs, genesis)?;
            let hash = genesis.block_hash();
            dbs.canonical
                .put(&mut wtxn, &0, &hash.0)
                .map_err(lmdb("write genesis"))?;
            for key in [META_HEAD, META_SAFE, META_FINALIZED] {
                put_meta(
                    &mut wtxn,
                    &dbs,
                    key,
                    &HeadRec {
                        number: 0,
                        hash: hash.0,
                    },
                )?;
            }
        }
        let lose = get_meta::<u64>(&wtxn, &dbs, META_LOSE_NEWEST)?.unwrap_or(0);
        let dropped = if lose > 0 {
            let dropped = drop_newest(&mut wtxn, &dbs, lose)?;
            // One-shot: the knob models one bad restart, not every restart.
            put_meta(&mut wtxn, &dbs, META_LOSE_NEWEST, &0u64)?;
            dropped
        } else {
            0
        };
        if persist_lose_newest > 0 {
            // Configured at construction: applies on the open after this one.
            put_meta(&mut wtxn, &dbs, META_LOSE_NEWEST, &persist_lose_newest)?;
        }
        wtxn.commit().map_err(lmdb("commit: open"))?;

        // Extensions queued within the linger go in one transaction (reth too persists blocks
        // in batches, behind what it acknowledged); a full batch goes at once: waiting would
        // only idle the writer.
        let config = WriterConfig {
            thread_name: "haseq-engine-writer",
            queue_jobs_max: WRITER_QUEUE_JOBS_MAX,
            group_jobs_max: EXTEND_BATCH_MAX,
            linger,
        };
        let (writer, dbs) = Writer::start(env.clone(), config, move |_: &LmdbEnv| Ok(dbs))?;
        Ok((
            Store {
                env,
                dbs,
                path,
                writer,
                unwritten: Arc::default(),
            },
            dropped,
        ))
    }

    /// Runs `f` in a read transaction on the calling thread.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&RoTxn<'_, WithoutTls>, &Dbs) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let rtxn = self.env.read_txn().map_err(lmdb("begin read"))?;
        f(&rtxn, &self.dbs)
    }

    /// Runs `f` in a write transaction on the writer thread and commits it if `f` returns
    /// `Ok`; resolves once the commit (and its fsync) is done. On `Err` nothing is written.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut RwTxn<'_>, &Dbs) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        self.writer.write_with(op, DURABILITY, f).await
    }

    fn unwritten(&self) -> Result<MutexGuard<'_, Unwritten>, EngineError> {
        let u = self
            .unwritten
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &u.failed {
            Some(e) => Err(EngineError::storage(
                "embedded engine",
                format!("an earlier write failed: {e}"),
            )),
            None => Ok(u),
        }
    }

    /// Makes `p` (a child of the current head) the head, safe and finalized block at once, and
    /// queues its transaction: it is written (data pages flushed) behind the caller, like a real
    /// execution client persists blocks behind what it acknowledged. Until that transaction
    /// has committed, reads find `p` among the unwritten blocks; a process crash in between
    /// loses it, and the engine comes back behind (haseq's hole filling refills it). Returns
    /// `Ok(false)`, having done nothing, when `p`'s parent is not the head.
    ///
    /// `encoded` is `p`'s compact encoding, the bytes `p` was decoded from: stored as they
    /// are, not encoded again (a copy of the payload less, 1-1.5% of the CPU of a 3-node
    /// cluster on 2 cores at 100 KiB blocks).
    pub(crate) async fn extend_behind(
        &self,
        p: &ExecPayload,
        encoded: &[u8],
    ) -> Result<bool, EngineError> {
        let hash = p.block_hash();
        let header = HeaderRec {
            number: p.number().0,
            parent: p.parent_hash().0,
            timestamp: p.timestamp(),
        };
        let encoded = Arc::new(encoded.to_vec());
        {
            let mut u = self.unwritten()?;
            let head = match u.blocks.back() {
                Some(b) => b.hash,
                None => self.read(head)?.1,
            };
            if head != p.parent_hash() {
                return Ok(false);
            }
            u.blocks.push_back(UnwrittenBlock {
                hash,
                header,
                encoded: encoded.clone(),
            });
        }
        let job =
            move |wtxn: &mut RwTxn<'_>, dbs: &Dbs| put_encoded(wtxn, dbs, hash, &header, &encoded);
        // The batch's newest block becomes the head, safe and finalized block, once per batch
        // (each block extends the one before, so one fork choice covers them all).
        let fork_choice = move |wtxn: &mut RwTxn<'_>, dbs: &Dbs| match set_forkchoice(
            wtxn, dbs, hash, hash, hash,
        )? {
            Ok(_) => Ok(()),
            Err(refusal) => Err(EngineError::storage("extend", format!("{refusal:?}"))),
        };
        let unwritten = self.unwritten.clone();
        let done = move |res: Result<(), EngineError>| {
            let mut u = unwritten
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match res {
                // Committed: readers find it on disk from now on.
                Ok(()) => {
                    if u.blocks.front().is_some_and(|f| f.hash == hash) {
                        u.blocks.pop_front();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "embedded engine: writing imported blocks failed");
                    u.failed = Some(e.to_string());
                }
            }
        };
        // Nobody waits on it: it lingers for the rest of its batch (see `EXTEND_LINGER`).
        self.writer
            .submit_batched("extend", DURABILITY, job, fork_choice, done)
            .await?;
        Ok(true)
    }

    /// A block pointer: the newest unwritten block if any (it is head, safe and finalized),
    /// else `stored`, read from disk.
    fn pointer_now(&self, stored: PointerRead) -> Result<(Height, BlockHash), EngineError> {
        if let Some(b) = self.unwritten()?.blocks.back() {
            return Ok((Height(b.header.number), b.hash));
        }
        self.read(stored)
    }

    /// The canonical head.
    pub(crate) fn head(&self) -> Result<(Height, BlockHash), EngineError> {
        self.pointer_now(head)
    }

    /// The safe block.
    pub(crate) fn safe(&self) -> Result<(Height, BlockHash), EngineError> {
        self.pointer_now(safe)
    }

    /// The finalized block.
    pub(crate) fn finalized(&self) -> Result<(Height, BlockHash), EngineError> {
        self.pointer_now(finalized)
    }

    /// The header record of a known block.
    pub(crate) fn header(&self, hash: BlockHash) -> Result<Option<HeaderRec>, EngineError> {
        if let Some(b) = self.unwritten()?.blocks.iter().find(|b| b.hash == hash) {
            return Ok(Some(b.header));
        }
        self.read(|t, d| header(t, d, hash))
    }

    /// The compact payload of a known block.
    pub(crate) fn payload_bytes(&self, hash: BlockHash) -> Result<Option<Vec<u8>>, EngineError> {
        if let Some(b) = self.unwritten()?.blocks.iter().find(|b| b.hash == hash) {
            return Ok(Some(b.encoded.to_vec()));
        }
        self.read(|t, d| payload_bytes(t, d, hash))
    }

    /// The canonical hash at `height`.
    pub(crate) fn canonical_hash(&self, height: Height) -> Result<Option<BlockHash>, EngineError> {
        if let Some(b) = self
            .unwritten()?
            .blocks
            .iter()
            .find(|b| b.header.number == height.0)
        {
            return Ok(Some(b.hash));
        }
        self.read(|t, d| canonical_hash(t, d, height))
    }

    /// The environment's directory, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

fn create_dbs(env: &LmdbEnv) -> Result<Dbs, EngineError> {
    let wtxn = env.write_txn().map_err(lmdb("begin: create databases"))?;
    let (payloads, bodies, headers, canonical, meta) = env
        .create_databases_and_commit(wtxn, |dbo, wtxn| -> Result<_, heed::Error> {
            Ok(CommitOrAbort::<_, ()>::Commit((
                dbo.create_database::<Bytes, Bytes>(wtxn, Some("payloads"))?,
                dbo.create_database::<Bytes, Bytes>(wtxn, Some("bodies"))?,
                dbo.create_database::<Bytes, Bytes>(wtxn, Some("headers"))?,
                dbo.create_database::<U64<BE>, Bytes>(wtxn, Some("canonical"))?,
                dbo.create_database::<Str, Bytes>(wtxn, Some("meta"))?,
            )))
        })
        .map_err(lmdb("create databases"))?
        .unwrap_commit();
    Ok(Dbs {
        payloads,
        bodies,
        headers,
        canonical,
        meta,
    })
}

fn get_meta<T: serde::de::DeserializeOwned>(
    txn: &RoTxn<'_, WithoutTls>,
    dbs: &Dbs,
    key: &'static str,
) -> Result<Option<T>, EngineError> {
    Ok(get_rec(txn, dbs.meta, key, key)?)
}

fn put_meta<T: Serialize>(
    wtxn: &mut RwTxn<'_>,
    dbs: &Dbs,
    key: &str,
    value: &T,
) -> Result<(), EngineError> {
    let bytes = encode_rec("meta record", value)?;
    // An unchanged value is not written: a transaction that writes nothing commits without a
    // flush (a fork choice that only confirms the head, as every build does).
    if dbs.meta.get(wtxn, key).map_err(lmdb("read meta"))? == Some(&bytes[..]) {
        return Ok(());
    }
    dbs.meta.put(wtxn, key, &bytes).map_err(lmdb("write meta"))
}

fn to_hash(bytes: &[u8]) -> Result<BlockHash, EngineError> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| EngineError::Decode {
        method: "embedded store",
        what: "canonical hash",
        detail: format!("{} bytes, expected 32", bytes.len()),
    })?;
    Ok(BlockHash(arr))
}

/// Stores a payload and its header record (not canonical). Idempotent.
pub(crate) fn put_payload(
    wtxn: &mut RwTxn<'_>,
    dbs: &Dbs,
    p: &ExecPayload,
) -> Result<(), EngineError> {
    let rec = HeaderRec {
        number: p.number().0,
        parent: p.parent_hash().0,
        timestamp: p.timestamp(),
    };
    put_encoded(
        wtxn,
        dbs,
        p.block_hash(),
        &rec,
        &crate::payload::encode_payload(p),
    )
}

/// Bytes of a `bodies` key: height, big-endian, then hash.
const BODY_KEY_BYTES: usize = 8 + 32;

/// The `bodies` key of block `number` with `hash`: in height order, so the chain appends.
fn body_key(number: u64, hash: BlockHash) -> [u8; BODY_KEY_BYTES] {
    let mut key = [0u8; BODY_KEY_BYTES];
    key[..8].copy_from_slice(&number.to_be_bytes());
    key[8..].copy_from_slice(&hash.0);
    key
}

/// Stores a block's header record and compact payload.
fn put_encoded(
    wtxn: &mut RwTxn<'_>,
    dbs: &Dbs,
    hash: BlockHash,
    rec: &HeaderRec,
    encoded: &[u8],
) -> Result<(), EngineError> {
    dbs.headers
        .put(wtxn, &hash.0, &encode_rec("header record", rec)?)
        .map_err(lmdb("write header"))?;
    dbs.bodies
        .put(wtxn, &body_key(rec.number, hash), encoded)
        .map_err(lmdb("write payload"))
}

/// The header record of a known block.
pub(crate) fn header(
    txn: &RoTxn<'_, WithoutTls>,
    dbs: &Dbs,
    hash: BlockHash,
) -> Result<Option<HeaderRec>, EngineError> {
    match dbs.headers.get(txn, &hash.0).map_err(lmdb("read header"))? {
        Some(bytes) => Ok(Some(decode_rec("header record", hash, bytes)?)),
        None => Ok(None),
    }
}

/// The compact payload of a known block.
pub(crate) fn payload_bytes(
    txn: &RoTxn<'_, WithoutTls>,
    dbs: &Dbs,
    hash: BlockHash,
) -> Result<Option<Vec<u8>>, EngineError> {
    let Some(rec) = header(txn, dbs, hash)? else {
        return Ok(None);
    };
    if let Some(body) = dbs
        .bodies
        .get(txn, &body_key(rec.number, hash))
        .map_err(lmdb("read payload"))?
    {
        return Ok(Some(body.to_vec()));
    }
    // Stored before `bodies` existed.
    Ok(dbs
        .payloads
        .get(txn, &hash.0)
        .map_err(lmdb("read payload"))?
        .map(<[u8]>::to_vec))
}

/// The canonical hash at `height`.
pub(crate) fn canonical_hash(
    txn: &RoTxn<'_, WithoutTls>,
    dbs: &Dbs,
    height: Height,
) -> Result<Option<BlockHash>, EngineError> {
    match dbs
        .canonical
        .get(txn, &height.0)
        .map_err(lmdb("read canonical"))?
    {
        Some(bytes) => to_hash(bytes).map(Some),
        None => Ok(None),
    }
}

/// Which block the meta pointer `key` names.
fn pointer(
    txn: &RoTxn<'_, WithoutTls>,
    dbs: &Dbs,
    key: &'static str,
) -> Result<(Height, BlockHash), EngineError> {
    let rec: HeadRec = get_meta(txn, dbs, key)?.ok_or_else(|| {
        EngineError::storage(
            format!("read {key}"),
            "missing (environment not initialised)",
        )
    })?;
    Ok((Height(rec.number), BlockHash(rec.hash)))
}

/// The canonical head.
pub(crate) fn head(
    txn: &RoTxn<'_, WithoutTls>,
    dbs: &Dbs,
) -> Result<(Height, BlockHash), EngineError> {
    pointer(txn, dbs, META_HEAD)
}

/// The safe block.
pub(crate) fn safe(
    txn: &RoTxn<'_, WithoutTls>,
    dbs: &Dbs,
) -> Result<(Height, BlockHash), EngineError> {
    pointer(txn, dbs, META_SAFE)
}

/// The finalized block.
pub(crate) fn finalized(
    txn: &RoTxn<'_, WithoutTls>,
    dbs: &Dbs,
) -> Result<(Height, BlockHash), EngineError> {
    pointer(txn, dbs, META_FINALIZED)
}

/// Persists the "lose the newest N blocks on the next open" knob.
pub(crate) fn set_lose_newest(wtxn: &mut RwTxn<'_>, dbs: &Dbs, n: u64) -> Result<(), EngineError> {
    put_meta(wtxn, dbs, META_LOSE_NEWEST, &n)
}

/// The persisted "lose the newest N blocks" knob.
pub(crate) fn lose_newest(txn: &RoTxn<'_, WithoutTls>, dbs: &Dbs) -> Result<u64, EngineError> {
    Ok(get_meta(txn, dbs, META_LOSE_NEWEST)?.unwrap_or(0))
}

/// Makes `head_hash` the canonical head, with `safe_hash` and `finalized_hash` (zero = leave
/// unset at genesis). Walks back from the new head to the current canonical chain and rewrites
/// the canonical index from there; a lower head on the same chain just cuts the index.
/// Returns the new head's height; on refusal nothing has been written.
pub(crate) fn set_forkchoice(
    wtxn: &mut RwTxn<'_>,
    dbs: &Dbs,
    head_hash: BlockHash,
    safe_hash: BlockHash,
    finalized_hash: BlockHash,
) -> Result<Result<Height, ForkchoiceRefusal>, EngineError> {
    let Some(head_rec) = header(wtxn, dbs, head_hash)? else {
        return Ok(Err(ForkchoiceRefusal::UnknownHead(head_hash)));
    };
    // Collect the new blocks that are not yet canonical, newest first. Bounded by the chain's
    // length: every step goes one height down and genesis is canonical.
    let mut new_chain = Vec::new();
    let (mut hash, mut rec) = (head_hash, head_rec);
    loop {
        if canonical_hash(wtxn, dbs, Height(rec.number))? == Some(hash) {
            break;
        }
        new_chain.push((rec.number, hash));
        if rec.number == 0 {
            return Err(EngineError::storage(
                "set head",
                format!("block {head_hash} descends from a genesis {hash} that is not ours"),
            ));
        }
        let parent = BlockHash(rec.parent);
        let Some(parent_rec) = header(wtxn, dbs, parent)? else {
            // A stored block whose parent is missing: new_payload never stores one, but the
            // lose-newest knob can drop a parent under a side block; treat as unknown.
            return Ok(Err(ForkchoiceRefusal::UnknownHead(head_hash)));
        };
        hash = parent;
        rec = parent_rec;
    }
    // Safe and finalized must be on the chain about to become canonical: checked before any
    // write, so that a refusal leaves everything as it was. `new_chain` holds the heights from
    // the fork point up; below it the current canonical index is the new chain too.
    let fork_number = new_chain.last().map_or(head_rec.number + 1, |(n, _)| *n);
    let mut pointers = Vec::new();
    for (key, hash) in [(META_SAFE, safe_hash), (META_FINALIZED, finalized_hash)] {
        if hash == BlockHash::ZERO {
            continue;
        }
        let on_chain = match header(wtxn, dbs, hash)? {
            Some(rec) if rec.number > head_rec.number => None,
            Some(rec) if rec.number >= fork_number => new_chain
                .iter()
                .any(|(n, h)| *n == rec.number && *h == hash)
                .then_some(rec),
            Some(rec) => {
                (canonical_hash(wtxn, dbs, Height(rec.number))? == Some(hash)).then_some(rec)
            }
            None => None,
        };
        let Some(rec) = on_chain else {
            return Ok(Err(ForkchoiceRefusal::InvalidState(format!(
                "{key} block {hash} is not an ancestor of head {head_hash} (block {})",
                head_rec.number
            ))));
        };
        pointers.push((
            key,
            HeadRec {
                number: rec.number,
                hash: hash.0,
            },
        ));
    }
    // Heights above the new head leave the canonical chain (a move back, or a shorter fork).
    dbs.canonical
        .delete_range(wtxn, &((head_rec.number + 1)..))
        .map_err(lmdb("cut canonical"))?;
    for (number, hash) in new_chain.iter().rev() {
        dbs.canonical
            .put(wtxn, number, &hash.0)
            .map_err(lmdb("write canonical"))?;
    }
    put_meta(
        wtxn,
        dbs,
        META_HEAD,
        &HeadRec {
            number: head_rec.number,
            hash: head_hash.0,
        },
    )?;
    // A pointer the caller left unset (zero) must still name a canonical block: one that fell
    // off the chain (above the new head, or on the replaced fork) moves onto it.
    for key in [META_SAFE, META_FINALIZED] {
        if pointers.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let (h, hash) = pointer(wtxn, dbs, key)?;
        let number = h.0.min(head_rec.number);
        let on_chain = canonical_hash(wtxn, dbs, Height(number))?;
        if h.0 > head_rec.number || on_chain != Some(hash) {
            let hash = on_chain.ok_or_else(|| {
                EngineError::storage("set head", format!("no canonical block at {number}"))
            })?;
            pointers.push((
                key,
                HeadRec {
                    number,
                    hash: hash.0,
                },
            ));
        }
    }
    for (key, rec) in pointers {
        put_meta(wtxn, dbs, key, &rec)?;
    }
    Ok(Ok(Height(head_rec.number)))
}

/// Drops the newest `n` canonical blocks (never genesis): their payloads, headers and index
/// entries go, and head, safe and finalized are moved back to the new top. Returns how many
/// were dropped.
fn drop_newest(wtxn: &mut RwTxn<'_>, dbs: &Dbs, n: u64) -> Result<u64, EngineError> {
    let (top, _) = head(wtxn, dbs)?;
    let new_top = top.0.saturating_sub(n);
    for h in (new_top + 1)..=top.0 {
        if let Some(hash) = canonical_hash(wtxn, dbs, Height(h))? {
            dbs.bodies
                .delete(wtxn, &body_key(h, hash))
                .map_err(lmdb("drop payload"))?;
            dbs.payloads
                .delete(wtxn, &hash.0)
                .map_err(lmdb("drop payload"))?;
            dbs.headers
                .delete(wtxn, &hash.0)
                .map_err(lmdb("drop header"))?;
        }
    }
    dbs.canonical
        .delete_range(wtxn, &((new_top + 1)..))
        .map_err(lmdb("drop canonical"))?;
    let new_hash = canonical_hash(wtxn, dbs, Height(new_top))?.ok_or_else(|| {
        EngineError::storage("drop newest", format!("no canonical block at {new_top}"))
    })?;
    let rec = HeadRec {
        number: new_top,
        hash: new_hash.0,
    };
    put_meta(wtxn, dbs, META_HEAD, &rec)?;
    for key in [META_SAFE, META_FINALIZED] {
        let (h, _) = pointer(wtxn, dbs, key)?;
        if h.0 > new_top {
            put_meta(wtxn, dbs, key, &rec)?;
        }
    }
    let dropped = top.0 - new_top;
    tracing::warn!(
        dropped,
        from = top.0,
        to = new_top,
        "embedded engine lost its newest blocks on restart (fault knob)"
    );
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    //! The layout of the blocks on disk.

    use super::*;
    use crate::embedded::builder::{self, BuildInput};
    use crate::payload::encode_payload;

    /// `n` blocks on `genesis`, each on the one before.
    fn chain(genesis: &ExecPayload, n: u64) -> Vec<ExecPayload> {
        let mut out: Vec<ExecPayload> = Vec::new();
        for number in 1..=n {
            let parent = out.last().unwrap_or(genesis);
            out.push(builder::build(&BuildInput {
                parent: parent.block_hash(),
                parent_number: number - 1,
                timestamp: number,
                fee_recipient: alloy_primitives::Address::ZERO,
                prev_randao: alloy_primitives::B256::ZERO,
                parent_beacon_block_root: alloy_primitives::B256::ZERO,
                withdrawals: Vec::new(),
                txs_per_block: 2,
                tx_bytes: 64,
            }));
        }
        out
    }

    /// Bodies are stored in height order whatever their hashes (what makes a growing chain
    /// append instead of writing a random leaf per block), and a payload stored by hash alone,
    /// as environments from before `bodies` hold them, still reads back and is dropped with
    /// its block.
    #[tokio::test]
    async fn bodies_are_in_height_order_and_payloads_stored_by_hash_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let genesis = builder::genesis();
        let (store, _) =
            Store::open(dir.path(), 64 << 20, &genesis, 0, EXTEND_LINGER).expect("open");
        let blocks = chain(&genesis, 6);
        for p in &blocks {
            let (p, h) = (p.clone(), p.block_hash());
            store
                .write("test", move |w, d| {
                    put_payload(w, d, &p)?;
                    set_forkchoice(w, d, h, h, h)
                })
                .await
                .expect("write")
                .expect("on the head");
        }
        let numbers: Vec<u64> = store
            .read(|t, d| {
                let iter = d.bodies.iter(t).map_err(lmdb("iter"))?;
                iter.map(|kv| {
                    let (k, _) = kv.map_err(lmdb("next"))?;
                    Ok(u64::from_be_bytes(k[..8].try_into().expect("8 bytes")))
                })
                .collect()
            })
            .expect("bodies");
        assert_eq!(numbers, (0..=6).collect::<Vec<u64>>());

        // Block 5 as an older environment holds it: in `payloads`, keyed by hash.
        let old = blocks[4].clone();
        let (hash, encoded) = (old.block_hash(), encode_payload(&old));
        let moved = encoded.clone();
        store
            .write("test", move |w, d| {
                d.bodies
                    .delete(w, &body_key(5, hash))
                    .map_err(lmdb("delete"))?;
                d.payloads.put(w, &hash.0, &moved).map_err(lmdb("put"))
            })
            .await
            .expect("move");
        assert_eq!(store.payload_bytes(hash).expect("read"), Some(encoded));
        assert_eq!(
            store.payload_bytes(blocks[5].block_hash()).expect("read"),
            Some(encode_payload(&blocks[5]))
        );

        // Dropping the newest two takes both kinds of rows.
        let dropped = store
            .write("test", |w, d| drop_newest(w, d, 2))
            .await
            .expect("drop");
        assert_eq!(dropped, 2);
        let left = store
            .read(|t, d| {
                Ok((
                    d.bodies.len(t).map_err(lmdb("len"))?,
                    d.payloads.len(t).map_err(lmdb("len"))?,
                ))
            })
            .expect("counts");
        assert_eq!(left, (5, 0), "bodies of blocks 0-4, no payload by hash");
    }
}
