//! Goal: three `haseqd run` processes on loopback, configured with the operator guide's
//! recommended block, form a cluster, fail over after the leader is SIGKILLed and take the
//! killed node back as a follower, 20 times; a peer without the cluster's credentials is
//! refused; bad configurations exit with status 2 and name the key.
//!
//! Method: real processes (the test's own build of `haseqd`), driven only through their
//! config files, environment, signals and HTTP API, as an operator would. The failover time
//! (kill to a new leader every live node agrees on) is printed as min / median / max.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haseq_actors::http_client;

const SECRET_HEX: &str = "6861736571206d756c74692d70726f636573732074657374207365637265742121";
const KILLS: usize = 20;

struct Proc {
    id: String,
    raft_port: u16,
    api_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Stops every process it started, whatever happens to the test.
struct Cluster {
    dir: tempfile::TempDir,
    secret: PathBuf,
    nodes: Vec<Proc>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn guide_config(n: &Proc, peers: &str, raft_dir: &Path) -> String {
    format!(
        r#"# evnode.yaml - paste this raft section into every node's config
node:
  aggregator: true
raft:
  enable: true
  node_id: "{id}" # unique per node
  raft_addr: "127.0.0.1:{rp}"
  raft_dir: "{dir}" # must be persistent
  # Remote peers list - different on every node
  peers: >-
{peers}
  # Timing - tuned for RTT_MAX <= 25ms
  heartbeat_timeout: "92ms"
  election_timeout: "368ms"
  leader_lease_timeout: "46ms"
  send_timeout: "50ms"
  # Log retention
  trailing_logs: 18000
  snapshot_threshold: 5000
  snap_count: 3
api:
  addr: "127.0.0.1:{ap}"
"#,
        id = n.id,
        rp = n.raft_port,
        ap = n.api_port,
        dir = raft_dir.display(),
    )
}

impl Cluster {
    fn new(size: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("cluster.secret");
        std::fs::write(&secret, format!("{SECRET_HEX}\n")).unwrap();
        let mut nodes: Vec<Proc> = (1..=size)
            .map(|i| Proc {
                id: format!("node-{i}"),
                raft_port: free_port(),
                api_port: free_port(),
                config: dir.path().join(format!("node-{i}.yaml")),
                log: dir.path().join(format!("node-{i}.log")),
                child: None,
            })
            .collect();
        let all: Vec<(String, u16)> = nodes.iter().map(|n| (n.id.clone(), n.raft_port)).collect();
        for n in &mut nodes {
            let peers: Vec<String> = all
                .iter()
                .filter(|(id, _)| *id != n.id)
                .map(|(id, p)| format!("    {id}@127.0.0.1:{p}"))
                .collect();
            let text = guide_config(n, &peers.join(",\n"), &dir.path().join(&n.id));
            std::fs::write(&n.config, text).unwrap();
        }
        Cluster { dir, secret, nodes }
    }

    fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        assert!(n.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_haseqd"))
            .args(["run", "--config"])
            .arg(&n.config)
            .env("HASEQ_RAFT__SECRET_FILE", &self.secret)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        n.child = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn api(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].api_port)
    }

    fn status(&self, i: usize) -> Option<serde_json::Value> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt
            .block_on(http_client::request(
                &self.api(i),
                "GET",
                "/status",
                None,
                Duration::from_millis(500),
            ))
            .ok()?;
        (r.status == 200)
            .then(|| serde_json::from_str(&r.body).ok())
            .flatten()
    }

    /// The index of the one node every running node agrees leads, with its term.
    fn leader(&self) -> Option<(usize, u64)> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect();
        let st: Vec<(usize, serde_json::Value)> = running
            .iter()
            .filter_map(|&i| self.status(i).map(|s| (i, s)))
            .collect();
        if st.len() != running.len() {
            return None;
        }
        let leaders: Vec<&(usize, serde_json::Value)> =
            st.iter().filter(|(_, s)| s["role"] == "leader").collect();
        let [(li, ls)] = leaders.as_slice() else {
            return None;
        };
        let id = &self.nodes[*li].id;
        st.iter()
            .all(|(_, s)| s["leader_id"] == id.as_str())
            .then(|| (*li, ls["term"].as_u64().unwrap_or(0)))
    }

    fn tail_logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            out += &format!(
                "--- {}:\n{}\n",
                n.id,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        out
    }
}

fn wait<T>(deadline: Duration, what: &str, c: &Cluster, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    for _ in 0..100_000 {
        if let Some(v) = f() {
            return v;
        }
        if t.elapsed() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "timed out after {deadline:?} waiting for {what}\n{}",
        c.tail_logs()
    );
}

