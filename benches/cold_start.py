#!/usr/bin/env python3
"""Where a process-tier cold start's time goes: the first request to never-invoked functions,
timed by the client, beside the phases Gust traces for each (`GUST_LOG=...=debug`).

    python3 benches/cold_start.py [--functions 40] [--gust target/release/gust]

For each built-in runtime it deploys `--functions` distinct functions, waits until the
instance each deploy loaded its code in has retired (so that the first request is a real cold
start from the pool), then sends each one request, 400 ms apart by default, `--gap` (the pool refills between
them as it would between real first requests), on an open keep-alive connection (the
connection's set-up is not timed). The phases, from the `cold start` and `specialized` debug
events of `gust_runtime_process`:

  worker    taking a pooled worker (or starting one, when the pool is empty)
  limits    the cgroup's memory limit and the network policy applied to it
  place     the code linked into the worker's code directory (and secrets written)
  load      the specialize round trip: the worker imports the code and answers
  (worker)  of which the worker's own work, as the built-in servers report it (`loadMs`):
            reading the request, importing the code, until the answer is written; the rest
            of `load` is the exchange (waking the worker, Gust reading the answer)
  read      the function's deployment read from the store, with the hand-off to the
            blocking thread that reads it (the `deployment read` event of `gust_executor`):
            10 s after a deploy an unused function is unloaded, so its first request reads it
  rest      what the client saw minus the above: routing, the executor, the first request's
            round trip through the specialized worker, and the response back

Baselines in the same run:
- the same function's warm request after the same idle gap ("warm: idle", the like-for-like
  comparison) and right after its first request ("warm: next");
- a plain server of the runtime (Python's `ThreadingHTTPServer`, Node's `http`) answering the
  same client in the same pattern: a request after the gap ("plain server: idle"), then one
  right after it ("next"). A cold start cannot take less than one request to an idle machine;
- the machine itself: the same CPU work in this process back to back and after the gap. An
  idle spell makes the next work slower on some machines, with no I/O involved.
"""

import argparse
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gust_process import RELEASE_GUST, GustProcess, free_port  # noqa: E402

