//! pop's production drivers: the ZooKeeper client, process supervision and the tokio
//! event loop that feeds `pop_core::Agent` and carries out its actions.

pub mod clock;
pub mod credential;
pub mod driver;
pub mod environment;
pub mod journal;
pub mod machine_id;
pub mod state_dir;
pub mod supervise;
pub mod tasks;
pub mod tls;
pub mod zk;
