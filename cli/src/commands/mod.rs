//! The commands that read and write pop's namespace in ZooKeeper.

pub mod plugin;
mod status;
pub mod tasks;

use crate::admin::{Admin, DELETE_PATIENCE};
use crate::output::{self, DumpFormat};
use crate::{context, Cli, Command};
use anyhow::{anyhow, Result};
use pop_core::assignment::parse_assignment;
use pop_core::names::{MachineId, ServiceName};
use pop_core::paths;
use pop_core::plan::{Add, AddRequest, ChangeMachines, Init, MachinesChange, Plan, Remove, Set};
use serde_json::{Map, Value};

pub async fn run(cli: &Cli) -> Result<()> {
    if let Command::Plugin { action } = &cli.command {
        return plugin::run(cli, action).await;
    }
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
            change_machines(&admin, service, ids, MachinesChange::Deploy).await
        }
        Command::Undeploy { service, machines } => {
            let ids = target_machines(cli, machines)?;
            change_machines(&admin, service, ids, MachinesChange::Undeploy).await
        }
        Command::Set {
            service,
            assignments,
            unset,
        } => set(&admin, service, assignments, unset).await,
        Command::Remove { service, force } => remove(&admin, service, *force).await,
        Command::Run(args) => tasks::run(cli, &admin, args).await,
        Command::Tasks { service } => tasks::list(cli, &admin, service).await,
        Command::Dump { format } => dump(&admin, *format).await,
        other => Err(anyhow!("{other:?} is not a ZooKeeper command")),
    }
}

/// Runs a command's plan and prints how it ended.
async fn run_plan(admin: &Admin, plan: &mut dyn Plan) -> Result<()> {
    let outcome = admin.run(plan).await?;
    println!("{outcome}");
    Ok(())
}

async fn init(admin: &Admin, force: bool) -> Result<()> {
    run_plan(admin, &mut Init::new(&admin.hosts, force, DELETE_PATIENCE)).await
}

fn service_name(name: &str) -> Result<ServiceName> {
    Ok(ServiceName::new(name)?)
}

async fn add(
    admin: &Admin,
    type_name: &str,
    name: Option<&str>,
    port: Option<u16>,
    assignments: &[String],
) -> Result<()> {
    let name = service_name(name.unwrap_or(type_name))?;
    let set = assignments
        .iter()
        .map(|text| parse_assignment(text))
        .collect::<Result<_, _>>()?;
    let request = AddRequest {
        service_type: type_name.to_string(),
        port,
        set,
    };
    let mut plan = Add::new(&admin.hosts, &name, request)?;
    run_plan(admin, &mut plan).await
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
    ids: Vec<MachineId>,
    change: MachinesChange,
) -> Result<()> {
    let name = service_name(service)?;
    run_plan(
        admin,
        &mut ChangeMachines::new(&admin.hosts, &name, change, ids),
    )
    .await
}

async fn set(admin: &Admin, service: &str, assignments: &[String], unset: &[String]) -> Result<()> {
    let name = service_name(service)?;
    let parsed: Vec<(String, Value)> = assignments
        .iter()
        .map(|a| parse_assignment(a))
        .collect::<Result<_, _>>()?;
    let mut plan = Set::new(&admin.hosts, &name, parsed, unset.to_vec());
    run_plan(admin, &mut plan).await
}

async fn remove(admin: &Admin, service: &str, force: bool) -> Result<()> {
    let name = service_name(service)?;
    let mut plan = Remove::new(&admin.hosts, &name, force, DELETE_PATIENCE);
    run_plan(admin, &mut plan).await
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
