//! The log journal: a write-ahead file that makes each Raft log change durable with one
//! `fdatasync`, ahead of the LMDB transaction that carries the same change.
//!
//! Why: a durable LMDB commit costs two device flushes (data pages, then the meta page through
//! an `O_DSYNC` descriptor), and on the commit path of every block each member pays it. The
//! journal pays one: a log change (append, truncate, purge) is encoded as a checksummed record,
//! written at the end of the current segment and flushed; only then is it acknowledged. The
//! same change then goes to LMDB as a data-only job that shares its commit with its neighbours
//! (see `writer`); until that commit the entries are read from the log's in-memory tail.
//!
//! Recovery: on open, every record of every segment is applied again, in order, to the LMDB
//! environment in one full commit. Each record sets keys to values (put these entries, delete
//! those above or below an index, raise a pointer), so applying a suffix of the history again
//! to any state LMDB may have reached gives the same result as applying it once. Then a fresh
//! segment starts and the old ones are deleted. A segment also ends (a *checkpoint*) once it
//! passes [`SEGMENT_BYTES`]: the next segment starts at once, and the old one is recycled
//! (below) once a full LMDB commit, queued behind the LMDB jobs of all its records, is done
//! (appends never wait for it; until then recovery reads both).
//!
//! Layout under the node's directory: `wal/<seq>.wal`, each segment [`MAGIC`] followed by
//! records `len: u32 LE | crc32c(seq: u64 LE, body): u32 LE | body` (body: postcard [`Op`];
//! the checksum also covers the segment's number). A record that is cut short or fails its
//! checksum ends the segment: a crash mid-write leaves at most the last record torn, and that
//! record was never acknowledged. Segments written before the checksum covered the number
//! ([`MAGIC_V1`]: `crc32c(body)`) are still read.
//!
//! Recycling: a checkpointed segment is not deleted but renamed to `wal/spare`, and the next
//! segment is that file renamed again. Writing over blocks a file already has makes each
//! flush a flush of data only; appending into a fresh (sparse) file also has the file system
//! allocate blocks and journal that allocation at every flush. Measured (`haseqd bench --nodes
//! 3 --block-bytes 100KiB --blocks 6000`, alternating with the code before, 3 pairs): 334 vs
//! 306 blocks/s, commit p50 1.64 vs 1.81 ms, p99 11.7 vs 13.7 ms, CPU 5.24 vs 5.52 ms per
//! block (64 MiB segments then: a 2,000-block run barely reached its second recycled segment
//! and showed no difference; see [`SEGMENT_BYTES`] for why they are 8 MiB now). The old
//! records left in a recycled file cannot pass for new ones: their checksums cover the old
//! segment's number.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use haseq_messages::CodecError;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::StorageError;
use crate::log::LogShared;
use crate::writer::{Durability, Writer};

