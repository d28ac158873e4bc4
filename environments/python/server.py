"""Gust's Python worker server (standard library only).

Speaks the Gust worker protocol on the listening socket Gust hands over as descriptor
GUST_LISTEN_FD: GET /healthz, POST /v2/specialize once, then every other request is one
invocation of the loaded function. Control requests are recognised by their exact request
target only, so no other spelling of a control path (`//v2/specialize`, `/x/../v2/...`,
`%2e%2e`) ever reaches them. A specialization that fails ends the process: a worker never
lives on with half of a function's environment applied. See docs/worker-protocol.md.
"""

import collections.abc
import http.client
import http.server
import importlib
import importlib.util
import inspect
import io
import json
import os
import socket
import socketserver
import sys
import threading
import time
import traceback
import urllib.parse

FUNCTION_ERROR_HEADER = "X-Gust-Function-Error"
PARAM_PREFIX = "x-gust-param-"

WARMUP_PATH = "/_gust/warmup"  # reserved by the worker protocol: no route reaches it

# Gust's router lets through at most 64 header fields and adds a few of its own: take more than
# that, so a request that reached a worker never makes it answer 431 and close the connection.
http.client._MAXHEADERS = 1000

_lock = threading.Lock()
_function = None
_takes_request = False
# `requestBody: "stream"` at specialize: the body is read as the function asks for it rather
# than whole before it is called.
_stream_request_body = False
_warm = False
_warmed = threading.Event()  # set once the warm-up function is gone again
_flask_app = None  # made when a function that imports Flask is first called


class Headers:
    """Case-insensitive, read-only view of request headers."""

    def __init__(self, pairs):
        self._items = {}
        for key, value in pairs:
            self._items[key.lower()] = value

    def __getitem__(self, key):
        return self._items[key.lower()]

    def get(self, key, default=None):
        return self._items.get(key.lower(), default)

    def __contains__(self, key):
        return key.lower() in self._items

    def __iter__(self):
        return iter(self._items)

    def items(self):
        return self._items.items()

    def __len__(self):
        return len(self._items)

    def __repr__(self):
        return "Headers(%r)" % self._items


class BodyCut(ConnectionError):
    """The request body ended before its declared end (the caller broke off)."""


class _Body:
    """A request body read from the connection as the function asks for it: with a
    Content-Length, or in chunked transfer coding when Gust streams it."""

    CHUNK = 64 * 1024

    def __init__(self, rfile, headers):
        self._rfile = rfile
        self._chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()
        self._left = 0 if self._chunked else int(headers.get("Content-Length") or 0)
        self.done = not self._chunked and self._left == 0

    def read_chunk(self):
        """The next piece of the body as it arrives (at most 64 KiB); b"" at its end."""
        if self.done:
            return b""
        if self._chunked and self._left == 0:
            line = self._rfile.readline(1024)
            if not line:
                raise BodyCut("the request body ended early")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BodyCut("malformed chunk in the request body") from None
            if size == 0:
                while self._rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self.done = True
                return b""
            self._left = size
        data = self._rfile.read1(min(self.CHUNK, self._left))
        if not data:
            raise BodyCut("the request body ended early")
        self._left -= len(data)
        if self._left == 0:
            if self._chunked:
                self._rfile.readline(8)  # the chunk's CRLF
            else:
                self.done = True
        return data

    def read_all(self):
        parts = []
        while True:
            data = self.read_chunk()
            if not data:
                return b"".join(parts)
            parts.append(data)


class _Whole:
    """A body already read whole."""

    done = True

    def __init__(self, data):
        self._data = data

    def read_chunk(self):
        data, self._data = self._data, b""
        return data

    def read_all(self):
        return self.read_chunk()

    def peek(self):
        """The whole body, left to be read still (Flask and `req.body` both get it)."""
        return self._data


