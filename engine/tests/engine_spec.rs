//! `haseqd engine serve` against the Engine API specification (ethereum/execution-apis
//! `src/engine/*.md`, schemas in `src/engine/openrpc`): one test per rule that applies to what
//! the server answers, each over HTTP on 127.0.0.1 with raw JSON-RPC, so that exact codes and
//! shapes are checked. Each test quotes the sentence it checks and the file it is from.
//!
//! Rules that cannot apply here (no test, as a test would assert nothing):
//! - authentication.md, WebSocket and IPC dialogues: only HTTP is served.
//! - common.md, `-38004 Too large request`: only `getPayloadBodies*` and `getBlobs*` return it,
//!   and they are not served (`-32601`, see `unserved_methods_are_method_not_found`).
//! - common.md, `-38006 Too deep reorg`: the embedded engine has no reorg limit.
//! - common.md, timeouts: they bind the consensus client, which waits; nothing for the server.
//! - common.md, capabilities: "MUST NOT log any error messages if this method has either never
//!   been called": nothing is logged about it either way (no logging assertion possible here).
//! - cancun.md, `forkchoiceUpdatedV3` `-38005`, and prague.md, `newPayloadV4` `-38005`: the
//!   served chain is Prague or later from genesis and Amsterdam is not scheduled, so every
//!   timestamp is in their range (Cancun, Prague, Osaka).
//! - paris.md, terminal PoW block conditions and `engine_exchangeTransitionConfigurationV1`:
//!   no PoW blocks; the method was deprecated by cancun.md and is not served.
//! - paris.md, payload building 3-4 (updating the payload with the mempool): no mempool, a
//!   payload is built once.
//! - common.md, "the client MUST also expose the following subset of eth methods": only
//!   `eth_blockNumber`, `eth_chainId` and `eth_getBlockByNumber` are served; `eth_call`,
//!   `eth_getCode`, `eth_getBlockByHash`, `eth_getLogs`, `eth_sendRawTransaction` and
//!   `eth_syncing` are not (a known gap, not a rule followed).

mod served;

use alloy_primitives::{B256, Bytes};
use alloy_rpc_types_engine::ExecutionPayloadV3;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use haseq_engine::{ExecPayload, Faults};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use served::{EXECUTION_PAYLOAD_V3, SECRET, Served, fresh_token, now_secs, raw_post, raw_request};

const T0: u64 = 1_700_000_000;

fn zero() -> String {
    format!("0x{}", "00".repeat(32))
}

fn hash(byte: u8) -> String {
    format!("0x{}", hex::encode([byte; 32]))
}

fn req(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
}

/// POSTs `body` with a fresh token; the parsed response (HTTP 200 required).
async fn post(s: &Served, body: &Value) -> Value {
    let (status, text) = raw_post(s.addr, Some(fresh_token()), body).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The result of `method(params)`, which must not fail.
async fn result(s: &Served, method: &str, params: Value) -> Value {
    let v = post(s, &req(method, params)).await;
    assert!(v.get("error").is_none(), "{method}: {v}");
    assert_eq!((&v["jsonrpc"], &v["id"]), (&json!("2.0"), &json!(1)), "{v}");
    v["result"].clone()
}

/// The message common.md's table gives each code.
fn table_message(code: i64) -> &'static str {
    match code {
        -32700 => "Parse error",
        -32600 => "Invalid Request",
        -32601 => "Method not found",
        -32602 => "Invalid params",
        -32603 => "Internal error",
        -32000 => "Server error",
        -38001 => "Unknown payload",
        -38002 => "Invalid forkchoice state",
        -38003 => "Invalid payload attributes",
        -38004 => "Too large request",
        -38005 => "Unsupported fork",
        -38006 => "Too deep reorg",
        other => panic!("no such code {other}"),
    }
}

/// Checks that `v` is the error response of code `code` to request `id`, shaped as common.md
/// says: "Each error returns a `null` `data` value, except `-32000`".
fn assert_error(v: &Value, id: &Value, code: i64) {
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert_eq!(&v["id"], id, "{v}");
    assert!(v.get("result").is_none(), "{v}");
    let e = &v["error"];
    assert_eq!(e["code"], code, "{v}");
    assert_eq!(e["message"], table_message(code), "{v}");
    if code == -32000 {
        assert!(e["data"]["err"].is_string(), "{v}");
    } else {
        assert_eq!(e.get("data"), Some(&Value::Null), "{v}");
    }
}

/// `method(params)` must fail with `code`.
async fn expect_error(s: &Served, method: &str, params: Value, code: i64) {
    let v = post(s, &req(method, params)).await;
    assert_error(&v, &json!(1), code);
}

fn state(head: &str, safe: &str, finalized: &str) -> Value {
    json!({"headBlockHash": head, "safeBlockHash": safe, "finalizedBlockHash": finalized})
}

/// `PayloadAttributesV3` at `timestamp`.
fn attrs(timestamp: u64) -> Value {
    json!({
        "timestamp": format!("{timestamp:#x}"),
        "prevRandao": hash(0x33),
        "suggestedFeeRecipient": format!("0x{}", "11".repeat(20)),
        "withdrawals": [],
        "parentBeaconBlockRoot": zero(),
    })
}

fn genesis(s: &Served) -> String {
    s.engine.genesis_hash().to_string()
}

/// `forkchoiceUpdatedV3(head, attrs(timestamp))`: the payload id.
async fn build(s: &Served, head: &str, timestamp: u64) -> Value {
    let r = result(
        s,
        "engine_forkchoiceUpdatedV3",
        json!([state(head, &zero(), &zero()), attrs(timestamp)]),
    )
    .await;
    assert_eq!(r["payloadStatus"]["status"], "VALID", "{r}");
    r["payloadId"].clone()
}

/// The `executionPayload` of `getPayloadV5(id)`.
async fn payload(s: &Served, id: &Value) -> Value {
    result(s, "engine_getPayloadV5", json!([id])).await["executionPayload"].clone()
}

/// `newPayloadV4(ep)` with no blobs, a zero beacon root and no requests: its status object.
async fn new_payload(s: &Served, ep: &Value) -> Value {
    result(s, "engine_newPayloadV4", json!([ep, [], zero(), []])).await
}

/// Builds a block on `head` at `timestamp`, imports it and makes it the head.
async fn extend(s: &Served, head: &str, timestamp: u64) -> Value {
    let id = build(s, head, timestamp).await;
    let ep = payload(s, &id).await;
    assert_eq!(new_payload(s, &ep).await["status"], "VALID");
    let h = ep["blockHash"].as_str().expect("hash").to_string();
    let r = result(
        s,
        "engine_forkchoiceUpdatedV3",
        json!([state(&h, &zero(), &zero()), null]),
    )
    .await;
    assert_eq!(r["payloadStatus"]["status"], "VALID", "{r}");
    ep
}

