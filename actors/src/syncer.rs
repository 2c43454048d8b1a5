//! Syncer: fetches the committed blocks this node lacks (history below a snapshot it
//! installed) from its peers through the P2P actor, so that ExecReplayer can replay them.
//!
//! Owns: the current sync job (the hole being filled, the fetches in flight, the verified
//! ranges waiting for the range above them) and its progress.
//! Receives: its own tick (every [`TICK`]); answers to its [`FetchBlocks`]; peers' states
//! from the P2P actor's [`PeerFeed`].
//! Sends: [`FetchBlocks`] and [`Penalise`] to P2P; ranges to the block store through
//! [`BlockBackfill`]; its progress ([`SyncProgress`], `/status` `sync`) on a watch channel,
//! a log line every [`LOG_EVERY`], and `haseq_blocks_fetched_total`.
//!
//! The hole is filled from several peers at once (up to [`FETCHES_INFLIGHT_MAX`] ranges in
//! flight; P2P spreads them over the peers). Each range is checked by P2P (heights, links
//! among its blocks), its payloads are verified here (on a blocking thread), and the store
//! takes it only if it hash-links to the stored chain above it, or ends at a checkpoint
//! height with the checkpoint's hash (the committed hash of every
//! [`CHECKPOINT_EVERY_BLOCKS`]th block, which the store keeps and snapshots carry): so the
//! store only ever holds the committed chain, and a range from a lying peer costs that peer a
//! penalty and is asked of another.
//!
//! Order: when the store holds every checkpoint in the hole, oldest range first, each ending
//! at a checkpoint, so each is vouched for on its own and the engine replays the bottom of
//! the hole while the rest is fetched (newest first, the replay could start only once the
//! whole hole was in). Otherwise newest first, each range vouched for by the one above.
//! Ranges that cannot be stored yet wait, bounded by [`READY_BYTES_MAX`].
//!
//! Progress is the store itself: a restarted node, or a rebuilt Syncer, finds the hole's new
//! top and goes on from there; nothing fetched is fetched again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use actix::fut::ActorFutureExt as _;
use actix::{Actor, AsyncContext, Context, Handler, WrapFuture};
use haseq_messages::{Block, Height, NodeId};
use haseq_storage::{BlockBackfill, BlockReader, CHECKPOINT_EVERY_BLOCKS};
use serde::Serialize;
use tokio::sync::watch;

use crate::exec_replayer::ExecStatus;
use crate::faults::{PanicKnobs, PanicSite};
use crate::p2p::check::{Violation, verify_payloads};
use crate::p2p::{FETCH_BLOCKS_MAX, FetchBlocks, FetchError, P2p, PeerFeed, PeerPolled, Penalise};
use crate::supervisor::{ExitGuard, Slot, task_result};

/// How often the job is advanced (fetches dispatched, ranges stored, progress published).
pub const TICK: Duration = Duration::from_millis(20);
/// How often an idle Syncer looks for a hole.
const IDLE_CHECK: Duration = Duration::from_millis(500);
/// An idle Syncer scans at once when the applied head moved by more than this since its last
/// tick: more than a burst of applies between two ticks, less than any snapshot's jump.
const APPLY_JUMP_BLOCKS: u64 = 64;
/// Ranges being fetched at once.
pub const FETCHES_INFLIGHT_MAX: usize = 4;
/// Payload bytes of fetched ranges held while they wait for the range above them.
pub const READY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Progress is logged this often during a sync.
pub const LOG_EVERY: Duration = Duration::from_secs(5);
/// The rate is measured over this window.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// After "no peer can serve", dispatch pauses this long.
const NO_PEER_BACKOFF: Duration = Duration::from_millis(200);

/// A sync in progress, as `/status` shows it under `sync`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncProgress {
    /// Lowest height of the hole being filled.
    pub from: u64,
    /// Highest height of the hole being filled.
    pub to: u64,
    /// Blocks of it stored so far.
    pub done: u64,
    /// Blocks stored per second, over the last few seconds.
    pub blocks_per_s: f64,
    /// Seconds left at that rate; `None` before there is a rate.
    pub eta_s: Option<f64>,
}

