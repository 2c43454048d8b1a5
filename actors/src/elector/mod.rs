//! Elector: the node's role policy. Decides whether this node may lead, whether it produces,
//! and when a leader hands over.
//!
//! Owns: the peer table (as the P2P actor reports it), the persisted pause flag, the
//! timers the policy reads.
//! Receives: its own tick (every [`TICK`]), `PeerPolled`, and admin calls `GetView`,
//! `TransferLeadership`, `Pause`, `Resume`, `Handover`.
//! Receives from RaftCore: [`RaftFacts`] (role, term, leader, log positions) on its feed.
//! Sends: `StartProducing` / `StopProducing` to the Producer; [`SetElect`] and
//! [`TransferLeader`] to RaftCore; [`NodeEvent`]s for `/events`; its view (for `/status`, the vote gate and
//! peers' polls) on a watch channel.
//!
//! The decisions are [`policy::decide`], a pure function of what the node knows (see its
//! rules there and in docs/DESIGN.md, "Leadership that never stalls"). Each tick this actor
//! gathers the [`policy::Inputs`], asks the policy, and applies only what changed: the `elect`
//! switch, the Producer's start or stop with the rule's own reason, a transfer, a log line.

mod error;
pub mod policy;
pub mod timing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message, MessageResult};
use haseq_messages::wire::PeerState;
use haseq_messages::{Height, NodeId, Term};
use haseq_storage::BlockReader;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

pub use error::{PauseError, TransferError};
pub use policy::{PEER_STALE, TRANSFER_TARGET_FRESH};

use crate::events::{NodeEvent, now_unix_ms};
use crate::exec_replayer::ExecStatus;
use crate::p2p::book::{self, Standing};
use crate::producer::{Producer, StartProducing, StopProducing, StopReason};
use crate::raft_core::{RaftCore, RaftFacts, RaftFeed, Role, SetElect, TransferLeader};
use crate::supervisor::{ExitGuard, Slot};
use policy::{Decision, Inputs, Limits, Own, Production};

/// How often the policy is re-evaluated.
pub const TICK: Duration = Duration::from_millis(20);
/// How often peers are polled for their status (by the P2P actor).
pub const PEER_POLL: Duration = crate::p2p::PEER_POLL;
/// How long a majority of the other voters must keep refusing this node as not a member
/// before it counts itself removed (a follower applies a new membership a moment after the
/// leader, and a learner just added may be refused by it meanwhile).
pub const REMOVED_AFTER: Duration = Duration::from_secs(2);
/// How often a leader that should hand over but has no fit peer says so again.
const NO_TARGET_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the Elector needs; cheap to clone.
#[derive(Clone)]
pub struct ElectorDeps {
    /// This node.
    pub node_id: NodeId,
    /// RaftCore, which runs the elect switch and transfers.
    pub raft_core: Slot<RaftCore>,
    /// Where RaftCore publishes what Raft did.
    pub raft_feed: RaftFeed,
    /// Where the P2P actor publishes peers' states.
    pub peer_feed: crate::p2p::PeerFeed,
    /// The configured peers (the book until RaftCore tells the membership).
    pub peers: Vec<(NodeId, String)>,
    /// The engine's position.
    pub exec: watch::Receiver<ExecStatus>,
    /// The applied head.
    pub blocks: BlockReader,
    /// The Producer to steer.
    pub producer: Slot<Producer>,
    /// Where the view is published.
    pub view: watch::Sender<ElectorView>,
    /// Where events go.
    pub events: broadcast::Sender<NodeEvent>,
    /// `node.aggregator`.
    pub aggregator: bool,
    /// `raft.max_exec_lag_blocks`.
    pub max_exec_lag_blocks: u64,
    /// `raft.handoff_after`.
    pub handoff_after: Duration,
    /// `raft.unhealthy_leader_grace`.
    pub unhealthy_leader_grace: Duration,
    /// `raft.leader_lease_timeout`.
    pub leader_lease_timeout: Duration,
    /// `raft.election_timeout`: the relaxation window and the transfer budget derive from it
    /// ([`policy::Limits::derive`]).
    pub election_timeout: Duration,
    /// The four configured timings, for the timing advisor ([`timing::advise`]).
    pub timing: crate::settings::RaftTiming,
    /// The file whose presence means "paused" (survives restarts).
    pub pause_file: PathBuf,
    /// Fault knobs.
    pub faults: crate::faults::PanicKnobs,
}

