//! pop under benchmark: a throwaway ZooKeeper, an agent (`pop fg`, release build) for
//! one machine, services written the way `pop add` writes them, and an independent
//! ZooKeeper client that watches what the agent registers.

use anyhow::{anyhow, bail, Context, Result};
use pop_core::assignment::render_settings;
use pop_core::paths;
use pop_core::plugin::builtin;
use pop_tests::Zk;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;
use zookeeper_client as zkc;

use crate::measure::{idle_usage, monotonic_ns, wait};

/// This run's machine id: its own, because the agent's containment (the cgroup
/// `pop/<machine id>`) is per machine id, and an agent kills what it finds there at
/// start. A fixed id let two benchmark runs at once (two people, two branches) kill
/// each other's services, which then restarted in a loop during the measurement.
pub fn machine() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("bench-{}", std::process::id()))
}

/// What a deploy's multi does to the machine's index entry for the service.
#[derive(Clone, Copy)]
enum IndexEntry {
    Create,
    Delete,
}

pub struct Pop {
    pub exe: PathBuf,
    zk: Zk,
    state: TempDir,
    agent: Option<Child>,
    runtime: tokio::runtime::Runtime,
    client: zkc::Client,
}

/// The settings of a stamp service, as `pop add command --set command=...` writes them.
pub fn stamp_settings(stamp_exe: &Path, stamp_file: &Path, name: &str) -> Vec<u8> {
    let mut settings = builtin::get("command")
        .map(|m| m.default_settings(None))
        .unwrap_or_default();
    settings.insert(
        "command".into(),
        Value::from(format!(
            "exec {} {} {name}",
            stamp_exe.display(),
            stamp_file.display()
        )),
    );
    // Registered as soon as it runs, as supervisord's startsecs=0.
    settings.insert("start_seconds".into(), Value::from(0));
    settings.insert("stop_timeout".into(), Value::from(1));
    render_settings(settings)
}

