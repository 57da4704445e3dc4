"""Decode and encode every ext-plugin message, in both directions (schema: ext-plugin.fbs).

Reading is a small reader over the payload that checks every offset and length against it, so
malformed input raises DecodeError and nothing else. Writing lays each buffer out front to back
with struct (vtable, table, then children), several times faster than flatbuffers.Builder; tests
check both directions against the flatbuffers library.

Strings are UTF-8 decoded with errors="surrogateescape" and encoded the same way: header and
argument bytes that are not UTF-8 survive a decode/encode round trip unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, overload

Entry = tuple[str, "str | None"]


class DecodeError(ValueError):
    """A payload is not a valid FlatBuffers buffer of the expected message."""


METHODS: tuple[str, ...] = (
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "MKCOL",
    "COPY",
    "MOVE",
    "OPTIONS",
    "PROPFIND",
    "PROPPATCH",
    "LOCK",
    "UNLOCK",
    "PATCH",
    "TRACE",
)
_METHOD_IDS = {name: i for i, name in enumerate(METHODS)}

ERR_BAD_REQUEST = 0
ERR_SERVICE_UNAVAILABLE = 1
ERR_CONF_TOKEN_NOT_FOUND = 2

INFO_VAR = 1
INFO_REQ_BODY = 2
INFO_RESP_BODY = 3

_ACTION_NONE = 0
_ACTION_STOP = 1
_ACTION_REWRITE = 2

# Field ids by table, in declaration order (a union field is "<name>_type" then "<name>").
# tests/test_messages.py checks this and _ENUMS against ext-plugin.fbs, the one source of ids.
_FIELDS: dict[str, tuple[str, ...]] = {
    "A6.TextEntry": ("name", "value"),
    "A6.DataEntry": ("name", "value"),
    "A6.Err.Resp": ("code",),
    "A6.PrepareConf.Req": ("conf", "key"),
    "A6.PrepareConf.Resp": ("conf_token",),
    "A6.HTTPReqCall.Req": ("id", "src_ip", "method", "path", "args", "headers", "conf_token"),
    "A6.HTTPReqCall.Stop": ("status", "headers", "body"),
    "A6.HTTPReqCall.Rewrite": ("path", "headers", "args", "resp_headers", "body"),
    "A6.HTTPReqCall.Resp": ("id", "action_type", "action"),
    "A6.ExtraInfo.Var": ("name",),
    "A6.ExtraInfo.ReqBody": (),
    "A6.ExtraInfo.RespBody": (),
    "A6.ExtraInfo.Req": ("info_type", "info"),
    "A6.ExtraInfo.Resp": ("result",),
    "A6.HTTPRespCall.Req": ("id", "status", "headers", "conf_token"),
    "A6.HTTPRespCall.Resp": ("id", "status", "headers", "body"),
}
_ENUMS: dict[str, tuple[str, ...]] = {
    "A6.Method": METHODS,
    "A6.Err.Code": ("BAD_REQUEST", "SERVICE_UNAVAILABLE", "CONF_TOKEN_NOT_FOUND"),
    "A6.HTTPReqCall.Action": ("NONE", "Stop", "Rewrite"),
    "A6.ExtraInfo.Info": ("NONE", "Var", "ReqBody", "RespBody"),
}


def _ids(table: str, *names: str) -> tuple[int, ...]:
    """The ids of the named fields of a table, so every constant below is tied to its name."""
    return tuple(_FIELDS[table].index(name) for name in names)


_TE_NAME, _TE_VALUE = _ids("A6.TextEntry", "name", "value")
(_ERR_CODE,) = _ids("A6.Err.Resp", "code")
_PCQ_CONF, _PCQ_KEY = _ids("A6.PrepareConf.Req", "conf", "key")
(_PCP_TOKEN,) = _ids("A6.PrepareConf.Resp", "conf_token")
_HRQ_ID, _HRQ_SRC_IP, _HRQ_METHOD, _HRQ_PATH, _HRQ_ARGS, _HRQ_HEADERS, _HRQ_TOKEN = _ids(
    "A6.HTTPReqCall.Req", "id", "src_ip", "method", "path", "args", "headers", "conf_token"
)
_STOP_STATUS, _STOP_HEADERS, _STOP_BODY = _ids("A6.HTTPReqCall.Stop", "status", "headers", "body")
_RW_PATH, _RW_HEADERS, _RW_ARGS, _RW_RESP_HEADERS, _RW_BODY = _ids(
    "A6.HTTPReqCall.Rewrite", "path", "headers", "args", "resp_headers", "body"
)
_HRP_ID, _HRP_ACTION_TYPE, _HRP_ACTION = _ids("A6.HTTPReqCall.Resp", "id", "action_type", "action")
(_VAR_NAME,) = _ids("A6.ExtraInfo.Var", "name")
_EIQ_TYPE, _EIQ_INFO = _ids("A6.ExtraInfo.Req", "info_type", "info")
(_EIP_RESULT,) = _ids("A6.ExtraInfo.Resp", "result")
_SRQ_ID, _SRQ_STATUS, _SRQ_HEADERS, _SRQ_TOKEN = _ids(
    "A6.HTTPRespCall.Req", "id", "status", "headers", "conf_token"
)
_SRP_ID, _SRP_STATUS, _SRP_HEADERS, _SRP_BODY = _ids(
    "A6.HTTPRespCall.Resp", "id", "status", "headers", "body"
)


def _width(table: str) -> int:
    """How many field slots a table declares (how many vtable entries a reader looks at)."""
    return len(_FIELDS[table])


_W_ERR = _width("A6.Err.Resp")
_W_PC_REQ = _width("A6.PrepareConf.Req")
_W_PC_RESP = _width("A6.PrepareConf.Resp")
_W_HRQ = _width("A6.HTTPReqCall.Req")
_W_STOP = _width("A6.HTTPReqCall.Stop")
_W_REWRITE = _width("A6.HTTPReqCall.Rewrite")
_W_HRP = _width("A6.HTTPReqCall.Resp")
_W_VAR = _width("A6.ExtraInfo.Var")
_W_EI_REQ = _width("A6.ExtraInfo.Req")
_W_EI_RESP = _width("A6.ExtraInfo.Resp")
_W_SRQ = _width("A6.HTTPRespCall.Req")
_W_SRP = _width("A6.HTTPRespCall.Resp")


@dataclass(slots=True)
class PrepareConfReq:
    """APISIX -> runner, type 1: the plugins of one route phase, as (name, JSON) in run order."""

    conf: list[tuple[str, str]]
    key: str


@dataclass(slots=True)
class HTTPReqCallReq:
    """APISIX -> runner, type 2: one request; src_ip is raw (4 or 16 bytes), method a name."""

    id: int
    src_ip: bytes
    method: str
    path: str
    args: list[Entry]
    headers: list[Entry]
    conf_token: int


@dataclass(slots=True)
class HTTPRespCallReq:
    """APISIX -> runner, type 4: the upstream's status and headers (no body: ask ExtraInfo)."""

    id: int
    status: int
    headers: list[Entry]
    conf_token: int


