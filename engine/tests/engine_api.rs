//! The Engine API client against the embedded engine served over HTTP on loopback: the
//! client's path exercised for real, wrong credentials, tampered payloads, a dead endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use haseq_engine::{
    BuildParams, EmbeddedConfig, EmbeddedEngine, EngineApiClient, EngineApiConfig, EngineError,
    ExecutionEngine, PayloadStatus, decode_payload, encode_payload, jwt_token, serve,
};
use haseq_messages::{BlockHash, Height};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

mod served;

use served::{EXECUTION_PAYLOAD_V3, SECRET, Served, fresh_token, raw_post};

/// Builds `n` blocks through `engine` and makes each canonical there; returns their encodings.
async fn produce(engine: &dyn ExecutionEngine, n: u64) -> Vec<(BlockHash, Vec<u8>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (height, hash) = engine.head().await.expect("head");
        let id = engine
            .build_payload(BuildParams {
                parent: hash,
                parent_height: height,
                timestamp: 1_700_000_000 + height.0 + 1,
                fee_recipient: [0x42; 20],
            })
            .await
            .expect("build");
        let built = engine.get_payload(id).await.expect("get");
        assert_eq!((built.number, built.parent_hash), (height.next(), hash));
        assert_eq!(
            engine.new_payload(&built.encoded).await.expect("import"),
            PayloadStatus::Valid
        );
        let h = built.block_hash;
        engine.set_head(h, h, h).await.expect("set head");
        out.push((h, built.encoded));
    }
    out
}

#[tokio::test]
async fn client_builds_and_replays_a_chain_over_http() {
    let leader = Served::start().await;
    let follower = Served::start().await;
    let to_leader = leader.client();
    let to_follower = follower.client();

    let caps = to_leader
        .exchange_capabilities()
        .await
        .expect("capabilities");
    for m in [
        "engine_forkchoiceUpdatedV3",
        "engine_getPayloadV5",
        "engine_newPayloadV4",
    ] {
        assert!(caps.iter().any(|c| c == m), "{m} missing from {caps:?}");
    }
    assert_eq!(
        to_leader.chain_id().await.expect("chain id"),
        leader.engine.chain_id()
    );

    let blocks = produce(&to_leader, 30).await;
    let top = blocks[29].0;
    assert_eq!(to_leader.head().await.expect("head"), (Height(30), top));
    // The server's engine agrees with what the client read over HTTP.
    assert_eq!(leader.engine.head().await.expect("head"), (Height(30), top));

    // Replay into the follower in batches of 10: import, then one fork-choice per batch.
    for batch in blocks.chunks(10) {
        for (_, encoded) in batch {
            assert!(
                to_follower
                    .new_payload(encoded)
                    .await
                    .expect("import")
                    .is_valid()
            );
        }
        let last = batch[batch.len() - 1].0;
        to_follower
            .set_head(last, last, last)
            .await
            .expect("set head");
    }
    assert_eq!(to_follower.head().await.expect("head"), (Height(30), top));
    for (i, (hash, _)) in blocks.iter().enumerate() {
        assert_eq!(
            to_follower
                .block_hash_at(Height(i as u64 + 1))
                .await
                .expect("at"),
            Some(*hash)
        );
    }
    assert_eq!(
        to_follower.block_hash_at(Height(31)).await.expect("at"),
        None
    );
    // Ahead on the same chain: set back.
    let b20 = blocks[19].0;
    to_follower.set_head(b20, b20, b20).await.expect("set back");
    assert_eq!(to_follower.head().await.expect("head"), (Height(20), b20));
}

