//! Core throughput: the cost of one input to an agent that runs N services, for N = 10,
//! 1000 and 10,000, with nothing but the core and the simulator's ZooKeeper model (no IO).
//! The inputs touch one service, so ideally their cost does not grow with N. And the cost
//! of deploying N services at once, from the first listing to all running and registered,
//! which ideally grows linearly.
//!
//! `cargo bench -p pop-bench --bench core`

use pop_core::backoff::Backoff;
use pop_core::event::{Action, ExitStatus, Input};
use pop_core::names::MachineId;
use pop_core::paths;
use pop_core::zk::{SessionEvent, SessionId, WatchEvent, WatchKind};
use pop_core::{Agent, AgentConfig, Timestamp};
use pop_sim::zk_model::ZkModel;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

const MACHINE: &str = "m1";
const SIZES: [usize; 3] = [10, 1000, 10_000];

fn main() {
    divan::main();
}

/// One agent and a ZooKeeper model answering it at once.
struct Rig {
    agent: Agent,
    zk: ZkModel,
    session: SessionId,
    now_ms: u64,
    next_pid: u32,
    queue: VecDeque<Input>,
    /// The running generation of each service.
    generations: BTreeMap<String, u64>,
}

impl Rig {
    /// An agent with `n` services deployed on its machine, all running and registered.
    fn new(n: usize) -> Rig {
        let mut rig = Rig::deployed_to(n);
        rig.connect();
        assert_eq!(rig.generations.len(), n, "every service runs");
        rig
    }

    /// ZooKeeper with `n` services deployed on the agent's machine, and an agent that
    /// has not connected yet.
    fn deployed_to(n: usize) -> Rig {
        let mut zk = ZkModel::new();
        for path in paths::NAMESPACE {
            zk.put(path, b"");
        }
        for i in 0..n {
            let name = format!("s{i}");
            zk.put(&paths::service(&name), b"");
            zk.put(
                &paths::service_settings(&name),
                br#"{"type":"command","command":"serve","start_seconds":0}"#,
            );
            zk.put(&paths::service_machines(&name), br#"["m1"]"#);
            zk.put(&paths::service_state_dir(&name), b"");
        }
        let session = zk.open_session();
        let agent = Agent::new(AgentConfig {
            access: Default::default(),
            machine: MachineId::new(MACHINE).expect("machine id"),
            hostname: "bench".into(),
            agent_pid: 1,
            version: "bench".into(),
            containment: "none".into(),
            seed: 1,
            backoff: Backoff::default(),
            pop: "/usr/bin/pop".into(),
            state_dir: "/var/lib/pop".into(),
        });
        Rig {
            agent,
            zk,
            session,
            now_ms: 1_000,
            next_pid: 100,
            queue: VecDeque::new(),
            generations: BTreeMap::new(),
        }
    }

    /// The session is connected: the agent reads everything and starts what it should.
    fn connect(&mut self) {
        self.queue
            .push_back(Input::Session(SessionEvent::Connected {
                session: self.session,
                timeout: Duration::from_secs(10),
            }));
        self.settle();
    }

    fn feed(&mut self, input: Input) {
        self.agent
            .handle(Timestamp::from_millis(self.now_ms), input);
        for action in self.agent.drain_actions() {
            match action {
                Action::Zk { id, op } => {
                    let (reply, fired) = self.zk.apply(self.session, &op);
                    self.queue.push_back(Input::Reply { id, reply });
                    for (session, event) in fired {
                        if session == self.session {
                            self.queue.push_back(Input::Watch(event));
                        }
                    }
                }
                Action::Spawn {
                    service,
                    generation,
                    ..
                } => {
                    self.next_pid += 1;
                    self.generations.insert(service.clone(), generation);
                    self.queue.push_back(Input::Spawned {
                        service,
                        generation,
                        pid: self.next_pid,
                    });
                }
                Action::Stop {
                    service,
                    generation,
                    ..
                } => self.queue.push_back(Input::Exited {
                    service,
                    generation,
                    status: ExitStatus::default(),
                }),
                _ => {}
            }
        }
    }

    /// Feeds everything that follows, ticks included, until nothing is left to do now.
    fn settle(&mut self) {
        loop {
            if let Some(input) = self.queue.pop_front() {
                self.feed(input);
                continue;
            }
            let due = self
                .agent
                .poll_timeout()
                .is_some_and(|t| t <= Timestamp::from_millis(self.now_ms));
            if !due {
                return;
            }
            self.feed(Input::Tick);
        }
    }
}

/// A timer firing with nothing due: the floor of what any input costs.
#[divan::bench(args = SIZES, sample_count = 20)]
fn tick_with_nothing_due(bencher: divan::Bencher, n: usize) {
    let mut rig = Rig::new(n);
    bencher.bench_local(|| {
        rig.feed(Input::Tick);
        rig.settle();
    });
}

/// One service's settings watch fires and the re-read finds them unchanged.
#[divan::bench(args = SIZES, sample_count = 20)]
fn settings_reread_of_one_service(bencher: divan::Bencher, n: usize) {
    let mut rig = Rig::new(n);
    let path = paths::service_settings("s0");
    bencher.bench_local(|| {
        rig.feed(Input::Watch(WatchEvent {
            path: path.clone(),
            kind: WatchKind::DataChanged,
        }));
        rig.settle();
    });
}

/// One service crashes after a healthy run and is restarted and registered again.
#[divan::bench(args = SIZES, sample_count = 20)]
fn crash_and_restart_of_one_service(bencher: divan::Bencher, n: usize) {
    let mut rig = Rig::new(n);
    bencher.bench_local(|| {
        // Past the healthy threshold: restarted at once, not after a backoff.
        rig.now_ms += 11_000;
        let generation = rig.generations["s0"];
        rig.feed(Input::Exited {
            service: "s0".into(),
            generation,
            status: ExitStatus {
                code: None,
                signal: Some(9),
            },
        });
        rig.settle();
    });
}

/// All N services deployed before the agent connects: from the session to every one
/// running and registered (each input handled, each request answered at once).
#[divan::bench(args = SIZES, sample_count = 3, sample_size = 1)]
fn deploy_all_at_once(bencher: divan::Bencher, n: usize) {
    bencher
        .with_inputs(|| Rig::deployed_to(n))
        .bench_local_values(|mut rig| {
            rig.connect();
            assert_eq!(rig.generations.len(), n, "every service runs");
            rig
        });
}
