//! Crash safety of the log store under SIGKILL.
//!
//! Goal: whatever moment the process dies, the reopened log is contiguous with no torn entry,
//! every append the store acknowledged as durable is there, and the vote, the committed id and
//! the purge pointer never go backwards. The committed id is advisory and rides in the next
//! write (see `LogStore::save_committed`): the one that must survive is the newest saved
//! before a write that was then acknowledged. Appends are acknowledged from the log journal,
//! usually before LMDB holds them, so most reopens replay the journal.
//! Method: this test binary re-executes itself (`--exact <this test>`) with
//! `HASEQ_CRASH_CHILD_DIR` set; the child appends batches of entries (some large, spanning
//! many pages), raises its vote, saves committed ids and now and then purges, printing each
//! acknowledged durable value on stdout. The parent SIGKILLs it after a random delay, reopens
//! the store, checks the invariants against everything the child acknowledged, and repeats
//! [`ROUNDS`] times. Seeded from `HASEQ_TEST_SEED` (or a drawn seed), printed first.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use haseq_messages::{Block, BlockHash, Command as RaftCommand, Height, NodeId, TC};
use haseq_storage::{LogStore, StoreOptions};
use openraft::LogId;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::vote::leader_id_std::CommittedLeaderId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// This test's name, for the child's `--exact` filter.
const TEST_NAME: &str = "sigkill_never_loses_acknowledged_writes";
/// Set in the child: the store directory.
const CHILD_DIR_ENV: &str = "HASEQ_CRASH_CHILD_DIR";
/// Set in the child: its RNG seed.
const CHILD_SEED_ENV: &str = "HASEQ_CRASH_CHILD_SEED";
/// How many kill-and-reopen rounds.
const ROUNDS: usize = 30;
/// How many rounds must have seen at least one acknowledged append.
const ROUNDS_WITH_PROGRESS_MIN: usize = 3;
/// The longest a child may take to open the store and say so.
const CHILD_READY_MAX: Duration = Duration::from_secs(30);
/// The longest the parent lets a child run before killing it.
const KILL_AFTER_MAX_MS: u64 = 200;
/// The longest the parent waits for a killed child's output to end.
const DRAIN_MAX: Duration = Duration::from_secs(10);
/// A child stops by itself after this, should its parent be gone.
const CHILD_RUN_MAX: Duration = Duration::from_secs(60);
/// The whole test's deadline.
const TEST_MAX: Duration = Duration::from_secs(300);
/// Largest entry payload the child writes (several LMDB pages, so a torn write is possible).
const PAYLOAD_BYTES_MAX: usize = 48 * 1024;
/// Largest append batch.
const BATCH_ENTRIES_MAX: u64 = 16;

fn opts() -> StoreOptions {
    StoreOptions {
        map_size_bytes: 1 << 30,
        ..StoreOptions::default()
    }
}

fn log_id(term: u64, index: u64) -> LogIdOf<TC> {
    LogId::new(CommittedLeaderId::new(term), index)
}

#[test]
fn sigkill_never_loses_acknowledged_writes() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        child(Path::new(&dir));
        return;
    }
    parent();
}

// ---- child -------------------------------------------------------------------------------

/// Marks the child's own lines: the test harness writes to the same stdout, even on the same
/// line (`test <name> ... `).
const MARK: &str = "@@ ";

/// Prints one acknowledged fact and flushes, so the parent sees it even if we die next.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe means the parent is gone; nothing useful to do about it.
    let _ = writeln!(out, "{MARK}{line}");
    let _ = out.flush();
}

