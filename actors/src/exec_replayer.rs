//! ExecReplayer: keeps this node's execution engine at the applied head, on every node and in
//! every role.
//!
//! Owns: the replay task (a tokio task, so a slow engine never blocks the arbiter).
//! Receives: applied-head changes (the state machine's watch channel).
//! Sends: [`ExecStatus`] on a watch channel (exec height and hash, lag, health), read by the
//! Producer, the HTTP API and, later, the Elector.
//!
//! Its progress is the engine's own head, read back after every batch, never a counter of its
//! own: a role change, a restart or a rebuilt actor resumes exactly where the engine is.
//! Start-up hole filling falls out of the same loop: an engine behind the applied head gets
//! the gap from the block store; an engine ahead on the same chain is set back to the applied
//! head; an engine on another chain is reported (`on_other_chain`) and never built on.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, AsyncContext, Context};
use haseq_engine::ExecutionEngine;
use haseq_messages::{BlockHash, Height};
use haseq_storage::BlockReader;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::faults::{PanicKnobs, PanicSite};
use crate::supervisor::{ExitGuard, TaskGuard, spawn_task};

/// The most blocks imported before the head is moved and read back.
pub const REPLAY_BATCH_BLOCKS_MAX: u64 = 256;
/// The longest a batch runs before the head is moved and published (a slow engine).
pub const REPLAY_BATCH_TIME_MAX: Duration = Duration::from_millis(200);
/// Wait after an engine error before trying again; doubled up to [`RETRY_DELAY_MAX`].
const RETRY_DELAY_MIN: Duration = Duration::from_millis(50);
/// The longest wait between attempts on a failing engine.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(2);
/// How often an idle replayer re-reads the engine's head (to notice a sick or rewound engine).
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// A replay this far behind at its start is long enough to report its progress in the log.
pub const REPLAY_LOG_MIN_LAG: u64 = 1_000;
/// How often a long replay logs its progress.
const REPLAY_LOG_EVERY: Duration = Duration::from_secs(5);
/// How often the actor checks that its replay task still runs.
const TASK_CHECK: Duration = Duration::from_millis(100);

/// The execution side of a node, as the replayer last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecStatus {
    /// The engine's canonical head height, read back from the engine.
    pub exec_height: u64,
    /// The engine's canonical head hash (`BlockHash::ZERO` stands for genesis).
    pub exec_hash: BlockHash,
    /// The applied head height when this was measured.
    pub applied_height: u64,
    /// `applied_height - exec_height` (0 when the engine is at or ahead of it).
    pub lag: u64,
    /// The last engine call succeeded.
    pub healthy: bool,
    /// The engine's canonical chain is not the committed chain: never build on it.
    pub on_other_chain: bool,
    /// The last problem, for `/status` and logs.
    pub error: Option<String>,
}

impl ExecStatus {
    /// The status before the engine has been read.
    pub fn unknown() -> ExecStatus {
        ExecStatus {
            exec_height: 0,
            exec_hash: BlockHash::ZERO,
            applied_height: 0,
            lag: 0,
            healthy: false,
            on_other_chain: false,
            error: Some("engine not read yet".into()),
        }
    }

    /// The engine is exactly at the applied head `(height, hash)` and healthy: safe to build on.
    pub fn at(&self, height: Height, hash: BlockHash) -> bool {
        self.healthy
            && !self.on_other_chain
            && self.exec_height == height.0
            && self.exec_hash == hash
    }
}

/// The actor; see the module doc.
pub struct ExecReplayer {
    engine: Arc<dyn ExecutionEngine>,
    blocks: BlockReader,
    status: watch::Sender<ExecStatus>,
    cancel: CancellationToken,
    task: Option<TaskGuard>,
    faults: PanicKnobs,
    /// The Syncer's progress: a change may mean the block the replay waits for is stored.
    sync: watch::Receiver<Option<crate::syncer::SyncProgress>>,
    _exit: ExitGuard,
}

