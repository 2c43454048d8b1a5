//! In-process cluster harness: real nodes (LMDB storage, TCP transport on loopback, openraft,
//! supervised actors, HTTP API) in one process, one actix `System`.
//!
//! Faults are node-level: `kill` stops a node abruptly (its Raft stops answering, as after a
//! crash; the store stays on disk) and `restart` starts it again on the same directory and
//! ports. Every wait is `wait_until(deadline, what, cond)`, which fails with the last state it
//! saw; every loop is bounded.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod catch_up;
pub mod leadership;
pub mod members;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haseq_actors::node::{self, Node};
use haseq_actors::raft_core::{GetStatus, RaftStatus, Role};
use haseq_actors::settings::{EngineSettings, NodeSettings, RaftTiming};
use haseq_messages::NodeId;
use tokio::net::TcpListener;

/// The cluster secret every test node shares.
pub const SECRET: &[u8] = b"haseq in-process test cluster secret";

/// The operator guide's recommended timings.
pub fn guide_timing() -> RaftTiming {
    RaftTiming {
        heartbeat_timeout: Duration::from_millis(92),
        election_timeout: Duration::from_millis(368),
        leader_lease_timeout: Duration::from_millis(46),
        send_timeout: Duration::from_millis(50),
    }
}

pub struct Member {
    pub id: NodeId,
    pub settings: NodeSettings,
    pub node: Option<Node>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    /// The highest applied height each node was seen with (S2: it only grows).
    seen_height: std::cell::RefCell<Vec<u64>>,
}

async fn bind(addr: &str) -> TcpListener {
    // A restarted node rebinds the port it had; the old socket may linger for a moment.
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot bind {addr} within 2 s");
}

