"""A wasi:http/proxy component in Python, built with componentize-py.

Answers every request with a greeting, the request's method and path, and how many requests
this instance has served (1 on every request unless the function opts into reuse). A path
with `stream` in it is answered in two chunks a second apart; one with `upload` reads the
request body as it arrives, prints its first piece and answers with its size. `/file/PATH`
answers the file at /PATH (or the error reading it), `/write/PATH` tries to write one, and
`/envvar/NAME` the variable NAME: what a function sees of its mounted secrets.
"""

import os

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import monotonic_clock
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

served = 0


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        global served
        served += 1
        greeting = os.environ.get("GREETING", "hello")
        method = type(request.method()).__name__.removeprefix("Method_").upper()
        text = f"{greeting} from python: {method} {request.path_with_query()} served={served}\n"
        print(f"python component served request {served}")

        path = request.path_with_query() or ""
        if "upload" in path:
            text = f"received {read_body(request)} bytes\n"
        elif "/file/" in path:
            text = read_file("/" + path.split("/file/", 1)[1])
        elif "/write/" in path:
            text = write_file("/" + path.split("/write/", 1)[1])
        elif "/envvar/" in path:
            text = os.environ.get(path.split("/envvar/", 1)[1], "(unset)")

        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            if "stream" in (request.path_with_query() or ""):
                stream.blocking_write_and_flush(b"first\n")
                monotonic_clock.subscribe_duration(1_000_000_000).block()
                stream.blocking_write_and_flush(b"second\n")
            else:
                stream.blocking_write_and_flush(text.encode())
        OutgoingBody.finish(body, None)


def read_body(request: IncomingRequest) -> int:
    """Reads the request body piece by piece as it arrives; returns its size."""
    incoming = request.consume()
    stream = incoming.stream()
    total = 0
    while True:
        try:
            data = stream.blocking_read(65536)
        except Err:
            break  # closed: the body's end
        if total == 0 and data:
            print(f"first chunk: {data[:20].decode(errors='replace')}", flush=True)
        total += len(data)
    return total


def read_file(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as err:
        return f"cannot read {path}: {type(err).__name__}"


def write_file(path: str) -> str:
    try:
        with open(path, "w") as f:
            f.write("overwritten")
        return f"wrote {path}"
    except OSError as err:
        return f"cannot write {path}: {type(err).__name__}"
