//! The server side: accept, authenticate, serve requests concurrently, shut down in bounded
//! time.
//!
//! Shape (after mini-redis's `server.rs`): a semaphore caps connections and is taken before
//! `accept`, so past the cap new peers wait in the kernel's backlog instead of costing
//! memory. Each connection runs the handshake under `connect_timeout`, then a reader loop
//! that hands each request to its own task (at most `REQUESTS_INFLIGHT_MAX` at once, each
//! bounded by `send_timeout` or `snapshot_timeout`, plus `SERVE_MARGIN`) and one writer task
//! that sends the answers in completion order. Shutdown is two steps: cancel the token (stop
//! accepting, every connection stops reading and drops its pending work), then wait for the
//! connections under `SHUTDOWN_GRACE`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use haseq_messages::NodeId;
use haseq_messages::wire::{
    FRAME_BYTES_MAX, RemoteError, Request, Response, RpcRequest, RpcResponse,
};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::codec::{Framed, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

/// How long past the caller's budget a request may run here before it is answered
/// `Unavailable`. Equal budgets raced: the server's answer could land in the same timer tick
/// as the caller's timeout and be reported in its place.
const SERVE_MARGIN: Duration = Duration::from_millis(100);
use tokio_util::task::TaskTracker;

use crate::config::NetConfig;
use crate::frame::{self, FrameError, codec};
use crate::handshake::{self, HandshakeError, RefusalReason};
use crate::limits::{
    ACCEPT_BACKOFF_MAX, ACCEPT_FAILURES_MAX, CONNECTION_IDLE_MAX, CONNECTIONS_MAX,
    HANDSHAKE_FRAME_BYTES_MAX, REQUESTS_INFLIGHT_MAX, RESPONSES_QUEUED_MAX, SHUTDOWN_GRACE,
};
use crate::metrics;

/// Answers the requests of authenticated members.
pub trait RpcHandler: Send + Sync + 'static {
    /// Serve one request from member `from`. Failures are answers too
    /// (`RpcResponse::Error`); the transport bounds the call by its deadline.
    fn handle(&self, from: NodeId, req: RpcRequest) -> impl Future<Output = RpcResponse> + Send;

    /// Member `from` opened a connection (it passed the handshake).
    fn link_opened(&self, _from: &NodeId) {}

    /// A connection from member `from` ended. `how` says whether the peer vanished (its
    /// side closed or reset the socket without a goodbye: its process died, or something
    /// on the path cut the connection) or left on purpose, or this side closed it.
    fn link_closed(&self, _from: &NodeId, _how: LinkClosed) {}
}

/// How a connection from a member ended (see [`RpcHandler::link_closed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkClosed {
    /// The peer closed or reset it without saying goodbye.
    Vanished,
    /// The peer said goodbye first.
    Goodbye,
    /// This side closed it (shutdown, idle, a broken frame, a stalled write).
    Local,
}

impl LinkClosed {
    /// Every value, for metrics created at 0.
    pub const ALL: [LinkClosed; 3] = [LinkClosed::Vanished, LinkClosed::Goodbye, LinkClosed::Local];

    /// The `how` label of `haseq_peer_links_closed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkClosed::Vanished => "vanished",
            LinkClosed::Goodbye => "goodbye",
            LinkClosed::Local => "local",
        }
    }
}

/// Whether a node id belongs to the cluster (asked once per connection, after the peer has
/// proven the secret).
pub type IsMember = Arc<dyn Fn(&NodeId) -> bool + Send + Sync>;