/// [`extend`], returning the new head's hash.
async fn extend_hash(s: &Served, head: &str, timestamp: u64) -> String {
    let ep = extend(s, head, timestamp).await;
    ep["blockHash"].as_str().expect("hash").to_string()
}

/// The result of `forkchoiceUpdatedV3(params)`, which must not fail.
async fn fcu_result(s: &Served, params: Value) -> Value {
    result(s, "engine_forkchoiceUpdatedV3", params).await
}

/// `r` is paris.md's `{payloadStatus: {status: VALID, latestValidHash: head, validationError:
/// null}, payloadId: null}`.
fn assert_valid_without_build(r: &Value, head: &str) {
    assert_status(&r["payloadStatus"], "VALID", &json!(head), false);
    assert_eq!(r.get("payloadId"), Some(&Value::Null), "{r}");
}

/// `forkchoiceUpdatedV3(params)` must fail with `code`.
async fn fcu_error(s: &Served, params: Value, code: i64) {
    expect_error(s, "engine_forkchoiceUpdatedV3", params, code).await;
}

async fn head_hash(s: &Served) -> Value {
    result(s, "eth_getBlockByNumber", json!(["latest", false])).await["hash"].clone()
}

/// `ep` changed by `change`, with a block hash that matches the change (zero beacon root, no
/// requests): a block that passes the hash check.
fn resealed(ep: &Value, change: impl FnOnce(&mut ExecPayload)) -> Value {
    let payload: ExecutionPayloadV3 = serde_json::from_value(ep.clone()).expect("payload");
    let mut p = ExecPayload {
        payload,
        parent_beacon_block_root: B256::ZERO,
        execution_requests: Vec::new(),
    };
    change(&mut p);
    let h = p.compute_block_hash().expect("header");
    p.payload.payload_inner.payload_inner.block_hash = B256::from(h.0);
    serde_json::to_value(&p.payload).expect("json")
}

fn assert_status(v: &Value, status: &str, latest_valid_hash: &Value, error_set: bool) {
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(v.get("latestValidHash"), Some(latest_valid_hash), "{v}");
    let e = v.get("validationError").expect("validationError member");
    assert_eq!(e.is_string(), error_set, "{v}");
    assert!(e.is_string() || e.is_null(), "{v}");
}

// ---- authentication.md ----