impl Cluster {
    /// Start `n` nodes with the guide's timings.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, guide_timing()).await
    }

    /// Start `n` nodes with the guide's timings and settings adjusted by `tune`.
    pub async fn start_configured(n: usize, tune: impl Fn(&mut NodeSettings)) -> Cluster {
        Self::start_inner(n, guide_timing(), tune).await
    }

    pub async fn start_with(n: usize, timing: RaftTiming) -> Cluster {
        Self::start_inner(n, timing, |_| {}).await
    }

    async fn start_inner(
        n: usize,
        timing: RaftTiming,
        tune: impl Fn(&mut NodeSettings),
    ) -> Cluster {
        Self::build(n, timing, tune, true).await
    }

    async fn build(
        n: usize,
        timing: RaftTiming,
        tune: impl Fn(&mut NodeSettings),
        start: bool,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut addrs = Vec::new();
        for _ in 0..n {
            let raft = format!("127.0.0.1:{}", free_port());
            let api = format!("127.0.0.1:{}", free_port());
            addrs.push((raft, api));
        }
        let mut members = Vec::new();
        for i in 0..n {
            let id = NodeId(format!("node-{}", i + 1));
            let peers = (0..n)
                .filter(|&j| j != i)
                .map(|j| (NodeId(format!("node-{}", j + 1)), addrs[j].0.clone()))
                .collect();
            let settings = NodeSettings {
                node_id: id.clone(),
                raft_addr: addrs[i].0.clone(),
                raft_dir: dir.path().join(id.as_str()),
                peers,
                timing,
                snapshot_threshold: 500,
                trailing_logs: 200,
                join: false,
                crash_fast_failover: true,
                snap_count: 3,
                secret: Arc::new(SECRET.to_vec()),
                api_addr: addrs[i].1.clone(),
                admin_token: None,
                admin_require_token: false,
                api_limits: Default::default(),
                // Scenarios that propose by hand leave production off; `start_producing`
                // turns it on.
                aggregator: false,
                block_time: Duration::from_millis(100),
                max_exec_lag_blocks: 10,
                handoff_after: Duration::from_secs(5),
                unhealthy_leader_grace: Duration::from_secs(2),
                engine: EngineSettings::Embedded {
                    data_dir: dir.path().join(id.as_str()).join("engine"),
                    txs_per_block: 2,
                    tx_bytes: 64,
                    faults: haseq_engine::Faults::default(),
                },
            };
            let mut settings = settings;
            tune(&mut settings);
            members.push(Member {
                id,
                settings,
                node: None,
            });
        }
        let seen_height = std::cell::RefCell::new(vec![0; n]);
        let mut c = Cluster {
            dir,
            members,
            seen_height,
        };
        if start {
            for i in 0..n {
                c.restart(i).await;
            }
        }
        c
    }

    /// `n` nodes with the guide's timings and settings adjusted by `tune`, none started:
    /// the test starts each with [`Cluster::restart`], in the order it needs.
    pub async fn configured(n: usize, tune: impl Fn(&mut NodeSettings)) -> Cluster {
        Self::build(n, guide_timing(), tune, false).await
    }

    pub fn node(&self, i: usize) -> &Node {
        self.members[i].node.as_ref().expect("node is running")
    }

    /// The index up to which node `i`'s Raft log is purged (behind a snapshot).
    pub async fn purged(&self, i: usize) -> Result<Option<u64>, String> {
        self.node(i)
            .raft
            .with_raft_state(|st| st.log_ids.purged().map(|l| l.index))
            .await
            .map_err(|e| e.to_string())
    }

    pub fn index_of(&self, id: &NodeId) -> usize {
        self.members
            .iter()
            .position(|m| &m.id == id)
            .expect("known node id")
    }

    /// Start (or start again) node `i` on its directory and ports.
    pub async fn restart(&mut self, i: usize) {
        self.try_restart(i).await.expect("node starts");
    }

    /// [`Cluster::restart`], returning why the node refused to start.
    pub async fn try_restart(&mut self, i: usize) -> Result<(), node::NodeError> {
        assert!(
            self.members[i].node.is_none(),
            "node {i} is already running"
        );
        let s = self.members[i].settings.clone();
        let raft = bind(&s.raft_addr).await;
        let api = bind(&s.api_addr).await;
        let node = node::start_with_listeners(s, raft, api).await?;
        self.members[i].node = Some(node);
        Ok(())
    }

    /// Stop node `i` abruptly: its transport and Raft stop at once, nothing is handed over.
    pub async fn kill(&mut self, i: usize) {
        if let Some(n) = self.members[i].node.take() {
            n.shutdown().await;
        }
    }

    pub async fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i).await;
        }
    }

    /// The status of every running node, by index.
    pub async fn statuses(&self) -> Vec<(usize, RaftStatus)> {
        let mut out = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            if let Some(n) = &m.node
                && let Ok(s) = n.raft_core.get().send(GetStatus).await
            {
                out.push((i, s));
            }
        }
        out
    }

    /// The one node that calls itself leader and that every running node follows.
    pub async fn agreed_leader(&self) -> Option<(usize, u64)> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].node.is_some())
            .collect();
        self.agreed_leader_among(&running).await
    }

    /// [`Cluster::agreed_leader`] among the nodes `among` only (all running), say the
    /// members when others are joining or were removed.
    pub async fn agreed_leader_among(&self, among: &[usize]) -> Option<(usize, u64)> {
        let st: Vec<(usize, RaftStatus)> = self
            .statuses()
            .await
            .into_iter()
            .filter(|(i, _)| among.contains(i))
            .collect();
        if st.len() != among.len() {
            return None;
        }
        let leaders: Vec<_> = st.iter().filter(|(_, s)| s.role == Role::Leader).collect();
        if leaders.len() != 1 {
            return None;
        }
        let (li, ls) = leaders[0];
        st.iter()
            .all(|(_, s)| s.leader_id.as_ref() == Some(&ls.node_id))
            .then_some((*li, ls.term))
    }

    pub async fn wait_leader_among(&self, among: &[usize], deadline: Duration) -> (usize, u64) {
        wait_until(
            deadline,
            &format!("one leader nodes {among:?} agree on"),
            || async {
                match self.agreed_leader_among(among).await {
                    Some(l) => Ok(l),
                    None => Err(format!("{:?}", self.statuses().await)),
                }
            },
        )
        .await
    }

    pub async fn wait_leader(&self, deadline: Duration) -> (usize, u64) {
        wait_until(
            deadline,
            "one leader all running nodes agree on",
            || async {
                match self.agreed_leader().await {
                    Some(l) => Ok(l),
                    None => Err(format!("{:?}", self.statuses().await)),
                }
            },
        )
        .await
    }
}

