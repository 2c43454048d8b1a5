//! Goal: with `log.format: json`, every line a node writes is one JSON object carrying the
//! node's id (`node`), and its `term` and applied `height` once known; each role change is
//! one line that says why (`why`), with the term and the leader after it.
//!
//! Method: three `haseqd run` processes with `HASEQ_LOG__FORMAT=json`; a leadership transfer
//! (so that two nodes change role for a known reason); then every log line is parsed.

mod procs;

use std::time::Duration;

use procs::Procs;
use serde_json::Value;

#[test]
fn json_logs_carry_node_term_height_and_say_why_roles_change() {
    let mut c = Procs::new(3, "100ms", "");
    c.env.push(("HASEQ_LOG__FORMAT".into(), "json".into()));
    c.start_all();
    let (leader, _) = c.wait(Duration::from_secs(20), "a first leader", || c.leader());
    c.wait(Duration::from_secs(20), "ten blocks", || {
        (c.top() >= 10).then_some(())
    });
    let to = (leader + 1) % 3;
    let to_id = c.nodes[to].id.clone();
    c.wait(Duration::from_secs(10), "a transfer accepted", || {
        c.ctl(leader, &["transfer-leader", "--to", &to_id])
            .status
            .success()
            .then_some(())
    });
    c.wait(Duration::from_secs(10), "the target to lead", || {
        c.leader().filter(|(l, _)| *l == to).map(|_| ())
    });
    // A few more blocks under the new leader, then stop (the shutdown lines are checked too).
    let h = c.top();
    c.wait(
        Duration::from_secs(10),
        "blocks from the new leader",
        || (c.top() >= h + 5).then_some(()),
    );
    for i in 0..3 {
        let (status, _) = c.sigterm(i);
        assert!(status.success(), "{status:?}");
    }

    let mut role_lines = Vec::new();
    for n in &c.nodes {
        let text = std::fs::read_to_string(&n.log).unwrap();
        let mut with_height = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: a log line that is not JSON ({e}): {line}", n.id));
            assert_eq!(v["node"], n.id.as_str(), "{line}");
            assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            if v["height"].as_u64().is_some_and(|h| h > 0) {
                with_height += 1;
            }
            if v["fields"]["message"] == "role changed" {
                let f = &v["fields"];
                assert!(
                    f["why"].as_str().is_some_and(|w| w.len() > 10),
                    "a role change says why: {line}"
                );
                assert!(
                    f["term"].as_u64().is_some() && f["to"].is_string(),
                    "{line}"
                );
                role_lines.push((n.id.clone(), f.clone()));
            }
        }
        assert!(with_height > 0, "{}: no line carries the height", n.id);
    }
    for (id, f) in &role_lines {
        eprintln!("{id}: {} -> {}: {}", f["from"], f["to"], f["why"]);
    }
    let old = &c.nodes[leader].id;
    assert!(
        role_lines.iter().any(|(id, f)| id == old
            && f["from"] == "leader"
            && f["why"]
                .as_str()
                .is_some_and(|w| w.contains(&format!("handed leadership to {to_id}")))),
        "the old leader says it handed leadership over: {role_lines:?}"
    );
    assert!(
        role_lines.iter().any(|(id, f)| *id == to_id
            && f["to"] == "leader"
            && f["why"]
                .as_str()
                .is_some_and(|w| w.contains("won the election"))),
        "the new leader says it won: {role_lines:?}"
    );
}
