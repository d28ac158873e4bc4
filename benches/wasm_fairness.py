#!/usr/bin/env python3
"""S-19 as a measurement: what 150 looping WebAssembly guests do to everyone else.

Starts `gust up` (the release build by default) on free loopback ports, deploys the test probe
component twice ("spinner", 60 s timeout, and "bystander") and a Python function, measures the
API's /healthz, the bystander and the Python function while idle (the baseline), then again
with 150 requests to /spinner/loop held open. Prints p50 and p99 of 20 requests each, and the
bystander's p50 as the looping guests are opened (10, 50, 150): flat if a busy function's
guests do not each stand in the other function's way.
Run: `python3 benches/wasm_fairness.py [path/to/gust]` after `cargo build --release`.
"""

import os
import socket
import sys
import tempfile
import time
import urllib.request

from gust_process import RELEASE_GUST, ROOT, GustProcess

GUST = sys.argv[1] if len(sys.argv) > 1 else RELEASE_GUST
PROBE = os.path.join(ROOT, "tests/components/probe.wasm")
LOOPERS = 150
SAMPLES = 20



def timed(url):
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as answer:
        answer.read()
    return (time.perf_counter() - started) * 1e3


def measure(urls):
    results = {}
    for name, url in urls.items():
        samples = sorted(timed(url) for _ in range(SAMPLES))
        results[name] = (samples[len(samples) // 2], samples[int(len(samples) * 0.99) - 1])
    return results


def main():
    work = tempfile.mkdtemp(prefix="gust-fairness-")
    gust = GustProcess(GUST, work)
    public, api = gust.public, gust.api
    try:
        py = gust.write("py.py", "def main():\n    return 'py'\n")
        for name, env, code, extra in [("spinner", "wasm", PROBE, ["--timeout", "60s"]),
                                       ("bystander", "wasm", PROBE, []),
                                       ("py", "python", py, [])]:
            gust.deploy(name, env, code, *extra, prefix=True)
        urls = {"API /healthz": f"http://127.0.0.1:{api}/healthz",
                "another wasm function": f"http://127.0.0.1:{public}/bystander",
                "a python function": f"http://127.0.0.1:{public}/py"}
        measure(urls)  # warm everything up
        idle = measure(urls)
        loopers = []
        growing = {}
        for count in (10, 50, LOOPERS):
            while len(loopers) < count:
                s = socket.create_connection(("127.0.0.1", public))
                s.sendall(b"GET /spinner/loop HTTP/1.1\r\nHost: gust\r\n\r\n")
                loopers.append(s)
            time.sleep(2)
            growing[count] = measure({"bystander": urls["another wasm function"]})["bystander"]
        loaded = measure(urls)
        print("| looping guests | another wasm function p50 / p99 |")
        print("|---|---|")
        for count, (p50, p99) in growing.items():
            print(f"| {count} | {p50:.2f} / {p99:.2f} ms |")
        print(f"{LOOPERS} looping guests, {SAMPLES} requests each, p50 / p99:")
        print("| request | idle (baseline) | with the loopers | ratio (p50) |")
        print("|---|---|---|---|")
        for name in urls:
            (i50, i99), (l50, l99) = idle[name], loaded[name]
            print(f"| {name} | {i50:.2f} / {i99:.2f} ms | {l50:.2f} / {l99:.2f} ms "
                  f"| {l50 / i50:.1f} |")
    finally:
        gust.stop()


if __name__ == "__main__":
    main()
