//! Goal: `haseqd run` on a voter whose `raft_dir` was lost exits with status 2 and one line
//! naming `raft.join`, while the cluster goes on producing (the in-process side of this is
//! `actors/tests/wiped_node.rs`; this checks the operator's view: exit status and message).
//!
//! Method: three `haseqd run` processes, 100 ms blocks; once 20 blocks are in, a follower
//! is SIGKILLed, its `raft_dir` removed, and the process started again; it must exit within
//! 10 s with status 2, and the others must produce 10 more blocks.

mod procs;

use std::time::{Duration, Instant};

use procs::Procs;

#[test]
fn a_wiped_voter_exits_2_naming_raft_join() {
    let mut c = Procs::new(3, "100ms", "");
    c.start_all();
    let (leader, _) = c.wait(Duration::from_secs(20), "a leader", || c.leader());
    c.wait(Duration::from_secs(20), "20 blocks", || {
        (c.top() >= 20).then_some(())
    });
    let wiped = (leader + 1) % 3;
    c.kill(wiped);
    let raft_dir = c.dir.path().join(&c.nodes[wiped].id).join("raft");
    std::fs::remove_dir_all(&raft_dir).expect("wipe raft_dir");
    let log_before = std::fs::metadata(&c.nodes[wiped].log).map_or(0, |m| m.len());
    c.start(wiped);

    let started = Instant::now();
    let mut status = None;
    for _ in 0..200 {
        let child = c.nodes[wiped].child.as_mut().expect("started");
        if let Some(s) = child.try_wait().expect("try_wait") {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap_or_else(|| panic!("still running after 10 s:\n{}", c.tail_logs()));
    c.nodes[wiped].child = None;
    eprintln!("exited {status:?} after {:?}", started.elapsed());
    assert_eq!(status.code(), Some(2), "{}", c.tail_logs());
    let log = std::fs::read_to_string(&c.nodes[wiped].log).expect("log");
    let last = log[log_before as usize..]
        .lines()
        .rev()
        .find(|l| l.starts_with("haseqd: "))
        .unwrap_or_else(|| panic!("no haseqd: line in\n{log}"));
    assert!(last.contains("raft.join"), "{last}");
    assert!(last.contains("is empty"), "{last}");

    let top = c.top();
    c.wait(Duration::from_secs(10), "10 more blocks", || {
        (c.top() >= top + 10).then_some(())
    });
}
