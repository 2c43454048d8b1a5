//! Producer: the leader's block production loop.
//!
//! Owns: the current production session (a tokio task and its cancellation token).
//! Receives: `StartProducing{term}`, `StopProducing{reason}`.
//! Sends: `ConfirmLeadership` and `ProposeBlock` to RaftCore (which owns Raft); counts blocks
//! produced and commit latency.
//!
//! Every `block_time` the session builds on the applied head and only when the local engine is
//! exactly there (S4), proposes the block, and waits for it to be committed. A `StopProducing`
//! cancels the session between any two steps; a payload in flight is abandoned (it was never
//! made canonical: only ExecReplayer does that, after commit).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::{Actor, Context, Handler, Message};
use haseq_engine::{BuildParams, ExecutionEngine};
use haseq_messages::{ApplyOutcome, Block, BlockHash, Height, NodeId, Term};
use haseq_storage::BlockReader;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::exec_replayer::ExecStatus;
use crate::raft_core::{ConfirmLeadership, ProposeBlock, ProposeError};
use crate::supervisor::{ExitGuard, TaskGuard, spawn_task};

/// Start (or keep) producing for `term`.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct StartProducing {
    /// The term this node leads.
    pub term: Term,
}

/// Why production stops: the Elector sends the rule that stopped it, so the Producer's log
/// says why a leader went quiet rather than one reason for every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// This node does not lead: a follower, a candidate, or a leader that saw a higher term.
    LostLeadership,
    /// It still calls itself leader, but its last quorum acknowledgement is older than
    /// `raft.leader_lease_timeout`: the others may already have elected another leader.
    LeaseExpired,
    /// An operator paused it (`/admin/pause`).
    Paused,
    /// It asked another node to take over; openraft refuses its writes until that settles.
    HandingOver,
    /// `node.aggregator` is off: this node replicates but never produces.
    NotAggregator,
    /// The node is shutting down.
    Shutdown,
    /// The node is no longer a member of the cluster.
    Removed,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::LostLeadership => "not the leader",
            StopReason::LeaseExpired => "leader lease expired",
            StopReason::Paused => "paused",
            StopReason::HandingOver => "handing leadership over",
            StopReason::NotAggregator => "not an aggregator",
            StopReason::Shutdown => "shutting down",
            StopReason::Removed => "removed from the cluster",
        })
    }
}

/// Stop producing now, abandoning any payload in flight.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct StopProducing {
    /// Why.
    pub reason: StopReason,
}

/// What a production session needs; cheap to clone.
#[derive(Clone)]
pub struct ProducerDeps {
    /// The node's id, recorded as each block's proposer.
    pub node_id: NodeId,
    /// RaftCore, which proposes to Raft.
    pub raft_core: crate::supervisor::Slot<crate::raft_core::RaftCore>,
    /// The engine that builds blocks.
    pub engine: Arc<dyn ExecutionEngine>,
    /// The applied head and committed blocks.
    pub blocks: BlockReader,
    /// The engine's position, from ExecReplayer.
    pub exec: watch::Receiver<ExecStatus>,
    /// Time between blocks; zero produces as fast as commits allow.
    pub block_time: Duration,
    /// Each block's timestamp must exceed its parent's (a real execution client's rule).
    pub strict_timestamps: bool,
    /// `node.aggregator`: only an aggregator ever produces.
    pub aggregator: bool,
    /// Where each commit latency is logged (for `haseqd bench`).
    pub latencies: crate::stats::LatencyLog,
    /// Fault knobs.
    pub faults: crate::faults::PanicKnobs,
}

/// The actor; see the module doc.
pub struct Producer {
    deps: ProducerDeps,
    /// The term produced for, its cancellation, and the watched task (a panic in it stops
    /// this actor, to be rebuilt and told to produce again by the Elector).
    session: Option<(Term, CancellationToken, TaskGuard)>,
    _exit: ExitGuard,
}

impl Producer {
    /// A producer that is idle until told to start.
    pub fn new(deps: ProducerDeps, exit: ExitGuard) -> Producer {
        Producer {
            deps,
            session: None,
            _exit: exit,
        }
    }

