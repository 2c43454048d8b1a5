//! JSON-RPC 2.0 envelopes and the Engine API's method names and error codes, shared by the
//! server and the client.

use serde::{Deserialize, Serialize};

/// `engine_exchangeCapabilities`.
pub(crate) const EXCHANGE_CAPABILITIES: &str = "engine_exchangeCapabilities";
/// Fork choice, with or without payload attributes (Cancun and later: V3).
pub(crate) const FORKCHOICE_UPDATED_V3: &str = "engine_forkchoiceUpdatedV3";
/// The built payload, Prague layout (blobs bundle V1).
pub(crate) const GET_PAYLOAD_V4: &str = "engine_getPayloadV4";
/// The built payload, Osaka layout (blobs bundle V2).
pub(crate) const GET_PAYLOAD_V5: &str = "engine_getPayloadV5";
/// Import a payload (Prague and Osaka).
pub(crate) const NEW_PAYLOAD_V4: &str = "engine_newPayloadV4";
/// `eth_chainId`.
pub(crate) const ETH_CHAIN_ID: &str = "eth_chainId";
/// `eth_blockNumber`.
pub(crate) const ETH_BLOCK_NUMBER: &str = "eth_blockNumber";
/// `eth_getBlockByNumber`.
pub(crate) const ETH_GET_BLOCK_BY_NUMBER: &str = "eth_getBlockByNumber";

/// The Engine API methods the embedded engine's server answers, as its
/// `exchangeCapabilities` lists them: without `engine_exchangeCapabilities` itself, which
/// "MUST NOT be returned in the response list" (common.md).
pub(crate) const SERVED_ENGINE_METHODS: &[&str] = &[
    FORKCHOICE_UPDATED_V3,
    GET_PAYLOAD_V4,
    GET_PAYLOAD_V5,
    NEW_PAYLOAD_V4,
];

/// Invalid JSON.
pub(crate) const PARSE_ERROR: i64 = -32700;
/// Not a JSON-RPC request object.
pub(crate) const INVALID_REQUEST: i64 = -32600;
/// No such method.
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
/// Parameters that do not fit the method's schema.
pub(crate) const INVALID_PARAMS: i64 = -32602;
/// Internal JSON-RPC error (here: a result that cannot be encoded).
pub(crate) const INTERNAL_ERROR: i64 = -32603;
/// The server failed (here: storage errors and injected faults).
pub(crate) const SERVER_ERROR: i64 = -32000;
/// `getPayload` for an unknown id.
pub(crate) const UNKNOWN_PAYLOAD: i64 = -38001;
/// Safe or finalized not on the head's chain.
pub(crate) const INVALID_FORKCHOICE_STATE: i64 = -38002;
/// Payload attributes refused (the fork choice itself was applied).
pub(crate) const INVALID_PAYLOAD_ATTRIBUTES: i64 = -38003;
/// Too many entities asked for (no method served here can ask for many).
pub(crate) const TOO_LARGE_REQUEST: i64 = -38004;
/// A method version that does not match the fork of the timestamp.
pub(crate) const UNSUPPORTED_FORK: i64 = -38005;
/// A reorg deeper than the client allows (the embedded engine has no limit).
pub(crate) const TOO_DEEP_REORG: i64 = -38006;

/// The message of error `code` in the table of common.md ("Errors").
pub(crate) fn error_message(code: i64) -> &'static str {
    match code {
        PARSE_ERROR => "Parse error",
        INVALID_REQUEST => "Invalid Request",
        METHOD_NOT_FOUND => "Method not found",
        INVALID_PARAMS => "Invalid params",
        INTERNAL_ERROR => "Internal error",
        UNKNOWN_PAYLOAD => "Unknown payload",
        INVALID_FORKCHOICE_STATE => "Invalid forkchoice state",
        INVALID_PAYLOAD_ATTRIBUTES => "Invalid payload attributes",
        TOO_LARGE_REQUEST => "Too large request",
        UNSUPPORTED_FORK => "Unsupported fork",
        TOO_DEEP_REORG => "Too deep reorg",
        _ => "Server error",
    }
}

/// A JSON-RPC request as sent by the client.
#[derive(Debug, Serialize)]
pub(crate) struct Request<'a, P: Serialize> {
    pub(crate) jsonrpc: &'static str,
    pub(crate) id: u64,
    pub(crate) method: &'a str,
    pub(crate) params: P,
}

/// A JSON-RPC error as the server makes it: the code, and the detail it logs (or, for
/// `-32000`, sends as `data.err`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RpcErrorObj {
    pub(crate) code: i64,
    pub(crate) message: String,
}

/// A JSON-RPC response as the client reads it.
#[derive(Debug, Deserialize)]
pub(crate) struct Response {
    #[serde(default)]
    pub(crate) result: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) error: Option<ResponseError>,
}

/// A JSON-RPC error object as the client reads it: `data` is null, or for `-32000` (common.md)
/// `{"err": "what failed"}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ResponseError {
    pub(crate) code: i64,
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) data: Option<serde_json::Value>,
}

impl ResponseError {
    /// The message, with `data.err` after it when there is one.
    pub(crate) fn detail(&self) -> String {
        match self
            .data
            .as_ref()
            .and_then(|d| d.get("err"))
            .and_then(|e| e.as_str())
        {
            Some(err) => format!("{}: {err}", self.message),
            None => self.message.clone(),
        }
    }
}
