//! `pop status` and `pop machines`: what ZooKeeper says should run, what the agents
//! report is running, and the problems either has seen.

use super::node_value;
use crate::admin::Admin;
use crate::output;
use crate::Cli;
use anyhow::{bail, Result};
use pop_core::access::Marker;
use pop_core::names::ServiceName;
use pop_core::paths;
use pop_core::published::{AgentReport, ServiceReport, StateNode, CRASH_LOOP_FAILURES};
use pop_core::settings::{parse_machines, DataError, Settings};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Agent reports by machine id; a machine is live when its ephemeral agent node exists,
/// whether or not its report can be read.
type Reports = BTreeMap<String, Result<AgentReport, DataError>>;

/// The session that owns each machine's agent node: the one its state and pid nodes
/// must belong to.
type Owners = BTreeMap<String, i64>;

async fn agent_reports(admin: &Admin) -> Result<(Reports, Owners)> {
    let mut reports = BTreeMap::new();
    let mut owners = BTreeMap::new();
    for machine in admin.children(paths::AGENTS).await? {
        if let Some(node) = admin.get(&paths::agent(&machine)).await? {
            owners.insert(machine.clone(), node.ephemeral_owner);
            reports.insert(machine, AgentReport::parse(&node.data));
        }
    }
    Ok((reports, owners))
}

/// A node published in machine `machine`'s name that its agent's session does not own:
/// another registered machine may create it while the machine has none (ZooKeeper's
/// CREATE on the parent covers every child's name), or it is left from an old session.
/// Its data is not trusted.
fn not_vouched_for(path: &str, machine: &str, owner: i64, owners: &Owners) -> Option<String> {
    let agent = owners.get(machine).copied();
    if agent == Some(owner) && owner != 0 {
        return None;
    }
    let whose = match owner {
        0 => "a persistent node, no agent's".to_string(),
        owner => format!("owned by session {owner:#x}"),
    };
    let vouch = match agent {
        Some(agent) => format!(
            "{machine}'s agent holds {} in session {agent:#x}",
            paths::agent(machine)
        ),
        None => format!("{machine} has no live agent"),
    };
    Some(format!(
        "suspect (possibly forged) node {path}: {whose}, while {vouch}; its data is ignored"
    ))
}

fn unreadable_report(machine: &str, error: &DataError) -> String {
    format!(
        "cannot read the agent report {}: {error}",
        paths::agent(machine)
    )
}

/// One service, as `pop status --json` prints it. Fields in name order.
#[derive(Serialize)]
struct ServiceStatus {
    instances: Vec<Instance>,
    machines: BTreeSet<String>,
    name: String,
    problems: Vec<String>,
    /// The settings node as written (also when it is not valid settings).
    settings: Value,
    #[serde(rename = "type")]
    service_type: Option<String>,
}

/// The service on one machine: wanted there, or published from there. Fields in name order.
#[derive(Serialize)]
struct Instance {
    agent_live: bool,
    containment: Option<String>,
    desired: bool,
    last_exit: Option<String>,
    machine: String,
    phase: String,
    pid: Option<u32>,
    problems: Vec<String>,
    restarts: Option<u32>,
    state: Option<StateNode>,
    uptime_seconds: Option<f64>,
}

