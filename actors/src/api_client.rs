//! A client for a node's own HTTP API (`ctl`, `devnet`, the benches, tests), on hyper: one
//! request under one deadline, the body read in full (bounded), and the `/events` stream read
//! event by event.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The largest response body accepted.
const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The longest line of the event stream accepted.
const EVENT_LINE_MAX: usize = 1024 * 1024;

/// A response: status code and body text.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// Body, decoded as UTF-8 (lossily).
    pub body: String,
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn build(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Result<Request<Full<Bytes>>, String> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = Full::new(Bytes::from(body.unwrap_or("").to_owned()));
    req.body(body)
        .map_err(|e| format!("{method} http://{addr}{path}: {e}"))
}

/// Send one request to `addr` (`host:port`) and read the whole response.
///
/// # Errors
/// Connection refused, timeout, a body beyond 16 MiB, or a response that is not HTTP.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    request_auth(addr, method, path, body, None, timeout).await
}

/// As [`request`], with an optional bearer token.
///
/// # Errors
/// Connection refused, timeout, a body beyond 16 MiB, or a response that is not HTTP.
pub async fn request_auth(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let what = || format!("{method} http://{addr}{path}");
    let req = build(addr, method, path, body, token)?;
    let call = async {
        let resp = client()
            .request(req)
            .await
            .map_err(|e| format!("{}: {}", what(), error_chain(&e)))?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| format!("{}: reading the body: {e}", what()))?
            .to_bytes();
        Ok(HttpResponse {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("{}: no answer within {timeout:?}", what()))?
}

/// hyper's errors say "client error (Connect)"; the cause ("Connection refused") is below.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// A node's `/events` stream (server-sent events), read one event's data at a time.
pub struct EventStream {
    body: Incoming,
    buf: Vec<u8>,
}

impl EventStream {
    /// Open `GET /events` on `addr`; the connection and the response head must come within
    /// `timeout`.
    ///
    /// # Errors
    /// Connection refused, timeout, or a status other than 200.
    pub async fn open(addr: &str, timeout: Duration) -> Result<Self, String> {
        let req = Request::builder()
            .uri(format!("http://{addr}/events"))
            .header(header::ACCEPT, "text/event-stream")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("GET http://{addr}/events: {e}"))?;
        let resp = tokio::time::timeout(timeout, client().request(req))
            .await
            .map_err(|_| format!("GET http://{addr}/events: no answer within {timeout:?}"))?
            .map_err(|e| format!("GET http://{addr}/events: {}", error_chain(&e)))?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(format!("GET http://{addr}/events: HTTP {}", resp.status()));
        }
        Ok(EventStream {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }

    /// The next event's `data:` text; `None` when the node closed the stream.
    ///
    /// # Errors
    /// The connection failed, or a line beyond 1 MiB.
    pub async fn next_data(&mut self) -> Result<Option<String>, String> {
        loop {
            while let Some(eol) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=eol).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(data) = line.trim_end().strip_prefix("data:") {
                    return Ok(Some(data.trim().to_string()));
                }
            }
            if self.buf.len() > EVENT_LINE_MAX {
                return Err(format!("an event line beyond {EVENT_LINE_MAX} bytes"));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(format!("the event stream failed: {e}")),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
            }
        }
    }
}
