"""sidecar.protocol.messages: round trips, defaults, malformed input, and agreement with the
flatbuffers library (its Builder writes buffers we decode, its Table reads buffers we encode), all
driven by the field layout parsed from ext-plugin.fbs."""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flatbuffers
import pytest
from flatbuffers import number_types as N
from flatbuffers.table import Table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.protocol import messages as m
from sidecar.protocol.messages import (
    DecodeError,
    ExtraInfoReq,
    ExtraInfoResp,
    HTTPReqCallReq,
    HTTPReqCallResp,
    HTTPRespCallReq,
    HTTPRespCallResp,
    PrepareConfReq,
    Rewrite,
    Stop,
)

FBS = Path(m.__file__).with_name("ext-plugin.fbs")
SE = "surrogateescape"


# ------------------------------------------------------------------------------- the .fbs schema


@dataclass
class Schema:
    tables: dict[str, list[tuple[str, str]]]  # (field, type); a union: "<name>_type", "<name>"
    enums: dict[str, list[str]]
    unions: dict[str, list[str]]  # "NONE" first, then member table names (qualified)


def _resolve(namespace: str, name: str, known: set[str]) -> str:
    parts = namespace.split(".")
    for i in range(len(parts), -1, -1):
        candidate = ".".join([*parts[:i], name])
        if candidate in known:
            return candidate
    raise KeyError(f"{name} is not declared (seen from {namespace})")


def parse_fbs(text: str) -> Schema:
    """A small parser for what ext-plugin.fbs uses: namespaces, tables, ubyte enums, unions."""
    text = re.sub(r"//[^\n]*", "", text)
    declaration = r"(namespace|table|enum|union)\s+([\w.]+)\s*(?::\s*\w+)?\s*(;|\{[^}]*\})"
    decls = re.findall(declaration, text)
    raw_tables: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    enums: dict[str, list[str]] = {}
    raw_unions: dict[str, tuple[str, list[str]]] = {}
    namespace = ""
    for kind, name, body in decls:
        if kind == "namespace":
            namespace = name
            continue
        qualified = f"{namespace}.{name}"
        if kind == "table":
            raw_tables[qualified] = (namespace, re.findall(r"(\w+)\s*:\s*([\w.\[\]]+)\s*;", body))
        else:
            members = [x.strip() for x in body.strip("{}").split(",") if x.strip()]
            assert not any("=" in x for x in members), "explicit enum values are not supported"
            if kind == "enum":
                enums[qualified] = members
            else:
                raw_unions[qualified] = (namespace, members)
    known = set(raw_tables) | set(enums) | set(raw_unions)
    unions = {
        name: ["NONE", *[_resolve(ns, member, known) for member in members]]
        for name, (ns, members) in raw_unions.items()
    }
    tables: dict[str, list[tuple[str, str]]] = {}
    for name, (ns, fields) in raw_tables.items():
        out: list[tuple[str, str]] = []
        for fname, ftype in fields:
            vector = ftype.startswith("[")
            base = ftype.strip("[]")
            if base not in ("string", "ubyte", "uint16", "uint32"):
                base = _resolve(ns, base, known)
            if base in unions:
                out += [(f"{fname}_type", "ubyte"), (fname, f"union {base}")]
            else:
                out.append((fname, f"[{base}]" if vector else base))
        tables[name] = out
    return Schema(tables, enums, unions)


SCHEMA = parse_fbs(FBS.read_text())


def slot(table: str, name: str) -> int:
    """The vtable slot of a field, straight from the .fbs."""
    return 4 + 2 * [f for f, _ in SCHEMA.tables[table]].index(name)


def test_fbs_declares_every_table_with_the_field_ids_messages_uses():
    assert {t: tuple(f for f, _ in fields) for t, fields in SCHEMA.tables.items()} == m._FIELDS


def test_fbs_field_ids_match_protocol_md_section_3():
    assert [f for f, _ in SCHEMA.tables["A6.HTTPReqCall.Req"]] == [
        "id",
        "src_ip",
        "method",
        "path",
        "args",
        "headers",
        "conf_token",
    ]
    assert slot("A6.HTTPReqCall.Resp", "action_type") == 6
    assert slot("A6.HTTPReqCall.Resp", "action") == 8
    assert slot("A6.HTTPReqCall.Rewrite", "body") == 12
    assert slot("A6.ExtraInfo.Req", "info") == 6


