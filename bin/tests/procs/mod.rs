//! A cluster of real `haseqd run` processes on loopback for the leadership tests: producing
//! nodes (`node.aggregator: true`) configured with the operator guide's timings, driven only
//! through config files, signals, `haseqd ctl` and the HTTP API.
//!
//! Every process it starts is killed when it is dropped. HTTP calls are plain blocking
//! requests (one connection each), so any thread may poll; `/events` is read by a thread per
//! stream, each line stamped with the instant it arrived.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SECRET_HEX: &str = "6861736571206c6561646572736869702074657374207365637265742121212e";
/// The longest a node may take to exit after SIGTERM (its hand-over waits at most 3 s).
pub const EXIT_WAIT: Duration = Duration::from_secs(10);

pub struct Proc {
    pub id: String,
    pub raft_port: u16,
    pub api_port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

/// Stops every process it started, whatever happens to the test.
pub struct Procs {
    pub dir: tempfile::TempDir,
    pub secret: PathBuf,
    pub nodes: Vec<Proc>,
    /// Environment variables every node starts with (e.g. `HASEQ_LOG__FORMAT=json`).
    pub env: Vec<(String, String)>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn write_config(
    dir: &std::path::Path,
    n: &Proc,
    peers: &[(String, u16)],
    block_time: &str,
    extra_raft: &str,
) {
    let peers: Vec<String> = peers
        .iter()
        .map(|(id, p)| format!("    {id}@127.0.0.1:{p}"))
        .collect();
    let node_dir = dir.join(&n.id);
    let text = format!(
        r#"node:
  aggregator: true
  block_time: "{block_time}"
raft:
  enable: true
  node_id: "{id}"
  raft_addr: "127.0.0.1:{rp}"
  raft_dir: "{raft_dir}"
  peers: >-
{peers}
  # The operator guide's timings (RTT_MAX <= 25ms).
  heartbeat_timeout: "92ms"
  election_timeout: "368ms"
  leader_lease_timeout: "46ms"
  send_timeout: "50ms"
  trailing_logs: 18000
  snapshot_threshold: 5000
  snap_count: 3
{extra_raft}
engine:
  data_dir: "{engine_dir}"
api:
  addr: "127.0.0.1:{ap}"
"#,
        id = n.id,
        rp = n.raft_port,
        ap = n.api_port,
        raft_dir = node_dir.join("raft").display(),
        engine_dir = node_dir.join("engine").display(),
        peers = peers.join(",\n"),
    );
    std::fs::write(&n.config, text).unwrap();
}

fn free_port() -> u16 {
    haseq_net::free_loopback_port().expect("a free loopback port")
}

impl Procs {
    /// Lay out `size` producing nodes (`block_time`, e.g. `"100ms"`); `extra` adds YAML lines
    /// to the `raft` section of every node. Starts nothing.
    pub fn new(size: usize, block_time: &str, extra_raft: &str) -> Procs {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("cluster.secret");
        std::fs::write(&secret, format!("{SECRET_HEX}\n")).unwrap();
        let nodes: Vec<Proc> = (1..=size)
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
        for n in &nodes {
            let peers: Vec<(String, u16)> =
                all.iter().filter(|(id, _)| *id != n.id).cloned().collect();
            write_config(dir.path(), n, &peers, block_time, extra_raft);
        }
        Procs {
            dir,
            secret,
            nodes,
            env: Vec::new(),
        }
    }

    /// Rewrite node `i`'s configuration with only `peers` (indexes) in `raft.peers`.
    pub fn reconfigure(&self, i: usize, peers: &[usize], block_time: &str, extra_raft: &str) {
        let peers: Vec<(String, u16)> = peers
            .iter()
            .map(|&j| (self.nodes[j].id.clone(), self.nodes[j].raft_port))
            .collect();
        write_config(
            self.dir.path(),
            &self.nodes[i],
            &peers,
            block_time,
            extra_raft,
        );
    }

    /// Rewrite node `i`'s configuration with `raft.peers` as given (id, loopback port): for
    /// a proxy in front of a peer.
    pub fn set_peers(&self, i: usize, peers: &[(String, u16)], block_time: &str, extra_raft: &str) {
        write_config(
            self.dir.path(),
            &self.nodes[i],
            peers,
            block_time,
            extra_raft,
        );
    }

