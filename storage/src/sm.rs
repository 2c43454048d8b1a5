//! The state machine: the apply rule, the head, the membership, and [`StateMachineStore`].
//!
//! State lives in LMDB, not in memory: the `sm` database holds the applied log id, the
//! membership and the head; accepted block bodies go to the block store in the same write
//! transaction as the head that makes them canonical, so a crash can never leave a head
//! without its block or a block that is not on the applied chain.

use std::io;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use haseq_messages::{ApplyOutcome, Block, BlockHash, Command, Height, RejectReason, TC};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{
    EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf,
};
use openraft::{EntryPayload, OptionalSend, StoredMembership};
use tokio::sync::watch;

use crate::applied::{AppliedState, read_applied, read_head, read_membership};
use crate::applied_tail::{AppliedTail, TailState};
use crate::blocks::{self, put_block, put_checkpoint};
use crate::env::Dbs;
use crate::error::StorageError;
use crate::lmdb::{LmdbEnv, encode_rec};
use crate::log::LogShared;
use crate::metrics::{APPLIED_HEIGHT, PROPOSALS_REJECTED_TOTAL, SNAPSHOT_INSTALLS_TOTAL};
use crate::records::{Head, SnapshotFile, sm_key};
use crate::snapshot::{self, SnapshotBuilder, SnapshotDir};
use crate::writer::{Durability, Writer};

/// Most entries applied in one write transaction. Bounds the transaction's size and how long
/// the first entry's client waits for the batch's commit.
pub const APPLY_BATCH_ENTRIES_MAX: usize = 1024;

/// The apply rule: a block is accepted only if it is the next height on the applied head and
/// builds on the head's hash.
///
/// Compares with the applied head only, never with any engine's view: every node applies the
/// same entries to the same head, so every node decides alike.
///
/// # Errors
/// The reason for refusal, with expected vs got.
pub fn check_block(head: &Head, block: &Block) -> Result<(), RejectReason> {
    if block.height != head.height.next() {
        return Err(RejectReason::NotNextHeight {
            head: head.height,
            got: block.height,
        });
    }
    if block.parent_hash != head.hash {
        return Err(RejectReason::NotOnHead {
            expected: head.hash,
            got: block.parent_hash,
        });
    }
    Ok(())
}

/// The Raft state machine store: applies committed entries, builds and installs snapshots.
pub struct StateMachineStore {
    writer: Arc<Writer>,
    env: LmdbEnv,
    dbs: Dbs,
    snapshots: SnapshotDir,
    applied_tx: Arc<watch::Sender<AppliedState>>,
    /// Applies whose transaction has not committed yet (see `applied_tail`).
    tail: AppliedTail,
    /// The log's tail, where block entries wait for their apply to store them (see `log`).
    log: LogShared,
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("path", &self.env.path())
            .finish()
    }
}

impl StateMachineStore {
    pub(crate) fn new(
        writer: Arc<Writer>,
        env: LmdbEnv,
        dbs: Dbs,
        snapshots: SnapshotDir,
        applied_tx: Arc<watch::Sender<AppliedState>>,
        tail: AppliedTail,
        log: LogShared,
    ) -> Self {
        StateMachineStore {
            writer,
            env,
            dbs,
            snapshots,
            applied_tx,
            tail,
            log,
        }
    }

    /// Returns once every apply queued so far has committed (writes run in queue order).
    async fn drain(&self) -> Result<(), StorageError> {
        self.writer
            .write("sm: wait for queued applies", |_, _| Ok(()))
            .await?;
        match self.tail.failed() {
            Some(detail) => Err(StorageError::ApplyFailed { detail }),
            None => Ok(()),
        }
    }

    /// The state after the newest apply: the tail's if one is still queued, else the disk's.
    fn current(&self) -> Result<TailState, StorageError> {
        if let Some(s) = self.tail.state() {
            return Ok(s);
        }
        let rtxn = self
            .env
            .read_txn()
            .map_err(StorageError::lmdb("sm: begin read"))?;
        Ok(TailState {
            applied: read_applied(&rtxn, &self.dbs)?,
            head: read_head(&rtxn, &self.dbs)?,
            membership: read_membership(&rtxn, &self.dbs)?,
        })
    }

