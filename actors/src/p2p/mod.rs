//! P2P: the actor that owns every non-Raft exchange with peers, over the authenticated
//! node-to-node port (Raft's own RPCs share the port but not this actor: openraft sends
//! them itself, so a busy arbiter never delays a heartbeat).
//!
//! Owns: the address book ([`book`]: the configured peers until the node has a membership,
//! then the log's members), the transport's client for status, blocks and forwarded
//! membership changes, the peer table (each peer's last [`PeerState`], round-trip time, errors,
//! penalties, fetches in flight), and the serving side's limits ([`serve`]).
//! Receives: its poll task's [`PeerPolled`]; [`FetchBlocks`] (the Syncer);
//! [`Penalise`] (the Syncer, for what only it can check); [`GetPeers`]; [`ForwardMembers`]
//! and [`ForwardTransfer`] (the membership and transfer APIs on a follower); [`RaftFacts`]
//! (RaftCore: the membership).
//! Sends: every [`PeerPolled`] to the subscribers of its [`PeerFeed`] (the Elector, the
//! Syncer); blocks in answer to [`FetchBlocks`].
//!
//! Peers are not trusted with blocks: an answer that breaks a rule ([`check`]) gets its
//! peer penalised: no blocks are asked of it for [`PEER_BAN`], the first offence of each
//! ban is logged, and every one is counted in `haseq_p2p_peer_penalties_total{peer,reason}`.

pub mod book;
pub mod check;
pub mod crash_fast;
pub mod links;
pub mod serve;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::fut::ActorFutureExt as _;
use actix::{
    Actor, AsyncContext, Context, Handler, Message, MessageResult, ResponseActFuture, WrapFuture,
};
use haseq_messages::members::{MemberChange, MemberChangeError, MembersReport};
use haseq_messages::wire::{PeerState, RpcRequest, RpcResponse};
use haseq_messages::{Block, Height, NodeId, PeerNode};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::faults::{PanicKnobs, PanicSite};
use crate::feed::Feed;
use crate::raft_core::{RaftFacts, RaftFeed};
use crate::supervisor::{ExitGuard, TaskGuard, spawn_task, task_result};
pub use check::PenaltyReason;

/// How often every peer is asked for its status.
pub const PEER_POLL: Duration = Duration::from_millis(100);
/// How long a penalised peer is not asked for blocks.
pub const PEER_BAN: Duration = Duration::from_secs(30);
/// Block fetches in flight to one peer at once (the server admits as many: see [`serve`]).
pub const FETCHES_PER_PEER_MAX: u32 = 2;
/// The most blocks one fetch asks for.
pub const FETCH_BLOCKS_MAX: u32 = 256;
/// How long one block fetch may take (a few MiB over a loaded link).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that answered "busy", or failed, is left alone for this long before it is asked
/// for blocks again.
const PEER_BACKOFF: Duration = Duration::from_millis(200);
/// A peer that lacked a height is not asked for it (or anything below) for this long: it
/// may fetch that history itself meanwhile.
const LACKS_FORGET: Duration = Duration::from_secs(10);

/// How long the last forward of a membership change may take (a change commits two entries,
/// bounded by RaftCore's own deadline).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a forward may take that may forward once more: a removal of the leader waits for
/// the hand-over (at most 5 s) and then for the last forward.
pub const FORWARD_TIMEOUT_FIRST: Duration = Duration::from_secs(25);
/// How long a leadership transfer forwarded to the leader may take to be accepted (the leader
/// answers once it has started the hand-over, not when it is done).
pub const TRANSFER_FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a status poll got no state.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PollError {
    /// The call failed (names the peer, its address and what went wrong).
    #[error(transparent)]
    Net(#[from] haseq_net::NetError),
    /// The peer answered with something other than its status (a version mismatch).
    #[error("unexpected answer to a status poll: {got}")]
    Unexpected {
        /// The answer, as debug text.
        got: String,
    },
}

impl PollError {
    /// The peer answered that this node is not a member of its cluster.
    pub fn is_not_a_member(&self) -> bool {
        matches!(self, PollError::Net(e) if e.refused_as_not_a_member())
    }
}

/// A peer's status poll, as the poll task reports it and subscribers receive it.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct PeerPolled {
    /// Which peer.
    pub id: NodeId,
    /// Its state, or why the poll failed.
    pub result: Result<PeerState, PollError>,
    /// The poll's round-trip time, when it was answered.
    pub rtt: Option<Duration>,
}

