//! The embedded engine served over HTTP as an Engine API endpoint (JSON-RPC 2.0, JWT-checked),
//! so that [`crate::EngineApiClient`] is exercised for real and `haseqd engine serve` can stand
//! in for geth or reth.
//!
//! Methods: `engine_exchangeCapabilities`, `engine_forkchoiceUpdatedV3`,
//! `engine_getPayloadV4`/`V5`, `engine_newPayloadV4`, `eth_chainId`, `eth_blockNumber`,
//! `eth_getBlockByNumber`; any other is `-32601 Method not found`. Results use alloy's types,
//! which follow the spec's schemas field for field; payload statuses are written here.
//!
//! The rules of the Engine API specification (ethereum/execution-apis `src/engine/*.md`)
//! followed, each checked by a test of `engine/tests/engine_spec.rs`:
//! - authentication.md: every request needs `Authorization: Bearer <JWT>`, HS256 only
//!   (`none` refused), signed with the shared secret, `iat` within ±60 s, unknown claims
//!   ignored; a refusal is HTTP 401 with `WWW-Authenticate: Bearer` (the spec names no status).
//! - common.md, errors: each code with its message from the table, `data` null, except
//!   `-32000 Server error` whose `data.err` says what failed; JSON-RPC 2.0 envelopes
//!   (`-32700` with id null, `-32600` for a non-request, a missing `"jsonrpc":"2.0"` or a bad
//!   id; notifications get no answer; batches are answered in order, notifications left out).
//! - common.md, capabilities: `engine_exchangeCapabilities` takes an array of strings and
//!   lists the methods served, never itself.
//! - paris/shanghai/cancun.md, `forkchoiceUpdatedV3`: a state that is not a
//!   `ForkchoiceStateV1` is `-32602`; an unknown head is SYNCING with `payloadId` null; safe
//!   or finalized off the head's chain is `-38002`; on a head below the finalized block
//!   nothing is built (VALID, `payloadId` null; the update itself is applied); attributes are checked only once the state is applied (it stays
//!   applied): not a `PayloadAttributesV3`, or a timestamp not above the head's, is `-38003`;
//!   the same attributes give the same `payloadId`, other attributes another.
//! - paris/prague/osaka.md, `getPayloadV4`/`V5`: an unknown id is `-38001`; a payload of the
//!   other fork ([`crate::EmbeddedConfig::osaka_time`]) is `-38005`; blobs bundle empty.
//! - paris/shanghai/cancun/prague.md, `newPayloadV4`: parameters and payload fields must be
//!   exactly those of the spec, none null (`-32602`), execution requests ordered by type,
//!   unique, over one byte (`-32602`); an empty transaction, a wrong block hash (also for a
//!   block already stored) or blob hashes that do not match are INVALID with
//!   `latestValidHash` null; an unknown parent is SYNCING; a known valid block is VALID; a
//!   block that does not follow its valid parent is INVALID with the parent's hash; an
//!   INVALID block is not stored, so no method shows it.
//! - common.md, encoding: quantities without leading zeros.
//!
//! Not applicable, as no such case arises here: `-38005` for `forkchoiceUpdatedV3` and
//! `newPayloadV4` (the chain is Prague or later from genesis and Amsterdam is not scheduled),
//! `-38004` (no `getPayloadBodies`/`getBlobs` served), `-38006` (no reorg limit).

use std::sync::Arc;

use alloy_eips::eip7685::Requests;
use alloy_primitives::{B256, Bytes, U256, keccak256};
use alloy_rpc_types_engine::{
    BlobsBundleV1, BlobsBundleV2, ExecutionPayloadEnvelopeV3, ExecutionPayloadEnvelopeV4,
    ExecutionPayloadEnvelopeV5, ExecutionPayloadV3, ForkchoiceState, PayloadAttributes,
};
use axum::Router;
use axum::body::Bytes as Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use haseq_messages::{BlockHash, Height};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::embedded::{Attributes, BlockRef, EmbeddedEngine, Forkchoice, Imported, Rules};
use crate::error::EngineError;
use crate::jwt::{now_secs, verify_jwt};
use crate::payload::{ExecPayload, from_b256, to_b256};
use crate::rpc::{self, RpcErrorObj};
use crate::types::{PayloadId, PayloadStatus};

