//! Elector: the node's role policy. Decides whether this node may lead, whether it produces,
//! and when a leader hands over.
//!
//! Owns: the peer table (as the P2P actor reports it), the persisted pause flag, the
//! eligibility decision.
//! Receives: its own tick (every [`TICK`]), `PeerPolled`, and admin calls `GetView`,
//! `TransferLeadership`, `Pause`, `Resume`, `Handover`.
//! Sends: `StartProducing` / `StopProducing` to the Producer; openraft's runtime `elect(bool)`;
//! `transfer_leader`; [`NodeEvent`]s for `/events`; its view (for `/status`, the vote gate and
//! peers' polls) on a watch channel.
//!
//! The rules (docs/DESIGN.md, "Leadership that never stalls"):
//! - eligible while exec lag <= `max_exec_lag_blocks`, the engine is healthy and on the
//!   committed chain, and the node is not paused; an ineligible node turns its election timer
//!   off, and voters refuse candidates that lag the best execution height they know;
//! - when the cluster has no live leader for [`RELAX_AFTER`], the most caught-up node becomes eligible, so
//!   a cluster whose engines all lag still elects;
//! - a leader produces only while its lease holds (last quorum ack younger than
//!   `leader_lease_timeout`), it is not paused, and it is not handing over;
//! - a leader that is paused, whose engine stays sick past `unhealthy_leader_grace`, or whose
//!   engine stays behind past `handoff_after` while a peer is caught up, hands leadership to
//!   the most caught-up eligible peer: never to a lagging, sick or paused one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, AsyncContext, Context, Handler, Message, MessageResult};
use haseq_messages::NodeId;
use haseq_messages::wire::PeerState;
use haseq_storage::BlockReader;
use openraft::async_runtime::WatchReceiver;
use openraft::{Instant as _, ServerState};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::HaseqRaft;
use crate::events::{NodeEvent, now_unix_ms};
use crate::exec_replayer::ExecStatus;
use crate::producer::{Producer, StartProducing, StopProducing, StopReason};
use crate::supervisor::{ExitGuard, Slot};

/// How often the policy is re-evaluated.
pub const TICK: Duration = Duration::from_millis(20);
/// How often peers are polled for their status (by the P2P actor).
pub const PEER_POLL: Duration = crate::p2p::PEER_POLL;
/// A peer's status older than this no longer counts.
pub const PEER_STALE: Duration = Duration::from_secs(1);
/// With no live leader for this long, the most caught-up node becomes eligible.
pub const RELAX_AFTER: Duration = Duration::from_secs(2);
/// A transfer target must have answered a status poll within this long.
pub const TRANSFER_TARGET_FRESH: Duration = Duration::from_millis(350);
/// The least time between two leadership transfers this node starts.
pub const TRANSFER_SPACING: Duration = Duration::from_secs(1);
/// How long a transfer's target gets to take over before it is asked again.
const TRANSFER_RETRY_AFTER: Duration = Duration::from_millis(60);
/// The most times one transfer asks its target: together within the guide's election timeout
/// (368 ms), after which the followers, whose leases the first request disabled, elect a
/// leader by themselves.
const TRANSFER_ATTEMPTS_MAX: u32 = 5;

/// What the Elector needs; cheap to clone.
#[derive(Clone)]
pub struct ElectorDeps {
    /// This node.
    pub node_id: NodeId,
    /// The Raft handle.
    pub raft: HaseqRaft,
    /// Where the P2P actor publishes peers' states.
    pub peer_feed: crate::p2p::PeerFeed,
    /// The configured peers.
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
    /// `raft.send_timeout`, for peer polls.
    pub send_timeout: Duration,
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
    /// Blocks this node's engine is behind the cluster's head.
    pub exec_lag: u64,
    /// The highest applied height this node knows of (its own, its peers', or implied by the
    /// leader's commit index).
    pub cluster_head: u64,
    /// Whether voters refuse lagging candidates right now (lifted when no node is eligible).
    pub gate_active: bool,
    /// Some peer has answered since start (or there are none): the cluster head is known.
    pub peers_heard: bool,
    /// The peers.
    pub peers: Vec<PeerView>,
}

