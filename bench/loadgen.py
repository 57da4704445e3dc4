"""The load generator: a process that behaves as one APISIX worker towards the runner.

It keeps a pool of connections, prepares each scenario's configuration once (on a connection of
its own, as APISIX does from inside a call), then runs a fixed number of calls: each connection
sends a call, answers the runner's ExtraInfo questions, reads the reply and sends the next call.
One single-threaded epoll loop drives every connection, and requests and answers are encoded
once, so the generator stays cheap next to the runner on a small machine.

The parent drives it through a pipe: ("run", calls) -> a stats dict, ("stop",) -> exit.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import time
from array import array
from multiprocessing.connection import Connection

from sidecar.protocol import messages as m
from sidecar.protocol.frame import RPC_ERROR, RPC_EXTRA_INFO, RPC_PREPARE_CONF, pack_frame

from .scenarios import Scenario

_RECV = 1 << 18
_IN, _OUT, _ERRS = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR | select.EPOLLHUP


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("runner closed the connection")
            out += chunk
        return bytes(out)

    head = exactly(4)
    return head[0], exactly((head[1] << 16) | (head[2] << 8) | head[3])


def prepare(sock: socket.socket, scenario: Scenario) -> int:
    """PrepareConf on a blocking connection; the token."""
    payload = m.encode_prepare_conf_req(m.PrepareConfReq(conf=scenario.conf, key=scenario.key))
    sock.sendall(pack_frame(RPC_PREPARE_CONF, payload))
    rpc_type, reply = _read_frame(sock)
    if rpc_type != RPC_PREPARE_CONF:
        raise RuntimeError(f"PrepareConf for {scenario.name} answered with type {rpc_type}")
    return m.decode_prepare_conf_resp(reply)


class _Answers:
    """ExtraInfo answers of one scenario, encoded once per distinct question."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._cache: dict[bytes, tuple[int, bytes]] = {}

    def frame(self, question: bytes, resp_body_taken: bool) -> tuple[int, bytes]:
        """(info type, answer frame); a second RespBody in one call gets no result, as APISIX."""
        hit = self._cache.get(question)
        if hit is None:
            q = m.decode_extra_info_req(question)
            if q.info_type == m.INFO_VAR:
                value = self.scenario.vars.get(q.name or "")
                result = None if value is None else value.encode()
            elif q.info_type == m.INFO_RESP_BODY:
                result = self.scenario.resp_body
            else:
                result = None
            frame = pack_frame(RPC_EXTRA_INFO, m.encode_extra_info_resp(m.ExtraInfoResp(result)))
            hit = self._cache[question] = (q.info_type, frame)
        if hit[0] == m.INFO_RESP_BODY and resp_body_taken:
            return hit[0], _NO_RESULT
        return hit


_NO_RESULT = pack_frame(RPC_EXTRA_INFO, m.encode_extra_info_resp(m.ExtraInfoResp(None)))


class _Conn:
    __slots__ = ("sock", "fd", "scenario", "answers", "request", "expected", "inbuf", "out",
                 "quota", "started", "body_taken", "extra", "dead")

    def __init__(self, sock, scenario, answers, request) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.scenario = scenario
        self.answers = answers
        self.request = request
        self.expected: bytes | None = None
        self.inbuf = bytearray()
        self.out: memoryview | None = None
        self.quota = 0
        self.started = 0
        self.body_taken = False
        self.extra = 0
        self.dead = False