@dataclass(slots=True)
class Stop:
    """End the request: APISIX answers the client (status 0 = 200, empty body = none)."""

    status: int = 0
    headers: list[Entry] = field(default_factory=list)
    body: bytes = b""


@dataclass(slots=True)
class Rewrite:
    """Change the request before it goes upstream; an entry with value None deletes."""

    path: str | None = None
    headers: list[Entry] = field(default_factory=list)
    args: list[Entry] = field(default_factory=list)
    resp_headers: list[Entry] = field(default_factory=list)
    body: bytes = b""


@dataclass(slots=True)
class HTTPReqCallResp:
    """Runner -> APISIX, type 2: Stop, Rewrite, or None to let the request through unchanged."""

    id: int
    action: Stop | Rewrite | None = None


@dataclass(slots=True)
class HTTPRespCallResp:
    """Runner -> APISIX, type 4: 0 / [] / b"" keep the upstream's status / headers / body."""

    id: int
    status: int = 0
    headers: list[Entry] = field(default_factory=list)
    body: bytes = b""


@dataclass(slots=True)
class ExtraInfoReq:
    """Runner -> APISIX, type 3 mid-call: INFO_VAR (with name), INFO_REQ_BODY, INFO_RESP_BODY."""

    info_type: int
    name: str | None = None


@dataclass(slots=True)
class ExtraInfoResp:
    """APISIX -> runner, type 3: None when the var or body does not exist, else its bytes."""

    result: bytes | None


# ------------------------------------------------------------------------------------- reading

_U8 = struct.Struct("<B").unpack_from
_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<I").unpack_from
_I32 = struct.Struct("<i").unpack_from
_SLOTS = tuple(struct.Struct(f"<{k}H").unpack_from for k in range(8))
_VT_TWO_SLOTS = struct.Struct("<4H").unpack_from  # vtable size, table size, slots 0 and 1
_MIN_TABLE = 12  # root offset + soffset + the smallest vtable


