//! `pop run <service> <task> [args...]` and `pop tasks <service>`: coordinated tasks.
//! `pop run` writes the task (a plan, `pop_core::plan::Run`), then follows each target
//! machine's result until all are final, and prints them. The task is in ZooKeeper: the
//! agents carry it out whether or not anyone waits, so Ctrl-C stops only the waiting.

mod packages;
mod progress;

use crate::admin::Admin;
use crate::output;
use crate::Cli;
use anyhow::{anyhow, bail, Result};
use pop_core::names::{MachineId, ServiceName};
use pop_core::packages::Distribution;
use pop_core::paths;
use pop_core::plan::{Outcome, Run, RunRequest};
use pop_core::task::{TaskId, TaskKind, TaskRequest, TaskResult, TaskState};
use pop_core::zk::{ZkError, ZkOp, ZkReply};
use pop_io::clock::SystemClock;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long after its expiry a result nobody took up is given up on (a live agent
/// writes `expired` by then), and how long after its timeout a running one is.
const GRACE: Duration = Duration::from_secs(15);

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    pub service: String,
    /// A task of the service's type (`pop plugin show <type>` lists them).
    pub task: String,
    /// The task's arguments (after `--` if one starts with `-`).
    pub args: Vec<String>,
    /// Run it only on this machine (repeat for more; a rolling task goes through them in
    /// the order given). Default: every machine the service is deployed on.
    #[arg(long = "machine", value_name = "ID")]
    pub machines: Vec<String>,
    /// One machine at a time, each once the one before it succeeded; stop at the first
    /// that does not.
    #[arg(long)]
    pub rolling: bool,
    /// Kill the task on a machine that runs it longer, e.g. 90s, 10m (default: the
    /// task's own, else 10m).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub timeout: Option<Duration>,
    /// A machine that has not started the task this long after it was issued does not
    /// (default 1h).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub expire: Option<Duration>,
    /// Return once the task is written; `pop tasks <service>` shows how it goes.
    #[arg(long)]
    pub detach: bool,
}

/// `user@host`, for the request.
fn author() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| nix::unistd::getuid().to_string());
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into());
    format!("{user}@{host}")
}

pub async fn run(cli: &Cli, admin: &Admin, args: &RunArgs) -> Result<()> {
    let name = ServiceName::new(&args.service)?;
    let machines = args
        .machines
        .iter()
        .map(|m| MachineId::new(m).map_err(|e| anyhow!("--machine: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let request = RunRequest {
        task: args.task.clone(),
        args: args.args.clone(),
        machines,
        rolling: args.rolling,
        timeout: args.timeout,
        expire: args.expire,
        author: author(),
    };
    let clock = SystemClock::new();
    let nonce = (std::process::id() as u16) ^ (clock.now().as_millis() as u16).rotate_left(7);
    let mut plan = Run::new(&admin.hosts, &name, request, clock.now(), nonce)?
        .with_access(admin.access().await?);
    let id = plan.id().clone();
    let outcome = admin.run(&mut plan).await?;
    let Outcome::TaskIssued {
        machines,
        prune_error,
        ..
    } = &outcome
    else {
        bail!("unexpected outcome: {outcome}");
    };
    if let Some(error) = prune_error {
        tracing::warn!("old tasks of {name} not deleted: {error}");
    }
    if args.detach {
        if cli.json {
            return output::print_json(&serde_json::json!({
                "service": name.as_str(),
                "task": args.task,
                "id": id.as_str(),
                "machines": machines,
            }));
        }
        println!("{outcome}");
        return Ok(());
    }
    if !cli.json {
        eprintln!("{outcome}");
    }
    let request = read_request(admin, name.as_str(), &id).await?;
    let results = follow(admin, name.as_str(), &id, &request, !cli.json).await;
    report(cli, name.as_str(), &id, &request, &results)
}

async fn read_request(admin: &Admin, service: &str, id: &TaskId) -> Result<TaskRequest> {
    let path = paths::task(service, id.as_str());
    let node = admin
        .get(&path)
        .await?
        .ok_or_else(|| anyhow!("{path} is gone (the task was deleted)"))?;
    Ok(TaskRequest::parse(&node.data)?)
}

/// One machine's result as last read.
#[derive(Debug, Clone)]
pub(crate) enum Seen {
    Unread,
    Result(TaskResult),
    /// The result node is gone (the task was deleted) or unreadable.
    Lost(String),
}

impl Seen {
    fn is_final(&self) -> bool {
        match self {
            Seen::Unread => false,
            Seen::Result(r) => r.state.is_final(),
            Seen::Lost(_) => true,
        }
    }
}

/// Follows every target's result (a watch each) until all are final or can no longer
/// be expected to change; shows progress on stderr when `show`.
async fn follow(
    admin: &Admin,
    service: &str,
    id: &TaskId,
    request: &TaskRequest,
    show: bool,
) -> BTreeMap<String, (Seen, bool)> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    for machine in &request.machines {
        let path = paths::task_result(service, id.as_str(), machine.as_str());
        let (client, tx, machine) = (admin.client.clone(), tx.clone(), machine.to_string());
        tokio::spawn(watch_result(client, path, machine, tx));
    }
    drop(tx);
    let order: Vec<String> = request.machines.iter().map(|m| m.to_string()).collect();
    let mut seen: BTreeMap<String, Seen> =
        order.iter().map(|m| (m.clone(), Seen::Unread)).collect();
    let mut progress = progress::Progress::new(order.clone(), show);
    let clock = SystemClock::new();
    loop {
        let now = clock.now();
        progress.show(&seen, now);
        let all_final = seen.values().all(Seen::is_final);
        let stale: Vec<&String> = seen
            .iter()
            .filter(|(_, s)| given_up(s, request, now))
            .map(|(m, _)| m)
            .collect();
        if all_final
            || seen
                .values()
                .all(|s| s.is_final() || given_up(s, request, now))
        {
            let gave_up = stale.iter().map(|m| (*m).clone()).collect::<Vec<_>>();
            progress.finish();
            return seen
                .into_iter()
                .map(|(m, s)| {
                    let stale = gave_up.contains(&m);
                    (m, (s, stale))
                })
                .collect();
        }
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some((machine, state))) => {
                seen.insert(machine, state);
            }
            // Every watcher is done: only the clock can change anything now.
            Ok(None) => tokio::time::sleep(Duration::from_secs(1)).await,
            // The clock moves on (the live lines, and giving up on a silent agent).
            Err(_) => {}
        }
    }
}

