//! Whether a running process is ready (only then is it published), and when waiting for
//! it has failed.

use crate::settings::Settings;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Readiness {
    /// A service with a port: until the readiness probe finds it accepting connections,
    /// at the latest until `deadline` (its `ready_timeout`), when the run has failed.
    WaitingForPort { deadline: Timestamp },
    /// A service without a port: ready at this time (`start_seconds` after its start).
    WaitingUntil(Timestamp),
    /// `port`: the port it listens on (the real one when the setting was 0), if any.
    Ready { port: Option<u16> },
}

/// What a tick means for a run's readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    Nothing,
    /// It became ready by waiting (a service without a port).
    Ready,
    /// Its port was not ready in time: the run has failed.
    Failed,
}

impl Readiness {
    /// For a process that started at `now` with `settings`; `probed`: its launch has a
    /// readiness probe (its type's readiness is its port, and it has one).
    pub(crate) fn at_start(probed: bool, settings: &Settings, now: Timestamp) -> Readiness {
        if probed {
            Readiness::WaitingForPort {
                deadline: now + settings.ready_timeout,
            }
        } else {
            Readiness::WaitingUntil(now + settings.start_seconds)
        }
    }

    /// When a tick is needed.
    pub(crate) fn deadline(&self) -> Option<Timestamp> {
        match *self {
            Readiness::WaitingForPort { deadline } => Some(deadline),
            Readiness::WaitingUntil(at) => Some(at),
            Readiness::Ready { .. } => None,
        }
    }