class _Reader:
    """Bounds-checked access to one payload.

    `budget` caps what decoding may produce at the payload's size: a real buffer never holds
    more, while a forged one could point many vector slots at one long string (quadratic memory).
    """

    __slots__ = ("buf", "end", "budget")

    def __init__(self, buf: bytes) -> None:
        if type(buf) is not bytes:
            buf = bytes(buf)
        self.buf = buf
        self.end = len(buf)
        self.budget = len(buf)

    def root(self, nfields: int) -> list[int]:
        """Field positions of the root table."""
        if self.end < _MIN_TABLE:
            raise DecodeError(f"payload of {self.end} bytes is too short for a FlatBuffers table")
        return self.table(_U32(self.buf, 0)[0], nfields)

    def table(self, pos: int, nfields: int) -> list[int]:
        """Absolute positions of fields 0..nfields-1 of the table at pos; 0 marks an absent one."""
        buf, end = self.buf, self.end
        if pos + 4 > end:
            raise DecodeError(f"table at {pos} lies outside the {end}-byte payload")
        vt = pos - _I32(buf, pos)[0]
        if vt < 0 or vt + 4 > end:
            raise DecodeError(f"vtable at {vt} lies outside the {end}-byte payload")
        vtsize = _U16(buf, vt)[0]
        if vtsize < 4 or vtsize & 1 or vt + vtsize > end:
            raise DecodeError(f"malformed vtable at {vt} (size {vtsize})")
        present = min(nfields, (vtsize - 4) >> 1)
        fields = [pos + off if off else 0 for off in _SLOTS[present](buf, vt + 4)]
        if present < nfields:
            fields.extend([0] * (nfields - present))
        return fields

    def u8(self, p: int) -> int:
        if not p:
            return 0
        if p + 1 > self.end:
            raise DecodeError(f"field at {p} lies outside the payload")
        return _U8(self.buf, p)[0]

    def u16(self, p: int) -> int:
        if not p:
            return 0
        if p + 2 > self.end:
            raise DecodeError(f"field at {p} lies outside the payload")
        return _U16(self.buf, p)[0]

    def u32(self, p: int) -> int:
        if not p:
            return 0
        if p + 4 > self.end:
            raise DecodeError(f"field at {p} lies outside the payload")
        return _U32(self.buf, p)[0]

    def target(self, p: int) -> int:
        """Follow the unsigned offset stored at p."""
        if p + 4 > self.end:
            raise DecodeError(f"offset at {p} lies outside the payload")
        return p + _U32(self.buf, p)[0]

    def vector(self, p: int, elem_size: int) -> tuple[int, int]:
        """(first element position, length) of the vector referenced at p, inside the payload."""
        v = self.target(p)
        if v + 4 > self.end:
            raise DecodeError(f"vector at {v} lies outside the payload")
        n = _U32(self.buf, v)[0]
        if v + 4 + n * elem_size > self.end:
            raise DecodeError(f"vector at {v} of {n} elements runs past the payload")
        return v + 4, n

    def charge(self, size: int) -> None:
        self.budget -= size
        if self.budget < 0:
            raise DecodeError("decoded content would exceed the payload size")

    def byte_vector(self, p: int) -> bytes | None:
        if not p:
            return None
        start, n = self.vector(p, 1)
        self.charge(n)
        return self.buf[start : start + n]

    def string(self, p: int) -> str | None:
        if not p:
            return None
        start, n = self.vector(p, 1)
        self.charge(n)
        return self.buf[start : start + n].decode("utf-8", "surrogateescape")

    def subtable(self, p: int, nfields: int) -> list[int] | None:
        return self.table(self.target(p), nfields) if p else None

    def entries(self, p: int) -> list[Entry]:
        """A [TextEntry] vector; an absent name reads as "", an absent value as None.

        The hot path of every call, so table and string reads are inlined here.
        """
        if not p:
            return []
        start, n = self.vector(p, 4)
        self.charge(8 * n)  # the least a real entry occupies: its slot and its soffset
        buf, end, budget = self.buf, self.end, self.budget
        out = []
        append = out.append
        q = start
        last_vt = -1  # builders share one vtable between same-shaped entries: read it once
        name_at = value_at = 0
        for rel in struct.unpack_from(f"<{n}I", buf, start):
            t = q + rel
            q += 4
            if t + 4 > end:
                raise DecodeError(f"table at {t} lies outside the {end}-byte payload")
            vt = t - _I32(buf, t)[0]
            if vt != last_vt:
                if vt < 0 or vt + 4 > end:
                    raise DecodeError(f"vtable at {vt} lies outside the {end}-byte payload")
                if vt + 8 <= end:  # vtable size, table size and both slots in one read
                    vtsize, _, name_at, value_at = _VT_TWO_SLOTS(buf, vt)
                else:
                    vtsize, name_at, value_at = _U16(buf, vt)[0], 0, 0
                if vtsize < 8 or vtsize & 1 or vt + vtsize > end:
                    if vtsize < 4 or vtsize & 1 or vt + vtsize > end:
                        raise DecodeError(f"malformed vtable at {vt} (size {vtsize})")
                    name_at = _U16(buf, vt + 4)[0] if vtsize == 6 else 0  # the name's slot only
                    value_at = 0
                last_vt = vt
            # The two strings, read as _Reader.string does (inlined: every call's hot path).
            if name_at:
                p = t + name_at
                if p + 4 > end:
                    raise DecodeError(f"offset at {p} lies outside the payload")
                at = p + _U32(buf, p)[0]
                if at + 4 > end:
                    raise DecodeError(f"string at {at} lies outside the payload")
                stop = at + 4 + _U32(buf, at)[0]
                if stop > end:
                    raise DecodeError(f"string at {at} runs past the payload")
                name = buf[at + 4 : stop].decode("utf-8", "surrogateescape")
                budget -= stop - at - 4
            else:
                name = ""
            if value_at:
                p = t + value_at
                if p + 4 > end:
                    raise DecodeError(f"offset at {p} lies outside the payload")
                at = p + _U32(buf, p)[0]
                if at + 4 > end:
                    raise DecodeError(f"string at {at} lies outside the payload")
                stop = at + 4 + _U32(buf, at)[0]
                if stop > end:
                    raise DecodeError(f"string at {at} runs past the payload")
                value = buf[at + 4 : stop].decode("utf-8", "surrogateescape")
                budget -= stop - at - 4
            else:
                value = None
            if budget < 0:
                raise DecodeError("decoded content would exceed the payload size")
            append((name, value))
        self.budget = budget
        return out


