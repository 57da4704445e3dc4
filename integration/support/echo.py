"""The suite's upstream: answers every request with a JSON echo of what it received.

Standard library only, so it runs from any image with a Python 3 (the suite runs it from the
gateway image itself, as `python -c <this file's source> --port N`). The answer is

    {"method": "POST", "path": "/a%20b", "query": {"x": ["1", "2"], "flag": [""]},
     "headers": {"host": ["echo:8080"], ...}, "body": "..."}

with `path` as received (no query, not decoded), `query` decoded name -> values, `headers`
lower-cased name -> values, and `body` decoded as UTF-8 (invalid bytes replaced). The response
carries `Content-Type: application/json` and `X-Echo-Upstream: echo`, so tests can check that
upstream headers reach the client.

`GET /__echo/requests` answers the list of echoes recorded so far (the newest 1000; that path
itself is not recorded): tests use it to prove a request never reached the upstream.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

RECORD_PATH = "/__echo/requests"
UPSTREAM_HEADER = ("X-Echo-Upstream", "echo")
MAX_RECORDED = 1000


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, quiet=False):
        super().__init__(address, EchoHandler)
        self.quiet = quiet
        self.records = collections.deque(maxlen=MAX_RECORDED)
        self.records_lock = threading.Lock()


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "echo-upstream/1"

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _answer(self, status, payload, extra_headers=()):
        data = json.dumps(payload, indent=1).encode("utf-8") + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header(*UPSTREAM_HEADER)
        for name, value in extra_headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self):
        body = self._read_body()
        parts = urlsplit(self.path)
        if parts.path == RECORD_PATH:
            with self.server.records_lock:
                recorded = list(self.server.records)
            self._answer(200, recorded)
            return
        query = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            query.setdefault(name, []).append(value)
        headers = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        echo = {
            "method": self.command,
            "path": parts.path,
            "query": query,
            "headers": headers,
            "body": body.decode("utf-8", "replace"),
        }
        with self.server.records_lock:
            self.server.records.append(echo)
        self._answer(200, echo)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        if not self.server.quiet:
            sys.stderr.write(f"echo: {self.address_string()} {format % args}\n")


def make_server(host="0.0.0.0", port=8080, quiet=False):
    """A bound EchoServer; call serve_forever() (port 0 picks a free port: see server_address)."""
    return EchoServer((host, port), quiet=quiet)


def main(argv=None):
    parser = argparse.ArgumentParser(description="JSON echo upstream for the integration suite")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, args.quiet)
    # As PID 1 of a container the default SIGTERM action is ignored: exit on it explicitly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = server.server_address[:2]
    sys.stderr.write(f"echo: listening on {host}:{port}\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
