//! Test tooling for pop's core, outside the product: a [`Checker`] that feeds the real
//! `pop_core::Agent` inputs and judges every action against a model of the world built
//! from those inputs alone, and the bodies of the cargo-fuzz targets in `fuzz/`.
//!
//! The fuzz bodies ([`targets`]) are library functions so the core's tests replay the
//! committed corpora ([`corpus`]) through them on stable Rust. Nothing here is linked into
//! `pop`: this crate uses only pop-core's public API.

mod checker;
pub mod corpus;
mod steps;
pub mod targets;
mod world;

pub use checker::{check_inputs, check_steps, Checker, Summary, Violation};
pub use steps::{Step, TimedStep};
pub use world::config;
