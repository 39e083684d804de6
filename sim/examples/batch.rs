use pop_sim::chaos::{run, Options};
use std::time::{Duration, Instant};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let from: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(0);
    let to: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let t = Instant::now();
    let mut events = 0;
    let mut sim = Duration::ZERO;
    for seed in from..to {
        let o = Options::from_seed(seed, None, None);
        let out = run(&o);
        events += out.events;
        sim += out.simulated;
        if let Some(f) = &out.failure {
            println!("seed {seed}: {f}\n  {o}");
            if let Ok(filter) = std::env::var("TRACE") {
                for l in out.trace.iter().filter(|l| l.contains(&filter)) {
                    println!("    {l}");
                }
            }
        }
    }
    println!(
        "{} seeds, {events} events, {sim:?} simulated in {:?}",
        to - from,
        t.elapsed()
    );
}