/// A JWT with header `{"alg": alg}` and `claims`, signed with `secret` (HS256, HS512) or not.
fn token(alg: &str, claims: &Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{claims}");
    let sig = match alg {
        "HS256" => {
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("key");
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        "HS512" => {
            let mut m = Hmac::<sha2::Sha512>::new_from_slice(secret).expect("key");
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        _ => Vec::new(),
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// The HTTP status of `eth_blockNumber` sent with the header line `auth` (if any).
async fn status_with(s: &Served, auth: Option<String>) -> u16 {
    let body = req("eth_blockNumber", json!([])).to_string();
    let headers: Vec<String> = auth.into_iter().collect();
    let (status, text) = raw_request(s.addr, &headers, &body).await;
    if status == 200 {
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["result"], "0x0", "{v}");
    } else {
        assert!(!text.contains("jsonrpc"), "refused yet answered: {text}");
    }
    status
}

/// The HTTP status of a request with `token(alg, claims, secret)`, on a server of its own.
async fn token_status(alg: &str, claims: &Value, secret: &[u8]) -> u16 {
    let s = Served::start().await;
    status_with_token(&s, token(alg, claims, secret)).await
}

async fn status_with_token(s: &Served, t: String) -> u16 {
    status_with(s, Some(format!("Authorization: Bearer {t}"))).await
}

// The spec names no HTTP status for a refusal: the server answers 401 (RFC 6750).
#[tokio::test]
async fn auth_request_without_a_token_is_refused() {
    // authentication.md: "For `HTTP` dialogue, each `jsonrpc` request is individually authenticated by supplying `JWT` token in the HTTP header."
    let s = Served::start().await;
    assert_eq!(status_with(&s, None).await, 401);
    assert_eq!(
        status_with(&s, Some(format!("Authorization: Basic {}", fresh_token()))).await,
        401
    );
    assert_eq!(status_with_token(&s, fresh_token()).await, 200);
}

#[tokio::test]
async fn auth_bearer_scheme_is_case_insensitive() {
    // RFC 7235 section 2.1 (the header authentication.md relies on): "It uses a case-insensitive token as a means to identify the authentication scheme"
    let s = Served::start().await;
    assert_eq!(
        status_with(&s, Some(format!("Authorization: bearer {}", fresh_token()))).await,
        200
    );
}

#[tokio::test]
async fn auth_hs256_is_accepted() {
    // authentication.md: "The execution layer client **MUST** support at least the following `alg` `HMAC + SHA256` (`HS256`)"
    assert_eq!(
        token_status("HS256", &json!({"iat": now_secs()}), &SECRET).await,
        200
    );
}

#[tokio::test]
async fn auth_alg_none_is_rejected() {
    // authentication.md: "The execution layer client **MUST** reject the `alg` `none`."
    assert_eq!(
        token_status("none", &json!({"iat": now_secs()}), &SECRET).await,
        401
    );
}

#[tokio::test]
async fn auth_algorithms_other_than_hs256_are_rejected() {
    // authentication.md: "MUST support at least the following `alg` `HMAC + SHA256` (`HS256`)": this server supports exactly that one.
    assert_eq!(
        token_status("HS512", &json!({"iat": now_secs()}), &SECRET).await,
        401
    );
}

#[tokio::test]
async fn auth_token_signed_with_another_secret_is_rejected() {
    // authentication.md: "designates a file containing the hex-encoded 256 bit secret key to be used for verifying/generating JWT tokens."
    assert_eq!(
        token_status("HS256", &json!({"iat": now_secs()}), &[0x11; 32]).await,
        401
    );
}

#[tokio::test]
async fn auth_iat_is_required() {
    // authentication.md: "Required: `iat` (issued-at) claim."
    assert_eq!(
        token_status("HS256", &json!({"id": "cl"}), &SECRET).await,
        401
    );
}

#[tokio::test]
async fn auth_iat_within_60_seconds_is_accepted_beyond_is_rejected() {
    // authentication.md: "The execution layer client **SHOULD** only accept `iat` timestamps which are within +-60 seconds from the current time."
    let s = Served::start().await;
    let now = now_secs();
    for (iat, want) in [
        (now - 50, 200),
        (now + 50, 200),
        (now - 120, 401),
        (now + 120, 401),
    ] {
        let t = token("HS256", &json!({"iat": iat}), &SECRET);
        assert_eq!(
            status_with_token(&s, t).await,
            want,
            "iat now{:+}",
            iat as i64 - now as i64
        );
    }
}

#[tokio::test]
async fn auth_unknown_claims_are_ignored() {
    // authentication.md: "If the execution layer client sees claims it does not recognize, these **MUST** be ignored."
    let s = Served::start().await;
    let claims = json!({"iat": now_secs(), "id": "cl-1", "clv": "lighthouse/v7", "other": [1, 2]});
    assert_eq!(
        status_with_token(&s, token("HS256", &claims, &SECRET)).await,
        200
    );
}

// ---- common.md, errors and the JSON-RPC 2.0 envelope ----

#[tokio::test]
async fn invalid_json_is_parse_error_with_id_null() {
    // common.md: "| -32700 | Parse error | Invalid JSON was received by the server. |" (JSON-RPC 2.0: the id "MUST be Null" when it could not be detected)
    let s = Served::start().await;
    let auth = [format!("Authorization: Bearer {}", fresh_token())];
    let (status, text) =
        raw_request(s.addr, &auth, r#"{"jsonrpc": "2.0", "id": 1, "method""#).await;
    assert_eq!(status, 200, "{text}");
    assert_error(
        &serde_json::from_str(&text).expect("json"),
        &Value::Null,
        -32700,
    );
}

#[tokio::test]
async fn request_without_jsonrpc_2_0_is_invalid_request() {
    // common.md: "| -32600 | Invalid Request | The JSON sent is not a valid Request object. |" (JSON-RPC 2.0: "jsonrpc ... MUST be exactly \"2.0\"")
    let s = Served::start().await;
    for version in [None, Some(json!("1.0")), Some(json!(2.0))] {
        let mut r = req("eth_chainId", json!([]));
        match version {
            None => r.as_object_mut().expect("object").remove("jsonrpc"),
            Some(v) => r
                .as_object_mut()
                .expect("object")
                .insert("jsonrpc".into(), v),
        };
        assert_error(&post(&s, &r).await, &json!(1), -32600);
    }
}

#[tokio::test]
async fn request_with_an_id_not_string_number_or_null_is_invalid_request() {
    // common.md: "| -32600 | Invalid Request | The JSON sent is not a valid Request object. |" (JSON-RPC 2.0: id "MUST contain a String, Number, or NULL value if included")
    let s = Served::start().await;
    for id in [json!({"a": 1}), json!([1]), json!(true)] {
        let r = json!({"jsonrpc": "2.0", "id": id, "method": "eth_chainId", "params": []});
        assert_error(&post(&s, &r).await, &Value::Null, -32600);
    }
    let r = json!({"jsonrpc": "2.0", "id": "abc", "method": "eth_chainId", "params": []});
    assert_eq!(post(&s, &r).await["id"], "abc");
}

#[tokio::test]
async fn request_that_is_not_a_request_object_is_invalid_request() {
    // common.md: "| -32600 | Invalid Request | The JSON sent is not a valid Request object. |"
    let s = Served::start().await;
    assert_error(&post(&s, &json!(42)).await, &Value::Null, -32600);
    let no_method = json!({"jsonrpc": "2.0", "id": 1, "params": []});
    assert_error(&post(&s, &no_method).await, &json!(1), -32600);
    let bad_method = json!({"jsonrpc": "2.0", "id": 1, "method": 7, "params": []});
    assert_error(&post(&s, &bad_method).await, &json!(1), -32600);
    let bad_params = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": 3});
    assert_error(&post(&s, &bad_params).await, &json!(1), -32600);
}

#[tokio::test]
async fn unserved_methods_are_method_not_found() {
    // common.md: "| -32601 | Method not found | The method does not exist / is not available. |"
    let s = Served::start().await;
    for m in [
        "engine_getPayloadBodiesByRangeV1",
        "engine_getPayloadBodiesByHashV1",
        "engine_getBlobsV1",
        "engine_getBlobsV2",
        "engine_newPayloadV3",
        "engine_getPayloadV3",
        "engine_forkchoiceUpdatedV2",
        "engine_exchangeTransitionConfigurationV1",
        "eth_syncing",
    ] {
        expect_error(&s, m, json!([]), -32601).await;
    }
}

#[tokio::test]
async fn server_error_carries_data_err() {
    // common.md: "Each error returns a `null` `data` value, except `-32000` which returns the `data` object with a `err` member that explains the error encountered."
    let s = Served::start().await;
    s.engine
        .set_faults(Faults {
            fail: true,
            ..Faults::default()
        })
        .await
        .expect("faults");
    let v = post(&s, &req("eth_blockNumber", json!([]))).await;
    assert_error(&v, &json!(1), -32000);
    assert!(
        v["error"]["data"]["err"]
            .as_str()
            .expect("err")
            .contains("fault"),
        "{v}"
    );
}

#[tokio::test]
async fn invalid_params_have_null_data() {
    // common.md: "| -32602 | Invalid params | Invalid method parameter(s). |" and "Each error returns a `null` `data` value"
    let s = Served::start().await;
    expect_error(&s, "eth_getBlockByNumber", json!(["latest"]), -32602).await;
    expect_error(&s, "eth_getBlockByNumber", json!(["nope", false]), -32602).await;
    expect_error(&s, "eth_chainId", json!({"x": 1}), -32602).await;
}

#[tokio::test]
async fn notification_is_executed_and_not_answered() {
    // JSON-RPC 2.0 (inherited by common.md): "The Server MUST NOT reply to a Notification"
    let s = Served::start().await;
    let ep = extend(&s, &genesis(&s), T0 + 1).await;
    let g = genesis(&s);
    let note = json!({"jsonrpc": "2.0", "method": "engine_forkchoiceUpdatedV3",
                      "params": [state(&g, &zero(), &zero()), null]});
    let (status, text) = raw_post(s.addr, Some(fresh_token()), &note).await;
    assert!(status == 200 || status == 204, "{status}");
    assert!(text.is_empty(), "answered a notification: {text}");
    assert_eq!(head_hash(&s).await, g.as_str());
    assert_ne!(ep["blockHash"], g.as_str());
}

#[tokio::test]
async fn batch_is_answered_in_order_without_notifications() {
    // JSON-RPC 2.0 (inherited by common.md): "The Server should respond with an Array containing the corresponding Response objects, after all of the batch Request objects have been processed"
    let s = Served::start().await;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": "two", "method": "eth_blockNumber", "params": []},
        {"jsonrpc": "1.0", "id": 3, "method": "eth_blockNumber", "params": []},
    ]);
    let v = post(&s, &batch).await;
    let a = v.as_array().expect("array");
    assert_eq!(a.len(), 3, "{v}");
    assert_eq!((&a[0]["id"], &a[0]["result"]), (&json!(1), &json!("0x539")));
    assert_eq!(
        (&a[1]["id"], &a[1]["result"]),
        (&json!("two"), &json!("0x0"))
    );
    assert_error(&a[2], &json!(3), -32600);
    let only_notes = json!([{"jsonrpc": "2.0", "method": "eth_chainId", "params": []}]);
    let (_, text) = raw_post(s.addr, Some(fresh_token()), &only_notes).await;
    assert!(text.is_empty(), "{text}");
}

#[tokio::test]
async fn empty_batch_is_one_invalid_request() {
    // JSON-RPC 2.0 (inherited by common.md): "If the batch rpc call itself fails to be recognized as an valid JSON or as an Array with at least one value, the response from the Server MUST be a single Response object."
    let s = Served::start().await;
    assert_error(&post(&s, &json!([])).await, &Value::Null, -32600);
    let v = post(&s, &json!([1])).await;
    assert_error(&v.as_array().expect("array")[0], &Value::Null, -32600);
}

#[tokio::test]
async fn forkchoice_updates_are_processed_in_the_order_received() {
    // common.md: "Execution Layer client software **MUST** process `engine_forkchoiceUpdated` method calls in the same order as they have been received."
    let s = Served::start().await;
    let g = genesis(&s);
    let b1 = extend_hash(&s, &g, T0 + 1).await;
    for (first, last) in [(&g, &b1), (&b1, &g)] {
        let fcu = |h: &str| {
            json!({"jsonrpc": "2.0", "id": h, "method": "engine_forkchoiceUpdatedV3",
                                   "params": [state(h, &zero(), &zero()), null]})
        };
        let v = post(&s, &json!([fcu(first), fcu(last)])).await;
        assert_eq!(v[1]["id"], last.as_str(), "{v}");
        assert_eq!(head_hash(&s).await, last.as_str());
    }
}

// ---- common.md, engine_exchangeCapabilities ----

#[tokio::test]
async fn capabilities_list_the_methods_served_but_not_itself() {
    // common.md: "The `engine_exchangeCapabilities` method **MUST NOT** be returned in the response list."
    let s = Served::start().await;
    let r = result(
        &s,
        "engine_exchangeCapabilities",
        json!([["engine_newPayloadV4"]]),
    )
    .await;
    let mut got: Vec<&str> = r
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m.as_str().expect("string"))
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        [
            "engine_forkchoiceUpdatedV3",
            "engine_getPayloadV4",
            "engine_getPayloadV5",
            "engine_newPayloadV4"
        ]
    );
}

