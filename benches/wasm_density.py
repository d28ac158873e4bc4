#!/usr/bin/env python3
"""WebAssembly density: one `gust up` with many deployed, idle wasm functions (distinct
components), against the same `gust up` before any was deployed.

    python3 benches/wasm_density.py [--functions 10000] [--component tests/components/hello.wasm]
                                    [--sample 200] [--gust target/release/gust]

Reports, each beside its baseline measured in the same run:
- resident memory of the gust process (RSS, split into anonymous and file-backed pages) with
  no function, right after deploying them all, once the deployed components were unloaded for
  idleness, and after a restart;
- how long `gust up` takes to restart with them all (from the start of the process to its
  first answered request to one of the functions);
- the first request to a function whose compiled code is no longer loaded (unloaded for
  idleness, its file's pages dropped from the page cache, as after an hour of idleness with
  other work on the machine), against a warm request to the same function.

Each function is the component with a custom section naming its number appended: the same
behaviour, another digest, so each is compiled and loaded on its own. Gust is started with
`--idle-timeout 2s --unload-after 5s` (instead of 2 and 10 minutes) so that idleness is reached
in seconds.
"""

import argparse
import base64
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gust_process import RELEASE_GUST, ROOT, GustProcess  # noqa: E402
from cold_start import events  # noqa: E402

UNLOAD_AFTER_S = 5


def distinct_copy(component, i):
    """`component` with a custom section `gust-bench` holding `i` appended."""
    name = b"gust-bench"
    payload = i.to_bytes(8, "little")
    size = 1 + len(name) + len(payload)
    return component + bytes([0, size, len(name)]) + name + payload


