"""Replay frames captured from a real APISIX 3.11 against a real runner, byte for byte.

The runner plays the seat the Go runner had; its replies must carry the same content as the
recorded ones (../shared/apisix-frames/README.md, "Replaying a case"), except where the Go
sample plugins differ on purpose: our runner header says Python, and our response-rewrite keeps
the upstream headers and status that the Go one loses.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest

from sidecar.protocol import messages as m
from sidecar.protocol.frame import FrameReader, pack_frame
from tests.conftest import frames_dir

FRAMES = frames_dir()
CASES = sorted(p.name for p in FRAMES.iterdir() if p.is_dir()) if FRAMES else []
TOKEN_FIELD = {2: 6, 4: 3}  # conf_token's field id in HTTPReqCall.Req / HTTPRespCall.Req

pytestmark = pytest.mark.skipif(FRAMES is None, reason="../shared/apisix-frames not found")


def load_case(name: str) -> tuple[dict, list[tuple[dict, int, bytes]]]:
    folder = FRAMES / name
    case = json.loads((folder / "case.json").read_text())
    frames = []
    for meta in case["frames"]:
        raw = (folder / meta["file"]).read_bytes()
        frames.append((meta, raw[0], raw[4:]))
    return case, frames


def with_token(rpc_type: int, payload: bytes, token: int) -> bytes:
    """The same bytes with conf_token overwritten in place (found through the vtable)."""
    buf = bytearray(payload)
    table = struct.unpack_from("<I", buf, 0)[0]
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    slot = 4 + 2 * TOKEN_FIELD[rpc_type]
    offset = struct.unpack_from("<H", buf, vtable + slot)[0]
    assert offset, "captured calls always carry a token"
    struct.pack_into("<I", buf, table + offset, token)
    return bytes(buf)


def exchanges(frames):
    """Each APISIX request with its recorded reply and the ExtraInfo answers of that exchange."""
    for i, (meta, rpc_type, payload) in enumerate(frames):
        if meta["origin"] != "apisix" or rpc_type not in (1, 2, 4):
            continue
        answers: dict[tuple[int, str | None], tuple[str, bytes | None]] = {}
        question = None
        reply = None
        for later, later_type, later_payload in frames[i + 1:]:
            if later["conn"] != meta["conn"]:
                continue
            if later["direction"] == "runner->apisix" and later_type == 3:
                q = m.decode_extra_info_req(later_payload)
                question = ((q.info_type, q.name), later["origin"])
            elif later["direction"] == "apisix->runner" and later_type == 3 and question:
                key, origin = question
                if key not in answers or answers[key][0] != "runner":
                    answers[key] = (origin, m.decode_extra_info_resp(later_payload).result)
                question = None
            elif later["direction"] == "runner->apisix":
                reply = (later, later_type, later_payload)
                break
        yield meta, rpc_type, payload, reply, {k: v[1] for k, v in answers.items()}


def normalized(entries):
    """Entries ordered by name (APISIX ignores order across names), Go's runner header as ours."""
    out = [(n, "Python" if n == "X-Resp-A6-Runner" and v == "Go" else v) for n, v in entries]
    return sorted(out, key=lambda e: e[0].lower())


class Replayer:
    def __init__(self, path: str) -> None:
        self.path = path
        self.conns: dict[int, tuple[socket.socket, FrameReader]] = {}
        self.tokens: dict[int, int] = {}
        self.asked: list[tuple[int, str | None]] = []

    def conn(self, number: int):
        if number not in self.conns:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(self.path)
            self.conns[number] = (s, FrameReader(s))
        return self.conns[number]

    def close(self) -> None:
        for s, _ in self.conns.values():
            s.close()

    def send(self, conn: int, rpc_type: int, payload: bytes, answers) -> tuple[int, bytes]:
        sock, reader = self.conn(conn)
        sock.sendall(pack_frame(rpc_type, payload))
        while True:
            reply_type, reply = reader.read()
            if reply_type != 3:
                return reply_type, reply
            q = m.decode_extra_info_req(reply)
            self.asked.append((q.info_type, q.name))
            result = answers.get((q.info_type, q.name))
            sock.sendall(pack_frame(3, m.encode_extra_info_resp(m.ExtraInfoResp(result))))


