//! What other parts of the core (tasks) and the tests ask of a service on this machine:
//! its Python environment, and the process a task of its type runs.

use super::types::Resolution;
use super::Agent;
use crate::environment::{env_dir, python_environment, EnvironmentSpec, SpecError};
use crate::launch::{self, Launch, LaunchError};
use crate::names::TaskName;
use crate::plugin::Environment;
use thiserror::Error;

/// The environment the settings of a service ask for, and how far it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentView {
    pub spec: EnvironmentSpec,
    pub hash: String,
    /// `<state dir>/env/<service>/<hash>`.
    pub dir: String,
    /// Its interpreter.
    pub python: String,
    pub state: EnvironmentState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvironmentState {
    /// Built: the service runs from it (or is about to).
    Ready,
    Building,
    /// The last build of this spec failed; it is tried again later.
    Failed {
        error: String,
    },
    /// Not asked for yet (another build runs first, or the service is not wanted here).
    Waiting,
}

/// Why a task cannot be launched on this machine now.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TaskLaunchError {
    #[error("{service} is not a service this machine knows the settings of")]
    NotRead { service: String },
    #[error("{0}")]
    UnknownType(String),
    #[error("its type {0:?} is still being read")]
    TypePending(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("its Python environment is not ready ({state:?})")]
    EnvironmentNotReady { state: EnvironmentState },
    #[error(transparent)]
    Launch(#[from] LaunchError),
}

impl Agent {
    /// The Python environment `service`'s current settings want on this machine; `None`
    /// when its settings are not read, its type has no Python environment (or is not
    /// known), or its packages are not a valid list.
    pub fn environment(&self, service: &str) -> Option<EnvironmentView> {
        let entry = self.services.get(service)?;
        let settings = entry.target.settings.value()?;
        let manifest = self.types.manifest(settings.service_type.as_str())?;
        if manifest.environment != Environment::Python {
            return None;
        }
        let spec = EnvironmentSpec::from_settings(settings).ok()?;
        let hash = spec.hash();
        let dir = env_dir(&self.config.state_dir, service, &hash);
        let envs = &entry.environments;
        let state = if envs.built.contains(&hash) {
            EnvironmentState::Ready
        } else if envs.building.as_ref() == Some(&hash) {
            EnvironmentState::Building
        } else if let Some(failed) = envs.failed.as_ref().filter(|f| f.hash == hash) {
            EnvironmentState::Failed {
                error: failed.error.clone(),
            }
        } else {
            EnvironmentState::Waiting
        };
        let python = python_environment(&dir).python;
        Some(EnvironmentView {
            spec,
            hash,
            dir,
            python,
            state,
        })
    }

    /// The process the task `task` of `service`'s type runs with `args` on this machine:
    /// in the service's directory and environment, as the service's settings and type
    /// say now.
    pub fn task_launch(
        &self,
        service: &str,
        task: &TaskName,
        args: &[String],
    ) -> Result<Launch, TaskLaunchError> {
        let not_read = || TaskLaunchError::NotRead {
            service: service.to_string(),
        };
        let entry = self.services.get(service).ok_or_else(not_read)?;
        let settings = entry.target.settings.value().ok_or_else(not_read)?;
        let type_name = settings.service_type.as_str();
        let manifest = match self.types.resolve(type_name) {
            Resolution::Manifest(manifest) => manifest,
            Resolution::Pending => return Err(TaskLaunchError::TypePending(type_name.into())),
            Resolution::Unknown(problem) => return Err(TaskLaunchError::UnknownType(problem)),
        };
        let python = match manifest.environment {
            Environment::None => None,
            Environment::Python => {
                let view = self.environment(service).ok_or_else(|| {
                    EnvironmentSpec::from_settings(settings)
                        .err()
                        .map_or_else(not_read, TaskLaunchError::Spec)
                })?;
                if view.state != EnvironmentState::Ready {
                    return Err(TaskLaunchError::EnvironmentNotReady { state: view.state });
                }
                Some(python_environment(&view.dir))
            }
        };
        let host = self.config.host();
        Ok(launch::render_task(
            service,
            &host,
            settings,
            manifest,
            task,
            args,
            python.as_ref(),
        )?)
    }
}
