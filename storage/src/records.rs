//! The records this crate stores, and their keys.
//!
//! Every value on disk is postcard (the toolkit's codecs, `lmdb::{encode_rec, decode_rec}`), so
//! a stored value and the same value on the wire are the same bytes. Keys are not postcard: log
//! indexes and heights are big-endian `u64` so that LMDB's byte order is numeric order.

use haseq_messages::{Block, BlockHash, Height, TC};
use openraft::type_config::alias::{LogIdOf, StoredMembershipOf};
use serde::{Deserialize, Serialize};

use crate::error::StorageError;
use crate::lmdb::decode_rec;

/// The applied chain's tip: the block every new proposal must extend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Head {
    /// Height of the newest accepted block; 0 before any block (genesis).
    pub height: Height,
    /// Its hash; [`BlockHash::ZERO`] at genesis.
    pub hash: BlockHash,
}

impl Head {
    /// The head of an empty chain: height 0, hash zero.
    pub const GENESIS: Head = Head {
        height: Height(0),
        hash: BlockHash::ZERO,
    };
}

/// Keys of the `meta` database (Raft's own durable state, beside the log).
pub(crate) mod meta_key {
    /// The last saved vote.
    pub(crate) const VOTE: &str = "vote";
    /// The last saved committed log id.
    pub(crate) const COMMITTED: &str = "committed";
    /// The id of the newest purged entry.
    pub(crate) const LAST_PURGED: &str = "last_purged";
}

/// Keys of the `sm` database (the state machine).
pub(crate) mod sm_key {
    /// The last applied log id.
    pub(crate) const APPLIED: &str = "applied";
    /// The last applied membership.
    pub(crate) const MEMBERSHIP: &str = "membership";
    /// The applied chain's head.
    pub(crate) const HEAD: &str = "head";
}

/// The log row of an applied block's entry (the `log_blocks` database): the entry is
/// `Normal(Command::Block(b))` with `log_id`, where `b` is the block the block store holds at
/// `height`, whose hash is `hash`. The state machine writes it in the transaction that puts the
/// block there, so that the log and the block store share one copy of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlockEntryRow {
    /// The entry's log id.
    pub(crate) log_id: LogIdOf<TC>,
    /// The block's height.
    pub(crate) height: Height,
    /// The block's hash.
    pub(crate) hash: BlockHash,
}

/// Version of [`SnapshotFile`]'s layout; bump on any change to it. Version 2 added
/// `checkpoints`; files and data of version 1 are still read (with none).
pub(crate) const SNAPSHOT_FORMAT_VERSION: u32 = 2;

/// What a snapshot carries: the state machine at `applied`, plus the newest blocks so that a
/// node installing it can serve and replay the chain tip at once (older blocks it fetches from
/// peers). The same bytes are the `.snp` file, the `SnapshotData` and the wire payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SnapshotFile {
    /// [`SNAPSHOT_FORMAT_VERSION`] when written.
    pub(crate) version: u32,
    /// The last applied log id the snapshot covers.
    pub(crate) applied: Option<LogIdOf<TC>>,
    /// The membership in effect at `applied`.
    pub(crate) membership: StoredMembershipOf<TC>,
    /// The chain head at `applied`.
    pub(crate) head: Head,
    /// The newest blocks, ascending by height and ending at `head` (empty at genesis).
    pub(crate) blocks: Vec<Block>,
    /// The committed hash at every checkpoint height up to `head`, ascending (see
    /// [`crate::CHECKPOINT_EVERY_BLOCKS`]): what vouches for history fetched from peers
    /// oldest first. Empty in a version 1 snapshot.
    pub(crate) checkpoints: Vec<(Height, BlockHash)>,
}

/// [`SnapshotFile`] as version 1 wrote it.
#[derive(Deserialize)]
struct SnapshotFileV1 {
    #[allow(dead_code)] // read to move past it; always 1
    version: u32,
    applied: Option<LogIdOf<TC>>,
    membership: StoredMembershipOf<TC>,
    head: Head,
    blocks: Vec<Block>,
}