def _stop(r: _Reader, f: list[int]) -> Stop:
    return Stop(
        status=r.u16(f[_STOP_STATUS]),
        headers=r.entries(f[_STOP_HEADERS]),
        body=r.byte_vector(f[_STOP_BODY]) or b"",
    )


def _rewrite(r: _Reader, f: list[int]) -> Rewrite:
    return Rewrite(
        path=r.string(f[_RW_PATH]),
        headers=r.entries(f[_RW_HEADERS]),
        args=r.entries(f[_RW_ARGS]),
        resp_headers=r.entries(f[_RW_RESP_HEADERS]),
        body=r.byte_vector(f[_RW_BODY]) or b"",
    )


def decode_prepare_conf_req(buf: bytes) -> PrepareConfReq:
    """PrepareConf.Req; an absent `conf` (route without conf) is [], a valueless entry gets ""."""
    r = _Reader(buf)
    f = r.root(_W_PC_REQ)
    conf = [(name, value or "") for name, value in r.entries(f[_PCQ_CONF])]
    return PrepareConfReq(conf=conf, key=r.string(f[_PCQ_KEY]) or "")


def decode_prepare_conf_resp(buf: bytes) -> int:
    """PrepareConf.Resp: the token (absent = 0, as APISIX reads it)."""
    r = _Reader(buf)
    return r.u32(r.root(_W_PC_RESP)[_PCP_TOKEN])


class LazyHTTPReqCall:
    """HTTPReqCall.Req as the runner reads it: id, token and method at once, the address, path,
    args and headers on first use, so a call whose plugins never look at them (a `say`) does not
    pay for them. A malformed field raises DecodeError from wherever it is first read.

    It reads as an HTTPReqCallReq does and compares equal to one with the same fields.
    """

    __slots__ = (
        "id", "conf_token", "method", "_buf", "_at",
        "_r", "_src_ip", "_path", "_args", "_headers",  # set on first use
    )
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, buf: bytes) -> None:
        if type(buf) is not bytes:
            buf = bytes(buf)
        end = len(buf)
        if end < _MIN_TABLE:
            raise DecodeError(f"payload of {end} bytes is too short for a FlatBuffers table")
        pos = _U32(buf, 0)[0]
        if pos + 4 > end:
            raise DecodeError(f"table at {pos} lies outside the {end}-byte payload")
        vt = pos - _I32(buf, pos)[0]
        if 0 <= vt and vt + _HRQ_VT_SIZE <= end:
            vtsize, _, id_at, ip_at, method_at, path_at, args_at, headers_at, token_at = _HRQ_VT(
                buf, vt
            )
        else:
            vtsize = 0
        if vtsize == _HRQ_VT_SIZE:  # APISIX always sets the token, the last field: all 7 slots
            id_at = pos + id_at if id_at else 0
            method_at = pos + method_at if method_at else 0
            token_at = pos + token_at if token_at else 0
            # The lazy fields as (base, offset...): absolute position base + offset, 0 = absent.
            self._at = (pos, ip_at, path_at, args_at, headers_at)
        else:
            f = _Reader(buf).table(pos, _W_HRQ)
            id_at, method_at, token_at = f[_HRQ_ID], f[_HRQ_METHOD], f[_HRQ_TOKEN]
            self._at = (0, f[_HRQ_SRC_IP], f[_HRQ_PATH], f[_HRQ_ARGS], f[_HRQ_HEADERS])
        # An absent field is at 0, which passes these checks (end >= _MIN_TABLE) and reads as 0.
        if id_at + 4 > end or method_at + 1 > end or token_at + 4 > end:
            raise DecodeError("a scalar field lies outside the payload")
        method = buf[method_at] if method_at else 0
        if method >= len(METHODS):
            raise DecodeError(f"method enum value {method} is not in A6.Method")
        self.method = METHODS[method]
        self.id = _U32(buf, id_at)[0] if id_at else 0
        self.conf_token = _U32(buf, token_at)[0] if token_at else 0
        self._buf = buf

    def _reader(self) -> _Reader:
        """One reader for every lazy field: they share its budget, as a whole decode would."""
        try:
            return self._r
        except AttributeError:
            r = self._r = _Reader(self._buf)
            return r

    def _pos(self, slot: int) -> int:
        """Absolute position of lazy field `slot` (1 address, 2 path, 3 args, 4 headers)."""
        at = self._at
        off = at[slot]
        return at[0] + off if off else 0

    @property
    def src_ip(self) -> bytes:
        try:
            return self._src_ip
        except AttributeError:
            r = self._reader()
            ip = self._src_ip = _vector_bytes(r.buf, r.end, self._pos(1))
            r.charge(len(ip))
            return ip

    @property
    def path(self) -> str:
        try:
            return self._path
        except AttributeError:
            r = self._reader()
            raw = _vector_bytes(r.buf, r.end, self._pos(2))
            r.charge(len(raw))
            path = self._path = raw.decode("utf-8", "surrogateescape")
            return path

    @property
    def args(self) -> list[Entry]:
        try:
            return self._args
        except AttributeError:
            args = self._args = self._reader().entries(self._pos(3))
            return args

    @property
    def headers(self) -> list[Entry]:
        try:
            return self._headers
        except AttributeError:
            headers = self._headers = self._reader().entries(self._pos(4))
            return headers

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (HTTPReqCallReq, LazyHTTPReqCall)):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in _FIELDS["A6.HTTPReqCall.Req"])

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in _FIELDS["A6.HTTPReqCall.Req"])
        return f"LazyHTTPReqCall({fields})"