fn child(dir: &Path) {
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut rng = StdRng::seed_from_u64(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = haseq_storage::open(dir, opts()).expect("child: open store");
        let mut log = store.log;
        let state = log.get_log_state().await.expect("child: log state");
        let mut next = state.last_log_id.map_or(1, |id| id.index + 1);
        let mut term = log
            .vote()
            .expect("child: read vote")
            .map_or(0, |v| v.leader_id().term);
        let mut purged = state.last_purged_log_id.map_or(0, |id| id.index);
        say(&format!("READY {next}"));

        let started = Instant::now();
        let mut round = 0u64;
        // A committed id saved but not yet carried by an acknowledged write.
        let mut riding: Option<u64> = None;
        let carried = |riding: &mut Option<u64>| {
            if let Some(c) = riding.take() {
                say(&format!("COMMITTED {c}"));
            }
        };
        while started.elapsed() < CHILD_RUN_MAX {
            if round.is_multiple_of(4) {
                term += 1;
                let vote = VoteOf::<TC>::new(term, NodeId::from(1u64));
                log.save_vote(&vote).await.expect("child: save vote");
                say(&format!("VOTE {term}"));
                carried(&mut riding);
            }
            let n = rng.random_range(1..=BATCH_ENTRIES_MAX);
            let entries: Vec<EntryOf<TC>> =
                (next..next + n).map(|i| entry(&mut rng, term, i)).collect();
            let (tx, rx) = TC::oneshot();
            log.append(entries, IOFlushed::signal(tx))
                .await
                .expect("child: append");
            rx.await
                .expect("child: callback dropped")
                .expect("child: append not durable");
            next += n;
            say(&format!("DURABLE {}", next - 1));
            carried(&mut riding);

            let committed = next - 1 - rng.random_range(0..n);
            log.save_committed(Some(log_id(term, committed)))
                .await
                .expect("child: save committed");
            riding = Some(committed);

            if rng.random_ratio(1, 8) && committed > purged + 10 {
                let upto = committed - 5;
                let id = entry_id(&log, upto);
                log.purge(id).await.expect("child: purge");
                purged = upto;
                say(&format!("PURGED {upto}"));
                carried(&mut riding);
            }
            round += 1;
        }
    });
}

fn entry(rng: &mut StdRng, term: u64, index: u64) -> EntryOf<TC> {
    let id = log_id(term, index);
    if rng.random_ratio(1, 5) {
        return EntryOf::<TC>::new_blank(id);
    }
    let len = rng.random_range(0..=PAYLOAD_BYTES_MAX);
    let fill = (index % 251) as u8;
    let b = Block {
        height: Height(index),
        parent_hash: BlockHash([fill; 32]),
        hash: BlockHash([fill.wrapping_add(1); 32]),
        timestamp: index,
        proposer: NodeId::from(1u64),
        payload: vec![fill; len].into(),
    };
    EntryOf::<TC>::new_normal(id, RaftCommand::Block(b))
}

/// The stored log id at `index` (entries keep the term they were written with).
fn entry_id(log: &LogStore, index: u64) -> LogIdOf<TC> {
    let e = log.entries(index..=index).expect("child: read entry");
    e.first()
        .map(|e| e.log_id())
        .expect("child: entry to purge is present")
}

// ---- parent ------------------------------------------------------------------------------

/// Kills and reaps the child however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the children acknowledged so far, and what the store showed at the last reopen.
#[derive(Default, Debug)]
struct Acked {
    durable: u64,
    vote_term: u64,
    committed: u64,
    purged: u64,
}

impl Acked {
    fn record(&mut self, line: &str) {
        let Some((_, fact)) = line.split_once(MARK) else {
            return; // test harness chatter
        };
        let mut parts = fact.split_whitespace();
        let (Some(kind), Some(value)) = (
            parts.next(),
            parts.next().and_then(|v| v.parse::<u64>().ok()),
        ) else {
            return;
        };
        let slot = match kind {
            "DURABLE" => &mut self.durable,
            "VOTE" => &mut self.vote_term,
            "COMMITTED" => &mut self.committed,
            "PURGED" => &mut self.purged,
            _ => return,
        };
        *slot = (*slot).max(value);
    }
}

