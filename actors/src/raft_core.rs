//! RaftCore: the actor that owns the node's openraft handle.
//!
//! Owns: the `Raft` handle for every command (openraft's own tasks run on the tokio runtime
//! and outlive this actor, so a rebuilt RaftCore picks up exactly where the old one was).
//! Other actors ask it by message: [`ProposeBlock`] and [`ConfirmLeadership`] (the
//! Producer), [`TransferLeader`] and [`SetElect`] (the Elector), [`GetStatus`] (the API).
//! The transport's server holds a dispatch-only clone (`haseq_net::RaftHandler`) for the
//! RPCs peers send, which must never wait behind the arbiter.
//! Receives: those, `CrashForTest`; openraft's server metrics (role, vote, leader,
//! membership) as a stream.
//! Sends: answers; logs every role and leader change at once, and publishes the role, term,
//! leader and indexes as Prometheus metrics (the indexes every [`GAUGES_INTERVAL`]: following
//! openraft's full metrics instead woke this actor several times per block, on the arbiter
//! thread every other actor shares). (Production is steered by the Elector.)

use actix::{Actor, AsyncContext, Context, Handler, Message, ResponseFuture, StreamHandler};
use haseq_messages::{ApplyOutcome, Block, Command, NodeId};
use openraft::async_runtime::WatchReceiver;
use openraft::{RaftMetrics, ServerState};
use serde::Serialize;

use crate::HaseqRaft;
use crate::supervisor::ExitGuard;

/// A node's role as `/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Leads the cluster.
    Leader,
    /// Follows a leader (or waits for one).
    Follower,
    /// Campaigning.
    Candidate,
    /// Receives the log but does not vote.
    Learner,
    /// Raft has stopped on this node.
    Shutdown,
}

impl Role {
    fn of(s: ServerState) -> Role {
        match s {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        }
    }

    /// The role as a lowercase word.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// The Raft side of `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaftStatus {
    /// This node's id.
    pub node_id: NodeId,
    /// Leader, follower, candidate or learner.
    pub role: Role,
    /// Current Raft term.
    pub term: u64,
    /// The leader this node knows of; `None` while none is known.
    pub leader_id: Option<NodeId>,
    /// Highest log index this node knows committed and may apply; `None` before anything is.
    pub committed_index: Option<u64>,
    /// Highest log index the leader reported committed by a quorum (may lead
    /// `committed_index` on a node that has not received those entries yet).
    pub cluster_committed_index: Option<u64>,
    /// Highest log index applied to the state machine.
    pub applied_index: Option<u64>,
    /// Highest log index in the local log.
    pub last_log_index: Option<u64>,
    /// Index covered by the newest snapshot.
    pub snapshot_index: Option<u64>,
    /// Voters and learners of the effective membership.
    pub members: Vec<NodeId>,
    /// Voters of the effective membership.
    pub voters: Vec<NodeId>,
    /// Learners of the effective membership.
    pub learners: Vec<NodeId>,
    /// On a leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// Set when openraft stopped with a fatal error.
    pub fatal: Option<String>,
}

impl RaftStatus {
    /// Read the status out of openraft's metrics.
    pub fn from_metrics(m: &RaftMetrics<haseq_messages::TC>) -> RaftStatus {
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let mut members = voters.clone();
        members.extend(learners.iter().cloned());
        #[allow(deprecated)]
        let quorum_ack = m.millis_since_quorum_ack;
        RaftStatus {
            node_id: m.id.clone(),
            role: Role::of(m.state),
            term: m.current_term,
            leader_id: m.current_leader.clone(),
            committed_index: m.local_committed.as_ref().map(|l| l.index),
            cluster_committed_index: m.cluster_committed.as_ref().map(|l| l.index),
            applied_index: m.last_applied.as_ref().map(|l| l.index),
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.as_ref().map(|l| l.index),
            members,
            voters,
            learners,
            millis_since_quorum_ack: quorum_ack,
            fatal: m.running_state.as_ref().err().map(|e| e.to_string()),
        }
    }
}

