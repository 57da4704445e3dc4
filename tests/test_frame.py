"""Framing: 1 type byte, 3-byte big-endian length, whole frames whatever recv hands back."""

import socket
import threading

import pytest

from sidecar.protocol.frame import (
    MAX_PAYLOAD,
    FrameReader,
    FrameTooLarge,
    IncompleteFrame,
    pack_frame,
    pack_header,
    unpack_header,
    write_frame,
)


def test_header_is_type_then_big_endian_length():
    assert pack_header(2, 0x010203) == b"\x02\x01\x02\x03"
    assert unpack_header(b"\x04\xff\xff\xff") == (4, MAX_PAYLOAD)


def test_the_largest_payload_fits_and_one_more_byte_is_refused():
    assert pack_header(1, MAX_PAYLOAD)[1:] == b"\xff\xff\xff"
    with pytest.raises(FrameTooLarge):
        pack_header(1, MAX_PAYLOAD + 1)


def test_an_empty_payload_is_a_valid_frame():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(pack_frame(0, b""))
        assert FrameReader(b).read() == (0, b"")


def test_frames_split_and_joined_arbitrarily_are_read_whole():
    frames = [(1, b"abc"), (2, b""), (3, bytes(range(256)) * 300), (4, b"z")]
    wire = b"".join(pack_frame(t, p) for t, p in frames)
    a, b = socket.socketpair()
    with a, b:
        reader = FrameReader(b)

        def dribble():
            for i in range(0, len(wire), 7):
                a.sendall(wire[i:i + 7])
            a.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=dribble)
        sender.start()
        assert [reader.read() for _ in frames] == frames
        assert reader.read() is None
        sender.join()


def test_eof_inside_a_header_or_payload_is_an_incomplete_frame():
    for wire in (b"\x01\x00", b"\x01\x00\x00\x05abc"):
        a, b = socket.socketpair()
        with a, b:
            a.sendall(wire)
            a.shutdown(socket.SHUT_WR)
            with pytest.raises(IncompleteFrame):
                FrameReader(b).read()


def test_write_frame_sends_everything_for_large_payloads():
    payload = b"\xab" * (3 * 1024 * 1024)
    a, b = socket.socketpair()
    with a, b:
        t = threading.Thread(target=write_frame, args=(a, 4, payload))
        t.start()
        assert FrameReader(b).read() == (4, payload)
        t.join()
