//! One authenticated client connection to a peer, shared by every call to that peer.
//!
//! Calls are multiplexed by request id: a caller registers a one-shot slot in the in-flight
//! map, queues its encoded frame for the writer task, and waits for the reader task to hand
//! it the response with the same id. The map is bounded by a semaphore; the writer's queue is
//! a bounded channel; every wait is under the caller's deadline. When either task fails the
//! connection is closed for good, every waiting caller learns why at once, and the pool dials
//! a new one on the next call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use haseq_messages::wire::{FRAME_BYTES_MAX, RpcRequest, RpcResponse};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::frame::{self, FrameError};
use crate::limits::{CALLS_INFLIGHT_MAX, OUTBOX_FRAMES_MAX, WRITE_BATCH_FRAMES_MAX};

/// The same bytes as `wire::Request { id, body }` (serde writes `&T` as `T`, postcard writes
/// a struct as its fields in order), without moving the body: a call can be retried on a
/// fresh connection without cloning a large request.
#[derive(Serialize)]
struct RequestRef<'a> {
    id: u64,
    body: &'a RpcRequest,
}

/// Calls awaiting an answer, and since when the peer has owed us one.
#[derive(Default)]
struct Calls {
    waiting: HashMap<u64, oneshot::Sender<RpcResponse>>,
    /// When the oldest call sent since the peer's last frame started. Only a frame from the
    /// peer clears it (a call that gives up does not: the peer still owes its answer), so
    /// consecutive short calls that all time out add up. Silence while nothing is owed is an
    /// idle connection; silence while something is owed is a dead or wedged peer.
    owed_since: Option<Instant>,
}

impl Calls {
    fn insert(&mut self, id: u64, tx: oneshot::Sender<RpcResponse>, started: Instant) {
        self.owed_since.get_or_insert(started);
        self.waiting.insert(id, tx);
    }

    fn remove(&mut self, id: u64) -> Option<oneshot::Sender<RpcResponse>> {
        self.waiting.remove(&id)
    }

    /// A frame came from the peer: it is alive, and owes only what still waits.
    fn heard(&mut self) {
        self.owed_since = (!self.waiting.is_empty()).then(Instant::now);
    }
}

type Pending = Mutex<Calls>;

/// Why a call on a connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The deadline passed.
    Timeout,
    /// The connection closed before the answer came (the request may have been delivered).
    Lost(String),
    /// The request was not sent: it can't be encoded or is larger than a frame may be.
    NotSent(String),
}

/// A live, authenticated connection. Dropping the last handle closes it.
pub(crate) struct MuxConn {
    outbox: mpsc::Sender<Bytes>,
    inflight: Semaphore,
    next_id: AtomicU64,
    /// Silence from the peer, while it owes an answer, after which it is presumed dead.
    stall_max: Duration,
    created: Instant,
    closer: Closer,
    /// Cancelled when the writer task has ended (its goodbye sent, or given up).
    finished: CancellationToken,
}

