//! The layering and the raw key/value view: every known key with its built-in default, the
//! four layers merged by the `config` crate, and strict typed reads of single keys.
//!
//! The `config` crate's own conversions are lenient (`"yes"` is an integer 1, any integer a
//! boolean), so we only use it to merge layers and read each leaf ourselves: a value is either
//! what the key expects or an error naming the key, the value and where it was set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Environment, File, FileFormat, Source, Value, ValueKind};

use super::error::ConfigError;

/// Prefix of the environment variables that configure haseq (`HASEQ_RAFT__NODE_ID`).
pub const ENV_PREFIX: &str = "HASEQ_";
/// Separator between a section and a key in an environment variable's name.
const ENV_SEPARATOR: &str = "__";

/// The sections (maps of keys); `engine.embedded` is nested in `engine`.
const SECTIONS: &[&str] = &["node", "raft", "api", "engine", "engine.embedded", "log"];

/// Every key haseq knows, with its built-in default written as an operator would write it
/// (parsed by the same code as the file's values, so a default cannot be malformed silently).
/// `raft.raft_dir` and `engine.data_dir` default to paths computed at load time.
const KEYS: &[(&str, Option<&str>)] = &[
    ("node.aggregator", Some("false")),
    ("node.block_time", Some("1s")),
    ("raft.enable", Some("false")),
    ("raft.node_id", None),
    ("raft.raft_addr", None),
    ("raft.raft_dir", None),
    ("raft.peers", Some("")),
    ("raft.bootstrap", Some("false")),
    ("raft.join", Some("false")),
    ("raft.crash_fast_failover", Some("true")),
    ("raft.heartbeat_timeout", Some("350ms")),
    ("raft.election_timeout", Some("1000ms")),
    ("raft.leader_lease_timeout", Some("175ms")),
    ("raft.send_timeout", Some("200ms")),
    ("raft.snapshot_threshold", Some("500")),
    ("raft.trailing_logs", Some("200")),
    ("raft.snap_count", Some("3")),
    ("raft.secret_file", None),
    ("raft.max_exec_lag_blocks", Some("10")),
    ("raft.handoff_after", Some("5s")),
    ("raft.unhealthy_leader_grace", Some("2s")),
    ("api.addr", Some("127.0.0.1:7700")),
    ("api.admin_token_file", None),
    // Unset: on when api.addr is not a loopback address (see parse_api).
    ("api.admin_require_token", None),
    ("api.max_connections", Some("256")),
    ("api.max_event_subscribers", Some("64")),
    ("api.header_read_timeout", Some("5s")),
    ("engine.kind", Some("embedded")),
    ("engine.url", None),
    ("engine.jwt_secret", None),
    ("engine.data_dir", None),
    ("engine.embedded.txs_per_block", Some("0")),
    ("engine.embedded.tx_bytes", Some("100")),
    ("engine.embedded.delay_per_block", Some("0s")),
    ("engine.embedded.fail", Some("false")),
    ("engine.embedded.lose_newest_on_restart", Some("0")),
    ("log.level", Some("info")),
    ("log.format", Some("text")),
];

/// Every key haseq knows, as `section.key`, in documentation order.
pub fn known_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().map(|(key, _)| *key)
}

fn is_key(key: &str) -> bool {
    KEYS.iter().any(|(k, _)| *k == key)
}

/// Origin tags we give values, so errors can say where a value came from.
const ORIGIN_DEFAULT: &str = "<built-in default>";
const ORIGIN_OVERRIDE: &str = "<command-line override>";
/// What the `config` crate's `Environment` source records as the origin.
const ORIGIN_ENV: &str = "the environment";

/// The environment variable that sets `key` (`raft.node_id` -> `HASEQ_RAFT__NODE_ID`).
pub fn env_var_for(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.to_uppercase().replace('.', ENV_SEPARATOR)
    )
}

