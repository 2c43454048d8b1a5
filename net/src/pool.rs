//! One connection per peer and lane, shared by all clients of that peer, dialled lazily.
//!
//! A slot holds at most one live connection. The first caller that finds none starts a
//! connect task and every concurrent caller waits for that same attempt (each under its own
//! deadline), so a burst of heartbeats makes one connection, not many. The attempt runs in
//! its own task under `connect_timeout`: a caller with a short deadline gives up waiting
//! without aborting it, and the next caller finds the connection ready.
//!
//! After a failed attempt the slot refuses to dial again for a backoff that doubles from
//! `RECONNECT_BACKOFF_MIN` up to `RECONNECT_BACKOFF_MAX`: a dead peer is not hammered by every
//! heartbeat, and a restarted one is reached again within `RECONNECT_BACKOFF_MAX`. A live
//! connection that breaks is redialled on the next call at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haseq_messages::NodeId;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::codec::Framed;

use crate::config::NetConfig;
use crate::conn::MuxConn;
use crate::error::NetErrorKind;
use crate::frame::codec;
use crate::handshake::{self, HandshakeError};
use crate::limits::{HANDSHAKE_FRAME_BYTES_MAX, RECONNECT_BACKOFF_MAX, RECONNECT_BACKOFF_MIN};
use crate::metrics;

/// Which connection to a peer a call travels on. Bulk transfers (snapshots, block ranges)
/// get their own, so a large one never holds up heartbeats behind it (head-of-line blocking
/// on one socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    /// Raft RPCs other than snapshots.
    Rpc,
    /// Snapshot transfers and block ranges.
    Snapshot,
}

type Attempt = watch::Receiver<Option<Result<Arc<MuxConn>, NetErrorKind>>>;

#[derive(Default)]
struct SlotState {
    conn: Option<Arc<MuxConn>>,
    connecting: Option<Attempt>,
    /// Consecutive failed attempts since the last success.
    failures: u32,
    /// No new attempt before this instant; the last attempt's error meanwhile.
    retry_at: Option<(Instant, NetErrorKind)>,
}

/// The connection (live or to be dialled) to one peer at one address, on one lane.
pub(crate) struct Slot {
    peer: NodeId,
    addr: String,
    lane: Lane,
    cfg: NetConfig,
    state: Mutex<SlotState>,
}

/// A connection handed to a caller.
pub(crate) struct Checkout {
    pub(crate) conn: Arc<MuxConn>,
    /// Dialled for this caller (or a concurrent one), rather than found in the slot: a
    /// failure on a reused connection may just mean it had died unnoticed.
    pub(crate) fresh: bool,
}

impl Slot {
    /// A connection to the peer, dialling one if needed, waiting until `deadline` at most
    /// (`budget` is the caller's whole budget, for the error message).
    pub(crate) async fn get(
        self: &Arc<Self>,
        deadline: Instant,
        budget: Duration,
    ) -> Result<Checkout, NetErrorKind> {
        // Sleeps only until a backoff that ends before the deadline, so this ends by then.
        let mut attempt = loop {
            let wait_until = {
                let mut st = lock(&self.state);
                if let Some(conn) = &st.conn {
                    if !conn.is_closed() {
                        return Ok(Checkout {
                            conn: conn.clone(),
                            fresh: false,
                        });
                    }
                    st.conn = None;
                }
                match &st.connecting {
                    // A live attempt (its task has not vanished without a word): share it.
                    Some(attempt) if attempt.has_changed().is_ok() => break attempt.clone(),
                    _ => {}
                }
                match &st.retry_at {
                    Some((at, last)) if Instant::now() < *at => {
                        if *at >= deadline {
                            // Fail fast: this caller can't outlast the backoff.
                            return Err(NetErrorKind::BackingOff {
                                retry_in: *at - Instant::now(),
                                last: Box::new(last.clone()),
                            });
                        }
                        *at
                    }
                    _ => {
                        let (tx, rx) = watch::channel(None);
                        st.connecting = Some(rx.clone());
                        tokio::spawn(self.clone().connect(tx));
                        break rx;
                    }
                }
            };
            // The backoff ends before our deadline: wait for it rather than fail a call that
            // could have succeeded (a peer restarting is back within the backoff).
            sleep_until(wait_until).await;
        };
        let outcome = timeout_at(deadline, attempt.wait_for(|o| o.is_some())).await;
        match outcome {
            Err(_) => Err(NetErrorKind::Timeout(budget)),
            Ok(Err(_)) => Err(NetErrorKind::Connect(
                "connect task ended without a result".into(),
            )),
            Ok(Ok(done)) => match done.as_ref().expect("waited for Some") {
                Ok(conn) => Ok(Checkout {
                    conn: conn.clone(),
                    fresh: true,
                }),
                Err(e) => Err(e.clone()),
            },
        }
    }

    /// Close the live connection, if any (the next call dials again).
    pub(crate) fn disconnect(&self) {
        lock(&self.state).conn = None;
    }

    /// Take the live connection out of the slot, if any.
    fn take(&self) -> Option<Arc<MuxConn>> {
        lock(&self.state).conn.take()
    }