pub use crate::p2p::PeerPolled;

/// Ask for the current view.
#[derive(Message)]
#[rtype(result = "ElectorView")]
pub struct GetView;

/// Admin: hand leadership to `to`, or to the best peer.
#[derive(Message)]
#[rtype(result = "Result<NodeId, String>")]
pub struct TransferLeadership {
    /// The target; `None` for the most caught-up eligible peer.
    pub to: Option<NodeId>,
    /// Transfer even to a lagging, unhealthy or paused node.
    pub force: bool,
}

/// Admin: stop producing on this node (persisted) until resumed.
#[derive(Message)]
#[rtype(result = "Result<bool, String>")]
pub struct Pause {
    /// Pause even when no other node is eligible.
    pub force: bool,
}

/// Admin: let this node produce again.
#[derive(Message)]
#[rtype(result = "Result<bool, String>")]
pub struct Resume;

/// Graceful shutdown: stop producing and, on a leader, hand over to the best peer.
#[derive(Message)]
#[rtype(result = "Option<NodeId>")]
pub struct Handover;

struct Seen {
    state: Option<(PeerState, Instant)>,
    error: Option<String>,
}

/// The actor; see the module doc.
pub struct Elector {
    d: ElectorDeps,
    peers: BTreeMap<NodeId, Seen>,
    paused: bool,
    handing_over: bool,
    elect_enabled: Option<bool>,
    /// Since when no live leader is known (see `tick`).
    leaderless_since: Option<Instant>,
    unhealthy_since: Option<Instant>,
    behind_since: Option<Instant>,
    last_transfer: Option<Instant>,
    last_event: Option<(String, u64, Option<NodeId>, bool)>,
    _exit: ExitGuard,
}

impl Elector {
    /// An Elector; reads the persisted pause flag.
    pub fn new(d: ElectorDeps, exit: ExitGuard) -> Elector {
        let paused = d.pause_file.exists();
        let peers = d
            .peers
            .iter()
            .map(|(id, _)| {
                (
                    id.clone(),
                    Seen {
                        state: None,
                        error: None,
                    },
                )
            })
            .collect();
        Elector {
            d,
            peers,
            paused,
            handing_over: false,
            elect_enabled: None,
            leaderless_since: None,
            unhealthy_since: None,
            behind_since: None,
            last_transfer: None,
            last_event: None,
            _exit: exit,
        }
    }

    fn fresh_peers(&self) -> impl Iterator<Item = (&NodeId, &PeerState)> {
        self.peers.iter().filter_map(|(id, s)| match &s.state {
            Some((st, at)) if at.elapsed() < PEER_STALE => Some((id, st)),
            _ => None,
        })
    }

    /// The most caught-up eligible, healthy, unpaused fresh peer.
    fn best_peer(&self) -> Option<NodeId> {
        // A transfer target must have answered within the last few polls: a peer that died a
        // moment ago still counts as fresh for the eligibility rules, but handing it the
        // leadership would leave the cluster leaderless for an election.
        let answered_recently = |id: &NodeId| {
            self.peers.get(id).is_some_and(|p| {
                // The last poll must have succeeded (a failure leaves the old state in place).
                p.error.is_none()
                    && p.state
                        .as_ref()
                        .is_some_and(|(_, at)| at.elapsed() < TRANSFER_TARGET_FRESH)
            })
        };
        self.fresh_peers()
            .filter(|(id, s)| s.eligible && s.healthy && !s.paused && answered_recently(id))
            .max_by(|a, b| {
                a.1.exec_height
                    .cmp(&b.1.exec_height)
                    .then_with(|| b.0.cmp(a.0))
            })
            .map(|(id, _)| id.clone())
    }