/// The journal's subdirectory under the node's directory.
const WAL_SUBDIR: &str = "wal";
/// A segment file's first bytes: records whose checksums cover the segment's number.
const MAGIC: &[u8; 8] = b"HASEQWL2";
/// A segment file's first bytes before that: records whose checksums cover the body only.
/// Read, never written, and never recycled (its records would pass for any segment's).
const MAGIC_V1: &[u8; 8] = b"HASEQWL1";
/// The recycled segment waiting to become the next one (not a `.wal`: never read as one).
const SPARE: &str = "spare";
/// Bytes before a record's body: its length and checksum.
const RECORD_HEADER_BYTES: usize = 8;
/// A segment is checkpointed and replaced once it holds this much. Small, so that recycled
/// segments (see the module doc) take over soon after an open: only the first two segments
/// after it are fresh sparse files, whose flushes are slower (a 100 KiB write and `fdatasync`:
/// 0.40-0.47 ms at the median over a file's existing blocks, 0.66-0.69 ms into a sparse one).
/// Measured with `haseqd bench --nodes 3 --block-bytes 100KiB --blocks 2000`, alternating
/// runs, 4 pairs each, means: 8 MiB 142.0 vs 138.6 blocks/s at 64 MiB, commit p50 3.45 vs
/// 3.63 ms; 16 MiB 136.9 vs 125.5 at 64 MiB, p50 3.52 vs 4.11 ms; 8 MiB 139.6 vs 135.1 at
/// 16 MiB; 10 KiB blocks, 8 MiB 364 vs 346 at 64 MiB (2 pairs). A checkpoint costs one full
/// LMDB commit: at 100 KiB blocks, one per 80 blocks.
pub(crate) const SEGMENT_BYTES: u64 = 8 << 20;
/// The checksum: CRC-32C (Castagnoli), as etcd's WAL and most storage formats use. Slice-by-16
/// tables (16 KiB): the crate's default bytewise table made the checksum of a 100 KiB block a
/// measurable part of its commit (100 KiB blocks: p50 2.5 ms -> 2.0 ms, `haseqd bench`).
const CRC: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// One Raft log change, as journalled and as applied to LMDB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Op {
    /// Put these encoded entries at their indexes; `committed`, if any, is the encoded
    /// committed pointer openraft had saved when they were appended (it only ever grows).
    Append {
        entries: Vec<(u64, ByteBuf)>,
        committed: Option<ByteBuf>,
    },
    /// Delete every entry after `after` (`None`: every entry).
    Truncate { after: Option<u64> },
    /// Delete every entry up to `upto` and raise the purge pointer to `log_id` (encoded).
    Purge { upto: u64, log_id: ByteBuf },
}

/// Bytes stored in one bulk copy (see the workspace's note on `serde_bytes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct ByteBuf(#[serde(with = "serde_bytes")] pub(crate) Vec<u8>);

/// The checksum of a record of segment `seq` (`None`: a [`MAGIC_V1`] segment's, body only).
fn checksum(seq: Option<u64>, body: &[u8]) -> u32 {
    let mut digest = CRC.digest();
    if let Some(seq) = seq {
        digest.update(&seq.to_le_bytes());
    }
    digest.update(body);
    digest.finalize()
}

