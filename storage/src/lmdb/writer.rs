//! The writer thread: the only place a write transaction of an environment is opened, written
//! and committed.
//!
//! Why a thread: LMDB's `write_txn()` waits on a mutex while another write transaction is open,
//! and `commit()` fsyncs; either can block for milliseconds. On a tokio worker that stalls every
//! task scheduled there, heartbeats included (a spurious election). LMDB also binds a
//! transaction to the thread that opened it, while heed's `RwTxn` is `Send`, so the compiler
//! would not stop a transaction from crossing an `.await`. So async code hands the writer a
//! closure and awaits a oneshot; the closure runs between `write_txn()` and `commit()` on this
//! thread, and its result is sent back only after the commit has returned (durable as the job
//! asked, see below).
//!
//! Durability is chosen per job ([`Durability`]): `Full` is LMDB's default commit (data pages
//! `fdatasync`, then the meta page written through LMDB's `O_DSYNC` descriptor), `DataOnly`
//! flushes the data pages but not the meta page (`MDB_NOMETASYNC`). Either way LMDB's integrity
//! holds: the environment after a power loss is the state after some committed transaction,
//! never a mix, and every transaction before the last full commit is in it. A process crash
//! loses nothing that was committed, whatever the durability (the meta page is written, only
//! not flushed).
//!
//! Group commit: the writer takes every job queued at once (up to the config's
//! `group_jobs_max`) into one transaction, each job in a nested transaction of its own (a job
//! that fails is rolled back alone, and its caller gets its error), and commits the group once,
//! at the strongest durability any of its jobs asked for. A group of jobs that nobody waits on
//! (`DataOnly` jobs handed over with a completion, [`Writer::submit`]) first gathers what
//! arrives within the config's `linger`, ending as soon as the group is full or a job comes
//! that somebody waits on (a `Full` one, or any [`Writer::write_with`]), so that these commits
//! cost few flushes. Every job's caller hears back only after the group's commit (or with the
//! commit's error).
//!
//! A batch ([`Writer::submit_batched`]): jobs queued one right behind the other that end with
//! the same kind of write (the embedded engine's blocks, each made the head) run in one nested
//! transaction of the group's, without one each, followed by the newest job's final write only;
//! they commit into the group, or fail, together.
//!
//! A deferred write ([`Writer::defer`]) is not a job of its own: it rides in the next group's
//! transaction, written last so that it carries the newest value saved before any job of the
//! group is told.
//!
//! After each commit the writer lets go of what the data file grew by two commits earlier
//! (see `drop_behind`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use heed::{EnvFlags, FlagSetMode, RwTxn};
use tokio::sync::{mpsc, oneshot};

use super::drop_behind::DropBehind;
use super::env::LmdbEnv;
use crate::error::StorageError;

/// How a writer thread runs: its name, its queue, its groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterConfig {
    /// The thread's name (at most 15 bytes show in `top` and the replay bench's per-thread
    /// times).
    pub thread_name: &'static str,
    /// How many jobs may wait for the writer before submitters wait in turn.
    pub queue_jobs_max: usize,
    /// Most jobs committed as one group.
    pub group_jobs_max: usize,
    /// How long a group of jobs nobody waits on gathers more before it commits (see the module
    /// doc); zero commits at once.
    pub linger: Duration,
}

/// How durable a job's commit is when its result is handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durability {
    /// Survives a process crash; a power loss may undo it (and only what came after the last
    /// `Full` commit), never corrupt anything: data pages flushed, meta page written but not
    /// flushed (`MDB_NOMETASYNC`).
    DataOnly,
    /// Survives a power loss: data and meta pages flushed (LMDB's default commit).
    Full,
}

/// What a job hands back once it has run: its durability, whether it lets its group linger,
/// the final write of its batch if it is in one, its error, and what to do with the group's
/// commit outcome.
struct Ran<C> {
    durability: Durability,
    lingers: bool,
    finish: Option<Finish<C>>,
    /// The job's error, when it failed (what fails the rest of its batch).
    error: Option<String>,
    completion: Completion,
}

