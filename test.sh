#!/usr/bin/env bash
# All of pop's tests: formatting, lints, unit, simulation and end-to-end tests.
# The end-to-end tests start their own throwaway ZooKeeper servers, which need Debian's
# `zookeeper` package (./demo.sh or .ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")"
if [ -f "$HOME/.cargo/env" ]; then
    . "$HOME/.cargo/env"
fi

if [ ! -f /usr/share/java/zookeeper.jar ] || ! command -v java >/dev/null; then
    echo "ZooKeeper is not installed: apt-get install -y zookeeper (or run ./demo.sh)" >&2
    exit 1
fi

step() { printf '\n==== %s\n' "$*"; }

step "cargo fmt --all -- --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
# --workspace: also the planted-bug tests (sim/planted), which are not a default member.
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
# The fuzz targets are one-line calls of pop_checker::targets; check they still build (their
# bodies run below, over the committed corpora, in pop-core's tests).
step "cargo check --manifest-path fuzz/Cargo.toml"
cargo check --manifest-path fuzz/Cargo.toml
# The default members, then the planted-bug tests on their own: cargo unifies features
# over the packages one command selects, so testing them together (--workspace) would
# build pop-core's bug switches into the pop the end-to-end tests run (and
# tests/tests/no_planted_bugs.rs would fail, as it should).
step "cargo test"
cargo test --no-fail-fast
step "cargo test -p pop-planted-tests"
cargo test -p pop-planted-tests --no-fail-fast
# The release pop (for benchmarks, and what users install) carries no bug switches either.
step "cargo build --release -p pop-cli; no planted bugs in target/release/pop"
cargo build --release -p pop-cli
if planted=$(grep -aoE 'pop planted bugs:[A-Za-z ]*' target/release/pop); then
    echo "target/release/pop has pop-core's planted-bug switches ($planted)" >&2
    exit 1
fi
# The benchmarks in quick mode: small sizes, to show the harness works (the numbers are
# rough; BENCHMARKS.md has full runs). Installs supervisord into target/bench from PyPI.
step "pop-bench --quick all"
cargo build --release -p pop-bench
target/release/pop-bench --quick all
# The production driver loop under madsim (sim/madsim): seeds 1-10 of both cluster tests
# (one process each, the first two run twice for determinism), then each planted driver
# bug must fail some seed of each test, and two planted core bugs the random test's
# invariants. Built in target/madsim with --cfg madsim: a cold build takes about 3.5
# minutes on 2 cores, the runs about 15 s.
step "sim/madsim.sh; sim/madsim.sh --planted"
sim/madsim.sh
sim/madsim.sh --planted
# The simulator on this commit's own seed (a new schedule of faults for every commit),
# on top of the fixed batch in sim/tests/chaos.rs. A failure prints how to reproduce it.
commit_seed=$(git rev-parse HEAD 2>/dev/null || echo 0)
step "pop sim --seed $commit_seed"
trace_dir=$(mktemp -d)
cargo run -q -p pop-cli -- sim --seed "$commit_seed" --trace-dir "$trace_dir"
step "all tests passed"
