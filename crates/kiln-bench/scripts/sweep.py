#!/usr/bin/env python3
"""N-sweep: each workload's curve over N for kiln and SQLite, side by side, in one run.

    cargo build --release -p kiln-bench
    python3 crates/kiln-bench/scripts/sweep.py [--ns 10000,100000,1000000]
        [--workloads get,alldocs,update,put-bulk] [--systems kiln,sqlite]
        [--timeout-s 60] [--dir /tmp/kiln-sweep] [--bin target/release/kiln-bench]

Runs `kiln-bench SYSTEM WORKLOAD N DIR` for every combination (systems alternate inside each
(workload, N) so both see the same machine state), prints one JSON line per run on stderr and a
Markdown table on stdout: rate, peak RSS and bytes on disk of each system, and kiln / SQLite.
A run that hits --timeout-s reports the rate over what it completed (marked "*").
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time


def run(bin_, system, workload, n, d, timeout_s):
    cmd = [bin_, system, workload, str(n), d, f"--timeout-s={timeout_s}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith('{"system"'):
            r = json.loads(line)
            print(line, file=sys.stderr, flush=True)
            return r
    raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", default="10000,100000,1000000")
    ap.add_argument("--workloads", default="get,alldocs,update,put-bulk")
    ap.add_argument("--systems", default="kiln,sqlite")
    ap.add_argument("--timeout-s", default="60")
    ap.add_argument("--dir", default="/tmp/kiln-sweep")
    ap.add_argument("--bin", default="target/release/kiln-bench")
    a = ap.parse_args()
    systems = a.systems.split(",")
    rows = []
    for w in a.workloads.split(","):
        for n in [int(x) for x in a.ns.split(",")]:
            res = {}
            for s in systems:
                d = os.path.join(a.dir, s)
                res[s] = run(a.bin, s, w, n, d, a.timeout_s)
                shutil.rmtree(d, ignore_errors=True)
            rows.append((w, n, res))
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs ({cpu}), {platform.system()} "
          f"{platform.release()}; rate = operations per second (* = timed out after "
          f"{a.timeout_s} s, rate over what completed)\n")
    head = "| workload | N |"
    rule = "|---|---|"
    for s in systems:
        head += f" {s} | {s} RSS MB | {s} disk MB |"
        rule += "---|---|---|"
    if "kiln" in systems and "sqlite" in systems:
        head += " kiln / sqlite |"
        rule += "---|"
    print(head)
    print(rule)
    for w, n, res in rows:
        line = f"| {w} | {n:,} |"
        for s in systems:
            r = res[s]
            mark = "*" if r.get("timed_out") else ""
            disk = (r.get("disk_bytes") or 0) / 1e6
            line += f" {r.get('ops_per_sec', 0):,.0f}{mark} | {r.get('peak_rss_mb')} | {disk:.0f} |"
        if "kiln" in res and "sqlite" in res:
            k, q = res["kiln"].get("ops_per_sec") or 0, res["sqlite"].get("ops_per_sec") or 0
            line += f" {k / q:.2f}× |" if q else " – |"
        print(line)


if __name__ == "__main__":
    main()
