//! One readable line per input and action, for traces a person reviews: golden traces,
//! `pop replay`. Node data is shown as text, cut after [`DATA_SHOWN`] characters.

use crate::event::{Action, Input, Report};
use crate::launch::Launch;
use crate::zk::{CreateMode, NodeStat, SessionEvent, WatchKind, ZkOp, ZkReply};
use std::fmt;

/// Characters of node data shown before it is cut.
pub const DATA_SHOWN: usize = 160;

/// Node data as one line of text: escaped, and cut when long.
struct Data<'a>(&'a [u8]);

impl fmt::Display for Data<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = String::from_utf8_lossy(self.0);
        let escaped = escape(&text);
        let count = escaped.chars().count();
        if count > DATA_SHOWN {
            let cut: String = escaped.chars().take(DATA_SHOWN).collect();
            write!(f, "'{cut}'… ({} bytes)", self.0.len())
        } else {
            write!(f, "'{escaped}'")
        }
    }
}

/// Control characters, quotes and backslashes escaped; JSON's own `"` left readable.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\'' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

struct Stat<'a>(&'a NodeStat);

impl fmt::Display for Stat<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        write!(f, "v{} mzxid {}", s.version, s.mzxid)?;
        if s.pzxid != s.mzxid {
            write!(f, " pzxid {}", s.pzxid)?;
        }
        if s.ephemeral_owner != 0 {
            write!(f, " owner {:#x}", s.ephemeral_owner)?;
        }
        Ok(())
    }
}

fn version(v: Option<i32>) -> String {
    v.map_or("any version".to_string(), |v| format!("v{v}"))
}

impl fmt::Display for ZkOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let watch = |w: bool| if w { " +watch" } else { "" };
        match self {
            ZkOp::GetData { path, watch: w } => write!(f, "get {path}{}", watch(*w)),
            ZkOp::GetChildren { path, watch: w } => write!(f, "children {path}{}", watch(*w)),
            ZkOp::Create {
                path,
                data,
                mode,
                acl,
            } => {
                let mode = match mode {
                    CreateMode::Persistent => "",
                    CreateMode::Ephemeral => " ephemeral",
                };
                write!(f, "create{mode} {path} {}", Data(data))?;
                if !acl.is_open() {
                    write!(f, " acl {acl}")?;
                }
                Ok(())
            }
            ZkOp::SetAcl {
                path,
                acl,
                version: v,
            } => write!(f, "setacl {path} {} {acl}", version(*v)),
            ZkOp::SetData {
                path,
                data,
                version: v,
            } => write!(f, "set {path} {} {}", version(*v), Data(data)),
            ZkOp::Delete { path, version: v } => write!(f, "delete {path} {}", version(*v)),
            ZkOp::Check { path, version: v } => write!(f, "check {path} v{v}"),
            ZkOp::WatchTree { path } => write!(f, "watch tree {path}"),
            ZkOp::Multi { ops } => {
                let ops: Vec<String> = ops.iter().map(ToString::to_string).collect();
                write!(f, "multi [{}]", ops.join("; "))
            }
        }
    }
}

impl fmt::Display for ZkReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZkReply::Data { data, stat } => write!(f, "data {} {}", Stat(stat), Data(data)),
            ZkReply::Children { names, stat } => {
                write!(f, "children [{}] pzxid {}", names.join(", "), stat.pzxid)
            }
            ZkReply::Created => f.write_str("created"),
            ZkReply::Set { stat } => write!(f, "set {}", Stat(stat)),
            ZkReply::Deleted => f.write_str("deleted"),
            ZkReply::Checked => f.write_str("checked"),
            ZkReply::Watching => f.write_str("watching"),
            ZkReply::Error(e) => write!(f, "error: {e}"),
            ZkReply::Multi { replies } => {
                let replies: Vec<String> = replies.iter().map(ToString::to_string).collect();
                write!(f, "multi [{}]", replies.join("; "))
            }
            ZkReply::MultiFailed { index, error } => {
                write!(f, "multi failed at op {index}: {error}")
            }
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Session(SessionEvent::Connected { session, timeout }) => write!(
                f,
                "session {:#x} connected, timeout {}s",
                session.0,
                timeout.as_secs_f64()
            ),
            Input::Session(SessionEvent::Disconnected) => f.write_str("session disconnected"),
            Input::Session(SessionEvent::Expired) => f.write_str("session expired"),
            Input::Reply { id, reply } => write!(f, "reply #{}: {reply}", id.0),
            Input::Watch(event) => {
                let kind = match event.kind {
                    WatchKind::Created => "created",
                    WatchKind::Deleted => "deleted",
                    WatchKind::DataChanged => "data changed",
                    WatchKind::ChildrenChanged => "children changed",
                };
                write!(f, "watch: {} {kind}", event.path)
            }
            Input::Spawned {
                service,
                generation,
                pid,
            } => write!(f, "spawned {service}#{generation} pid {pid}"),
            Input::SpawnFailed {
                service,
                generation,
                error,
            } => write!(f, "spawn of {service}#{generation} failed: {error}"),
            Input::Ready {
                service,
                generation,
                port,
            } => match port {
                Some(port) => write!(f, "{service}#{generation} ready on port {port}"),
                None => write!(f, "{service}#{generation} ready"),
            },
            Input::Exited {
                service,
                generation,
                status,
            } => write!(f, "{service}#{generation} exited: {status}"),
            Input::Adopted {
                service,
                generation,
                pid,
                port,
                ..
            } => {
                write!(f, "adopted {service}#{generation} pid {pid}")?;
                match port {
                    Some(port) => write!(f, " port {port}"),
                    None => Ok(()),
                }
            }
            Input::TaskStarted {
                service,
                task,
                attempt,
                pid,
            } => write!(
                f,
                "task {service}/{task} attempt {attempt} started, pid {pid}"
            ),
            Input::TaskFailedToStart {
                service,
                task,
                attempt,
                error,
            } => write!(
                f,
                "task {service}/{task} attempt {attempt} failed to start: {error}"
            ),
            Input::TaskExited {
                service,
                task,
                attempt,
                status,
                ..
            } => write!(
                f,
                "task {service}/{task} attempt {attempt} exited: {status}"
            ),
            Input::EnvironmentBuilt {
                service,
                spec_hash,
                result,
            } => match result {
                Ok(()) => write!(f, "environment {spec_hash} of {service} built"),
                Err(error) => write!(f, "environment {spec_hash} of {service} failed: {error}"),
            },
            Input::Tick => f.write_str("tick"),
            Input::Shutdown => f.write_str("shutdown requested"),
            Input::Detach => f.write_str("detach requested"),
        }
    }
}

