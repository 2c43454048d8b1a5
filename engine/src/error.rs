//! `EngineError`: every way an engine call can fail, with the context to act on it.

use std::time::Duration;

use haseq_messages::BlockHash;

use crate::types::PayloadId;

/// An engine call failed. Each variant names the call (`method`) and carries the values that
/// explain it; [`EngineError::is_retryable`] tells the transport failures (worth another try)
/// from the answers (a rejected payload is never retried: the same bytes get the same verdict).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The request did not get an answer: connection refused or reset, timeout, HTTP 5xx.
    #[error("{method} to {url}: transport: {detail}")]
    Transport {
        /// The Engine API or trait method.
        method: &'static str,
        /// The endpoint.
        url: String,
        /// What happened, as the transport reported it.
        detail: String,
    },
    /// No answer within the per-call deadline.
    #[error("{method} to {url}: no answer within {after:?}")]
    Timeout {
        /// The Engine API or trait method.
        method: &'static str,
        /// The endpoint.
        url: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The endpoint refused our credentials (HTTP 401/403): wrong JWT secret or clock skew.
    #[error(
        "{method} to {url}: authentication refused (HTTP {status}); check engine.jwt_secret and the clocks"
    )]
    Auth {
        /// The Engine API or trait method.
        method: &'static str,
        /// The endpoint.
        url: String,
        /// The HTTP status received.
        status: u16,
    },
    /// The engine refused the request on its merits (invalid forkchoice state, invalid
    /// attributes, a build on a block it deems invalid). Never retried.
    #[error("{method}: rejected{}: {reason}", block_context(*number, *hash))]
    Rejected {
        /// The trait method.
        method: &'static str,
        /// The block number concerned, when known.
        number: Option<u64>,
        /// The block hash concerned, when known.
        hash: Option<BlockHash>,
        /// The engine's reason, with expected vs got where it applies.
        reason: String,
    },
    /// The engine does not have this block (Engine API status `SYNCING`): import it first.
    #[error("{method}: engine does not have block {hash} (SYNCING)")]
    Syncing {
        /// The trait method.
        method: &'static str,
        /// The block the engine lacks.
        hash: BlockHash,
    },
    /// `get_payload` for an id the engine does not know (never built, or evicted).
    #[error("{method}: unknown payload {id}")]
    UnknownPayload {
        /// The trait method.
        method: &'static str,
        /// The payload id asked for.
        id: PayloadId,
    },
    /// A failure injected by the embedded engine's `fail` knob.
    #[error("{method}: injected fault (embedded engine `fail` knob is on)")]
    Fault {
        /// The trait method.
        method: &'static str,
    },
    /// The endpoint answered with a JSON-RPC error this crate has no better name for.
    #[error("{method}: JSON-RPC error {code}: {message}")]
    Rpc {
        /// The Engine API method.
        method: &'static str,
        /// The JSON-RPC error code.
        code: i64,
        /// The JSON-RPC error message.
        message: String,
    },
    /// Bytes that should be a payload, a response or a record did not decode.
    #[error("{method}: cannot decode {what}: {detail}")]
    Decode {
        /// The trait method.
        method: &'static str,
        /// What was being decoded.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// The answer decoded but contradicts the request (e.g. a payload built on another parent).
    #[error("{method}: unexpected answer: {what}: expected {expected}, got {got}")]
    Mismatch {
        /// The trait method.
        method: &'static str,
        /// Which value disagrees.
        what: &'static str,
        /// What we asked for or derived.
        expected: String,
        /// What the engine said.
        got: String,
    },
    /// A configuration value the engine cannot work with.
    #[error("engine config {key} = {value}: {reason}")]
    Config {
        /// The configuration key, e.g. `engine.embedded.tx_bytes`.
        key: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The embedded engine's own storage failed.
    #[error("embedded engine storage: {op}: {detail}")]
    Storage {
        /// The operation, e.g. `open environment at /path` or `commit new_payload`.
        op: String,
        /// The LMDB or I/O error.
        detail: String,
    },
}

/// ` (block 12 0xab…)` for the messages above, empty when nothing is known.
fn block_context(number: Option<u64>, hash: Option<BlockHash>) -> String {
    match (number, hash) {
        (Some(n), Some(h)) => format!(" (block {n} {h})"),
        (Some(n), None) => format!(" (block {n})"),
        (None, Some(h)) => format!(" (block {h})"),
        (None, None) => String::new(),
    }
}

impl EngineError {
    /// Whether trying the same call again may succeed: transport failures and timeouts only.
    /// A rejection, an auth failure or an unknown payload would get the same answer.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EngineError::Transport { .. } | EngineError::Timeout { .. }
        )
    }

    /// Builds a [`EngineError::Storage`] from an operation name and an error.
    pub(crate) fn storage(op: impl Into<String>, err: impl std::fmt::Display) -> EngineError {
        EngineError::Storage {
            op: op.into(),
            detail: err.to_string(),
        }
    }
}

/// The embedded engine's LMDB environment and writer thread are the storage crate's toolkit
/// (`haseq_storage::lmdb`), whose errors are its own; each says what it was doing.
impl From<haseq_storage::StorageError> for EngineError {
    fn from(e: haseq_storage::StorageError) -> Self {
        EngineError::storage("LMDB", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transport_failures_are_retryable() {
        let t = EngineError::Transport {
            method: "head",
            url: "http://x".into(),
            detail: "refused".into(),
        };
        assert!(t.is_retryable());
        let r = EngineError::Rejected {
            method: "new_payload",
            number: Some(3),
            hash: Some(BlockHash([1; 32])),
            reason: "bad".into(),
        };
        assert!(!r.is_retryable());
        assert!(r.to_string().contains("block 3 0x0101"), "{r}");
        let a = EngineError::Auth {
            method: "head",
            url: "http://x".into(),
            status: 401,
        };
        assert!(!a.is_retryable());
        assert!(a.to_string().contains("401"));
    }
}
