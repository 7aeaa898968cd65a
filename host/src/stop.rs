//! Stop, as the engine host hears it. A Stop request overtakes the queue (its transport raises
//! the signal at once, from whichever thread receives it): the work in progress ends at its
//! next forward pass or download chunk, and work asked for before the Stop that has not started
//! yet is refused when its turn comes. Work asked for after the Stop runs as usual.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The signal a transport raises on Stop, shared between it and the [`crate::Host`].
#[derive(Debug, Default)]
pub struct StopSignal {
    /// Raised by a Stop; the engine's runs watch it (cleared when work starts).
    raised: AtomicBool,
    /// Stops so far.
    stops: AtomicU64,
}

/// When a request was received, as far as Stop is concerned: the Stops before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopMark(u64);

impl StopSignal {
    /// Stops the work in progress and every request received before now (any thread).
    pub fn raise(&self) {
        self.stops.fetch_add(1, Ordering::SeqCst);
        self.raised.store(true, Ordering::SeqCst);
    }

    /// The mark of a request received now.
    pub fn mark(&self) -> StopMark {
        StopMark(self.stops.load(Ordering::SeqCst))
    }

    /// Starts the work of a request received at `mark`: false when a Stop came since (the work
    /// is not to run); otherwise the flag is lowered for it.
    pub(crate) fn begin(&self, mark: StopMark) -> bool {
        self.raised.store(false, Ordering::SeqCst);
        // A Stop between the two lines counts too: it came after the mark.
        if self.stops.load(Ordering::SeqCst) > mark.0 {
            self.raised.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Whether a Stop came since the work in progress began.
    pub(crate) fn raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }

    /// The flag the engine's runs watch.
    pub(crate) fn flag(&self) -> &AtomicBool {
        &self.raised
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_refuses_the_work_received_before_it_and_not_after() {
        let signal = StopSignal::default();
        let before = signal.mark();
        signal.raise();
        let after = signal.mark();
        assert!(!signal.begin(before), "received before the Stop: refused");
        assert!(signal.raised(), "and the flag stays up");
        assert!(signal.begin(after), "received after it: runs");
        assert!(!signal.raised(), "with the flag lowered");
        signal.raise();
        assert!(signal.raised(), "a Stop during the work raises the flag");
    }
}
