//! Which machine this is. Every user on a machine must get the same id: `pop deploy` run
//! by a user and the agent run by root have to agree, or the deploy lands on a machine
//! no agent serves. So the id comes only from files everyone can read, in this order:
//! an operator's pin (`/etc/pop/machine-id`), systemd's `/etc/machine-id`, then D-Bus's
//! `/var/lib/dbus/machine-id`. The hardware UUID, which pop used to read first, is
//! readable by root only; it is still looked at, but only to warn an agent that the
//! machine used to be known by it (see [`hardware_uuid`]).

use std::path::Path;
use thiserror::Error;

/// Where an operator pins this machine's id for every user (world-readable).
pub const PINNED: &str = "/etc/pop/machine-id";

/// The world-readable sources, in order.
const SOURCES: [&str; 3] = [PINNED, "/etc/machine-id", "/var/lib/dbus/machine-id"];

/// Readable by root only, so never used as the id.
const HARDWARE_UUID: &str = "/sys/class/dmi/id/product_uuid";

#[derive(Debug, Error)]
#[error("cannot tell this machine's id: none of /etc/pop/machine-id, /etc/machine-id, /var/lib/dbus/machine-id is readable; pass --machine-id, set POP_MACHINE_ID, or write an id to /etc/pop/machine-id")]
pub struct NoMachineId;

/// An id from a file: trimmed, lower-cased, hex digits and dashes (a machine-id or UUID),
/// or for the pin any single line of letters, digits, `.`, `_` and `-`.
fn read_id(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.trim().to_lowercase();
    let valid = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    valid.then_some(id)
}

/// The machine id: the override if given, else the first readable world-readable source.
pub fn detect(override_id: Option<&str>) -> Result<String, NoMachineId> {
    detect_from(override_id, &SOURCES.map(Path::new))
}

fn detect_from(override_id: Option<&str>, sources: &[&Path]) -> Result<String, NoMachineId> {
    if let Some(id) = override_id {
        return Ok(id.to_string());
    }
    sources.iter().find_map(|p| read_id(p)).ok_or(NoMachineId)
}

/// The hardware UUID, when this process may read it (root): the id pop used to give a
/// machine when its agent ran as root, before ids had to agree across users.
pub fn hardware_uuid() -> Option<String> {
    read_id(Path::new(HARDWARE_UUID))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn the_override_wins_then_the_first_readable_source() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pin = dir.path().join("pin");
        let systemd = dir.path().join("machine-id");
        let dbus = dir.path().join("dbus");
        fs::write(&systemd, "3D1219C7C4C5404AAA1F6D2A48ADFDA4\n").expect("write");
        fs::write(&dbus, "ffff\n").expect("write");
        let sources = [pin.as_path(), systemd.as_path(), dbus.as_path()];
        assert_eq!(detect_from(Some("m1"), &sources).ok(), Some("m1".into()));
        assert_eq!(
            detect_from(None, &sources).ok(),
            Some("3d1219c7c4c5404aaa1f6d2a48adfda4".into())
        );
        fs::write(&pin, "web-01\n").expect("write");
        assert_eq!(detect_from(None, &sources).ok(), Some("web-01".into()));
        // An unreadable or garbled file is skipped.
        fs::write(&pin, "two words\n").expect("write");
        fs::remove_file(&systemd).expect("remove");
        assert_eq!(detect_from(None, &sources).ok(), Some("ffff".into()));
        fs::remove_file(&dbus).expect("remove");
        assert!(detect_from(None, &sources).is_err());
    }
}