/// A peer as this node last saw it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    /// Its id.
    pub id: NodeId,
    /// Its node-to-node address.
    pub addr: String,
    /// Voter, learner, or configured only (before this node has a membership).
    pub standing: Standing,
    /// Its last answer, if fresh.
    pub state: Option<PeerState>,
    /// Milliseconds since its last answer.
    pub seen_ms_ago: Option<u64>,
    /// Why the last poll failed.
    pub error: Option<String>,
}

/// The Elector's published view.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ElectorView {
    /// This node as its peers see it.
    pub me: PeerState,
    /// May this node lead (strictly, or relaxed because no node is eligible)?
    pub eligible: bool,
    /// Why not.
    pub ineligible_reason: Option<String>,
    /// Eligible only because no node was eligible for a while.
    pub relaxed: bool,
    /// The highest execution height this node knows of (its own or a fresh peer's).
    pub best_exec_height: u64,
    /// `raft.max_exec_lag_blocks`.
    pub max_exec_lag_blocks: u64,
    /// Whether the Producer is told to produce.
    pub producing: bool,
    /// Why the Producer is told not to produce (`None` while producing).
    pub stop_reason: Option<String>,
    /// Blocks this node's engine is behind the cluster's head.
    pub exec_lag: u64,
    /// The highest applied height this node knows of (its own, its peers', or implied by the
    /// leader's commit index).
    pub cluster_head: u64,
    /// Whether voters refuse lagging candidates right now (lifted when no node is eligible).
    pub gate_active: bool,
    /// Some peer has answered since start (or there are none): the cluster head is known.
    pub peers_heard: bool,
    /// This node is no longer a member of the cluster: why, in words (null while it is).
    pub removed: Option<String>,
    /// The voters of this node's membership (empty before it has one): the vote gate
    /// refuses any other candidate that cannot know a newer membership.
    pub voters: Vec<NodeId>,
    /// The log index of that membership's entry.
    pub members_log_index: u64,
    /// The peers.
    pub peers: Vec<PeerView>,
    /// The Elector has decided at least once: until then no height is known, and the vote
    /// gate cannot judge a candidate.
    pub decided: bool,
    /// The timing advisor's verdict on the configured timings (`/status` `timing`).
    pub timing: Option<timing::TimingAdvice>,
}

pub use crate::p2p::PeerPolled;

/// Ask for the current view.
#[derive(Message)]
#[rtype(result = "ElectorView")]
pub struct GetView;

/// Admin: hand leadership to `to`, or to the best peer.
#[derive(Message)]
#[rtype(result = "Result<NodeId, TransferError>")]
pub struct TransferLeadership {
    /// The target; `None` for the most caught-up eligible peer.
    pub to: Option<NodeId>,
    /// Transfer even to a lagging, unhealthy or paused node.
    pub force: bool,
}

/// Admin: stop producing on this node (persisted) until resumed.
#[derive(Message)]
#[rtype(result = "Result<bool, PauseError>")]
pub struct Pause {
    /// Pause even when no other node is eligible.
    pub force: bool,
}

/// Admin: let this node produce again.
#[derive(Message)]
#[rtype(result = "Result<bool, PauseError>")]
pub struct Resume;

/// Graceful shutdown: stop producing and, on a leader, hand over to the best peer.
#[derive(Message)]
#[rtype(result = "Option<NodeId>")]
pub struct Handover;

#[derive(Default)]
struct Seen {
    state: Option<(PeerState, Instant)>,
    error: Option<String>,
    /// Its last answer said this node is not a member of its cluster.
    refuses_us: bool,
}

/// A timer the policy reads as "running for how long": started on the first tick its
/// condition holds, cleared on the first tick it does not.
#[derive(Default)]
struct Since(Option<Instant>);

impl Since {
    fn track(&mut self, on: bool, now: Instant) {
        if !on {
            self.0 = None;
        } else if self.0.is_none() {
            self.0 = Some(now);
        }
    }

