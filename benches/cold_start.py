#!/usr/bin/env python3
"""Where a process-tier cold start's time goes: the first request to never-invoked functions,
timed by the client, beside the phases Gust traces for each (`GUST_LOG=...=debug`).

    python3 benches/cold_start.py [--functions 40] [--gust target/release/gust]

For each built-in runtime it deploys `--functions` distinct functions, waits until the
instance each deploy loaded its code in has retired (so that the first request is a real cold
start from the pool), then sends each one request, 400 ms apart (the pool refills between
them as it would between real first requests), on an open keep-alive connection (the
connection's set-up is not timed). The phases, from the `cold start` and `specialized` debug
events of `gust_runtime_process`:

  worker    taking a pooled worker (or starting one, when the pool is empty)
  limits    the cgroup's memory limit and the network policy applied to it
  place     the code linked into the worker's code directory (and secrets written)
  load      the specialize round trip: the worker imports the code and answers
  read      the function's deployment read from the store, with the hand-off to the
            blocking thread that reads it (the `deployment read` event of `gust_executor`):
            10 s after a deploy an unused function is unloaded, so its first request reads it
  rest      what the client saw minus the above: routing, the executor, the first request's
            round trip through the specialized worker, and the response back

Baseline in the same run: the same function's second request (warm), whose time is the floor
the rest cannot go below.
"""

import argparse
import http.client
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gust_process import RELEASE_GUST, GustProcess  # noqa: E402

CODE = {
    "python": ("py", "def main():\n    return 'cold {n}'\n"),
    "node": ("js", "module.exports = async function () {{ return 'cold {n}'; }};\n"),
}
FIELD = re.compile(r"(\w+)=(\S+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def request_ms(connection, path):
    started = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    elapsed = (time.perf_counter() - started) * 1e3
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status}")
    return elapsed


def events(log_path, message):
    """{function: fields} of each debug event `message` in the log."""
    found = {}
    with open(log_path) as f:
        for line in f:
            line = ANSI.sub("", line)
            if f" {message} " in line or line.rstrip().endswith(f" {message}") or \
                    f": {message}" in line:
                fields = dict(FIELD.findall(line))
                if "function" in fields:
                    found[fields["function"]] = fields
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=40)
    parser.add_argument("--gust", default=RELEASE_GUST)
    args = parser.parse_args()
    os.environ["GUST_LOG"] = "info,gust_runtime_process=debug,gust_executor=debug"
    work = tempfile.mkdtemp(prefix="gust-cold-start-")
    gust = GustProcess(args.gust, work)
    results = {}
    try:
        for runtime, (ext, template) in CODE.items():
            names = [f"{runtime}-{n}" for n in range(args.functions)]
            for n, name in enumerate(names):
                code = gust.write(f"{name}.{ext}", template.format(n=n))
                gust.cli("fn", "create", name, "--env", runtime, "--code", code,
                         "--url", f"/{name}")
            time.sleep(15)  # each deploy's loaded instance retires 10 s after it
            cold, warm = {}, []
            connection = http.client.HTTPConnection("127.0.0.1", gust.public, timeout=30)
            for name in names:
                time.sleep(0.4)
                cold[name] = request_ms(connection, f"/{name}")
                warm.append(request_ms(connection, f"/{name}"))
            connection.close()
            results[runtime] = (cold, warm)
        time.sleep(1)
        log = os.path.join(work, "gust.log")
        starts, specialized = events(log, "cold start"), events(log, "specialized")
        # The last read of each function: its first request's (the deploy's came before).
        reads = events(log, "deployment read")
    finally:
        gust.stop()
    try:
        print(f"{args.functions} first requests per runtime, 400 ms apart; p50 / p99 in ms")
        print("| runtime | client: cold | worker | limits | place | load | read | rest | "
              "baseline: warm request |")
        print("|---|---|---|---|---|---|---|---|---|")
        for runtime, (cold, warm) in results.items():
            phases = {"worker": [], "limits": [], "place": [], "load": [], "read": [], "rest": []}
            for name, total in cold.items():
                start, spec = starts.get(name), specialized.get(name)
                if not start or not spec:
                    continue
                worker = float(start["worker_ms"])
                parts = [worker, float(spec["limits_ms"]), float(spec["place_ms"]),
                         float(spec["load_ms"])]
                for key, value in zip(["worker", "limits", "place", "load"], parts):
                    phases[key].append(value)
                read = reads.get(name)
                read_ms = (float(read["read_ms"]) + float(read["handoff_ms"])) if read else 0.0
                phases["read"].append(read_ms)
                # specialize_ms covers limits, place and load, and the bits between them.
                phases["rest"].append(total - worker - float(start["specialize_ms"]) - read_ms)
            if not phases["worker"]:
                raise RuntimeError(f"no traced cold starts for {runtime}; see {log}")

            def cell(values):
                return f"{percentile(values, 50):.2f} / {percentile(values, 99):.2f}"

            print(f"| {runtime} ({len(phases['worker'])} traced) | {cell(list(cold.values()))} | "
                  + " | ".join(cell(phases[k]) for k in
                               ["worker", "limits", "place", "load", "read", "rest"])
                  + f" | {cell(warm)} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
