//! The driver's clock: monotonic, anchored at the wall time the agent started, so the
//! core's timestamps never go backwards and still read as wall time.

use pop_core::Timestamp;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    start: Instant,
    start_wall_ms: u64,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemClock {
    pub fn new() -> Self {
        let start_wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        SystemClock {
            start: Instant::now(),
            start_wall_ms,
        }
    }

    pub fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.start_wall_ms + self.start.elapsed().as_millis() as u64)
    }

    /// The tokio instant at which `t` is reached.
    pub fn instant_of(&self, t: Timestamp) -> tokio::time::Instant {
        let offset = t.as_millis().saturating_sub(self.start_wall_ms);
        #[cfg(not(madsim))]
        let start = tokio::time::Instant::from_std(self.start);
        // madsim's tokio Instant is std's, and std's clock is the simulated one there.
        #[cfg(madsim)]
        let start = self.start;
        start + std::time::Duration::from_millis(offset)
    }
}

impl crate::driver::ports::Clock for SystemClock {
    fn now(&self) -> Timestamp {
        SystemClock::now(self)
    }

    fn instant_of(&self, t: Timestamp) -> tokio::time::Instant {
        SystemClock::instant_of(self, t)
    }
}
