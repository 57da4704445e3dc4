"""The gevent server on the unix socket: connections, ExtraInfo round trips, signals, the file.

One worker greenlet serves every connection. The event loop queues each connection that becomes
readable, and the worker serves the queue in turn, one read per connection, so connections take
turns and a busy loop round costs one greenlet switch however many calls it holds. A call runs
in the worker itself. When a call has to wait (an ExtraInfo round trip, a plugin's own I/O, a
slow reader of the reply), the worker hands the queue over to a spare greenlet just before it
blocks (gevent's `switch_out` hook), finishes that call, and parks as the next spare; spares are
kept up to one per connection.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import socket
import stat
import time
from collections import deque
from collections.abc import Callable

import gevent
from gevent import monkey
from gevent.event import Event
from greenlet import GreenletExit, greenlet

from .protocol import messages as m
from .protocol.frame import (
    HEADER_SIZE,
    PACK_HEADER_WORD,
    RPC_EXTRA_INFO,
    RPC_NAMES,
    FrameError,
    IncompleteFrame,
    pack_frame,
    take_frame,
    whole_frame,
)
from .runner import ExtraInfoFailed, Runner, error_frame

log = logging.getLogger("sidecar.server")

DEFAULT_SOCKET_MODE = 0o766
DEFAULT_BACKLOG = 1024
DEFAULT_CALL_TIMEOUT = 55.0
DEFAULT_GRACE = 0.8
_UNIX_PATH_MAX = 107
_RECV_CHUNK = 65536
_SPARES_MIN = 8  # parked workers kept for calls that wait, or one per connection if more
# The stdlib class even when gevent has patched the module: the server waits on the loop itself.
_StdSocket = monkey.get_original("socket", "socket")


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
    sock = _StdSocket(socket.AF_UNIX, socket.SOCK_STREAM)
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
    sock.setblocking(False)
    st = os.stat(path)
    return sock, (st.st_dev, st.st_ino)


class CallDeadline(BaseException):
    """Thrown into a call that outlived the call deadline (BaseException: plugins catching
    Exception do not swallow it)."""


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
        self._listener: socket.socket | None = None
        self._acceptor: gevent.Greenlet | None = None
        self._stop = Event()
        self._stopping = False
        self._connections: dict[_Connection, None] = {}
        self._drained = Event()
        self._ready: deque[_Connection] = deque()  # readable connections, in turn
        self._worker: _Worker | None = None  # the one serving the queue
        self._worker_idle = False  # it waits for the queue to fill
        self._wake_pending = False
        self._spares: list[_Worker] = []  # workers parked after finishing a call that waited

    def bind(self) -> None:
        """Create the socket file and listen (raises AddressError)."""
        self._listener, self._identity = bind_unix(self.path, self.socket_mode, self.backlog)

    def serve_forever(self) -> None:
        """Accept connections until asked to stop, then drain in-flight calls and clean up."""
        if self._listener is None:
            self.bind()
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, self.request_stop, sig)
        gevent.signal_handler(signal.SIGUSR1, self.log_status)
        if self.watch_parent:
            gevent.spawn(self._watch_parent, self._parent)
        # One timer checks every call's deadline: cheaper than a timer started and stopped per
        # call, at the price of firing up to one tick late.
        tick = min(1.0, max(0.01, self.call_timeout / 20))
        deadlines = gevent.get_hub().loop.timer(tick, tick)
        deadlines.start(self._expire_calls)
        self._acceptor = gevent.spawn(self._accept)
        self._hand_over()
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
        try:
            self._stop.wait()
            self._shutdown()
        finally:
            deadlines.close()

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
                "gc_frozen": gc.get_freeze_count(),  # startup objects (never counted above)
                "tokens": len(self.runner.cache),
            },
        )

    @property
    def in_flight(self) -> int:
        """Connections in the middle of a call."""
        return sum(1 for conn in self._connections if conn.busy)

    def _shutdown(self) -> None:
        started = time.monotonic()
        assert self._acceptor is not None and self._listener is not None
        self._acceptor.kill()
        self._listener.close()
        for conn in list(self._connections):
            if not conn.busy:
                conn.shutdown()
        if self._connections and not self._drained.wait(self.grace):
            log.warning("grace period over; dropping calls", extra={"in_flight": self.in_flight})
            for conn in list(self._connections):
                conn.shutdown()
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

    def _accept(self) -> None:
        """Accept every pending connection each time the listener is readable."""
        listener = self._listener
        assert listener is not None
        hub = gevent.get_hub()
        readable = hub.loop.io(listener.fileno(), 1)
        try:
            while True:
                hub.wait(readable)
                while True:
                    try:
                        fd, _ = listener._accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno == errno.ECONNABORTED:
                            continue
                        # EMFILE, ENFILE, ENOBUFS: wait for descriptors to free up, keep serving.
                        log.warning("cannot accept a connection", extra={"reason": str(exc)})
                        gevent.sleep(0.1)
                        break
                    sock = _StdSocket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fd)
                    sock.setblocking(False)
                    conn = _Connection(sock)
                    self._connections[conn] = None
                    conn.watch(self._queue)
        finally:
            readable.close()

    def _expire_calls(self) -> None:
        """Timer callback: throw CallDeadline into every call past its deadline."""
        now = time.monotonic()
        for conn in [c for c in self._connections if c.due and c.due <= now]:
            conn.due = 0.0
            conn.expired = True
            conn.greenlet.throw(CallDeadline)

    def _queue(self, conn: _Connection) -> None:
        """Loop callback: `conn` is readable; the worker is woken once all of this round's
        callbacks have queued their connections."""
        if not conn.queued:
            conn.queued = True
            self._ready.append(conn)
            if self._worker_idle and not self._wake_pending:
                self._wake_pending = True
                gevent.get_hub().loop.run_callback(self._wake)

    def _wake(self) -> None:
        self._wake_pending = False
        worker = self._worker
        if self._worker_idle and worker is not None:
            self._worker_idle = False
            worker.switch()

    def _hand_over(self) -> None:
        """Make a spare (or a new) worker the one serving the queue, from the next turn."""
        worker = self._spares.pop() if self._spares else _Worker(self)
        self._worker = worker
        self._worker_idle = False
        gevent.get_hub().loop.run_callback(worker.switch)

    def _detach(self, worker: _Worker, conn: _Connection) -> None:
        """Called as `worker` is about to wait inside a call on `conn` (gevent's switch_out):
        the call keeps the worker, another one serves the queue meanwhile."""
        conn.unwatch()  # its bytes (and its hang-up) belong to that call now
        conn.detached = True
        self._hand_over()

    def _work(self, worker: _Worker) -> None:
        """A worker's life: serve while it is the serving one, otherwise park as a spare."""
        hub = gevent.get_hub()
        ready, serve = self._ready, self._serve_ready
        while True:
            while self._worker is worker:
                if not ready:
                    self._worker_idle = True
                    hub.switch()  # until _wake (or _hand_over) switches back
                    continue
                conn = ready.popleft()
                conn.queued = False
                if conn.closed or conn.detached:
                    continue
                try:
                    serve(conn, worker)
                except BaseException:  # this worker serves every connection: it must go on
                    log.exception("serving a connection failed; closing it")
                    self._close(conn)
            if len(self._spares) >= self._spares_wanted():
                return
            self._spares.append(worker)
            hub.switch()  # until _hand_over resumes it (or _close ends it)

    def _spares_wanted(self) -> int:
        """As many parked workers as connections: each could have a call waiting at once, and
        making a greenlet per such call costs more than keeping one."""
        return max(_SPARES_MIN, len(self._connections))

    def _serve_ready(self, conn: _Connection, worker: _Worker) -> None:
        """Read what a ready connection sent and answer every whole frame in it."""
        try:
            frame = conn.read_ready()
            while frame is not None and not self._stopping:
                conn.busy = True
                worker.call = conn
                conn.greenlet = worker
                # The call deadline: _expire_calls throws CallDeadline into the call once `due`
                # has passed; it can only land while the call waits, inside handle.
                conn.due = time.monotonic() + self.call_timeout
                try:
                    reply_type, reply = self.runner.handle(frame[0], frame[1], conn.ask)
                    conn.due = 0.0
                except BaseException as exc:
                    conn.due = 0.0
                    reply_type, reply = self._call_failed(conn, frame[0], exc)
                if conn.expired or conn.waiting:
                    reply_type, reply = self._past_deadline(conn)
                # handle keeps payloads within the 24-bit length and types within a byte
                conn.send_all(PACK_HEADER_WORD(reply_type << 24 | len(reply)) + reply)
                worker.call = conn.greenlet = None
                conn.busy = False
                frame = conn.next_buffered()
        except (FrameError, ExtraInfoFailed) as exc:
            log.info("closing connection", extra={"reason": str(exc)})
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                log.warning("connection error", extra={"reason": str(exc)})
        else:
            if not (conn.eof or self._stopping):
                if conn.detached:  # its call waited; the queue takes the connection back
                    conn.detached = False
                    conn.watch(self._queue)
                return
        finally:
            worker.call = None
        self._close(conn)

    def _close(self, conn: _Connection) -> None:
        self._connections.pop(conn, None)
        conn.close()
        if len(self._spares) > self._spares_wanted():
            gevent.get_hub().loop.run_callback(self._spares.pop().throw)  # GreenletExit: it ends
        if self._stopping and not self._connections:
            self._drained.set()

    @staticmethod
    def _call_failed(conn: _Connection, rpc_type: int, exc: BaseException) -> tuple[int, bytes]:
        """A call that raised past the runner: the deadline, or a plugin's SystemExit or
        KeyboardInterrupt, fails only its call; a broken ExtraInfo exchange closes the
        connection."""
        if isinstance(exc, (ExtraInfoFailed, GreenletExit)):
            raise exc
        if isinstance(exc, CallDeadline):
            conn.expired = True
        else:
            log.error(
                "call failed", exc_info=exc, extra={"rpc": RPC_NAMES.get(rpc_type, rpc_type)}
            )
        return error_frame(m.ERR_SERVICE_UNAVAILABLE)

    def _past_deadline(self, conn: _Connection) -> tuple[int, bytes]:
        """The answer to a call the deadline fired in, even one whose plugin swallowed it."""
        if conn.waiting:  # the stream is out of step: the connection must go
            raise ExtraInfoFailed(
                f"no ExtraInfo answer within the {self.call_timeout}s call deadline"
            )
        conn.expired = False
        log.error("call deadline exceeded", extra={"timeout_s": self.call_timeout})
        return error_frame(m.ERR_SERVICE_UNAVAILABLE)


class _Worker(greenlet):
    """A greenlet that serves the server's epoll set; gevent calls switch_out just before it
    waits, which is when a call in progress takes it over (Server._detach)."""

    def __init__(self, server: Server) -> None:
        super().__init__(parent=gevent.get_hub())
        self.server = server
        self.call: _Connection | None = None  # the connection whose call it is running

    def run(self) -> None:  # type: ignore[override]
        self.server._work(self)

    def switch_out(self) -> None:
        conn = self.call
        if conn is not None and not conn.detached and self.server._worker is self:
            self.server._detach(self, conn)


_QUESTIONS: dict[tuple[int, str | None], bytes] = {}  # encoded ExtraInfo frames, by question
_QUESTIONS_KEPT = 1024  # plugins ask for a few fixed names; a bound in case one does not


class _Connection:
    """One APISIX connection: whole frames in, whole frames out, ExtraInfo asked mid-call.

    Between calls the loop queues it when readable and the serving worker reads what is there
    (read_ready); inside a call, reads wait for the socket first (read_frame), which hands the
    worker to that call (see the module doc).
    """

    __slots__ = (
        "sock", "closed", "greenlet", "busy", "due", "expired", "waiting", "detached", "eof",
        "queued", "_buf", "_hub", "_readable", "_watched", "_writable", "_recv", "_send",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False
        self.greenlet: greenlet | None = None  # the worker running its call
        self.queued = False  # in the server's queue of readable connections
        self.detached = False  # its call waits in a worker of its own, out of the epoll set
        self.eof = False  # the peer closed between frames
        self.busy = False  # in a call or sending its reply: drained, not cut, on stop
        self.due = 0.0  # monotonic deadline of the running call, 0 between calls
        self.expired = False  # the deadline fired during the running call
        self.waiting = False  # an ExtraInfo question is unanswered
        self._buf = bytearray()
        self._hub = gevent.get_hub()
        self._readable = self._hub.loop.io(sock.fileno(), 1)  # waited on inside a call
        self._watched = self._hub.loop.io(sock.fileno(), 1)  # queues it between calls
        self._writable: object | None = None
        self._recv, self._send = sock.recv, sock.send

    def _receive(self, size: int) -> bytes:
        """Up to `size` bytes once readable; b"" at EOF."""
        wait, readable, recv = self._hub.wait, self._readable, self._recv
        while True:
            wait(readable)
            try:
                return recv(size)
            except BlockingIOError:  # readiness can be spurious
                continue

    def watch(self, on_readable: Callable[[_Connection], None]) -> None:
        """Have the loop call on_readable(self) whenever the socket is readable."""
        self._watched.start(on_readable, self)

    def unwatch(self) -> None:
        self._watched.stop()

    def read_ready(self) -> tuple[int, bytes] | None:
        """The first whole frame among the bytes the socket holds now, without waiting.

        None when no frame is whole yet (the bytes are kept) or the peer closed (`eof` set);
        IncompleteFrame when it closed in the middle of one.
        """
        try:
            chunk = self._recv(_RECV_CHUNK)
        except BlockingIOError:  # readiness can be spurious
            return None
        buf = self._buf
        if not chunk:
            if buf:
                raise IncompleteFrame(f"connection closed with {len(buf)} bytes of a frame")
            self.eof = True
            return None
        if not buf:
            frame = whole_frame(chunk)
            if frame is not None:
                return frame
        buf += chunk
        return take_frame(buf)

    def next_buffered(self) -> tuple[int, bytes] | None:
        """The next whole frame already received, if there is one."""
        return take_frame(self._buf)

    def read_frame(self) -> tuple[int, bytes] | None:
        """(type, payload) of the next frame; None on EOF between frames, IncompleteFrame inside."""
        buf = self._buf
        if not buf:
            chunk = self._receive(_RECV_CHUNK)
            if not chunk:
                return None
            frame = whole_frame(chunk)
            if frame is not None:
                return frame
            buf += chunk
        else:
            gevent.sleep(0)  # a peer that sent several frames at once waits its turn too
        while len(buf) < HEADER_SIZE:
            chunk = self._receive(_RECV_CHUNK)
            if not chunk:
                raise IncompleteFrame(f"connection closed after {len(buf)} of 4 header bytes")
            buf += chunk
        frame = take_frame(buf)
        if frame is not None:
            return frame
        rpc_type = buf[0]
        length = (buf[1] << 16) | (buf[2] << 8) | buf[3]
        end = HEADER_SIZE + length
        have = len(buf)
        # The rest of a long payload goes straight into a buffer of its final size.
        frame = bytearray(end)
        frame[:have] = buf
        buf.clear()
        view = memoryview(frame)
        wait, readable, recv_into = self._hub.wait, self._readable, self.sock.recv_into
        while have < end:
            wait(readable)
            try:
                got = recv_into(view[have:])
            except BlockingIOError:
                continue
            if not got:
                raise IncompleteFrame(
                    f"connection closed after {have - HEADER_SIZE} of {length} payload bytes"
                )
            have += got
        return rpc_type, bytes(view[HEADER_SIZE:])

    def send_all(self, data: bytes) -> None:
        """Send every byte, waiting for room when the peer is slow to read."""
        try:
            sent = self._send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        if self._writable is None:
            self._writable = self._hub.loop.io(self.sock.fileno(), 2)
        view = memoryview(data)[sent:]
        while view:
            self._hub.wait(self._writable)
            try:
                view = view[self._send(view):]
            except BlockingIOError:
                continue

    def ask(self, info_type: int, name: str | None) -> bytes | None:
        """One ExtraInfo round trip on this connection, in the middle of the current call."""
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
            self.send_all(question)
            frame = self.read_frame()
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

    def shutdown(self) -> None:
        """Wake the connection's reader with EOF (it then closes); used when stopping."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Stop watching the descriptor, then close it (libev must not watch a closed fd)."""
        if self.closed:
            return
        self.closed = True
        self._watched.close()
        self._readable.close()
        if self._writable is not None:
            self._writable.close()  # type: ignore[attr-defined]
        self.sock.close()
