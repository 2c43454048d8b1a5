//! Configuration loading, end to end through `haseqd::config::load`.
//!
//! Goal: the operator guide's "Recommended Production Configuration" loads unchanged (addresses
//! aside), the layers win in the documented order (defaults < file < `HASEQ_` env < overrides),
//! and each bad configuration is refused with its own one-line message naming the key and the
//! value. Method: files and secrets in a temporary directory, the environment passed as a list
//! (the process environment is never touched), assertions on the message text.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use haseqd::config::{self, Config, ConfigError, EngineKind, LogFormat, Peer};

/// The secret check.py writes: 32 bytes as 64 hex characters.
const SECRET_HEX: &str = "6861736571206163636570742073656372657420666f722074657374696e6721";

/// The guide's "Recommended Production Configuration", as printed there (comments included),
/// with `{raft_dir}` to be filled in and the addresses moved to loopback, plus an `api`
/// section, as issue 3 describes a complete node configuration.
const GUIDE_PRODUCTION: &str = r#"# evnode.yaml — paste this raft section into every node's config
# Replace node_id, raft_addr, and peers with your actual values.
node:
  aggregator: true
raft:
  enable: true
  node_id: "node-1" # unique per node
  raft_addr: "127.0.0.1:5001"
  raft_dir: "{raft_dir}" # must be persistent
  # Remote peers list — different on every node
  peers: >-
    node-2@127.0.0.1:5002,
    node-3@127.0.0.1:5003,
    node-4@127.0.0.1:5004,
    node-5@127.0.0.1:5005
  # Timing — tuned for RTT_MAX ≤ 25ms
  heartbeat_timeout: "92ms"
  election_timeout: "368ms"
  leader_lease_timeout: "46ms"
  send_timeout: "50ms"
  # Log retention
  trailing_logs: 18000
  snapshot_threshold: 5000
  snap_count: 3
api:
  addr: "127.0.0.1:7701"
"#;

/// check.py's `GUIDE_BLOCK`, filled in as its `Node.write_config` does for node-1 of three.
const CHECK_PY_BLOCK: &str = r#"# evnode.yaml - paste this raft section into every node's config
node:
  aggregator: true
raft:
  enable: true
  node_id: "node-1" # unique per node
  raft_addr: "127.0.0.1:41001"
  raft_dir: "{raft_dir}" # must be persistent
  # Remote peers list - different on every node
  peers: >-
    node-2@127.0.0.1:41002,
    node-3@127.0.0.1:41003
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
  addr: "127.0.0.1:42001"
"#;