    fn transfer(&mut self, to: NodeId, why: &str) {
        self.last_transfer = Some(Instant::now());
        tracing::warn!(to = %to, why, "transferring leadership");
        metrics::counter!("haseq_leader_transfers_total").increment(1);
        let raft = self.d.raft.clone();
        // The target ignores a request it does not receive (a link down for a moment) or that
        // overtook the leader's last entry on its way (openraft's target campaigns only with
        // that entry in its log), and the leader has stopped proposing once it asked: asked
        // once only, the cluster would wait for an election timeout and any node could win.
        // So the target is asked again until this node no longer leads. Each request also
        // resumes the replication to a target that was backing off.
        tokio::spawn(async move {
            for attempt in 1..=TRANSFER_ATTEMPTS_MAX {
                if let Err(e) = raft.trigger().transfer_leader(to.clone()).await {
                    tracing::error!(to = %to, error = %e, "leadership transfer failed");
                    return;
                }
                let handed = raft
                    .wait(Some(TRANSFER_RETRY_AFTER))
                    .metrics(|m| m.state != ServerState::Leader, "leadership handed over")
                    .await;
                if handed.is_ok() {
                    return;
                }
                tracing::info!(to = %to, attempt, "transfer target has not taken over yet");
            }
            tracing::warn!(to = %to, "transfer target did not take over; the followers will elect a leader");
        });
    }