def memory_kb(pid):
    """(RSS, anonymous, file-backed) resident kB of one process."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["RssAnon"], fields["RssFile"] + fields.get("RssShmem", 0)


def api(gust, method, path, body):
    token = open(os.path.join(gust.work, "data", "admin.token")).read().strip()
    request = urllib.request.Request(
        f"http://127.0.0.1:{gust.api}{path}", method=method, data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status


def deploy_all(gust, component, count, threads=4):
    """Deploys functions w-0..w-(count-1) with routes /w-i, `threads` at a time."""
    next_index = iter(range(count))
    lock = threading.Lock()
    failures = []

    def worker():
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            code = base64.b64encode(distinct_copy(component, i)).decode()
            try:
                api(gust, "POST", "/v1/functions", {
                    "name": f"w-{i}", "env": "wasm",
                    "code": {"filename": "main.wasm", "content_base64": code}})
                api(gust, "POST", "/v1/routes", {"function": f"w-{i}", "url": f"/w-{i}",
                                                  "name": f"w-{i}"})
            except OSError as err:
                failures.append((i, err))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} deploys failed, the first: {failures[0]}")


def first_request_ms(url):
    """One GET on a new connection (its set-up excluded), in ms."""
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    connection.connect()
    started = time.perf_counter()
    connection.request("GET", address.path)
    response = connection.getresponse()
    response.read()
    elapsed = (time.perf_counter() - started) * 1e3
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"{url}: {response.status}")
    return elapsed


def drop_page_cache(directory):
    """Drops the clean cached pages of every file under `directory` (as memory pressure
    would, over an hour of other work)."""
    for base, _, files in os.walk(directory):
        for name in files:
            try:
                fd = os.open(os.path.join(base, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def mb(kb):
    return f"{kb / 1024:.1f} MB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=10_000)
    parser.add_argument("--component", default=os.path.join(ROOT, "tests/components/hello.wasm"))
    parser.add_argument("--sample", type=int, default=200,
                        help="functions whose first request after unloading is timed")
    parser.add_argument("--gust", default=RELEASE_GUST)
    args = parser.parse_args()
    component = open(args.component, "rb").read()
    # Each load's phases, as debug events.
    os.environ["GUST_LOG"] = "info,gust_runtime_wasm=debug,gust_executor=debug"
    work = tempfile.mkdtemp(prefix="gust-wasm-density-")
    flags = ("--idle-timeout", "2s", "--unload-after", f"{UNLOAD_AFTER_S}s")
    gust = GustProcess(args.gust, work, flags)
    rows = []
    try:
        time.sleep(2)
        empty = memory_kb(gust.process.pid)
        started = time.monotonic()
        deploy_all(gust, component, args.functions)
        deploy_s = time.monotonic() - started
        deployed = memory_kb(gust.process.pid)
        time.sleep(UNLOAD_AFTER_S + 3)
        unloaded = memory_kb(gust.process.pid)

        gust.stop()
        restart_started = time.monotonic()
        gust = GustProcess(args.gust, work, flags, reuse_ports=gust)
        url = f"http://127.0.0.1:{gust.public}/w-{args.functions - 1}"
        first_request_ms(url)
        restart_s = time.monotonic() - restart_started
        time.sleep(1)
        restarted = memory_kb(gust.process.pid)

        # First requests to never-loaded functions, then to the same ones unloaded again with
        # their compiled files out of the page cache; warm requests to one of them.
        step = max(1, args.functions // args.sample)
        sample = [f"http://127.0.0.1:{gust.public}/w-{i}" for i in range(0, args.functions, step)]
        sample = sample[: args.sample]
        never_loaded = [first_request_ms(u) for u in sample]
        time.sleep(UNLOAD_AFTER_S + 3)
        drop_page_cache(os.path.join(work, "data"))
        after_idle = [first_request_ms(u) for u in sample]
        warm = [first_request_ms(sample[0]) for _ in range(len(sample))]
        after_requests = memory_kb(gust.process.pid)
    finally:
        gust.stop()
        # The last load of each sampled function is the one after its unloading.
        loads = events(os.path.join(work, "gust.log"), "component loaded")
        reads = events(os.path.join(work, "gust.log"), "deployment read")
        shutil.rmtree(work, ignore_errors=True)
    names = [u.rsplit("/", 1)[1] for u in sample]
    phases = [
        ("deployment read from the store", reads, "read_ms"),
        ("to and from the thread that read it", reads, "handoff_ms"),
        ("compiled component loaded (mapped, checked, registered)", loads, "load_ms"),
        ("linked with the host's WASI", loads, "link_ms"),
        ("to and from the thread that loaded it", loads, "handoff_ms"),
    ]

    n = args.functions
    component_name = os.path.basename(args.component)
    rows.append((f"gust RSS (anon / file), {n} {component_name} deployed, right after",
                 f"{mb(deployed[0])} ({mb(deployed[1])} / {mb(deployed[2])})",
                 f"{mb(empty[0])} (none deployed)", f"{deployed[0] / empty[0]:.2f}"))
    rows.append((f"gust RSS (anon / file), {n} deployed, idle {UNLOAD_AFTER_S + 3} s",
                 f"{mb(unloaded[0])} ({mb(unloaded[1])} / {mb(unloaded[2])})",
                 f"{mb(empty[0])} (none deployed)", f"{unloaded[0] / empty[0]:.2f}"))
    rows.append((f"gust RSS (anon / file), {n} deployed, after a restart",
                 f"{mb(restarted[0])} ({mb(restarted[1])} / {mb(restarted[2])})",
                 f"{mb(empty[0])} (none deployed)", f"{restarted[0] / empty[0]:.2f}"))
    rows.append((f"gust RSS, after {2 * len(sample)} first requests to {len(sample)} functions",
                 f"{mb(after_requests[0])}", f"{mb(empty[0])} (none deployed)",
                 f"{after_requests[0] / empty[0]:.2f}"))
    rows.append(("restart to the first answered request", f"{restart_s:.2f} s",
                 f"{deploy_s:.0f} s (deploying them)", ""))
    for label, values in (("first request, never loaded since the restart", never_loaded),
                          ("first request, unloaded and out of the page cache", after_idle)):
        rows.append((f"{label} (p50 / p99)",
                     f"{percentile(values, 50):.2f} / {percentile(values, 99):.2f} ms",
                     f"{percentile(warm, 50):.2f} / {percentile(warm, 99):.2f} ms (warm)",
                     f"{statistics.median(values) / statistics.median(warm):.2f}"))
    for label, found, field in phases:
        values = [float(found[name][field]) for name in names if name in found]
        if values:
            rows.append((f"of which: {label}, {len(values)} traced (p50 / p99)",
                         f"{percentile(values, 50):.2f} / {percentile(values, 99):.2f} ms",
                         "", ""))
    print("| measure | Gust | baseline (same run) | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
