//! The agent's event loop: feeds ZooKeeper, process and timer events into the core and
//! carries out the actions it emits.
//!
//! The loop is written against small ports ([`ports`]) so the same code runs in
//! production ([`production`]) and under simulation. Every input is appended to the
//! journal before the core sees it, and the actions after, so `pop replay` can check
//! that the core's decisions follow from its inputs alone (spawns are carried out
//! before their step's actions are journaled, so a restart does not wait for that).
//!
//! Process events come straight from the supervisor's channel; every ZooKeeper task
//! reports back over one channel of the loop's. Messages from an older ZooKeeper
//! session are tagged with its epoch and dropped, so a reply or watch from an expired
//! session never reaches the core. Every ZooKeeper request and the session's close are
//! bounded in time here, not only in the production port, so a simulation's port runs
//! the same bounds.
//!
//! Under `--cfg madsim` only the loop and its ports are built (no [`run`]): sim/madsim
//! runs it on madsim's simulated time and nodes.

pub mod ports;
#[cfg(not(madsim))]
pub mod production;
#[cfg(not(madsim))]
mod start;
#[cfg(not(madsim))]
mod workdir;

#[cfg(not(madsim))]
pub use start::{run, DriverConfig, DriverError};

mod watches;

use crate::journal::JournalWriter;
use futures_util::StreamExt;
use pop_core::backoff::SeededRng;
use pop_core::event::{Action, Input, Report};
use pop_core::zk::{SessionEvent, ZkError, ZkOp, ZkReply};
use pop_core::{Agent, AgentConfig};
use ports::{Clock, ConnectFailure, ProcessPort, WatchFuture, WatchStream, ZkPort, ZkSession};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use watches::Watches;

/// Why the agent is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// Stop every service, then exit. A second one cuts the grace short.
    Stop,
    /// Exit now and leave the services running for the next agent (an upgrade).
    KeepServices,
}

/// How long closing the session may take before the agent exits anyway.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// The backoff between attempts to open a session: doubling from the first to the
/// last, each with up to half again of random jitter.
const RECONNECT_INITIAL: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A retry's wait: the backoff's `delay` plus up to half of it at random.
fn backoff_wait(delay: Duration, rng: &mut SeededRng) -> Duration {
    delay + jitter(rng, delay / 2)
}

/// A random duration below `max` (zero when `max` is).
fn jitter(rng: &mut SeededRng, max: Duration) -> Duration {
    let max_ms = max.as_millis() as u64;
    if max_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rng.next_u64() % max_ms)
}

enum Msg<S> {
    /// An input from the ZooKeeper session of `epoch`.
    Session {
        epoch: u64,
        // Boxed: an input is large beside the other messages.
        input: Box<Input>,
    },
    /// The watch a request of the session of `epoch` set, sent after its reply: the
    /// loop waits for it among the others (see [`watches`]).
    Watch {
        epoch: u64,
        watch: WatchFuture,
    },
    /// A persistent watch, likewise: each of its events until its session ends.
    Tree {
        epoch: u64,
        stream: WatchStream,
    },
    Connected {
        epoch: u64,
        session: S,
    },
    /// The server refused the credential: the agent cannot go on.
    Refused(String),
}

/// What ZooKeeper refused the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A request (NoAuth).
    Request { doing: String, path: String },
    /// The session's authentication.
    Session(String),
}

/// What the loop talks to.
pub struct Ports<Z, P, C> {
    pub zk: Z,
    pub processes: P,
    pub clock: C,
}

struct Driver<Z: ZkPort, P, C> {
    zk: std::sync::Arc<Z>,
    processes: Option<P>,
    clock: C,
    agent: Agent,
    journal: Option<JournalWriter>,
    session: Option<Z::Session>,
    epoch: u64,
    tx: mpsc::UnboundedSender<Msg<Z::Session>>,
    /// What ZooKeeper refused, once it has (the core then exits).
    refused: Option<Refusal>,
    /// Jitters the reconnect backoff (seeded like the core's, from the agent's config).
    rng: SeededRng,
    /// The watches set and not yet fired.
    watches: Watches,
}