async fn service_status(
    admin: &Admin,
    name: &str,
    (agents, owners): (&Reports, &Owners),
    now: f64,
) -> Result<ServiceStatus> {
    let mut problems = Vec::new();
    let settings_raw = admin.get(&paths::service_settings(name)).await?;
    let (settings, parsed) = match &settings_raw {
        None => {
            problems.push("settings node is missing".to_string());
            (Value::Null, None)
        }
        Some(node) => {
            let value = node_value(&node.data);
            match Settings::parse(&node.data) {
                Ok(s) => (value, Some(s)),
                Err(e) => {
                    problems.push(format!("invalid settings: {e}"));
                    (value, None)
                }
            }
        }
    };
    let port = parsed.as_ref().and_then(|s| s.port);
    let desired: BTreeSet<String> = match admin.get(&paths::service_machines(name)).await? {
        None => {
            problems.push("machines node is missing".to_string());
            BTreeSet::new()
        }
        Some(node) => parse_machines(&node.data).unwrap_or_else(|e| {
            problems.push(format!("invalid machines list: {e}"));
            BTreeSet::new()
        }),
    };
    let mut states = BTreeMap::new();
    let mut bad_states = BTreeMap::new();
    let mut suspects = BTreeMap::new();
    for machine in admin.children(&paths::service_state_dir(name)).await? {
        let path = paths::service_state(name, &machine);
        if let Some(node) = admin.get(&path).await? {
            let suspect = not_vouched_for(&path, &machine, node.ephemeral_owner, owners);
            let state = match StateNode::parse(&node.data) {
                Ok(state) => Some(state),
                Err(e) => {
                    bad_states.insert(machine.clone(), format!("invalid state node: {e}"));
                    None
                }
            };
            // What a suspect node says is not shown as the machine's.
            let state = match suspect {
                Some(suspect) => {
                    suspects.insert(machine.clone(), suspect);
                    None
                }
                None => state,
            };
            states.insert(machine, state);
        }
    }
    let machines: BTreeSet<String> = desired.iter().chain(states.keys()).cloned().collect();
    let mut instances = Vec::new();
    for machine in machines {
        let agent = agents.get(&machine);
        let live = agent.is_some();
        let readable = agent.and_then(|a| a.as_ref().ok());
        let report = readable.and_then(|a| a.services.get(name));
        let state = states.get(&machine).cloned().flatten();
        let mut issues = Vec::new();
        let is_desired = desired.contains(&machine);
        if !live && is_desired {
            issues.push("no live agent on this machine".to_string());
        }
        if let Some(Err(e)) = agent {
            issues.push(unreadable_report(&machine, e));
        }
        if let Some(problem) = suspects.get(&machine) {
            issues.push(problem.clone());
        }
        if let Some(problem) = bad_states.get(&machine) {
            issues.push(problem.clone());
        }
        // Only the machine may create its pid nodes; still, trust none its agent's
        // session does not own.
        let pid_path = paths::machine_service(&machine, name);
        if let Some(node) = admin.get(&pid_path).await? {
            issues.extend(not_vouched_for(
                &pid_path,
                &machine,
                node.ephemeral_owner,
                owners,
            ));
        }
        if let Some(agent) = readable {
            let prefix = format!("{}/", paths::service(name));
            // Its type's node, when the agent cannot use what it holds.
            let type_node = parsed
                .as_ref()
                .map(|s| paths::plugin(s.service_type.as_str()));
            for (path, problem) in &agent.problems {
                if path.starts_with(&prefix)
                    || path == paths::SERVICES
                    || Some(path) == type_node.as_ref()
                {
                    issues.push(format!("{path}: {problem}"));
                }
            }
        }
        if let Some(report) = report {
            issues.extend(service_issues(report, port, now));
        }
        // The report lists only services not running as they should; one running as it
        // should is known by its state node.
        let phase = match (report, readable) {
            (Some(report), _) => report.phase.to_string(),
            (None, Some(_)) if state.is_some() => "running".to_string(),
            (None, Some(agent)) if is_desired && agent.services_omitted > 0 => {
                issues.push(format!(
                    "not among the services the agent reports (it leaves out {})",
                    agent.services_omitted
                ));
                "unknown".to_string()
            }
            (None, Some(_)) if is_desired => "pending".to_string(),
            _ => "unknown".to_string(),
        };
        let pid = state.as_ref().map(|s| s.pid).or(report.and_then(|r| r.pid));
        let since = state
            .as_ref()
            .map(|s| s.started_at)
            .or(report.and_then(|r| r.since));
        instances.push(Instance {
            agent_live: live,
            containment: readable.map(|a| a.containment.clone()),
            desired: is_desired,
            last_exit: report
                .and_then(|r| r.last_exit.clone())
                .or_else(|| state.as_ref().and_then(|s| s.last_exit.clone())),
            machine,
            phase,
            pid,
            problems: issues,
            restarts: report
                .map(|r| r.restarts)
                .or(state.as_ref().map(|s| s.restarts)),
            state,
            uptime_seconds: since.map(|s| (now - s).max(0.0).round()),
        });
    }
    Ok(ServiceStatus {
        instances,
        machines: desired,
        name: name.to_string(),
        problems,
        settings,
        service_type: parsed.map(|s| s.service_type.to_string()),
    })
}