/// Requests per batch the server answers; a larger batch is refused whole.
const BATCH_REQUESTS_MAX: usize = 1024;

struct ServerState {
    jwt_secret: [u8; 32],
    engine: Arc<EmbeddedEngine>,
}

/// Serves `engine` on `listener` until `shutdown` is cancelled, then stops accepting and
/// finishes the requests in flight.
///
/// # Errors
/// When accepting connections fails for good (I/O error from the listener).
pub async fn serve(
    listener: TcpListener,
    jwt_secret: [u8; 32],
    engine: Arc<EmbeddedEngine>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Arc::new(ServerState { jwt_secret, engine });
    let app = Router::new().route("/", post(handle)).with_state(state);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "engine API server listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn handle(State(st): State<Arc<ServerState>>, headers: HeaderMap, body: Body) -> Response {
    // RFC 7235: the auth scheme is case-insensitive.
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t);
    let verdict = match token {
        None => Err(crate::jwt::JwtError::Missing),
        Some(t) => verify_jwt(&st.jwt_secret, t.trim(), now_secs()),
    };
    if let Err(e) = verdict {
        tracing::warn!(error = %e, "engine API request refused");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            format!("unauthorized: {e}\n"),
        )
            .into_response();
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(error = %e, "engine API request is not JSON");
            return axum::Json(error_response(Value::Null, rpc_error(rpc::PARSE_ERROR, e)))
                .into_response();
        }
    };
    let answer = match request {
        Value::Array(batch) if batch.is_empty() || batch.len() > BATCH_REQUESTS_MAX => {
            Some(error_response(
                Value::Null,
                rpc_error(
                    rpc::INVALID_REQUEST,
                    format!(
                        "batch of {} requests (1..={BATCH_REQUESTS_MAX} allowed)",
                        batch.len()
                    ),
                ),
            ))
        }
        Value::Array(batch) => {
            let mut out = Vec::with_capacity(batch.len());
            for r in batch {
                out.extend(dispatch(&st.engine, r).await);
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        single => dispatch(&st.engine, single).await,
    };
    match answer {
        Some(v) => axum::Json(v).into_response(),
        // Only notifications: JSON-RPC 2.0 says to return nothing at all.
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// An error of code `code`; `detail` goes to the log, or to `data.err` for `-32000`.
fn rpc_error(code: i64, detail: impl std::fmt::Display) -> RpcErrorObj {
    RpcErrorObj {
        code,
        message: detail.to_string(),
    }
}

/// The response for error `e`: the message of the spec's table for its code, `data` null
/// except for `-32000`, which carries `{"err": detail}` (common.md, Errors).
fn error_response(id: Value, e: RpcErrorObj) -> Value {
    let data = if e.code == rpc::SERVER_ERROR {
        json!({"err": e.message})
    } else {
        Value::Null
    };
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": e.code, "message": rpc::error_message(e.code), "data": data},
    })
}

/// Answers one request; `None` for a notification (no `id`), which gets no response.
async fn dispatch(engine: &EmbeddedEngine, request: Value) -> Option<Value> {
    let invalid =
        |id: Value, why: &str| Some(error_response(id, rpc_error(rpc::INVALID_REQUEST, why)));
    let Value::Object(request) = request else {
        return invalid(Value::Null, "not a request object");
    };
    // JSON-RPC 2.0: an id is a string, a number or null; without one, a notification.
    let id = match request.get("id") {
        None => None,
        Some(v @ (Value::Null | Value::String(_) | Value::Number(_))) => Some(v.clone()),
        Some(_) => return invalid(Value::Null, "id must be a string, a number or null"),
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    if request.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(reply_id, "\"jsonrpc\" must be \"2.0\"");
    }
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return invalid(reply_id, "method must be a string");
    };
    let outcome = match request.get("params") {
        // Null is taken as absent: clients send it for methods without parameters.
        None | Some(Value::Null) => call(engine, method, &[]).await,
        Some(Value::Array(a)) => call(engine, method, a).await,
        Some(Value::Object(_)) => Err(invalid_params(
            "parameters by name are not supported: pass an array".into(),
        )),
        Some(_) => return invalid(reply_id, "params must be an array or an object"),
    };
    if let Err(e) = &outcome {
        tracing::debug!(method, code = e.code, detail = %e.message, "engine API error");
    }
    // A notification is executed all the same; only its answer is dropped.
    let id = id?;
    Some(match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => error_response(id, e),
    })
}

