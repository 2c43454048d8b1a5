//! Drop-behind for an LMDB environment whose data is written once and seldom read again.
//!
//! The block store (and the embedded engine's blocks) grow by every block's payload, written
//! through LMDB's `pwritev` into the page cache and flushed; after that nobody reads most of it
//! for a long time (recent blocks are served from memory: the applied tail, the log tail). Left
//! alone, those pages fill the page cache, and every commit writes into page-cache pages taken
//! fresh from free memory. On a virtual machine that hands free memory back to its host (the
//! balloon's free page reporting, as on the machine kind this project is measured on), fresh
//! memory is the expensive kind: each first touch faults into the host. Measured there with
//! Python (`pwrite` of 100 KiB to a growing file, a flush every 8 writes, 8,000 writes): 183 us
//! per write into fresh pages, 40 us when what was written 80 writes before is dropped as it
//! goes (the next writes reuse those pages), 20 us over pages already cached. In `haseqd bench`
//! at 100 KiB the kernel's copy into fresh page-cache pages (`copy_folio_from_iter_atomic`) was
//! 24% of all CPU, nearly all of it in the two LMDB writer threads, against 0.5% for the log
//! journal, which writes as many bytes into its recycled segments' cached pages; with this,
//! about 2%, and 100 KiB blocks/s +24% (benches/NOTES.md, tenth session).
//!
//! So after each commit the writer thread calls [`DropBehind::after_commit`], which asks the
//! kernel (`posix_fadvise(POSIX_FADV_DONTNEED)`) to drop the pages by which the data file grew
//! up to [`LAG_COMMITS`] commits earlier, in pieces of at least [`DROP_CHUNK_BYTES`]: by then
//! they are clean (every commit flushes its data pages before it returns), so the kernel frees
//! them, and the next commits' pages reuse that memory.
//! Only the cache is affected, never the data: a dropped page is read from the disk again if
//! anything asks for it. The kernel keeps any page that is mapped, and LMDB reads through its
//! memory map, so the B-tree pages that later transactions read (the tree's right spine, which
//! every append rewrites) stay cached; the grown range is mostly the payloads' overflow pages
//! and page versions that later commits have already superseded.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The data file inside an LMDB environment's directory.
const DATA_FILE: &str = "data.mdb";

/// How many commits a grown range stays cached before it is dropped: long enough that the next
/// transactions have read (so mapped, so kept) the tree pages they still need. Longer keeps
/// more recent blocks cached for readers just behind the writer, but costs: `haseqd bench
/// --nodes 3 --block-bytes 100KiB --blocks 2000`, alternating runs, 4 pairs in each order:
/// 2 against 4 commits 429 vs 404 and 400 vs 379 blocks/s; 2 against 1, 390 vs 381 and 364 vs
/// 383 (no difference beyond the order's).
pub const LAG_COMMITS: usize = 2;

/// Advice is given for at least this much at once: each call walks the range, and when a
/// page in it cannot be dropped (one that is mapped, or still in another CPU's batch of pages
/// waiting for the LRU lists, as pages written a few at a time are) the kernel drains every
/// CPU's batch and walks again. With 1 KiB blocks a commit grows the file by a few pages, and
/// advice on each took 0.1 ms at the median, 1 ms at most (`perf trace -e fadvise64`, 2 s of
/// `haseqd bench --block-bytes 1KiB`); 100 KiB blocks grow it by about this much a commit.
pub const DROP_CHUNK_BYTES: u64 = 1 << 20;

/// Drops the page-cache pages of an LMDB data file's growth, [`LAG_COMMITS`] commits behind.
/// Owned by the environment's writer thread (the only thread that commits).
#[derive(Debug)]
pub struct DropBehind {
    /// The data file, opened for reading (advice needs a descriptor, not access); `None` when
    /// it could not be opened, which makes this a no-op (logged once, at open).
    file: Option<File>,
    /// The data file's length after each of the last `LAG_COMMITS + 1` commits, oldest first
    /// (at open: its length then).
    ends: VecDeque<u64>,
    /// Where the range not yet advised starts: the file's length at open, then the end of the
    /// last range advised.
    dropped_to: u64,
}

impl DropBehind {
    /// For the environment in `env_dir` (as `heed::Env::path` gives it).
    pub fn for_env_dir(env_dir: &Path) -> DropBehind {
        let path = env_dir.join(DATA_FILE);
        let file = match File::open(&path) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "cannot open the LMDB data file for drop-behind; its pages stay cached");
                None
            }
        };
        let mut d = DropBehind {
            file,
            ends: VecDeque::with_capacity(LAG_COMMITS + 2),
            dropped_to: 0,
        };
        // What is there at open is not ours to drop: only growth from here on.
        if let Some(len) = d.len() {
            d.ends.push_back(len);
            d.dropped_to = len;
        }
        d
    }

    /// Call after each commit (a failed or empty one does no harm: the length is unchanged).
    /// Drops what the file grew by up to `LAG_COMMITS` commits ago, once that is at least
    /// [`DROP_CHUNK_BYTES`].
    pub fn after_commit(&mut self) {
        let Some(len) = self.len() else { return };
        self.ends.push_back(len);
        while self.ends.len() > LAG_COMMITS + 1 {
            self.ends.pop_front();
        }
        if self.ends.len() <= LAG_COMMITS {
            return;
        }
        let settled = self.ends.front().copied().unwrap_or(self.dropped_to);
        if settled >= self.dropped_to + DROP_CHUNK_BYTES {
            self.advise_dontneed(self.dropped_to, settled - self.dropped_to);
            self.dropped_to = settled;
        }
    }

    /// The data file's length now, `None` without a file (or when `fstat` fails, which it
    /// does not on an open descriptor in practice).
    fn len(&self) -> Option<u64> {
        self.file.as_ref()?.metadata().ok().map(|m| m.len())
    }

    fn advise_dontneed(&self, offset: u64, len: u64) {
        let Some(file) = &self.file else { return };
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return;
        };
        // SAFETY: `posix_fadvise` only reads its arguments; the descriptor is open for as
        // long as `file` lives. It changes what the kernel caches, never the file's contents.
        let rc = unsafe {
            libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED)
        };
        if rc != 0 {
            // Advice only: a file system that refuses it keeps its pages cached, as before.
            tracing::debug!(rc, "posix_fadvise(DONTNEED) refused");
        }
    }
}

/// For each page of the file at `path`, whether the page cache holds it (`mincore` over a
/// read-only mapping that reads nothing). For tests and diagnostics: what [`DropBehind`] let
/// go of, and what it kept.
///
/// # Errors
/// When the file cannot be opened, mapped or examined.
pub fn resident_pages(path: &Path) -> std::io::Result<Vec<bool>> {
    let file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let pages = len.div_ceil(page_bytes());
    // SAFETY: a read-only shared mapping of an open file, unmapped before returning; `mincore`
    // only reports residency and reads nothing through the mapping.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mut vec = vec![0u8; pages];
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        let err = std::io::Error::last_os_error();
        libc::munmap(addr, len);
        if rc != 0 {
            return Err(err);
        }
        Ok(vec.iter().map(|b| b & 1 == 1).collect())
    }
}

/// The system's page size in bytes (what `mincore` counts in).
pub fn page_bytes() -> usize {
    // SAFETY: sysconf only reads a system constant.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}