#[tokio::test]
async fn capabilities_names_carry_their_version() {
    // common.md: "Name of each method in both lists **MUST** include suffixed version."
    let s = Served::start().await;
    let r = result(&s, "engine_exchangeCapabilities", json!([[]])).await;
    for m in r.as_array().expect("array") {
        let m = m.as_str().expect("string");
        let digits = m.trim_end_matches(|c: char| c.is_ascii_digit());
        assert!(digits.len() < m.len() && digits.ends_with('V'), "{m}");
    }
}

#[tokio::test]
async fn capabilities_param_must_be_an_array_of_strings() {
    // common.md: "1. `Array of string` -- Array of strings, each string is a name of a method supported by consensus layer client software."
    let s = Served::start().await;
    for params in [
        json!([]),
        json!([[1, 2]]),
        json!(["engine_newPayloadV4"]),
        json!([null]),
    ] {
        expect_error(&s, "engine_exchangeCapabilities", params, -32602).await;
    }
}

// ---- engine_forkchoiceUpdatedV3 (paris.md, shanghai.md, cancun.md) ----

#[tokio::test]
async fn fcu_state_must_be_a_forkchoice_state_v1() {
    // cancun.md: "Client software **MUST** verify that `forkchoiceState` matches the [`ForkchoiceStateV1`](./paris.md#ForkchoiceStateV1) structure and return `-32602: Invalid params` on failure."
    let s = Served::start().await;
    let g = genesis(&s);
    let mut extra = state(&g, &g, &g);
    extra["other"] = json!(1);
    for st in [
        json!({"headBlockHash": g, "safeBlockHash": g}),
        json!({"headBlockHash": g, "safeBlockHash": g, "finalizedBlockHash": null}),
        extra,
        json!({"headBlockHash": "0x12", "safeBlockHash": g, "finalizedBlockHash": g}),
        Value::Null,
    ] {
        fcu_error(&s, json!([st, null]), -32602).await;
    }
}

#[tokio::test]
async fn fcu_unknown_head_is_syncing_with_null_payload_id() {
    // paris.md: "`{payloadStatus: {status: SYNCING, latestValidHash: null, validationError: null}, payloadId: null}` if `forkchoiceState.headBlockHash` references an unknown payload"
    let s = Served::start().await;
    let g = genesis(&s);
    for a in [Value::Null, attrs(T0), json!({"timestamp": "0x1"})] {
        let r = fcu_result(&s, json!([state(&hash(0x77), &g, &g), a])).await;
        assert_status(&r["payloadStatus"], "SYNCING", &Value::Null, false);
        assert_eq!(r.get("payloadId"), Some(&Value::Null), "{r}");
    }
    assert_eq!(head_hash(&s).await, g.as_str());
}

#[tokio::test]
async fn fcu_safe_or_finalized_off_the_head_chain_is_invalid_forkchoice_state() {
    // paris.md: "Client software **MUST** return `-38002: Invalid forkchoice state` error if the payload referenced by `forkchoiceState.headBlockHash` is `VALID` and a payload referenced by either `forkchoiceState.finalizedBlockHash` or `forkchoiceState.safeBlockHash` does not belong to the chain defined by `forkchoiceState.headBlockHash`."
    let s = Served::start().await;
    let g = genesis(&s);
    let b1 = extend_hash(&s, &g, T0 + 1).await;
    let fcu = |st| json!([st, null]);
    // Back to genesis: block 1 is then above the head, not on its chain.
    fcu_error(&s, fcu(state(&g, &b1, &g)), -38002).await;
    fcu_error(&s, fcu(state(&g, &g, &b1)), -38002).await;
    fcu_error(&s, fcu(state(&b1, &hash(0x55), &g)), -38002).await;
    // Nothing applied.
    assert_eq!(head_hash(&s).await, b1.as_str());
}

