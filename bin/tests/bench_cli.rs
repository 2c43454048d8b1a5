//! Goal: `haseqd bench --json` runs a real 3-process cluster to the end and prints one JSON
//! object whose figures are consistent: p50 ≤ p99 ≤ max, a positive rate, the sizes asked for.
//!
//! Method: the test's own build of `haseqd`, as a user would run it, with a small run (1 KiB
//! blocks, 200 blocks). No figure is compared with a target: speed is the bench's business,
//! not a test's. The run is bounded: past [`RUN_MAX`] the bench is killed (its nodes die with
//! it, see `local_cluster`) and the test fails.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest the bench may run, start-up and shutdown included (a debug build on 2 cores).
const RUN_MAX: Duration = Duration::from_secs(180);
/// How often the test checks whether the bench has exited.
const POLL: Duration = Duration::from_millis(100);

#[test]
fn bench_json_reports_consistent_figures() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_haseqd"))
        .args([
            "bench",
            "--nodes",
            "3",
            "--block-bytes",
            "1KiB",
            "--blocks",
            "200",
            "--json",
            "--timeout",
            "150s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting haseqd bench");
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for haseqd bench") {
            break st;
        }
        if started.elapsed() > RUN_MAX {
            let _ = child.kill();
            let _ = child.wait();
            panic!("haseqd bench still running after {RUN_MAX:?}; killed");
        }
        std::thread::sleep(POLL);
    };
    // Outputs are small (one line, a few progress lines), so the pipes never filled up.
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut stdout)
        .expect("reading stdout");
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("reading stderr");
    eprintln!(
        "haseqd bench finished in {:?}:\n{stderr}",
        started.elapsed()
    );
    assert!(
        status.success(),
        "haseqd bench failed ({status}):\n{stderr}"
    );

    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one JSON line on stdout, got {stdout:?}"
    );
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("stdout is JSON");
    println!("{v}");
    let num = |k: &str| -> f64 {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("field {k} missing or not a number in {v}"))
    };
    let (p50, p99, max) = (num("p50_ms"), num("p99_ms"), num("max_ms"));
    assert!(p50 > 0.0, "p50_ms {p50} in {v}");
    assert!(
        p50 <= p99 && p99 <= max,
        "p50 {p50} <= p99 {p99} <= max {max} in {v}"
    );
    assert!(num("blocks_per_s") > 0.0, "blocks_per_s in {v}");
    // 200 blocks less a warm-up of 20, give or take the polling of the warm-up point.
    let blocks = num("blocks");
    assert!((100.0..=200.0).contains(&blocks), "blocks {blocks} in {v}");
    assert_eq!(num("block_bytes"), 1024.0, "block_bytes in {v}");
    assert_eq!(num("nodes"), 3.0, "nodes in {v}");
}
