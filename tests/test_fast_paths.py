"""The runner's fast paths read and write exactly what the plain paths do.

Lazy request decoding (a `say` call never decodes the path, address, headers or args), table
layouts kept per shape, and the one-recv-one-frame read each answer the same as the flatbuffers
library, or as the general code path they shortcut.
"""

from __future__ import annotations

import socket
import struct

import pytest

import tests.plugins_for_tests  # noqa: F401  (registers the test plugins)
from sidecar.cache import ConfCache
from sidecar.plugin import registry
from sidecar.protocol import messages as m
from sidecar.protocol.frame import FrameReader, pack_frame
from sidecar.runner import Runner
from tests.test_messages import REQ_CALL, REQ_REPLY, RESP_REPLY, SAMPLES, fb_build, fb_read

REQ_SAMPLES = [msg for _, kind, msg in SAMPLES if kind is REQ_CALL]
REPLY_SAMPLES = [(kind, msg) for _, kind, msg in SAMPLES if kind in (REQ_REPLY, RESP_REPLY)]


@pytest.mark.parametrize("reverse", [False, True], ids=["declared-order", "reverse-order"])
@pytest.mark.parametrize("msg", REQ_SAMPLES)
def test_lazy_decode_reads_what_flatbuffers_builder_writes(msg, reverse):
    buf = fb_build(REQ_CALL.table, REQ_CALL.to_wire(msg), reverse=reverse)
    lazy = m.decode_http_req_call_req(buf, lazy=True)
    assert isinstance(lazy, m.LazyHTTPReqCall)
    assert (lazy.id, lazy.conf_token, lazy.method) == (msg.id, msg.conf_token, msg.method)
    assert lazy == msg == m.decode_http_req_call_req(buf)
    assert (lazy.src_ip, lazy.path, lazy.args, lazy.headers) == (
        msg.src_ip, msg.path, msg.args, msg.headers)


def _corrupt(msg: m.HTTPReqCallReq, field: int) -> bytes:
    """The request with one vector field claiming far more elements than the payload holds."""
    buf = bytearray(m.encode_http_req_call_req(msg))
    r = m._Reader(bytes(buf))
    f = r.root(len(m._FIELDS["A6.HTTPReqCall.Req"]))
    at = r.target(f[field])
    struct.pack_into("<I", buf, at, 1 << 20)
    return bytes(buf)


def _corrupt_headers(msg: m.HTTPReqCallReq) -> bytes:
    return _corrupt(msg, m._HRQ_HEADERS)


@pytest.mark.parametrize(
    ("field", "attr"),
    [(m._HRQ_HEADERS, "headers"), (m._HRQ_ARGS, "args"), (m._HRQ_PATH, "path"),
     (m._HRQ_SRC_IP, "src_ip")],
)
def test_a_malformed_vector_fails_when_it_is_first_read(field, attr):
    msg = m.HTTPReqCallReq(id=1, src_ip=b"\x7f\0\0\1", method="GET", path="/p",
                           args=[("a", "1")], headers=[("host", "h")], conf_token=9)
    buf = _corrupt(msg, field)
    with pytest.raises(m.DecodeError):
        m.decode_http_req_call_req(buf)
    lazy = m.decode_http_req_call_req(buf, lazy=True)
    assert (lazy.id, lazy.conf_token, lazy.method) == (1, 9, "GET")
    for other in {"headers", "args", "path", "src_ip"} - {attr}:
        assert getattr(lazy, other) == getattr(msg, other)
    with pytest.raises(m.DecodeError):
        getattr(lazy, attr)


def test_lazy_decode_checks_the_scalars_at_once():
    msg = m.HTTPReqCallReq(id=1, src_ip=b"", method="POST", path="/p", args=[], headers=[],
                           conf_token=9)
    buf = bytearray(m.encode_http_req_call_req(msg))
    r = m._Reader(bytes(buf))
    method_at = r.root(len(m._FIELDS["A6.HTTPReqCall.Req"]))[m._HRQ_METHOD]
    assert method_at
    buf[method_at] = len(m.METHODS)
    with pytest.raises(m.DecodeError, match="method enum value"):
        m.decode_http_req_call_req(bytes(buf), lazy=True)
    for cut in (0, 4, 11):
        with pytest.raises(m.DecodeError):
            m.decode_http_req_call_req(bytes(buf[:cut]), lazy=True)


