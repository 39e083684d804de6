//! The network and the client library, modelled where the agent can tell: partitions
//! (either direction), slow links, a frozen agent (SIGSTOP, a VM pause) and ZooKeeper
//! leader failover. The client model follows what the real client was measured to do:
//! it declares the connection lost about T/2 after the server went silent, the server
//! expires a session it has not heard from for T, and the client itself gives up on the
//! session at about 1.5 T. A short cut only delays traffic (TCP retransmits); once the
//! client has declared the connection lost, requests in flight fail with a connection
//! loss whose outcome is unknown (applied when only the replies were cut).

use super::{Event, World, SESSION_TIMEOUT};
use pop_core::event::Input;
use pop_core::zk::{SessionEvent, ZkError, ZkReply};
use pop_core::Timestamp;
use std::time::Duration;

/// A machine's link to ZooKeeper and the state of its client library.
#[derive(Debug, Default, Clone)]
pub struct NetState {
    pub cut_to_server: bool,
    pub cut_from_server: bool,
    /// When the current cut began.
    pub down_since: Option<Timestamp>,
    /// The client has told the agent the connection is lost.
    pub declared: bool,
    /// The client has given up on its session; a new one waits for the link.
    pub client_expired: bool,
    reconnect_pending: bool,
    /// Added to every message's latency (a slow link).
    pub extra_latency: Duration,
    /// Requests that reached the cut toward the server, not applied.
    held_requests: Vec<Event>,
    /// What the server sent while the way back was cut: replies and watch events.
    held_from_server: Vec<Input>,
    /// While the agent is frozen: inputs for it, in order, with their incarnation.
    pub paused_since: Option<Timestamp>,
    held_inputs: Vec<(u32, Input)>,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum LinkTimer {
    /// The client notices the silence.
    Declare,
    /// The server has not heard from the session for its timeout.
    ServerExpire,
    /// The client gives up on the session.
    ClientExpire,
    /// A frozen agent's session is not pinged either.
    PausedExpire,
}

impl World {
    pub fn is_down(&self, machine: usize) -> bool {
        self.machines[machine].net.down_since.is_some()
    }

    pub fn is_paused(&self, machine: usize) -> bool {
        self.machines[machine].net.paused_since.is_some()
    }

    /// Cuts the machine's link in one or both directions. `notice_now`: the client sees
    /// the cut at once (a server that died and reset the connection), else after T/2.
    pub fn partition(
        &mut self,
        machine: usize,
        to_server: bool,
        from_server: bool,
        notice_now: bool,
    ) {
        if self.is_down(machine) || !(to_server || from_server) {
            return;
        }
        self.trace.push(format!(
            "{} m{machine} partition to_server={to_server} from_server={from_server}",
            self.now
        ));
        if self.machines[machine]
            .agent
            .service_phases()
            .values()
            .any(|p| p == "starting")
        {
            self.coverage("partition while a service starts");
        }
        let now = self.now;
        let net = &mut self.machines[machine].net;
        net.cut_to_server = to_server;
        net.cut_from_server = from_server;
        net.down_since = Some(now);
        let declare_at = if notice_now {
            now
        } else {
            now + SESSION_TIMEOUT / 2
        };
        self.schedule(
            declare_at,
            Event::Link {
                machine,
                since: now,
                timer: LinkTimer::Declare,
            },
        );
        if to_server {
            self.schedule(
                now + SESSION_TIMEOUT,
                Event::Link {
                    machine,
                    since: now,
                    timer: LinkTimer::ServerExpire,
                },
            );
        }
        self.schedule(
            now + SESSION_TIMEOUT * 3 / 2,
            Event::Link {
                machine,
                since: now,
                timer: LinkTimer::ClientExpire,
            },
        );
    }