/// Decodes a snapshot of any version this build reads (the version is its first field).
pub(crate) fn decode_snapshot(
    what: &'static str,
    origin: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<SnapshotFile, StorageError> {
    // postcard writes a `u32` as a varint: version 1 is the single byte 0x01.
    if bytes.first() != Some(&1) {
        return decode_rec(what, origin, bytes);
    }
    let v1: SnapshotFileV1 = decode_rec(what, origin, bytes)?;
    Ok(SnapshotFile {
        version: SNAPSHOT_FORMAT_VERSION,
        applied: v1.applied,
        membership: v1.membership,
        head: v1.head,
        blocks: v1.blocks,
        checkpoints: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use haseq_messages::{Command, NodeId, PeerNode};
    use openraft::entry::RaftEntry;
    use openraft::type_config::alias::{EntryOf, VoteOf};
    use openraft::vote::leader_id_std::CommittedLeaderId;
    use openraft::{LogId, Membership, StoredMembership};
    use proptest::prelude::*;

    use serde::de::DeserializeOwned;

    use super::*;
    use crate::lmdb::{decode_rec, encode_rec};

    /// With one leader per term (`leader_id_std`) a log id does not name the node.
    fn log_id(term: u64, _node: u64, index: u64) -> LogIdOf<TC> {
        LogId::new(CommittedLeaderId::new(term), index)
    }

    fn hash() -> impl Strategy<Value = BlockHash> {
        any::<[u8; 32]>().prop_map(BlockHash)
    }

    fn block() -> impl Strategy<Value = Block> {
        (
            any::<u64>(),
            hash(),
            hash(),
            any::<u64>(),
            "[a-z0-9-]{0,12}",
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(h, parent_hash, hash, timestamp, p, payload)| Block {
                height: Height(h),
                parent_hash,
                hash,
                timestamp,
                proposer: NodeId(p),
                payload: payload.into(),
            })
    }

    fn membership() -> impl Strategy<Value = StoredMembershipOf<TC>> {
        (
            proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>())),
            proptest::collection::btree_set(0u64..20, 1..5),
            proptest::collection::btree_set(20u64..30, 0..3),
        )
            .prop_map(|(id, voters, learners)| {
                let voters: BTreeSet<NodeId> = voters.into_iter().map(NodeId::from).collect();
                let mut nodes = BTreeMap::new();
                for n in voters
                    .iter()
                    .cloned()
                    .chain(learners.into_iter().map(NodeId::from))
                {
                    let addr = format!("{n}:7000");
                    nodes.insert(n, PeerNode { addr });
                }
                let m = Membership::new(vec![voters], nodes).expect("voters are in nodes");
                StoredMembership::new(id.map(|(t, n, i)| log_id(t, n, i)), m)
            })
    }

    fn entry() -> impl Strategy<Value = EntryOf<TC>> {
        let id = (any::<u64>(), 0u64..10, any::<u64>()).prop_map(|(t, n, i)| log_id(t, n, i));
        prop_oneof![
            id.clone().prop_map(EntryOf::<TC>::new_blank),
            (id.clone(), block())
                .prop_map(|(id, b)| EntryOf::<TC>::new_normal(id, Command::Block(b))),
            (id, membership())
                .prop_map(|(id, m)| EntryOf::<TC>::new_membership(id, m.membership().clone())),
        ]
    }

    fn round_trip<T>(what: &'static str, v: &T) -> T
    where
        T: Serialize + DeserializeOwned,
    {
        let bytes = encode_rec(what, v).expect("encode");
        decode_rec(what, "test", &bytes).expect("decode")
    }

    proptest! {
        #[test]
        fn entries_round_trip(e in entry()) {
            prop_assert_eq!(round_trip("entry", &e), e);
        }

        #[test]
        fn votes_and_log_ids_round_trip(t in any::<u64>(), n in any::<u64>(), i in any::<u64>(), committed in any::<bool>()) {
            let mut v = VoteOf::<TC>::new(t, NodeId::from(n));
            if committed {
                v = VoteOf::<TC>::new_committed(t, NodeId::from(n));
            }
            prop_assert_eq!(round_trip("vote", &v), v);
            let id = Some(log_id(t, n, i));
            prop_assert_eq!(round_trip("log id", &id), id);
        }

        #[test]
        fn blocks_and_heads_round_trip(b in block(), h in any::<u64>(), hh in hash()) {
            prop_assert_eq!(round_trip("block", &b), b);
            let head = Head { height: Height(h), hash: hh };
            prop_assert_eq!(round_trip("head", &head), head);
        }

        #[test]
        fn snapshot_files_round_trip(
            applied in proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>())),
            m in membership(),
            blocks in proptest::collection::vec(block(), 0..4),
            h in any::<u64>(),
            hh in hash(),
            checkpoints in proptest::collection::vec((any::<u64>(), hash()), 0..4),
        ) {
            let f = SnapshotFile {
                version: SNAPSHOT_FORMAT_VERSION,
                applied: applied.map(|(t, n, i)| log_id(t, n, i)),
                membership: m.clone(),
                head: Head { height: Height(h), hash: hh },
                blocks: blocks.clone(),
                checkpoints: checkpoints.into_iter().map(|(h, x)| (Height(h), x)).collect(),
            };
            let bytes = encode_rec("snapshot", &f).expect("encode");
            prop_assert_eq!(decode_snapshot("snapshot", "test", &bytes).expect("decode"), f.clone());
            // Version 1 wrote the same fields but the checkpoints (postcard writes a struct
            // as the sequence of its fields, so a tuple makes the same bytes).
            let v1 = (1u32, f.applied, m, f.head, blocks);
            let old = encode_rec("snapshot v1", &v1).expect("encode v1");
            let read = decode_snapshot("snapshot", "test", &old).expect("decode v1");
            prop_assert_eq!(read, SnapshotFile { checkpoints: Vec::new(), ..f });
        }

        #[test]
        fn membership_round_trips(m in membership()) {
            prop_assert_eq!(round_trip("membership", &m), m);
        }

        /// Arbitrary bytes never panic the decoder: a corrupt store is an error, not a crash.
        #[test]
        fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_rec::<EntryOf<TC>>("entry", 0, &bytes);
            let _ = decode_rec::<VoteOf<TC>>("vote", 0, &bytes);
            let _ = decode_rec::<Option<LogIdOf<TC>>>("log id", 0, &bytes);
            let _ = decode_rec::<StoredMembershipOf<TC>>("membership", 0, &bytes);
            let _ = decode_rec::<Head>("head", 0, &bytes);
            let _ = decode_rec::<Block>("block", 0, &bytes);
            let _ = decode_rec::<SnapshotFile>("snapshot", 0, &bytes);
        }

        /// A truncated record (a torn write) is always an error.
        #[test]
        fn truncated_records_are_errors(e in entry(), cut in any::<prop::sample::Index>()) {
            let bytes = encode_rec("entry", &e).expect("encode");
            let cut = cut.index(bytes.len());
            prop_assert!(decode_rec::<EntryOf<TC>>("entry", 0, &bytes[..cut]).is_err());
        }
    }

    #[test]
    fn empty_and_garbage_inputs_are_errors() {
        assert!(decode_rec::<Head>("head", 0, &[]).is_err());
        assert!(decode_rec::<SnapshotFile>("snapshot", 0, &[0xff; 3]).is_err());
        // Trailing bytes after a valid value are refused too.
        let mut bytes = encode_rec("head", &Head::GENESIS).expect("encode");
        bytes.push(0);
        assert!(decode_rec::<Head>("head", 0, &bytes).is_err());
    }
}
