//! Helpers for the leadership fault tests: a background role sampler ([`RoleWatch`]), an abrupt
//! crash, full partitions of one node, production waits and figures.
//!
//! The sampler reads every watched node's Raft metrics, Elector view, execution status and
//! applied head every [`SAMPLE_EVERY`], from a tokio task, so nothing the test does between its
//! own waits (a kill, a restart) hides a role change. Tests attach a node after each (re)start
//! and detach it before each kill; every sample is kept (bounded) for the test to judge.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haseq_actors::elector::ElectorView;
use haseq_actors::exec_replayer::ExecStatus;
use haseq_messages::{NodeId, TC};
use haseq_storage::BlockReader;
use openraft::async_runtime::WatchReceiver as _;
use openraft::metrics::RaftDataMetrics;
use openraft::type_config::alias::WatchReceiverOf;
use openraft::{RaftMetrics, ServerState};
use tokio::sync::watch;

use super::{Cluster, wait_until};

/// How often [`RoleWatch`] samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// The most samples a [`RoleWatch`] keeps (about 8 minutes at [`SAMPLE_EVERY`]).
pub const SAMPLES_MAX: usize = 100_000;

/// One node as one sample saw it.
#[derive(Debug, Clone)]
pub struct NodeSample {
    /// Which start of the node (counts attaches of this slot).
    pub incarnation: u64,
    /// Raft role.
    pub state: ServerState,
    /// Raft term.
    pub term: u64,
    /// The leader the node knows.
    pub leader: Option<NodeId>,
    /// Its Raft log's last entry `(term, index)`: a voter refuses a candidate whose log is
    /// behind its own.
    pub last_log: (u64, u64),
    /// Its engine's height, as its ExecReplayer published it.
    pub exec_height: u64,
    /// Its engine is healthy and on the committed chain.
    pub healthy: bool,
    /// Its applied height (block store head).
    pub applied: u64,
    /// Strictly eligible by its own Elector (lag, health, not paused).
    pub eligible: bool,
    /// Eligible only by the relaxed rule.
    pub relaxed: bool,
    /// Its Elector tells its Producer to produce.
    pub producing: bool,
    /// Paused by an admin.
    pub paused: bool,
}

impl NodeSample {
    pub fn is_leader(&self) -> bool {
        self.state == ServerState::Leader
    }
}

/// Every watched node at one instant (by cluster index; `None` when not watched).
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the watch started.
    pub at: Duration,
    pub nodes: Vec<Option<NodeSample>>,
}

impl Sample {
    /// The highest applied height among the sampled nodes.
    pub fn head(&self) -> u64 {
        self.nodes
            .iter()
            .flatten()
            .map(|n| n.applied)
            .max()
            .unwrap_or(0)
    }

    /// The leader of the highest term among nodes in the Leader state (an isolated old
    /// leader stays in that state at its lower term until it hears the new one).
    pub fn leader(&self) -> Option<(usize, u64)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().filter(|n| n.is_leader()).map(|n| (i, n.term)))
            .max_by_key(|(_, t)| *t)
    }

    /// How far node `i`'s engine is behind the sampled head.
    pub fn lag(&self, i: usize) -> Option<u64> {
        let head = self.head();
        self.nodes[i]
            .as_ref()
            .map(|n| head.saturating_sub(n.exec_height))
    }
}

struct Probe {
    incarnation: u64,
    metrics: WatchReceiverOf<TC, RaftMetrics<TC>>,
    data: WatchReceiverOf<TC, RaftDataMetrics<TC>>,
    view: watch::Receiver<ElectorView>,
    exec: watch::Receiver<ExecStatus>,
    blocks: BlockReader,
}

impl Probe {
    fn sample(&self) -> NodeSample {
        let (state, term, leader) = {
            let m = self.metrics.borrow_watched();
            (m.state, m.current_term, m.current_leader.clone())
        };
        let last_log = self
            .data
            .borrow_watched()
            .last_log
            .as_ref()
            .map(|l| (l.leader_id.term, l.index))
            .unwrap_or((0, 0));
        let v = self.view.borrow().clone();
        let e = self.exec.borrow().clone();
        NodeSample {
            incarnation: self.incarnation,
            state,
            term,
            leader,
            last_log,
            exec_height: e.exec_height,
            healthy: e.healthy && !e.on_other_chain,
            applied: self.blocks.head().map(|h| h.height.0).unwrap_or(0),
            eligible: v.me.eligible,
            relaxed: v.relaxed,
            producing: v.producing,
            paused: v.me.paused,
        }
    }
}