impl ExecReplayer {
    /// A replayer feeding `engine` from `blocks`, publishing on `status`.
    pub fn new(
        engine: Arc<dyn ExecutionEngine>,
        blocks: BlockReader,
        status: watch::Sender<ExecStatus>,
        faults: PanicKnobs,
        sync: watch::Receiver<Option<crate::syncer::SyncProgress>>,
        exit: ExitGuard,
    ) -> ExecReplayer {
        ExecReplayer {
            engine,
            blocks,
            status,
            cancel: CancellationToken::new(),
            task: None,
            faults,
            sync,
            _exit: exit,
        }
    }
}

impl Actor for ExecReplayer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let faults = self.faults.clone();
        let task = spawn_task(
            ctx,
            "replay",
            replay_loop(
                self.engine.clone(),
                self.blocks.clone(),
                self.status.clone(),
                self.cancel.clone(),
                faults,
                self.sync.clone(),
            ),
        );
        // A panic in the replay task stops this actor (spawn_task); so does the task ending
        // any other way before it was told to, so the supervisor rebuilds both.
        ctx.run_interval(TASK_CHECK, |act, ctx| {
            act.faults.trip(PanicSite::ExecReplayer);
            if act.task.as_ref().is_some_and(|t| t.is_finished()) && !act.cancel.is_cancelled() {
                tracing::error!("replay task ended; restarting ExecReplayer");
                ctx.stop();
            }
        });
        self.task = Some(task);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.cancel.cancel();
    }
}

impl Drop for ExecReplayer {
    fn drop(&mut self) {
        // A panicking actor is dropped without `stopped`: end its task too.
        self.cancel.cancel();
    }
}

/// The engine hash that stands for `(height, hash)` of the applied chain: height 0 is the
/// engine's own genesis, which the state machine calls `BlockHash::ZERO`.
async fn engine_hash_of(
    engine: &dyn ExecutionEngine,
    height: Height,
    hash: BlockHash,
) -> Result<BlockHash, ReplayError> {
    if height.0 == 0 {
        engine
            .block_hash_at(Height(0))
            .await
            .map_err(engine_err("reading the engine's genesis"))?
            .ok_or(ReplayError::NoGenesis)
    } else {
        Ok(hash)
    }
}

/// The state machine's name for an engine block: genesis becomes `BlockHash::ZERO`.
fn applied_name(height: u64, engine_hash: BlockHash) -> BlockHash {
    if height == 0 {
        BlockHash::ZERO
    } else {
        engine_hash
    }
}

/// Why a replay step could not go on (the loop retries with backoff and reports it in
/// `ExecStatus::error`).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The block store failed to read.
    #[error("reading {what} from the block store: {source}")]
    Store {
        /// What was read: "the applied head", "block 17".
        what: String,
        /// The store's error.
        source: haseq_storage::StorageError,
    },
    /// An engine call failed.
    #[error("{call}: {source}")]
    Engine {
        /// The call and its argument: "importing block 17".
        call: String,
        /// The engine's error.
        source: haseq_engine::EngineError,
    },
    /// The engine has no block at height 0.
    #[error("the engine has no genesis block")]
    NoGenesis,
    /// The engine refused a block the cluster committed: the engine's chain or rules differ.
    #[error("engine refused committed block {height} {hash}: {reason}")]
    Refused {
        /// The block.
        height: Height,
        /// Its hash.
        hash: BlockHash,
        /// The engine's words.
        reason: String,
    },
}

fn store_err(what: impl Into<String>) -> impl FnOnce(haseq_storage::StorageError) -> ReplayError {
    let what = what.into();
    move |source| ReplayError::Store { what, source }
}

fn engine_err(call: impl Into<String>) -> impl FnOnce(haseq_engine::EngineError) -> ReplayError {
    let call = call.into();
    move |source| ReplayError::Engine { call, source }
}

/// One step's outcome.
enum Step {
    /// Imported blocks; go again at once.
    Progress,
    /// At the applied head (or unable to go on for a reported reason): wait for news.
    Idle,
}