    fn stop(&mut self, reason: StopReason) {
        if let Some((term, cancel, _task)) = self.session.take() {
            cancel.cancel();
            tracing::info!(term = term.0, reason = %reason, "block production stopped");
        }
    }
}

/// How often the actor looks at its session.
const SESSION_CHECK: Duration = Duration::from_millis(100);

impl Actor for Producer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The Elector says StartProducing only when its decision changes, so this actor's own
        // periodic pass is where a session that ended by itself (another node leads) is let go.
        actix::AsyncContext::run_interval(ctx, SESSION_CHECK, |act, _| {
            act.deps.faults.trip(crate::faults::PanicSite::Producer);
            if act
                .session
                .as_ref()
                .is_some_and(|(_, _, task)| task.is_finished())
                && let Some((term, _, _)) = act.session.take()
            {
                tracing::info!(term = term.0, "production session ended");
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.stop(StopReason::Shutdown);
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if let Some((_, cancel, _task)) = self.session.take() {
            cancel.cancel();
        }
    }
}

impl Producer {
    fn start(&mut self, term: Term, ctx: &mut Context<Self>) {
        // A session that ended by itself (Raft said another node leads) is over: a later
        // `StartProducing` for the same term starts a new one.
        if self
            .session
            .as_ref()
            .is_some_and(|(t, _, task)| *t == term && !task.is_finished())
        {
            return;
        }
        self.stop(StopReason::LostLeadership);
        let cancel = CancellationToken::new();
        tracing::info!(
            term = term.0,
            block_time_ms = self.deps.block_time.as_millis() as u64,
            "block production started"
        );
        let task = spawn_task(
            ctx,
            "production",
            produce(self.deps.clone(), term, cancel.clone()),
        );
        self.session = Some((term, cancel, task));
    }
}

impl Handler<StartProducing> for Producer {
    type Result = ();

    fn handle(&mut self, msg: StartProducing, ctx: &mut Context<Self>) {
        self.start(msg.term, ctx);
    }
}

impl Handler<StopProducing> for Producer {
    type Result = ();

    fn handle(&mut self, msg: StopProducing, _: &mut Context<Self>) {
        self.stop(msg.reason);
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One production session: runs until cancelled or until Raft says we no longer lead.
async fn produce(d: ProducerDeps, term: Term, cancel: CancellationToken) {
    let mut exec = d.exec.clone();
    // A new leader's log may end with blocks of earlier terms that are committed (with its
    // first entry) but not applied yet: building before they are applied builds on a head
    // that is about to be superseded, and the proposal is rejected as stale. Wait until
    // everything committed so far is applied (ReadIndex confirms leadership with a quorum).
    tokio::select! {
        _ = cancel.cancelled() => return,
        r = d.raft_core.get().send(ConfirmLeadership) => {
            let r = r.unwrap_or_else(|e| Err(ProposeError::Unavailable(e.to_string())));
            if let Err(e) = r {
                tracing::info!(term = term.0, error = %e, "cannot confirm leadership before producing");
            }
        }
    }
    let mut next = tokio::time::Instant::now();
    let mut last_block_at: Option<Instant> = None;
    loop {
        // A deadline already reached is not slept on: tokio's timer rounds up to its next
        // millisecond tick, which would add up to a millisecond to every block at block_time 0.
        if next > tokio::time::Instant::now() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
        } else if cancel.is_cancelled() {
            return;
        }
        d.faults.trip(crate::faults::PanicSite::ProductionTask);
        // Never burst to catch up after a stall: the next slot is one block_time from now.
        next = (next + d.block_time).max(tokio::time::Instant::now());

        let head = match d.blocks.head() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "reading the applied head");
                continue;
            }
        };
        // S4: build only on the applied head, with the engine exactly there.
        if !exec.borrow_and_update().at(head.height, head.hash) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = exec.changed() => {}
                _ = tokio::time::sleep(d.block_time.max(Duration::from_millis(50))) => {}
            }
            next = tokio::time::Instant::now();
            continue;
        }
        match produce_one(&d, head.height, head.hash, &cancel).await {
            Ok(Some(outcome)) => match outcome {
                ApplyOutcome::Accepted { height } => {
                    metrics::counter!("haseq_blocks_produced_total").increment(1);
                    if let Some(t) = last_block_at.replace(Instant::now()) {
                        metrics::histogram!("haseq_block_interval_seconds")
                            .record(t.elapsed().as_secs_f64());
                    }
                    tracing::debug!(%height, term = term.0, "block committed");
                }
                ApplyOutcome::Rejected(reason) => {
                    tracing::warn!(?reason, "our own proposal was rejected as stale");
                }
                ApplyOutcome::None => {}
            },
            Ok(None) => return, // cancelled mid-way: abandon the payload
            Err(ProduceError::NotLeader(why)) => {
                tracing::info!(term = term.0, %why, "no longer leader; production ends");
                return;
            }
            Err(ProduceError::Engine(e)) => {
                metrics::counter!("haseq_produce_errors_total").increment(1);
                tracing::warn!(error = %e, "building a block failed");
            }
        }
    }
}