/// "known raft keys: enable, node_id, ..." for the section of `key`, or the known sections.
fn known_near(key: &str) -> String {
    let section = SECTIONS
        .iter()
        .filter(|s| key.starts_with(&format!("{s}.")))
        .max_by_key(|s| s.len());
    match section {
        Some(section) => {
            let prefix = format!("{section}.");
            let names: Vec<&str> = known_keys()
                .filter_map(|k| k.strip_prefix(prefix.as_str()))
                .collect();
            format!("known {section} keys: {}", names.join(", "))
        }
        None => format!(
            "known sections: {}",
            SECTIONS
                .iter()
                .filter(|s| !s.contains('.'))
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The merged configuration as leaves: `raft.heartbeat_timeout` -> value (with its origin).
/// Every key with a built-in default is present; keys without one are present only if set.
#[derive(Debug)]
pub(super) struct Layers {
    leaves: BTreeMap<String, Value>,
    /// The YAML file as the operator named it, for messages.
    file_label: String,
}

impl Layers {
    /// Merge defaults, the YAML file, `HASEQ_` variables of `env` and `overrides`, in that order
    /// (each layer wins over the ones before), and check that every key set is known.
    ///
    /// `computed_defaults` are defaults that depend on the machine, e.g. `raft.raft_dir` under
    /// `$HOME`.
    pub(super) fn load(
        file: Option<&Path>,
        env: &[(String, String)],
        overrides: &[(String, String)],
        computed_defaults: &[(&str, String)],
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        let default_origin = ORIGIN_DEFAULT.to_string();
        for (key, default) in KEYS {
            if let Some(default) = default {
                builder = builder
                    .set_default(*key, Value::new(Some(&default_origin), *default))
                    .map_err(|e| internal(key, e))?;
            }
        }
        for (key, value) in computed_defaults {
            builder = builder
                .set_default(*key, Value::new(Some(&default_origin), value.as_str()))
                .map_err(|e| internal(key, e))?;
        }

        let file_label = file.map(|p| p.display().to_string()).unwrap_or_default();
        if let Some(path) = file {
            // Read it ourselves first: the `config` crate would look for other extensions of a
            // missing file and report a guess, and we want the OS error for this exact path.
            if let Err(e) = std::fs::File::open(path) {
                return Err(ConfigError::Source {
                    origin: path.display().to_string(),
                    reason: format!("cannot read it: {e}"),
                });
            }
            let source = File::from(path).format(FileFormat::Yaml).required(true);
            // Check the file on its own too: merged over the defaults, `raft: 5` would vanish
            // into the defaults' `raft` table instead of being refused.
            let own = source.collect().map_err(|e| ConfigError::Source {
                origin: path.display().to_string(),
                // The parser's own words, without the crate's " in <path>" (we name the path).
                reason: one_line(&match e {
                    config::ConfigError::FileParse { cause, .. } => cause.to_string(),
                    other => other.to_string(),
                }),
            })?;
            flatten("", own, &mut BTreeMap::new(), &file_label)?;
            builder = builder.add_source(source);
        }

        builder = builder.add_source(
            Environment::default()
                .prefix(ENV_PREFIX.trim_end_matches('_'))
                .prefix_separator("_")
                .separator(ENV_SEPARATOR)
                .source(Some(env_settings(env)?)),
        );

        let override_origin = ORIGIN_OVERRIDE.to_string();
        for (key, value) in overrides {
            if !is_key(key) {
                return Err(ConfigError::UnknownKey {
                    key: key.clone(),
                    origin: format!("command-line override {key}={value}"),
                    known: known_near(key),
                });
            }
            builder = builder
                .set_override(
                    key.as_str(),
                    Value::new(Some(&override_origin), value.as_str()),
                )
                .map_err(|e| internal(key, e))?;
        }

        let merged = builder.build().map_err(|e| {
            let origin = file.map_or_else(|| "<layers>".to_string(), |p| p.display().to_string());
            ConfigError::Source {
                origin,
                reason: one_line(&e.to_string()),
            }
        })?;
        let root = merged.collect().map_err(|e| ConfigError::Source {
            origin: "<merged configuration>".into(),
            reason: one_line(&e.to_string()),
        })?;

        let mut leaves = BTreeMap::new();
        flatten("", root, &mut leaves, &file_label)?;
        // A key set to null (or "") in a later layer has lost its default: put it back.
        for (key, default) in KEYS {
            if let (Some(default), false) = (default, leaves.contains_key(*key)) {
                leaves.insert(
                    (*key).to_string(),
                    Value::new(Some(&default_origin), *default),
                );
            }
        }
        for (key, value) in computed_defaults {
            if !leaves.contains_key(*key) {
                leaves.insert(
                    (*key).to_string(),
                    Value::new(Some(&default_origin), value.as_str()),
                );
            }
        }
        Ok(Self { leaves, file_label })
    }

    /// Whether `key` was given (by the file, the environment or a flag) or has a default.
    pub(super) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn get(&self, key: &str) -> Option<&Value> {
        debug_assert!(is_key(key), "read of a key missing from KEYS: {key}");
        self.leaves.get(key)
    }

    /// Where the value of `key` was set, for messages: a file, an environment variable, an
    /// override, or "" for a built-in default.
    pub(super) fn origin(&self, key: &str) -> String {
        self.get(key)
            .map(|v| origin_of(key, v, &self.file_label))
            .unwrap_or_default()
    }

    /// The value of `key` as given, for messages (strings quoted).
    pub(super) fn shown(&self, key: &str) -> String {
        self.get(key)
            .map(render)
            .unwrap_or_else(|| "<unset>".into())
    }

    /// An `Invalid` error for `key` with its current value and origin.
    pub(super) fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            value: self.shown(key),
            reason: reason.into(),
            origin: self.origin(key),
        }
    }

    fn present(&self, key: &str) -> Result<&Value, ConfigError> {
        self.get(key).ok_or_else(|| ConfigError::Missing {
            key: key.into(),
            reason: "it has no built-in default and must be given".into(),
        })
    }

    /// A boolean: YAML `true`/`false`, or the text `true`/`false` (any case) from the
    /// environment or a flag.
    pub(super) fn bool(&self, key: &str) -> Result<bool, ConfigError> {
        let v = self.present(key)?;
        match &v.kind {
            ValueKind::Boolean(b) => Ok(*b),
            ValueKind::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
            ValueKind::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
            _ => Err(self.invalid(key, "expected true or false")),
        }
    }

    /// A whole number >= 0: a YAML integer, or digits from the environment or a flag.
    pub(super) fn uint(&self, key: &str) -> Result<u64, ConfigError> {
        let v = self.present(key)?;
        let n = match &v.kind {
            ValueKind::I64(n) => u64::try_from(*n).ok(),
            ValueKind::U64(n) => Some(*n),
            ValueKind::I128(n) => u64::try_from(*n).ok(),
            ValueKind::U128(n) => u64::try_from(*n).ok(),
            ValueKind::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        n.ok_or_else(|| self.invalid(key, "expected a whole number >= 0, e.g. 500"))
    }

    /// A duration, see [`parse_duration`].
    pub(super) fn duration(&self, key: &str) -> Result<Duration, ConfigError> {
        let v = self.present(key)?;
        let parsed = match &v.kind {
            ValueKind::String(s) => parse_duration(s),
            ValueKind::I64(0) | ValueKind::U64(0) => Ok(Duration::ZERO),
            ValueKind::I64(_) | ValueKind::U64(_) | ValueKind::Float(_) => {
                Err(format!("durations need a unit, e.g. \"{}ms\"", render(v)))
            }
            _ => Err(NOT_A_DURATION.to_string()),
        };
        parsed.map_err(|reason| self.invalid(key, reason))
    }

    /// A text value; numbers and booleans are taken as their text (`node_id: 1` is `"1"`).
    /// `None` when unset.
    pub(super) fn opt_text(&self, key: &str) -> Result<Option<String>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match &v.kind {
            ValueKind::String(s) => Ok(Some(s.trim().to_string())),
            ValueKind::Boolean(_)
            | ValueKind::I64(_)
            | ValueKind::I128(_)
            | ValueKind::U64(_)
            | ValueKind::U128(_)
            | ValueKind::Float(_) => Ok(Some(render(v))),
            ValueKind::Nil => Ok(None),
            ValueKind::Table(_) | ValueKind::Array(_) => {
                Err(self.invalid(key, "expected a single value, not a list or a map"))
            }
        }
    }

    /// A text value of a key with a built-in default.
    pub(super) fn text(&self, key: &str) -> Result<String, ConfigError> {
        self.present(key)?;
        self.opt_text(key)?.ok_or_else(|| ConfigError::Missing {
            key: key.into(),
            reason: "it must be given".into(),
        })
    }

    /// A path; `None` when unset.
    pub(super) fn opt_path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self.opt_text(key)?.map(PathBuf::from))
    }

    /// A list given either as comma-separated text (YAML `>-` blocks fold lines into
    /// `a, b, c`) or as a YAML list. Items are trimmed; empty items (a trailing comma) are
    /// dropped.
    pub(super) fn list(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(Vec::new());
        };
        let texts: Vec<String> = match &v.kind {
            ValueKind::String(s) => vec![s.clone()],
            ValueKind::Nil => Vec::new(),
            ValueKind::Array(items) => {
                let mut texts = Vec::with_capacity(items.len());
                for item in items {
                    match &item.kind {
                        ValueKind::String(s) => texts.push(s.clone()),
                        _ => {
                            return Err(self
                                .invalid(key, format!("list item {} is not text", render(item))));
                        }
                    }
                }
                texts
            }
            _ => {
                return Err(self.invalid(key, "expected comma-separated text or a list"));
            }
        };
        Ok(texts
            .iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_string)
            .collect())
    }
}