def test_fbs_enums_and_unions_match_the_module_constants():
    declared = {name: tuple(members) for name, members in SCHEMA.enums.items()}
    declared |= {
        name: tuple(member.rsplit(".", 1)[-1] for member in members)
        for name, members in SCHEMA.unions.items()
    }
    assert declared == m._ENUMS
    assert m.METHODS == tuple(SCHEMA.enums["A6.Method"])
    codes = SCHEMA.enums["A6.Err.Code"]
    assert codes.index("BAD_REQUEST") == m.ERR_BAD_REQUEST == 0
    assert codes.index("SERVICE_UNAVAILABLE") == m.ERR_SERVICE_UNAVAILABLE == 1
    assert codes.index("CONF_TOKEN_NOT_FOUND") == m.ERR_CONF_TOKEN_NOT_FOUND == 2
    info = SCHEMA.unions["A6.ExtraInfo.Info"]
    assert info.index("A6.ExtraInfo.Var") == m.INFO_VAR == 1
    assert info.index("A6.ExtraInfo.ReqBody") == m.INFO_REQ_BODY == 2
    assert info.index("A6.ExtraInfo.RespBody") == m.INFO_RESP_BODY == 3
    action = SCHEMA.unions["A6.HTTPReqCall.Action"]
    assert action.index("NONE") == m._ACTION_NONE
    assert action.index("A6.HTTPReqCall.Stop") == m._ACTION_STOP
    assert action.index("A6.HTTPReqCall.Rewrite") == m._ACTION_REWRITE


def test_text_entry_reader_fast_path_assumes_name_then_value():
    assert (m._TE_NAME, m._TE_VALUE) == (0, 1)


# ------------------------------------------------- the flatbuffers library, driven by the schema

_SCALARS = {"ubyte": N.Uint8Flags, "uint16": N.Uint16Flags, "uint32": N.Uint32Flags}


def _scalar_flags(ftype: str) -> Any:
    return _SCALARS.get(ftype) or (N.Uint8Flags if ftype in SCHEMA.enums else None)


def fb_read(buf: bytes, table: str) -> dict:
    """Read a whole buffer with flatbuffers.table.Table into {field: value}, absent fields left out.

    Strings come back as raw bytes. Also asserts what a FlatBuffers verifier would: alignment of
    every table, vtable, vector and scalar, and NUL-terminated strings.
    """
    buf = bytes(buf)
    assert len(buf) % 4 == 0, "buffer size is not a multiple of 4"
    return _read_table(buf, struct.unpack_from("<I", buf, 0)[0], table)


def _read_table(buf: bytes, pos: int, table: str) -> dict:
    assert pos % 4 == 0, f"{table} at {pos} is not 4-aligned"
    tab = Table(buf, pos)
    assert (pos - struct.unpack_from("<i", buf, pos)[0]) % 2 == 0, "vtable is not 2-aligned"
    out: dict = {}
    for i, (name, ftype) in enumerate(SCHEMA.tables[table]):
        off = tab.Offset(4 + 2 * i)
        if not off:
            continue
        flags = _scalar_flags(ftype)
        if flags is not None:
            assert (pos + off) % flags.bytewidth == 0, f"{table}.{name} is misaligned"
            out[name] = tab.Get(flags, pos + off)
        elif ftype.startswith("union "):
            member = SCHEMA.unions[ftype[6:]][out[f"{name}_type"]]
            out[name] = _read_table(buf, tab.Indirect(pos + off), member)
        else:
            start, length = tab.Vector(off), tab.VectorLen(off)
            assert (start - 4) % 4 == 0, f"{table}.{name} vector is not 4-aligned"
            if ftype == "string":
                out[name] = tab.String(pos + off)
                assert buf[start + length] == 0, f"{table}.{name} is not NUL-terminated"
            elif ftype == "[ubyte]":
                out[name] = buf[start : start + length]
            else:
                out[name] = [
                    _read_table(buf, tab.Indirect(start + 4 * j), ftype.strip("[]"))
                    for j in range(length)
                ]
    return out


def fb_build(
    table: str, fields: dict, *, reverse: bool = False, force_defaults: bool = False
) -> bytes:
    """Build a buffer with flatbuffers.Builder from {field: value}, the layout from the .fbs.

    reverse=True adds fields last to first, as APISIX's Lua builder does.
    """
    builder = flatbuffers.Builder(256)
    builder.ForceDefaults(force_defaults)
    builder.Finish(_build_table(builder, table, fields, reverse))
    return bytes(builder.Output())


def _build_table(b: flatbuffers.Builder, table: str, fields: dict, reverse: bool) -> int:
    declared = list(enumerate(SCHEMA.tables[table]))
    if reverse:
        declared.reverse()
    refs = {}
    for _, (name, ftype) in declared:
        if name not in fields or _scalar_flags(ftype) is not None:
            continue
        value = fields[name]
        if ftype == "string":
            refs[name] = b.CreateString(value)
        elif ftype == "[ubyte]":
            refs[name] = b.CreateByteVector(value)
        elif ftype.startswith("union "):
            member = SCHEMA.unions[ftype[6:]][fields[f"{name}_type"]]
            refs[name] = _build_table(b, member, value, reverse)
        else:
            items = [_build_table(b, ftype.strip("[]"), item, reverse) for item in value]
            b.StartVector(4, len(items), 4)
            for item in reversed(items):
                b.PrependUOffsetTRelative(item)
            refs[name] = b.EndVector()
    b.StartObject(len(declared))
    for i, (name, ftype) in declared:
        if name in refs:
            b.PrependUOffsetTRelativeSlot(i, refs[name], 0)
        elif name in fields:
            b.PrependSlot(_scalar_flags(ftype), i, fields[name], 0)
    return b.EndObject()


# ---------------------------------------------------- messages, and what they look like on the wire


