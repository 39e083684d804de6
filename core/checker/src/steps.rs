//! How fuzzer bytes become inputs: a small vocabulary of steps, decoded with `arbitrary`,
//! that the checker resolves against what the agent asked for (answer the third
//! outstanding request, end a live process), so most sequences get past the first reads
//! instead of being dropped as stale.

use crate::checker::Checker;
use crate::world::{SessionView, MACHINE, SERVICES, SESSION_TIMEOUT};
use arbitrary::Arbitrary;
use pop_core::event::{ExitStatus, Input};
use pop_core::paths;
use pop_core::settings::Settings;
use pop_core::zk::{
    NodeStat, RequestId, SessionEvent, SessionId, WatchEvent, WatchKind, ZkError, ZkOp, ZkReply,
};
use std::time::Duration;

// The step vocabulary below mirrors the core's types (ZkError, WatchKind...) on purpose
// instead of deriving `Arbitrary` on them: the committed corpora are bytes decoded through
// these enums, so they must change only when the corpora are regenerated.

/// One fuzzer-chosen thing that happens, after `advance_ms` of time.
#[derive(Debug, Clone, Arbitrary)]
pub struct TimedStep {
    pub advance_ms: u16,
    pub step: Step,
}

#[derive(Debug, Clone, Arbitrary)]
pub enum Step {
    Connect {
        session: u8,
    },
    Disconnect,
    Expire,
    /// A reply to one of the requests the agent has outstanding.
    Answer {
        request: u8,
        reply: ReplyChoice,
    },
    /// A reply with any id: stale, unknown or duplicate.
    Stray {
        id: u8,
        reply: ReplyChoice,
    },
    Watch {
        path: PathChoice,
        kind: KindChoice,
    },
    Spawned {
        process: ProcessChoice,
        pid: u8,
    },
    SpawnFailed {
        process: ProcessChoice,
    },
    Ready {
        process: ProcessChoice,
        port: Option<u16>,
    },
    Exited {
        process: ProcessChoice,
        code: Option<i8>,
        signal: Option<u8>,
    },
    Adopted {
        service: u8,
        generation: u8,
        pid: u8,
        settings: Payload,
        port: Option<u16>,
    },
    /// A tick now, whether or not anything is due.
    Tick,
    /// Time moves to the agent's next deadline (if any) and it ticks.
    TickAtDeadline,
    Shutdown,
    Detach,
    /// The agent is serialized and restored, as journal rotation does.
    Snapshot,
}