/// What the Syncer needs; cheap to clone.
#[derive(Clone)]
pub struct SyncerDeps {
    /// The store to read.
    pub blocks: BlockReader,
    /// The store to fill.
    pub backfill: BlockBackfill,
    /// Where the engine is: blocks at or below it are not needed.
    pub exec: watch::Receiver<ExecStatus>,
    /// Who fetches blocks.
    pub p2p: Slot<P2p>,
    /// Peers' states, from P2P.
    pub feed: PeerFeed,
    /// Where progress is published (`None` while idle).
    pub progress: watch::Sender<Option<SyncProgress>>,
    /// Fault knobs.
    pub faults: PanicKnobs,
}

/// A range of heights, inclusive, newest first in ordered sets (by `top`, then `from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    top: u64,
    from: u64,
}

struct Ready {
    peer: NodeId,
    blocks: Vec<Block>,
    bytes: usize,
}

/// In which order a job fills its hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Newest range first: a range is vouched for only by the stored chain above it, so the
    /// hole's bottom, which the engine needs first, is stored last.
    Down,
    /// Oldest range first, each ending at a checkpoint height ([`CHECKPOINT_EVERY_BLOCKS`]),
    /// whose hash the store holds from the snapshot: every such range is vouched for on its
    /// own, so the engine replays the bottom of the hole while the rest is fetched.
    Up,
}

struct Job {
    /// The hole as first found: `from..=to`.
    from: u64,
    to: u64,
    order: Order,
    /// Stored ranges of the hole, by their first height (for "is the block above stored").
    stored: BTreeMap<u64, u64>,
    stored_blocks: u64,
    /// The next height to ask for: going down from the top (`Down`), or up from the bottom.
    next_ask: u64,
    /// Ranges to ask (again): a failed fetch, or the rest of a partial answer.
    retry: BTreeSet<Range>,
    inflight: usize,
    /// Verified ranges waiting to be stored, by their first height.
    ready: BTreeMap<u64, Ready>,
    ready_bytes: usize,
    /// Ranges being verified.
    verifying: usize,
    inserting: bool,
    started: Instant,
    /// `(when, stored)` samples for the rate.
    samples: VecDeque<(Instant, u64)>,
    last_log: Instant,
    no_peer_until: Option<Instant>,
    no_peer_logged: bool,
}

/// The first checkpoint height at or above `h`.
fn checkpoint_at_or_above(h: u64) -> u64 {
    h.div_ceil(CHECKPOINT_EVERY_BLOCKS) * CHECKPOINT_EVERY_BLOCKS
}

impl Job {
    fn new(from: u64, to: u64, order: Order) -> Job {
        assert!(from <= to, "a hole {from}..={to}");
        let now = Instant::now();
        Job {
            from,
            to,
            order,
            stored: BTreeMap::new(),
            stored_blocks: 0,
            next_ask: match order {
                Order::Down => to,
                Order::Up => from,
            },
            retry: BTreeSet::new(),
            inflight: 0,
            ready: BTreeMap::new(),
            ready_bytes: 0,
            verifying: 0,
            inserting: false,
            started: now,
            samples: VecDeque::from([(now, 0)]),
            last_log: now,
            no_peer_until: None,
            no_peer_logged: false,
        }
    }

    fn stored(&self) -> u64 {
        self.stored_blocks
    }

    fn total(&self) -> u64 {
        self.to - self.from + 1
    }

    /// Can the store take `r` now: its top is the hole's top (the chain above is stored),
    /// the block above it is stored, or (going up) it ends at a checkpoint.
    fn storable(&self, r: Range) -> bool {
        r.top == self.to
            || self.stored.contains_key(&(r.top + 1))
            || (self.order == Order::Up && r.top.is_multiple_of(CHECKPOINT_EVERY_BLOCKS))
    }

