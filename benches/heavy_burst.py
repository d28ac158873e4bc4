#!/usr/bin/env python3
"""Scale-out of a heavy function: a burst of concurrent requests to a Python function whose
import takes 500 ms, with one warm instance.

    python3 benches/heavy_burst.py [--burst 50] [--import-ms 500] [--gust target/release/gust]
    python3 benches/heavy_burst.py --example ml-inference [--max-instances 50]

With `--example ml-inference` the function is `examples/ml-inference` (numpy and scikit-learn,
built from the registry pip is set up for; its import and training take about 1.5 s of CPU)
and each request a prediction; there is no fork floor for it (the built package lives in
Gust's data directory).

Gust: the function is deployed (`--max-instances` as given, default 50), one request warms an
instance, then `--burst` clients each open a connection and send one request at the same
moment. Reported: p50 / p99 / max latency; the requests that waited for a cold start
(`gust_function_cold_starts` on `/metrics`); and the instances the function has once the
starts the burst asked for have finished (`gust_function_instances`, idle and busy).

Fork floor, in the same run: one plain Python process imports the same module (the same
500 ms), then forks a child per request, each with a listening socket of its own, and the same
number of clients each send one request to their child as soon as its socket exists. This is
what forking instances from a loaded template would cost on these cores, before any per-child
set-up (a cgroup, a sandbox's wiring) and before Gust's own hop: the figure a template
implementation would be measured against.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gust_process import RELEASE_GUST, GustProcess  # noqa: E402

FUNCTION = "import time\ntime.sleep({seconds})\n\ndef main():\n    return 'ready'\n"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEATURES = json.dumps({"features": [6.7, 3.0, 5.2, 2.3]})

# The fork floor: a module that takes as long to import, a process that forks a child per
# request after importing it, each child answering one HTTP request on its own Unix socket.
FORKER = textwrap.dedent("""\
    import os, socket, sys, time
    sys.path.insert(0, sys.argv[1])
    import heavy  # the same import time as the function
    work, count = sys.argv[1], int(sys.argv[2])
    sys.stdout.write("imported\\n"); sys.stdout.flush()
    sys.stdin.readline()  # the burst begins
    for n in range(count):
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(os.path.join(work, "child-%d.sock" % n))
        listener.listen(1)
        if os.fork() == 0:
            conn, _ = listener.accept()
            conn.recv(65536)
            body = heavy.main().encode()
            conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body))
            conn.close()
            os._exit(0)
        listener.close()
    for _ in range(count):
        os.wait()
    """)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def summary(latencies):
    if not latencies:
        return "-"
    return (f"{percentile(latencies, 50):.1f} / {percentile(latencies, 99):.1f} / "
            f"{max(latencies):.1f}")


def metric(gust, name, function):
    """The sum of `name`'s series for `function` on `/metrics`."""
    text = gust.api_get("/metrics").decode()
    pattern = re.compile(r'^%s\{[^}]*function="%s"[^}]*\} (\S+)$'
                         % (re.escape(name), re.escape(function)), re.M)
    return sum(float(v) for v in pattern.findall(text))


