//! The production driver loop (`pop_io::driver::run_with`) against simulated ports: the
//! ZooKeeper model, modelled processes and tokio's paused clock: the loop depends on
//! nothing but its ports.

use pop_core::backoff::Backoff;
use pop_core::environment::EnvironmentSpec;
use pop_core::event::{ExitStatus, Input};
use pop_core::launch::Launch;
use pop_core::names::MachineId;
use pop_core::paths;
use pop_core::settings::Settings;
use pop_core::task::TaskId;
use pop_core::zk::{SessionEvent, SessionId, WatchEvent, ZkOp, ZkReply};
use pop_core::{AgentConfig, Timestamp};
use pop_io::driver::ports::{Clock, ProcessPort, WatchFuture, ZkPort, ZkSession};
use pop_io::driver::{run_with, Ports, StopRequest};
use pop_io::tasks::TaskLaunch;
use pop_sim::zk_model::{Notification, ZkModel};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

struct Shared {
    model: ZkModel,
    /// One-shot watches waiting, by session: (path, where to deliver).
    watches: BTreeMap<i64, Vec<(String, oneshot::Sender<WatchEvent>)>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            model: ZkModel::new(),
            watches: BTreeMap::new(),
        }
    }
}

impl Shared {
    fn route(&mut self, notifications: Vec<Notification>) {
        for (session, event) in notifications {
            let waiting = self.watches.entry(session.0).or_default();
            let (fire, keep): (Vec<_>, Vec<_>) = std::mem::take(waiting)
                .into_iter()
                .partition(|(path, _)| *path == event.path);
            *waiting = keep;
            for (_, tx) in fire {
                let _ = tx.send(event.clone());
            }
        }
    }
}

#[derive(Clone, Default)]
struct ModelZk(Arc<Mutex<Shared>>);

impl ModelZk {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ZkPort for ModelZk {
    type Session = ModelSession;
    fn op_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }
    async fn connect(&self) -> Result<ModelSession, pop_io::driver::ports::ConnectFailure> {
        let id = self.lock().model.open_session();
        Ok(ModelSession {
            id,
            zk: self.clone(),
        })
    }
}

#[derive(Clone)]
struct ModelSession {
    id: SessionId,
    zk: ModelZk,
}

impl ZkSession for ModelSession {
    fn id(&self) -> SessionId {
        self.id
    }
    fn timeout(&self) -> Duration {
        Duration::from_secs(4)
    }
    fn events(&self) -> mpsc::UnboundedReceiver<SessionEvent> {
        // No faults injected here: the session never changes state.
        let (_tx, rx) = mpsc::unbounded_channel();
        rx
    }
    async fn execute(&self, op: ZkOp) -> (ZkReply, Option<WatchFuture>) {
        let mut shared = self.zk.lock();
        let (reply, notifications) = shared.model.apply(self.id, &op);
        shared.route(notifications);
        let watched = matches!(
            op,
            ZkOp::GetData { watch: true, .. } | ZkOp::GetChildren { watch: true, .. }
        );
        if !watched || matches!(reply, ZkReply::Error(_)) {
            return (reply, None);
        }
        let (tx, rx) = oneshot::channel();
        shared
            .watches
            .entry(self.id.0)
            .or_default()
            .push((op.path().to_string(), tx));
        (reply, Some(Box::pin(async move { rx.await.ok() })))
    }
    async fn close(self, _limit: Duration) {
        let mut shared = self.zk.lock();
        let notifications = shared.model.expire(self.id);
        shared.route(notifications);
    }
}

/// Processes that start and stop at once; the table is shared with the test.
struct ModelProcesses {
    events: mpsc::UnboundedSender<Input>,
    next_pid: u32,
    running: Arc<Mutex<BTreeMap<(String, u64), u32>>>,
}

impl ProcessPort for ModelProcesses {
    fn containment(&self) -> String {
        "model".into()
    }
    fn take_adopted(&mut self) -> Vec<Input> {
        Vec::new()
    }
    fn spawn(&mut self, service: &str, generation: u64, launch: Launch, _settings: &Settings) {
        self.next_pid += 1;
        let pid = self.next_pid;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.insert((service.to_string(), generation), pid);
        let service = service.to_string();
        let _ = self.events.send(Input::Spawned {
            service: service.clone(),
            generation,
            pid,
        });
        if let Some(probe) = launch.probe {
            let _ = self.events.send(Input::Ready {
                service,
                generation,
                port: Some(probe.port.max(1)),
            });
        }
    }
    fn stop(&mut self, service: &str, generation: u64, _grace: Duration) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.remove(&(service.to_string(), generation)).is_some() {
            let _ = self.events.send(Input::Exited {
                service: service.to_string(),
                generation,
                status: ExitStatus {
                    code: None,
                    signal: Some(15),
                },
            });
        }
    }
    /// Tasks succeed at once, with no output.
    fn run_task(&mut self, launch: TaskLaunch) {
        self.next_pid += 1;
        let (service, task, attempt) = (launch.service, launch.task, launch.attempt);
        let _ = self.events.send(Input::TaskStarted {
            service: service.clone(),
            task: task.clone(),
            attempt,
            pid: self.next_pid,
        });
        let _ = self.events.send(Input::TaskExited {
            service,
            task,
            attempt,
            status: ExitStatus {
                code: Some(0),
                signal: None,
            },
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        });
    }
    fn stop_task(&mut self, _service: &str, _task: &TaskId, _attempt: u32, _grace: Duration) {}
    async fn shutdown(&mut self, _grace: Duration) {
        let all: Vec<(String, u64)> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for (service, generation) in all {
            self.stop(&service, generation, Duration::ZERO);
        }
    }
    fn build_environment(&mut self, service: &str, spec: EnvironmentSpec, _dir: &str) {
        let _ = self.events.send(Input::EnvironmentBuilt {
            service: service.to_string(),
            spec_hash: spec.hash(),
            result: Ok(()),
        });
    }
    fn remove_environments(&mut self, _service: &str, _keep: Vec<String>) {}
    fn stop_builds(&mut self) {}
    fn detach(self) {}
}