/// A temporary home for one test: config files, secrets, `raft_dir`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, content).expect("write fixture file");
        path
    }

    /// The cluster secret file, as check.py writes it (hex and a newline).
    fn secret(&self) -> PathBuf {
        self.write("cluster.secret", &format!("{SECRET_HEX}\n"))
    }

    /// The guide's production block with `raft_dir` in this fixture.
    fn guide(&self) -> String {
        GUIDE_PRODUCTION.replace("{raft_dir}", &self.path("raft").display().to_string())
    }

    /// `HOME` in the fixture, the secret through `HASEQ_RAFT__SECRET_FILE`, and `extra`.
    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = vec![
            ("HOME".to_string(), self.path("home").display().to_string()),
            (
                "HASEQ_RAFT__SECRET_FILE".to_string(),
                self.secret().display().to_string(),
            ),
            // Not ours: must be ignored.
            ("PATH".to_string(), "/usr/bin".to_string()),
            ("HASEQ_TEST_SEED".to_string(), "42".to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// Load `yaml` with the default environment plus `extra_env` and `overrides`.
    fn load(
        &self,
        yaml: &str,
        extra_env: &[(&str, &str)],
        overrides: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let file = self.write("node.yaml", yaml);
        let overrides: Vec<(String, String)> = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config::load(Some(&file), self.env(extra_env), &overrides)
    }

    /// The error `yaml` gives, checked to be one line.
    fn error(&self, yaml: &str, extra_env: &[(&str, &str)], overrides: &[(&str, &str)]) -> String {
        let err = match self.load(yaml, extra_env, overrides) {
            Ok(cfg) => panic!("expected an error, loaded {cfg:#?}"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "message spans lines: {msg}");
        eprintln!("refused as expected: {msg}");
        msg
    }

    /// The error the guide's block gives with `from` replaced by `to`.
    fn guide_error(&self, from: &str, to: &str) -> String {
        let text = self.guide();
        assert!(text.contains(from), "fixture lacks {from:?}");
        self.error(&text.replace(from, to), &[], &[])
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn assert_has(msg: &str, parts: &[&str]) {
    for part in parts {
        assert!(msg.contains(part), "message lacks {part:?}: {msg}");
    }
}

#[test]
fn guide_production_block_loads_with_secret_from_env() {
    let fx = Fixture::new();
    let cfg = fx
        .load(&fx.guide(), &[], &[])
        .expect("the guide's block loads");

    assert!(cfg.node.aggregator);
    assert_eq!(cfg.node.block_time, Duration::from_secs(1));
    let r = &cfg.raft;
    assert!(r.enable);
    assert_eq!(r.node_id.as_deref(), Some("node-1"));
    assert_eq!(r.raft_addr.as_deref(), Some("127.0.0.1:5001"));
    assert_eq!(r.raft_dir, fx.path("raft"));
    assert!(r.raft_dir.is_dir(), "raft_dir is created");
    let expected: Vec<Peer> = (2..=5)
        .map(|i| Peer {
            id: format!("node-{i}"),
            addr: format!("127.0.0.1:500{i}"),
        })
        .collect();
    assert_eq!(r.peers, expected, "peers from the folded >- block");
    assert_eq!(r.heartbeat_timeout, ms(92));
    assert_eq!(r.election_timeout, ms(368));
    assert_eq!(r.leader_lease_timeout, ms(46));
    assert_eq!(r.send_timeout, ms(50));
    assert_eq!(r.trailing_logs, 18000);
    assert_eq!(r.snapshot_threshold, 5000);
    assert_eq!(r.snap_count, 3);
    assert!(!r.bootstrap);
    assert_eq!(
        r.secret_file.as_deref(),
        Some(fx.path("cluster.secret").as_path())
    );
    let secret = r.secret.as_ref().expect("secret loaded");
    assert_eq!(
        secret.as_bytes(),
        hex::decode(SECRET_HEX).unwrap().as_slice()
    );
    let shown = format!("{cfg:?}");
    assert!(
        shown.contains("ClusterSecret(<32 bytes>)"),
        "Debug hides the secret: {shown}"
    );
    assert!(
        !shown.contains("104, 97, 115"),
        "Debug must not show the secret's bytes"
    );
    assert_eq!(
        cfg.api.addr,
        "127.0.0.1:7701".parse::<SocketAddr>().unwrap()
    );
    assert!(matches!(cfg.engine.kind, EngineKind::Embedded));
}

#[test]
fn check_py_block_loads_and_its_four_bad_configs_are_refused() {
    let fx = Fixture::new();
    let good = CHECK_PY_BLOCK.replace("{raft_dir}", &fx.path("raft").display().to_string());
    let cfg = fx.load(&good, &[], &[]).expect("check.py's block loads");
    assert_eq!(cfg.raft.peers.len(), 2);
    assert_eq!(
        cfg.raft.peers[1],
        Peer {
            id: "node-3".into(),
            addr: "127.0.0.1:41003".into()
        }
    );

    // check_bad_configs, case by case, with its exact edits.
    let own = good.replace(
        "  peers: >-\n",
        "  peers: >-\n    node-1@127.0.0.1:41001,\n",
    );
    let msg = fx.error(&own, &[], &[]);
    assert_has(
        &msg,
        &[
            "raft.peers",
            "\"node-1@127.0.0.1:41001\"",
            "own id",
            "raft.node_id = \"node-1\"",
        ],
    );

    let lease = good.replace(
        "leader_lease_timeout: \"46ms\"",
        "leader_lease_timeout: \"400ms\"",
    );
    let msg = fx.error(&lease, &[], &[]);
    assert_eq!(
        msg,
        "raft.leader_lease_timeout = \"400ms\" must be below raft.election_timeout (\"368ms\")"
    );

    let dur = good.replace(
        "heartbeat_timeout: \"92ms\"",
        "heartbeat_timeout: \"ninety\"",
    );
    let msg = fx.error(&dur, &[], &[]);
    assert_has(
        &msg,
        &[
            "raft.heartbeat_timeout = \"ninety\": not a duration",
            "\"92ms\"",
        ],
    );

    let unknown = good.replace("  snap_count: 3\n", "  snap_count: 3\n  no_such_key: 1\n");
    let msg = fx.error(&unknown, &[], &[]);
    assert_has(
        &msg,
        &[
            "unknown key raft.no_such_key",
            "node.yaml",
            "known raft keys: enable, node_id",
        ],
    );
}

#[test]
fn defaults_when_keys_are_absent() {
    let fx = Fixture::new();
    let cfg = config::load(None, fx.env(&[]), &[]).expect("no file at all loads");
    let home = fx.path("home").join(".haseq");

    assert!(!cfg.node.aggregator);
    assert_eq!(cfg.node.block_time, Duration::from_secs(1));
    let r = &cfg.raft;
    assert!(!r.enable);
    assert_eq!(r.node_id, None);
    assert_eq!(r.raft_addr, None);
    assert_eq!(r.raft_dir, home.join("raft"));
    assert!(r.raft_dir.is_dir());
    assert!(r.peers.is_empty());
    assert!(!r.bootstrap);
    assert_eq!(r.heartbeat_timeout, ms(350));
    assert_eq!(r.election_timeout, ms(1000));
    assert_eq!(r.leader_lease_timeout, ms(175));
    assert_eq!(r.send_timeout, ms(200));
    assert_eq!(r.snapshot_threshold, 500);
    assert_eq!(r.trailing_logs, 200);
    assert_eq!(r.snap_count, 3);
    assert_eq!(r.max_exec_lag_blocks, 10);
    assert_eq!(r.handoff_after, Duration::from_secs(5));
    assert_eq!(r.unhealthy_leader_grace, Duration::from_secs(2));
    assert!(
        r.secret.is_some(),
        "the env's secret file is read even with raft off"
    );

    assert_eq!(
        cfg.api.addr,
        "127.0.0.1:7700".parse::<SocketAddr>().unwrap()
    );
    assert!(cfg.api.admin_token_file.is_none() && cfg.api.admin_token.is_none());

    assert!(matches!(cfg.engine.kind, EngineKind::Embedded));
    assert_eq!(cfg.engine.data_dir, home.join("engine"));
    let e = &cfg.engine.embedded;
    assert_eq!((e.txs_per_block, e.tx_bytes), (0, 100));
    assert_eq!(e.delay_per_block, Duration::ZERO);
    assert!(!e.fail);
    assert_eq!(e.lose_newest_on_restart, 0);

    assert_eq!(cfg.log.level, "info");
    assert_eq!(cfg.log.format, LogFormat::Text);

    // An empty file and empty sections are the same as no file.
    let cfg = fx.load("", &[], &[]).expect("empty file");
    assert_eq!(cfg.raft.heartbeat_timeout, ms(350));
    let cfg = fx.load("raft:\nnode:\n", &[], &[]).expect("empty sections");
    assert_eq!(cfg.raft.snap_count, 3);
}

#[test]
fn env_overrides_file_and_parses_numbers_booleans_and_nested_keys() {
    let fx = Fixture::new();
    let cfg = fx
        .load(
            &fx.guide(),
            &[
                ("HASEQ_RAFT__HEARTBEAT_TIMEOUT", "100ms"),
                ("HASEQ_RAFT__SNAP_COUNT", "5"),
                ("HASEQ_RAFT__BOOTSTRAP", "TRUE"),
                ("HASEQ_NODE__BLOCK_TIME", "0"),
                ("HASEQ_ENGINE__EMBEDDED__TX_BYTES", "7"),
                ("HASEQ_ENGINE__EMBEDDED__TXS_PER_BLOCK", "3"),
                ("HASEQ_ENGINE__EMBEDDED__FAIL", "true"),
                ("HASEQ_LOG__FORMAT", "json"),
                (
                    "HASEQ_RAFT__PEERS",
                    "node-7@127.0.0.1:5007, node-8@127.0.0.1:5008",
                ),
            ],
            &[],
        )
        .expect("loads");
    assert_eq!(cfg.raft.heartbeat_timeout, ms(100));
    assert_eq!(
        cfg.raft.election_timeout,
        ms(368),
        "file value kept where env is silent"
    );
    assert_eq!(cfg.raft.snap_count, 5);
    assert!(cfg.raft.bootstrap);
    assert_eq!(cfg.node.block_time, Duration::ZERO, "0 needs no unit");
    assert_eq!(
        (
            cfg.engine.embedded.txs_per_block,
            cfg.engine.embedded.tx_bytes
        ),
        (3, 7)
    );
    assert!(cfg.engine.embedded.fail);
    assert_eq!(cfg.log.format, LogFormat::Json);
    let ids: Vec<&str> = cfg.raft.peers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["node-7", "node-8"]);

    // An empty variable unsets the file's value: the default applies.
    let cfg = fx
        .load(&fx.guide(), &[("HASEQ_RAFT__SEND_TIMEOUT", "")], &[])
        .unwrap();
    assert_eq!(cfg.raft.send_timeout, ms(200));
}

#[test]
fn overrides_override_env_and_file() {
    let fx = Fixture::new();
    let cfg = fx
        .load(
            &fx.guide(),
            &[
                ("HASEQ_RAFT__NODE_ID", "node-9"),
                ("HASEQ_RAFT__SEND_TIMEOUT", "60ms"),
            ],
            &[("raft.node_id", "node-6"), ("api.addr", "127.0.0.1:7799")],
        )
        .expect("loads");
    assert_eq!(
        cfg.raft.node_id.as_deref(),
        Some("node-6"),
        "override beats env and file"
    );
    assert_eq!(cfg.raft.send_timeout, ms(60), "env beats file");
    assert_eq!(cfg.api.addr.port(), 7799);

    let cfg = fx
        .load(&fx.guide(), &[("HASEQ_RAFT__NODE_ID", "node-9")], &[])
        .unwrap();
    assert_eq!(
        cfg.raft.node_id.as_deref(),
        Some("node-9"),
        "env beats file"
    );
}

#[test]
fn unknown_keys_are_refused_wherever_they_come_from() {
    let fx = Fixture::new();
    let g = fx.guide();

    let msg = fx.error(
        &format!("{g}p2p:\n  listen_address: \"/ip4/0.0.0.0/tcp/26656\"\n"),
        &[],
        &[],
    );
    assert_has(
        &msg,
        &[
            "unknown key p2p",
            "known sections: node, raft, api, engine, log",
        ],
    );

    let msg = fx.error(&format!("{g}engine:\n  embedded:\n    txs: 1\n"), &[], &[]);
    assert_has(
        &msg,
        &[
            "unknown key engine.embedded.txs",
            "known engine.embedded keys: txs_per_block",
        ],
    );

    let msg = fx.error(&g, &[("HASEQ_RAFT__NO_SUCH_KEY", "1")], &[]);
    assert_has(
        &msg,
        &[
            "unknown key raft.no_such_key",
            "environment variable HASEQ_RAFT__NO_SUCH_KEY",
        ],
    );

    let msg = fx.error(&g, &[("HASEQ_RAFT_NODE_ID", "node-2")], &[]);
    assert_has(&msg, &["HASEQ_RAFT_NODE_ID", "HASEQ_<SECTION>__<KEY>"]);

    let msg = fx.error(&g, &[], &[("raft.nodeid", "node-2")]);
    assert_has(&msg, &["unknown key raft.nodeid", "command-line override"]);

    let msg = fx.error("raft: 5\n", &[], &[]);
    assert_has(&msg, &["raft = 5: must be a section"]);
}

#[test]
fn durations_need_a_unit_except_zero() {
    let fx = Fixture::new();
    let msg = fx.guide_error("heartbeat_timeout: \"92ms\"", "heartbeat_timeout: \"92\"");
    assert_has(
        &msg,
        &["raft.heartbeat_timeout = \"92\": durations need a unit, e.g. \"92ms\""],
    );
    let msg = fx.guide_error("heartbeat_timeout: \"92ms\"", "heartbeat_timeout: 92");
    assert_has(
        &msg,
        &["raft.heartbeat_timeout = 92: durations need a unit"],
    );
    let msg = fx.error(&fx.guide(), &[("HASEQ_RAFT__SEND_TIMEOUT", "fast")], &[]);
    assert_has(
        &msg,
        &[
            "raft.send_timeout = \"fast\": not a duration",
            "HASEQ_RAFT__SEND_TIMEOUT",
        ],
    );

    let cfg = fx
        .load(
            &fx.guide(),
            &[("HASEQ_RAFT__HANDOFF_AFTER", "1m30s")],
            &[("node.block_time", "0s")],
        )
        .unwrap();
    assert_eq!(cfg.raft.handoff_after, Duration::from_secs(90));
    assert_eq!(cfg.node.block_time, Duration::ZERO);
}

#[test]
fn timing_relations_and_zero_values() {
    let fx = Fixture::new();
    let msg = fx.guide_error(
        "leader_lease_timeout: \"46ms\"",
        "leader_lease_timeout: \"368ms\"",
    );
    assert_eq!(
        msg,
        "raft.leader_lease_timeout = \"368ms\" must be below raft.election_timeout (\"368ms\")"
    );
    let msg = fx.guide_error("election_timeout: \"368ms\"", "election_timeout: \"80ms\"");
    assert_eq!(
        msg,
        "raft.election_timeout = \"80ms\" must be at least raft.heartbeat_timeout (\"92ms\")"
    );
    let msg = fx.guide_error("send_timeout: \"50ms\"", "send_timeout: \"0s\"");
    assert_has(&msg, &["raft.send_timeout = \"0s\": must be above zero"]);
    let msg = fx.guide_error("heartbeat_timeout: \"92ms\"", "heartbeat_timeout: \"2h\"");
    assert_has(
        &msg,
        &["raft.heartbeat_timeout = \"2h\": must be at most 10m"],
    );
    let msg = fx.guide_error("snap_count: 3", "snap_count: 0");
    assert_has(&msg, &["raft.snap_count = 0: must be from 1 to 1000"]);
    let msg = fx.guide_error("snapshot_threshold: 5000", "snapshot_threshold: 0");
    assert_has(&msg, &["raft.snapshot_threshold = 0: must be at least 1"]);
}

#[test]
fn peers_are_checked() {
    let fx = Fixture::new();
    let peers = "node-2@127.0.0.1:5002,";
    let cases: &[(&str, &[&str])] = &[
        (
            "node-2@127.0.0.1:5002,\n    node-2@127.0.0.1:5009,",
            &["raft.peers: \"node-2@127.0.0.1:5009\" repeats the id of \"node-2@127.0.0.1:5002\""],
        ),
        (
            "node-2@127.0.0.1:5002,\n    node-9@127.0.0.1:5002,",
            &[
                "raft.peers: \"node-9@127.0.0.1:5002\" repeats the address of \"node-2@127.0.0.1:5002\"",
            ],
        ),
        (
            "node-2@127.0.0.1:5001,",
            &[
                "raft.peers: \"node-2@127.0.0.1:5001\" has this node's own address",
                "raft.raft_addr = \"127.0.0.1:5001\"",
            ],
        ),
        (
            "node-2-127.0.0.1:5002,",
            &["raft.peers: \"node-2-127.0.0.1:5002\" is not id@host:port: missing \"@\""],
        ),
        (
            "@127.0.0.1:5002,",
            &["raft.peers: \"@127.0.0.1:5002\" is not id@host:port: node id: it is empty"],
        ),
        (
            "node-2@127.0.0.1:0,",
            &[
                "\"node-2@127.0.0.1:0\"",
                "port \"0\" is not a number from 1 to 65535",
            ],
        ),
        (
            "node-2@127.0.0.1:70000,",
            &["port \"70000\" is not a number from 1 to 65535"],
        ),
        (
            "node-2@127.0.0.1,",
            &["\"node-2@127.0.0.1\"", "has no port"],
        ),
        ("node-2@:5002,", &["\"node-2@:5002\"", "empty host"]),
        (
            // A forgotten comma in the folded block: two entries run together.
            "node-2@127.0.0.1:5002\n    node-9@127.0.0.1:5009,",
            &[
                "\"node-2@127.0.0.1:5002 node-9@127.0.0.1:5009\"",
                "separate entries with commas",
            ],
        ),
    ];
    for (replacement, parts) in cases {
        let msg = fx.guide_error(peers, replacement);
        assert_has(&msg, parts);
    }

    // A YAML list works as well as comma-separated text.
    let list = fx.guide().replace(
        "peers: >-\n    node-2@127.0.0.1:5002,\n    node-3@127.0.0.1:5003,\n    node-4@127.0.0.1:5004,\n    node-5@127.0.0.1:5005\n",
        "peers:\n    - node-2@127.0.0.1:5002\n    - node-3@127.0.0.1:5003\n",
    );
    let cfg = fx.load(&list, &[], &[]).expect("peers as a YAML list");
    assert_eq!(cfg.raft.peers.len(), 2);
}

#[test]
fn raft_dir_must_be_creatable_and_writable() {
    let fx = Fixture::new();
    let blocker = fx.write("not-a-dir", "a file where a directory should be");
    let dir = blocker.join("raft");
    let msg = fx.guide_error(
        &fx.path("raft").display().to_string(),
        &dir.display().to_string(),
    );
    assert_has(
        &msg,
        &[
            "raft.raft_dir = ",
            &format!("{:?}", dir),
            "cannot create the directory",
            "os error",
        ],
    );
}

#[test]
fn cluster_secret_is_required_and_checked() {
    let fx = Fixture::new();
    let g = fx.guide();
    let file = fx.write("node.yaml", &g);
    let base_env = vec![("HOME".to_string(), fx.path("home").display().to_string())];

    let err = config::load(Some(&file), base_env.clone(), &[]).unwrap_err();
    assert_has(
        &err.to_string(),
        &[
            "raft.secret_file is not set",
            "raft.enable is true",
            "HASEQ_RAFT__SECRET_FILE",
        ],
    );

    let with_secret = |path: &Path| {
        let mut env = base_env.clone();
        env.push(("HASEQ_RAFT__SECRET_FILE".into(), path.display().to_string()));
        config::load(Some(&file), env, &[])
    };
    let missing = fx.path("no-such.secret");
    let msg = with_secret(&missing).unwrap_err().to_string();
    assert_has(
        &msg,
        &[
            "raft.secret_file = ",
            "no-such.secret",
            "cannot read the file",
            "No such file",
        ],
    );

    let msg = with_secret(fx.dir.path()).unwrap_err().to_string();
    assert_has(&msg, &["raft.secret_file = ", "cannot read the file"]);

    let empty = fx.write("empty.secret", " \n");
    let msg = with_secret(&empty).unwrap_err().to_string();
    assert_has(
        &msg,
        &["raft.secret_file = ", "empty.secret", "the file is empty"],
    );

    let short = fx.write("short.secret", "0xdeadbeef\n");
    let msg = with_secret(&short).unwrap_err().to_string();
    assert_has(
        &msg,
        &[
            "short.secret",
            "the secret is 4 bytes, too short: at least 16",
        ],
    );

    // Hex with 0x is decoded; anything else is taken as raw bytes.
    let hex_secret = fx.write("hex.secret", &format!("0x{SECRET_HEX}"));
    let cfg = with_secret(&hex_secret).unwrap();
    assert_eq!(cfg.raft.secret.unwrap().as_bytes().len(), 32);
    let raw = fx.write("raw.secret", "  correct horse battery staple \n");
    let cfg = with_secret(&raw).unwrap();
    assert_eq!(
        cfg.raft.secret.unwrap().as_bytes(),
        b"correct horse battery staple"
    );
}

#[test]
fn raft_needs_aggregator_node_id_and_address() {
    let fx = Fixture::new();
    let msg = fx.guide_error("aggregator: true", "aggregator: false");
    assert_eq!(
        msg,
        "raft.enable = true requires node.aggregator: true (it is false)"
    );
    let msg = fx.guide_error("  node_id: \"node-1\" # unique per node\n", "");
    assert_eq!(
        msg,
        "raft.node_id is not set; it is required when raft.enable is true"
    );
    let msg = fx.guide_error("  raft_addr: \"127.0.0.1:5001\"\n", "");
    assert_eq!(
        msg,
        "raft.raft_addr is not set; it is required when raft.enable is true"
    );
    let msg = fx.guide_error("raft_addr: \"127.0.0.1:5001\"", "raft_addr: \"127.0.0.1\"");
    assert_has(&msg, &["raft.raft_addr = \"127.0.0.1\": ", "has no port"]);
    let msg = fx.guide_error("node_id: \"node-1\"", "node_id: \"node 1\"");
    assert_has(&msg, &["raft.node_id = \"node 1\": ", "' ' is not allowed"]);
}

#[test]
fn engine_api_needs_url_and_a_32_byte_jwt_secret() {
    let fx = Fixture::new();
    let g = fx.guide();
    let jwt = fx.write("jwt.hex", &format!("0x{}\n", "ab".repeat(32)));
    let engine = |body: &str| format!("{g}engine:\n  kind: engine_api\n{body}");

    let msg = fx.error(&engine(&format!("  jwt_secret: {:?}\n", jwt)), &[], &[]);
    assert_eq!(
        msg,
        "engine.url is not set; it is required when engine.kind is engine_api"
    );
    let msg = fx.error(&engine("  url: \"http://127.0.0.1:8551\"\n"), &[], &[]);
    assert_eq!(
        msg,
        "engine.jwt_secret is not set; it is required when engine.kind is engine_api"
    );
    let msg = fx.error(
        &engine(&format!(
            "  url: \"127.0.0.1:8551\"\n  jwt_secret: {jwt:?}\n"
        )),
        &[],
        &[],
    );
    assert_has(
        &msg,
        &["engine.url = \"127.0.0.1:8551\": expected an http:// URL"],
    );
    // No TLS in the client: refused here with the reason, not in a restart loop later.
    let msg = fx.error(
        &engine(&format!(
            "  url: \"https://el.example:8551\"\n  jwt_secret: {jwt:?}\n"
        )),
        &[],
        &[],
    );
    assert_has(
        &msg,
        &[
            "engine.url = \"https://el.example:8551\"",
            "https:// is not supported",
        ],
    );

    let short = fx.write("short.jwt", &"ab".repeat(31));
    let msg = fx.error(
        &engine(&format!(
            "  url: \"http://127.0.0.1:8551\"\n  jwt_secret: {short:?}\n"
        )),
        &[],
        &[],
    );
    assert_has(
        &msg,
        &[
            "engine.jwt_secret = ",
            "short.jwt",
            "holds 62 hex characters; expected 64 (32 bytes)",
        ],
    );
    let text = fx.write("text.jwt", "not a hex secret");
    let msg = fx.error(
        &engine(&format!(
            "  url: \"http://127.0.0.1:8551\"\n  jwt_secret: {text:?}\n"
        )),
        &[],
        &[],
    );
    assert_has(&msg, &["engine.jwt_secret = ", "text.jwt", "not hex"]);

    let cfg = fx
        .load(
            &engine(&format!(
                "  url: \"http://127.0.0.1:8551\"\n  jwt_secret: {jwt:?}\n"
            )),
            &[],
            &[],
        )
        .expect("engine_api loads");
    match cfg.engine.kind {
        EngineKind::EngineApi(api) => {
            assert_eq!(api.url, "http://127.0.0.1:8551");
            assert_eq!(api.jwt_secret_file, jwt);
            assert_eq!(api.jwt_secret.as_bytes(), &[0xab; 32]);
        }
        EngineKind::Embedded => panic!("expected engine_api"),
    }
    assert_eq!(
        cfg.engine.data_dir,
        fx.path("engine"),
        "<raft_dir>/../engine"
    );
}

#[test]
fn wrong_types_and_values_name_key_and_value() {
    let fx = Fixture::new();
    let g = fx.guide();
    /// One bad environment and the start of the message it must give.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (
            &[("HASEQ_RAFT__SNAP_COUNT", "three")],
            "raft.snap_count = \"three\": expected a whole number >= 0, e.g. 500 (set in environment variable HASEQ_RAFT__SNAP_COUNT)",
        ),
        (
            &[("HASEQ_RAFT__TRAILING_LOGS", "-1")],
            "raft.trailing_logs = \"-1\": expected a whole number >= 0",
        ),
        (
            &[("HASEQ_RAFT__ENABLE", "maybe")],
            "raft.enable = \"maybe\": expected true or false",
        ),
        (
            &[("HASEQ_API__ADDR", "localhost")],
            "api.addr = \"localhost\": expected an IP address and a port",
        ),
        (
            &[("HASEQ_API__ADDR", "127.0.0.1:5001")],
            "api.addr = \"127.0.0.1:5001\": is also raft.raft_addr",
        ),
        (
            &[("HASEQ_ENGINE__KIND", "reth")],
            "engine.kind = \"reth\": expected embedded or engine_api",
        ),
        (
            &[("HASEQ_LOG__FORMAT", "xml")],
            "log.format = \"xml\": expected text or json",
        ),
        (
            &[("HASEQ_LOG__LEVEL", "verbose")],
            "log.level = \"verbose\": \"verbose\": expected a level",
        ),
        (
            &[
                ("HASEQ_ENGINE__EMBEDDED__TXS_PER_BLOCK", "1000000"),
                ("HASEQ_ENGINE__EMBEDDED__TX_BYTES", "1000"),
            ],
            "engine.embedded.txs_per_block = \"1000000\": txs_per_block × tx_bytes (\"1000\") is over",
        ),
    ];
    for (env, expected) in cases {
        let msg = fx.error(&g, env, &[]);
        assert!(
            msg.starts_with(expected),
            "expected {expected:?}\n got {msg:?}"
        );
    }
    let cfg = fx
        .load(&g, &[("HASEQ_LOG__LEVEL", "info,haseq_net=debug")], &[])
        .unwrap();
    assert_eq!(cfg.log.level, "info,haseq_net=debug");
}

#[test]
fn admin_token_file_is_read() {
    let fx = Fixture::new();
    let token = fx.write("admin.token", "s3cret-token\n");
    let cfg = fx
        .load(
            &fx.guide(),
            &[("HASEQ_API__ADMIN_TOKEN_FILE", &token.display().to_string())],
            &[],
        )
        .unwrap();
    assert_eq!(cfg.api.admin_token.unwrap().as_str(), "s3cret-token");
    let empty = fx.write("empty.token", "\n");
    let msg = fx.error(
        &fx.guide(),
        &[("HASEQ_API__ADMIN_TOKEN_FILE", &empty.display().to_string())],
        &[],
    );
    assert_has(
        &msg,
        &[
            "api.admin_token_file = ",
            "empty.token",
            "the file is empty",
        ],
    );
}

#[test]
fn admin_token_is_required_by_default_beyond_loopback() {
    let fx = Fixture::new();
    let cfg = fx.load(&fx.guide(), &[], &[]).unwrap();
    assert!(cfg.api.addr.ip().is_loopback());
    assert!(
        !cfg.api.admin_require_token,
        "loopback API: the loopback exemption stays"
    );
    let wide = [("HASEQ_API__ADDR", "0.0.0.0:7700")];
    let cfg = fx.load(&fx.guide(), &wide, &[]).unwrap();
    assert!(
        cfg.api.admin_require_token,
        "an API beyond loopback needs the token"
    );
    let cfg = fx
        .load(&fx.guide(), &wide, &[("api.admin_require_token", "false")])
        .unwrap();
    assert!(!cfg.api.admin_require_token, "an operator may turn it off");
    let msg = fx.error(&fx.guide(), &[], &[("api.admin_require_token", "maybe")]);
    assert_has(&msg, &["api.admin_require_token", "expected true or false"]);
}

#[test]
fn unreadable_or_malformed_file_names_the_file() {
    let fx = Fixture::new();
    let missing = fx.path("missing.yaml");
    let err = config::load(Some(&missing), fx.env(&[]), &[])
        .unwrap_err()
        .to_string();
    assert_has(&err, &["config file ", "missing.yaml", "cannot read it"]);
    let msg = fx.error("raft:\n  enable: [true\n", &[], &[]);
    assert_has(&msg, &["config file ", "node.yaml"]);
}

#[test]
fn parse_duration_and_known_keys_are_public() {
    assert_eq!(config::parse_duration("200ms"), Ok(ms(200)));
    assert!(config::parse_duration("200").is_err());
    assert_eq!(
        config::env_var_for("engine.embedded.tx_bytes"),
        "HASEQ_ENGINE__EMBEDDED__TX_BYTES"
    );
    assert!(config::known_keys().any(|k| k == "raft.leader_lease_timeout"));
}
