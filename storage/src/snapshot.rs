//! Snapshot files and the snapshot builder.
//!
//! A snapshot is one file `snapshot-<term>-<index>.snp` in the node's directory (term and index
//! of the last applied log id, zero-padded so names sort like log ids), holding a postcard
//! [`SnapshotFile`]. The same bytes are openraft's `SnapshotData` and what goes on the wire.
//!
//! Writes are atomic: a temp file `<name>.<pid>-<seq>.tmp` is written and fsynced, renamed over
//! the final name, and the directory is fsynced, so a reader sees the old file or the whole
//! new one, never a torn one. A crash can leave a temp file behind; `open` deletes those, and
//! listings never look at them. The newest `snap_count` files are kept, older ones deleted.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use haseq_messages::TC;
use openraft::storage::{RaftSnapshotBuilder, Snapshot, SnapshotMeta};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf};

use crate::applied::{read_applied, read_head, read_membership};
use crate::blocks::{CHECKPOINT_EVERY_BLOCKS, is_checkpoint, read_checkpoints, recent_blocks};
use crate::env::{Dbs, sync_dir};
use crate::error::StorageError;
use crate::lmdb::{LmdbEnv, encode_rec};
use crate::metrics::SNAPSHOT_BUILDS_TOTAL;
use crate::records::{SNAPSHOT_FORMAT_VERSION, SnapshotFile, decode_snapshot};

/// File name prefix of snapshots and their temp files.
const PREFIX: &str = "snapshot-";
/// File name suffix of a complete snapshot.
const SUFFIX: &str = ".snp";
/// File name suffix of a temp file being written.
const TMP_SUFFIX: &str = ".tmp";

/// Distinguishes concurrent temp files of this process (a build racing an install).
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Orders snapshots like their log ids: `None` (nothing applied) first, then (term, index).
type SortKey = Option<(u64, u64)>;

/// The snapshot directory and its retention policy.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    keep: usize,
    recent_blocks: usize,
    recent_bytes: usize,
}

/// The file name for a snapshot at `applied`.
pub(crate) fn file_name(applied: &Option<LogIdOf<TC>>) -> String {
    match applied {
        Some(id) => format!("{PREFIX}{:020}-{:020}{SUFFIX}", id.leader_id.term, id.index),
        None => format!("{PREFIX}none{SUFFIX}"),
    }
}

/// Parses a complete snapshot's file name; `None` for anything else (temp files included).
fn parse_name(name: &str) -> Option<SortKey> {
    let stem = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if stem == "none" {
        return Some(None);
    }
    let (term, index) = stem.split_once('-')?;
    Some(Some((term.parse().ok()?, index.parse().ok()?)))
}

impl SnapshotDir {
    pub(crate) fn new(
        dir: PathBuf,
        keep: usize,
        recent_blocks: usize,
        recent_bytes: usize,
    ) -> Self {
        SnapshotDir {
            dir,
            keep,
            recent_blocks,
            recent_bytes,
        }
    }

    /// How many recent blocks a snapshot carries, and the most payload bytes they may hold
    /// together (the head block aside).
    pub(crate) fn recent_limits(&self) -> (usize, usize) {
        (self.recent_blocks, self.recent_bytes)
    }