/// What the agent says is wrong with a service it runs (`port`: its port setting).
fn service_issues(report: &ServiceReport, port: Option<u16>, now: f64) -> Vec<String> {
    let mut issues = Vec::new();
    if let Some(problem) = &report.problem {
        issues.push(problem.clone());
    }
    if let Some(secs) = report.not_ready_within {
        let what = match port {
            Some(0) => format!("no listening port found within {secs}s"),
            Some(port) => format!("port {port} accepted no connection within {secs}s"),
            None => format!("not ready within {secs}s"),
        };
        issues.push(format!(
            "failed readiness: {what} (ready_timeout); restarted with backoff"
        ));
    }
    if report.quick_failures >= CRASH_LOOP_FAILURES {
        let wait = report
            .next_start_at
            .map(|t| format!(", next start in {}", output::duration(t - now)))
            .unwrap_or_default();
        issues.push(format!(
            "crash loop: {} quick failures{wait}",
            report.quick_failures
        ));
    }
    issues
}

pub async fn status(cli: &Cli, admin: &Admin, only: Option<&str>) -> Result<()> {
    admin.require_namespace().await?;
    // Said only of a secured namespace, so an unsecured one's output is as before.
    let secured = match admin.marker().await? {
        Some(Marker::Secured { admin }) => Some(admin),
        _ => None,
    };
    let names = match only {
        Some(name) => {
            let name = ServiceName::new(name)?;
            if !admin.exists(&paths::service(name.as_str())).await? {
                bail!("no service named \"{name}\" (see `pop status`)");
            }
            vec![name.to_string()]
        }
        None => admin.children(paths::SERVICES).await?,
    };
    let (agents, owners) = agent_reports(admin).await?;
    let now = now_secs();
    let mut services = Vec::new();
    for name in &names {
        services.push(service_status(admin, name, (&agents, &owners), now).await?);
    }
    if cli.json {
        let mut out = json!({ "services": services });
        if let Some(admin) = &secured {
            out["secured"] = json!({ "admin": admin });
        }
        return output::print_json(&out);
    }
    if let Some(admin) = &secured {
        println!(
            "namespace secured: only {admin} may change it; machines have their own credentials"
        );
    }
    if services.is_empty() {
        println!("no services yet: add one with `pop add <type>`");
        return Ok(());
    }
    print!("{}", render(&services, only.is_some()));
    Ok(())
}