class Generator:
    """The state of one generator process: its connections and its tokens."""

    def __init__(self, path: str, scenarios: list[Scenario], conns: int,
                 spin: bool = False) -> None:
        self.path = path
        # spin: poll without sleeping, so that the target never pays for waking the generator
        self.spin = spin
        self.prep = self._connect(blocking=True)  # stays open and idle, as in APISIX's pool
        tokens = {}
        for sc in scenarios:
            if sc.name not in tokens:
                tokens[sc.name] = prepare(self.prep, sc)
        answers = {sc.name: _Answers(sc) for sc in scenarios}
        self.epoll = select.epoll()
        self.conns: list[_Conn] = []
        self.by_fd: dict[int, _Conn] = {}
        for i in range(conns):
            sc = scenarios[i % len(scenarios)]
            sock = self._connect(blocking=False)
            request = pack_frame(sc.rpc_type, sc.call_payload(tokens[sc.name]))
            c = _Conn(sock, sc, answers[sc.name], request)
            self.conns.append(c)
            self.by_fd[c.fd] = c
            self.epoll.register(c.fd, _IN)

    def _connect(self, blocking: bool) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(60)
        sock.connect(self.path)
        sock.setblocking(blocking)
        if blocking:
            sock.settimeout(60)
        return sock

    def _send(self, c: _Conn, data: bytes | memoryview) -> None:
        try:
            sent = c.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            c.out = memoryview(data)[sent:]
            self.epoll.modify(c.fd, _IN | _OUT)

    def _flush(self, c: _Conn) -> None:
        out = c.out
        try:
            sent = c.sock.send(out)
        except BlockingIOError:
            return
        if sent < len(out):
            c.out = out[sent:]
        else:
            c.out = None
            self.epoll.modify(c.fd, _IN)

    def run(self, calls: int, timeout: float = 120.0) -> dict:
        """`calls` calls spread evenly over the live connections; figures of this phase."""
        live = [c for c in self.conns if not c.dead]
        if not live:
            raise RuntimeError("every connection was lost")
        base, extra = divmod(calls, len(live))
        lat = array("q")
        stats = {"calls": 0, "ok": 0, "bad": 0, "errors": 0, "lost": 0, "extra_info": 0,
                 "bytes_in": 0, "first_error": None}
        active = 0
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        wall0 = time.perf_counter()
        now = time.perf_counter_ns
        for i, c in enumerate(live):
            c.quota = base + (1 if i < extra else 0)
            if c.quota:
                active += 1
                c.started = now()
                c.body_taken = False
                c.extra = 0
                self._send(c, c.request)
        poll, by_fd, rbuf = self.epoll.poll, self.by_fd, bytearray(_RECV)
        rview = memoryview(rbuf)
        deadline = time.monotonic() + timeout
        wait = 0.0 if self.spin else 1.0
        while active:
            events = poll(wait)
            if not events and time.monotonic() > deadline:
                raise TimeoutError(f"{active} connections still busy after {timeout}s")
            for fd, ev in events:
                c = by_fd[fd]
                if c.dead:
                    continue
                if ev & _OUT and c.out is not None:
                    self._flush(c)
                if not ev & (_IN | _ERRS):
                    continue
                try:
                    n = c.sock.recv_into(rbuf)
                except BlockingIOError:
                    continue
                except OSError:
                    n = 0
                if not n:
                    c.dead = True
                    stats["lost"] += c.quota
                    self.epoll.unregister(fd)
                    c.sock.close()
                    if c.quota:
                        active -= 1
                    continue
                buf = c.inbuf
                buf += rview[:n]
                while len(buf) >= 4:
                    end = 4 + ((buf[1] << 16) | (buf[2] << 8) | buf[3])
                    if len(buf) < end:
                        break
                    rpc_type = buf[0]
                    payload = bytes(buf[4:end])
                    del buf[:end]
                    if rpc_type == RPC_EXTRA_INFO:
                        info_type, answer = c.answers.frame(payload, c.body_taken)
                        if info_type == m.INFO_RESP_BODY:
                            c.body_taken = True
                        c.extra += 1
                        self._send(c, answer)
                        continue
                    lat.append(now() - c.started)
                    stats["calls"] += 1
                    stats["bytes_in"] += end
                    stats["extra_info"] += c.extra
                    sc = c.scenario
                    if (payload == c.expected and rpc_type == sc.rpc_type
                            and c.extra == sc.extra_per_call):
                        stats["ok"] += 1
                    else:
                        problem = sc.validate(rpc_type, payload)
                        if problem is None and c.extra != sc.extra_per_call:
                            problem = f"{c.extra} ExtraInfo questions, not {sc.extra_per_call}"
                        if problem is None:
                            stats["ok"] += 1
                            c.expected = payload
                        else:
                            stats["errors" if rpc_type == RPC_ERROR else "bad"] += 1
                            stats["first_error"] = stats["first_error"] or problem
                    c.quota -= 1
                    if c.quota:
                        c.started = now()
                        c.body_taken = False
                        c.extra = 0
                        self._send(c, c.request)
                    else:
                        active -= 1
        wall = time.perf_counter() - wall0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        stats["wall_s"] = wall
        stats["gen_cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        stats["latencies_ns"] = lat.tobytes()
        return stats

    def close(self) -> None:
        for c in self.conns:
            if not c.dead:
                c.sock.close()
        self.prep.close()
        self.epoll.close()


def worker_main(pipe: Connection, path: str, scenarios: list[Scenario], conns: int,
                spin: bool = False) -> None:
    """Entry point of a generator process."""
    try:
        gen = Generator(path, scenarios, conns, spin)
    except BaseException as exc:  # report setup failures instead of hanging the parent
        pipe.send({"setup_error": f"{type(exc).__name__}: {exc}"})
        return
    pipe.send({"ready": os.getpid()})
    while True:
        cmd = pipe.recv()
        if cmd[0] == "stop":
            break
        try:
            pipe.send(gen.run(cmd[1]))
        except BaseException as exc:
            pipe.send({"run_error": f"{type(exc).__name__}: {exc}"})
            break
    gen.close()