#[derive(Default)]
struct Shared {
    probes: Vec<Option<Probe>>,
    incarnations: Vec<u64>,
    samples: Vec<Sample>,
    stopped: bool,
}

/// A background sampler of every attached node's role, term, eligibility, production and
/// execution height. Stop it with [`RoleWatch::stop`] (dropping it stops it too).
pub struct RoleWatch {
    shared: Arc<Mutex<Shared>>,
    started: Instant,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RoleWatch {
    /// Start sampling every running node of `c`.
    pub fn start(c: &Cluster) -> RoleWatch {
        let n = c.members.len();
        let shared = Arc::new(Mutex::new(Shared {
            probes: (0..n).map(|_| None).collect(),
            incarnations: vec![0; n],
            ..Shared::default()
        }));
        let started = Instant::now();
        let mut w = RoleWatch {
            shared: shared.clone(),
            started,
            task: None,
        };
        for i in 0..n {
            if c.members[i].node.is_some() {
                w.attach(c, i);
            }
        }
        let task = tokio::spawn(async move {
            for _ in 0..SAMPLES_MAX {
                {
                    let mut s = lock(&shared);
                    if s.stopped {
                        return;
                    }
                    let nodes = s
                        .probes
                        .iter()
                        .map(|p| p.as_ref().map(Probe::sample))
                        .collect();
                    s.samples.push(Sample {
                        at: started.elapsed(),
                        nodes,
                    });
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
        w.task = Some(task);
        w
    }

    /// Watch node `i` (after a start or restart).
    pub fn attach(&self, c: &Cluster, i: usize) {
        let n = c.node(i);
        let mut s = lock(&self.shared);
        s.incarnations[i] += 1;
        let incarnation = s.incarnations[i];
        s.probes[i] = Some(Probe {
            incarnation,
            metrics: n.raft.metrics(),
            data: n.raft.data_metrics(),
            view: n.view.clone(),
            exec: n.exec.clone(),
            blocks: n.blocks.clone(),
        });
    }

    /// Stop watching node `i` (before a kill).
    pub fn detach(&self, i: usize) {
        lock(&self.shared).probes[i] = None;
    }

    /// Since the watch started.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// A copy of the samples taken so far.
    pub fn samples(&self) -> Vec<Sample> {
        lock(&self.shared).samples.clone()
    }

    /// The samples taken since `from` (a [`RoleWatch::now`] reading).
    pub fn samples_since(&self, from: Duration) -> Vec<Sample> {
        lock(&self.shared)
            .samples
            .iter()
            .filter(|s| s.at >= from)
            .cloned()
            .collect()
    }

    /// Stop sampling; the samples stay readable.
    pub async fn stop(&mut self) {
        lock(&self.shared).stopped = true;
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RoleWatch {
    fn drop(&mut self) {
        lock(&self.shared).stopped = true;
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The leader changes in `samples`: `(at, leader index, term)` each time the highest-term
/// leader differs from the previous sample's (a sample with no leader is not a change).
pub fn leader_changes(samples: &[Sample]) -> Vec<(Duration, usize, u64)> {
    let mut out: Vec<(Duration, usize, u64)> = Vec::new();
    for s in samples {
        if let Some((i, t)) = s.leader()
            && out.last().is_none_or(|(_, li, lt)| (*li, *lt) != (i, t))
        {
            out.push((s.at, i, t));
        }
    }
    out
}

/// Another node that could have led instead of node `i` at sample `s`: up, healthy, unpaused,
/// its engine within `max_lag` of the sampled head, and its Raft log at least as long as
/// node `i`'s (a voter refuses a candidate whose log is behind its own, so a node with a
/// shorter log could not have won).
pub fn eligible_rival(s: &Sample, i: usize, max_lag: u64) -> Option<usize> {
    let me = s.nodes[i].as_ref()?;
    let head = s.head();
    s.nodes.iter().enumerate().find_map(|(j, o)| {
        let o = o.as_ref()?;
        (j != i
            && o.healthy
            && !o.paused
            && head.saturating_sub(o.exec_height) <= max_lag
            && o.last_log >= me.last_log)
            .then_some(j)
    })
}

/// L2 of docs/DESIGN.md judged on `samples`: each time a node enters the Leader state (a new
/// term), its engine must not lag the sampled head by more than `max_lag` while another
/// sampled node could have led instead ([`eligible_rival`]). Returns one line per violation.
pub fn l2_violations(samples: &[Sample], max_lag: u64, names: &[NodeId]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen: Vec<(usize, u64)> = Vec::new();
    for s in samples {
        for (i, n) in s.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            if !n.is_leader() || seen.contains(&(i, n.term)) {
                continue;
            }
            seen.push((i, n.term));
            let lag = s.lag(i).unwrap_or(0);
            if lag <= max_lag {
                continue;
            }
            if let Some(j) = eligible_rival(s, i, max_lag) {
                out.push(format!(
                    "at {:?}: {} won term {} with exec lag {lag} while {} was eligible with log {:?} >= {:?}",
                    s.at,
                    names[i],
                    n.term,
                    names[j],
                    s.nodes[j].as_ref().map(|o| o.last_log),
                    n.last_log
                ));
            }
        }
    }
    out
}

/// `(min, median, max)` of `v` (sorted in place); zeros when empty.
pub fn min_median_max(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    }
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// Milliseconds with one decimal, for figures.
/// One of the two other nodes of a 3-node cluster than `leader`, chosen by `rng`.
pub fn random_follower(rng: &mut impl rand::Rng, leader: usize) -> usize {
    if rng.random_bool(0.5) {
        (leader + 1) % 3
    } else {
        (leader + 2) % 3
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl Cluster {
    /// Crash node `i`: its links to every peer are cut first (it falls silent at once, as a
    /// killed process does), then it is stopped. Its directory stays for a restart.
    pub async fn crash(&mut self, i: usize) {
        if let Some(n) = self.members[i].node.as_ref() {
            for m in &self.members {
                if m.id != n.id {
                    n.link_cuts.set(&m.id, true);
                }
            }
        }
        self.kill(i).await;
    }

    /// Cut node `i` off from every other running node, on both sides of each link.
    pub fn isolate(&self, i: usize) {
        self.set_isolated(i, true);
    }

    /// Undo [`Cluster::isolate`].
    pub fn heal(&self, i: usize) {
        self.set_isolated(i, false);
    }

    fn set_isolated(&self, i: usize, cut: bool) {
        let me = self.members[i].id.clone();
        for (j, m) in self.members.iter().enumerate() {
            if j == i {
                continue;
            }
            if let Some(n) = &self.members[i].node {
                n.link_cuts.set(&m.id, cut);
            }
            if let Some(n) = &m.node {
                n.link_cuts.set(&me, cut);
            }
        }
    }

    /// Wait until some running node has applied a block above `above`; returns its height and
    /// proposer.
    pub async fn wait_block_above(&self, above: u64, deadline: Duration) -> (u64, NodeId) {
        wait_until(
            deadline,
            &format!("a block above height {above}"),
            || async {
                let top = self.top_applied();
                if top > above {
                    let holder = (0..self.members.len())
                        .filter(|&i| self.members[i].node.is_some())
                        .find(|&i| self.applied_height(i) == top)
                        .expect("a running node holds the top");
                    let b = self
                        .node(holder)
                        .blocks
                        .block(haseq_messages::Height(top))
                        .expect("read block")
                        .expect("the head block is stored");
                    Ok((top, b.proposer))
                } else {
                    Err(format!("top applied height {top}"))
                }
            },
        )
        .await
    }

    /// Running node `i`'s current Raft metrics.
    pub fn metrics(&self, i: usize) -> RaftMetrics<TC> {
        self.node(i).raft.metrics().borrow_watched().clone()
    }

    /// Every running node's role, log, heads and eligibility, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            let Some(n) = &m.node else {
                out.push(format!("{}: down", m.id));
                continue;
            };
            let r = self.metrics(i);
            let v = n.view.borrow().clone();
            let e = self.exec_status(i);
            out.push(format!(
                "{}: {:?} term {} leader {:?} last log {:?} committed {:?} applied {:?} height {} exec {} healthy {} eligible {} relaxed {} gate {} reason {:?}",
                m.id,
                r.state,
                r.current_term,
                r.current_leader.as_ref().map(|l| l.to_string()),
                r.last_log_index,
                r.cluster_committed.as_ref().map(|l| l.index),
                r.last_applied.as_ref().map(|l| l.index),
                self.applied_height(i),
                e.exec_height,
                e.healthy,
                v.eligible,
                v.relaxed,
                v.gate_active,
                v.ineligible_reason
            ));
        }
        out.join("; ")
    }

    /// The proposer of every block in `from..=to` that running node `i` holds.
    pub fn proposers(&self, i: usize, from: u64, to: u64) -> Vec<(u64, NodeId)> {
        (from..=to)
            .filter_map(|h| {
                self.node(i)
                    .blocks
                    .block(haseq_messages::Height(h))
                    .expect("read block")
                    .map(|b| (h, b.proposer))
            })
            .collect()
    }
}
