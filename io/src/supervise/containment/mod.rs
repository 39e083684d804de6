//! How a service's process tree is held together: a cgroup v2 where the
//! kernel lets us, otherwise a process group plus subreaper plus token.

pub(crate) mod cgroup;
pub(crate) mod pgroup;

use std::ffi::CString;
use std::io;
use std::path::PathBuf;

use nix::sys::signal::Signal;
use tracing::info;

use self::cgroup::CgroupGroup;
use self::pgroup::PgroupGroup;
use super::{ContainmentChoice, ContainmentKind, SuperviseError, SupervisorConfig};

/// Per-supervisor containment backend.
#[derive(Debug)]
pub(crate) enum Backend {
    Cgroup { machine_dir: PathBuf },
    Pgroup { run_dir: PathBuf },
}

impl Backend {
    pub fn select(config: &SupervisorConfig) -> Result<(Self, ContainmentKind), SuperviseError> {
        let run_dir = config.state_dir.join("run");
        let pgroup = || {
            (
                Backend::Pgroup {
                    run_dir: run_dir.clone(),
                },
                ContainmentKind::ProcessGroup,
            )
        };
        match config.containment {
            ContainmentChoice::ProcessGroup => Ok(pgroup()),
            ContainmentChoice::Cgroup => {
                let dir = cgroup::prepare_machine_dir(&config.machine_id)
                    .map_err(SuperviseError::CgroupUnavailable)?;
                Ok((
                    Backend::Cgroup {
                        machine_dir: dir.clone(),
                    },
                    ContainmentKind::Cgroup(dir),
                ))
            }
            ContainmentChoice::Auto => match cgroup::prepare_machine_dir(&config.machine_id) {
                Ok(dir) => Ok((
                    Backend::Cgroup {
                        machine_dir: dir.clone(),
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

    /// Kills whatever earlier agents with this machine id left running. Both
    /// kinds are cleaned, in case the previous agent used the other mode.
    pub fn kill_leftovers(&self, config: &SupervisorConfig) {
        if let Backend::Cgroup { machine_dir } = self {
            cgroup::kill_leftovers(machine_dir);
        } else if let Some(mount) = cgroup::find_mount() {
            let dir = mount.join("pop").join(&config.machine_id);
            if dir.is_dir() {
                cgroup::kill_leftovers(&dir);
            }
        }
        pgroup::kill_leftovers(&config.machine_id, &config.state_dir.join("run"));
    }

    pub fn new_group(&self, service: &str, generation: u64, token: &str) -> io::Result<Group> {
        let name = format!("{service}@{generation}");
        match self {
            Backend::Cgroup { machine_dir } => {
                Ok(Group::Cgroup(CgroupGroup::create(machine_dir.join(name))?))
            }
            Backend::Pgroup { run_dir } => Ok(Group::Pgroup(PgroupGroup::new(
                token.to_string(),
                run_dir.join(format!("{name}.json")),
            ))),
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
    /// For `pre_exec`: the `cgroup.procs` file the child must join, if any.
    pub fn join_path(&self) -> io::Result<Option<CString>> {
        match self {
            Group::Cgroup(g) => g.procs_path().map(Some),
            Group::Pgroup(_) => Ok(None),
        }
    }

    pub fn set_main(&self, pid: u32) -> io::Result<()> {
        match self {
            Group::Cgroup(_) => Ok(()),
            Group::Pgroup(g) => g.set_main(pid as i32),
        }
    }

    /// Live processes of the group.
    pub fn members(&self) -> Vec<i32> {
        match self {
            Group::Cgroup(g) => g.members(),
            Group::Pgroup(g) => g.members(),
        }
    }

    pub fn signal_all(&self, sig: Signal) {
        match self {
            Group::Cgroup(g) => g.signal_all(sig),
            Group::Pgroup(g) => g.signal_all(sig),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Group::Cgroup(g) => g.is_empty(),
            Group::Pgroup(g) => g.is_empty(),
        }
    }

    /// Releases the containment once empty (cgroup dir, run record).
    pub fn remove(&self) {
        match self {
            Group::Cgroup(g) => g.remove(),
            Group::Pgroup(g) => g.remove(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Group::Cgroup(g) => g.dir().display().to_string(),
            Group::Pgroup(_) => "process group".to_string(),
        }
    }
}
