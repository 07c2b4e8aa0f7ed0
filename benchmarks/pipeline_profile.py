"""Probe (issue 30): where the CPU of a running ``winnow up`` goes, per process and thread, from /proc.

    .venv/bin/python benchmarks/pipeline_profile.py RUN_DIR [--window 60] [--out profile.json]
    .venv/bin/python benchmarks/pipeline_profile.py --pid PID [--pid PID ...] [--window 60]
    .venv/bin/python benchmarks/pipeline_profile.py --pyspy-raw FILE   # summarize `py-spy record -f raw --threads`

For each process of the run (learner, generators, verifiers, the broker: found by their command lines naming
``RUN_DIR``) or each ``--pid``, it reads every thread's ``/proc/PID/task/TID/{stat,schedstat,status}`` at the
start and at the end of ``--window`` seconds and reports, per thread: user and system CPU seconds, seconds on
the CPU and seconds *runnable but waiting for a CPU* (``schedstat``: the contention), minor page faults and
voluntary / involuntary context switches; and per process the sums, with the machine's load average. Thread
names are Python's (``threading``) when ``py-spy`` is on PATH (``py-spy dump``), else the kernel's.

Read-only and cheap (two reads of /proc per thread): it can watch a timed run without slowing it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")


def run_pids(run_dir: Path) -> dict[int, str]:
    """PIDs of the processes whose command line names ``run_dir``, with a short role name each."""
    out: dict[int, str] = {}
    needle = str(run_dir.resolve())
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        cmd = " ".join(a.decode(errors="replace") for a in argv)
        if needle not in cmd or "pipeline_profile" in cmd:
            continue
        m = re.search(r"winnow (learner|generator|verifier)\b.*?--config \S*/([\w.-]+)\.yaml", cmd)
        if m:
            out[int(entry)] = m.group(2)
        elif "noida" in cmd or "tansu" in cmd:
            out[int(entry)] = "broker"
        elif "winnow.verifier.pool" in cmd:
            out[int(entry)] = "verifier-pool"
        elif " up" in cmd or "winnow.up" in cmd:
            out[int(entry)] = "up"
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by TID from ``py-spy dump`` (empty when py-spy is missing or fails)."""
    spy = shutil.which("py-spy")
    if not spy:
        return {}
    try:
        text = subprocess.run([spy, "dump", "--nonblocking", "-p", str(pid)], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) \(\w+\): "([^"]*)"', text, re.M)}


def snapshot(pid: int) -> dict[int, dict]:
    """Per thread: kernel name, minor faults, user/system ticks, run/wait ns, context switches."""
    out: dict[int, dict] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            stat = Path(f"{base}/stat").read_text()
            run_ns, wait_ns, _ = map(int, Path(f"{base}/schedstat").read_text().split())
            status = Path(f"{base}/status").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        switches = dict(re.findall(r"^(voluntary_ctxt_switches|nonvoluntary_ctxt_switches):\s+(\d+)", status, re.M))
        out[int(tid)] = {"comm": stat[stat.index("(") + 1 : stat.rindex(")")], "minflt": int(fields[7]),
                         "utime": int(fields[11]), "stime": int(fields[12]), "run_ns": run_ns, "wait_ns": wait_ns,
                         "vol": int(switches.get("voluntary_ctxt_switches", 0)),
                         "invol": int(switches.get("nonvoluntary_ctxt_switches", 0))}
    return out


def delta(a: dict[int, dict], b: dict[int, dict], names: dict[int, str]) -> list[dict]:
    rows = []
    for tid, end in b.items():
        start = a.get(tid)
        if start is None:
            continue
        rows.append({"tid": tid, "name": names.get(tid, end["comm"]),
                     "user_s": (end["utime"] - start["utime"]) / HZ, "sys_s": (end["stime"] - start["stime"]) / HZ,
                     "cpu_s": (end["run_ns"] - start["run_ns"]) / 1e9,
                     "runqueue_wait_s": (end["wait_ns"] - start["wait_ns"]) / 1e9,
                     "minor_faults": end["minflt"] - start["minflt"],
                     "voluntary_switches": end["vol"] - start["vol"],
                     "involuntary_switches": end["invol"] - start["invol"]})
    return sorted(rows, key=lambda r: -r["cpu_s"])


