//! The embedded engine: an in-process execution engine persisted in its own LMDB environment.
//!
//! It executes nothing, but it keeps a real chain: every payload's `block_hash` is the keccak
//! hash of its header, `new_payload` recomputes it and refuses a mismatch, a block is stored
//! only on a known parent, and the canonical head moves only by fork choice. That is enough
//! for haseq's production, replay and hole-filling paths to run for real, with the fault knobs
//! ([`Faults`]) to make it slow, failing, or forgetful.

mod builder;
mod faults;
mod store;
mod verify;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;

use alloy_eips::eip4895::Withdrawal;
use alloy_primitives::{Address, B256};
use haseq_messages::{BlockHash, Height};

pub use faults::Faults;

use crate::engine::{EngineFuture, ExecutionEngine};
use crate::error::EngineError;
use crate::metrics::instrument;
use crate::payload::{ExecPayload, decode_payload};
use crate::types::{BuildParams, BuiltPayload, PayloadId, PayloadStatus};
use builder::BuildInput;
use store::{ForkchoiceRefusal, Store};
use verify::Verifier;

/// Built payloads kept for `get_payload`; older ones are evicted (a real client keeps a few
/// too, and haseq fetches a payload right after building it).
const BUILT_PAYLOADS_MAX: usize = 64;
/// Blocks with fewer transaction bytes than this are hashed on the calling task: hashing them
/// takes well under 0.1 ms (about 0.3 ms per 100 KiB), no longer than a hand-off to the
/// blocking pool and back (the replay bench could not tell the two apart at 10 KiB: its
/// run-to-run spread, 2,000-2,950 blocks/s, is larger).
const VERIFY_INLINE_TX_BYTES_MAX: usize = 32 * 1024;

/// Upper bound on the synthetic transaction bytes per block (`txs_per_block * tx_bytes`):
/// beyond it a block could not travel in one Raft entry anyway.
pub const SYNTHETIC_BLOCK_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Default LMDB map size: the file grows as needed, this is only the address-space ceiling.
pub const MAP_SIZE_BYTES_DEFAULT: usize = 64 * 1024 * 1024 * 1024;
/// Default chain id reported by `eth_chainId`.
pub const CHAIN_ID_DEFAULT: u64 = 1337;

/// How to open an [`EmbeddedEngine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Directory of the engine's LMDB environment (created if missing).
    pub data_dir: PathBuf,
    /// Synthetic transactions per built block (`engine.embedded.txs_per_block`).
    pub txs_per_block: usize,
    /// Bytes per synthetic transaction (`engine.embedded.tx_bytes`).
    pub tx_bytes: usize,
    /// The chain id reported by `eth_chainId`.
    pub chain_id: u64,
    /// LMDB map size (address-space ceiling of the database file).
    pub map_size_bytes: usize,
    /// Fault knobs in force from the start; `lose_newest_on_restart` is persisted for the next
    /// open.
    pub faults: Faults,
    /// The Osaka activation timestamp of the served chain (Prague from genesis before it). Only
    /// the Engine API server reads it: `engine_getPayloadV4` answers `-38005 Unsupported fork`
    /// for payloads at or after it, `engine_getPayloadV5` for payloads before it. Default 0:
    /// Osaka from genesis.
    pub osaka_time: u64,
}

impl EmbeddedConfig {
    /// Defaults: empty blocks, chain id [`CHAIN_ID_DEFAULT`], no faults.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            data_dir: data_dir.into(),
            txs_per_block: 0,
            tx_bytes: 0,
            chain_id: CHAIN_ID_DEFAULT,
            map_size_bytes: MAP_SIZE_BYTES_DEFAULT,
            faults: Faults::default(),
            osaka_time: 0,
        }
    }
}

/// The in-process execution engine. Share it as `Arc<EmbeddedEngine>` (the Engine API server
/// and the node may hold it together). Dropping the last reference closes its environment.
pub struct EmbeddedEngine {
    store: Store,
    txs_per_block: usize,
    tx_bytes: usize,
    chain_id: u64,
    osaka_time: u64,
    genesis_hash: BlockHash,
    faults: Mutex<Faults>,
    /// Recently built payloads, oldest first, at most [`BUILT_PAYLOADS_MAX`].
    built: Mutex<VecDeque<(PayloadId, ExecPayload)>>,
    /// Checks the hashes of imported blocks of [`VERIFY_INLINE_TX_BYTES_MAX`] or more.
    verifier: Verifier,
}