_HRQ_VT = struct.Struct(f"<HH{_W_HRQ}H").unpack_from
_HRQ_VT_SIZE = 4 + 2 * _W_HRQ


# LazyHTTPReqCall unpacks the seven vtable slots in this order.
assert (_HRQ_ID, _HRQ_SRC_IP, _HRQ_METHOD, _HRQ_PATH, _HRQ_ARGS, _HRQ_HEADERS, _HRQ_TOKEN) == (
    0, 1, 2, 3, 4, 5, 6)


def _vector_bytes(data: bytes, end: int, p: int) -> bytes:
    """The bytes of the [ubyte] or string referenced at p (b"" when absent), checked as
    _Reader.vector checks them; the caller charges them to the budget."""
    if not p:
        return b""
    if p + 4 > end:
        raise DecodeError(f"offset at {p} lies outside the payload")
    v = p + _U32(data, p)[0]
    if v + 4 > end:
        raise DecodeError(f"vector at {v} lies outside the payload")
    stop = v + 4 + _U32(data, v)[0]
    if stop > end:
        raise DecodeError(f"vector at {v} of {stop - v - 4} elements runs past the payload")
    return data[v + 4 : stop]


@overload
def decode_http_req_call_req(buf: bytes) -> HTTPReqCallReq: ...
@overload
def decode_http_req_call_req(buf: bytes, *, lazy: Literal[True]) -> LazyHTTPReqCall: ...
@overload
def decode_http_req_call_req(
    buf: bytes, *, lazy: bool
) -> HTTPReqCallReq | LazyHTTPReqCall: ...


def decode_http_req_call_req(
    buf: bytes, *, lazy: bool = False
) -> HTTPReqCallReq | LazyHTTPReqCall:
    """HTTPReqCall.Req; a method outside the Method enum is a DecodeError.

    lazy=True (the runner) gives a LazyHTTPReqCall: the vectors are decoded on first use.
    """
    call = LazyHTTPReqCall(buf)
    if lazy:
        return call
    return HTTPReqCallReq(
        call.id, call.src_ip, call.method, call.path, call.args, call.headers, call.conf_token
    )


def decode_http_req_call_resp(buf: bytes) -> HTTPReqCallResp:
    """HTTPReqCall.Resp; an unknown action type, or a Stop/Rewrite type without its table, fails."""
    r = _Reader(buf)
    f = r.root(_W_HRP)
    kind = r.u8(f[_HRP_ACTION_TYPE])
    action: Stop | Rewrite | None = None
    if kind == _ACTION_STOP or kind == _ACTION_REWRITE:
        stop = kind == _ACTION_STOP
        sub = r.subtable(f[_HRP_ACTION], _W_STOP if stop else _W_REWRITE)
        if sub is None:
            raise DecodeError(f"action type {kind} without an action table")
        action = _stop(r, sub) if stop else _rewrite(r, sub)
    elif kind != _ACTION_NONE:
        raise DecodeError(f"action type {kind} is not in A6.HTTPReqCall.Action")
    return HTTPReqCallResp(id=r.u32(f[_HRP_ID]), action=action)


def decode_http_resp_call_req(buf: bytes) -> HTTPRespCallReq:
    """HTTPRespCall.Req: the upstream's status and headers."""
    r = _Reader(buf)
    f = r.root(_W_SRQ)
    return HTTPRespCallReq(
        id=r.u32(f[_SRQ_ID]),
        status=r.u16(f[_SRQ_STATUS]),
        headers=r.entries(f[_SRQ_HEADERS]),
        conf_token=r.u32(f[_SRQ_TOKEN]),
    )


def decode_http_resp_call_resp(buf: bytes) -> HTTPRespCallResp:
    """HTTPRespCall.Resp; absent and empty headers/body both read as empty (APISIX's view)."""
    r = _Reader(buf)
    f = r.root(_W_SRP)
    return HTTPRespCallResp(
        id=r.u32(f[_SRP_ID]),
        status=r.u16(f[_SRP_STATUS]),
        headers=r.entries(f[_SRP_HEADERS]),
        body=r.byte_vector(f[_SRP_BODY]) or b"",
    )


