//! `pop` run by an unprivileged user computes the same machine id as `pop` run by root
//! (the agent), so a user's `pop deploy` lands on the machine the agent serves. The test
//! runs in a private mount namespace where the hardware UUID exists but, as on real
//! machines, only root may read it, and /etc/machine-id holds a known id.

use pop_tests::{initialised, pop_exe};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// Sets up the namespace, then deploys `svc-root` as root and `svc-user` as nobody, each
/// to "this machine".
const SCRIPT: &str = r#"
set -eu
mount -t tmpfs -o mode=755 none /sys/class
mkdir -p /sys/class/dmi/id
echo "$UUID" > /sys/class/dmi/id/product_uuid
chmod 0400 /sys/class/dmi/id/product_uuid
mount --bind "$MACHINE_ID_FILE" /etc/machine-id
# An operator's pin on the host would decide for both users; hide it.
if [ -d /etc/pop ]; then mount -t tmpfs none /etc/pop; fi
"$POP" --host "$HOSTS" deploy svc-root
HOME=/nonexistent setpriv --reuid=65534 --regid=65534 --clear-groups \
    "$POP" --host "$HOSTS" deploy svc-user
# An agent started as root where an older pop's agent ran under the hardware UUID (its
# default state directory is there) is warned; the state dir given makes it stop there.
mkdir -p "$LEGACY_STATE_HOME/pop/$UUID_AS_ID"
XDG_STATE_HOME="$LEGACY_STATE_HOME" "$POP" --host "$HOSTS" --state-dir /proc/no/such start \
    2> "$WARNING" || true
"#;

#[test]
fn an_unprivileged_user_gets_the_same_machine_id_as_root() {
    assert!(
        std::path::Path::new("/etc/machine-id").exists(),
        "this test replaces /etc/machine-id inside a mount namespace, so it must exist \
         (systemd's package creates it; .ci/run installs systemd)"
    );
    let (zk, m, zkc) = initialised();
    m.ok(&["add", "echo", "--name", "svc-root"]);
    m.ok(&["add", "echo", "--name", "svc-user"]);

    // A copy of pop that nobody may run, wherever the build directory is.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    let pop = dir.path().join("pop");
    std::fs::copy(pop_exe(), &pop).expect("copying pop");
    let machine_id = "0123456789abcdef0123456789abcdef";
    let machine_id_file = dir.path().join("machine-id");
    std::fs::write(&machine_id_file, format!("{machine_id}\n")).expect("machine-id file");
    std::fs::set_permissions(&machine_id_file, std::fs::Permissions::from_mode(0o444))
        .expect("chmod machine-id");

    let uuid = "4c4c4544-0042-3510-8052-b4c04f565931";
    let warning = dir.path().join("warning");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", SCRIPT])
        .env_remove("POP_MACHINE_ID")
        .env_remove("POP_HOST")
        .env_remove("POP_STATE_DIR")
        .env_remove("RUST_LOG")
        .env("UUID", "4C4C4544-0042-3510-8052-B4C04F565931")
        .env("UUID_AS_ID", uuid)
        .env("LEGACY_STATE_HOME", dir.path().join("state"))
        .env("WARNING", &warning)
        .env("MACHINE_ID_FILE", &machine_id_file)
        .env("POP", &pop)
        .env("HOSTS", zk.hosts())
        .output()
        .expect("running unshare (util-linux)");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );

    let deployed_to = |service: &str| {
        zkc.get_json(&format!("/services/{service}/machines"))
            .expect("machines node")
    };
    assert_eq!(
        deployed_to("svc-user"),
        deployed_to("svc-root"),
        "an unprivileged user's pop deploys to the same machine as root's"
    );
    assert_eq!(
        deployed_to("svc-root"),
        serde_json::json!([machine_id]),
        "pop uses /etc/machine-id"
    );
    let warning = std::fs::read_to_string(&warning).expect("pop start's stderr");
    assert!(
        warning.contains(&format!("known to pop as {uuid}"))
            && warning.contains(&format!("echo {uuid} > /etc/pop/machine-id")),
        "{warning}"
    );
    drop(m);
}
