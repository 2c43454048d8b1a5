//! The embedded engine served on loopback, and raw HTTP to it: shared by `engine_api.rs` (the
//! client against the server) and `engine_spec.rs` (the server against the specification).

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use haseq_engine::{
    EmbeddedConfig, EmbeddedEngine, EngineApiClient, EngineApiConfig, jwt_token, serve,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub const SECRET: [u8; 32] = [0x5a; 32];

/// The members of `ExecutionPayloadV3` (execution-apis `src/engine/openrpc/schemas/payload.yaml`),
/// written out here rather than taken from the server, which is what the tests check.
pub const EXECUTION_PAYLOAD_V3: [&str; 17] = [
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

/// An embedded engine served on 127.0.0.1:0; stops its server on drop.
pub struct Served {
    pub addr: SocketAddr,
    pub engine: Arc<EmbeddedEngine>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Served {
    /// Blocks of 4 synthetic transactions of 256 bytes.
    pub async fn start() -> Served {
        Served::start_with(|_| {}).await
    }

    /// As [`Served::start`], with `adjust` applied to the configuration first.
    pub async fn start_with(adjust: impl FnOnce(&mut EmbeddedConfig)) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = EmbeddedConfig::new(dir.path());
        config.txs_per_block = 4;
        config.tx_bytes = 256;
        adjust(&mut config);
        let engine = Arc::new(EmbeddedEngine::open(config).expect("open"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, SECRET, engine.clone(), shutdown.clone()));
        Served {
            addr,
            engine,
            shutdown,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> EngineApiClient {
        EngineApiClient::new(EngineApiConfig::new(self.url(), SECRET)).expect("client")
    }
}

/// POSTs `body` with the extra header lines `headers` (each without its CRLF); returns the
/// status and the body.
pub async fn raw_request(addr: SocketAddr, headers: &[String], body: &str) -> (u16, String) {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// POSTs `body` to the server with an optional bearer token; returns status and body.
pub async fn raw_post(addr: SocketAddr, token: Option<String>, body: &Value) -> (u16, String) {
    let auth: Vec<String> = token
        .map(|t| format!("Authorization: Bearer {t}"))
        .into_iter()
        .collect();
    raw_request(addr, &auth, &body.to_string()).await
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

pub fn fresh_token() -> String {
    jwt_token(&SECRET, now_secs())
}
