//! haseq-engine: how haseq drives an execution client.
//!
//! - [`ExecutionEngine`] (`engine`): the trait the node uses: build a block on a head, fetch it,
//!   import a block, move the canonical head, read the head back. Object-safe.
//! - `types`, `payload`: the values it speaks; the execution payload with its compact binary
//!   form for the Raft log ([`encode_payload`], [`decode_payload`]) and its header hash.
//! - [`EmbeddedEngine`] (`embedded`): an in-process engine persisted in its own LMDB
//!   environment, with real header hashes, synthetic transactions and fault knobs.
//! - [`EngineApiClient`] (`client`): the trait over the Engine API (JSON-RPC over HTTP with
//!   JWT, timeouts, retries with backoff on transport errors only), for geth, reth or [`serve`].
//! - [`serve`] (`server`): the embedded engine as an Engine API JSON-RPC endpoint over HTTP,
//!   JWT-authenticated (`jwt`; method names and error codes in `rpc`).
//! - `error`: [`EngineError`], telling retryable transport failures from final answers.
//! - `metrics`: `haseq_engine_call_seconds{method}`, `haseq_engine_errors_total{method}`.
//!
//! Not here: when to build or replay (the actors decide), the Raft log, the block store.

mod client;
mod embedded;
mod engine;
mod error;
mod jwt;
mod metrics;
mod payload;
mod rpc;
mod server;
mod types;

pub use client::{EngineApiClient, EngineApiConfig};
pub use embedded::{
    CHAIN_ID_DEFAULT, EmbeddedConfig, EmbeddedEngine, Faults, MAP_SIZE_BYTES_DEFAULT,
    SYNTHETIC_BLOCK_BYTES_MAX,
};
pub use engine::{EngineFuture, ExecutionEngine};
pub use error::EngineError;
pub use jwt::{
    JWT_IAT_WINDOW, JwtError, jwt_token, parse_jwt_secret, read_jwt_secret_file, verify_jwt,
};
pub use metrics::{CALL_SECONDS, ERRORS_TOTAL, describe_metrics, zero_metrics};
pub use payload::{ExecPayload, decode_payload, encode_payload};
pub use server::serve;
pub use types::{BuildParams, BuiltPayload, PayloadId, PayloadStatus};
