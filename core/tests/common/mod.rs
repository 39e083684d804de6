//! What the core's integration tests share: the configuration of a test agent.

use pop_core::access::AgentAccess;
use pop_core::backoff::Backoff;
use pop_core::names::MachineId;
use pop_core::AgentConfig;

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
