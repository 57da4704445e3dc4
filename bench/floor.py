"""The floor: the least a gevent server on a unix socket can do per call.

It reads each frame whole (4-byte header, then the payload) and writes one fixed, valid reply of
the request's type, precomputed at start. Whatever the runner spends beyond this is the runner's.

    python -m bench.floor /path/to.sock
"""

from __future__ import annotations

import os
import signal
import socket
import sys

import gevent
import gevent.socket
from gevent.server import StreamServer

from bench.scenarios import floor_replies

_RECV = 65536


def _frames() -> dict[int, bytes]:
    frames = {}
    for rpc_type, payload in floor_replies().items():
        n = len(payload)
        frames[rpc_type] = bytes((rpc_type, n >> 16, (n >> 8) & 0xFF, n & 0xFF)) + payload
    return frames


FRAMES = _frames()
ERROR = FRAMES[0]  # Err.Resp BAD_REQUEST for any other type


def handle(sock: socket.socket, _addr: object) -> None:
    recv, send, frames = sock.recv, sock.send, FRAMES
    buf = b""
    try:
        while True:
            while len(buf) < 4:
                chunk = recv(_RECV)
                if not chunk:
                    return
                buf += chunk
            end = 4 + ((buf[1] << 16) | (buf[2] << 8) | buf[3])
            while len(buf) < end:
                chunk = recv(max(_RECV, end - len(buf)))
                if not chunk:
                    return
                buf += chunk
            rpc_type = buf[0]
            buf = buf[end:]
            reply = frames.get(rpc_type, ERROR)
            sent = send(reply)  # one send is the usual case; gevent's sendall adds a getsockopt
            if sent < len(reply):
                sock.sendall(memoryview(reply)[sent:])
    except OSError:
        pass
    finally:
        sock.close()


def main() -> None:
    path = sys.argv[1].removeprefix("unix:")
    if os.path.exists(path):
        os.unlink(path)
    listener = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1024)
    server = StreamServer(listener, handle)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