fn cell<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn render(services: &[ServiceStatus], detailed: bool) -> String {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for s in services {
        let name = &s.name;
        for p in &s.problems {
            notes.push(format!("{name}: {p}"));
        }
        if s.instances.is_empty() {
            rows.push(vec![
                name.clone(),
                cell(s.service_type.as_deref()),
                "-".into(),
                "-".into(),
                "not deployed".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for i in &s.instances {
            let address = match &i.state {
                Some(StateNode {
                    host,
                    port: Some(port),
                    ..
                }) => format!("{host}:{port}"),
                Some(StateNode { host, .. }) => host.clone(),
                None => "-".into(),
            };
            let desired = if i.desired { "yes" } else { "no" };
            let agent = if i.agent_live { "live" } else { "down" };
            rows.push(vec![
                name.clone(),
                cell(s.service_type.as_deref()),
                i.machine.clone(),
                format!("{desired}/{agent}"),
                i.phase.clone(),
                cell(i.pid),
                i.uptime_seconds
                    .map(output::duration)
                    .unwrap_or_else(|| "-".into()),
                cell(i.restarts),
                address,
            ]);
            for p in &i.problems {
                notes.push(format!("{name} on {}: {p}", i.machine));
            }
        }
    }
    let mut out = output::table(
        &[
            "SERVICE",
            "TYPE",
            "MACHINE",
            "WANTED/AGENT",
            "PHASE",
            "PID",
            "UPTIME",
            "RESTARTS",
            "ADDRESS",
        ],
        &rows,
    );
    if detailed {
        for s in services {
            for i in &s.instances {
                let (name, machine) = (&s.name, &i.machine);
                if let Some(kind) = &i.containment {
                    out.push_str(&format!("\n{name} on {machine} is contained by {kind}"));
                }
                if let Some(state) = &i.state {
                    out.push_str(&format!(
                        "\nstate of {name} on {machine}: {}",
                        String::from_utf8_lossy(&state.render())
                    ));
                }
            }
            out.push_str(&format!(
                "\nsettings of {}:\n{}",
                s.name,
                serde_json::to_string_pretty(&s.settings).unwrap_or_default()
            ));
            out.push('\n');
        }
    }
    push_notes(&mut out, &notes);
    out
}

fn push_notes(out: &mut String, notes: &[String]) {
    if !notes.is_empty() {
        out.push_str("\nproblems:\n");
        for n in notes {
            out.push_str(&format!("  {n}\n"));
        }
    }
}

/// One machine, as `pop machines --json` prints it. Fields in name order.
#[derive(Serialize)]
struct MachineStatus {
    agent_live: bool,
    agent_pid: Option<u32>,
    agent_uptime_seconds: Option<f64>,
    containment: Option<String>,
    hostname: Option<String>,
    machine: String,
    /// Only when the agent's report cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
    running: Vec<String>,
}

pub async fn machines(cli: &Cli, admin: &Admin) -> Result<()> {
    admin.require_namespace().await?;
    let (agents, _) = agent_reports(admin).await?;
    let known: BTreeSet<String> = admin
        .children(paths::MACHINES)
        .await?
        .into_iter()
        .chain(agents.keys().cloned())
        .collect();
    let now = now_secs();
    let mut list = Vec::new();
    for machine in known {
        let running = admin.children(&paths::machine(&machine)).await?;
        let agent = agents.get(&machine);
        let report = agent.and_then(|a| a.as_ref().ok());
        list.push(MachineStatus {
            agent_live: agent.is_some(),
            agent_pid: report.map(|a| a.pid),
            agent_uptime_seconds: report
                .and_then(|a| a.started_at)
                .map(|t| (now - t).max(0.0).round()),
            containment: report.map(|a| a.containment.clone()),
            hostname: report.map(|a| a.hostname.clone()),
            problem: match agent {
                Some(Err(e)) => Some(unreadable_report(&machine, e)),
                _ => None,
            },
            machine,
            running,
        });
    }
    if cli.json {
        return output::print_json(&json!({ "machines": list }));
    }
    if list.is_empty() {
        println!("no machines yet: start an agent with `pop start`");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            vec![
                m.machine.clone(),
                if m.agent_live { "live" } else { "down" }.into(),
                cell(m.hostname.as_ref()),
                cell(m.agent_pid),
                m.agent_uptime_seconds
                    .map(output::duration)
                    .unwrap_or_else(|| "-".into()),
                cell(m.containment.as_ref()),
                Some(m.running.join(","))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = output::table(
        &[
            "MACHINE",
            "AGENT",
            "HOSTNAME",
            "PID",
            "UPTIME",
            "CONTAINMENT",
            "RUNNING",
        ],
        &rows,
    );
    let notes: Vec<String> = list.iter().filter_map(|m| m.problem.clone()).collect();
    push_notes(&mut out, &notes);
    print!("{out}");
    Ok(())
}