    fn elapsed(&self, now: Instant) -> Option<Duration> {
        self.0.map(|t| now.saturating_duration_since(t))
    }
}

/// The event fields whose change is pushed to `/events`.
#[derive(PartialEq)]
struct EventState {
    role: Role,
    term: Term,
    leader: Option<NodeId>,
    eligible: bool,
}

/// The actor; see the module doc.
pub struct Elector {
    d: ElectorDeps,
    limits: Limits,
    /// Who the peers are: the configured ones, then the membership's ([`book::resolve`]).
    book: Vec<book::Entry>,
    peers: BTreeMap<NodeId, Seen>,
    /// Since when a majority of the other voters refuse this node as not a member.
    refused: Since,
    /// The removal reason last logged.
    removed_logged: Option<String>,
    paused: bool,
    /// A graceful shutdown has begun (`Handover`).
    handing_over: bool,
    /// The elect switch last sent, and to which RaftCore (a rebuilt one has a new address,
    /// and a message to the old, closed mailbox is lost: see `apply_production`). openraft
    /// keeps the switch itself across RaftCore's rebuilds.
    elect_sent: Option<(Addr<RaftCore>, bool)>,
    /// What RaftCore last told; `None` until it has (the policy waits for it).
    raft: Option<RaftFacts>,
    /// Since when no live leader is known.
    leaderless: Since,
    unhealthy: Since,
    behind: Since,
    last_transfer: Option<Instant>,
    /// Since when each peer has answered without going stale (the policy's `heard_for`).
    heard_since: BTreeMap<NodeId, Instant>,
    /// The production decision last sent, and to which Producer: a rebuilt Producer has a new
    /// address and starts idle, so the decision is sent again (see `apply_production`).
    sent: Option<(Addr<Producer>, Production)>,
    /// The last hand-over decision, and when a "no fit peer" warning was last logged.
    last_handover: Option<policy::Handover>,
    no_target_logged: Option<Instant>,
    last_event: Option<EventState>,
    /// Round trips to peers, from the P2P actor's polls.
    rtt: timing::RttSamples,
    /// The timing verdict last logged.
    timing_verdict: Option<timing::Verdict>,
    _exit: ExitGuard,
}

impl Elector {
    /// An Elector; reads the persisted pause flag.
    pub fn new(d: ElectorDeps, exit: ExitGuard) -> Elector {
        let paused = d.pause_file.exists();
        let (book, _) = book::resolve(&d.node_id, &d.peers, &Default::default());
        let peers = book
            .iter()
            .map(|e| (e.id.clone(), Seen::default()))
            .collect();
        let limits = Limits::derive(
            d.election_timeout,
            d.leader_lease_timeout,
            d.max_exec_lag_blocks,
            d.handoff_after,
            d.unhealthy_leader_grace,
        );
        Elector {
            d,
            limits,
            book,
            peers,
            refused: Since::default(),
            removed_logged: None,
            paused,
            handing_over: false,
            elect_sent: None,
            raft: None,
            leaderless: Since::default(),
            unhealthy: Since::default(),
            behind: Since::default(),
            last_transfer: None,
            heard_since: BTreeMap::new(),
            sent: None,
            last_handover: None,
            no_target_logged: None,
            last_event: None,
            rtt: timing::RttSamples::default(),
            timing_verdict: None,
            _exit: exit,
        }
    }

