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
//! passes [`SEGMENT_BYTES`](segment::SEGMENT_BYTES): the next segment starts at once, and the old one is recycled
//! (below) once a full LMDB commit, queued behind the LMDB jobs of all its records, is done
//! (appends never wait for it; until then recovery reads both).
//!
//! Layout under the node's directory: `wal/<seq>.wal`, each segment [`MAGIC`](segment::MAGIC) followed by
//! records `len: u32 LE | crc32c(seq: u64 LE, body): u32 LE | body` (body: postcard [`Op`](record::Op);
//! the checksum also covers the segment's number). A record that is cut short or fails its
//! checksum ends the segment: a crash mid-write leaves at most the last record torn, and that
//! record was never acknowledged. Segments written before the checksum covered the number
//! ([`MAGIC_V1`](segment::MAGIC_V1): `crc32c(body)`) are still read.
//!
//! Recycling: a checkpointed segment is not deleted but renamed to `wal/spare`, and the next
//! segment is that file renamed again. Writing over blocks a file already has makes each
//! flush a flush of data only; appending into a fresh (sparse) file also has the file system
//! allocate blocks and journal that allocation at every flush. Measured (`haseqd bench --nodes
//! 3 --block-bytes 100KiB --blocks 6000`, alternating with the code before, 3 pairs): 334 vs
//! 306 blocks/s, commit p50 1.64 vs 1.81 ms, p99 11.7 vs 13.7 ms, CPU 5.24 vs 5.52 ms per
//! block (64 MiB segments then: a 2,000-block run barely reached its second recycled segment
//! and showed no difference; see [`SEGMENT_BYTES`](segment::SEGMENT_BYTES) for why they are 8 MiB now). The old
//! records left in a recycled file cannot pass for new ones: their checksums cover the old
//! segment's number.
//!
//! Files, one concept each, bottom up: `record` (the record format: [`Op`], the checksum,
//! encoding and decoding), `segment` (segment files, their recycling, what an open recovers),
//! `journal` (the journal thread: group flushes, recovery into LMDB, checkpoints). The journal
//! knows the log's records, not its rows: what a record means in LMDB is the log's
//! ([`JournalTarget`]), so that the log sits above the journal and not beside it.

mod journal;
mod record;
mod segment;

pub(crate) use journal::{JournalHandle, JournalTarget, OnDurable, Request};
pub(crate) use record::{ByteBuf, Op};
pub(crate) use segment::has_records;
