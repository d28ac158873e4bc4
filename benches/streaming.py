#!/usr/bin/env python3
"""Streaming responses against buffered ones: what the streaming body path costs a warm request
and the wasm tier's throughput, and what it gives a function that streams.

Run: `python3 benches/streaming.py NEW_GUST OLD_GUST` with two release builds (for example
this commit's and the one before streaming, built from a worktree). Each binary is started
in turn, ROUNDS times alternately so that drift in the machine's speed touches both alike,
and measured with the same client:
1. Warm latency: sequential GETs over one keep-alive connection to a Python function that
   returns "ok"; p50 and p99.
2. Wasm throughput: GETs from CLIENTS threads, each on its own keep-alive connection, to the
   `hello.wasm` component for a fixed number of requests; requests per second.
3. Time to first byte: a Python function that yields a chunk, sleeps 1 s and yields another
   (under the old binary, which cannot stream, the same function returning both chunks at
   the end); the time to the first chunk and to the end, sequential requests.
Prints a Markdown table: each figure for both binaries and their ratio.
"""

import concurrent.futures
import http.client
import os
import statistics
import sys
import tempfile
import time

from gust_process import ROOT, GustProcess

ROUNDS = int(os.environ.get("ROUNDS", "3"))
WARM_REQUESTS = 2000
WASM_REQUESTS = 4000
CLIENTS = 8
TTFB_REQUESTS = 10
HELLO_WASM = os.path.join(ROOT, "tests/components/hello.wasm")

OK_PY = "def main():\n    return 'ok'\n"
DRIP_PY = "import time\ndef main():\n    yield 'first\\n'\n    time.sleep(1)\n    yield 'second\\n'\n"
BUFFERED_DRIP_PY = "import time\ndef main():\n    first = 'first\\n'\n    time.sleep(1)\n    return first + 'second\\n'\n"


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def get(connection, path):
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200, (response.status, body)
    return body


def warm_latency(port):
    connection = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(100):
        get(connection, "/ok")
    samples = []
    for _ in range(WARM_REQUESTS):
        started = time.perf_counter()
        get(connection, "/ok")
        samples.append(time.perf_counter() - started)
    connection.close()
    return samples


def wasm_throughput(port):
    def client(count):
        connection = http.client.HTTPConnection("127.0.0.1", port)
        for _ in range(count):
            get(connection, "/hello")
        connection.close()

    client(50)
    per_client = WASM_REQUESTS // CLIENTS
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, [per_client] * CLIENTS))
    return per_client * CLIENTS / (time.perf_counter() - started)


def first_byte(port):
    connection = http.client.HTTPConnection("127.0.0.1", port)
    get(connection, "/drip")
    firsts, lasts = [], []
    for _ in range(TTFB_REQUESTS):
        started = time.perf_counter()
        connection.request("GET", "/drip")
        response = connection.getresponse()
        first = response.read1()
        firsts.append(time.perf_counter() - started)
        rest = response.read()
        lasts.append(time.perf_counter() - started)
        assert first + rest == b"first\nsecond\n", first + rest
    connection.close()
    return firsts, lasts


def measure(binary, streams):
    with tempfile.TemporaryDirectory() as work:
        gust = GustProcess(binary, work)
        try:
            gust.deploy("ok", "python", gust.write("ok.py", OK_PY))
            gust.deploy("drip", "python", gust.write("drip.py", DRIP_PY if streams else BUFFERED_DRIP_PY))
            gust.deploy("hello", "wasm", HELLO_WASM)
            warm = warm_latency(gust.public)
            throughput = wasm_throughput(gust.public)
            firsts, lasts = first_byte(gust.public)
        finally:
            gust.stop()
    return warm, throughput, firsts, lasts


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: streaming.py NEW_GUST OLD_GUST")
    binaries = {"new": sys.argv[1], "old": sys.argv[2]}
    results = {name: {"warm": [], "wasm": [], "first": [], "last": []} for name in binaries}
    for round_ in range(ROUNDS):
        for name, binary in binaries.items():
            warm, throughput, firsts, lasts = measure(binary, streams=name == "new")
            results[name]["warm"] += warm
            results[name]["wasm"].append(throughput)
            results[name]["first"] += firsts
            results[name]["last"] += lasts
            print(f"round {round_ + 1} {name}: warm p50 {statistics.median(warm) * 1e6:.0f} µs, "
                  f"wasm {throughput:.0f} req/s, first byte p50 {statistics.median(firsts) * 1e3:.1f} ms",
                  file=sys.stderr)

    def row(label, unit, new, old):
        print(f"| {label} | {new:.{unit[1]}f} {unit[0]} | {old:.{unit[1]}f} {unit[0]} | {new / old:.2f} |")

    new, old = results["new"], results["old"]
    print("| measure | streaming (new) | buffered (old) | new / old |")
    print("|---|---|---|---|")
    for p, label in ((0.5, "p50"), (0.99, "p99")):
        row(f"warm Python request {label}", ("µs", 0),
            percentile(new["warm"], p) * 1e6, percentile(old["warm"], p) * 1e6)
    row("wasm hello throughput (median of rounds)", ("req/s", 0),
        statistics.median(new["wasm"]), statistics.median(old["wasm"]))
    row("drip: time to first byte p50", ("ms", 1),
        statistics.median(new["first"]) * 1e3, statistics.median(old["first"]) * 1e3)
    row("drip: time to last byte p50", ("ms", 1),
        statistics.median(new["last"]) * 1e3, statistics.median(old["last"]) * 1e3)


if __name__ == "__main__":
    main()
