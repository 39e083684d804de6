#!/usr/bin/env bash
# The production driver loop under madsim (sim/madsim, pop-madsim): runs its cluster
# test and the simulated ZooKeeper client's tests for a range of seeds, and checks that
# a seed gives the same cluster run twice.
#
#   sim/madsim.sh                      seeds 1..10
#   MADSIM_TEST_SEED=42 MADSIM_TEST_NUM=1 sim/madsim.sh     one seed (a failure's reproduction)
#   POP_MADSIM_TWICE=3 sim/madsim.sh   run the first 3 seeds twice and compare (default 2)
#   POP_MADSIM_BUG=JournalAfterAct sim/madsim.sh   plant one of pop-core's planted bugs
#                                      (the driver's: ZkCallWithoutTimeout, JournalAfterAct,
#                                      StaleEpochAccepted); the batch must then fail
#
# One process per seed, run with `--exact`: the unbiased `tokio::select!` in the driver
# draws from real tokio's per-thread RNG, seeded from a process-wide counter that
# madsim does not control. A seed alone in a fresh process is reproducible; a seed after
# other runs in the same process is not, so MADSIM_TEST_NUM>1 in one process and
# MADSIM_TEST_CHECK_DETERMINISM (two runs in one process) cannot be used. Determinism is
# checked here instead: the same seed in two processes must print the same digest (a
# hash of every journal, the ZooKeeper tree and the fault trace).
#
# Built with `--cfg madsim` in its own target dir (the flag rebuilds everything; normal
# builds stay untouched).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg madsim"
export CARGO_TARGET_DIR="${POP_MADSIM_TARGET_DIR:-target/madsim}"
first="${MADSIM_TEST_SEED:-1}"
num="${MADSIM_TEST_NUM:-10}"
twice="${POP_MADSIM_TWICE:-2}"
test=agents_killed_and_crashed_converge_and_their_journals_replay

built=$(cargo test -p pop-madsim --tests --no-run --message-format=json ${CARGO_BUILD_JOBS:+-j "$CARGO_BUILD_JOBS"})
executable() { # test target name
    echo "$built" | grep "\"name\":\"$1\"" | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1
}
bin=$(executable cluster)
client=$(executable zk_client)
[ -x "$bin" ] && [ -x "$client" ] || { echo "madsim.sh: the test binaries were not built" >&2; exit 1; }

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
run() { # seed, log name
    MADSIM_TEST_SEED="$1" MADSIM_TEST_NUM=1 "$bin" --exact "$test" --nocapture >"$logs/$2" 2>&1
}
bug="${POP_MADSIM_BUG:-}"
reproduce() { # seed, the binary's command line
    echo "  reproduce: ${bug:+POP_MADSIM_BUG=$bug }MADSIM_TEST_SEED=$1 MADSIM_TEST_NUM=1 sim/madsim.sh"
    echo "  (or, built: ${bug:+POP_MADSIM_BUG=$bug }MADSIM_TEST_SEED=$1 $2)"
}
failure() { # seed, log, the binary's command line
    echo "seed $1 FAILED:"
    grep -v '^ ' "$2" | grep -v '^$' | tail -n 20 | sed 's/^/  | /'
    reproduce "$1" "$3"
    failed=1
}

failed=0
last=$((first + num - 1))
start=$(date +%s.%N)
for seed in $(seq "$first" "$last"); do
    run "$seed" "$seed" || failure "$seed" "$logs/$seed" "$bin --exact $test --nocapture"
    # The client's own tests (timing against the real client's), one process a seed too.
    MADSIM_TEST_SEED="$seed" MADSIM_TEST_NUM=1 "$client" --test-threads 1 >"$logs/$seed.client" 2>&1 ||
        failure "$seed" "$logs/$seed.client" "$client --test-threads 1"
done
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
echo "madsim: seeds $first..$last run in ${elapsed}s"

for seed in $(seq "$first" "$((first + twice - 1))"); do
    [ "$seed" -le "$last" ] || break
    [ -f "$logs/$seed" ] && grep -q '^digest ' "$logs/$seed" || continue
    run "$seed" "$seed.again" || true
    a=$(grep '^digest ' "$logs/$seed")
    b=$(grep '^digest ' "$logs/$seed.again" || echo "no digest")
    if [ "$a" != "$b" ]; then
        echo "seed $seed is not deterministic: $a, then $b"
        reproduce "$seed"
        failed=1
    fi
done

if [ "$failed" = 0 ]; then
    echo "madsim: all $num seeds passed and reproduced${bug:+ (with $bug planted: NOT caught)}"
elif [ -n "$bug" ]; then
    echo "madsim: $bug planted: caught"
fi
exit "$failed"
