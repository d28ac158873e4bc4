"""Starting a `gust up` for the benchmark scripts: free loopback ports, a data directory of its
own, the CLI pointed at it."""

import os
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE_GUST = os.path.join(ROOT, "target/release/gust")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GustProcess:
    """A running `gust up` in `work`; `cli(...)` runs the CLI against it."""

    def __init__(self, binary, work, flags=(), reuse_ports=None):
        """Starts `binary up` with `flags`, on the ports of `reuse_ports` (a stopped
        `GustProcess` on the same data) if given, else on free ones."""
        self.binary = binary
        self.work = work
        if reuse_ports is not None:
            self.public, self.api = reuse_ports.public, reuse_ports.api
        else:
            self.public, self.api = free_port(), free_port()
        self.env = dict(os.environ, XDG_CONFIG_HOME=os.path.join(work, "config"))
        log = open(os.path.join(work, "gust.log"), "a")
        self.process = subprocess.Popen(
            [binary, "up", "--data-dir", os.path.join(work, "data"),
             "--listen", f"127.0.0.1:{self.public}",
             "--api-listen", f"127.0.0.1:{self.api}", *flags],
            env=self.env, stdout=log, stderr=log)
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.api}/healthz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("gust did not start; see " + os.path.join(work, "gust.log"))

    def cli(self, *args):
        subprocess.run([self.binary, "--url", f"http://127.0.0.1:{self.api}", *args],
                       env=self.env, check=True, capture_output=True)

    def api_get(self, path):
        """GET `path` on the API listener with the token `gust up` gave the CLI."""
        import tomllib
        with open(os.path.join(self.work, "config", "gust", "config.toml"), "rb") as f:
            servers = tomllib.load(f)["servers"]
        token = next(iter(servers.values()))["token"]
        request = urllib.request.Request(f"http://127.0.0.1:{self.api}{path}",
                                         headers={"Authorization": f"Bearer {token}"})
        return urllib.request.urlopen(request, timeout=10).read()

    def write(self, name, text):
        """Writes `text` to a file of that name in the work directory; returns its path."""
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def deploy(self, name, env, code, *flags, prefix=False):
        """Creates function `name` and a route `/name` to it; returns the route's URL."""
        self.cli("fn", "create", name, "--env", env, "--code", code, *flags)
        self.cli("route", "create", "--fn", name, "--url", f"/{name}",
                 *(["--prefix"] if prefix else []))
        return f"http://127.0.0.1:{self.public}/{name}"

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)