@pytest.mark.parametrize("case_name", CASES)
def test_replayed_case_gets_the_recorded_replies(shared_runner, case_name):
    case, frames = load_case(case_name)
    replayer = Replayer(shared_runner.path)
    compared = 0
    try:
        for meta, rpc_type, payload, reply, answers in exchanges(frames):
            if reply is None or reply[0]["origin"] == "proxy":
                continue
            recorded_meta, recorded_type, recorded = reply
            if rpc_type in TOKEN_FIELD:
                token = m.decode_http_req_call_req(payload).conf_token if rpc_type == 2 else \
                    m.decode_http_resp_call_req(payload).conf_token
                payload = with_token(rpc_type, payload, replayer.tokens[token])
            got_type, got = replayer.send(meta["conn"], rpc_type, payload, answers)
            assert got_type == recorded_type, f"{meta['file']}: reply type"
            compare(rpc_type, payload, got, recorded, replayer, case)
            compared += 1
    finally:
        replayer.close()
    assert compared >= 1


def post_resp_conf(case: dict) -> dict:
    """The response-rewrite configuration of the case's post-resp route."""
    for route in case["routes"]:
        ext = (route.get("plugins") or {}).get("ext-plugin-post-resp")
        if ext:
            return json.loads(ext["conf"][0]["value"])
    raise AssertionError("no ext-plugin-post-resp route in the case")


def compare(rpc_type, request, got, recorded, replayer, case) -> None:
    if rpc_type == 1:
        ours = m.decode_prepare_conf_resp(got)
        assert ours != 0
        replayer.tokens[m.decode_prepare_conf_resp(recorded)] = ours
    elif rpc_type == 2:
        ours, theirs = m.decode_http_req_call_resp(got), m.decode_http_req_call_resp(recorded)
        assert ours.id == theirs.id == m.decode_http_req_call_req(request).id
        if isinstance(theirs.action, m.Stop):
            assert isinstance(ours.action, m.Stop)
            assert ours.action.status == theirs.action.status
            assert ours.action.body == theirs.action.body
            assert normalized(ours.action.headers) == normalized(theirs.action.headers)
        else:
            assert ours.action == theirs.action
    else:
        req = m.decode_http_resp_call_req(request)
        ours, theirs = m.decode_http_resp_call_resp(got), m.decode_http_resp_call_resp(recorded)
        assert ours.id == theirs.id == req.id
        assert ours.body == theirs.body
        conf = post_resp_conf(case)
        assert ours.status == conf.get("status", 0), "the upstream status is kept unless configured"
        assert set(normalized(theirs.headers)) <= set(ours.headers), "the Go runner's headers"
        upstream = {n.lower() for n, _ in req.headers} - {"transfer-encoding", "connection"}
        if ours.body:
            upstream.discard("content-length")
        assert upstream <= {n.lower() for n, _ in ours.headers}, "upstream headers are kept"


def test_a_second_resp_body_is_never_asked_in_one_call(shared_runner):
    """extra-info-twice: APISIX has no body left for a second RespBody; ask once, keep it."""
    _, frames = load_case("extra-info-twice")
    replayer = Replayer(shared_runner.path)
    try:
        for meta, rpc_type, payload, reply, answers in exchanges(frames):
            if reply is None or reply[0]["origin"] == "proxy":
                continue
            if rpc_type in TOKEN_FIELD:
                token = m.decode_http_req_call_req(payload).conf_token if rpc_type == 2 else \
                    m.decode_http_resp_call_req(payload).conf_token
                payload = with_token(rpc_type, payload, replayer.tokens[token])
            _, got = replayer.send(meta["conn"], rpc_type, payload, answers)
            if rpc_type == 1:
                replayer.tokens[m.decode_prepare_conf_resp(reply[2])] = \
                    m.decode_prepare_conf_resp(got)
    finally:
        replayer.close()
    assert replayer.asked.count((m.INFO_RESP_BODY, None)) == 1


def test_every_case_folder_is_replayed():
    assert FRAMES is not None and len(CASES) >= 17
    assert all((Path(FRAMES) / c / "case.json").exists() for c in CASES)
