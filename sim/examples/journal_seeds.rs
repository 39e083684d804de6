//! Writes agent journals from a simulated history into a directory, as seed inputs for
//! the `journal_reader` fuzz target: whole files, files starting with a snapshot, and
//! files cut mid-line. `cargo run -p pop-sim --example journal_seeds -- <dir>`

use pop_core::event::ExitStatus;
use pop_core::journal::Record;
use pop_core::paths;
use pop_core::Agent;
use pop_sim::World;
use std::path::PathBuf;
use std::time::Duration;

const JOB: &str = r#"{"type":"command","command":"serve","start_seconds":0.5}"#;
const WEB: &str = r#"{"type":"echo","port":0,"session_loss":"fence"}"#;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&dir)?;
    let mut w = World::new(&["m1"], 7);
    w.add_service("job", JOB, &["m1"]);
    w.add_service("web", WEB, &["m1"]);
    w.run_for(Duration::from_secs(3));
    w.crash(
        0,
        "job",
        ExitStatus {
            code: Some(1),
            signal: None,
        },
    );
    w.admin_put(&paths::service_settings("job"), b"{garbage");
    w.expire_session(0);
    w.run_for(Duration::from_secs(3));
    w.crash_agent(0);
    w.run_for(Duration::from_secs(3));
    let mut written = 0;
    for (i, journal) in w.machines[0].journals.iter().enumerate() {
        // Small files, as a fuzzer mutates short inputs best: the first record (start or
        // snapshot), then a few inputs with their actions per file, each later file
        // starting with a snapshot of the agent as it was there, so it replays exactly.
        let Some((first, rest)) = journal.split_first() else {
            continue;
        };
        let mut agent = match first {
            Record::Start { config } => Agent::new(config.clone()),
            Record::Snapshot { agent } => (**agent).clone(),
            _ => continue,
        };
        for (j, chunk) in rest.chunks(8).enumerate() {
            let head = if j == 0 {
                first.clone()
            } else {
                Record::Snapshot {
                    agent: Box::new(agent.clone()),
                }
            };
            let text: String = std::iter::once(&head)
                .chain(chunk)
                .map(|r| r.to_line() + "\n")
                .collect();
            std::fs::write(dir.join(format!("sim-{i}-{j}")), &text)?;
            let torn = &text[..text.len() - text.len().min(17)];
            std::fs::write(dir.join(format!("sim-{i}-{j}-torn")), torn)?;
            written += 2;
            for record in chunk {
                if let Record::Input { at, input } = record {
                    agent.handle(*at, input.clone());
                    agent.drain_actions();
                }
            }
        }
    }
    println!("wrote {written} journal seeds to {}", dir.display());
    Ok(())
}