#[tokio::test]
async fn fcu_without_attributes_is_valid_with_null_payload_id() {
    // paris.md: "`{payloadStatus: {status: VALID, latestValidHash: forkchoiceState.headBlockHash, validationError: null}, payloadId: null}` if the payload is deemed `VALID` and a build process hasn't been started"
    let s = Served::start().await;
    let g = genesis(&s);
    for params in [json!([state(&g, &g, &g), null]), json!([state(&g, &g, &g)])] {
        let r = fcu_result(&s, params).await;
        assert_valid_without_build(&r, &g);
    }
}

#[tokio::test]
async fn fcu_with_attributes_is_valid_with_a_payload_id() {
    // paris.md: "`{payloadStatus: {status: VALID, latestValidHash: forkchoiceState.headBlockHash, validationError: null}, payloadId: buildProcessId}` if the payload is deemed `VALID` and the build process has begun"
    let s = Served::start().await;
    let g = genesis(&s);
    let r = fcu_result(&s, json!([state(&g, &g, &g), attrs(T0)])).await;
    assert_status(&r["payloadStatus"], "VALID", &json!(g), false);
    let id = r["payloadId"].as_str().expect("payloadId");
    assert!(id.len() == 18 && id.starts_with("0x"), "bytes8: {id}");
}

#[tokio::test]
async fn fcu_attributes_not_v3_are_invalid_payload_attributes_and_the_state_stays_applied() {
    // cancun.md: "`payloadAttributes` matches the [`PayloadAttributesV3`](#payloadattributesv3) structure, return `-38003: Invalid payload attributes` on failure." and paris.md: "If `payloadAttributes` validation fails, the `forkchoiceState` update **MUST NOT** be rolled back."
    let s = Served::start().await;
    let g = genesis(&s);
    let b1 = extend_hash(&s, &g, T0 + 1).await;
    let v2 = {
        let mut a = attrs(T0 + 5);
        a.as_object_mut()
            .expect("object")
            .remove("parentBeaconBlockRoot");
        a
    };
    let v1 = {
        let mut a = v2.clone();
        a.as_object_mut().expect("object").remove("withdrawals");
        a
    };
    let mut null_root = attrs(T0 + 5);
    null_root["parentBeaconBlockRoot"] = Value::Null;
    let mut extra = attrs(T0 + 5);
    extra["other"] = json!(1);
    let mut bad_type = attrs(T0 + 5);
    bad_type["prevRandao"] = json!("0x12");
    let mut head = b1.clone();
    for a in [v2, v1, null_root, extra, bad_type, json!("attributes")] {
        // Each time the head moves (genesis, block 1, ...): the update is applied all the same.
        head = if head == g { b1.clone() } else { g.clone() };
        fcu_error(&s, json!([state(&head, &zero(), &zero()), a]), -38003).await;
        assert_eq!(head_hash(&s).await, head.as_str());
    }
}

#[tokio::test]
async fn fcu_attributes_timestamp_not_above_the_head_is_invalid_payload_attributes() {
    // paris.md: "Verify that `payloadAttributes.timestamp` is greater than `timestamp` of a block referenced by `forkchoiceState.headBlockHash` and return `-38003: Invalid payload attributes` on failure."
    let s = Served::start().await;
    let g = genesis(&s);
    let b1 = extend_hash(&s, &g, T0 + 10).await;
    for ts in [T0 + 10, T0 + 9] {
        // From genesis to block 1 in the same call: applied, then the attributes refused.
        fcu_result(&s, json!([state(&g, &zero(), &zero()), null])).await;
        fcu_error(&s, json!([state(&b1, &zero(), &zero()), attrs(ts)]), -38003).await;
        assert_eq!(head_hash(&s).await, b1.as_str());
    }
    assert!(build(&s, &b1, T0 + 11).await.is_string());
}

#[tokio::test]
async fn fcu_head_below_the_finalized_block_builds_nothing() {
    // paris.md: "Client software **MAY** skip an update of the forkchoice state and **MUST NOT** begin a payload build process if there is a known `finalizedBlockHash` and `forkchoiceState.headBlockHash` references a `VALID` ancestor of the latest known finalized block"
    let s = Served::start().await;
    let g = genesis(&s);
    let b1 = extend_hash(&s, &g, T0 + 1).await;
    fcu_result(&s, json!([state(&b1, &b1, &b1), null])).await;
    let r = fcu_result(&s, json!([state(&g, &zero(), &zero()), attrs(T0 + 2)])).await;
    assert_valid_without_build(&r, &g);
}

#[tokio::test]
async fn fcu_same_attributes_same_build_other_attributes_new_build() {
    // paris.md: "Client software **MUST** begin a new build process if given `PayloadAttributes` doesn't match payload attributes of an existing build process. Every new build process **MUST** be uniquely identified by the returned `payloadId` value." and "If a build process with given `PayloadAttributes` already exists, client software **SHOULD NOT** restart it."
    let s = Served::start().await;
    let g = genesis(&s);
    let first = build(&s, &g, T0).await;
    assert_eq!(build(&s, &g, T0).await, first);
    let mut ids = vec![first];
    let mut other_randao = attrs(T0);
    other_randao["prevRandao"] = json!(hash(0x44));
    let mut other_root = attrs(T0);
    other_root["parentBeaconBlockRoot"] = json!(hash(0x45));
    let mut other_withdrawals = attrs(T0);
    other_withdrawals["withdrawals"] = json!([{"index": "0x1", "validatorIndex": "0x2",
        "address": format!("0x{}", "22".repeat(20)), "amount": "0x3"}]);
    for a in [attrs(T0 + 1), other_randao, other_root, other_withdrawals] {
        let r = fcu_result(&s, json!([state(&g, &zero(), &zero()), a])).await;
        let id = r["payloadId"].clone();
        assert!(id.is_string() && !ids.contains(&id), "{id} among {ids:?}");
        ids.push(id);
    }
}

