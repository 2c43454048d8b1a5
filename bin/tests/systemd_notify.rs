//! Goal: `haseqd run` speaks systemd's notify protocol as `Type=notify` with `WatchdogSec=`
//! expects: `READY=1` once the node has joined (and not before its API answers), `STATUS=`
//! lines naming role, term and height, `WATCHDOG=1` at least every half of `WATCHDOG_USEC`
//! while its actors answer, `STOPPING=1` on SIGTERM, then exit 0. And the shipped unit passes
//! `systemd-analyze verify` (skipped with a notice where systemd-analyze is missing).
//!
//! Method: a one-node cluster (it bootstraps alone and leads) started with `NOTIFY_SOCKET`
//! pointing at a datagram socket the test binds and `WATCHDOG_USEC=1000000`; every datagram is
//! stamped as it arrives.

mod procs;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procs::{Procs, get_json};

fn messages(
    sock: &UnixDatagram,
    until: Instant,
    stop: impl Fn(&[(Instant, String)]) -> bool,
) -> Vec<(Instant, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..100_000 {
        if Instant::now() >= until || stop(&got) {
            break;
        }
        if let Ok(n) = sock.recv(&mut buf) {
            got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    got
}

#[test]
fn ready_status_watchdog_and_stopping_reach_systemd() {
    let mut c = Procs::new(1, "100ms", "");
    let sock_path = c.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let n = &c.nodes[0];
    let log = std::fs::File::create(&n.log).unwrap();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_haseqd"))
        .args(["run", "--config"])
        .arg(&n.config)
        .env("HASEQ_RAFT__SECRET_FILE", &c.secret)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    c.nodes[0].child = Some(child);

    let until = Instant::now() + Duration::from_secs(20);
    let got = messages(&sock, until, |m| {
        m.iter().any(|(_, s)| s.contains("READY=1"))
    });
    let (ready_at, _) = got
        .iter()
        .find(|(_, s)| s.contains("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 within 20 s: {got:?}\n{}", c.tail_logs()));
    eprintln!(
        "READY=1 {} ms after the start",
        (*ready_at - started).as_millis()
    );
    // Ready means ready: the API answers and says so.
    let ready = get_json(&c.api(0), "/ready").expect("/ready answers once READY=1 was sent");
    assert_eq!(ready["ready"], true, "{ready}");
    let probe = c.ctl(0, &["ready"]);
    assert!(probe.status.success(), "ctl ready: {probe:?}");

    // Three seconds of watchdog pings, and a status naming the leader role.
    let watch_from = Instant::now();
    let more = messages(&sock, watch_from + Duration::from_secs(3), |_| false);
    let pings: Vec<Instant> = more
        .iter()
        .filter(|(_, s)| s.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(pings.len() >= 4, "a ping every half second or so: {more:?}");
    let longest = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest < Duration::from_secs(1),
        "a ping gap of {longest:?} reaches WATCHDOG_USEC"
    );
    let all: Vec<&String> = got.iter().chain(more.iter()).map(|(_, s)| s).collect();
    assert!(
        all.iter()
            .any(|s| s.contains("STATUS=leader, term ") && s.contains(", ready")),
        "no STATUS line naming the role and readiness: {all:?}"
    );
    eprintln!(
        "{} watchdog pings in 3 s, longest gap {} ms",
        pings.len(),
        longest.as_millis()
    );

    let (status, took) = c.sigterm(0);
    let tail = messages(&sock, Instant::now() + Duration::from_millis(200), |_| {
        false
    });
    assert!(status.success(), "exit status {status:?}");
    let stopping = tail
        .iter()
        .chain(more.iter())
        .any(|(_, s)| s.contains("STOPPING=1"));
    assert!(stopping, "no STOPPING=1 after SIGTERM: {tail:?}");
    eprintln!("SIGTERM to exit 0: {} ms", took.as_millis());
}

#[test]
fn the_shipped_unit_passes_systemd_analyze_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("notice: systemd-analyze not found; unit not verified");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/haseqd.service"
    ))
    .unwrap();
    // Verified against the binary built here (the unit names its installed path).
    let unit = unit.replace("/usr/local/bin/haseqd", env!("CARGO_BIN_EXE_haseqd"));
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    let path = dir.path().join("haseqd.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}