    /// Deletes temp files left by a crash mid-write. Returns how many there were.
    pub(crate) fn remove_temp_files(&self) -> Result<usize, StorageError> {
        let mut removed = 0;
        for (name, path) in self.entries()? {
            if name.starts_with(PREFIX) && name.ends_with(TMP_SUFFIX) {
                tracing::warn!(path = %path.display(), "removing snapshot temp file left by a crash");
                fs::remove_file(&path)
                    .map_err(StorageError::io("remove snapshot temp file", &path))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    fn entries(&self) -> Result<Vec<(String, PathBuf)>, StorageError> {
        let rd = fs::read_dir(&self.dir)
            .map_err(StorageError::io("list snapshot directory", &self.dir))?;
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(StorageError::io("list snapshot directory", &self.dir))?;
            if let Some(name) = e.file_name().to_str() {
                out.push((name.to_string(), e.path()));
            }
        }
        Ok(out)
    }

    /// Complete snapshot files, oldest first.
    pub(crate) fn list(&self) -> Result<Vec<PathBuf>, StorageError> {
        let mut snaps: Vec<(SortKey, PathBuf)> = self
            .entries()?
            .into_iter()
            .filter_map(|(name, path)| parse_name(&name).map(|k| (k, path)))
            .collect();
        snaps.sort();
        Ok(snaps.into_iter().map(|(_, p)| p).collect())
    }

    /// Writes a snapshot atomically, then deletes all but the newest `keep`.
    pub(crate) fn write(
        &self,
        applied: &Option<LogIdOf<TC>>,
        bytes: &[u8],
    ) -> Result<PathBuf, StorageError> {
        let name = file_name(applied);
        let path = self.dir.join(&name);
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{name}.{}-{seq}{TMP_SUFFIX}", std::process::id()));
        let res = write_then_rename(&tmp, &path, bytes).and_then(|()| sync_dir(&self.dir));
        if res.is_err() {
            // Best effort: a leftover is also removed at the next open.
            let _ = fs::remove_file(&tmp);
        }
        res?;
        self.retain()?;
        Ok(path)
    }

    /// Deletes all but the newest `keep` snapshot files.
    fn retain(&self) -> Result<(), StorageError> {
        let snaps = self.list()?;
        let excess = snaps.len().saturating_sub(self.keep);
        for old in &snaps[..excess] {
            fs::remove_file(old).map_err(StorageError::io("remove old snapshot", old))?;
        }
        if excess > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The newest snapshot, read and checked.
    pub(crate) fn current(&self) -> Result<Option<SnapshotOf<TC, Vec<u8>>>, StorageError> {
        let Some(path) = self.list()?.pop() else {
            return Ok(None);
        };
        let bytes = fs::read(&path).map_err(StorageError::io("read snapshot", &path))?;
        let file = decode_snapshot("snapshot file", path.display(), &bytes)?;
        check_file(&file, &path.display().to_string())?;
        Ok(Some(Snapshot {
            meta: meta_of(&file),
            snapshot: bytes,
        }))
    }
}

/// Write, fsync, rename: after this returns, `path` holds exactly `bytes` or the old content.
fn write_then_rename(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(StorageError::io("create snapshot temp file", tmp))?;
    f.write_all(bytes)
        .map_err(StorageError::io("write snapshot temp file", tmp))?;
    f.sync_all()
        .map_err(StorageError::io("fsync snapshot temp file", tmp))?;
    drop(f);
    fs::rename(tmp, path).map_err(StorageError::io("rename snapshot into place", path))
}

/// The openraft metadata of a snapshot file.
pub(crate) fn meta_of(file: &SnapshotFile) -> SnapshotMetaOf<TC> {
    SnapshotMeta {
        last_log_id: file.applied,
        last_membership: file.membership.clone(),
    }
}

/// Checks a snapshot's own consistency: format version, and that its blocks are a chain of
/// consecutive heights ending at its head.
pub(crate) fn check_file(file: &SnapshotFile, origin: &str) -> Result<(), StorageError> {
    if file.version != SNAPSHOT_FORMAT_VERSION {
        return Err(StorageError::SnapshotVersion {
            origin: origin.to_string(),
            expected: SNAPSHOT_FORMAT_VERSION,
            got: file.version,
        });
    }
    for pair in file.blocks.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.height != a.height.next() || b.parent_hash != a.hash {
            return Err(StorageError::SnapshotBlocks {
                height: b.height,
                reason: format!("does not extend block {} at height {}", a.hash, a.height),
            });
        }
    }
    if let Some(last) = file.blocks.last()
        && (last.height != file.head.height || last.hash != file.head.hash)
    {
        return Err(StorageError::SnapshotBlocks {
            height: last.height,
            reason: format!(
                "newest block {} is not the head {} at height {}",
                last.hash, file.head.hash, file.head.height
            ),
        });
    }
    for pair in file.checkpoints.windows(2) {
        if pair[1].0 <= pair[0].0 {
            return Err(StorageError::SnapshotBlocks {
                height: pair[1].0,
                reason: format!("checkpoint after checkpoint {}: not ascending", pair[0].0),
            });
        }
    }
    for &(height, hash) in &file.checkpoints {
        if !is_checkpoint(height) || height > file.head.height {
            return Err(StorageError::SnapshotBlocks {
                height,
                reason: format!(
                    "checkpoint at a height that is not a multiple of {CHECKPOINT_EVERY_BLOCKS} in 1..={}",
                    file.head.height
                ),
            });
        }
        // A carried block at a checkpoint height is the checkpoint's block. (The blocks are
        // consecutive and end at the head, checked above: the index is within them.)
        if let Some(first) = file.blocks.first()
            && height >= first.height
            && let Some(b) = file.blocks.get((height.0 - first.height.0) as usize)
            && b.hash != hash
        {
            return Err(StorageError::SnapshotBlocks {
                height,
                reason: format!("checkpoint {hash} but the carried block is {}", b.hash),
            });
        }
    }
    Ok(())
}

/// Decodes snapshot data received from a leader and checks it against the metadata it came
/// with.
pub(crate) fn decode_and_check(
    data: &[u8],
    meta: &SnapshotMetaOf<TC>,
) -> Result<SnapshotFile, StorageError> {
    let origin = format!("leader, last log id {:?}", meta.last_log_id);
    let file = decode_snapshot("snapshot data", &origin, data)?;
    check_file(&file, &origin)?;
    if file.applied != meta.last_log_id {
        return Err(StorageError::SnapshotMetaMismatch {
            field: "last_log_id",
            expected: format!("{:?}", meta.last_log_id),
            got: format!("{:?}", file.applied),
        });
    }
    if file.membership != meta.last_membership {
        return Err(StorageError::SnapshotMetaMismatch {
            field: "last_membership",
            expected: meta.last_membership.to_string(),
            got: file.membership.to_string(),
        });
    }
    Ok(file)
}

/// Runs blocking file work off the async workers.
pub(crate) async fn spawn_blocking<R, F>(what: &'static str, f: F) -> Result<R, StorageError>
where
    F: FnOnce() -> Result<R, StorageError> + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Blocking {
            what,
            reason: e.to_string(),
        })?
}

/// Builds a snapshot of the state machine as it is when the build starts: one read
/// transaction gives a consistent view while applies go on.
pub struct SnapshotBuilder {
    env: LmdbEnv,
    dbs: Dbs,
    dir: SnapshotDir,
}

impl std::fmt::Debug for SnapshotBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBuilder")
            .field("dir", &self.dir)
            .finish()
    }
}