enum ProduceError {
    NotLeader(String),
    Engine(String),
}

async fn produce_one(
    d: &ProducerDeps,
    head_height: Height,
    head_hash: BlockHash,
    cancel: &CancellationToken,
) -> Result<Option<ApplyOutcome>, ProduceError> {
    let engine = d.engine.as_ref();
    // Height 0 is the engine's genesis, which the state machine calls BlockHash::ZERO.
    let parent = if head_height.0 == 0 {
        engine
            .block_hash_at(Height(0))
            .await
            .map_err(|e| ProduceError::Engine(format!("reading genesis: {e}")))?
            .ok_or_else(|| ProduceError::Engine("engine has no genesis".into()))?
    } else {
        head_hash
    };
    let parent_ts = match d.blocks.summary(head_height) {
        Ok(Some(b)) => b.timestamp,
        _ => 0,
    };
    let timestamp = if d.strict_timestamps {
        now_secs().max(parent_ts + 1)
    } else {
        now_secs().max(parent_ts)
    };
    let params = BuildParams {
        parent,
        parent_height: head_height,
        timestamp,
        fee_recipient: [0u8; 20],
    };
    let id = engine
        .build_payload(params)
        .await
        .map_err(|e| ProduceError::Engine(format!("build on {head_height}: {e}")))?;
    let built = engine
        .get_payload(id)
        .await
        .map_err(|e| ProduceError::Engine(format!("get payload {id}: {e}")))?;
    if cancel.is_cancelled() {
        return Ok(None);
    }
    if built.parent_hash != parent || built.number != head_height.next() {
        return Err(ProduceError::Engine(format!(
            "engine built block {} on {}, asked for {} on {parent}",
            built.number,
            built.parent_hash,
            head_height.next()
        )));
    }
    let block = Block {
        height: head_height.next(),
        parent_hash: head_hash,
        hash: built.block_hash,
        timestamp: built.timestamp,
        proposer: d.node_id.clone(),
        payload: built.encoded.into(),
    };
    let t0 = Instant::now();
    let answer = d
        .raft_core
        .get()
        .send(ProposeBlock { block })
        .await
        .unwrap_or_else(|e| Err(ProposeError::Unavailable(e.to_string())));
    match answer {
        Ok(outcome) => {
            let took = t0.elapsed();
            metrics::histogram!("haseq_commit_latency_seconds").record(took.as_secs_f64());
            d.latencies.record(took);
            Ok(Some(outcome))
        }
        // Another node leads: this session is over.
        Err(ProposeError::NotLeader {
            leader: Some(l),
            why,
        }) if l != d.node_id => Err(ProduceError::NotLeader(why)),
        // A new leader refuses writes until a quorum has acknowledged it (openraft's lease),
        // and RaftCore may be being rebuilt: the next slot tries again. A real loss of
        // leadership arrives as `StopProducing` from the Elector.
        Err(e) => Err(ProduceError::Engine(format!("proposing: {e}"))),
    }
}

crate::supervisor::stops_on_request!(Producer);
