//! Real openraft nodes talking through the transport.
//!
//! Goal: the openraft-facing halves (`Network`/`PeerClient` and `RaftHandler`) carry every
//! RPC openraft makes, with openraft's own budgets: election with Pre-Vote, replication,
//! leader transfer, a snapshot to a new learner whose log was purged on the leader, and a
//! re-election after the leader dies.
//!
//! Method: 3 voters (then a learner) on loopback with in-memory storage; each server's vote
//! gate records what it sees (and lets everything through). Every wait is openraft's
//! metrics wait with a deadline.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::memstore::{MemLog, MemSm};
use common::{SECRET, config};
use haseq_messages::{Block, BlockHash, Command, Height, NodeId, PeerNode, TC};
use haseq_net::{IsMember, Network, RaftHandler, VoteCandidate, VoteGate, serve};
use openraft::{Config, Raft};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Option<Duration> = Some(Duration::from_secs(10));
const EXEC_HEIGHT: u64 = 4242;

/// (candidate, pre_vote, exec_height) as a server's gate saw them.
type GateLog = Arc<Mutex<Vec<(NodeId, bool, Option<u64>)>>>;

struct Node {
    id: NodeId,
    addr: String,
    raft: Raft<TC, MemSm>,
    sm: MemSm,
    token: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    gate_log: GateLog,
}

impl Node {
    async fn start(id: &str) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut cfg = config(id, SECRET);
        cfg.send_timeout = Duration::from_secs(1);
        let net = Network::new(cfg.clone());
        net.set_exec_height(Arc::new(|| Some(EXEC_HEIGHT)));

        let raft_cfg = Config {
            cluster_name: "haseq-net-test".into(),
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            install_snapshot_timeout: 1000,
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        let raft_cfg = Arc::new(raft_cfg.validate().expect("raft config"));
        let sm = MemSm::default();
        let raft = Raft::new(
            NodeId::from(id),
            raft_cfg,
            net,
            MemLog::default(),
            sm.clone(),
        )
        .await
        .expect("raft");

        let gate_log = GateLog::default();
        let log = gate_log.clone();
        let gate: VoteGate = Arc::new(move |c: &VoteCandidate<'_>| {
            log.lock()
                .unwrap()
                .push((c.from.clone(), c.pre_vote, c.exec_height));
            true
        });
        let handler = Arc::new(RaftHandler::new(raft.clone()).with_vote_gate(gate));
        let members: BTreeSet<NodeId> = ["n1", "n2", "n3", "n4"]
            .into_iter()
            .map(NodeId::from)
            .collect();
        let is_member: IsMember = Arc::new(move |id: &NodeId| members.contains(id));
        let token = CancellationToken::new();
        let server = tokio::spawn(serve(listener, cfg, handler, is_member, token.clone()));
        Node {
            id: NodeId::from(id),
            addr,
            raft,
            sm,
            token,
            server,
            gate_log,
        }
    }

    fn peer(&self) -> PeerNode {
        PeerNode {
            addr: self.addr.clone(),
        }
    }

    async fn stop(self) {
        self.raft.shutdown().await.expect("raft shutdown");
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(3), self.server)
            .await
            .expect("serve stops")
            .expect("serve task")
            .expect("serve");
    }
}

fn block(height: u64, proposer: &NodeId) -> Command {
    Command::Block(Block {
        height: Height(height),
        parent_hash: BlockHash([height as u8; 32]),
        hash: BlockHash([height as u8 + 1; 32]),
        timestamp: height,
        proposer: proposer.clone(),
        payload: vec![0u8; 16].into(),
    })
}