    /// Watch the applied state: a new value is published after each apply batch and snapshot
    /// install has committed (never before).
    pub fn subscribe(&self) -> watch::Receiver<AppliedState> {
        self.applied_tx.subscribe()
    }

    /// The applied state (including applies whose transaction is still queued).
    ///
    /// # Errors
    /// On an LMDB failure or a corrupt record.
    pub fn applied(&self) -> Result<AppliedState, StorageError> {
        let s = self.current()?;
        Ok(AppliedState {
            applied: s.applied,
            head_height: s.head.height,
            head_hash: s.head.hash,
        })
    }

    /// The stored block at `height` (the same data [`crate::BlockReader::block`] reads).
    ///
    /// # Errors
    /// On an LMDB failure or a corrupt record.
    pub fn block(&self, height: Height) -> Result<Option<Block>, StorageError> {
        if let Some(b) = self.tail.block(height) {
            return Ok(Some(b));
        }
        let rtxn = self
            .env
            .read_txn()
            .map_err(StorageError::lmdb("sm: begin read"))?;
        blocks::get_block(&rtxn, &self.dbs, height)
    }

    fn publish(&self, state: AppliedState) {
        metrics::gauge!(APPLIED_HEIGHT).set(state.head_height.0 as f64);
        self.applied_tx.send_replace(state);
    }

