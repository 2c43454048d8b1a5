//! A minimal in-memory Raft log and state machine for `TC`, enough to run real openraft
//! nodes over the transport. Not durable and not checked: the storage crate owns that.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use haseq_messages::{ApplyOutcome, TC};
use openraft::entry::RaftEntry;
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder,
    RaftStateMachine, Snapshot, SnapshotMeta,
};
use openraft::type_config::alias::{
    EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf,
};

#[derive(Default)]
struct Log {
    vote: Option<VoteOf<TC>>,
    committed: Option<LogIdOf<TC>>,
    purged: Option<LogIdOf<TC>>,
    entries: BTreeMap<u64, EntryOf<TC>>,
}

/// The log store; its reader is a clone.
#[derive(Clone, Default)]
pub struct MemLog(Arc<Mutex<Log>>);

impl RaftLogReader<TC> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TC>>, io::Error> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TC>>, io::Error> {
        Ok(self.0.lock().unwrap().vote.clone())
    }
}

impl RaftLogStorage<TC> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> Result<LogState<TC>, io::Error> {
        let log = self.0.lock().unwrap();
        let last = log
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id())
            .or(log.purged);
        Ok(LogState {
            last_purged_log_id: log.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> MemLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TC>) -> Result<(), io::Error> {
        self.0.lock().unwrap().vote = Some(vote.clone());
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TC>>) -> Result<(), io::Error> {
        self.0.lock().unwrap().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TC>>, io::Error> {
        Ok(self.0.lock().unwrap().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TC>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TC>> + Send,
        I::IntoIter: Send,
    {
        {
            let mut log = self.0.lock().unwrap();
            for e in entries {
                log.entries.insert(e.index(), e);
            }
        }
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TC>>) -> Result<(), io::Error> {
        let keep_to = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        self.0.lock().unwrap().entries.retain(|i, _| *i < keep_to);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TC>) -> Result<(), io::Error> {
        let mut log = self.0.lock().unwrap();
        log.entries.retain(|i, _| *i > log_id.index());
        log.purged = Some(log_id);
        Ok(())
    }
}

#[derive(Default)]
struct Sm {
    last_applied: Option<LogIdOf<TC>>,
    membership: StoredMembershipOf<TC>,
    applied_entries: u64,
    snapshot: Option<(SnapshotMetaOf<TC>, Vec<u8>)>,
}

/// The state machine: counts applied entries; a snapshot is that count, as bytes.
#[derive(Clone, Default)]
pub struct MemSm(Arc<Mutex<Sm>>);

impl MemSm {
    /// Entries applied, counting those a snapshot brought in.
    pub fn applied_entries(&self) -> u64 {
        self.0.lock().unwrap().applied_entries
    }
}

impl RaftSnapshotBuilder<TC> for MemSm {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TC, Vec<u8>>, io::Error> {
        let mut sm = self.0.lock().unwrap();
        let meta = SnapshotMeta {
            last_log_id: sm.last_applied,
            last_membership: sm.membership.clone(),
        };
        let data = sm.applied_entries.to_be_bytes().to_vec();
        sm.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TC> for MemSm {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = MemSm;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TC>>, StoredMembershipOf<TC>), io::Error> {
        let sm = self.0.lock().unwrap();
        Ok((sm.last_applied, sm.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TC>, io::Error>> + Unpin + Send,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            {
                let mut sm = self.0.lock().unwrap();
                let log_id = entry.log_id();
                sm.last_applied = Some(log_id);
                if let Some(m) = entry.get_membership() {
                    sm.membership = StoredMembershipOf::<TC>::new(Some(log_id), m);
                }
                sm.applied_entries += 1;
            }
            if let Some(r) = responder {
                r.send(ApplyOutcome::None);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> MemSm {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TC>,
        data: Vec<u8>,
    ) -> Result<(), io::Error> {
        let count: [u8; 8] = data.as_slice().try_into().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot of {} bytes", data.len()),
            )
        })?;
        let mut sm = self.0.lock().unwrap();
        sm.applied_entries = u64::from_be_bytes(count);
        sm.last_applied = meta.last_log_id;
        sm.membership = meta.last_membership.clone();
        sm.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TC, Vec<u8>>>, io::Error> {
        let sm = self.0.lock().unwrap();
        Ok(sm
            .snapshot
            .clone()
            .map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}