async fn replay_loop(
    engine: Arc<dyn ExecutionEngine>,
    blocks: BlockReader,
    status: watch::Sender<ExecStatus>,
    cancel: CancellationToken,
    faults: PanicKnobs,
    mut sync_rx: watch::Receiver<Option<crate::syncer::SyncProgress>>,
) {
    let mut applied_rx = blocks.subscribe();
    let mut delay = RETRY_DELAY_MIN;
    let mut long_run: Option<LongReplay> = None;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        faults.trip(PanicSite::ReplayTask);
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = step(engine.as_ref(), &blocks, &status) => r,
        };
        crate::log_context::set_height(status.borrow().applied_height);
        match outcome {
            Ok(Step::Progress) => {
                delay = RETRY_DELAY_MIN;
                LongReplay::progress(&mut long_run, &status.borrow());
            }
            Ok(Step::Idle) => {
                delay = RETRY_DELAY_MIN;
                LongReplay::finish(&mut long_run, &status.borrow());
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = applied_rx.changed() => if r.is_err() { return },
                    // The Syncer stored a range (or finished): the block it lacked may be there.
                    r = sync_rx.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(IDLE_CHECK) => {}
                }
            }
            Err(e) => {
                let mut first = false;
                status.send_modify(|s| {
                    first = s.healthy;
                    s.healthy = false;
                    s.error = Some(e.to_string());
                });
                if first {
                    tracing::warn!(error = %e, "execution engine call failed; retrying");
                }
                metrics::gauge!("haseq_exec_healthy").set(0.0);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(RETRY_DELAY_MAX);
            }
        }
    }
}

/// A replay that started at least [`REPLAY_LOG_MIN_LAG`] blocks behind: logged every
/// [`REPLAY_LOG_EVERY`] with rate and ETA, and once when it caught up.
struct LongReplay {
    started: std::time::Instant,
    from: u64,
    last_log: std::time::Instant,
}

impl LongReplay {
    fn progress(run: &mut Option<LongReplay>, s: &ExecStatus) {
        let now = std::time::Instant::now();
        let Some(r) = run else {
            if s.lag >= REPLAY_LOG_MIN_LAG {
                tracing::info!(
                    exec_height = s.exec_height,
                    applied_height = s.applied_height,
                    remaining = s.lag,
                    "replaying committed blocks into the execution engine"
                );
                *run = Some(LongReplay {
                    started: now,
                    from: s.exec_height,
                    last_log: now,
                });
            }
            return;
        };
        if now.duration_since(r.last_log) < REPLAY_LOG_EVERY {
            return;
        }
        r.last_log = now;
        let done = s.exec_height.saturating_sub(r.from);
        let rate = done as f64 / now.duration_since(r.started).as_secs_f64().max(1e-3);
        tracing::info!(
            exec_height = s.exec_height,
            applied_height = s.applied_height,
            done,
            remaining = s.lag,
            blocks_per_s = rate.round(),
            eta_s = if rate > 0.0 {
                (s.lag as f64 / rate).round()
            } else {
                -1.0
            },
            "replaying committed blocks into the execution engine"
        );
    }

    fn finish(run: &mut Option<LongReplay>, s: &ExecStatus) {
        let Some(r) = run.take() else { return };
        let took = r.started.elapsed().as_secs_f64();
        let done = s.exec_height.saturating_sub(r.from);
        tracing::info!(
            exec_height = s.exec_height,
            blocks = done,
            seconds = (took * 10.0).round() / 10.0,
            blocks_per_s = (done as f64 / took.max(1e-3)).round(),
            "replay caught up: the engine is at the applied head"
        );
    }
}