fn invalid_params(message: String) -> RpcErrorObj {
    rpc_error(rpc::INVALID_PARAMS, message)
}

/// Checks that the method got between `min` and `max` parameters.
fn arity(params: &[Value], min: usize, max: usize) -> Result<(), RpcErrorObj> {
    if (min..=max).contains(&params.len()) {
        Ok(())
    } else {
        Err(invalid_params(format!(
            "{} parameters, expected {min}..={max}",
            params.len()
        )))
    }
}

/// Parameter `i` (named `name` in errors), required and not null.
fn param<T: DeserializeOwned>(params: &[Value], i: usize, name: &str) -> Result<T, RpcErrorObj> {
    let v = params
        .get(i)
        .filter(|v| !v.is_null())
        .ok_or_else(|| invalid_params(format!("missing parameter {i} ({name})")))?;
    serde_json::from_value(v.clone())
        .map_err(|e| invalid_params(format!("parameter {i} ({name}): {e}")))
}

/// `v` as the spec's structure `name`: an object with exactly the members `fields`, none
/// null (cancun.md: "Any field having `null` value MUST be considered as not provided"),
/// decoded into `T`.
fn exact<T: DeserializeOwned>(v: &Value, name: &str, fields: &[&str]) -> Result<T, String> {
    let Value::Object(m) = v else {
        return Err(format!("{name}: not an object"));
    };
    if let Some(extra) = m.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(format!("{name}: unknown field {extra:?}"));
    }
    if let Some(missing) = fields
        .iter()
        .find(|f| m.get(**f).is_none_or(Value::is_null))
    {
        return Err(format!("{name}: missing field {missing:?}"));
    }
    serde_json::from_value(v.clone()).map_err(|e| format!("{name}: {e}"))
}

/// The members of `ForkchoiceStateV1` (schemas/forkchoice.yaml).
const FORKCHOICE_STATE_V1: &[&str] = &["headBlockHash", "safeBlockHash", "finalizedBlockHash"];
/// The members of `PayloadAttributesV3` (schemas/forkchoice.yaml).
const PAYLOAD_ATTRIBUTES_V3: &[&str] = &[
    "timestamp",
    "prevRandao",
    "suggestedFeeRecipient",
    "withdrawals",
    "parentBeaconBlockRoot",
];
/// The members of `ExecutionPayloadV3` (schemas/payload.yaml).
const EXECUTION_PAYLOAD_V3: &[&str] = &[
    "parentHash",
    "feeRecipient",
    "stateRoot",
    "receiptsRoot",
    "logsBloom",
    "prevRandao",
    "blockNumber",
    "gasLimit",
    "gasUsed",
    "timestamp",
    "extraData",
    "baseFeePerGas",
    "blockHash",
    "transactions",
    "withdrawals",
    "blobGasUsed",
    "excessBlobGas",
];

fn to_json<T: Serialize>(v: &T) -> Result<Value, RpcErrorObj> {
    serde_json::to_value(v)
        .map_err(|e| rpc_error(rpc::INTERNAL_ERROR, format!("encode result: {e}")))
}