class Request:
    """What a `main(req)` function receives. `body` is the whole body (read when first
    asked for); `stream` gives it in pieces as it arrives, for a function deployed with
    `--request-body stream`."""

    def __init__(self, method, target, headers, body):
        parsed = urllib.parse.urlsplit(target)
        self.method = method
        self.path = parsed.path
        self.query_string = parsed.query
        self.query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        self.headers = headers
        self._body = body
        self._whole = None
        params = headers.get("x-gust-params")
        if params:
            self.params = json.loads(params)
        else:
            self.params = {
                key[len(PARAM_PREFIX):]: value
                for key, value in headers.items()
                if key.startswith(PARAM_PREFIX)
            }

    @property
    def body(self):
        if self._whole is None:
            self._whole = self._body.read_all()
        return self._whole

    @property
    def stream(self):
        """An iterator of the body's pieces (bytes) as they arrive."""
        if self._whole is not None:
            return iter([self._whole] if self._whole else [])
        return iter(self._body.read_chunk, b"")

    def json(self):
        return json.loads(self.body or b"null")

    def text(self):
        return self.body.decode("utf-8", errors="replace")


class _BodyReader(io.RawIOBase):
    """A request body as a file (a WSGI `wsgi.input`), read as the function asks for it."""

    def __init__(self, body):
        self._body = body
        self._left = b""

    def readable(self):
        return True

    def readinto(self, buffer):
        if not self._left:
            self._left = self._body.read_chunk()
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def _uses_flask():
    """Whether the function imported Flask (`from flask import request`): it is then called in
    a Flask request context, as Fission's Python environment calls it."""
    return "flask" in sys.modules


def _flask():
    global _flask_app
    if _flask_app is None:
        import logging

        import flask

        _flask_app = flask.Flask("function")
        # current_app.logger writes to stderr, the function's log, from DEBUG up (as Fission's).
        _flask_app.logger.setLevel(logging.DEBUG)
    return _flask_app


def _wsgi_environ(method, target, headers, body, length):
    """The WSGI environment Flask builds its `request` from (PEP 3333)."""
    parsed = urllib.parse.urlsplit(target)
    environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": urllib.parse.unquote(parsed.path, encoding="latin-1"),
        "QUERY_STRING": parsed.query,
        "SERVER_NAME": "gust-worker",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": headers.get("x-forwarded-for", ""),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": body,
        "wsgi.input_terminated": length is None,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for key, value in headers.items():
        name = key.upper().replace("-", "_")
        if name in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue
        environ[name if name == "CONTENT_TYPE" else "HTTP_" + name] = value
    if length is not None:
        environ["CONTENT_LENGTH"] = str(length)
    return environ


def _call_in_flask(req, method, target, headers, body):
    """Calls the function in a Flask request context; returns (status, headers, body) from the
    Flask response its return value makes (str, bytes, dict, `jsonify`, a `Response`, a tuple).
    `abort(404)` answers as Flask would; any other exception is the function's error."""
    from werkzeug.exceptions import HTTPException

    app = _flask()
    if isinstance(body, _Whole):
        data = body.peek()
        wsgi_input, length = io.BytesIO(data), len(data)
    else:
        wsgi_input, length = io.BufferedReader(_BodyReader(body)), None
    with app.request_context(_wsgi_environ(method, target, headers, wsgi_input, length)):
        try:
            result = _function(req) if _takes_request else _function()
        except HTTPException as exc:
            result = exc.get_response()
        response = app.make_response(result)
    pairs = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
    if response.is_streamed:
        chunks = response.iter_encoded()
        return response.status_code, pairs, _Stream(next(chunks, _END), chunks)
    return response.status_code, pairs, response.get_data()


def _load(filepath, function_name):
    """Imports the user's code and returns its entrypoint."""
    if os.path.isdir(filepath):
        entry = function_name or "main.main"
        module_name, _, func_name = entry.rpartition(".")
        if not module_name:
            module_name, func_name = "main", entry
        sys.path.insert(0, filepath)
        module = importlib.import_module(module_name)
    else:
        func_name = (function_name or "main").rpartition(".")[2]
        sys.path.insert(0, os.path.dirname(filepath))
        module_name = os.path.splitext(os.path.basename(filepath))[0]
        spec = importlib.util.spec_from_file_location(module_name, filepath)
        if spec is None or spec.loader is None:
            raise ImportError("cannot load %s" % filepath)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    func = getattr(module, func_name, None)
    if func is None or not callable(func):
        raise LookupError("entrypoint %r not found in %s" % (func_name, module_name))
    return func


def _takes_argument(func):
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
    )


_END = object()  # an iterator's end, as `next`'s default


