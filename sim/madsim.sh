#!/usr/bin/env bash
# The production driver loop under madsim (sim/madsim, pop-madsim): runs its two cluster
# tests (a scripted run of faults, and faults drawn at random for the seed) and the
# simulated ZooKeeper client's tests for a range of seeds, and checks that a seed gives
# the same cluster runs twice.
#
#   sim/madsim.sh                      seeds 1..10
#   MADSIM_TEST_SEED=42 MADSIM_TEST_NUM=1 sim/madsim.sh     one seed (a failure's reproduction)
#   POP_MADSIM_TWICE=3 sim/madsim.sh   run the first 3 seeds twice and compare (default 2)
#   POP_MADSIM_BUG=JournalAfterAct sim/madsim.sh   plant one of pop-core's planted bugs
#                                      (the driver's: ZkCallWithoutTimeout, JournalAfterAct,
#                                      StaleEpochAccepted); the batch must then fail
#   sim/madsim.sh --planted            the checks are not blind: each of the driver's
#                                      planted bugs must fail some seed of the batch, in
#                                      each of the two cluster tests; and two of the
#                                      core's must fail the invariants in the random test
#
# One process per seed and test, run with `--exact`: the unbiased `tokio::select!` in the
# driver draws from real tokio's per-thread RNG, seeded from a process-wide counter that
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
tests="agents_killed_and_crashed_converge_and_their_journals_replay random_faults_then_heal_converge_and_keep_the_contract"
planted=0
[ "${1:-}" = --planted ] && planted=1

built=$(cargo test -p pop-madsim --tests --no-run --message-format=json ${CARGO_BUILD_JOBS:+-j "$CARGO_BUILD_JOBS"})
executable() { # test target name
    echo "$built" | grep "\"name\":\"$1\"" | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1
}
bin=$(executable cluster)
client=$(executable zk_client)
unit=$(executable pop_madsim)
[ -x "$bin" ] && [ -x "$client" ] && [ -x "$unit" ] || { echo "madsim.sh: the test binaries were not built" >&2; exit 1; }

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
run() { # seed, test, log name
    MADSIM_TEST_SEED="$1" MADSIM_TEST_NUM=1 "$bin" --exact "$2" --nocapture >"$logs/$3" 2>&1
}
failed=0
last=$((first + num - 1))

if [ "$planted" = 1 ]; then
    # Each driver bug must fail some seed of the batch in each test (the scripted faults,
    # and the random ones); the first seed that does is named, with its check's word.
    for bug in ZkCallWithoutTimeout JournalAfterAct StaleEpochAccepted; do
        for test in $tests; do
            caught=""
            for seed in $(seq "$first" "$last"); do
                if ! POP_MADSIM_BUG=$bug run "$seed" "$test" "$bug.$seed.$test"; then
                    caught="seed $seed: $(grep -m1 -o 'contract: .*\|invariant: .*\|not within .*' "$logs/$bug.$seed.$test" | cut -c1-160)"
                    break
                fi
            done
            if [ -n "$caught" ]; then
                echo "madsim: $bug caught by $test at $caught"
            else
                echo "madsim: $bug NOT caught by $test in seeds $first..$last"
                failed=1
            fi
        done
    done
    # And the pure simulator's invariants, run on what the cluster publishes, are not
    # blind either: two of the core's planted bugs must make them fail some seed of the
    # random test (the failure must be theirs, not another check's).
    random=random_faults_then_heal_converge_and_keep_the_contract
    for bug in SpawnBeforeStopped NoEphemeralsAfterExpiry; do
        caught=""
        for seed in $(seq "$first" "$last"); do
            if ! POP_MADSIM_BUG=$bug run "$seed" "$random" "$bug.$seed" &&
                grep -q 'invariant: ' "$logs/$bug.$seed"; then
                caught="seed $seed: $(grep -m1 -o 'invariant: .*' "$logs/$bug.$seed" | cut -c1-160)"
                break
            fi
        done
        if [ -n "$caught" ]; then
            echo "madsim: $bug caught by the invariants in $random at $caught"
        else
            echo "madsim: $bug NOT caught by the invariants in $random in seeds $first..$last"
            failed=1
        fi
    done
    exit "$failed"
fi

bug="${POP_MADSIM_BUG:-}"
reproduce() { # seed, the binary's command line
    echo "  reproduce: ${bug:+POP_MADSIM_BUG=$bug }MADSIM_TEST_SEED=$1 MADSIM_TEST_NUM=1 sim/madsim.sh"
    [ -z "${2:-}" ] || echo "  (or, built: ${bug:+POP_MADSIM_BUG=$bug }MADSIM_TEST_SEED=$1 $2)"
}
failure() { # seed, log, the binary's command line
    echo "seed $1 FAILED:"
    grep -v '^ ' "$2" | grep -v '^$' | tail -n 20 | cut -c1-400 | sed 's/^/  | /'
    reproduce "$1" "$3"
    failed=1
}

# The checks' own unit tests (no seed involved).
if ! "$unit" >"$logs/unit" 2>&1; then
    echo "the unit tests of pop-madsim FAILED:"
    grep -v '^$' "$logs/unit" | tail -n 20 | sed 's/^/  | /'
    failed=1
fi

start=$(date +%s.%N)
for seed in $(seq "$first" "$last"); do
    for test in $tests; do
        run "$seed" "$test" "$seed.$test" || failure "$seed" "$logs/$seed.$test" "$bin --exact $test --nocapture"
    done
    # The client's own tests (timing against the real client's), one process a seed too.
    MADSIM_TEST_SEED="$seed" MADSIM_TEST_NUM=1 "$client" --test-threads 1 >"$logs/$seed.client" 2>&1 ||
        failure "$seed" "$logs/$seed.client" "$client --test-threads 1"
done
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
echo "madsim: seeds $first..$last run in ${elapsed}s"

for seed in $(seq "$first" "$((first + twice - 1))"); do
    [ "$seed" -le "$last" ] || break
    for test in $tests; do
        [ -f "$logs/$seed.$test" ] && grep -q '^digest ' "$logs/$seed.$test" || continue
        run "$seed" "$test" "$seed.$test.again" || true
        a=$(grep '^digest ' "$logs/$seed.$test")
        b=$(grep '^digest ' "$logs/$seed.$test.again" || echo "no digest")
        if [ "$a" != "$b" ]; then
            echo "seed $seed is not deterministic ($test): $a, then $b"
            reproduce "$seed"
            failed=1
        fi
    done
done

if [ "$failed" = 0 ]; then
    echo "madsim: all $num seeds passed and reproduced${bug:+ (with $bug planted: NOT caught)}"
elif [ -n "$bug" ]; then
    echo "madsim: $bug planted: caught"
fi
exit "$failed"