def wire_entries(entries: list) -> list[dict]:
    return [
        {"name": name.encode("utf-8", SE)}
        | ({} if value is None else {"value": value.encode("utf-8", SE)})
        for name, value in entries
    ]


def _nonzero(**fields: Any) -> dict:
    return {name: value for name, value in fields.items() if value}


def wire(msg: Any) -> dict:
    """The fields our encoder writes for msg: defaults and empty optional fields left out."""
    if isinstance(msg, PrepareConfReq):
        return {"key": msg.key.encode()} | _nonzero(conf=wire_entries(msg.conf))
    if isinstance(msg, HTTPReqCallReq):
        method = m.METHODS.index(msg.method)
        return _nonzero(id=msg.id, method=method, conf_token=msg.conf_token) | {
            "src_ip": msg.src_ip,
            "path": msg.path.encode("utf-8", SE),
            "args": wire_entries(msg.args),
            "headers": wire_entries(msg.headers),
        }
    if isinstance(msg, Stop):
        return _nonzero(status=msg.status, headers=wire_entries(msg.headers), body=msg.body)
    if isinstance(msg, Rewrite):
        path = {} if msg.path is None else {"path": msg.path.encode("utf-8", SE)}
        return path | _nonzero(
            headers=wire_entries(msg.headers),
            args=wire_entries(msg.args),
            resp_headers=wire_entries(msg.resp_headers),
            body=msg.body,
        )
    if isinstance(msg, HTTPReqCallResp):
        action = {}
        if msg.action is not None:
            kind = 1 if isinstance(msg.action, Stop) else 2
            action = {"action_type": kind, "action": wire(msg.action)}
        return _nonzero(id=msg.id) | action
    if isinstance(msg, HTTPRespCallReq):
        return _nonzero(id=msg.id, status=msg.status, conf_token=msg.conf_token) | {
            "headers": wire_entries(msg.headers)
        }
    if isinstance(msg, HTTPRespCallResp):
        return _nonzero(
            id=msg.id, status=msg.status, headers=wire_entries(msg.headers), body=msg.body
        )
    if isinstance(msg, ExtraInfoReq):
        info = {"name": msg.name.encode("utf-8", SE)} if msg.info_type == m.INFO_VAR else {}
        return {"info_type": msg.info_type, "info": info}
    if isinstance(msg, ExtraInfoResp):
        return {} if msg.result is None else {"result": msg.result}
    raise TypeError(msg)


@dataclass(frozen=True)
class Kind:
    table: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    to_wire: Callable[[Any], dict] = wire


PREPARE_REQ = Kind("A6.PrepareConf.Req", m.encode_prepare_conf_req, m.decode_prepare_conf_req)
PREPARE_RESP = Kind(
    "A6.PrepareConf.Resp",
    m.encode_prepare_conf_resp,
    m.decode_prepare_conf_resp,
    lambda token: _nonzero(conf_token=token),
)
REQ_CALL = Kind("A6.HTTPReqCall.Req", m.encode_http_req_call_req, m.decode_http_req_call_req)
REQ_REPLY = Kind("A6.HTTPReqCall.Resp", m.encode_http_req_call_resp, m.decode_http_req_call_resp)
RESP_CALL = Kind("A6.HTTPRespCall.Req", m.encode_http_resp_call_req, m.decode_http_resp_call_req)
RESP_REPLY = Kind(
    "A6.HTTPRespCall.Resp", m.encode_http_resp_call_resp, m.decode_http_resp_call_resp
)
INFO_REQ = Kind("A6.ExtraInfo.Req", m.encode_extra_info_req, m.decode_extra_info_req)
INFO_RESP = Kind("A6.ExtraInfo.Resp", m.encode_extra_info_resp, m.decode_extra_info_resp)
ERR = Kind("A6.Err.Resp", m.encode_err, m.decode_err, lambda code: _nonzero(code=code))

DECODERS = [
    k.decode
    for k in (
        PREPARE_REQ,
        PREPARE_RESP,
        REQ_CALL,
        REQ_REPLY,
        RESP_CALL,
        RESP_REPLY,
        INFO_REQ,
        INFO_RESP,
        ERR,
    )
]

HEADERS = [("host", "example.test"), ("x-same", "one"), ("x-same", "two"), ("accept", "*/*")]
RAW = "caf\udce9 \udcff"  # the bytes b"caf\xe9 \xff": Latin-1 from a client, not UTF-8