async fn leader_of(nodes: &[&Node]) -> NodeId {
    let m = nodes[0]
        .raft
        .wait(WAIT)
        .metrics(|m| m.current_leader.is_some(), "a leader is known")
        .await
        .expect("leader elected");
    let leader = m.current_leader.unwrap();
    for n in nodes {
        n.raft
            .wait(WAIT)
            .current_leader(leader.clone(), "all agree on the leader")
            .await
            .expect("agreement");
    }
    leader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_cluster_runs_over_the_transport() {
    tokio::time::timeout(Duration::from_secs(60), scenario())
        .await
        .expect("scenario within 60 s");
}

async fn scenario() {
    let n1 = Node::start("n1").await;
    let n2 = Node::start("n2").await;
    let n3 = Node::start("n3").await;
    let members: BTreeMap<NodeId, PeerNode> = [&n1, &n2, &n3]
        .iter()
        .map(|n| (n.id.clone(), n.peer()))
        .collect();
    n1.raft.initialize(members).await.expect("initialize");

    // Election and replication.
    let leader_id = leader_of(&[&n1, &n2, &n3]).await;
    let mut nodes = vec![n1, n2, n3];
    let leader = nodes.iter().find(|n| n.id == leader_id).unwrap();
    // Writes fail with LeaseExpired until the new leader's first quorum ack.
    leader
        .raft
        .wait(WAIT)
        .leader_with_quorum_acked(None, "first quorum ack")
        .await
        .expect("quorum ack");
    let mut last = 0;
    for h in 1..=10 {
        last = leader
            .raft
            .client_write(block(h, &leader_id))
            .await
            .expect("client_write")
            .log_id
            .index();
    }
    for n in &nodes {
        n.raft
            .wait(WAIT)
            .applied_index_at_least(Some(last), "replicated")
            .await
            .expect("applied");
    }

    // Leader transfer: the target campaigns with leadership_transfer, voters grant it.
    let target = nodes.iter().find(|n| n.id != leader_id).unwrap().id.clone();
    leader
        .raft
        .trigger()
        .transfer_leader(target.clone())
        .await
        .expect("transfer");
    let refs: Vec<&Node> = nodes.iter().collect();
    for n in &refs {
        n.raft
            .wait(WAIT)
            .current_leader(target.clone(), "transfer seen")
            .await
            .expect("transfer done");
    }
    let leader = nodes.iter().find(|n| n.id == target).unwrap();
    leader
        .raft
        .wait(WAIT)
        .leader_with_quorum_acked(None, "target leads")
        .await
        .expect("target leads");
    last = leader
        .raft
        .client_write(block(11, &target))
        .await
        .expect("write after transfer")
        .log_id
        .index();

    // Snapshot, purge, then a new learner can only catch up through install_snapshot.
    leader.raft.trigger().snapshot().await.expect("snapshot");
    leader
        .raft
        .wait(WAIT)
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index() >= last),
            "snapshot built",
        )
        .await
        .expect("snapshot built");
    leader.raft.trigger().purge_log(last).await.expect("purge");
    leader
        .raft
        .wait(WAIT)
        .metrics(
            |m| m.purged.is_some_and(|p| p.index() >= last),
            "log purged",
        )
        .await
        .expect("purged");
    let n4 = Node::start("n4").await;
    let added = leader
        .raft
        .add_learner(n4.id.clone(), n4.peer(), true)
        .await
        .expect("add learner")
        .log_id
        .index();
    let m = n4
        .raft
        .wait(WAIT)
        .applied_index_at_least(Some(added), "learner caught up")
        .await
        .expect("learner");
    leader
        .raft
        .wait(WAIT)
        .applied_index_at_least(Some(added), "leader applied")
        .await
        .expect("leader");
    assert!(
        m.snapshot.is_some(),
        "the learner caught up without a snapshot: {m:?}"
    );
    assert_eq!(
        n4.sm.applied_entries(),
        leader.sm.applied_entries(),
        "snapshot carried the state"
    );
    nodes.push(n4);

    // Kill the leader: the two other voters elect a new one, Pre-Vote first.
    let at = nodes.iter().position(|n| n.id == target).unwrap();
    let dead = nodes.remove(at);
    dead.stop().await;
    let voters: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.id != NodeId::from("n4"))
        .collect();
    let new_leader = voters[0]
        .raft
        .wait(WAIT)
        .metrics(
            |m| m.current_leader.as_ref().is_some_and(|l| l != &target),
            "re-election",
        )
        .await
        .expect("a new leader")
        .current_leader
        .unwrap();
    assert_ne!(new_leader, target);

    let seen: Vec<_> = nodes
        .iter()
        .flat_map(|n| n.gate_log.lock().unwrap().clone())
        .collect();
    assert!(
        seen.iter().any(|(_, pre, _)| *pre),
        "no pre-vote reached a server: {seen:?}"
    );
    assert!(
        seen.iter().any(|(_, pre, _)| !*pre),
        "no vote reached a server: {seen:?}"
    );
    assert!(
        seen.iter().all(|(_, _, h)| *h == Some(EXEC_HEIGHT)),
        "exec height lost: {seen:?}"
    );

    for n in nodes {
        n.stop().await;
    }
}
