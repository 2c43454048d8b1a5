//! Goal: what operators point Prometheus and Grafana at matches what a node exports. A live
//! node's `/metrics` passes `promtool check metrics`; every metric the alert rules
//! (`deploy/prometheus/alerts.yml`) and the dashboard's panels
//! (`deploy/grafana/haseq-dashboard.json`) query is in it; every counter exists at 0 on a
//! node that never had the event (the same names on followers as on the leader); every
//! metric has a help line; every alert has a `promtool test rules` case that makes it fire.
//!
//! Method: three `haseqd run` processes on loopback, 100 ms blocks; once 10 blocks are in,
//! each node's `/metrics` is read and checked. promtool is `$HASEQ_PROMTOOL` or the first
//! `promtool` on `PATH` (`./test.sh` installs Debian's prometheus package when it is missing
//! and exports `HASEQ_PROMTOOL`); without it the promtool check is skipped with a notice and
//! the others still run.

mod procs;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procs::{Procs, http};
use serde_json::Value;

/// Names the rules or panels use that a node's `/metrics` does not have, each with why.
const NOT_EXPORTED: &[(&str, &str)] = &[(
    "up",
    "Prometheus' own series: 1 when it scraped the target, which never exports it",
)];

/// Names a PromQL selector may carry (followed by `{`) that are not metrics of a node.
const NOT_METRICS: &[&str] = &["ALERTS", "ALERTS_FOR_STATE"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `$HASEQ_PROMTOOL` (which must then run), else `promtool` on `PATH`, else `None`.
fn promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HASEQ_PROMTOOL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "HASEQ_PROMTOOL={} is not a file", p.display());
        return Some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
}

/// Run `promtool ARGS` with `stdin` on its standard input, for at most 60 s; whether it
/// succeeded, with what it printed.
fn run_promtool(tool: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", tool.display()));
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let started = Instant::now();
    for _ in 0..60_000 {
        if child.try_wait().expect("try_wait").is_some()
            || started.elapsed() > Duration::from_secs(60)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if child.try_wait().expect("try_wait").is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("promtool {args:?} still running after 60 s");
    }
    writer.join().expect("stdin writer");
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// One scrape: each metric family's name and its `# TYPE`, and the names with a `# HELP`.
struct Scrape {
    types: BTreeMap<String, String>,
    helped: BTreeSet<String>,
    text: String,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut types = BTreeMap::new();
        let mut helped = BTreeSet::new();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            match (w.next(), w.next(), w.next(), w.next()) {
                (Some("#"), Some("TYPE"), Some(name), Some(kind)) => {
                    types.insert(name.to_string(), kind.to_string());
                }
                (Some("#"), Some("HELP"), Some(name), _) => {
                    helped.insert(name.to_string());
                }
                _ => {}
            }
        }
        Scrape {
            types,
            helped,
            text,
        }
    }

    /// Whether a query's `name` selects series of this scrape: a family that is not a
    /// histogram, or a histogram's `_bucket`, `_sum` or `_count`.
    fn has(&self, name: &str) -> bool {
        if let Some(kind) = self.types.get(name) {
            return kind != "histogram";
        }
        ["_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| self.types.get(base).is_some_and(|k| k == "histogram"))
        })
    }
}

/// The metric names a PromQL expression selects. String literals are dropped first (label
/// values and regexes); a name is an identifier that starts with `haseq_`, or any identifier
/// directly followed by `{` (a selector; label names inside braces are followed by an
/// operator instead). Panics on an identifier in selector position that is neither.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut bare = String::with_capacity(expr.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for ch in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if ch == '\\' {
                    escaped = true;
                } else if ch == q {
                    quote = None;
                    bare.push(' ');
                }
            }
            None if matches!(ch, '"' | '\'' | '`') => quote = Some(ch),
            None => bare.push(ch),
        }
    }
    let chars: Vec<char> = bare.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts = (c.is_ascii_alphabetic() || c == '_' || c == ':')
            && (i == 0
                || !(chars[i - 1].is_ascii_alphanumeric()
                    || chars[i - 1] == '_'
                    || chars[i - 1] == '$'));
        if !starts {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let selector = chars.get(i) == Some(&'{');
        if word.starts_with("haseq_") || (selector && !NOT_METRICS.contains(&word.as_str())) {
            names.insert(word);
        }
    }
    names
}

#[test]
fn metric_name_extraction() {
    let got = metric_names(
        r#"histogram_quantile(0.99, sum by (node, le) (rate(haseq_rpc_seconds_bucket{job=~"haseq.*", node=~"$node"}[$__rate_interval]))) > 0 and on (cluster) up{job="haseq_x"} unless ALERTS{alertname="haseq_fake"}"#,
    );
    let want: BTreeSet<String> = ["haseq_rpc_seconds_bucket", "up"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);
}

/// Every `expr` of `alerts.yml`, by alert name.
fn alert_exprs() -> BTreeMap<String, String> {
    let text = read("deploy/prometheus/alerts.yml");
    let rules: Value = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Yaml))
        .build()
        .and_then(|c| c.try_deserialize())
        .expect("alerts.yml");
    let mut out = BTreeMap::new();
    let groups = rules["groups"].as_array().expect("alerts.yml: groups");
    for r in groups
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("a group's rules"))
    {
        let (Some(alert), Some(expr)) = (r["alert"].as_str(), r["expr"].as_str()) else {
            panic!("a rule without alert or expr: {r}");
        };
        assert!(
            out.insert(alert.to_string(), expr.to_string()).is_none(),
            "{alert} twice"
        );
    }
    assert!(!out.is_empty(), "no alert in alerts.yml");
    out
}

