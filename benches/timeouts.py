#!/usr/bin/env python3
"""How late a 504 comes: requests to a function that always runs past its timeout.

Starts `gust up` (the release build by default) on free loopback ports, deploys a Python
function that sleeps 2 s with `--timeout 500ms`, and sends 200 requests from 20 threads at
once, with room for all of them (`--max-instances 20`). Every request times out, so every
worker is killed and most requests need a new one (from the pool, or started while the pool
refills): the cold start is bounded on its own (`--start-timeout`) and the timeout runs from
the request reaching its worker, so the baseline is the timeout plus that start.
Prints the distribution of the time to the 504 against the function's timeout, the baseline.
Run: `python3 benches/timeouts.py [path/to/gust]` after `cargo build --release`.
"""

import concurrent.futures
import sys
import tempfile
import time
import urllib.error
import urllib.request

from gust_process import RELEASE_GUST, GustProcess

GUST = sys.argv[1] if len(sys.argv) > 1 else RELEASE_GUST
REQUESTS = 200
CLIENTS = 20
TIMEOUT_MS = 500



def one(url):
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            answer.read()
            status = answer.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, (time.perf_counter() - started) * 1e3


def main():
    work = tempfile.mkdtemp(prefix="gust-timeouts-")
    gust = GustProcess(GUST, work)
    try:
        code = gust.write("slow.py", "import time\ndef main():\n    time.sleep(2)\n    return 'late'\n")
        # Room for every client at once: a request that waits for capacity waits before its
        # timeout starts (and gets 429 after the queue timeout), which is not measured here.
        url = gust.deploy("slow", "python", code,
                          "--timeout", f"{TIMEOUT_MS}ms", "--max-instances", str(CLIENTS))
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(one, [url] * REQUESTS))
        statuses = {}
        for status, _ in results:
            statuses[status] = statuses.get(status, 0) + 1
        late = sorted(ms for status, ms in results if status == 504)
        if not late:
            sys.exit(f"no 504 among {statuses}")

        def pick(q):
            return late[min(len(late) - 1, int(len(late) * q))]

        print(f"{REQUESTS} requests from {CLIENTS} clients, statuses {statuses}")
        print("| time to the 504 | ms | over the timeout |")
        print("|---|---|---|")
        for name, value in [("p50", pick(0.5)), ("p99", pick(0.99)), ("max", late[-1])]:
            print(f"| {name} | {value:.0f} | +{value - TIMEOUT_MS:.0f} ms |")
        print(f"| function timeout (baseline) | {TIMEOUT_MS} | |")
        over = sum(1 for ms in late if ms > TIMEOUT_MS + 500)
        print(f"504s later than timeout + 0.5 s: {over} of {len(late)}")
    finally:
        gust.stop()


if __name__ == "__main__":
    main()