/// Who receives every [`PeerPolled`] (the Elector, the Syncer): a [`Feed`] the node makes and
/// every rebuild of the P2P actor shares, so a rebuilt P2P keeps its subscribers. A poll is
/// not replayed to a new subscriber: its age would be lost.
pub type PeerFeed = Feed<PeerPolled>;

/// Blocks `from..=to` from some peer. The answer may be a prefix of the range (a peer's
/// answer is bounded in bytes); the caller asks again for the rest.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Fetched, FetchError>")]
pub struct FetchBlocks {
    /// First height wanted.
    pub from: Height,
    /// Last height wanted (at most [`FETCH_BLOCKS_MAX`] above `from`).
    pub to: Height,
}

/// Blocks a peer served, already checked by [`check::check_range`].
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Who served them.
    pub peer: NodeId,
    /// Consecutive blocks from the height asked, hash-linked among themselves.
    pub blocks: Vec<Block>,
}

/// Why a fetch brought nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No peer can be asked now (none known to hold the range, all busy, banned or down).
    #[error("no peer can serve blocks {from}..={to} now")]
    NoPeer {
        /// First height wanted.
        from: Height,
        /// Last height wanted.
        to: Height,
    },
    /// The peer asked failed to answer, or lacks the range.
    #[error("{peer}: {reason}")]
    Failed {
        /// The peer asked.
        peer: NodeId,
        /// What happened.
        reason: String,
    },
    /// The peer's answer broke a rule; it has been penalised.
    #[error("{peer} penalised: {violation}")]
    Penalised {
        /// The peer.
        peer: NodeId,
        /// The rule it broke.
        violation: check::Violation,
    },
    /// The fetch task panicked; the P2P actor is being rebuilt.
    #[error("the P2P actor failed; try again")]
    Crashed,
}

/// The Syncer found that blocks `peer` served are not on the committed chain, or that their
/// payloads are not what their hashes say.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Penalise {
    /// The peer.
    pub peer: NodeId,
    /// The rule broken.
    pub reason: PenaltyReason,
    /// Heights and hashes, for the log.
    pub detail: String,
}

/// Hand a membership change to the leader `to` (the membership API on a follower).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<MembersReport, MemberChangeError>")]
pub struct ForwardMembers {
    /// The leader.
    pub to: NodeId,
    /// The change.
    pub change: MemberChange,
    /// Forwards so far, this one included.
    pub hops: u8,
}

/// Hand an operator's leadership transfer to the leader `to` (the admin API on a follower).
/// The leader answers with the node it hands over to; it does not forward again.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<NodeId, ForwardRefused>")]
pub struct ForwardTransfer {
    /// The leader.
    pub to: NodeId,
    /// The transfer's target; `None` for the most caught-up eligible peer.
    pub target: Option<NodeId>,
    /// Transfer even to a lagging, unhealthy or paused node.
    pub force: bool,
}

/// Why a forwarded request had no effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardRefused {
    /// The leader answered and refused (its reason).
    #[error("the leader refused: {0}")]
    Refused(String),
    /// The leader could not be asked, or did not answer.
    #[error("{0}")]
    Unreachable(String),
}

/// The peer table, as `/status` might show it.
#[derive(Message)]
#[rtype(result = "Vec<PeerInfo>")]
pub struct GetPeers;

/// One peer as the P2P actor knows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    /// Its id.
    pub id: NodeId,
    /// Its node-to-node address.
    pub addr: String,
    /// Voter, learner, or configured only (before a membership is known).
    pub standing: Option<book::Standing>,
    /// Its last answer to a status poll.
    pub state: Option<PeerState>,
    /// Milliseconds since that answer.
    pub seen_ms_ago: Option<u64>,
    /// The last poll's round-trip time, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Why the last poll failed.
    pub error: Option<String>,
    /// Seconds left of a penalty (no blocks are asked of it meanwhile).
    pub banned_s: Option<u64>,
}

