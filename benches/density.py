#!/usr/bin/env python3
"""Process-tier density: the memory of one `gust up` with many deployed Python functions, some
of them warm, against the same `gust up` before any was deployed.

    python3 benches/density.py [--functions 1000] [--warm 100] [--gust target/release/gust]

Deploys `--functions` distinct Python functions (each its own code), invokes `--warm` of them
once (each then keeps a warm instance: a sandboxed interpreter until its idle timeout), and
reports, for the gust process and for its workers (every process below it: sandboxes,
interpreters, the pool): resident memory (RSS) and proportional set size (PSS, which splits
pages shared between processes, such as the interpreter's code, among them). The figures
before deploying anything are the baseline, measured in the same run.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gust_process import RELEASE_GUST, GustProcess  # noqa: E402
from throughput import tree  # noqa: E402


def memory_kb(pids):
    """Summed (RSS, PSS) in kB of the processes still alive."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def snapshot(gust):
    pids = tree(gust.process.pid)
    return memory_kb(pids[:1]), memory_kb(pids[1:]), len(pids) - 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=1000)
    parser.add_argument("--warm", type=int, default=100)
    parser.add_argument("--gust", default=RELEASE_GUST)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="gust-density-")
    gust = GustProcess(args.gust, work)
    try:
        time.sleep(5)  # the pools fill
        before = snapshot(gust)
        started = time.monotonic()
        for n in range(args.functions):
            code = gust.write(f"f{n}.py", f"def main():\n    return 'function {n}'\n")
            gust.cli("fn", "create", f"f{n}", "--env", "python", "--code", code,
                     "--url", f"/f{n}")
        deployed = time.monotonic() - started
        # Each deploy loads its code in an instance, kept warm 10 s for a first request.
        time.sleep(15)
        idle = snapshot(gust)
        for n in range(args.warm):
            url = f"http://127.0.0.1:{gust.public}/f{n}"
            body = urllib.request.urlopen(url, timeout=30).read().decode()
            assert body == f"function {n}", body
        time.sleep(5)  # the pool refills behind the instances taken
        warm = snapshot(gust)
    finally:
        gust.stop()
        shutil.rmtree(work, ignore_errors=True)

    def mb(kb):
        return f"{kb / 1024:,.1f}"

    print(f"{args.functions} Python functions deployed in {deployed:.0f} s; "
          f"{args.warm} of them warm")
    print("| state | gust RSS / PSS (MB) | workers RSS / PSS (MB) | worker processes |")
    print("|---|---|---|---|")
    for name, ((g_rss, g_pss), (w_rss, w_pss), count) in [
            ("nothing deployed (baseline)", before),
            (f"{args.functions} deployed, none invoked", idle),
            (f"{args.warm} warm", warm)]:
        print(f"| {name} | {mb(g_rss)} / {mb(g_pss)} | {mb(w_rss)} / {mb(w_pss)} | {count} |")
    extra_pss = warm[1][1] - idle[1][1]
    print(f"\nper warm instance: {mb(extra_pss / args.warm)} MB PSS of workers "
          f"(({mb(warm[1][1])} - {mb(idle[1][1])}) / {args.warm})")


if __name__ == "__main__":
    main()
