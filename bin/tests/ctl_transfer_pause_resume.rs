//! Goal: the operator's leadership controls work through `haseqd ctl` on real processes:
//! `transfer-leader --to` moves leadership (asked of the leader, or of a follower, which
//! forwards it) and every node's `/events` feed reports the change within 100 ms of it; a
//! guarded transfer to a lagging node is refused (exit 1, the reason
//! printed) unless `--force`; `pause` on the leader hands leadership over, the pause survives a
//! restart (SIGTERM, start again) and `resume` lifts it; pausing the last eligible node is
//! refused without `--force`; `ctl watch` prints the changes.
//!
//! Method: three `haseqd run` processes with the guide's timings and `block_time: 50ms`; an
//! `/events` reader per node stamps each event as it arrives; `/status` is polled every 5 ms.
//! The feed's delay for a leader change is measured per node as the arrival of its first event
//! naming the new leader minus the earliest sign of the change (that node's own status flip
//! seen by polling, or any feed's event), and also against the moment `ctl` returned.

mod procs;

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procs::{Events, Procs, min_median_max, ms};

/// The feed must report a leader change within this long.
const EVENT_MAX: Duration = Duration::from_millis(100);

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Transfer leadership from `from` to `to` with `ctl` sent to node `ask` (a follower forwards
/// it to the leader and names it in `via`) and measure every feed's delay; returns the delays
/// (one per node).
fn transfer_and_measure(
    c: &Procs,
    feeds: &[Events],
    ask: usize,
    from: usize,
    to: usize,
) -> Vec<Duration> {
    let to_id = c.nodes[to].id.clone();
    // The guard judges the target by the leader's last poll of it (every 100 ms): a refusal
    // while that view catches up is retried, bounded; the last refusal is shown on timeout.
    let mut refusals = Vec::new();
    let started = Instant::now();
    let mut accepted = None;
    for _attempt in 0..1_000 {
        let t_call = Instant::now();
        let out = c.ctl(ask, &["transfer-leader", "--to", &to_id]);
        let t_ret = Instant::now();
        if out.status.success() {
            accepted = Some((t_call, out, t_ret));
            break;
        }
        refusals.push(format!("{}{}", stdout(&out), stderr(&out)));
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (t_call, out, t_ret) = accepted.unwrap_or_else(|| {
        panic!(
            "the transfer {} -> {to_id} was refused for 5 s: {refusals:?}",
            c.nodes[from].id
        )
    });
    if !refusals.is_empty() {
        eprintln!("transfer to {to_id}: retried after {refusals:?}");
    }
    let answer: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("answer JSON");
    assert_eq!(answer["transferring_to"], to_id.as_str(), "{answer}");
    if ask == from {
        assert!(
            answer["via"].is_null(),
            "the leader itself answered: {answer}"
        );
    } else {
        assert_eq!(
            answer["via"],
            c.nodes[from].id.as_str(),
            "a follower forwards to the leader and names it: {answer}"
        );
    }
    // Poll the new leader's status until it says so.
    let t_flip = c.wait(Duration::from_secs(5), "the target to lead", || {
        let s = c.status(to)?;
        (s["role"] == "leader").then(Instant::now)
    });
    c.wait(
        Duration::from_secs(5),
        "every node to follow the target",
        || c.leader().filter(|(l, _)| *l == to).map(|_| ()),
    );
    let names_leader = |v: &serde_json::Value| v["leader_id"] == to_id.as_str();
    let arrivals: Vec<Instant> = feeds
        .iter()
        .map(|f| {
            c.wait(
                Duration::from_secs(2),
                &format!("{}'s feed to name {to_id}", f.node),
                || f.first_after(t_call, names_leader).map(|(at, _)| at),
            )
        })
        .collect();
    let first_sign = arrivals.iter().copied().chain([t_flip]).min().unwrap();
    let delays: Vec<Duration> = arrivals.iter().map(|a| *a - first_sign).collect();
    eprintln!(
        "transfer {} -> {to_id} asked of {}: ctl took {}; status flip {} after ctl returned; feed arrivals after the first sign: {}; after ctl returned: {}",
        c.nodes[from].id,
        c.nodes[ask].id,
        ms(t_ret - t_call),
        ms(t_flip.saturating_duration_since(t_ret)),
        feeds
            .iter()
            .zip(&delays)
            .map(|(f, d)| format!("{} {}", f.node, ms(*d)))
            .collect::<Vec<_>>()
            .join(", "),
        feeds
            .iter()
            .zip(&arrivals)
            .map(|(f, a)| format!("{} {}", f.node, ms(a.saturating_duration_since(t_ret))))
            .collect::<Vec<_>>()
            .join(", ")
    );
    delays
}

#[test]
fn transfer_pause_resume_through_ctl_and_a_prompt_event_feed() {
    let mut c = Procs::new(3, "50ms", "");
    c.start_all();
    let (a, term) = c.wait(Duration::from_secs(20), "a first leader", || c.leader());
    c.wait(Duration::from_secs(20), "ten blocks", || {
        (c.top() >= 10).then_some(())
    });
    eprintln!("phase 1: {} leads term {term}", c.nodes[a].id);
    let out = c.ctl(a, &["status"]);
    assert!(out.status.success(), "ctl status: {}", stderr(&out));
    let st: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("status JSON");
    assert_eq!(st["role"], "leader");
    assert_eq!(st["eligible"], true);

    // `ctl watch` on one node, its lines stamped as they come.
    let watch_lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_haseqd"))
        .args(["ctl", "--api", &c.url((a + 2) % 3), "watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watch_reader = {
        let lines = watch_lines.clone();
        let out = watcher.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().take(10_000) {
                match line {
                    Ok(l) => lines.lock().unwrap().push(l),
                    Err(_) => return,
                }
            }
        })
    };
    let mut feeds: Vec<Events> = (0..3)
        .map(|i| Events::open(&c.api(i), &c.nodes[i].id))
        .collect();
    c.wait(
        Duration::from_secs(5),
        "a first event on every feed",
        || {
            feeds
                .iter()
                .all(|f| !f.events.lock().unwrap().is_empty())
                .then_some(())
        },
    );

    eprintln!("phase 2: transfers through ctl");
    let mut delays = Vec::new();
    let mut leader = a;
    for round in 0..4 {
        let to = (leader + 1) % 3;
        // Every other transfer is asked of the third node, a follower: it forwards.
        let ask = if round % 2 == 0 {
            leader
        } else {
            (leader + 2) % 3
        };
        c.wait(
            Duration::from_secs(10),
            "the target eligible as the leader sees it",
            || {
                let s = c.status(leader)?;
                s["peer_status"]
                    .as_array()?
                    .iter()
                    .any(|p| p["id"] == c.nodes[to].id.as_str() && p["state"]["eligible"] == true)
                    .then_some(())
            },
        );
        delays.extend(transfer_and_measure(&c, &feeds, ask, leader, to));
        leader = to;
    }
    let watch_id = c.nodes[(a + 2) % 3].id.clone();
    c.wait(
        Duration::from_secs(2),
        "ctl watch to print a leader change",
        || {
            let lines = watch_lines.lock().unwrap();
            (lines.len() >= 2 && lines.iter().any(|l| l.contains("\"leader_id\""))).then_some(())
        },
    );

    eprintln!("phase 3: a guarded transfer to a lagging node");
    let lagging = (leader + 1) % 3;
    let lid = c.nodes[lagging].id.clone();
    let out = c.ctl(lagging, &["engine-fault", "--delay", "400ms"]);
    assert!(out.status.success(), "engine-fault: {}", stderr(&out));
    c.wait(
        Duration::from_secs(20),
        "the leader to see the slowed node lagging",
        || {
            let s = c.status(leader)?;
            s["peer_status"]
                .as_array()?
                .iter()
                .any(|p| p["id"] == lid.as_str() && p["state"]["eligible"] == false)
                .then_some(())
        },
    );
    let st = c.status(lagging).unwrap();
    eprintln!(
        "phase 3: {lid} eligible {} ({}), exec lag {}",
        st["eligible"], st["ineligible_reason"], st["exec_lag"]
    );
    let out = c.ctl(leader, &["transfer-leader", "--to", &lid]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a transfer to the lagging {lid} must be refused: {}",
        stdout(&out)
    );
    let why = stderr(&out);
    assert!(
        why.contains("409") && why.contains("lagging"),
        "the refusal must say why: {why}"
    );
    eprintln!(
        "phase 3: refused as expected: {}",
        why.trim().replace('\n', " ")
    );
    // Asked of a follower (the lagging node itself), the leader's refusal comes back.
    let out = c.ctl(lagging, &["transfer-leader", "--to", &lid]);
    let why = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "forwarded: {}", stdout(&out));
    assert!(
        why.contains("409") && why.contains("lagging") && why.contains("leader"),
        "the forwarded refusal must say the leader refused, and why: {why}"
    );
    // Nothing happens: the leader stays.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.leader().map(|(l, _)| l),
        Some(leader),
        "the refused transfer moved leadership"
    );
    let h = c.top();
    let out = c.ctl(leader, &["transfer-leader", "--to", &lid, "--force"]);
    assert!(
        out.status.success(),
        "a forced transfer is accepted: {}",
        stderr(&out)
    );
    eprintln!(
        "phase 3: --force accepted: {}",
        stdout(&out).trim().replace('\n', " ")
    );
    let out = c.ctl(lagging, &["engine-fault", "--clear"]);
    assert!(
        out.status.success(),
        "engine-fault --clear: {}",
        stderr(&out)
    );
    let (after_force, _) = c.wait(
        Duration::from_secs(20),
        "a leader after the forced transfer",
        || c.leader(),
    );
    c.wait(
        Duration::from_secs(20),
        "production after the forced transfer",
        || (c.top() > h + 3).then_some(()),
    );
    eprintln!(
        "phase 3: after the forced transfer {} leads and blocks are produced",
        c.nodes[after_force].id
    );
    c.wait(Duration::from_secs(30), "every node eligible again", || {
        (0..3)
            .all(|i| c.status(i).is_some_and(|s| s["eligible"] == true))
            .then_some(())
    });

    eprintln!("phase 4: pause the leader; it hands over; the pause survives a restart");
    let (p, _) = c.wait(Duration::from_secs(10), "a leader", || c.leader());
    let pid = c.nodes[p].id.clone();
    let out = c.ctl(p, &["pause"]);
    assert!(
        out.status.success(),
        "pause: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let t = Instant::now();
    let (np, _) = c.wait(
        Duration::from_secs(10),
        "another leader after the pause",
        || c.leader().filter(|(l, _)| *l != p),
    );
    eprintln!(
        "phase 4: paused {pid}; {} leads after {}",
        c.nodes[np].id,
        ms(t.elapsed())
    );
    let st = c.status(p).unwrap();
    assert_eq!(st["paused"], true);
    assert_eq!(st["eligible"], false);
    assert_eq!(st["ineligible_reason"], "paused");
    let out = c.ctl(p, &["pause"]);
    assert!(
        out.status.success(),
        "pause again is idempotent: {}",
        stderr(&out)
    );
    let (code, _) = c.sigterm(p);
    assert_eq!(code.code(), Some(0));
    c.start(p);
    let st = c.wait(Duration::from_secs(20), "the paused node back", || {
        c.status(p).filter(|s| s["role"] == "follower")
    });
    assert_eq!(
        st["paused"], true,
        "the pause did not survive the restart: {st}"
    );
    assert_eq!(st["ineligible_reason"], "paused");
    eprintln!(
        "phase 4: {pid} restarted still paused: {}",
        st["ineligible_reason"]
    );
    // Its old feed ended with the process: follow the new one.
    feeds[p] = Events::open(&c.api(p), &pid);

    eprintln!("phase 5: pausing the last eligible node needs --force");
    let (l, _) = c.wait(Duration::from_secs(10), "a leader", || c.leader());
    let other = (0..3).find(|&i| i != l && i != p).unwrap();
    let out = c.ctl(other, &["pause"]);
    assert!(
        out.status.success(),
        "pause {}: {}",
        c.nodes[other].id,
        stderr(&out)
    );
    c.wait(
        Duration::from_secs(5),
        "the leader to see both others paused",
        || {
            let s = c.status(l)?;
            s["peer_status"]
                .as_array()?
                .iter()
                .all(|p| p["state"]["paused"] == true)
                .then_some(())
        },
    );
    let out = c.ctl(l, &["pause"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "pausing the last eligible node must be refused: {}",
        stdout(&out)
    );
    eprintln!(
        "phase 5: refused as expected: {}",
        stderr(&out).trim().replace('\n', " ")
    );

    eprintln!("phase 6: resume");
    for i in [other, p] {
        let out = c.ctl(i, &["resume"]);
        assert!(
            out.status.success(),
            "resume {}: {}",
            c.nodes[i].id,
            stderr(&out)
        );
        assert!(
            stdout(&out).contains("\"paused\": false"),
            "{}",
            stdout(&out)
        );
    }
    let out = c.ctl(p, &["resume"]);
    assert!(
        out.status.success(),
        "resume again is idempotent: {}",
        stderr(&out)
    );
    c.wait(
        Duration::from_secs(20),
        "every node eligible after resume",
        || {
            (0..3)
                .all(|i| {
                    c.status(i)
                        .is_some_and(|s| s["eligible"] == true && s["paused"] == false)
                })
                .then_some(())
        },
    );
    // The resumed node can lead again.
    let (l, _) = c.wait(Duration::from_secs(10), "a leader", || c.leader());
    if l != p {
        delays.extend(transfer_and_measure(&c, &feeds, l, l, p));
    }

    let _ = watcher.kill();
    let _ = watcher.wait();
    let _ = watch_reader.join();
    let lines = watch_lines.lock().unwrap().len();
    let (lo, med, hi) = min_median_max(&mut delays);
    eprintln!(
        "figures: /events delay after a leader change over {} deliveries: min {} / median {} / max {}; ctl watch on {watch_id} printed {lines} lines",
        delays.len(),
        ms(lo),
        ms(med),
        ms(hi)
    );
    assert!(
        hi <= EVENT_MAX,
        "an /events delivery came {hi:?} after the leader change"
    );
    drop(feeds);
    for i in 0..3 {
        let (st, _) = c.sigterm(i);
        assert_eq!(st.code(), Some(0));
    }
}