#[test]
fn three_processes_fail_over_twenty_times() {
    let mut c = Cluster::new(3);
    for i in 0..3 {
        c.start(i);
    }
    let t0 = Instant::now();
    let (mut leader, mut term) = wait(Duration::from_secs(15), "a first leader", &c, || c.leader());
    eprintln!(
        "first election after {:?}: {} term {term}",
        t0.elapsed(),
        c.nodes[leader].id
    );
    let members = c.status(leader).unwrap()["members"].clone();
    assert_eq!(members, serde_json::json!(["node-1", "node-2", "node-3"]));

    let mut gaps = Vec::with_capacity(KILLS);
    for round in 0..KILLS {
        let t = Instant::now();
        c.kill(leader);
        let (new, new_term) = wait(
            Duration::from_secs(10),
            "a new leader after SIGKILL",
            &c,
            || c.leader(),
        );
        let gap = t.elapsed();
        assert_ne!(new, leader);
        assert!(
            new_term > term,
            "round {round}: term {new_term} after {term}"
        );
        gaps.push(gap);

        // The killed node comes back with its log and follows the new leader.
        c.start(leader);
        let new_id = c.nodes[new].id.clone();
        wait(
            Duration::from_secs(10),
            "the restarted node to follow",
            &c,
            || {
                let s = c.status(leader)?;
                (s["role"] == "follower" && s["leader_id"] == new_id.as_str()).then_some(())
            },
        );
        leader = new;
        term = new_term;
    }
    gaps.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "failover over {KILLS} SIGKILLs (guide timings): min {:.0} / median {:.0} / max {:.0} ms",
        ms(gaps[0]),
        ms(gaps[KILLS / 2]),
        ms(gaps[KILLS - 1])
    );
    // A liveness bound with slack for a loaded 2-core CI machine; the figures above are the
    // measurement, this only catches a broken failover.
    assert!(
        gaps[KILLS - 1] < Duration::from_secs(5),
        "failover took {:?}",
        gaps[KILLS - 1]
    );
    drop(c);
}

#[test]
fn bad_configurations_exit_2_naming_the_key() {
    let c = Cluster::new(3);
    let good = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    let own = format!("    node-1@127.0.0.1:{},\n", c.nodes[0].raft_port);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "own id in peers",
            good.replace("  peers: >-\n", &format!("  peers: >-\n{own}")),
            "raft.peers",
        ),
        (
            "lease not below election timeout",
            good.replace(
                r#"leader_lease_timeout: "46ms""#,
                r#"leader_lease_timeout: "400ms""#,
            ),
            "raft.leader_lease_timeout",
        ),
        (
            "unparsable duration",
            good.replace(
                r#"heartbeat_timeout: "92ms""#,
                r#"heartbeat_timeout: "ninety""#,
            ),
            "raft.heartbeat_timeout",
        ),
        (
            "unknown key",
            good.replace("  snap_count: 3\n", "  snap_count: 3\n  no_such_key: 1\n"),
            "raft.no_such_key",
        ),
        (
            "election below heartbeat",
            good.replace(
                r#"election_timeout: "368ms""#,
                r#"election_timeout: "50ms""#,
            ),
            "raft.election_timeout",
        ),
    ];
    for (name, text, key) in cases {
        let path = c.dir.path().join("bad.yaml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_haseqd"))
            .args(["run", "--config"])
            .arg(&path)
            .env("HASEQ_RAFT__SECRET_FILE", &c.secret)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(key),
            "{name}: stderr does not name {key}: {stderr}"
        );
    }
    // A missing credential: no secret file at all.
    let out = Command::new(env!("CARGO_BIN_EXE_haseqd"))
        .args(["run", "--config"])
        .arg(&c.nodes[0].config)
        .env_remove("HASEQ_RAFT__SECRET_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "missing secret: {stderr}");
    assert!(
        stderr.contains("raft.secret_file"),
        "missing secret: {stderr}"
    );
}

/// Send a forged vote for a huge term to `addr` as `as_id`, with `secret`; the result of the call.
fn forge_vote(addr: &str, target: &str, as_id: &str, secret: &[u8]) -> Result<(), String> {
    use haseq_messages::wire::RpcRequest;
    use haseq_messages::{NodeId, PeerNode};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let net = haseq_net::Network::new(haseq_net::NetConfig {
            node_id: NodeId(as_id.to_string()),
            secret: std::sync::Arc::new(secret.to_vec()),
            send_timeout: Duration::from_millis(500),
            snapshot_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
        });
        let client = net.client(
            NodeId(target.to_string()),
            &PeerNode {
                addr: addr.to_string(),
            },
        );
        let vote = openraft::Vote::new(1_000_000, NodeId(as_id.to_string()));
        let req = openraft::raft::VoteRequest::new(vote, None);
        client
            .call(
                RpcRequest::Vote {
                    req,
                    exec_height: None,
                },
                Duration::from_millis(500),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

#[test]
fn peers_without_the_cluster_secret_or_membership_are_refused() {
    let mut c = Cluster::new(3);
    for i in 0..3 {
        c.start(i);
    }
    let (leader, term) = wait(Duration::from_secs(15), "a first leader", &c, || c.leader());
    let target = c.nodes[leader].id.clone();
    let addr = format!("127.0.0.1:{}", c.nodes[leader].raft_port);

    // A member's id without the secret: refused at the handshake.
    let peer = c.nodes[(leader + 1) % 3].id.clone();
    let err = forge_vote(&addr, &target, &peer, b"not the cluster secret at all!!").unwrap_err();
    assert!(err.contains("handshake"), "wrong secret: {err}");
    // The secret but an id that is no member: refused too.
    let secret = hex_decode(SECRET_HEX);
    let err = forge_vote(&addr, &target, "intruder", &secret).unwrap_err();
    assert!(err.contains("handshake"), "non-member: {err}");
    // Neither reached Raft: the leader is unchanged and its term did not jump.
    let s = c.status(leader).unwrap();
    assert_eq!(s["role"], "leader");
    assert_eq!(
        s["term"].as_u64().unwrap(),
        term,
        "a refused vote must not change the term"
    );
    // Refusals are counted.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let m = rt
        .block_on(http_client::request(
            &c.api(leader),
            "GET",
            "/metrics",
            None,
            Duration::from_secs(1),
        ))
        .unwrap();
    assert!(
        m.body.contains("haseq_peer_auth_refused_total"),
        "refusals not in /metrics"
    );
    // A member with the secret gets through (it is answered, whatever the answer).
    forge_vote(&addr, &target, &peer, &secret).expect("a member with the secret is served");
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