/// Maps the engine's own failures (faults, storage) to JSON-RPC errors.
fn engine_error(e: EngineError) -> RpcErrorObj {
    let code = match &e {
        EngineError::UnknownPayload { .. } => rpc::UNKNOWN_PAYLOAD,
        EngineError::Decode { .. } => rpc::INVALID_PARAMS,
        _ => rpc::SERVER_ERROR,
    };
    rpc_error(code, e)
}

fn quantity(n: u64) -> Value {
    Value::String(format!("{n:#x}"))
}

/// A `PayloadStatusV1` (schemas/payload.yaml): all three members, null where unset.
fn payload_status(
    status: &str,
    latest_valid_hash: Option<BlockHash>,
    error: Option<String>,
) -> Value {
    json!({
        "status": status,
        "latestValidHash": latest_valid_hash.map(|h| h.to_string()),
        "validationError": error,
    })
}

async fn call(
    engine: &EmbeddedEngine,
    method: &str,
    params: &[Value],
) -> Result<Value, RpcErrorObj> {
    match method {
        rpc::EXCHANGE_CAPABILITIES => {
            arity(params, 1, 1)?;
            let _theirs: Vec<String> = param(params, 0, "consensus client methods")?;
            to_json(&rpc::SERVED_ENGINE_METHODS)
        }
        rpc::FORKCHOICE_UPDATED_V3 => forkchoice_updated(engine, params).await,
        rpc::GET_PAYLOAD_V4 => get_payload(engine, rpc::GET_PAYLOAD_V4, params),
        rpc::GET_PAYLOAD_V5 => get_payload(engine, rpc::GET_PAYLOAD_V5, params),
        rpc::NEW_PAYLOAD_V4 => new_payload(engine, params).await,
        rpc::ETH_CHAIN_ID => {
            arity(params, 0, 0)?;
            Ok(quantity(engine.chain_id()))
        }
        rpc::ETH_BLOCK_NUMBER => {
            arity(params, 0, 0)?;
            let p = engine
                .canonical_block(rpc::ETH_BLOCK_NUMBER, BlockRef::Latest)
                .map_err(engine_error)?;
            Ok(quantity(p.map_or(0, |p| p.number().0)))
        }
        rpc::ETH_GET_BLOCK_BY_NUMBER => {
            arity(params, 2, 2)?;
            let tag: String = param(params, 0, "block")?;
            let _hydrated: bool = param(params, 1, "hydrated transactions")?;
            let at = block_ref(&tag)?;
            let found = engine
                .canonical_block(rpc::ETH_GET_BLOCK_BY_NUMBER, at)
                .map_err(engine_error)?;
            match found {
                Some(p) => block_json(&p),
                None => Ok(Value::Null),
            }
        }
        other => Err(rpc_error(
            rpc::METHOD_NOT_FOUND,
            format!("method {other} not found"),
        )),
    }
}

/// `PayloadAttributesV3` as the engine takes them, or why they are not one.
fn attributes_v3(v: &Value) -> Result<Attributes, String> {
    let a: PayloadAttributes = exact(v, "PayloadAttributesV3", PAYLOAD_ATTRIBUTES_V3)?;
    let (Some(withdrawals), Some(root)) = (a.withdrawals, a.parent_beacon_block_root) else {
        return Err("PayloadAttributesV3 needs withdrawals and parentBeaconBlockRoot".into());
    };
    Ok(Attributes {
        timestamp: a.timestamp,
        prev_randao: a.prev_randao,
        fee_recipient: a.suggested_fee_recipient,
        withdrawals,
        parent_beacon_block_root: root,
    })
}

