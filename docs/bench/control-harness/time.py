#!/usr/bin/env python3
# usage: time.py AGENT LABEL
import json, os, subprocess, sys, time, statistics
P = os.environ.get("PERF_DIR", "/tmp/mirrornet-perf")
agent, label = sys.argv[1], sys.argv[2]
reps = int(os.environ.get("REPS", "20"))
env = dict(os.environ, MIRRORNET_STATE_DIR=P + "/state")
def call(verb, f):
    t = time.perf_counter()
    out = subprocess.run(["ip", "netns", "exec", "mnperf", agent, verb, "--file", f"{P}/{f}.yaml", "-o", "json"], env=env, capture_output=True)
    dt = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"{verb} {f} failed: {out.stderr.decode()[-2000:]}")
    try: w = json.loads(out.stdout).get("writes", 0)
    except Exception: w = -1
    return dt * 1e3, w
def q(v, p):
    v = sorted(v); return v[min(len(v)-1, int(round(p*(len(v)-1))))]
res = {}
def rec(k, v): res[k] = (q(v,0.5), q(v,0.99), len(v))
a, d = [], []
for _ in range(reps):
    a.append(call("apply", "one")[0]); d.append(call("delete", "one")[0])
rec("apply one, empty", a); rec("delete one, empty", d)
cold, re, dall, writes = [], [], [], []
for _ in range(3):
    cold.append(call("apply", "all")[0])
    for _ in range(reps // 3 + 1):
        t, w = call("apply", "all"); re.append(t); writes.append(w)
    dall.append(call("delete", "all")[0])
rec("cold start all", cold); rec("re-apply all converged", re); rec("delete all", dall)
call("apply", "rest")
a, d = [], []
for _ in range(reps):
    a.append(call("apply", "extra")[0]); d.append(call("delete", "extra")[0])
rec("apply one, others present", a); rec("delete one, others present", d)
call("delete", "rest")
print(f"## {label}  (max writes on converged re-apply: {max(writes)})")
print("| measurement | p50 ms | p99 ms | n |\n|---|---|---|---|")
for k, (p50, p99, n) in res.items():
    print(f"| {k} | {p50:.1f} | {p99:.1f} | {n} |")
