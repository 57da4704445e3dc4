"""Exact frames on the wire: 1 type byte, a 3-byte big-endian payload length, then the payload."""

from __future__ import annotations

import socket
import struct

RPC_ERROR = 0
RPC_PREPARE_CONF = 1
RPC_HTTP_REQ_CALL = 2
RPC_EXTRA_INFO = 3
RPC_HTTP_RESP_CALL = 4

RPC_NAMES = {
    RPC_ERROR: "RPC_ERROR",
    RPC_PREPARE_CONF: "RPC_PREPARE_CONF",
    RPC_HTTP_REQ_CALL: "RPC_HTTP_REQ_CALL",
    RPC_EXTRA_INFO: "RPC_EXTRA_INFO",
    RPC_HTTP_RESP_CALL: "RPC_HTTP_RESP_CALL",
}

HEADER_SIZE = 4
PACK_HEADER_WORD = struct.Struct(">I").pack  # (type << 24 | length): the header, unchecked
MAX_PAYLOAD = (1 << 24) - 1
_RECV_CHUNK = 65536


class FrameError(Exception):
    """A frame could not be read or written whole."""


class FrameTooLarge(FrameError):
    """A payload does not fit the 24-bit length field (APISIX caps frames at 16 MiB - 1)."""


class IncompleteFrame(FrameError):
    """The peer closed the connection in the middle of a frame."""


def pack_header(rpc_type: int, length: int) -> bytes:
    """Encode the 4-byte header; refuse lengths the 24-bit field cannot hold."""
    if not 0 <= length <= MAX_PAYLOAD:
        raise FrameTooLarge(f"payload of {length} bytes exceeds the {MAX_PAYLOAD}-byte frame limit")
    if not 0 <= rpc_type <= 255:
        raise FrameError(f"RPC type {rpc_type} does not fit one byte")
    return PACK_HEADER_WORD(rpc_type << 24 | length)


def pack_frame(rpc_type: int, payload: bytes) -> bytes:
    """One whole frame, ready for sendall."""
    return pack_header(rpc_type, len(payload)) + payload


def unpack_header(header: bytes) -> tuple[int, int]:
    """Split a 4-byte header into (type, payload length)."""
    return header[0], (header[1] << 16) | (header[2] << 8) | header[3]


def whole_frame(chunk: bytes) -> tuple[int, bytes] | None:
    """(type, payload) when `chunk` is exactly one frame: the usual recv, read with no buffer."""
    size = len(chunk)
    if size >= HEADER_SIZE and size == HEADER_SIZE + (
        (chunk[1] << 16) | (chunk[2] << 8) | chunk[3]
    ):
        return chunk[0], chunk[HEADER_SIZE:]
    return None


def take_frame(buf: bytearray) -> tuple[int, bytes] | None:
    """Remove the first frame from `buf` and return (type, payload), if buf holds all of it."""
    if len(buf) < HEADER_SIZE:
        return None
    end = HEADER_SIZE + ((buf[1] << 16) | (buf[2] << 8) | buf[3])
    if len(buf) < end:
        return None
    rpc_type = buf[0]
    payload = bytes(buf[HEADER_SIZE:end])
    del buf[:end]
    return rpc_type, payload


class FrameReader:
    """Reads whole frames from a stream socket, whatever sizes recv hands back.

    It buffers what arrives beyond the current frame, so a peer that writes a header in pieces,
    dribbles a payload, or sends two frames in one segment is read the same way.
    """

    __slots__ = ("_sock", "_buf")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def _fill(self, need: int) -> bool:
        """Receive until the buffer holds `need` bytes; False on EOF before that."""
        buf = self._buf
        while len(buf) < need:
            chunk = self._sock.recv(max(_RECV_CHUNK, need - len(buf)))
            if not chunk:
                return False
            buf += chunk
        return True

    def read(self) -> tuple[int, bytes] | None:
        """Return (type, payload) of the next frame, None on EOF between frames.

        Raises IncompleteFrame when the peer closes mid-frame.
        """
        buf = self._buf
        if not buf:
            chunk = self._sock.recv(_RECV_CHUNK)
            if not chunk:
                return None
            frame = whole_frame(chunk)
            if frame is not None:
                return frame
            buf += chunk
        if not self._fill(HEADER_SIZE):
            if buf:
                raise IncompleteFrame(f"connection closed after {len(buf)} of 4 header bytes")
            return None
        length = (buf[1] << 16) | (buf[2] << 8) | buf[3]
        if not self._fill(HEADER_SIZE + length):
            got = len(buf) - HEADER_SIZE
            raise IncompleteFrame(f"connection closed after {got} of {length} payload bytes")
        return take_frame(buf)

    @property
    def pending(self) -> int:
        """Bytes received beyond the frames already returned."""
        return len(self._buf)


def write_frame(sock: socket.socket, rpc_type: int, payload: bytes) -> None:
    """Send one whole frame (sendall loops over partial writes)."""
    sock.sendall(pack_frame(rpc_type, payload))