def burst(count, send):
    """Runs `send(n)` in `count` threads released together; the latency of each that
    succeeded, in ms, and what the others failed with."""
    latencies = [None] * count
    failures = []
    release = threading.Barrier(count + 1)

    def client(n):
        release.wait()
        started = time.perf_counter()
        try:
            send(n)
        except Exception as err:  # noqa: BLE001 - reported with the figures
            failures.append(str(err))
            return
        latencies[n] = (time.perf_counter() - started) * 1e3

    threads = [threading.Thread(target=client, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    release.wait()
    for thread in threads:
        thread.join()
    return [ms for ms in latencies if ms is not None], failures


def gust_burst(args, work):
    gust = GustProcess(args.gust, work)
    try:
        if args.example:
            code = os.path.join(work, args.example)
            shutil.copytree(os.path.join(ROOT, "examples", args.example), code)
            extra = ["--memory", "512"]
        else:
            code = gust.write("heavy.py", FUNCTION.format(seconds=args.import_ms / 1000))
            extra = []
        gust.cli("fn", "create", "heavy", "--env", "python", "--code", code, "--url", "/heavy",
                 "--max-instances", str(args.max_instances), "--timeout", "120s", *extra)
        url_port = gust.public
        method, body = ("POST", FEATURES) if args.example else ("GET", None)

        def request(_):
            connection = http.client.HTTPConnection("127.0.0.1", url_port, timeout=120)
            connection.request(method, "/heavy", body,
                               {"Content-Type": "application/json"} if body else {})
            response = connection.getresponse()
            response.read()
            connection.close()
            if response.status != 200:
                reason = response.getheader("x-gust-error") or ""
                raise RuntimeError(f"/heavy answered {response.status} {reason}".strip())

        time.sleep(12)  # the deploy's instance retires; the warm one is the request's
        request(0)
        before = metric(gust, "gust_function_cold_starts_total", "heavy")
        latencies, failures = burst(args.burst, request)
        waited = metric(gust, "gust_function_cold_starts_total", "heavy") - before
        # The starts the burst asked for end (a few at a time).
        start_s = 3.0 if args.example else args.import_ms / 1000
        time.sleep(start_s * args.burst / 4 + 5 if args.example else start_s * 4 + 3)
        instances = metric(gust, "gust_function_instances", "heavy")
        return latencies, failures, waited, instances
    finally:
        gust.stop()


def fork_floor(args, work):
    module = os.path.join(work, "heavy.py")
    with open(module, "w") as f:
        f.write(FUNCTION.format(seconds=args.import_ms / 1000))
    forker = subprocess.Popen([sys.executable, "-c", FORKER, work, str(args.burst)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if forker.stdout.readline().strip() != "imported":
        raise RuntimeError("the forking process did not start")

    def request(n):
        path = os.path.join(work, f"child-{n}.sock")
        while True:
            try:
                conn = socket.socket(socket.AF_UNIX)
                conn.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                conn.close()
                time.sleep(0.0002)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"ready"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
        conn.close()
        if not answer.endswith(b"ready"):
            raise RuntimeError(f"child {n} did not answer")

    def go(n):
        if n == 0:
            forker.stdin.write("go\n")
            forker.stdin.flush()
        request(n)

    latencies, failures = burst(args.burst, go)
    forker.wait(timeout=60)
    if failures:
        raise RuntimeError(f"fork floor: {failures[:3]}")
    return latencies


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--import-ms", type=int, default=500)
    parser.add_argument("--max-instances", type=int, default=50)
    parser.add_argument("--gust", default=RELEASE_GUST)
    parser.add_argument("--example", choices=["ml-inference"])
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="gust-heavy-burst-")
    try:
        os.mkdir(os.path.join(work, "gust"))
        latencies, failures, waited, instances = gust_burst(args, os.path.join(work, "gust"))
        floor = None if args.example else fork_floor(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    what = args.example or f"import {args.import_ms} ms"
    print(f"burst of {args.burst} concurrent requests, {what}, "
          f"one warm instance; latency p50 / p99 / max in ms")
    print("| | latency | mean | requests that waited for a cold start | instances after |")
    print("|---|---|---|---|---|")
    mean = f"{statistics.mean(latencies):.1f}" if latencies else "-"
    print(f"| gust | {summary(latencies)} | {mean} | {waited:.0f} | "
          f"{instances:.0f} |")
    if failures:
        print(f"{len(failures)} of {args.burst} failed, e.g. {sorted(set(failures))[:3]}")
    if floor:
        print(f"| fork floor (plain process) | {summary(floor)} | "
              f"{statistics.mean(floor):.1f} | {args.burst} | {args.burst} |")


if __name__ == "__main__":
    main()