/// Forwards the child's stdout lines; the channel closes at EOF (the child is dead).
fn read_lines(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn parent() {
    let seed = std::env::var("HASEQ_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("HASEQ_TEST_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + TEST_MAX;
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current exe");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut acked = Acked::default();
    let mut seen = Acked::default();
    let mut rounds_with_progress = 0;
    for round in 0..ROUNDS {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: test deadline passed at round {round}"
        );
        let child = Command::new(&exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_SEED_ENV, rng.random::<u64>().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let mut guard = ChildGuard(child);
        let lines = read_lines(&mut guard.0);

        // Phase 1: wait for the child to have opened the store.
        let ready_by = Instant::now() + CHILD_READY_MAX;
        loop {
            let left = ready_by.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) if l.contains(&format!("{MARK}READY")) => break,
                Ok(_) => {}
                Err(e) => panic!("seed {seed} round {round}: child not ready: {e:?}"),
            }
        }

        // Phase 2: let it write for a random while, collecting what it acknowledges.
        let before = acked.durable;
        let kill_after = Duration::from_millis(rng.random_range(0..=KILL_AFTER_MAX_MS));
        let kill_at = Instant::now() + kill_after;
        loop {
            let left = kill_at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match lines.recv_timeout(left) {
                Ok(l) => acked.record(&l),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("seed {seed} round {round}: child exited early")
                }
            }
        }

        // Phase 3: SIGKILL, then take every line it printed before dying.
        let _ = guard.0.kill();
        let _ = guard.0.wait();
        let drain_by = Instant::now() + DRAIN_MAX;
        loop {
            let left = drain_by.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) => acked.record(&l),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("seed {seed} round {round}: child output did not end")
                }
            }
        }
        drop(guard);
        if acked.durable > before {
            rounds_with_progress += 1;
        }

        // Phase 4: reopen and check.
        let now = rt.block_on(check_store(dir.path(), &acked, &seen, seed, round));
        eprintln!(
            "round {round}: killed after {kill_after:?}; acked durable {} vote {} committed {} purged {}; \
             store last {} vote {} committed {} purged {}",
            acked.durable,
            acked.vote_term,
            acked.committed,
            acked.purged,
            now.durable,
            now.vote_term,
            now.committed,
            now.purged
        );
        seen = now;
    }
    // Not vacuous: some children got writes acknowledged before their kill (a slow disk makes
    // early kills land before the first fsync, so only a few rounds are required).
    assert!(
        rounds_with_progress >= ROUNDS_WITH_PROGRESS_MIN,
        "seed {seed}: only {rounds_with_progress} of {ROUNDS} rounds wrote anything before the kill"
    );
}

/// Reopens the store and checks it against what was acknowledged and what was seen before.
async fn check_store(dir: &Path, acked: &Acked, seen: &Acked, seed: u64, round: usize) -> Acked {
    let ctx = format!("seed {seed} round {round}");
    let mut store =
        haseq_storage::open(dir, opts()).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
    let state = store
        .log
        .get_log_state()
        .await
        .unwrap_or_else(|e| panic!("{ctx}: log state: {e}"));
    let last = state.last_log_id.map_or(0, |id| id.index);
    let purged = state.last_purged_log_id.map_or(0, |id| id.index);

    // Every entry decodes (no torn entry) and the log has no hole: `entries` refuses both.
    let entries = store
        .log
        .entries(..)
        .unwrap_or_else(|e| panic!("{ctx}: read log: {e}"));
    if let Some(first) = entries.first() {
        assert_eq!(
            first.index(),
            purged + 1,
            "{ctx}: log starts right after the purged id"
        );
        assert_eq!(
            entries.last().map(|e| e.index()),
            Some(last),
            "{ctx}: log ends at last_log_id"
        );
        assert_eq!(
            entries.len() as u64,
            last - purged,
            "{ctx}: log is contiguous"
        );
        for w in entries.windows(2) {
            assert!(w[0].log_id() < w[1].log_id(), "{ctx}: log ids increase");
        }
    } else {
        assert_eq!(last, purged, "{ctx}: empty log ends at the purged id");
    }

    let vote_term = store
        .log
        .vote()
        .unwrap_or_else(|e| panic!("{ctx}: vote: {e}"))
        .map_or(0, |v| v.leader_id().term);
    let committed = store
        .log
        .read_committed()
        .await
        .unwrap_or_else(|e| panic!("{ctx}: committed: {e}"))
        .map_or(0, |id| id.index);

    assert!(
        last >= acked.durable,
        "{ctx}: acknowledged index {} lost, log ends at {last}",
        acked.durable
    );
    assert!(
        vote_term >= acked.vote_term,
        "{ctx}: acknowledged vote {} lost, vote is {vote_term}",
        acked.vote_term
    );
    assert!(
        committed >= acked.committed,
        "{ctx}: acknowledged committed {} lost: {committed}",
        acked.committed
    );
    assert!(
        purged >= acked.purged,
        "{ctx}: acknowledged purge {} lost: {purged}",
        acked.purged
    );
    assert!(
        last >= seen.durable,
        "{ctx}: log went back from {} to {last}",
        seen.durable
    );
    assert!(
        vote_term >= seen.vote_term,
        "{ctx}: vote went back from {} to {vote_term}",
        seen.vote_term
    );
    assert!(
        committed >= seen.committed,
        "{ctx}: committed went back from {} to {committed}",
        seen.committed
    );
    assert!(
        purged >= seen.purged,
        "{ctx}: purge went back from {} to {purged}",
        seen.purged
    );
    Acked {
        durable: last,
        vote_term,
        committed,
        purged,
    }
}
