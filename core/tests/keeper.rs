//! The keeper inside the agent: it shares the session's watches with the agent's own
//! reads (one watch per path, one event for both), and an ACL that keeps a machine out of
//! the election is reported, not the end of the agent.

mod common;

use pop_core::access::AgentAccess;
use pop_core::event::{Action, Input, Report};
use pop_core::zk::{
    NodeStat, RequestId, SessionEvent, SessionId, WatchEvent, WatchKind, ZkError, ZkOp, ZkReply,
};
use pop_core::{Agent, Timestamp};
use std::time::Duration;

fn agent(access: AgentAccess) -> Agent {
    Agent::new(common::config("m1", 1, access))
}

fn feed(agent: &mut Agent, at: u64, input: Input) -> Vec<Action> {
    agent.handle(Timestamp::from_millis(at), input);
    agent.drain_actions()
}

fn connect(agent: &mut Agent) -> Vec<Action> {
    let connected = SessionEvent::Connected {
        session: SessionId(1),
        timeout: Duration::from_secs(4),
    };
    feed(agent, 1000, Input::Session(connected))
}

/// The requests among `actions` about `path`: (id, op).
fn requests<'a>(actions: &'a [Action], path: &str) -> Vec<(RequestId, &'a ZkOp)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Zk { id, op } if op.path() == path => Some((*id, op)),
            _ => None,
        })
        .collect()
}

fn watched(op: &ZkOp) -> bool {
    matches!(
        op,
        ZkOp::GetData { watch: true, .. } | ZkOp::GetChildren { watch: true, .. }
    )
}

fn reply(id: RequestId, reply: ZkReply) -> Input {
    Input::Reply { id, reply }
}

fn children(names: &[&str]) -> ZkReply {
    ZkReply::Children {
        names: names.iter().map(|n| n.to_string()).collect(),
        stat: NodeStat::default(),
    }
}

/// An agent that has just won the election, its index read still out: the agent, that
/// read's id, and what winning made it do.
fn elected() -> (Agent, RequestId, Vec<Action>) {
    let mut a = agent(AgentAccess::Open);
    let start = connect(&mut a);
    let (claim, _) = requests(&start, "/pop/keeper")[0];
    let (index, _) = requests(&start, "/assignments/m1")
        .into_iter()
        .find(|(_, op)| matches!(op, ZkOp::GetChildren { .. }))
        .expect("the agent reads its index");
    let elected = feed(&mut a, 1001, reply(claim, ZkReply::Created));
    (a, index, elected)
}

/// An agent that won the election and read `/services` = [s1], `/assignments` = [], and
/// its own index = [s1] (s1 is deployed here, so the agent reads its list too).
fn keeper() -> (Agent, Vec<Action>) {
    let (mut a, index, elected) = elected();
    assert!(a.is_keeper());
    let mut actions = feed(&mut a, 1002, reply(index, children(&["s1"])));
    for (id, _) in requests(&elected, "/services") {
        actions.extend(feed(&mut a, 1003, reply(id, children(&["s1"]))));
    }
    for (id, _) in requests(&elected, "/assignments") {
        actions.extend(feed(&mut a, 1003, reply(id, children(&[]))));
    }
    (a, actions)
}

#[test]
fn the_keeper_and_the_agent_set_one_watch_per_path_between_them() {
    let mut a = agent(AgentAccess::Open);
    let start = connect(&mut a);
    let (claim, op) = requests(&start, "/pop/keeper")[0];
    assert!(matches!(op, ZkOp::Create { .. }), "{op:?}");
    // The agent alone never lists every service; the keeper does, with a watch.
    assert!(requests(&start, "/services").is_empty(), "{start:?}");
    let elected = feed(&mut a, 1001, reply(claim, ZkReply::Created));
    let services: Vec<bool> = requests(&elected, "/services")
        .into_iter()
        .map(|(_, op)| watched(op))
        .collect();
    assert_eq!(services, vec![true], "the keeper's read set the watch");

    let (mut a, actions) = keeper();
    let lists = requests(&actions, "/services/s1/machines");
    assert_eq!(
        lists.len(),
        2,
        "the agent's read and the keeper's: {actions:?}"
    );
    assert_eq!(lists.iter().filter(|(_, op)| watched(op)).count(), 1);
    for (id, _) in lists {
        let data = ZkReply::Data {
            data: br#"["m1"]"#.to_vec(),
            stat: NodeStat::default(),
        };
        feed(&mut a, 1005, reply(id, data));
    }
    // The list changes: one event, read again by both, with one watch between them.
    let event = Input::Watch(WatchEvent {
        path: "/services/s1/machines".into(),
        kind: WatchKind::DataChanged,
    });
    let again = feed(&mut a, 1010, event);
    let lists = requests(&again, "/services/s1/machines");
    assert_eq!(lists.len(), 2, "{again:?}");
    assert_eq!(lists.iter().filter(|(_, op)| watched(op)).count(), 1);
}

