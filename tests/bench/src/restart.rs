//! Crash → restarted: SIGKILL a service's process after a healthy run and time until its
//! next process has started (its own stamp) and, for pop, until its pid node holds the
//! new pid (a watch armed before the kill). Several services are killed in turn, one kill
//! a second, so each has run longer than pop's healthy threshold (10 s) when killed and
//! is restarted at once rather than after a backoff. The floor, supervisord and pop run
//! side by side and their kills alternate, so all see the same machine; each restart's
//! cost to the supervisor process (run time, context switches) is counted too, which
//! shows a change in pop's work whatever the load.

use crate::floor::Floor;
use crate::measure::{kill_stamped, monotonic_ns, ns_to_ms, Stamps, Summary};
use crate::popsys::{stamp_settings, Pop};
use crate::sched::{self, Usage};
use crate::supervisord::{Program, Supervisord};
use crate::Env;
use anyhow::Result;
use std::time::{Duration, Instant};

/// Longer than pop's healthy threshold: a crash after this restarts at once.
const HEALTHY: Duration = Duration::from_millis(10_500);
const SPACING: Duration = Duration::from_secs(1);
const LIMIT: Duration = Duration::from_secs(30);

fn names() -> Vec<String> {
    let n = (HEALTHY.as_millis() / SPACING.as_millis()) as usize + 1;
    (0..n).map(|i| format!("crash{i}")).collect()
}

/// One supervisor under test: its services' stamps, the process whose work a restart
/// is counted in, how to wait for a new pid to be registered, and what was measured.
struct Subject<'p> {
    label: &'static str,
    stamps: Stamps,
    supervisor: u32,
    registered: Register<'p>,
    running: Vec<f64>,
    published: Vec<f64>,
    work: Vec<Usage>,
}

