//! `EngineApiClient`: the [`ExecutionEngine`] over the Engine API (JSON-RPC over HTTP, HS256
//! JWT), for geth, reth, or the embedded engine's own server.
//!
//! Methods used: `engine_forkchoiceUpdatedV3`, `engine_getPayloadV5` (falling back to `V4` once
//! for a Prague-only client), `engine_newPayloadV4`, and `eth_getBlockByNumber` to read the head.
//! Every call has a deadline; transport failures (refused, reset, timeout, HTTP 5xx) are retried
//! with capped exponential backoff, answers never are (an `INVALID` payload stays invalid).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use alloy_primitives::{Address, B256, Bytes as AlloyBytes};
use alloy_rpc_types_engine::{
    ExecutionPayloadEnvelopeV4, ExecutionPayloadEnvelopeV5, ForkchoiceState, ForkchoiceUpdated,
    PayloadAttributes, PayloadStatusEnum,
};
use bytes::Bytes;
use haseq_messages::{BlockHash, Height};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::engine::{EngineFuture, ExecutionEngine};
use crate::error::EngineError;
use crate::jwt::{jwt_token, now_secs};
use crate::metrics::instrument;
use crate::payload::{ExecPayload, decode_payload, from_b256, to_b256};
use crate::rpc;
use crate::types::{BuildParams, BuiltPayload, PayloadId, PayloadStatus};

/// Builds whose parent we remember, to check what `get_payload` returns.
const PENDING_BUILDS_MAX: usize = 64;
/// Bytes of an unexpected HTTP body quoted in an error.
const BODY_QUOTE_BYTES_MAX: usize = 200;

/// How to reach an Engine API endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineApiConfig {
    /// `http://host:port` of the authenticated Engine API (`engine.url`).
    pub url: String,
    /// The shared JWT secret (`engine.jwt_secret`, read with [`crate::parse_jwt_secret`]).
    pub jwt_secret: [u8; 32],
    /// Deadline for one HTTP round trip.
    pub call_timeout: Duration,
    /// Further attempts after a transport failure (0: no retry).
    pub retries_max: u32,
    /// Wait before the first retry; doubled each time up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Ceiling of the wait between retries.
    pub backoff_max: Duration,
}