async fn forkchoice_updated(
    engine: &EmbeddedEngine,
    params: &[Value],
) -> Result<Value, RpcErrorObj> {
    arity(params, 1, 2)?;
    let state: ForkchoiceState = params
        .first()
        .ok_or_else(|| "missing".to_string())
        .and_then(|v| exact(v, "ForkchoiceStateV1", FORKCHOICE_STATE_V1))
        .map_err(invalid_params)?;
    // cancun.md: attributes that are not a `PayloadAttributesV3` are -38003, which is answered
    // only once the state is applied (paris.md, point 8): the state is applied without them.
    let (attrs, refused) = match params.get(1) {
        None | Some(Value::Null) => (None, None),
        Some(v) => match attributes_v3(v) {
            Ok(a) => (Some(a), None),
            Err(why) => (None, Some(why)),
        },
    };
    let outcome = engine
        .forkchoice_updated(
            rpc::FORKCHOICE_UPDATED_V3,
            Rules::EngineApi,
            from_b256(state.head_block_hash),
            from_b256(state.safe_block_hash),
            from_b256(state.finalized_block_hash),
            attrs,
        )
        .await
        .map_err(engine_error)?;
    let (status, payload_id) = match outcome {
        Forkchoice::Valid { head, payload_id } => {
            if let Some(why) = refused {
                return Err(rpc_error(rpc::INVALID_PAYLOAD_ATTRIBUTES, why));
            }
            let id = payload_id.map(alloy_rpc_types_engine::PayloadId::from);
            (payload_status("VALID", Some(head), None), to_json(&id)?)
        }
        Forkchoice::BelowFinalized { head } => {
            (payload_status("VALID", Some(head), None), Value::Null)
        }
        Forkchoice::Syncing => (payload_status("SYNCING", None, None), Value::Null),
        Forkchoice::InvalidState(why) => {
            return Err(rpc_error(rpc::INVALID_FORKCHOICE_STATE, why));
        }
        Forkchoice::InvalidAttributes(why) => {
            return Err(rpc_error(rpc::INVALID_PAYLOAD_ATTRIBUTES, why));
        }
    };
    Ok(json!({"payloadStatus": status, "payloadId": payload_id}))
}

/// `engine_getPayloadV4` (Prague payloads) or `V5` (Osaka payloads).
fn get_payload(
    engine: &EmbeddedEngine,
    method: &'static str,
    params: &[Value],
) -> Result<Value, RpcErrorObj> {
    arity(params, 1, 1)?;
    let id: alloy_rpc_types_engine::PayloadId = param(params, 0, "payload id")?;
    let p = engine
        .built_payload(method, PayloadId::from(id))
        .map_err(engine_error)?;
    let osaka = p.timestamp() >= engine.osaka_time();
    if osaka != (method == rpc::GET_PAYLOAD_V5) {
        return Err(rpc_error(
            rpc::UNSUPPORTED_FORK,
            format!(
                "payload timestamp {} is {} (Osaka from {})",
                p.timestamp(),
                if osaka { "Osaka" } else { "Prague" },
                engine.osaka_time()
            ),
        ));
    }
    let requests = Requests::new(p.execution_requests.clone());
    if method == rpc::GET_PAYLOAD_V4 {
        to_json(&ExecutionPayloadEnvelopeV4 {
            envelope_inner: ExecutionPayloadEnvelopeV3 {
                execution_payload: p.payload,
                block_value: U256::ZERO,
                blobs_bundle: BlobsBundleV1::empty(),
                should_override_builder: false,
            },
            execution_requests: requests,
        })
    } else {
        to_json(&ExecutionPayloadEnvelopeV5 {
            execution_payload: p.payload,
            block_value: U256::ZERO,
            blobs_bundle: BlobsBundleV2::empty(),
            should_override_builder: false,
            execution_requests: requests,
        })
    }
}

/// prague.md: ordered by ascending type, one per type, each over one byte.
fn check_execution_requests(requests: &[Bytes]) -> Result<(), String> {
    let mut previous: Option<u8> = None;
    for (i, r) in requests.iter().enumerate() {
        let Some((&kind, _)) = r.split_first().filter(|_| r.len() > 1) else {
            return Err(format!(
                "execution request {i} is {} bytes, needs over 1",
                r.len()
            ));
        };
        if previous.is_some_and(|p| p >= kind) {
            return Err(format!(
                "execution request {i} of type {kind} is out of order or repeated"
            ));
        }
        previous = Some(kind);
    }
    Ok(())
}