    /// The next range to ask for: a range to retry first (the one nearest the side the job
    /// starts from), else the next new one. While verified ranges hold [`READY_BYTES_MAX`],
    /// only a retry the store could take at once is asked (it drains the buffer), so memory
    /// stays bounded and the job never waits on itself.
    fn next_range(&mut self) -> Option<Range> {
        let full = self.ready_bytes >= READY_BYTES_MAX;
        let retry = match self.order {
            Order::Down => self.retry.iter().next_back().copied(),
            Order::Up => self.retry.iter().min_by_key(|r| r.from).copied(),
        };
        if let Some(r) = retry
            && (!full || self.storable(r))
        {
            self.retry.remove(&r);
            return Some(r);
        }
        if full {
            return None;
        }
        match self.order {
            Order::Down => {
                if self.next_ask < self.from {
                    return None;
                }
                let top = self.next_ask;
                let from = top
                    .saturating_sub(FETCH_BLOCKS_MAX as u64 - 1)
                    .max(self.from);
                self.next_ask = from - 1;
                Some(Range { top, from })
            }
            Order::Up => {
                if self.next_ask > self.to {
                    return None;
                }
                let from = self.next_ask;
                let top = checkpoint_at_or_above(from).min(self.to);
                self.next_ask = top + 1;
                Some(Range { top, from })
            }
        }
    }

    /// The verified range to store next, if the store can take one: the nearest to the side
    /// the job fills from.
    fn next_to_store(&self) -> Option<u64> {
        let ok = |(from, r): (&u64, &Ready)| {
            let top = from + r.blocks.len() as u64 - 1;
            self.storable(Range { top, from: *from }).then_some(*from)
        };
        match self.order {
            Order::Down => self.ready.iter().rev().find_map(ok),
            Order::Up => self.ready.iter().find_map(ok),
        }
    }

    fn progress(&mut self, now: Instant) -> SyncProgress {
        let stored = self.stored();
        self.samples.push_back((now, stored));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let (t0, s0) = self.samples.front().copied().unwrap_or((now, 0));
        let dt = now.duration_since(t0).as_secs_f64();
        let blocks_per_s = if dt > 0.0 {
            (stored - s0) as f64 / dt
        } else {
            0.0
        };
        let remaining = self.total() - stored;
        SyncProgress {
            from: self.from,
            to: self.to,
            done: stored,
            blocks_per_s: (blocks_per_s * 10.0).round() / 10.0,
            eta_s: (blocks_per_s > 0.0).then(|| (remaining as f64 / blocks_per_s).ceil()),
        }
    }
}

/// The actor; see the module doc.
pub struct Syncer {
    d: SyncerDeps,
    job: Option<Job>,
    last_scan: Option<Instant>,
    /// The applied head's height at the last scan: a jump past it (a snapshot installed)
    /// opens a hole, so the next tick scans at once instead of after [`IDLE_CHECK`].
    scanned_head: Height,
    /// The highest applied height a peer reported (to say what no peer holds).
    peers_head: BTreeMap<NodeId, u64>,
    _exit: ExitGuard,
}

