//! The verifier: the thread that recomputes imported blocks' hashes when no other thread of
//! the machine wants the CPU (`SCHED_IDLE`).
//!
//! Why: hashing a large block's transactions into their trie root is an import's one CPU-heavy
//! step (about 0.5 ms for 100 KiB here), and a follower imports block N just as block N+1 is
//! being committed: the Raft path that commits it (receiving the entry, journalling it,
//! answering the leader) runs on the same cores. In the idle class the check takes only the
//! CPU that path leaves over, instead of delaying it; the engine stays a few blocks behind at
//! most (`exec_lag` 0-10 blocks at about 200 blocks/s of 100 KiB, 3 nodes on 2 cores).
//! Measured in `benches/NOTES.md` (2026-12-01, ninth session); nice 10 instead of the idle
//! class made no difference there.
//!
//! Never starved for long: a check the thread has not started within [`VERIFY_WAIT_MAX`] (a
//! machine with no idle CPU at all, a hog outside the node) is taken back and done on tokio's
//! blocking pool at normal priority, as before this thread existed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::payload::ExecPayload;

/// How long a check may wait for the verifier thread to start it before the caller does it.
pub(crate) const VERIFY_WAIT_MAX: Duration = Duration::from_millis(20);

/// A check handed to the thread: it runs only if nobody took it back first.
struct Job {
    p: ExecPayload,
    taken: Arc<AtomicBool>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the verifier thread; dropping it stops the thread once the jobs queued are done.
pub(crate) struct Verifier {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Verifier {
    /// Starts the thread. Without one (the system would not give it), every check runs on
    /// tokio's blocking pool at normal priority.
    pub(crate) fn start() -> Verifier {
        Verifier::start_with(idle_priority)
    }

    fn start_with(prepare: fn()) -> Verifier {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = thread::Builder::new()
            .name("haseq-engine-verify".into())
            .spawn(move || {
                prepare();
                while let Ok(job) = rx.recv() {
                    if !job.taken.swap(true, Ordering::AcqRel) {
                        let _ = job.done.send(job.p.verify_block_hash());
                    }
                }
            });
        match spawned {
            Ok(thread) => Verifier {
                tx: Some(tx),
                thread: Some(thread),
            },
            Err(e) => {
                tracing::warn!(error = %e, "no thread for the embedded engine's verifier; imports check on the blocking pool");
                Verifier {
                    tx: None,
                    thread: None,
                }
            }
        }
    }

    /// The verdict of [`ExecPayload::verify_block_hash`] on `p`: from the verifier thread,
    /// or, if it has not started the check within [`VERIFY_WAIT_MAX`] (or is gone), from the
    /// blocking pool. `Err` only if the blocking pool failed the check's task.
    pub(crate) async fn verify(
        &self,
        p: &ExecPayload,
    ) -> Result<Result<(), String>, tokio::task::JoinError> {
        let taken = Arc::new(AtomicBool::new(false));
        let (done_tx, mut done_rx) = oneshot::channel();
        let job = Job {
            // Cheap: the transactions are reference-counted bytes.
            p: p.clone(),
            taken: taken.clone(),
            done: done_tx,
        };
        if self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok()) {
            tokio::select! {
                res = &mut done_rx => if let Ok(verdict) = res { return Ok(verdict) },
                () = tokio::time::sleep(VERIFY_WAIT_MAX) => {
                    if taken.swap(true, Ordering::AcqRel) {
                        // Started meanwhile: its verdict comes.
                        if let Ok(verdict) = done_rx.await {
                            return Ok(verdict);
                        }
                    }
                }
            }
        }
        let p = p.clone();
        tokio::task::spawn_blocking(move || p.verify_block_hash()).await
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the embedded engine's verifier thread panicked");
        }
    }
}

/// Puts the calling thread in the idle scheduling class (Linux; elsewhere, or if refused, it
/// keeps the default priority).
fn idle_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: changes the calling thread's policy only (pid 0); `param` is a valid,
        // initialised struct that outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "verifier: idle class refused; normal priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::builder;

    fn payload(tx_bytes: usize) -> ExecPayload {
        builder::test_block(4, tx_bytes)
    }

    #[tokio::test]
    async fn the_thread_checks_and_a_forged_hash_fails() {
        let v = Verifier::start();
        let p = payload(1024);
        assert_eq!(v.verify(&p).await.expect("verdict"), Ok(()));
        let mut forged = p.clone();
        forged.payload.payload_inner.payload_inner.block_hash =
            alloy_primitives::B256::repeat_byte(7);
        let verdict = v.verify(&forged).await.expect("verdict");
        assert!(
            verdict.is_err_and(|e| e.contains("hash mismatch")),
            "forged block passed"
        );
    }

    #[tokio::test]
    async fn a_check_the_thread_does_not_start_in_time_is_done_by_the_caller() {
        // A thread that never gets to its queue: a machine with no idle CPU.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        static RELEASE: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>> =
            std::sync::Mutex::new(None);
        *RELEASE.lock().unwrap() = Some(release_rx);
        let v = Verifier::start_with(|| {
            let rx = RELEASE.lock().unwrap().take().expect("receiver");
            let _ = rx.recv();
        });
        let p = payload(1024);
        let started = std::time::Instant::now();
        assert_eq!(v.verify(&p).await.expect("verdict"), Ok(()));
        let took = started.elapsed();
        assert!(
            took >= VERIFY_WAIT_MAX,
            "answered before the wait: {took:?}"
        );
        let mut forged = p.clone();
        forged.payload.payload_inner.payload_inner.block_hash =
            alloy_primitives::B256::repeat_byte(7);
        assert!(v.verify(&forged).await.expect("verdict").is_err());
        // Released, the thread skips the checks taken back and the handle drops cleanly.
        release_tx.send(()).expect("release");
        drop(v);
    }
}