/// The event loop over any ports. Returns when the core emits `Exit`, or at once after a
/// second `Stop` request (services are then killed without the full grace).
///
/// Ends with a [`Refusal`] when ZooKeeper refused the agent's credential (or a request for
/// want of one): the services are left running for the next agent to adopt.
pub async fn run_with<Z: ZkPort, P: ProcessPort, C: Clock>(
    ports: Ports<Z, P, C>,
    agent_config: AgentConfig,
    journal: Option<JournalWriter>,
    mut process_events: mpsc::UnboundedReceiver<Input>,
    mut stop: mpsc::UnboundedReceiver<StopRequest>,
) -> Result<(), Refusal> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut process_events_open = true;
    let mut driver = Driver {
        zk: std::sync::Arc::new(ports.zk),
        processes: Some(ports.processes),
        clock: ports.clock,
        // Not the core's own sequence: the driver's draws must not shift the core's.
        rng: SeededRng::new(agent_config.seed.rotate_left(32) ^ 0x5EED),
        agent: Agent::new(agent_config),
        journal,
        session: None,
        epoch: 0,
        tx,
        refused: None,
        watches: Watches::default(),
    };
    // What an earlier agent left running is known before anything else happens.
    let adopted = driver
        .processes
        .as_mut()
        .map(ProcessPort::take_adopted)
        .unwrap_or_default();
    for input in adopted {
        if driver.step(input).await {
            return driver.ended();
        }
    }
    driver.start_session(false);
    let mut stop_requested = false;
    let mut stop_closed = false;
    loop {
        let deadline = driver
            .agent
            .poll_timeout()
            .map(|t| driver.clock.instant_of(t));
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let input = tokio::select! {
            // Straight from the supervisor: a restart's `Exited` takes no extra hop.
            event = process_events.recv(), if process_events_open => {
                if event.is_none() {
                    process_events_open = false;
                }
                event
            }
            Some((epoch, event)) = driver.watches.next(), if !driver.watches.is_empty() => {
                event
                    .filter(|_| epoch == driver.epoch || planted!(StaleEpochAccepted))
                    .map(Input::Watch)
            }
            msg = rx.recv() => match msg {
                Some(Msg::Session { epoch, input }) => {
                    (epoch == driver.epoch || planted!(StaleEpochAccepted)).then_some(*input)
                }
                Some(Msg::Watch { epoch, watch }) => {
                    driver.watches.push(epoch, watch);
                    None
                }
                Some(Msg::Tree { epoch, stream }) => {
                    driver.watches.push_every(epoch, stream);
                    None
                }
                Some(Msg::Connected { epoch, session }) => driver.on_connected(epoch, session),
                Some(Msg::Refused(message)) => {
                    if let Some(processes) = driver.processes.take() {
                        processes.detach();
                    }
                    return Err(Refusal::Session(message));
                }
                None => None,
            },
            () = sleep => Some(Input::Tick),
            request = stop.recv(), if !stop_closed => match request {
                // Nobody can ask any more; carry on until told otherwise by the core.
                None => {
                    stop_closed = true;
                    None
                }
                Some(StopRequest::KeepServices) => {
                    info!("stopping the agent only: services keep running for the next agent");
                    Some(Input::Detach)
                }
                Some(StopRequest::Stop) if stop_requested => {
                    warn!("second stop request: killing services now");
                    if let Some(processes) = driver.processes.as_mut() {
                        processes.shutdown(Duration::from_millis(500)).await;
                    }
                    driver.close_session().await;
                    return driver.ended();
                }
                Some(StopRequest::Stop) => {
                    stop_requested = true;
                    info!("stopping: services first, then the agent");
                    Some(Input::Shutdown)
                }
            }
        };
        let Some(input) = input else { continue };
        if driver.step(input).await {
            return driver.ended();
        }
    }
}