#[tokio::test]
async fn built_payload_follows_the_attributes() {
    // paris.md: "Client software **MUST** set the payload field values according to the set of parameters passed into this method with exception of the `suggestedFeeRecipient`."
    let s = Served::start().await;
    let g = genesis(&s);
    let mut a = attrs(T0 + 7);
    a["withdrawals"] = json!([{"index": "0x1", "validatorIndex": "0x2",
        "address": format!("0x{}", "22".repeat(20)), "amount": "0x3"}]);
    a["parentBeaconBlockRoot"] = json!(hash(0x66));
    let r = fcu_result(&s, json!([state(&g, &zero(), &zero()), a.clone()])).await;
    let ep = payload(&s, &r["payloadId"]).await;
    assert_eq!(ep["parentHash"], g.as_str());
    assert_eq!(ep["timestamp"], a["timestamp"]);
    assert_eq!(ep["prevRandao"], a["prevRandao"]);
    assert_eq!(ep["withdrawals"], a["withdrawals"]);
    // The beacon root is in the header: the block is valid with it and only with it.
    let with = |root: String| json!([ep, [], root, []]);
    assert_eq!(
        result(&s, "engine_newPayloadV4", with(zero())).await["status"],
        "INVALID"
    );
    assert_eq!(
        result(&s, "engine_newPayloadV4", with(hash(0x66))).await["status"],
        "VALID"
    );
}

// ---- engine_getPayloadV4 / V5 (paris.md, cancun.md, prague.md, osaka.md) ----

#[tokio::test]
async fn get_payload_unknown_id_is_unknown_payload() {
    // paris.md: "The call **MUST** return `-38001: Unknown payload` error if the build process identified by the `payloadId` does not exist."
    let s = Served::start().await;
    let prague = Served::start_with(|c| c.osaka_time = u64::MAX).await;
    expect_error(
        &s,
        "engine_getPayloadV5",
        json!(["0x0000000000000001"]),
        -38001,
    )
    .await;
    expect_error(
        &prague,
        "engine_getPayloadV4",
        json!(["0x0000000000000001"]),
        -38001,
    )
    .await;
}

#[tokio::test]
async fn get_payload_id_must_be_8_bytes() {
    // paris.md: "1. `payloadId`: `DATA`, 8 Bytes - Identifier of the payload build process"
    let s = Served::start().await;
    for params in [
        json!(["0x01"]),
        json!(["0x000000000000000001"]),
        json!([1]),
        json!([]),
    ] {
        expect_error(&s, "engine_getPayloadV5", params, -32602).await;
    }
}

#[tokio::test]
async fn get_payload_v4_refuses_osaka_payloads() {
    // osaka.md: "Client software **MUST** return `-38005: Unsupported fork` error if the `timestamp` of payload is greater than or equal to the Osaka activation timestamp." (for engine_getPayloadV4)
    let osaka = T0 + 100;
    let s = Served::start_with(|c| c.osaka_time = osaka).await;
    let g = genesis(&s);
    let before = build(&s, &g, osaka - 1).await;
    let at = build(&s, &g, osaka).await;
    let v4 = result(&s, "engine_getPayloadV4", json!([before])).await;
    assert_eq!(
        v4["executionPayload"]["timestamp"],
        format!("{:#x}", osaka - 1)
    );
    expect_error(&s, "engine_getPayloadV4", json!([at]), -38005).await;
}

#[tokio::test]
async fn get_payload_v5_refuses_payloads_before_osaka() {
    // osaka.md: "Client software **MUST** return `-38005: Unsupported fork` error if the `timestamp` of the built payload does not fall within the time frame of the Osaka fork."
    let osaka = T0 + 100;
    let s = Served::start_with(|c| c.osaka_time = osaka).await;
    let g = genesis(&s);
    let before = build(&s, &g, osaka - 1).await;
    let at = build(&s, &g, osaka).await;
    expect_error(&s, "engine_getPayloadV5", json!([before]), -38005).await;
    assert_eq!(payload(&s, &at).await["timestamp"], format!("{osaka:#x}"));
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort_unstable();
    k
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    k.sort_unstable();
    k
}

/// The members of the `getPayloadV4`/`V5` result (prague.md, osaka.md), of its payload
/// (`ExecutionPayloadV3`) and of its blobs bundle (`BlobsBundleV1`/`V2`: the same names).
fn assert_envelope(r: &Value) {
    assert_eq!(
        keys(r),
        sorted(&[
            "blobsBundle",
            "blockValue",
            "executionPayload",
            "executionRequests",
            "shouldOverrideBuilder"
        ])
    );
    assert_eq!(keys(&r["executionPayload"]), sorted(&EXECUTION_PAYLOAD_V3));
    assert_eq!(
        keys(&r["blobsBundle"]),
        sorted(&["blobs", "commitments", "proofs"])
    );
}

#[tokio::test]
async fn get_payload_v5_result_is_the_osaka_envelope() {
    // osaka.md: "`executionPayload`: ExecutionPayloadV3 ... `blockValue` ... `blobsBundle`: BlobsBundleV2 ... `shouldOverrideBuilder` ... `executionRequests`: `Array of DATA`"
    let s = Served::start().await;
    let id = build(&s, &genesis(&s), T0).await;
    let r = result(&s, "engine_getPayloadV5", json!([id])).await;
    assert_envelope(&r);
    // prague.md: "The call **MUST** return `executionRequests` list": none are made here.
    assert_eq!(r["executionRequests"], json!([]));
}

#[tokio::test]
async fn get_payload_v4_result_is_the_prague_envelope() {
    // prague.md: "`executionPayload`: ExecutionPayloadV3 ... `blockValue` ... `blobsBundle`: BlobsBundleV1 ... `shouldOverrideBuilder` ... `executionRequests`: `Array of DATA`"
    let s = Served::start_with(|c| c.osaka_time = u64::MAX).await;
    let id = build(&s, &genesis(&s), T0).await;
    let r = result(&s, "engine_getPayloadV4", json!([id])).await;
    assert_envelope(&r);
    assert_eq!(r["executionRequests"], json!([]));
}

#[tokio::test]
async fn get_payload_blobs_bundle_is_empty_without_blob_transactions() {
    // osaka.md: "The call **MUST** return `BlobsBundleV2` with empty `blobs`, `commitments` and `proofs` if the payload doesn't contain any blob transactions." (cancun.md says the same of BlobsBundleV1)
    let s = Served::start().await;
    let prague = Served::start_with(|c| c.osaka_time = u64::MAX).await;
    for (srv, method) in [
        (&s, "engine_getPayloadV5"),
        (&prague, "engine_getPayloadV4"),
    ] {
        let id = build(srv, &genesis(srv), T0).await;
        let r = result(srv, method, json!([id])).await;
        assert_eq!(
            r["blobsBundle"],
            json!({"blobs": [], "commitments": [], "proofs": []}),
            "{method}"
        );
    }
}

#[tokio::test]
async fn get_payload_should_override_builder_is_false() {
    // cancun.md: "If client software does not implement any heuristic this flag **SHOULD** be set to `false`."
    let s = Served::start().await;
    let id = build(&s, &genesis(&s), T0).await;
    assert_eq!(
        result(&s, "engine_getPayloadV5", json!([id])).await["shouldOverrideBuilder"],
        false
    );
}

