#!/usr/bin/env python3
# Prints pop's reaction times on one machine (not a test: numbers to compare over time).
# Run from the repository root:
#   cargo build --release --bin pop
#   export POP_STATE_DIR=$(mktemp -d) POP_MACHINE_ID=bench POP_HOST=127.0.0.1:22181
#   target/release/pop zk start --port 22181 --tick-ms 500
#   target/release/pop init && target/release/pop add echo && target/release/pop start
#   python3 tests/bench/reaction_times.py
#   target/release/pop zk stop
import json, os, signal, statistics, subprocess, time
P = os.environ.get("POP", "target/release/pop")
def pid():
    out = subprocess.run([P, "--json", "status", "echo"], capture_output=True, text=True).stdout
    try:
        return json.loads(out)["services"][0]["instances"][0]["state"]["pid"]
    except Exception:
        return None
def wait(cond):
    while not cond():
        time.sleep(0.002)
t = time.time(); subprocess.run([P, "deploy", "echo"], capture_output=True); wait(lambda: pid() is not None)
print(f"deploy -> state node published: {time.time()-t:.3f}s (including the deploy command)")
res = []
for i in range(5):
    p = pid(); t = time.time(); os.kill(p, signal.SIGKILL); wait(lambda: pid() not in (None, p)); res.append(time.time() - t)
    time.sleep(10.5)  # a healthy run, so the next restart is immediate
print("kill -9 -> restarted and republished: median %.3fs, max %.3fs" % (statistics.median(res), max(res)))
res = []
for i in range(5):
    p = pid(); t = time.time(); subprocess.run([P, "set", "echo", f'env={{"N":"{i}"}}'], capture_output=True); wait(lambda: pid() not in (None, p)); res.append(time.time() - t)
print("pop set -> restarted with new settings: median %.3fs, max %.3fs (including the set command)" % (statistics.median(res), max(res)))
agent = int(open(os.environ["POP_STATE_DIR"] + "/agent.pid").read())
print("agent", [l for l in open(f"/proc/{agent}/status") if l.startswith("VmRSS")][0].strip())
t = time.time(); subprocess.run([P, "stop"], capture_output=True); print(f"pop stop (agent + echo service): {time.time()-t:.3f}s")
