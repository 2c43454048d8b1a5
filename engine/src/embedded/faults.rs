//! The embedded engine's fault knobs, for tests and operators' drills.

use std::time::Duration;

/// Faults the embedded engine injects. Settable at construction
/// ([`EmbeddedConfig::faults`](crate::EmbeddedConfig)) and at run time
/// ([`EmbeddedEngine::set_faults`](crate::EmbeddedEngine::set_faults)); `Faults::default()`
/// clears them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// Each imported block (`new_payload` of a block not yet stored) waits this long first:
    /// a slow engine.
    pub delay_per_block: Duration,
    /// Every call fails with [`EngineError::Fault`](crate::EngineError::Fault).
    pub fail: bool,
    /// Persisted: on the next open, the newest N canonical blocks are dropped (payloads too) and
    /// the head set back N, as an engine that persisted less than it acknowledged. One-shot:
    /// the open that applies it resets it to 0.
    pub lose_newest_on_restart: u64,
}
