//! `ConfigError`: every way a configuration can be refused at start-up.
//!
//! Each message is one line that names the full key (`raft.leader_lease_timeout`), the value
//! that was given, and what is allowed, so an operator can fix the file without reading code.

use std::io;
use std::path::PathBuf;

/// A configuration that cannot be used; `main` prints it and exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML file (or another layer) could not be read or parsed.
    #[error("config file {origin}: {reason}")]
    Source {
        /// The file (or layer) at fault.
        origin: String,
        /// What went wrong, from the parser or the OS.
        reason: String,
    },

    /// A key that haseq does not know, in the file, the environment or an override.
    #[error("unknown key {key} in {origin} ({known})")]
    UnknownKey {
        /// The full dotted key, e.g. `raft.no_such_key`.
        key: String,
        /// Where it was set: the file path, the environment variable or the override.
        origin: String,
        /// The keys that are allowed in that place.
        known: String,
    },

    /// A `HASEQ_` environment variable that names a section but lacks the `__` separator.
    #[error(
        "environment variable {var} is not a haseq setting: settings are \
         HASEQ_<SECTION>__<KEY> with two underscores after the section, \
         e.g. HASEQ_RAFT__NODE_ID"
    )]
    EnvName {
        /// The variable's name.
        var: String,
    },

    /// A key that must hold a section (a map of keys) holds a plain value.
    #[error("{key} = {value}: must be a section of keys, not a value{}", origin_suffix(.origin))]
    NotASection {
        /// The section's key, e.g. `raft`.
        key: String,
        /// The value found there, as given.
        value: String,
        /// Where it was set.
        origin: String,
    },

    /// A value of the wrong type, format or range.
    #[error("{key} = {value}: {reason}{}", origin_suffix(.origin))]
    Invalid {
        /// The full dotted key.
        key: String,
        /// The value as given (strings quoted).
        value: String,
        /// What is wrong and what is allowed.
        reason: String,
        /// Where it was set.
        origin: String,
    },

    /// A key that must be set in this configuration is not.
    #[error("{key} is not set; {reason}")]
    Missing {
        /// The full dotted key.
        key: String,
        /// When it is required.
        reason: String,
    },

    /// A duration that must be strictly below another one is not.
    #[error("{key} = {value:?} must be below {limit_key} ({limit_value:?})")]
    NotBelow {
        /// The key that is too large.
        key: String,
        /// Its value, as a duration string.
        value: String,
        /// The key that bounds it.
        limit_key: String,
        /// The bound's value.
        limit_value: String,
    },

    /// A duration that must be at least another one is not.
    #[error("{key} = {value:?} must be at least {limit_key} ({limit_value:?})")]
    NotAtLeast {
        /// The key that is too small.
        key: String,
        /// Its value, as a duration string.
        value: String,
        /// The key that bounds it.
        limit_key: String,
        /// The bound's value.
        limit_value: String,
    },

    /// A setting that needs another setting which is not given.
    #[error("{key} = {value} requires {needed} (it is {actual})")]
    Requires {
        /// The key whose value needs something else.
        key: String,
        /// Its value.
        value: String,
        /// The setting it needs, e.g. `node.aggregator: true`.
        needed: String,
        /// The value that setting has instead.
        actual: String,
    },

    /// An entry of `raft.peers` that is not `id@host:port`.
    #[error("raft.peers: {item:?} is not id@host:port: {reason}")]
    PeerMalformed {
        /// The entry as given.
        item: String,
        /// What is wrong with it.
        reason: String,
    },

    /// `raft.peers` lists this node itself.
    #[error(
        "raft.peers: {item:?} lists this node's own id (raft.node_id = {node_id:?}); \
         peers lists the other members only"
    )]
    PeerOwnId {
        /// The entry as given.
        item: String,
        /// This node's id.
        node_id: String,
    },

    /// `raft.peers` names one id twice.
    #[error("raft.peers: {item:?} repeats the id of {first:?}; each member is listed once")]
    PeerDuplicateId {
        /// The second entry with that id.
        item: String,
        /// The first entry with that id.
        first: String,
    },

    /// `raft.peers` gives one address to two members.
    #[error(
        "raft.peers: {item:?} repeats the address of {first:?}; each member has its own address"
    )]
    PeerDuplicateAddr {
        /// The second entry with that address.
        item: String,
        /// The first entry with that address.
        first: String,
    },

    /// A peer has this node's own `raft.raft_addr`.
    #[error(
        "raft.peers: {item:?} has this node's own address (raft.raft_addr = {raft_addr:?}); \
         peers lists the other members only"
    )]
    PeerOwnAddr {
        /// The entry as given.
        item: String,
        /// This node's raft address.
        raft_addr: String,
    },

    /// A directory that cannot be created or written.
    #[error("{key} = {path:?}: {action}: {source}")]
    Dir {
        /// The key naming the directory, e.g. `raft.raft_dir`.
        key: String,
        /// The directory.
        path: PathBuf,
        /// What was tried, e.g. `cannot create the directory`.
        action: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A file named by a key that cannot be read (missing, a directory, no permission).
    #[error("{key} = {path:?}: cannot read the file: {source}")]
    ReadFile {
        /// The key naming the file, e.g. `raft.secret_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A file named by a key whose content is unusable (empty, too short, wrong size, not hex).
    #[error("{key} = {path:?}: {reason}")]
    FileContent {
        /// The key naming the file.
        key: String,
        /// The file.
        path: PathBuf,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// ` (set in ORIGIN)`, or nothing for a built-in default, so messages stay one short line.
fn origin_suffix(origin: &str) -> String {
    if origin.is_empty() {
        String::new()
    } else {
        format!(" (set in {origin})")
    }
}