    /// Applies `entries` as one write transaction; returns each entry's outcome once the
    /// transaction is queued (its effects visible to every reader at once through the tail,
    /// see `applied_tail`). The transaction commits in the background with its data pages
    /// flushed; if it fails, the next apply fails and openraft stops the node.
    async fn apply_batch(
        &self,
        entries: Vec<EntryOf<TC>>,
    ) -> Result<Vec<ApplyOutcome>, StorageError> {
        if let Some(detail) = self.tail.failed() {
            return Err(StorageError::ApplyFailed { detail });
        }
        let before = self.current()?;
        let mut applied = before.applied;
        let mut head = before.head;
        let mut membership = before.membership.clone();
        let mut membership_changed = false;
        let mut accepted: Vec<(LogIdOf<TC>, Block)> = Vec::new();
        // Rejected proposals' entries, stored in full (no block to refer to).
        let mut rejected_rows: Vec<(LogIdOf<TC>, Vec<u8>)> = Vec::new();
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut rejected = 0u64;
        for entry in entries {
            let id = entry.log_id();
            if let Some(a) = &applied
                && id <= *a
            {
                return Err(StorageError::ApplyOutOfOrder {
                    applied: a.to_string(),
                    got: id.to_string(),
                });
            }
            let outcome = match entry.payload {
                EntryPayload::Blank => ApplyOutcome::None,
                EntryPayload::Normal(Command::Block(block)) => match check_block(&head, &block) {
                    Ok(()) => {
                        head = Head {
                            height: block.height,
                            hash: block.hash,
                        };
                        let height = block.height;
                        accepted.push((id, block));
                        ApplyOutcome::Accepted { height }
                    }
                    Err(reason) => {
                        tracing::info!(log_id = %id, height = %block.height, ?reason, "proposal rejected");
                        rejected += 1;
                        let entry = EntryOf::<TC>::new_normal(id, Command::Block(block));
                        rejected_rows.push((id, encode_rec("log entry", &entry)?));
                        ApplyOutcome::Rejected(reason)
                    }
                },
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(id), m);
                    membership_changed = true;
                    ApplyOutcome::None
                }
            };
            outcomes.push(outcome);
            applied = Some(id);
        }
        let state = AppliedState {
            applied,
            head_height: head.height,
            head_hash: head.hash,
        };
        let applied_bytes = encode_rec("applied log id", &applied)?;
        let head_bytes = (head != before.head)
            .then(|| encode_rec("head", &head))
            .transpose()?;
        let membership_bytes = membership_changed
            .then(|| encode_rec("membership", &membership))
            .transpose()?;
        let written: Vec<(Height, BlockHash)> =
            accepted.iter().map(|(_, b)| (b.height, b.hash)).collect();
        self.tail.push(
            accepted.iter().map(|(_, b)| b),
            TailState {
                applied,
                head,
                membership,
            },
        );
        let first = before.applied;
        let log_rows = self.log.clone();
        let job = move |wtxn: &mut heed::RwTxn<'_>, dbs: &Dbs| {
            // Applies commit in the order they were queued, each on the one before.
            let on_disk = read_applied(wtxn, dbs)?;
            if on_disk != first {
                return Err(StorageError::ApplyOutOfOrder {
                    applied: format!("{on_disk:?}"),
                    got: format!("a batch applied on {first:?}"),
                });
            }
            for (_, b) in &accepted {
                put_block(wtxn, dbs, b)?;
            }
            let put = |wtxn: &mut heed::RwTxn<'_>, key: &'static str, bytes: &[u8]| {
                dbs.sm
                    .put(wtxn, key, bytes)
                    .map_err(StorageError::lmdb("sm: put"))
            };
            put(wtxn, sm_key::APPLIED, &applied_bytes)?;
            if let Some(b) = &head_bytes {
                put(wtxn, sm_key::HEAD, b)?;
            }
            if let Some(b) = &membership_bytes {
                put(wtxn, sm_key::MEMBERSHIP, b)?;
            }
            // Each accepted block's log entry becomes a reference to it (one copy of the
            // payload); a rejected proposal's entry is stored in full (see `log`).
            log_rows.applied(wtxn, dbs, &accepted, &rejected_rows)
        };
        let tail = self.tail.clone();
        let log = self.log.clone();
        let done = move |res: Result<Vec<LogIdOf<TC>>, StorageError>| {
            let res = res.map(|stored| log.forget(&stored));
            tail.done(&written, res)
        };
        // Data-only durability: a power loss may undo the last applies (never corrupt them);
        // openraft re-applies them from the durable log. See `writer`.
        self.writer
            .submit("sm: apply", Durability::DataOnly, job, done)
            .await?;
        if rejected > 0 {
            metrics::counter!(PROPOSALS_REJECTED_TOTAL).increment(rejected);
        }
        self.publish(state);
        Ok(outcomes)
    }

    /// Replaces the state machine with a snapshot's content (one write transaction), then keeps
    /// the snapshot as the current one.
    async fn do_install(
        &self,
        meta: SnapshotMetaOf<TC>,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let (file, data) = snapshot::spawn_blocking("decode snapshot", move || {
            let file = snapshot::decode_and_check(&data, &meta)?;
            Ok((file, data))
        })
        .await?;
        let SnapshotFile {
            applied,
            membership,
            head,
            blocks,
            checkpoints,
            ..
        } = file;
        let state = AppliedState {
            applied,
            head_height: head.height,
            head_hash: head.hash,
        };
        self.writer
            .write("sm: install snapshot", move |wtxn, dbs| {
                let current = read_applied(wtxn, dbs)?;
                // Applied state only grows (S2); openraft installs only newer snapshots, so an
                // older one here is a bug upstream: refuse it rather than lose applied blocks.
                if current > applied {
                    return Err(StorageError::SnapshotBehind {
                        applied: format!("{current:?}"),
                        got: format!("{applied:?}"),
                    });
                }
                let put = |wtxn: &mut heed::RwTxn<'_>, key: &'static str, bytes: Vec<u8>| {
                    dbs.sm
                        .put(wtxn, key, &bytes)
                        .map_err(StorageError::lmdb("sm: put"))
                };
                put(
                    wtxn,
                    sm_key::APPLIED,
                    encode_rec("applied log id", &applied)?,
                )?;
                put(
                    wtxn,
                    sm_key::MEMBERSHIP,
                    encode_rec("membership", &membership)?,
                )?;
                put(wtxn, sm_key::HEAD, encode_rec("head", &head)?)?;
                for &(height, hash) in &checkpoints {
                    put_checkpoint(wtxn, dbs, height, hash)?;
                }
                for b in &blocks {
                    put_block(wtxn, dbs, b)?;
                }
                Ok(())
            })
            .await?;
        // The state machine is the truth and is durable now; the file only serves this state
        // to others. Crashing before the file lands leaves an older current snapshot, which
        // openraft replaces by building a new one when it needs to.
        let dir = self.snapshots.clone();
        let name_id = state.applied;
        snapshot::spawn_blocking("write installed snapshot", move || {
            dir.write(&name_id, &data)
        })
        .await?;
        metrics::counter!(SNAPSHOT_INSTALLS_TOTAL).increment(1);
        tracing::info!(applied = ?state.applied, head = %state.head_height, "snapshot installed");
        self.publish(state);
        Ok(())
    }
}

