//! The journal's segment files: creating, writing and flushing the current one, recycling a
//! checkpointed one as the spare, and reading them all back at open ([`Recovered`]).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use haseq_messages::CodecError;

use super::record::{Op, RECORD_HEADER_BYTES, decode_from};
use crate::env::sync_dir;
use crate::error::StorageError;

/// The journal's subdirectory under the node's directory.
pub(super) const WAL_SUBDIR: &str = "wal";
/// A segment file's first bytes: records whose checksums cover the segment's number.
const MAGIC: &[u8; 8] = b"HASEQWL2";
/// A segment file's first bytes before that: records whose checksums cover the body only.
/// Read, never written, and never recycled (its records would pass for any segment's).
const MAGIC_V1: &[u8; 8] = b"HASEQWL1";
/// The recycled segment waiting to become the next one (not a `.wal`: never read as one).
const SPARE: &str = "spare";
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
    pub(super) dir: PathBuf,
    file: File,
    pub(super) seq: u64,
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
        sync_dir(&dir)?;
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
            sync_dir(&self.dir)?;
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
    pub(super) fn retire(dir: &Path, path: &Path) -> std::io::Result<()> {
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
    pub(super) fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.wal"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::tests::append;
    use super::super::record::{CRC, encode_record};
    use super::*;

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
