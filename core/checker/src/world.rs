//! The world as the inputs describe it, kept beside the agent: the session, the requests
//! it has outstanding, the processes that exist, what ZooKeeper told it. The checks
//! judge the agent's actions against this, never against the agent's own state.

use pop_core::agent::AgentConfig;
use pop_core::backoff::Backoff;
use pop_core::environment::EnvironmentSpec;
use pop_core::event::Input;
use pop_core::launch::Launch;
use pop_core::names::MachineId;
use pop_core::paths::{self, Watched};
use pop_core::plugin::{decode_stored, Manifest};
use pop_core::settings::{parse_machines, Settings};
use pop_core::time::Timestamp;
use pop_core::zk::{RequestId, SessionEvent, SessionId, ZkError, ZkOp, ZkReply};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The machine the checked agent runs on.
pub(crate) const MACHINE: &str = "m1";
/// Services the generated inputs talk about.
pub(crate) const SERVICES: [&str; 3] = ["a", "b", "c"];
pub(crate) const SESSION_TIMEOUT: Duration = Duration::from_secs(4);

pub fn config() -> AgentConfig {
    AgentConfig {
        access: Default::default(),
        machine: MachineId::new(MACHINE).unwrap_or_else(|e| unreachable!("{e}")),
        hostname: "host-m1".into(),
        agent_pid: 1,
        version: "fuzz".into(),
        containment: "none".into(),
        seed: 7,
        backoff: Backoff::default(),
        pop: "/usr/bin/pop".into(),
        state_dir: "/var/lib/pop".into(),
    }
}

/// The session as the agent must see it, mirrored from the inputs alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionView {
    Connecting,
    Connected(SessionId),
    Disconnected(SessionId),
    Expired,
}

/// A process that exists, as far as the inputs said.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub settings: Settings,
    /// What it was launched with, when the inputs said.
    pub launch: Option<Launch>,
    /// Set once the driver reported it running (spawned or adopted).
    pub started_at: Option<Timestamp>,
    /// The agent asked it to stop.
    pub stopping: bool,
}

/// A quick end of a run: the same settings may not start again before the backoff.
#[derive(Debug, Clone)]
pub(crate) struct QuickEnd {
    pub at: Timestamp,
    pub settings: Settings,
}

#[derive(Debug)]
pub(crate) struct World {
    pub session: SessionView,
    pub timeout: Duration,
    /// When the session was lost (disconnected or expired), until it is back.
    pub lost_since: Option<Timestamp>,
    /// Requests sent and not yet answered, in the agent's current session.
    pub outstanding: BTreeMap<RequestId, ZkOp>,
    pub used_ids: BTreeSet<RequestId>,
    pub live: BTreeMap<(String, u64), Live>,
    /// Every generation the agent started or was given, per service.
    pub known: BTreeSet<(String, u64)>,
    pub pids: BTreeMap<String, BTreeSet<u32>>,
    /// Services some reply listed in this machine's index (`/assignments/m1`), or that
    /// were adopted (followed without being indexed until their list is read).
    pub listed: BTreeSet<String>,
    /// The newest index reply (by its pzxid, as the agent takes them) and its names.
    pub indexed: Option<(i64, BTreeSet<String>)>,
    /// Services some reply said run on this machine.
    pub listed_here: BTreeSet<String>,
    pub settings_read: BTreeMap<String, Vec<Settings>>,
    /// Valid manifests some reply gave for a stored type, by the type's name.
    pub manifests_read: BTreeMap<String, Vec<Manifest>>,
    /// Environment builds asked for and not reported: (service, spec hash) → spec.
    pub builds: BTreeMap<(String, String), EnvironmentSpec>,
    /// Environments reported built and not removed since: (service, spec hash).
    pub built: BTreeSet<(String, String)>,
    pub quick_ends: BTreeMap<String, QuickEnd>,
    /// Told to shut down: nothing may be started any more.
    pub shutting_down: bool,
    /// The last zxid handed out in a generated reply.
    pub zxid: i64,
}

impl World {
    pub fn new() -> World {
        World {
            session: SessionView::Connecting,
            timeout: Duration::ZERO,
            lost_since: None,
            outstanding: BTreeMap::new(),
            used_ids: BTreeSet::new(),
            live: BTreeMap::new(),
            known: BTreeSet::new(),
            pids: BTreeMap::new(),
            listed: BTreeSet::new(),
            indexed: None,
            listed_here: BTreeSet::new(),
            settings_read: BTreeMap::new(),
            manifests_read: BTreeMap::new(),
            builds: BTreeMap::new(),
            built: BTreeSet::new(),
            quick_ends: BTreeMap::new(),
            shutting_down: false,
            zxid: 100,
        }
    }

    /// The session has been gone long enough that `fence` services must be down: expired,
    /// or disconnected for a quarter of its timeout.
    pub fn fenced(&self, now: Timestamp) -> bool {
        self.session == SessionView::Expired
            || self
                .lost_since
                .is_some_and(|since| now >= since + self.timeout / 4)
    }