/// The outcome of a fork-choice update that was applied or could not be (no error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Forkchoice {
    /// Applied; `payload_id` is set when attributes were given.
    Valid {
        head: BlockHash,
        payload_id: Option<PayloadId>,
    },
    /// The head is unknown: nothing changed.
    Syncing,
    /// Safe or finalized not on the head's chain (-38002): nothing changed.
    InvalidState(String),
    /// Forkchoice applied, but the attributes were refused (-38003).
    InvalidAttributes(String),
    /// Engine API rules only: applied, but the head was a canonical ancestor of the finalized
    /// block, so the attributes are not built (paris.md, forkchoiceUpdatedV1 point 2).
    BelowFinalized { head: BlockHash },
}

/// Which rules a call follows where the embedded engine's own use and the Engine API differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rules {
    /// haseq's in-process use: a build may share its parent's timestamp (sub-second blocks),
    /// a stored block is not hashed again, any head may be set.
    Embedded,
    /// The Engine API as served: attributes' timestamp above the head's, every payload's hash
    /// checked even when already stored, no build on a head below the finalized block.
    EngineApi,
}

/// Payload attributes as the embedded engine takes them (`PayloadAttributesV3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attributes {
    pub(crate) timestamp: u64,
    pub(crate) prev_randao: B256,
    pub(crate) fee_recipient: Address,
    pub(crate) withdrawals: Vec<Withdrawal>,
    pub(crate) parent_beacon_block_root: B256,
}

