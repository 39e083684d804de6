//! `pop status` and `pop machines`: what ZooKeeper says should run, what the agents
//! report is running, and the problems either has seen.

use super::node_value;
use crate::admin::Admin;
use crate::output;
use crate::Cli;
use anyhow::{bail, Result};
use pop_core::names::ServiceName;
use pop_core::paths;
use pop_core::published::StateNode;
use pop_core::settings::{parse_machines, Settings};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Agent reports by machine id; a machine is live when its ephemeral agent node exists.
async fn agent_reports(admin: &Admin) -> Result<BTreeMap<String, Value>> {
    let mut reports = BTreeMap::new();
    for machine in admin.children(paths::AGENTS).await? {
        if let Some(node) = admin.get(&paths::agent(&machine)).await? {
            reports.insert(machine, node_value(&node.data));
        }
    }
    Ok(reports)
}

async fn service_json(
    admin: &Admin,
    name: &str,
    agents: &BTreeMap<String, Value>,
    now: f64,
) -> Result<Value> {
    let mut problems = Vec::new();
    let settings_raw = admin.get(&paths::service_settings(name)).await?;
    let (settings, service_type) = match &settings_raw {
        None => {
            problems.push("settings node is missing".to_string());
            (Value::Null, Value::Null)
        }
        Some(node) => {
            let value = node_value(&node.data);
            match Settings::parse(&node.data) {
                Ok(s) => (value, Value::from(s.service_type.as_str())),
                Err(e) => {
                    problems.push(format!("invalid settings: {e}"));
                    (value, Value::Null)
                }
            }
        }
    };
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
    for machine in admin.children(&paths::service_state_dir(name)).await? {
        if let Some(node) = admin.get(&paths::service_state(name, &machine)).await? {
            let state = match StateNode::parse(&node.data) {
                Ok(state) => serde_json::to_value(state)?,
                Err(e) => {
                    bad_states.insert(machine.clone(), format!("invalid state node: {e}"));
                    Value::Null
                }
            };
            states.insert(machine, state);
        }
    }
    let machines: BTreeSet<String> = desired.iter().chain(states.keys()).cloned().collect();
    let mut instances = Vec::new();
    for machine in machines {
        let agent = agents.get(&machine);
        let report = agent
            .map(|a| a["services"][name].clone())
            .unwrap_or(Value::Null);
        let state = states.get(&machine).cloned().unwrap_or(Value::Null);
        let mut issues = Vec::new();
        let is_desired = desired.contains(&machine);
        if agent.is_none() && is_desired {
            issues.push("no live agent on this machine".to_string());
        }
        if let Some(problem) = bad_states.get(&machine) {
            issues.push(problem.clone());
        }
        if let Some(problems) = agent.and_then(|a| a["problems"].as_object()) {
            let prefix = format!("{}/", paths::service(name));
            for (path, problem) in problems {
                if path.starts_with(&prefix) || path == paths::SERVICES {
                    issues.push(format!("{path}: {}", problem.as_str().unwrap_or("?")));
                }
            }
        }
        if report["quick_failures"].as_u64().unwrap_or(0) >= 3 {
            let wait = report["next_start_at"]
                .as_f64()
                .map(|t| format!(", next start in {}", output::duration(t - now)))
                .unwrap_or_default();
            issues.push(format!(
                "crash loop: {} quick failures{wait}",
                report["quick_failures"]
            ));
        }
        let phase = match (&report["phase"], agent) {
            (Value::String(p), _) => p.clone(),
            (_, Some(_)) if is_desired => "pending".to_string(),
            _ => "unknown".to_string(),
        };
        let pid = state["pid"].as_u64().or_else(|| report["pid"].as_u64());
        let since = state["started_at"]
            .as_f64()
            .or_else(|| report["since"].as_f64());
        instances.push(json!({
            "machine": machine,
            "desired": is_desired,
            "agent_live": agent.is_some(),
            "phase": phase,
            "pid": pid,
            "uptime_seconds": since.map(|s| (now - s).max(0.0).round()),
            "restarts": report["restarts"].as_u64().or_else(|| state["restarts"].as_u64()),
            "last_exit": report["last_exit"],
            "containment": agent.map(|a| a["containment"].clone()),
            "state": state,
            "problems": issues,
        }));
    }
    Ok(json!({
        "name": name,
        "type": service_type,
        "settings": settings,
        "machines": desired,
        "problems": problems,
        "instances": instances,
    }))
}

