//! The transport end to end on loopback: round trips, sharing one connection, refusals,
//! deadlines, reconnects and shutdown.
//!
//! Method: a real `serve` with a recording fake handler on 127.0.0.1 (port 0), driven through
//! the openraft-facing client (`RaftNetworkV2`) or raw TCP for hostile peers. Every wait has a
//! deadline; sleeps appear only to show that something does not happen.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{FakeHandler, SECRET, Server, client, client_with, config};
use haseq_messages::wire::{
    ClientHello, ClientProof, PROTOCOL_VERSION, ServerHello, Welcome, transcript,
};
use haseq_messages::{NodeId, PeerNode, TC};
use hmac::{Hmac, Mac};
use openraft::RaftNetworkFactory;
use openraft::Snapshot;
use openraft::error::{RPCError, ReplicationClosed};
use openraft::network::{RPCOption, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest,
};
use openraft::storage::SnapshotMeta;
use openraft::type_config::alias::VoteOf;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

fn v(term: u64, node: &str) -> VoteOf<TC> {
    VoteOf::<TC>::new(term, NodeId::from(node))
}

fn vote_req(term: u64, node: &str) -> VoteRequest<TC> {
    VoteRequest::new(v(term, node), None)
}

/// openraft's budget for the call; soft TTL (750 ms) is above send_timeout (500 ms).
fn opt() -> RPCOption {
    RPCOption::new(Duration::from_secs(1))
}

fn never_cancelled() -> std::future::Pending<ReplicationClosed> {
    std::future::pending()
}

