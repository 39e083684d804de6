//! `pop plugin add|list|show|remove`: service types as manifests stored in ZooKeeper.

use super::run_plan;
use crate::admin::Admin;
use crate::output;
use crate::Cli;
use anyhow::{Context, Result};
use clap::Subcommand;
use pop_core::names::PluginName;
use pop_core::paths;
use pop_core::plan::{PlanError, PluginAdd, PluginRemove};
use pop_core::plugin::{builtin, decode_stored, Environment, Manifest};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum PluginAction {
    /// Check a manifest (TOML) and store it as a service type every agent sees.
    Add {
        file: PathBuf,
        /// Replace a different plugin of the same name (its services restart).
        #[arg(long)]
        replace: bool,
    },
    /// List the service types, built-in and stored, with the services of each.
    List,
    /// Print a type's manifest (--json: as decoded).
    Show { name: String },
    /// Remove a stored plugin (--force even while services are of its type).
    Remove {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

/// Checks what can be checked before connecting (a manifest), then runs the action.
pub async fn run(cli: &Cli, action: &PluginAction) -> Result<()> {
    match action {
        PluginAction::Add { file, replace } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let origin = file.display().to_string();
            let plan = PluginAdd::new(&cli.host, &origin, &text, *replace)?;
            let admin = Admin::for_cli(cli).await?;
            let mut plan = plan.with_access(admin.access().await?);
            run_plan(&admin, &mut plan).await
        }
        PluginAction::Remove { name, force } => {
            let name = PluginName::new(name)?;
            let mut plan = PluginRemove::new(&cli.host, &name, *force)?;
            let admin = Admin::for_cli(cli).await?;
            run_plan(&admin, &mut plan).await
        }
        PluginAction::List => list(cli, &Admin::for_cli(cli).await?).await,
        PluginAction::Show { name } => show(cli, &Admin::for_cli(cli).await?, name).await,
    }
}

/// One row of `pop plugin list`.
#[derive(Debug, Serialize)]
struct Listed {
    name: String,
    source: &'static str,
    /// `None` for a stored manifest that does not decode.
    environment: Option<&'static str>,
    description: String,
    services: Vec<String>,
    /// Why a stored manifest does not decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

/// Every service's type, as its settings say (unreadable settings say none).
async fn services_by_type(admin: &Admin) -> Result<BTreeMap<String, Vec<String>>> {
    let mut by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for service in admin.children(paths::SERVICES).await? {
        let Some(node) = admin.get(&paths::service_settings(&service)).await? else {
            continue;
        };
        let service_type = serde_json::from_slice::<serde_json::Value>(&node.data)
            .ok()
            .and_then(|v| v.get("type")?.as_str().map(str::to_string));
        if let Some(service_type) = service_type {
            by_type.entry(service_type).or_default().push(service);
        }
    }
    Ok(by_type)
}

fn listed(manifest: &Manifest, source: &'static str, services: Vec<String>) -> Listed {
    Listed {
        name: manifest.name.to_string(),
        source,
        environment: Some(manifest.environment.as_str()),
        description: manifest.description.clone(),
        services,
        problem: None,
    }
}

async fn list(cli: &Cli, admin: &Admin) -> Result<()> {
    admin.require_namespace().await?;
    let mut by_type = services_by_type(admin).await?;
    let mut rows: Vec<Listed> = builtin::all()
        .iter()
        .map(|m| {
            let services = by_type.remove(m.name.as_str()).unwrap_or_default();
            listed(m, "built-in", services)
        })
        .collect();
    for name in admin.children(paths::PLUGINS).await? {
        let Some(node) = admin.get(&paths::plugin(&name)).await? else {
            continue; // Removed meanwhile.
        };
        let services = by_type.remove(&name).unwrap_or_default();
        rows.push(match decode_stored(&name, &node.data) {
            Ok(manifest) => listed(&manifest, "stored", services),
            Err(error) => Listed {
                name,
                source: "stored",
                environment: None,
                description: String::new(),
                services,
                problem: Some(error.to_string()),
            },
        });
    }
    if cli.json {
        return output::print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let services = if row.services.is_empty() {
                "-".to_string()
            } else {
                row.services.join(",")
            };
            let description = match &row.problem {
                Some(problem) => format!("INVALID: {problem}"),
                None => row.description.clone(),
            };
            vec![
                row.name.clone(),
                row.source.to_string(),
                row.environment.unwrap_or("?").to_string(),
                services,
                description,
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["NAME", "SOURCE", "ENVIRONMENT", "SERVICES", "DESCRIPTION"],
            &table
        )
    );
    Ok(())
}

async fn show(cli: &Cli, admin: &Admin, name: &str) -> Result<()> {
    let (text, manifest) = match builtin::text(name).zip(builtin::manifest(name)) {
        Some((text, manifest)) => (text.to_string(), manifest),
        None => {
            admin.require_namespace().await?;
            let name = PluginName::new(name)?;
            let Some(node) = admin.get(&paths::plugin(name.as_str())).await? else {
                return Err(PlanError::NoSuchPlugin {
                    name: name.to_string(),
                }
                .into());
            };
            let manifest = decode_stored(name.as_str(), &node.data).map_err(|error| {
                PlanError::StoredPluginInvalid {
                    path: paths::plugin(name.as_str()),
                    error,
                }
            })?;
            (String::from_utf8_lossy(&node.data).into_owned(), manifest)
        }
    };
    if cli.json {
        return output::print_json(&manifest);
    }
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    if manifest.environment == Environment::Python {
        // Not in the manifest (it may not declare them), yet `pop run` takes them.
        println!("# built into every type with a Python environment:");
        println!("#   install <requirement>...  add them to `packages`; each machine rebuilds");
        println!("#   packages                  each machine's distributions, versions, sources");
    }
    Ok(())
}