pub async fn status(cli: &Cli, admin: &Admin, only: Option<&str>) -> Result<()> {
    admin.require_namespace().await?;
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
    let agents = agent_reports(admin).await?;
    let now = now_secs();
    let mut services = Vec::new();
    for name in &names {
        services.push(service_json(admin, name, &agents, now).await?);
    }
    if cli.json {
        return output::print_json(&json!({ "services": services }));
    }
    if services.is_empty() {
        println!("no services yet: add one with `pop add <type>`");
        return Ok(());
    }
    print!("{}", render(&services, only.is_some()));
    Ok(())
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn render(services: &[Value], detailed: bool) -> String {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for s in services {
        let name = cell(&s["name"]);
        for p in s["problems"].as_array().into_iter().flatten() {
            notes.push(format!("{name}: {}", cell(p)));
        }
        let instances = s["instances"].as_array().cloned().unwrap_or_default();
        if instances.is_empty() {
            rows.push(vec![
                name.clone(),
                cell(&s["type"]),
                "-".into(),
                "-".into(),
                "not deployed".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for i in instances {
            let address = match (&i["state"]["host"], &i["state"]["port"]) {
                (Value::String(h), Value::Number(p)) => format!("{h}:{p}"),
                (Value::String(h), _) => h.clone(),
                _ => "-".into(),
            };
            let desired = if i["desired"] == Value::Bool(true) {
                "yes"
            } else {
                "no"
            };
            let agent = if i["agent_live"] == Value::Bool(true) {
                "live"
            } else {
                "down"
            };
            rows.push(vec![
                name.clone(),
                cell(&s["type"]),
                cell(&i["machine"]),
                format!("{desired}/{agent}"),
                cell(&i["phase"]),
                cell(&i["pid"]),
                i["uptime_seconds"]
                    .as_f64()
                    .map(output::duration)
                    .unwrap_or_else(|| "-".into()),
                cell(&i["restarts"]),
                address,
            ]);
            for p in i["problems"].as_array().into_iter().flatten() {
                notes.push(format!("{name} on {}: {}", cell(&i["machine"]), cell(p)));
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
            for i in s["instances"].as_array().into_iter().flatten() {
                let (name, machine) = (cell(&s["name"]), cell(&i["machine"]));
                if let Value::String(kind) = &i["containment"] {
                    out.push_str(&format!("\n{name} on {machine} is contained by {kind}"));
                }
                if !i["state"].is_null() {
                    out.push_str(&format!("\nstate of {name} on {machine}: {}", i["state"]));
                }
            }
            out.push_str(&format!(
                "\nsettings of {}:\n{}",
                cell(&s["name"]),
                serde_json::to_string_pretty(&s["settings"]).unwrap_or_default()
            ));
            out.push('\n');
        }
    }
    if !notes.is_empty() {
        out.push_str("\nproblems:\n");
        for n in notes {
            out.push_str(&format!("  {n}\n"));
        }
    }
    out
}

pub async fn machines(cli: &Cli, admin: &Admin) -> Result<()> {
    admin.require_namespace().await?;
    let agents = agent_reports(admin).await?;
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
        list.push(json!({
            "machine": machine,
            "agent_live": agent.is_some(),
            "hostname": agent.map(|a| a["hostname"].clone()),
            "agent_pid": agent.map(|a| a["pid"].clone()),
            "containment": agent.map(|a| a["containment"].clone()),
            "agent_uptime_seconds": agent.and_then(|a| a["started_at"].as_f64()).map(|t| (now - t).max(0.0).round()),
            "running": running,
        }));
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
                cell(&m["machine"]),
                if m["agent_live"] == Value::Bool(true) {
                    "live"
                } else {
                    "down"
                }
                .into(),
                cell(&m["hostname"]),
                cell(&m["agent_pid"]),
                m["agent_uptime_seconds"]
                    .as_f64()
                    .map(output::duration)
                    .unwrap_or_else(|| "-".into()),
                cell(&m["containment"]),
                m["running"]
                    .as_array()
                    .map(|r| r.iter().map(cell).collect::<Vec<_>>().join(","))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "MACHINE",
                "AGENT",
                "HOSTNAME",
                "PID",
                "UPTIME",
                "CONTAINMENT",
                "RUNNING"
            ],
            &rows
        )
    );
    Ok(())
}