async fn step(
    engine: &dyn ExecutionEngine,
    blocks: &BlockReader,
    status: &watch::Sender<ExecStatus>,
) -> Result<Step, ReplayError> {
    let applied = blocks.head().map_err(store_err("the applied head"))?;
    let (eh, ehash) = engine
        .head()
        .await
        .map_err(engine_err("reading the engine head"))?;
    let publish = |exec_height: u64, exec_hash: BlockHash, other: bool, error: Option<String>| {
        let lag = applied.height.0.saturating_sub(exec_height);
        metrics::gauge!("haseq_exec_height").set(exec_height as f64);
        metrics::gauge!("haseq_exec_lag_blocks").set(lag as f64);
        metrics::gauge!("haseq_exec_healthy").set(1.0);
        status.send_replace(ExecStatus {
            exec_height,
            exec_hash: applied_name(exec_height, exec_hash),
            applied_height: applied.height.0,
            lag,
            healthy: true,
            on_other_chain: other,
            error,
        });
    };

    // Is the engine's head on the committed chain? Compare with the block store, never with
    // what the engine says about itself.
    // The committed block at the engine's head, in the state machine's naming: the parent of
    // the first block replayed.
    let mut parent = BlockHash::ZERO;
    let ours_at_engine_head = if eh.0 <= applied.height.0 {
        let want = match blocks
            .summary(eh)
            .map_err(store_err(format!("block {eh}")))?
        {
            Some(b) => b.hash,
            None if eh.0 == 0 => BlockHash::ZERO,
            None => {
                // The store lacks it (caught up from a snapshot): until the Syncer fetched it,
                // trust the engine's chain only if it links to what we hold above it.
                publish(
                    eh.0,
                    ehash,
                    false,
                    Some(format!("block {eh} not in the block store")),
                );
                return Ok(Step::Idle);
            }
        };
        parent = want;
        Some(engine_hash_of(engine, eh, want).await?)
    } else {
        None
    };

    match ours_at_engine_head {
        Some(want) if want != ehash => {
            let msg = format!(
                "engine head {eh} is {ehash}, the committed block at {eh} is {want}: engine on another chain"
            );
            if !status.borrow().on_other_chain {
                tracing::error!("{msg}; refusing to build on it, still following");
            }
            publish(eh.0, ehash, true, Some(msg));
            Ok(Step::Idle)
        }
        Some(_) if eh.0 == applied.height.0 => {
            publish(eh.0, ehash, false, None);
            Ok(Step::Idle)
        }
        Some(_) => {
            // Behind: say where the engine is (a slow batch must not leave the status unknown),
            // import the next batch from the block store, then move the head.
            publish(eh.0, ehash, false, None);
            let to = applied.height.0.min(eh.0 + REPLAY_BATCH_BLOCKS_MAX);
            let batch_start = std::time::Instant::now();
            for h in eh.0 + 1..=to {
                let Some(b) = blocks
                    .block(Height(h))
                    .map_err(store_err(format!("block {h}")))?
                else {
                    publish(
                        eh.0,
                        ehash,
                        false,
                        Some(format!("block {h} not in the block store")),
                    );
                    return Ok(Step::Idle);
                };
                // The store holds only blocks the state machine accepted (or the Syncer checked
                // against the chain above): a block out of place here is a broken store, and
                // replaying it would put the engine on a chain no one committed.
                assert_eq!(
                    b.height,
                    Height(h),
                    "block store: the block stored at {h} says it is at {}",
                    b.height
                );
                assert_eq!(
                    b.parent_hash, parent,
                    "block store: block {h}'s parent is not the committed block below it"
                );
                parent = b.hash;
                // The batch's last block (its end, or the time bound reached) is imported and
                // made the head in one call: one engine write per block in steady state. An
                // engine whose head moves cheaply (the embedded one) gets every block so.
                let last = h == to || batch_start.elapsed() >= REPLAY_BATCH_TIME_MAX;
                let status = if last || engine.head_moves_with_each_import() {
                    engine
                        .import_and_set_head(&b.payload, b.hash)
                        .await
                        .map_err(engine_err(format!("importing block {h} as the head")))?
                } else {
                    engine
                        .new_payload(&b.payload)
                        .await
                        .map_err(engine_err(format!("importing block {h}")))?
                };
                if let haseq_engine::PayloadStatus::Invalid { reason } = status {
                    return Err(ReplayError::Refused {
                        height: Height(h),
                        hash: b.hash,
                        reason,
                    });
                }
                if last {
                    break;
                }
            }
            let (nh, nhash) = engine
                .head()
                .await
                .map_err(engine_err("reading the engine head"))?;
            metrics::counter!("haseq_blocks_replayed_total").increment(nh.0.saturating_sub(eh.0));
            publish(nh.0, nhash, false, None);
            Ok(Step::Progress)
        }
        None => {
            // Ahead of the applied head: on the same chain, set it back; otherwise report.
            let at = engine
                .block_hash_at(applied.height)
                .await
                .map_err(engine_err(format!(
                    "reading engine block {}",
                    applied.height
                )))?;
            let want = engine_hash_of(engine, applied.height, applied.hash).await?;
            if at == Some(want) {
                tracing::warn!(
                    engine = eh.0,
                    applied = applied.height.0,
                    "engine ahead of the committed chain; setting its head back"
                );
                engine
                    .set_head(want, want, want)
                    .await
                    .map_err(engine_err(format!(
                        "setting head back to {}",
                        applied.height
                    )))?;
                Ok(Step::Progress)
            } else {
                let msg = format!(
                    "engine head {eh} is ahead of the applied head {} and not on the committed chain",
                    applied.height
                );
                if !status.borrow().on_other_chain {
                    tracing::error!("{msg}; refusing to build on it, still following");
                }
                publish(eh.0, ehash, true, Some(msg));
                Ok(Step::Idle)
            }
        }
    }
}