    async fn connect(
        self: Arc<Self>,
        tx: watch::Sender<Option<Result<Arc<MuxConn>, NetErrorKind>>>,
    ) {
        let result = self.dial().await;
        {
            let mut st = lock(&self.state);
            st.connecting = None;
            match &result {
                Ok(conn) => {
                    st.conn = Some(conn.clone());
                    st.failures = 0;
                    st.retry_at = None;
                }
                Err(e) => {
                    st.failures = st.failures.saturating_add(1);
                    let wait = backoff(st.failures);
                    st.retry_at = Some((Instant::now() + wait, e.clone()));
                    tracing::debug!(
                        peer = %self.peer, addr = %self.addr, lane = ?self.lane,
                        failures = st.failures, "connect failed, next attempt in {wait:?}: {e}"
                    );
                }
            }
        }
        // Waiters may all have given up; the slot already holds the outcome.
        let _ = tx.send(Some(result));
    }

    async fn dial(&self) -> Result<Arc<MuxConn>, NetErrorKind> {
        let budget = self.cfg.connect_timeout;
        let deadline = Instant::now() + budget;
        let stream = match timeout_at(deadline, TcpStream::connect(&self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(NetErrorKind::Connect(e.to_string())),
            Err(_) => {
                return Err(NetErrorKind::Connect(format!(
                    "no TCP connection within {budget:?}"
                )));
            }
        };
        // Small frames (heartbeats, votes) must not wait for Nagle.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %self.peer, addr = %self.addr, "set_nodelay: {e}");
        }
        let mut framed = Framed::new(stream, codec(HANDSHAKE_FRAME_BYTES_MAX));
        let hs = handshake::client(&mut framed, &self.cfg.node_id, &self.peer, &self.cfg.secret);
        match timeout_at(deadline, hs).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if let HandshakeError::Refused { reason, detail } = &e {
                    metrics::auth_refused(reason.as_str());
                    tracing::warn!(
                        peer = %self.peer, addr = %self.addr, reason = reason.as_str(),
                        "refused server: {detail}"
                    );
                }
                return Err(NetErrorKind::Handshake(e.to_string()));
            }
            Err(_) => {
                return Err(NetErrorKind::Handshake(format!(
                    "not completed within {budget:?}"
                )));
            }
        }
        let write_timeout = match self.lane {
            Lane::Rpc => self.cfg.send_timeout,
            Lane::Snapshot => self.cfg.snapshot_timeout,
        };
        tracing::debug!(peer = %self.peer, addr = %self.addr, lane = ?self.lane, "connected");
        Ok(MuxConn::start(
            framed,
            write_timeout,
            format!("{}@{}", self.peer, self.addr),
        ))
    }
}

/// Wait before attempt `failures + 1`: doubling from the minimum, capped.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (RECONNECT_BACKOFF_MIN * 2u32.pow(doublings)).min(RECONNECT_BACKOFF_MAX)
}

/// All slots of one [`crate::Network`].
pub(crate) struct Pool {
    cfg: NetConfig,
    slots: Mutex<HashMap<(NodeId, String, Lane), Arc<Slot>>>,
}

impl Pool {
    pub(crate) fn new(cfg: NetConfig) -> Pool {
        Pool {
            cfg,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The slot for `peer` at `addr` on `lane`, created empty (no connection yet) if new.
    pub(crate) fn slot(&self, peer: &NodeId, addr: &str, lane: Lane) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        slots
            .entry((peer.clone(), addr.to_string(), lane))
            .or_insert_with(|| {
                Arc::new(Slot {
                    peer: peer.clone(),
                    addr: addr.to_string(),
                    lane,
                    cfg: self.cfg.clone(),
                    state: Mutex::new(SlotState::default()),
                })
            })
            .clone()
    }

    /// Drop every slot of `peer` and close its connections (clients still holding a slot
    /// keep it working; it closes when they are dropped).
    pub(crate) fn forget(&self, peer: &NodeId) {
        let removed: Vec<Arc<Slot>> = {
            let mut slots = lock(&self.slots);
            let keys: Vec<_> = slots
                .keys()
                .filter(|(p, _, _)| p == peer)
                .cloned()
                .collect();
            keys.into_iter().filter_map(|k| slots.remove(&k)).collect()
        };
        for slot in removed {
            slot.disconnect();
        }
    }
}

impl Pool {
    /// Close every connection, each with a goodbye; returns once all writers are done, or
    /// after `GOODBYE_WAIT` (they run at once).
    pub(crate) async fn close_all(&self) {
        let conns: Vec<Arc<MuxConn>> = {
            let slots = lock(&self.slots);
            slots.values().filter_map(|slot| slot.take()).collect()
        };
        futures::future::join_all(conns.iter().map(|c| c.close_with_goodbye())).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        assert_eq!(backoff(1), RECONNECT_BACKOFF_MIN);
        assert_eq!(backoff(2), RECONNECT_BACKOFF_MIN * 2);
        assert_eq!(backoff(3), RECONNECT_BACKOFF_MIN * 4);
        assert_eq!(backoff(100), RECONNECT_BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), RECONNECT_BACKOFF_MAX);
    }
}
