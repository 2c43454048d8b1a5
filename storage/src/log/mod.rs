//! The Raft log and Raft's own durable state (vote, committed, last purged): [`LogStore`].
//!
//! Every log change (append, truncate, purge) is first made durable in the journal (`wal`: one
//! record, one `fdatasync`), then carried into LMDB by a data-only job of the writer thread. An
//! `append` queues its record and returns: its entries are readable at once by every reader
//! handle (from the in-memory tail until their LMDB transaction has committed), and the
//! `IOFlushed` callback fires from the journal thread once the record is durable. The leader
//! thus replicates an entry while its own flush is under way, instead of after it. The vote is
//! not journalled: it is rare, and a full LMDB commit of its own.
//!
//! One copy of a block: an entry that proposes a block is not carried into the `log` database
//! with the others. It stays in the tail until the state machine applies it, and the apply's
//! transaction, which puts the block into the block store, stores the entry as a reference to
//! that block (`log_blocks`, a [`BlockEntryRow`](crate::records::BlockEntryRow)); a read rebuilds the entry from the block
//! store in the same read transaction. At 100 KiB blocks this halves what the storage writer
//! copies into the page cache. A rejected proposal (no block stored) is stored in full by its
//! apply. What LMDB holds together with the journal segments still on disk never has a hole
//! (a crash would leave one in the log): an apply that runs before its entry's append job
//! (openraft applies what was submitted, not only what is flushed) leaves the row to that job
//! (the ledger, `tail`), and a checkpoint keeps its segment once the log has stopped. A journal checkpoint stores in full the
//! block entries still waiting whose append job has run, since the segment it frees may hold
//! their only durable copy (see `wal`). A journal replay at open stores its entries in full;
//! those applied again afterwards become references, the others stay full until purged.
//!
//! Files, bottom up: `rows` (how an entry, a reference row and Raft's pointers are stored in
//! LMDB, and how a journalled change is applied there), `tail` ([`LogShared`]: what the log
//! holds outside LMDB, shared with the journal's checkpoints and the state machine), `store`
//! ([`LogStore`] and openraft's log traits).

mod rows;
mod store;
mod tail;

pub(crate) use rows::last_stored_index;
pub use store::{LOG_READ_ENTRIES_MAX, LogStore};
pub(crate) use tail::LogShared;
