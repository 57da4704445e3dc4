"""What a plugin touches: multi-valued headers and args, the request, and the two responses.

Nothing here knows of sockets: values APISIX holds (variables, bodies) arrive through small
callables the runner hands in, fetched on first use and kept for the rest of the call.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

Entry = tuple[str, "str | None"]
FetchVar = Callable[[str], "bytes | None"]
FetchBody = Callable[[], "bytes | None"]

# Headers a hop-by-hop proxy must not forward; never echoed back to APISIX in a response reply.
HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
))


def _to_text(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _to_bytes(data: str | bytes | bytearray) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


class _MultiDict:
    """An ordered multi-valued mapping that remembers which names were changed.

    Each name keeps the spelling it was first seen with; `_fold` decides which names are equal.
    Made `deferred`, it reads its entries only when something other than `set` needs them: a
    plugin that only sets names never pays for decoding the rest.
    """

    __slots__ = ("_data", "_touched", "_source", "_writes")
    _allow_none = False

    @staticmethod
    def _fold(name: str) -> str:
        return name

    def _check(self, name: str, value: str | None) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{type(self).__name__} names are non-empty strings, got {name!r}")
        if not (isinstance(value, str) or (value is None and self._allow_none)):
            raise TypeError(f"{type(self).__name__} values are strings, got {value!r} for {name!r}")

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._data: dict[str, tuple[str, list[str | None]]] = {}
        self._touched: dict[str, list[str | None]] = {}
        self._source: Callable[[], Iterable[Entry]] | None = None
        if not entries:  # a stop response's headers start empty on every call
            return
        data = self._data
        fold = self._fold
        for name, value in entries:
            key = fold(name)
            slot = data.get(key)
            if slot is None:
                data[key] = (name, [value])
            else:
                slot[1].append(value)

    @classmethod
    def deferred(cls, source: Callable[[], Iterable[Entry]]) -> _MultiDict:
        """One whose entries come from `source()` when first needed; sets before that wait."""
        self = cls()
        self._source = source
        self._writes: list[tuple[str, str]] = []  # sets made before the entries were read
        return self

    def _load(self) -> None:
        """Read the deferred entries, then make the sets made before, in their order.

        If reading fails (a malformed vector), it stays deferred: every later read fails alike.
        """
        entries, writes = self._source(), self._writes  # type: ignore[misc]
        type(self).__init__(self, entries)
        for name, value in writes:
            self.set(name, value)

    def _touch(self, key: str) -> None:
        if key not in self._touched:
            slot = self._data.get(key)
            self._touched[key] = list(slot[1]) if slot else []

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or `default` when it is absent."""
        if self._source is not None:
            self._load()
        slot = self._data.get(self._fold(name))
        return slot[1][0] if slot else default

    def get_all(self, name: str) -> list[str | None]:
        """Every value of `name`, in order (empty when absent)."""
        if self._source is not None:
            self._load()
        slot = self._data.get(self._fold(name))
        return list(slot[1]) if slot else []

    def set(self, name: str, value: str) -> None:
        """Replace every value of `name` with one value."""
        if type(value) is not str or type(name) is not str or not name:
            self._check(name, value)
        if self._source is not None:
            self._writes.append((name, value))
            return
        key = self._fold(name)
        self._touch(key)
        self._data[key] = (name, [value])

    def add(self, name: str, value: str) -> None:
        """Append one more value to `name`."""
        self._check(name, value)
        if self._source is not None:
            self._load()
        key = self._fold(name)
        self._touch(key)
        slot = self._data.get(key)
        if slot is None:
            self._data[key] = (name, [value])
        else:
            slot[1].append(value)

    def delete(self, name: str) -> None:
        """Remove `name` and all its values (no error when absent)."""
        if self._source is not None:  # deleting an absent name must stay no change at all
            self._load()
        key = self._fold(name)
        self._touch(key)
        self._data.pop(key, None)

    def items(self) -> list[Entry]:
        """Every (name, value) pair, one per value."""
        if self._source is not None:
            self._load()
        out = []  # a plain loop: cheaper than a comprehension for the few names a call has
        for name, values in self._data.values():
            for value in values:
                out.append((name, value))
        return out

    def __contains__(self, name: object) -> bool:
        if self._source is not None:
            self._load()
        return isinstance(name, str) and self._fold(name) in self._data

    def __iter__(self) -> Iterator[str]:
        if self._source is not None:
            self._load()
        return (name for name, _ in self._data.values())

    def __len__(self) -> int:
        if self._source is not None:
            self._load()
        return len(self._data)

    def __bool__(self) -> bool:
        if self._source is not None:
            self._load()
        return bool(self._data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.items()!r})"

    @property
    def changed(self) -> bool:
        """True when some name now holds other values than it started with."""
        if self._source is not None:
            self._load()
        return any(self._current(key) != before for key, before in self._touched.items())

    def _current(self, key: str) -> list[str | None]:
        slot = self._data.get(key)
        return slot[1] if slot else []

    def changes(self) -> list[tuple[str, list[str | None]]]:
        """(name, new values) for every changed name; an empty list of values means deleted.

        Names set while the entries were never read are all reported, even one set to the value
        it had: telling APISIX to set a value a header already has changes nothing.
        """
        if self._source is not None:
            last: dict[str, tuple[str, list[str | None]]] = {}
            for name, value in self._writes:
                last[self._fold(name)] = (name, [value])
            return list(last.values())
        out = []
        for key, before in self._touched.items():
            now = self._current(key)
            if now != before:
                slot = self._data.get(key)
                out.append((slot[0] if slot else key, list(now)))
        return out