    /// Everything the policy looks at, read now, with what RaftCore last told.
    fn gather(&self, r: &RaftFacts, now: Instant) -> Inputs {
        let exec = self.d.exec.borrow().clone();
        let applied = self
            .d
            .blocks
            .head()
            .map(|h| h.height)
            .unwrap_or(Height(exec.applied_height));
        // Only those that may lead are the policy's peers: not learners.
        let peers = self
            .peers
            .iter()
            .filter(|(id, _)| self.may_lead(id))
            .filter_map(|(id, s)| {
                s.state.as_ref().map(|(st, at)| policy::Peer {
                    id: id.clone(),
                    state: st.clone(),
                    age: now.saturating_duration_since(*at),
                    last_poll_failed: s.error.is_some(),
                    heard_for: self
                        .heard_since
                        .get(id)
                        .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t)),
                })
            })
            .collect();
        let is_leader = r.role == Role::Leader;
        Inputs {
            node_id: self.d.node_id.clone(),
            configured_peers: self
                .book
                .iter()
                .filter(|e| e.standing != Standing::Learner)
                .map(|e| e.id.clone())
                .collect(),
            peers,
            is_leader,
            term: r.term,
            quorum_acked_ago: r
                .quorum_acked_at
                .filter(|_| is_leader)
                .map(|t| now.saturating_duration_since(t)),
            own: Own {
                applied,
                applied_index: r.applied_index,
                committed_index: r.committed_index,
                last_log: r.last_log,
                exec_height: Height(exec.exec_height),
                healthy: exec.healthy,
                on_other_chain: exec.on_other_chain,
                engine_error: exec.error,
            },
            aggregator: self.d.aggregator,
            paused: self.paused,
            shutting_down: self.handing_over,
            removed: self.removed(r, now),
            leaderless_for: self.leaderless.elapsed(now),
            unhealthy_for: self.unhealthy.elapsed(now),
            behind_for: self.behind.elapsed(now),
            since_last_transfer: self.last_transfer.map(|t| now.saturating_duration_since(t)),
            limits: self.limits,
        }
    }

    /// A voter, or a configured peer before the membership is known.
    fn may_lead(&self, id: &NodeId) -> bool {
        self.book
            .iter()
            .any(|e| &e.id == id && e.standing != Standing::Learner)
    }

    /// Why this node is no longer a member, if it is not: a majority of the other voters
    /// have refused it as not a member for [`REMOVED_AFTER`]. Its own membership is no
    /// evidence: a learner catching up applies early entries (or an old snapshot) whose
    /// membership predates it, and a node that was down while it was removed never received
    /// the entry that removed it. A node with no membership yet is joining, not removed.
    fn removed(&self, r: &RaftFacts, now: Instant) -> Option<String> {
        if r.members.is_empty() {
            return None;
        }
        self.refused.elapsed(now).filter(|t| *t >= REMOVED_AFTER)?;
        Some(format!(
            "a majority of the other voters have refused {} as not a member for {} s or more",
            self.d.node_id,
            REMOVED_AFTER.as_secs()
        ))
    }

    /// Do a majority of the other voters refuse this node as not a member?
    fn refused_by_majority(&self) -> bool {
        let voters: Vec<&book::Entry> = self
            .book
            .iter()
            .filter(|e| e.standing == Standing::Voter)
            .collect();
        let refusing = voters
            .iter()
            .filter(|e| self.peers.get(&e.id).is_some_and(|s| s.refuses_us))
            .count();
        !voters.is_empty() && refusing * 2 > voters.len()
    }

    /// Take the membership RaftCore told: the book, and the peer table with it.
    fn take_members(&mut self, r: &RaftFacts) {
        let (book, _) = book::resolve(&self.d.node_id, &self.d.peers, &r.members);
        if book == self.book {
            return;
        }
        self.peers.retain(|id, _| book.iter().any(|e| &e.id == id));
        for e in &book {
            self.peers.entry(e.id.clone()).or_default();
        }
        self.heard_since
            .retain(|id, _| book.iter().any(|e| &e.id == id));
        self.book = book;
    }

    fn transfer(&mut self, to: NodeId, why: &str) {
        self.last_transfer = Some(Instant::now());
        tracing::warn!(to = %to, why, "transferring leadership");
        metrics::counter!("haseq_leader_transfers_total").increment(1);
        let ask = self.d.raft_core.get().send(TransferLeader {
            to: to.clone(),
            retry_after: self.limits.transfer_retry_after,
            attempts: policy::TRANSFER_ATTEMPTS_MAX,
        });
        // RaftCore asks the target again until this node no longer leads, within the budget
        // before the followers campaign by themselves (policy::transfer_budget); the answer
        // only says how it went.
        tokio::spawn(async move {
            match ask.await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => tracing::warn!(
                    to = %to,
                    "transfer target did not take over; the followers will elect a leader"
                ),
                Ok(Err(e)) => tracing::error!(to = %to, error = %e, "leadership transfer failed"),
                Err(e) => {
                    tracing::error!(to = %to, error = %e, "RaftCore unavailable for a transfer")
                }
            }
        });
    }

    fn tick(&mut self) {
        self.d.faults.trip(crate::faults::PanicSite::Elector);
        let now = Instant::now();
        for (id, seen) in &self.peers {
            let answering = seen
                .state
                .as_ref()
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) < PEER_STALE);
            if !answering {
                self.heard_since.remove(id);
            } else {
                self.heard_since.entry(id.clone()).or_insert(now);
            }
        }
        // Until RaftCore has told anything (a moment after start) nothing is decided: the
        // view stays undecided, so the vote gate refuses, as before the first tick.
        let Some(r) = self.raft.clone() else { return };
        self.refused.track(self.refused_by_majority(), now);
        let inputs = self.gather(&r, now);
        self.log_removal(&inputs);
        let d = policy::decide(&inputs);
        self.leaderless.track(d.clocks.leaderless, now);
        self.unhealthy.track(d.clocks.unhealthy, now);
        self.behind.track(d.clocks.behind, now);
        self.apply_eligibility(&d, &inputs);
        self.apply_production(d.production);
        self.apply_handover(&d, now);
        self.publish(&inputs, &d, &r, now);
    }

    /// Says once, in the log, that this node was removed (and again if it is re-added).
    fn log_removal(&mut self, i: &Inputs) {
        if i.removed == self.removed_logged {
            return;
        }
        match &i.removed {
            Some(why) => tracing::warn!(
                why = %why,
                "this node is no longer a member of the cluster: it does not campaign or produce (add it again as a learner, or stop it)"
            ),
            None => tracing::info!("this node is a member of the cluster again"),
        }
        self.removed_logged = i.removed.clone();
    }

    /// openraft's election timer follows the eligibility; logged with the real reason.
    fn apply_eligibility(&mut self, d: &Decision, i: &Inputs) {
        let core = self.d.raft_core.get();
        let last = self.elect_sent.as_ref().map(|(_, on)| *on);
        if let Some((addr, on)) = &self.elect_sent
            && *addr == core
            && *on == d.eligible
        {
            return;
        }
        core.do_send(SetElect(d.eligible));
        self.elect_sent = Some((core, d.eligible));
        if last == Some(d.eligible) {
            // The same switch, re-sent to a rebuilt RaftCore: nothing new to say.
            return;
        }
        if d.relaxed {
            tracing::warn!(
                exec_height = i.own.exec_height.0,
                reason = %d.ineligible.as_ref().map(ToString::to_string).unwrap_or_default(),
                relax_after_ms = self.limits.relax_after.as_millis() as u64,
                "no live leader for the relaxation window: eligible as the most caught-up node"
            );
        } else if d.eligible {
            tracing::info!("eligible to lead");
        } else {
            tracing::warn!(
                reason = %d.ineligible.as_ref().map(ToString::to_string).unwrap_or_default(),
                "not eligible to lead; election timer off"
            );
        }
        metrics::gauge!("haseq_eligible").set(if d.eligible { 1.0 } else { 0.0 });
    }

    /// Tell the Producer only when the decision changes, or when the Producer was rebuilt.
    ///
    /// Re-sending on a new address rather than re-asserting periodically: the supervisor
    /// rebuilds a crashed Producer with a new mailbox (`Slot::get` returns the new address),
    /// and the new one is idle, so comparing addresses catches exactly that case on the next
    /// tick (20 ms, well within two block times), while a periodic re-send would wait up to
    /// its period and still send nothing new the rest of the time. A message to the old,
    /// closed mailbox is lost, which is why the address is part of what was "sent".
    fn apply_production(&mut self, p: Production) {
        let producer = self.d.producer.get();
        if let Some((addr, last)) = &self.sent
            && *addr == producer
            && *last == p
        {
            return;
        }
        let changed = self.sent.as_ref().is_none_or(|(_, last)| *last != p);
        match p {
            Production::Produce { term } => {
                if changed {
                    tracing::info!(term = term.0, "telling the Producer to produce");
                }
                producer.do_send(StartProducing { term });
            }
            Production::Stop(reason) => {
                if changed && self.sent.is_some() {
                    tracing::info!(reason = %reason, "telling the Producer to stop");
                }
                producer.do_send(StopProducing { reason });
            }
        }
        self.sent = Some((producer, p));
    }

    /// Start a transfer the policy asks for; say once (and every [`NO_TARGET_LOG_EVERY`]) when
    /// a hand-over is due but no peer is fit.
    fn apply_handover(&mut self, d: &Decision, now: Instant) {
        match &d.handover {
            Some(policy::Handover { why, to: Some(to) }) => {
                self.transfer(to.clone(), &why.to_string());
            }
            Some(h @ policy::Handover { why, to: None }) => {
                let again = self.last_handover.as_ref() != Some(h)
                    || self
                        .no_target_logged
                        .is_none_or(|t| now.duration_since(t) >= NO_TARGET_LOG_EVERY);
                if again {
                    tracing::warn!(why = %why, "should hand over, but no peer is eligible");
                    self.no_target_logged = Some(now);
                }
            }
            None => {}
        }
        self.last_handover = d.handover.clone();
    }

    /// The view (for `/status`, the vote gate and peers' polls) and the events.
    fn publish(&mut self, i: &Inputs, d: &Decision, r: &RaftFacts, now: Instant) {
        let me = PeerState {
            node_id: self.d.node_id.clone(),
            term: i.term,
            is_leader: i.is_leader,
            applied_height: i.own.applied,
            last_log_term: i.own.last_log.term,
            last_log_index: i.own.last_log.index,
            exec_height: i.own.exec_height,
            healthy: i.own.healthy && !i.own.on_other_chain,
            paused: self.paused,
            eligible: d.ineligible.is_none(),
        };
        let peers = self
            .book
            .iter()
            .map(|e| {
                let seen = self.peers.get(&e.id);
                let at = seen.and_then(|s| s.state.as_ref());
                PeerView {
                    id: e.id.clone(),
                    addr: e.addr.clone(),
                    standing: e.standing,
                    state: at
                        .filter(|(_, at)| now.saturating_duration_since(*at) < PEER_STALE)
                        .map(|(s, _)| s.clone()),
                    seen_ms_ago: at
                        .map(|(_, at)| now.saturating_duration_since(*at).as_millis() as u64),
                    error: seen.and_then(|s| s.error.clone()),
                }
            })
            .collect();
        let ineligible_reason = d.ineligible_reason().map(ToString::to_string);
        let (producing, stop_reason) = match d.production {
            Production::Produce { .. } => (true, None),
            Production::Stop(r) => (false, Some(r.to_string())),
        };
        let timing = self.advise_timing(now);
        self.d.view.send_replace(ElectorView {
            me,
            eligible: d.eligible,
            exec_lag: d.exec_lag_blocks,
            cluster_head: d.cluster_head.0,
            gate_active: d.gate_active,
            peers_heard: self.book.is_empty() || self.peers.values().any(|p| p.state.is_some()),
            removed: i.removed.clone(),
            voters: r.members.voters.keys().cloned().collect(),
            members_log_index: r.members.log_index,
            ineligible_reason: ineligible_reason.clone(),
            relaxed: d.relaxed,
            best_exec_height: d.best_exec_height.0,
            max_exec_lag_blocks: self.d.max_exec_lag_blocks,
            producing,
            stop_reason,
            peers,
            decided: true,
            timing: Some(timing),
        });

        // Events: role, term, leader, eligibility.
        let role = r.role;
        let now_state = EventState {
            role,
            term: i.term,
            leader: r.leader.clone(),
            eligible: d.eligible,
        };
        if self.last_event.as_ref() != Some(&now_state) {
            let kind = match &self.last_event {
                None => "role",
                Some(e) if e.role != role => "role",
                Some(e) if e.term != i.term => "term",
                Some(e) if e.leader != r.leader => "leader",
                Some(_) => "eligibility",
            };
            let _ = self.d.events.send(NodeEvent {
                kind,
                node_id: self.d.node_id.to_string(),
                role: role.as_str().to_string(),
                term: i.term.0,
                leader_id: r.leader.as_ref().map(|l| l.to_string()),
                eligible: d.eligible,
                ineligible_reason,
                at_unix_ms: now_unix_ms(),
            });
            self.last_event = Some(now_state);
        }
    }

    /// The timing advice now; says so in the log and `haseq_timing_too_tight` when the
    /// verdict changes.
    fn advise_timing(&mut self, now: Instant) -> timing::TimingAdvice {
        let a = timing::advise(self.rtt.max(now), &self.d.timing);
        if self.timing_verdict != Some(a.verdict) {
            match a.verdict {
                timing::Verdict::TooTight => tracing::warn!(
                    rtt_max_ms = a.rtt_max_ms,
                    peer = a.rtt_max_peer.as_ref().map(|p| p.as_str()).unwrap_or(""),
                    reasons = %a.reasons.join("; "),
                    "raft timings too tight for the measured network (haseqd ctl tune suggests values)"
                ),
                timing::Verdict::Ok if self.timing_verdict.is_some() => {
                    tracing::info!(
                        rtt_max_ms = a.rtt_max_ms,
                        "raft timings fit the measured network"
                    )
                }
                _ => {}
            }
            let on = if a.verdict == timing::Verdict::TooTight {
                1.0
            } else {
                0.0
            };
            metrics::gauge!("haseq_timing_too_tight").set(on);
            self.timing_verdict = Some(a.verdict);
        }
        a
    }

    fn set_paused(&mut self, paused: bool) -> Result<(), PauseError> {
        let f = &self.d.pause_file;
        let r = if paused {
            std::fs::write(f, b"paused by the admin API\n")
                .and_then(|()| std::fs::File::open(f)?.sync_all())
        } else if f.exists() {
            std::fs::remove_file(f)
        } else {
            Ok(())
        };
        r.map_err(|source| PauseError::File {
            path: f.clone(),
            source,
        })?;
        self.paused = paused;
        Ok(())
    }

    /// The inputs now, for an admin call; `None` until RaftCore has told anything.
    fn inputs_now(&self) -> Option<Inputs> {
        let r = self.raft.as_ref()?;
        Some(self.gather(r, Instant::now()))
    }
}

