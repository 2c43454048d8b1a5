//! The embedded engine served over HTTP as an Engine API endpoint (JSON-RPC 2.0, JWT-checked),
//! so that [`crate::EngineApiClient`] is exercised for real and `haseqd engine serve` can stand
//! in for geth or reth.
//!
//! Methods: `engine_exchangeCapabilities`, `engine_forkchoiceUpdatedV3`,
//! `engine_getPayloadV4`/`V5`, `engine_newPayloadV4`, `eth_chainId`, `eth_blockNumber`,
//! `eth_getBlockByNumber`. Requests and results use alloy's types, which follow the spec's
//! schemas field for field. Every request needs `Authorization: Bearer <HS256 JWT>` with a
//! fresh `iat`; otherwise 401. Batches (JSON arrays) are answered in order.

use std::sync::Arc;

use alloy_eips::eip7685::Requests;
use alloy_primitives::{B256, Bytes, U256, keccak256};
use alloy_rpc_types_engine::{
    BlobsBundleV1, BlobsBundleV2, ExecutionPayloadEnvelopeV3, ExecutionPayloadEnvelopeV4,
    ExecutionPayloadEnvelopeV5, ExecutionPayloadV3, ForkchoiceState, ForkchoiceUpdated,
    PayloadAttributes, PayloadStatusEnum,
};
use axum::Router;
use axum::body::Bytes as Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use haseq_messages::Height;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::embedded::{Attributes, BlockRef, EmbeddedEngine, Forkchoice, Imported};
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
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let verdict = match token {
        None => Err(crate::jwt::JwtError::Missing),
        Some(t) => verify_jwt(&st.jwt_secret, t.trim(), now_secs()),
    };
    if let Err(e) = verdict {
        tracing::warn!(error = %e, "engine API request refused");
        return (StatusCode::UNAUTHORIZED, format!("unauthorized: {e}\n")).into_response();
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return axum::Json(error_response(
                Value::Null,
                RpcErrorObj {
                    code: rpc::PARSE_ERROR,
                    message: format!("parse error: {e}"),
                },
            ))
            .into_response();
        }
    };
    let answer = match request {
        Value::Array(batch) if batch.is_empty() || batch.len() > BATCH_REQUESTS_MAX => {
            error_response(
                Value::Null,
                RpcErrorObj {
                    code: rpc::INVALID_REQUEST,
                    message: format!(
                        "batch of {} requests (1..={BATCH_REQUESTS_MAX} allowed)",
                        batch.len()
                    ),
                },
            )
        }
        Value::Array(batch) => {
            let mut out = Vec::with_capacity(batch.len());
            for r in batch {
                out.push(dispatch(&st.engine, r).await);
            }
            Value::Array(out)
        }
        single => dispatch(&st.engine, single).await,
    };
    axum::Json(answer).into_response()
}

fn error_response(id: Value, e: RpcErrorObj) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": e.code, "message": e.message}})
}

async fn dispatch(engine: &EmbeddedEngine, request: Value) -> Value {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return error_response(
            id,
            RpcErrorObj {
                code: rpc::INVALID_REQUEST,
                message: "no method".into(),
            },
        );
    };
    let params = match request.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            return error_response(
                id,
                RpcErrorObj {
                    code: rpc::INVALID_PARAMS,
                    message: "params must be an array".into(),
                },
            );
        }
    };
    match call(engine, method, &params).await {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => {
            tracing::debug!(method, code = e.code, message = %e.message, "engine API error");
            error_response(id, e)
        }
    }
}

fn invalid_params(message: String) -> RpcErrorObj {
    RpcErrorObj {
        code: rpc::INVALID_PARAMS,
        message,
    }
}

/// Parameter `i` (named `name` in errors), required.
fn param<T: DeserializeOwned>(params: &[Value], i: usize, name: &str) -> Result<T, RpcErrorObj> {
    let v = params
        .get(i)
        .ok_or_else(|| invalid_params(format!("missing parameter {i} ({name})")))?;
    serde_json::from_value(v.clone())
        .map_err(|e| invalid_params(format!("parameter {i} ({name}): {e}")))
}

