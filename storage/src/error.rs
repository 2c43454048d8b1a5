//! The storage error type. Every variant names what was being done and on what (path, key,
//! index, expected vs got), so an operator can act on the message alone.

use std::io;
use std::path::PathBuf;

use haseq_messages::{CodecError, Height};

/// Everything that can go wrong on disk.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A store option is out of range.
    #[error("storage option {name} = {value}: {reason}")]
    InvalidOption {
        /// The option's name in [`crate::StoreOptions`].
        name: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A file system operation on a path failed (create the directory, list snapshots...).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The LMDB environment could not be opened.
    #[error("open LMDB environment at {path}: {source}")]
    OpenEnv {
        /// The environment directory.
        path: PathBuf,
        /// heed's error.
        #[source]
        source: heed::Error,
    },

    /// An LMDB operation failed (begin, get, put, delete, commit).
    #[error("LMDB {op}: {source}")]
    Lmdb {
        /// What was being done, e.g. `"append: put log entry"`.
        op: &'static str,
        /// heed's error.
        #[source]
        source: heed::Error,
    },

    /// A stored value could not be decoded: the store is corrupt or from another version.
    #[error("decode {what} at key {key}: {source}")]
    Decode {
        /// Which record.
        what: &'static str,
        /// Its key, printed.
        key: String,
        /// The codec's error.
        #[source]
        source: CodecError,
    },

    /// A value could not be encoded.
    #[error("encode {what}: {source}")]
    Encode {
        /// Which record.
        what: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },

    /// An append would leave a hole in the log, or the batch itself is not consecutive.
    #[error("log append not contiguous: expected index {expected}, got {got}")]
    LogNotContiguous {
        /// The index the next entry must have.
        expected: u64,
        /// The index it has.
        got: u64,
    },

    /// A log entry is stored under a key that is not its own index.
    #[error("log entry under key {key} has index {got}")]
    LogKeyMismatch {
        /// The LMDB key (the index the entry should have).
        key: u64,
        /// The index inside the entry.
        got: u64,
    },

    /// A log entry stored as a reference to an applied block finds another block, or none,
    /// at that height in the block store.
    #[error("log entry {index} refers to block {height} {hash}, which the block store {found}")]
    LogBlockMissing {
        /// The entry's index.
        index: u64,
        /// The block's height.
        height: u64,
        /// The block's hash, printed.
        hash: String,
        /// What the block store holds instead, as "does not hold" or "holds `<hash>` there".
        found: String,
    },

    /// A read found a hole inside the log.
    #[error("log hole: expected index {expected}, found {got}")]
    LogHole {
        /// The index that should come next.
        expected: u64,
        /// The index found instead.
        got: u64,
    },

    /// An entry was handed to the state machine at or below what it has already applied.
    #[error("apply out of order: state machine applied {applied}, got entry {got}")]
    ApplyOutOfOrder {
        /// The applied log id, printed.
        applied: String,
        /// The entry's log id, printed.
        got: String,
    },

    /// A snapshot's metadata disagrees with the data it came with.
    #[error("snapshot meta mismatch: {field}: meta says {expected}, data holds {got}")]
    SnapshotMetaMismatch {
        /// Which field differs.
        field: &'static str,
        /// The value in the metadata.
        expected: String,
        /// The value in the data.
        got: String,
    },

    /// A snapshot's blocks do not form the chain ending at its head.
    #[error("snapshot block at height {height}: {reason}")]
    SnapshotBlocks {
        /// The offending block's height.
        height: Height,
        /// What is wrong with it.
        reason: String,
    },

    /// A snapshot would move the applied state backwards.
    #[error("snapshot behind the state machine: applied {applied}, snapshot at {got}")]
    SnapshotBehind {
        /// The state machine's applied log id, printed.
        applied: String,
        /// The snapshot's last log id, printed.
        got: String,
    },

    /// The snapshot file format version is not one this build reads.
    #[error("snapshot from {origin}: format version {got}, expected {expected}")]
    SnapshotVersion {
        /// Where the snapshot came from (a file path, or the leader).
        origin: String,
        /// The version this build writes.
        expected: u32,
        /// The version in the file.
        got: u32,
    },

    /// A historical block offered for backfill does not belong to the applied chain.
    #[error("backfill block at height {height}: {reason}")]
    Backfill {
        /// The offending block's height.
        height: Height,
        /// Why it is refused.
        reason: String,
    },

    /// A checkpoint names another hash than the one recorded at its height: the committed
    /// chain never changes, so one of them is not of this chain (nothing is written).
    #[error("checkpoint at height {height}: recorded {recorded}, offered {offered}")]
    Checkpoint {
        /// The checkpoint height.
        height: Height,
        /// The hash this store holds.
        recorded: haseq_messages::BlockHash,
        /// The hash offered (a snapshot's, a block's).
        offered: haseq_messages::BlockHash,
    },

    /// The write transaction a job ran in failed to commit (or to begin): nothing of it was
    /// written.
    #[error("LMDB commit ({op}): {detail}")]
    Commit {
        /// The job.
        op: &'static str,
        /// The commit's error.
        detail: String,
    },

    /// An earlier apply's transaction failed to commit after it was applied: the state
    /// machine cannot go on.
    #[error("an earlier state machine apply failed to commit: {detail}")]
    ApplyFailed {
        /// The commit's error.
        detail: String,
    },

    /// The log journal's records could not be put into LMDB on open (nothing is lost: the
    /// journal stays, and is replayed on the next open).
    #[error("replaying the log journal in {path} into LMDB: {source} (the journal is kept)")]
    JournalReplay {
        /// The journal's directory.
        path: PathBuf,
        /// What failed.
        source: Box<StorageError>,
    },

    /// The writer thread is gone (the store was closed, or a write job panicked).
    #[error("storage writer thread stopped")]
    WriterStopped,

    /// A blocking task (snapshot file I/O) could not be run or panicked.
    #[error("blocking task {what}: {reason}")]
    Blocking {
        /// Which task.
        what: &'static str,
        /// The join error.
        reason: String,
    },

    /// The environment is still open in this process (another `Storage` on the same dir).
    #[error("LMDB environment at {path} is still open in this process")]
    AlreadyOpen {
        /// The environment directory.
        path: PathBuf,
    },
}

impl StorageError {
    /// Wraps a heed error with what was being done.
    pub(crate) fn lmdb(op: &'static str) -> impl FnOnce(heed::Error) -> StorageError {
        move |source| StorageError::Lmdb { op, source }
    }

    /// Wraps an I/O error with what was being done and on which path.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> StorageError {
        let path = path.into();
        move |source| StorageError::Io { op, path, source }
    }
}

/// openraft's storage traits speak `io::Error`; the message keeps all our context, and the
/// original error stays reachable as the source.
impl From<StorageError> for io::Error {
    fn from(e: StorageError) -> io::Error {
        let kind = match &e {
            StorageError::Io { source, .. } => source.kind(),
            StorageError::Decode { .. } | StorageError::SnapshotVersion { .. } => {
                io::ErrorKind::InvalidData
            }
            StorageError::LogNotContiguous { .. }
            | StorageError::ApplyOutOfOrder { .. }
            | StorageError::SnapshotMetaMismatch { .. }
            | StorageError::SnapshotBlocks { .. }
            | StorageError::SnapshotBehind { .. }
            | StorageError::Backfill { .. }
            | StorageError::Checkpoint { .. }
            | StorageError::InvalidOption { .. } => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
