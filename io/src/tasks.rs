//! The processes of coordinated tasks (`pop run`): supervised like a service's, in the
//! same containment, under a key of their own (`<service> task <id>`, a name no service
//! can have: service names hold no spaces) with the attempt as generation. Their stdout
//! and stderr go to files under `<state dir>/tasks/<service>/`; when a task's process
//! is gone, the ends of both are read and handed to the core with its exit status (so
//! they are journaled), and the files of all but the newest tasks of the service go.
//!
//! No run record is written for a task: the next agent kills what is left of it at its
//! start instead of adopting it, and runs the task again (see the README).

use crate::supervise::{OutputFiles, ProcessSpec};
use pop_core::event::Input;
use pop_core::task::{self, TaskId, KEEP_TASKS, LISTING_TAIL_BYTES};
use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::warn;

/// The grace between SIGTERM and SIGKILL for what a task's main process leaves behind
/// when it exits by itself.
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

/// Defined with the port that takes it, which is built without this module under madsim.
pub use crate::driver::ports::TaskLaunch;

const KEY_MARK: &str = " task ";

/// The supervisor's name for a task's processes.
pub fn key(service: &str, task: &TaskId) -> String {
    format!("{service}{KEY_MARK}{task}")
}

/// The service and task of a supervisor key, if it is a task's.
pub fn parse_key(key: &str) -> Option<(String, TaskId)> {
    let (service, task) = key.split_once(KEY_MARK)?;
    Some((service.to_string(), TaskId::parse(task).ok()?))
}

/// Where the service's tasks' output goes.
pub fn output_dir(state_dir: &Path, service: &str) -> PathBuf {
    state_dir.join("tasks").join(service)
}

/// The files of one run of a task.
pub fn output_files(state_dir: &Path, service: &str, task: &TaskId, attempt: u32) -> OutputFiles {
    let dir = output_dir(state_dir, service);
    OutputFiles {
        stdout: dir.join(format!("{task}.{attempt}.stdout")),
        stderr: dir.join(format!("{task}.{attempt}.stderr")),
    }
}

/// What the supervisor runs for a task.
pub fn spec(state_dir: &Path, launch: TaskLaunch) -> ProcessSpec {
    let output = output_files(state_dir, &launch.service, &launch.task, launch.attempt);
    if let Some(dir) = output.stdout.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            warn!(service = %launch.service, "cannot create {}: {e}", dir.display());
        }
    }
    if let Err(e) = std::fs::create_dir_all(&launch.cwd) {
        warn!(service = %launch.service, "cannot create {}: {e}", launch.cwd.display());
    }
    let mut env = launch.env;
    if !launch.path_prepend.is_empty() {
        let rest = env
            .get("PATH")
            .cloned()
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        let mut path = launch.path_prepend.join(":");
        if !rest.is_empty() {
            path.push(':');
            path.push_str(&rest);
        }
        env.insert("PATH".to_string(), path);
    }
    ProcessSpec {
        service: key(&launch.service, &launch.task),
        generation: u64::from(launch.attempt),
        argv: launch.argv,
        env,
        unset: Vec::new(),
        cwd: Some(launch.cwd),
        probe: None,
        exit_grace: Some(LEFTOVER_GRACE),
        note: serde_json::Value::Null,
        output: Some(output),
        run_as: launch.run_as,
    }
}

/// Whether a supervisor event is a task's end, which [`translate`] reads files for.
pub fn reads_output(event: &Input) -> bool {
    matches!(event, Input::Exited { service, .. } if parse_key(service).is_some())
}

/// A supervisor event as the core's input: a task's as a task input (reading the ends
/// of its output when it is gone), a service's as it is. Blocking: reads files.
pub fn translate(state_dir: &Path, event: Input) -> Input {
    let (key, generation) = match &event {
        Input::Spawned {
            service,
            generation,
            ..
        }
        | Input::SpawnFailed {
            service,
            generation,
            ..
        }
        | Input::Exited {
            service,
            generation,
            ..
        } => (service.clone(), *generation),
        _ => return event,
    };
    let Some((service, task)) = parse_key(&key) else {
        return event;
    };
    let attempt = u32::try_from(generation).unwrap_or(u32::MAX);
    match event {
        Input::Spawned { pid, .. } => Input::TaskStarted {
            service,
            task,
            attempt,
            pid,
        },
        Input::SpawnFailed { error, .. } => Input::TaskFailedToStart {
            service,
            task,
            attempt,
            error,
        },
        Input::Exited { status, .. } => {
            let files = output_files(state_dir, &service, &task, attempt);
            let stdout_tail = read_tail(&files.stdout);
            let stderr_tail = read_tail(&files.stderr);
            prune(&output_dir(state_dir, &service));
            Input::TaskExited {
                service,
                task,
                attempt,
                status,
                stdout_tail,
                stderr_tail,
            }
        }
        other => other,
    }
}

