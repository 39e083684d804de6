//! supervisord 4.x, the anchor: installed by pip into a throwaway virtual environment
//! (kept under `target/bench/` between runs), configured with one program per service,
//! all running the same stamp program as pop's services.

use anyhow::{anyhow, bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::measure::wait;

/// A virtual environment with supervisor installed.
pub struct Install {
    venv: PathBuf,
}

impl Install {
    /// Creates the environment under `cache` unless it exists already.
    pub fn ensure(cache: &Path) -> Result<Install> {
        let venv = cache.join("supervisor-venv");
        if venv.join("bin/supervisord").exists() {
            return Ok(Install { venv });
        }
        std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
        eprintln!("installing supervisor into {} ...", venv.display());
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "-q",
            "--disable-pip-version-check",
            "supervisor>=4.2,<5",
        ]))?;
        Ok(Install { venv })
    }

    pub fn version(&self) -> Result<String> {
        let out = Command::new(self.venv.join("bin/supervisord"))
            .arg("--version")
            .output()
            .context("running supervisord --version")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One program: its name and command line.
pub struct Program {
    pub name: String,
    pub argv: Vec<String>,
}

impl Program {
    /// One program per name, each the stamp service writing to `stamps` under its name:
    /// the service every benchmark runs.
    pub fn stamping(stamp_exe: &Path, stamps: &Path, names: &[String]) -> Vec<Program> {
        names
            .iter()
            .map(|n| Program {
                name: n.clone(),
                argv: vec![
                    stamp_exe.display().to_string(),
                    stamps.display().to_string(),
                    n.clone(),
                ],
            })
            .collect()
    }
}

/// A running supervisord, stopped (with its programs) when dropped.
pub struct Supervisord {
    child: Child,
    ctl: PathBuf,
    config: PathBuf,
}

impl Supervisord {
    /// Starts supervisord in the foreground with `programs`; with `autostart` they start
    /// with it, else `start_all` starts them.
    pub fn start(
        install: &Install,
        dir: &Path,
        programs: &[Program],
        autostart: bool,
    ) -> Result<Supervisord> {
        let config = dir.join("supervisord.conf");
        write_config(&config, dir, programs, autostart)?;
        let child = Command::new(install.venv.join("bin/supervisord"))
            .arg("-n")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting supervisord")?;
        let sup = Supervisord {
            child,
            ctl: install.venv.join("bin/supervisorctl"),
            config,
        };
        wait("supervisord to answer", Duration::from_secs(60), || {
            Ok(sup.ctl(&["pid"]).is_ok().then_some(()))
        })?;
        Ok(sup)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs supervisorctl with `args`; its output on success.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.ctl)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .context("running supervisorctl")?;
        if !out.status.success() {
            return Err(anyhow!(
                "supervisorctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Rewrites the configuration and applies it (`supervisorctl update`): changed
    /// programs restart.
    pub fn reconfigure(&self, dir: &Path, programs: &[Program]) -> Result<()> {
        write_config(&self.config, dir, programs, true)?;
        self.ctl(&["update"]).map(|_| ())
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        // SIGTERM: supervisord stops its programs, then exits.
        // SAFETY: kill with our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = wait("supervisord to exit", Duration::from_secs(60), || {
            Ok(self.child.try_wait()?.map(|_| ()))
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(path: &Path, dir: &Path, programs: &[Program], autostart: bool) -> Result<()> {
    let d = dir.display();
    let mut text = format!(
        "[supervisord]\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n\
         childlogdir={d}\nminfds=1024\nminprocs=200\n\n\
         [unix_http_server]\nfile={d}/supervisor.sock\n\n\
         [rpcinterface:supervisor]\n\
         supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
         [supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\n"
    );
    for p in programs {
        // startsecs=0: RUNNING at once, as pop publishes a portless service with
        // start_seconds=0; output discarded, as pop's goes to a file either way.
        let _ = write!(
            text,
            "[program:{}]\ncommand={}\nautostart={autostart}\nautorestart=true\nstartsecs=0\n\
             startretries=1000000\nstopsignal=KILL\nstdout_logfile=NONE\nstderr_logfile=NONE\n\n",
            p.name,
            p.argv.join(" ")
        );
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