async fn new_payload(engine: &EmbeddedEngine, params: &[Value]) -> Result<Value, RpcErrorObj> {
    arity(params, 4, 4)?;
    let payload: ExecutionPayloadV3 =
        exact(&params[0], "ExecutionPayloadV3", EXECUTION_PAYLOAD_V3).map_err(invalid_params)?;
    let versioned_hashes: Vec<B256> = param(params, 1, "expected blob versioned hashes")?;
    let parent_beacon_block_root: B256 = param(params, 2, "parent beacon block root")?;
    let execution_requests: Vec<Bytes> = param(params, 3, "execution requests")?;
    check_execution_requests(&execution_requests).map_err(invalid_params)?;
    let p = ExecPayload {
        payload,
        parent_beacon_block_root,
        execution_requests,
    };
    let transactions = &p.payload.payload_inner.payload_inner.transactions;
    // Checked before anything else, whatever the chain knows (paris.md, cancun.md).
    let refused = if let Some(i) = transactions.iter().position(|t| t.is_empty()) {
        Some(format!("transaction {i} is empty"))
    } else if !versioned_hashes.is_empty() {
        // Embedded blocks carry no blob transactions, so the only matching list is empty.
        Some(format!(
            "expected 0 blob versioned hashes (no blob transactions), got {}",
            versioned_hashes.len()
        ))
    } else {
        None
    };
    let imported = match refused {
        Some(reason) => Imported {
            status: PayloadStatus::Invalid { reason },
            latest_valid_hash: None,
        },
        None => engine
            .import(rpc::NEW_PAYLOAD_V4, Rules::EngineApi, p)
            .await
            .map_err(engine_error)?,
    };
    let lvh = imported.latest_valid_hash;
    Ok(match imported.status {
        PayloadStatus::Valid => payload_status("VALID", lvh, None),
        PayloadStatus::Invalid { reason } => payload_status("INVALID", lvh, Some(reason)),
        PayloadStatus::Syncing => payload_status("SYNCING", lvh, None),
    })
}

/// `BlockNumberOrTag`: a hex quantity or one of the tags.
fn block_ref(tag: &str) -> Result<BlockRef, RpcErrorObj> {
    Ok(match tag {
        "latest" | "pending" => BlockRef::Latest,
        "safe" => BlockRef::Safe,
        "finalized" => BlockRef::Finalized,
        "earliest" => BlockRef::Number(Height(0)),
        hex => {
            let digits = hex.strip_prefix("0x").ok_or_else(|| {
                invalid_params(format!("block {hex:?}: not a tag or 0x quantity"))
            })?;
            let n = u64::from_str_radix(digits, 16)
                .map_err(|e| invalid_params(format!("block {hex:?}: {e}")))?;
            BlockRef::Number(Height(n))
        }
    })
}

/// The spec's `Block` object. Transactions are listed by hash even when hydrated ones are
/// asked for: embedded transactions are opaque bytes, not decodable transactions.
fn block_json(p: &ExecPayload) -> Result<Value, RpcErrorObj> {
    let block = p.block().map_err(|e| {
        rpc_error(
            rpc::SERVER_ERROR,
            format!("stored block {} is not a valid block: {e}", p.number()),
        )
    })?;
    let size = alloy_rlp::Encodable::length(&block) as u64;
    let mut v = to_json(&block.header)?;
    let tx_hashes: Vec<B256> = block.body.transactions.iter().map(keccak256).collect();
    if let Value::Object(m) = &mut v {
        m.insert("hash".into(), to_json(&to_b256(p.block_hash()))?);
        m.insert("size".into(), quantity(size));
        m.insert("transactions".into(), to_json(&tx_hashes)?);
        m.insert("uncles".into(), json!([]));
        m.insert(
            "withdrawals".into(),
            to_json(&block.body.withdrawals.unwrap_or_default())?,
        );
    }
    Ok(v)
}