impl Pop {
    /// A ZooKeeper and `pop init`; no agent yet.
    pub fn new(exe: &Path) -> Result<Pop> {
        // As deployed: with the tests' short tick the agent's session would be cut to
        // 4 s and its ZooKeeper client would tick 3 times as often.
        let zk = Zk::start_with_default_tick();
        let state = tempfile::tempdir().context("state dir")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let client = runtime
            .block_on(zkc::Client::connect(&zk.hosts()))
            .context("connecting to ZooKeeper")?;
        let pop = Pop {
            exe: exe.to_path_buf(),
            zk,
            state,
            agent: None,
            runtime,
            client,
        };
        pop.cli(&["init"])?;
        Ok(pop)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args)
            .env("POP_HOST", self.zk.hosts())
            .env("POP_MACHINE_ID", machine())
            .env("POP_STATE_DIR", self.state.path())
            .env_remove("RUST_LOG");
        cmd
    }

    /// Runs a pop command; its stdout, or an error with its stderr.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command(args)
            .output()
            .with_context(|| format!("running pop {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "pop {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts the agent in the foreground as our child (its output in the state dir).
    pub fn start_agent(&mut self) -> Result<u32> {
        let log = std::fs::File::create(self.state.path().join("agent.out"))?;
        let child = self
            .command(&["fg"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting pop fg")?;
        let pid = child.id();
        self.agent = Some(child);
        // Up once it has registered itself; an agent that exits or never registers is
        // reported with what it printed.
        let registered = wait("the agent's report", Duration::from_secs(60), || {
            if let Some(status) = self
                .agent
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("the agent exited ({status}) before registering");
            }
            Ok(self.exists(&paths::agent(machine()))?.then_some(()))
        });
        registered.with_context(|| format!("the agent printed:\n{}", self.agent_output()))?;
        Ok(pid)
    }

    /// The last lines the agent printed (for an error).
    fn agent_output(&self) -> String {
        let text = std::fs::read_to_string(self.state.path().join("agent.out")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM to the agent; the time until it has exited (its services stopped first).
    pub fn stop_agent(&mut self) -> Result<Duration> {
        let Some(mut child) = self.agent.take() else {
            bail!("no agent");
        };
        let start = std::time::Instant::now();
        // SAFETY: kill with our child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().context("waiting for the agent")?;
        Ok(start.elapsed())
    }

    fn exists(&self, path: &str) -> Result<bool> {
        Ok(self
            .runtime
            .block_on(self.client.check_stat(path))
            .with_context(|| format!("checking {path}"))?
            .is_some())
    }

    /// Adds services as `pop add` does (one transaction each, machines list empty),
    /// many at once.
    pub fn add_services(&self, services: &[(String, Vec<u8>)]) -> Result<()> {
        let client = &self.client;
        self.runtime.block_on(async {
            let opts = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
            for chunk in services.chunks(500) {
                let mut writes = Vec::new();
                for (name, settings) in chunk {
                    let mut multi = client.new_multi_writer();
                    multi.add_create(&paths::service(name), b"", &opts)?;
                    multi.add_create(&paths::service_settings(name), settings, &opts)?;
                    multi.add_create(&paths::service_machines(name), b"[]", &opts)?;
                    multi.add_create(&paths::service_state_dir(name), b"", &opts)?;
                    // `pop add` makes the tasks container too; without it the agent
                    // takes the path of a service from before tasks (a NoNode, then a
                    // watch on the service's children), one request more per service.
                    multi.add_create(&paths::service_tasks(name), b"", &opts)?;
                    writes.push(multi.commit());
                }
                for w in writes {
                    w.await.map_err(|e| anyhow!("adding a service: {e}"))?;
                }
            }
            Ok(())
        })
    }

    /// Deploys every service on this machine at once (all writes in flight together),
    /// each as `pop deploy` writes it: the machines list and this machine's index entry
    /// in one multi (`pop_core::plan::assignments`), so the keeper has nothing to repair.
    /// Returns the clock when the first was sent.
    pub fn deploy_all(&self, names: &[String]) -> Result<u128> {
        let list = format!("[\"{}\"]", machine());
        self.ensure_index()?;
        self.write_lists(names, list.as_bytes(), IndexEntry::Create, "deploying")
    }

    /// Undeploys every service from this machine at once, as `pop undeploy` writes it:
    /// each list emptied and its index entry deleted in one multi.
    pub fn undeploy_all(&self, names: &[String]) -> Result<()> {
        self.write_lists(names, b"[]", IndexEntry::Delete, "undeploying")
            .map(|_| ())
    }

    /// `/assignments/<machine>` (the agent makes it at start; made here if not yet).
    fn ensure_index(&self) -> Result<()> {
        let opts = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
        self.runtime.block_on(async {
            for path in [
                paths::ASSIGNMENTS.to_string(),
                paths::assignments(machine()),
            ] {
                match self.client.create(&path, b"", &opts).await {
                    Ok(_) | Err(zkc::Error::NodeExists) => {}
                    Err(e) => bail!("creating {path}: {e}"),
                }
            }
            Ok(())
        })
    }

    /// Writes `list` to every service's machines list with its index entry made or
    /// removed in the same multi, all in flight together; returns the clock before the
    /// first was sent.
    fn write_lists(
        &self,
        names: &[String],
        list: &[u8],
        entry: IndexEntry,
        doing: &str,
    ) -> Result<u128> {
        let client = &self.client;
        let opts = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
        self.runtime.block_on(async {
            let mut multis = Vec::with_capacity(names.len());
            for n in names {
                let mut multi = client.new_multi_writer();
                multi.add_set_data(&paths::service_machines(n), list, None)?;
                let index_entry = paths::assignment(machine(), n);
                match entry {
                    IndexEntry::Create => multi.add_create(&index_entry, b"", &opts)?,
                    IndexEntry::Delete => multi.add_delete(&index_entry, None)?,
                }
                multis.push(multi);
            }
            let start = monotonic_ns();
            let writes: Vec<_> = multis.iter_mut().map(|m| m.commit()).collect();
            for w in writes {
                w.await.map_err(|e| anyhow!("{doing}: {e}"))?;
            }
            Ok(start)
        })
    }

    /// Waits until this machine has no pid node left.
    pub fn wait_unregistered(&self, limit: Duration) -> Result<()> {
        let path = paths::machine(machine());
        wait("every pid node to go", limit, || {
            match self.runtime.block_on(self.client.list_children(&path)) {
                Ok(names) => Ok(names.is_empty().then_some(())),
                Err(zkc::Error::NoNode) => Ok(Some(())),
                Err(e) => Err(anyhow!("listing {path}: {e}")),
            }
        })
    }

    /// Removes services that are undeployed and stopped: every node of each, in one
    /// multi per service. A state node the agent has not deleted yet makes the multi
    /// fail; it is tried again until `limit`.
    pub fn remove_services(&self, names: &[String], limit: Duration) -> Result<()> {
        let client = &self.client;
        let mut left: Vec<&String> = names.iter().collect();
        let mut last_error = String::new();
        wait("the services' removal", limit, || {
            self.runtime.block_on(async {
                let mut writes = Vec::new();
                for name in &left {
                    let mut multi = client.new_multi_writer();
                    for path in [
                        paths::service_tasks(name),
                        paths::service_state_dir(name),
                        paths::service_machines(name),
                        paths::service_settings(name),
                        paths::service(name),
                    ] {
                        multi.add_delete(&path, None)?;
                    }
                    writes.push(multi.commit());
                }
                let mut failed = Vec::new();
                for (name, w) in left.iter().zip(writes) {
                    if let Err(e) = w.await {
                        last_error = format!("removing {name}: {e}");
                        failed.push(*name);
                    }
                }
                left = failed;
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(left.is_empty().then_some(()))
        })
        .with_context(|| last_error.clone())
    }

    /// Writes a service's settings (the bytes `pop set` would write); returns the clock
    /// just before the write.
    pub fn write_settings(&self, name: &str, data: &[u8]) -> Result<u128> {
        let start = monotonic_ns();
        self.runtime
            .block_on(
                self.client
                    .set_data(&paths::service_settings(name), data, None),
            )
            .map_err(|e| anyhow!("writing the settings of {name}: {e}"))?;
        Ok(start)
    }

    /// Arms a watch on this machine's pid nodes and returns once it is armed; the handle
    /// resolves with the clock when `count` services were registered. One persistent
    /// recursive watch counting the pid nodes as they are created: the server sends one
    /// event per node instead of the whole, growing list again after every change, which
    /// made the harness's own reads a share of the ZooKeeper CPU it measures.
    pub fn watch_registered(&self, count: usize) -> Result<tokio::task::JoinHandle<Result<u128>>> {
        let client = self.client.clone();
        let path = paths::machine(machine());
        let (armed_tx, armed_rx) = tokio::sync::oneshot::channel();
        let handle = self.runtime.spawn(async move {
            let mut watcher = client
                .watch(&path, zkc::AddWatchMode::PersistentRecursive)
                .await
                .map_err(|e| anyhow!("watching {path}: {e}"))?;
            // Listed after the watch is armed: a node made in between is in both, and
            // the set counts it once.
            let mut registered: std::collections::HashSet<String> =
                match client.list_children(&path).await {
                    Ok(names) => names.into_iter().collect(),
                    Err(zkc::Error::NoNode) => Default::default(),
                    Err(e) => return Err(anyhow!("listing {path}: {e}")),
                };
            let _ = armed_tx.send(());
            let prefix = format!("{path}/");
            while registered.len() < count {
                let event = watcher.changed().await;
                if event.session_state.is_terminated() {
                    bail!("the benchmark's session ended: {:?}", event.session_state);
                }
                let Some(name) = event.path.strip_prefix(&prefix) else {
                    continue;
                };
                match event.event_type {
                    zkc::EventType::NodeCreated => {
                        registered.insert(name.to_string());
                    }
                    zkc::EventType::NodeDeleted => {
                        registered.remove(name);
                    }
                    _ => {}
                }
            }
            Ok(monotonic_ns())
        });
        self.runtime
            .block_on(armed_rx)
            .map_err(|_| anyhow!("watching the pid nodes failed before it was armed"))?;
        Ok(handle)
    }

    /// Waits for a handle of `watch_registered` or `watch_pid_change`, up to `limit`.
    pub fn wait_watch(
        &self,
        handle: tokio::task::JoinHandle<Result<u128>>,
        limit: Duration,
    ) -> Result<u128> {
        self.runtime.block_on(async {
            match tokio::time::timeout(limit, handle).await {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => Err(anyhow!("the watch failed: {e}")),
                Err(_) => Err(anyhow!("nothing changed within {limit:?}")),
            }
        })
    }

    /// Waits (at most `limit`, then carries on) until the agent used under 5 % of a
    /// CPU over half a second: it has read what it was told of.
    pub fn wait_settled(&self, limit: Duration) -> Result<()> {
        let Some(pid) = self.agent_pid() else {
            bail!("no agent");
        };
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            let (usage, _) = idle_usage(pid, Duration::from_millis(500))?;
            if usage.cpu_percent() < 5.0 {
                return Ok(());
            }
        }
        eprintln!("note: the agent still used CPU after {limit:?}; measuring anyway");
        Ok(())
    }

    /// The session of the benchmark's own client (to tell its packets from the agent's).
    pub fn own_session(&self) -> i64 {
        self.client.session_id().0
    }

    /// The ZooKeeper server's client address (for its four-letter words).
    pub fn zookeeper_addr(&self) -> std::net::SocketAddr {
        self.zk.server.addr()
    }

    pub fn zookeeper_pid(&self) -> Option<u32> {
        self.zk.server.pid()
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// Arms a watch on `name`'s pid node and returns once it is armed; the handle
    /// resolves with the clock when the node held a pid other than `old`.
    pub fn watch_pid_change(
        &self,
        name: &str,
        old: u32,
    ) -> Result<tokio::task::JoinHandle<Result<u128>>> {
        let client = self.client.clone();
        let path = paths::machine_service(machine(), name);
        let (armed_tx, armed_rx) = tokio::sync::oneshot::channel();
        let handle = self.runtime.spawn(async move {
            let mut armed = Some(armed_tx);
            loop {
                let watcher = match client.get_and_watch_data(&path).await {
                    Ok((data, _, watcher)) => {
                        let pid: Option<u32> = String::from_utf8_lossy(&data).trim().parse().ok();
                        if pid.is_some_and(|p| p != old) {
                            return Ok(monotonic_ns());
                        }
                        watcher
                    }
                    Err(zkc::Error::NoNode) => {
                        let (stat, watcher) = client
                            .check_and_watch_stat(&path)
                            .await
                            .map_err(|e| anyhow!("watching {path}: {e}"))?;
                        if stat.is_some() {
                            continue;
                        }
                        watcher
                    }
                    Err(e) => return Err(anyhow!("watching {path}: {e}")),
                };
                if let Some(tx) = armed.take() {
                    let _ = tx.send(());
                }
                watcher.changed().await;
            }
        });
        self.runtime
            .block_on(armed_rx)
            .map_err(|_| anyhow!("the pid node of {name} changed before the kill"))?;
        Ok(handle)
    }
}

impl Drop for Pop {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            // Two SIGTERMs: the second kills the services at once.
            for _ in 0..2 {
                // SAFETY: kill with our child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = wait("the agent to exit", Duration::from_secs(60), || {
                Ok(child.try_wait()?.map(|_| ()))
            });
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
