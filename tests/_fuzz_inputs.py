"""Fuzz inputs for the runner and the oracle that judges its answers; shared by the hypothesis
tests (tests/test_fuzz.py) and the long run (tests/soak/soak_fuzz.py).

An input is one frame's bytes. Complete frames are sent in batches on one connection and each must
be answered; a frame cut short ends its connection, which the runner must then close.
"""

from __future__ import annotations

import random
import socket
import struct
from pathlib import Path

from sidecar.protocol import messages as m
from sidecar.protocol.frame import (
    RPC_ERROR,
    RPC_HTTP_REQ_CALL,
    RPC_HTTP_RESP_CALL,
    RPC_PREPARE_CONF,
    FrameReader,
    pack_frame,
    unpack_header,
)

FRAMES = Path("/work/shared/apisix-frames")
CALL_TYPES = (RPC_PREPARE_CONF, RPC_HTTP_REQ_CALL, RPC_HTTP_RESP_CALL)
INTERESTING_U32 = (0, 1, 2, 3, 4, 8, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                   0xFFFFFFFC, 0x00FFFFFF)
MUTATIONS = ("flip", "byte", "u32", "u16", "insert", "delete", "truncate", "duplicate", "type")


def _generated() -> list[bytes]:
    """Valid frames of every kind APISIX sends, built with our encoder."""
    entries = [("say", '{"body":"x"}'), ("response-rewrite", '{"status":201}'), ("flag", None)]
    return [
        pack_frame(RPC_PREPARE_CONF, m.encode_prepare_conf_req(m.PrepareConfReq(
            conf=[e for e in entries if e[1]], key="route#1#ext-plugin-pre-req#1"))),
        pack_frame(RPC_PREPARE_CONF, m.encode_prepare_conf_req(m.PrepareConfReq(conf=[], key=""))),
        pack_frame(RPC_HTTP_REQ_CALL, m.encode_http_req_call_req(m.HTTPReqCallReq(
            id=7, src_ip=bytes(16), method="POST", path="/a/b", args=entries, headers=entries,
            conf_token=233))),
        pack_frame(RPC_HTTP_RESP_CALL, m.encode_http_resp_call_req(m.HTTPRespCallReq(
            id=9, status=200, headers=[("Content-Type", "text/plain")], conf_token=233))),
    ]


def corpus(max_size: int = 65536) -> list[bytes]:
    """Valid frames: those captured from APISIX 3.11 (when available) plus generated ones."""
    frames = _generated()
    if FRAMES.is_dir():
        for path in sorted(FRAMES.glob("*/*-apisix-*.bin")):
            data = path.read_bytes()
            if len(data) <= max_size:
                frames.append(data)
    return frames


def mutate(frame: bytes, op: str, pos: int, value: int, keep_length: bool) -> bytes:
    """One mutation of a frame's payload (or type); the header's length is fixed up unless
    keep_length, which leaves a lying header (frames then run short or long)."""
    rtype, payload = frame[0], bytearray(frame[4:])
    n = len(payload)
    at = pos % (n + 1)
    if op == "type":
        rtype = value & 0xFF
    elif op == "flip" and n:
        payload[at % n] ^= 1 << (value % 8)
    elif op == "byte" and n:
        payload[at % n] = value & 0xFF
    elif op == "u32" and n >= 4:
        struct.pack_into("<I", payload, at % (n - 3), INTERESTING_U32[value % len(INTERESTING_U32)])
    elif op == "u16" and n >= 2:
        struct.pack_into("<H", payload, at % (n - 1), value & 0xFFFF)
    elif op == "insert":
        payload[at:at] = bytes([value & 0xFF]) * (1 + value % 16)
    elif op == "delete":
        del payload[at:at + 1 + value % 16]
    elif op == "truncate":
        del payload[at:]
    elif op == "duplicate":
        payload[at:at] = payload[at:at + 1 + value % 64]
    length = len(frame) - 4 if keep_length else len(payload)
    header = bytes((rtype, (length >> 16) & 0xFF, (length >> 8) & 0xFF, length & 0xFF))
    return header + bytes(payload)


def random_frame(rtype: int, payload: bytes, declared: int | None = None) -> bytes:
    """A frame of any type and payload; `declared` overrides the length field."""
    length = len(payload) if declared is None else declared
    return bytes((rtype, (length >> 16) & 0xFF, (length >> 8) & 0xFF, length & 0xFF)) + payload


def split_frames(stream: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete frames at the start of a byte stream, and what is left over."""
    frames, at = [], 0
    while len(stream) - at >= 4:
        rtype, length = unpack_header(stream[at:at + 4])
        if len(stream) - at - 4 < length:
            break
        frames.append((rtype, stream[at + 4:at + 4 + length]))
        at += 4 + length
    return frames, stream[at:]


def check_reply(request_type: int, reply: tuple[int, bytes] | None) -> str:
    """Judge one reply; returns its kind ("err:<code>", "ok:<type>"), raises AssertionError."""
    assert reply is not None, f"type-{request_type} frame got no reply before the close"
    rtype, payload = reply
    if rtype == RPC_ERROR:
        code = m.decode_err(payload)
        assert code in (m.ERR_BAD_REQUEST, m.ERR_SERVICE_UNAVAILABLE, m.ERR_CONF_TOKEN_NOT_FOUND)
        if request_type not in CALL_TYPES:
            assert code == m.ERR_BAD_REQUEST, f"unknown type {request_type} answered code {code}"
        return f"err:{code}"
    assert rtype == request_type, f"type-{request_type} frame answered with type {rtype}"
    if rtype == RPC_PREPARE_CONF:
        assert m.decode_prepare_conf_resp(payload) != 0
    elif rtype == RPC_HTTP_REQ_CALL:
        m.decode_http_req_call_resp(payload)
    else:
        m.decode_http_resp_call_resp(payload)
    return f"ok:{rtype}"


def send_and_judge(path: str, stream: bytes, timeout: float = 10.0) -> list[str]:
    """Send a byte stream on a fresh connection, half-close, and judge everything that comes back:
    one good reply per complete frame, in order, then the runner closes; returns the replies'
    kinds."""
    frames, _ = split_frames(stream)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        try:
            sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the runner may close on a bad frame before reading what follows
        reader = FrameReader(sock)
        answered = []
        for rtype, _ in frames:
            answered.append(check_reply(rtype, reader.read()))
        try:
            extra = reader.read()
        except ConnectionResetError:
            extra = None
        assert extra is None, f"unsolicited frame after the last reply: {extra!r}"
    return answered


def rng_stream(rng: random.Random, frames: list[bytes], batch: int) -> bytes:
    """A batch of inputs for one connection (the long run's generator): mostly complete frames,
    random or mutated, sometimes ending with one cut short."""
    parts = []
    for _ in range(batch):
        kind = rng.random()
        if kind < 0.25:
            rtype = rng.choice((0, 1, 2, 3, 4, rng.randrange(256)))
            parts.append(random_frame(rtype, rng.randbytes(rng.randrange(0, 512))))
        else:
            frame = rng.choice(frames)
            for _ in range(rng.randrange(1, 6)):
                frame = mutate(frame, rng.choice(MUTATIONS), rng.randrange(1 << 16),
                               rng.randrange(1 << 16), keep_length=False)
            parts.append(frame)
    if rng.random() < 0.1:
        frame = rng.choice(frames)
        parts.append(frame[:rng.randrange(1, len(frame))])
    return b"".join(parts)