class Headers(_MultiDict):
    """HTTP headers: case-insensitive names, several values per name."""

    __slots__ = ()
    _fold = staticmethod(str.lower)  # a C function: no Python frame on every lookup


class Args(_MultiDict):
    """Query arguments: several values per name; a flag such as `?debug` has the value None.

    APISIX cannot add a flag to a query: a None value set by a plugin is sent as an empty value.
    """

    __slots__ = ()
    _allow_none = True


def _checked_status(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 599:
        raise ValueError(f"status must be an integer in 100..599, got {value!r}")
    return value


class _HeldByAPISIX:
    """Variables and a body that APISIX holds: asked for on first use, kept for the call."""

    _what = "body"
    # Class-level defaults, shadowed per instance on first use: one of these objects is made on
    # every call, and most calls never touch most of them.
    _vars: dict[str, str | None] | None = None
    _body: bytes | None = None
    _new_body: bytes | None = None

    def __init__(self, fetch_var: FetchVar, fetch_body: FetchBody) -> None:
        self._fetch_var = fetch_var
        self._fetch_body = fetch_body

    def var(self, name: str) -> str | None:
        """An nginx or APISIX variable (`remote_addr`, `route_id`, ...), None when unset.

        Asked from APISIX on first use, then kept for the rest of the call.
        """
        known = self._vars
        if known is None:
            known = self._vars = {}
        elif name in known:
            return known[name]
        raw = self._fetch_var(name)
        value = known[name] = None if raw is None else _to_text(raw)
        return value

    def body(self) -> bytes:
        """The body (asked from APISIX once per call; b"" when there is none), or the new one."""
        if self._new_body is not None:
            return self._new_body
        if self._body is None:
            self._body = self._fetch_body() or b""
        return self._body

    def set_body(self, data: str | bytes) -> None:
        """Replace the body (APISIX adjusts the length).

        An empty replacement cannot be expressed in the protocol, so it is refused.
        """
        data = _to_bytes(data)
        if not data:
            raise ValueError(f"APISIX cannot replace a {self._what} with an empty one")
        self._new_body = data

    @property
    def new_body(self) -> bytes | None:
        """The body set by a plugin, None when untouched."""
        return self._new_body


class CallFields(Protocol):
    """What a Request is made from: the fields of an HTTPReqCall, read when a plugin asks."""

    id: int
    src_ip: bytes
    method: str
    path: str
    args: Iterable[Entry]
    headers: Iterable[Entry]


class Request(_HeldByAPISIX):
    """The client request as APISIX describes it in an HTTPReqCall (pre-req and post-req)."""

    _what = "request body"
    _path: str | None = None
    _args: Args | None = None
    _headers: Headers | None = None
    _resp_headers: Headers | None = None

    def __init__(self, call: CallFields, fetch_var: FetchVar, fetch_body: FetchBody) -> None:
        self._fetch_var = fetch_var
        self._fetch_body = fetch_body
        self._call = call  # its path, address, args and headers are only read when asked for

    @property
    def id(self) -> int:
        """The id APISIX gave this call."""
        return self._call.id

    @property
    def method(self) -> str:
        """The HTTP method (GET, POST, ...)."""
        return self._call.method

    @property
    def src_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The client address (APISIX sends 4 or 16 raw bytes); None when it sent neither."""
        raw = self._call.src_ip
        if len(raw) in (4, 16):
            return ipaddress.ip_address(raw)
        return None

    @property
    def path(self) -> str:
        """The path APISIX will proxy (nginx's normalized, percent-decoded `$uri`); settable."""
        return self._call.path if self._path is None else self._path

    @path.setter
    def path(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("path must be a non-empty string")
        self._path = value

    @property
    def path_changed(self) -> bool:
        """True when a plugin set another path."""
        return self._path is not None and self._path != self._call.path

    @property
    def args(self) -> Args:
        """The query arguments, percent-decoded; changes are sent to APISIX."""
        if self._args is None:
            call = self._call
            self._args = Args.deferred(lambda: call.args)
        return self._args

    @property
    def headers(self) -> Headers:
        """The request headers (names lower-cased by APISIX); changes are sent to APISIX."""
        if self._headers is None:
            call = self._call
            self._headers = Headers.deferred(lambda: call.headers)
        return self._headers

    @property
    def resp_headers(self) -> Headers:
        """Headers to add to the eventual client response while the request goes on.

        APISIX ignores these names here: connection, content-length, transfer-encoding,
        location, server, www-authenticate, content-encoding, content-type, content-location,
        content-language. Stop the request (the `response` argument) to set them.
        """
        if self._resp_headers is None:
            self._resp_headers = Headers()
        return self._resp_headers

    @property
    def args_loaded(self) -> bool:
        """True once a plugin looked at the args (only then can they have changed)."""
        return self._args is not None

    @property
    def headers_loaded(self) -> bool:
        """True once a plugin looked at the headers."""
        return self._headers is not None

    @property
    def resp_headers_loaded(self) -> bool:
        """True once a plugin added response headers."""
        return self._resp_headers is not None


class StopResponse:
    """The response a request-phase plugin may give instead of proxying.

    Setting the status, touching a header or writing a body stops the request in APISIX with
    this response and ends the plugin chain. Status 0 becomes 200 in APISIX.
    """

    _status = 0
    _headers: Headers | None = None
    _body: bytes | bytearray = b""
    _written = False

    @property
    def headers(self) -> Headers:
        """The response headers; setting one stops the request."""
        if self._headers is None:
            self._headers = Headers()
        return self._headers

    @property
    def status(self) -> int:
        """The HTTP status to answer with (0 until set; APISIX answers 0 as 200)."""
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        ok = type(value) is int and 100 <= value <= 599
        self._status = value if ok else _checked_status(value)

    def write(self, data: str | bytes) -> None:
        """Append to the response body."""
        chunk = data.encode() if type(data) is str else _to_bytes(data)
        body = self._body
        if not self._written:
            self._body = chunk  # the usual single write: no buffer at all
            self._written = True
        elif type(body) is bytearray:
            body += chunk
        else:
            self._body = bytearray(body) + chunk  # later writes append in place

    @property
    def body(self) -> bytes:
        """What was written so far."""
        body = self._body
        return bytes(body) if type(body) is bytearray else body

    def parts(self) -> tuple[int, list[Entry], bytes]:
        """(status, header entries, body): what APISIX is told to answer."""
        headers, body = self._headers, self._body
        return (
            self._status,
            [] if headers is None else headers.items(),
            bytes(body) if type(body) is bytearray else body,
        )

    @property
    def stopped(self) -> bool:
        """True once the plugin gave a response, so APISIX must answer with it."""
        return (
            self._status != 0
            or self._written
            or (self._headers is not None and bool(self._headers._touched))
        )


class Response(_HeldByAPISIX):
    """The upstream response in ext-plugin-post-resp, which a plugin may change.

    The client keeps every upstream header the plugin leaves alone, Content-Type included.
    """

    _what = "response body"

    def __init__(
        self,
        id: int,
        status: int,
        headers: Iterable[Entry],
        fetch_var: FetchVar,
        fetch_body: FetchBody,
    ) -> None:
        super().__init__(fetch_var, fetch_body)
        self.id = id
        self.upstream_status = status
        self._status = status
        self.headers = Headers(headers)

    @property
    def status(self) -> int:
        """The status the client will get (the upstream's until a plugin sets another)."""
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        self._status = _checked_status(value)