// ---- common.md, encoding ----

fn is_quantity(s: &str) -> bool {
    s.strip_prefix("0x").is_some_and(|d| {
        d == "0"
            || (!d.is_empty() && !d.starts_with('0') && d.chars().all(|c| c.is_ascii_hexdigit()))
    })
}

fn is_data(s: &str) -> bool {
    s.strip_prefix("0x")
        .is_some_and(|d| d.len() % 2 == 0 && d.chars().all(|c| c.is_ascii_hexdigit()))
}

#[tokio::test]
async fn quantities_and_data_are_encoded_as_the_spec_says() {
    // common.md: "Values of a field of `QUANTITY` type **MUST** be encoded as a hexadecimal string with a `0x` prefix and the leading 0s stripped (except for the case of encoding the value `0`)" and "Values of a field of `DATA` type **MUST** be encoded as a hexadecimal string with a `0x` prefix matching the regular expression `^0x(?:[a-fA-F0-9]{2})*$`."
    let s = Served::start().await;
    let mut a = attrs(T0);
    a["withdrawals"] = json!([{"index": "0x0", "validatorIndex": "0x10",
        "address": format!("0x{}", "22".repeat(20)), "amount": "0x3"}]);
    let r = fcu_result(&s, json!([state(&genesis(&s), &zero(), &zero()), a])).await;
    let env = result(&s, "engine_getPayloadV5", json!([r["payloadId"]])).await;
    let ep = &env["executionPayload"];
    let quantities = [
        "blockNumber",
        "gasLimit",
        "gasUsed",
        "timestamp",
        "baseFeePerGas",
        "blobGasUsed",
        "excessBlobGas",
    ];
    for k in EXECUTION_PAYLOAD_V3 {
        match &ep[k] {
            Value::String(v) if quantities.contains(&k) => assert!(is_quantity(v), "{k}: {v}"),
            Value::String(v) => assert!(is_data(v), "{k}: {v}"),
            Value::Array(items) if k == "transactions" => {
                assert!(items.iter().all(|t| t.as_str().is_some_and(is_data)), "{k}")
            }
            Value::Array(items) => {
                for w in items {
                    for q in ["index", "validatorIndex", "amount"] {
                        assert!(w[q].as_str().is_some_and(is_quantity), "{q}: {w}");
                    }
                    assert!(w["address"].as_str().is_some_and(is_data), "{w}");
                }
            }
            other => panic!("{k}: {other}"),
        }
    }
    assert!(env["blockValue"].as_str().is_some_and(is_quantity), "{env}");
    assert_eq!(result(&s, "eth_blockNumber", json!([])).await, "0x0");
    assert_eq!(result(&s, "eth_chainId", json!([])).await, "0x539");
    let block = result(&s, "eth_getBlockByNumber", json!(["0x0", false])).await;
    for q in ["number", "gasLimit", "gasUsed", "timestamp", "size"] {
        assert!(block[q].as_str().is_some_and(is_quantity), "{q}: {block}");
    }
}

// ---- engine_newPayloadV4 (paris.md, shanghai.md, cancun.md, prague.md) ----

async fn built(s: &Served) -> Value {
    let id = build(s, &genesis(s), T0 + 1).await;
    payload(s, &id).await
}

#[tokio::test]
async fn new_payload_params_must_all_be_given_and_not_null() {
    // cancun.md: "Client software **MUST** check that provided set of parameters and their fields strictly matches the expected one and return `-32602: Invalid params` error if this check fails. Any field having `null` value **MUST** be considered as not provided."
    let s = Served::start().await;
    let ep = built(&s).await;
    for params in [
        json!([ep, [], zero()]),
        json!([ep, null, zero(), []]),
        json!([ep, [], null, []]),
        json!([ep, [], zero(), [], []]),
        json!([null, [], zero(), []]),
        json!([ep]),
    ] {
        expect_error(&s, "engine_newPayloadV4", params, -32602).await;
    }
}

#[tokio::test]
async fn new_payload_execution_requests_null_is_invalid_params() {
    // prague.md: "If any element is out of order, has a length of 1-byte or shorter, or more than one element has the same type byte, or the param is `null`, client software **MUST** return `-32602: Invalid params` error."
    let s = Served::start().await;
    let ep = built(&s).await;
    for requests in [
        Value::Null,
        json!(["0x01aa", "0x00aa"]),
        json!(["0x00"]),
        json!(["0x"]),
        json!(["0x00aa", "0x00bb"]),
    ] {
        expect_error(
            &s,
            "engine_newPayloadV4",
            json!([ep, [], zero(), requests]),
            -32602,
        )
        .await;
    }
    // Well formed but not this block's: it fails the hash check instead.
    let r = result(
        &s,
        "engine_newPayloadV4",
        json!([ep, [], zero(), ["0x00aa", "0x01bb"]]),
    )
    .await;
    assert_eq!(r["status"], "INVALID", "{r}");
}

#[tokio::test]
async fn new_payload_fields_must_be_those_of_execution_payload_v3() {
    // cancun.md: "Client software **MUST** check that provided set of parameters and their fields strictly matches the expected one and return `-32602: Invalid params` error if this check fails."
    let s = Served::start().await;
    let ep = built(&s).await;
    let mut missing = ep.clone();
    missing
        .as_object_mut()
        .expect("object")
        .remove("blobGasUsed");
    let mut null_withdrawals = ep.clone();
    null_withdrawals["withdrawals"] = Value::Null;
    let mut extra = ep.clone();
    extra["parentBeaconBlockRoot"] = json!(zero());
    for p in [missing, null_withdrawals, extra] {
        expect_error(
            &s,
            "engine_newPayloadV4",
            json!([p, [], zero(), []]),
            -32602,
        )
        .await;
    }
}

#[tokio::test]
async fn new_payload_valid_is_valid_with_its_hash() {
    // paris.md: "If validation succeeds, the response **MUST** contain `{status: VALID, latestValidHash: payload.blockHash}`"
    let s = Served::start().await;
    let ep = built(&s).await;
    assert_status(
        &new_payload(&s, &ep).await,
        "VALID",
        &ep["blockHash"],
        false,
    );
}

