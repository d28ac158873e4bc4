#!/usr/bin/env python3
"""What a process function's allow-list (`--allow-outbound`) costs its cold start.

Starts `gust up` (the release build by default) on free loopback ports and, round after round,
deploys three Python functions and times their first request (a cold start: a pooled worker
specialized for the function) and their second (warm):
  - `outbound`: no allow-list (the baseline: the pooled worker's link is kept as it is);
  - `listed`: one public address listed (the worker's nftables filter and a route are set);
  - `loopback`: a port of the host's loopback listed (the filter, then a link restarted with
    host loopback allowed, and route_localnet).
Prints p50 and p99 of each and the difference to the baseline.
Run as root: `sudo python3 benches/allow_list.py [path/to/gust]` after `cargo build --release`.
"""

import os
import sys
import tempfile
import time
import urllib.request

from gust_process import RELEASE_GUST, GustProcess

GUST = sys.argv[1] if len(sys.argv) > 1 else RELEASE_GUST
ROUNDS = int(os.environ.get("ROUNDS", "30"))
VARIANTS = {
    "outbound": [],
    "listed": ["--allow-outbound", "https://203.0.113.7"],
    "loopback": ["--allow-outbound", "http://127.0.0.1:9"],
}


def timed(url):
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as answer:
        answer.read()
    return (time.perf_counter() - started) * 1e3


def pick(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main():
    work = tempfile.mkdtemp(prefix="gust-allow-list-")
    gust = GustProcess(GUST, work)
    try:
        code = gust.write("hello.py", "def main():\n    return 'hello'\n")
        cold = {name: [] for name in VARIANTS}
        warm = {name: [] for name in VARIANTS}
        for round_ in range(ROUNDS):
            for name, args in VARIANTS.items():
                function = f"{name}-{round_}"
                url = gust.deploy(function, "python", code, *args)
                cold[name].append(timed(url))
                warm[name].append(timed(url))
                # Let the pool refill, so that every first request is a pooled cold start.
                time.sleep(0.3)
        base = pick(cold["outbound"], 0.5)
        print(f"{ROUNDS} rounds, Python, first request after create (cold) and second (warm)")
        print("| function | cold p50 | cold p99 | warm p50 | cold p50 over outbound |")
        print("|---|---|---|---|---|")
        for name in VARIANTS:
            print(f"| {name} | {pick(cold[name], 0.5):.2f} ms | {pick(cold[name], 0.99):.2f} ms"
                  f" | {pick(warm[name], 0.5):.2f} ms | {pick(cold[name], 0.5) - base:+.2f} ms |")
    finally:
        gust.stop()


if __name__ == "__main__":
    main()