/// Every PromQL expression of the dashboard: each panel's targets (rows' nested panels too)
/// and the template variables' queries.
fn dashboard_exprs() -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
                for key in ["expr", "definition"] {
                    if let Some(Value::String(e)) = m.get(key) {
                        out.push((title.to_string(), e.clone()));
                    }
                }
                for child in m.values() {
                    walk(child, title, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, title, out)),
            _ => {}
        }
    }
    let d: Value =
        serde_json::from_str(&read("deploy/grafana/haseq-dashboard.json")).expect("dashboard json");
    let mut out = Vec::new();
    walk(&d, "dashboard", &mut out);
    assert!(
        out.len() > 10,
        "only {} expressions in the dashboard",
        out.len()
    );
    out
}

/// Every alert of `alerts.yml` fires in some case of `alerts.test.yml`.
#[test]
fn every_alert_has_a_rule_test_that_fires_it() {
    let tests = read("deploy/prometheus/alerts.test.yml");
    let missing: Vec<String> = alert_exprs()
        .into_keys()
        .filter(|a| {
            !tests.lines().any(|l| {
                l.contains("labels:")
                    && l.contains(&format!("alertname=\"{a}\""))
                    && l.contains("alertstate=\"firing\"")
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "alerts with no firing case in alerts.test.yml: {missing:?}"
    );
}

/// What a query needs that none of the scrapes has, as `(where, name)`.
fn missing_names<'a>(
    exprs: impl IntoIterator<Item = (String, &'a str)>,
    scrapes: &[Scrape],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (at, expr) in exprs {
        for name in metric_names(expr) {
            if NOT_EXPORTED.iter().any(|(n, _)| *n == name) {
                continue;
            }
            if !scrapes.iter().any(|s| s.has(&name)) {
                out.push((at.clone(), name));
            }
        }
    }
    out
}

#[test]
fn a_live_nodes_metrics_pass_promtool_and_serve_every_rule_and_panel() {
    let mut c = Procs::new(3, "100ms", "");
    c.start_all();
    c.wait(Duration::from_secs(30), "a leader", || c.leader());
    c.wait(Duration::from_secs(30), "10 blocks", || {
        (c.top() >= 10).then_some(())
    });
    let scrapes: Vec<Scrape> = (0..3)
        .map(|i| {
            let (st, body) = http(&c.api(i), "GET", "/metrics", None).expect("GET /metrics");
            assert_eq!(st, 200, "{}: {body}", c.nodes[i].id);
            Scrape::parse(body)
        })
        .collect();
    let (leader, _) = c.leader().expect("a leader");
    eprintln!(
        "scraped: {} families on {} (leader); {:?} on the others",
        scrapes[leader].types.len(),
        c.nodes[leader].id,
        scrapes.iter().map(|s| s.types.len()).collect::<Vec<_>>()
    );

    let mut failures: Vec<String> = Vec::new();
    // The same families everywhere: a follower has the leader's counters, at 0.
    for (i, s) in scrapes.iter().enumerate() {
        let names: BTreeSet<&String> = s.types.keys().collect();
        let leader_names: BTreeSet<&String> = scrapes[leader].types.keys().collect();
        if names != leader_names {
            failures.push(format!(
                "{} exports {:?} more and lacks {:?} compared with the leader",
                c.nodes[i].id,
                names.difference(&leader_names).collect::<Vec<_>>(),
                leader_names.difference(&names).collect::<Vec<_>>()
            ));
        }
        let unhelped: Vec<&String> = s.types.keys().filter(|n| !s.helped.contains(*n)).collect();
        if !unhelped.is_empty() {
            failures.push(format!("{}: no # HELP for {unhelped:?}", c.nodes[i].id));
        }
    }
    for (i, s) in scrapes.iter().enumerate().filter(|(i, _)| *i != leader) {
        let line = s
            .text
            .lines()
            .find(|l| l.starts_with("haseq_blocks_produced_total "));
        if line.is_none() {
            failures.push(format!(
                "follower {} has no haseq_blocks_produced_total series",
                c.nodes[i].id
            ));
        }
    }

    let queries: Vec<(String, String)> = alert_exprs()
        .into_iter()
        .map(|(a, e)| (format!("alert {a}"), e))
        .chain(
            dashboard_exprs()
                .into_iter()
                .map(|(t, e)| (format!("panel {t:?}"), e)),
        )
        .collect();
    for (at, name) in missing_names(
        queries.iter().map(|(at, e)| (at.clone(), e.as_str())),
        &scrapes,
    ) {
        failures.push(format!("{at} queries {name}, which no node exports"));
    }
    for (name, why) in NOT_EXPORTED {
        eprintln!("not checked against /metrics: {name} ({why})");
    }

    match promtool() {
        None => eprintln!(
            "notice: promtool not found (set HASEQ_PROMTOOL or install Debian's prometheus \
             package); `promtool check metrics` skipped"
        ),
        Some(tool) => {
            for (i, s) in scrapes.iter().enumerate() {
                let (ok, out) = run_promtool(&tool, &["check", "metrics"], &s.text);
                eprintln!(
                    "promtool check metrics, {}: {}",
                    c.nodes[i].id,
                    if ok && out.trim().is_empty() {
                        "clean"
                    } else {
                        out.trim()
                    }
                );
                if !ok || !out.trim().is_empty() {
                    failures.push(format!(
                        "promtool check metrics on {}: {}",
                        c.nodes[i].id,
                        out.trim()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
