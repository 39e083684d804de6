//! A deterministic simulator for pop: the real core against modelled ZooKeeper and
//! processes, on virtual time. Later issues add seeded fault schedules; for now it is the
//! harness for scenario tests of the core.

pub mod chaos;
pub mod world;
pub mod zk_model;

pub use world::World;
