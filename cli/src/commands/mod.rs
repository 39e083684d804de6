//! The commands that read and write pop's namespace in ZooKeeper.

pub mod plugin;
mod status;
pub mod tasks;

use crate::admin::{Admin, DELETE_PATIENCE};
use crate::output::{self, DumpFormat};
use crate::{auth, context, Cli, Command};
use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use pop_core::access::{self, Access, Marker};
use pop_core::assignment::parse_assignment;
use pop_core::names::{MachineId, ServiceName};
use pop_core::paths;
use pop_core::plan::{
    Add, AddRequest, ChangeMachines, Init, MachineRegistration, MachinesChange, Plan, PlanError,
    Remove, Set, SettingsAcl,
};
use pop_core::zk::redacted_digest;
use pop_io::credential::Credential;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

pub async fn run(cli: &Cli) -> Result<()> {
    if let Command::Plugin { action } = &cli.command {
        return plugin::run(cli, action).await;
    }
    if let Command::Init {
        force,
        admin_identity,
    } = &cli.command
    {
        Admin::ensure_chroot(cli).await?;
        return init(cli, *force, admin_identity.as_ref()).await;
    }
    let admin = Admin::for_cli(cli).await?;
    match &cli.command {
        Command::Machine { action } => machine(cli, &admin, action).await,
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
    let outcome = admin.run_plan(plan).await?;
    println!("{outcome}");
    Ok(())
}

/// `pop init [--admin-identity U:P]`: authenticated as the new admin too, so it may set
/// the ACLs it gives the nodes.
async fn init(cli: &Cli, force: bool, identity: Option<&auth::Secret>) -> Result<()> {
    let identity = identity.map(auth::admin_identity).transpose()?;
    let credential = match (&identity, auth::operator(cli)?) {
        (Some(identity), _) => Some(identity.clone()),
        (None, given) => given,
    };
    let admin = Admin::connect(crate::context::zk_config(cli)?, credential).await?;
    let mut plan = Init::new(&admin.hosts, force, DELETE_PATIENCE);
    if let Some(identity) = &identity {
        plan = plan.secured(identity.user(), &identity.digest_id());
    } else if let Ok(Some(Marker::Secured { admin: user })) = admin.marker().await {
        if force {
            bail!("the namespace at {} is secured by {user}: `pop init --force` keeps it secured only with --admin-identity (as {user} or another admin)", admin.hosts);
        }
    }
    run_plan(&admin, &mut plan).await
}

#[derive(Subcommand, Debug)]
pub enum MachineAction {
    /// Register a machine: prints its credential, `<id>:<secret>`, once (--json: an
    /// object). Give it to the machine's agent in POP_AUTH or <state dir>/credential.
    Add { id: String },
    /// Remove a machine's credential: ZooKeeper refuses it from now on.
    Remove { id: String },
}

async fn machine(cli: &Cli, admin: &Admin, action: &MachineAction) -> Result<()> {
    let Access::Secured(principals) = admin.access().await? else {
        return Err(PlanError::NotSecured {
            at: admin.hosts.clone(),
        }
        .into());
    };
    match action {
        MachineAction::Add { id } => {
            let id = MachineId::new(id)?;
            let credential = Credential::new(id.as_str(), &auth::new_secret()?)?;
            let mut plan = MachineRegistration::add(
                &admin.hosts,
                &principals.admin,
                &id,
                &credential.digest_id(),
            )?;
            let outcome = admin.run_plan(&mut plan).await?;
            eprintln!("{outcome}");
            if cli.json {
                output::print_json(&serde_json::json!({
                    "machine": id.as_str(),
                    "credential": credential.secret_line(),
                }))
            } else {
                println!("{}", credential.secret_line());
                Ok(())
            }
        }
        MachineAction::Remove { id } => {
            let id = MachineId::new(id)?;
            let mut plan = MachineRegistration::remove(&admin.hosts, &principals.admin, &id)?;
            run_plan(admin, &mut plan).await
        }
    }
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
    let mut plan = Add::new(&admin.hosts, &name, request)?.with_access(admin.access().await?);
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
    let access = admin.access().await?;
    // Settings are readable by the machines they are deployed on: granted before they
    // are listed, revoked after they are not.
    if let (Access::Secured(principals), MachinesChange::Deploy) = (&access, change) {
        let added = ids.iter().map(|m| m.to_string()).collect();
        let mut grant = SettingsAcl::new(name.as_str(), principals.clone(), added);
        admin.run_plan(&mut grant).await?;
    }
    let outcome = admin
        .run_plan(
            &mut ChangeMachines::new(&admin.hosts, &name, change, ids).with_access(access.clone()),
        )
        .await?;
    if let Access::Secured(principals) = &access {
        let mut settle = SettingsAcl::new(name.as_str(), principals.clone(), BTreeSet::new());
        admin.run_plan(&mut settle).await?;
    }
    println!("{outcome}");
    Ok(())
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
            // Digest ids are hashes of passwords: shown by user only.
            let data = if path == access::ADMIN || paths::parent(&path) == Some(access::REGISTRY) {
                redacted_digest(&String::from_utf8_lossy(&node.data)).into_bytes()
            } else {
                node.data
            };
            entry.insert("data".into(), node_value(&data));
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
