//! The journal's record format: one [`Op`] a record, `len: u32 LE | crc32c(seq: u64 LE, body):
//! u32 LE | body`, the body postcard. The checksum covers the segment's number too, so that a
//! recycled file's old records never pass for new ones (see `segment`).

use std::path::Path;

use haseq_messages::CodecError;
use serde::{Deserialize, Serialize};

use crate::error::StorageError;

/// Bytes before a record's body: its length and checksum.
pub(super) const RECORD_HEADER_BYTES: usize = 8;
/// The checksum: CRC-32C (Castagnoli), as etcd's WAL and most storage formats use. Slice-by-16
/// tables (16 KiB): the crate's default bytewise table made the checksum of a 100 KiB block a
/// measurable part of its commit (100 KiB blocks: p50 2.5 ms -> 2.0 ms, `haseqd bench`).
pub(super) const CRC: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

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
pub(super) fn checksum(seq: Option<u64>, body: &[u8]) -> u32 {
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
pub(super) fn decode_from(
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn append(entries: &[(u64, &[u8])]) -> Op {
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
    fn a_checksummed_record_that_does_not_decode_is_refused() {
        let body = [0xFFu8; 5];
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&checksum(Some(3), &body).to_le_bytes());
        bytes.extend_from_slice(&body);
        let e = decode_records(&bytes, Some(3), Path::new("x.wal")).unwrap_err();
        assert!(e.to_string().contains("x.wal"), "{e}");
    }
}