/// A result that can no longer be expected to change: nobody took it up by its expiry,
/// or it ran well past its timeout (its agent is gone).
fn given_up(seen: &Seen, request: &TaskRequest, now: pop_core::Timestamp) -> bool {
    let result = match seen {
        Seen::Result(result) => result,
        Seen::Unread => return now >= request.expires() + GRACE,
        Seen::Lost(_) => return false,
    };
    match result.state {
        TaskState::Pending | TaskState::Waiting => now >= request.expires() + GRACE,
        TaskState::Running => {
            let started = pop_core::task::timestamp(result.started_at.unwrap_or_default());
            now >= started + request.timeout() + GRACE
        }
        _ => false,
    }
}

/// Reads one result again each time it changes, until it is final.
async fn watch_result(
    client: pop_io::zk::Client,
    path: String,
    machine: String,
    tx: mpsc::UnboundedSender<(String, Seen)>,
) {
    let op = ZkOp::GetData {
        path: path.clone(),
        watch: true,
    };
    loop {
        let (reply, watcher) = pop_io::zk::execute(&client, &op, Duration::from_secs(10)).await;
        let seen = match reply {
            ZkReply::Data { data, .. } => match TaskResult::parse(&data) {
                Ok(result) => Seen::Result(result),
                Err(e) => Seen::Lost(format!("{path}: {e}")),
            },
            ZkReply::Error(ZkError::NoNode) => Seen::Lost(format!("{path} is gone")),
            _ => {
                // The connection: try again shortly.
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let done = seen.is_final();
        if tx.send((machine.clone(), seen)).is_err() || done {
            return;
        }
        match watcher {
            Some(w) => {
                pop_io::zk::watch_event(w).await;
            }
            None => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// One machine's result as `pop run --json` and `pop tasks --json` print it.
#[derive(Serialize)]
struct MachineResult {
    machine: String,
    #[serde(flatten)]
    result: Option<TaskResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
    /// `pop run` stopped waiting for it: its agent did not answer in time.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    no_answer: bool,
    /// `packages`: what its listing says is installed there.
    #[serde(skip_serializing_if = "Option::is_none")]
    distributions: Option<Vec<Distribution>>,
}

fn machine_result(machine: &str, seen: &Seen, no_answer: bool) -> MachineResult {
    let (result, problem) = match seen {
        Seen::Unread => (None, Some("not read".to_string())),
        Seen::Result(r) => (Some(r.clone()), None),
        Seen::Lost(why) => (None, Some(why.clone())),
    };
    MachineResult {
        machine: machine.to_string(),
        result,
        problem,
        no_answer,
        distributions: None,
    }
}

fn report(
    cli: &Cli,
    service: &str,
    id: &TaskId,
    request: &TaskRequest,
    results: &BTreeMap<String, (Seen, bool)>,
) -> Result<()> {
    let ordered: Vec<(&str, &Seen, bool)> = request
        .machines
        .iter()
        .filter_map(|m| {
            let (seen, stale) = results.get(m.as_str())?;
            Some((m.as_str(), seen, *stale))
        })
        .collect();
    let listing = request.kind == TaskKind::Packages;
    if cli.json {
        let machines: Vec<MachineResult> = ordered
            .iter()
            .map(|(m, s, stale)| MachineResult {
                distributions: packages::listing(s)
                    .filter(|_| listing)
                    .map(|l| l.distributions),
                ..machine_result(m, s, *stale)
            })
            .collect();
        output::print_json(&serde_json::json!({
            "service": service,
            "task": request.task,
            "args": request.args,
            "id": id.as_str(),
            "rolling": request.rolling,
            "machines": machines,
        }))?;
    } else {
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut listings = Vec::new();
        for (m, seen, stale) in &ordered {
            match packages::listing(seen).filter(|_| listing) {
                Some(found) => listings.push((*m, found)),
                None => rows.push(result_row(m, seen, *stale)),
            }
        }
        if listing && !listings.is_empty() {
            print!("{}", packages::table(&listings));
        }
        // For `packages`, only the machines that did not list.
        if !rows.is_empty() {
            print!(
                "{}",
                output::table(&["MACHINE", "STATE", "EXIT", "DURATION", "OUTPUT"], &rows)
            );
        }
    }
    let bad: Vec<String> = ordered
        .iter()
        .filter_map(|(m, seen, stale)| match seen {
            Seen::Result(r) if r.state == TaskState::Succeeded => None,
            Seen::Result(r) if *stale => Some(format!("{m} ({}, no answer)", r.state)),
            Seen::Result(r) => Some(format!("{m} ({})", r.state)),
            Seen::Lost(_) | Seen::Unread => Some(format!("{m} (unknown)")),
        })
        .collect();
    if !bad.is_empty() {
        bail!(
            "task {} of {service} did not succeed on {}",
            request.task,
            bad.join(", ")
        );
    }
    Ok(())
}

fn result_row(machine: &str, seen: &Seen, stale: bool) -> Vec<String> {
    match seen {
        Seen::Result(r) => {
            let state = if stale {
                format!("{} (no answer)", r.state)
            } else {
                r.state.to_string()
            };
            let exit = match (r.exit_code, r.signal) {
                (Some(code), _) => code.to_string(),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) => "-".into(),
            };
            let duration = r
                .duration()
                .map_or("-".to_string(), |d| output::duration(d.as_secs_f64()));
            vec![
                machine.to_string(),
                state,
                exit,
                duration,
                r.summary_line().to_string(),
            ]
        }
        Seen::Lost(why) => vec![
            machine.to_string(),
            "unknown".into(),
            "-".into(),
            "-".into(),
            why.clone(),
        ],
        Seen::Unread => vec![
            machine.to_string(),
            "unknown".into(),
            "-".into(),
            "-".into(),
            String::new(),
        ],
    }
}

/// A task and its results, as `pop tasks --json` prints it.
#[derive(Serialize)]
struct TaskListing {
    id: String,
    #[serde(flatten)]
    request: TaskRequest,
    results: Vec<MachineResult>,
}

pub async fn list(cli: &Cli, admin: &Admin, service: &str) -> Result<()> {
    let name = ServiceName::new(service)?;
    admin.require_namespace().await?;
    if !admin.exists(&paths::service(name.as_str())).await? {
        bail!("no service named \"{name}\" (see `pop status`)");
    }
    let mut ids: Vec<TaskId> = admin
        .children(&paths::service_tasks(name.as_str()))
        .await?
        .iter()
        .filter_map(|n| TaskId::parse(n).ok())
        .collect();
    ids.sort();
    ids.reverse();
    let mut listings = Vec::new();
    for id in ids {
        let Some(node) = admin.get(&paths::task(name.as_str(), id.as_str())).await? else {
            continue; // pruned meanwhile
        };
        let request = match TaskRequest::parse(&node.data) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!("{}: {e}", paths::task(name.as_str(), id.as_str()));
                continue;
            }
        };
        let mut results = Vec::new();
        for machine in &request.machines {
            let path = paths::task_result(name.as_str(), id.as_str(), machine.as_str());
            let seen = match admin.get(&path).await? {
                Some(node) => match TaskResult::parse(&node.data) {
                    Ok(r) => Seen::Result(r),
                    Err(e) => Seen::Lost(e.to_string()),
                },
                None => Seen::Lost("no result".into()),
            };
            results.push(machine_result(machine.as_str(), &seen, false));
        }
        listings.push(TaskListing {
            id: id.to_string(),
            request,
            results,
        });
    }
    if cli.json {
        return output::print_json(&listings);
    }
    if listings.is_empty() {
        println!("no tasks for {name}");
        return Ok(());
    }
    let now = SystemClock::new().now();
    let rows: Vec<Vec<String>> = listings
        .iter()
        .map(|l| {
            let age = now.saturating_since(l.request.created()).as_secs_f64();
            let mut task = l.request.command_line();
            if l.request.rolling {
                task.push_str(" (rolling)");
            }
            let results: Vec<String> = l
                .results
                .iter()
                .map(|r| {
                    let state = r
                        .result
                        .as_ref()
                        .map_or("unknown".to_string(), |r| r.state.to_string());
                    format!("{} {state}", r.machine)
                })
                .collect();
            vec![
                l.id.clone(),
                task,
                format!("{} ago", output::duration(age)),
                l.request.author.clone(),
                results.join(", "),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["ID", "TASK", "CREATED", "BY", "RESULTS"], &rows)
    );
    Ok(())
}