def decode_extra_info_req(buf: bytes) -> ExtraInfoReq:
    """ExtraInfo.Req; NONE or an unknown info type fails (APISIX closes the connection on it)."""
    r = _Reader(buf)
    f = r.root(_W_EI_REQ)
    kind = r.u8(f[_EIQ_TYPE])
    if kind == INFO_VAR:
        var = r.subtable(f[_EIQ_INFO], _W_VAR)
        if var is None:
            raise DecodeError("ExtraInfo Var without its table")
        return ExtraInfoReq(INFO_VAR, r.string(var[_VAR_NAME]) or "")
    if kind == INFO_REQ_BODY or kind == INFO_RESP_BODY:
        return ExtraInfoReq(kind)
    raise DecodeError(f"info type {kind} is not a question APISIX answers")


def decode_extra_info_resp(buf: bytes) -> ExtraInfoResp:
    """ExtraInfo.Resp; result None = absent (no such var/body), b"" = present and empty."""
    r = _Reader(buf)
    return ExtraInfoResp(r.byte_vector(r.root(_W_EI_RESP)[_EIP_RESULT]))


def decode_err(buf: bytes) -> int:
    """Err.Resp code, unknown codes included; an empty payload is 0, as APISIX reads it."""
    if not len(buf):
        return ERR_BAD_REQUEST
    r = _Reader(buf)
    return r.u8(r.root(_W_ERR)[_ERR_CODE])


# ------------------------------------------------------------------------------------- writing
# A "blob" is (bytes, entry): a self-contained, 4-aligned piece of buffer whose length is a
# multiple of 4 and whose object starts at `entry`. Offsets inside are relative, so a parent can
# place a child blob anywhere after itself.

Blob = tuple[bytes, int]

_P32 = struct.Struct("<I").pack
_SCALAR_SIZE = {"I": 4, "H": 2, "B": 1}  # struct code -> bytes
# TextEntry vtables shared by a whole vector: with a value at 0, name only at 8.
_TE_VTABLES = struct.pack("<8H", 8, 12, 4, 8, 6, 8, 4, 0)
_TE_FULL = struct.Struct("<iII").pack
_TE_NAME_ONLY = struct.Struct("<iI").pack
_EMPTY_VECTOR: Blob = (b"\0\0\0\0", 0)


def _str(data: bytes) -> bytes:
    """A string object: length, bytes, NUL terminator, padding to 4."""
    return _P32(len(data)) + data + b"\0" * (4 - (len(data) & 3))


def _string(text: str) -> Blob:
    return _str(text.encode("utf-8", "surrogateescape")), 0


def _byte_vector(data: bytes) -> Blob:
    # one join copies a large body once; `+` twice would copy it twice
    return b"".join((_P32(len(data)), data, _PAD[-len(data) & 3])), 0


_PAD = (b"", b"\0", b"\0\0", b"\0\0\0")


def _entries(entries: list[Entry]) -> Blob:
    """A [TextEntry] vector: shared vtables, the offsets, then each table and its strings.

    Every call's reply carries some, so the strings go into one join as parts (length, bytes,
    NUL and padding) rather than each being built first.
    """
    if not entries:
        return _EMPTY_VECTOR
    count = len(entries)
    vector = 16
    pos = vector + 4 + 4 * count  # the first entry table
    offsets = []
    parts: list[bytes] = [b""]  # the head goes first, once the offsets are known
    for i, (name, value) in enumerate(entries):
        offsets.append(pos - (vector + 4 + 4 * i))
        raw_name = name.encode("utf-8", "surrogateescape")
        name_size = 4 + len(raw_name) + (name_pad := 4 - (len(raw_name) & 3))  # NUL, then pad
        if value is None:
            parts += (_TE_NAME_ONLY(pos - 8, 4), _P32(len(raw_name)), raw_name, _NULS[name_pad])
            pos += 8 + name_size
        else:
            raw_value = value.encode("utf-8", "surrogateescape")
            value_pad = 4 - (len(raw_value) & 3)
            parts += (
                _TE_FULL(pos, 8, 4 + name_size), _P32(len(raw_name)), raw_name, _NULS[name_pad],
                _P32(len(raw_value)), raw_value, _NULS[value_pad],
            )
            pos += 12 + name_size + 4 + len(raw_value) + value_pad
    parts[0] = _TE_VTABLES + struct.pack(f"<{count + 1}I", count, *offsets)
    return b"".join(parts), vector


_NULS = tuple(b"\0" * k for k in range(5))


def _table(children: list[tuple[int, Blob]], scalars: list[tuple[int, str, int]]) -> Blob:
    parts, start = _table_parts(children, scalars)
    return b"".join(parts), start