@pytest.fixture
def runner() -> Runner:
    import sidecar.plugins  # noqa: F401

    return Runner(registry, ConfCache(ttl=60))


def _token(runner: Runner, conf) -> int:
    frame = runner.handle(1, m.encode_prepare_conf_req(m.PrepareConfReq(conf=conf, key="")))
    return m.decode_prepare_conf_resp(frame[1])


def test_a_plugin_reading_a_malformed_header_vector_gets_bad_request(runner):
    token = _token(runner, [("test-rewrite", '{"del_headers": ["x-a"]}')])  # delete reads them
    msg = m.HTTPReqCallReq(id=1, src_ip=b"\x7f\0\0\1", method="GET", path="/p",
                           args=[], headers=[("host", "h")], conf_token=token)
    rpc_type, reply = runner.handle(2, _corrupt_headers(msg))
    assert (rpc_type, m.decode_err(reply)) == (0, m.ERR_BAD_REQUEST)


def test_a_plugin_that_only_sets_headers_answers_without_decoding_them(runner):
    token = _token(runner, [("test-rewrite", '{"set_headers": {"x-a": "1"}}')])
    msg = m.HTTPReqCallReq(id=1, src_ip=b"\x7f\0\0\1", method="GET", path="/p",
                           args=[], headers=[("host", "h")], conf_token=token)
    rpc_type, reply = runner.handle(2, _corrupt_headers(msg))
    assert rpc_type == 2
    assert m.decode_http_req_call_resp(reply).action == m.Rewrite(headers=[("x-a", "1")])


def test_a_plugin_that_never_reads_the_headers_answers_without_decoding_them(runner):
    token = _token(runner, [("say", '{"body": "hi"}')])
    msg = m.HTTPReqCallReq(id=1, src_ip=b"\x7f\0\0\1", method="GET", path="/p",
                           args=[], headers=[("host", "h")], conf_token=token)
    rpc_type, reply = runner.handle(2, _corrupt_headers(msg))
    assert rpc_type == 2 and m.decode_http_req_call_resp(reply).action.body == b"hi"


@pytest.mark.parametrize(("kind", "msg"), REPLY_SAMPLES)
def test_replies_encoded_twice_with_kept_layouts_read_the_same_in_flatbuffers(kind, msg):
    first, second = kind.encode(msg), kind.encode(msg)  # the second uses the kept layout
    assert first == second
    assert fb_read(second, kind.table) == kind.to_wire(msg)


STOP_SAMPLES = [
    msg.action
    for kind, msg in REPLY_SAMPLES
    if kind is REQ_REPLY and isinstance(msg.action, m.Stop)
]


@pytest.mark.parametrize("call_id", [1, 7, 0x01020304, 0xFFFFFFFF])
@pytest.mark.parametrize("stop", STOP_SAMPLES)
def test_a_kept_stop_reply_with_its_id_spliced_in_is_the_full_encoding(stop, call_id):
    msg = m.HTTPReqCallResp(id=call_id, action=stop)
    first, second = m.encode_http_req_call_resp(msg), m.encode_http_req_call_resp(msg)
    assert first == second == m._encode_req_call_resp(msg)  # the second is the kept one
    assert fb_read(second, REQ_REPLY.table) == REQ_REPLY.to_wire(msg)


@pytest.mark.parametrize("split", [None, 3, 6], ids=["one-recv", "header-split", "body-split"])
def test_a_frame_read_in_one_recv_or_in_pieces_is_the_same(split):
    payload = b"a payload of some length"
    frame = pack_frame(2, payload)
    a, b = socket.socketpair()
    with a, b:
        reader = FrameReader(b)
        if split is None:
            a.sendall(frame)  # exactly one frame per recv: the fast path
        else:
            a.sendall(frame[:split])
        if split is not None:
            a.sendall(frame[split:])
        assert reader.read() == (2, payload)
        # several frames and the start of another in one segment: the buffered path
        a.sendall(pack_frame(4, b"next") + pack_frame(1, b"") + pack_frame(2, b"x")[:2])
        assert reader.read() == (4, b"next")
        assert reader.read() == (1, b"")
        a.sendall(pack_frame(2, b"x")[2:])
        assert reader.read() == (2, b"x")
        assert reader.pending == 0
        a.close()
        assert reader.read() is None
