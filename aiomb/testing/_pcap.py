"""Writers for classic pcap and pcapng files, for tests of capture readers.

Timestamps are float seconds or int nanoseconds. Files are assembled in memory and
written in one go, so a misuse error never leaves a half-written capture behind.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from collections.abc import Iterable, Sequence
from typing import BinaryIO

from ._frames import _check_bytes, _check_uint

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_MAGIC_NS = 0xA1B23C4D
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_IDB = 0x00000001
_PCAPNG_EPB = 0x00000006
_PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_PCAPNG_OPT_ENDOFOPT = 0
_PCAPNG_IF_TSRESOL = 9
_DEFAULT_TSRESOL = 6


def _struct_order(byteorder: object) -> str:
    """Map ``"little"``/``"big"`` to a struct byte-order prefix."""
    if byteorder == "little":
        return "<"
    if byteorder == "big":
        return ">"
    raise ValueError(f"byteorder must be 'little' or 'big', got {byteorder!r}")


def _ticks(ts: object, exponent: int) -> int:
    """Convert float seconds or int nanoseconds to units of 10**-exponent seconds."""
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise TypeError(
            f"timestamps must be float seconds or int nanoseconds, got {type(ts).__name__}"
        )
    if ts < 0 or (isinstance(ts, float) and not math.isfinite(ts)):
        raise ValueError(f"timestamps must be finite and non-negative, got {ts!r}")
    if isinstance(ts, int):
        return ts * 10**exponent // 10**9
    seconds = math.floor(ts)
    return seconds * 10**exponent + round((ts - seconds) * 10**exponent)


def _unpack_record(record: object, third: str) -> tuple[object, bytes, object]:
    """Split a ``(ts, frame)`` or ``(ts, frame, <third>)`` record, ``None`` if absent."""
    if not isinstance(record, (tuple, list)) or len(record) not in (2, 3):
        raise ValueError(
            f"frames must hold (ts, frame) or (ts, frame, {third}) tuples, got {record!r:.80}"
        )
    ts, frame, *rest = record
    return ts, _check_bytes("frame", frame), rest[0] if rest else None


def _write(path_or_file: str | os.PathLike | BinaryIO, data: bytes) -> None:
    """Write ``data`` to a binary file object, or to a file created at a path."""
    if hasattr(path_or_file, "write"):
        path_or_file.write(data)
        return
    if not isinstance(path_or_file, (str, bytes, os.PathLike)):
        raise TypeError(
            f"path_or_file must be a path or a binary file, got {type(path_or_file).__name__}"
        )
    with open(path_or_file, "wb") as file:
        file.write(data)


def _pcap_record(order: str, record: object, *, exponent: int, snaplen: int) -> bytes:
    """Encode one classic-pcap record header and its (snaplen-truncated) data."""
    ts, frame, wire_len = _unpack_record(record, "wire_len")
    orig_len = len(frame) if wire_len is None else _check_uint("wire_len", wire_len, 32)
    if orig_len < len(frame):
        raise ValueError(f"wire_len ({orig_len}) must be at least the frame length ({len(frame)})")
    seconds, fraction = divmod(_ticks(ts, exponent), 10**exponent)
    if seconds >= 2**32:
        raise ValueError(f"timestamp {ts!r} does not fit classic pcap's 32-bit seconds")
    caplen = min(len(frame), snaplen)
    return struct.pack(order + "IIII", seconds, fraction, caplen, orig_len) + frame[:caplen]


def write_pcap(
    path_or_file: str | os.PathLike | BinaryIO,
    frames: Iterable[tuple],
    *,
    linktype: int = LINKTYPE_ETHERNET,
    nanosecond: bool = False,
    byteorder: str = "little",
    snaplen: int = 262144,
) -> None:
    """Write a classic pcap file (v2.4) of ``frames`` to a path or binary file.

    ``frames`` yields ``(ts, frame)`` or ``(ts, frame, wire_len)``; records hold at
    most ``snaplen`` bytes and an original length of ``wire_len`` (default the frame's
    length). ``nanosecond`` selects magic a1b23c4d instead of a1b2c3d4 (microseconds);
    the file is written in ``byteorder``.
    """
    order = _struct_order(byteorder)
    _check_uint("linktype", linktype, 32)
    if _check_uint("snaplen", snaplen, 32) == 0:
        raise ValueError("snaplen must be positive")
    exponent = 9 if nanosecond else 6
    magic = _PCAP_MAGIC_NS if nanosecond else _PCAP_MAGIC_US
    parts = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    parts += [_pcap_record(order, record, exponent=exponent, snaplen=snaplen) for record in frames]
    _write(path_or_file, b"".join(parts))


def _pad32(data: bytes) -> bytes:
    """Pad ``data`` with zeros to a multiple of 4 bytes."""
    return data + bytes(-len(data) % 4)


def _block(order: str, block_type: int, body: bytes) -> bytes:
    """Frame a pcapng block body with its type and leading/trailing total lengths."""
    body = _pad32(body)
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def _interface_block(order: str, linktype: int, exponent: int) -> bytes:
    """Build an Interface Description Block, with if_tsresol unless it is 6 (us)."""
    body = struct.pack(order + "HHI", linktype, 0, 0)
    if exponent != _DEFAULT_TSRESOL:
        body += struct.pack(order + "HH", _PCAPNG_IF_TSRESOL, 1) + _pad32(bytes([exponent]))
        body += struct.pack(order + "HH", _PCAPNG_OPT_ENDOFOPT, 0)
    return _block(order, _PCAPNG_IDB, body)


def _check_interfaces(interfaces: object) -> list[tuple[int, int]]:
    """Validate ``(linktype, tsresol_exponent)`` pairs."""
    if not isinstance(interfaces, (tuple, list)):
        raise TypeError(
            f"interfaces must be a sequence of (linktype, tsresol) tuples, got {interfaces!r}"
        )
    checked = []
    for index, interface in enumerate(interfaces):
        if not isinstance(interface, (tuple, list)) or len(interface) != 2:
            raise ValueError(
                f"interfaces[{index}] must be a (linktype, tsresol) tuple, got {interface!r}"
            )
        linktype, exponent = interface
        checked.append(
            (
                _check_uint(f"interfaces[{index}] linktype", linktype, 16),
                _check_uint(f"interfaces[{index}] tsresol", exponent, 7),
            )
        )
    return checked


def _packet_block(order: str, record: object, interfaces: Sequence[tuple[int, int]]) -> bytes:
    """Build an Enhanced Packet Block for one ``(ts, frame[, interface_index])`` record."""
    ts, frame, index = _unpack_record(record, "interface_index")
    index = 0 if index is None else _check_uint("interface_index", index, 32)
    if index >= len(interfaces):
        raise ValueError(
            f"interface_index {index} is out of range for {len(interfaces)} interface(s)"
        )
    ticks = _ticks(ts, interfaces[index][1])
    if ticks >= 2**64:
        raise ValueError(f"timestamp {ts!r} does not fit pcapng's 64-bit timestamps")
    header = struct.pack(
        order + "IIIII", index, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)
    )
    return _block(order, _PCAPNG_EPB, header + frame)


def write_pcapng(
    path_or_file: str | os.PathLike | BinaryIO,
    frames: Iterable[tuple],
    *,
    interfaces: Sequence[tuple[int, int]] = ((LINKTYPE_ETHERNET, _DEFAULT_TSRESOL),),
    byteorder: str = "little",
) -> None:
    """Write a single-section pcapng file of ``frames`` to a path or binary file.

    ``interfaces`` holds ``(linktype, tsresol_exponent)`` pairs, one Interface
    Description Block each; exponent ``e`` means units of 10**-e seconds. ``frames``
    yields ``(ts, frame)`` or ``(ts, frame, interface_index)`` (index defaults to 0),
    each written as an Enhanced Packet Block. Everything is written in ``byteorder``.
    """
    order = _struct_order(byteorder)
    checked = _check_interfaces(interfaces)
    section = struct.pack(order + "IHHq", _PCAPNG_BYTE_ORDER_MAGIC, 1, 0, -1)
    blocks = [_block(order, _PCAPNG_SHB, section)]
    blocks += [_interface_block(order, linktype, exponent) for linktype, exponent in checked]
    blocks += [_packet_block(order, record, checked) for record in frames]
    _write(path_or_file, b"".join(blocks))


def gzip_file(path: str | os.PathLike) -> str:
    """Write a gzip-compressed copy of ``path`` to ``path + ".gz"`` and return that path.

    The gzip header's mtime is zeroed so the output is reproducible.
    """
    target = os.fsdecode(path) + ".gz"
    with open(path, "rb") as source:
        data = source.read()
    with open(target, "wb") as destination:
        destination.write(gzip.compress(data, mtime=0))
    return target
