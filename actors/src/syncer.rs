//! Syncer: fetches committed blocks this node lacks (after catching up from a snapshot) from
//! its peers, newest gap first, so ExecReplayer can replay them.
//!
//! Owns: the fetch task. Receives: nothing (it watches the store and ExecReplayer's status).
//! Sends: `FetchBlocks` to peers over the node-to-node port; writes what they return through
//! `BlockBackfill`, which stores a block only if it hash-links to the chain above it (peers are
//! not trusted). Progress is the store itself, so a restart or rebuild resumes where it was.

use std::time::Duration;

use actix::{Actor, Context};
use haseq_messages::wire::{RpcRequest, RpcResponse};
use haseq_messages::{Height, NodeId, PeerNode};
use haseq_storage::{BlockBackfill, BlockReader};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::exec_replayer::ExecStatus;
use crate::supervisor::ExitGuard;

/// Blocks asked of a peer in one call.
pub const FETCH_BATCH_BLOCKS: u32 = 256;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the store is checked for holes when there is nothing to fetch.
const IDLE_CHECK: Duration = Duration::from_millis(500);
/// The most heights scanned for a hole in one pass (bounded work per pass).
const SCAN_HEIGHTS_MAX: u64 = 1_000_000;

/// What the Syncer needs; cheap to clone.
#[derive(Clone)]
pub struct SyncerDeps {
    /// The store to read.
    pub blocks: BlockReader,
    /// The store to fill.
    pub backfill: BlockBackfill,
    /// Where the engine is: blocks below it are not needed.
    pub exec: watch::Receiver<ExecStatus>,
    /// The transport.
    pub network: haseq_net::Network,
    /// Peers to fetch from.
    pub peers: Vec<(NodeId, String)>,
}

/// The actor; see the module doc.
pub struct Syncer {
    d: SyncerDeps,
    cancel: CancellationToken,
    _exit: ExitGuard,
}

impl Syncer {
    /// A Syncer over `d`.
    pub fn new(d: SyncerDeps, exit: ExitGuard) -> Syncer {
        Syncer {
            d,
            cancel: CancellationToken::new(),
            _exit: exit,
        }
    }
}

impl Actor for Syncer {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        tokio::spawn(sync_loop(self.d.clone(), self.cancel.clone()));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.cancel.cancel();
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl actix::Handler<crate::supervisor::StopActor> for Syncer {
    type Result = ();

    fn handle(&mut self, _: crate::supervisor::StopActor, ctx: &mut Context<Self>) {
        actix::ActorContext::stop(ctx);
    }
}

/// The highest height in `(floor, head]` the store lacks, if any.
fn highest_hole(blocks: &BlockReader, floor: u64, head: u64) -> Result<Option<u64>, String> {
    let lowest = floor.max(head.saturating_sub(SCAN_HEIGHTS_MAX));
    for h in (lowest + 1..=head).rev() {
        if blocks
            .block(Height(h))
            .map_err(|e| e.to_string())?
            .is_none()
        {
            return Ok(Some(h));
        }
    }
    Ok(None)
}

async fn sync_loop(d: SyncerDeps, cancel: CancellationToken) {
    let mut next_peer = 0usize;
    let mut reported = false;
    loop {
        let head = d.blocks.head().map(|h| h.height.0).unwrap_or(0);
        let floor = d.exec.borrow().exec_height;
        let hole = match highest_hole(&d.blocks, floor, head) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "scanning the block store");
                None
            }
        };
        let Some(top) = hole else {
            reported = false;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(IDLE_CHECK) => continue,
            }
        };
        if !reported {
            tracing::info!(
                top,
                engine = floor,
                "block store lacks committed blocks; fetching them from peers"
            );
            reported = true;
        }
        if d.peers.is_empty() {
            return;
        }
        let from = top
            .saturating_sub(FETCH_BATCH_BLOCKS as u64 - 1)
            .max(floor + 1)
            .max(1);
        let (id, addr) = &d.peers[next_peer % d.peers.len()];
        next_peer += 1;
        let client = d
            .network
            .client(id.clone(), &PeerNode { addr: addr.clone() });
        let req = RpcRequest::FetchBlocks {
            from: Height(from),
            max: (top - from + 1) as u32,
        };
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = client.call(req, FETCH_TIMEOUT) => r,
        };
        match outcome {
            Ok(RpcResponse::Blocks(blocks)) => {
                let blocks: Vec<_> = blocks
                    .into_iter()
                    .filter(|b| b.height.0 >= from && b.height.0 <= top)
                    .collect();
                if blocks.is_empty() {
                    continue;
                }
                match d.backfill.insert(blocks).await {
                    Ok(n) => {
                        metrics::counter!("haseq_blocks_fetched_total").increment(n as u64);
                        continue;
                    }
                    Err(e) => tracing::warn!(peer = %id, error = %e, "blocks from a peer refused"),
                }
            }
            Ok(other) => tracing::warn!(peer = %id, "unexpected answer to FetchBlocks: {other:?}"),
            Err(e) => tracing::debug!(peer = %id, error = %e, "fetching blocks"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