    /// What the input tells about the world, before the agent acts on it.
    pub fn learn(&mut self, now: Timestamp, input: &Input) {
        match input {
            Input::Session(SessionEvent::Connected { session, timeout }) => {
                let same = matches!(self.session,
                    SessionView::Connected(s) | SessionView::Disconnected(s) if s == *session);
                if !same {
                    // A new session: the agent forgets requests of the old one.
                    self.outstanding.clear();
                }
                self.session = SessionView::Connected(*session);
                self.timeout = *timeout;
                self.lost_since = None;
            }
            Input::Session(SessionEvent::Disconnected) => {
                if let SessionView::Connected(s) = self.session {
                    self.session = SessionView::Disconnected(s);
                    self.lost_since = Some(now);
                }
            }
            Input::Session(SessionEvent::Expired) => self.expire(now),
            Input::Reply { id, reply } => self.learn_reply(now, *id, reply),
            Input::Spawned {
                service,
                generation,
                pid,
            } => {
                if let Some(live) = self.live.get_mut(&(service.clone(), *generation)) {
                    live.started_at.get_or_insert(now);
                    self.pids.entry(service.clone()).or_default().insert(*pid);
                }
            }
            Input::SpawnFailed {
                service,
                generation,
                ..
            }
            | Input::Exited {
                service,
                generation,
                ..
            } => {
                if let Some(live) = self.live.remove(&(service.clone(), *generation)) {
                    // A run shorter than the healthy time (or one that never got going)
                    // ended on its own: the same settings wait out the backoff.
                    let healthy = Backoff::default().healthy_after;
                    let ran = live.started_at.map(|t| now.saturating_since(t));
                    if !live.stopping && ran.is_none_or(|ran| ran < healthy) {
                        let settings = live.settings;
                        self.quick_ends
                            .insert(service.clone(), QuickEnd { at: now, settings });
                    } else {
                        self.quick_ends.remove(service);
                    }
                }
            }
            Input::Adopted {
                service,
                generation,
                pid,
                started_at,
                settings,
                launch,
                ..
            } => {
                let key = (service.clone(), *generation);
                let live = Live {
                    settings: settings.clone(),
                    launch: launch.as_deref().cloned(),
                    started_at: Some(*started_at),
                    stopping: false,
                };
                self.live.insert(key.clone(), live);
                self.known.insert(key);
                self.listed.insert(service.clone());
                self.pids.entry(service.clone()).or_default().insert(*pid);
            }
            Input::Shutdown => self.shutting_down = true,
            Input::EnvironmentBuilt {
                service,
                spec_hash,
                result,
            } => {
                let key = (service.clone(), spec_hash.clone());
                self.builds.remove(&key);
                if result.is_ok() {
                    self.built.insert(key);
                }
            }
            Input::Watch(_)
            | Input::Ready { .. }
            | Input::Tick
            | Input::Detach
            | Input::TaskStarted { .. }
            | Input::TaskFailedToStart { .. }
            | Input::TaskExited { .. } => {}
        }
    }

    fn expire(&mut self, now: Timestamp) {
        self.session = SessionView::Expired;
        self.lost_since.get_or_insert(now);
    }

    fn learn_reply(&mut self, now: Timestamp, id: RequestId, reply: &ZkReply) {
        let Some(op) = self.outstanding.remove(&id) else {
            return;
        };
        if *reply == ZkReply::Error(ZkError::SessionExpired) {
            // The agent takes the server's word, whatever the client said.
            if self.session != SessionView::Expired {
                self.expire(now);
            }
            return;
        }
        match (&op, reply) {
            (ZkOp::GetChildren { path, .. }, ZkReply::Children { names, stat })
                if *path == paths::assignments(MACHINE) =>
            {
                self.listed.extend(names.iter().cloned());
                if self
                    .indexed
                    .as_ref()
                    .is_none_or(|(zxid, _)| stat.pzxid >= *zxid)
                {
                    self.indexed = Some((stat.pzxid, names.iter().cloned().collect()));
                }
            }
            (ZkOp::GetData { path, .. }, ZkReply::Data { data, .. }) => {
                match Watched::parse(path) {
                    Some(Watched::Machines(s))
                        if parse_machines(data).is_ok_and(|m| m.contains(MACHINE)) =>
                    {
                        self.listed_here.insert(s);
                    }
                    Some(Watched::Settings(s)) => {
                        if let Ok(settings) = Settings::parse(data) {
                            let read = self.settings_read.entry(s).or_default();
                            if !read.contains(&settings) {
                                read.push(settings);
                            }
                        }
                    }
                    Some(Watched::Plugin(t)) => {
                        if let Ok(manifest) = decode_stored(&t, data) {
                            let read = self.manifests_read.entry(t).or_default();
                            if !read.contains(&manifest) {
                                read.push(manifest);
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}
