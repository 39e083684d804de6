//! A deterministic simulator for pop: the real core against modelled ZooKeeper and
//! processes, on virtual time ([`world`]), and the seeded chaos runner that schedules
//! faults and checks invariants over it ([`chaos`], `pop sim`).

pub mod chaos;
pub mod fleet;
pub mod invariants;
pub mod world;
pub mod zk_model;

pub use world::{tool_manifest, World, BROKEN_PACKAGE, TOOL};