impl fmt::Display for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Plain words as they are, others quoted, so the argv reads back unambiguously.
        let words: Vec<String> = self
            .argv
            .iter()
            .map(|word| {
                let plain = !word.is_empty()
                    && word
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-./:,+@%=".contains(c));
                if plain {
                    word.clone()
                } else {
                    format!("{word:?}")
                }
            })
            .collect();
        f.write_str(&words.join(" "))?;
        // pop's own variables are the same for every launch; show the service's.
        let own: Vec<String> = self
            .env
            .iter()
            .filter(|(k, _)| !k.starts_with("POP_"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !own.is_empty() {
            write!(f, " env {}", own.join(" "))?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::BadData { path, error } => write!(f, "bad data at {path}: {error}"),
            Report::DataRepaired { path } => write!(f, "data at {path} is good again"),
            Report::CrashLoop {
                service,
                failures,
                delay,
            } => write!(
                f,
                "{service} crash loop: {failures} quick failures, next start in {:.3}s",
                delay.as_secs_f64()
            ),
            Report::SpawnFailed { service, error } => {
                write!(f, "{service} failed to spawn: {error}")
            }
            Report::Started { service, pid } => write!(f, "{service} started, pid {pid}"),
            Report::Exited { service, status } => write!(f, "{service} exited: {status}"),
            Report::Adopted { service, pid } => write!(f, "{service} adopted, pid {pid}"),
            Report::NotReady {
                service,
                port,
                waited,
            } => {
                let secs = waited.as_secs_f64();
                match port {
                    0 => write!(f, "{service} not listening on any port after {secs}s"),
                    port => write!(
                        f,
                        "{service} not accepting connections on port {port} after {secs}s"
                    ),
                }?;
                f.write_str(", restarting it")
            }
            Report::Fenced { services } => write!(f, "fenced: {}", services.join(", ")),
            Report::TaskEnded {
                service,
                task,
                attempt,
                state,
            } => write!(f, "task {service}/{task} attempt {attempt}: {state}"),
            Report::Waiting { service, reason } => write!(f, "{service} waits: {reason}"),
            Report::EnvironmentReady { service, spec_hash } => {
                write!(f, "{service}: environment {spec_hash} ready")
            }
            Report::EnvironmentFailed {
                service,
                spec_hash,
                error,
            } => write!(f, "{service}: environment {spec_hash} failed: {error}"),
            Report::NotAuthorised { path, doing } => {
                write!(f, "not authorised: ZooKeeper refused {doing} {path}")
            }
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Zk { id, op } => write!(f, "zk #{}: {op}", id.0),
            Action::Spawn {
                service,
                generation,
                launch,
                ..
            } => write!(f, "spawn {service}#{generation}: {launch}"),
            Action::Stop {
                service,
                generation,
                grace,
            } => write!(
                f,
                "stop {service}#{generation}, SIGKILL after {}s",
                grace.as_secs_f64()
            ),
            Action::RunTask {
                service,
                task,
                attempt,
                argv,
                ..
            } => write!(
                f,
                "run task {service}/{task} attempt {attempt}: {}",
                argv.join(" ")
            ),
            Action::StopTask {
                service,
                task,
                attempt,
                grace,
            } => write!(
                f,
                "stop task {service}/{task} attempt {attempt}, SIGKILL after {}s",
                grace.as_secs_f64()
            ),
            Action::BuildEnvironment { service, spec, dir } => {
                write!(
                    f,
                    "build environment of {service} at {dir}: {}",
                    spec.python
                )?;
                for package in &spec.packages {
                    write!(f, " {package:?}")?;
                }
                Ok(())
            }
            Action::RemoveEnvironments { service, keep } => {
                write!(f, "remove environments of {service}")?;
                match keep.as_slice() {
                    [] => Ok(()),
                    keep => write!(f, " but {}", keep.join(", ")),
                }
            }
            Action::NewSession => f.write_str("open a new session"),
            Action::Report(report) => write!(f, "report: {report}"),
            Action::Exit => f.write_str("exit"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zk::RequestId;

    #[test]
    fn long_data_is_cut_and_escaped() {
        let op = ZkOp::Create {
            path: "/x".into(),
            data: format!("a\n{}", "b".repeat(300)).into_bytes(),
            mode: CreateMode::Ephemeral,
            acl: Default::default(),
        };
        let line = Action::Zk {
            id: RequestId(3),
            op,
        }
        .to_string();
        assert!(
            line.starts_with("zk #3: create ephemeral /x 'a\\nbbb"),
            "{line}"
        );
        assert!(line.ends_with("… (302 bytes)"), "{line}");
        assert!(!line.contains('\n'));
    }
}