/// What the P2P actor needs; cheap to clone.
#[derive(Clone)]
pub struct P2pDeps {
    /// This node's id.
    pub node_id: NodeId,
    /// The configured peers and their node-to-node addresses.
    pub peers: Vec<(NodeId, String)>,
    /// Where RaftCore tells the membership.
    pub raft_feed: RaftFeed,
    /// The transport's client side.
    pub network: haseq_net::Network,
    /// `raft.send_timeout`: the budget of a status poll.
    pub send_timeout: Duration,
    /// Where peers' states go.
    pub feed: PeerFeed,
    /// Fault knobs.
    pub faults: PanicKnobs,
    /// How members' connections to this node ended (crash-fast failover's evidence).
    pub links: links::PeerLinks,
    /// The Elector's view: whether this node may lead.
    pub view: watch::Receiver<crate::elector::ElectorView>,
    /// RaftCore, told to campaign by crash-fast failover.
    pub raft_core: crate::supervisor::Slot<crate::raft_core::RaftCore>,
    /// `raft.crash_fast_failover`.
    pub crash_fast: bool,
}

#[derive(Default)]
struct Peer {
    addr: String,
    standing: Option<book::Standing>,
    state: Option<(PeerState, Instant)>,
    rtt: Option<Duration>,
    error: Option<String>,
    banned_until: Option<Instant>,
    /// This peer answered nothing from this height (it does not hold it), at this time.
    lacks: Option<(Height, Instant)>,
    /// Not asked for blocks before this instant (it was busy, or failed).
    backoff_until: Option<Instant>,
    inflight: u32,
}

impl Peer {
    fn may_serve(&self, from: Height, to: Height, now: Instant) -> bool {
        if self.inflight >= FETCHES_PER_PEER_MAX
            || self.banned_until.is_some_and(|t| t > now)
            || self.backoff_until.is_some_and(|t| t > now)
        {
            return false;
        }
        if let Some((h, at)) = self.lacks
            && from <= h
            && now.duration_since(at) < LACKS_FORGET
        {
            return false;
        }
        // A peer whose head is known must hold the top of the range.
        match &self.state {
            Some((s, _)) => s.applied_height >= to,
            None => false,
        }
    }
}

/// Creates a new peer's counters at 0 (no penalty, no refused request yet), so that an alert
/// on their increase sees the first one.
fn zero_peer_metrics(peer: &NodeId) {
    for reason in PenaltyReason::ALL {
        metrics::counter!(
            "haseq_p2p_peer_penalties_total",
            "peer" => peer.to_string(),
            "reason" => reason.as_str()
        )
        .increment(0);
    }
    metrics::counter!("haseq_p2p_serve_refused_total", "peer" => peer.to_string()).increment(0);
}

/// The actor; see the module doc.
pub struct P2p {
    d: P2pDeps,
    peers: BTreeMap<NodeId, Peer>,
    /// The book the poll task polls (`None` entries: not reachable, no address).
    book: watch::Sender<Arc<Vec<book::Entry>>>,
    /// The disagreements between `raft.peers` and the log last warned about.
    differences: Vec<String>,
    /// Rotates the choice among equally good peers.
    turn: usize,
    poll_cancel: CancellationToken,
    _poll: Option<TaskGuard>,
    /// What RaftCore last told.
    facts: Option<RaftFacts>,
    /// The crash-fast attempt running, for which leader and term.
    crash_fast: Option<(NodeId, haseq_messages::Term, TaskGuard)>,
    _exit: ExitGuard,
}