const NOT_A_DURATION: &str = "not a duration (e.g. \"92ms\", \"1s\", \"1m30s\")";

/// Parse a duration the way the operator guide writes them: a number with a unit, e.g.
/// `"92ms"`, `"1s"`, `"1m30s"`, `"1.5s"` (humantime's units: ns, us, ms, s, m, h, d, ...).
///
/// A bare number is refused, because `"92"` could mean seconds or milliseconds and a wrong
/// guess is off by a factor of 1000; the one exception is `0`, which needs no unit.
///
/// # Errors
/// A one-line reason, without the key (callers add it).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(NOT_A_DURATION.to_string());
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        if t.bytes().all(|b| b == b'0' || b == b'.') {
            return Ok(Duration::ZERO);
        }
        return Err(format!("durations need a unit, e.g. \"{t}ms\""));
    }
    humantime::parse_duration(t).map_err(|_| NOT_A_DURATION.to_string())
}

/// Check the `HASEQ_` variables of `env` and return those that set keys, by variable name (the
/// form the `config` crate's `Environment` source takes).
///
/// A variable with `__` must name a known key. One without `__` is refused when it starts
/// with a section name (`HASEQ_RAFT_NODE_ID`, a typo that would otherwise be ignored) and
/// otherwise left alone: it belongs to something else (`HASEQ_TEST_SEED`).
fn env_settings(env: &[(String, String)]) -> Result<config::Map<String, String>, ConfigError> {
    let mut settings = config::Map::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let lower = rest.to_lowercase();
        if !lower.contains(ENV_SEPARATOR) {
            let names_section = SECTIONS
                .iter()
                .filter(|s| !s.contains('.'))
                .any(|s| lower == *s || lower.starts_with(&format!("{s}_")));
            if names_section {
                return Err(ConfigError::EnvName { var: var.clone() });
            }
            continue;
        }
        let key = lower.replace(ENV_SEPARATOR, ".");
        if !is_key(&key) {
            return Err(ConfigError::UnknownKey {
                known: known_near(&key),
                key,
                origin: format!("environment variable {var}"),
            });
        }
        settings.insert(var.clone(), value.clone());
    }
    Ok(settings)
}

