"""What each scenario sends, what APISIX answers to ExtraInfo, and what a correct reply is.

A scenario is plain data (picklable) plus a validator; the load generator encodes the call once
per token, answers ExtraInfo questions from `vars` / `resp_body`, and validates the first reply
of every connection in full, later ones byte for byte against it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sidecar.protocol import messages as m
from sidecar.protocol.frame import RPC_HTTP_REQ_CALL, RPC_HTTP_RESP_CALL

from . import plugins as bp

CALL_ID = 7  # every call carries it; a reply with another id is wrong
SAY_BODY = "hello from the bench"
RUNNER_HEADER = ("X-Resp-A6-Runner", "Python")

# What APISIX sends for an ordinary browser-ish request: lower-cased headers, a couple of args.
REQUEST = dict(
    method="GET",
    path="/bench/items/42",
    src_ip=bytes((10, 0, 0, 1)),
    args=[("page", "2"), ("sort", "desc")],
    headers=[
        ("host", "api.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("x-forwarded-for", "192.0.2.10"),
        ("x-request-id", "5d0f3c1e-8a2b-4f6e-9c7d-123456789abc"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
    ],
)
VAR_VALUES = {"remote_addr": "10.0.0.1", "server_addr": "10.0.0.2", "route_id": "1"}
UPSTREAM_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Server", "bench-upstream"),
    ("Date", "Sat, 28 Nov 2026 08:00:00 GMT"),
    ("Cache-Control", "no-cache"),
]
RESP_CONF = {"headers": {"X-Bench": "1"},
             "filters": [{"regex": "^upstream", "replace": "rewritten"}]}


@dataclass
class Scenario:
    name: str
    rpc_type: int
    conf: list[tuple[str, str]]
    vars: dict[str, str] = field(default_factory=dict)
    resp_body: bytes | None = None
    extra_per_call: int = 0  # ExtraInfo questions a correct runner asks per call
    calls_scale: float = 1.0  # fraction of BENCH_CALLS this scenario runs
    description: str = ""

    @property
    def key(self) -> str:
        return f"route#bench-{self.name}#ext-plugin-pre-req#1"

    def call_payload(self, token: int) -> bytes:
        if self.rpc_type == RPC_HTTP_REQ_CALL:
            return m.encode_http_req_call_req(
                m.HTTPReqCallReq(id=CALL_ID, conf_token=token, **REQUEST))
        upstream = UPSTREAM_HEADERS + [("Content-Length", str(len(self.resp_body or b"")))]
        return m.encode_http_resp_call_req(
            m.HTTPRespCallReq(id=CALL_ID, status=200, headers=upstream, conf_token=token))

    def validate(self, rpc_type: int, payload: bytes) -> str | None:
        """None when the reply is what a correct runner answers, else what is wrong."""
        if rpc_type != self.rpc_type:
            return f"reply of RPC type {rpc_type}, expected {self.rpc_type}"
        try:
            return _VALIDATORS[self.name.split("-")[0]](self, payload)
        except m.DecodeError as exc:
            return f"undecodable reply: {exc}"


def _say(sc: Scenario, payload: bytes) -> str | None:
    r = m.decode_http_req_call_resp(payload)
    a = r.action
    if r.id != CALL_ID or not isinstance(a, m.Stop):
        return f"expected a Stop for id {CALL_ID}, got {r!r}"
    if a.status != 200 or a.body != SAY_BODY.encode() or RUNNER_HEADER not in a.headers:
        return f"wrong Stop {a!r}"
    return None


def _rewrite(sc: Scenario, payload: bytes) -> str | None:
    r = m.decode_http_req_call_resp(payload)
    a = r.action
    if r.id != CALL_ID or not isinstance(a, m.Rewrite):
        return f"expected a Rewrite for id {CALL_ID}, got {r!r}"
    if a.path != bp.REWRITE_PATH or sorted(a.headers) != sorted(bp.REWRITE_HEADERS):
        return f"wrong Rewrite {a!r}"
    if bp.REWRITE_ARG not in a.args:
        return f"Rewrite lacks the arg {bp.REWRITE_ARG}: {a!r}"
    return None


def _vars(sc: Scenario, payload: bytes) -> str | None:
    r = m.decode_http_req_call_resp(payload)
    a = r.action
    want = "|".join(VAR_VALUES[n] for n in bp.VARS).encode()
    if r.id != CALL_ID or not isinstance(a, m.Stop) or a.body != want:
        return f"expected a Stop with body {want!r}, got {r!r}"
    return None


def _resp(sc: Scenario, payload: bytes) -> str | None:
    r = m.decode_http_resp_call_resp(payload)
    body = sc.resp_body or b""
    want = b"rewritten" + body[len(b"upstream"):]
    names = {n.lower(): v for n, v in r.headers}
    if r.id != CALL_ID or r.body != want:
        return f"wrong response reply (id {r.id}, body of {len(r.body)} bytes)"
    if names.get("x-bench") != "1" or names.get("content-type") != UPSTREAM_HEADERS[0][1]:
        return f"wrong response headers {r.headers!r}"
    if "content-length" in names:
        return "Content-Length echoed although the body was replaced"
    return None


_VALIDATORS = {"say": _say, "floor": _say, "rewrite": _rewrite, "vars": _vars, "resp": _resp}


def _body(size: int) -> bytes:
    filler = b"0123456789abcdef" * (size // 16 + 1)
    return (b"upstream " + filler)[:size]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("say", RPC_HTTP_REQ_CALL, [("say", json.dumps({"body": SAY_BODY}))],
                 description="say: Stop with a fixed body"),
        Scenario("rewrite", RPC_HTTP_REQ_CALL, [("bench-rewrite", "{}")],
                 description="Rewrite of path, two headers and an arg"),
        Scenario("vars", RPC_HTTP_REQ_CALL, [("bench-vars", "{}")], vars=VAR_VALUES,
                 extra_per_call=3, description="three vars read through ExtraInfo, then Stop"),
        Scenario("resp-1k", RPC_HTTP_RESP_CALL, [("response-rewrite", json.dumps(RESP_CONF))],
                 resp_body=_body(1024), extra_per_call=1,
                 description="response-rewrite, 1 KiB body through ExtraInfo"),
        Scenario("resp-1m", RPC_HTTP_RESP_CALL, [("response-rewrite", json.dumps(RESP_CONF))],
                 resp_body=_body(1 << 20), extra_per_call=1, calls_scale=1 / 40,
                 description="response-rewrite, 1 MiB body through ExtraInfo"),
    )
}
# The floor: a server that answers every frame with one fixed, valid `say` reply.
FLOOR = Scenario("floor", RPC_HTTP_REQ_CALL, [("say", json.dumps({"body": SAY_BODY}))],
                 description="bench/floor.py: read a frame whole, write a fixed reply")


def floor_replies() -> dict[int, bytes]:
    """The fixed reply payloads of bench/floor.py, by RPC type."""
    stop = m.Stop(status=200, headers=[RUNNER_HEADER], body=SAY_BODY.encode())
    return {
        0: m.encode_err(m.ERR_BAD_REQUEST),
        1: m.encode_prepare_conf_resp(1),
        RPC_HTTP_REQ_CALL: m.encode_http_req_call_resp(m.HTTPReqCallResp(id=CALL_ID, action=stop)),
        RPC_HTTP_RESP_CALL: m.encode_http_resp_call_resp(m.HTTPRespCallResp(id=CALL_ID)),
    }