impl P2p {
    /// A P2P actor over the configured peers.
    pub fn new(d: P2pDeps, exit: ExitGuard) -> P2p {
        let (entries, _) = book::resolve(&d.node_id, &d.peers, &Default::default());
        let mut p2p = P2p {
            d,
            peers: BTreeMap::new(),
            book: watch::channel(Arc::new(Vec::new())).0,
            differences: Vec::new(),
            turn: 0,
            poll_cancel: CancellationToken::new(),
            _poll: None,
            facts: None,
            crash_fast: None,
            _exit: exit,
        };
        p2p.set_book(entries);
        p2p
    }

    /// Take a new book: peers that left it are forgotten, new ones start unknown.
    fn set_book(&mut self, entries: Vec<book::Entry>) {
        self.peers
            .retain(|id, _| entries.iter().any(|e| &e.id == id));
        for e in &entries {
            if !self.peers.contains_key(&e.id) {
                zero_peer_metrics(&e.id);
            }
            let p = self.peers.entry(e.id.clone()).or_default();
            p.addr.clone_from(&e.addr);
            p.standing = Some(e.standing);
        }
        let entries: Vec<book::Entry> =
            entries.into_iter().filter(|e| !e.addr.is_empty()).collect();
        if **self.book.borrow() != entries {
            self.book.send_replace(Arc::new(entries));
        }
    }

    /// The peer to ask for `from..=to`: one that holds it and may be asked, with the fewest
    /// fetches in flight, then the shortest round trip; ties rotate.
    fn choose(&mut self, from: Height, to: Height) -> Option<NodeId> {
        let now = Instant::now();
        let n = self.peers.len().max(1);
        self.turn = self.turn.wrapping_add(1);
        let turn = self.turn;
        self.peers
            .iter()
            .enumerate()
            .filter(|(_, (_, p))| p.may_serve(from, to, now))
            .min_by_key(|(i, (_, p))| {
                (
                    p.inflight,
                    p.rtt.map(|r| r.as_micros() / 500).unwrap_or(u128::MAX),
                    (i + n - turn % n) % n,
                )
            })
            .map(|(_, (id, _))| id.clone())
    }

    fn penalise(&mut self, peer: &NodeId, reason: PenaltyReason, detail: &str) {
        metrics::counter!(
            "haseq_p2p_peer_penalties_total",
            "peer" => peer.to_string(),
            "reason" => reason.as_str()
        )
        .increment(1);
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let now = Instant::now();
        let already = p.banned_until.is_some_and(|t| t > now);
        p.banned_until = Some(now + PEER_BAN);
        if !already {
            tracing::warn!(
                peer = %peer, %reason, detail,
                "peer served bad blocks; not asking it for blocks for {PEER_BAN:?} (logged once per ban)"
            );
        }
    }

    fn start_poll(&mut self, ctx: &mut Context<Self>) {
        let addr = ctx.address();
        let network = self.d.network.clone();
        let book = self.book.subscribe();
        let budget = self.d.send_timeout.max(Duration::from_millis(50));
        let cancel = self.poll_cancel.clone();
        let faults = self.d.faults.clone();
        // Polls run in a tokio task so a slow peer never holds up this actor.
        let poll = async move {
            let mut tick = tokio::time::interval(PEER_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                faults.trip(PanicSite::PollTask);
                let peers = book.borrow().clone();
                let polls = peers.iter().map(|e| {
                    let (id, a) = (&e.id, &e.addr);
                    let client = network.client(id.clone(), &PeerNode { addr: a.clone() });
                    async move {
                        let started = Instant::now();
                        let r = match client.call(RpcRequest::PeerStatus, budget).await {
                            Ok(RpcResponse::PeerStatus(s)) => Ok(s),
                            Ok(other) => Err(PollError::Unexpected {
                                got: format!("{other:?}"),
                            }),
                            Err(e) => Err(PollError::Net(e)),
                        };
                        let rtt = r.is_ok().then(|| started.elapsed());
                        PeerPolled {
                            id: id.clone(),
                            result: r,
                            rtt,
                        }
                    }
                });
                for polled in futures::future::join_all(polls).await {
                    if addr.try_send(polled).is_err() && !addr.connected() {
                        return; // the actor is gone
                    }
                }
            }
        };
        self._poll = Some(spawn_task(ctx, "p2p_poll", poll));
    }
}