impl RaftStateMachine<TC> for StateMachineStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TC>>, StoredMembershipOf<TC>), io::Error> {
        let s = self.current()?;
        Ok((s.applied, s.membership))
    }

    /// Applies the stream in batches of at most [`APPLY_BATCH_ENTRIES_MAX`] entries, one write
    /// transaction each; every responder gets its outcome once its batch is applied and its
    /// transaction queued (see `apply_batch`).
    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TC>, io::Error>> + Unpin + OptionalSend,
    {
        loop {
            let mut batch = Vec::new();
            let mut responders = Vec::new();
            let mut stream_err = None;
            let mut exhausted = false;
            while batch.len() < APPLY_BATCH_ENTRIES_MAX {
                match entries.next().await {
                    Some(Ok((entry, responder))) => {
                        batch.push(entry);
                        responders.push(responder);
                    }
                    Some(Err(e)) => {
                        stream_err = Some(e);
                        break;
                    }
                    None => {
                        exhausted = true;
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                let outcomes = self.apply_batch(batch).await?;
                for (responder, outcome) in responders.into_iter().zip(outcomes) {
                    if let Some(r) = responder {
                        r.send(outcome);
                    }
                }
            }
            // Entries before a read error are applied (their transaction queued); the error stops
            // this call, and openraft treats it as fatal.
            if let Some(e) = stream_err {
                return Err(e);
            }
            if exhausted {
                return Ok(());
            }
        }
    }

    /// The builder reads the committed state: first every queued apply commits (a barrier on
    /// the writer), so the snapshot covers everything applied before it was asked for.
    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        if let Err(e) = self.drain().await {
            // The builder then reads what has committed; a failed apply stops the node anyway.
            tracing::warn!(error = %e, "waiting for queued applies before a snapshot");
        }
        SnapshotBuilder::new(self.env.clone(), self.dbs, self.snapshots.clone())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TC>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        Ok(self.do_install(meta.clone(), snapshot).await?)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TC, Vec<u8>>>, io::Error> {
        let dir = self.snapshots.clone();
        Ok(snapshot::spawn_blocking("read current snapshot", move || dir.current()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(height: u64, parent: u8, hash: u8) -> Block {
        Block {
            height: Height(height),
            parent_hash: BlockHash([parent; 32]),
            hash: BlockHash([hash; 32]),
            timestamp: 0,
            proposer: "n1".into(),
            payload: Default::default(),
        }
    }

    #[test]
    fn genesis_accepts_height_one_on_zero_hash() {
        assert_eq!(check_block(&Head::GENESIS, &block(1, 0, 1)), Ok(()));
    }

    #[test]
    fn stale_height_is_rejected_before_parent() {
        let head = Head {
            height: Height(5),
            hash: BlockHash([5; 32]),
        };
        assert_eq!(
            check_block(&head, &block(5, 4, 9)),
            Err(RejectReason::NotNextHeight {
                head: Height(5),
                got: Height(5)
            })
        );
        assert_eq!(
            check_block(&head, &block(6, 7, 9)),
            Err(RejectReason::NotOnHead {
                expected: BlockHash([5; 32]),
                got: BlockHash([7; 32])
            })
        );
        assert_eq!(check_block(&head, &block(6, 5, 6)), Ok(()));
    }
}