impl Actor for Elector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |act, _| act.tick());
        // Peers' states come from the P2P actor, which polls them.
        self.d
            .peer_feed
            .subscribe("elector", ctx.address().recipient());
        self.d
            .raft_feed
            .subscribe("elector", ctx.address().recipient());
    }
}

impl Handler<RaftFacts> for Elector {
    type Result = ();

    fn handle(&mut self, msg: RaftFacts, _: &mut Context<Self>) {
        let role_changed = self
            .raft
            .as_ref()
            .is_none_or(|r| r.role != msg.role || r.term != msg.term || r.leader != msg.leader);
        self.take_members(&msg);
        self.raft = Some(msg);
        // A role change is acted on at once (a new leader starts producing without waiting
        // for the tick).
        if role_changed {
            self.tick();
        }
    }
}

impl Handler<PeerPolled> for Elector {
    type Result = ();

    fn handle(&mut self, msg: PeerPolled, _: &mut Context<Self>) {
        if let Some(rtt) = msg.rtt {
            self.rtt.add(&msg.id, rtt, Instant::now());
        }
        if let Some(seen) = self.peers.get_mut(&msg.id) {
            match msg.result {
                Ok(s) => {
                    seen.state = Some((s, Instant::now()));
                    seen.error = None;
                    seen.refuses_us = false;
                }
                Err(e) => {
                    seen.refuses_us = e.is_not_a_member();
                    seen.error = Some(e.to_string());
                }
            }
        }
    }
}

