"""Byte formats: framed store records, framed sync messages and Yjs state vectors.

A stored record is ``magic(2) | length(u32) | crc32(u32) | payload`` where the CRC covers the record's
sequence number and the payload, so a record copied to the wrong row is caught as well as a flipped bit.

A sync message is ``magic(4) | kind(u8) | doc id length(u8) | payload length(u32) | crc32(u32) | doc id |
payload``; a body is one or more messages back to back. The CRC covers kind, doc id and payload. The
total size is capped before anything is parsed.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

RECORD_MAGIC = b"\xc5\x01"
_RECORD = struct.Struct(">2sII")
_SEQ = struct.Struct(">Q")

MESSAGE_MAGIC = b"CSY1"
_MESSAGE = struct.Struct(">4sBBII")

KIND_STATE_VECTOR = 1
KIND_UPDATE = 2
KIND_ACK = 3
KINDS = {KIND_STATE_VECTOR: "state-vector", KIND_UPDATE: "update", KIND_ACK: "ack"}

EMPTY_UPDATE = b"\x00\x00"


class FrameError(ValueError):
    """A record or message that is truncated, oversized, of the wrong kind or fails its checksum."""


def _crc(*parts: bytes) -> int:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def frame_record(seq: int, payload: bytes) -> bytes:
    return _RECORD.pack(RECORD_MAGIC, len(payload), _crc(_SEQ.pack(seq), payload)) + payload


def unframe_record(seq: int, blob: bytes) -> bytes:
    """The payload of a stored record, or FrameError when it is not exactly what was written."""
    if not isinstance(blob, bytes | bytearray | memoryview) or len(blob) < _RECORD.size:
        raise FrameError(f"record {seq}: truncated header")
    magic, length, crc = _RECORD.unpack_from(blob)
    if magic != RECORD_MAGIC:
        raise FrameError(f"record {seq}: bad magic")
    if len(blob) != _RECORD.size + length:
        raise FrameError(f"record {seq}: length {len(blob) - _RECORD.size} != {length}")
    payload = bytes(blob[_RECORD.size :])
    if _crc(_SEQ.pack(seq), payload) != crc:
        raise FrameError(f"record {seq}: checksum mismatch")
    return payload


def encode_message(kind: int, doc_id: str, payload: bytes) -> bytes:
    doc = doc_id.encode()
    if len(doc) > 255:
        raise ValueError("doc id longer than 255 bytes")
    head = _MESSAGE.pack(MESSAGE_MAGIC, kind, len(doc), len(payload), _crc(bytes([kind]), doc, payload))
    return head + doc + payload


def decode_messages(body: bytes, doc_id: str, max_bytes: int) -> list[tuple[int, bytes]]:
    """Every message in ``body``; FrameError unless all are intact, for ``doc_id`` and of a known kind."""
    if len(body) > max_bytes:
        raise FrameError(f"message of {len(body)} bytes exceeds the cap of {max_bytes}")
    if not body:
        raise FrameError("empty message")
    return list(_iter_messages(body, doc_id.encode()))


def _iter_messages(body: bytes, doc: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset < len(body):
        if len(body) - offset < _MESSAGE.size:
            raise FrameError("truncated message header")
        magic, kind, doc_len, length, crc = _MESSAGE.unpack_from(body, offset)
        if magic != MESSAGE_MAGIC:
            raise FrameError("bad message magic")
        if kind not in KINDS:
            raise FrameError(f"unknown message kind {kind}")
        start = offset + _MESSAGE.size
        end = start + doc_len + length
        if end > len(body):
            raise FrameError("truncated message body")
        got_doc = body[start : start + doc_len]
        payload = body[start + doc_len : end]
        if _crc(bytes([kind]), got_doc, payload) != crc:
            raise FrameError("message checksum mismatch")
        if got_doc != doc:
            raise FrameError(f"message for doc {got_doc!r}, expected {doc!r}")
        yield kind, bytes(payload)
        offset = end


def expect(messages: list[tuple[int, bytes]], *kinds: int) -> list[bytes]:
    """The payloads when the messages are exactly of ``kinds`` in that order, else FrameError."""
    got = tuple(kind for kind, _ in messages)
    if got != kinds:
        names = [KINDS.get(k, str(k)) for k in got]
        raise FrameError(f"expected {[KINDS[k] for k in kinds]}, got {names}")
    return [payload for _, payload in messages]


def _read_varuint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data):
            raise FrameError("truncated varuint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise FrameError("varuint too long")


def decode_state_vector(data: bytes) -> dict[int, int]:
    """A Yjs v1 state vector: ``{client id: clock}``; FrameError on anything malformed."""
    count, offset = _read_varuint(data, 0)
    if count > len(data):
        raise FrameError("state vector count exceeds its size")
    out: dict[int, int] = {}
    for _ in range(count):
        client, offset = _read_varuint(data, offset)
        clock, offset = _read_varuint(data, offset)
        out[client] = clock
    if offset != len(data):
        raise FrameError("trailing bytes after state vector")
    return out


def covers(theirs: dict[int, int], mine: dict[int, int]) -> bool:
    """True when a replica at ``theirs`` has seen everything of ``mine``."""
    return all(theirs.get(client, 0) >= clock for client, clock in mine.items())