/// Serve node-to-node connections on `listener` until `shutdown` is cancelled.
///
/// Only peers that prove the cluster secret and pass `is_member` get their requests to
/// `handler`; every refusal is logged with the peer's address and counted in
/// `haseq_peer_auth_refused_total{reason}`. On cancel, stops accepting at once and returns
/// once every connection has closed, or after `SHUTDOWN_GRACE` at most.
///
/// # Errors
/// When `accept` fails `ACCEPT_FAILURES_MAX` times in a row (the listener is broken).
pub async fn serve<H: RpcHandler>(
    listener: TcpListener,
    cfg: NetConfig,
    handler: Arc<H>,
    is_member: IsMember,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let local = listener.local_addr().ok();
    tracing::info!(node = %cfg.node_id, addr = ?local, "serving node-to-node connections");
    let cfg = Arc::new(cfg);
    let limit = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let tracker = TaskTracker::new();
    let mut failures: u32 = 0;
    let result = loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            p = limit.clone().acquire_owned() => p.expect("connection semaphore never closed"),
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            a = listener.accept() => a,
        };
        let (stream, peer_addr) = match accepted {
            Ok(x) => {
                failures = 0;
                x
            }
            Err(e) => {
                // Per-connection failures (reset before accept) and resource exhaustion
                // (EMFILE) pass; wait a little so as not to spin, give up if it persists.
                failures += 1;
                if failures >= ACCEPT_FAILURES_MAX {
                    tracing::error!(addr = ?local, "accept failed {failures} times in a row: {e}");
                    break Err(e);
                }
                let wait = (Duration::from_millis(10) * failures).min(ACCEPT_BACKOFF_MAX);
                tracing::warn!(addr = ?local, "accept: {e}; retrying in {wait:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        let conn = Connection {
            cfg: cfg.clone(),
            peer_addr,
            cancel: shutdown.child_token(),
            _permit: permit,
        };
        tracker.spawn(conn.run(stream, handler.clone(), is_member.clone()));
    };
    // Refuse new peers at once, then let the connections (already told by the token) close.
    drop(listener);
    tracker.close();
    if timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        tracing::warn!(
            addr = ?local, open = tracker.len(),
            "connections still open {SHUTDOWN_GRACE:?} after shutdown; leaving them"
        );
    }
    tracing::info!(node = %cfg.node_id, addr = ?local, "stopped serving");
    result
}

/// One accepted connection, from handshake to close.
struct Connection {
    cfg: Arc<NetConfig>,
    peer_addr: SocketAddr,
    /// Cancelled on shutdown (child of the server's token) or when this connection fails.
    cancel: CancellationToken,
    /// Returned to the connection cap when the connection ends.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn run<H: RpcHandler>(self, stream: TcpStream, handler: Arc<H>, is_member: IsMember) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer_addr = %self.peer_addr, "set_nodelay: {e}");
        }
        let mut framed = Framed::new(stream, codec(HANDSHAKE_FRAME_BYTES_MAX));
        let Some(from) = self.handshake(&mut framed, &*is_member).await else {
            return;
        };
        tracing::debug!(peer = %from, peer_addr = %self.peer_addr, "peer authenticated");
        handler.link_opened(&from);

        let (mut reader, writer) = frame::split(framed, FRAME_BYTES_MAX);
        let (answers, answers_rx) = mpsc::channel(RESPONSES_QUEUED_MAX);
        let writer = tokio::spawn(write_loop(
            writer,
            answers_rx,
            self.cfg.send_timeout,
            self.cancel.clone(),
            from.clone(),
            self.peer_addr,
        ));
        let inflight = Arc::new(Semaphore::new(REQUESTS_INFLIGHT_MAX));
        let mut requests = JoinSet::new();

        let how = loop {
            // Reap finished requests so the set holds only running ones.
            while requests.try_join_next().is_some() {}
            // Past the cap, stop reading: the peer's writes back up into its own deadlines.
            let permit = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break LinkClosed::Local,
                p = inflight.clone().acquire_owned() => p.expect("request semaphore never closed"),
            };
            // A peer that vanished without a FIN would hold this connection (and a slot under
            // the cap) forever: close one that has been idle, with nothing running, too long.
            // The client redials on its next call.
            let idle = requests.is_empty();
            let frame = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break LinkClosed::Local,
                f = frame::read_frame(&mut reader, FRAME_BYTES_MAX) => f,
                _ = tokio::time::sleep(CONNECTION_IDLE_MAX), if idle => {
                    tracing::debug!(
                        peer = %from, peer_addr = %self.peer_addr,
                        "idle for {CONNECTION_IDLE_MAX:?}; closing"
                    );
                    break LinkClosed::Local;
                }
            };
            let request = match frame.and_then(|body| frame::decode::<Request>(&body)) {
                Ok(Request {
                    body: RpcRequest::Goodbye,
                    ..
                }) => {
                    tracing::debug!(peer = %from, peer_addr = %self.peer_addr, "peer said goodbye");
                    break LinkClosed::Goodbye;
                }
                Ok(r) => r,
                Err(e @ (FrameError::Closed | FrameError::Io(_))) => {
                    tracing::debug!(
                        peer = %from, peer_addr = %self.peer_addr,
                        "peer closed the connection without a goodbye: {e}"
                    );
                    break LinkClosed::Vanished;
                }
                Err(e) => {
                    tracing::warn!(
                        peer = %from, peer_addr = %self.peer_addr,
                        "dropping connection: {e}"
                    );
                    break LinkClosed::Local;
                }
            };
            // The caller gives up at its budget; ours runs a margin past it so the caller's
            // own timeout is what it reports, and this cutoff only frees the slot.
            let budget = match request.body {
                // Bulk transfers: a snapshot, or a range of blocks (a few MiB from disk).
                RpcRequest::InstallSnapshot { .. } | RpcRequest::FetchBlocks { .. } => {
                    self.cfg.snapshot_timeout
                }
                // A membership change waits for its entries to commit, and a leader that
                // removes itself for the hand-over too.
                RpcRequest::ChangeMembers { .. } => MEMBERS_TIMEOUT,
                _ => self.cfg.send_timeout,
            } + SERVE_MARGIN;
            requests.spawn(answer(
                handler.clone(),
                from.clone(),
                request,
                budget,
                answers.clone(),
                permit,
            ));
        };

        // Stop the writer and any request still running; the client's calls fail or time out.
        self.cancel.cancel();
        requests.abort_all();
        drop(answers);
        let _ = writer.await;
        metrics::link_closed(how.as_str());
        handler.link_closed(&from, how);
    }

    /// The handshake under its deadline. `None` when refused (logged and counted) or broken.
    async fn handshake(
        &self,
        framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
        is_member: &(dyn Fn(&NodeId) -> bool + Send + Sync),
    ) -> Option<NodeId> {
        let hs = handshake::server(framed, &self.cfg.node_id, &self.cfg.secret, is_member);
        let outcome = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return None,
            o = timeout(self.cfg.connect_timeout, hs) => o,
        };
        let refusal = match outcome {
            Ok(Ok(from)) => return Some(from),
            Ok(Err(HandshakeError::Refused { reason, detail })) => (reason, detail),
            Err(_) => (
                RefusalReason::Timeout,
                format!(
                    "handshake not completed within {:?}",
                    self.cfg.connect_timeout
                ),
            ),
            Ok(Err(e)) => {
                // The peer went away or the socket failed: nothing was refused.
                tracing::debug!(peer_addr = %self.peer_addr, "handshake broken: {e}");
                return None;
            }
        };
        let (reason, detail) = refusal;
        metrics::auth_refused(reason.as_str());
        tracing::warn!(
            peer_addr = %self.peer_addr, reason = reason.as_str(),
            "refused peer: {detail}"
        );
        None
    }
}