def profile(pids: dict[int, str], window: float) -> dict:
    names = {pid: thread_names(pid) for pid in pids}
    first = {pid: snapshot(pid) for pid in pids}
    t0, load0 = time.monotonic(), os.getloadavg()
    time.sleep(window)
    last = {pid: snapshot(pid) for pid in pids}
    seconds = time.monotonic() - t0
    procs = []
    for pid, role in pids.items():
        threads = delta(first[pid], last[pid], names[pid])
        total = {k: sum(t[k] for t in threads) for k in ("user_s", "sys_s", "cpu_s", "runqueue_wait_s", "minor_faults",
                                                          "voluntary_switches", "involuntary_switches")}
        procs.append({"pid": pid, "role": role, "total": total,
                      "threads": [t for t in threads if t["cpu_s"] >= 0.05 * seconds / 60]})
    return {"window_s": seconds, "cpus": os.cpu_count(), "load_before": load0, "load_after": os.getloadavg(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "processes": procs}


def report(res: dict) -> str:
    w = res["window_s"]
    lines = [f"{w:.0f} s window, {res['cpus']} CPUs, load {res['load_before'][0]:.2f} -> {res['load_after'][0]:.2f} "
             f"({res['time']}); CPU figures in cores (seconds per second)",
             f"{'process':14s} {'thread':18s} {'cpu':>6s} {'user':>6s} {'sys':>6s} {'rq wait':>7s} {'faults/s':>9s} "
             f"{'invol cs/s':>10s}"]
    for p in sorted(res["processes"], key=lambda p: -p["total"]["cpu_s"]):
        t = p["total"]
        lines.append(f"{p['role'][:14]:14s} {'(all)':18s} {t['cpu_s'] / w:6.2f} {t['user_s'] / w:6.2f} "
                     f"{t['sys_s'] / w:6.2f} {t['runqueue_wait_s'] / w:7.2f} {t['minor_faults'] / w:9.0f} "
                     f"{t['involuntary_switches'] / w:10.0f}")
        for th in p["threads"][:4]:
            lines.append(f"{'':14s} {th['name'][:18]:18s} {th['cpu_s'] / w:6.2f} {th['user_s'] / w:6.2f} "
                         f"{th['sys_s'] / w:6.2f} {th['runqueue_wait_s'] / w:7.2f} {th['minor_faults'] / w:9.0f} "
                         f"{th['involuntary_switches'] / w:10.0f}")
    busy = sum(p["total"]["cpu_s"] for p in res["processes"]) / w
    lines.append(f"all watched processes: {busy:.2f} of {res['cpus']} cores")
    return "\n".join(lines)


def pyspy_summary(raw: Path, top: int = 8) -> str:
    """Samples per thread and the most frequent last-4-frame stacks of a ``py-spy record -f raw --threads`` file."""
    import collections

    per_thread: collections.Counter = collections.Counter()
    stacks: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        per_thread[frames[0]] += int(count)
        stacks[frames[0]][";".join(f.split(" (")[0] for f in frames[-4:])] += int(count)
    lines = []
    for thread, n in per_thread.most_common():
        lines.append(f"== {thread}: {n} samples")
        lines += [f"   {c:6d} {k[:200]}" for k, c in stacks[thread].most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", help="a winnow up run directory (its processes are found by command line)")
    p.add_argument("--pid", type=int, action="append", default=[], help="watch this process (repeatable)")
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--out", default=None, help="append the result as one JSON line here")
    p.add_argument("--pyspy-raw", default=None, help="only summarize this `py-spy record -f raw --threads` file")
    args = p.parse_args(argv)
    if args.pyspy_raw:
        print(pyspy_summary(Path(args.pyspy_raw)))
        return 0
    pids = {pid: f"pid{pid}" for pid in args.pid}
    if args.run_dir:
        pids |= run_pids(Path(args.run_dir))
    if not pids:
        p.error("no process to watch: give a running winnow up's RUN_DIR or --pid")
    res = profile(pids, args.window)
    print(report(res))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