def _table_parts(
    children: list[tuple[int, Blob]], scalars: list[tuple[int, str, int]]
) -> tuple[list[bytes], int]:
    """One table: vtable, then the table (soffset, child offsets, scalars), then the children.

    children are (field id, blob); scalars are (field id, struct code I/H/B, value), largest
    first so each stays aligned. Callers leave out fields equal to their default, as
    FlatBuffers builders do. The layout depends only on which fields are present, so it is
    worked out once per shape (a handful per message type) and kept.
    """
    shape = (tuple([c[0] for c in children]), tuple([(s[0], s[1]) for s in scalars]))
    layout = _LAYOUTS.get(shape)
    if layout is None:
        layout = _LAYOUTS[shape] = _layout(*shape)
    vtable, start, child_pos, pack = layout
    parts = [vtable, b""]
    args = [start]
    slot = start + 4
    for _, (blob, entry) in children:
        args.append(child_pos + entry - slot)
        slot += 4
        child_pos += len(blob)
        parts.append(blob)
    for s in scalars:
        args.append(s[2])
    try:
        parts[1] = pack(*args)
    except struct.error as exc:
        raise ValueError(f"field value out of range: {exc}") from None
    return parts, start


_LAYOUTS: dict[tuple, tuple[bytes, int, int, Callable[..., bytes]]] = {}


def _layout(
    child_ids: tuple[int, ...], scalar_specs: tuple[tuple[int, str], ...]
) -> tuple[bytes, int, int, Callable[..., bytes]]:
    """(padded vtable, table start, first child's position, pack of the table) for a shape."""
    nslots = 1 + max([*child_ids, *[fid for fid, _ in scalar_specs]], default=-1)
    slots = [0] * nslots
    pos = 4
    for fid in child_ids:
        slots[fid] = pos
        pos += 4
    codes = ""
    for fid, code in scalar_specs:
        slots[fid] = pos
        pos += _SCALAR_SIZE[code]
        codes += code
    table_size = (pos + 3) & ~3
    vtable_size = 4 + 2 * nslots
    start = (vtable_size + 3) & ~3  # the vtable, padded so the table is 4-aligned
    vtable = struct.pack(f"<{2 + nslots}H{start - vtable_size}x", vtable_size, table_size, *slots)
    pack = struct.Struct(f"<i{len(child_ids)}I{codes}{table_size - pos}x").pack
    return vtable, start, start + table_size, pack


def _root(children: list[tuple[int, Blob]], scalars: list[tuple[int, str, int]]) -> bytes:
    """A whole buffer with this table as root: the root offset, then the table, one join."""
    parts, start = _table_parts(children, scalars)
    parts[0] = _P32(4 + start) + parts[0]
    return b"".join(parts)


def _stop_table(stop: Stop) -> Blob:
    children = []
    if stop.headers:
        children.append((_STOP_HEADERS, _entries(stop.headers)))
    if stop.body:
        children.append((_STOP_BODY, _byte_vector(stop.body)))
    return _table(children, [(_STOP_STATUS, "H", stop.status)] if stop.status else [])


def _rewrite_table(rewrite: Rewrite) -> Blob:
    children = []
    if rewrite.path is not None:
        children.append((_RW_PATH, _string(rewrite.path)))
    if rewrite.headers:
        children.append((_RW_HEADERS, _entries(rewrite.headers)))
    if rewrite.args:
        children.append((_RW_ARGS, _entries(rewrite.args)))
    if rewrite.resp_headers:
        children.append((_RW_RESP_HEADERS, _entries(rewrite.resp_headers)))
    if rewrite.body:
        children.append((_RW_BODY, _byte_vector(rewrite.body)))
    return _table(children, [])


def encode_prepare_conf_req(msg: PrepareConfReq) -> bytes:
    """PrepareConf.Req as APISIX writes it: no `conf` field when there is no entry."""
    children = [(_PCQ_KEY, _string(msg.key))]
    if msg.conf:
        children.append((_PCQ_CONF, _entries(msg.conf)))
    return _root(children, [])


def encode_prepare_conf_resp(token: int) -> bytes:
    """PrepareConf.Resp carrying the token."""
    return _root([], [(_PCP_TOKEN, "I", token)] if token else [])


def encode_http_req_call_req(msg: HTTPReqCallReq) -> bytes:
    """HTTPReqCall.Req as APISIX writes it: src_ip, path, args and headers always present."""
    method = _METHOD_IDS.get(msg.method)
    if method is None:
        raise ValueError(f"method {msg.method!r} is not in A6.Method")
    children = [
        (_HRQ_SRC_IP, _byte_vector(msg.src_ip)),
        (_HRQ_PATH, _string(msg.path)),
        (_HRQ_ARGS, _entries(msg.args)),
        (_HRQ_HEADERS, _entries(msg.headers)),
    ]
    scalars = [
        (_HRQ_ID, "I", msg.id),
        (_HRQ_TOKEN, "I", msg.conf_token),
        (_HRQ_METHOD, "B", method),
    ]
    return _root(children, [s for s in scalars if s[2]])


_STOP_REPLIES: dict[tuple, tuple[bytes, bytes]] = {}  # Stop reply around its id, by content
_STOP_REPLIES_KEPT = 1024  # plugins stop with a few fixed answers; a bound in case one does not
_STOP_REPLY_BODY_MAX = 4096  # larger bodies are encoded each time rather than kept