impl Handler<GetView> for Elector {
    type Result = MessageResult<GetView>;

    fn handle(&mut self, _: GetView, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.d.view.borrow().clone())
    }
}

impl Handler<TransferLeadership> for Elector {
    type Result = Result<NodeId, TransferError>;

    fn handle(&mut self, msg: TransferLeadership, _: &mut Context<Self>) -> Self::Result {
        let inputs = self.inputs_now().ok_or(TransferError::Starting)?;
        let to = policy::admin_target(&inputs, msg.to, msg.force)?;
        self.transfer(to.clone(), "admin request");
        Ok(to)
    }
}

impl Handler<Pause> for Elector {
    type Result = Result<bool, PauseError>;

    fn handle(&mut self, msg: Pause, _: &mut Context<Self>) -> Self::Result {
        if self.paused {
            return Ok(false);
        }
        let inputs = self.inputs_now().ok_or(PauseError::Starting)?;
        policy::may_pause(&inputs, msg.force)?;
        self.set_paused(true)?;
        tracing::warn!("paused by the admin API");
        self.tick();
        Ok(true)
    }
}

impl Handler<Resume> for Elector {
    type Result = Result<bool, PauseError>;

    fn handle(&mut self, _: Resume, _: &mut Context<Self>) -> Self::Result {
        if !self.paused {
            return Ok(false);
        }
        self.set_paused(false)?;
        tracing::info!("resumed by the admin API");
        self.tick();
        Ok(true)
    }
}

