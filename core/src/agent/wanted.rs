//! What a wanted service should run: its settings, launched as its type's manifest says,
//! from its Python environment once that is built. When any of it cannot be had, the
//! service is held (see [`Desired::Held`]) with the reason, which its report shows.

use super::service::{Desired, RunSpec, Service};
use super::types::{Resolution, TypeReads};
use crate::environment::{env_dir, python_environment, EnvironmentSpec};
use crate::event::Action;
use crate::launch::{self, Host};
use crate::plugin::Environment;
use crate::settings::Settings;
use crate::time::Timestamp;
use std::collections::VecDeque;
use std::sync::Arc;

/// What the service asks for, wanted here with `settings`. Asks for its environment to
/// be built when it needs one that is not (one build at a time; a failed one again at
/// its retry time).
pub(super) fn desire(
    service: &mut Service,
    settings: Arc<Settings>,
    types: &TypeReads,
    host: &Host,
    now: Timestamp,
    actions: &mut VecDeque<Action>,
) -> Desired {
    let type_name = settings.service_type.as_str();
    let manifest = match types.resolve(type_name) {
        Resolution::Manifest(manifest) => manifest,
        Resolution::Pending => {
            return Desired::Held {
                reason: format!("reading its type {type_name:?} from /plugins/{type_name}"),
                restart_last: false,
            }
        }
        Resolution::Unknown(problem) => {
            return Desired::Held {
                reason: problem,
                restart_last: false,
            }
        }
    };
    let held = |reason: String| Desired::Held {
        reason,
        restart_last: true,
    };
    let mut environment = None;
    if manifest.environment == Environment::Python {
        let spec = match EnvironmentSpec::from_settings(&settings) {
            Ok(spec) => spec,
            Err(error) => return held(error.to_string()),
        };
        let hash = spec.hash();
        let envs = &mut service.environments;
        if !envs.built.contains(&hash) {
            let failed = envs.failed.as_ref().filter(|f| f.hash == hash);
            if envs.building.is_none() && failed.is_none_or(|f| now >= f.retry_at) {
                actions.push_back(Action::BuildEnvironment {
                    service: service.name.clone(),
                    spec,
                    dir: env_dir(&host.state_dir, &service.name, &hash),
                });
                envs.building = Some(hash.clone());
                envs.failed = None;
            }
            let reason = match (&envs.building, &envs.failed) {
                (Some(building), _) if *building == hash => {
                    "building its Python environment".to_string()
                }
                (_, Some(failed)) if failed.hash == hash => {
                    format!("building its Python environment failed: {}", failed.error)
                }
                _ => "waiting for an earlier build of its Python environment".to_string(),
            };
            return held(reason);
        }
        environment = Some(hash);
    }
    let python = environment
        .as_ref()
        .map(|hash| python_environment(&env_dir(&host.state_dir, &service.name, hash)));
    match launch::render(&service.name, host, &settings, manifest, python.as_ref()) {
        Ok(launch) => Desired::Run(RunSpec {
            settings,
            launch: Some(Arc::new(launch)),
            environment,
        }),
        Err(error) => held(format!("cannot launch it: {error}")),
    }
}
