//! Our supervisor: rebuilds an actor that stops *or panics*.
//!
//! actix 0.13's `Supervisor` restarts an actor that stops, calling `restarting()` on the same
//! struct, but a panicking handler drops the actor's task and its mailbox closes for good
//! (`MailboxError::Closed`). So every supervised actor holds an [`ExitGuard`]; the guard's
//! `Drop` runs whether the actor stopped or unwound from a panic, and tells the supervisor,
//! which builds a fresh actor from its factory (the factory recovers state from storage or
//! from handles that outlive the actor), publishes the new address in the actor's [`Slot`],
//! and counts `haseq_actor_restarts_total{actor}`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix::fut::ActorFutureExt as _;
use actix::{Actor, ActorContext, Addr, AsyncContext, Context};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Restarts closer together than this count as a crash loop and are delayed.
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(10);
/// The longest delay before rebuilding an actor that keeps crashing.
const RESTART_DELAY_MAX: Duration = Duration::from_secs(5);
/// The first delay for an actor in a crash loop; doubled on each further restart.
const RESTART_DELAY_MIN: Duration = Duration::from_millis(10);

/// The current address of a supervised actor. Cheap to clone; every holder sees the new
/// address as soon as the supervisor has rebuilt the actor.
pub struct Slot<A: Actor> {
    addr: Arc<RwLock<Addr<A>>>,
}

impl<A: Actor> Clone for Slot<A> {
    fn clone(&self) -> Self {
        Slot {
            addr: self.addr.clone(),
        }
    }
}

impl<A: Actor> Slot<A> {
    /// The actor's current address (possibly of an actor that just died; a send then fails
    /// with `MailboxError::Closed` and the caller may try again shortly).
    pub fn get(&self) -> Addr<A> {
        // A poisoned lock only means a writer panicked mid-assignment of an `Addr`, which is
        // a plain pointer store: the value is still a valid address.
        self.addr.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, addr: Addr<A>) {
        *self.addr.write().unwrap_or_else(|e| e.into_inner()) = addr;
    }
}

/// Held by a supervised actor; dropping it (actor stopped or panicked) reports the exit.
pub struct ExitGuard {
    name: &'static str,
    tx: mpsc::UnboundedSender<&'static str>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // The receiver is gone only once the supervisor itself has stopped: nothing to do.
        let _ = self.tx.send(self.name);
    }
}

type Rebuild = Box<dyn Fn(ExitGuard)>;

/// A tokio task an actor spawned, watched by that actor: if the task panics, the actor stops
/// (and so is rebuilt by the supervisor, which starts the task afresh); when the actor goes
/// away, for any reason, the task is aborted. Without it a panicking task ends silently and
/// its duty stays undone until something else restarts it.
#[must_use = "dropping the guard aborts the task"]
#[derive(Debug)]
pub struct TaskGuard {
    abort: tokio::task::AbortHandle,
}