    pub fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "{} is already running", n.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_haseqd"))
            .args(["run", "--config"])
            .arg(&n.config)
            .env("HASEQ_RAFT__SECRET_FILE", &self.secret)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        n.child = Some(child);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGTERM node `i` and wait (bounded) for it to exit; its exit status and how long it took.
    pub fn sigterm(&mut self, i: usize) -> (ExitStatus, Duration) {
        let mut c = self.nodes[i].child.take().expect("node is running");
        let t = Instant::now();
        let pid = c.id() as libc::pid_t;
        // SAFETY: `pid` is our own child, not yet reaped (we hold its `Child`).
        let r = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(r, 0, "kill(SIGTERM) failed");
        for _ in 0..100_000 {
            if let Some(st) = c.try_wait().unwrap() {
                return (st, t.elapsed());
            }
            if t.elapsed() > EXIT_WAIT {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = c.kill();
        let _ = c.wait();
        panic!(
            "{} did not exit within {EXIT_WAIT:?} of SIGTERM\n{}",
            self.nodes[i].id,
            self.tail_logs()
        );
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn api(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].api_port)
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.api(i))
    }

    pub fn status(&self, i: usize) -> Option<Value> {
        get_json(&self.api(i), "/status")
    }

    /// The index of the one node every running node agrees leads, with its term.
    pub fn leader(&self) -> Option<(usize, u64)> {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.is_up(i)).collect();
        let st: Vec<(usize, Value)> = running
            .iter()
            .filter_map(|&i| self.status(i).map(|s| (i, s)))
            .collect();
        if st.len() != running.len() {
            return None;
        }
        let leaders: Vec<&(usize, Value)> =
            st.iter().filter(|(_, s)| s["role"] == "leader").collect();
        let [(li, ls)] = leaders.as_slice() else {
            return None;
        };
        let id = &self.nodes[*li].id;
        st.iter()
            .all(|(_, s)| s["leader_id"] == id.as_str())
            .then(|| (*li, ls["term"].as_u64().unwrap_or(0)))
    }

    /// The highest applied height among running nodes that answer.
    pub fn top(&self) -> u64 {
        (0..self.nodes.len())
            .filter(|&i| self.is_up(i))
            .filter_map(|i| self.status(i))
            .filter_map(|s| s["applied_height"].as_u64())
            .max()
            .unwrap_or(0)
    }

    /// Run `haseqd ctl --api <node i> ARGS…`.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_haseqd"))
            .args(["ctl", "--api", &self.url(i)])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn tail_logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out += &format!(
                "--- {}:\n{}\n",
                n.id,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        out
    }

    /// Poll `f` every 5 ms until it gives `Some` or `deadline` passes; then panic with `what`
    /// and the tails of the logs.
    pub fn wait<T>(&self, deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let t = Instant::now();
        for _ in 0..1_000_000 {
            if let Some(v) = f() {
                return v;
            }
            if t.elapsed() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let states: Vec<String> = (0..self.nodes.len())
            .map(|i| {
                format!(
                    "{}: {}",
                    self.nodes[i].id,
                    self.status(i).map(|s| s.to_string()).unwrap_or_default()
                )
            })
            .collect();
        panic!(
            "timed out after {deadline:?} waiting for {what}\nstatus:\n{}\n{}",
            states.join("\n"),
            self.tail_logs()
        );
    }
}

/// The runtime the blocking helpers below run the API client on.
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the API client")
    })
}

/// One API request (haseq's hyper client), blocking, under 2 s; `(status, body)`.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let r = rt()
        .block_on(haseq_actors::api_client::request(
            addr,
            method,
            path,
            body,
            Duration::from_secs(2),
        ))
        .ok()?;
    Some((r.status, r.body))
}

pub fn get_json(addr: &str, path: &str) -> Option<Value> {
    let (st, body) = http(addr, "GET", path, None)?;
    (st == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// One `/events` stream: every event, stamped with the instant it arrived. Closed on drop.
pub struct Events {
    pub node: String,
    pub events: Arc<Mutex<Vec<(Instant, Value)>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Events {
    pub fn open(addr: &str, node: &str) -> Events {
        let mut stream = rt()
            .block_on(haseq_actors::api_client::EventStream::open(
                addr,
                Duration::from_secs(2),
            ))
            .expect("GET /events");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let reader = std::thread::spawn(move || {
            rt().block_on(async move {
                for _ in 0..10_000_000 {
                    let data = tokio::select! {
                        _ = &mut stopped => return,
                        d = stream.next_data() => d,
                    };
                    let Ok(Some(data)) = data else { return };
                    if let Ok(v) = serde_json::from_str::<Value>(&data) {
                        sink.lock().unwrap().push((Instant::now(), v));
                    }
                }
            })
        });
        Events {
            node: node.to_string(),
            events,
            stop: Some(stop),
            reader: Some(reader),
        }
    }

    /// The first event received after `after` that satisfies `f`, with when it arrived.
    pub fn first_after(
        &self,
        after: Instant,
        f: impl Fn(&Value) -> bool,
    ) -> Option<(Instant, Value)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .find(|(at, v)| *at >= after && f(v))
            .cloned()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// `(min, median, max)` of `v` (sorted in place).
pub fn min_median_max(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    }
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
