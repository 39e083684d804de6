#!/usr/bin/env bash
# pop's main job on one fresh Debian machine: install what is missing, build pop, run a
# local ZooKeeper, add the built-in echo service, start the agent, deploy, show it running.
set -euo pipefail
cd "$(dirname "$0")"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -f /usr/share/java/zookeeper.jar ] || ! command -v java >/dev/null; then
    echo "== installing ZooKeeper (Debian package)"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y zookeeper
fi
if ! command -v cargo >/dev/null; then
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null; then
    echo "pop needs a Rust toolchain (1.85 or newer): install it with rustup, then run $0 again" >&2
    exit 1
fi

echo "== building pop"
cargo build --release --bin pop
pop=target/release/pop
export POP_HOST="${POP_HOST:-127.0.0.1:2181}"
port="${POP_HOST##*:}"

echo "== local ZooKeeper on $POP_HOST"
$pop zk status | grep -q '^running' || $pop zk start --port "$port"

echo "== pop init, pop add echo, pop start, pop deploy echo"
$pop status >/dev/null 2>&1 || $pop init
$pop status echo >/dev/null 2>&1 || $pop add echo
$pop machines --json | grep -q "\"agent_live\": true" || $pop start
$pop deploy echo

for _ in $(seq 100); do
    $pop status echo | grep -q ' running ' && break
    sleep 0.1
done
$pop status
$pop machines

# Talk to the service on the port it picked.
address=$($pop --json status echo | grep -o '"port": [0-9]*' | head -n1 | grep -o '[0-9]*$')
exec 3<>"/dev/tcp/127.0.0.1/$address"
echo "hello from pop" >&3
read -r reply <&3
exec 3>&-
echo "== the echo service on port $address answered: $reply"