impl Cluster {
    /// S1 and S2 of docs/DESIGN.md on every running node: the applied chains are prefixes of
    /// one chain (the same block at every height two nodes both have, each linked to its
    /// parent), and no node's applied height ever went down. Returns the lowest head height.
    pub fn check_invariants(&self) -> u64 {
        let mut heads = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            if let Some(n) = &m.node {
                let h = n.blocks.head().expect("read head").height.0;
                let mut seen = self.seen_height.borrow_mut();
                assert!(
                    h >= seen[i],
                    "S2: {} applied height went from {} to {h}",
                    m.id,
                    seen[i]
                );
                seen[i] = h;
                heads.push((i, h));
            }
        }
        let top = heads.iter().map(|(_, h)| *h).max().unwrap_or(0);
        let mut prev_hash: Option<haseq_messages::BlockHash> = None;
        for height in 1..=top {
            let mut canonical: Option<haseq_messages::Block> = None;
            for (i, h) in &heads {
                if *h < height {
                    continue;
                }
                let b = self
                    .node(*i)
                    .blocks
                    .block(haseq_messages::Height(height))
                    .expect("read block");
                let b = b.unwrap_or_else(|| {
                    panic!("{} has head {h} but no block {height}", self.members[*i].id)
                });
                match &canonical {
                    None => canonical = Some(b),
                    Some(c) => assert_eq!(c, &b, "S1: fork at height {height}"),
                }
            }
            let b = canonical.expect("some node has this height");
            if let Some(p) = prev_hash {
                assert_eq!(
                    b.parent_hash, p,
                    "S1: block {height} does not link to its parent"
                );
            }
            prev_hash = Some(b.hash);
        }
        self.check_engine_heads();
        heads.iter().map(|(_, h)| *h).min().unwrap_or(0)
    }

    /// S3 of docs/DESIGN.md on every running node with an embedded engine: the engine's
    /// canonical head is a committed block, the block store's block at that height (its own
    /// store, or another running node's when its own lacks it), or the engine's genesis at
    /// height 0 (which the state machine calls `BlockHash::ZERO`).
    pub fn check_engine_heads(&self) {
        for (i, m) in self.members.iter().enumerate() {
            let Some(n) = &m.node else { continue };
            let Some(engine) = &n.embedded else { continue };
            if engine.faults().fail {
                // A failing engine answers nothing; its head is checked once it is cleared.
                continue;
            }
            let (h, hash) = self.engine_head(i).expect("node has an embedded engine");
            if h == 0 {
                assert_eq!(
                    hash,
                    engine.genesis_hash(),
                    "S3: {} engine head at height 0 is not its genesis",
                    m.id
                );
                continue;
            }
            let committed = std::iter::once(i)
                .chain((0..self.members.len()).filter(|&j| j != i))
                .filter_map(|j| self.members[j].node.as_ref())
                .find_map(|other| {
                    other
                        .blocks
                        .block(haseq_messages::Height(h))
                        .expect("read block")
                });
            let committed = committed.unwrap_or_else(|| {
                panic!(
                    "S3: {} engine head {h} {hash} is above every running node's committed chain",
                    m.id
                )
            });
            assert_eq!(
                hash, committed.hash,
                "S3: {} engine head at height {h} is not the committed block",
                m.id
            );
        }
    }

    /// Node `i`'s embedded engine head `(height, hash)`, read from the engine itself; `None`
    /// when the node is down or drives no embedded engine.
    pub fn engine_head(&self, i: usize) -> Option<(u64, haseq_messages::BlockHash)> {
        use futures::FutureExt as _;
        use haseq_engine::ExecutionEngine as _;
        let engine = self.members[i].node.as_ref()?.embedded.as_ref()?;
        // The embedded engine answers `head` from a read transaction, without awaiting.
        let (h, hash) = engine
            .head()
            .now_or_never()
            .expect("the embedded engine's head() completes at once")
            .unwrap_or_else(|e| panic!("{} engine head: {e}", self.members[i].id));
        Some((h.0, hash))
    }

    /// Node `i`'s applied height (its block store's head).
    pub fn applied_height(&self, i: usize) -> u64 {
        self.node(i).blocks.head().expect("read head").height.0
    }

    /// The highest applied height among running nodes.
    pub fn top_applied(&self) -> u64 {
        (0..self.members.len())
            .filter(|&i| self.members[i].node.is_some())
            .map(|i| self.applied_height(i))
            .max()
            .unwrap_or(0)
    }

    /// The execution status node `i`'s ExecReplayer last published.
    pub fn exec_status(&self, i: usize) -> haseq_actors::exec_replayer::ExecStatus {
        self.node(i).exec.borrow().clone()
    }

    /// Wait until every running node has applied at least `height` and its engine's head is at
    /// or above it (every engine replayed it). Returns the lowest engine height then.
    pub async fn wait_engines_reach(&self, height: u64, deadline: Duration) -> u64 {
        wait_until(
            deadline,
            &format!("every running engine at height >= {height}"),
            || async {
                let mut low = u64::MAX;
                let mut seen = Vec::new();
                for (i, m) in self.members.iter().enumerate() {
                    if m.node.is_none() {
                        continue;
                    }
                    let eh = self.engine_head(i).map(|(h, _)| h).unwrap_or(0);
                    let ah = self.applied_height(i);
                    seen.push(format!("{}: applied {ah} engine {eh}", m.id));
                    low = low.min(eh.min(ah));
                }
                if low != u64::MAX && low >= height {
                    Ok(low)
                } else {
                    Err(seen.join(", "))
                }
            },
        )
        .await
    }
}

