//! Goal: `haseqd ctl watch` outlives the node it watches: when the node restarts, watch says
//! so on stderr, reconnects by itself, and prints the node's events again, without being
//! restarted.
//!
//! Method: three `haseqd run` processes; `ctl watch` on node-1 with both of its outputs read
//! line by line; node-1 is stopped (SIGTERM), kept down for a second (watch must retry, not
//! exit), and started again.

mod procs;

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procs::Procs;

/// Read `r` line by line into `sink`, at most 100,000 lines.
fn collect(r: impl std::io::Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines().take(100_000) {
            match line {
                Ok(l) => sink.lock().unwrap().push(l),
                Err(_) => return,
            }
        }
    });
}

/// Whether a line of `lines` contains `text`.
fn said(lines: &Mutex<Vec<String>>, text: &str) -> bool {
    lines.lock().unwrap().iter().any(|l| l.contains(text))
}

#[test]
fn ctl_watch_reconnects_after_the_node_restarts() {
    let mut c = Procs::new(3, "100ms", "");
    c.start_all();
    c.wait(Duration::from_secs(20), "a first leader", || c.leader());

    let out: Arc<Mutex<Vec<String>>> = Arc::default();
    let err: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_haseqd"))
        .args(["ctl", "--api", &c.url(0), "watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    collect(watcher.stdout.take().unwrap(), out.clone());
    collect(watcher.stderr.take().unwrap(), err.clone());
    c.wait(Duration::from_secs(5), "a first event from watch", || {
        (!out.lock().unwrap().is_empty()).then_some(())
    });

    let (status, _) = c.sigterm(0);
    assert!(status.success(), "node-1 stopped cleanly: {status:?}");
    let printed_before = out.lock().unwrap().len();
    c.wait(Duration::from_secs(5), "watch to say it reconnects", || {
        said(&err, "reconnecting").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        watcher.try_wait().unwrap().is_none(),
        "watch exited while the node was down: {:?}",
        err.lock().unwrap()
    );
    let retries = err
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("reconnecting"))
        .count();
    assert!(
        (2..=20).contains(&retries),
        "watch retries with a backoff while the node is down (1 s): {retries} retries: {:?}",
        err.lock().unwrap()
    );

    c.start(0);
    c.wait(Duration::from_secs(20), "watch to reconnect", || {
        said(&err, "reconnected").then_some(())
    });
    c.wait(
        Duration::from_secs(10),
        "events printed after the reconnection",
        || (out.lock().unwrap().len() > printed_before).then_some(()),
    );
    let after = out.lock().unwrap()[printed_before].clone();
    let v: serde_json::Value = serde_json::from_str(&after).expect("an event is JSON");
    assert!(v.is_object(), "{after}");
    eprintln!(
        "watch retried {retries} times in the 1 s down, reconnected; first event after: {after}"
    );
    let _ = watcher.kill();
    let _ = watcher.wait();
}