impl<'p> Subject<'p> {
    fn new(label: &'static str, stamps: Stamps, supervisor: u32) -> Subject<'p> {
        Subject {
            label,
            stamps,
            supervisor,
            registered: Box::new(|_, _| {
                Ok(Box::new(|| Err(anyhow::anyhow!("not registered"))) as Registered<'p>)
            }),
            running: Vec::new(),
            published: Vec::new(),
            work: Vec::new(),
        }
    }

    /// Kills `name`'s process and waits for the next one (and its registration);
    /// counts the supervisor's threads' run time and switches from the kill to then.
    fn kill_once(&mut self, name: &str) -> Result<()> {
        let old = self.stamps.wait_new(name, None, LIMIT)?;
        let wait_registered = (self.registered)(name, old.pid)?;
        let before = sched::sample(self.supervisor)?;
        let killed_at = monotonic_ns();
        // SAFETY: kill with a pid and a signal number.
        unsafe { libc::kill(old.pid as i32, libc::SIGKILL) };
        let new = self.stamps.wait_new(name, Some(old.pid), LIMIT)?;
        self.running
            .push(ns_to_ms(new.at_ns.saturating_sub(killed_at)));
        if let Ok(at) = wait_registered() {
            self.published.push(ns_to_ms(at.saturating_sub(killed_at)));
        }
        let after = sched::sample(self.supervisor)?;
        self.work.push(Usage::between(&before, &after));
        Ok(())
    }
}

/// Kills services of every subject in the same period: in each round (at least
/// `SPACING` long) one service of each subject, one after the other, the order rotated
/// every round so no subject always goes first. Load that comes and goes then falls on
/// all of them alike, rather than on whichever was measured while it lasted.
fn kill_interleaved(subjects: &mut [Subject<'_>], names: &[String], kills: usize) -> Result<()> {
    for s in subjects.iter() {
        s.stamps.wait_all(names.len(), LIMIT)?;
    }
    std::thread::sleep(HEALTHY);
    let mut last = Instant::now();
    for k in 0..kills {
        let name = &names[k % names.len()];
        std::thread::sleep(SPACING.saturating_sub(last.elapsed()));
        last = Instant::now();
        let n = subjects.len();
        for i in 0..n {
            subjects[(k + i) % n].kill_once(name)?;
        }
    }
    Ok(())
}

type Registered<'p> = Box<dyn FnOnce() -> Result<u128> + 'p>;
/// Arms the wait for `name`'s next pid to be registered (before the kill of `old`).
type Register<'p> = Box<dyn FnMut(&str, u32) -> Result<Registered<'p>> + 'p>;

pub fn run(env: &Env, kills: Option<usize>) -> Result<()> {
    let kills = kills.unwrap_or(if env.quick { 4 } else { 30 });
    let names = names();
    println!(
        "## Crash → restarted (SIGKILL after a healthy run; {kills} kills each, interleaved)\n"
    );
    // First: the subjects below borrow it.
    let mut pop = Pop::new(&env.pop)?;

    let floor_dir = tempfile::tempdir()?;
    let floor_stamps = Stamps::new(floor_dir.path());
    let mut floor = Floor::start(&env.bench_exe, &env.stamp_exe, &floor_stamps.path, &names)?;
    floor.go()?;
    let mut subjects = vec![Subject::new("fork/exec floor", floor_stamps, floor.pid())];

    let sup_dir = tempfile::tempdir()?;
    let sup = match &env.supervisord {
        None => None,
        Some(install) => {
            let stamps = Stamps::new(sup_dir.path());
            let programs = Program::stamping(&env.stamp_exe, &stamps.path, &names);
            let sup = Supervisord::start(install, sup_dir.path(), &programs, true)?;
            subjects.push(Subject::new("supervisord", stamps, sup.pid()));
            Some(sup)
        }
    };

    let pop_dir = tempfile::tempdir()?;
    let pop_stamps = Stamps::new(pop_dir.path());
    let services: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| {
            (
                n.clone(),
                stamp_settings(&env.stamp_exe, &pop_stamps.path, n),
            )
        })
        .collect();
    pop.add_services(&services)?;
    let agent = pop.start_agent()?;
    pop.deploy_all(&names)?;
    let result = {
        let pop = &pop;
        let mut subject = Subject::new("pop", Stamps::new(pop_dir.path()), agent);
        subject.registered = Box::new(move |name, old| {
            let handle = pop.watch_pid_change(name, old)?;
            Ok(Box::new(move || pop.wait_watch(handle, LIMIT)) as Registered<'_>)
        });
        subjects.push(subject);
        let result = kill_interleaved(&mut subjects, &names, kills);
        print_tables(&subjects);
        result
    };
    drop(subjects);
    drop(pop);
    drop(sup);
    drop(floor);
    for dir in [&floor_dir, &sup_dir, &pop_dir] {
        kill_stamped(&Stamps::new(dir.path()));
    }
    result?;
    println!();
    Ok(())
}

fn print_tables(subjects: &[Subject<'_>]) {
    let show = |v: &[f64]| Summary::of(v).map_or("—".to_string(), |s| s.to_string());
    println!("| system | new process running p50 / p90 / p99 / max | pid registered p50 / p90 / p99 / max |");
    println!("|---|---|---|");
    for s in subjects {
        println!(
            "| {} | {} | {} |",
            s.label,
            show(&s.running),
            show(&s.published)
        );
    }
    println!();
    println!("The supervisor's own work per restart, from the kill until the new process ran");
    println!("(pop: until its pid was registered), all its threads, from the scheduler:\n");
    println!("| system | run time p50 / p90 / p99 / max | context switches mean | threads came or went |");
    println!("|---|---|---|---|");
    for s in subjects {
        let run_ms: Vec<f64> = s.work.iter().map(|u| u.run_ns as f64 / 1e6).collect();
        let switches = if s.work.is_empty() {
            0.0
        } else {
            s.work.iter().map(|u| u.switches as f64).sum::<f64>() / s.work.len() as f64
        };
        let changed = s
            .work
            .iter()
            .filter(|u| !u.thread_change().is_empty())
            .count();
        println!(
            "| {} | {} | {switches:.1} | in {changed} of {} |",
            s.label,
            show(&run_ms),
            s.work.len()
        );
    }
}