impl Actor for P2p {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Each poll round sends one message per peer; leave room for a few rounds.
        ctx.set_mailbox_capacity(64);
        self.start_poll(ctx);
        self.d.raft_feed.subscribe("p2p", ctx.address().recipient());
        // Each vanishing of a member's links, as the serving side records it.
        let rx = self.d.links.subscribe();
        let vanished = futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            let peer = rx.borrow_and_update().as_ref().map(|(p, _)| p.clone());
            Some((LinkVanished(peer), rx))
        });
        ctx.add_message_stream(vanished);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.poll_cancel.cancel();
    }
}

impl Drop for P2p {
    fn drop(&mut self) {
        self.poll_cancel.cancel();
    }
}

impl Handler<PeerPolled> for P2p {
    type Result = ();

    fn handle(&mut self, msg: PeerPolled, _: &mut Context<Self>) {
        self.d.faults.trip(PanicSite::P2p);
        if let Some(p) = self.peers.get_mut(&msg.id) {
            match &msg.result {
                Ok(s) => {
                    metrics::gauge!("haseq_peer_exec_height", "peer" => msg.id.to_string())
                        .set(s.exec_height.0 as f64);
                    p.state = Some((s.clone(), Instant::now()));
                    p.error = None;
                }
                Err(e) => p.error = Some(e.to_string()),
            }
            if let Some(rtt) = msg.rtt {
                metrics::gauge!("haseq_peer_rtt_seconds", "peer" => msg.id.to_string())
                    .set(rtt.as_secs_f64());
                p.rtt = Some(rtt);
            }
        }
        self.d.feed.publish(&msg);
    }
}

/// The serving side saw every connection from this peer end without a goodbye.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct LinkVanished(pub Option<NodeId>);

impl Handler<LinkVanished> for P2p {
    type Result = ();

    fn handle(&mut self, msg: LinkVanished, ctx: &mut Context<Self>) {
        let Some(peer) = msg.0 else { return };
        if !self.d.crash_fast {
            return;
        }
        let Some(f) = &self.facts else { return };
        // Only the leader this node follows, and only as a voter that would be counted.
        if f.role != crate::raft_core::Role::Follower
            || f.leader.as_ref() != Some(&peer)
            || !f.members.voters.contains_key(&self.d.node_id)
            || !f.members.voters.contains_key(&peer)
        {
            return;
        }
        let term = f.term;
        if let Some((l, t, task)) = &self.crash_fast
            && *l == peer
            && *t == term
            && !task.is_finished()
        {
            return;
        }
        if !self.d.view.borrow().eligible {
            crash_fast::count(crash_fast::Outcome::Ineligible);
            tracing::info!(leader = %peer, term = term.0, "the leader's connections closed without a goodbye; this node may not lead, so it leaves the election to the others");
            return;
        }
        let others = f
            .members
            .voters
            .keys()
            .filter(|id| **id != self.d.node_id && **id != peer)
            .map(|id| {
                let addr = self
                    .peers
                    .get(id)
                    .map(|p| p.addr.clone())
                    .unwrap_or_default();
                (id.clone(), addr)
            })
            .filter(|(_, addr)| !addr.is_empty())
            .collect();
        let attempt = crash_fast::Attempt {
            me: self.d.node_id.clone(),
            leader: peer.clone(),
            term,
            others,
            voters: f.members.voters.len(),
            links: self.d.links.clone(),
            network: self.d.network.clone(),
            ask_timeout: self.d.send_timeout.min(crash_fast::ASK_TIMEOUT_MAX),
            raft_core: self.d.raft_core.clone(),
        };
        let task = spawn_task(ctx, "crash_fast", async move {
            attempt.run().await;
        });
        self.crash_fast = Some((peer, term, task));
    }
}

impl Handler<RaftFacts> for P2p {
    type Result = ();