impl Syncer {
    /// A Syncer over `d`; it finds its job in the store.
    pub fn new(d: SyncerDeps, exit: ExitGuard) -> Syncer {
        Syncer {
            d,
            job: None,
            last_scan: None,
            scanned_head: Height(0),
            peers_head: BTreeMap::new(),
            _exit: exit,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.d.faults.trip(PanicSite::Syncer);
        let now = Instant::now();
        if self.job.is_none() {
            // One block at a time is the chain growing; more at once is a snapshot (or a
            // batch applied after a pause), the moment a hole may have opened below it.
            let head = self.d.blocks.subscribe().borrow().head_height;
            let jumped = head.0 > self.scanned_head.0.saturating_add(APPLY_JUMP_BLOCKS);
            if !jumped
                && self
                    .last_scan
                    .is_some_and(|t| now.duration_since(t) < IDLE_CHECK)
            {
                self.scanned_head = head;
                return;
            }
            self.last_scan = Some(now);
            self.scanned_head = head;
            self.find_job();
            if self.job.is_none() {
                return;
            }
        }
        self.dispatch(ctx, now);
        self.store_next(ctx);
        self.report(now);
    }

    fn find_job(&mut self) {
        let head = match self.d.blocks.head() {
            Ok(h) => h.height,
            Err(e) => {
                tracing::warn!(error = %e, "reading the applied head");
                return;
            }
        };
        let floor = Height(self.d.exec.borrow().exec_height);
        match self.d.blocks.missing_range(floor, head) {
            Ok(Some((from, to))) => {
                tracing::info!(
                    from = from.0,
                    to = to.0,
                    blocks = to.0 - from.0 + 1,
                    engine = floor.0,
                    "block store lacks committed blocks; fetching them from peers"
                );
                let order = self.order_for(from.0, to.0);
                tracing::debug!(?order, "sync order");
                self.job = Some(Job::new(from.0, to.0, order));
                set_sync_gauges(true, to.0 - from.0 + 1);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "scanning the block store for a hole"),
        }
    }

    /// Oldest first when the store holds the hash of every checkpoint height in the hole
    /// (the snapshot carried them); newest first otherwise (a snapshot from before
    /// checkpoints, or a hole within one checkpoint interval).
    fn order_for(&self, from: u64, to: u64) -> Order {
        let mut h = checkpoint_at_or_above(from);
        if h >= to {
            return Order::Down;
        }
        while h < to {
            match self.d.blocks.checkpoint(Height(h)) {
                Ok(Some(_)) => {}
                Ok(None) => return Order::Down,
                Err(e) => {
                    tracing::warn!(height = h, error = %e, "reading a checkpoint");
                    return Order::Down;
                }
            }
            h += CHECKPOINT_EVERY_BLOCKS;
        }
        Order::Up
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>, now: Instant) {
        let Some(job) = self.job.as_mut() else { return };
        if job.no_peer_until.is_some_and(|t| t > now) {
            return;
        }
        let mut asks = Vec::new();
        while job.inflight < FETCHES_INFLIGHT_MAX {
            let Some(range) = job.next_range() else { break };
            job.inflight += 1;
            asks.push(range);
        }
        for range in asks {
            let ask = FetchBlocks {
                from: Height(range.from),
                to: Height(range.top),
            };
            let fut = self.d.p2p.get().send(ask);
            ctx.spawn(fut.into_actor(self).map(move |answer, act, ctx| {
                let answer = answer.unwrap_or(Err(FetchError::Crashed));
                act.fetched(ctx, range, answer);
            }));
        }
    }

    fn fetched(
        &mut self,
        ctx: &mut Context<Self>,
        range: Range,
        answer: Result<crate::p2p::Fetched, FetchError>,
    ) {
        let Some(job) = self.job.as_mut() else { return };
        job.inflight -= 1;
        let fetched = match answer {
            Ok(f) => f,
            Err(e) => {
                if matches!(e, FetchError::NoPeer { .. }) {
                    job.no_peer_until = Some(Instant::now() + NO_PEER_BACKOFF);
                    if !job.no_peer_logged {
                        let best = self.peers_head.values().max().copied().unwrap_or(0);
                        tracing::warn!(
                            from = range.from,
                            to = range.top,
                            peers_head = best,
                            "no peer can serve these blocks now; waiting (logged once per sync)"
                        );
                        job.no_peer_logged = true;
                    }
                } else {
                    tracing::debug!(from = range.from, to = range.top, error = %e, "fetch failed; asking again");
                }
                job.retry.insert(range);
                return;
            }
        };
        if fetched.blocks.is_empty() {
            job.retry.insert(range);
            return;
        }
        let got_top = range.from + fetched.blocks.len() as u64 - 1;
        if got_top < range.top {
            // A partial answer (the peer bounds its answers in bytes): ask for the rest.
            job.retry.insert(Range {
                top: range.top,
                from: got_top + 1,
            });
        }
        let got = Range {
            top: got_top,
            from: range.from,
        };
        job.verifying += 1;
        let faults = self.d.faults.clone();
        let peer = fetched.peer;
        let blocks = fetched.blocks;
        // Hashing every header takes a while for a big range: on the blocking pool.
        let task = tokio::task::spawn_blocking(move || {
            faults.trip(PanicSite::VerifyTask);
            let r = verify_payloads(&blocks);
            (blocks, r)
        });
        ctx.spawn(task.into_actor(self).map(move |joined, act, ctx| {
            let Some((blocks, verdict)) = task_result(joined, "sync_verify", ctx) else {
                return;
            };
            act.verified(ctx, got, peer, blocks, verdict);
        }));
    }

    fn verified(
        &mut self,
        ctx: &mut Context<Self>,
        range: Range,
        peer: NodeId,
        blocks: Vec<Block>,
        verdict: Result<(), Violation>,
    ) {
        let Some(job) = self.job.as_mut() else { return };
        job.verifying -= 1;
        if let Err(v) = verdict {
            job.retry.insert(range);
            self.d.p2p.get().do_send(Penalise {
                peer,
                reason: v.reason,
                detail: v.detail,
            });
            return;
        }
        let bytes = blocks.iter().map(|b| b.payload.len()).sum();
        job.ready_bytes += bytes;
        job.ready.insert(
            range.from,
            Ready {
                peer,
                blocks,
                bytes,
            },
        );
        self.store_next(ctx);
    }

    /// Stores a verified range the store can take now, if one has arrived.
    fn store_next(&mut self, ctx: &mut Context<Self>) {
        let Some(job) = self.job.as_mut() else { return };
        if job.inserting {
            return;
        }
        let Some(from) = job.next_to_store() else {
            return;
        };
        let Some(r) = job.ready.remove(&from) else {
            return;
        };
        job.ready_bytes -= r.bytes;
        job.inserting = true;
        let range = Range {
            top: from + r.blocks.len() as u64 - 1,
            from,
        };
        let backfill = self.d.backfill.clone();
        let peer = r.peer;
        let insert = async move { backfill.insert(r.blocks).await };
        ctx.spawn(insert.into_actor(self).map(move |res, act, ctx| {
            let Some(job) = act.job.as_mut() else { return };
            job.inserting = false;
            match res {
                Ok(n) => {
                    metrics::counter!("haseq_blocks_fetched_total").increment(n as u64);
                    job.stored.insert(range.from, range.top);
                    job.stored_blocks += range.top - range.from + 1;
                    assert!(
                        job.stored_blocks <= job.total(),
                        "stored {} blocks of a {}-block hole",
                        job.stored_blocks,
                        job.total()
                    );
                    if job.stored_blocks == job.total() {
                        act.finish();
                        return;
                    }
                    act.store_next(ctx);
                }
                Err(e) => {
                    // The range is consistent in itself (P2P checked it) and its payloads are
                    // what their hashes say, yet it does not link to the committed chain
                    // above it, or its top is not the checkpoint's block.
                    job.retry.insert(range);
                    act.d.p2p.get().do_send(Penalise {
                        peer,
                        reason: crate::p2p::PenaltyReason::NotOnChain,
                        detail: e.to_string(),
                    });
                }
            }
        }));
    }

    fn finish(&mut self) {
        let Some(job) = self.job.take() else { return };
        let took = job.started.elapsed().as_secs_f64();
        tracing::info!(
            from = job.from,
            to = job.to,
            blocks = job.total(),
            seconds = (took * 10.0).round() / 10.0,
            blocks_per_s = (job.total() as f64 / took.max(1e-3)).round(),
            "history complete: every missing block fetched from peers"
        );
        self.d.progress.send_replace(None);
        set_sync_gauges(false, 0);
        // Look for another hole at once (an older one, or one a new snapshot made).
        self.last_scan = None;
    }

    fn report(&mut self, now: Instant) {
        let Some(job) = self.job.as_mut() else { return };
        let p = job.progress(now);
        if now.duration_since(job.last_log) >= LOG_EVERY {
            job.last_log = now;
            tracing::info!(
                from = p.from,
                to = p.to,
                done = p.done,
                remaining = job.total() - p.done,
                blocks_per_s = p.blocks_per_s,
                eta_s = p.eta_s,
                "catching up: fetching history from peers"
            );
        }
        set_sync_gauges(true, job.total() - p.done);
        self.d.progress.send_replace(Some(p));
    }
}

impl Actor for Syncer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.d.feed.subscribe("syncer", ctx.address().recipient());
        set_sync_gauges(false, 0);
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // A rebuilt Syncer finds its job in the store again; until then nothing is syncing.
        self.d.progress.send_replace(None);
        set_sync_gauges(false, 0);
    }
}