def _is_stream(result):
    """A generator or another iterator: the response streams, one chunk per item."""
    return isinstance(result, collections.abc.Iterator) and not isinstance(
        result, (str, bytes, bytearray, dict, list, tuple)
    )


def _chunk(item):
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    raise TypeError("a streamed response yields str or bytes, not %s" % type(item).__name__)


def _to_response(result):
    """Returns (status, headers, body) for a function's return value: body is bytes, or an
    iterator of chunks whose first chunk was already taken (it is returned first)."""
    status, headers = 200, {}
    if isinstance(result, tuple):
        if len(result) == 2:
            result, status = result
        elif len(result) == 3:
            result, status, headers = result
        else:
            raise TypeError("return (body, status) or (body, status, headers)")
    headers = dict(headers or {})
    lower = {k.lower() for k in headers}
    status = int(status)
    if not 200 <= status <= 599:
        raise ValueError("status %d is outside 200-599" % status)
    if result is None:
        body = b""
    elif _is_stream(result):
        # The first chunk is produced before the head is sent, so that a function failing at
        # once is still a function error, and the content type can follow the chunks' type.
        first = next(result, _END)
        if first is not _END and "content-type" not in lower:
            headers["Content-Type"] = (
                "text/plain; charset=utf-8" if isinstance(first, str) else "application/octet-stream"
            )
        body = _Stream(first, result)
    elif isinstance(result, (bytes, bytearray)):
        body = bytes(result)
        if "content-type" not in lower:
            headers["Content-Type"] = "application/octet-stream"
    elif isinstance(result, str):
        body = result.encode("utf-8")
        if "content-type" not in lower:
            headers["Content-Type"] = "text/plain; charset=utf-8"
    else:
        body = json.dumps(result).encode("utf-8")
        if "content-type" not in lower:
            headers["Content-Type"] = "application/json"
    return status, headers, body


class _Stream:
    """A streamed body: its first chunk (already produced) and the rest."""

    def __init__(self, first, rest):
        # Checked now, before the head is sent: a first chunk of the wrong type is still a
        # function error.
        self.first = first if first is _END else _chunk(first)
        self.rest = rest

    def chunks(self):
        if self.first is not _END:
            yield self.first
            for item in self.rest:
                yield _chunk(item)