#[derive(Debug, Clone, Arbitrary)]
pub enum ReplyChoice {
    /// The reply the request's kind expects: data for a read, created for a create...
    Fitting {
        payload: Payload,
        children: u8,
        zxid: Zxid,
    },
    Data {
        payload: Payload,
        version: u8,
        owner: Owner,
        zxid: Zxid,
    },
    Children {
        children: u8,
        zxid: Zxid,
    },
    Created,
    Set {
        version: u8,
        zxid: Zxid,
    },
    Deleted,
    Error(ErrorChoice),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Payload {
    MachinesWithThis,
    MachinesWithOthers,
    NoMachines,
    Command,
    CommandChanged,
    EchoFenced,
    CommandNeverRestarted,
    Pid,
    Empty,
    Garbage(u32),
}

impl Payload {
    fn bytes(self) -> Vec<u8> {
        let text: &str = match self {
            Payload::MachinesWithThis => r#"["m1","m2"]"#,
            Payload::MachinesWithOthers => r#"["m2"]"#,
            Payload::NoMachines => "[]",
            Payload::Command => r#"{"type":"command","command":"run","start_seconds":0.1}"#,
            Payload::CommandChanged => {
                r#"{"type":"command","command":"run --v2","start_seconds":0.1,"env":{"V":"2"}}"#
            }
            Payload::EchoFenced => r#"{"type":"echo","port":0,"session_loss":"fence"}"#,
            Payload::CommandNeverRestarted => {
                r#"{"type":"command","command":"once","restart":"never"}"#
            }
            Payload::Pid => "4242",
            Payload::Empty => "",
            Payload::Garbage(n) => return n.to_le_bytes().to_vec(),
        };
        text.as_bytes().to_vec()
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Zxid {
    Newest,
    Old,
    Exactly(u8),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Owner {
    ThisSession,
    OtherSession,
    Persistent,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum ErrorChoice {
    NoNode,
    NodeExists,
    BadVersion,
    NotEmpty,
    ConnectionLoss,
    SessionExpired,
    Timeout,
    Other,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum PathChoice {
    /// This machine's index.
    Index,
    Machines(u8),
    Settings(u8),
    ThisMachinesNode(u8),
    State(u8),
    Agent,
    Elsewhere,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum KindChoice {
    Created,
    Deleted,
    DataChanged,
    ChildrenChanged,
}

/// A process the driver reports on: one the world has live, or any generation.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum ProcessChoice {
    Live(u8),
    Any { service: u8, generation: u8 },
}

fn service(choice: u8) -> String {
    SERVICES[usize::from(choice) % SERVICES.len()].to_string()
}

/// Children of the index (or any node): a bit per service, and two names that are not
/// valid ones.
fn children(mask: u8) -> Vec<String> {
    let mut names: Vec<String> = SERVICES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, s)| s.to_string())
        .collect();
    if mask & 0x08 != 0 {
        names.push("zookeeper".into());
    }
    if mask & 0x10 != 0 {
        names.push("with space".into());
    }
    names
}

impl Checker {
    /// Turns a fuzzer step into an input, or `None` for steps that are not inputs.
    pub fn resolve(&mut self, step: &Step) -> Option<Input> {
        Some(match step {
            Step::Connect { session } => Input::Session(SessionEvent::Connected {
                session: SessionId(i64::from(session % 3) + 1),
                timeout: SESSION_TIMEOUT,
            }),
            Step::Disconnect => Input::Session(SessionEvent::Disconnected),
            Step::Expire => Input::Session(SessionEvent::Expired),
            Step::Answer { request, reply } => {
                let count = self.world.outstanding.len();
                if count == 0 {
                    return None;
                }
                let (id, op) = self
                    .world
                    .outstanding
                    .iter()
                    .nth(usize::from(*request) % count)?;
                let (id, op) = (*id, op.clone());
                Input::Reply {
                    id,
                    reply: self.reply(Some(&op), reply),
                }
            }
            Step::Stray { id, reply } => Input::Reply {
                id: RequestId(u64::from(*id)),
                reply: self.reply(None, reply),
            },
            Step::Watch { path, kind } => Input::Watch(WatchEvent {
                path: match *path {
                    PathChoice::Index => paths::assignments(MACHINE),
                    PathChoice::Machines(s) => paths::service_machines(&service(s)),
                    PathChoice::Settings(s) => paths::service_settings(&service(s)),
                    PathChoice::ThisMachinesNode(s) => paths::machine_service(MACHINE, &service(s)),
                    PathChoice::State(s) => paths::service_state(&service(s), MACHINE),
                    PathChoice::Agent => paths::agent(MACHINE),
                    PathChoice::Elsewhere => "/elsewhere/x".to_string(),
                },
                kind: match kind {
                    KindChoice::Created => WatchKind::Created,
                    KindChoice::Deleted => WatchKind::Deleted,
                    KindChoice::DataChanged => WatchKind::DataChanged,
                    KindChoice::ChildrenChanged => WatchKind::ChildrenChanged,
                },
            }),
            Step::Spawned { process, pid } => {
                let (service, generation) = self.process(process);
                Input::Spawned {
                    service,
                    generation,
                    pid: 1000 + u32::from(*pid),
                }
            }
            Step::SpawnFailed { process } => {
                let (service, generation) = self.process(process);
                Input::SpawnFailed {
                    service,
                    generation,
                    error: "cannot exec".into(),
                }
            }
            Step::Ready { process, port } => {
                let (service, generation) = self.process(process);
                Input::Ready {
                    service,
                    generation,
                    port: *port,
                }
            }
            Step::Exited {
                process,
                code,
                signal,
            } => {
                let (service, generation) = self.process(process);
                Input::Exited {
                    service,
                    generation,
                    status: ExitStatus {
                        code: code.map(i32::from),
                        signal: if code.is_some() {
                            None
                        } else {
                            signal.map(i32::from)
                        },
                    },
                }
            }
            Step::Adopted {
                service: s,
                generation,
                pid,
                settings,
                port,
            } => Input::Adopted {
                service: service(*s),
                generation: u64::from(*generation),
                pid: 2000 + u32::from(*pid),
                started_at: self.now - Duration::from_secs(60),
                port: *port,
                settings: Settings::parse(&settings.bytes()).ok()?,
                launch: None,
            },
            Step::Tick => Input::Tick,
            Step::TickAtDeadline => {
                if let Some(deadline) = self.agent.poll_timeout() {
                    self.now = self.now.max(deadline);
                }
                Input::Tick
            }
            Step::Shutdown => Input::Shutdown,
            Step::Detach => Input::Detach,
            Step::Snapshot => return None,
        })
    }

    fn process(&self, choice: &ProcessChoice) -> (String, u64) {
        match *choice {
            ProcessChoice::Live(i) if !self.world.live.is_empty() => {
                let index = usize::from(i) % self.world.live.len();
                self.world
                    .live
                    .keys()
                    .nth(index)
                    .cloned()
                    .unwrap_or_else(|| (service(0), 0))
            }
            ProcessChoice::Live(i) => (service(i), 1),
            ProcessChoice::Any {
                service: s,
                generation,
            } => (service(s), u64::from(generation % 8)),
        }
    }

    fn stat(&mut self, zxid: Zxid, version: u8, owner: Owner) -> NodeStat {
        let mzxid = match zxid {
            Zxid::Newest => {
                self.world.zxid += 1;
                self.world.zxid
            }
            Zxid::Old => self.world.zxid - 50,
            Zxid::Exactly(n) => i64::from(n),
        };
        NodeStat {
            version: i32::from(version % 4),
            ephemeral_owner: match (owner, self.world.session) {
                (Owner::ThisSession, SessionView::Connected(s) | SessionView::Disconnected(s)) => {
                    s.0
                }
                (Owner::ThisSession | Owner::OtherSession, _) => 99,
                (Owner::Persistent, _) => 0,
            },
            mzxid,
            pzxid: mzxid,
        }
    }

    fn reply(&mut self, op: Option<&ZkOp>, choice: &ReplyChoice) -> ZkReply {
        match choice {
            ReplyChoice::Fitting {
                payload,
                children: mask,
                zxid,
            } => match op {
                Some(ZkOp::GetData { path, .. }) => {
                    let owner = if path.starts_with("/services/") && !path.contains("/state/") {
                        Owner::Persistent
                    } else {
                        Owner::ThisSession
                    };
                    let stat = self.stat(*zxid, 0, owner);
                    ZkReply::Data {
                        data: payload.bytes(),
                        stat,
                    }
                }
                Some(ZkOp::GetChildren { .. }) => ZkReply::Children {
                    names: children(*mask),
                    stat: self.stat(*zxid, 0, Owner::Persistent),
                },
                Some(ZkOp::Create { .. }) | None => ZkReply::Created,
                Some(ZkOp::SetData { .. } | ZkOp::SetAcl { .. }) => ZkReply::Set {
                    stat: self.stat(*zxid, 1, Owner::ThisSession),
                },
                Some(ZkOp::Delete { .. }) => ZkReply::Deleted,
                Some(ZkOp::WatchTree { .. }) => ZkReply::Watching,
                // The agent sends no checks (they live only in multis).
                Some(ZkOp::Check { .. }) => ZkReply::Checked,
                // The agent sends no multis; no bytes are drawn for one.
                Some(ZkOp::Multi { .. }) => ZkReply::Multi {
                    replies: Vec::new(),
                },
            },
            ReplyChoice::Data {
                payload,
                version,
                owner,
                zxid,
            } => ZkReply::Data {
                data: payload.bytes(),
                stat: self.stat(*zxid, *version, *owner),
            },
            ReplyChoice::Children {
                children: mask,
                zxid,
            } => ZkReply::Children {
                names: children(*mask),
                stat: self.stat(*zxid, 0, Owner::Persistent),
            },
            ReplyChoice::Created => ZkReply::Created,
            ReplyChoice::Set { version, zxid } => ZkReply::Set {
                stat: self.stat(*zxid, *version, Owner::ThisSession),
            },
            ReplyChoice::Deleted => ZkReply::Deleted,
            ReplyChoice::Error(e) => ZkReply::Error(match e {
                ErrorChoice::NoNode => ZkError::NoNode,
                ErrorChoice::NodeExists => ZkError::NodeExists,
                ErrorChoice::BadVersion => ZkError::BadVersion,
                ErrorChoice::NotEmpty => ZkError::NotEmpty,
                ErrorChoice::ConnectionLoss => ZkError::ConnectionLoss,
                ErrorChoice::SessionExpired => ZkError::SessionExpired,
                ErrorChoice::Timeout => ZkError::Timeout,
                ErrorChoice::Other => ZkError::Other("NoChildrenForEphemerals".into()),
            }),
        }
    }
}