SAMPLES: list[tuple[str, Kind, Any]] = [
    (
        "prepare-two-plugins",
        PREPARE_REQ,
        PrepareConfReq(
            conf=[("say", '{"body":"hi"}'), ("response-rewrite", "{}")],
            key="route#1#ext-plugin-pre-req#1795850264",
        ),
    ),
    ("prepare-no-conf", PREPARE_REQ, PrepareConfReq(conf=[], key="route#3#ext-plugin-pre-req#1")),
    ("prepare-empty-value", PREPARE_REQ, PrepareConfReq(conf=[("say", "")], key="")),
    ("token", PREPARE_RESP, 233),
    ("token-zero", PREPARE_RESP, 0),
    ("token-max", PREPARE_RESP, 2**32 - 1),
    (
        "call-ipv4-get",
        REQ_CALL,
        HTTPReqCallReq(
            id=0,
            src_ip=b"\x7f\x00\x00\x01",
            method="GET",
            path="/anything/a b",
            args=[("x", "1"), ("x", "2"), ("flag", None), ("empty", "")],
            headers=HEADERS,
            conf_token=233,
        ),
    ),
    (
        "call-ipv6-put",
        REQ_CALL,
        HTTPReqCallReq(
            id=4194305,
            src_ip=b"\x00" * 15 + b"\x01",
            method="PUT",
            path="/v6/é✓",
            args=[],
            headers=[("x-raw", RAW)],
            conf_token=2**32 - 1,
        ),
    ),
    (
        "call-trace-defaults",
        REQ_CALL,
        HTTPReqCallReq(
            id=0, src_ip=b"", method="TRACE", path="", args=[], headers=[], conf_token=0
        ),
    ),
    ("reply-none", REQ_REPLY, HTTPReqCallResp(id=7)),
    ("reply-none-id-0", REQ_REPLY, HTTPReqCallResp(id=0)),
    (
        "reply-stop",
        REQ_REPLY,
        HTTPReqCallResp(
            id=9,
            action=Stop(
                status=405,
                headers=[("X-Same", "one"), ("X-Same", "two"), ("Content-Type", "text/x")],
                body=b"cat\x00\xff",
            ),
        ),
    ),
    ("reply-stop-empty", REQ_REPLY, HTTPReqCallResp(id=9, action=Stop())),
    (
        "reply-rewrite-all",
        REQ_REPLY,
        HTTPReqCallResp(
            id=2**32 - 1,
            action=Rewrite(
                path="/anything/new path?q",
                headers=[("X-Added", "1"), ("X-Del", None), ("Host", "h")],
                args=[("x", "9"), ("x", "10"), ("y", None), ("z", "")],
                resp_headers=[("X-Resp", "a"), ("X-Resp", "b")],
                body=b"new request body",
            ),
        ),
    ),
    ("reply-rewrite-path-only", REQ_REPLY, HTTPReqCallResp(id=1, action=Rewrite(path="/p"))),
    ("reply-rewrite-empty-path", REQ_REPLY, HTTPReqCallResp(id=1, action=Rewrite(path=""))),
    (
        "reply-rewrite-args-only",
        REQ_REPLY,
        HTTPReqCallResp(id=1, action=Rewrite(args=[("added", "1")])),
    ),
    ("reply-rewrite-nothing", REQ_REPLY, HTTPReqCallResp(id=1, action=Rewrite())),
    (
        "reply-rewrite-raw-header",
        REQ_REPLY,
        HTTPReqCallResp(id=1, action=Rewrite(headers=[("x-raw", RAW)])),
    ),
    (
        "resp-call",
        RESP_CALL,
        HTTPRespCallReq(
            id=21,
            status=200,
            headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Type", "text/plain")],
            conf_token=8,
        ),
    ),
    ("resp-call-defaults", RESP_CALL, HTTPRespCallReq(id=0, status=0, headers=[], conf_token=0)),
    ("resp-reply-keep", RESP_REPLY, HTTPRespCallResp(id=41)),
    ("resp-reply-status", RESP_REPLY, HTTPRespCallResp(id=42, status=201)),
    (
        "resp-reply-all",
        RESP_REPLY,
        HTTPRespCallResp(
            id=43, status=304, headers=[("X-Only", "1"), ("X-Del", None)], body=b"rewritten\n"
        ),
    ),
    ("info-var", INFO_REQ, ExtraInfoReq(m.INFO_VAR, "remote_addr")),
    ("info-var-empty-name", INFO_REQ, ExtraInfoReq(m.INFO_VAR, "")),
    ("info-req-body", INFO_REQ, ExtraInfoReq(m.INFO_REQ_BODY)),
    ("info-resp-body", INFO_REQ, ExtraInfoReq(m.INFO_RESP_BODY)),
    ("info-result", INFO_RESP, ExtraInfoResp(b"127.0.0.1")),
    ("info-result-empty", INFO_RESP, ExtraInfoResp(b"")),
    ("info-result-absent", INFO_RESP, ExtraInfoResp(None)),
    ("info-result-binary", INFO_RESP, ExtraInfoResp(bytes(range(256)) * 3)),
    ("err-bad-request", ERR, m.ERR_BAD_REQUEST),
    ("err-service-unavailable", ERR, m.ERR_SERVICE_UNAVAILABLE),
    ("err-token-not-found", ERR, m.ERR_CONF_TOKEN_NOT_FOUND),
]
SAMPLE_IDS = [name for name, _, _ in SAMPLES]
CORPUS = [kind.encode(msg) for _, kind, msg in SAMPLES]


@pytest.mark.parametrize(("kind", "msg"), [s[1:] for s in SAMPLES], ids=SAMPLE_IDS)
def test_every_message_round_trips_through_its_encoder_and_decoder(kind, msg):
    assert kind.decode(kind.encode(msg)) == msg


