#!/usr/bin/env bash
# All of pop's tests: formatting, lints, unit, simulation and end-to-end tests.
# The end-to-end tests start their own throwaway ZooKeeper servers, which need Debian's
# `zookeeper` package (./demo.sh or .ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

if [ ! -f /usr/share/java/zookeeper.jar ]; then
    echo "ZooKeeper is not installed: apt-get install -y zookeeper (or run ./demo.sh)" >&2
    exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
