//! Python for the tests of environments: tiny wheels made on the spot (no network), uv,
//! installed once into a virtual environment under `target/tools/` from PyPI, and
//! [`BuildRig`], pop's environment builder on its own (for tests and `pop-bench env`).

use pop_core::environment::{env_dir, EnvironmentSpec};
use pop_core::event::Input;
use pop_io::environment::{EnvironmentBuilder, Installer};
use pop_io::supervise::{self, ContainmentChoice, Supervisor, SupervisorConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Makes a wheel holding the module `<name>.py` (with `source`) and its metadata, in
/// `dir`; returns its path. A wheel is a zip with `<name>-<version>.dist-info/` holding
/// METADATA, WHEEL and RECORD (with the files' hashes); Python's zipfile writes it.
pub fn wheel(dir: &Path, name: &str, version: &str, source: &str) -> PathBuf {
    const MAKE: &str = r#"
import base64, hashlib, sys, zipfile
out, name, version, source = sys.argv[1:5]
dist = f"{name}-{version}.dist-info"
files = {
    f"{name}.py": source,
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: pop-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(out, "w") as z:
    for path, text in files.items():
        data = text.encode()
        z.writestr(path, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
"#;
    std::fs::create_dir_all(dir).expect("a directory for the wheel");
    let path = dir.join(format!("{name}-{version}-py3-none-any.whl"));
    let out = Command::new("python3")
        .args(["-c", MAKE])
        .arg(&path)
        .args([name, version, source])
        .output()
        .expect("running python3 to make a wheel");
    assert!(
        out.status.success(),
        "making {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Where the tests keep tools they install: `<target>/tools`.
pub fn tools_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("tools")
}

/// The uv the tests use: `$POP_TEST_UV` if set, else `target/tools/uv/bin/uv`, which is
/// installed (`python3 -m venv` + `pip install uv`, from PyPI) when missing. A test that
/// needs uv fails if it cannot be had.
pub fn uv() -> PathBuf {
    install_uv().unwrap_or_else(|e| panic!("{e}"))
}

/// [`uv`], saying why not instead of failing.
pub fn install_uv() -> Result<PathBuf, String> {
    static INSTALLING: Mutex<()> = Mutex::new(());
    if let Some(path) = std::env::var_os("POP_TEST_UV") {
        return Ok(PathBuf::from(path));
    }
    let venv = tools_dir().join("uv");
    let uv = venv.join("bin").join("uv");
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if uv.is_file() {
        return Ok(uv);
    }
    std::fs::create_dir_all(tools_dir()).map_err(|e| format!("creating target/tools: {e}"))?;
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd
            .output()
            .map_err(|e| format!("installing uv ({cmd:?}): {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "installing uv ({cmd:?}): {}\n(set POP_TEST_UV to a uv binary)",
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        "uv",
    ]))?;
    if !uv.is_file() {
        return Err(format!("pip installed uv, but {} is missing", uv.display()));
    }
    Ok(uv)
}

/// pop's environment builder on its own, in a runtime of its own, with the supervisor
/// whose reaper its builds need, and a state directory of its own.
pub struct BuildRig {
    pub runtime: tokio::runtime::Runtime,
    pub builder: EnvironmentBuilder,
    pub events: UnboundedReceiver<Input>,
    _supervisor: Supervisor,
    pub machine: String,
    dir: tempfile::TempDir,
}

/// What a program run with [`BuildRig::output`] did.
pub struct Finished {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl BuildRig {
    pub fn new(installer: Installer) -> BuildRig {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::tempdir().expect("a state dir");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let n = N.fetch_add(1, Ordering::SeqCst);
        let machine = format!("envtest-{}-{n}", std::process::id());
        let (tx, events) = unbounded_channel();
        let (supervisor, builder) = runtime.block_on(async {
            let config =
                SupervisorConfig::new(&machine, dir.path(), ContainmentChoice::ProcessGroup);
            let supervisor = Supervisor::new(config, tx.clone()).expect("a supervisor");
            let builder =
                EnvironmentBuilder::new(dir.path().to_path_buf(), &machine, installer, tx);
            (supervisor, builder)
        });
        BuildRig {
            runtime,
            builder,
            events,
            _supervisor: supervisor,
            machine,
            dir,
        }
    }

    pub fn state(&self) -> &Path {
        self.dir.path()
    }

    /// Where the environment of `spec` for `service` is built.
    pub fn dir_of(&self, service: &str, spec: &EnvironmentSpec) -> PathBuf {
        self.state().join("env").join(service).join(spec.hash())
    }

    /// Asks for `spec` to be built for `service`, without waiting.
    pub fn start_build(&self, service: &str, spec: &EnvironmentSpec) {
        let state = self.state().to_string_lossy().into_owned();
        let dir = env_dir(&state, service, &spec.hash());
        let builder = self.builder.clone();
        let (service, spec) = (service.to_string(), spec.clone());
        self.runtime
            .block_on(async move { builder.build(&service, spec, &dir) });
    }

    /// Builds `spec` for `service` and waits (at most 5 minutes) for the outcome.
    pub fn build(&mut self, service: &str, spec: &EnvironmentSpec) -> Result<(), String> {
        self.start_build(service, spec);
        self.outcome_within(spec, Duration::from_secs(300))
    }

    /// The outcome of the build of `spec` reported within `limit`.
    pub fn outcome_within(
        &mut self,
        spec: &EnvironmentSpec,
        limit: Duration,
    ) -> Result<(), String> {
        let hash = spec.hash();
        let events = &mut self.events;
        self.runtime.block_on(async {
            let wait = async {
                while let Some(input) = events.recv().await {
                    if let Input::EnvironmentBuilt {
                        spec_hash, result, ..
                    } = input
                    {
                        if spec_hash == hash {
                            return result;
                        }
                    }
                }
                Err("no more events".to_string())
            };
            tokio::time::timeout(limit, wait)
                .await
                .unwrap_or_else(|_| Err(format!("no outcome within {limit:?}")))
        })
    }

    /// Runs `cmd` to its end. The supervisor's reaper collects every child of this
    /// process, so `Command::output` would find its child gone; this waits through it.
    pub fn output(&self, cmd: &mut Command) -> Finished {
        let out = tempfile::tempfile().expect("a file for stdout");
        let err = tempfile::tempfile().expect("a file for stderr");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("a handle"))
            .stderr(err.try_clone().expect("a handle"));
        let status = self.runtime.block_on(async {
            let (_pid, exited) = supervise::spawn_helper(cmd).expect("starting a program");
            exited.await.expect("its exit reported")
        });
        let read = |mut file: std::fs::File| {
            use std::io::{Read, Seek};
            let mut text = String::new();
            file.rewind().expect("rewinding");
            file.read_to_string(&mut text).expect("reading its output");
            text
        };
        Finished {
            success: status.success(),
            stdout: read(out),
            stderr: read(err),
        }
    }
}

/// A module answering every GET with `word` on the port the agent gives it.
pub fn server_wheel(dir: &Path, name: &str, version: &str, word: &str) -> PathBuf {
    let source = format!(
        r#"import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = {word:?}.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
if __name__ == "__main__":
    address = (os.environ["POP_HOST"], int(os.environ["POP_PORT"]))
    http.server.HTTPServer(address, Handler).serve_forever()
"#
    );
    wheel(dir, name, version, &source)
}

/// `m`'s agent, building environments offline with `installer` (`none`: venv + pip,
/// or uv's path).
pub fn offline_agent(m: &crate::Machine, installer: &str) -> crate::Agent {
    m.agent_env(&[
        ("POP_UV", installer),
        ("PIP_NO_INDEX", "1"),
        ("UV_OFFLINE", "1"),
    ])
}