impl MuxConn {
    /// Start the reader and writer tasks on an authenticated connection. `io_timeout`
    /// bounds each batch of writes (a peer that stops reading loses the connection) and the
    /// peer's silence while calls wait for it (a peer that vanished without a FIN, or is
    /// wedged, loses it too: the next call dials again instead of timing out forever).
    pub(crate) fn start(
        framed: Framed<TcpStream, LengthDelimitedCodec>,
        io_timeout: Duration,
        label: String,
    ) -> Arc<MuxConn> {
        let (reader, writer) = frame::split(framed, FRAME_BYTES_MAX);
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_FRAMES_MAX);
        let closer = Closer {
            pending: Arc::new(Mutex::new(Calls::default())),
            closed: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
            label,
        };
        let finished = CancellationToken::new();
        tokio::spawn(read_loop(reader, closer.clone()));
        tokio::spawn(write_loop(
            writer,
            outbox_rx,
            io_timeout,
            closer.clone(),
            finished.clone(),
        ));
        Arc::new(MuxConn {
            outbox,
            inflight: Semaphore::new(CALLS_INFLIGHT_MAX),
            next_id: AtomicU64::new(1),
            stall_max: io_timeout,
            created: Instant::now(),
            closer,
            finished,
        })
    }

    /// Close on purpose: the writer says goodbye (so the peer does not take the close for
    /// this node's crash) and ends; returns once it has, or after [`GOODBYE_WAIT`].
    pub(crate) async fn close_with_goodbye(&self) {
        self.closer.close(Some("closed on purpose".into()));
        let _ = timeout(GOODBYE_WAIT, self.finished.cancelled()).await;
    }

    /// Whether the connection has failed or been dropped; a closed one never reopens.
    pub(crate) fn is_closed(&self) -> bool {
        self.closer.closed.is_cancelled()
    }

    /// Send `body` and wait for its answer until `deadline`; `started` is when the caller's
    /// budget began (its wait counts towards the peer's silence).
    ///
    /// Cancel-safe: dropping the future removes the call from the in-flight map; an answer
    /// that arrives later is discarded.
    pub(crate) async fn call(
        &self,
        body: &RpcRequest,
        started: Instant,
        deadline: Instant,
    ) -> Result<RpcResponse, CallError> {
        let _permit = tokio::select! {
            biased;
            p = self.inflight.acquire() => p.expect("the in-flight semaphore is never closed"),
            _ = sleep_until(deadline) => return Err(CallError::Timeout),
        };
        if self.is_closed() {
            return Err(self.lost());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame =
            frame::encode(&RequestRef { id, body }, FRAME_BYTES_MAX).map_err(|e| match e {
                FrameError::TooLong { limit_bytes } => CallError::NotSent(format!(
                    "{} request exceeds the {limit_bytes}-byte frame limit",
                    body.kind()
                )),
                other => CallError::NotSent(other.to_string()),
            })?;

        let (tx, rx) = oneshot::channel();
        let pending = &*self.closer.pending;
        lock(pending).insert(id, tx, started.max(self.created));
        let _registered = Registered { pending, id };

        let closed = &self.closer.closed;
        tokio::select! {
            biased;
            sent = self.outbox.send(frame) => if sent.is_err() { return Err(self.lost()) },
            _ = closed.cancelled() => return Err(self.lost()),
            _ = sleep_until(deadline) => return Err(self.timed_out()),
        }
        tokio::select! {
            biased;
            answer = rx => answer.map_err(|_| self.lost()),
            _ = closed.cancelled() => Err(self.lost()),
            _ = sleep_until(deadline) => Err(self.timed_out()),
        }
    }

    /// A call timed out. If the peer has said nothing for `stall_max` while it owed an
    /// answer, presume it dead and close: waiting calls fail now, and the next call dials
    /// again (and finds out whether the peer is reachable at all).
    fn timed_out(&self) -> CallError {
        let owed_since = lock(&self.closer.pending).owed_since;
        if let Some(since) = owed_since {
            let silent = since.elapsed();
            if silent >= self.stall_max {
                self.closer.close(Some(format!(
                    "peer silent for {silent:?} while owing answers"
                )));
            }
        }
        CallError::Timeout
    }

    fn lost(&self) -> CallError {
        let reason = lock(&self.closer.reason).clone();
        CallError::Lost(reason.unwrap_or_else(|| "connection closed".into()))
    }
}

impl Drop for MuxConn {
    fn drop(&mut self) {
        // Nobody can call any more: stop both tasks, which closes the socket.
        self.closer.closed.cancel();
    }
}

/// Removes a call from the in-flight map when it completes, fails or is dropped.
struct Registered<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(self.id);
    }
}

/// Closes the connection once, keeping the first reason for every caller to see.
#[derive(Clone)]
struct Closer {
    pending: Arc<Pending>,
    closed: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    label: String,
}

impl Closer {
    fn close(&self, why: Option<String>) {
        {
            let mut reason = lock(&self.reason);
            if reason.is_none() {
                if let Some(why) = &why {
                    tracing::debug!(peer = %self.label, "connection closed: {why}");
                }
                *reason = why.or_else(|| Some("connection closed".into()));
            }
        }
        // Cancel before clearing: a caller that registers after the clear sees the token.
        self.closed.cancel();
        let mut calls = lock(&self.pending);
        calls.waiting.clear();
        calls.owed_since = None;
    }
}