@pytest.mark.parametrize(("kind", "msg"), [s[1:] for s in SAMPLES], ids=SAMPLE_IDS)
def test_flatbuffers_table_reads_exactly_the_fields_we_encode(kind, msg):
    assert fb_read(kind.encode(msg), kind.table) == kind.to_wire(msg)


@pytest.mark.parametrize("reverse", [False, True], ids=["declared-order", "reverse-order"])
@pytest.mark.parametrize(("kind", "msg"), [s[1:] for s in SAMPLES], ids=SAMPLE_IDS)
def test_we_decode_what_flatbuffers_builder_writes_in_any_field_order(kind, msg, reverse):
    assert kind.decode(fb_build(kind.table, kind.to_wire(msg), reverse=reverse)) == msg


def test_we_decode_default_values_written_explicitly():
    fields = {
        "id": 0,
        "src_ip": b"\x7f\0\0\1",
        "method": 0,
        "path": b"/",
        "args": [],
        "headers": [],
        "conf_token": 0,
    }
    buf = fb_build("A6.HTTPReqCall.Req", fields, force_defaults=True)
    assert fb_read(buf, "A6.HTTPReqCall.Req") == fields
    assert m.decode_http_req_call_req(buf) == HTTPReqCallReq(
        id=0, src_ip=b"\x7f\0\0\1", method="GET", path="/", args=[], headers=[], conf_token=0
    )
    reply = {"id": 0, "status": 0, "headers": [], "body": b""}
    buf = fb_build("A6.HTTPRespCall.Resp", reply, force_defaults=True)
    assert m.decode_http_resp_call_resp(buf) == HTTPRespCallResp(id=0)


# ------------------------------------------------------------------------------ absent = default


EMPTY_TABLE_DEFAULTS = [
    (PREPARE_REQ, PrepareConfReq(conf=[], key="")),
    (PREPARE_RESP, 0),
    (REQ_CALL, HTTPReqCallReq(0, b"", "GET", "", [], [], 0)),
    (REQ_REPLY, HTTPReqCallResp(id=0, action=None)),
    (RESP_CALL, HTTPRespCallReq(0, 0, [], 0)),
    (RESP_REPLY, HTTPRespCallResp(id=0, status=0, headers=[], body=b"")),
    (INFO_RESP, ExtraInfoResp(None)),
    (ERR, m.ERR_BAD_REQUEST),
]


@pytest.mark.parametrize(
    ("kind", "expected"), EMPTY_TABLE_DEFAULTS, ids=[k.table for k, _ in EMPTY_TABLE_DEFAULTS]
)
def test_a_table_without_fields_decodes_to_all_defaults(kind, expected):
    assert kind.decode(fb_build(kind.table, {})) == expected


def test_a_vtable_with_zero_slots_and_one_shorter_than_the_field_ids_read_as_absent():
    # root offset 24; the vtable at 4 declares all 7 slots, each zero; the table at 24 is empty
    zero_slots = struct.pack("<I9H2xi", 24, 18, 4, 0, 0, 0, 0, 0, 0, 0, 24 - 4)
    assert m.decode_http_req_call_req(zero_slots) == HTTPReqCallReq(0, b"", "GET", "", [], [], 0)
    only_id = fb_build("A6.HTTPReqCall.Req", {"id": 5})  # the Builder trims trailing zero slots
    assert struct.unpack_from("<H", only_id, 4)[0] < slot("A6.HTTPReqCall.Req", "conf_token")
    assert m.decode_http_req_call_req(only_id).id == 5
    assert m.decode_http_req_call_req(only_id).conf_token == 0


def test_fields_beyond_the_schema_are_ignored():
    # HTTPReqCall.Req of proto < 0.6 had an 8th field, extra_info:[DataEntry]
    b = flatbuffers.Builder(64)
    name = b.CreateString("x")
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    entry = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(entry)
    extra = b.EndVector()
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(7, extra, 0)
    b.PrependUint32Slot(6, 99, 0)
    b.Finish(b.EndObject())
    assert m.decode_http_req_call_req(bytes(b.Output())).conf_token == 99


def test_prepare_conf_without_conf_field_has_an_empty_conf_list():
    buf = fb_build("A6.PrepareConf.Req", {"key": b"route#3#ext-plugin-pre-req#1"})
    assert m.decode_prepare_conf_req(buf) == PrepareConfReq([], "route#3#ext-plugin-pre-req#1")
    written = fb_read(m.encode_prepare_conf_req(PrepareConfReq([], "k")), PREPARE_REQ.table)
    assert written == {"key": b"k"}


def test_text_entry_without_name_reads_as_empty_name():
    buf = fb_build("A6.HTTPRespCall.Req", {"headers": [{"value": b"v"}, {}]})
    assert m.decode_http_resp_call_req(buf).headers == [("", "v"), ("", None)]


# ---------------------------------------------------------------- deletes, flags, empty vectors


