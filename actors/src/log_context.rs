//! What every JSON log line of a node carries besides the event: this node's Raft term and
//! applied height, kept here as they change (RaftCore sets the term, ExecReplayer the height)
//! and read by the log formatter of `haseqd run`.

use std::sync::atomic::{AtomicU64, Ordering};

static TERM: AtomicU64 = AtomicU64::new(0);
static HEIGHT: AtomicU64 = AtomicU64::new(0);

/// RaftCore: the current term.
pub fn set_term(term: u64) {
    TERM.store(term, Ordering::Relaxed);
}

/// ExecReplayer: the applied head height.
pub fn set_height(height: u64) {
    HEIGHT.store(height, Ordering::Relaxed);
}

/// `(term, height)`, 0 for what is not known yet.
pub fn get() -> (u64, u64) {
    (TERM.load(Ordering::Relaxed), HEIGHT.load(Ordering::Relaxed))
}
