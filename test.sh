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
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
# The fuzz targets are one-line calls of pop_checker::targets; check they still build (their
# bodies run below, over the committed corpora, in pop-core's tests).
step "cargo check --manifest-path fuzz/Cargo.toml"
cargo check --manifest-path fuzz/Cargo.toml
step "cargo test --workspace"
cargo test --workspace --no-fail-fast
# The simulator on this commit's own seed (a new schedule of faults for every commit),
# on top of the fixed batch in sim/tests/chaos.rs. A failure prints how to reproduce it.
commit_seed=$(git rev-parse HEAD 2>/dev/null || echo 0)
step "pop sim --seed $commit_seed"
trace_dir=$(mktemp -d)
cargo run -q -p pop-cli -- sim --seed "$commit_seed" --trace-dir "$trace_dir"
step "all tests passed"
