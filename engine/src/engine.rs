//! The `ExecutionEngine` trait: what haseq asks of an execution client.

use std::future::Future;
use std::pin::Pin;

use haseq_messages::{BlockHash, Height};

use crate::error::EngineError;
use crate::types::{BuildParams, BuiltPayload, PayloadId, PayloadStatus};

/// The future every [`ExecutionEngine`] method returns: boxed, `Send`, borrowing the engine.
pub type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, EngineError>> + Send + 'a>>;

/// An execution client as haseq drives it: build a block on a head, fetch it, import a
/// block, move the canonical head, read the head back.
///
/// Object-safe on purpose (methods return [`EngineFuture`] rather than `async fn`): the node
/// picks the implementation from configuration at start-up and holds an
/// `Arc<dyn ExecutionEngine>`, so actors are not generic over it. The box per call is
/// negligible beside an engine round trip.
///
/// Implementations: [`crate::EngineApiClient`] (a real client over the Engine API) and
/// [`crate::EmbeddedEngine`] (in-process). Both record `haseq_engine_call_seconds{method}` and
/// `haseq_engine_errors_total{method}` under the method names below.
pub trait ExecutionEngine: Send + Sync {
    /// Starts building a block on `params.parent` (`forkchoiceUpdated` with payload attributes,
    /// head = safe = finalized = parent: the parent is the applied head, hence committed).
    ///
    /// # Errors
    /// [`EngineError::Syncing`] if the engine lacks the parent; [`EngineError::Rejected`] if it
    /// refuses the attributes or the parent's height is not `params.parent_height`.
    fn build_payload(&self, params: BuildParams) -> EngineFuture<'_, PayloadId>;

    /// Fetches the payload built under `id` (`getPayload`).
    ///
    /// # Errors
    /// [`EngineError::UnknownPayload`] for an id the engine does not know.
    fn get_payload(&self, id: PayloadId) -> EngineFuture<'_, BuiltPayload>;

    /// Imports a payload encoded by [`crate::encode_payload`] (`newPayload`). Does not move the
    /// canonical head. An invalid payload is `Ok(PayloadStatus::Invalid)`, not an error.
    ///
    /// # Errors
    /// [`EngineError::Decode`] for bytes that are not a payload; transport and fault errors.
    fn new_payload<'a>(&'a self, encoded: &'a [u8]) -> EngineFuture<'a, PayloadStatus>;

    /// Makes `head` canonical with the given safe and finalized blocks (`forkchoiceUpdated`
    /// without attributes). Moving back (a lower head on the same chain) is allowed.
    ///
    /// # Errors
    /// [`EngineError::Syncing`] if the engine lacks `head`; [`EngineError::Rejected`] if safe or
    /// finalized are not ancestors of `head`.
    fn set_head(
        &self,
        head: BlockHash,
        safe: BlockHash,
        finalized: BlockHash,
    ) -> EngineFuture<'_, ()>;

    /// Imports one payload and makes it canonical with head = safe = finalized: `newPayload`
    /// then `forkchoiceUpdated`, as one step where the engine can do it in one (the embedded
    /// engine writes both in one transaction). `head` is the payload's block hash. Returns the
    /// import's status; the head moves only when it is not `Invalid`.
    ///
    /// # Errors
    /// As [`ExecutionEngine::new_payload`] and [`ExecutionEngine::set_head`].
    fn import_and_set_head<'a>(
        &'a self,
        encoded: &'a [u8],
        head: BlockHash,
    ) -> EngineFuture<'a, PayloadStatus> {
        Box::pin(async move {
            let status = self.new_payload(encoded).await?;
            if !matches!(status, PayloadStatus::Invalid { .. }) {
                self.set_head(head, head, head).await?;
            }
            Ok(status)
        })
    }

    /// Whether making an imported block the head at once
    /// ([`ExecutionEngine::import_and_set_head`]) costs no more than importing it alone. The
    /// replayer then moves the head with every block of a batch; otherwise it imports a batch
    /// and moves the head once, at its end (one `forkchoiceUpdated` per batch over the Engine
    /// API). The embedded engine says yes: it writes a child of its head behind, with the
    /// blocks around it in one transaction, while a bare import is a durable transaction of
    /// its own.
    fn head_moves_with_each_import(&self) -> bool {
        false
    }

    /// The engine's canonical head, read back from the engine.
    ///
    /// # Errors
    /// Transport, fault and storage errors.
    fn head(&self) -> EngineFuture<'_, (Height, BlockHash)>;

    /// The hash of the canonical block at `height`, `None` above the head. For "is the engine
    /// ahead on the same chain?" checks at start-up.
    ///
    /// # Errors
    /// Transport, fault and storage errors.
    fn block_hash_at(&self, height: Height) -> EngineFuture<'_, Option<BlockHash>>;
}
