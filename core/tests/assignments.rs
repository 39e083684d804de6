//! The agent follows only what its index (`/assignments/<m>`) names, or what it runs: one
//! agent on m1 against a small in-test ZooKeeper that keeps one-shot watches as the real
//! one does, so a change wakes the agent only where it watches (another machine keeps
//! the index). Every input is checked with `Agent::audit`.

mod common;

use pop_core::event::{Action, ExitStatus, Input};
use pop_core::paths;
use pop_core::zk::{
    NodeStat, SessionEvent, SessionId, WatchEvent, WatchKind, ZkError, ZkOp, ZkReply,
};
use pop_core::{Agent, Timestamp};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const SERVE: &str = r#"{"type":"command","command":"serve"}"#;

struct Rig {
    agent: Agent,
    now: u64,
    nodes: BTreeMap<String, Vec<u8>>,
    zxid: i64,
    /// Paths with a data watch, and with a children watch, of the agent's session.
    data_watches: BTreeSet<String>,
    child_watches: BTreeSet<String>,
    /// Every request since the last `take`.
    requests: Vec<ZkOp>,
    running: BTreeSet<(String, u64)>,
    /// Replies to requests about this path wait in `held` until `release`: a reply
    /// the server sends later than others.
    hold: Option<String>,
    held: Vec<Input>,
}

impl Rig {
    /// A namespace where `a` is deployed on m1 and `b` on m2, as `pop deploy` leaves it.
    fn new() -> Rig {
        Rig::with_keeper(true)
    }

    /// The same namespace with no keeper yet: m1's agent becomes it.
    fn keeping() -> Rig {
        Rig::with_keeper(false)
    }

    fn with_keeper(other_keeps: bool) -> Rig {
        let agent = Agent::new(common::config("m1", 1, Default::default()));
        let mut rig = Rig {
            agent,
            now: 1_000_000,
            nodes: BTreeMap::new(),
            zxid: 10,
            data_watches: BTreeSet::new(),
            child_watches: BTreeSet::new(),
            requests: Vec::new(),
            running: BTreeSet::new(),
            hold: None,
            held: Vec::new(),
        };
        for path in paths::NAMESPACE {
            rig.nodes.insert(path.to_string(), Vec::new());
        }
        // Another machine's agent keeps the index (see core/tests/keeper.rs): m1 follows.
        if other_keeps {
            rig.nodes.insert(paths::KEEPER.to_string(), b"m9".to_vec());
        }
        for (service, machine) in [("a", "m1"), ("b", "m2")] {
            for (path, data) in [
                (paths::service(service), ""),
                (paths::service_settings(service), SERVE),
                (
                    paths::service_machines(service),
                    &format!("[\"{machine}\"]"),
                ),
                (paths::service_state_dir(service), ""),
                (paths::service_tasks(service), ""),
                (paths::assignments(machine), ""),
                (paths::assignment(machine, service), ""),
            ] {
                rig.nodes.insert(path, data.as_bytes().to_vec());
            }
        }
        rig.feed(Input::Session(SessionEvent::Connected {
            session: SessionId(1),
            timeout: Duration::from_secs(4),
        }));
        rig
    }

    /// Feeds an input and answers everything it causes, until the agent asks nothing more.
    fn feed(&mut self, input: Input) {
        self.feed_all(vec![input]);
    }

