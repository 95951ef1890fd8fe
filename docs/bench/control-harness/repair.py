#!/usr/bin/env python3
# usage: repair.py AGENT LABEL  -- runs `run` on all.yaml in mnperf, deletes ip rules/routes, times repair
import os, random, re, subprocess, sys, threading, time, queue
P = os.environ.get("PERF_DIR", "/tmp/mirrornet-perf")
agent, label = sys.argv[1], sys.argv[2]
n = int(os.environ.get("TAMPER", "30"))
env = dict(os.environ, MIRRORNET_STATE_DIR=P + "/state")
ns = ["ip", "netns", "exec", "mnperf"]
def sh(*a): return subprocess.run(list(a), capture_output=True, text=True, env=env)
subprocess.run(ns + [agent, "apply", "--file", P + "/all.yaml"], env=env, check=True, capture_output=True)
run = subprocess.Popen(ns + [agent, "run", "--file", P + "/all.yaml", "--metrics-address", "127.0.0.1:9399"],
                       env=env, stdout=subprocess.DEVNULL, stderr=open(P + "/run.log", "w"))
t0 = time.time()
while sh(*ns, agent, "probe", "http-get", "127.0.0.1:9399", "/readyz").returncode != 0:
    time.sleep(0.1)
    if time.time() - t0 > 300: sys.exit("not ready")
ready = time.time() - t0
time.sleep(2)
def rss(): 
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS") or l.startswith("VmHWM"): yield l.split()[0], int(l.split()[1]) / 1024
# agent pid: child of ip netns exec (exec replaces) -> same pid
pid = [p for p in os.listdir("/proc") if p.isdigit() and b"\0run\0--file" in open(f"/proc/{p}/cmdline","rb").read() and p != str(os.getpid())][0]
rules = [l for l in sh("ip", "-n", "mnperf", "rule", "show").stdout.splitlines() if "proto 77" in l and "fwmark" in l]
routes = [l for l in sh("ip", "-n", "mnperf", "route", "show", "table", "all", "proto", "77").stdout.splitlines()]
mon = subprocess.Popen(["ip", "-n", "mnperf", "monitor", "rule", "route"], stdout=subprocess.PIPE, text=True)
q = queue.Queue()
def reader():
    for line in mon.stdout: q.put((time.perf_counter(), line.strip()))
threading.Thread(target=reader, daemon=True).start()
time.sleep(0.5)
random.seed(7)
delays = []; failed = 0
for k in range(n):
    while not q.empty(): q.get()
    if k % 2 == 0:
        r = random.choice(rules); prio = r.split(":")[0]
        key = lambda l, prio=prio: l.startswith(prio + ":")
        subprocess.run(["ip", "-n", "mnperf", "rule", "del", "priority", prio], check=True)
    else:
        r = random.choice(routes); m = re.match(r"(\S+) dev (\S+) table (\d+)", r)
        key = lambda l, m=m: l.startswith(m.group(1)) and ("table " + m.group(3)) in l
        subprocess.run(["ip", "-n", "mnperf", "route", "del", m.group(1), "dev", m.group(2), "table", m.group(3)], check=True)
    t_del = None; t_add = None; deadline = time.time() + 10
    while time.time() < deadline and t_add is None:
        try: t, line = q.get(timeout=0.5)
        except queue.Empty: continue
        if not key(line.replace("Deleted ", "")): continue
        if line.startswith("Deleted"): t_del = t
        elif t_del is not None: t_add = t
    if t_add is None: failed += 1
    else: delays.append((t_add - t_del) * 1e3)
    time.sleep(0.3)
r = dict(rss())
mon.kill(); run.terminate(); run.wait()
subprocess.run(ns + [agent, "delete", "--file", P + "/all.yaml"], env=env, check=True, capture_output=True)
d = sorted(delays)
q_ = lambda p: d[min(len(d)-1, int(round(p*(len(d)-1))))]
print(f"## {label}: apply all, then run with all networks ready after {ready:.2f}s; repair of {n} tamperings (rules, routes): "
      f"p50 {q_(0.5):.1f} ms, p99 {q_(0.99):.1f} ms, max {d[-1]:.1f} ms, not repaired {failed}; "
      f"VmRSS {r.get('VmRSS:',0):.1f} MiB, VmHWM {r.get('VmHWM:',0):.1f} MiB")