/// Parameter `i`, optional (absent or null).
fn opt_param<T: DeserializeOwned>(
    params: &[Value],
    i: usize,
    name: &str,
) -> Result<Option<T>, RpcErrorObj> {
    match params.get(i) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => param(params, i, name).map(Some),
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Value, RpcErrorObj> {
    serde_json::to_value(v).map_err(|e| RpcErrorObj {
        code: rpc::SERVER_ERROR,
        message: format!("encode result: {e}"),
    })
}

/// Maps the engine's own failures (faults, storage) to JSON-RPC errors.
fn engine_error(e: EngineError) -> RpcErrorObj {
    let code = match &e {
        EngineError::UnknownPayload { .. } => rpc::UNKNOWN_PAYLOAD,
        EngineError::Decode { .. } => rpc::INVALID_PARAMS,
        _ => rpc::SERVER_ERROR,
    };
    RpcErrorObj {
        code,
        message: e.to_string(),
    }
}

fn quantity(n: u64) -> Value {
    Value::String(format!("{n:#x}"))
}

async fn call(
    engine: &EmbeddedEngine,
    method: &str,
    params: &[Value],
) -> Result<Value, RpcErrorObj> {
    match method {
        rpc::EXCHANGE_CAPABILITIES => {
            let _theirs: Vec<String> = param(params, 0, "consensus client methods")?;
            to_json(&rpc::SERVED_ENGINE_METHODS)
        }
        rpc::FORKCHOICE_UPDATED_V3 => forkchoice_updated(engine, params).await,
        rpc::GET_PAYLOAD_V4 | rpc::GET_PAYLOAD_V5 => {
            let id: alloy_rpc_types_engine::PayloadId = param(params, 0, "payload id")?;
            let p = engine
                .built_payload(rpc::GET_PAYLOAD_V5, PayloadId::from(id))
                .map_err(engine_error)?;
            get_payload_result(method, p)
        }
        rpc::NEW_PAYLOAD_V4 => new_payload(engine, params).await,
        rpc::ETH_CHAIN_ID => Ok(quantity(engine.chain_id())),
        rpc::ETH_BLOCK_NUMBER => {
            let p = engine
                .canonical_block(rpc::ETH_BLOCK_NUMBER, BlockRef::Latest)
                .map_err(engine_error)?;
            Ok(quantity(p.map_or(0, |p| p.number().0)))
        }
        rpc::ETH_GET_BLOCK_BY_NUMBER => {
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
        other => Err(RpcErrorObj {
            code: rpc::METHOD_NOT_FOUND,
            message: format!("method {other} not found"),
        }),
    }
}

async fn forkchoice_updated(
    engine: &EmbeddedEngine,
    params: &[Value],
) -> Result<Value, RpcErrorObj> {
    let state: ForkchoiceState = param(params, 0, "forkchoice state")?;
    let attrs: Option<PayloadAttributes> = opt_param(params, 1, "payload attributes")?;
    let attrs = match attrs {
        None => None,
        Some(a) => {
            // V3 attributes carry both; a V1/V2 shape sent to V3 is invalid params.
            let (Some(withdrawals), Some(root)) = (a.withdrawals, a.parent_beacon_block_root)
            else {
                return Err(invalid_params(
                    "PayloadAttributesV3 needs withdrawals and parentBeaconBlockRoot".into(),
                ));
            };
            Some(Attributes {
                timestamp: a.timestamp,
                prev_randao: a.prev_randao,
                fee_recipient: a.suggested_fee_recipient,
                withdrawals,
                parent_beacon_block_root: root,
            })
        }
    };
    let outcome = engine
        .forkchoice_updated(
            rpc::FORKCHOICE_UPDATED_V3,
            from_b256(state.head_block_hash),
            from_b256(state.safe_block_hash),
            from_b256(state.finalized_block_hash),
            attrs,
        )
        .await
        .map_err(engine_error)?;
    let result = match outcome {
        Forkchoice::Valid { head, payload_id } => ForkchoiceUpdated {
            payload_status: alloy_rpc_types_engine::PayloadStatus::new(
                PayloadStatusEnum::Valid,
                Some(to_b256(head)),
            ),
            payload_id: payload_id.map(Into::into),
        },
        Forkchoice::Syncing => ForkchoiceUpdated::from_status(PayloadStatusEnum::Syncing),
        Forkchoice::InvalidState(message) => {
            return Err(RpcErrorObj {
                code: rpc::INVALID_FORKCHOICE_STATE,
                message: format!("Invalid forkchoice state: {message}"),
            });
        }
        Forkchoice::InvalidAttributes(message) => {
            return Err(RpcErrorObj {
                code: rpc::INVALID_PAYLOAD_ATTRIBUTES,
                message: format!("Invalid payload attributes: {message}"),
            });
        }
    };
    to_json(&result)
}

fn get_payload_result(method: &str, p: ExecPayload) -> Result<Value, RpcErrorObj> {
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

async fn new_payload(engine: &EmbeddedEngine, params: &[Value]) -> Result<Value, RpcErrorObj> {
    let payload: ExecutionPayloadV3 = param(params, 0, "execution payload")?;
    let versioned_hashes: Vec<B256> = param(params, 1, "expected blob versioned hashes")?;
    let parent_beacon_block_root: B256 = param(params, 2, "parent beacon block root")?;
    let execution_requests: Vec<Bytes> = param(params, 3, "execution requests")?;
    let p = ExecPayload {
        payload,
        parent_beacon_block_root,
        execution_requests,
    };
    let imported = if versioned_hashes.is_empty() {
        engine
            .import(rpc::NEW_PAYLOAD_V4, p)
            .await
            .map_err(engine_error)?
    } else {
        // Embedded blocks carry no blob transactions, so the only matching list is empty.
        Imported {
            status: PayloadStatus::Invalid {
                reason: format!(
                    "expected 0 blob versioned hashes (no blob transactions), got {}",
                    versioned_hashes.len()
                ),
            },
            latest_valid_hash: None,
        }
    };
    let status = match imported.status {
        PayloadStatus::Valid => PayloadStatusEnum::Valid,
        PayloadStatus::Invalid { reason } => PayloadStatusEnum::Invalid {
            validation_error: reason,
        },
        PayloadStatus::Syncing => PayloadStatusEnum::Syncing,
    };
    to_json(&alloy_rpc_types_engine::PayloadStatus::new(
        status,
        imported.latest_valid_hash.map(to_b256),
    ))
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
    let block = p.block().map_err(|e| RpcErrorObj {
        code: rpc::SERVER_ERROR,
        message: format!("stored block {} is not a valid block: {e}", p.number()),
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