/// The end of a file, as much as the core may keep of it ("" if it cannot be read): the
/// core cuts it to what the task keeps ([`TaskKind::stdout_tail_bytes`]).
///
/// [`TaskKind::stdout_tail_bytes`]: pop_core::task::TaskKind::stdout_tail_bytes
fn read_tail(path: &Path) -> String {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        // A little more than kept, so the cut falls on a character boundary.
        let from = len.saturating_sub(LISTING_TAIL_BYTES as u64 + 4);
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.take(LISTING_TAIL_BYTES as u64 + 4)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match read() {
        Ok(bytes) => task::tail_of(&bytes, LISTING_TAIL_BYTES),
        Err(e) => {
            warn!(
                "cannot read the output of a task at {}: {e}",
                path.display()
            );
            String::new()
        }
    }
}

/// Deletes the output of all but the newest [`KEEP_TASKS`] tasks in `dir` (ids sort by
/// creation time).
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let files: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let task = name.split('.').next()?.to_string();
            TaskId::parse(&task).ok()?;
            Some((task, e.path()))
        })
        .collect();
    let tasks: BTreeSet<&String> = files.iter().map(|(task, _)| task).collect();
    let keep: BTreeSet<&String> = tasks.iter().rev().take(KEEP_TASKS).copied().collect();
    for (task, path) in &files {
        if !keep.contains(task) {
            if let Err(e) = std::fs::remove_file(path) {
                warn!("cannot delete old task output {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pop_core::event::ExitStatus;
    use pop_core::Timestamp;

    fn id(ms: u64) -> TaskId {
        TaskId::new(Timestamp::from_millis(ms), 7)
    }

    #[test]
    fn keys_round_trip_and_services_are_left_alone() {
        let task = id(1_700_000_000_000);
        assert_eq!(parse_key(&key("web", &task)), Some(("web".into(), task)));
        assert_eq!(parse_key("web"), None);
        let exited = Input::Exited {
            service: "web".into(),
            generation: 3,
            status: ExitStatus::default(),
        };
        assert_eq!(translate(Path::new("/nonexistent"), exited.clone()), exited);
    }

    #[test]
    fn an_exit_brings_the_ends_of_the_output_and_old_output_goes() {
        let state = tempfile::tempdir().expect("a temp dir");
        let dir = output_dir(state.path(), "web");
        std::fs::create_dir_all(&dir).expect("the output dir");
        for n in 0..(KEEP_TASKS as u64 + 2) {
            let files = output_files(state.path(), "web", &id(1_000 + n), 1);
            std::fs::write(&files.stdout, "old").expect("written");
        }
        let task = id(9_000);
        let files = output_files(state.path(), "web", &task, 2);
        let long = format!("{}end\n", "x".repeat(2 * LISTING_TAIL_BYTES));
        std::fs::write(&files.stdout, long).expect("written");
        std::fs::write(&files.stderr, "oops\n").expect("written");
        let exited = Input::Exited {
            service: key("web", &task),
            generation: 2,
            status: ExitStatus {
                code: Some(3),
                signal: None,
            },
        };
        let Input::TaskExited {
            service,
            task: got,
            attempt,
            status,
            stdout_tail,
            stderr_tail,
        } = translate(state.path(), exited)
        else {
            panic!("a task's exit");
        };
        assert_eq!((service.as_str(), got, attempt), ("web", task, 2));
        assert_eq!(status.code, Some(3));
        assert_eq!(stdout_tail.len(), LISTING_TAIL_BYTES);
        assert!(stdout_tail.ends_with("xend\n"));
        assert_eq!(stderr_tail, "oops\n");
        let left = std::fs::read_dir(&dir).expect("listed").count();
        // The newest tasks' files stay: the oldest three tasks' went.
        assert_eq!(left, KEEP_TASKS - 1 + 2);
    }
}
