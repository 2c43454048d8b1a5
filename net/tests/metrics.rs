//! The transport's metrics are emitted and described.
//!
//! Method: a global debugging recorder (this file is its own test binary, with one test, so
//! nothing else records into it); a non-member, a hostile prefix and two calls; then read
//! the counters back.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{FakeHandler, SECRET, Server, client};
use haseq_messages::{NodeId, TC};
use haseq_net::{METRIC_PEER_AUTH_REFUSED, METRIC_RPC_ERRORS, METRIC_RPC_SECONDS, METRIC_RPC_SENT};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use openraft::network::{RPCOption, RaftNetworkV2};
use openraft::raft::VoteRequest;
use openraft::type_config::alias::VoteOf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Running totals: a debugging snapshot drains what it reports, so add each one up.
#[derive(Default)]
struct Totals {
    counts: HashMap<(String, String), u64>,
    described: HashSet<String>,
}

impl Totals {
    fn take(&mut self, snap: &Snapshotter) {
        for (key, _, desc, value) in snap.snapshot().into_vec() {
            let k = key.key();
            if desc.is_some() {
                self.described.insert(k.name().to_string());
            }
            let label = k
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect::<Vec<_>>()
                .join(",");
            let n = match value {
                DebugValue::Counter(n) => n,
                DebugValue::Histogram(v) => v.len() as u64,
                DebugValue::Gauge(_) => continue,
            };
            *self
                .counts
                .entry((k.name().to_string(), label))
                .or_default() += n;
        }
    }

    /// A counter's value, or a histogram's number of samples.
    fn get(&self, name: &str, label: &str) -> u64 {
        self.counts
            .get(&(name.to_string(), label.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_rpcs_are_counted_and_described() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    recorder.install().expect("first recorder in this binary");
    haseq_net::describe_metrics();

    let server = Server::start("n2", SECRET, "127.0.0.1:0", &["n1"], FakeHandler::default()).await;
    let opt = RPCOption::new(Duration::from_secs(1));
    let vote = || VoteRequest::<TC>::new(VoteOf::<TC>::new(1, NodeId::from("n1")), None);

    let (_net, mut outsider) = client("n9", SECRET, "n2", server.addr).await;
    outsider.vote(vote(), opt.clone()).await.unwrap_err();

    let mut sock = TcpStream::connect(server.addr).await.unwrap();
    sock.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf)).await;

    let (_net, mut member) = client("n1", SECRET, "n2", server.addr).await;
    member
        .vote(vote(), opt.clone())
        .await
        .expect("member's vote");

    // The server counts a refusal after telling the client; give it a moment, bounded.
    let mut totals = Totals::default();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        totals.take(&snap);
        let not_member = totals.get(METRIC_PEER_AUTH_REFUSED, "reason=not_member");
        let malformed = totals.get(METRIC_PEER_AUTH_REFUSED, "reason=malformed");
        if (not_member, malformed) == (1, 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refusals counted: not_member {not_member}, malformed {malformed}; all: {:?}",
            totals.counts
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(totals.get(METRIC_RPC_SENT, "kind=vote"), 2);
    assert_eq!(totals.get(METRIC_RPC_ERRORS, "kind=vote"), 1);
    assert_eq!(totals.get(METRIC_RPC_SECONDS, "kind=vote"), 2);
    for name in [
        METRIC_PEER_AUTH_REFUSED,
        METRIC_RPC_SENT,
        METRIC_RPC_ERRORS,
        METRIC_RPC_SECONDS,
    ] {
        assert!(
            totals.described.contains(name),
            "{name} has no help line; described: {:?}",
            totals.described
        );
    }
}
