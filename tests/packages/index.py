"""A Python package index (PEP 503 "simple" pages) for the build tests, on loopback.

Usage: index.py PORT LOG_FILE NAME==VERSION...

Each NAME==VERSION becomes a pure-Python wheel holding module NAME with
`VERSION` and `greet()`. Every request's path is appended to LOG_FILE, so a test can
count downloads. A request for the project `hangs` never gets an answer.
"""

import base64
import hashlib
import http.server
import io
import sys
import threading
import time
import zipfile


def wheel(name, version):
    files = {
        f"{name}/__init__.py": f'VERSION = "{version}"\n\n\ndef greet():\n    return "hello from {name} {version}"\n',
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: gust-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record_path = f"{name}-{version}.dist-info/RECORD"
    record.append(f"{record_path},,")
    files[record_path] = "\n".join(record) + "\n"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return f"{name}-{version}-py3-none-any.whl", out.getvalue()


def main():
    port, log_file = int(sys.argv[1]), sys.argv[2]
    wheels = {}
    for spec in sys.argv[3:]:
        name, version = spec.split("==")
        filename, data = wheel(name, version)
        wheels[name] = (filename, data)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send(self, status, body, content_type="text/html"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            with lock, open(log_file, "a") as log:
                log.write(self.path + "\n")
            parts = [p for p in self.path.split("?")[0].split("/") if p]
            if parts[:2] == ["simple", "hangs"]:
                time.sleep(3600)
                return
            if len(parts) == 2 and parts[0] == "simple" and parts[1] in wheels:
                filename, data = wheels[parts[1]]
                sha = hashlib.sha256(data).hexdigest()
                page = f'<html><body><a href="/packages/{filename}#sha256={sha}">{filename}</a></body></html>'
                return self.send(200, page.encode())
            if len(parts) == 2 and parts[0] == "packages":
                for filename, data in wheels.values():
                    if filename == parts[1]:
                        return self.send(200, data, "application/octet-stream")
            self.send(404, b"not found")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
