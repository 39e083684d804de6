//! Building a service's Python environment with one local wheel (made here, installed
//! from its path: no network), with pop's own builder (`pop_io::environment`), once
//! with uv and once with `python3 -m venv` + pip. Each build is a first build: a fresh
//! state directory, so uv's cache is empty too. uv is installed from PyPI into
//! `target/tools/uv` when missing (as the tests do); without it only venv + pip is shown.

use crate::measure::Summary;
use crate::Env;
use anyhow::{anyhow, Result};
use pop_core::environment::EnvironmentSpec;
use pop_io::environment::Installer;
use pop_tests::python::{install_uv, wheel, BuildRig};
use std::time::Instant;

pub fn run(env: &Env, builds: Option<usize>) -> Result<()> {
    let builds = builds.unwrap_or(if env.quick { 1 } else { 5 });
    println!("## Python environment built with one local wheel ({builds} builds each)\n");
    // Programs of our own run before any builder exists: its supervisor reaps every
    // child of this process.
    // Offline: the wheel's path is all either installer may use. Set before any thread
    // of ours reads the environment (the builders start below).
    std::env::set_var("PIP_NO_INDEX", "1");
    std::env::set_var("UV_OFFLINE", "1");
    let wheels = tempfile::tempdir()?;
    let wheel = wheel(wheels.path(), "bench_greet", "1.0", "WORD = 'hello'\n");
    let uv = install_uv();
    let spec = EnvironmentSpec {
        python: "python3".into(),
        packages: vec![wheel.to_string_lossy().into_owned()],
    };
    println!("| installer | build (venv created, wheel installed) p50 / p90 / p99 / max |");
    println!("|---|---|");
    let mut installers = vec![("venv + pip".to_string(), Installer::Venv)];
    match uv {
        Ok(path) => installers.insert(0, ("uv".to_string(), Installer::Uv(path))),
        Err(why) => println!("| uv | not run: {why} |"),
    }
    for (name, installer) in installers {
        let mut samples = Vec::with_capacity(builds);
        for _ in 0..builds {
            let mut rig = BuildRig::new(installer.clone());
            let started = Instant::now();
            rig.build("bench", &spec)
                .map_err(|e| anyhow!("building with {name}: {e}"))?;
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let summary = Summary::of(&samples).map_or("—".to_string(), |s| s.to_string());
        println!("| {name} | {summary} |");
    }
    println!();
    Ok(())
}