/// tokio's clock (paused in the test, so it advances only when everything waits).
struct TokioClock {
    base: tokio::time::Instant,
}

const WALL_START: u64 = 1_700_000_000_000;

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(WALL_START + self.base.elapsed().as_millis() as u64)
    }
    fn instant_of(&self, t: Timestamp) -> tokio::time::Instant {
        self.base + Duration::from_millis(t.as_millis().saturating_sub(WALL_START))
    }
}

#[tokio::test(start_paused = true)]
async fn the_production_loop_runs_against_simulated_ports() {
    let zk = ModelZk::default();
    {
        let mut shared = zk.lock();
        for path in paths::NAMESPACE {
            shared.model.put(path, b"");
        }
        shared.model.put(&paths::service("a"), b"");
        shared.model.put(
            &paths::service_settings("a"),
            br#"{"type":"command","command":"serve","start_seconds":0.5}"#,
        );
        shared.model.put(&paths::service_state_dir("a"), b"");
        shared
            .model
            .put(&paths::service_machines("a"), br#"["m1"]"#);
        // Deployed as `pop deploy` leaves it: with its index entry.
        shared.model.put(&paths::assignment("m1", "a"), b"");
    }
    let (process_tx, process_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = mpsc::unbounded_channel();
    let running = Arc::new(Mutex::new(BTreeMap::new()));
    let ports = Ports {
        zk: zk.clone(),
        processes: ModelProcesses {
            events: process_tx,
            next_pid: 100,
            running: Arc::clone(&running),
        },
        clock: TokioClock {
            base: tokio::time::Instant::now(),
        },
    };
    let config = AgentConfig {
        access: Default::default(),
        machine: MachineId::new("m1").expect("machine id"),
        hostname: "sim".into(),
        agent_pid: 1,
        version: "test".into(),
        containment: "model".into(),
        seed: 7,
        backoff: Backoff::default(),
        pop: "/usr/bin/pop".into(),
        state_dir: "/var/lib/pop".into(),
    };
    let agent = tokio::spawn(run_with(ports, config, None, process_rx, stop_rx));

    let pid_node = paths::machine_service("m1", "a");
    let published = async {
        loop {
            if let Some(node) = zk.lock().model.get(&pid_node) {
                return String::from_utf8_lossy(&node.data).to_string();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let pid = match tokio::time::timeout(Duration::from_secs(30), published).await {
        Ok(pid) => pid,
        Err(_) => {
            let shared = zk.lock();
            let nodes: Vec<String> = shared
                .model
                .paths()
                .map(|(p, n)| format!("{p} {:?}", String::from_utf8_lossy(&n.data)))
                .collect();
            panic!(
                "not published within 30 s of virtual time; running {:?}; nodes:\n{}",
                running.lock().unwrap_or_else(|e| e.into_inner()),
                nodes.join("\n")
            );
        }
    };
    assert_eq!(pid, "101");

    // A settings change through the model's watch restarts it.
    {
        let mut shared = zk.lock();
        let n = shared.model.put(
            &paths::service_settings("a"),
            br#"{"type":"command","command":"serve v2","start_seconds":0.5}"#,
        );
        shared.route(n);
    }
    let restarted = async {
        loop {
            let data = zk.lock().model.get(&pid_node).map(|n| n.data.clone());
            if data.as_deref() == Some(b"102".as_slice()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), restarted)
        .await
        .expect("restarted with the new settings");

    stop_tx.send(StopRequest::Stop).expect("agent alive");
    tokio::time::timeout(Duration::from_secs(60), agent)
        .await
        .expect("agent exits")
        .expect("agent task")
        .expect("nothing refused");
    assert!(running.lock().unwrap_or_else(|e| e.into_inner()).is_empty());
    assert!(zk.lock().model.get(&pid_node).is_none());
}
