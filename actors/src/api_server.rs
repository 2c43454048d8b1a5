//! The HTTP API's server: hyper under an accept loop of haseq's own, so that what an open port
//! invites is bounded. A connection must send its request headers within
//! `header_read_timeout` (slow-loris clients are cut off); at most `max_connections` are open
//! at once (beyond that a new one is closed at once and counted); the `/events` stream has
//! its own cap ([`ApiLimits::max_event_subscribers`], enforced in the handler). Accept errors
//! (out of file descriptors, say) are counted and retried with a backoff, never given up on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How long a connection may take to finish its requests once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Accept-error backoff: first and longest pause.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning this often for connections refused at the cap.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the API port admits (`api.max_connections`, `api.max_event_subscribers`,
/// `api.header_read_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// `/events` streams open at once.
    pub max_event_subscribers: usize,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_connections: 256,
            max_event_subscribers: 64,
            header_read_timeout: Duration::from_secs(5),
        }
    }
}

/// Serve `app` on `listener` until `shutdown`; then stop accepting, let open connections end
/// their requests for up to 2 s, and return.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ApiLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = tokio::task::JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = ACCEPT_BACKOFF_MIN;
                a
            }
            Err(e) => {
                metrics::counter!("haseq_api_accept_errors_total").increment(1);
                tracing::warn!(error = %e, retry_in = ?backoff, "HTTP API: accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("haseq_api_connections_refused_total").increment(1);
            if last_refusal_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                last_refusal_log = Some(Instant::now());
                tracing::warn!(
                    peer = %peer,
                    max = limits.max_connections,
                    "HTTP API: connection refused, api.max_connections are open"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = shutdown.clone();
        conns.spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %peer, "HTTP API connection: {e}");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
    // Stop accepting at once; the connections end their requests (bounded).
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE * 2, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
}
