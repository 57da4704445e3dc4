"""The gevent server on the unix socket: connections, ExtraInfo round trips, signals, the file."""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import socket
import stat
import time

import gevent
import gevent.socket
from gevent.event import Event
from gevent.server import StreamServer
from greenlet import GreenletExit, greenlet

from .protocol import messages as m
from .protocol.frame import RPC_EXTRA_INFO, RPC_NAMES, FrameError, FrameReader, pack_frame
from .runner import ExtraInfoFailed, Runner, error_frame

log = logging.getLogger("sidecar.server")

DEFAULT_SOCKET_MODE = 0o766
DEFAULT_BACKLOG = 1024
DEFAULT_CALL_TIMEOUT = 55.0
DEFAULT_GRACE = 0.8
_UNIX_PATH_MAX = 107


class AddressError(ValueError):
    """The listen address cannot be used; the message says why, in one line."""


def parse_address(address: str | None) -> str:
    """The socket path of `unix:/path` (APISIX's form) or a bare absolute path."""
    if not address or not address.strip():
        raise AddressError(
            "no listen address: set APISIX_LISTEN_ADDRESS (APISIX does) or pass --listen unix:/path"
        )
    address = address.strip()
    path = address[len("unix:"):] if address.startswith("unix:") else address
    if not path.startswith("/"):
        raise AddressError(f"listen address {address!r} is not a unix socket (want unix:/abs/path)")
    if len(os.fsencode(path)) > _UNIX_PATH_MAX:
        raise AddressError(f"socket path {path!r} is longer than {_UNIX_PATH_MAX} bytes")
    return path


