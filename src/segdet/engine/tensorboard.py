"""A minimal TensorBoard event-file writer for scalars, with no dependency beyond the standard library.

TensorBoard reads TFRecord files of ``Event`` protocol buffers. Each record is
``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)`` (little-endian),
with CRC-32C (Castagnoli) masked as ``((crc >> 15) | (crc << 17)) + 0xa282ead8``. A scalar is an
``Event{wall_time=1: double, step=2: int64, summary=5: Summary{value=1: Value{tag=1: string,
simple_value=2: float}}}``; the first record carries ``file_version=3: "brain.Event:2"``. Writing these
few fields by hand avoids depending on TensorFlow, tensorboard or protobuf just to log losses.
"""

from __future__ import annotations

import math
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli polynomial, reflected 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # int64 as protobuf encodes it (two's complement for negatives)
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + body


def _float32(value: float) -> bytes:
    """``value`` as a little-endian float32; a finite value beyond float32's range is infinity (as
    ``torch.float32`` makes it) instead of struct's OverflowError."""
    try:
        return struct.pack("<f", value)
    except OverflowError:
        return struct.pack("<f", math.copysign(math.inf, value))


def _scalar_summary(tag: str, value: float) -> bytes:
    value_msg = _field_bytes(1, tag.encode()) + b"\x15" + _float32(value)
    return _field_bytes(5, _field_bytes(1, value_msg))


class EventWriter:
    """Appends scalar events to ``<log_dir>/events.out.tfevents.<time>.<host>``."""

    def __init__(self, log_dir: str | Path) -> None:
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = log_dir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
        self._file = open(self.path, "ab")  # kept open for the run's lifetime
        self._write(_event(now, 0, _field_bytes(3, b"brain.Event:2")))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._write(_event(time.time(), step, _scalar_summary(tag, float(value))))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def _write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._file.write(
            header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data))
        )
