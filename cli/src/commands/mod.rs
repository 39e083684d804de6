//! The commands that read and write pop's namespace in ZooKeeper.

mod status;

use crate::admin::Admin;
use crate::output::{self, DumpFormat};
use crate::{context, Cli, Command};
use anyhow::{anyhow, bail, Context, Result};
use pop_core::assignment::{edit_settings, parse_assignment, render_settings, EditError};
use pop_core::names::{MachineId, ServiceName};
use pop_core::paths;
use pop_core::settings::{parse_machines, render_machines, ServiceType, Settings};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

pub async fn run(cli: &Cli) -> Result<()> {
    if matches!(cli.command, Command::Init { .. }) {
        Admin::ensure_chroot(&cli.host).await?;
    }
    let admin = Admin::connect(&cli.host).await?;
    match &cli.command {
        Command::Init { force } => init(&admin, *force).await,
        Command::Add {
            service_type,
            name,
            port,
            set,
        } => add(&admin, service_type, name.as_deref(), *port, set).await,
        Command::Status { service } => status::status(cli, &admin, service.as_deref()).await,
        Command::Machines => status::machines(cli, &admin).await,
        Command::Deploy { service, machines } => {
            let ids = target_machines(cli, machines)?;
            change_machines(&admin, service, &ids, true).await
        }
        Command::Undeploy { service, machines } => {
            let ids = target_machines(cli, machines)?;
            change_machines(&admin, service, &ids, false).await
        }
        Command::Set {
            service,
            assignments,
            unset,
        } => set(&admin, service, assignments, unset).await,
        Command::Remove { service, force } => remove(&admin, service, *force).await,
        Command::Dump { format } => dump(&admin, *format).await,
        other => Err(anyhow!("{other:?} is not a ZooKeeper command")),
    }
}

async fn init(admin: &Admin, force: bool) -> Result<()> {
    if admin.exists(paths::POP).await? {
        if !force {
            let services = admin.children(paths::SERVICES).await?.len();
            bail!(
                "pop is already initialised at {} ({services} services); `pop init --force` resets it, deleting every service",
                admin.hosts
            );
        }
        // Reset the configuration: every service goes (agents stop them). What agents
        // publish about themselves (/agents, their ephemerals) is theirs and stays;
        // machines with nothing published are pruned.
        for name in admin.children(paths::SERVICES).await? {
            delete_service(admin, &name).await?;
        }
        for machine in admin.children(paths::MACHINES).await? {
            admin.delete_node(&paths::machine(&machine)).await?;
        }
        admin.delete_node(paths::POP).await?;
    }
    let marker = json!({ "layout": 1 }).to_string().into_bytes();
    for path in paths::NAMESPACE {
        let data = if path == paths::POP {
            marker.clone()
        } else {
            Vec::new()
        };
        admin.create_if_missing(path, &data).await?;
    }
    println!(
        "initialised pop at {}{}",
        admin.hosts,
        if force { " (reset)" } else { "" }
    );
    Ok(())
}

fn service_name(name: &str) -> Result<ServiceName> {
    Ok(ServiceName::new(name)?)
}

async fn require_service(admin: &Admin, name: &str) -> Result<ServiceName> {
    let name = service_name(name)?;
    admin.require_namespace().await?;
    if !admin.exists(&paths::service(name.as_str())).await? {
        bail!("no service named \"{name}\" (see `pop status`)");
    }
    Ok(name)
}

async fn add(
    admin: &Admin,
    type_name: &str,
    name: Option<&str>,
    port: Option<u16>,
    assignments: &[String],
) -> Result<()> {
    let service_type = ServiceType::parse(type_name)?;
    let name = service_name(name.unwrap_or(type_name))?;
    let mut settings = service_type.default_settings(port);
    for text in assignments {
        let (key, value) = parse_assignment(text)?;
        settings.insert(key, value);
    }
    Settings::from_map(&settings).map_err(|e| {
        let hint = if service_type == ServiceType::Command {
            " (e.g. --set command='python3 -m http.server')"
        } else {
            ""
        };
        anyhow!("invalid settings for {name}: {e}{hint}")
    })?;
    admin.require_namespace().await?;
    if admin.exists(&paths::service(name.as_str())).await? {
        bail!("a service named \"{name}\" exists already (`pop remove {name}` first, or pick another --name)");
    }
    let data = render_settings(settings.clone());
    admin
        .create_all(&[
            (paths::service(name.as_str()), Vec::new()),
            (paths::service_settings(name.as_str()), data),
            (paths::service_machines(name.as_str()), b"[]".to_vec()),
            (paths::service_state_dir(name.as_str()), Vec::new()),
        ])
        .await
        .with_context(|| format!("adding {name}"))?;
    println!(
        "added {name} ({}): {}",
        service_type.as_str(),
        Value::Object(settings)
    );
    Ok(())
}

