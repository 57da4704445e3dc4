"""Every frame captured between Apache APISIX 3.11.0 and a runner (shared/apisix-frames) decodes to
what the capture's case.json records, and re-encodes to the same content."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest

from sidecar.protocol import messages as m


def _frames_dir() -> Path | None:
    """APISIX_FRAMES_DIR, else `shared/apisix-frames` beside the checkout or one of its parents."""
    if os.environ.get("APISIX_FRAMES_DIR"):
        return Path(os.environ["APISIX_FRAMES_DIR"])
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "apisix-frames"
        if candidate.is_dir():
            return candidate
    return None


FRAMES_DIR = _frames_dir()
if FRAMES_DIR is None or not FRAMES_DIR.is_dir():
    pytest.skip(
        f"captured APISIX frames not found ({FRAMES_DIR or 'no shared/apisix-frames above tests/'}"
        "); set APISIX_FRAMES_DIR",
        allow_module_level=True,
    )

CASES = sorted(p.parent for p in FRAMES_DIR.glob("*/case.json"))
TO_RUNNER, TO_APISIX = "apisix->runner", "runner->apisix"

# (rpc type, direction) -> (root table as case.json names it, decoder, encoder)
CODECS = {
    (0, TO_APISIX): ("Err.Resp", m.decode_err, m.encode_err),
    (1, TO_RUNNER): ("PrepareConf.Req", m.decode_prepare_conf_req, m.encode_prepare_conf_req),
    (1, TO_APISIX): ("PrepareConf.Resp", m.decode_prepare_conf_resp, m.encode_prepare_conf_resp),
    (2, TO_RUNNER): ("HTTPReqCall.Req", m.decode_http_req_call_req, m.encode_http_req_call_req),
    (2, TO_APISIX): ("HTTPReqCall.Resp", m.decode_http_req_call_resp, m.encode_http_req_call_resp),
    (3, TO_APISIX): ("ExtraInfo.Req", m.decode_extra_info_req, m.encode_extra_info_req),
    (3, TO_RUNNER): ("ExtraInfo.Resp", m.decode_extra_info_resp, m.encode_extra_info_resp),
    (4, TO_RUNNER): ("HTTPRespCall.Req", m.decode_http_resp_call_req, m.encode_http_resp_call_req),
    (4, TO_APISIX): (
        "HTTPRespCall.Resp",
        m.decode_http_resp_call_resp,
        m.encode_http_resp_call_resp,
    ),
}


class Digest:
    """Stands for a byte vector case.json keeps only as length + sha256 (over 4096 bytes)."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, bytes)
            and len(other) == self.spec["len"]
            and hashlib.sha256(other).hexdigest() == self.spec["sha256"]
            and other.startswith(base64.b64decode(self.spec["head_b64"]))
        )

    def __repr__(self) -> str:
        return f"Digest(len={self.spec['len']}, sha256={self.spec['sha256'][:12]}...)"


def text(value: Any) -> str | None:
    """A case.json string: text, {"b64": ...} when not UTF-8, or null when absent."""
    if isinstance(value, dict):
        return base64.b64decode(value["b64"]).decode("utf-8", "surrogateescape")
    return value


def blob(value: dict | None) -> bytes | Digest | None:
    if value is None:
        return None
    if value.get("truncated"):
        return Digest(value)
    data = base64.b64decode(value["b64"])
    assert len(data) == value["len"]
    return data


def entries(value: list | None) -> list[m.Entry]:
    return [(text(e["name"]) or "", text(e["value"])) for e in value or []]


def src_ip(value: dict) -> bytes:
    raw = bytes.fromhex(value["hex"])
    assert len(raw) == value["len"]
    assert str(ipaddress.ip_address(raw)) == value["ip"]
    return raw


