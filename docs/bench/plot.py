"""Plots of `cargo xtask bench`: packet rate and TCP throughput against the number of
networks on one node, and the distribution of repair delays. Usage: plot.py RESULTS OUT SUFFIX"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results_path, out, suffix = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""
r = json.load(open(results_path))

scale = r.get("scale") or []
if scale:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in [
        (axes[0], "udp64_kpps", "64-byte UDP, kpps received"),
        (axes[1], "tcp1_gbps", "TCP, 1 stream, Gbit/s"),
    ]:
        for path, style in [("first", "o-"), ("last", "s-"), ("unrelated", "^--")]:
            pts = sorted((s["networks"], s[key]) for s in scale if s["path"] == path)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{path} network" if path != "unrelated" else "unrelated traffic")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("networks on the node")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    maxn = (r.get("limits") or {}).get("max_networks")
    fig.suptitle(f"Per-packet cost vs. number of networks (policy backend; at most {maxn} fit the bench's id ranges)")
    fig.tight_layout()
    fig.savefig(f"{out}/scale{suffix}.png", dpi=110)

repairs = (r.get("control") or {}).get("repairs") or []
delays = [x for x in repairs if x.get("delay_ms") is not None]
if delays:
    fig, ax = plt.subplots(figsize=(7, 4))
    kinds = sorted({x["kind"] for x in delays})
    ax.hist([[x["delay_ms"] for x in delays if x["kind"] == k] for k in kinds], bins=25, stacked=True, label=kinds)
    n = r["control"]["networks"]
    ax.set_xlabel("repair delay, ms (deletion seen -> object back, by netlink/nft monitor)")
    ax.set_ylabel("tamperings")
    ax.set_title(f"Repair delay under `run`, {n} networks, {len(repairs)} tamperings")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{out}/repair{suffix}.png", dpi=110)