def test_an_entry_without_value_is_written_without_its_value_field():
    rewrite = Rewrite(headers=[("X-Del", None), ("X-Empty", "")], args=[("y", None)])
    msg = HTTPReqCallResp(1, rewrite)
    action = fb_read(m.encode_http_req_call_resp(msg), REQ_REPLY.table)["action"]
    assert action["headers"] == [{"name": b"X-Del"}, {"name": b"X-Empty", "value": b""}]
    assert action["args"] == [{"name": b"y"}]


def test_a_flag_argument_decodes_with_value_none_and_an_empty_one_with_empty_string():
    fields = {"args": [{"name": b"flag"}, {"name": b"empty", "value": b""}], "headers": []}
    assert m.decode_http_req_call_req(fb_build(REQ_CALL.table, fields)).args == [
        ("flag", None),
        ("empty", ""),
    ]


def test_replies_leave_out_empty_headers_bodies_and_zero_status():
    assert fb_read(m.encode_http_resp_call_resp(HTTPRespCallResp(id=0)), RESP_REPLY.table) == {}
    reply = HTTPReqCallResp(0, Stop(status=0, headers=[], body=b""))
    assert fb_read(m.encode_http_req_call_resp(reply), REQ_REPLY.table) == {
        "action_type": 1,
        "action": {},
    }
    reply = HTTPReqCallResp(0, Rewrite(path=None, headers=[], args=[], resp_headers=[], body=b""))
    assert fb_read(m.encode_http_req_call_resp(reply), REQ_REPLY.table)["action"] == {}


def test_no_action_is_action_type_none_without_action_field():
    assert fb_read(m.encode_http_req_call_resp(HTTPReqCallResp(id=3)), REQ_REPLY.table) == {"id": 3}


def test_apisix_side_calls_always_carry_args_and_headers_even_when_empty():
    call = HTTPReqCallReq(0, b"\x7f\0\0\1", "GET", "/", [], [], 1)
    assert fb_read(m.encode_http_req_call_req(call), REQ_CALL.table) == {
        "src_ip": b"\x7f\0\0\1",
        "path": b"/",
        "args": [],
        "headers": [],
        "conf_token": 1,
    }


def test_extra_info_result_absent_and_empty_are_different():
    assert fb_read(m.encode_extra_info_resp(ExtraInfoResp(None)), INFO_RESP.table) == {}
    assert fb_read(m.encode_extra_info_resp(ExtraInfoResp(b"")), INFO_RESP.table) == {"result": b""}
    assert m.decode_extra_info_resp(m.encode_extra_info_resp(ExtraInfoResp(b""))).result == b""
    assert m.decode_extra_info_resp(m.encode_extra_info_resp(ExtraInfoResp(None))).result is None


# --------------------------------------------------------------------------------------- Err


def test_err_bad_request_is_an_empty_table_of_12_bytes():
    buf = m.encode_err(m.ERR_BAD_REQUEST)
    assert len(buf) == 12
    assert fb_read(buf, ERR.table) == {}
    assert m.decode_err(buf) == m.ERR_BAD_REQUEST


def test_err_with_an_empty_payload_is_bad_request_as_apisix_reads_it():
    assert m.decode_err(b"") == m.ERR_BAD_REQUEST


def test_err_codes_outside_the_enum_are_returned_as_they_are():
    assert m.decode_err(fb_build(ERR.table, {"code": 7})) == 7


def test_err_token_not_found_is_code_2():
    assert fb_read(m.encode_err(m.ERR_CONF_TOKEN_NOT_FOUND), ERR.table) == {"code": 2}


# ------------------------------------------------------------------------------ bytes not UTF-8


def test_header_bytes_that_are_not_utf8_survive_decode_and_encode():
    raw = b"caf\xe9 \xff\xfe"
    fields = {"headers": [{"name": b"x-raw\x80", "value": raw}], "args": []}
    call = m.decode_http_req_call_req(fb_build(REQ_CALL.table, fields))
    assert call.headers == [("x-raw\udc80", "caf\udce9 \udcff\udcfe")]
    reply = HTTPRespCallResp(id=1, headers=call.headers)
    assert fb_read(m.encode_http_resp_call_resp(reply), RESP_REPLY.table)["headers"] == [
        {"name": b"x-raw\x80", "value": raw}
    ]


def test_utf8_text_decodes_as_text():
    fields = {"path": "/caf\u00e9/\u2713".encode(), "args": [], "headers": []}
    assert m.decode_http_req_call_req(fb_build(REQ_CALL.table, fields)).path == "/caf\u00e9/\u2713"


# ------------------------------------------------------------------------ enum and union values


@pytest.mark.parametrize("method", [15, 200, 255])
def test_method_outside_the_enum_is_a_decode_error(method):
    with pytest.raises(DecodeError, match="method"):
        m.decode_http_req_call_req(fb_build(REQ_CALL.table, {"method": method}))


def test_every_method_name_maps_to_its_enum_value():
    for value, name in enumerate(m.METHODS):
        buf = fb_build(REQ_CALL.table, {"method": value})
        assert m.decode_http_req_call_req(buf).method == name
        call = HTTPReqCallReq(0, b"", name, "/", [], [], 0)
        assert fb_read(m.encode_http_req_call_req(call), REQ_CALL.table).get("method", 0) == value