    pub(crate) fn on_tick(&mut self, now: Timestamp) -> Due {
        match *self {
            Readiness::WaitingUntil(at) if now >= at => {
                *self = Readiness::Ready { port: None };
                Due::Ready
            }
            Readiness::WaitingForPort { deadline } if now >= deadline => Due::Failed,
            _ => Due::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Backoff;
    use crate::event::{Action, ExitStatus, Input, Report};
    use crate::names::MachineId;
    use crate::published::Phase;
    use crate::zk::{NodeStat, SessionEvent, SessionId, WatchEvent, WatchKind, ZkOp, ZkReply};
    use crate::{Agent, AgentConfig};
    use std::time::Duration;

    fn settings(json: &str) -> Settings {
        Settings::parse(json.as_bytes()).expect("settings")
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn waiting_for_a_port_fails_at_the_ready_timeout_not_before() {
        let s = settings(r#"{"type":"echo","port":8080,"ready_timeout":2}"#);
        let mut readiness = Readiness::at_start(s.port.is_some(), &s, at(1000));
        assert_eq!(readiness.deadline(), Some(at(3000)));
        assert_eq!(readiness.on_tick(at(2999)), Due::Nothing);
        assert_eq!(readiness.on_tick(at(3000)), Due::Failed);
    }

    #[test]
    fn a_service_without_a_port_is_ready_after_start_seconds_whatever_its_ready_timeout() {
        let s = settings(r#"{"type":"command","command":"x","start_seconds":5,"ready_timeout":1}"#);
        let mut readiness = Readiness::at_start(s.port.is_some(), &s, at(1000));
        assert_eq!(readiness.deadline(), Some(at(6000)));
        assert_eq!(readiness.on_tick(at(2000)), Due::Nothing);
        assert_eq!(readiness.on_tick(at(6000)), Due::Ready);
        assert_eq!(readiness, Readiness::Ready { port: None });
        assert_eq!(readiness.deadline(), None);
    }

    /// One agent on m1 running service "web", driven input by input.
    struct Machine {
        agent: Agent,
        now: u64,
        next_zxid: i64,
    }

    impl Machine {
        /// Connected, with "web" indexed and deployed here with `settings` and spawned as
        /// generation 1.
        fn running(settings: &str) -> Machine {
            let mut m = Machine {
                agent: Agent::new(AgentConfig {
                    access: Default::default(),
                    machine: MachineId::new("m1").expect("machine id"),
                    hostname: "h".into(),
                    agent_pid: 1,
                    version: "t".into(),
                    containment: "none".into(),
                    seed: 1,
                    backoff: Backoff::default(),
                    pop: "/usr/bin/pop".into(),
                    state_dir: "/var/lib/pop".into(),
                }),
                now: 1000,
                next_zxid: 10,
            };
            let connected = SessionEvent::Connected {
                session: SessionId(1),
                timeout: Duration::from_secs(4),
            };
            let actions = m.feed(0, Input::Session(connected));
            let listing = ZkReply::Children {
                names: vec!["web".into()],
                stat: NodeStat::default(),
            };
            let actions = m.reply(&actions, "/assignments/m1", listing);
            m.answer_read(&actions, "/services/web/machines", r#"["m1"]"#);
            let actions = m.answer_read(&actions, "/services/web/settings", settings);
            assert!(m.spawns(&actions, 1), "{actions:?}");
            m.spawned(1, 100);
            m
        }

        fn feed(&mut self, after_ms: u64, input: Input) -> Vec<Action> {
            self.now += after_ms;
            self.agent.handle(at(self.now), input);
            self.agent.drain_actions()
        }

        fn reply(&mut self, actions: &[Action], path: &str, reply: ZkReply) -> Vec<Action> {
            let id = actions
                .iter()
                .find_map(|a| match a {
                    Action::Zk {
                        id,
                        op: op @ (ZkOp::GetData { .. } | ZkOp::GetChildren { .. }),
                    } if op.path() == path => Some(*id),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no read of {path} in {actions:?}"));
            self.feed(1, Input::Reply { id, reply })
        }

        fn answer_read(&mut self, actions: &[Action], path: &str, data: &str) -> Vec<Action> {
            self.next_zxid += 1;
            let reply = ZkReply::Data {
                data: data.as_bytes().to_vec(),
                stat: NodeStat {
                    mzxid: self.next_zxid,
                    ..NodeStat::default()
                },
            };
            self.reply(actions, path, reply)
        }

        fn spawns(&self, actions: &[Action], generation: u64) -> bool {
            actions.iter().any(|a| {
                matches!(a, Action::Spawn { service, generation: g, .. }
                    if service == "web" && *g == generation)
            })
        }

        fn spawned(&mut self, generation: u64, pid: u32) -> Vec<Action> {
            let input = Input::Spawned {
                service: "web".into(),
                generation,
                pid,
            };
            self.feed(1, input)
        }

        fn exited(&mut self, generation: u64) -> Vec<Action> {
            let status = ExitStatus {
                code: None,
                signal: Some(15),
            };
            let input = Input::Exited {
                service: "web".into(),
                generation,
                status,
            };
            self.feed(1, input)
        }

        /// Ticks at the agent's next deadline.
        fn tick_when_due(&mut self) -> Vec<Action> {
            let due = self.agent.poll_timeout().expect("something is due");
            let wait = due.as_millis().saturating_sub(self.now);
            self.feed(wait, Input::Tick)
        }

        fn report(&self) -> crate::published::ServiceReport {
            self.agent.service_report("web").expect("web is known")
        }
    }

    fn stops(actions: &[Action], generation: u64) -> bool {
        actions.iter().any(|a| {
            matches!(a, Action::Stop { service, generation: g, .. }
                if service == "web" && *g == generation)
        })
    }

    const NEVER_READY: &str =
        r#"{"type":"command","command":"serve","port":8080,"ready_timeout":2}"#;

    #[test]
    fn a_port_not_accepting_connections_in_time_fails_the_run_which_restarts_after_a_backoff() {
        let mut m = Machine::running(NEVER_READY);
        let started = m.now;
        assert_eq!(m.agent.poll_timeout(), Some(at(started + 2000)));
        assert_eq!(m.report().phase, Phase::Starting);

        let actions = m.tick_when_due();
        assert!(
            actions.contains(&Action::Report(Report::NotReady {
                service: "web".into(),
                port: 8080,
                waited: Duration::from_secs(2),
            })),
            "{actions:?}"
        );
        assert!(stops(&actions, 1), "{actions:?}");
        let report = m.report();
        assert_eq!(report.phase, Phase::Stopping);
        assert_eq!(report.not_ready_within, Some(2.0));

        // Gone: not started again at once, but after a crash-loop delay.
        let actions = m.exited(1);
        assert!(!m.spawns(&actions, 2), "{actions:?}");
        let report = m.report();
        assert_eq!(report.phase, Phase::Backoff);
        assert_eq!((report.restarts, report.quick_failures), (1, 1));
        assert!(report.next_start_at.is_some(), "{report:?}");
        let actions = m.tick_when_due();
        assert!(m.spawns(&actions, 2), "{actions:?}");
        assert_eq!(
            m.report().not_ready_within,
            Some(2.0),
            "until a run is ready"
        );
    }

    #[test]
    fn a_readiness_failure_is_a_quick_failure_however_long_it_waited() {
        // Longer than the 10 s after which a run that ends counts as healthy.
        let mut m =
            Machine::running(r#"{"type":"command","command":"serve","port":0,"ready_timeout":30}"#);
        for generation in 1..=3 {
            let actions = m.tick_when_due();
            assert!(stops(&actions, generation), "{actions:?}");
            let actions = m.exited(generation);
            let crash_loop = actions
                .iter()
                .any(|a| matches!(a, Action::Report(Report::CrashLoop { .. })));
            assert_eq!(crash_loop, generation == 3, "{actions:?}");
            assert_eq!(m.report().quick_failures as u64, generation);
            let actions = m.tick_when_due();
            assert!(m.spawns(&actions, generation + 1), "{actions:?}");
            m.spawned(generation + 1, 100 + generation as u32);
        }
    }

    #[test]
    fn a_run_ready_in_time_is_never_failed_and_clears_the_last_failure() {
        let mut m = Machine::running(NEVER_READY);
        m.tick_when_due();
        m.exited(1);
        m.tick_when_due();
        m.spawned(2, 101);
        let ready = Input::Ready {
            service: "web".into(),
            generation: 2,
            port: Some(8080),
        };
        m.feed(1, ready);
        assert_eq!(m.agent.poll_timeout(), None, "nothing left to wait for");
        let actions = m.feed(60_000, Input::Tick);
        assert!(!stops(&actions, 2), "{actions:?}");
        let report = m.report();
        assert_eq!(report.phase, Phase::Running);
        assert_eq!(report.not_ready_within, None);
    }

    #[test]
    fn a_run_failed_for_readiness_is_not_restarted_once_undeployed() {
        let mut m = Machine::running(NEVER_READY);
        let actions = m.tick_when_due();
        assert!(stops(&actions, 1), "{actions:?}");
        // Undeployed while it stops.
        let changed = WatchEvent {
            path: "/services/web/machines".into(),
            kind: WatchKind::DataChanged,
        };
        let actions = m.feed(1, Input::Watch(changed));
        m.answer_read(&actions, "/services/web/machines", "[]");
        let actions = m.exited(1);
        assert!(!m.spawns(&actions, 2), "{actions:?}");
        assert_eq!(m.agent.poll_timeout(), None, "no restart pending");
        assert_eq!(
            m.agent.service_phases().get("web").map(String::as_str),
            Some("stopped")
        );
    }
}
