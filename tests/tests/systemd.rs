//! Running under systemd: the shipped unit (cli/systemd/pop-agent.service) passes
//! `systemd-analyze verify`, and an agent started in a cgroup delegated to it, as systemd
//! starts a `Delegate=yes` unit, moves itself into the leaf `agent/` and runs each service
//! in a sibling cgroup; killed and started again there (a restart with KillMode=process),
//! the next agent adopts the services. A cgroup that is not delegated is left alone.

use pop_tests::{initialised, pop_exe, unique, wait_for, Checker, Machine};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const UNIT: &str = include_str!("../../cli/systemd/pop-agent.service");

#[test]
fn the_unit_file_verifies() {
    for setting in ["Delegate=yes", "KillMode=process", "KillSignal=SIGUSR1"] {
        assert!(
            UNIT.lines().any(|l| l.trim() == setting),
            "the unit lacks {setting}"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // The manual page the unit names, where man finds it.
    let man1 = dir.path().join("man").join("man1");
    let out = Command::new(pop_exe())
        .args(["man", "--dir"])
        .arg(&man1)
        .output()
        .expect("pop man");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // systemd-analyze checks that ExecStart's program exists: the pop under test stands
    // in for /usr/local/bin/pop.
    let exe = format!("ExecStart={} ", pop_exe().display());
    let unit = UNIT.replace("ExecStart=/usr/local/bin/pop ", &exe);
    assert_ne!(unit, UNIT, "ExecStart runs /usr/local/bin/pop");
    let path = dir.path().join("pop-agent.service");
    std::fs::write(&path, unit).expect("writing the unit");
    let out = Command::new("systemd-analyze")
        .args(["verify"])
        .arg(&path)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("running systemd-analyze (apt-get install systemd; .ci/run does)");
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
}

fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .expect("these tests need a cgroup v2 hierarchy mounted")
}

/// A cgroup like the one systemd gives a unit; with everything left in it killed and
/// removed when dropped.
struct UnitCgroup {
    dir: PathBuf,
    name: String,
}

impl UnitCgroup {
    /// `delegated`: marked as systemd marks a `Delegate=yes` unit's cgroup.
    fn new(delegated: bool) -> UnitCgroup {
        let name = format!("{}.service", unique("pop-test"));
        let dir = cgroup2_mount().join(&name);
        std::fs::create_dir(&dir).expect("creating the unit's cgroup");
        if delegated {
            let path = CString::new(dir.as_os_str().as_bytes()).expect("path");
            // SAFETY: NUL-terminated strings and a buffer with its length, all live
            // for the call.
            let rc = unsafe {
                libc::setxattr(
                    path.as_ptr(),
                    c"trusted.delegate".as_ptr(),
                    b"1".as_ptr().cast(),
                    1,
                    0,
                )
            };
            assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
        }
        UnitCgroup { dir, name }
    }

    fn children(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .expect("reading the unit's cgroup")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn kill_and_remove(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.filter_map(|e| e.ok()) {
                if entry.path().is_dir() {
                    kill_and_remove(&entry.path());
                }
            }
        }
        kill_and_remove(&self.dir);
    }
}

/// The cgroup v2 path of a process (`0::<path>` in /proc/<pid>/cgroup).
fn cgroup_of(pid: u32) -> Option<String> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    table
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Alive and not a zombie (an adopted service's parent is not the agent that stops it).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

fn add_sleeper(m: &Machine) {
    m.ok(&[
        "add",
        "command",
        "--name",
        "svc",
        "--set",
        "command=exec sleep 100000",
        "--set",
        "start_seconds=0.2",
        "--set",
        "stop_timeout=1",
    ]);
    m.ok(&["deploy", "svc"]);
}

/// Pid and generation of `svc` as published by the agent whose pid is `agent`.
fn published_by(zkc: &Checker, m: &Machine, agent: u32) -> Option<(u32, u64)> {
    let (report, owner) = zkc.get(&format!("/agents/{}", m.id))?;
    let report: serde_json::Value = serde_json::from_slice(&report).ok()?;
    if report["pid"].as_u64() != Some(u64::from(agent)) {
        return None;
    }
    let (state, state_owner) = zkc.get(&format!("/services/svc/state/{}", m.id))?;
    let state: serde_json::Value = serde_json::from_slice(&state).ok()?;
    let pid = u32::try_from(state["pid"].as_u64()?).ok()?;
    (state_owner == owner).then_some((pid, state["generation"].as_u64()?))
}

#[test]
fn an_agent_in_a_delegated_cgroup_runs_services_beside_its_own_leaf_and_adopts_them() {
    let (_zk, m, zkc) = initialised();
    add_sleeper(&m);
    let unit = UnitCgroup::new(true);
    let mut agent = m.agent_in_cgroup(&unit.dir);
    let leaf = format!("/{}/agent", unit.name);
    wait_for("the agent to move into its leaf", || {
        (cgroup_of(agent.pid()).as_deref() == Some(leaf.as_str())).then_some(())
    });
    let (pid, generation) = wait_for("svc published", || published_by(&zkc, &m, agent.pid()));
    assert_eq!(
        cgroup_of(pid),
        Some(format!("/{}/svc@{generation}", unit.name)),
        "the service runs in a sibling of the agent's leaf"
    );
    let machines = m.ok(&["machines"]);
    assert!(
        machines.contains(&unit.dir.display().to_string()),
        "{machines}"
    );

    // The agent dies; systemd (KillMode=process) leaves the services and starts the next
    // agent in the unit's cgroup again.
    agent.kill();
    let mut again = m.agent_in_cgroup(&unit.dir);
    let adopted = wait_for("the new agent to publish svc", || {
        published_by(&zkc, &m, again.pid())
    });
    assert_eq!(adopted, (pid, generation), "adopted, not restarted");
    assert_eq!(cgroup_of(again.pid()).as_deref(), Some(leaf.as_str()));
    assert_eq!(
        unit.children(),
        vec!["agent".to_string(), format!("svc@{generation}")]
    );

    let status = again.stop();
    assert!(status.success(), "{}", again.log_text());
    assert!(!running(pid), "the service stopped with the agent");
    assert_eq!(unit.children(), vec!["agent".to_string()]);
}

#[test]
fn an_agent_in_a_cgroup_not_delegated_to_it_leaves_it_alone() {
    let (_zk, m, zkc) = initialised();
    add_sleeper(&m);
    let unit = UnitCgroup::new(false);
    let agent = m.agent_in_cgroup(&unit.dir);
    let (pid, generation) = wait_for("svc published", || published_by(&zkc, &m, agent.pid()));
    assert_eq!(cgroup_of(agent.pid()), Some(format!("/{}", unit.name)));
    assert_eq!(
        cgroup_of(pid),
        Some(format!("/pop/{}/svc@{generation}", m.id)),
        "services go to pop's own tree, not into a cgroup nobody delegated"
    );
    assert!(unit.children().is_empty());
}