impl<Z: ZkPort, P: ProcessPort, C: Clock> Driver<Z, P, C> {
    fn ended(&mut self) -> Result<(), Refusal> {
        self.refused.take().map_or(Ok(()), Err)
    }

    /// Journals one input, hands it to the core and performs what it asks; true when
    /// the agent is done.
    async fn step(&mut self, input: Input) -> bool {
        debug!(?input, "input");
        let now = self.clock.now();
        let detach = input == Input::Detach;
        // A planted bug (sim/madsim's contract check must catch it); false in any other build.
        let journal_after_act = planted!(JournalAfterAct);
        let late_input = journal_after_act.then(|| input.clone());
        if let Some(journal) = self.journal.as_mut().filter(|_| !journal_after_act) {
            journal.input(now, &input);
        }
        self.agent.handle(now, input);
        let actions: Vec<Action> = self.agent.drain_actions();
        // Spawns first, even before the actions are journaled: a restart's fork and
        // exec should not wait for that, nor compete for the CPU with the ZooKeeper
        // requests of the same step (sent by other tasks, answered by the server on
        // this machine). Nothing depends on that order: requests still go out in the
        // order given, and what a spawn reports comes back as a later input.
        let spawns: Vec<Action> = actions
            .iter()
            .filter(|a| matches!(a, Action::Spawn { .. }))
            .cloned()
            .collect();
        for action in spawns {
            self.perform(action);
        }
        if let Some(journal) = self.journal.as_mut() {
            if let Some(input) = &late_input {
                journal.input(now, input);
            }
            journal.actions(&actions);
            journal.rotate_if_full(&self.agent);
        }
        let others = actions
            .into_iter()
            .filter(|a| !matches!(a, Action::Spawn { .. }));
        for action in others {
            if self.perform(action) {
                if detach || self.refused.is_some() {
                    if let Some(processes) = self.processes.take() {
                        processes.detach();
                    }
                    info!("agent detached; closing the ZooKeeper session");
                } else {
                    if let Some(processes) = self.processes.as_mut() {
                        processes.stop_builds();
                    }
                    info!("all services stopped; closing the ZooKeeper session");
                }
                self.close_session().await;
                return true;
            }
        }
        false
    }

