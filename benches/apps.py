#!/usr/bin/env python3
"""Apps as code: `gust apply` of a 100-function app and `gust dev`'s save-to-live latency.

Run: `python3 benches/apps.py [GUST]` with a release build (default target/release/gust).
Measures, in one run, each figure beside a baseline from the same run:
1. `gust apply` of an app of FUNCTIONS Python functions, each with a route: the first apply
   (everything created) against the same functions and routes made one by one with
   `gust fn create` and `gust route create` (in another namespace); then an apply with nothing
   changed, against the first apply.
2. `gust dev`: SAVES saves of a Python function's code and SAVES of a wasm component (two
   components in turn), each timed from the file written until the route answers the new
   code, p50 and p99; against `gust fn update --code` run by hand, timed the same way.
Prints a Markdown table.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from gust_process import RELEASE_GUST, ROOT, GustProcess

FUNCTIONS = int(os.environ.get("FUNCTIONS", "100"))
SAVES = int(os.environ.get("SAVES", "20"))
COMPONENTS = [os.path.join(ROOT, "tests/components", n) for n in ("hello.wasm", "probe.wasm")]


def answer(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def until_answer_changes(url, previous, started, deadline_s=30):
    """Polls `url` until it answers something other than `previous`; seconds since `started`."""
    while True:
        try:
            now = answer(url)
        except OSError:
            now = previous
        if now != previous:
            return time.perf_counter() - started, now
        if time.perf_counter() - started > deadline_s:
            raise RuntimeError(f"{url} still answers {previous!r}")
        time.sleep(0.002)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def write_app(directory, app, count):
    os.makedirs(directory, exist_ok=True)
    lines = [f"app: {app}", "functions:"]
    for i in range(count):
        with open(os.path.join(directory, f"f{i}.py"), "w") as f:
            f.write(f"def main():\n    return 'f{i}'\n")
        lines += [f"  f{i}:", f"    code: f{i}.py", "    env: python"]
    lines.append("routes:")
    for i in range(count):
        lines += [f"  f{i}:", f"    function: f{i}", f"    url: /f{i}"]
    with open(os.path.join(directory, "gust.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else RELEASE_GUST
    work = tempfile.mkdtemp(prefix="gust-apps-bench-")
    gust = GustProcess(binary, work)
    rows = []
    try:
        base = ["--url", f"http://127.0.0.1:{gust.api}"]

        def run(*args):
            subprocess.run([binary, *base, *args], env=gust.env, check=True, capture_output=True)

        # 1. A 100-function app: first apply and unchanged apply; the same made by hand.
        app_dir = os.path.join(work, "many")
        write_app(app_dir, "many", FUNCTIONS)
        started = time.perf_counter()
        run("apply", "-f", app_dir)
        first = time.perf_counter() - started
        started = time.perf_counter()
        run("apply", "-f", app_dir)
        unchanged = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(FUNCTIONS):
            run("-n", "byhand", "fn", "create", f"f{i}", "--env", "python",
                "--code", os.path.join(app_dir, f"f{i}.py"))
            run("-n", "byhand", "route", "create", "--fn", f"f{i}", "--url", f"/h{i}")
        by_hand = time.perf_counter() - started
        rows.append((f"apply, {FUNCTIONS} functions + routes, first", f"{first:.2f} s",
                     f"{by_hand:.2f} s (fn create + route create, one by one)", first / by_hand))
        rows.append((f"apply, {FUNCTIONS} functions, unchanged", f"{unchanged:.3f} s",
                     f"{first:.2f} s (the first apply)", unchanged / first))

        # 2. gust dev: saves until the route answers the new code.
        dev_dir = os.path.join(work, "dev")
        os.makedirs(dev_dir)
        shutil.copy(COMPONENTS[0], os.path.join(dev_dir, "component.wasm"))
        with open(os.path.join(dev_dir, "main.py"), "w") as f:
            f.write("def main():\n    return 'save -1'\n")
        with open(os.path.join(dev_dir, "gust.yaml"), "w") as f:
            f.write("app: devloop\nfunctions:\n  py:\n    code: main.py\n    env: python\n"
                    "  wasm:\n    code: component.wasm\n    env: wasm\n"
                    "routes:\n  py:\n    function: py\n    url: /py\n"
                    "  wasm:\n    function: wasm\n    url: /wasm\n    prefix: true\n")
        dev = subprocess.Popen([binary, *base, "dev", "-f", dev_dir], env=gust.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        py_url = f"http://127.0.0.1:{gust.public}/py"
        wasm_url = f"http://127.0.0.1:{gust.public}/wasm/env"
        until_answer_changes(py_url, "", time.perf_counter())
        time.sleep(1)
        previous = answer(py_url)
        python_saves = []
        for i in range(SAVES):
            started = time.perf_counter()
            with open(os.path.join(dev_dir, "main.py"), "w") as f:
                f.write(f"def main():\n    return 'save {i}'\n")
            took, previous = until_answer_changes(py_url, previous, started)
            python_saves.append(took)
            time.sleep(0.3)
        previous = answer(wasm_url)
        wasm_saves = []
        for i in range(SAVES):
            source = COMPONENTS[(i + 1) % 2]
            started = time.perf_counter()
            shutil.copy(source, os.path.join(dev_dir, "component.wasm.tmp"))
            os.replace(os.path.join(dev_dir, "component.wasm.tmp"),
                       os.path.join(dev_dir, "component.wasm"))
            took, previous = until_answer_changes(wasm_url, previous, started)
            wasm_saves.append(took)
            time.sleep(0.3)
        dev.terminate()
        dev.wait(timeout=10)

        # The baseline: `gust fn update --code` by hand, timed the same way.
        hand_dir = os.path.join(work, "hand")
        os.makedirs(hand_dir)
        code = os.path.join(hand_dir, "main.py")
        with open(code, "w") as f:
            f.write("def main():\n    return 'hand -1'\n")
        hand_url = gust.deploy("hand", "python", code)
        previous = answer(hand_url)
        by_hand_saves = []
        for i in range(SAVES):
            started = time.perf_counter()
            with open(code, "w") as f:
                f.write(f"def main():\n    return 'hand {i}'\n")
            run("fn", "update", "hand", "--code", code)
            took, previous = until_answer_changes(hand_url, previous, started)
            by_hand_saves.append(took)

        hand_p50 = statistics.median(by_hand_saves)
        for label, saves in (("python", python_saves), ("wasm", wasm_saves)):
            p50, p99 = statistics.median(saves), percentile(saves, 99)
            rows.append((f"dev save to live, {label}, p50 / p99 ({SAVES} saves)",
                         f"{p50 * 1000:.0f} / {p99 * 1000:.0f} ms",
                         f"{hand_p50 * 1000:.0f} / {percentile(by_hand_saves, 99) * 1000:.0f} ms "
                         "(python, fn update --code by hand)", p50 / hand_p50))
    finally:
        gust.stop()
    print("| measure | Gust | baseline | ratio |")
    print("|---|---|---|---|")
    for label, value, baseline, ratio in rows:
        print(f"| {label} | {value} | {baseline} | {ratio:.2f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
