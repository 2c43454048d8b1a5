//! Goal: the membership commands work through `haseqd ctl` on real processes, as an
//! operator replacing a machine would use them: `add-learner ID@HOST:PORT` (sent to a
//! follower: forwarded to the leader), `members` (voters and learners with address, role,
//! lag, last contact), `promote`, `remove` of the leader (it hands over first); bad input
//! exits 1 with the reason; the cluster keeps producing one chain throughout, and the
//! removed node says so in `/status`.
//!
//! Method: four `haseqd run` processes producing 100 ms blocks; node-1..3 list only each
//! other in `raft.peers`, node-4 starts with `raft.join: true` and every peer configured.

mod procs;

use std::time::Duration;

use procs::{Procs, get_json};

const BLOCK_TIME: &str = "100ms";

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The one leader the nodes `among` agree on.
fn leader_among(c: &Procs, among: &[usize]) -> Option<usize> {
    let st: Vec<serde_json::Value> = among.iter().filter_map(|&i| c.status(i)).collect();
    if st.len() != among.len() {
        return None;
    }
    let l = st.iter().find(|s| s["role"] == "leader")?["node_id"].clone();
    st.iter()
        .all(|s| s["leader_id"] == l)
        .then(|| {
            among
                .iter()
                .copied()
                .find(|&i| c.nodes[i].id == l.as_str().unwrap_or(""))
        })
        .flatten()
}

/// The block at `h` is the same on every node of `on`.
fn same_chain(c: &Procs, on: &[usize], h: u64) {
    let hashes: Vec<String> = on
        .iter()
        .map(|&i| {
            let b = get_json(&c.api(i), &format!("/block/{h}")).expect("block");
            b["hash"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]) && !hashes[0].is_empty(),
        "block {h} differs across nodes: {hashes:?}"
    );
}

#[test]
fn an_operator_replaces_the_leaders_machine_with_ctl() {
    let mut c = Procs::new(4, BLOCK_TIME, "");
    for i in 0..3 {
        let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        c.reconfigure(i, &others, BLOCK_TIME, "");
    }
    c.reconfigure(3, &[0, 1, 2], BLOCK_TIME, "  join: true");
    c.start_all();
    let founders = [0, 1, 2];
    let old = c.wait(Duration::from_secs(20), "a leader among node-1..3", || {
        leader_among(&c, &founders)
    });
    c.wait(Duration::from_secs(20), "10 blocks", || {
        (c.top() >= 10).then_some(())
    });
    let st = c.status(3).expect("node-4 status");
    assert_eq!(st["role"], "joining", "{st}");
    // A node waiting to be added is not ready: its health check says so.
    let probe = c.ctl(3, &["ready"]);
    assert_eq!(probe.status.code(), Some(1), "{}", text(&probe));
    assert!(text(&probe).contains("no leader known"), "{}", text(&probe));
    let block = c.ctl(old, &["block", "1"]);
    assert!(
        block.status.success() && text(&block).contains("parent_hash"),
        "{}",
        text(&block)
    );
    let via = founders.iter().copied().find(|&i| i != old).unwrap();

    // Bad input: the reason, exit 1.
    let out = c.ctl(via, &["add-learner", "node-4"]);
    assert!(
        !out.status.success() && text(&out).contains("ID@HOST:PORT"),
        "{}",
        text(&out)
    );
    let out = c.ctl(via, &["promote", "node-9"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("node-9 is not a learner"),
        "{}",
        text(&out)
    );

    // Add node-4 through a follower.
    let member = format!("node-4@127.0.0.1:{}", c.nodes[3].raft_port);
    let out = c.ctl(via, &["add-learner", &member]);
    assert!(out.status.success(), "add-learner: {}", text(&out));
    assert!(text(&out).contains("node-4"), "{}", text(&out));
    let table = c.wait(
        Duration::from_secs(20),
        "ctl members to show node-4 caught up",
        || {
            let out = c.ctl(old, &["members"]);
            let t = text(&out);
            let line = t.lines().find(|l| l.starts_with("node-4"))?.to_string();
            let lag: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
            (out.status.success() && line.contains("learner") && lag <= 2).then_some(t)
        },
    );
    eprintln!("ctl members with node-4 a learner:\n{table}");
    let st = c.status(old).expect("status");
    assert_eq!(st["learners"][0]["id"], "node-4", "{st}");

    // Promote (the leader's view of node-4 may trail its catch-up by a poll: retried).
    c.wait(
        Duration::from_secs(20),
        "ctl promote node-4 to succeed",
        || {
            c.ctl(via, &["promote", "node-4"])
                .status
                .success()
                .then_some(())
        },
    );
    let all = [0, 1, 2, 3];
    c.wait(Duration::from_secs(10), "node-4 a voter everywhere", || {
        all.iter()
            .all(|&i| {
                get_json(&c.api(i), "/members").is_some_and(|m| {
                    m["voters"].as_array().is_some_and(|v| v.len() == 4)
                        && m["learners"].as_array().is_some_and(|l| l.is_empty())
                })
            })
            .then_some(())
    });

    // Remove the old leader's machine, asked of a follower: it hands over first.
    let old_id = c.nodes[old].id.clone();
    let before = c.top();
    let out = c.ctl(via, &["remove", &old_id]);
    assert!(out.status.success(), "remove {old_id}: {}", text(&out));
    let left: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
    let new = c.wait(
        Duration::from_secs(10),
        "a leader among the three left",
        || leader_among(&c, &left),
    );
    assert_ne!(new, old);
    let removed = c.wait(
        Duration::from_secs(10),
        "the old node to say it was removed",
        || {
            let s = c.status(old)?;
            s["removed"].as_str().map(str::to_string)
        },
    );
    eprintln!("{old_id} says: {removed}");
    c.wait(Duration::from_secs(10), "10 more blocks", || {
        (c.top() >= before + 10).then_some(())
    });
    let out = c.ctl(new, &["members"]);
    assert!(
        out.status.success() && !text(&out).contains(&old_id),
        "{}",
        text(&out)
    );
    c.kill(old);
    let top = c.top();
    for h in [1, before, top.saturating_sub(2)] {
        same_chain(&c, &left, h);
    }
}