    /// Feeds inputs that arrive together (before any reply to what they cause), then
    /// answers everything they cause.
    fn feed_all(&mut self, inputs: Vec<Input>) {
        // Taken from the back, replies put in front: first in, first out.
        let mut queue: Vec<Input> = inputs.into_iter().rev().collect();
        while let Some(input) = queue.pop() {
            self.now += 1;
            self.agent.handle(Timestamp::from_millis(self.now), input);
            self.agent
                .audit()
                .expect("the agent's bookkeeping is exact");
            for action in self.agent.drain_actions() {
                match action {
                    Action::Zk { id, op } => {
                        let reply = self.answer(&op);
                        let late = self.hold.as_deref() == Some(op.path());
                        self.requests.push(op);
                        if late {
                            self.held.push(Input::Reply { id, reply });
                        } else {
                            queue.insert(0, Input::Reply { id, reply });
                        }
                    }
                    Action::Spawn {
                        service,
                        generation,
                        ..
                    } => {
                        self.running.insert((service.clone(), generation));
                        queue.insert(
                            0,
                            Input::Spawned {
                                service,
                                generation,
                                pid: 100 + generation as u32,
                            },
                        );
                    }
                    Action::Stop {
                        service,
                        generation,
                        ..
                    } => {
                        self.running.remove(&(service.clone(), generation));
                        queue.insert(
                            0,
                            Input::Exited {
                                service,
                                generation,
                                status: ExitStatus {
                                    code: None,
                                    signal: Some(15),
                                },
                            },
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    fn answer(&mut self, op: &ZkOp) -> ZkReply {
        let stat = NodeStat {
            version: 0,
            ephemeral_owner: 0,
            mzxid: self.zxid,
            pzxid: self.zxid,
        };
        match op {
            ZkOp::GetData { path, watch } => match self.nodes.get(path) {
                Some(data) => {
                    if *watch {
                        self.data_watches.insert(path.clone());
                    }
                    ZkReply::Data {
                        data: data.clone(),
                        stat,
                    }
                }
                None => ZkReply::Error(ZkError::NoNode),
            },
            ZkOp::GetChildren { path, watch } => {
                if !self.nodes.contains_key(path) {
                    return ZkReply::Error(ZkError::NoNode);
                }
                if *watch {
                    self.child_watches.insert(path.clone());
                }
                ZkReply::Children {
                    names: self.children(path),
                    stat,
                }
            }
            ZkOp::Create { path, data, .. } => {
                let parent = paths::parent(path).unwrap_or("/");
                if parent != "/" && !self.nodes.contains_key(parent) {
                    return ZkReply::Error(ZkError::NoNode);
                }
                if self.nodes.contains_key(path) {
                    return ZkReply::Error(ZkError::NodeExists);
                }
                self.nodes.insert(path.clone(), data.clone());
                ZkReply::Created
            }
            ZkOp::SetData { path, data, .. } => {
                self.nodes.insert(path.clone(), data.clone());
                ZkReply::Set { stat }
            }
            ZkOp::Delete { path, .. } => {
                self.nodes.remove(path);
                ZkReply::Deleted
            }
            ZkOp::Multi { .. } | ZkOp::SetAcl { .. } | ZkOp::Check { .. } => {
                ZkReply::Error(ZkError::Other("not from an agent".into()))
            }
            // As a server before 3.6: the agent watches each pid node itself.
            ZkOp::WatchTree { .. } => ZkReply::Error(ZkError::Other("unimplemented".into())),
        }
    }

    fn children(&self, path: &str) -> Vec<String> {
        let prefix = format!("{path}/");
        self.nodes
            .keys()
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_string)
            .collect()
    }

    /// Writes (`None`: deletes) a node as another client would; the agent hears of it
    /// only through a watch it holds.
    fn put(&mut self, path: &str, data: Option<&str>) {
        self.zxid += 1;
        let existed = self.nodes.contains_key(path);
        match data {
            Some(data) => self
                .nodes
                .insert(path.to_string(), data.as_bytes().to_vec()),
            None => self.nodes.remove(path),
        };
        let exists = self.nodes.contains_key(path);
        if self.data_watches.remove(path) {
            let kind = if exists {
                WatchKind::DataChanged
            } else {
                WatchKind::Deleted
            };
            self.watch(path, kind);
        }
        let parent = paths::parent(path).unwrap_or("/").to_string();
        if existed != exists && self.child_watches.remove(&parent) {
            self.watch(&parent, WatchKind::ChildrenChanged);
        }
    }

    /// Writes several nodes in one transaction (a plan's multi), then fires the
    /// watches the writes hit, in order, all before any reply (as the server sends
    /// a transaction's notifications before it answers a later read).
    fn put_together(&mut self, writes: &[(&str, &str)]) {
        self.zxid += 1;
        let mut fired = Vec::new();
        for (path, data) in writes {
            let existed = self
                .nodes
                .insert(path.to_string(), data.as_bytes().to_vec())
                .is_some();
            if self.data_watches.remove(*path) {
                fired.push((path.to_string(), WatchKind::DataChanged));
            }
            let parent = paths::parent(path).unwrap_or("/").to_string();
            if !existed && self.child_watches.remove(&parent) {
                fired.push((parent, WatchKind::ChildrenChanged));
            }
        }
        let events = fired
            .into_iter()
            .map(|(path, kind)| Input::Watch(WatchEvent { path, kind }))
            .collect();
        self.feed_all(events);
    }

    /// The agent created `path` itself (`answer` fires no watch): the child watch on
    /// its parent fires, if one is held.
    fn created(&mut self, path: &str) {
        let parent = paths::parent(path).unwrap_or("/").to_string();
        assert!(self.nodes.contains_key(path), "{path} was created");
        if self.child_watches.remove(&parent) {
            self.watch(&parent, WatchKind::ChildrenChanged);
        }
    }

    fn watch(&mut self, path: &str, kind: WatchKind) {
        self.feed(Input::Watch(WatchEvent {
            path: path.to_string(),
            kind,
        }));
    }

    /// Delivers the replies held back, in order, and holds no more.
    fn release(&mut self) {
        self.hold = None;
        for reply in std::mem::take(&mut self.held) {
            self.feed(reply);
        }
    }

    /// Every request since the last call.
    fn take(&mut self) -> Vec<ZkOp> {
        std::mem::take(&mut self.requests)
    }

    /// The watches the agent holds in ZooKeeper.
    fn watches(&self) -> BTreeSet<String> {
        self.data_watches
            .iter()
            .chain(&self.child_watches)
            .cloned()
            .collect()
    }

    fn runs(&self, service: &str) -> bool {
        self.running.iter().any(|(s, _)| s == service)
    }
}

/// The requests about `service`'s nodes.
fn about(requests: &[ZkOp], service: &str) -> Vec<String> {
    let prefix = format!("{}/", paths::service(service));
    requests
        .iter()
        .map(ZkOp::path)
        .filter(|p| p.starts_with(&prefix) || *p == paths::service(service))
        .map(str::to_string)
        .collect()
}

/// How many of `requests` (paths, as from `about`) are about `path`.
fn reads_of(requests: &[String], path: &str) -> usize {
    requests.iter().filter(|p| *p == path).count()
}

#[test]
fn an_agent_reads_and_watches_only_its_index_and_the_services_in_it() {
    let mut rig = Rig::new();
    let requests = rig.take();
    assert!(rig.runs("a"));
    assert!(about(&requests, "b").is_empty(), "{requests:?}");
    assert!(
        requests.iter().all(|op| op.path() != paths::SERVICES),
        "never the whole service list: {requests:?}"
    );
    let own: BTreeSet<String> = [
        paths::assignments("m1"),
        paths::service_machines("a"),
        paths::service_settings("a"),
        paths::service_tasks("a"),
        // Who keeps the index (a read whose watch says when the keeper goes).
        paths::KEEPER.to_string(),
        // Its own ephemerals.
        paths::agent("m1"),
        paths::machine_service("m1", "a"),
        paths::service_state("a", "m1"),
    ]
    .into_iter()
    .collect();
    let watches = rig.watches();
    assert!(watches.is_subset(&own), "{watches:?}");
    assert!(watches.contains(&paths::assignments("m1")));
}

#[test]
fn a_settings_change_of_a_service_not_deployed_here_causes_no_read() {
    let mut rig = Rig::new();
    rig.take();
    rig.put(
        &paths::service_settings("b"),
        Some(r#"{"type":"command","command":"serve --other"}"#),
    );
    rig.put(&paths::service_machines("b"), Some(r#"["m2","m3"]"#));
    assert_eq!(rig.take(), Vec::new());
    // Not even a watch event for it (one left from before) makes it read.
    rig.watch(&paths::service_settings("b"), WatchKind::DataChanged);
    assert_eq!(rig.take(), Vec::new());
}

#[test]
fn a_service_deployed_here_is_read_once_its_entry_appears() {
    let mut rig = Rig::new();
    rig.take();
    // `pop deploy b --machine m1`: the list and the entry in one multi.
    rig.put(&paths::service_machines("b"), Some(r#"["m1","m2"]"#));
    rig.put(&paths::assignment("m1", "b"), Some(""));
    assert!(rig.runs("b"));
    let requests = rig.take();
    let reads = about(&requests, "b");
    assert!(reads.contains(&paths::service_machines("b")), "{reads:?}");
    assert!(reads.contains(&paths::service_settings("b")), "{reads:?}");
}

#[test]
fn on_the_keepers_machine_a_service_new_in_the_index_takes_the_list_the_keeper_read() {
    let mut rig = Rig::keeping();
    assert!(rig.agent.is_keeper());
    assert!(rig.runs("a"));
    rig.take();
    // A list written by a client that bypasses pop's plans (as pop-bench does): the
    // keeper reads it on its watch and makes the entry, and the agent's index watch fires.
    rig.put(&paths::service_machines("b"), Some(r#"["m1","m2"]"#));
    rig.created(&paths::assignment("m1", "b"));
    assert!(rig.runs("b"));
    let reads = about(&rig.take(), "b");
    let list_reads = reads_of(&reads, &paths::service_machines("b"));
    assert_eq!(
        list_reads, 1,
        "the keeper's read, not the agent's too: {reads:?}"
    );
    assert!(reads.contains(&paths::service_settings("b")), "{reads:?}");
    // The watch that read set is the agent's too: a change is read and followed.
    rig.put(&paths::service_machines("b"), Some(r#"["m2"]"#));
    assert!(!rig.runs("b"), "undeployed from m1 by a list change alone");
}

#[test]
fn on_the_keepers_machine_a_deploy_costs_the_keepers_read_of_the_list_and_nothing_more() {
    let mut rig = Rig::keeping();
    assert!(rig.agent.is_keeper());
    rig.take();
    // `pop deploy` writes the list and the entry in one multi: the list's watch fires
    // first, and the keeper's read of it is answered after the agent has read its index
    // (as in a burst of deploys, whose reads queue behind one another).
    rig.hold = Some(paths::service_machines("b"));
    rig.put(&paths::service_machines("b"), Some(r#"["m1","m2"]"#));
    rig.put(&paths::assignment("m1", "b"), Some(""));
    assert!(!rig.runs("b"), "its list is not read yet");
    rig.release();
    assert!(rig.runs("b"));
    let requests = rig.take();
    let entry = paths::assignment("m1", "b");
    assert!(
        !requests.iter().any(|op| op.path() == entry),
        "the keeper learns the entry from the agent's read of its index, not by a \
         create that finds it: {requests:?}"
    );
    let reads = about(&requests, "b");
    let list_reads = reads_of(&reads, &paths::service_machines("b"));
    assert_eq!(
        list_reads, 1,
        "the keeper's read, not the agent's too: {reads:?}"
    );
    // The watch that read set is the agent's too: a change is read and followed.
    rig.put(&paths::service_machines("b"), Some(r#"["m2"]"#));
    assert!(!rig.runs("b"), "undeployed from m1 by a list change alone");
}

#[test]
fn on_the_keepers_machine_an_entry_written_with_its_list_waits_for_the_agents_read_of_the_index() {
    let mut rig = Rig::keeping();
    rig.take();
    // `pop deploy`'s multi; the agent's read of its index is answered after the
    // keeper's read of the list, which says the entry is wanted.
    rig.hold = Some(paths::assignments("m1"));
    rig.put_together(&[
        (&paths::service_machines("b"), r#"["m1","m2"]"#),
        (&paths::assignment("m1", "b"), ""),
    ]);
    rig.release();
    assert!(rig.runs("b"));
    let entry = paths::assignment("m1", "b");
    let requests = rig.take();
    assert!(
        !requests.iter().any(|op| op.path() == entry),
        "no create that finds the entry: {requests:?}"
    );
}

#[test]
fn on_the_keepers_machine_a_list_written_without_its_entry_gets_the_entry_from_the_keeper() {
    let mut rig = Rig::keeping();
    rig.take();
    // A hand edit: the list alone. The machine's index did not change, so the keeper
    // does not wait for a read of it.
    rig.put(&paths::service_machines("b"), Some(r#"["m1","m2"]"#));
    let entry = paths::assignment("m1", "b");
    assert!(rig.nodes.contains_key(&entry), "made by the keeper");
    assert!(
        rig.take()
            .iter()
            .any(|op| matches!(op, ZkOp::Create { path, .. } if *path == entry)),
        "by the keeper's create"
    );
}

#[test]
fn a_service_waiting_for_the_keepers_read_takes_the_keepers_next_read_when_that_one_fails() {
    let mut rig = Rig::keeping();
    rig.take();
    rig.hold = Some(paths::service_machines("b"));
    rig.put(&paths::service_machines("b"), Some(r#"["m1","m2"]"#));
    rig.put(&paths::assignment("m1", "b"), Some(""));
    // The keeper's read is answered with a lost connection: it is sent again on the
    // retry timer (and the agent reads too: the failed read took the session's watch).
    rig.hold = None;
    for input in std::mem::take(&mut rig.held) {
        let Input::Reply { id, .. } = input else {
            unreachable!("only replies are held")
        };
        rig.feed(Input::Reply {
            id,
            reply: ZkReply::Error(ZkError::ConnectionLoss),
        });
    }
    assert!(!rig.runs("b"));
    let retry = rig.agent.poll_timeout().expect("a retry");
    rig.now = retry.as_millis();
    rig.feed(Input::Tick);
    assert!(rig.runs("b"), "not left waiting");
}

#[test]
fn a_service_waiting_for_the_keepers_read_reads_the_list_itself_when_the_keeper_cannot_use_it() {
    let mut rig = Rig::keeping();
    rig.take();
    rig.hold = Some(paths::service_machines("b"));
    // An id that is no machine id: the keeper's view of the list is not one the agent
    // can take, so the agent reads (and judges) the list itself.
    rig.put(
        &paths::service_machines("b"),
        Some(r#"["m1","no such/id"]"#),
    );
    rig.put(&paths::assignment("m1", "b"), Some(""));
    rig.release();
    let reads = about(&rig.take(), "b");
    let list_reads = reads_of(&reads, &paths::service_machines("b"));
    assert_eq!(list_reads, 2, "the keeper's and the agent's: {reads:?}");
}

#[test]
fn an_undeployed_service_is_stopped_confirmed_once_and_forgotten() {
    let mut rig = Rig::new();
    rig.take();
    // `pop undeploy a --machine m1`.
    rig.put(&paths::service_machines("a"), Some("[]"));
    rig.put(&paths::assignment("m1", "a"), None);
    assert!(!rig.runs("a"));
    assert!(!rig.agent.service_phases().contains_key("a"), "forgotten");
    rig.take();
    // Watches on it are still held in ZooKeeper (there is no taking one back): each
    // fires once more, and nothing is read or watched again.
    rig.put(
        &paths::service_settings("a"),
        Some(r#"{"type":"command","command":"serve --new"}"#),
    );
    rig.put(&paths::service_machines("a"), Some(r#"["m2"]"#));
    rig.put(&paths::task("a", "t1"), Some("{}"));
    assert_eq!(about(&rig.take(), "a"), Vec::<String>::new());
    let watches = rig.watches();
    assert!(
        !watches.iter().any(|w| w.starts_with("/services/a")),
        "{watches:?}"
    );
}

#[test]
fn a_removed_service_is_stopped_and_forgotten() {
    let mut rig = Rig::new();
    rig.take();
    // `pop remove a --force`: list, settings and entry in one multi, then the rest.
    rig.put(&paths::service_machines("a"), None);
    rig.put(&paths::service_settings("a"), None);
    rig.put(&paths::assignment("m1", "a"), None);
    assert!(!rig.runs("a"));
    assert!(!rig.agent.service_phases().contains_key("a"));
    assert!(
        rig.agent.problems().is_empty(),
        "{:?}",
        rig.agent.problems()
    );
}

#[test]
fn a_list_naming_this_machine_without_its_entry_keeps_it_running_and_makes_the_entry() {
    let mut rig = Rig::new();
    rig.take();
    // The entry deleted behind pop's back; the list still names m1.
    rig.put(&paths::assignment("m1", "a"), None);
    assert!(rig.runs("a"));
    let requests = rig.take();
    assert!(
        requests.contains(&ZkOp::GetData {
            path: paths::service_machines("a"),
            watch: false,
        }),
        "its list is read once more: {requests:?}"
    );
    assert!(rig.nodes.contains_key(&paths::assignment("m1", "a")));
    // Followed as before: a settings change restarts it.
    rig.put(
        &paths::service_settings("a"),
        Some(r#"{"type":"command","command":"serve --new"}"#),
    );
    assert!(
        rig.running.contains(&("a".to_string(), 2)),
        "{:?}",
        rig.running
    );
}

#[test]
fn a_bad_name_in_the_index_is_a_problem_and_nothing_is_read_for_it() {
    let mut rig = Rig::new();
    rig.take();
    rig.put(&paths::assignment("m1", "no such name"), Some(""));
    let requests = rig.take();
    assert!(
        requests
            .iter()
            .all(|op| !op.path().contains("no such name") || op.path() == paths::assignments("m1")),
        "{requests:?}"
    );
    let path = paths::assignment("m1", "no such name");
    assert!(
        rig.agent.problems().contains_key(&path),
        "{:?}",
        rig.agent.problems()
    );
    assert!(rig.runs("a"));
    rig.put(&path, None);
    assert!(
        !rig.agent.problems().contains_key(&path),
        "cleared when it goes"
    );
}

#[test]
fn a_missing_index_is_made_again_in_an_open_namespace() {
    let mut rig = Rig::new();
    rig.take();
    // Gone with its entries (by hand): what runs is confirmed by its list and kept, and
    // the index and the entry are made again.
    rig.put(&paths::assignment("m1", "a"), None);
    rig.put(&paths::assignments("m1"), None);
    rig.nodes.remove(&paths::assignments("m1"));
    rig.watch(&paths::assignments("m1"), WatchKind::Deleted);
    assert!(rig.runs("a"));
    assert!(rig.nodes.contains_key(&paths::assignments("m1")));
    assert!(rig.nodes.contains_key(&paths::assignment("m1", "a")));
}

#[test]
fn an_entry_made_again_over_a_missing_list_reads_the_list_again() {
    let mut rig = Rig::new();
    // An entry left behind (a removal of a list pop could not read): its list is missing.
    rig.nodes.remove(&paths::service_machines("b"));
    rig.put(&paths::assignment("m1", "b"), Some(""));
    assert!(!rig.runs("b"));
    rig.take();
    // `pop deploy b --machine m1` writes the list and makes the entry again, in one
    // multi: the index's watch fires once, and it lists b as before.
    rig.nodes
        .insert(paths::service_machines("b"), br#"["m1"]"#.to_vec());
    let index = paths::assignments("m1");
    assert!(rig.child_watches.remove(&index), "the index is watched");
    rig.watch(&index, WatchKind::ChildrenChanged);
    assert!(rig.runs("b"));
}