def expected(decoded: dict) -> Any:
    """The message case.json describes, as messages.py represents it."""
    msg = decoded["msg"]
    if msg == "Err.Resp":
        return m._ENUMS["A6.Err.Code"].index(decoded["code"])
    if msg == "PrepareConf.Req":
        conf = [(name, value or "") for name, value in entries(decoded["conf"])]
        return m.PrepareConfReq(conf=conf, key=text(decoded["key"]) or "")
    if msg == "PrepareConf.Resp":
        return decoded["conf_token"]
    if msg == "HTTPReqCall.Req":
        return m.HTTPReqCallReq(
            id=decoded["id"],
            src_ip=src_ip(decoded["src_ip"]),
            method=decoded["method"],
            path=text(decoded["path"]) or "",
            args=entries(decoded["args"]),
            headers=entries(decoded["headers"]),
            conf_token=decoded["conf_token"],
        )
    if msg == "HTTPReqCall.Resp":
        action, kind = decoded["action"], decoded["action_type"]
        if kind == "Stop":
            return m.HTTPReqCallResp(
                decoded["id"],
                m.Stop(
                    status=action["status"],
                    headers=entries(action["headers"]),
                    body=blob(action["body"]) or b"",
                ),
            )
        if kind == "Rewrite":
            return m.HTTPReqCallResp(
                decoded["id"],
                m.Rewrite(
                    path=text(action["path"]),
                    headers=entries(action["headers"]),
                    args=entries(action["args"]),
                    resp_headers=entries(action["resp_headers"]),
                    body=blob(action["body"]) or b"",
                ),
            )
        assert kind == "NONE" and action is None
        return m.HTTPReqCallResp(decoded["id"], None)
    if msg == "ExtraInfo.Req":
        info_type = m._ENUMS["A6.ExtraInfo.Info"].index(decoded["info_type"])
        name = text(decoded["info"]["name"]) if info_type == m.INFO_VAR else None
        return m.ExtraInfoReq(info_type, name)
    if msg == "ExtraInfo.Resp":
        return m.ExtraInfoResp(blob(decoded["result"]))
    if msg == "HTTPRespCall.Req":
        return m.HTTPRespCallReq(
            id=decoded["id"],
            status=decoded["status"],
            headers=entries(decoded["headers"]),
            conf_token=decoded["conf_token"],
        )
    if msg == "HTTPRespCall.Resp":
        return m.HTTPRespCallResp(
            id=decoded["id"],
            status=decoded["status"],
            headers=entries(decoded["headers"]),
            body=blob(decoded["body"]) or b"",
        )
    raise AssertionError(f"unknown message {msg}")


def _frames() -> list[tuple[Path, dict]]:
    out = []
    for case in CASES:
        for frame in json.loads((case / "case.json").read_text())["frames"]:
            out.append((case, frame))
    return out


FRAMES = _frames()
FRAME_IDS = [f"{case.name}/{frame['file']}" for case, frame in FRAMES]


def test_frames_were_found():
    assert len(CASES) >= 17
    assert len(FRAMES) >= 200


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_bin_file_of_a_case_is_described_in_its_case_json(case):
    described = {f["file"] for f in json.loads((case / "case.json").read_text())["frames"]}
    assert {p.name for p in case.glob("[0-9][0-9]-*.bin")} == described


@pytest.mark.parametrize(("case", "frame"), FRAMES, ids=FRAME_IDS)
def test_captured_frame_decodes_to_what_case_json_records(case, frame):
    raw = (case / frame["file"]).read_bytes()
    assert raw[0] == frame["rpc_type"]
    assert int.from_bytes(raw[1:4], "big") == frame["payload_len"] == len(raw) - 4
    msg_name, decode, _ = CODECS[(frame["rpc_type"], frame["direction"])]
    assert frame["decoded"]["msg"] == msg_name
    assert decode(raw[4:]) == expected(frame["decoded"])


@pytest.mark.parametrize(("case", "frame"), FRAMES, ids=FRAME_IDS)
def test_captured_frame_re_encodes_to_equal_content(case, frame):
    _, decode, encode = CODECS[(frame["rpc_type"], frame["direction"])]
    message = decode((case / frame["file"]).read_bytes()[4:])
    assert decode(encode(message)) == message


def test_apisix_sends_prepare_conf_without_conf_field_for_an_empty_ext_plugin():
    raw = (FRAMES_DIR / "prepare-empty" / "01-apisix-prepare-conf.bin").read_bytes()[4:]
    assert m.decode_prepare_conf_req(raw).conf == []


def test_apisix_leaves_out_id_0_and_get_and_we_read_them_as_defaults():
    firsts = [
        m.decode_http_req_call_req((case / frame["file"]).read_bytes()[4:])
        for case, frame in FRAMES
        if frame["rpc_type"] == 2
        and frame["direction"] == TO_RUNNER
        and "method" in frame["decoded"].get("_absent", [])
    ]
    assert firsts and all(call.method == "GET" for call in firsts)