/// Walk the merged tree into `leaves`, refusing unknown keys and values where sections belong.
/// Null and empty-text values count as unset.
fn flatten(
    prefix: &str,
    table: config::Map<String, Value>,
    leaves: &mut BTreeMap<String, Value>,
    file_label: &str,
) -> Result<(), ConfigError> {
    // Sorted, so that of several mistakes the same one is always reported first.
    let sorted: BTreeMap<String, Value> = table.into_iter().collect();
    for (name, value) in sorted {
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}.{name}")
        };
        let unset = match &value.kind {
            ValueKind::Nil => true,
            ValueKind::String(s) => s.trim().is_empty(),
            _ => false,
        };
        if is_key(&key) {
            if !unset {
                leaves.insert(key, value);
            }
        } else if SECTIONS.contains(&key.as_str()) {
            match value.kind {
                ValueKind::Table(inner) => flatten(&key, inner, leaves, file_label)?,
                _ if unset => {}
                _ => {
                    return Err(ConfigError::NotASection {
                        origin: origin_of(&key, &value, file_label),
                        value: render(&value),
                        key,
                    });
                }
            }
        } else {
            return Err(ConfigError::UnknownKey {
                origin: origin_of(&key, &value, file_label),
                known: known_near(&key),
                key,
            });
        }
    }
    Ok(())
}

/// Where `value` of `key` was set. Values from the file carry the `config` crate's rendering
/// of its path (made relative to the working directory); we name it as the operator did.
fn origin_of(key: &str, value: &Value, file_label: &str) -> String {
    match value.origin() {
        None | Some(ORIGIN_DEFAULT) => String::new(),
        Some(ORIGIN_OVERRIDE) => format!("command-line override {key}"),
        Some(ORIGIN_ENV) => format!("environment variable {}", env_var_for(key)),
        Some(other) if file_label.is_empty() => other.to_string(),
        Some(_) => file_label.to_string(),
    }
}

/// A value as an operator wrote it: strings quoted, lists bracketed.
fn render(value: &Value) -> String {
    match &value.kind {
        ValueKind::Nil => "null".into(),
        ValueKind::Boolean(b) => b.to_string(),
        ValueKind::I64(n) => n.to_string(),
        ValueKind::I128(n) => n.to_string(),
        ValueKind::U64(n) => n.to_string(),
        ValueKind::U128(n) => n.to_string(),
        ValueKind::Float(f) => f.to_string(),
        ValueKind::String(s) => format!("{s:?}"),
        ValueKind::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(render).collect::<Vec<_>>().join(", ")
            )
        }
        ValueKind::Table(map) => {
            let names: BTreeMap<&String, &Value> = map.iter().collect();
            format!(
                "{{{}}}",
                names
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", render(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    }
}

/// Errors from the `config` crate span lines at times; ours are one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `config` crate refused one of our own key names: a bug in `KEYS`, reported as an error
/// rather than a panic because it surfaces at start-up with the key in hand.
fn internal(key: &str, e: config::ConfigError) -> ConfigError {
    ConfigError::Source {
        origin: format!("<key {key}>"),
        reason: one_line(&e.to_string()),
    }
}