def test_unknown_action_type_is_a_decode_error():
    with pytest.raises(DecodeError, match="action type 3"):
        m.decode_http_req_call_resp(fb_build(REQ_REPLY.table, {"action_type": 3}))


def test_action_type_without_action_table_is_a_decode_error():
    with pytest.raises(DecodeError, match="without an action"):
        m.decode_http_req_call_resp(fb_build(REQ_REPLY.table, {"id": 1, "action_type": 1}))


@pytest.mark.parametrize("info_type", [0, 4, 255])
def test_info_type_none_or_unknown_is_a_decode_error(info_type):
    with pytest.raises(DecodeError, match="info type"):
        m.decode_extra_info_req(fb_build(INFO_REQ.table, {"info_type": info_type}))


def test_var_question_without_its_table_is_a_decode_error_and_without_name_asks_for_empty():
    with pytest.raises(DecodeError, match="Var"):
        m.decode_extra_info_req(fb_build(INFO_REQ.table, {"info_type": m.INFO_VAR}))
    buf = fb_build(INFO_REQ.table, {"info_type": m.INFO_VAR, "info": {}})
    assert m.decode_extra_info_req(buf) == ExtraInfoReq(m.INFO_VAR, "")


def test_body_questions_do_not_need_their_empty_table():
    buf = fb_build(INFO_REQ.table, {"info_type": m.INFO_RESP_BODY})
    assert m.decode_extra_info_req(buf) == ExtraInfoReq(m.INFO_RESP_BODY, None)


# ---------------------------------------------------------------------------- encoder arguments


@pytest.mark.parametrize(
    "encode",
    [
        lambda: m.encode_prepare_conf_resp(2**32),
        lambda: m.encode_prepare_conf_resp(-1),
        lambda: m.encode_http_req_call_resp(HTTPReqCallResp(id=2**32)),
        lambda: m.encode_http_resp_call_resp(HTTPRespCallResp(id=1, status=65536)),
        lambda: m.encode_http_req_call_req(HTTPReqCallReq(0, b"", "PURGE", "/", [], [], 0)),
        lambda: m.encode_extra_info_req(ExtraInfoReq(0)),
        lambda: m.encode_extra_info_req(ExtraInfoReq(m.INFO_VAR, None)),
        lambda: m.encode_err(256),
        lambda: m.encode_http_resp_call_resp(HTTPRespCallResp(id=1, headers=[("x", "\ud800")])),
    ],
    ids=[
        "token-2**32",
        "token-negative",
        "id-2**32",
        "status-65536",
        "method-PURGE",
        "info-NONE",
        "var-without-name",
        "err-256",
        "lone-surrogate",
    ],
)
def test_encoders_reject_values_the_wire_cannot_carry_with_value_error(encode):
    with pytest.raises(ValueError):
        encode()


def test_an_action_that_is_not_stop_or_rewrite_is_a_type_error():
    with pytest.raises(TypeError):
        m.encode_http_req_call_resp(HTTPReqCallResp(1, action="stop"))  # type: ignore[arg-type]


def test_decoders_accept_bytearray_and_memoryview():
    buf = m.encode_http_resp_call_resp(HTTPRespCallResp(id=4, headers=[("a", "b")], body=b"x"))
    expected = m.decode_http_resp_call_resp(buf)
    assert m.decode_http_resp_call_resp(bytearray(buf)) == expected
    assert m.decode_http_resp_call_resp(memoryview(b"\0" + buf)[1:]) == expected


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("decode", "size"),
    [(d, size) for d in DECODERS for size in range(12) if (d, size) != (m.decode_err, 0)],
    ids=lambda v: v.__name__ if callable(v) else str(v),
)
def test_payloads_too_short_for_a_table_are_decode_errors(decode, size):
    with pytest.raises(DecodeError, match="too short"):
        decode(b"\x04" + b"\x00" * (size - 1) if size else b"")


@pytest.mark.parametrize(("kind", "msg"), [s[1:] for s in SAMPLES], ids=SAMPLE_IDS)
def test_every_truncation_of_a_message_decodes_or_raises_decode_error_only(kind, msg):
    buf = kind.encode(msg)
    decoded = []
    for size in range(len(buf)):
        try:
            kind.decode(buf[:size])
        except DecodeError:
            continue
        decoded.append(size)
    assert [size for size in decoded if size < 12] == ([0] if kind is ERR else [])


def _field_position(buf: bytes, table: str, name: str) -> int:
    root = struct.unpack_from("<I", buf, 0)[0]
    return root + Table(buf, root).Offset(slot(table, name))


def _patched(buf: bytes, pos: int, fmt: str, value: int) -> bytes:
    out = bytearray(buf)
    struct.pack_into(fmt, out, pos, value)
    return bytes(out)


RESP_CALL_BUF = m.encode_http_resp_call_req(HTTPRespCallReq(1, 200, [("a", "b"), ("c", "d")], 2))
HEADERS_AT = _field_position(RESP_CALL_BUF, RESP_CALL.table, "headers")
HEADERS_VECTOR = HEADERS_AT + struct.unpack_from("<I", RESP_CALL_BUF, HEADERS_AT)[0]
FIRST_ENTRY = HEADERS_VECTOR + 4 + struct.unpack_from("<I", RESP_CALL_BUF, HEADERS_VECTOR + 4)[0]