/// Poll `cond` until it holds or `within` passes; panics naming `what`.
async fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Read until the peer closes; panics if it does not within `within`.
async fn expect_closed(sock: &mut TcpStream, within: Duration) {
    let mut buf = vec![0u8; 4096];
    let closed = timeout(within, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // a refusal frame, then the close
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "server did not close the connection within {within:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rpc_kind_round_trips() {
    let server = Server::start("n2", SECRET, "127.0.0.1:0", &["n1"], FakeHandler::default()).await;
    let (net, mut c) = client("n1", SECRET, "n2", server.addr).await;
    net.set_exec_height(Arc::new(|| Some(42)));

    let append = AppendEntriesRequest {
        vote: v(1, "n1"),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let r = c
        .append_entries(append, opt())
        .await
        .expect("append_entries");
    assert!(matches!(r, AppendEntriesResponse::Success), "{r:?}");

    let r = c.vote(vote_req(2, "n1"), opt()).await.expect("vote");
    assert!(r.vote_granted);
    assert_eq!(r.vote, v(2, "n1"));

    // The fake refuses pre-votes: a refusal proves the request went over the wire
    // (openraft's default pre_vote would grant locally).
    let r = c
        .pre_vote(vote_req(3, "n1"), opt())
        .await
        .expect("pre_vote");
    assert!(
        !r.vote_granted,
        "pre-vote answered locally, not by the peer"
    );
    assert_eq!(r.vote, v(3, "n1"));

    let snapshot = Snapshot {
        meta: SnapshotMeta::default(),
        snapshot: vec![7u8; 300_000],
    };
    let r = c
        .full_snapshot(v(4, "n1"), snapshot, never_cancelled(), opt())
        .await
        .expect("full_snapshot");
    assert_eq!(r.vote, v(4, "n1"));

    let req = TransferLeaderRequest::new(v(4, "n1"), NodeId::from("n2"), None);
    let r = c
        .transfer_leader(req, opt())
        .await
        .expect("transfer_leader");
    assert_eq!(r, Ok(()));

    let seen = server.handler.seen();
    let kinds: Vec<_> = seen.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            "append_entries",
            "vote",
            "pre_vote",
            "install_snapshot",
            "transfer_leader"
        ]
    );
    assert!(
        seen.iter().all(|s| s.from == NodeId::from("n1")),
        "{seen:?}"
    );
    assert_eq!(
        seen[1].exec_height,
        Some(42),
        "vote carries the exec height"
    );
    assert_eq!(
        seen[2].exec_height,
        Some(42),
        "pre-vote carries the exec height"
    );
    assert_eq!(seen[3].data_len, 300_000, "snapshot bytes arrive whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_share_one_connection() {
    const CALLS: u64 = 300;
    let server = Server::start("n2", SECRET, "127.0.0.1:0", &["n1"], FakeHandler::default()).await;
    let (mut net, _) = client("n1", SECRET, "n2", server.addr).await;

    let mut calls = tokio::task::JoinSet::new();
    for term in 1..=CALLS {
        // A client per call, as openraft makes them: all share the pooled connection.
        let mut c = net
            .new_client(
                NodeId::from("n2"),
                &PeerNode {
                    addr: server.addr.to_string(),
                },
            )
            .await;
        calls.spawn(async move {
            let r = c.vote(vote_req(term, "n1"), opt()).await.expect("vote");
            // Answers are matched to their own request, whatever order they come back in.
            assert_eq!(r.vote, v(term, "n1"));
        });
    }
    timeout(Duration::from_secs(10), async {
        while let Some(r) = calls.join_next().await {
            r.expect("call task");
        }
    })
    .await
    .expect("calls finished");

    assert_eq!(
        server.authenticated(),
        1,
        "one TCP connection for all calls"
    );
    let seen = server.handler.seen();
    assert_eq!(seen.len() as u64, CALLS);
    assert!(
        seen.iter().all(|s| s.exec_height.is_none()),
        "no exec-height hook set: None"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_the_secret_is_refused() {
    let server = Server::start("n2", SECRET, "127.0.0.1:0", &["n1"], FakeHandler::default()).await;
    let (_net, mut c) = client("n1", b"not the secret", "n2", server.addr).await;
    let e = c.vote(vote_req(1, "n1"), opt()).await.unwrap_err();
    assert!(matches!(e, RPCError::Unreachable(_)), "{e:?}");
    let msg = e.to_string();
    for part in ["vote", "n2", &server.addr.to_string(), "handshake"] {
        assert!(msg.contains(part), "{msg:?} should name {part:?}");
    }
    assert!(
        server.handler.seen().is_empty(),
        "handler reached without the secret"
    );
}

/// A client that skips checking the server and sends a forged proof is refused by the
/// server, and nothing it sends afterwards reaches the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_client_proof_is_refused_by_the_server() {
    let server = Server::start("n2", SECRET, "127.0.0.1:0", &["n1"], FakeHandler::default()).await;
    let mut sock = TcpStream::connect(server.addr).await.unwrap();
    let me = NodeId::from("n1");
    let target = NodeId::from("n2");
    let client_nonce = [1u8; 32];
    let hello = ClientHello {
        version: PROTOCOL_VERSION,
        node_id: me.clone(),
        target: target.clone(),
        nonce: client_nonce,
    };
    write_frame(&mut sock, &haseq_messages::encode(&hello).unwrap()).await;
    let sh: ServerHello = haseq_messages::decode(&read_frame(&mut sock).await).unwrap();
    let ServerHello::Challenge {
        nonce: server_nonce,
        ..
    } = sh
    else {
        panic!("{sh:?}")
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(b"a guess").unwrap();
    mac.update(&transcript(
        b"client",
        &me,
        &target,
        &client_nonce,
        &server_nonce,
    ));
    let proof = ClientProof {
        proof: mac.finalize().into_bytes().into(),
    };
    write_frame(&mut sock, &haseq_messages::encode(&proof).unwrap()).await;
    let welcome: Welcome = haseq_messages::decode(&read_frame(&mut sock).await).unwrap();
    assert!(matches!(welcome, Welcome::Refused(_)), "{welcome:?}");
    expect_closed(&mut sock, Duration::from_secs(2)).await;
    assert!(server.handler.seen().is_empty());
    assert_eq!(
        server.authenticated(),
        0,
        "membership asked before the proof was checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_member_is_refused() {
    let server = Server::start("n2", SECRET, "127.0.0.1:0", &["n1"], FakeHandler::default()).await;
    let (_net, mut c) = client("n9", SECRET, "n2", server.addr).await;
    let e = c
        .append_entries(
            AppendEntriesRequest {
                vote: v(1, "n9"),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            },
            opt(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RPCError::Unreachable(_)), "{e:?}");
    assert!(e.to_string().contains("not a member"), "{e}");
    assert!(server.handler.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_the_secret_is_refused_by_the_client() {
    let server = Server::start(
        "n2",
        b"impostor's secret",
        "127.0.0.1:0",
        &["n1"],
        FakeHandler::default(),
    )
    .await;
    let (_net, mut c) = client("n1", SECRET, "n2", server.addr).await;
    let e = c.vote(vote_req(1, "n1"), opt()).await.unwrap_err();
    assert!(matches!(e, RPCError::Unreachable(_)), "{e:?}");
    assert!(e.to_string().contains("server's proof"), "{e}");
    assert!(server.handler.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_dialling_the_wrong_node_is_refused() {
    let server = Server::start("n3", SECRET, "127.0.0.1:0", &["n1"], FakeHandler::default()).await;
    let (_net, mut c) = client("n1", SECRET, "n2", server.addr).await;
    let e = c.vote(vote_req(1, "n1"), opt()).await.unwrap_err();
    assert!(e.to_string().contains("this node is n3"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_are_dropped_and_the_server_keeps_serving() {
    let server = Server::start("n2", SECRET, "127.0.0.1:0", &["n1"], FakeHandler::default()).await;

    // A 4 GiB length prefix: refused on sight, nothing reserved for it.
    let mut sock = TcpStream::connect(server.addr).await.unwrap();
    sock.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    expect_closed(&mut sock, Duration::from_secs(2)).await;

    // 1 MiB declared: legal after authentication, not before. The server must close at
    // once, not wait for the body (the handshake deadline is 500 ms).
    let started = Instant::now();
    let mut sock = TcpStream::connect(server.addr).await.unwrap();
    sock.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    expect_closed(&mut sock, Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "closed after {:?}",
        started.elapsed()
    );

    // Well-framed garbage.
    let mut sock = TcpStream::connect(server.addr).await.unwrap();
    write_frame(&mut sock, &[0xAB; 64]).await;
    expect_closed(&mut sock, Duration::from_secs(2)).await;

    // Seeded random blobs.
    let seed: u64 = std::env::var("HASEQ_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("HASEQ_TEST_SEED={seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for _ in 0..20 {
        let len = rand::Rng::random_range(&mut rng, 0..2048);
        let blob: Vec<u8> = (0..len).map(|_| rand::Rng::random(&mut rng)).collect();
        let mut sock = TcpStream::connect(server.addr).await.unwrap();
        sock.write_all(&blob).await.unwrap();
        sock.shutdown().await.unwrap();
        expect_closed(&mut sock, Duration::from_secs(2)).await;
    }

    assert!(server.handler.seen().is_empty());
    let (_net, mut c) = client("n1", SECRET, "n2", server.addr).await;
    c.vote(vote_req(1, "n1"), opt())
        .await
        .expect("a member is still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_nobody_answers_times_out_within_send_timeout() {
    let server = Server::start("n2", SECRET, "127.0.0.1:0", &["n1"], FakeHandler::hanging()).await;
    let (_net, mut c) = client("n1", SECRET, "n2", server.addr).await;
    let send_timeout = config("n1", SECRET).send_timeout;

    let started = Instant::now();
    let e = c.vote(vote_req(1, "n1"), opt()).await.unwrap_err();
    let took = started.elapsed();
    assert!(took >= send_timeout, "gave up early, after {took:?}");
    assert!(
        took < send_timeout + Duration::from_millis(300),
        "took {took:?}"
    );
    assert!(matches!(e, RPCError::Timeout(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("n2") && msg.contains("Vote"),
        "{msg:?} should name the peer and call"
    );

    // openraft's smaller budget wins over send_timeout.
    let started = Instant::now();
    let e = c
        .vote(
            vote_req(2, "n1"),
            RPCOption::new(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RPCError::Timeout(_)), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_millis(75 + 200),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_handshakes_times_out() {
    // Accepts and holds connections, never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            held.push(s);
        }
    });
    // The call's deadline comes first: a timeout naming the peer and the call.
    let mut cfg = config("n1", SECRET);
    cfg.connect_timeout = Duration::from_secs(2);
    let (_net, mut c) = client_with(cfg, "n2", addr).await;
    let started = Instant::now();
    let e = c.vote(vote_req(1, "n1"), opt()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(e, RPCError::Timeout(_)), "{e:?}");
    assert!(
        e.to_string().contains("n2") && e.to_string().contains("Vote"),
        "{e}"
    );

    // The handshake deadline comes first: the peer is unreachable, and the message says why.
    let mut cfg = config("n1", SECRET);
    cfg.connect_timeout = Duration::from_millis(100);
    let (_net, mut c) = client_with(cfg, "n2", addr).await;
    let started = Instant::now();
    let e = c.vote(vote_req(1, "n1"), opt()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(e, RPCError::Unreachable(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("handshake: not completed within 100ms"),
        "{e}"
    );
    silent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_unreachable_quickly() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (_net, mut c) = client("n1", SECRET, "n2", addr).await;
    let started = Instant::now();
    let e = c
        .append_entries(
            AppendEntriesRequest {
                vote: v(1, "n1"),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            },
            opt(),
        )
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(e, RPCError::Unreachable(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("append_entries") && msg.contains("n2"),
        "{msg}"
    );

    // Right after, the slot backs off: a call that can't outlast it fails at once.
    let started = Instant::now();
    let e = c
        .vote(vote_req(1, "n1"), RPCOption::new(Duration::from_millis(4)))
        .await
        .unwrap_err();
    assert!(matches!(e, RPCError::Unreachable(_)), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "took {:?}",
        started.elapsed()
    );
}

/// A restarted server is reached again on the next call, whether or not a call failed
/// while it was down (stale pooled connection, then backoff after a refused connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reconnect_after_the_server_restarts() {
    let server = Server::start("n2", SECRET, "127.0.0.1:0", &["n1"], FakeHandler::default()).await;
    let addr = server.addr;
    let (_net, mut c) = client("n1", SECRET, "n2", addr).await;
    c.vote(vote_req(1, "n1"), opt()).await.expect("first call");

    // Restart with no call in between: the pooled connection is dead but not yet known to be.
    server.stop(Duration::from_secs(3)).await;
    let server = Server::start(
        "n2",
        SECRET,
        &addr.to_string(),
        &["n1"],
        FakeHandler::default(),
    )
    .await;
    c.vote(vote_req(2, "n1"), opt())
        .await
        .expect("call after a restart");
    assert_eq!(server.handler.seen().len(), 1);

    // Down, a call fails; back up, the next call succeeds.
    server.stop(Duration::from_secs(3)).await;
    let e = c.vote(vote_req(3, "n1"), opt()).await.unwrap_err();
    assert!(
        matches!(e, RPCError::Unreachable(_) | RPCError::Network(_)),
        "{e:?}"
    );
    let server = Server::start(
        "n2",
        SECRET,
        &addr.to_string(),
        &["n1"],
        FakeHandler::default(),
    )
    .await;
    let started = Instant::now();
    c.vote(vote_req(4, "n1"), opt())
        .await
        .expect("call after a second restart");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "reconnect took {:?}",
        started.elapsed()
    );
    assert_eq!(server.handler.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_serve_and_fails_calls_in_flight_promptly() {
    let server = Server::start("n2", SECRET, "127.0.0.1:0", &["n1"], FakeHandler::hanging()).await;
    let addr = server.addr;
    let mut cfg = config("n1", SECRET);
    cfg.send_timeout = Duration::from_secs(5);
    let (_net, mut c) = client_with(cfg, "n2", addr).await;
    let call = tokio::spawn(async move {
        c.vote(vote_req(1, "n1"), RPCOption::new(Duration::from_secs(10)))
            .await
    });
    let handler = server.handler.clone();
    wait_until(Duration::from_secs(2), "the handler holds the call", || {
        !handler.seen().is_empty()
    })
    .await;

    let took = server.stop(Duration::from_secs(1)).await;
    assert!(
        took < Duration::from_millis(500),
        "serve took {took:?} to stop"
    );
    let r = timeout(Duration::from_secs(1), call)
        .await
        .expect("the call ended with the connection")
        .unwrap();
    assert!(matches!(r, Err(RPCError::Network(_))), "{r:?}");

    // Nothing listens any more.
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_can_be_cancelled_by_openraft() {
    let server = Server::start("n2", SECRET, "127.0.0.1:0", &["n1"], FakeHandler::hanging()).await;
    let (_net, mut c) = client("n1", SECRET, "n2", server.addr).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cancel = async move {
        let _ = rx.await;
        ReplicationClosed::new("test cancels")
    };
    let snapshot = Snapshot {
        meta: SnapshotMeta::default(),
        snapshot: vec![1u8; 10],
    };
    let call =
        tokio::spawn(async move { c.full_snapshot(v(1, "n1"), snapshot, cancel, opt()).await });
    let handler = server.handler.clone();
    wait_until(
        Duration::from_secs(2),
        "the snapshot reaches the handler",
        || !handler.seen().is_empty(),
    )
    .await;
    tx.send(()).unwrap();
    let r = timeout(Duration::from_millis(500), call)
        .await
        .expect("cancel ends the transfer")
        .unwrap();
    assert!(
        matches!(r, Err(openraft::error::StreamingError::Closed(_))),
        "{r:?}"
    );
}

async fn write_frame(sock: &mut TcpStream, body: &[u8]) {
    sock.write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    sock.write_all(body).await.unwrap();
}

async fn read_frame(sock: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    timeout(Duration::from_secs(2), sock.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    timeout(Duration::from_secs(2), sock.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    body
}

/// A peer that stops answering while calls wait (wedged, or gone without a FIN) loses its
/// pooled connection, so the next call dials again instead of queueing behind a dead socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_dropped_and_redialled() {
    let handler = FakeHandler {
        hang_on: vec!["vote"],
        ..Default::default()
    };
    let server = Server::start("n2", SECRET, "127.0.0.1:0", &["n1"], handler).await;
    let mut cfg = config("n1", SECRET);
    cfg.send_timeout = Duration::from_millis(200);
    let (_net, mut c) = client_with(cfg, "n2", server.addr).await;
    let append = || AppendEntriesRequest {
        vote: v(1, "n1"),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };

    c.append_entries(append(), opt())
        .await
        .expect("append on a fresh connection");
    assert_eq!(server.authenticated(), 1);
    let e = c.vote(vote_req(1, "n1"), opt()).await.unwrap_err();
    assert!(matches!(e, RPCError::Timeout(_)), "{e:?}");
    c.append_entries(append(), opt())
        .await
        .expect("append on a new connection");
    assert_eq!(
        server.authenticated(),
        2,
        "the silent connection was reused"
    );
}