#[test]
fn a_list_the_keeper_reads_naming_a_machine_without_an_entry_gets_one() {
    let (mut a, actions) = keeper();
    let mut writes = Vec::new();
    for (id, _) in requests(&actions, "/services/s1/machines") {
        let data = ZkReply::Data {
            data: br#"["m2"]"#.to_vec(),
            stat: NodeStat::default(),
        };
        writes.extend(feed(&mut a, 1020, reply(id, data)));
    }
    let dir = requests(&writes, "/assignments/m2");
    assert_eq!(dir.len(), 1, "{writes:?}");
    let made = feed(&mut a, 1021, reply(dir[0].0, ZkReply::Created));
    let entry = requests(&made, "/assignments/m2/s1");
    assert!(matches!(entry[..], [(_, ZkOp::Create { .. })]), "{made:?}");
}

#[test]
fn a_machine_an_acl_keeps_out_of_the_election_reports_it_and_keeps_running() {
    let access = AgentAccess::Secured {
        admin: "root:R=".into(),
        machine: "m1:M=".into(),
    };
    let mut a = agent(access);
    let start = connect(&mut a);
    let (claim, op) = requests(&start, "/pop/keeper")[0];
    assert!(
        matches!(op, ZkOp::Create { acl, .. } if acl.to_string() == "[root=all world:anyone=r]"),
        "{op:?}"
    );
    let actions = feed(&mut a, 1001, reply(claim, ZkReply::Error(ZkError::NoAuth)));
    assert!(!actions.contains(&Action::Exit), "{actions:?}");
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Report(Report::BadData { path, .. }) if path == "/pop/keeper"
        )),
        "{actions:?}"
    );
    assert!(a.problems().contains_key("/pop/keeper"));
}

/// An agent elected keeper that has read `/services` = [s1], `/assignments` = [m1],
/// `/assignments/m1` = [], its own index = [] and s1's list (naming m1, mzxid 5), and so
/// made s1's entry. Returns the agent and the id of its read of its
/// index after the entry's create fired its watch.
fn keeper_that_made_an_entry() -> (Agent, RequestId) {
    let (mut a, index, elected) = elected();
    let mut actions = Vec::new();
    for path in ["/services", "/assignments"] {
        for (id, _) in requests(&elected, path) {
            let names: &[&str] = if path == "/services" {
                &["s1"]
            } else {
                &["m1"]
            };
            actions.extend(feed(&mut a, 1002, reply(id, children(names))));
        }
    }
    for (id, _) in requests(&actions.clone(), "/assignments/m1") {
        actions.extend(feed(&mut a, 1003, reply(id, children(&[]))));
    }
    // The agent's own index, read before the entry: this machine's entries wait for
    // that read (it may show a plan's write), so it is answered first here.
    feed(&mut a, 1003, reply(index, children(&[])));
    let (list, op) = requests(&actions, "/services/s1/machines")[0];
    assert!(watched(op), "the keeper's read sets the watch: {op:?}");
    let made = feed(&mut a, 1004, common::data(list, r#"["m1"]"#, 5));
    let entry = requests(&made, "/assignments/m1/s1");
    assert!(matches!(entry[..], [(_, ZkOp::Create { .. })]), "{made:?}");
    // The entry fires the agent's index watch: it reads its index again.
    let changed = Input::Watch(WatchEvent {
        path: "/assignments/m1".into(),
        kind: WatchKind::ChildrenChanged,
    });
    let again = feed(&mut a, 1004, changed);
    let (index, _) = requests(&again, "/assignments/m1")[0];
    (a, index)
}

#[test]
fn a_service_new_in_the_index_takes_the_keepers_list_once_it_is_settled() {
    // Settled: the agent takes it, and reads only the settings.
    let (mut a, index) = keeper_that_made_an_entry();
    let followed = feed(&mut a, 1005, reply(index, children(&["s1"])));
    assert!(
        requests(&followed, "/services/s1/machines").is_empty(),
        "{followed:?}"
    );
    assert_eq!(requests(&followed, "/services/s1/settings").len(), 1);
    assert!(a.knows_deployed_here("s1"));

    // The list's watch fired after the keeper read it: what the keeper holds may be
    // old, and its read of the change is out. The agent waits for that read (a deploy
    // writes the list and the entry together) and takes it when it lands.
    let (mut a, index) = keeper_that_made_an_entry();
    let changed = Input::Watch(WatchEvent {
        path: "/services/s1/machines".into(),
        kind: WatchKind::DataChanged,
    });
    let again = feed(&mut a, 1005, changed);
    let keepers = requests(&again, "/services/s1/machines");
    assert_eq!(keepers.len(), 1, "the keeper's");
    let keepers = keepers[0].0;
    let followed = feed(&mut a, 1006, reply(index, children(&["s1"])));
    assert!(
        requests(&followed, "/services/s1/machines").is_empty(),
        "no read of its own: {followed:?}"
    );
    assert!(
        !a.knows_deployed_here("s1"),
        "nothing taken from the keeper yet"
    );
    let landed = feed(&mut a, 1007, common::data(keepers, r#"["m1","m2"]"#, 6));
    assert!(
        requests(&landed, "/services/s1/machines").is_empty(),
        "{landed:?}"
    );
    assert!(a.knows_deployed_here("s1"), "taken when it landed");
}