impl Handler<Handover> for Elector {
    type Result = Option<NodeId>;

    fn handle(&mut self, _: Handover, _: &mut Context<Self>) -> Self::Result {
        self.handing_over = true;
        // Stop at once rather than on the next tick: the shutdown waits on this reply.
        self.apply_production(Production::Stop(StopReason::Shutdown));
        let inputs = self.inputs_now()?;
        if !inputs.is_leader {
            return None;
        }
        let to = policy::shutdown_target(&inputs)?;
        self.transfer(to.clone(), "shutting down");
        Some(to)
    }
}

crate::supervisor::stops_on_request!(Elector);

/// The voter's rule: refuse a candidate more than `max_exec_lag_blocks` behind the best
/// execution height this node knows (its own or a fresh peer's). A candidate that reports no
/// height is judged by its Raft log alone.
pub fn vote_gate(view: watch::Receiver<ElectorView>) -> haseq_net::VoteGate {
    // The highest term a refusal was logged for: one warning per term, not per retry.
    let logged_term = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Arc::new(move |c: &haseq_net::VoteCandidate<'_>| {
        let v = view.borrow();
        // A candidate outside this node's membership (removed, or never promoted) is refused
        // when its log ends at or before that membership's entry: it cannot know a newer
        // membership that makes it a voter, so it must not disrupt the cluster by
        // campaigning. One with a longer log may (this node may have missed its promotion):
        // Raft's own checks judge it. Lifted with the gate when no node leads for long.
        let candidate_last = c.req.last_log_id.as_ref().map_or(0, |l| l.index);
        if v.gate_active
            && !v.voters.is_empty()
            && !v.voters.contains(c.from)
            && candidate_last <= v.members_log_index
        {
            let kind = if c.pre_vote { "pre_vote" } else { "vote" };
            metrics::counter!("haseq_votes_refused_not_member_total", "kind" => kind).increment(1);
            let term = c.req.vote.leader_id().term;
            if logged_term.fetch_max(term, std::sync::atomic::Ordering::Relaxed) < term {
                tracing::warn!(
                    candidate = %c.from, term,
                    "refusing the {kind} of a node that is not a voter of this cluster (logged once per term)"
                );
            }
            return false;
        }
        let Some(h) = c.exec_height else { return true };
        // Before the Elector's first decision (one tick after start) this node knows no
        // height, not even its own, so every candidate would pass: refuse until then. A
        // refusal changes nothing on the voter; the candidate retries.
        if !v.decided {
            return false;
        }
        if !v.gate_active {
            return true;
        }
        let ok = h.saturating_add(v.max_exec_lag_blocks) >= v.best_exec_height;
        if !ok {
            let kind = if c.pre_vote { "pre_vote" } else { "vote" };
            metrics::counter!("haseq_votes_refused_exec_lag_total", "kind" => kind).increment(1);
            let term = c.req.vote.leader_id().term;
            if logged_term.fetch_max(term, std::sync::atomic::Ordering::Relaxed) < term {
                tracing::warn!(
                    candidate = %c.from, term, exec_height = h, best_exec_height = v.best_exec_height,
                    max_exec_lag_blocks = v.max_exec_lag_blocks,
                    "refusing a lagging candidate's {kind} (logged once per term)"
                );
            }
        }
        ok
    })
}