/// `haseq_sync_active` and `haseq_sync_remaining_blocks`: both 0 whenever no job runs (done,
/// or this actor stopped), so neither a finished catch-up nor a dead Syncer leaves a stale
/// count behind.
fn set_sync_gauges(active: bool, remaining: u64) {
    metrics::gauge!("haseq_sync_active").set(if active { 1.0 } else { 0.0 });
    metrics::gauge!("haseq_sync_remaining_blocks").set(remaining as f64);
}

impl Handler<PeerPolled> for Syncer {
    type Result = ();

    fn handle(&mut self, msg: PeerPolled, _: &mut Context<Self>) {
        if let Ok(s) = msg.result {
            self.peers_head.insert(msg.id, s.applied_height.0);
        }
    }
}

crate::supervisor::stops_on_request!(Syncer);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_go_newest_first_and_retries_come_before_new_ranges() {
        let mut j = Job::new(1, 600, Order::Down);
        let a = j.next_range().unwrap();
        assert_eq!((a.from, a.top), (345, 600));
        let b = j.next_range().unwrap();
        assert_eq!((b.from, b.top), (89, 344));
        j.retry.insert(Range {
            top: 600,
            from: 500,
        });
        let c = j.next_range().unwrap();
        assert_eq!((c.from, c.top), (500, 600), "a retry goes first");
        let d = j.next_range().unwrap();
        assert_eq!(
            (d.from, d.top),
            (1, 88),
            "the last range stops at the hole's bottom"
        );
        assert!(j.next_range().is_none());
    }

    #[test]
    fn a_full_buffer_asks_only_for_the_range_that_unblocks_it() {
        let mut j = Job::new(1, 10_000, Order::Down);
        j.ready_bytes = READY_BYTES_MAX;
        assert!(j.next_range().is_none(), "nothing new while full");
        j.retry.insert(Range {
            top: 9_000,
            from: 8_900,
        });
        assert!(j.next_range().is_none(), "a retry lower down waits too");
        j.retry.insert(Range {
            top: 10_000,
            from: 9_900,
        });
        let r = j.next_range().unwrap();
        assert_eq!(r.top, 10_000, "the range right below the stored chain goes");
    }

    #[test]
    fn going_up_ranges_end_at_checkpoints_and_each_is_stored_on_its_own() {
        assert_eq!(CHECKPOINT_EVERY_BLOCKS, 256, "the heights below assume 256");
        let mut j = Job::new(100, 1_000, Order::Up);
        let got: Vec<(u64, u64)> = std::iter::from_fn(|| j.next_range())
            .map(|r| (r.from, r.top))
            .collect();
        assert_eq!(
            got,
            vec![(100, 256), (257, 512), (513, 768), (769, 1_000)],
            "oldest first, each ending at a checkpoint, the last at the hole's top"
        );
        let ready = |blocks: u64| Ready {
            peer: NodeId("n".into()),
            blocks: vec![
                Block {
                    height: Height(0),
                    parent_hash: haseq_messages::BlockHash::ZERO,
                    hash: haseq_messages::BlockHash::ZERO,
                    timestamp: 0,
                    proposer: NodeId("n".into()),
                    payload: Default::default(),
                };
                blocks as usize
            ],
            bytes: 0,
        };
        // A partial answer's lower piece waits for the piece above it; a range ending at a
        // checkpoint, or at the hole's top, goes at once, lowest first.
        j.ready.insert(257, ready(44));
        assert_eq!(j.next_to_store(), None, "257..=300 waits for 301");
        j.ready.insert(769, ready(232));
        j.ready.insert(513, ready(256));
        assert_eq!(j.next_to_store(), Some(513), "the lowest that can go");
        j.ready.remove(&513);
        j.stored.insert(301, 512);
        assert_eq!(j.next_to_store(), Some(257), "now 301 is stored");
        // Going down, a checkpoint vouches for nothing: only the chain above does.
        let mut d = Job::new(100, 1_000, Order::Down);
        d.ready.insert(513, ready(256));
        assert_eq!(d.next_to_store(), None);
        d.ready.insert(769, ready(232));
        assert_eq!(d.next_to_store(), Some(769));
    }

    #[test]
    fn progress_has_a_rate_and_an_eta_once_blocks_are_stored() {
        let mut j = Job::new(1, 1_000, Order::Down);
        let t0 = j.started;
        let p = j.progress(t0);
        assert_eq!((p.from, p.to, p.done), (1, 1_000, 0));
        assert_eq!(p.eta_s, None);
        j.stored.insert(501, 1_000);
        j.stored_blocks = 500;
        let p = j.progress(t0 + Duration::from_secs(1));
        assert_eq!(p.done, 500);
        assert!((p.blocks_per_s - 500.0).abs() < 1.0, "{p:?}");
        assert_eq!(p.eta_s, Some(1.0));
    }
}