    fn tick(&mut self) {
        self.d.faults.trip(crate::faults::PanicSite::Elector);
        let m = self.d.raft.metrics().borrow_watched().clone();
        let exec = self.d.exec.borrow().clone();
        let applied = self
            .d
            .blocks
            .head()
            .map(|h| h.height.0)
            .unwrap_or(exec.applied_height);
        // Lag is measured against the cluster's head, not just our own applied head: a node
        // that was down is behind on its Raft log too, and must not count itself caught up.
        let peer_head = self
            .fresh_peers()
            .map(|(_, s)| s.applied_height)
            .max()
            .unwrap_or(0);
        let cluster_head = cluster_head(applied, &m, peer_head);
        let lag = cluster_head.saturating_sub(exec.exec_height);
        let last_log = self
            .d
            .raft
            .data_metrics()
            .borrow_watched()
            .last_log
            .as_ref()
            .map(|l| (l.leader_id.term, l.index))
            .unwrap_or((0, 0));
        let is_leader = m.state == ServerState::Leader;

        // Strict eligibility.
        let reason = if self.paused {
            Some("paused".to_string())
        } else if exec.on_other_chain {
            Some("engine on another chain".to_string())
        } else if !exec.healthy {
            Some(format!(
                "engine unhealthy: {}",
                exec.error.clone().unwrap_or_default()
            ))
        } else if lag > self.d.max_exec_lag_blocks {
            Some(format!(
                "exec lag {lag} > max_exec_lag_blocks {}",
                self.d.max_exec_lag_blocks
            ))
        } else {
            None
        };
        let strict = reason.is_none();
        let best_exec_height = self
            .fresh_peers()
            .map(|(_, s)| s.exec_height)
            .chain([exec.exec_height])
            .max()
            .unwrap_or(0);

        // No deadlock: when the cluster has had no live leader for RELAX_AFTER, whatever the
        // reason (no node eligible; or the eligible ones cannot win because a voter with a
        // longer Raft log refuses them), the most caught-up node becomes eligible and the vote
        // gate is lifted. A leader is live if it is us, or a fresh peer that says it leads.
        let leader_alive = is_leader
            || self
                .fresh_peers()
                .any(|(_, s)| s.is_leader && s.term >= m.current_term);
        let anyone = leader_alive;
        let now = Instant::now();
        if anyone {
            self.leaderless_since = None;
        } else {
            self.leaderless_since.get_or_insert(now);
        }
        // "Most caught up" puts the Raft log first: only a node with the longest log can win.
        // A healthy engine ranks first; with every engine sick, a leader is still elected (so
        // production resumes the moment an engine recovers).
        let healthy = exec.healthy && !exec.on_other_chain;
        let mine = (
            healthy,
            last_log,
            exec.exec_height,
            std::cmp::Reverse(&self.d.node_id),
        );
        let most_caught_up = self
            .fresh_peers()
            .filter(|(_, s)| !s.paused)
            .all(|(id, s)| {
                let theirs = (
                    s.healthy,
                    (s.last_log_term, s.last_log_index),
                    s.exec_height,
                    std::cmp::Reverse(id),
                );
                theirs < mine
            });
        let relaxed = !strict
            && !self.paused
            && !exec.on_other_chain
            && most_caught_up
            && self
                .leaderless_since
                .is_some_and(|t| t.elapsed() >= RELAX_AFTER);
        let eligible = strict || relaxed;
        if self.elect_enabled != Some(eligible) {
            self.d.raft.runtime_config().elect(eligible);
            self.elect_enabled = Some(eligible);
            if eligible && relaxed {
                tracing::warn!(
                    exec_height = exec.exec_height,
                    "no live leader for {RELAX_AFTER:?}: eligible as the most caught-up node"
                );
            } else if eligible {
                tracing::info!("eligible to lead");
            } else {
                tracing::warn!(
                    reason = reason.as_deref().unwrap_or(""),
                    "not eligible to lead; election timer off"
                );
            }
            metrics::gauge!("haseq_eligible").set(if eligible { 1.0 } else { 0.0 });
        }

        // Leader policies.
        let mut desired = false;
        if is_leader {
            let lease_ok = m
                .last_quorum_acked
                .as_ref()
                .is_some_and(|t| (*t).into_inner().elapsed() < self.d.leader_lease_timeout);
            desired = self.d.aggregator && !self.paused && !self.handing_over && lease_ok;
            let may_transfer = self
                .last_transfer
                .is_none_or(|t| t.elapsed() >= TRANSFER_SPACING);
            let sick = !exec.healthy || exec.on_other_chain;
            if sick {
                self.unhealthy_since.get_or_insert(now);
            } else {
                self.unhealthy_since = None;
            }
            if lag > 0 {
                self.behind_since.get_or_insert(now);
            } else {
                self.behind_since = None;
            }
            if may_transfer && !self.handing_over {
                let why = if self.paused {
                    Some("paused")
                } else if !strict && lag > self.d.max_exec_lag_blocks {
                    // Led only because no one else could win (relaxed, or before the others'
                    // logs caught up): hand over as soon as an eligible peer exists.
                    Some("engine lags past max_exec_lag_blocks")
                } else if self
                    .unhealthy_since
                    .is_some_and(|t| t.elapsed() >= self.d.unhealthy_leader_grace)
                {
                    Some("engine unhealthy past unhealthy_leader_grace")
                } else if self
                    .behind_since
                    .is_some_and(|t| t.elapsed() >= self.d.handoff_after)
                {
                    Some("engine behind past handoff_after")
                } else {
                    None
                };
                if let Some(why) = why {
                    match self.best_peer() {
                        Some(to) => self.transfer(to, why),
                        None => {
                            if self
                                .last_transfer
                                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                            {
                                tracing::warn!(why, "should hand over, but no peer is eligible");
                                self.last_transfer = Some(now);
                            }
                        }
                    }
                }
            }
        } else {
            self.unhealthy_since = None;
            self.behind_since = None;
            self.handing_over = false;
        }
        let term = m.current_term;
        if desired {
            self.d.producer.get().do_send(StartProducing { term });
        } else {
            self.d.producer.get().do_send(StopProducing {
                reason: StopReason::LostLeadership,
            });
        }

        let me = PeerState {
            node_id: self.d.node_id.clone(),
            term,
            is_leader,
            applied_height: applied,
            last_log_term: last_log.0,
            last_log_index: last_log.1,
            exec_height: exec.exec_height,
            healthy: exec.healthy && !exec.on_other_chain,
            paused: self.paused,
            eligible: strict,
        };
        let peers = self
            .d
            .peers
            .iter()
            .map(|(id, addr)| {
                let seen = self.peers.get(id);
                PeerView {
                    id: id.clone(),
                    addr: addr.clone(),
                    state: seen
                        .and_then(|s| s.state.as_ref())
                        .filter(|(_, at)| at.elapsed() < PEER_STALE)
                        .map(|(s, _)| s.clone()),
                    seen_ms_ago: seen
                        .and_then(|s| s.state.as_ref())
                        .map(|(_, at)| at.elapsed().as_millis() as u64),
                    error: seen.and_then(|s| s.error.clone()),
                }
            })
            .collect();
        let ineligible_reason = if eligible { None } else { reason.clone() };
        // The vote gate holds while a leader is live, or only briefly none is; past RELAX_AFTER
        // without one it is lifted so that the most caught-up node can win (no deadlock).
        let gate_active = anyone
            || self
                .leaderless_since
                .is_some_and(|t| t.elapsed() < RELAX_AFTER);
        self.d.view.send_replace(ElectorView {
            me,
            eligible,
            exec_lag: lag,
            cluster_head,
            gate_active,
            peers_heard: self.d.peers.is_empty() || self.peers.values().any(|p| p.state.is_some()),
            ineligible_reason: ineligible_reason.clone(),
            relaxed,
            best_exec_height,
            max_exec_lag_blocks: self.d.max_exec_lag_blocks,
            producing: desired,
            peers,
        });

        // Events: role, term, leader, eligibility.
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let now_state = (role.to_string(), term, m.current_leader.clone(), eligible);
        if self.last_event.as_ref() != Some(&now_state) {
            let kind = match &self.last_event {
                None => "role",
                Some((r, _, _, _)) if r != role => "role",
                Some((_, t, _, _)) if *t != term => "term",
                Some((_, _, l, _)) if *l != m.current_leader => "leader",
                Some(_) => "eligibility",
            };
            let _ = self.d.events.send(NodeEvent {
                kind,
                node_id: self.d.node_id.to_string(),
                role: role.to_string(),
                term,
                leader_id: m.current_leader.as_ref().map(|l| l.to_string()),
                eligible,
                ineligible_reason,
                at_unix_ms: now_unix_ms(),
            });
            self.last_event = Some(now_state);
        }
    }