    /// The link works again.
    pub fn heal(&mut self, machine: usize) {
        if !self.is_down(machine) {
            return;
        }
        self.trace.push(format!("{} m{machine} healed", self.now));
        let now = self.now;
        let net = std::mem::take(&mut self.machines[machine].net.held_requests);
        let from_server = std::mem::take(&mut self.machines[machine].net.held_from_server);
        let state = self.machines[machine].net.clone();
        {
            let n = &mut self.machines[machine].net;
            n.cut_to_server = false;
            n.cut_from_server = false;
            n.down_since = None;
            n.declared = false;
            n.client_expired = false;
            n.reconnect_pending = false;
        }
        if state.reconnect_pending {
            // The agent asked for a new session while the link was down.
            for request in net {
                self.dispatch(request);
            }
            self.connect(machine);
            return;
        }
        if !state.declared {
            // A blip: TCP delivered everything late.
            for request in net {
                self.dispatch(request);
            }
            for input in from_server {
                self.send_to_agent(machine, now + self.latency(machine), input);
            }
            return;
        }
        if state.client_expired {
            return;
        }
        let live = self.machines[machine]
            .session
            .is_some_and(|s| self.zk.is_live(s));
        if let (true, Some(session)) = (live, self.machines[machine].session) {
            // Same session: the client re-registers its watches and the server fires
            // those whose nodes changed meanwhile; but not a persistent watch's, which
            // hears nothing of what happened while the connection was down
            // (ZOOKEEPER-4698).
            self.deliver_connected(machine, session);
            for input in from_server {
                if let Input::Watch(event) = &input {
                    if self.zk.is_tree_watched_by(session, &event.path) {
                        self.coverage("tree watch event lost in a reconnect");
                        continue;
                    }
                    self.send_to_agent(machine, now + self.latency(machine), input);
                }
            }
        } else {
            self.machines[machine].session = None;
            self.send_to_agent(
                machine,
                now + self.latency(machine),
                Input::Session(SessionEvent::Expired),
            );
        }
    }

    pub fn set_extra_latency(&mut self, machine: usize, extra: Duration) {
        self.trace
            .push(format!("{} m{machine} latency +{extra:?}", self.now));
        self.machines[machine].net.extra_latency = extra;
    }

    pub(super) fn latency(&self, machine: usize) -> Duration {
        super::LATENCY + self.machines[machine].net.extra_latency
    }

    /// Freezes the agent process (SIGSTOP): it handles nothing and pings nobody.
    pub fn pause(&mut self, machine: usize) {
        if self.is_paused(machine) {
            return;
        }
        self.trace
            .push(format!("{} m{machine} agent paused", self.now));
        let now = self.now;
        self.machines[machine].net.paused_since = Some(now);
        self.schedule(
            now + SESSION_TIMEOUT,
            Event::Link {
                machine,
                since: now,
                timer: LinkTimer::PausedExpire,
            },
        );
    }

    /// Thaws the agent: it handles what arrived meanwhile, then learns whether its
    /// session survived.
    pub fn resume(&mut self, machine: usize) {
        if !self.is_paused(machine) {
            return;
        }
        self.trace
            .push(format!("{} m{machine} agent resumed", self.now));
        self.machines[machine].net.paused_since = None;
        let held = std::mem::take(&mut self.machines[machine].net.held_inputs);
        let incarnation = self.machines[machine].incarnation;
        for (inc, input) in held {
            if inc == incarnation {
                self.deliver(machine, input);
            }
        }
        if let Some(session) = self.machines[machine].session {
            if !self.zk.is_live(session) && !self.is_down(machine) {
                self.machines[machine].session = None;
                self.send_to_agent(
                    machine,
                    self.now + self.latency(machine),
                    Input::Session(SessionEvent::Expired),
                );
            }
        }
    }

    /// Holds an input for a frozen agent; true if it was held.
    pub(super) fn hold_if_paused(
        &mut self,
        machine: usize,
        incarnation: u32,
        input: &Input,
    ) -> bool {
        let net = &mut self.machines[machine].net;
        if net.paused_since.is_some() {
            net.held_inputs.push((incarnation, input.clone()));
            return true;
        }
        false
    }

    /// A request reaching the cut toward the server waits there; true if it was held.
    pub(super) fn hold_request(&mut self, machine: usize, event: &Event) -> bool {
        let net = &mut self.machines[machine].net;
        if !net.cut_to_server {
            return false;
        }
        if !net.declared {
            net.held_requests.push(event.clone());
            return true;
        }
        // The client already knows the connection is dead: it fails the request.
        if let Event::Request {
            incarnation, id, ..
        } = event
        {
            let reply = ZkReply::Error(ZkError::ConnectionLoss);
            let (incarnation, id) = (*incarnation, *id);
            self.send_to_agent_as(machine, incarnation, self.now, Input::Reply { id, reply });
        }
        true
    }