def bind_unix(path: str, mode: int, backlog: int) -> tuple[socket.socket, tuple[int, int]]:
    """Bind and listen on `path` with `mode` from the first instant; return (socket, (dev, ino)).

    A stale socket file is removed first (a reloaded APISIX starts the new runner on the same
    path); anything else at that path is left alone and refused.
    """
    directory = os.path.dirname(path) or "/"
    if not os.path.isdir(directory):
        raise AddressError(f"socket directory {directory!r} does not exist or is not one")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise AddressError(f"socket directory {directory!r} is not writable by uid {os.getuid()}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise AddressError(f"{path!r} exists and is not a socket; refusing to replace it")
        os.unlink(path)
        log.info("removed stale socket file", extra={"path": path})
    sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise AddressError(f"cannot bind {path!r}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(backlog)
    st = os.stat(path)
    return sock, (st.st_dev, st.st_ino)


class Server:
    """Serves the runner on a unix socket until SIGTERM/SIGINT, then drains and exits."""

    def __init__(
        self,
        path: str,
        runner: Runner,
        *,
        socket_mode: int = DEFAULT_SOCKET_MODE,
        backlog: int = DEFAULT_BACKLOG,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        grace: float = DEFAULT_GRACE,
        watch_parent: bool = True,
    ) -> None:
        self.path = path
        self.runner = runner
        self.socket_mode = socket_mode
        self.backlog = backlog
        self.call_timeout = call_timeout
        self.grace = grace
        self.watch_parent = watch_parent
        # Taken before the socket exists: a parent that dies once it is listening still counts.
        self._parent = os.getppid()
        self._identity: tuple[int, int] | None = None
        self._server: StreamServer | None = None
        self._stop = Event()
        self._stopping = False
        self._connections: dict[socket.socket, bool] = {}
        self._drained = Event()

    def bind(self) -> None:
        """Create the socket file and listen (raises AddressError)."""
        listener, self._identity = bind_unix(self.path, self.socket_mode, self.backlog)
        self._server = StreamServer(listener, self._serve)

    def serve_forever(self) -> None:
        """Accept connections until asked to stop, then drain in-flight calls and clean up."""
        if self._server is None:
            self.bind()
        assert self._server is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, self.request_stop, sig)
        gevent.signal_handler(signal.SIGUSR1, self.log_status)
        if self.watch_parent:
            gevent.spawn(self._watch_parent, self._parent)
        self._server.start()
        log.info(
            "listening",
            extra={
                "path": self.path,
                "mode": oct(self.socket_mode),
                "backlog": self.backlog,
                "expire_s": self.runner.cache.ttl,
                "plugins": self.runner.registry.names(),
            },
        )
        self._stop.wait()
        self._shutdown()

    def request_stop(self, signum: int | None = None) -> None:
        """Stop accepting now; in-flight calls get `grace` seconds to finish."""
        if self._stopping:
            return
        self._stopping = True
        name = signal.Signals(signum).name if signum else "request"
        log.info("stopping", extra={"reason": name, "in_flight": self.in_flight})
        self._stop.set()

    def log_status(self) -> None:
        """On SIGUSR1: the counts a soak run watches for leaks (greenlets are counted by gc)."""
        log.info(
            "status",
            extra={
                "connections": len(self._connections),
                "in_flight": self.in_flight,
                "greenlets": sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet)),
                "tokens": len(self.runner.cache),
            },
        )

    @property
    def in_flight(self) -> int:
        """Connections in the middle of a call."""
        return sum(1 for busy in self._connections.values() if busy)

    def _shutdown(self) -> None:
        started = time.monotonic()
        assert self._server is not None
        self._server.close()
        for sock, busy in list(self._connections.items()):
            if not busy:
                _shutdown_socket(sock)
        if self._connections and not self._drained.wait(self.grace):
            log.warning("grace period over; dropping calls", extra={"in_flight": self.in_flight})
            for sock in list(self._connections):
                _shutdown_socket(sock)
        self._unlink_if_ours()
        log.info("stopped", extra={"duration_ms": round((time.monotonic() - started) * 1000, 1)})

    def _unlink_if_ours(self) -> None:
        """Remove the socket file unless another runner has already bound a new one there."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._identity:
            os.unlink(self.path)
        else:
            log.info("socket file belongs to a newer runner; leaving it", extra={"path": self.path})

    def _watch_parent(self, parent: int) -> None:
        """Exit with APISIX: when the parent goes, the runner is re-parented."""
        if parent <= 1:
            return
        while not self._stopping:
            gevent.sleep(0.5)
            if os.getppid() != parent:
                log.warning("parent process exited; stopping", extra={"parent_pid": parent})
                self.request_stop()

    def _serve(self, sock: socket.socket, _addr: object) -> None:
        connections = self._connections
        connections[sock] = False
        reader = FrameReader(sock)
        channel = _ExtraInfoChannel(reader, sock)
        read, call, send = reader.read, self._call, sock.send
        try:
            while not self._stopping:
                frame = read()
                if frame is None:
                    break
                connections[sock] = True
                reply_type, reply = call(frame[0], frame[1], channel)
                data = pack_frame(reply_type, reply)
                sent = send(data)  # one send is the usual case; sendall costs a getsockopt
                if sent < len(data):
                    sock.sendall(memoryview(data)[sent:])
                connections[sock] = False
                # Let the other connections go first: when this one's next request is already
                # there, recv does not block, and without this yield it is served again and
                # again while the others wait (p99 at 256 connections was ~1000 x p50).
                if len(connections) > 1:
                    gevent.sleep(0)
        except (FrameError, ExtraInfoFailed) as exc:
            log.info("closing connection", extra={"reason": str(exc)})
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                log.warning("connection error", extra={"reason": str(exc)})
        finally:
            connections.pop(sock, None)
            sock.close()
            if self._stopping and not connections:
                self._drained.set()

    def _call(
        self, rpc_type: int, payload: bytes, channel: _ExtraInfoChannel
    ) -> tuple[int, bytes]:
        """Run one call under the deadline; a plugin that swallows the deadline still fails it,
        and one that raises SystemExit or KeyboardInterrupt fails its call, not the runner."""
        # A fresh Timeout per call: a restarted one keeps its first due time in gevent 26, so
        # on a connection older than the deadline it fired in the middle of healthy calls.
        deadline = gevent.Timeout(self.call_timeout)
        deadline.start()
        try:
            reply: tuple[int, bytes] | None = self.runner.handle(rpc_type, payload, channel.ask)
        except gevent.Timeout:
            reply = None
        except (ExtraInfoFailed, GreenletExit):
            raise
        except BaseException:
            log.exception("call failed", extra={"rpc": RPC_NAMES.get(rpc_type, rpc_type)})
            reply = error_frame(m.ERR_SERVICE_UNAVAILABLE)
        finally:
            expired = not deadline.pending
            deadline.close()
        if channel.waiting:
            raise ExtraInfoFailed(
                f"no ExtraInfo answer within the {self.call_timeout}s call deadline"
            )
        if reply is None or expired:
            log.error("call deadline exceeded", extra={"timeout_s": self.call_timeout})
            return error_frame(m.ERR_SERVICE_UNAVAILABLE)
        return reply


_QUESTIONS: dict[tuple[int, str | None], bytes] = {}  # encoded ExtraInfo frames, by question
_QUESTIONS_KEPT = 1024  # plugins ask for a few fixed names; a bound in case one does not


class _ExtraInfoChannel:
    """Asks APISIX for a var or a body on the connection of the current call."""

    __slots__ = ("_reader", "_sock", "waiting")

    def __init__(self, reader: FrameReader, sock: socket.socket) -> None:
        self._reader = reader
        self._sock = sock
        self.waiting = False

    def ask(self, info_type: int, name: str | None) -> bytes | None:
        question = _QUESTIONS.get((info_type, name))
        if question is None:
            encoded = m.encode_extra_info_req(m.ExtraInfoReq(info_type=info_type, name=name))
            question = pack_frame(RPC_EXTRA_INFO, encoded)
            if len(_QUESTIONS) < _QUESTIONS_KEPT:
                _QUESTIONS[(info_type, name)] = question
        # `waiting` stays set if anything (the call deadline) interrupts the exchange: the
        # stream is then out of step and the connection must be closed.
        self.waiting = True
        try:
            self._sock.sendall(question)
            frame = self._reader.read()
        except (OSError, FrameError) as exc:
            raise ExtraInfoFailed(f"ExtraInfo exchange failed: {exc}") from None
        self.waiting = False
        if frame is None:
            raise ExtraInfoFailed("connection closed while waiting for an ExtraInfo answer")
        answer_type, payload = frame
        if answer_type != RPC_EXTRA_INFO:
            raise ExtraInfoFailed(f"expected an ExtraInfo answer, got RPC type {answer_type}")
        try:
            return m.decode_extra_info_resp(payload).result
        except m.DecodeError as exc:
            raise ExtraInfoFailed(f"undecodable ExtraInfo answer: {exc}") from None


def _shutdown_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