/// An import's verdict with the Engine API's `latestValidHash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Imported {
    pub(crate) status: PayloadStatus,
    pub(crate) latest_valid_hash: Option<BlockHash>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data (knobs, a cache) consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl EmbeddedEngine {
    /// Opens the engine under `config.data_dir`, creating the genesis block on first use and
    /// applying a pending `lose_newest_on_restart`. Blocks the calling thread (LMDB open and
    /// one commit): call it at start-up or from `spawn_blocking`.
    ///
    /// # Errors
    /// [`EngineError::Config`] for synthetic blocks over [`SYNTHETIC_BLOCK_BYTES_MAX`];
    /// [`EngineError::Storage`] when the environment cannot be opened or written.
    pub fn open(config: EmbeddedConfig) -> Result<EmbeddedEngine, EngineError> {
        EmbeddedEngine::open_with_linger(config, store::EXTEND_LINGER)
    }

    /// [`EmbeddedEngine::open`] with the writer's linger given (tests make it long, to see
    /// what does not wait for it).
    pub(crate) fn open_with_linger(
        config: EmbeddedConfig,
        linger: std::time::Duration,
    ) -> Result<EmbeddedEngine, EngineError> {
        let block_bytes = config.txs_per_block.checked_mul(config.tx_bytes);
        if block_bytes.is_none_or(|b| b > SYNTHETIC_BLOCK_BYTES_MAX) {
            return Err(EngineError::Config {
                key: "engine.embedded.tx_bytes",
                value: format!("{} x {} txs", config.tx_bytes, config.txs_per_block),
                reason: format!("synthetic block over {SYNTHETIC_BLOCK_BYTES_MAX} bytes"),
            });
        }
        let genesis = builder::genesis();
        let (store, dropped) = Store::open(
            &config.data_dir,
            config.map_size_bytes,
            &genesis,
            config.faults.lose_newest_on_restart,
            linger,
        )?;
        let engine = EmbeddedEngine {
            store,
            txs_per_block: config.txs_per_block,
            tx_bytes: config.tx_bytes,
            chain_id: config.chain_id,
            osaka_time: config.osaka_time,
            genesis_hash: genesis.block_hash(),
            faults: Mutex::new(config.faults),
            built: Mutex::new(VecDeque::new()),
            verifier: Verifier::start(),
        };
        let (height, hash) = engine.store.head()?;
        tracing::info!(
            path = %engine.store.path().display(),
            head = %height, %hash, dropped,
            "embedded engine open"
        );
        Ok(engine)
    }

    /// The genesis block's hash (height 0): the same on every node and every run.
    pub fn genesis_hash(&self) -> BlockHash {
        self.genesis_hash
    }

    /// The chain id reported by `eth_chainId`.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The Osaka activation timestamp ([`EmbeddedConfig::osaka_time`]).
    pub(crate) fn osaka_time(&self) -> u64 {
        self.osaka_time
    }

    /// The fault knobs in force.
    pub fn faults(&self) -> Faults {
        *lock(&self.faults)
    }

    /// Sets the fault knobs (all of them: `Faults::default()` clears). Persists
    /// `lose_newest_on_restart` before returning, so it applies on the next open even after a
    /// crash.
    ///
    /// # Errors
    /// [`EngineError::Storage`] if the knob cannot be persisted; nothing changes then.
    pub async fn set_faults(&self, faults: Faults) -> Result<(), EngineError> {
        let n = faults.lose_newest_on_restart;
        self.store
            .write("persist fault knob", move |w, d| {
                store::set_lose_newest(w, d, n)
            })
            .await?;
        *lock(&self.faults) = faults;
        tracing::warn!(?faults, "embedded engine fault knobs set");
        Ok(())
    }

    fn check_fail(&self, method: &'static str) -> Result<(), EngineError> {
        if lock(&self.faults).fail {
            return Err(EngineError::Fault { method });
        }
        Ok(())
    }

    /// `forkchoiceUpdated`: makes `head` canonical with `safe` and `finalized` (zero = unset),
    /// then, with attributes, builds a payload on `head`.
    pub(crate) async fn forkchoice_updated(
        &self,
        method: &'static str,
        rules: Rules,
        head: BlockHash,
        safe: BlockHash,
        finalized: BlockHash,
        attrs: Option<Attributes>,
    ) -> Result<Forkchoice, EngineError> {
        self.check_fail(method)?;
        // paris.md, forkchoiceUpdatedV1 point 2: no build on a head that is a canonical
        // ancestor of the latest finalized block (the update itself is applied: the spec only
        // allows skipping it, and haseq sets a served engine back that way).
        let below_finalized = match self.store.header(head)? {
            Some(rec) if rules == Rules::EngineApi && attrs.is_some() => {
                let (finalized_number, _) = self.store.finalized()?;
                rec.number < finalized_number.0
                    && self.store.canonical_hash(Height(rec.number))? == Some(head)
            }
            _ => false,
        };
        // Already so (every build confirms the head the replayer just set): nothing to write,
        // so no trip to the writer thread.
        let unchanged = {
            let (h, hash) = self.store.head()?;
            let same =
                |p: (Height, BlockHash), want: BlockHash| want == BlockHash::ZERO || p.1 == want;
            (hash == head
                && same(self.store.safe()?, safe)
                && same(self.store.finalized()?, finalized))
            .then_some(h)
        };
        let applied = match unchanged {
            Some(h) => Ok(Ok(h)),
            None => {
                self.store
                    .write("forkchoice", move |w, d| {
                        store::set_forkchoice(w, d, head, safe, finalized)
                    })
                    .await
            }
        };
        // The closure's refusal is returned as Ok(Err(..)) and committed as a no-op write.
        let head_number = match applied? {
            Ok(number) => number,
            Err(ForkchoiceRefusal::UnknownHead(_)) => return Ok(Forkchoice::Syncing),
            Err(ForkchoiceRefusal::InvalidState(why)) => return Ok(Forkchoice::InvalidState(why)),
        };
        if below_finalized {
            return Ok(Forkchoice::BelowFinalized { head });
        }
        let Some(attrs) = attrs else {
            return Ok(Forkchoice::Valid {
                head,
                payload_id: None,
            });
        };
        let parent = self
            .store
            .header(head)?
            .ok_or_else(|| EngineError::storage("forkchoice", format!("head {head} vanished")))?;
        // Sub-second block times: timestamps have one-second resolution, so consecutive blocks
        // may share one here (haseq's Producer adds a second for a real execution client,
        // which requires strictly increasing timestamps).
        let too_early = match rules {
            Rules::Embedded => attrs.timestamp < parent.timestamp,
            Rules::EngineApi => attrs.timestamp <= parent.timestamp,
        };
        if too_early {
            return Ok(Forkchoice::InvalidAttributes(format!(
                "timestamp {} not above parent {} (block {}) timestamp {}",
                attrs.timestamp, head, head_number, parent.timestamp
            )));
        }
        let input = BuildInput {
            parent: head,
            parent_number: head_number.0,
            timestamp: attrs.timestamp,
            fee_recipient: attrs.fee_recipient,
            prev_randao: attrs.prev_randao,
            parent_beacon_block_root: attrs.parent_beacon_block_root,
            withdrawals: attrs.withdrawals,
            txs_per_block: self.txs_per_block,
            tx_bytes: self.tx_bytes,
        };
        let id = builder::payload_id(&input);
        let already = lock(&self.built).iter().any(|(i, _)| *i == id);
        if !already {
            // Hashing a large synthetic block (trie root over its transactions) is CPU work of
            // a few milliseconds at most: not worth a thread hop.
            let payload = builder::build(&input);
            let mut built = lock(&self.built);
            if built.len() >= BUILT_PAYLOADS_MAX {
                built.pop_front();
            }
            built.push_back((id, payload));
        }
        Ok(Forkchoice::Valid {
            head,
            payload_id: Some(id),
        })
    }

    /// `getPayload`: the payload built under `id`.
    pub(crate) fn built_payload(
        &self,
        method: &'static str,
        id: PayloadId,
    ) -> Result<ExecPayload, EngineError> {
        self.check_fail(method)?;
        lock(&self.built)
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, p)| p.clone())
            .ok_or(EngineError::UnknownPayload { method, id })
    }

    /// `newPayload`: validates and stores `p` (not canonical).
    pub(crate) async fn import(
        &self,
        method: &'static str,
        rules: Rules,
        p: ExecPayload,
    ) -> Result<Imported, EngineError> {
        let hash = p.block_hash();
        let p = match self.check_import(method, rules, p).await? {
            Err(verdict) => return Ok(verdict),
            Ok(None) => return Ok(valid(hash)),
            Ok(Some(p)) => p,
        };
        self.slow_down().await;
        self.store
            .write("new_payload", move |w, d| store::put_payload(w, d, &p))
            .await?;
        Ok(valid(hash))
    }

    /// `newPayload` then `forkchoiceUpdated{head = safe = finalized = p}` in one transaction.
    async fn import_as_head(
        &self,
        method: &'static str,
        p: ExecPayload,
        encoded: &[u8],
    ) -> Result<Imported, EngineError> {
        let hash = p.block_hash();
        let p = match self.check_import(method, Rules::Embedded, p).await? {
            // As `newPayload` then `forkchoiceUpdated` would: the head cannot move to a block
            // on an unknown parent.
            Err(Imported {
                status: PayloadStatus::Syncing,
                ..
            }) => return Err(refusal(method, hash, None, Forkchoice::Syncing)),
            Err(verdict) => return Ok(verdict),
            Ok(p) => p,
        };
        if let Some(p) = &p {
            self.slow_down().await;
            // The common case, a child of the head: acknowledged now, written behind.
            if self.store.extend_behind(p, encoded).await? {
                return Ok(valid(hash));
            }
        }
        let set = self
            .store
            .write("new_payload+forkchoice", move |w, d| {
                if let Some(p) = &p {
                    store::put_payload(w, d, p)?;
                }
                store::set_forkchoice(w, d, hash, hash, hash)
            })
            .await?;
        match set {
            Ok(_) => Ok(valid(hash)),
            Err(ForkchoiceRefusal::UnknownHead(_)) => {
                Err(refusal(method, hash, None, Forkchoice::Syncing))
            }
            Err(ForkchoiceRefusal::InvalidState(why)) => {
                Err(refusal(method, hash, None, Forkchoice::InvalidState(why)))
            }
        }
    }

    /// The delay fault, once per imported block.
    async fn slow_down(&self) {
        let delay = lock(&self.faults).delay_per_block;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Checks `p` for import: `Err(verdict)` when it is not to be stored (invalid, or on an
    /// unknown parent), `Ok(None)` when it is already stored, `Ok(Some(p))` to store it.
    async fn check_import(
        &self,
        method: &'static str,
        rules: Rules,
        p: ExecPayload,
    ) -> Result<Result<Option<ExecPayload>, Imported>, EngineError> {
        self.check_fail(method)?;
        let hash = p.block_hash();
        let known = self.store.header(hash)?.is_some();
        let parent = self.store.header(p.parent_hash())?;
        // A block already stored (built here, or imported before) is valid as stored; for
        // haseq's own use the engine does not validate it again. The Engine API checks every
        // payload's hash (a stored hash with other contents is INVALID), so it goes on.
        if known && rules == Rules::Embedded {
            return Ok(Ok(None));
        }
        // Exactly a payload this engine built (the leader importing its own block once it is
        // committed): its hash was computed here from these very contents.
        let built_here = lock(&self.built)
            .iter()
            .any(|(_, b)| b.block_hash() == hash && *b == p);
        let tx_bytes: usize = p
            .payload
            .payload_inner
            .payload_inner
            .transactions
            .iter()
            .map(|t| t.len())
            .sum();
        let p = if built_here {
            p
        } else if tx_bytes < VERIFY_INLINE_TX_BYTES_MAX {
            if let Err(reason) = p.verify_block_hash() {
                return Ok(Err(Imported {
                    status: PayloadStatus::Invalid { reason },
                    latest_valid_hash: None,
                }));
            }
            p
        } else {
            // Hashing the transactions is an import's one CPU-heavy step (about 0.5 ms for
            // 100 KiB): off the async workers, so the node's network and Raft tasks do not
            // queue behind it (100 KiB blocks, 3 nodes on 2 cores: follower receive latency
            // and commit p50 both dropped), and on a thread of lower priority (see `verify`).
            let verdict = self
                .verifier
                .verify(&p)
                .await
                .map_err(|e| EngineError::storage(format!("{method}: verify block hash"), e))?;
            if let Err(reason) = verdict {
                return Ok(Err(Imported {
                    status: PayloadStatus::Invalid { reason },
                    latest_valid_hash: None,
                }));
            }
            p
        };
        if known {
            return Ok(Ok(None));
        }
        let Some(parent) = parent else {
            // The spec's answer for a payload on an unknown parent; the embedded engine never
            // fetches it by itself: the caller imports the ancestors first.
            return Ok(Err(Imported {
                status: PayloadStatus::Syncing,
                latest_valid_hash: None,
            }));
        };
        let number = p.number().0;
        let invalid = if number != parent.number + 1 {
            Some(format!(
                "block {hash}: number {number} does not follow parent {} number {} (expected {})",
                p.parent_hash(),
                parent.number,
                parent.number + 1
            ))
        } else if p.timestamp() < parent.timestamp {
            // Equal is allowed: see the note on sub-second block times in `forkchoice`.
            Some(format!(
                "block {number} {hash}: timestamp {} below parent timestamp {}",
                p.timestamp(),
                parent.timestamp
            ))
        } else {
            None
        };
        if let Some(reason) = invalid {
            return Ok(Err(Imported {
                status: PayloadStatus::Invalid { reason },
                latest_valid_hash: Some(p.parent_hash()),
            }));
        }
        Ok(Ok(Some(p)))
    }

    /// A canonical block by height, or by pointer: `None` above the head.
    pub(crate) fn canonical_block(
        &self,
        method: &'static str,
        at: BlockRef,
    ) -> Result<Option<ExecPayload>, EngineError> {
        self.check_fail(method)?;
        let hash = match at {
            BlockRef::Number(h) => self.store.canonical_hash(h)?,
            BlockRef::Latest => Some(self.store.head()?.1),
            BlockRef::Safe => Some(self.store.safe()?.1),
            BlockRef::Finalized => Some(self.store.finalized()?.1),
        };
        let bytes = match hash {
            Some(h) => self.store.payload_bytes(h)?,
            None => None,
        };
        bytes.map(|b| decode_payload(&b)).transpose()
    }

    fn head_now(&self, method: &'static str) -> Result<(Height, BlockHash), EngineError> {
        self.check_fail(method)?;
        self.store.head()
    }

    /// The persisted `lose_newest_on_restart` knob (what the next open will drop).
    ///
    /// # Errors
    /// [`EngineError::Storage`] on a read failure.
    pub fn pending_lose_newest(&self) -> Result<u64, EngineError> {
        self.store.read(store::lose_newest)
    }
}

fn valid(hash: BlockHash) -> Imported {
    Imported {
        status: PayloadStatus::Valid,
        latest_valid_hash: Some(hash),
    }
}

/// Which canonical block a read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockRef {
    Number(Height),
    Latest,
    Safe,
    Finalized,
}