def _pairs(headers):
    """A response's headers as (name, value) pairs: from a dict, or a list that may name one
    header twice (Set-Cookie)."""
    return headers.items() if isinstance(headers, dict) else headers


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gust-python"
    sys_version = ""

    def log_message(self, format, *args):
        pass

    def _send(self, status, headers, body):
        if isinstance(body, _Stream):
            self._send_stream(status, headers, body)
            return
        self.send_response(status)
        for key, value in _pairs(headers):
            if key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        # Head and body in one write (`end_headers` would flush the head alone): Gust then has
        # the whole answer at once, and can give the worker its next request sooner.
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(body)
        self.flush_headers()

    def _send_stream(self, status, headers, body):
        """Sends each chunk as the function yields it (chunked transfer coding). A function
        failing part-way ends the connection without the last chunk: the response is cut,
        which is how HTTP/1.1 tells the client it is incomplete."""
        self.send_response(status)
        for key, value in _pairs(headers):
            if key.lower() not in ("content-length", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            for data in body.chunks():
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # Gust let go of the response: nobody is reading
        except Exception:
            traceback.print_exc()
            sys.stderr.flush()
            self.close_connection = True

    def _send_json(self, status, value, extra=None):
        headers = {"Content-Type": "application/json"}
        headers.update(extra or {})
        self._send(status, headers, json.dumps(value).encode("utf-8"))

    def _body(self):
        return _Body(self.rfile, self.headers).read_all()

    def _target(self):
        """The request target exactly as sent (`self.path` has `//` collapsed already)."""
        words = self.requestline.split()
        return words[1] if len(words) >= 2 else ""

    def _dispatch(self):
        target = self._target()
        if target == "/healthz":
            # Not ready until warmed up, so no specialize can race the warm-up function.
            if _warm:
                self._send(200, {"Content-Type": "text/plain"}, b"ok")
            else:
                self._send(503, {"Content-Type": "text/plain"}, b"warming")
        elif target == "/v2/specialize" and self.command == "POST":
            self._specialize()
        else:
            self._invoke()

    def _specialize(self):
        global _function, _takes_request, _stream_request_body
        began = time.perf_counter()
        request = json.loads(self._body() or b"{}")
        _warmed.wait()  # the warm-up borrows the function slot; never race it
        with _lock:
            if _function is not None:
                self._send_json(409, {"error": "AlreadySpecialized"})
                return
            os.environ.update({str(k): str(v) for k, v in (request.get("env") or {}).items()})
            try:
                func = _load(request["filepath"], request.get("functionName") or "")
            except BaseException as exc:  # the user's module may raise anything, even SystemExit
                traceback.print_exc()
                sys.stderr.flush()
                self.close_connection = True
                self._send_json(500, {"error": type(exc).__name__})
                # The environment and half-imported modules stay behind: this worker is done.
                os._exit(3)
            _function, _takes_request = func, _takes_argument(func)
            _stream_request_body = request.get("requestBody") == "stream"
        # The worker's own share of the specialize round trip, for Gust's cold-start trace.
        self._send_json(200, {"ok": True, "loadMs": round((time.perf_counter() - began) * 1e3, 3)})

    def _cut_off(self, exc):
        """The caller broke off (or was too slow): nobody is left to answer."""
        sys.stderr.write("request body cut off: %s\n" % exc)
        sys.stderr.flush()
        self.close_connection = True

    def _invoke(self):
        body = _Body(self.rfile, self.headers)
        if not _stream_request_body:
            # Read the body first: answering before it is read makes closing the connection
            # reset it, and the client can lose the answer.
            try:
                body = _Whole(body.read_all())
            except BodyCut as exc:
                self._cut_off(exc)
                return
        try:
            if _function is None:
                self._send_json(503, {"error": "NotSpecialized"}, {FUNCTION_ERROR_HEADER: "NotSpecialized"})
                return
            try:
                headers = Headers(self.headers.items())
                req = Request(self.command, self.path, headers, body) if _takes_request else None
                if _uses_flask():
                    status, headers, payload = _call_in_flask(req, self.command, self.path, headers, body)
                elif _takes_request:
                    status, headers, payload = _to_response(_function(req))
                else:
                    status, headers, payload = _to_response(_function())
            except BodyCut as exc:
                self._cut_off(exc)
                return
            except Exception as exc:
                traceback.print_exc()
                sys.stderr.flush()
                self._send_json(500, {"error": type(exc).__name__}, {FUNCTION_ERROR_HEADER: type(exc).__name__})
                return
            if not isinstance(payload, _Stream):
                body.read_all()  # what the function left unread, before answering (as above)
            self._send(status, headers, payload)
        finally:
            # The connection carries the next request after this body's end: read up to it,
            # or give the connection up when the body cannot be read to its end.
            try:
                body.read_all()
            except (OSError, ValueError):
                self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        # BaseHTTPRequestHandler expects a (host, port) client address.
        return request, ("gust", 0)


def _warm_up(connect):
    """Runs the loader and one whole invocation (a request to ourselves) before the worker
    says it is ready, so the first real request does not pay for first-time work."""
    global _function, _takes_request, _warm
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "gust_warmup.py")
            with open(path, "w") as f:
                f.write("def main(req):\n    return {'params': req.params, 'body': req.json()}\n")
            _function = _load(path, "")
            _takes_request = _takes_argument(_function)
            sys.modules.pop("gust_warmup", None)
            sys.path.remove(tmp)
            conn = connect()
            body = b'{"warm": true}'
            conn.request("POST", WARMUP_PATH, body, {"Content-Type": "application/json", "X-Gust-Params": "{}"})
            conn.getresponse().read()
            conn.close()
    except Exception:
        pass  # warming up is an optimisation only
    finally:
        _function, _takes_request, _warm = None, False, True
        _warmed.set()


def main():
    listener = socket.socket(fileno=int(os.environ["GUST_LISTEN_FD"]))
    listener.set_inheritable(False)  # the function's own child processes do not get it
    server = UnixServer(None, Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener

    def connect():
        # The warm-up talks to this server over a private socket pair, never through a path.
        ours, theirs = socket.socketpair()
        server.process_request(theirs, ("gust", 0))
        conn = http.client.HTTPConnection("gust-worker")
        conn.sock = ours
        return conn

    threading.Thread(target=_warm_up, args=(connect,), daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
