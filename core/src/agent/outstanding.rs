//! Requests in flight, and a cap on the reads among them: a new session re-reads every
//! service at once, and a fleet doing that together (after an outage) would put
//! thousands of reads per agent on the servers' queues. Reads past the cap wait here, in
//! order, and go out as replies come back; writes are never held (an ephemeral's steps
//! are few and each waits for its own reply).

use super::{Agent, Pending};
use crate::event::Action;
use crate::paths::Watched;
use crate::zk::{RequestId, ZkOp};
use std::collections::VecDeque;
use std::time::Duration;

/// Reads one agent may have outstanding at once.
pub const MAX_OUTSTANDING_READS: usize = 32;

/// How long to wait before retrying reads and writes that failed, plus up to
/// `RETRY_JITTER` more: agents that failed together (an outage) retry apart.
const RETRY_DELAY: Duration = Duration::from_millis(500);
const RETRY_JITTER_MS: u64 = 500;

fn reads_own_index(pending: &Pending) -> bool {
    matches!(pending, Pending::Read(Watched::Assignments(_)))
}

fn is_read(op: &ZkOp) -> bool {
    matches!(op, ZkOp::GetData { .. } | ZkOp::GetChildren { .. })
}

impl Agent {
    /// Sends a request, or queues it when it is a read and the cap is reached (or the
    /// session is not connected: it goes out once it is).
    pub(super) fn send(&mut self, op: ZkOp, pending: Pending) {
        if reads_own_index(&pending) {
            self.own_index_reads += 1;
        }
        if is_read(&op)
            && (!self.queued_reads.is_empty()
                || self.reads_in_flight.len() >= MAX_OUTSTANDING_READS)
        {
            self.queued_reads.push_back((op, pending));
            return;
        }
        self.send_now(op, pending);
    }

    fn send_now(&mut self, op: ZkOp, pending: Pending) {
        let id = RequestId(self.next_request);
        self.next_request = self.next_request.saturating_add(1);
        if is_read(&op) {
            self.reads_in_flight.insert(id);
        }
        self.pending.insert(id, pending);
        self.actions.push_back(Action::Zk { id, op });
    }

    /// The request `id` was answered (or belongs to an older session): what it was.
    pub(super) fn answered(&mut self, id: RequestId) -> Option<Pending> {
        self.reads_in_flight.remove(&id);
        let pending = self.pending.remove(&id);
        if pending.as_ref().is_some_and(reads_own_index) {
            self.own_index_reads = self.own_index_reads.saturating_sub(1);
        }
        pending
    }

    /// Sends queued reads while there is room and a session to send them on. After
    /// every input, so a reply frees its slot at once.
    pub(super) fn send_queued(&mut self) {
        if self.exited || self.session_id().is_none() {
            return;
        }
        while self.reads_in_flight.len() < MAX_OUTSTANDING_READS {
            let Some((op, pending)) = self.queued_reads.pop_front() else {
                break;
            };
            self.send_now(op, pending);
        }
        // A new session queues a read per service; once they are out, the queue's
        // buffer is released rather than kept at that size.
        if self.queued_reads.is_empty() && self.queued_reads.capacity() > MAX_OUTSTANDING_READS {
            self.queued_reads = VecDeque::new();
        }
    }

    /// A new session: nothing of the old one is in flight or waiting (it re-reads
    /// everything itself).
    pub(super) fn forget_requests(&mut self) {
        self.pending.clear();
        self.reads_in_flight.clear();
        self.queued_reads.clear();
        self.own_index_reads = 0;
    }

    pub(super) fn schedule_retry(&mut self) {
        let jitter = Duration::from_millis(self.rng.next_u64() % RETRY_JITTER_MS);
        let at = self.now + RETRY_DELAY + jitter;
        self.retry_at = Some(self.retry_at.map_or(at, |t| t.min(at)));
    }

    /// For the simulator: reads sent and not yet answered (at most the cap).
    pub fn reads_in_flight(&self) -> usize {
        self.reads_in_flight.len()
    }

    /// For the simulator: reads waiting for room under the cap.
    pub fn queued_reads(&self) -> usize {
        self.queued_reads.len()
    }

    /// For tests: the slots the agent's queues (actions, queued reads) keep allocated,
    /// to show a burst's buffers are not kept for the agent's life.
    pub fn queue_capacity(&self) -> usize {
        self.actions.capacity() + self.queued_reads.capacity()
    }
}
