#!/usr/bin/env python3
"""Dependency builds and a function with heavy dependencies: the ml-inference example
(numpy, scikit-learn) against the same code in a plain Python process.

Run: `python3 benches/builds.py [GUST]` with a release build (default target/release/gust).
Packages come from the registry this machine's pip is set up for. Measures, in one run:
1. Build times through the CLI (it returns when the revision is live): the first build
   (pip downloads and installs), a second function with the same requirements (the build
   cache), and a code-only update of the first (the target is at most 1 s).
2. Cold start: the first request to a fresh instance (a new revision each time, so a new
   worker that imports numpy and scikit-learn and trains the model), COLD_SAMPLES times;
   against a plain `python3` HTTP server over the same package directory, from process
   start to its first answer.
3. Warm prediction: WARM_REQUESTS sequential POSTs over one keep-alive connection, p50 and
   p99, through Gust's public listener and to the plain server.
Prints a Markdown table: each figure, its baseline and their ratio.
"""

import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from gust_process import RELEASE_GUST, ROOT, GustProcess, free_port

COLD_SAMPLES = int(os.environ.get("COLD_SAMPLES", "7"))
WARM_REQUESTS = int(os.environ.get("WARM_REQUESTS", "2000"))
FEATURES = json.dumps({"features": [6.7, 3.0, 5.2, 2.3]})

# The plain baseline: the same `main(req)` behind Python's own HTTP server, keep-alive.
PLAIN_SERVER = r'''
import http.server, json, sys
sys.path.insert(0, sys.argv[1])
import main

class Req:
    def __init__(self, body):
        self.body = body
    def json(self):
        return json.loads(self.body or b"null")

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out as two writes: without this, Nagle's algorithm and the client's
    # delayed ACK add 40 ms to every answer.
    disable_nagle_algorithm = True
    def log_message(self, *args):
        pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        out = json.dumps(main.main(Req(body))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
'''


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def timed_cli(gust, *args):
    started = time.perf_counter()
    gust.cli(*args)
    return time.perf_counter() - started


def predict(connection, path):
    connection.request("POST", path, FEATURES, {"Content-Type": "application/json"})
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200, (response.status, body)
    assert json.loads(body)["class"] == "virginica", body
    return body


def first_answer(port, path, deadline_s=60):
    """Seconds until `path` first answers (connection refusals retried)."""
    started = time.perf_counter()
    while True:
        try:
            predict(http.client.HTTPConnection("127.0.0.1", port, timeout=60), path)
            return time.perf_counter() - started
        except ConnectionRefusedError:
            if time.perf_counter() - started > deadline_s:
                raise
            time.sleep(0.002)


def warm(port, path):
    connection = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(50):
        predict(connection, path)
    samples = []
    for _ in range(WARM_REQUESTS):
        started = time.perf_counter()
        predict(connection, path)
        samples.append(time.perf_counter() - started)
    return samples


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else RELEASE_GUST
    work = tempfile.mkdtemp(prefix="gust-bench-builds-")
    code = os.path.join(work, "iris")
    shutil.copytree(os.path.join(ROOT, "examples/ml-inference"), code)
    gust = GustProcess(binary, work)
    rows = []
    try:
        first = timed_cli(gust, "fn", "create", "iris", "--env", "python", "--code", code,
                          "--memory", "512")
        cached = timed_cli(gust, "fn", "create", "iris2", "--env", "python", "--code", code,
                           "--memory", "512")
        with open(os.path.join(code, "main.py"), "a") as f:
            f.write("\n# a code-only change\n")
        code_only = timed_cli(gust, "fn", "update", "iris", "--code", code)
        gust.cli("route", "create", "--fn", "iris", "--url", "/predict", "--method", "POST")
        rows.append(("first build, to live (s)", first, None))
        rows.append(("same requirements, another function (s)", cached, first))
        rows.append(("code-only update, to live (s)", code_only, first))

        cold = []
        for sample in range(COLD_SAMPLES):
            gust.cli("fn", "update", "iris", "--env-var", f"SAMPLE={sample}")
            cold.append(first_answer(gust.public, "/predict"))
        view = json.loads(subprocess.run(
            [binary, "--url", f"http://127.0.0.1:{gust.api}", "fn", "get", "iris", "-o", "json"],
            env=gust.env, check=True, capture_output=True).stdout)
        package = os.path.join(work, "data", "code", view["code_digest"])
        gust_warm = warm(gust.public, "/predict")

        plain_cold, plain_warm = [], None
        server = os.path.join(work, "plain_server.py")
        with open(server, "w") as f:
            f.write(PLAIN_SERVER)
        for sample in range(COLD_SAMPLES):
            port = free_port()
            started = time.perf_counter()
            process = subprocess.Popen(["/usr/bin/python3", server, package, str(port)])
            try:
                first_answer(port, "/")
                plain_cold.append(time.perf_counter() - started)
                if sample == COLD_SAMPLES - 1:
                    plain_warm = warm(port, "/")
            finally:
                process.kill()
                process.wait()

        for name, p in (("p50", 0.5), ("p99", 0.99)):
            rows.append((f"cold start {name} (ms)", percentile(cold, p) * 1e3,
                         percentile(plain_cold, p) * 1e3))
        for name, p in (("p50", 0.5), ("p99", 0.99)):
            rows.append((f"warm prediction {name} (µs)", percentile(gust_warm, p) * 1e6,
                         percentile(plain_warm, p) * 1e6))
        rows.append(("package size (MB)", view["code_bytes"] / 1e6, None))
    finally:
        gust.stop()
        shutil.rmtree(work, ignore_errors=True)

    print("| figure | Gust | baseline | ratio |")
    print("|---|---|---|---|")
    for name, value, baseline in rows:
        if baseline is None:
            print(f"| {name} | {value:,.3f} | | |")
        else:
            print(f"| {name} | {value:,.3f} | {baseline:,.3f} | {value / baseline:.2f} |")
    print(f"\ncold samples: {COLD_SAMPLES}, warm requests: {WARM_REQUESTS}; "
          f"gust cold (ms): {[round(c * 1e3) for c in cold]}; "
          f"plain cold (ms): {[round(c * 1e3) for c in plain_cold]}; "
          f"median warm gust/plain: {statistics.median(gust_warm) / statistics.median(plain_warm):.2f}")


if __name__ == "__main__":
    main()