impl TaskGuard {
    /// Whether the task has ended (finished, panicked or aborted).
    pub fn is_finished(&self) -> bool {
        self.abort.is_finished()
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

/// Spawn `fut` on the tokio runtime (off the arbiter thread), watched by the actor of `ctx`:
/// a panic in it stops the actor, to be rebuilt; the task is named `task` in the log and in
/// `haseq_task_panics_total{task}`. The task runs until it returns, panics, or the returned
/// guard is dropped (keep it in the actor's state).
pub fn spawn_task<A, F>(ctx: &mut Context<A>, task: &'static str, fut: F) -> TaskGuard
where
    A: Actor<Context = Context<A>>,
    F: Future<Output = ()> + Send + 'static,
{
    // The series exists (at 0) from the task's first start, before any panic.
    metrics::counter!("haseq_task_panics_total", "task" => task).increment(0);
    let handle = tokio::spawn(fut);
    let abort = handle.abort_handle();
    ctx.spawn(
        actix::fut::wrap_future::<_, A>(handle).map(move |r, _act, ctx: &mut Context<A>| {
            let _ = task_result(r, task, ctx);
        }),
    );
    TaskGuard { abort }
}

/// What a task an actor awaits returned; when it panicked instead, the panic is logged and
/// counted under `task` (`haseq_task_panics_total{task}`) and the actor is stopped, to be
/// rebuilt by the supervisor. `None` when the task panicked or was aborted.
pub fn task_result<T, A>(
    joined: Result<T, tokio::task::JoinError>,
    task: &'static str,
    ctx: &mut Context<A>,
) -> Option<T>
where
    A: Actor<Context = Context<A>>,
{
    match joined {
        Ok(v) => Some(v),
        Err(e) => {
            if e.is_panic() {
                tracing::error!(task, "task panicked; restarting its actor");
                metrics::counter!("haseq_task_panics_total", "task" => task).increment(1);
                ctx.stop();
            }
            None
        }
    }
}

/// Restarts per actor, shared by the supervisor and whoever asks (tests, status).
type RestartCounts = Arc<Mutex<BTreeMap<&'static str, u64>>>;

/// Ask a supervised actor to stop for good (the node is shutting down): every supervised
/// actor handles it with `ctx.stop()`, written once in [`stops_on_request!`].
#[derive(actix::Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopActor;

/// Implements [`StopActor`] for a supervised actor: it stops, and the supervisor, which sent
/// it, does not rebuild it. One macro because an impl over every actor type cannot be
/// generic (actix's `Handler` is a foreign trait).
macro_rules! stops_on_request {
    ($actor:ty) => {
        impl actix::Handler<$crate::supervisor::StopActor> for $actor {
            type Result = ();

            fn handle(
                &mut self,
                _: $crate::supervisor::StopActor,
                ctx: &mut <$actor as actix::Actor>::Context,
            ) {
                actix::ActorContext::stop(ctx);
            }
        }
    };
}
pub(crate) use stops_on_request;

struct Entry {
    rebuild: Rebuild,
    stop: Box<dyn Fn()>,
    alive: Box<dyn Fn() -> bool>,
    recent_restarts: u32,
    last_restart: Option<Instant>,
}

/// Starts actors and rebuilds them when they exit, until shut down.
///
/// Lives on the actix arbiter thread (actors are `!Send` to build), so it is not `Send`.
pub struct Supervisor {
    tx: mpsc::UnboundedSender<&'static str>,
    entries: std::rc::Rc<std::cell::RefCell<HashMap<&'static str, Entry>>>,
    shutdown: CancellationToken,
    restarts: RestartCounts,
}

impl Supervisor {
    /// A supervisor whose watch loop runs on the current actix arbiter until `shutdown`.
    ///
    /// # Panics
    /// If called outside an actix `System` (there is no arbiter to run on).
    pub fn new(shutdown: CancellationToken) -> Supervisor {
        let (tx, mut rx) = mpsc::unbounded_channel::<&'static str>();
        let entries: std::rc::Rc<std::cell::RefCell<HashMap<&'static str, Entry>>> =
            Default::default();
        let loop_entries = entries.clone();
        let loop_tx = tx.clone();
        let loop_shutdown = shutdown.clone();
        let restarts = RestartCounts::default();
        let loop_restarts = restarts.clone();
        actix_rt::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = loop_shutdown.cancelled() => break,
                    name = rx.recv() => match name { Some(n) => n, None => break },
                };
                if loop_shutdown.is_cancelled() {
                    break;
                }
                let delay = {
                    let mut map = loop_entries.borrow_mut();
                    let Some(e) = map.get_mut(name) else { continue };
                    let now = Instant::now();
                    if e.last_restart
                        .is_some_and(|t| now.duration_since(t) < CRASH_LOOP_WINDOW)
                    {
                        e.recent_restarts = e.recent_restarts.saturating_add(1);
                    } else {
                        e.recent_restarts = 0;
                    }
                    e.last_restart = Some(now);
                    restart_delay(e.recent_restarts)
                };
                tracing::warn!(
                    actor = name,
                    delay_ms = delay.as_millis() as u64,
                    "actor exited; rebuilding"
                );
                metrics::counter!("haseq_actor_restarts_total", "actor" => name).increment(1);
                *loop_restarts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(name)
                    .or_default() += 1;
                if !delay.is_zero() {
                    tokio::select! {
                        _ = loop_shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                let map = loop_entries.borrow();
                if let Some(e) = map.get(name) {
                    (e.rebuild)(ExitGuard {
                        name,
                        tx: loop_tx.clone(),
                    });
                }
            }
        });
        Supervisor {
            tx,
            entries,
            shutdown,
            restarts,
        }
    }

    /// How often each actor has been rebuilt since this supervisor started (the per-node
    /// figure behind `haseq_actor_restarts_total`, which is per process).
    pub fn restarts(&self) -> BTreeMap<&'static str, u64> {
        self.restarts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Start an actor built by `factory` and keep it running: when it exits for any reason
    /// before shutdown, `factory` builds its replacement. The factory receives the
    /// [`ExitGuard`] the actor must keep for as long as it lives.
    pub fn start<A, F>(&self, name: &'static str, factory: F) -> Slot<A>
    where
        A: Actor<Context = Context<A>> + actix::Handler<StopActor>,
        F: Fn(ExitGuard) -> A + 'static,
    {
        let first = factory(ExitGuard {
            name,
            tx: self.tx.clone(),
        })
        .start();
        let slot = Slot {
            addr: Arc::new(RwLock::new(first)),
        };
        // Touch the counter so the series exists (at 0) before any restart.
        metrics::counter!("haseq_actor_restarts_total", "actor" => name).increment(0);
        let rebuild_slot = slot.clone();
        let rebuild: Rebuild = Box::new(move |guard| {
            rebuild_slot.set(factory(guard).start());
            tracing::info!(actor = name, "actor rebuilt");
        });
        let stop_slot = slot.clone();
        let alive_slot = slot.clone();
        self.entries.borrow_mut().insert(
            name,
            Entry {
                rebuild,
                stop: Box::new(move || stop_slot.get().do_send(StopActor)),
                alive: Box::new(move || alive_slot.get().connected()),
                recent_restarts: 0,
                last_restart: None,
            },
        );
        slot
    }

    /// Stop rebuilding actors and stop every supervised actor; wait (bounded by `deadline`)
    /// until their mailboxes have closed.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shutdown.cancel();
        for e in self.entries.borrow().values() {
            (e.stop)();
        }
        let start = Instant::now();
        while start.elapsed() < deadline {
            if !self.entries.borrow().values().any(|e| (e.alive)()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::warn!("some actors did not stop within {deadline:?}");
    }
}

/// No delay for an isolated crash; exponential backoff for a crash loop, capped.
fn restart_delay(recent_restarts: u32) -> Duration {
    if recent_restarts == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32 << recent_restarts.min(16);
    (RESTART_DELAY_MIN * factor).min(RESTART_DELAY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::{Handler, Message};

    struct Counter {
        n: u64,
        _guard: ExitGuard,
    }
    impl Actor for Counter {
        type Context = Context<Self>;
    }
    #[derive(Message)]
    #[rtype(result = "u64")]
    struct Bump;
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Explode;
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Quit;
    impl Handler<Bump> for Counter {
        type Result = u64;
        fn handle(&mut self, _: Bump, _: &mut Context<Self>) -> u64 {
            self.n += 1;
            self.n
        }
    }
    impl Handler<Explode> for Counter {
        type Result = ();
        fn handle(&mut self, _: Explode, _: &mut Context<Self>) {
            panic!("deliberate panic in a test");
        }
    }
    stops_on_request!(Counter);
    impl Handler<Quit> for Counter {
        type Result = ();
        fn handle(&mut self, _: Quit, ctx: &mut Context<Self>) {
            actix::ActorContext::stop(ctx);
        }
    }

    async fn bump_until_ok(slot: &Slot<Counter>) -> u64 {
        for _ in 0..200 {
            if let Ok(n) = slot.get().send(Bump).await {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("actor was not rebuilt within 1 s");
    }

    #[test]
    fn panicked_and_stopped_actors_are_rebuilt() {
        let sys = actix_rt::System::new();
        sys.block_on(async {
            let sup = Supervisor::new(CancellationToken::new());
            let slot = sup.start("counter", |g| Counter { n: 0, _guard: g });
            assert_eq!(slot.get().send(Bump).await.unwrap(), 1);

            // A panicking handler closes the mailbox: the old address is dead for good.
            let old = slot.get();
            assert!(old.send(Explode).await.is_err());
            assert!(
                old.send(Bump).await.is_err(),
                "a panicked actor's mailbox stays closed"
            );
            // The rebuilt actor starts from its factory's state.
            assert_eq!(bump_until_ok(&slot).await, 1);

            // An actor that stops is rebuilt too.
            slot.get().send(Quit).await.unwrap();
            assert_eq!(bump_until_ok(&slot).await, 1);
            sup.shutdown(Duration::from_secs(1)).await;
            assert!(!slot.get().connected(), "shutdown stops the actor for good");
        });
    }

    /// An actor whose job is a tokio task; the task panics when told to.
    struct WithTask {
        started: Arc<std::sync::atomic::AtomicU32>,
        panic_now: Arc<std::sync::atomic::AtomicBool>,
        task: Option<TaskGuard>,
        _guard: ExitGuard,
    }
    impl Actor for WithTask {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Context<Self>) {
            self.started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let panic_now = self.panic_now.clone();
            self.task = Some(spawn_task(ctx, "test_task", async move {
                // Bounded: 10 s at most, far past the test's own 1 s wait.
                for _ in 0..5_000 {
                    if panic_now.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        panic!("deliberate panic in a test task");
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
    }
    stops_on_request!(WithTask);

    #[test]
    fn a_panicking_task_restarts_its_actor() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let sys = actix_rt::System::with_tokio_rt(move || rt);
        sys.block_on(async {
            let sup = Supervisor::new(CancellationToken::new());
            let started = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let panic_now = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (s, p) = (started.clone(), panic_now.clone());
            let slot = sup.start("with_task", move |g| WithTask {
                started: s.clone(),
                panic_now: p.clone(),
                task: None,
                _guard: g,
            });
            // Waits (1 s at most) until the actor has been started `n` times.
            let started_times = |n: u32| {
                let started = started.clone();
                async move {
                    for _ in 0..200 {
                        if started.load(std::sync::atomic::Ordering::SeqCst) == n {
                            return true;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    false
                }
            };
            assert!(started_times(1).await, "the actor started");
            let first = slot.get();
            panic_now.store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(
                started_times(2).await,
                "the task's panic rebuilt its actor within 1 s"
            );
            assert!(!first.connected(), "the old actor stopped");
            assert_eq!(sup.restarts().get("with_task"), Some(&1));
            sup.shutdown(Duration::from_secs(1)).await;
            assert!(!slot.get().connected());
        });
    }

    #[test]
    fn crash_loops_back_off() {
        assert_eq!(restart_delay(0), Duration::ZERO);
        assert!(restart_delay(1) > Duration::ZERO);
        assert!(restart_delay(3) > restart_delay(2));
        assert_eq!(restart_delay(40), RESTART_DELAY_MAX);
    }
}