crate::supervisor::stops_on_request!(ExecReplayer);

#[cfg(test)]
mod tests {
    //! How the replayer feeds a batch to an engine.
    //!
    //! Goal: an engine whose head moves cheaply (the embedded one) gets every block of a batch
    //! as a new head, so it writes the batch behind instead of one durable import per block;
    //! any other engine gets the batch imported and its head moved once. Either way the engine
    //! ends at the applied head.
    //! Method: a real block store holding 40 blocks built by one embedded engine, replayed into
    //! a fresh embedded engine behind a wrapper that counts the calls and says whether head
    //! moves are cheap.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::stream;
    use haseq_engine::{
        BuildParams, BuiltPayload, EmbeddedConfig, EmbeddedEngine, EngineFuture, ExecutionEngine,
        PayloadId, PayloadStatus,
    };
    use haseq_messages::{Block, BlockHash, Command, Height, NodeId, TC};
    use haseq_storage::{Storage, StoreOptions};
    use openraft::LogId;
    use openraft::entry::RaftEntry;
    use openraft::storage::RaftStateMachine;
    use openraft::type_config::alias::EntryOf;
    use openraft::vote::leader_id_std::CommittedLeaderId;
    use tokio::sync::watch;

    use super::{ExecStatus, REPLAY_BATCH_BLOCKS_MAX, Step, step};

    const BLOCKS: u64 = 40;
    // The whole gap is one batch.
    const _: () = assert!(BLOCKS <= REPLAY_BATCH_BLOCKS_MAX);
    /// Steps allowed to reach the head: one batch and the idle step after it, with room.
    const STEPS_MAX: usize = 10;

    /// An embedded engine that counts imports and says what it is told about head moves.
    struct Counting {
        inner: EmbeddedEngine,
        head_moves_cheap: bool,
        new_payloads: AtomicUsize,
        head_imports: AtomicUsize,
    }