/// How long a forwarded membership change may run here (the caller waits at most 25 s).
const MEMBERS_TIMEOUT: Duration = Duration::from_secs(25);

/// Run one request under its budget and queue the answer.
async fn answer<H: RpcHandler>(
    handler: Arc<H>,
    from: NodeId,
    request: Request,
    budget: Duration,
    answers: mpsc::Sender<Response>,
    _permit: OwnedSemaphorePermit,
) {
    let kind = request.body.kind();
    let body = match timeout(budget, handler.handle(from.clone(), request.body)).await {
        Ok(body) => body,
        Err(_) => {
            tracing::warn!(peer = %from, call = kind, "handler took longer than {budget:?}");
            RpcResponse::Error(RemoteError::Unavailable(format!(
                "{kind} not served within {budget:?}"
            )))
        }
    };
    // The writer is gone only if the connection is closing; the answer has nowhere to go.
    let _ = timeout(
        budget,
        answers.send(Response {
            id: request.id,
            body,
        }),
    )
    .await;
}

async fn write_loop(
    mut writer: FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
    mut answers: mpsc::Receiver<Response>,
    write_timeout: Duration,
    cancel: CancellationToken,
    peer: NodeId,
    peer_addr: SocketAddr,
) {
    loop {
        let answer = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            a = answers.recv() => match a {
                Some(a) => a,
                None => break,
            },
        };
        let body = match frame::encode(&answer, FRAME_BYTES_MAX) {
            Ok(b) => b,
            Err(e) => {
                // The caller times out; the connection stays up for the others.
                tracing::error!(
                    peer = %peer, peer_addr = %peer_addr, id = answer.id,
                    "cannot encode answer: {e}"
                );
                continue;
            }
        };
        match timeout(write_timeout, writer.send(body)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, peer_addr = %peer_addr, "write: {e}");
                break;
            }
            Err(_) => {
                tracing::warn!(
                    peer = %peer, peer_addr = %peer_addr,
                    "write stalled for {write_timeout:?}; dropping connection"
                );
                break;
            }
        }
    }
    // A failed writer ends the connection: the reader must not keep taking requests.
    cancel.cancel();
}