impl EngineApiConfig {
    /// Defaults: 5 s per call, 3 retries, backoff 50 ms doubling to 1 s.
    pub fn new(url: impl Into<String>, jwt_secret: [u8; 32]) -> Self {
        EngineApiConfig {
            url: url.into(),
            jwt_secret,
            call_timeout: Duration::from_secs(5),
            retries_max: 3,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// An Engine API client implementing [`ExecutionEngine`]. Cheap to share behind an `Arc`;
/// connections are pooled and reused.
pub struct EngineApiClient {
    config: EngineApiConfig,
    uri: Uri,
    http: Client<HttpConnector, Full<Bytes>>,
    next_id: AtomicU64,
    /// Set once the endpoint refused `engine_getPayloadV5` as unsupported.
    use_get_payload_v4: AtomicBool,
    /// (id, parent, parent height) of recent builds, oldest first.
    pending: Mutex<VecDeque<(PayloadId, BlockHash, Height)>>,
}

fn quantity_u64(v: &Value, what: &'static str, method: &'static str) -> Result<u64, EngineError> {
    let bad = |detail: String| EngineError::Decode {
        method,
        what,
        detail,
    };
    let s = v
        .as_str()
        .ok_or_else(|| bad(format!("not a string: {v}")))?;
    let digits = s
        .strip_prefix("0x")
        .ok_or_else(|| bad(format!("{s:?} has no 0x prefix")))?;
    u64::from_str_radix(digits, 16).map_err(|e| bad(format!("{s:?}: {e}")))
}

impl EngineApiClient {
    /// A client for `config.url`. Connects lazily, on the first call.
    ///
    /// # Errors
    /// [`EngineError::Config`] when the URL is not an `http://` URL (TLS is not supported: the
    /// Engine API is served on a local or private address).
    pub fn new(config: EngineApiConfig) -> Result<EngineApiClient, EngineError> {
        let uri: Uri = config.url.parse().map_err(|e| EngineError::Config {
            key: "engine.url",
            value: config.url.clone(),
            reason: format!("not a URL: {e}"),
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(EngineError::Config {
                key: "engine.url",
                value: config.url.clone(),
                reason: "expected http://host:port".into(),
            });
        }
        let http = Client::builder(TokioExecutor::new()).build_http();
        Ok(EngineApiClient {
            config,
            uri,
            http,
            next_id: AtomicU64::new(1),
            use_get_payload_v4: AtomicBool::new(false),
            pending: Mutex::new(VecDeque::new()),
        })
    }

    /// The endpoint's Engine API methods (`engine_exchangeCapabilities`), offering ours.
    ///
    /// # Errors
    /// Transport, auth and JSON-RPC errors.
    pub async fn exchange_capabilities(&self) -> Result<Vec<String>, EngineError> {
        let ours = [
            rpc::FORKCHOICE_UPDATED_V3,
            rpc::GET_PAYLOAD_V4,
            rpc::GET_PAYLOAD_V5,
            rpc::NEW_PAYLOAD_V4,
        ];
        self.call(rpc::EXCHANGE_CAPABILITIES, (ours,)).await
    }

    /// The endpoint's chain id (`eth_chainId`).
    ///
    /// # Errors
    /// Transport, auth and JSON-RPC errors.
    pub async fn chain_id(&self) -> Result<u64, EngineError> {
        let v: Value = self.call(rpc::ETH_CHAIN_ID, ()).await?;
        quantity_u64(&v, "chain id", rpc::ETH_CHAIN_ID)
    }

    /// One JSON-RPC call with retries on transport failures only.
    async fn call<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &'static str,
        params: P,
    ) -> Result<R, EngineError> {
        let body = serde_json::to_vec(&rpc::Request {
            jsonrpc: "2.0",
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            method,
            params,
        })
        .map_err(|e| EngineError::Decode {
            method,
            what: "request (encode)",
            detail: e.to_string(),
        })?;
        let body = Bytes::from(body);
        let mut backoff = self.config.backoff_initial;
        let mut attempt = 0;
        let result = loop {
            match self.call_once(method, body.clone()).await {
                Err(e) if e.is_retryable() && attempt < self.config.retries_max => {
                    tracing::debug!(method, attempt, error = %e, ?backoff, "engine call failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.backoff_max);
                    attempt += 1;
                }
                other => break other,
            }
        }?;
        serde_json::from_value(result).map_err(|e| EngineError::Decode {
            method,
            what: "result",
            detail: e.to_string(),
        })
    }

    /// One HTTP round trip under the call deadline; returns the JSON-RPC `result`.
    async fn call_once(&self, method: &'static str, body: Bytes) -> Result<Value, EngineError> {
        let url = &self.config.url;
        let transport = |detail: String| EngineError::Transport {
            method,
            url: url.clone(),
            detail,
        };
        // A fresh token per request: its `iat` must be within 60 s of the server's clock.
        let token = jwt_token(&self.config.jwt_secret, now_secs());
        let request = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(body))
            .map_err(|e| transport(format!("build request: {e}")))?;
        let round_trip = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| transport(format!("{e:#}")))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(format!("read body: {e}")))?
                .to_bytes();
            Ok::<_, EngineError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.config.call_timeout, round_trip)
            .await
            .map_err(|_| EngineError::Timeout {
                method,
                url: url.clone(),
                after: self.config.call_timeout,
            })??;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(EngineError::Auth {
                method,
                url: url.clone(),
                status: status.as_u16(),
            });
        }
        let quote = || {
            let n = bytes.len().min(BODY_QUOTE_BYTES_MAX);
            String::from_utf8_lossy(&bytes[..n]).into_owned()
        };
        if status.is_server_error() {
            return Err(transport(format!("HTTP {status}: {}", quote())));
        }
        if !status.is_success() {
            return Err(EngineError::Rpc {
                method,
                code: i64::from(status.as_u16()),
                message: format!("HTTP {status}: {}", quote()),
            });
        }
        let response: rpc::Response =
            serde_json::from_slice(&bytes).map_err(|e| EngineError::Decode {
                method,
                what: "JSON-RPC response",
                detail: format!("{e}: {}", quote()),
            })?;
        match (response.result, response.error) {
            (_, Some(e)) => Err(EngineError::Rpc {
                method,
                code: e.code,
                message: e.detail(),
            }),
            (Some(result), None) => Ok(result),
            (None, None) => Ok(Value::Null),
        }
    }

    /// `engine_forkchoiceUpdatedV3`, with its refusals turned into [`EngineError`]s.
    async fn forkchoice(
        &self,
        trait_method: &'static str,
        head: BlockHash,
        safe: BlockHash,
        finalized: BlockHash,
        attrs: Option<PayloadAttributes>,
    ) -> Result<Option<PayloadId>, EngineError> {
        let state = ForkchoiceState {
            head_block_hash: to_b256(head),
            safe_block_hash: to_b256(safe),
            finalized_block_hash: to_b256(finalized),
        };
        let res: Result<ForkchoiceUpdated, _> =
            self.call(rpc::FORKCHOICE_UPDATED_V3, (state, attrs)).await;
        let updated = match res {
            Ok(u) => u,
            Err(EngineError::Rpc { code, message, .. })
                if code == rpc::INVALID_FORKCHOICE_STATE
                    || code == rpc::INVALID_PAYLOAD_ATTRIBUTES =>
            {
                return Err(EngineError::Rejected {
                    method: trait_method,
                    number: None,
                    hash: Some(head),
                    reason: format!("{message} (code {code})"),
                });
            }
            Err(e) => return Err(e),
        };
        match updated.payload_status.status {
            PayloadStatusEnum::Valid => Ok(updated.payload_id.map(PayloadId::from)),
            PayloadStatusEnum::Syncing | PayloadStatusEnum::Accepted => Err(EngineError::Syncing {
                method: trait_method,
                hash: head,
            }),
            PayloadStatusEnum::Invalid { validation_error } => Err(EngineError::Rejected {
                method: trait_method,
                number: None,
                hash: Some(head),
                reason: format!("INVALID: {validation_error}"),
            }),
        }
    }

    /// `engine_getPayloadV5`, or `V4` for an endpoint that does not support V5.
    async fn fetch_payload(&self, id: PayloadId) -> Result<ExecPayload, EngineError> {
        let alloy_id: alloy_rpc_types_engine::PayloadId = id.into();
        if !self.use_get_payload_v4.load(Ordering::Relaxed) {
            let res: Result<ExecutionPayloadEnvelopeV5, _> =
                self.call(rpc::GET_PAYLOAD_V5, (alloy_id,)).await;
            match res {
                Ok(env) => {
                    return Ok(ExecPayload {
                        payload: env.execution_payload,
                        parent_beacon_block_root: B256::ZERO,
                        execution_requests: env.execution_requests.take(),
                    });
                }
                Err(EngineError::Rpc { code, .. })
                    if code == rpc::UNSUPPORTED_FORK || code == rpc::METHOD_NOT_FOUND =>
                {
                    tracing::info!(url = %self.config.url, code, "engine_getPayloadV5 unsupported, using V4");
                    self.use_get_payload_v4.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let env: ExecutionPayloadEnvelopeV4 = self.call(rpc::GET_PAYLOAD_V4, (alloy_id,)).await?;
        Ok(ExecPayload {
            payload: env.envelope_inner.execution_payload,
            parent_beacon_block_root: B256::ZERO,
            execution_requests: env.execution_requests.take(),
        })
    }

    /// `eth_getBlockByNumber(tag, false)` as (number, hash), `None` when there is no such block.
    async fn block_at(
        &self,
        trait_method: &'static str,
        tag: String,
    ) -> Result<Option<(Height, BlockHash)>, EngineError> {
        let v: Value = self
            .call(rpc::ETH_GET_BLOCK_BY_NUMBER, (tag, false))
            .await?;
        if v.is_null() {
            return Ok(None);
        }
        let number = quantity_u64(&v["number"], "block number", trait_method)?;
        let hash: B256 =
            serde_json::from_value(v["hash"].clone()).map_err(|e| EngineError::Decode {
                method: trait_method,
                what: "block hash",
                detail: e.to_string(),
            })?;
        Ok(Some((Height(number), from_b256(hash))))
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, VecDeque<(PayloadId, BlockHash, Height)>> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ExecutionEngine for EngineApiClient {
    fn build_payload(&self, params: BuildParams) -> EngineFuture<'_, PayloadId> {
        const M: &str = "build_payload";
        Box::pin(instrument(M, async move {
            let attrs = PayloadAttributes {
                timestamp: params.timestamp,
                prev_randao: B256::ZERO,
                suggested_fee_recipient: Address::from(params.fee_recipient),
                withdrawals: Some(Vec::new()),
                parent_beacon_block_root: Some(B256::ZERO),
            };
            let p = params.parent;
            let id = self
                .forkchoice(M, p, p, p, Some(attrs))
                .await?
                .ok_or_else(|| EngineError::Mismatch {
                    method: M,
                    what: "payloadId",
                    expected: "an id (VALID with attributes)".into(),
                    got: "null".into(),
                })?;
            let mut pending = self.lock_pending();
            if pending.len() >= PENDING_BUILDS_MAX {
                pending.pop_front();
            }
            pending.push_back((id, params.parent, params.parent_height));
            Ok(id)
        }))
    }

    fn get_payload(&self, id: PayloadId) -> EngineFuture<'_, BuiltPayload> {
        const M: &str = "get_payload";
        Box::pin(instrument(M, async move {
            let p = match self.fetch_payload(id).await {
                Err(EngineError::Rpc { code, .. }) if code == rpc::UNKNOWN_PAYLOAD => {
                    return Err(EngineError::UnknownPayload { method: M, id });
                }
                other => other?,
            };
            // Our hash must agree with the engine's, or every node would refuse the block at
            // import: catch a header layout we do not know (a later fork) here, loudly.
            let computed = p.compute_block_hash().map_err(|e| EngineError::Decode {
                method: M,
                what: "built payload",
                detail: e,
            })?;
            if computed != p.block_hash() {
                return Err(EngineError::Mismatch {
                    method: M,
                    what: "block hash (recomputed from the header)",
                    expected: computed.to_string(),
                    got: p.block_hash().to_string(),
                });
            }
            let expected = self
                .lock_pending()
                .iter()
                .find(|(i, _, _)| *i == id)
                .map(|(_, parent, h)| (*parent, *h));
            if let Some((parent, height)) = expected
                && (p.parent_hash() != parent || p.number() != height.next())
            {
                return Err(EngineError::Mismatch {
                    method: M,
                    what: "parent (number, hash)",
                    expected: format!("block {} on {parent}", height.next()),
                    got: format!("block {} on {}", p.number(), p.parent_hash()),
                });
            }
            Ok(p.to_built())
        }))
    }

    fn new_payload<'a>(&'a self, encoded: &'a [u8]) -> EngineFuture<'a, PayloadStatus> {
        const M: &str = "new_payload";
        Box::pin(instrument(M, async move {
            let p = decode_payload(encoded)?;
            let versioned_hashes: Vec<B256> = Vec::new();
            let status: alloy_rpc_types_engine::PayloadStatus = self
                .call(
                    rpc::NEW_PAYLOAD_V4,
                    (
                        &p.payload,
                        versioned_hashes,
                        p.parent_beacon_block_root,
                        &p.execution_requests as &Vec<AlloyBytes>,
                    ),
                )
                .await?;
            Ok(match status.status {
                PayloadStatusEnum::Valid => PayloadStatus::Valid,
                PayloadStatusEnum::Invalid { validation_error } => PayloadStatus::Invalid {
                    reason: validation_error,
                },
                PayloadStatusEnum::Syncing | PayloadStatusEnum::Accepted => PayloadStatus::Syncing,
            })
        }))
    }

    fn set_head(
        &self,
        head: BlockHash,
        safe: BlockHash,
        finalized: BlockHash,
    ) -> EngineFuture<'_, ()> {
        const M: &str = "set_head";
        Box::pin(instrument(M, async move {
            self.forkchoice(M, head, safe, finalized, None).await?;
            Ok(())
        }))
    }

    fn head(&self) -> EngineFuture<'_, (Height, BlockHash)> {
        const M: &str = "head";
        Box::pin(instrument(M, async move {
            self.block_at(M, "latest".into())
                .await?
                .ok_or_else(|| EngineError::Decode {
                    method: M,
                    what: "latest block",
                    detail: "null".into(),
                })
        }))
    }

    fn block_hash_at(&self, height: Height) -> EngineFuture<'_, Option<BlockHash>> {
        const M: &str = "block_hash_at";
        Box::pin(instrument(M, async move {
            let found = self.block_at(M, format!("{:#x}", height.0)).await?;
            match found {
                Some((h, hash)) if h == height => Ok(Some(hash)),
                Some((h, _)) => Err(EngineError::Mismatch {
                    method: M,
                    what: "block number",
                    expected: height.to_string(),
                    got: h.to_string(),
                }),
                None => Ok(None),
            }
        }))
    }
}