/// How often the log index gauges are refreshed between role changes.
pub const GAUGES_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Ask RaftCore for the current Raft status (read from openraft's metrics when asked).
#[derive(Message)]
#[rtype(result = "RaftStatus")]
pub struct GetStatus;

/// Propose a block to the cluster (`client_write`); answered once it is committed and
/// applied, with what the state machine made of it.
#[derive(Message, Debug)]
#[rtype(result = "Result<ApplyOutcome, ProposeError>")]
pub struct ProposeBlock {
    /// The block, built on the applied head.
    pub block: Block,
}

/// Confirm with a quorum that this node still leads, and wait until everything committed so
/// far is applied (openraft's ReadIndex).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), ProposeError>")]
pub struct ConfirmLeadership;

/// Hand leadership to `to` (ignored by openraft unless this node leads).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), ProposeError>")]
pub struct TransferLeader {
    /// The target.
    pub to: NodeId,
}

/// Turn this node's election timer on or off (openraft's runtime `elect`).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SetElect(pub bool);

/// Why Raft did not take a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Another node leads (or none is known); only the leader takes proposals.
    #[error("not the leader (leader: {leader:?}): {why}")]
    NotLeader {
        /// The leader openraft knows of, if any.
        leader: Option<NodeId>,
        /// openraft's words.
        why: String,
    },
    /// openraft refused or failed otherwise (shutting down, lease not yet acknowledged).
    #[error("raft: {0}")]
    Raft(String),
    /// RaftCore could not be reached (being rebuilt); try again.
    #[error("RaftCore unavailable: {0}")]
    Unavailable(String),
}

/// Make the actor panic: the supervisor must rebuild it. For fault-injection tests.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CrashForTest;

/// The actor; see the module doc.
pub struct RaftCore {
    raft: HaseqRaft,
    status: RaftStatus,
    faults: crate::faults::PanicKnobs,
    _exit: ExitGuard,
}

impl RaftCore {
    /// A RaftCore over `raft`. Its status starts from openraft's current metrics.
    pub fn new(raft: HaseqRaft, faults: crate::faults::PanicKnobs, exit: ExitGuard) -> RaftCore {
        let status = RaftStatus::from_metrics(&raft.metrics().borrow_watched());
        RaftCore {
            raft,
            status,
            faults,
            _exit: exit,
        }
    }

    /// Reads openraft's metrics now and takes them in.
    fn refresh(&mut self) {
        self.faults.trip(crate::faults::PanicSite::RaftCore);
        let next = RaftStatus::from_metrics(&self.raft.metrics().borrow_watched());
        self.observe(next);
    }

    fn observe(&mut self, next: RaftStatus) {
        let prev = &self.status;
        if next.role != prev.role {
            tracing::info!(
                from = prev.role.as_str(),
                to = next.role.as_str(),
                term = next.term,
                "role changed"
            );
            match next.role {
                Role::Leader => metrics::counter!("haseq_elections_won_total").increment(1),
                Role::Candidate => metrics::counter!("haseq_elections_started_total").increment(1),
                _ => {}
            }
        }
        if next.leader_id != prev.leader_id {
            tracing::info!(
                leader = next
                    .leader_id
                    .as_ref()
                    .map(|l| l.as_str())
                    .unwrap_or("none"),
                term = next.term,
                "leader changed"
            );
            if next.leader_id.is_some() {
                metrics::counter!("haseq_leader_changes_total").increment(1);
            }
        }
        publish_gauges(&next);
        self.status = next;
    }
}

fn publish_gauges(s: &RaftStatus) {
    for role in [
        Role::Leader,
        Role::Follower,
        Role::Candidate,
        Role::Learner,
        Role::Shutdown,
    ] {
        let on = if s.role == role { 1.0 } else { 0.0 };
        metrics::gauge!("haseq_role", "role" => role.as_str()).set(on);
    }
    metrics::gauge!("haseq_term").set(s.term as f64);
    metrics::gauge!("haseq_is_leader").set(if s.role == Role::Leader { 1.0 } else { 0.0 });
    metrics::gauge!("haseq_committed_index").set(s.committed_index.unwrap_or(0) as f64);
    metrics::gauge!("haseq_applied_index").set(s.applied_index.unwrap_or(0) as f64);
    metrics::gauge!("haseq_last_log_index").set(s.last_log_index.unwrap_or(0) as f64);
}

