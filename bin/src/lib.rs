//! haseqd: the daemon of haseq, a highly available block sequencer on Raft.
//!
//! The library half of the `haseqd` package holds what the binary and its tests share:
//! - `config`: the node's configuration, layered (built-in defaults, YAML file, `HASEQ_`
//!   environment variables, command-line overrides), typed and validated at start-up, with the
//!   operator guide's `raft` keys, value formats and defaults.
//!
//! Not here: the CLI, signal handling and the devnet, which live in the binary (`main.rs`).

pub mod config;