#[tokio::test]
async fn new_payload_known_block_is_valid_again() {
    // paris.md: "Payload validation process **MUST** be idempotent with respect to payload's validity status (`VALID | INVALID`)"
    let s = Served::start().await;
    let ep = built(&s).await;
    for _ in 0..2 {
        assert_status(
            &new_payload(&s, &ep).await,
            "VALID",
            &ep["blockHash"],
            false,
        );
    }
    let bad = resealed(&ep, |p| {
        p.payload.payload_inner.payload_inner.block_number = 5
    });
    for _ in 0..2 {
        assert_eq!(new_payload(&s, &bad).await["status"], "INVALID");
    }
}

#[tokio::test]
async fn new_payload_wrong_block_hash_is_invalid_with_null_latest_valid_hash() {
    // shanghai.md: "Client software **MUST** return `{status: INVALID, latestValidHash: null, validationError: errorMessage | null}` if the `blockHash` validation has failed."
    let s = Served::start().await;
    let mut ep = built(&s).await;
    ep["blockHash"] = json!(hash(0xab));
    assert_status(&new_payload(&s, &ep).await, "INVALID", &Value::Null, true);
}

#[tokio::test]
async fn new_payload_block_hash_is_checked_for_a_stored_block_too() {
    // paris.md: "Client software **MUST** validate `blockHash` value as being equivalent to `Keccak256(RLP(ExecutionBlockHeader))` ... Client software **MUST** run this validation in all cases"
    let s = Served::start().await;
    let ep = built(&s).await;
    assert_eq!(new_payload(&s, &ep).await["status"], "VALID");
    let mut tampered = ep.clone();
    tampered["extraData"] = json!("0x00");
    assert_status(
        &new_payload(&s, &tampered).await,
        "INVALID",
        &Value::Null,
        true,
    );
}

#[tokio::test]
async fn new_payload_execution_requests_enter_the_hash_check() {
    // prague.md: "if the computed commitment does not match the corresponding commitment in the execution layer block header, the call **MUST** return `{status: INVALID, latestValidHash: null, validationError: errorMessage | null}`."
    let s = Served::start().await;
    let ep = built(&s).await;
    let r = result(
        &s,
        "engine_newPayloadV4",
        json!([ep, [], zero(), ["0x00aa"]]),
    )
    .await;
    assert_status(&r, "INVALID", &Value::Null, true);
}

#[tokio::test]
async fn new_payload_blob_hashes_that_do_not_match_are_invalid() {
    // cancun.md: "Return `{status: INVALID, latestValidHash: null, validationError: errorMessage | null}` if the expected and the actual arrays don't match."
    let s = Served::start().await;
    let ep = built(&s).await;
    let r = result(
        &s,
        "engine_newPayloadV4",
        json!([ep, [hash(0x01)], zero(), []]),
    )
    .await;
    assert_status(&r, "INVALID", &Value::Null, true);
}

#[tokio::test]
async fn new_payload_empty_transaction_is_invalid_with_null_latest_valid_hash() {
    // paris.md: "`{status: INVALID, latestValidHash: null, validationError: errorMessage | null}` if `transactions` contains zero length or invalid entries"
    let s = Served::start().await;
    let ep = built(&s).await;
    let with_empty = resealed(&ep, |p| {
        p.payload
            .payload_inner
            .payload_inner
            .transactions
            .push(Bytes::new())
    });
    assert_status(
        &new_payload(&s, &with_empty).await,
        "INVALID",
        &Value::Null,
        true,
    );
}

#[tokio::test]
async fn new_payload_unknown_parent_is_syncing() {
    // paris.md: "`{status: SYNCING, latestValidHash: null, validationError: null}` if requisite data for the payload's acceptance or validation is missing"
    let other = Served::start().await;
    let b1 = extend(&other, &genesis(&other), T0 + 1).await;
    let b2 = payload(
        &other,
        &build(&other, b1["blockHash"].as_str().expect("h"), T0 + 2).await,
    )
    .await;
    let s = Served::start().await;
    assert_status(&new_payload(&s, &b2).await, "SYNCING", &Value::Null, false);
}

#[tokio::test]
async fn new_payload_invalid_on_a_valid_parent_names_the_parent() {
    // paris.md: "If validation fails, the response **MUST** contain `{status: INVALID, latestValidHash: validHash}` where `validHash` **MUST** be: The block hash of the ancestor of the invalid payload satisfying the following two conditions: It is fully validated and deemed `VALID`; Any other ancestor of the invalid payload with a higher `blockNumber` is `INVALID`"
    let s = Served::start().await;
    let ep = built(&s).await;
    let wrong_number = resealed(&ep, |p| {
        p.payload.payload_inner.payload_inner.block_number = 5
    });
    assert_status(
        &new_payload(&s, &wrong_number).await,
        "INVALID",
        &json!(genesis(&s)),
        true,
    );
    // Block 1 at T0 + 10, then a block 2 on it dated before it.
    let b1 = extend(&s, &genesis(&s), T0 + 10).await;
    let b1_hash = b1["blockHash"].as_str().expect("h").to_string();
    let b2 = payload(&s, &build(&s, &b1_hash, T0 + 11).await).await;
    let before_parent = resealed(&b2, |p| {
        p.payload.payload_inner.payload_inner.timestamp = T0 + 5
    });
    assert_status(
        &new_payload(&s, &before_parent).await,
        "INVALID",
        &json!(b1_hash),
        true,
    );
}

#[tokio::test]
async fn new_payload_invalid_block_is_not_surfaced() {
    // paris.md: "Client software **MUST NOT** surface an `INVALID` payload over any API endpoint and p2p interface."
    let s = Served::start().await;
    let ep = built(&s).await;
    let bad = resealed(&ep, |p| {
        p.payload.payload_inner.payload_inner.block_number = 5
    });
    assert_eq!(new_payload(&s, &bad).await["status"], "INVALID");
    let r = fcu_result(
        &s,
        json!([
            state(bad["blockHash"].as_str().expect("h"), &zero(), &zero()),
            null
        ]),
    )
    .await;
    assert_eq!(r["payloadStatus"]["status"], "SYNCING", "{r}");
    let v = post(&s, &req("eth_getBlockByNumber", json!(["0x5", false]))).await;
    assert_eq!(v.get("result"), Some(&Value::Null), "{v}");
    assert_eq!(head_hash(&s).await, genesis(&s).as_str());
}

#[tokio::test]
async fn eth_get_block_by_number_unknown_block_is_null() {
    // src/eth/block.yaml (eth_getBlockByNumber): "oneOf: - $ref: '#/components/schemas/notFound'" where notFound is "type: 'null'"
    let s = Served::start().await;
    let v = post(&s, &req("eth_getBlockByNumber", json!(["0x5", false]))).await;
    assert_eq!(v.get("result"), Some(&Value::Null), "{v}");
}
