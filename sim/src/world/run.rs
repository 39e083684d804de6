//! The event loop: virtual time advances to the next scheduled event or agent tick,
//! whichever comes first, and each event is dispatched; safety is checked after each.

use super::{Event, World};
use pop_core::event::{ExitStatus, Input};
use pop_core::zk::{ZkError, ZkReply};
use pop_core::Timestamp;
use std::cmp::Reverse;
use std::time::Duration;

impl World {
    fn next_tick(&self) -> Option<(Timestamp, usize)> {
        self.machines
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.exited && m.net.paused_since.is_none())
            .filter_map(|(i, m)| m.tick_at.map(|t| (t.max(self.now), i)))
            .min()
    }

    /// Runs events until virtual time `until`.
    pub fn run_until(&mut self, until: Timestamp) {
        loop {
            let next_event = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let tick = self.next_tick();
            let take_tick = match (tick, next_event) {
                (Some((t, _)), Some(e)) => t < e,
                (Some(_), None) => true,
                _ => false,
            };
            if take_tick {
                let Some((t, machine)) = tick else { break };
                if t > until {
                    break;
                }
                self.advance(t);
                self.deliver(machine, Input::Tick);
                if self.after_event() {
                    break;
                }
                continue;
            }
            let Some(Reverse((t, _, key))) = self.queue.peek().copied() else {
                break;
            };
            if t > until {
                break;
            }
            self.queue.pop();
            self.advance(t);
            if let Some(event) = self.events.remove(&key) {
                self.dispatch(event);
            }
            if self.after_event() {
                break;
            }
        }
        if self.violation.is_none() {
            self.now = self.now.max(until);
        }
    }

    /// Counts the event and checks safety; true when the run must stop.
    fn after_event(&mut self) -> bool {
        self.events_handled += 1;
        if self.check_invariants {
            self.check_safety();
            if let Some(m) = self
                .machines
                .iter()
                .find(|m| m.tick_at != m.agent.poll_timeout())
            {
                self.violate(format!("{}: the simulator's next tick is stale", m.id));
            }
        }
        self.violation.is_some()
    }

    /// Moves virtual time to `t`, catching livelock: agents that keep acting without
    /// time passing would otherwise hang the simulation and grow without bound.
    fn advance(&mut self, t: Timestamp) {
        if t == self.now {
            self.events_at_now += 1;
            if self.events_at_now > self.max_events_at_one_time {
                let tail: Vec<&String> = self.trace.iter().rev().take(40).collect();
                panic!(
                    "livelock: over {} events at {} without time passing; last events:\n{tail:#?}",
                    self.max_events_at_one_time, self.now
                );
            }
        } else {
            self.events_at_now = 0;
        }
        self.now = t;
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    pub(super) fn dispatch(&mut self, event: Event) {
        // A request on a cut link waits, or fails at the client, before reaching the server.
        if let Event::Request { machine, .. } = &event {
            if self.hold_request(*machine, &event) {
                return;
            }
        }
        match event {
            Event::Deliver {
                machine,
                incarnation,
                input,
            } => {
                if incarnation == self.machines[machine].incarnation {
                    self.deliver(machine, input);
                }
            }
            Event::Request {
                machine,
                incarnation,
                session,
                id,
                op,
            } => {
                self.load.on_request(self.now);
                self.check_own_write(machine, session, &op);
                let before = self.result_before(&op);
                let (reply, n) = match session {
                    Some(s) => self.zk.apply(s, &op),
                    None => (ZkReply::Error(ZkError::ConnectionLoss), Vec::new()),
                };
                self.check_task_write(machine, &op, before, &reply);
                if self.check_invariants {
                    self.check_agent_refusal(machine, &op, &reply);
                }
                self.notify(n);
                let input = Input::Reply { id, reply };
                if incarnation == self.machines[machine].incarnation
                    && self.hold_from_server(machine, &input)
                {
                    return;
                }
                let at = self.now + self.latency(machine);
                self.send_to_agent_as(machine, incarnation, at, input);
            }
            Event::ExpireSession { session } => {
                self.end_session(session);
            }
            Event::Link {
                machine,
                since,
                timer,
            } => self.on_link_timer(machine, since, timer),
            Event::Heal { machine } => self.heal(machine),
            Event::AdminRequest {
                terminal,
                step,
                request,
            } => self.on_admin_request(terminal, step, request),
            Event::AdminFeedback {
                terminal,
                step,
                feedback,
            } => {
                if self.terminals[terminal].step_is(step) {
                    self.admin_next(terminal, feedback);
                }
            }
            Event::TaskEnd {
                machine,
                key,
                pid,
                status,
            } => self.end_task(machine, key, pid, status),
            Event::Built {
                machine,
                incarnation,
                service,
                hash,
                ok,
            } => self.on_built(machine, incarnation, service, hash, ok),
            Event::Kill { machine, pid } => {
                if let Some(p) = self.machines[machine].processes.remove(&pid) {
                    let status = ExitStatus {
                        code: None,
                        signal: Some(9),
                    };
                    self.report_exit(machine, p.service, p.generation, status);
                }
            }
        }
    }
}