    fn set_paused(&mut self, paused: bool) -> Result<(), String> {
        let f = &self.d.pause_file;
        let r = if paused {
            std::fs::write(f, b"paused by the admin API\n")
                .and_then(|()| std::fs::File::open(f)?.sync_all())
        } else if f.exists() {
            std::fs::remove_file(f)
        } else {
            Ok(())
        };
        r.map_err(|e| format!("{}: {e}", f.display()))?;
        self.paused = paused;
        Ok(())
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
    }
}

impl Handler<PeerPolled> for Elector {
    type Result = ();

    fn handle(&mut self, msg: PeerPolled, _: &mut Context<Self>) {
        if let Some(seen) = self.peers.get_mut(&msg.id) {
            match msg.result {
                Ok(s) => {
                    seen.state = Some((s, Instant::now()));
                    seen.error = None;
                }
                Err(e) => seen.error = Some(e),
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
    type Result = Result<NodeId, String>;

    fn handle(&mut self, msg: TransferLeadership, _: &mut Context<Self>) -> Self::Result {
        if self.d.raft.metrics().borrow_watched().state != ServerState::Leader {
            return Err("this node is not the leader; ask the leader".into());
        }
        let to = match msg.to {
            Some(to) => {
                if to == self.d.node_id {
                    return Err(format!("{to} already leads"));
                }
                if !self.peers.contains_key(&to) {
                    return Err(format!("{to} is not a configured peer"));
                }
                if !msg.force {
                    let st = self
                        .fresh_peers()
                        .find(|(id, _)| **id == to)
                        .map(|(_, s)| s.clone());
                    match st {
                        None => {
                            return Err(format!(
                                "{to} has not answered recently; use force to transfer anyway"
                            ));
                        }
                        Some(s) if s.paused => {
                            return Err(format!("{to} is paused; use force to transfer anyway"));
                        }
                        Some(s) if !s.healthy => {
                            return Err(format!(
                                "{to}'s engine is unhealthy; use force to transfer anyway"
                            ));
                        }
                        Some(s) if !s.eligible => {
                            return Err(format!(
                                "{to} is lagging (exec height {}, applied {}); use force to transfer anyway",
                                s.exec_height, s.applied_height
                            ));
                        }
                        Some(_) => {}
                    }
                }
                to
            }
            None => self.best_peer().ok_or("no peer is eligible to take over")?,
        };
        self.transfer(to.clone(), "admin request");
        Ok(to)
    }
}

impl Handler<Pause> for Elector {
    type Result = Result<bool, String>;

    fn handle(&mut self, msg: Pause, _: &mut Context<Self>) -> Self::Result {
        if self.paused {
            return Ok(false);
        }
        if !msg.force && !self.fresh_peers().any(|(_, s)| s.eligible && !s.paused) {
            return Err("no other node is eligible to lead: pausing this one would halt production; use force".into());
        }
        self.set_paused(true)?;
        tracing::warn!("paused by the admin API");
        self.tick();
        Ok(true)
    }
}

impl Handler<Resume> for Elector {
    type Result = Result<bool, String>;

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
        self.d.producer.get().do_send(StopProducing {
            reason: StopReason::Shutdown,
        });
        if self.d.raft.metrics().borrow_watched().state != ServerState::Leader {
            return None;
        }
        let to = self.best_peer().or_else(|| {
            // Nobody strictly eligible: the most caught-up reachable peer still beats none.
            self.fresh_peers()
                .filter(|(_, s)| s.healthy)
                .max_by_key(|(_, s)| s.exec_height)
                .map(|(id, _)| id.clone())
        })?;
        self.transfer(to.clone(), "shutting down");
        Some(to)
    }
}

impl Handler<crate::supervisor::StopActor> for Elector {
    type Result = ();

    fn handle(&mut self, _: crate::supervisor::StopActor, ctx: &mut Context<Self>) {
        actix::ActorContext::stop(ctx);
    }
}

/// The highest applied height this node can infer: its own, a fresh peer's, or its own plus
/// the entries the leader says are committed beyond what it applied.
pub fn cluster_head(
    applied_height: u64,
    m: &openraft::RaftMetrics<haseq_messages::TC>,
    peer_head: u64,
) -> u64 {
    let applied_index = m.last_applied.as_ref().map(|l| l.index).unwrap_or(0);
    let committed = m.cluster_committed.as_ref().map(|l| l.index).unwrap_or(0);
    let implied = applied_height + committed.saturating_sub(applied_index);
    applied_height.max(peer_head).max(implied)
}

/// The voter's rule: refuse a candidate more than `max_exec_lag_blocks` behind the best
/// execution height this node knows (its own or a fresh peer's). A candidate that reports no
/// height is judged by its Raft log alone.
pub fn vote_gate(view: watch::Receiver<ElectorView>) -> haseq_net::VoteGate {
    // The highest term a refusal was logged for: one warning per term, not per retry.
    let logged_term = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Arc::new(move |c: &haseq_net::VoteCandidate<'_>| {
        let v = view.borrow();
        let Some(h) = c.exec_height else { return true };
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