impl SnapshotBuilder {
    pub(crate) fn new(env: LmdbEnv, dbs: Dbs, dir: SnapshotDir) -> Self {
        SnapshotBuilder { env, dbs, dir }
    }

    fn build(
        env: &LmdbEnv,
        dbs: &Dbs,
        dir: &SnapshotDir,
    ) -> Result<SnapshotOf<TC, Vec<u8>>, StorageError> {
        let file = {
            let rtxn = env
                .read_txn()
                .map_err(StorageError::lmdb("snapshot: begin read"))?;
            let head = read_head(&rtxn, dbs)?;
            SnapshotFile {
                version: SNAPSHOT_FORMAT_VERSION,
                applied: read_applied(&rtxn, dbs)?,
                membership: read_membership(&rtxn, dbs)?,
                head,
                blocks: {
                    let (count, max_bytes) = dir.recent_limits();
                    recent_blocks(&rtxn, dbs, head, count, max_bytes)?
                },
                checkpoints: read_checkpoints(&rtxn, dbs, head.height)?,
            }
            // The read transaction ends here, before the file I/O: a long reader pins pages.
        };
        let bytes = encode_rec("snapshot", &file)?;
        let path = dir.write(&file.applied, &bytes)?;
        tracing::info!(path = %path.display(), applied = ?file.applied, head = %file.head.height,
            blocks = file.blocks.len(), checkpoints = file.checkpoints.len(), bytes = bytes.len(),
            "snapshot built");
        Ok(Snapshot {
            meta: meta_of(&file),
            snapshot: bytes,
        })
    }
}

impl RaftSnapshotBuilder<TC> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TC, Vec<u8>>, io::Error> {
        let (env, dbs, dir) = (self.env.clone(), self.dbs, self.dir.clone());
        let snap = spawn_blocking("build snapshot", move || {
            SnapshotBuilder::build(&env, &dbs, &dir)
        })
        .await?;
        metrics::counter!(SNAPSHOT_BUILDS_TOTAL).increment(1);
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_like_log_ids_and_ignore_temp_files() {
        assert_eq!(parse_name("snapshot-none.snp"), Some(None));
        assert_eq!(
            parse_name("snapshot-00000000000000000002-00000000000000000010.snp"),
            Some(Some((2, 10)))
        );
        assert_eq!(
            parse_name("snapshot-00000000000000000002-00000000000000000010.snp.1-0.tmp"),
            None
        );
        assert_eq!(parse_name("other.snp"), None);
        assert_eq!(parse_name("snapshot-x-1.snp"), None);
        assert!(Some((1, 100)) < Some((2, 3)));
        assert!(None < Some((0, 0)));
    }
}
