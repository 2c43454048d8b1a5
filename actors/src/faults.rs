//! Fault knobs for tests and drills: make one actor, or one task an actor spawned, panic at its
//! next pass through a known point, so tests can check that the supervisor rebuilds it and
//! that its duty resumes.
//!
//! A knob costs one relaxed atomic load per pass when nothing is armed. Knobs are reachable
//! only through [`crate::node::Node::faults`] (in-process tests), never over the network.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// A place where a deliberate panic can be injected: each actor, and each task one spawns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PanicSite {
    /// RaftCore's handler of openraft's metrics.
    RaftCore,
    /// The Elector's tick.
    Elector,
    /// The Producer's periodic look at its session.
    Producer,
    /// The leader's production task, before it builds a block.
    ProductionTask,
    /// ExecReplayer's actor (its check on the replay task).
    ExecReplayer,
    /// The replay task, before each step.
    ReplayTask,
    /// The Syncer's tick.
    Syncer,
    /// The Syncer's block verification task.
    VerifyTask,
    /// The P2P actor's handler of a peer's status.
    P2p,
    /// The P2P actor's status poll task.
    PollTask,
    /// The P2P actor's task that fetches blocks from a peer.
    FetchTask,
}

impl PanicSite {
    /// Every site, for tests that visit them all.
    pub const ALL: [PanicSite; 11] = [
        PanicSite::RaftCore,
        PanicSite::Elector,
        PanicSite::Producer,
        PanicSite::ProductionTask,
        PanicSite::ExecReplayer,
        PanicSite::ReplayTask,
        PanicSite::Syncer,
        PanicSite::VerifyTask,
        PanicSite::P2p,
        PanicSite::PollTask,
        PanicSite::FetchTask,
    ];

    /// The supervised actor that a panic at this site takes down (its restarts are counted
    /// under this name in `haseq_actor_restarts_total{actor}`).
    pub fn actor(self) -> &'static str {
        match self {
            PanicSite::RaftCore => "raft_core",
            PanicSite::Elector => "elector",
            PanicSite::Producer | PanicSite::ProductionTask => "producer",
            PanicSite::ExecReplayer | PanicSite::ReplayTask => "exec_replayer",
            PanicSite::Syncer | PanicSite::VerifyTask => "syncer",
            PanicSite::P2p | PanicSite::PollTask | PanicSite::FetchTask => "p2p",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// The knobs of one node; cheap to clone, shared by its actors and their tasks.
#[derive(Debug, Clone, Default)]
pub struct PanicKnobs(Arc<AtomicU32>);

impl PanicKnobs {
    /// Make `site` panic the next time it is passed (once).
    pub fn arm(&self, site: PanicSite) {
        self.0.fetch_or(site.bit(), Ordering::SeqCst);
    }

    /// Whether `site` is armed and has not fired yet.
    pub fn is_armed(&self, site: PanicSite) -> bool {
        self.0.load(Ordering::SeqCst) & site.bit() != 0
    }

    /// Called at `site`: panics if the site is armed, disarming it first.
    ///
    /// # Panics
    /// Deliberately, when armed: that is the point.
    pub fn trip(&self, site: PanicSite) {
        if self.0.load(Ordering::Relaxed) & site.bit() == 0 {
            return;
        }
        if self.0.fetch_and(!site.bit(), Ordering::SeqCst) & site.bit() != 0 {
            panic!("deliberate panic at {site:?} (fault injection)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_site_panics_once_and_others_do_not() {
        let k = PanicKnobs::default();
        k.trip(PanicSite::Syncer);
        k.arm(PanicSite::Syncer);
        assert!(k.is_armed(PanicSite::Syncer));
        k.trip(PanicSite::P2p);
        let r = std::panic::catch_unwind(|| k.trip(PanicSite::Syncer));
        assert!(r.is_err(), "an armed site panics");
        assert!(!k.is_armed(PanicSite::Syncer));
        k.trip(PanicSite::Syncer);
    }

    #[test]
    fn every_site_has_its_own_bit() {
        let mut seen = 0u32;
        for s in PanicSite::ALL {
            assert_eq!(seen & s.bit(), 0, "{s:?} shares a bit");
            seen |= s.bit();
        }
    }
}
