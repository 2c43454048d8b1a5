//! `DropBehind`: what the data file grew by is let go of from the page cache `LAG_COMMITS`
//! commits later, what was there at open and what is mapped stay (with the rest of its folio: the
//! kernel caches a file in folios that may span many pages). Residency is read with `mincore`.
//!
//! The files live under the build's target directory (`CARGO_TARGET_TMPDIR`), on the disk the
//! build uses: on a tmpfs, pages cannot be dropped at all.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use haseq_storage::lmdb::drop_behind::{
    DROP_CHUNK_BYTES, DropBehind, LAG_COMMITS, page_bytes, resident_pages,
};

const MIB: usize = 1 << 20;

/// For each page of `path`, whether it is in the page cache.
fn resident(path: &Path) -> Vec<bool> {
    resident_pages(path).expect("mincore")
}

/// A fresh `data.mdb` in a directory of its own, as LMDB names its data file.
fn data_file() -> (tempfile::TempDir, PathBuf, File) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().join("data.mdb");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("create");
    (dir, path, file)
}

/// Writes `len` bytes at the end of the file and flushes them, as a commit does.
fn grow(file: &File, len: usize, fill: u8) {
    let at = file.metadata().expect("stat").len();
    file.write_all_at(&vec![fill; len], at).expect("write");
    file.sync_data().expect("flush");
}

fn count(r: &[bool], from_byte: usize, to_byte: usize) -> usize {
    let page = page_bytes();
    r[from_byte / page..to_byte / page]
        .iter()
        .filter(|b| **b)
        .count()
}

#[test]
fn the_growth_of_a_commit_is_dropped_lag_commits_later_and_mapped_pages_stay() {
    const { assert!(LAG_COMMITS >= 2, "commit 2's growth is checked below") };
    const {
        assert!(
            DROP_CHUNK_BYTES <= MIB as u64,
            "each commit below grows by 1 MiB"
        )
    };
    let lag = LAG_COMMITS;
    let (dir, path, file) = data_file();
    let page = page_bytes();
    let pages_per_mib = MIB / page;
    // There before the drop-behind starts: never dropped.
    grow(&file, MIB, 0);
    let mut d = DropBehind::for_env_dir(dir.path());

    // Commit k grows the file by [k, k + 1) MiB, filled with k.
    for k in 1..=lag {
        grow(&file, MIB, k as u8);
        d.after_commit();
    }
    let r = resident(&path);
    assert_eq!(
        count(&r, MIB, (lag + 1) * MIB),
        lag * pages_per_mib,
        "nothing dropped within {lag} commits"
    );

    // A page of commit 2's growth read through a mapping, as LMDB reads its tree pages.
    let mapped_at = 2 * MIB + 5 * page;
    let offset = libc::off_t::try_from(mapped_at).expect("offset");
    // SAFETY: a read-only mapping of that one page of an open file, unmapped at the end; the
    // one read is inside it.
    let addr = unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset,
        );
        assert_ne!(addr, libc::MAP_FAILED, "mmap");
        assert_eq!(std::ptr::read_volatile(addr.cast::<u8>()), 2);
        addr
    };

    // The next commit: commit 1's growth goes.
    grow(&file, MIB, 0xa1);
    d.after_commit();
    let r = resident(&path);
    assert_eq!(
        count(&r, 0, MIB),
        pages_per_mib,
        "what was there at open stays"
    );
    assert_eq!(count(&r, MIB, 2 * MIB), 0, "commit 1's growth is dropped");
    assert_eq!(
        count(&r, 2 * MIB, (lag + 2) * MIB),
        lag * pages_per_mib,
        "the last {lag} commits' growth stays"
    );

    // And the next: commit 2's growth goes, but for what is mapped.
    grow(&file, MIB, 0xa2);
    d.after_commit();
    let r = resident(&path);
    assert!(r[mapped_at / page], "the mapped page stays");
    assert_eq!(
        count(&r, 3 * MIB, (lag + 3) * MIB),
        lag * pages_per_mib,
        "the last {lag} commits' growth stays"
    );
    // SAFETY: the mapping made above, not used after this.
    unsafe { libc::munmap(addr, page) };

    // The data is untouched: a dropped page reads back from the disk.
    let mut buf = vec![0u8; page];
    file.read_exact_at(&mut buf, (MIB + 3 * page) as u64)
        .expect("read");
    assert!(buf.iter().all(|b| *b == 1));
}

/// Growth in small steps (small blocks) is advised once it adds up to a chunk, in one call,
/// still `LAG_COMMITS` commits behind.
#[test]
fn small_growth_is_dropped_once_it_adds_up_to_a_chunk() {
    const STEP: usize = 64 * 1024;
    let chunk = usize::try_from(DROP_CHUNK_BYTES).expect("chunk");
    assert!(
        chunk >= 4 * STEP && chunk % STEP == 0,
        "a chunk is several steps"
    );
    let steps_per_chunk = chunk / STEP;
    let (dir, path, file) = data_file();
    grow(&file, STEP, 0);
    let mut d = DropBehind::for_env_dir(dir.path());
    let page = page_bytes();
    // Until the growth of LAG_COMMITS commits ago adds up to a chunk, nothing goes.
    for _ in 0..steps_per_chunk - 1 + LAG_COMMITS {
        grow(&file, STEP, 1);
        d.after_commit();
    }
    let r = resident(&path);
    assert_eq!(
        r.iter().filter(|b| **b).count(),
        r.len(),
        "nothing dropped before a chunk has settled"
    );
    // One commit more: the first chunk's growth has settled, and goes in one piece.
    grow(&file, STEP, 1);
    d.after_commit();
    let r = resident(&path);
    assert_eq!(
        count(&r, 0, STEP),
        STEP / page,
        "what was there at open stays"
    );
    assert_eq!(
        count(&r, STEP, STEP + chunk),
        0,
        "the settled chunk is dropped"
    );
    assert_eq!(
        count(&r, STEP + chunk, r.len() * page),
        LAG_COMMITS * STEP / page,
        "the last {LAG_COMMITS} commits' growth stays"
    );
}

#[test]
fn a_data_file_that_is_missing_makes_it_a_no_op() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let mut d = DropBehind::for_env_dir(dir.path());
    for _ in 0..5 {
        d.after_commit();
    }
    assert!(!dir.path().join("data.mdb").exists());
}