    /// What the server sends back while the way back is cut waits; true if it was held.
    pub(super) fn hold_from_server(&mut self, machine: usize, input: &Input) -> bool {
        let net = &mut self.machines[machine].net;
        if !(net.cut_from_server || (net.cut_to_server && net.declared)) {
            return false;
        }
        if let (true, Input::Reply { id, .. }) = (net.declared, input) {
            // The client failed the request when it declared the connection lost; the
            // server applied it anyway.
            let id = *id;
            self.coverage("connection loss of an applied request");
            let reply = ZkReply::Error(ZkError::ConnectionLoss);
            self.send_to_agent(machine, self.now, Input::Reply { id, reply });
            return true;
        }
        net.held_from_server.push(input.clone());
        true
    }

    /// A new session is wanted: opened once the link works.
    pub(super) fn connect_when_possible(&mut self, machine: usize) -> bool {
        let net = &mut self.machines[machine].net;
        if net.down_since.is_some() {
            net.reconnect_pending = true;
            return false;
        }
        true
    }

    pub(super) fn on_link_timer(&mut self, machine: usize, since: Timestamp, timer: LinkTimer) {
        if let LinkTimer::PausedExpire = timer {
            if self.machines[machine].net.paused_since == Some(since) {
                if let Some(session) = self.machines[machine].session {
                    self.trace.push(format!(
                        "{} m{machine} frozen agent's session expires",
                        self.now
                    ));
                    self.note_expiry(machine);
                    self.end_session(session);
                }
            }
            return;
        }
        if self.machines[machine].net.down_since != Some(since) {
            return; // healed (and maybe cut again) since
        }
        match timer {
            LinkTimer::Declare => {
                self.machines[machine].net.declared = true;
                let latency = Duration::ZERO;
                self.send_to_agent(
                    machine,
                    self.now + latency,
                    Input::Session(SessionEvent::Disconnected),
                );
                // In-flight requests fail; their outcome is unknown to the agent.
                let requests = std::mem::take(&mut self.machines[machine].net.held_requests);
                for request in requests {
                    if let Event::Request {
                        incarnation,
                        id,
                        op,
                        ..
                    } = request
                    {
                        self.coverage("connection loss of a request");
                        if matches!(op, pop_core::zk::ZkOp::Create { .. }) {
                            self.coverage("connection loss of a create");
                        }
                        let reply = ZkReply::Error(ZkError::ConnectionLoss);
                        self.send_to_agent_as(
                            machine,
                            incarnation,
                            self.now,
                            Input::Reply { id, reply },
                        );
                    }
                }
                let held = std::mem::take(&mut self.machines[machine].net.held_from_server);
                let mut watches = Vec::new();
                for input in held {
                    match input {
                        Input::Reply { id, .. } => {
                            self.coverage("connection loss of an applied request");
                            let reply = ZkReply::Error(ZkError::ConnectionLoss);
                            self.send_to_agent(machine, self.now, Input::Reply { id, reply });
                        }
                        other => watches.push(other),
                    }
                }
                self.machines[machine].net.held_from_server = watches;
            }
            LinkTimer::ServerExpire => {
                if let Some(session) = self.machines[machine].session {
                    if self.zk.is_live(session) {
                        self.trace.push(format!(
                            "{} m{machine} server expires the silent session",
                            self.now
                        ));
                        self.note_expiry(machine);
                        self.end_session(session);
                    }
                }
            }
            LinkTimer::ClientExpire => {
                self.trace.push(format!(
                    "{} m{machine} client gives up its session",
                    self.now
                ));
                self.machines[machine].net.client_expired = true;
                self.machines[machine].net.held_from_server.clear();
                if let Some(old) = self.machines[machine].session.take() {
                    // Its pings stop: the server expires it a timeout later.
                    self.schedule(
                        self.now + SESSION_TIMEOUT,
                        Event::ExpireSession { session: old },
                    );
                }
                self.send_to_agent(machine, self.now, Input::Session(SessionEvent::Expired));
            }
            LinkTimer::PausedExpire => {}
        }
    }

    /// ZooKeeper's leader fails over: every client loses its connection at once and
    /// reconnects to another server with the same session after `downtime` (< T).
    pub fn failover(&mut self, downtime: Duration) {
        self.trace
            .push(format!("{} leader failover ({downtime:?})", self.now));
        for machine in 0..self.machines.len() {
            if !self.is_down(machine) {
                self.partition(machine, true, true, true);
                self.schedule(self.now + downtime, Event::Heal { machine });
            }
        }
        for terminal in 0..self.terminals.len() {
            self.cut_terminal(terminal, true, true, self.now + downtime);
        }
    }
}
