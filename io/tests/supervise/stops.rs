//! Stop requests as the supervisor passes them to a generation's task (one cell per
//! generation holding the shortest grace asked for, since the unbounded channel went):
//! a later, shorter grace still shortens the wait for KILL, and a shutdown reaches
//! every generation.

use super::*;

/// A generation that survives TERM, asked to stop with a long grace and (once it has
/// had the TERM) a short one, is killed after the short one.
pub(crate) async fn a_shorter_second_grace_kills_sooner(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    let termed = h.config.state_dir.join("termed");
    let script = format!(
        r#"trap "touch {}" TERM; while :; do sleep 1000 & wait; done"#,
        termed.display()
    );
    h.sup.spawn(spec("deaf", 1, &sh(&script)));
    expect_spawned(&mut h).await;
    let tok = token(&h, "deaf", 1);
    wait_for_comm(&tok, "sleep", 1).await;
    let t0 = Instant::now();
    h.sup.stop("deaf", 1, Duration::from_secs(600));
    // The first request has been taken and acted on; the next comes on its own.
    wait_until("the TERM of the first stop", || termed.exists()).await;
    h.sup.stop("deaf", 1, Duration::from_millis(300));
    // A longer one after that changes nothing.
    h.sup.stop("deaf", 1, Duration::from_secs(900));
    let status = expect_exited(&mut h).await;
    assert_eq!(
        status.signal,
        Some(9),
        "killed, not stopped by TERM: {status}"
    );
    assert!(
        t0.elapsed() < DEADLINE,
        "KILL came after {:?}",
        t0.elapsed()
    );
    assert_gone(&h, "deaf", 1, &token_procs(&tok)).await;
    finish(h).await;
}

/// A shutdown stops every running generation, of several services and several
/// generations of one, each by its own request.
pub(crate) async fn shutdown_reaches_every_generation(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    let generations = [("a", 1), ("a", 2), ("b", 1), ("c", 5)];
    let mut procs = Vec::new();
    for (service, generation) in generations {
        h.sup.spawn(spec(service, generation, &["sleep", "1000"]));
        expect_spawned(&mut h).await;
        let tok = token(&h, service, generation);
        procs.push(wait_for_comm(&tok, "sleep", 1).await);
    }
    assert_eq!(h.sup.running().len(), generations.len());
    // TERM ends `sleep` at once: a generation the request missed would hold the
    // shutdown until its limit (grace + 30 s), past the deadline here.
    let t0 = Instant::now();
    h.sup.shutdown(Duration::from_secs(60)).await;
    assert!(
        t0.elapsed() < DEADLINE,
        "shutdown took {:?}: a generation did not get its stop",
        t0.elapsed()
    );
    assert!(h.sup.running().is_empty());
    let mut exited = Vec::new();
    for _ in generations {
        match next_event(&mut h.rx).await {
            SupervisorEvent::Exited {
                service,
                generation,
                status,
            } => {
                assert_eq!(status.signal, Some(15), "{service}@{generation}: {status}");
                exited.push((service, generation));
            }
            other => panic!("expected Exited, got {other:?}"),
        }
    }
    exited.sort();
    let want: Vec<(String, u64)> = generations
        .iter()
        .map(|(s, g)| (s.to_string(), *g))
        .collect();
    assert_eq!(exited, want);
    for ((service, generation), procs) in generations.into_iter().zip(&procs) {
        assert_gone(&h, service, generation, procs).await;
    }
    finish(h).await;
}