impl ExecutionEngine for EmbeddedEngine {
    fn build_payload(&self, params: BuildParams) -> EngineFuture<'_, PayloadId> {
        const M: &str = "build_payload";
        Box::pin(instrument(M, async move {
            self.check_fail(M)?;
            let parent = self.store.header(params.parent)?;
            let Some(parent) = parent else {
                return Err(EngineError::Syncing {
                    method: M,
                    hash: params.parent,
                });
            };
            if parent.number != params.parent_height.0 {
                return Err(EngineError::Rejected {
                    method: M,
                    number: Some(parent.number),
                    hash: Some(params.parent),
                    reason: format!(
                        "parent is at height {}, caller expected {}",
                        parent.number, params.parent_height
                    ),
                });
            }
            let attrs = Attributes {
                timestamp: params.timestamp,
                prev_randao: B256::ZERO,
                fee_recipient: Address::from(params.fee_recipient),
                withdrawals: Vec::new(),
                parent_beacon_block_root: B256::ZERO,
            };
            let p = params.parent;
            match self
                .forkchoice_updated(M, Rules::Embedded, p, p, p, Some(attrs))
                .await?
            {
                Forkchoice::Valid {
                    payload_id: Some(id),
                    ..
                } => Ok(id),
                other => Err(refusal(M, params.parent, Some(parent.number), other)),
            }
        }))
    }

    fn get_payload(&self, id: PayloadId) -> EngineFuture<'_, BuiltPayload> {
        const M: &str = "get_payload";
        Box::pin(instrument(M, async move {
            Ok(self.built_payload(M, id)?.to_built())
        }))
    }

    fn new_payload<'a>(&'a self, encoded: &'a [u8]) -> EngineFuture<'a, PayloadStatus> {
        const M: &str = "new_payload";
        Box::pin(instrument(M, async move {
            let p = decode_payload(encoded)?;
            Ok(self.import(M, Rules::Embedded, p).await?.status)
        }))
    }

    fn import_and_set_head<'a>(
        &'a self,
        encoded: &'a [u8],
        head: BlockHash,
    ) -> EngineFuture<'a, PayloadStatus> {
        const M: &str = "import_and_set_head";
        Box::pin(instrument(M, async move {
            let p = decode_payload(encoded)?;
            if p.block_hash() != head {
                return Err(EngineError::Mismatch {
                    method: M,
                    what: "block hash",
                    expected: head.to_string(),
                    got: p.block_hash().to_string(),
                });
            }
            Ok(self.import_as_head(M, p, encoded).await?.status)
        }))
    }

    fn head_moves_with_each_import(&self) -> bool {
        true
    }

    fn set_head(
        &self,
        head: BlockHash,
        safe: BlockHash,
        finalized: BlockHash,
    ) -> EngineFuture<'_, ()> {
        const M: &str = "set_head";
        Box::pin(instrument(M, async move {
            match self
                .forkchoice_updated(M, Rules::Embedded, head, safe, finalized, None)
                .await?
            {
                Forkchoice::Valid { .. } => Ok(()),
                other => Err(refusal(M, head, None, other)),
            }
        }))
    }

    fn head(&self) -> EngineFuture<'_, (Height, BlockHash)> {
        const M: &str = "head";
        Box::pin(instrument(M, async move { self.head_now(M) }))
    }

    fn block_hash_at(&self, height: Height) -> EngineFuture<'_, Option<BlockHash>> {
        const M: &str = "block_hash_at";
        Box::pin(instrument(M, async move {
            self.check_fail(M)?;
            self.store.canonical_hash(height)
        }))
    }
}

/// The error for a fork-choice outcome that is not the one asked for.
fn refusal(
    method: &'static str,
    hash: BlockHash,
    number: Option<u64>,
    f: Forkchoice,
) -> EngineError {
    match f {
        Forkchoice::Syncing => EngineError::Syncing { method, hash },
        Forkchoice::InvalidState(reason) | Forkchoice::InvalidAttributes(reason) => {
            EngineError::Rejected {
                method,
                number,
                hash: Some(hash),
                reason,
            }
        }
        Forkchoice::Valid { .. } | Forkchoice::BelowFinalized { .. } => EngineError::Mismatch {
            method,
            what: "payload id",
            expected: "an id".into(),
            got: "none".into(),
        },
    }
}

#[cfg(test)]
mod tests;
