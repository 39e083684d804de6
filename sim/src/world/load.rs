//! What the agents cost the one modelled ZooKeeper server: requests it handled, watch
//! notifications it sent, and the requests outstanding at once (sent by the agents and
//! not yet answered: what would queue at a server that takes time per request).

use pop_core::Timestamp;
use std::time::Duration;

/// The window the request rate is counted over.
pub const RATE_WINDOW: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Default)]
pub struct ServerLoad {
    /// Agents' requests that reached the server.
    pub requests: u64,
    /// Watch events the server sent to agents.
    pub notifications: u64,
    /// Requests outstanding over all agents now, and the most since `reset_peaks`.
    pub outstanding: usize,
    pub peak_outstanding: usize,
    /// The most requests reaching the server within one `RATE_WINDOW`.
    pub peak_requests_per_window: u64,
    window: (u64, u64),
    /// Each machine's outstanding requests as last seen.
    per_machine: Vec<usize>,
}

impl ServerLoad {
    pub(super) fn on_request(&mut self, now: Timestamp) {
        self.requests += 1;
        let window = now.as_millis() / RATE_WINDOW.as_millis() as u64;
        if self.window.0 != window {
            self.window = (window, 0);
        }
        self.window.1 += 1;
        self.peak_requests_per_window = self.peak_requests_per_window.max(self.window.1);
    }

    /// `machine`'s agent now has `pending` requests outstanding.
    pub(super) fn set_pending(&mut self, machine: usize, pending: usize) {
        if self.per_machine.len() <= machine {
            self.per_machine.resize(machine + 1, 0);
        }
        self.outstanding = self.outstanding - self.per_machine[machine] + pending;
        self.per_machine[machine] = pending;
        self.peak_outstanding = self.peak_outstanding.max(self.outstanding);
    }

    /// Starts measuring peaks anew (the counters keep counting).
    pub fn reset_peaks(&mut self) {
        self.peak_outstanding = self.outstanding;
        self.peak_requests_per_window = 0;
        self.window = (0, 0);
    }

    /// Requests plus notifications: the server's messages to and from agents.
    pub fn ops(&self) -> u64 {
        self.requests + self.notifications
    }
}