    impl ExecutionEngine for Counting {
        fn build_payload(&self, params: BuildParams) -> EngineFuture<'_, PayloadId> {
            self.inner.build_payload(params)
        }
        fn get_payload(&self, id: PayloadId) -> EngineFuture<'_, BuiltPayload> {
            self.inner.get_payload(id)
        }
        fn new_payload<'a>(&'a self, encoded: &'a [u8]) -> EngineFuture<'a, PayloadStatus> {
            self.new_payloads.fetch_add(1, Ordering::Relaxed);
            self.inner.new_payload(encoded)
        }
        fn set_head(
            &self,
            head: BlockHash,
            safe: BlockHash,
            finalized: BlockHash,
        ) -> EngineFuture<'_, ()> {
            self.inner.set_head(head, safe, finalized)
        }
        fn import_and_set_head<'a>(
            &'a self,
            encoded: &'a [u8],
            head: BlockHash,
        ) -> EngineFuture<'a, PayloadStatus> {
            self.head_imports.fetch_add(1, Ordering::Relaxed);
            self.inner.import_and_set_head(encoded, head)
        }
        fn head_moves_with_each_import(&self) -> bool {
            self.head_moves_cheap
        }
        fn head(&self) -> EngineFuture<'_, (Height, BlockHash)> {
            self.inner.head()
        }
        fn block_hash_at(&self, height: Height) -> EngineFuture<'_, Option<BlockHash>> {
            self.inner.block_hash_at(height)
        }
    }

    fn engine(dir: &std::path::Path) -> EmbeddedEngine {
        let mut c = EmbeddedConfig::new(dir);
        c.txs_per_block = 4;
        c.tx_bytes = 256;
        c.map_size_bytes = 64 << 20;
        EmbeddedEngine::open(c).expect("open engine")
    }

    /// A store whose applied chain is `BLOCKS` blocks built (and imported) by an engine of its
    /// own, as a leader's would be.
    async fn committed_chain(dir: &std::path::Path) -> Storage {
        let mut store = haseq_storage::open(
            &dir.join("store"),
            StoreOptions {
                map_size_bytes: 64 << 20,
                ..StoreOptions::default()
            },
        )
        .expect("open store");
        let leader = engine(&dir.join("leader-engine"));
        let mut parent = leader.block_hash_at(Height(0)).await.unwrap().unwrap();
        let mut applied_parent = BlockHash::ZERO;
        for h in 1..=BLOCKS {
            let id = leader
                .build_payload(BuildParams {
                    parent,
                    parent_height: Height(h - 1),
                    timestamp: h,
                    fee_recipient: [0; 20],
                })
                .await
                .expect("build");
            let built = leader.get_payload(id).await.expect("get payload");
            leader
                .import_and_set_head(&built.encoded, built.block_hash)
                .await
                .expect("leader import");
            let block = Block {
                height: Height(h),
                parent_hash: applied_parent,
                hash: built.block_hash,
                timestamp: built.timestamp,
                proposer: NodeId::from(1u64),
                payload: built.encoded.into(),
            };
            let entry = EntryOf::<TC>::new_normal(
                LogId::new(CommittedLeaderId::new(1), h),
                Command::Block(block),
            );
            store
                .sm
                .apply(stream::iter([Ok((entry, None))]))
                .await
                .expect("apply");
            parent = built.block_hash;
            applied_parent = built.block_hash;
        }
        store
    }

    /// Replays the store's chain into a fresh engine; returns (new_payload, import_and_set_head)
    /// call counts and the batches it took (one, unless a loaded machine ran a batch past
    /// REPLAY_BATCH_TIME_MAX and it was cut).
    async fn replay(head_moves_cheap: bool) -> (usize, usize, usize) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = committed_chain(dir.path()).await;
        let follower = Counting {
            inner: engine(&dir.path().join("follower-engine")),
            head_moves_cheap,
            new_payloads: AtomicUsize::new(0),
            head_imports: AtomicUsize::new(0),
        };
        let (status, _rx) = watch::channel(ExecStatus::unknown());
        let mut steps = 0;
        while let Step::Progress = step(&follower, &store.reader, &status)
            .await
            .expect("replay step")
        {
            steps += 1;
            assert!(steps < STEPS_MAX, "replay did not reach the head");
        }
        let applied = store.reader.head().expect("applied head");
        assert_eq!(applied.height, Height(BLOCKS));
        assert_eq!(
            follower.head().await.expect("engine head"),
            (applied.height, applied.hash),
            "the engine ends at the applied head"
        );
        assert!(status.borrow().at(applied.height, applied.hash));
        (
            follower.new_payloads.load(Ordering::Relaxed),
            follower.head_imports.load(Ordering::Relaxed),
            steps,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_engine_whose_head_moves_cheaply_gets_every_block_as_its_head() {
        let (new_payloads, head_imports, _) = replay(true).await;
        assert_eq!(new_payloads, 0, "no bare import (a durable write each)");
        assert_eq!(head_imports, BLOCKS as usize);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn any_other_engine_gets_the_batch_imported_and_its_head_moved_once() {
        let (new_payloads, head_imports, batches) = replay(false).await;
        assert!(batches >= 1);
        assert_eq!(head_imports, batches, "the head moves once per batch");
        assert_eq!(new_payloads, BLOCKS as usize - batches);
    }
}