@pytest.mark.parametrize(
    ("pos", "fmt", "value", "error"),
    [
        (0, "<I", len(RESP_CALL_BUF), "outside"),  # root offset past the end
        (0, "<I", 2**32 - 1, "outside"),
        (FIRST_ENTRY, "<i", 2**31 - 1, "vtable"),  # soffset to a negative vtable position
        (FIRST_ENTRY, "<i", -(2**31), "vtable"),  # soffset to a vtable past the end
        (HEADERS_AT, "<I", 2**32 - 1, "outside"),  # vector offset past the end
        (HEADERS_VECTOR, "<I", 2**32 - 1, "runs past"),  # vector length past the end
        (HEADERS_VECTOR, "<I", 2**28, "runs past"),
        (HEADERS_VECTOR + 4, "<I", 2**31, "outside"),  # an entry past the end
    ],
    ids=[
        "root-past-end",
        "root-huge",
        "soffset-negative-vtable",
        "soffset-past-end",
        "vector-offset-past-end",
        "vector-length-huge",
        "vector-length-large",
        "entry-past-end",
    ],
)
def test_offsets_and_lengths_outside_the_payload_are_decode_errors(pos, fmt, value, error):
    with pytest.raises(DecodeError, match=error):
        m.decode_http_resp_call_req(_patched(RESP_CALL_BUF, pos, fmt, value))


def test_a_string_longer_than_the_payload_is_a_decode_error():
    entry = Table(RESP_CALL_BUF, FIRST_ENTRY)
    name_at = FIRST_ENTRY + entry.Offset(slot("A6.TextEntry", "name"))
    string_at = name_at + struct.unpack_from("<I", RESP_CALL_BUF, name_at)[0]
    with pytest.raises(DecodeError, match="past the payload"):
        m.decode_http_resp_call_req(_patched(RESP_CALL_BUF, string_at, "<I", 2**32 - 1))


@pytest.mark.parametrize("vtable_size", [0, 2, 5, 0xFFFF])
def test_a_malformed_vtable_size_is_a_decode_error(vtable_size):
    root = struct.unpack_from("<I", RESP_CALL_BUF, 0)[0]
    vtable = root - struct.unpack_from("<i", RESP_CALL_BUF, root)[0]
    with pytest.raises(DecodeError, match="vtable"):
        m.decode_http_resp_call_req(_patched(RESP_CALL_BUF, vtable, "<H", vtable_size))


def test_many_slots_pointing_at_one_long_string_fail_fast_instead_of_exhausting_memory():
    b = flatbuffers.Builder(1 << 20)
    name = b.CreateString("n" * 65536)
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    entry = b.EndObject()
    count = 100_000  # 6.5 GB once decoded from a 460 KB payload
    b.StartVector(4, count, 4)
    for _ in range(count):
        b.PrependUOffsetTRelative(entry)
    headers = b.EndVector()
    b.StartObject(4)
    b.PrependUOffsetTRelativeSlot(2, headers, 0)
    b.Finish(b.EndObject())
    buf = bytes(b.Output())
    started = time.perf_counter()
    with pytest.raises(DecodeError, match="exceed the payload size"):
        m.decode_http_resp_call_req(buf)
    assert time.perf_counter() - started < 1.0


def test_shared_short_strings_within_the_payload_size_still_decode():
    b = flatbuffers.Builder(256)
    name = b.CreateSharedString("set-cookie")
    entries = []
    for value in ("a=1", "b=2"):
        v = b.CreateString(value)
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(1, v, 0)
        b.PrependUOffsetTRelativeSlot(0, name, 0)
        entries.append(b.EndObject())
    b.StartVector(4, 2, 4)
    for e in reversed(entries):
        b.PrependUOffsetTRelative(e)
    headers = b.EndVector()
    b.StartObject(4)
    b.PrependUOffsetTRelativeSlot(2, headers, 0)
    b.Finish(b.EndObject())
    call = m.decode_http_resp_call_req(bytes(b.Output()))
    assert call.headers == [("set-cookie", "a=1"), ("set-cookie", "b=2")]


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_decode_error(decode: Callable[[bytes], Any], buf: bytes) -> None:
    try:
        decode(buf)
    except DecodeError:
        pass


@FUZZ
@given(decode=st.sampled_from(DECODERS), buf=st.binary(max_size=512))
def test_random_bytes_into_any_decoder_raise_only_decode_error(decode, buf):
    _decode_or_decode_error(decode, buf)


@FUZZ
@given(
    index=st.integers(0, len(CORPUS) - 1),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
    decode=st.sampled_from(DECODERS),
)
def test_mutated_messages_into_any_decoder_raise_only_decode_error(index, edits, decode):
    buf = bytearray(CORPUS[index])
    for pos, byte in edits:
        buf[pos % len(buf)] = byte
    _decode_or_decode_error(decode, bytes(buf))
