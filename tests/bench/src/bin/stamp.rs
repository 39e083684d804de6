//! The benchmarks' service: appends `<name> <pid> <CLOCK_MONOTONIC ns>` to a file as the
//! first thing it does, then sleeps until killed. Every system under test (pop,
//! supervisord, the fork/exec floor) runs this same program, so the time from a kill to
//! the next stamp is the restart latency, on the clock the harness kills by.
use std::io::Write;

fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn main() {
    let at = monotonic_ns();
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(name)) = (args.next(), args.next()) else {
        eprintln!("usage: pop-bench-stamp <stamp-file> <name>");
        std::process::exit(2);
    };
    let line = format!("{name} {} {at}\n", std::process::id());
    // One write to an O_APPEND file: lines of concurrent stamps do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("pop-bench-stamp: {file}: {e}");
        std::process::exit(1);
    }
    loop {
        // SAFETY: pause has no arguments; it returns only when a signal is caught.
        unsafe { libc::pause() };
    }
}
