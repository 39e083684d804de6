//! How a service type becomes a process: the argv, environment and readiness probe the
//! driver needs, decided here so every driver (and the simulator) agrees.

use crate::settings::{ServiceType, Settings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Program {
    /// A shell command line, run with `sh -c`.
    Shell(String),
    /// A built-in server of the pop binary: the driver runs `<pop> <args...>`.
    PopBuiltin(Vec<String>),
}

/// Readiness: the service is ready once it accepts TCP connections on this port
/// (0: on whatever port it listens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub program: Program,
    pub env: BTreeMap<String, String>,
    pub probe: Option<Probe>,
    /// Grace between SIGTERM and SIGKILL, also for what is left when the main process exits.
    pub stop_timeout: std::time::Duration,
}

impl Launch {
    pub fn new(service: &str, machine: &str, settings: &Settings) -> Launch {
        let mut env = BTreeMap::new();
        env.insert("POP_SERVICE".to_string(), service.to_string());
        env.insert("POP_MACHINE_ID".to_string(), machine.to_string());
        env.insert("POP_HOST".to_string(), settings.host.clone());
        if let Some(port) = settings.port {
            env.insert("POP_PORT".to_string(), port.to_string());
        }
        // The service's own env wins over pop's defaults.
        env.extend(settings.env.clone());
        let program = match settings.service_type {
            ServiceType::Command => Program::Shell(settings.command.clone().unwrap_or_default()),
            ServiceType::Echo => Program::PopBuiltin(vec![
                "echo-server".to_string(),
                "--host".to_string(),
                settings.host.clone(),
                "--port".to_string(),
                settings.port.unwrap_or(0).to_string(),
            ]),
        };
        let probe = settings.port.map(|port| Probe {
            host: settings.host.clone(),
            port,
        });
        Launch {
            program,
            env,
            probe,
            stop_timeout: settings.stop_timeout,
        }
    }
}