/// Appends `op` as one record of segment `seq` to `out`.
pub(crate) fn encode_record(op: &Op, seq: u64, out: &mut Vec<u8>) -> Result<(), StorageError> {
    let body = haseq_messages::encode(op).map_err(|source| StorageError::Encode {
        what: "journal record",
        source,
    })?;
    let len = u32::try_from(body.len()).map_err(|_| StorageError::Encode {
        what: "journal record",
        source: CodecError(format!(
            "{} bytes is more than a record may hold",
            body.len()
        )),
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(Some(seq), &body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Decodes the records of one segment's bytes (after the magic), up to the first record that
/// is cut short or fails its checksum. Returns the ops and where the valid records end.
#[cfg(test)]
pub(crate) fn decode_records(
    bytes: &[u8],
    seq: Option<u64>,
    path: &Path,
) -> Result<(Vec<Op>, usize), StorageError> {
    let read = |at: u64, len: usize| Ok(bytes[at as usize..at as usize + len].to_vec());
    let (ops, end) = decode_from(read, bytes.len() as u64, 0, seq, path)?;
    Ok((ops, end as usize))
}

/// Decodes records of segment `seq` (`None`: a [`MAGIC_V1`] segment) from `read(offset, len)`
/// over `[start, total)`, up to the first record that is cut short or fails its checksum
/// (reading only the records, not what follows them). Returns the ops and where the valid
/// records end.
fn decode_from(
    mut read: impl FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
    total: u64,
    start: u64,
    seq: Option<u64>,
    path: &Path,
) -> Result<(Vec<Op>, u64), StorageError> {
    let io = |e| StorageError::io("read journal segment", path)(e);
    let mut ops = Vec::new();
    let mut at = start;
    while total - at >= RECORD_HEADER_BYTES as u64 {
        let header = read(at, RECORD_HEADER_BYTES).map_err(io)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let body_at = at + RECORD_HEADER_BYTES as u64;
        if len == 0 || total - body_at < u64::from(len) {
            break;
        }
        let body = read(body_at, len as usize).map_err(io)?;
        if checksum(seq, &body) != crc {
            break;
        }
        // A whole record with a good checksum that does not decode is not a torn write: it was
        // written by other software, or this one is broken. Refuse rather than skip it.
        let op: Op = haseq_messages::decode(&body).map_err(|source| StorageError::Decode {
            what: "journal record",
            key: format!("{} at byte {at}", path.display()),
            source,
        })?;
        ops.push(op);
        at = body_at + u64::from(len);
    }
    Ok((ops, at))
}

/// Reads segment `seq`'s file: its ops, and whether anything but zeros follows them (a torn
/// record, or in a recycled file the older segment's records). `None`: the segment was
/// created but its magic never reached the disk, or it is gone (deleted after its checkpoint).
fn read_segment(seq: u64, path: &Path) -> Result<Option<(Vec<Op>, bool)>, StorageError> {
    let io = |e| StorageError::io("read journal segment", path)(e);
    let file = match File::open(path) {
        Ok(f) => f,
        // Deleted since it was listed: a checkpointed segment going (see `checkpoint`).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let total = file.metadata().map_err(io)?.len();
    let read = |at: u64, len: usize| {
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, at).map(|()| buf)
    };
    let head = read(0, total.min(MAGIC.len() as u64) as usize).map_err(io)?;
    let seed = if head == MAGIC {
        Some(seq)
    } else if head == MAGIC_V1 {
        None
    } else {
        if MAGIC.starts_with(&head) && total < MAGIC.len() as u64 {
            return Ok(None);
        }
        return Err(StorageError::Decode {
            what: "journal segment",
            key: path.display().to_string(),
            source: CodecError("not a haseq journal (bad magic)".into()),
        });
    };
    let (ops, end) = decode_from(read, total, MAGIC.len() as u64, seed, path)?;
    let after = read(end, (total - end).min(RECORD_HEADER_BYTES as u64) as usize).map_err(io)?;
    Ok(Some((ops, after.iter().any(|b| *b != 0))))
}

/// The journal's segments in `dir`, oldest first.
fn segments(wal_dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let rd = match fs::read_dir(wal_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io("list journal directory", wal_dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(StorageError::io("list journal directory", wal_dir))?;
        let name = e.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, e.path()));
    }
    out.sort();
    Ok(out)
}

/// Whether `dir` holds a journal with at least one record (a store whose LMDB environment may
/// still be empty has state all the same).
pub(crate) fn has_records(dir: &Path) -> Result<bool, StorageError> {
    for (seq, path) in segments(&dir.join(WAL_SUBDIR))? {
        if read_segment(seq, &path)?.is_some_and(|(ops, _)| !ops.is_empty()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The open journal: the current segment, written at its end. Owned by the journal thread.
pub(crate) struct Journal {
    dir: PathBuf,
    file: File,
    seq: u64,
    /// Where the next record goes.
    pos: u64,
}

/// What an open found: the ops of every segment, oldest first, to apply again.
pub(crate) struct Recovered {
    pub(crate) ops: Vec<Op>,
    /// The segments read (deleted once their ops are durable in LMDB, by [`Journal::start`]).
    segments: Vec<(u64, PathBuf)>,
}

impl Recovered {
    /// Reads every segment under `dir` (the node's directory).
    pub(crate) fn read(dir: &Path) -> Result<Recovered, StorageError> {
        let wal_dir = dir.join(WAL_SUBDIR);
        fs::create_dir_all(&wal_dir).map_err(StorageError::io("create directory", &wal_dir))?;
        let segments = segments(&wal_dir)?;
        let mut ops = Vec::new();
        for (seq, path) in &segments {
            let Some((found, torn)) = read_segment(*seq, path)? else {
                continue;
            };
            if torn {
                tracing::info!(
                    path = %path.display(),
                    "journal segment: its records end before other bytes (a record torn by a crash mid-write, never acknowledged, or a recycled file's older records)"
                );
            }
            ops.extend(found);
        }
        Ok(Recovered { ops, segments })
    }
}

impl Journal {
    /// Starts a fresh segment after everything `recovered` held is durable in LMDB, and
    /// deletes the old segments.
    pub(crate) fn start(dir: &Path, recovered: Recovered) -> Result<Journal, StorageError> {
        let next = recovered.segments.last().map_or(1, |(seq, _)| seq + 1);
        // A spare left by an earlier run is dropped: its records' number is below `next` only
        // while the segment after it is still there, which nothing here can check.
        let spare = dir.join(WAL_SUBDIR).join(SPARE);
        match fs::remove_file(&spare) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("remove spare journal segment", &spare)(e)),
        }
        let journal = Journal::create(dir.join(WAL_SUBDIR), next)?;
        journal.remove_older()?;
        Ok(journal)
    }

    fn create(dir: PathBuf, seq: u64) -> Result<Journal, StorageError> {
        let path = dir.join(format!("{seq:020}.wal"));
        if !Journal::reuse_spare(&dir, &path)? {
            let file = OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(StorageError::io("create journal segment", &path))?;
            // The segment's full length up front (a sparse file, no disk used yet): an append
            // then never changes the file's size, so its flush has no size to journal in the
            // file system (measured: 1 KiB appends flushed in 0.13 ms instead of 0.18-0.21 ms).
            file.set_len(SEGMENT_BYTES)
                .map_err(StorageError::io("size journal segment", &path))?;
            file.write_all_at(MAGIC, 0)
                .and_then(|()| file.sync_all())
                .map_err(StorageError::io("write journal segment", &path))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StorageError::io("open journal segment", &path))?;
        // The new name (or file) must be durable before any record in it is acknowledged.
        crate::snapshot::sync_dir(&dir)?;
        Ok(Journal {
            dir,
            file,
            seq,
            pos: MAGIC.len() as u64,
        })
    }

    /// Makes the spare, if there is one, the segment at `path`; `false` when there is none.
    /// The spare starts with [`MAGIC`] already, and whatever records it holds fail their
    /// checksums under `path`'s number: until the first append it reads as an empty segment.
    fn reuse_spare(dir: &Path, path: &Path) -> Result<bool, StorageError> {
        let spare = dir.join(SPARE);
        if path.exists() {
            // Never the case (segment numbers only grow); a rename would replace that file.
            return Err(StorageError::io("create journal segment", path)(
                std::io::ErrorKind::AlreadyExists.into(),
            ));
        }
        match fs::rename(&spare, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io("reuse spare journal segment", &spare)(e)),
        }
    }

    fn remove_older(&self) -> Result<(), StorageError> {
        let mut removed = false;
        for (seq, path) in segments(&self.dir)? {
            if seq < self.seq {
                match fs::remove_file(&path) {
                    Ok(()) => removed = true,
                    // A checkpoint's deletion got there first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::io("remove journal segment", &path)(e)),
                }
            }
        }
        if removed {
            crate::snapshot::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Writes `records` (whole encoded records) at the end and flushes them: durable when this
    /// returns `Ok`. After an error the journal must not be written again (what reached the
    /// file is unknown).
    pub(crate) fn append(&mut self, records: &[u8]) -> Result<(), StorageError> {
        let path = || self.dir.join(format!("{:020}.wal", self.seq));
        self.file
            .write_all_at(records, self.pos)
            .map_err(|e| StorageError::io("write journal", path())(e))?;
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("flush journal", path())(e))?;
        self.pos += records.len() as u64;
        Ok(())
    }

    /// Whether the segment is full: time for a checkpoint.
    pub(crate) fn is_full(&self) -> bool {
        self.pos >= SEGMENT_BYTES
    }

    /// Starts the next segment; returns the number of the one it replaces, which stays until
    /// everything in it is durable in LMDB (see `checkpoint`).
    pub(crate) fn start_next(&mut self) -> Result<u64, StorageError> {
        let next = Journal::create(self.dir.clone(), self.seq + 1)?;
        let old = std::mem::replace(self, next);
        Ok(old.seq)
    }

    /// What to do with a checkpointed segment, whose ops are all durable in LMDB: it becomes
    /// the spare (a [`MAGIC`] segment, written to its full length), or else it is deleted.
    /// Either step lost in a crash leaves it as a segment, replayed again harmlessly.
    fn retire(dir: &Path, path: &Path) -> std::io::Result<()> {
        let mut head = [0u8; 8];
        let full = File::open(path).and_then(|f| {
            f.read_exact_at(&mut head, 0)?;
            Ok(f.metadata()?.len() >= SEGMENT_BYTES)
        })?;
        if full && head == *MAGIC {
            fs::rename(path, dir.join(SPARE))
        } else {
            fs::remove_file(path)
        }
    }

    /// The file of segment `seq`.
    fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.wal"))
    }
}

/// Most requests the journal thread writes and flushes as one.
const GROUP_REQUESTS_MAX: usize = 256;
/// How many requests may wait for the journal thread before senders wait in turn.
const QUEUE_REQUESTS_MAX: usize = 1024;

/// Told once a request's record is durable: `Ok` with the writer (to queue the LMDB job that
/// carries the same change, in journal order) and the op back; or the error that stopped it.
pub(crate) type OnDurable = Box<dyn FnOnce(Result<(&Writer, Op), String>) + Send + 'static>;

/// Work for the journal thread.
pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) on_durable: OnDurable,
}

/// Handle to the journal thread, which owns the [`Journal`]. Dropping it closes the queue and
/// joins the thread (requests already queued are still written).
pub(crate) struct JournalHandle {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl JournalHandle {
    /// Recovers the journal under `dir` into LMDB (one full commit through `writer`), starts
    /// a fresh segment, then the thread. Blocks until recovery is done (start-up only).
    /// `log` is the log's state outside LMDB: each checkpoint stores the block entries that
    /// wait there for their apply (see `log`).
    pub(crate) fn start(
        dir: &Path,
        writer: Arc<Writer>,
        log: LogShared,
    ) -> Result<JournalHandle, StorageError> {
        let (tx, rx) = mpsc::channel::<Request>(QUEUE_REQUESTS_MAX);
        let (init_tx, init_rx) = std::sync::mpsc::sync_channel::<Result<(), StorageError>>(1);
        let dir = dir.to_path_buf();
        let thread = thread::Builder::new()
            .name("haseq-storage-journal".into())
            .spawn(move || {
                let journal = match recover(&dir, &writer) {
                    Ok(j) => j,
                    Err(e) => {
                        let _ = init_tx.send(Err(e));
                        return;
                    }
                };
                if init_tx.send(Ok(())).is_err() {
                    return;
                }
                run(journal, &writer, &log, rx);
                tracing::debug!(dir = %dir.display(), "log journal stopped");
            })
            .map_err(StorageError::io(
                "spawn journal thread",
                "haseq-storage-journal",
            ))?;
        match init_rx.recv() {
            Ok(res) => res?,
            Err(_) => return Err(StorageError::WriterStopped),
        }
        Ok(JournalHandle {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `req`, waiting only for room in the queue. Requests are written in the order
    /// they were queued, and their LMDB jobs queued in that order too.
    pub(crate) async fn send(&self, req: Request) -> Result<(), StorageError> {
        let tx = self.tx.as_ref().ok_or(StorageError::WriterStopped)?;
        tx.send(req).await.map_err(|_| StorageError::WriterStopped)
    }
}

impl Drop for JournalHandle {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != thread::current().id()
            && thread.join().is_err()
        {
            tracing::error!("log journal thread panicked");
        }
    }
}

/// Applies every op the journal holds to LMDB in one full commit, then starts a fresh segment.
fn recover(dir: &Path, writer: &Writer) -> Result<Journal, StorageError> {
    let mut recovered = Recovered::read(dir)?;
    if !recovered.ops.is_empty() {
        let ops = std::mem::take(&mut recovered.ops);
        let n = ops.len();
        writer
            .write_blocking(
                "log: recover from journal",
                Durability::Full,
                move |wtxn, dbs| {
                    for op in &ops {
                        crate::log::apply_op(wtxn, dbs, op)?;
                    }
                    Ok(())
                },
            )
            .map_err(|e| StorageError::JournalReplay {
                path: dir.join(WAL_SUBDIR),
                source: Box::new(e),
            })?;
        tracing::info!(dir = %dir.display(), records = n, "log journal applied to the store");
    }
    Journal::start(dir, recovered)
}

/// The journal thread's loop: each turn writes every queued request as one flush, then tells
/// each one. After a failed write nothing more is written: every later request hears the error.
fn run(mut journal: Journal, writer: &Writer, log: &LogShared, mut rx: mpsc::Receiver<Request>) {
    let mut failed: Option<String> = None;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }
        if let Some(e) = &failed {
            for req in group {
                (req.on_durable)(Err(e.clone()));
            }
            continue;
        }
        buf.clear();
        let mut written = Vec::with_capacity(group.len());
        for req in group {
            match encode_record(&req.op, journal.seq, &mut buf) {
                Ok(()) => written.push(req),
                Err(e) => (req.on_durable)(Err(e.to_string())),
            }
        }
        if let Err(e) = journal.append(&buf) {
            tracing::error!(error = %e, "log journal write failed; the log takes no more writes");
            let e = e.to_string();
            for req in written {
                (req.on_durable)(Err(e.clone()));
            }
            failed = Some(e);
            continue;
        }
        for req in written {
            (req.on_durable)(Ok((writer, req.op)));
        }
        if journal.is_full()
            && let Err(e) = checkpoint(&mut journal, writer, log)
        {
            tracing::error!(error = %e, "log journal checkpoint failed; the log takes no more writes");
            failed = Some(e.to_string());
        }
        // Keep the buffer's memory for the next group, unless one large batch grew it.
        if buf.capacity() > BUF_KEEP_BYTES {
            buf = Vec::new();
        }
    }
}

/// A buffer larger than this is freed after its group instead of kept.
const BUF_KEEP_BYTES: usize = 4 << 20;

/// Starts the next segment at once, and queues a full LMDB commit behind every job queued so
/// far: once it is done, everything the old segment holds is durable in LMDB, and the old
/// segment is recycled as the spare (or deleted, see [`Journal::retire`]). Appends never wait
/// for either: that step runs on a thread of its own, since unlinking a segment (64 MiB then)
/// is file-system work that took 40-50 ms under load (measured: one commit that slow right
/// after each checkpoint while the journal thread did it).
///
/// The old segment may hold the only durable copy of block entries that wait for their apply
/// (the log carries those into LMDB with the apply, see `log`): the checkpoint's transaction
/// stores them in full first ([`LogShared::carry`]).
fn checkpoint(journal: &mut Journal, writer: &Writer, log: &LogShared) -> Result<(), StorageError> {
    let old = journal.start_next()?;
    let path = journal.path_of(old);
    let dir = journal.dir.clone();
    let (carry, carried) = (log.clone(), log.clone());
    writer.submit_blocking(
        "log: journal checkpoint",
        Durability::Full,
        move |wtxn, dbs| carry.carry(wtxn, dbs),
        move |res| match res {
            Ok(ids) => {
                if !carried.carried(Ok(ids)) {
                    tracing::error!(segment = old, "the log has stopped: keeping the checkpointed journal segment for the next open's replay");
                    return;
                }
                let remove = move || {
                    // A segment left behind costs disk and replay time on the next open,
                    // nothing else (its ops are applied again, harmlessly).
                    if let Err(e) = Journal::retire(&dir, &path) {
                        tracing::warn!(path = %path.display(), error = %e, "could not recycle or remove a checkpointed journal segment");
                    }
                };
                let spawned = thread::Builder::new()
                    .name("haseq-journal-rm".into())
                    .spawn(remove);
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "no thread to remove a checkpointed journal segment; it stays until the next open");
                }
            }
            // The segment stays, and is replayed on the next open; the log takes no more
            // writes (whichever job failed, this one or one before it).
            Err(e) => {
                tracing::error!(error = %e, segment = old, "journal checkpoint commit failed");
                let _ = carried.carried(Err(e));
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(entries: &[(u64, &[u8])]) -> Op {
        Op::Append {
            entries: entries
                .iter()
                .map(|(i, b)| (*i, ByteBuf(b.to_vec())))
                .collect(),
            committed: None,
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_or_corrupt_tail_ends_them() {
        let ops = vec![
            append(&[(1, b"one"), (2, b"two")]),
            Op::Truncate { after: Some(1) },
            Op::Purge {
                upto: 1,
                log_id: ByteBuf(vec![7; 3]),
            },
        ];
        let mut bytes = Vec::new();
        for op in &ops {
            encode_record(op, 7, &mut bytes).expect("encode");
        }
        let p = Path::new("test.wal");
        assert_eq!(
            decode_records(&bytes, Some(7), p).expect("decode"),
            (ops.clone(), bytes.len())
        );
        // Another segment's records (a recycled file's old ones) are no records here.
        assert_eq!(decode_records(&bytes, Some(8), p).unwrap(), (vec![], 0));
        assert_eq!(decode_records(&bytes, None, p).unwrap(), (vec![], 0));

        // Cut anywhere inside the last record: the first two remain.
        let whole_two = {
            let mut b = Vec::new();
            encode_record(&ops[0], 7, &mut b).unwrap();
            encode_record(&ops[1], 7, &mut b).unwrap();
            b.len()
        };
        for cut in whole_two..bytes.len() {
            let (got, end) = decode_records(&bytes[..cut], Some(7), p).expect("decode");
            assert_eq!(got, ops[..2].to_vec(), "cut at {cut}");
            assert_eq!(end, whole_two);
        }
        // A flipped bit in the last body fails its checksum; zeros after the end are no record.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode_records(&flipped, Some(7), p).unwrap().0,
            ops[..2].to_vec()
        );
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 64]);
        assert_eq!(decode_records(&padded, Some(7), p).unwrap().0, ops);
    }

    #[test]
    fn a_segment_file_is_read_up_to_a_torn_record_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::start(dir.path(), Recovered::read(dir.path()).unwrap()).unwrap();
        let path = dir
            .path()
            .join(WAL_SUBDIR)
            .join(format!("{:020}.wal", j.seq));
        let mut buf = Vec::new();
        encode_record(&append(&[(1, b"a")]), j.seq, &mut buf).unwrap();
        j.append(&buf).unwrap();
        assert_eq!(
            read_segment(j.seq, &path).unwrap(),
            Some((vec![append(&[(1, b"a")])], false))
        );
        // Half a record: a crash mid-write.
        let mut torn = Vec::new();
        encode_record(&Op::Truncate { after: Some(9) }, j.seq, &mut torn).unwrap();
        j.file.write_all_at(&torn[..torn.len() - 1], j.pos).unwrap();
        assert_eq!(
            read_segment(j.seq, &path).unwrap(),
            Some((vec![append(&[(1, b"a")])], true))
        );
        // A file that is not a journal is refused, naming it.
        let other = dir.path().join(WAL_SUBDIR).join("00000000000000000099.wal");
        fs::write(&other, b"something else").unwrap();
        let e = read_segment(99, &other).unwrap_err();
        assert!(e.to_string().contains("99.wal"), "{e}");
    }

    #[test]
    fn a_checksummed_record_that_does_not_decode_is_refused() {
        let body = [0xFFu8; 5];
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&checksum(Some(3), &body).to_le_bytes());
        bytes.extend_from_slice(&body);
        let e = decode_records(&bytes, Some(3), Path::new("x.wal")).unwrap_err();
        assert!(e.to_string().contains("x.wal"), "{e}");
    }

    #[test]
    fn segments_rotate_and_recovery_reads_every_one_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = Recovered::read(dir.path()).expect("read");
        assert!(rec.ops.is_empty());
        let mut j = Journal::start(dir.path(), rec).expect("start");
        let mut buf = Vec::new();
        encode_record(&append(&[(1, b"a")]), j.seq, &mut buf).unwrap();
        j.append(&buf).expect("append");
        assert!(has_records(dir.path()).unwrap());
        // A second segment without deleting the first (a crash between the two steps).
        let mut second = Journal::create(dir.path().join(WAL_SUBDIR), j.seq + 1).expect("create");
        let mut buf = Vec::new();
        encode_record(&Op::Truncate { after: None }, second.seq, &mut buf).unwrap();
        second.append(&buf).expect("append");
        drop((j, second));

        let rec = Recovered::read(dir.path()).expect("read");
        assert_eq!(
            rec.ops,
            vec![append(&[(1, b"a")]), Op::Truncate { after: None }]
        );
        let j = Journal::start(dir.path(), rec).expect("start");
        assert_eq!(segments(&j.dir).unwrap().len(), 1, "old segments deleted");
        assert!(!has_records(dir.path()).unwrap());
        assert!(Recovered::read(dir.path()).unwrap().ops.is_empty());
    }

    /// Fills journal `j` past [`SEGMENT_BYTES`] with appends of `index`, `index + 1`, ...
    fn fill(j: &mut Journal, mut index: u64) -> u64 {
        let value = vec![0xAB; 1 << 20];
        while !j.is_full() {
            let mut buf = Vec::new();
            encode_record(&append(&[(index, &value)]), j.seq, &mut buf).unwrap();
            j.append(&buf).unwrap();
            index += 1;
        }
        index
    }

    #[test]
    fn a_checkpointed_segment_is_recycled_and_its_old_records_never_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::start(dir.path(), Recovered::read(dir.path()).unwrap()).unwrap();
        let next = fill(&mut j, 1);
        let first = j.start_next().unwrap();
        // Checkpoint done: the full segment becomes the spare, not a segment.
        Journal::retire(&j.dir, &j.path_of(first)).unwrap();
        assert!(j.dir.join(SPARE).exists());
        assert_eq!(segments(&j.dir).unwrap().len(), 1);
        // The next segment is the spare, renamed: its 64 old records are no records of its
        // own, before any append (a crash right after the rename) and after one.
        let third = j.start_next().unwrap() + 1;
        assert!(!j.dir.join(SPARE).exists(), "the spare was reused");
        let path = j.path_of(third);
        let (ops, stale) = read_segment(third, &path).unwrap().expect("a segment");
        assert!(ops.is_empty(), "old records replayed: {}", ops.len());
        assert!(stale, "the old records are still in the file");
        let mut buf = Vec::new();
        encode_record(&append(&[(next, b"new")]), third, &mut buf).unwrap();
        j.append(&buf).unwrap();
        assert_eq!(
            read_segment(third, &path).unwrap().unwrap().0,
            vec![append(&[(next, b"new")])]
        );
        // Recovery reads exactly what was written since the checkpoint.
        drop(j);
        let rec = Recovered::read(dir.path()).unwrap();
        let indexes: Vec<u64> = rec
            .ops
            .iter()
            .flat_map(|op| match op {
                Op::Append { entries, .. } => entries.iter().map(|(i, _)| *i).collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(indexes.first(), Some(&next), "segment 2 first, then 3");
        assert_eq!(indexes.last(), Some(&next));
        assert_eq!(indexes.iter().filter(|i| **i == next).count(), 1);
    }

    #[test]
    fn a_first_format_segment_is_read_and_never_recycled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = dir.path().join(WAL_SUBDIR);
        fs::create_dir_all(&wal).unwrap();
        // Written as the first format did: its magic, checksums over the body only.
        let op = append(&[(1, b"old")]);
        let body = haseq_messages::encode(&op).unwrap();
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&CRC.checksum(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        bytes.resize(SEGMENT_BYTES as usize, 0);
        let path = wal.join(format!("{:020}.wal", 5));
        fs::write(&path, &bytes).unwrap();
        assert_eq!(Recovered::read(dir.path()).unwrap().ops, vec![op]);
        // Its records would pass for any segment's: deleted, not made the spare.
        Journal::retire(&wal, &path).unwrap();
        assert!(!path.exists());
        assert!(!wal.join(SPARE).exists());
    }
}
