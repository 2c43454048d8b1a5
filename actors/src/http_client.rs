//! A minimal HTTP/1.1 client for talking to a node's own API on loopback (`devnet`, `ctl`,
//! tests): one request per connection, every step under a deadline.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response body accepted.
const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A response: status code and body text.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// Body, decoded as UTF-8 (lossily).
    pub body: String,
}

/// Send one request to `addr` (`host:port`) and read the whole response.
///
/// # Errors
/// Connection refused, timeout, or a response that is not HTTP.
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
/// Connection refused, timeout, or a response that is not HTTP.
pub async fn request_auth(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    tokio::time::timeout(timeout, request_inner(addr, method, path, body, token))
        .await
        .map_err(|_| format!("{method} http://{addr}{path}: no answer within {timeout:?}"))?
}

async fn request_inner(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Result<HttpResponse, String> {
    let ctx = |e: std::io::Error| format!("{method} http://{addr}{path}: {e}");
    let mut s = TcpStream::connect(addr).await.map_err(ctx)?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.map_err(ctx)?;
    let mut buf = Vec::new();
    (&mut s)
        .take(RESPONSE_BYTES_MAX as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(ctx)?;
    parse(&buf).ok_or_else(|| format!("{method} http://{addr}{path}: malformed HTTP response"))
}

fn parse(buf: &[u8]) -> Option<HttpResponse> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..split]).ok()?;
    let status: u16 = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let raw = &buf[split + 4..];
    let body = if chunked { dechunk(raw)? } else { raw.to_vec() };
    Some(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let r = parse(
            b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abc"));
        assert!(parse(b"garbage").is_none());
    }
}
