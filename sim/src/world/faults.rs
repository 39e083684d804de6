//! Faults injected from outside the agent: its process killed or upgraded, a service's
//! process dying on its own, a session expired, a connection dropped and back.

use super::{Event, World, LATENCY, SESSION_TIMEOUT};
use pop_core::event::{ExitStatus, Input};
use pop_core::zk::SessionEvent;

impl World {
    /// The agent process dies (kill -9): its processes live on as orphans and its
    /// session lingers until the server expires it. A new agent starts and adopts them.
    pub fn crash_agent(&mut self, machine: usize) {
        self.trace
            .push(format!("{} m{machine} agent killed", self.now));
        if !self.machines[machine].processes.is_empty() {
            self.coverage("agent killed with services running");
        }
        // Killed mid-write, half the time: the journal's last line is torn.
        if self.process_rng.next_u64().is_multiple_of(2) {
            let m = &mut self.machines[machine];
            let last = m.journals.len().saturating_sub(1);
            m.torn_journals.insert(last);
        }
        // A new process: not frozen, and nothing waits for it.
        self.machines[machine].net.paused_since = None;
        if let Some(old) = self.machines[machine].session.take() {
            self.schedule(
                self.now + SESSION_TIMEOUT,
                Event::ExpireSession { session: old },
            );
        }
        self.start_agent(machine);
    }

    /// `pop stop --keep-services` then a new agent: detach, then start and adopt.
    pub fn upgrade_agent(&mut self, machine: usize) {
        if self.machines[machine].net.paused_since.is_some() {
            return; // a frozen agent cannot be asked to stop
        }
        self.trace
            .push(format!("{} m{machine} agent upgrade", self.now));
        self.deliver(machine, Input::Detach);
        self.start_agent(machine);
    }

    /// The process of `service` on `machine` dies on its own.
    pub fn crash(&mut self, machine: usize, service: &str, status: ExitStatus) {
        let pid = self.machines[machine]
            .processes
            .values()
            .find(|p| p.service == service)
            .map(|p| p.pid);
        if let Some(pid) = pid {
            if let Some(p) = self.machines[machine].processes.remove(&pid) {
                self.trace
                    .push(format!("{} m{machine} crash {service} pid {pid}", self.now));
                // A process already asked to stop is replaced at once: not a crash loop.
                if !p.stopping {
                    let ran = self.now.saturating_since(p.started_at);
                    self.last_crash.insert(
                        (machine, p.service.clone()),
                        (self.now, ran, p.settings.clone()),
                    );
                }
                self.report_exit(machine, p.service, p.generation, status);
            }
        }
    }

    pub(super) fn note_expiry(&mut self, machine: usize) {
        if !self.machines[machine].processes.is_empty() {
            self.coverage("session expiry while services run");
        }
        if !self.machines[machine].tasks.is_empty() {
            self.coverage("session expiry while a task runs");
        }
    }

    /// The server expires the machine's session.
    pub fn expire_session(&mut self, machine: usize) {
        self.note_expiry(machine);
        if let Some(session) = self.machines[machine].session.take() {
            self.trace
                .push(format!("{} m{machine} session expired", self.now));
            self.end_session(session);
            self.send_to_agent(
                machine,
                self.now + LATENCY,
                Input::Session(SessionEvent::Expired),
            );
        }
    }

    /// The connection drops without the session ending: the agent hears of it at once,
    /// while replies already on the way still arrive afterwards.
    pub fn disconnect(&mut self, machine: usize) {
        self.trace
            .push(format!("{} m{machine} disconnected", self.now));
        self.send_to_agent(
            machine,
            self.now,
            Input::Session(SessionEvent::Disconnected),
        );
    }

    /// The connection comes back within the same session.
    pub fn reconnect(&mut self, machine: usize) {
        if let Some(session) = self.machines[machine].session {
            self.trace
                .push(format!("{} m{machine} reconnected", self.now));
            self.deliver_connected(machine, session);
        }
    }

    pub fn shutdown(&mut self, machine: usize) {
        self.send_to_agent(machine, self.now, Input::Shutdown);
    }
}