    fn handle(&mut self, msg: RaftFacts, _: &mut Context<Self>) {
        let (entries, differences) = book::resolve(&self.d.node_id, &self.d.peers, &msg.members);
        if differences != self.differences {
            for d in &differences {
                tracing::warn!(difference = %d, "raft.peers disagrees with the cluster's membership");
            }
            self.differences = differences;
        }
        self.set_book(entries);
        self.facts = Some(msg);
    }
}

impl P2p {
    /// Call the leader `to` with a request forwarded from this node's API, in a task of its
    /// own; `Err` names why it could not be sent.
    fn forward_call(
        &self,
        to: &NodeId,
        req: RpcRequest,
        budget: Duration,
    ) -> Result<tokio::task::JoinHandle<Result<RpcResponse, haseq_net::NetError>>, String> {
        let Some(addr) = self
            .peers
            .get(to)
            .map(|p| p.addr.clone())
            .filter(|a| !a.is_empty())
        else {
            return Err(format!("no address known for the leader {to}"));
        };
        let client = self.d.network.client(to.clone(), &PeerNode { addr });
        Ok(tokio::spawn(async move { client.call(req, budget).await }))
    }
}

impl Handler<ForwardMembers> for P2p {
    type Result = ResponseActFuture<Self, Result<MembersReport, MemberChangeError>>;

    fn handle(&mut self, msg: ForwardMembers, _: &mut Context<Self>) -> Self::Result {
        let leader = msg.to.clone();
        let not_leader = move |why: String| MemberChangeError::NotLeader {
            leader: Some(leader.clone()),
            why,
        };
        let req = RpcRequest::ChangeMembers {
            change: msg.change.clone(),
            hops: msg.hops,
        };
        let budget = if msg.hops >= crate::members::FORWARD_HOPS_MAX {
            FORWARD_TIMEOUT
        } else {
            FORWARD_TIMEOUT_FIRST
        };
        let task = match self.forward_call(&msg.to, req, budget) {
            Ok(t) => t,
            Err(why) => return Box::pin(actix::fut::ready(Err(not_leader(why)))),
        };
        Box::pin(task.into_actor(self).map(move |joined, _, ctx| {
            let Some(answer) = task_result(joined, "p2p_forward", ctx) else {
                return Err(MemberChangeError::Unavailable(
                    "the P2P actor failed; try again".into(),
                ));
            };
            match answer {
                Ok(RpcResponse::MembersChanged(r)) => r,
                Ok(other) => Err(not_leader(format!("unexpected answer {other:?}"))),
                // The leader may still make the change: say so, not "not the leader".
                Err(e) if matches!(e.kind, haseq_net::NetErrorKind::Timeout(_)) => {
                    Err(MemberChangeError::Unavailable(format!(
                        "the leader did not answer within {budget:?}; the change may still be made: check `haseqd ctl members` before trying again ({e})"
                    )))
                }
                Err(e) => Err(not_leader(format!("forwarding to the leader: {e}"))),
            }
        }))
    }
}

impl Handler<ForwardTransfer> for P2p {
    type Result = ResponseActFuture<Self, Result<NodeId, ForwardRefused>>;

    fn handle(&mut self, msg: ForwardTransfer, _: &mut Context<Self>) -> Self::Result {
        let req = RpcRequest::TransferLeadership {
            to: msg.target,
            force: msg.force,
        };
        let task = match self.forward_call(&msg.to, req, TRANSFER_FORWARD_TIMEOUT) {
            Ok(t) => t,
            Err(why) => return Box::pin(actix::fut::ready(Err(ForwardRefused::Unreachable(why)))),
        };
        Box::pin(task.into_actor(self).map(move |joined, _, ctx| {
            let Some(answer) = task_result(joined, "p2p_forward", ctx) else {
                return Err(ForwardRefused::Unreachable(
                    "the P2P actor failed; try again".into(),
                ));
            };
            match answer {
                Ok(RpcResponse::TransferStarted(Ok(to))) => Ok(to),
                Ok(RpcResponse::TransferStarted(Err(why))) => Err(ForwardRefused::Refused(why)),
                Ok(RpcResponse::Error(e)) => {
                    Err(ForwardRefused::Unreachable(format!("the leader: {e}")))
                }
                Ok(other) => Err(ForwardRefused::Unreachable(format!(
                    "unexpected answer {other:?}"
                ))),
                Err(e) => Err(ForwardRefused::Unreachable(format!(
                    "forwarding to the leader: {e}"
                ))),
            }
        }))
    }
}