impl Actor for RaftCore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        publish_gauges(&self.status);
        // openraft publishes its server metrics (role, vote, leader, membership) on a watch
        // channel that changes only with them; turn it into a stream of full snapshots.
        // `changed()` is cancel-safe, and a rebuilt actor subscribes anew.
        let rx = self.raft.server_metrics();
        let full = self.raft.clone();
        let stream = futures::stream::unfold((rx, full), |(mut rx, full)| async move {
            rx.changed().await.ok()?;
            rx.borrow_and_update();
            let m = RaftStatus::from_metrics(&full.metrics().borrow_watched());
            Some((m, (rx, full)))
        });
        ctx.add_stream(stream);
        ctx.run_interval(GAUGES_INTERVAL, |act, _| act.refresh());
    }
}

impl StreamHandler<RaftStatus> for RaftCore {
    fn handle(&mut self, item: RaftStatus, _ctx: &mut Context<Self>) {
        self.observe(item);
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {
        // The metrics channel closes only when openraft has shut down; keep the last status
        // (role `shutdown` will have been published just before).
        tracing::debug!("raft metrics stream ended");
    }
}

impl Handler<GetStatus> for RaftCore {
    type Result = actix::MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        self.refresh();
        actix::MessageResult(self.status.clone())
    }
}

impl Handler<ProposeBlock> for RaftCore {
    type Result = ResponseFuture<Result<ApplyOutcome, ProposeError>>;

    fn handle(&mut self, msg: ProposeBlock, _: &mut Context<Self>) -> Self::Result {
        let raft = self.raft.clone();
        // The write waits on openraft's core (a channel and a oneshot), not on this actor:
        // other messages run meanwhile.
        Box::pin(async move {
            use openraft::error::{ClientWriteError, RaftError};
            match raft.client_write(Command::Block(msg.block)).await {
                Ok(resp) => Ok(resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(ProposeError::NotLeader {
                        leader: f.leader_id.clone(),
                        why: f.to_string(),
                    })
                }
                Err(e) => Err(ProposeError::Raft(e.to_string())),
            }
        })
    }
}

impl Handler<ConfirmLeadership> for RaftCore {
    type Result = ResponseFuture<Result<(), ProposeError>>;

    fn handle(&mut self, _: ConfirmLeadership, _: &mut Context<Self>) -> Self::Result {
        let raft = self.raft.clone();
        Box::pin(async move {
            raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                .await
                .map(|_| ())
                .map_err(|e| ProposeError::Raft(e.to_string()))
        })
    }
}

impl Handler<TransferLeader> for RaftCore {
    type Result = ResponseFuture<Result<(), ProposeError>>;

    fn handle(&mut self, msg: TransferLeader, _: &mut Context<Self>) -> Self::Result {
        let raft = self.raft.clone();
        Box::pin(async move {
            raft.trigger()
                .transfer_leader(msg.to)
                .await
                .map_err(|e| ProposeError::Raft(e.to_string()))
        })
    }
}

impl Handler<SetElect> for RaftCore {
    type Result = ();

    fn handle(&mut self, msg: SetElect, _: &mut Context<Self>) {
        self.raft.runtime_config().elect(msg.0);
    }
}

impl Handler<CrashForTest> for RaftCore {
    type Result = ();

    fn handle(&mut self, _: CrashForTest, _: &mut Context<Self>) {
        panic!("RaftCore: deliberate panic requested by a fault-injection test");
    }
}

impl actix::Handler<crate::supervisor::StopActor> for RaftCore {
    type Result = ();

    fn handle(&mut self, _: crate::supervisor::StopActor, ctx: &mut Context<Self>) {
        actix::ActorContext::stop(ctx);
    }
}