CODE = {
    "python": ("py", "def main():\n    return 'cold {n}'\n"),
    "node": ("js", "module.exports = async function () {{ return 'cold {n}'; }};\n"),
}
# The plainest server a user would write for the same function, kept alive, one process.
PLAIN = {
    "python": ("python3", textwrap.dedent("""\
        import sys
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = b"cold 0"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self._headers_buffer.append(b"\\r\\n" + body)
                self.flush_headers()

            def log_message(self, *args):
                pass

        ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
        """)),
    "node": ("node", textwrap.dedent("""\
        require('node:http').createServer((req, res) => {
          res.writeHead(200, {'content-length': 6});
          res.end('cold 0');
        }).listen(Number(process.argv[2]), '127.0.0.1');
        """)),
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


def idle_penalty(gap):
    """(back to back, after `gap` s idle): the median ms of the same CPU work (compiling and
    running a two-line module 20 times) in this process. How much slower this machine runs
    code right after an idle spell, with no I/O and no other process involved."""
    source = "def main():\n    return 'cold'\n"

    def work_ms():
        started = time.perf_counter()
        for _ in range(20):
            namespace = {}
            exec(compile(source, "m.py", "exec"), namespace)
            namespace["main"]()
        return (time.perf_counter() - started) * 1e3

    for _ in range(50):
        work_ms()
    busy = statistics.median([work_ms() for _ in range(100)])
    after_idle = []
    for _ in range(25):
        time.sleep(gap)
        after_idle.append(work_ms())
    return busy, statistics.median(after_idle)


def plain_floor(runtime, count, gap, work):
    """(idle, next): a plain server's request after `gap` s idle, and the one right after."""
    command, source = PLAIN[runtime]
    script = os.path.join(work, f"plain-{runtime}")
    with open(script, "w") as f:
        f.write(source)
    port = free_port()
    server = subprocess.Popen([command, script, str(port)])
    try:
        for _ in range(100):
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                request_ms(connection, "/")
                break
            except OSError:
                time.sleep(0.05)
        idle, after = [], []
        for _ in range(count):
            time.sleep(gap)
            idle.append(request_ms(connection, "/"))
            after.append(request_ms(connection, "/"))
        connection.close()
        return idle, after
    finally:
        server.kill()
        server.wait()


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
    parser.add_argument("--gap", type=float, default=0.4,
                        help="seconds between one function's requests and the next's")
    parser.add_argument("--only", choices=list(CODE), help="one runtime only")
    args = parser.parse_args()
    runtimes = [args.only] if args.only else list(CODE)
    os.environ["GUST_LOG"] = "info,gust_runtime_process=debug,gust_executor=debug"
    work = tempfile.mkdtemp(prefix="gust-cold-start-")
    gust = GustProcess(args.gust, work)
    results, floors = {}, {}
    busy, after_idle = idle_penalty(args.gap)
    try:
        for runtime in runtimes:
            floors[runtime] = plain_floor(runtime, args.functions, args.gap, work)
        for runtime in runtimes:
            ext, template = CODE[runtime]
            names = [f"{runtime}-{n}" for n in range(args.functions)]
            for n, name in enumerate(names):
                code = gust.write(f"{name}.{ext}", template.format(n=n))
                gust.cli("fn", "create", name, "--env", runtime, "--code", code,
                         "--url", f"/{name}")
            time.sleep(15)  # each deploy's loaded instance retires 10 s after it
            cold, warm = {}, []
            connection = http.client.HTTPConnection("127.0.0.1", gust.public, timeout=30)
            for name in names:
                time.sleep(args.gap)
                cold[name] = request_ms(connection, f"/{name}")
                warm.append(request_ms(connection, f"/{name}"))
            # The like-for-like baseline: a warm request after the same idle gap.
            warm_idle = []
            for name in names:
                time.sleep(args.gap)
                warm_idle.append(request_ms(connection, f"/{name}"))
            connection.close()
            results[runtime] = (cold, warm, warm_idle)
        time.sleep(1)
        log = os.path.join(work, "gust.log")
        starts, specialized = events(log, "cold start"), events(log, "specialized")
        # The last read of each function: its first request's (the deploy's came before).
        reads = events(log, "deployment read")
    finally:
        gust.stop()
    try:
        print(f"this machine after {args.gap * 1e3:.0f} ms idle: the same CPU work takes "
              f"{after_idle:.3f} ms against {busy:.3f} ms back to back ({after_idle / busy:.2f}x)")
        print(f"{args.functions} first requests per runtime, {args.gap * 1e3:.0f} ms apart; "
              "p50 / p99 in ms")
        print("| runtime | client: cold | worker | limits | place | load | (worker) | read | rest | "
              "warm: idle | warm: next | plain server: idle | next |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for runtime, (cold, warm, warm_idle) in results.items():
            phases = {"worker": [], "limits": [], "place": [], "load": [], "worker_load": [],
                      "read": [], "rest": []}
            for name, total in cold.items():
                start, spec = starts.get(name), specialized.get(name)
                if not start or not spec:
                    continue
                worker = float(start["worker_ms"])
                parts = [worker, float(spec["limits_ms"]), float(spec["place_ms"]),
                         float(spec["load_ms"])]
                for key, value in zip(["worker", "limits", "place", "load"], parts):
                    phases[key].append(value)
                if "worker_load_ms" in spec:
                    phases["worker_load"].append(float(spec["worker_load_ms"]))
                read = reads.get(name)
                read_ms = (float(read["read_ms"]) + float(read["handoff_ms"])) if read else 0.0
                phases["read"].append(read_ms)
                # specialize_ms covers limits, place and load, and the bits between them.
                phases["rest"].append(total - worker - float(start["specialize_ms"]) - read_ms)
            if not phases["worker"]:
                raise RuntimeError(f"no traced cold starts for {runtime}; see {log}")

            def cell(values):
                if not values:
                    return "-"
                return f"{percentile(values, 50):.2f} / {percentile(values, 99):.2f}"

            idle, after = floors[runtime]
            print(f"| {runtime} ({len(phases['worker'])} traced) | {cell(list(cold.values()))} | "
                  + " | ".join(cell(phases[k]) for k in
                               ["worker", "limits", "place", "load", "worker_load", "read", "rest"])
                  + f" | {cell(warm_idle)} | {cell(warm)} | {cell(idle)} | {cell(after)} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