#[tokio::test]
async fn wrong_jwt_is_refused_with_a_clear_error() {
    let served = Served::start().await;
    let mut config = EngineApiConfig::new(served.url(), [0x11; 32]);
    config.retries_max = 3;
    config.backoff_initial = Duration::from_secs(1);
    let client = EngineApiClient::new(config).expect("client");
    let start = Instant::now();
    let err = client.head().await.expect_err("wrong secret");
    assert!(
        matches!(err, EngineError::Auth { status: 401, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&served.url()) && msg.contains("401"), "{msg}");
    // Not retried: an auth failure gets the same answer every time.
    assert!(
        start.elapsed() < Duration::from_millis(45),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn payload_with_a_wrong_block_hash_is_rejected_and_nothing_applied() {
    let served = Served::start().await;
    let client = served.client();
    produce(&client, 2).await;
    let before = client.head().await.expect("head");
    // Build block 3 for real, then forge its hash.
    let (h, parent) = before;
    let id = client
        .build_payload(BuildParams {
            parent,
            parent_height: h,
            timestamp: 1_800_000_000,
            fee_recipient: [1; 20],
        })
        .await
        .expect("build");
    let built = client.get_payload(id).await.expect("get");
    let mut p = decode_payload(&built.encoded).expect("decode");
    p.payload.payload_inner.payload_inner.block_hash = alloy_forged();
    let status = client
        .new_payload(&encode_payload(&p))
        .await
        .expect("answered");
    let PayloadStatus::Invalid { reason } = status else {
        panic!("expected INVALID, got {status:?}");
    };
    assert!(
        reason.contains(&built.block_hash.to_string()) && reason.contains("0xabab"),
        "{reason}"
    );
    assert_eq!(client.head().await.expect("head"), before);
    assert_eq!(client.block_hash_at(h.next()).await.expect("at"), None);
    let forged = BlockHash([0xab; 32]);
    let err = client
        .set_head(forged, forged, forged)
        .await
        .expect_err("unknown");
    assert!(matches!(err, EngineError::Syncing { .. }), "{err:?}");
}

fn alloy_forged() -> alloy_primitives::B256 {
    alloy_primitives::B256::repeat_byte(0xab)
}

#[tokio::test]
async fn server_down_is_a_transport_error_within_the_deadline() {
    // A port with nothing listening: connection refused, retried, then reported.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut config = EngineApiConfig::new(format!("http://{addr}"), SECRET);
    config.call_timeout = Duration::from_millis(300);
    config.retries_max = 2;
    config.backoff_initial = Duration::from_millis(10);
    let client = EngineApiClient::new(config).expect("client");
    let start = Instant::now();
    let err = client.head().await.expect_err("down");
    assert!(matches!(err, EngineError::Transport { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );

    // A listener that never answers: each attempt times out, and the whole call is bounded.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut config = EngineApiConfig::new(
        format!("http://{}", silent.local_addr().expect("addr")),
        SECRET,
    );
    config.call_timeout = Duration::from_millis(200);
    config.retries_max = 1;
    config.backoff_initial = Duration::from_millis(10);
    let client = EngineApiClient::new(config).expect("client");
    let start = Instant::now();
    let err = client.head().await.expect_err("silent");
    assert!(matches!(err, EngineError::Timeout { .. }), "{err:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[tokio::test]
async fn server_requires_a_valid_fresh_token() {
    let served = Served::start().await;
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []});
    assert_eq!(raw_post(served.addr, None, &req).await.0, 401);
    assert_eq!(
        raw_post(served.addr, Some(jwt_token(&SECRET, 1_000)), &req)
            .await
            .0,
        401
    );
    assert_eq!(
        raw_post(served.addr, Some(jwt_token(&[0; 32], 1_000)), &req)
            .await
            .0,
        401
    );
    let (status, body) = raw_post(served.addr, Some(fresh_token()), &req).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["result"], "0x0");
    assert_eq!(v["id"], 1);
}

#[tokio::test]
async fn responses_carry_the_spec_fields() {
    let served = Served::start().await;
    let genesis = served.engine.genesis_hash().to_string();
    let call = |method: &str, params: Value| json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    let post = |req: Value| async move {
        let (status, body) = raw_post(served.addr, Some(fresh_token()), &req).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).expect("json")
    };
    let fcu = post(call(
        "engine_forkchoiceUpdatedV3",
        json!([
            {"headBlockHash": genesis, "safeBlockHash": genesis, "finalizedBlockHash": genesis},
            {"timestamp": "0x10", "prevRandao": format!("0x{}", "00".repeat(32)),
             "suggestedFeeRecipient": format!("0x{}", "11".repeat(20)),
             "withdrawals": [], "parentBeaconBlockRoot": format!("0x{}", "00".repeat(32))}
        ]),
    ))
    .await;
    let r = &fcu["result"];
    assert_eq!(r["payloadStatus"]["status"], "VALID", "{fcu}");
    assert_eq!(r["payloadStatus"]["latestValidHash"], genesis.as_str());
    assert!(r["payloadStatus"].get("validationError").is_some(), "{fcu}");
    let id = r["payloadId"].as_str().expect("payloadId").to_string();
    assert_eq!(id.len(), 18, "bytes8: {id}");

    let got = post(call("engine_getPayloadV5", json!([id]))).await;
    let r = &got["result"];
    for key in [
        "executionPayload",
        "blockValue",
        "blobsBundle",
        "shouldOverrideBuilder",
        "executionRequests",
    ] {
        assert!(
            r.get(key).is_some(),
            "getPayloadV5 result lacks {key}: {got}"
        );
    }
    let ep = &r["executionPayload"];
    for key in EXECUTION_PAYLOAD_V3 {
        assert!(
            ep.get(key).is_some(),
            "ExecutionPayloadV3 lacks {key}: {ep}"
        );
    }
    assert_eq!(ep["blockNumber"], "0x1");
    assert_eq!(ep["parentHash"], genesis.as_str());
    for key in ["commitments", "proofs", "blobs"] {
        assert!(
            r["blobsBundle"].get(key).is_some(),
            "blobsBundle lacks {key}"
        );
    }
    // Osaka from genesis: this payload is not for V4 (engine_spec.rs checks both forks).
    let v4 = post(call("engine_getPayloadV4", json!([id]))).await;
    assert_eq!(v4["error"]["code"], -38005, "{v4}");

    let np = post(call(
        "engine_newPayloadV4",
        json!([ep, [], format!("0x{}", "00".repeat(32)), []]),
    ))
    .await;
    assert_eq!(np["result"]["status"], "VALID", "{np}");
    assert_eq!(np["result"]["latestValidHash"], ep["blockHash"]);

    let unknown = post(call("engine_getPayloadV5", json!(["0x0000000000000001"]))).await;
    assert_eq!(unknown["error"]["code"], -38001, "{unknown}");
    let bad_state = post(call(
        "engine_forkchoiceUpdatedV3",
        json!([{"headBlockHash": genesis, "safeBlockHash": ep["blockHash"], "finalizedBlockHash": genesis}, null]),
    ))
    .await;
    assert_eq!(bad_state["error"]["code"], -38002, "{bad_state}");
    let syncing = post(call(
        "engine_forkchoiceUpdatedV3",
        json!([{"headBlockHash": format!("0x{}", "77".repeat(32)),
                "safeBlockHash": genesis, "finalizedBlockHash": genesis}, null]),
    ))
    .await;
    assert_eq!(
        syncing["result"]["payloadStatus"]["status"], "SYNCING",
        "{syncing}"
    );
    assert_eq!(syncing["result"]["payloadId"], Value::Null);
    let missing = post(call("engine_nonexistent", json!([]))).await;
    assert_eq!(missing["error"]["code"], -32601);

    let block = post(call("eth_getBlockByNumber", json!(["0x0", false]))).await;
    let b = &block["result"];
    for key in [
        "hash",
        "parentHash",
        "sha3Uncles",
        "miner",
        "stateRoot",
        "transactionsRoot",
        "receiptsRoot",
        "logsBloom",
        "number",
        "gasLimit",
        "gasUsed",
        "timestamp",
        "extraData",
        "mixHash",
        "nonce",
        "size",
        "transactions",
        "uncles",
    ] {
        assert!(b.get(key).is_some(), "Block lacks {key}: {block}");
    }
    assert_eq!(b["hash"], genesis.as_str());
    assert_eq!(b["number"], "0x0");
    let none = post(call("eth_getBlockByNumber", json!(["0x5", false]))).await;
    assert_eq!(none["result"], Value::Null);
    let chain = post(call("eth_chainId", json!([]))).await;
    assert_eq!(chain["result"], format!("{:#x}", served.engine.chain_id()));
}

#[tokio::test]
async fn faults_surface_through_the_client() {
    let served = Served::start().await;
    let client = served.client();
    served
        .engine
        .set_faults(haseq_engine::Faults {
            fail: true,
            ..Default::default()
        })
        .await
        .expect("set");
    let err = client.head().await.expect_err("fault");
    assert!(
        matches!(&err, EngineError::Rpc { code: -32000, message, .. } if message.contains("fault")),
        "{err:?}"
    );
    served
        .engine
        .set_faults(haseq_engine::Faults::default())
        .await
        .expect("clear");
    produce(&client, 1).await;
}

#[tokio::test]
async fn transport_failures_are_retried_until_the_server_is_up() {
    // Reserve a port, free it, and start serving on it only after the client's first attempt.
    let port_holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = port_holder.local_addr().expect("addr");
    drop(port_holder);
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(EmbeddedEngine::open(EmbeddedConfig::new(dir.path())).expect("open"));
    let shutdown = CancellationToken::new();
    let (s, e) = (shutdown.clone(), engine.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
        serve(listener, SECRET, e, s).await
    });
    let mut config = EngineApiConfig::new(format!("http://{addr}"), SECRET);
    config.retries_max = 8;
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    let client = EngineApiClient::new(config).expect("client");
    let head = client.head().await.expect("served after retries");
    assert_eq!(head, (Height(0), engine.genesis_hash()));
    shutdown.cancel();
}
