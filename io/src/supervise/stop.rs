//! How a stop request reaches a generation's task: one cell per generation holding the
//! shortest grace asked for so far, and a wake-up.
//!
//! Requests only ever shorten the grace (the task keeps the earliest KILL), so a
//! pending request can absorb a later one: nothing needs queueing. An unbounded
//! channel did the same job but allocated a block of slots per generation (about
//! 1.2 KB each, held for the generation's whole life, a thousand of them on an agent
//! with a thousand services); this is one small allocation.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Cell {
    /// The shortest grace requested and not yet taken.
    pending: Mutex<Option<Duration>>,
    wake: Notify,
}

/// The supervisor's end: asks the generation to stop.
#[derive(Debug, Clone)]
pub(crate) struct StopSender(Arc<Cell>);

/// The generation task's end.
#[derive(Debug)]
pub(crate) struct StopReceiver(Arc<Cell>);

pub(crate) fn stop_cell() -> (StopSender, StopReceiver) {
    let cell = Arc::new(Cell::default());
    (StopSender(Arc::clone(&cell)), StopReceiver(cell))
}

impl StopSender {
    /// Asks for a stop with `grace` before KILL; a shorter grace than one still
    /// pending replaces it.
    pub fn send(&self, grace: Duration) {
        {
            let mut pending = self.0.pending.lock().unwrap_or_else(|e| e.into_inner());
            *pending = Some(pending.map_or(grace, |p| p.min(grace)));
        }
        // Stores a permit when the task is not waiting, so the request is not lost.
        self.0.wake.notify_one();
    }
}

impl StopReceiver {
    /// The shortest grace requested since the last call, once there is one.
    pub async fn recv(&mut self) -> Duration {
        loop {
            if let Some(grace) = self.take() {
                return grace;
            }
            self.0.wake.notified().await;
        }
    }

    fn take(&self) -> Option<Duration> {
        self.0
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn a_request_sent_before_the_task_waits_is_received() {
        let (tx, mut rx) = stop_cell();
        tx.send(5 * MS);
        assert_eq!(rx.recv().await, 5 * MS);
    }

    #[tokio::test]
    async fn pending_requests_keep_the_shortest_grace() {
        let (tx, mut rx) = stop_cell();
        tx.send(5 * MS);
        tx.send(2 * MS);
        tx.send(9 * MS);
        assert_eq!(rx.recv().await, 2 * MS);
        // Taken: nothing more until the next request.
        let next = tokio::time::timeout(50 * MS, rx.recv()).await;
        assert!(next.is_err(), "a taken request came again: {next:?}");
    }

    #[tokio::test]
    async fn a_request_wakes_a_waiting_task() {
        let (tx, mut rx) = stop_cell();
        let waiting = tokio::spawn(async move { rx.recv().await });
        // The task runs and waits before the request is sent.
        tokio::task::yield_now().await;
        tx.send(7 * MS);
        let grace = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the stop request did not wake the task")
            .expect("the task panicked");
        assert_eq!(grace, 7 * MS);
    }

    /// Every generation has its own cell: a stop of one does not reach another.
    #[tokio::test]
    async fn cells_are_independent() {
        let (a_tx, mut a_rx) = stop_cell();
        let (_b_tx, mut b_rx) = stop_cell();
        a_tx.send(4 * MS);
        assert_eq!(a_rx.recv().await, 4 * MS);
        assert!(tokio::time::timeout(20 * MS, b_rx.recv()).await.is_err());
    }
}