fn target_machines(cli: &Cli, given: &[String]) -> Result<Vec<MachineId>> {
    if given.is_empty() {
        return Ok(vec![context::machine_id(cli)?]);
    }
    given
        .iter()
        .map(|m| MachineId::new(m).map_err(Into::into))
        .collect()
}

async fn change_machines(
    admin: &Admin,
    service: &str,
    ids: &[MachineId],
    deploy: bool,
) -> Result<()> {
    let name = require_service(admin, service).await?;
    let path = paths::service_machines(name.as_str());
    let mut result = BTreeSet::new();
    let changed = admin
        .edit(&path, |data| {
            let mut machines = parse_machines(data).map_err(|e| {
                anyhow!("{path} holds an invalid machines list ({e}); fix it with a ZooKeeper client, pop will not overwrite it")
            })?;
            let before = machines.clone();
            for id in ids {
                if deploy {
                    machines.insert(id.as_str().to_string());
                } else {
                    machines.remove(id.as_str());
                }
            }
            result = machines.clone();
            Ok((machines != before).then(|| render_machines(&machines)))
        })
        .await?;
    let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let verb = if deploy { "deployed" } else { "undeployed" };
    let now = if result.is_empty() {
        "nowhere".to_string()
    } else {
        result.iter().cloned().collect::<Vec<_>>().join(", ")
    };
    if changed {
        println!(
            "{verb} {name} on {}; it now runs on: {now}",
            list.join(", ")
        );
    } else {
        println!("nothing to do: {name} runs on: {now}");
    }
    Ok(())
}

async fn set(admin: &Admin, service: &str, assignments: &[String], unset: &[String]) -> Result<()> {
    let name = require_service(admin, service).await?;
    let parsed: Vec<(String, Value)> = assignments
        .iter()
        .map(|a| parse_assignment(a))
        .collect::<Result<_, _>>()?;
    let path = paths::service_settings(name.as_str());
    let changed = admin
        .edit(&path, |data| {
            edit_settings(data, &parsed, unset).map_err(|e| match e {
                EditError::NotAnObject => anyhow!(
                    "{path} is not a JSON object; fix it with a ZooKeeper client, pop will not overwrite it"
                ),
                EditError::Invalid(e) => anyhow!("invalid settings for {name}: {e}"),
            })
        })
        .await?;
    if changed {
        println!("updated settings of {name}; it restarts wherever it runs");
    } else {
        println!("nothing to do: settings of {name} are already so");
    }
    Ok(())
}

async fn remove(admin: &Admin, service: &str, force: bool) -> Result<()> {
    let name = require_service(admin, service).await?;
    if !force {
        let path = paths::service_machines(name.as_str());
        let deployed = match admin.get(&path).await? {
            None => BTreeSet::new(),
            Some(node) => parse_machines(&node.data).map_err(|e| {
                anyhow!("{path} holds an invalid machines list ({e}), so agents may still run {name}; use `pop remove {name} --force`")
            })?,
        };
        if !deployed.is_empty() {
            let list: Vec<String> = deployed.into_iter().collect();
            bail!(
                "{name} is deployed on {}; `pop undeploy` it first or use `pop remove {name} --force`",
                list.join(", ")
            );
        }
    }
    delete_service(admin, name.as_str()).await?;
    println!("removed {name}");
    Ok(())
}

/// Deletes a service so agents stop it first: its machines list and settings go before
/// anything else, so no agent keeps publishing state nodes while the rest is deleted.
async fn delete_service(admin: &Admin, name: &str) -> Result<()> {
    admin.delete_node(&paths::service_machines(name)).await?;
    admin.delete_node(&paths::service_settings(name)).await?;
    admin.delete_tree(&paths::service(name)).await
}

/// The data of a node as JSON when it is JSON, else as text.
fn node_value(data: &[u8]) -> Value {
    if data.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(data)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(data).into_owned()))
}

async fn dump(admin: &Admin, format: DumpFormat) -> Result<()> {
    admin.require_namespace().await?;
    let mut nodes = Map::new();
    let mut stack: Vec<String> = paths::NAMESPACE
        .iter()
        .rev()
        .map(|p| p.to_string())
        .collect();
    while let Some(path) = stack.pop() {
        if let Some(node) = admin.get(&path).await? {
            let mut entry = Map::new();
            entry.insert("data".into(), node_value(&node.data));
            if node.ephemeral_owner != 0 {
                entry.insert("ephemeral".into(), Value::Bool(true));
            }
            nodes.insert(path.clone(), Value::Object(entry));
        }
        for child in admin.children(&path).await?.into_iter().rev() {
            stack.push(format!("{path}/{child}"));
        }
    }
    let value = Value::Object(nodes);
    match format {
        DumpFormat::Json => output::print_json(&value)?,
        DumpFormat::Yaml => print!("{}", output::yaml(&value)),
    }
    Ok(())
}
