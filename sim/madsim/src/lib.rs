//! pop's production driver loop (`pop_io::driver::run_with`) under madsim: each
//! machine's agent is a madsim node running the real loop over simulated ports (a
//! ZooKeeper client over madsim's TCP to a ZooKeeper node, processes, a disk), so its
//! tokio code (timeouts, tasks, `select!`, the journal) runs on simulated time and
//! network and can be cut off, killed, crashed mid-write and restarted, deterministically
//! for a seed.
//!
//! Only built with `--cfg madsim` (see sim/madsim.sh); otherwise this crate is empty.
#![cfg(madsim)]

pub mod agent;
pub mod cluster;
pub mod contract;
pub mod digest;
pub mod disk;
pub mod invariants;
pub mod machine;
pub mod processes;
pub mod wire;
pub mod zk_client;
pub mod zk_server;