/// Turn block production on (`node.aggregator`) at `block_time`: use inside the `tune` of
/// [`Cluster::start_configured`]. The harness default leaves production off.
pub fn enable_production(s: &mut NodeSettings, block_time: Duration) {
    s.aggregator = true;
    s.block_time = block_time;
}

/// The seed of a randomised test: `HASEQ_TEST_SEED` or a drawn one, printed first.
pub fn test_seed() -> u64 {
    let seed = std::env::var("HASEQ_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("HASEQ_TEST_SEED={seed}");
    seed
}

/// Poll `cond` until it gives `Ok` or `deadline` passes; then panic with `what` and the last
/// state `cond` described.
pub async fn wait_until<T, F, Fut>(deadline: Duration, what: &str, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last = String::new();
    for _ in 0..100_000 {
        match cond().await {
            Ok(v) => return v,
            Err(state) => last = state,
        }
        if start.elapsed() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out after {deadline:?} waiting for {what}; last state: {last}");
}

/// The value of the first sample in Prometheus text `metrics` whose line starts with
/// `series` (a name, or a name with its labels); 0 when there is none.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Run a test body inside an actix System on a multi-threaded tokio runtime, as the daemon does.
/// Logs go to stderr when `HASEQ_TEST_LOG` holds a filter, e.g. `HASEQ_TEST_LOG=info`.
pub fn run<F: Future<Output = ()>>(body: F) {
    if let Ok(filter) = std::env::var("HASEQ_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    haseq_actors::system().expect("runtime").block_on(body);
}

fn free_port() -> u16 {
    haseq_net::free_loopback_port().expect("a free loopback port")
}