impl Handler<FetchBlocks> for P2p {
    type Result = ResponseActFuture<Self, Result<Fetched, FetchError>>;

    fn handle(&mut self, msg: FetchBlocks, _: &mut Context<Self>) -> Self::Result {
        let FetchBlocks { from, to } = msg;
        let to = to.min(Height(from.0.saturating_add(FETCH_BLOCKS_MAX as u64 - 1)));
        let Some(peer) = self.choose(from, to) else {
            return Box::pin(actix::fut::ready(Err(FetchError::NoPeer { from, to })));
        };
        let p = self.peers.get_mut(&peer).expect("chosen from the table");
        p.inflight += 1;
        let client = self.d.network.client(
            peer.clone(),
            &PeerNode {
                addr: p.addr.clone(),
            },
        );
        let faults = self.d.faults.clone();
        let max = (to.0 - from.0 + 1) as u32;
        // The call runs on the tokio runtime: the answer is decoded there, not on the arbiter.
        let task = tokio::spawn(async move {
            faults.trip(PanicSite::FetchTask);
            client
                .call(RpcRequest::FetchBlocks { from, max }, FETCH_TIMEOUT)
                .await
        });
        Box::pin(task.into_actor(self).map(move |joined, act, ctx| {
            let now = Instant::now();
            if let Some(p) = act.peers.get_mut(&peer) {
                p.inflight = p.inflight.saturating_sub(1);
            }
            let Some(answer) = task_result(joined, "p2p_fetch", ctx) else {
                return Err(FetchError::Crashed);
            };
            let failed = |act: &mut P2p, reason: String| {
                if let Some(p) = act.peers.get_mut(&peer) {
                    p.backoff_until = Some(now + PEER_BACKOFF);
                }
                Err(FetchError::Failed {
                    peer: peer.clone(),
                    reason,
                })
            };
            match answer {
                Ok(RpcResponse::Blocks(blocks)) => {
                    if let Err(v) = check::check_range(from, to, &blocks) {
                        act.penalise(&peer, v.reason, &v.detail);
                        return Err(FetchError::Penalised {
                            peer: peer.clone(),
                            violation: v,
                        });
                    }
                    if blocks.is_empty() {
                        if let Some(p) = act.peers.get_mut(&peer) {
                            p.lacks = Some((from, now));
                        }
                        return Err(FetchError::Failed {
                            peer: peer.clone(),
                            reason: format!("does not hold block {from}"),
                        });
                    }
                    Ok(Fetched {
                        peer: peer.clone(),
                        blocks,
                    })
                }
                Ok(other) => failed(act, format!("unexpected answer {other:?}")),
                Err(e) => failed(act, e.to_string()),
            }
        }))
    }
}

impl Handler<Penalise> for P2p {
    type Result = ();

    fn handle(&mut self, msg: Penalise, _: &mut Context<Self>) {
        self.penalise(&msg.peer, msg.reason, &msg.detail);
    }
}

impl Handler<GetPeers> for P2p {
    type Result = MessageResult<GetPeers>;

    fn handle(&mut self, _: GetPeers, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        MessageResult(
            self.peers
                .iter()
                .map(|(id, p)| PeerInfo {
                    id: id.clone(),
                    addr: p.addr.clone(),
                    standing: p.standing,
                    state: p.state.as_ref().map(|(s, _)| s.clone()),
                    seen_ms_ago: p
                        .state
                        .as_ref()
                        .map(|(_, at)| now.duration_since(*at).as_millis() as u64),
                    rtt_ms: p.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    error: p.error.clone(),
                    banned_s: p
                        .banned_until
                        .filter(|t| *t > now)
                        .map(|t| t.duration_since(now).as_secs()),
                })
                .collect(),
        )
    }
}

crate::supervisor::stops_on_request!(P2p);
