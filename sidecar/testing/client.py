"""A client that talks to a runner the way APISIX does, on plain blocking sockets.

It pools connections and reuses them across calls, prepares a configuration on another
connection than the call it serves, re-prepares and retries after CONF_TOKEN_NOT_FOUND (at
most three attempts, as APISIX), answers ExtraInfo questions from what the caller supplies,
and closes a connection after any error reply, as APISIX does.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import select
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sidecar.protocol import messages as m
from sidecar.protocol.frame import (
    RPC_ERROR,
    RPC_EXTRA_INFO,
    RPC_HTTP_REQ_CALL,
    RPC_HTTP_RESP_CALL,
    RPC_PREPARE_CONF,
    FrameReader,
    write_frame,
)

ConfEntries = Iterable[tuple[str, "str | Mapping | list"]]
ERR_NAMES = {
    m.ERR_BAD_REQUEST: "bad request",
    m.ERR_SERVICE_UNAVAILABLE: "service unavailable",
    m.ERR_CONF_TOKEN_NOT_FOUND: "conf token not found",
}
ATTEMPTS = 3


class RunnerError(Exception):
    """The runner answered with an Err frame (APISIX would answer 503)."""

    def __init__(self, code: int) -> None:
        super().__init__(ERR_NAMES.get(code, f"unknown err {code}"))
        self.code = code


class ProtocolViolation(Exception):
    """The runner sent something APISIX would refuse (wrong type, garbage)."""


@dataclass
class ExtraInfoSource:
    """What APISIX would answer to ExtraInfo questions during one call, and what was asked."""

    vars: Mapping[str, str | bytes | None] = field(default_factory=dict)
    req_body: bytes | None = None
    resp_body: bytes | None = None
    asked: list[tuple[int, str | None]] = field(default_factory=list)
    _resp_body_read: bool = False

    def answer(self, question: m.ExtraInfoReq) -> bytes | None:
        self.asked.append((question.info_type, question.name))
        if question.info_type == m.INFO_VAR:
            value = self.vars.get(question.name or "")
            return value.encode() if isinstance(value, str) else value
        if question.info_type == m.INFO_REQ_BODY:
            return self.req_body
        if question.info_type == m.INFO_RESP_BODY:
            if self._resp_body_read:
                return None
            self._resp_body_read = True
            return self.resp_body
        raise ProtocolViolation(f"unsupported info type: {question.info_type}")


def _still_open(sock: socket.socket) -> bool:
    """An idle connection is usable while nothing (EOF, or stray bytes) is waiting on it."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _conf_list(conf: ConfEntries) -> list[tuple[str, str]]:
    return [(n, v if isinstance(v, str) else json.dumps(v)) for n, v in conf]


def default_key(conf: list[tuple[str, str]], phase: str) -> str:
    """A key shaped like APISIX's: conf type, id, phase plugin, version."""
    digest = hashlib.sha1(json.dumps(conf).encode()).hexdigest()[:10]
    return f"route#{digest}#{phase}#1"


