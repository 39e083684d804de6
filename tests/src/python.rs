//! Python for the tests of environments: tiny wheels made on the spot (no network), and
//! uv, installed once into a virtual environment under `target/tools/` from PyPI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

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
/// installed (`python3 -m venv` + `pip install uv`, from PyPI) when missing. `.ci/run`
/// installs it before the tests; a test that needs uv fails if it cannot be had.
pub fn uv() -> PathBuf {
    static INSTALLING: Mutex<()> = Mutex::new(());
    if let Some(path) = std::env::var_os("POP_TEST_UV") {
        return PathBuf::from(path);
    }
    let venv = tools_dir().join("uv");
    let uv = venv.join("bin").join("uv");
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if uv.is_file() {
        return uv;
    }
    std::fs::create_dir_all(tools_dir()).expect("creating target/tools");
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("running an installer");
        assert!(
            out.status.success(),
            "installing uv for the tests ({cmd:?}): {}\n(set POP_TEST_UV to a uv binary, or run .ci/run)",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        "uv",
    ]));
    assert!(
        uv.is_file(),
        "pip installed uv, but {} is missing",
        uv.display()
    );
    uv
}
