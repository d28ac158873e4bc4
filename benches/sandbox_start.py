#!/usr/bin/env python3
"""What a worker's network costs when its sandbox starts, measured on its own.

Starts a bubblewrap sandbox running /usr/bin/true the way Gust starts a worker's (as uid 65534,
same namespaces and mounts), in alternation: without a network namespace (the baseline, as
before network isolation), with one (`--unshare-net`, loopback only: `--network none`), and
with one connected the way Gust connects it for `--network outbound` (unreachable routes set
with `ip` and the base filter with `nft`, each through `nsenter`, then slirp4netns attached, waiting for it to be ready). Prints
p50 and p99 of each and the differences. Run as root: `sudo python3 benches/sandbox_start.py`.
"""

import json
import os
import statistics
import subprocess
import sys
import time

ROUNDS = int(os.environ.get("ROUNDS", "60"))
NON_PUBLIC = [
    "0.0.0.0/8", "10.0.0.0/8", "127.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4",
    "240.0.0.0/4",
]
BASE_FILTER = """table inet gust_base {
  chain out {
    type filter hook output priority filter;
    ip daddr { 224.0.0.0/4, 240.0.0.0/4, 10.0.2.255 } drop
  }
}
"""


def demote():
    os.setgid(65534)
    os.setuid(65534)


def bwrap_args(net, extra):
    args = ["bwrap", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--die-with-parent", "--new-session",
            "--hostname", "gust-worker"]
    if net:
        args.append("--unshare-net")
    for path in ["/usr", "/etc/ssl", "/etc/hosts", "/etc/resolv.conf"]:
        args += ["--ro-bind-try", path, path]
    for alias in ["/bin", "/sbin", "/lib", "/lib64"]:
        if os.path.islink(alias):
            args += ["--symlink", os.readlink(alias), alias]
        else:
            args += ["--ro-bind-try", alias, alias]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(1 << 30), "--tmpfs", "/tmp",
             "--remount-ro", "/dev", "--remount-ro", "/"]
    return args + extra + ["--", "/usr/bin/true"]


def plain(net):
    started = time.perf_counter()
    subprocess.run(bwrap_args(net, []), preexec_fn=demote, check=True)
    return time.perf_counter() - started


def connected():
    started = time.perf_counter()
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    sandbox = subprocess.Popen(
        bwrap_args(True, ["--info-fd", str(info_w), "--block-fd", str(block_r)]),
        pass_fds=(info_w, block_r), preexec_fn=demote)
    os.close(info_w)
    os.close(block_r)
    text = b""
    while b"}" not in text:
        text += os.read(info_r, 512)
    pid = json.loads(text[: text.index(b"}") + 1])["child-pid"]
    routes = "".join(f"route add unreachable {r}\n" for r in NON_PUBLIC)
    subprocess.run(["nsenter", f"--target={pid}", "--net", "--", "ip", "-batch", "-"],
                   input=routes.encode(), check=True)
    subprocess.run(["nsenter", f"--target={pid}", "--net", "--", "nft", "-f", "-"],
                   input=BASE_FILTER.encode(), check=True)
    ready_r, ready_w = os.pipe()
    slirp = subprocess.Popen(
        ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
         "--enable-sandbox", "--enable-seccomp", f"--ready-fd={ready_w}",
         "--netns-type=path", f"/proc/{pid}/ns/net", "tap0"],
        pass_fds=(ready_w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(ready_w)
    if os.read(ready_r, 1) != b"1":
        sys.exit("slirp4netns did not connect")
    os.write(block_w, b"x")
    sandbox.wait()
    elapsed = time.perf_counter() - started
    slirp.kill()
    slirp.wait()
    for fd in (info_r, block_w, ready_r):
        os.close(fd)
    return elapsed


def summary(samples):
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1e3, p99 * 1e3


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: the sandbox starts as uid 65534, as Gust's do")
    kinds = {"no network namespace (before)": lambda: plain(False),
             "network namespace, loopback only (none)": lambda: plain(True),
             "network namespace connected (outbound)": connected}
    samples = {kind: [] for kind in kinds}
    for _ in range(ROUNDS):
        for kind, start in kinds.items():
            samples[kind].append(start())
    base = summary(samples["no network namespace (before)"])[0]
    print(f"sandbox start, {ROUNDS} rounds, alternating:")
    for kind, values in samples.items():
        p50, p99 = summary(values)
        print(f"  {kind:42s} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  ({p50 - base:+5.2f} ms p50)")


if __name__ == "__main__":
    main()
