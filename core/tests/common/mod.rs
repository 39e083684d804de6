//! What the core's integration tests share: the configuration of a test agent, and
//! feeding it inputs and replies. Each test binary uses a part of it.
#![allow(dead_code)]

use pop_core::access::AgentAccess;
use pop_core::backoff::Backoff;
use pop_core::event::{Action, Input};
use pop_core::names::MachineId;
use pop_core::zk::{NodeStat, RequestId, ZkOp, ZkReply};
use pop_core::{Agent, AgentConfig, Timestamp};

/// An agent on `machine` with fixed, harmless host details, `seed` for its draws and
/// `access` for its own nodes.
pub fn config(machine: &str, seed: u64, access: AgentAccess) -> AgentConfig {
    AgentConfig {
        access,
        machine: MachineId::new(machine).expect("machine id"),
        hostname: "h".into(),
        agent_pid: 1,
        version: "t".into(),
        containment: "none".into(),
        seed,
        backoff: Backoff::default(),
        pop: "/usr/bin/pop".into(),
        state_dir: "/var/lib/pop".into(),
    }
}

/// Hands `input` to the agent at `at` ms and returns what it does.
pub fn feed(agent: &mut Agent, at: u64, input: Input) -> Vec<Action> {
    agent.handle(Timestamp::from_millis(at), input);
    agent.drain_actions()
}

/// The request reading `path`, if one is sent.
pub fn find_read(actions: &[Action], path: &str) -> Option<RequestId> {
    actions.iter().find_map(|a| match a {
        Action::Zk {
            id,
            op: ZkOp::GetData { path: p, .. } | ZkOp::GetChildren { path: p, .. },
        } if p == path => Some(*id),
        _ => None,
    })
}

pub fn read_of(actions: &[Action], path: &str) -> RequestId {
    find_read(actions, path).unwrap_or_else(|| panic!("{path} is not read: {actions:?}"))
}

pub fn data(id: RequestId, text: &str, zxid: i64) -> Input {
    let stat = NodeStat {
        mzxid: zxid,
        ..NodeStat::default()
    };
    Input::Reply {
        id,
        reply: ZkReply::Data {
            data: text.as_bytes().to_vec(),
            stat,
        },
    }
}

pub fn children(id: RequestId, names: &[&str], zxid: i64) -> Input {
    let stat = NodeStat {
        pzxid: zxid,
        ..NodeStat::default()
    };
    Input::Reply {
        id,
        reply: ZkReply::Children {
            names: names.iter().map(|n| n.to_string()).collect(),
            stat,
        },
    }
}
