//! How a service's process tree is held together: a cgroup v2 where the
//! kernel lets us, otherwise a process group plus subreaper plus token.

pub(crate) mod cgroup;
mod delegated;
pub(crate) mod pgroup;
pub(crate) mod scan;

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;

use tracing::info;

use self::cgroup::CgroupGroup;
use self::pgroup::PgroupGroup;
use super::record::RecordContainment;
use super::{ContainmentChoice, ContainmentKind, SuperviseError, SupervisorConfig};

/// Per-supervisor containment backend.
#[derive(Debug)]
pub(crate) enum Backend {
    Cgroup { services_dir: PathBuf },
    Pgroup,
}

impl Backend {
    pub fn select(config: &SupervisorConfig) -> Result<(Self, ContainmentKind), SuperviseError> {
        let pgroup = || (Backend::Pgroup, ContainmentKind::ProcessGroup);
        match config.containment {
            ContainmentChoice::ProcessGroup => Ok(pgroup()),
            ContainmentChoice::Cgroup => {
                let dir = cgroup::prepare_services_dir(&config.machine_id)
                    .map_err(SuperviseError::CgroupUnavailable)?;
                Ok((
                    Backend::Cgroup {
                        services_dir: dir.clone(),
                    },
                    ContainmentKind::Cgroup(dir),
                ))
            }
            ContainmentChoice::Auto => match cgroup::prepare_services_dir(&config.machine_id) {
                Ok(dir) => Ok((
                    Backend::Cgroup {
                        services_dir: dir.clone(),
                    },
                    ContainmentKind::Cgroup(dir),
                )),
                Err(why) => {
                    info!(reason = %why, "cgroup v2 unusable; using process groups");
                    Ok(pgroup())
                }
            },
        }
    }

    /// Kills whatever earlier agents with this machine id left running,
    /// except the adopted generations (`spared_cgroups`, `spared_tokens`);
    /// `pgids` are the process groups of records that were not adopted,
    /// each with its token. Both kinds are cleaned, in case the previous
    /// agent used the other mode.
    pub fn kill_leftovers(
        &self,
        config: &SupervisorConfig,
        pgids: &[(i32, String)],
        spared_cgroups: &HashSet<PathBuf>,
        spared_tokens: &HashSet<String>,
    ) {
        if let Backend::Cgroup { services_dir } = self {
            cgroup::kill_leftovers(services_dir, spared_cgroups);
        }
        // An agent of this machine that ran in process-group mode, or outside a delegated
        // cgroup, kept its service cgroups here.
        if let Some(mount) = cgroup::find_mount() {
            let dir = cgroup::legacy_dir(&mount, &config.machine_id);
            let in_use = matches!(self, Backend::Cgroup { services_dir } if *services_dir == dir);
            if !in_use && dir.is_dir() {
                cgroup::kill_leftovers(&dir, spared_cgroups);
            }
        }
        pgroup::kill_leftovers(&config.machine_id, pgids, spared_tokens);
    }

    /// The cgroup a generation gets (cgroup mode only).
    pub fn cgroup_dir(&self, service: &str, generation: u64) -> Option<PathBuf> {
        match self {
            Backend::Cgroup { services_dir } => {
                Some(services_dir.join(format!("{service}@{generation}")))
            }
            Backend::Pgroup => None,
        }
    }

    /// A new generation's containment, without blocking: fails with `AlreadyExists`
    /// when an earlier run of the same generation left its cgroup behind (then see
    /// [`Backend::reclaim_group`]).
    pub fn new_group(&self, service: &str, generation: u64, token: &str) -> io::Result<Group> {
        match self.cgroup_dir(service, generation) {
            Some(dir) => Ok(Group::Cgroup(CgroupGroup::create(dir)?)),
            None => Ok(Group::Pgroup(PgroupGroup::new(token))),
        }
    }

    /// Takes over the cgroup an earlier run of the same generation left: blocks until
    /// what is in it is killed (at most ~5 s).
    pub fn reclaim_group(&self, service: &str, generation: u64, token: &str) -> io::Result<Group> {
        match self.cgroup_dir(service, generation) {
            Some(dir) => Ok(Group::Cgroup(CgroupGroup::reclaim(dir)?)),
            None => Ok(Group::Pgroup(PgroupGroup::new(token))),
        }
    }
}

/// One service generation's containment.
#[derive(Debug)]
pub(crate) enum Group {
    Cgroup(CgroupGroup),
    Pgroup(PgroupGroup),
}

impl Group {
    /// The cgroup directory, in cgroup mode.
    pub fn cgroup(&self) -> Option<&CgroupGroup> {
        match self {
            Group::Cgroup(g) => Some(g),
            Group::Pgroup(_) => None,
        }
    }

    pub fn set_main(&self, pid: u32) {
        if let Group::Pgroup(g) = self {
            g.set_main(pid as i32);
        }
    }

    /// What the run record says about this containment.
    pub fn record_containment(&self, pid: u32) -> RecordContainment {
        match self {
            Group::Cgroup(g) => RecordContainment::Cgroup(g.dir().to_path_buf()),
            Group::Pgroup(g) => RecordContainment::Pgid(g.pgid().unwrap_or(pid as i32)),
        }
    }

    /// Whether `pid` is held by this containment (for adoption).
    pub fn holds(&self, pid: u32) -> bool {
        match self {
            Group::Cgroup(g) => g.contains(pid as i32),
            Group::Pgroup(g) => g.has_token(pid as i32),
        }
    }

    /// Live processes of the group. Blocking in process-group mode (a /proc scan).
    pub fn members(&self) -> Vec<i32> {
        match self {
            Group::Cgroup(g) => g.all_members(),
            Group::Pgroup(g) => g.members(),
        }
    }

    /// Releases the containment once empty (the cgroup directory). Blocking: it may
    /// retry for a while.
    pub fn remove(&self) {
        if let Group::Cgroup(g) = self {
            g.remove();
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Group::Cgroup(g) => g.dir().display().to_string(),
            Group::Pgroup(_) => "process group".to_string(),
        }
    }
}
