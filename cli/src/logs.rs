//! `pop logs`: a service's output on this machine, from the agent's rotated log files.

use crate::context;
use crate::Cli;
use anyhow::{bail, Context, Result};
use pop_core::names::ServiceName;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> &str {
    if lines == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.bytes().enumerate().rev() {
        if b == b'\n' {
            seen += 1;
            if seen == lines {
                return &text[i + 1..];
            }
        }
    }
    text
}

pub fn show(cli: &Cli, service: &str, follow: bool, lines: usize) -> Result<()> {
    let name = ServiceName::new(service)?;
    let state_dir = context::state_dir(cli)?;
    let path = pop_io::supervise::log_path(&state_dir, name.as_str());
    if !path.exists() {
        bail!(
            "no log for {name} on this machine ({} does not exist; has it run here?)",
            path.display()
        );
    }
    let mut file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut text = String::new();
    let mut raw = Vec::new();
    file.read_to_end(&mut raw)?;
    text.push_str(&String::from_utf8_lossy(&raw));
    let mut out = std::io::stdout();
    out.write_all(tail(&text, lines).as_bytes())?;
    out.flush()?;
    if !follow {
        return Ok(());
    }
    let mut pos = raw.len() as u64;
    let mut inode = file.metadata()?.ino();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        // Rotated: continue with the new file from its start.
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.ino() != inode || meta.len() < pos {
                file = File::open(&path)?;
                inode = meta.ino();
                pos = 0;
            }
        }
        file.seek(SeekFrom::Start(pos))?;
        let mut chunk = Vec::new();
        file.read_to_end(&mut chunk)?;
        if !chunk.is_empty() {
            pos += chunk.len() as u64;
            out.write_all(&chunk)?;
            out.flush()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_takes_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc", 1), "c");
        assert_eq!(tail("a\n", 0), "");
    }
}