/// A batch's final write (see [`Writer::submit_batched`]); `Err` carries the error's text.
type Finish<C> = (
    &'static str,
    Box<dyn FnOnce(&mut RwTxn<'_>, &C) -> Result<(), String> + Send + 'static>,
);

/// Told the group's commit outcome (`Err` carries the commit's error text).
type Completion = Box<dyn FnOnce(Result<(), String>) + Send + 'static>;

/// A write job: runs in a nested transaction of the group's (`None`: the group could not begin
/// one), then waits for the group's commit outcome.
struct Job<C> {
    /// Whether it is a job of a batch ([`Writer::submit_batched`]).
    batched: bool,
    /// Whether it lets its group linger (nobody waits on it).
    lingers: bool,
    run: RunJob<C>,
}

/// What runs a job: in the transaction it is given (`None`: the group could not begin one).
type RunJob<C> = Box<dyn FnOnce(&LmdbEnv, Option<&mut RwTxn<'_>>, &C) -> Ran<C> + Send + 'static>;

/// A write that rides in the next group's transaction.
type Deferred<C, E> = Box<dyn FnOnce(&mut RwTxn<'_>, &C) -> Result<(), E> + Send + 'static>;

/// The one pending deferred write: a newer one replaces it.
type DeferredSlot<C, E> = Arc<Mutex<Option<(&'static str, Deferred<C, E>)>>>;

/// Handle to a writer thread. `C` is what every job is handed besides its transaction (the
/// environment's databases, made on the thread at start), `E` the error jobs return.
/// Dropping the handle closes the queue and joins the thread (queued jobs still run), so the
/// environment is closed once every reader is gone too.
pub struct Writer<C, E = StorageError> {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Job<C>>>,
    /// `None` only while dropping.
    thread: Option<JoinHandle<()>>,
    deferred: DeferredSlot<C, E>,
    /// Ends the writer's linger early.
    wake: Arc<Wake>,
    name: &'static str,
}

/// Wakes a lingering writer once what it waits for is queued: a job somebody waits on, or
/// enough jobs to fill its group (or the writer is closing). Without it the writer woke at
/// every job queued during its linger, a wake-up and a context switch per job (the replay
/// bench, 20,000 blocks, a quiet machine, alternating runs: the engine's writer 15.4 us of CPU
/// a block against 11.1 with this, 21,700 against 23,900 blocks/s), or else slept out the
/// linger with a full group queued.
#[derive(Debug)]
struct Wake {
    /// Held by the writer from its check of the queue until it waits, and by a sender to
    /// notify, so a notification never falls between the two.
    lock: Mutex<()>,
    cv: Condvar,
    /// How many queued jobs fill the group the writer lingers on; `usize::MAX` when it does
    /// not linger.
    fill: AtomicUsize,
    /// How many jobs somebody waits on have been queued, ever.
    awaited_sent: AtomicU64,
}

impl Default for Wake {
    fn default() -> Self {
        Wake {
            lock: Mutex::new(()),
            cv: Condvar::new(),
            fill: AtomicUsize::new(usize::MAX),
            awaited_sent: AtomicU64::new(0),
        }
    }
}

impl Wake {
    /// After a job was queued (`queued` jobs now): wakes the writer if it waits for this.
    fn sent(&self, lingers: bool, queued: usize) {
        if !lingers {
            self.awaited_sent.fetch_add(1, Ordering::SeqCst);
        } else if queued < self.fill.load(Ordering::SeqCst) {
            return;
        }
        self.notify();
    }

    fn notify(&self) {
        let _held = lock(&self.lock);
        self.cv.notify_one();
    }
}

/// The writer thread's end of the queue: counts the jobs somebody waits on as it takes them,
/// to tell when one is queued (see [`Wake`]).
struct Queue<C> {
    rx: mpsc::Receiver<Job<C>>,
    wake: Arc<Wake>,
    awaited_taken: u64,
}

impl<C> Queue<C> {
    fn took(&mut self, job: Job<C>) -> Job<C> {
        if !job.lingers {
            self.awaited_taken += 1;
        }
        job
    }

    fn recv_blocking(&mut self) -> Option<Job<C>> {
        let job = self.rx.blocking_recv()?;
        Some(self.took(job))
    }

    fn try_recv(&mut self) -> Option<Job<C>> {
        let job = self.rx.try_recv().ok()?;
        Some(self.took(job))
    }

    /// Waits until `fill` jobs are queued, a job somebody waits on is, the queue is closed,
    /// or `deadline`.
    fn wait(&self, fill: usize, deadline: Instant) {
        let wake = &*self.wake;
        let mut held = lock(&wake.lock);
        wake.fill.store(fill, Ordering::SeqCst);
        loop {
            if self.rx.len() >= fill
                || wake.awaited_sent.load(Ordering::SeqCst) > self.awaited_taken
                || self.rx.is_closed()
            {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            held = wake
                .cv
                .wait_timeout(held, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        wake.fill.store(usize::MAX, Ordering::SeqCst);
    }
}

impl<C, E> std::fmt::Debug for Writer<C, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("thread", &self.name)
            .finish()
    }
}

impl<C, E> Writer<C, E>
where
    C: Clone + Send + 'static,
    E: From<StorageError> + std::fmt::Display + Send + 'static,
{
    /// Starts the writer thread on `env`, which first runs `init` (creating the databases, as
    /// a rule) and hands its result to every job. Blocks the calling thread until `init` is
    /// done (start-up only).
    ///
    /// # Errors
    /// `init`'s error, or a thread that could not be spawned.
    pub fn start<I>(env: LmdbEnv, config: WriterConfig, init: I) -> Result<(Self, C), E>
    where
        I: FnOnce(&LmdbEnv) -> Result<C, E> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Job<C>>(config.queue_jobs_max);
        let (init_tx, init_rx) = std::sync::mpsc::sync_channel::<Result<C, E>>(1);
        let deferred: DeferredSlot<C, E> = Arc::default();
        let slot = deferred.clone();
        let wake: Arc<Wake> = Arc::default();
        let queue = Queue {
            rx,
            wake: wake.clone(),
            awaited_taken: 0,
        };
        let thread = thread::Builder::new()
            .name(config.thread_name.into())
            .spawn(move || {
                let ctx = match init(&env) {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        let _ = init_tx.send(Err(e));
                        return;
                    }
                };
                if init_tx.send(Ok(ctx.clone())).is_err() {
                    return;
                }
                run_writer(&env, &ctx, &slot, &config, queue);
                tracing::debug!(path = %env.path().display(), thread = config.thread_name, "LMDB writer stopped");
            })
            .map_err(|e| E::from(StorageError::io("spawn writer thread", config.thread_name)(e)))?;
        let ctx = match init_rx.recv() {
            Ok(res) => res?,
            Err(_) => return Err(E::from(StorageError::WriterStopped)),
        };
        Ok((
            Writer {
                tx: Some(tx),
                thread: Some(thread),
                deferred,
                wake,
                name: config.thread_name,
            },
            ctx,
        ))
    }

    /// [`Writer::write_with`] at [`Durability::Full`].
    ///
    /// # Errors
    /// As [`Writer::write_with`].
    pub async fn write<R, F>(&self, op: &'static str, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut RwTxn<'_>, &C) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
    {
        self.write_with(op, Durability::Full, f).await
    }

    /// Has `f` written in the next group's transaction, without a job of its own. A later
    /// `defer` replaces a pending one (for records where only the newest value matters). If
    /// that write fails, it is dropped (logged), and the group goes on.
    pub fn defer<F>(&self, op: &'static str, f: F)
    where
        F: FnOnce(&mut RwTxn<'_>, &C) -> Result<(), E> + Send + 'static,
    {
        *lock(&self.deferred) = Some((op, Box::new(f)));
    }

    /// Queues `f` to run inside a write transaction on the writer thread, committed at
    /// `durability` (or stronger, with its group), and returns once it is queued (waiting only
    /// for room in the queue); `done` is then called on the writer thread with `f`'s result
    /// after the commit, or with the error that stopped it. Jobs run in the order they were
    /// queued. A `DataOnly` job handed over this way lets its group linger (nobody waits on it).
    ///
    /// For the Raft log: openraft wants `append` to return without waiting for the disk and
    /// to be told separately when the entries are durable, so the leader's flush overlaps
    /// replication instead of preceding it.
    ///
    /// # Errors
    /// When the writer has stopped.
    pub async fn submit<R, F, D>(
        &self,
        op: &'static str,
        durability: Durability,
        f: F,
        done: D,
    ) -> Result<(), E>
    where
        F: FnOnce(&mut RwTxn<'_>, &C) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        D: FnOnce(Result<R, E>) + Send + 'static,
    {
        let lingers = durability == Durability::DataOnly;
        self.send(job(op, durability, lingers, f, None, done)).await
    }

    /// [`Writer::submit`] for a job of a batch: `finish` is the batch's final write. Jobs
    /// submitted this way one right behind the other, in one group, run in one nested
    /// transaction (not one each: a nested transaction per job is a cost at thousands of jobs
    /// a second), followed by the newest job's `finish` only, once (so it sees what they wrote
    /// and comes before what follows). If a job or that write fails, the batch is rolled back
    /// whole and each of its jobs hears the error; the rest of the group goes on.
    ///
    /// For the embedded engine's blocks imported as the head: each is written by its own job,
    /// the fork choice once per batch, to the newest.
    ///
    /// # Errors
    /// When the writer has stopped.
    pub async fn submit_batched<R, F, G, D>(
        &self,
        op: &'static str,
        durability: Durability,
        f: F,
        finish: G,
        done: D,
    ) -> Result<(), E>
    where
        F: FnOnce(&mut RwTxn<'_>, &C) -> Result<R, E> + Send + 'static,
        G: FnOnce(&mut RwTxn<'_>, &C) -> Result<(), E> + Send + 'static,
        R: Send + 'static,
        D: FnOnce(Result<R, E>) + Send + 'static,
    {
        let lingers = durability == Durability::DataOnly;
        let finish: Finish<C> = (
            op,
            Box::new(move |wtxn: &mut RwTxn<'_>, ctx: &C| {
                finish(wtxn, ctx).map_err(|e| e.to_string())
            }),
        );
        self.send(job(op, durability, lingers, f, Some(finish), done))
            .await
    }

    /// [`Writer::submit`] from a plain thread (the log journal's): waits for room in the queue
    /// by blocking. Never call it on an async task.
    ///
    /// # Errors
    /// When the writer has stopped.
    pub fn submit_blocking<R, F, D>(
        &self,
        op: &'static str,
        durability: Durability,
        f: F,
        done: D,
    ) -> Result<(), E>
    where
        F: FnOnce(&mut RwTxn<'_>, &C) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        D: FnOnce(Result<R, E>) + Send + 'static,
    {
        let lingers = durability == Durability::DataOnly;
        self.send_blocking(job(op, durability, lingers, f, None, done))
    }

    /// [`Writer::write_with`] from a plain thread: blocks until the commit is done. Never call
    /// it on an async task.
    ///
    /// # Errors
    /// As [`Writer::write_with`].
    pub fn write_blocking<R, F>(
        &self,
        op: &'static str,
        durability: Durability,
        f: F,
    ) -> Result<R, E>
    where
        F: FnOnce(&mut RwTxn<'_>, &C) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
    {
        let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
        // Awaited: the caller blocks on it, so it ends its group's linger.
        self.send_blocking(job(op, durability, false, f, None, move |res| {
            let _ = reply_tx.send(res);
        }))?;
        reply_rx
            .recv()
            .map_err(|_| E::from(StorageError::WriterStopped))?
    }

    /// Runs `f` inside a write transaction on the writer thread, committed at `durability` (or
    /// stronger, with its group); returns `f`'s result once the commit (and its flushes) is
    /// done. If `f` fails, nothing of it is written. The caller waits on it, so it ends its
    /// group's linger.
    ///
    /// Cancel-safety: if the returned future is dropped after the job was queued, the job still
    /// runs and commits; only its result is lost.
    ///
    /// # Errors
    /// `f`'s error, the commit's, or the writer having stopped.
    pub async fn write_with<R, F>(
        &self,
        op: &'static str,
        durability: Durability,
        f: F,
    ) -> Result<R, E>
    where
        F: FnOnce(&mut RwTxn<'_>, &C) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.send(job(op, durability, false, f, None, move |res| {
            // The submitter may have gone away (cancelled); the write stands regardless.
            let _ = reply_tx.send(res);
        }))
        .await?;
        reply_rx
            .await
            .map_err(|_| E::from(StorageError::WriterStopped))?
    }

    async fn send(&self, job: Job<C>) -> Result<(), E> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| E::from(StorageError::WriterStopped))?;
        let lingers = job.lingers;
        tx.send(job)
            .await
            .map_err(|_| E::from(StorageError::WriterStopped))?;
        self.wake.sent(lingers, tx.max_capacity() - tx.capacity());
        Ok(())
    }

    fn send_blocking(&self, job: Job<C>) -> Result<(), E> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| E::from(StorageError::WriterStopped))?;
        let lingers = job.lingers;
        tx.blocking_send(job)
            .map_err(|_| E::from(StorageError::WriterStopped))?;
        self.wake.sent(lingers, tx.max_capacity() - tx.capacity());
        Ok(())
    }
}

/// The job that runs `f` in its nested transaction (a batched job: in its batch's, see
/// `run_batch`) and tells `done` after the group's commit.
fn job<C, E, R, F, D>(
    op: &'static str,
    durability: Durability,
    lingers: bool,
    f: F,
    finish: Option<Finish<C>>,
    done: D,
) -> Job<C>
where
    C: 'static,
    E: From<StorageError> + std::fmt::Display + Send + 'static,
    F: FnOnce(&mut RwTxn<'_>, &C) -> Result<R, E> + Send + 'static,
    R: Send + 'static,
    D: FnOnce(Result<R, E>) + Send + 'static,
{
    let batched = finish.is_some();
    let run = Box::new(
        move |env: &LmdbEnv, group: Option<&mut RwTxn<'_>>, ctx: &C| {
            let res = match group {
                // The batch's transaction is rolled back whole if this fails.
                Some(batch) if batched => f(batch, ctx).map(Some),
                Some(group) => run_nested(env, group, ctx, op, f).map(Some),
                // Nothing ran: the completion gets the group's error.
                None => Ok(None),
            };
            let error = res.as_ref().err().map(|e| format!("{op}: {e}"));
            let completion: Completion = match res {
                Ok(out) => Box::new(move |committed: Result<(), String>| {
                    let res = match (committed, out) {
                        (Ok(()), Some(out)) => Ok(out),
                        (Err(detail), _) => Err(E::from(StorageError::Commit { op, detail })),
                        (Ok(()), None) => Err(E::from(StorageError::Commit {
                            op,
                            detail: "no transaction to run in".into(),
                        })),
                    };
                    done(res);
                }),
                Err(e) => Box::new(move |_| done(Err(e))),
            };
            Ran {
                durability,
                lingers,
                finish,
                error,
                completion,
            }
        },
    );
    Job {
        batched,
        lingers,
        run,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The slot holds an Option: a panic while it was held leaves it consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer thread's loop: groups of queued jobs, one commit each, until every sender is
/// gone; queued jobs still run after the last sender drops, so nothing handed to the writer is
/// silently skipped.
fn run_writer<C, E: std::fmt::Display>(
    env: &LmdbEnv,
    ctx: &C,
    slot: &DeferredSlot<C, E>,
    config: &WriterConfig,
    mut queue: Queue<C>,
) {
    // What is written is seldom read again soon, or read from memory while recent (see
    // `drop_behind`).
    let mut drop_behind = DropBehind::for_env_dir(env.path());
    while let Some(first) = queue.recv_blocking() {
        let mut group = vec![first];
        while group.len() < config.group_jobs_max {
            match queue.try_recv() {
                Some(job) => group.push(job),
                None => break,
            }
        }
        commit_group(env, ctx, slot, config, &mut queue, group);
        drop_behind.after_commit();
    }
}

/// Where a group's jobs come from: first those taken at once, then, while nobody waits on the
/// group, whatever arrives within the linger, then whatever is queued by then; never more than
/// the config's `group_jobs_max`.
struct Feed<'r, C> {
    taken_at_once: std::vec::IntoIter<Job<C>>,
    queue: &'r mut Queue<C>,
    config: &'r WriterConfig,
    phase: Phase,
    taken: usize,
}

/// How far a [`Feed`] has got.
enum Phase {
    /// Handing out the jobs taken at once.
    AtOnce,
    /// Waiting for more, until the deadline or a job somebody waits on.
    Linger(Instant),
    /// Taking what is queued, without waiting.
    Drain,
    /// Nothing more for this group.
    Done,
}

impl<C> Feed<'_, C> {
    /// The group's next job; `lingering`: nobody waits on the group so far.
    fn next(&mut self, lingering: bool) -> Option<Job<C>> {
        if let Some(job) = self.taken_at_once.next() {
            self.taken += 1;
            return Some(job);
        }
        if self.taken >= self.config.group_jobs_max {
            return None;
        }
        loop {
            match self.phase {
                Phase::AtOnce if lingering && !self.config.linger.is_zero() => {
                    self.phase = Phase::Linger(Instant::now() + self.config.linger);
                }
                // Somebody waits on the group already: it commits now.
                Phase::AtOnce => self.phase = Phase::Done,
                Phase::Linger(_) if !lingering => self.phase = Phase::Drain,
                Phase::Linger(deadline) => {
                    // Queued jobs first; the wait is for what fills the group.
                    let next = self.queue.try_recv().or_else(|| {
                        let fill = self.config.group_jobs_max - self.taken;
                        self.queue.wait(fill, deadline);
                        self.queue.try_recv()
                    });
                    match next {
                        Some(job) => {
                            self.taken += 1;
                            return Some(job);
                        }
                        None => self.phase = Phase::Drain,
                    }
                }
                Phase::Drain => match self.queue.try_recv() {
                    Some(job) => {
                        self.taken += 1;
                        return Some(job);
                    }
                    None => self.phase = Phase::Done,
                },
                Phase::Done => return None,
            }
        }
    }
}

/// What a group has gathered so far: the strongest durability asked for, whether nobody waits
/// on it, and the completions to tell, in queue order.
struct Gathered {
    durability: Durability,
    lingers: bool,
    completions: Vec<Completion>,
}

impl Gathered {
    fn add<C>(&mut self, ran: &Ran<C>) {
        self.durability = self.durability.max(ran.durability);
        self.lingers &= ran.lingers;
    }
}

/// Runs `group` (and, for a group nobody waits on, whatever arrives within the linger) in one
/// transaction and commits it once; then tells every job the outcome.
fn commit_group<C, E: std::fmt::Display>(
    env: &LmdbEnv,
    ctx: &C,
    slot: &DeferredSlot<C, E>,
    config: &WriterConfig,
    queue: &mut Queue<C>,
    group: Vec<Job<C>>,
) {
    let mut wtxn = match env.write_txn() {
        Ok(t) => t,
        Err(e) => {
            // Nothing can be written: every job hears so through its completion.
            let detail = format!("LMDB begin write: {e}");
            for job in group {
                ((job.run)(env, None, ctx).completion)(Err(detail.clone()));
            }
            return;
        }
    };
    let mut gathered = Gathered {
        durability: Durability::DataOnly,
        lingers: true,
        completions: Vec::with_capacity(group.len()),
    };
    let mut feed = Feed {
        taken_at_once: group.into_iter(),
        queue,
        config,
        phase: Phase::AtOnce,
        taken: 0,
    };
    // Only jobs nobody waits on so far (applies, imported blocks, as a rule): the feed gives
    // the next job a moment to come and carry them in its commit.
    let mut next = feed.next(true);
    while let Some(job) = next.take() {
        if job.batched {
            next = run_batch(env, &mut wtxn, ctx, job, &mut feed, &mut gathered);
        } else {
            let ran = (job.run)(env, Some(&mut wtxn), ctx);
            gathered.add(&ran);
            gathered.completions.push(ran.completion);
            next = feed.next(gathered.lingers);
        }
    }
    // Last, so that it carries the newest value saved before any job of the group is told.
    if let Some((op, write)) = lock(slot).take() {
        let res = env
            .nested_write_txn(&mut wtxn)
            .map_err(|e| e.to_string())
            .and_then(|mut child| {
                write(&mut child, ctx).map_err(|e| e.to_string())?;
                child.commit().map_err(|e| e.to_string())
            });
        if let Err(e) = res {
            // Advisory data: its loss must not fail the jobs it rode with.
            tracing::warn!(op, error = %e, "deferred write failed; dropped");
        }
    }
    // A failed commit is reported to every caller as is: never retried quietly, never
    // reported done (the storage's callers hand it to openraft, which stops the node).
    let committed =
        commit_at(env, wtxn, gathered.durability).map_err(|e| format!("LMDB commit: {e}"));
    for c in gathered.completions {
        c(committed.clone());
    }
}

/// Runs a batch, `first` and the batched jobs the feed has right behind it, in one nested
/// transaction of `group`, then the newest job's final write: committed into the group
/// together, or, if a job or the final write fails, rolled back together (every job of the
/// batch then hears the error). Returns the job that ended the batch, if one did.
fn run_batch<C>(
    env: &LmdbEnv,
    group: &mut RwTxn<'_>,
    ctx: &C,
    first: Job<C>,
    feed: &mut Feed<'_, C>,
    gathered: &mut Gathered,
) -> Option<Job<C>> {
    let (mut batch, mut failed) = match env.nested_write_txn(group) {
        Ok(child) => (Some(child), None),
        Err(e) => (None, Some(format!("LMDB begin a batch: {e}"))),
    };
    let mut finish: Option<Finish<C>> = None;
    let mut completions = Vec::new();
    let mut next = Some(first);
    let after = loop {
        let Some(job) = next.take() else { break None };
        if !job.batched {
            break Some(job);
        }
        // After a failure the rest do not run (their completion gets the batch's error).
        let txn = if failed.is_none() {
            batch.as_mut()
        } else {
            None
        };
        let ran = (job.run)(env, txn, ctx);
        gathered.add(&ran);
        if let Some(e) = &ran.error {
            failed.get_or_insert_with(|| e.clone());
        }
        // The newest final write covers the ones before it.
        if ran.finish.is_some() {
            finish = ran.finish;
        }
        completions.push(ran.completion);
        next = feed.next(gathered.lingers);
    };
    if let (None, Some(txn), Some((op, write))) = (&failed, batch.as_mut(), finish)
        && let Err(e) = write(txn, ctx)
    {
        failed = Some(format!("{op}: {e}"));
    }
    if let (None, Some(txn)) = (&failed, batch)
        && let Err(e) = txn.commit()
    {
        failed = Some(format!("LMDB commit a batch: {e}"));
    }
    // (A batch not committed was aborted when it was dropped.)
    for c in completions {
        match &failed {
            None => gathered.completions.push(c),
            Some(detail) => {
                tracing::error!(error = %detail, "a batch of writes failed; none of it is written");
                let detail = detail.clone();
                gathered.completions.push(Box::new(move |_| c(Err(detail))));
            }
        }
    }
    after
}

/// Runs `f` in a nested transaction of `group`: committed into the group if `f` succeeds,
/// rolled back alone if it fails.
fn run_nested<C, E, R, F>(
    env: &LmdbEnv,
    group: &mut RwTxn<'_>,
    ctx: &C,
    op: &'static str,
    f: F,
) -> Result<R, E>
where
    E: From<StorageError>,
    F: FnOnce(&mut RwTxn<'_>, &C) -> Result<R, E>,
{
    let mut child = env
        .nested_write_txn(group)
        .map_err(|e| E::from(StorageError::lmdb(op)(e)))?;
    match f(&mut child, ctx) {
        Ok(out) => {
            child
                .commit()
                .map_err(|e| E::from(StorageError::lmdb(op)(e)))?;
            Ok(out)
        }
        Err(e) => {
            child.abort();
            Err(e)
        }
    }
}

/// Commits `wtxn` at `durability`.
fn commit_at(env: &LmdbEnv, wtxn: RwTxn<'_>, durability: Durability) -> Result<(), heed::Error> {
    match durability {
        Durability::Full => wtxn.commit(),
        Durability::DataOnly => {
            // SAFETY: LMDB requires that one thread at a time changes the flags; only this
            // (writer) thread ever does, around its own commits. `MDB_NOMETASYNC` is one of
            // the flags LMDB allows to change at run time; it keeps the database's integrity
            // (see the module doc) and is read by the commit alone.
            unsafe { env.set_flags(EnvFlags::NO_META_SYNC, FlagSetMode::Enable)? };
            let res = wtxn.commit();
            // SAFETY: as above.
            let reset = unsafe { env.set_flags(EnvFlags::NO_META_SYNC, FlagSetMode::Disable) };
            res.and(reset)
        }
    }
}

impl<C, E> Drop for Writer<C, E> {
    fn drop(&mut self) {
        drop(self.tx.take());
        // No more jobs can come: a lingering writer commits what it has now.
        self.wake.notify();
        if let Some(thread) = self.thread.take() {
            // Joining makes close deterministic: once the last handle is dropped, the
            // environment can be opened again. The writer never holds a `Writer`, so this never
            // joins itself; the check is a guard against a future change doing so.
            if thread.thread().id() != thread::current().id() && thread.join().is_err() {
                tracing::error!(thread = self.name, "LMDB writer thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use heed::types::{Bytes, Str};

    use super::super::env::{EnvOptions, open_env};
    use super::*;

    type Db = heed::Database<'static, Str, Bytes>;

    const CONFIG: WriterConfig = WriterConfig {
        thread_name: "test-writer",
        queue_jobs_max: 64,
        group_jobs_max: 8,
        linger: Duration::from_millis(5),
    };

    /// A writer over one database, `meta`, in an environment under `dir`.
    fn start(dir: &std::path::Path, map_size_bytes: usize) -> (LmdbEnv, Writer<Db>, Db) {
        let opts = EnvOptions {
            map_size_bytes,
            max_dbs: 1,
        };
        let env = open_env(dir, &opts).expect("env");
        let (writer, db) = Writer::start(env.clone(), CONFIG, |env: &LmdbEnv| {
            let wtxn = env.write_txn().map_err(StorageError::lmdb("begin"))?;
            let db = env
                .create_databases_and_commit(wtxn, |dbo, wtxn| -> Result<_, heed::Error> {
                    let db = dbo.create_database::<Str, Bytes>(wtxn, Some("meta"))?;
                    Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
                })
                .map_err(StorageError::lmdb("create"))?
                .unwrap_commit();
            Ok(db)
        })
        .expect("writer");
        (env, writer, db)
    }

    fn read(env: &LmdbEnv, db: Db, key: &str) -> Option<Vec<u8>> {
        let rtxn = env.read_txn().expect("read txn");
        db.get(&rtxn, key).expect("get").map(<[u8]>::to_vec)
    }

    /// Jobs queued together: the one that fails is rolled back alone and hears its own error;
    /// the others commit, whichever group they landed in; durability follows the strongest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_job_is_rolled_back_alone_and_the_others_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (env, writer, db) = start(dir.path(), 16 << 20);
        let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, Result<(), String>)>();
        for (name, fails, durability) in [
            ("a", false, Durability::DataOnly),
            ("b", true, Durability::DataOnly),
            ("c", false, Durability::Full),
            ("d", false, Durability::DataOnly),
        ] {
            let tx = tx.clone();
            writer
                .submit(
                    "test",
                    durability,
                    move |wtxn, db: &Db| {
                        db.put(wtxn, name, name.as_bytes())
                            .map_err(StorageError::lmdb("put"))?;
                        if fails {
                            return Err(StorageError::WriterStopped);
                        }
                        Ok(())
                    },
                    move |res| {
                        let _ = tx.send((name, res.map_err(|e| e.to_string())));
                    },
                )
                .await
                .expect("queued");
        }
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            outcomes.push(rx.recv().await.expect("every job hears back"));
        }
        outcomes.sort_by_key(|(n, _)| *n);
        assert_eq!(outcomes[0], ("a", Ok(())));
        assert!(outcomes[1].1.is_err(), "{outcomes:?}");
        assert_eq!(outcomes[2], ("c", Ok(())));
        assert_eq!(outcomes[3], ("d", Ok(())));
        assert_eq!(read(&env, db, "a").as_deref(), Some(&b"a"[..]));
        assert_eq!(read(&env, db, "b"), None, "the failed job left nothing");
        assert_eq!(read(&env, db, "c").as_deref(), Some(&b"c"[..]));
        assert_eq!(read(&env, db, "d").as_deref(), Some(&b"d"[..]));
        // The flags are back to full durability after any data-only commit.
        let flags = env.get_flags().expect("flags");
        assert_eq!(flags & EnvFlags::NO_META_SYNC.bits(), 0);
        drop(writer);
    }

    /// A group of jobs nobody waits on gathers what comes within the linger, and a full group
    /// commits without waiting it out: with a linger of a minute, a full group of data-only
    /// jobs is told within seconds, and an awaited job ends the linger at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_group_or_an_awaited_job_ends_the_linger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = EnvOptions {
            map_size_bytes: 16 << 20,
            max_dbs: 0,
        };
        let env = open_env(dir.path(), &opts).expect("env");
        let config = WriterConfig {
            linger: Duration::from_secs(60),
            ..CONFIG
        };
        let (writer, ()) =
            Writer::<(), StorageError>::start(env, config, |_: &LmdbEnv| Ok(())).expect("writer");
        let started = std::time::Instant::now();
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..CONFIG.group_jobs_max {
            let tx = tx.clone();
            writer
                .submit(
                    "test",
                    Durability::DataOnly,
                    |_, _| Ok(()),
                    move |res| {
                        let _ = tx.send(res.is_ok());
                    },
                )
                .await
                .expect("queued");
        }
        for _ in 0..CONFIG.group_jobs_max {
            assert_eq!(rx.recv().await, Some(true));
        }
        writer
            .submit("test", Durability::DataOnly, |_, _| Ok(()), |_| {})
            .await
            .expect("queued");
        writer
            .write_with("test", Durability::DataOnly, |_, _| Ok(()))
            .await
            .expect("awaited job");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    }

    /// A batch's final write runs after its jobs and before the job behind them (which reads
    /// what it wrote), and only the newest one; a batch whose final write fails leaves nothing,
    /// and each of its jobs hears the error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_ends_with_its_newest_final_write_and_a_failed_one_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (env, writer, db) = start(dir.path(), 16 << 20);
        let finishes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 1..=3u8 {
            let finishes = finishes.clone();
            writer
                .submit_batched(
                    "test: batched",
                    Durability::DataOnly,
                    move |wtxn, db: &Db| {
                        db.put(wtxn, &format!("b{i}"), &[i])
                            .map_err(StorageError::lmdb("put"))
                    },
                    move |wtxn, db: &Db| {
                        finishes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        db.put(wtxn, "last", &[i])
                            .map_err(StorageError::lmdb("put"))
                    },
                    |res| res.expect("batched job"),
                )
                .await
                .expect("queued");
        }
        let seen = writer
            .write_with("test: after", Durability::DataOnly, move |wtxn, db: &Db| {
                Ok(db
                    .get(wtxn, "last")
                    .map_err(StorageError::lmdb("get"))?
                    .map(<[u8]>::to_vec))
            })
            .await
            .expect("read job");
        assert_eq!(
            seen,
            Some(vec![3]),
            "the newest final write, before the next job"
        );
        let ran = finishes.load(std::sync::atomic::Ordering::Relaxed);
        assert!((1..=3).contains(&ran), "{ran} final writes");

        let (tx, rx) = oneshot::channel();
        writer
            .submit_batched(
                "test: failing batch",
                Durability::DataOnly,
                |wtxn, db: &Db| db.put(wtxn, "b4", &[4]).map_err(StorageError::lmdb("put")),
                |_, _| Err(StorageError::WriterStopped),
                move |res| {
                    let _ = tx.send(res.is_err());
                },
            )
            .await
            .expect("queued");
        assert_eq!(rx.await, Ok(true), "the job hears the final write's error");
        assert_eq!(read(&env, db, "b4"), None, "nothing of the batch written");
        assert_eq!(read(&env, db, "b3").as_deref(), Some(&[3u8][..]));
    }

    /// The writer lets go of the values it committed (see `drop_behind`): after eighty commits
    /// of a 100 KiB value each, the data file holds them all but the page cache holds little of
    /// it. Fails with the drop-behind call taken out of `run_writer`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_values_leave_the_page_cache() {
        const VALUE_BYTES: usize = 100 * 1024;
        const COMMITS: usize = 80;
        // On the build's disk: a tmpfs (often /tmp) keeps every page whatever the advice.
        let exe = std::env::current_exe().expect("test binary path");
        let dir = tempfile::tempdir_in(exe.parent().expect("its directory")).expect("tempdir");
        let (env, writer, db) = start(dir.path(), 64 << 20);
        for i in 0..COMMITS {
            let key = format!("value-{i:03}");
            writer
                .write("test: put value", move |wtxn, db: &Db| {
                    db.put(wtxn, &key, &vec![i as u8; VALUE_BYTES])
                        .map_err(StorageError::lmdb("put"))
                })
                .await
                .expect("committed");
        }
        let data = env.path().join("data.mdb");
        let resident = super::super::drop_behind::resident_pages(&data).expect("mincore");
        let page = super::super::drop_behind::page_bytes();
        let cached = resident.iter().filter(|r| **r).count() * page;
        let file = resident.len() * page;
        assert!(file >= COMMITS * VALUE_BYTES, "file {file} bytes");
        // Kept: the last LAG_COMMITS commits' growth, what was there at open, and the tree's
        // pages that later commits rewrote in place of freed ones. Without drop-behind, all of
        // the file.
        assert!(
            cached * 4 <= file,
            "{cached} of {file} bytes cached after {COMMITS} commits; at most a quarter expected"
        );
        // Nothing lost: every value reads back (from the disk, for most).
        let rtxn = env.read_txn().expect("read txn");
        for i in 0..COMMITS {
            let v = db
                .get(&rtxn, &format!("value-{i:03}"))
                .expect("get")
                .expect("present");
            assert_eq!(v.len(), VALUE_BYTES);
            assert!(v.iter().all(|b| *b == i as u8));
        }
        drop(rtxn);
        drop(writer);
    }
}