class Client:
    """Speaks to a runner socket as APISIX does (see the module docstring)."""

    def __init__(self, path: str, timeout: float = 60.0, pool_size: int = 32) -> None:
        self.path = path.removeprefix("unix:")
        self.timeout = timeout
        self.pool_size = pool_size
        self._idle: list[tuple[socket.socket, FrameReader]] = []
        self._tokens: dict[str, int] = {}
        self.prepares = 0
        self.retries = 0
        self.last_extra_info: ExtraInfoSource | None = None

    def close(self) -> None:
        """Close every pooled connection."""
        while self._idle:
            self._idle.pop()[0].close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _acquire(self) -> tuple[socket.socket, FrameReader]:
        """An idle pooled connection, or a new one; pooled ones the runner closed are dropped.

        OpenResty's keepalive pool does the same: an idle connection that turns readable (EOF)
        is closed and leaves the pool.
        """
        while self._idle:
            conn = self._idle.pop()
            if _still_open(conn[0]):
                return conn
            conn[0].close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        return sock, FrameReader(sock)

    def _release(self, conn: tuple[socket.socket, FrameReader]) -> None:
        if len(self._idle) < self.pool_size:
            self._idle.append(conn)
        else:
            conn[0].close()

    def exchange(
        self, rpc_type: int, payload: bytes, extra: ExtraInfoSource | None = None
    ) -> tuple[int, bytes]:
        """One request and its reply on a pooled connection, answering ExtraInfo in between.

        The connection goes back to the pool only after a successful, non-error exchange.
        """
        conn = self._acquire()
        sock, reader = conn
        try:
            write_frame(sock, rpc_type, payload)
            while True:
                frame = reader.read()
                if frame is None:
                    raise ProtocolViolation("runner closed the connection before replying")
                reply_type, reply = frame
                if reply_type != RPC_EXTRA_INFO:
                    break
                if extra is None or rpc_type == RPC_PREPARE_CONF:
                    raise ProtocolViolation("ExtraInfo asked outside a call")
                answer = extra.answer(m.decode_extra_info_req(reply))
                write_frame(sock, RPC_EXTRA_INFO, m.encode_extra_info_resp(m.ExtraInfoResp(answer)))
        except BaseException:
            sock.close()
            raise
        if reply_type == RPC_ERROR:
            sock.close()
        else:
            self._release(conn)
        return reply_type, reply

    def prepare(self, conf: ConfEntries, key: str = "") -> int:
        """Send PrepareConf and return the token (cached by key, as APISIX's shared dict)."""
        entries = _conf_list(conf)
        key = key or default_key(entries, "ext-plugin-pre-req")
        payload = m.encode_prepare_conf_req(m.PrepareConfReq(conf=entries, key=key))
        reply_type, reply = self.exchange(RPC_PREPARE_CONF, payload)
        self.prepares += 1
        if reply_type == RPC_ERROR:
            raise RunnerError(m.decode_err(reply))
        if reply_type != RPC_PREPARE_CONF:
            raise ProtocolViolation(f"PrepareConf answered with RPC type {reply_type}")
        token = m.decode_prepare_conf_resp(reply)
        self._tokens[key] = token
        return token

    def forget_tokens(self) -> None:
        """Drop cached tokens, as APISIX does when the runner exits."""
        self._tokens.clear()

    def _call(self, rpc_type: int, conf: ConfEntries, key: str, phase: str, build, extra):
        entries = _conf_list(conf)
        key = key or default_key(entries, phase)
        last: RunnerError | None = None
        for _ in range(ATTEMPTS):
            conn = self._acquire()
            try:
                token = self._tokens.get(key) or self.prepare(entries, key)
            finally:
                self._idle.append(conn)
            reply_type, reply = self.exchange(rpc_type, build(token), extra)
            if reply_type == RPC_ERROR:
                last = RunnerError(m.decode_err(reply))
                if last.code != m.ERR_CONF_TOKEN_NOT_FOUND:
                    raise last
                self._tokens.pop(key, None)
                self.retries += 1
                continue
            if reply_type != rpc_type:
                raise ProtocolViolation(f"expected RPC type {rpc_type}, got {reply_type}")
            return reply
        assert last is not None
        raise last

    def request(
        self,
        conf: ConfEntries,
        *,
        key: str = "",
        phase: str = "ext-plugin-pre-req",
        id: int = 0,
        method: str = "GET",
        path: str = "/",
        args: Iterable[tuple[str, str | None]] = (),
        headers: Iterable[tuple[str, str | None]] = (),
        src_ip: str = "127.0.0.1",
        vars: Mapping[str, str | bytes | None] | None = None,
        body: bytes | None = None,
    ) -> m.HTTPReqCallResp:
        """An HTTPReqCall for a request through a route with these ext-plugin entries."""
        extra = ExtraInfoSource(vars=vars or {}, req_body=body)
        self.last_extra_info = extra
        ip = ipaddress.ip_address(src_ip).packed

        def build(token: int) -> bytes:
            return m.encode_http_req_call_req(m.HTTPReqCallReq(
                id=id, src_ip=ip, method=method, path=path, args=list(args),
                headers=list(headers), conf_token=token,
            ))

        reply = self._call(RPC_HTTP_REQ_CALL, conf, key, phase, build, extra)
        return m.decode_http_req_call_resp(reply)

    def response(
        self,
        conf: ConfEntries,
        *,
        key: str = "",
        id: int = 0,
        status: int = 200,
        headers: Iterable[tuple[str, str | None]] = (),
        body: bytes | None = None,
        vars: Mapping[str, str | bytes | None] | None = None,
        req_body: bytes | None = None,
    ) -> m.HTTPRespCallResp:
        """An HTTPRespCall for an upstream response through ext-plugin-post-resp."""
        extra = ExtraInfoSource(vars=vars or {}, req_body=req_body, resp_body=body)
        self.last_extra_info = extra

        def build(token: int) -> bytes:
            return m.encode_http_resp_call_req(m.HTTPRespCallReq(
                id=id, status=status, headers=list(headers), conf_token=token,
            ))

        reply = self._call(RPC_HTTP_RESP_CALL, conf, key, "ext-plugin-post-resp", build, extra)
        return m.decode_http_resp_call_resp(reply)