async fn read_loop(mut reader: FramedRead<OwnedReadHalf, LengthDelimitedCodec>, closer: Closer) {
    let why = loop {
        let frame = tokio::select! {
            biased;
            _ = closer.closed.cancelled() => break None,
            f = frame::read_frame(&mut reader, FRAME_BYTES_MAX) => f,
        };
        let response =
            frame.and_then(|body| frame::decode::<haseq_messages::wire::Response>(&body));
        match response {
            Ok(resp) => {
                let waiter = {
                    let mut calls = lock(&closer.pending);
                    let waiter = calls.remove(resp.id);
                    calls.heard();
                    waiter
                };
                match waiter {
                    // The caller may have just given up; its answer is then dropped.
                    Some(tx) => drop(tx.send(resp.body)),
                    None => {
                        tracing::trace!(
                            peer = %closer.label, id = resp.id,
                            "answer after the caller gave up"
                        )
                    }
                }
            }
            Err(FrameError::Closed) => break Some("closed by peer".to_string()),
            Err(e) => break Some(format!("read: {e}")),
        }
    };
    closer.close(why);
}

/// How long a closing connection tries to deliver its goodbye.
pub(crate) const GOODBYE_WAIT: Duration = Duration::from_millis(100);

/// The goodbye frame (`wire::Request { id: 0, body: Goodbye }`).
fn goodbye_frame() -> Option<Bytes> {
    frame::encode(
        &RequestRef {
            id: 0,
            body: &RpcRequest::Goodbye,
        },
        FRAME_BYTES_MAX,
    )
    .ok()
}

async fn write_loop(
    mut writer: FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
    mut outbox: mpsc::Receiver<Bytes>,
    write_timeout: Duration,
    closer: Closer,
    finished: CancellationToken,
) {
    let _finished = finished.drop_guard();
    let why = loop {
        let first = tokio::select! {
            biased;
            _ = closer.closed.cancelled() => {
                // Closed by this side (dropped, presumed the peer dead, or its reader saw the
                // peer go): say goodbye, so that a live peer does not take it for a crash.
                if let Some(bye) = goodbye_frame() {
                    let _ = timeout(GOODBYE_WAIT, writer.send(bye)).await;
                }
                break None;
            }
            m = outbox.recv() => match m {
                Some(frame) => frame,
                None => break None,
            },
        };
        // Feed what is already queued, then flush once: fewer syscalls under load.
        let batch = async {
            writer.feed(first).await?;
            for _ in 1..WRITE_BATCH_FRAMES_MAX {
                match outbox.try_recv() {
                    Ok(frame) => writer.feed(frame).await?,
                    Err(_) => break,
                }
            }
            SinkExt::<Bytes>::flush(&mut writer).await?;
            Ok::<(), std::io::Error>(())
        };
        match timeout(write_timeout, batch).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break Some(format!("write: {e}")),
            Err(_) => {
                break Some(format!(
                    "write stalled for {write_timeout:?} (peer not reading)"
                ));
            }
        }
    };
    closer.close(why);
}

/// The maps are only held for an insert or remove; a panic elsewhere can't leave them torn.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use haseq_messages::wire::Request;
    use openraft::raft::TransferLeaderRequest;
    use openraft::type_config::alias::VoteOf;

    use super::*;

    #[test]
    fn silence_counts_from_the_oldest_unanswered_call_until_the_peer_speaks() {
        let mut calls = Calls::default();
        let t0 = Instant::now();
        let (tx1, _rx1) = oneshot::channel();
        calls.insert(1, tx1, t0);
        let (tx2, _rx2) = oneshot::channel();
        calls.insert(2, tx2, t0 + Duration::from_millis(5));
        assert_eq!(calls.owed_since, Some(t0), "the oldest call counts");
        // A call giving up does not excuse the peer.
        calls.remove(1);
        calls.remove(2);
        assert_eq!(calls.owed_since, Some(t0));
        // Any frame does; with nothing left waiting, nothing is owed.
        calls.heard();
        assert_eq!(calls.owed_since, None);
        let (tx3, _rx3) = oneshot::channel();
        calls.insert(3, tx3, t0);
        let (tx4, _rx4) = oneshot::channel();
        calls.insert(4, tx4, t0);
        calls.remove(3);
        calls.heard();
        assert!(
            calls.owed_since.is_some_and(|t| t > t0),
            "call 4 still owed, from now"
        );
    }

    #[test]
    fn request_ref_encodes_like_request() {
        let body = RpcRequest::TransferLeader(TransferLeaderRequest::new(
            VoteOf::<haseq_messages::TC>::new(3, haseq_messages::NodeId::from("n1")),
            haseq_messages::NodeId::from("n2"),
            None,
        ));
        let by_ref = haseq_messages::encode(&RequestRef {
            id: 300,
            body: &body,
        })
        .unwrap();
        let owned = haseq_messages::encode(&Request { id: 300, body }).unwrap();
        assert_eq!(by_ref, owned);
    }
}
