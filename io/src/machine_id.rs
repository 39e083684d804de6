//! Which machine this is: the hardware UUID when readable, else systemd's machine id.

use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("cannot tell this machine's id: neither /sys/class/dmi/id/product_uuid nor /etc/machine-id is readable; pass --machine-id or set POP_MACHINE_ID")]
pub struct NoMachineId;

fn read_id(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.trim().to_lowercase();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(id)
}

/// The machine id, from the override if given, else the hardware UUID, else /etc/machine-id.
pub fn detect(override_id: Option<&str>) -> Result<String, NoMachineId> {
    if let Some(id) = override_id {
        return Ok(id.to_string());
    }
    ["/sys/class/dmi/id/product_uuid", "/etc/machine-id"]
        .iter()
        .find_map(|p| read_id(Path::new(p)))
        .ok_or(NoMachineId)
}