def encode_http_req_call_resp(msg: HTTPReqCallResp) -> bytes:
    """HTTPReqCall.Resp: no action (NONE), a Stop, or a Rewrite with only its non-empty fields."""
    return encode_req_call_reply(msg.id, msg.action)


def encode_req_call_reply(call_id: int, action: Stop | Rewrite | None) -> bytes:
    """encode_http_req_call_resp without building the message first (the runner's every call).

    A plugin that stops usually answers the same each time: that reply is encoded once and only
    the call id is spliced in, which saves most of the encoding of a `say` call.
    """
    if type(action) is Stop and 0 < call_id <= 0xFFFFFFFF:
        try:
            if len(action.body) > _STOP_REPLY_BODY_MAX:
                return _encode_req_call_resp(HTTPReqCallResp(call_id, action))
            key = (action.status, tuple(action.headers), action.body)
            around = _STOP_REPLIES.get(key)
        except TypeError:  # None or an unhashable field: not kept, encoded the general way
            return _encode_req_call_resp(HTTPReqCallResp(call_id, action))
        if around is None:
            around = _stop_reply_around_id(action)
            if len(_STOP_REPLIES) < _STOP_REPLIES_KEPT:
                _STOP_REPLIES[key] = around
        return b"".join((around[0], _P32(call_id), around[1]))
    return _encode_req_call_resp(HTTPReqCallResp(call_id, action))


def _stop_reply_around_id(stop: Stop) -> tuple[bytes, bytes]:
    """A Stop reply with a non-zero id cut where the id goes: (bytes before, bytes after)."""
    scalars = [(_HRP_ID, "I", 0), (_HRP_ACTION_TYPE, "B", _ACTION_STOP)]
    parts, start = _table_parts([(_HRP_ACTION, _stop_table(stop))], scalars)
    parts[0] = _P32(4 + start) + parts[0]
    buf = b"".join(parts)
    at = 4 + start + 8  # after the root offset, the table's soffset and its one child offset
    return buf[:at], buf[at + 4:]


def _encode_req_call_resp(msg: HTTPReqCallResp) -> bytes:
    scalars = [(_HRP_ID, "I", msg.id)] if msg.id else []
    action = msg.action
    if action is None:
        return _root([], scalars)
    if isinstance(action, Stop):
        kind, blob = _ACTION_STOP, _stop_table(action)
    elif isinstance(action, Rewrite):
        kind, blob = _ACTION_REWRITE, _rewrite_table(action)
    else:
        raise TypeError(f"action must be Stop, Rewrite or None, not {type(action).__name__}")
    scalars.append((_HRP_ACTION_TYPE, "B", kind))
    return _root([(_HRP_ACTION, blob)], scalars)


def encode_http_resp_call_req(msg: HTTPRespCallReq) -> bytes:
    """HTTPRespCall.Req as APISIX writes it: headers always present."""
    scalars = [
        (_SRQ_ID, "I", msg.id),
        (_SRQ_TOKEN, "I", msg.conf_token),
        (_SRQ_STATUS, "H", msg.status),
    ]
    children = [(_SRQ_HEADERS, _entries(msg.headers))]
    return _root(children, [s for s in scalars if s[2]])


def encode_http_resp_call_resp(msg: HTTPRespCallResp) -> bytes:
    """HTTPRespCall.Resp; status 0, no headers and an empty body are left out: "keep upstream's"."""
    scalars = [(_SRP_ID, "I", msg.id), (_SRP_STATUS, "H", msg.status)]
    children = []
    if msg.headers:
        children.append((_SRP_HEADERS, _entries(msg.headers)))
    if msg.body:
        children.append((_SRP_BODY, _byte_vector(msg.body)))
    return _root(children, [s for s in scalars if s[2]])


def encode_extra_info_req(msg: ExtraInfoReq) -> bytes:
    """ExtraInfo.Req: a Var (needs a name), ReqBody or RespBody question."""
    if msg.info_type == INFO_VAR:
        if msg.name is None:
            raise ValueError("an ExtraInfo Var question needs a name")
        info = _table([(_VAR_NAME, _string(msg.name))], [])
    elif msg.info_type == INFO_REQ_BODY or msg.info_type == INFO_RESP_BODY:
        info = _table([], [])
    else:
        raise ValueError(f"info type {msg.info_type} is not Var, ReqBody or RespBody")
    return _root([(_EIQ_INFO, info)], [(_EIQ_TYPE, "B", msg.info_type)])


def encode_extra_info_resp(msg: ExtraInfoResp) -> bytes:
    """ExtraInfo.Resp; None leaves `result` out (what APISIX sends for nil), b"" writes it empty."""
    if msg.result is None:
        return _root([], [])
    return _root([(_EIP_RESULT, _byte_vector(msg.result))], [])


def encode_err(code: int) -> bytes:
    """Err.Resp; BAD_REQUEST (0) is the default: an empty table, which APISIX reads as 0."""
    return _root([], [(_ERR_CODE, "B", code)] if code else [])
