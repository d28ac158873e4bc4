#!/usr/bin/env python3
"""Throughput per core of the process tier: `wrk` (Debian's package) against a function
through Gust, and against plain processes running the same code, in the same run, on the same
cores.

    python3 benches/throughput.py [--seconds 20] [--gust target/release/gust] [--only a,b]

Cases (each a table row, Gust's figure beside its baseline's):
  a  Python hello, --max-instances 1 --concurrency 8, 8 connections; baseline: one
     ThreadingHTTPServer process with buffered writes
  b  Python hello, --max-instances 2 --concurrency 1, 2 connections, each request on a new
     one (`Connection: close`); baseline: two single-threaded HTTPServer processes sharing
     the port (SO_REUSEPORT)
  c  Node.js hello, --max-instances 2 --concurrency 1, 2 connections; baseline: two `http`
     servers under Node's cluster module
(b and c have one connection per instance, and b a new connection per request: a
single-threaded server holds a keep-alive connection until it closes, so more connections, or
kept ones, would measure its backlog and SO_REUSEPORT's hashing, not its speed.)
Beside each figure: the CPU time per request of gust, of its workers, and of the baseline's
processes (from /proc, over the measured run).
  d  Python, a 20 ms sleep (I/O bound), --max-instances 1 --concurrency 8, 8 connections;
     baseline: one ThreadingHTTPServer process

Needs `wrk` (`apt-get install wrk`) and a release build (`cargo build --release`).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gust_process import RELEASE_GUST, GustProcess, free_port  # noqa: E402

PYTHON_HELLO = "def main():\n    return 'hello'\n"
PYTHON_SLEEP = "import time\ndef main():\n    time.sleep(0.02)\n    return 'hello'\n"
NODE_HELLO = "module.exports = async function () { return 'hello'; };\n"

# The baselines: the same work in the plainest server a user would write.
PYTHON_SERVER = textwrap.dedent("""\
    import socket, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

    port, threaded, sleep = int(sys.argv[1]), sys.argv[2] == "threads", float(sys.argv[3])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = 65536  # buffered writes: headers and body leave in one send

        def do_GET(self):
            if sleep:
                time.sleep(sleep)
            body = b"hello"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer if threaded else HTTPServer):
        daemon_threads = True

        def server_bind(self):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()

        def handle_error(self, request, client_address):
            pass  # wrk resetting its connections at the end

    Server(("127.0.0.1", port), Handler).serve_forever()
    """)

NODE_SERVER = textwrap.dedent("""\
    const cluster = require('node:cluster');
    const http = require('node:http');
    const [port, workers] = [Number(process.argv[2]), Number(process.argv[3])];
    if (cluster.isPrimary) {
      for (let i = 0; i < workers; i++) cluster.fork();
    } else {
      http.createServer((req, res) => {
        res.writeHead(200, {'content-length': 5});
        res.end('hello');
      }).listen(port, '127.0.0.1');
    }
    """)


def tree(pid):
    """`pid` and its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except OSError:
                continue
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def cpu_by_pid(pids):
    """User plus system CPU seconds of each of `pids` still alive."""
    found = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return found


def measured(url, seconds, connections, groups, headers=()):
    """A `wrk` run, with the CPU each group of processes spent per request (µs). `groups`
    names a function giving the group's pids now; a process started during the run counts
    whole, one gone before its end is missed."""
    before = {name: cpu_by_pid(pids()) for name, pids in groups.items()}
    rps, p50, p99 = wrk(url, seconds, connections, headers)
    requests = rps * seconds
    cpu = {}
    for name, pids in groups.items():
        after = cpu_by_pid(pids())
        spent = sum(t - before[name].get(pid, 0.0) for pid, t in after.items())
        cpu[name] = spent / requests * 1e6
    return rps, p50, p99, cpu


