//! One-off processes (tasks): contained like a service, output to their own files, no
//! run record, so the next supervisor kills them instead of adopting them.

use super::*;
use pop_io::supervise::OutputFiles;

fn one_off(h: &Harness, key: &str, script: &str) -> (ProcessSpec, OutputFiles) {
    let dir = h.config.state_dir.join("tasks");
    fs::create_dir_all(&dir).unwrap();
    let output = OutputFiles {
        stdout: dir.join("out"),
        stderr: dir.join("err"),
    };
    let mut s = spec(key, 1, &sh(script));
    s.output = Some(output.clone());
    (s, output)
}

const KEY: &str = "web task t1700000000000-0001";

pub(super) async fn one_off_output_goes_to_its_files_and_its_tree_is_stopped(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    let (s, output) = one_off(
        &h,
        KEY,
        r#"echo out; echo err >&2; sh -c 'trap "" TERM; exec sleep 1000' & wait"#,
    );
    h.sup.spawn(s);
    expect_spawned(&mut h).await;
    let procs = wait_for_comm(&token(&h, KEY, 1), "sleep", 1).await;
    wait_until("the output", || {
        fs::read_to_string(&output.stdout).unwrap_or_default() == "out\n"
            && fs::read_to_string(&output.stderr).unwrap_or_default() == "err\n"
    })
    .await;
    assert!(
        !record_path(&h, KEY, 1).exists(),
        "a one-off has no run record"
    );
    assert!(!log_path(&h.config.state_dir, KEY).exists(), "nor a log");
    h.sup.stop(KEY, 1, Duration::from_millis(300));
    expect_exited(&mut h).await;
    assert_gone(&h, KEY, 1, &procs).await;
    finish(h).await;
}

pub(super) async fn a_detached_one_off_is_killed_by_the_next_supervisor(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    let (s, _) = one_off(&h, KEY, "sleep 1000 & exec sleep 1000");
    h.sup.spawn(s);
    expect_spawned(&mut h).await;
    let tok = token(&h, KEY, 1);
    wait_for_comm(&tok, "sleep", 2).await;
    let Harness {
        sup, config, _dir, ..
    } = h;
    sup.detach();
    let mut h2 = start_with(config, _dir).expect("second supervisor");
    assert!(h2.sup.take_adopted().is_empty());
    assert_eq!(token_procs(&tok), vec![], "killed at the start");
    finish(h2).await;
}