    fn on_connected(&mut self, epoch: u64, session: Z::Session) -> Option<Input> {
        if epoch != self.epoch && !planted!(StaleEpochAccepted) {
            return None;
        }
        let (id, timeout) = (session.id(), session.timeout());
        info!(session = %format!("{:#x}", id.0), ?timeout, "ZooKeeper session established");
        let mut events = session.events();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let input = Input::Session(event);
                if tx
                    .send(Msg::Session {
                        epoch,
                        input: Box::new(input),
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        self.session = Some(session);
        Some(Input::Session(SessionEvent::Connected {
            session: id,
            timeout,
        }))
    }

    /// Drops the old session and connects anew, retrying until it works. The first
    /// attempt is at once; a session that expired waits a random moment first, and
    /// every retry a jittered backoff: a fleet that lost its sessions together (an
    /// outage) would otherwise reconnect, and then re-read everything, in lockstep.
    fn start_session(&mut self, after_expiry: bool) {
        self.session = None;
        self.epoch += 1;
        let epoch = self.epoch;
        let tx = self.tx.clone();
        let zk = std::sync::Arc::clone(&self.zk);
        let mut rng = SeededRng::new(self.rng.next_u64());
        tokio::spawn(async move {
            let mut delay = RECONNECT_INITIAL;
            if after_expiry {
                tokio::time::sleep(jitter(&mut rng, RECONNECT_INITIAL)).await;
            }
            loop {
                match zk.connect().await {
                    Ok(session) => {
                        let _ = tx.send(Msg::Connected { epoch, session });
                        return;
                    }
                    Err(ConnectFailure::Refused(message)) => {
                        let _ = tx.send(Msg::Refused(message));
                        return;
                    }
                    Err(ConnectFailure::Retry(e)) => {
                        let wait = backoff_wait(delay, &mut rng);
                        warn!("{e}; retrying in {wait:?}");
                        tokio::time::sleep(wait).await;
                        delay = (delay * 2).min(RECONNECT_MAX);
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
    }

    /// Closes the session so our ephemerals go at once rather than at its timeout.
    async fn close_session(&mut self) {
        if let Some(session) = self.session.take() {
            // Bounded here too, whatever the port does: the agent must get to exit.
            if tokio::time::timeout(CLOSE_LIMIT, session.close(CLOSE_LIMIT))
                .await
                .is_err()
            {
                warn!("the ZooKeeper session did not close within {CLOSE_LIMIT:?}; its nodes go when it expires");
            }
        }
    }

    /// Carries out one action; true when the agent should exit.
    fn perform(&mut self, action: Action) -> bool {
        match action {
            Action::Zk { id, op } => {
                let tx = self.tx.clone();
                let epoch = self.epoch;
                let op_timeout = self.zk.op_timeout();
                let Some(session) = self.session.clone() else {
                    let reply = ZkReply::Error(ZkError::ConnectionLoss);
                    let input = Input::Reply { id, reply };
                    let _ = tx.send(Msg::Session {
                        epoch,
                        input: Box::new(input),
                    });
                    return false;
                };
                if let ZkOp::WatchTree { path } = op {
                    tokio::spawn(async move {
                        let added = tokio::time::timeout(op_timeout, session.watch_tree(path));
                        let (reply, stream) = match Box::pin(added).await {
                            Ok(done) => done,
                            Err(_) => (ZkReply::Error(ZkError::Timeout), None),
                        };
                        drop(session);
                        let input = Box::new(Input::Reply { id, reply });
                        let _ = tx.send(Msg::Session { epoch, input });
                        // After the reply, as a one-shot watch (see below).
                        if let Some(stream) = stream {
                            let _ = tx.send(Msg::Tree { epoch, stream });
                        }
                    });
                    return false;
                }
                tokio::spawn(async move {
                    // Bounded here, whatever the port does: a request that never ends
                    // would stall whatever the core waits for on it.
                    let (reply, watch) = if planted!(ZkCallWithoutTimeout) {
                        Box::pin(session.execute(op)).await
                    } else {
                        let bounded =
                            Box::pin(tokio::time::timeout(op_timeout, session.execute(op))).await;
                        match bounded {
                            Ok(done) => done,
                            Err(_) => (ZkReply::Error(ZkError::Timeout), None),
                        }
                    };
                    // Only live requests may hold the session: dropping the last clone
                    // closes it, which shutdown relies on.
                    drop(session);
                    let input = Input::Reply { id, reply };
                    let _ = tx.send(Msg::Session {
                        epoch,
                        input: Box::new(input),
                    });
                    // After the reply on the same channel, so the core has the reply
                    // before the watch can fire. The loop waits for it rather than this
                    // task: thousands of watches wait as long as their services exist,
                    // and a task each cost about 400 bytes more than an entry in a set.
                    if let Some(watch) = watch {
                        let _ = tx.send(Msg::Watch { epoch, watch });
                    }
                });
            }
            Action::Spawn {
                service,
                generation,
                launch,
                settings,
            } => {
                if let Some(processes) = self.processes.as_mut() {
                    processes.spawn(&service, generation, launch, &settings);
                }
            }
            Action::Stop {
                service,
                generation,
                grace,
            } => {
                if let Some(processes) = self.processes.as_mut() {
                    processes.stop(&service, generation, grace);
                }
            }
            Action::RunTask {
                service,
                task,
                attempt,
                argv,
                env,
                path_prepend,
                cwd,
                run_as,
            } => {
                if let Some(processes) = self.processes.as_mut() {
                    processes.run_task(ports::TaskLaunch {
                        service,
                        task,
                        attempt,
                        argv,
                        env,
                        path_prepend,
                        cwd: PathBuf::from(cwd),
                        run_as,
                    });
                }
            }
            Action::StopTask {
                service,
                task,
                attempt,
                grace,
            } => {
                if let Some(processes) = self.processes.as_mut() {
                    processes.stop_task(&service, &task, attempt, grace);
                }
            }
            Action::BuildEnvironment { service, spec, dir } => {
                if let Some(processes) = self.processes.as_mut() {
                    processes.build_environment(&service, spec, &dir);
                }
            }
            Action::RemoveEnvironments { service, keep } => {
                if let Some(processes) = self.processes.as_mut() {
                    processes.remove_environments(&service, keep);
                }
            }
            Action::NewSession => {
                warn!("ZooKeeper session expired; opening a new one");
                self.start_session(true);
            }
            Action::Report(Report::NotAuthorised { path, doing }) => {
                error!(%path, "ZooKeeper refused {doing} it: not authorised");
                self.refused = Some(Refusal::Request { doing, path });
            }
            Action::Report(report) => log_report(&report),
            Action::Exit => return true,
        }
        false
    }
}

fn log_report(report: &Report) {
    match report {
        Report::BadData { path, error } => {
            error!(%path, "bad data in ZooKeeper, keeping the last good view: {error}")
        }
        Report::DataRepaired { path } => info!(%path, "data is valid again"),
        Report::CrashLoop {
            service,
            failures,
            delay,
        } => warn!(%service, failures, ?delay, "crashing repeatedly; backing off"),
        Report::SpawnFailed { service, error } => error!(%service, "cannot start: {error}"),
        Report::Started { service, pid } => info!(%service, pid, "started"),
        Report::Exited { service, status } => info!(%service, %status, "exited"),
        Report::Adopted { service, pid } => {
            info!(%service, pid, "adopted a running process of the previous agent")
        }
        Report::NotReady {
            service,
            port,
            waited,
        } => warn!(%service, port, ?waited, "not ready in time (ready_timeout); restarting it"),
        Report::TaskEnded {
            service,
            task,
            attempt,
            state,
        } => info!(%service, %task, attempt, %state, "task ended"),
        Report::Fenced { services } => {
            warn!(
                ?services,
                "ZooKeeper session lost too long: stopping fence services"
            )
        }
        Report::Waiting { service, reason } => warn!(%service, "not started: {reason}"),
        Report::EnvironmentReady { service, spec_hash } => {
            info!(%service, spec_hash, "environment ready")
        }
        Report::EnvironmentFailed {
            service,
            spec_hash,
            error,
        } => error!(%service, spec_hash, "environment build failed: {error}"),
        Report::NotAuthorised { path, doing } => {
            error!(%path, "ZooKeeper refused {doing} it: not authorised")
        }
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    /// Agents that lost ZooKeeper together (seeds differ: pid and clock) wait different
    /// times before retrying, each within the backoff plus half of it.
    #[test]
    fn retries_of_different_agents_are_spread() {
        let waits: std::collections::BTreeSet<Duration> = (1..=8u64)
            .map(|seed| backoff_wait(RECONNECT_INITIAL, &mut SeededRng::new(seed)))
            .collect();
        assert!(
            waits
                .iter()
                .all(|w| (RECONNECT_INITIAL..RECONNECT_INITIAL * 3 / 2).contains(w)),
            "{waits:?}"
        );
        assert!(waits.len() >= 6, "8 agents wait only {waits:?}");
        let after_expiry: std::collections::BTreeSet<Duration> = (1..=8u64)
            .map(|seed| jitter(&mut SeededRng::new(seed), RECONNECT_INITIAL))
            .collect();
        assert!(after_expiry.len() >= 6, "{after_expiry:?}");
        assert_eq!(
            jitter(&mut SeededRng::new(1), Duration::ZERO),
            Duration::ZERO
        );
    }
}