def wrk(url, seconds, connections, headers=()):
    """Requests per second and latency p50/p99 (ms) of a `wrk` run."""
    extra = [arg for header in headers for arg in ("-H", header)]
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", *extra,
         url],
        check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses\n{out}")

    def percentile(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return rps, percentile(50), percentile(99)


def wait_served(url):
    for _ in range(200):
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


def baseline(command, processes, seconds, connections, headers, work):
    """wrk against `processes` copies of `command` (each given the port) on one port."""
    port = free_port()
    started = [subprocess.Popen([*command(port)], cwd=work) for _ in range(processes)]
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_served(url)
        wrk(url, 2, connections, headers)  # warm up
        servers = lambda: [pid for process in started for pid in tree(process.pid)]  # noqa: E731
        return measured(url, seconds, connections, {"server": servers}, headers)
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(timeout=30)


def through_gust(gust, name, env, code, flags, seconds, connections, headers):
    url = gust.deploy(name, env, gust.write(f"{name}.{'js' if env == 'node' else 'py'}", code),
                      *flags)
    wait_served(url)
    wrk(url, 2, connections, headers)  # warm up: instances started
    # Workers descend from gust (through their sandboxes); gust's own CPU is apart.
    groups = {
        "gust": lambda: [gust.process.pid],
        "workers": lambda: tree(gust.process.pid)[1:],
    }
    return measured(url, seconds, connections, groups, headers)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--gust", default=RELEASE_GUST)
    parser.add_argument("--only", default="a,b,c,d")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    chosen = args.only.split(",")
    work = tempfile.mkdtemp(prefix="gust-throughput-")
    server = os.path.join(work, "server.py")
    with open(server, "w") as f:
        f.write(PYTHON_SERVER)
    node_server = os.path.join(work, "server.js")
    with open(node_server, "w") as f:
        f.write(NODE_SERVER)
    python = lambda mode, sleep: lambda port: ["python3", server, str(port), mode, str(sleep)]  # noqa: E731
    cases = {
        "a": ("python hello, 1 instance x concurrency 8", 8,
              ("python", PYTHON_HELLO, ["--max-instances", "1", "--concurrency", "8"]),
              (python("threads", 0), 1)),
        "b": ("python hello, 2 instances x concurrency 1", 2,
              ("python", PYTHON_HELLO, ["--max-instances", "2", "--concurrency", "1"]),
              (python("single", 0), 2)),
        "c": ("node hello, 2 instances x concurrency 1", 2,
              ("node", NODE_HELLO, ["--max-instances", "2", "--concurrency", "1"]),
              (lambda port: ["node", node_server, str(port), "2"], 1)),
        "d": ("python 20 ms sleep, 1 instance x concurrency 8", 8,
              ("python", PYTHON_SLEEP, ["--max-instances", "1", "--concurrency", "8"]),
              (python("threads", 0.02), 1)),
    }
    gust = GustProcess(args.gust, work)
    rows = []
    try:
        for key in chosen:
            title, connections, (env, code, flags), (command, processes) = cases[key]
            # Single-threaded servers hold a keep-alive connection until it closes: each
            # request comes on a connection of its own, which SO_REUSEPORT spreads.
            headers = ("Connection: close",) if key == "b" else ()
            base = baseline(command, processes, args.seconds, connections, headers, work)
            through = through_gust(gust, f"case-{key}", env, code, flags, args.seconds,
                                   connections, headers)
            rows.append((key, f"{title}, {connections} connections", through, base))
            print(f"{key}: gust {through[0]:.0f} req/s, baseline {base[0]:.0f} req/s",
                  file=sys.stderr)
    finally:
        gust.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrk -t2 -d{args.seconds}s, {os.cpu_count()} cores; CPU in µs per request")
    print("| case | Gust req/s (p50 / p99 ms) | CPU: gust + workers | baseline req/s "
          "(p50 / p99 ms) | CPU: server | ratio |")
    print("|---|---|---|---|---|---|")
    for key, title, (rps, p50, p99, cpu), (brps, bp50, bp99, bcpu) in rows:
        print(f"| {key}: {title} | {rps:,.0f} ({p50:.2f} / {p99:.2f}) | "
              f"{cpu['gust']:.0f} + {cpu['workers']:.0f} | "
              f"{brps:,.0f} ({bp50:.2f} / {bp99:.2f}) | {bcpu['server']:.0f} | "
              f"{rps / brps:.2f} |")


if __name__ == "__main__":
    main()
