//! Goal: the API port bounds what a client can hold. A client that never finishes its request
//! headers is cut off after `api.header_read_timeout`; beyond `api.max_connections` open
//! connections a new one is closed at once (counted) while the open ones keep working, and
//! a slot freed is usable again; beyond `api.max_event_subscribers` `/events` answers 503
//! (counted), and a stream that ends frees its slot.
//!
//! Method: one in-process node with small limits (header timeout 300 ms, 4 connections, 2
//! event streams); raw TCP clients that send half a request line or nothing.

mod harness;

use std::time::{Duration, Instant};

use harness::{Cluster, run};
use haseq_actors::api_client;
use haseq_actors::api_server::ApiLimits;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const CALL: Duration = Duration::from_secs(2);
const HEADER_TIMEOUT: Duration = Duration::from_millis(300);

/// How long until the server closes `s` (reads to EOF or reset), at most `max`.
async fn closed_after(s: &mut TcpStream, max: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    for _ in 0..1_000 {
        match tokio::time::timeout(max.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            // A 408 or similar before the close is fine: keep reading to the close.
            Ok(Ok(_)) => continue,
        }
    }
    None
}

#[test]
fn the_api_port_bounds_slow_clients_connections_and_event_streams() {
    run(async {
        let mut c = Cluster::start_configured(1, |s| {
            s.api_limits = ApiLimits {
                max_connections: 4,
                max_event_subscribers: 2,
                header_read_timeout: HEADER_TIMEOUT,
            };
        })
        .await;
        c.wait_leader(Duration::from_secs(10)).await;
        let api = c.node(0).api_addr.to_string();

        // Slow loris: half a request line, then silence.
        let mut slow = TcpStream::connect(&api).await.unwrap();
        slow.write_all(b"GET /status HT").await.unwrap();
        let took = closed_after(&mut slow, Duration::from_secs(5))
            .await
            .expect("a client that never finishes its headers is cut off");
        eprintln!("half a request line: closed after {took:?}");
        assert!(took >= HEADER_TIMEOUT / 2, "closed too early: {took:?}");
        // Silent from the start: the same.
        let mut silent = TcpStream::connect(&api).await.unwrap();
        let took = closed_after(&mut silent, Duration::from_secs(5))
            .await
            .expect("a client that sends nothing is cut off");
        eprintln!("nothing sent: closed after {took:?}");

        // Hold all 4 slots with clients that have sent the start of a request: a fifth is
        // closed at once, while a held one still finishes its request.
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(&api).await.unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
            held.push(s);
        }
        // The server accepts in arrival order, so these four take the slots before the fifth.
        let mut fifth = TcpStream::connect(&api).await.unwrap();
        let took = closed_after(&mut fifth, HEADER_TIMEOUT / 2)
            .await
            .expect("a connection beyond api.max_connections is closed at once");
        eprintln!("fifth connection: closed after {took:?}");
        let mut first = held.remove(0);
        first
            .write_all(b"Host: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(CALL, first.read_to_end(&mut answer))
            .await
            .expect("a held connection is answered")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // The others time out on their headers; then the port serves again.
        drop(held);
        let r = harness::wait_until(Duration::from_secs(5), "a slot free again", || {
            let api = api.clone();
            async move {
                api_client::request(&api, "GET", "/metrics", None, CALL)
                    .await
                    .and_then(|r| {
                        if r.status == 200 {
                            Ok(r)
                        } else {
                            Err(format!("HTTP {}", r.status))
                        }
                    })
            }
        })
        .await;
        let refused = harness::metric_value(&r.body, "haseq_api_connections_refused_total");
        assert!(refused >= 1.0, "the refusal is counted: {refused}");

        // Event streams: two open, the third refused with the reason.
        let e1 = api_client::EventStream::open(&api, CALL).await.unwrap();
        let mut e2 = api_client::EventStream::open(&api, CALL).await.unwrap();
        let err = match api_client::EventStream::open(&api, CALL).await {
            Ok(_) => panic!("a third /events stream beyond api.max_event_subscribers = 2"),
            Err(e) => e,
        };
        assert!(err.contains("503"), "{err}");
        let first_event = e2.next_data().await.unwrap().expect("an event");
        assert!(first_event.contains("snapshot"), "{first_event}");
        drop(e1);
        let _e3 = harness::wait_until(Duration::from_secs(5), "the freed stream slot", || {
            let api = api.clone();
            async move { api_client::EventStream::open(&api, CALL).await }
        })
        .await;
        let m = api_client::request(&api, "GET", "/metrics", None, CALL)
            .await
            .unwrap();
        assert!(harness::metric_value(&m.body, "haseq_api_event_subscribers_refused_total") >= 1.0);
        c.stop_all().await;
    });
}
