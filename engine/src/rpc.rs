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

/// The Engine API methods the embedded engine's server answers (its `exchangeCapabilities`).
pub(crate) const SERVED_ENGINE_METHODS: &[&str] = &[
    EXCHANGE_CAPABILITIES,
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
/// The server failed (here: storage errors and injected faults).
pub(crate) const SERVER_ERROR: i64 = -32000;
/// `getPayload` for an unknown id.
pub(crate) const UNKNOWN_PAYLOAD: i64 = -38001;
/// Safe or finalized not on the head's chain.
pub(crate) const INVALID_FORKCHOICE_STATE: i64 = -38002;
/// Payload attributes refused (the fork choice itself was applied).
pub(crate) const INVALID_PAYLOAD_ATTRIBUTES: i64 = -38003;
/// A method version that does not match the fork of the timestamp.
pub(crate) const UNSUPPORTED_FORK: i64 = -38005;

/// A JSON-RPC request as sent by the client.
#[derive(Debug, Serialize)]
pub(crate) struct Request<'a, P: Serialize> {
    pub(crate) jsonrpc: &'static str,
    pub(crate) id: u64,
    pub(crate) method: &'a str,
    pub(crate) params: P,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    pub(crate) error: Option<RpcErrorObj>,
}
