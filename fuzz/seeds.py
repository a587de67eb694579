"""Seed inputs for the fuzz targets, made at run time from the captures of tests/corpus/data.

Nothing here is stored: ``python -m fuzz.run`` writes each target's seeds into its corpus
directory when that directory is empty. ``$AIOMB_CORPUS`` points at another copy of the captures.
"""

import gzip
import io
import os
import struct
from pathlib import Path

from aiomb.testing import write_pcapng

ROOT = Path(__file__).resolve().parent.parent
MAX_CAPTURE_SEED = 16 << 10     # a capture seed is the capture's first records up to this size
MAX_FRAMES = 64                 # frames of a frame-parser seed


def corpus_dir() -> Path:
    return Path(os.environ.get("AIOMB_CORPUS") or ROOT / "tests" / "corpus" / "data")


def captures() -> list[Path]:
    """Every classic pcap of the corpus (gzip-compressed or not), by name."""
    root = corpus_dir()
    return sorted(p for p in root.rglob("*") if p.name.endswith((".pcap", ".pcap.gz")))


def head(path: Path, size: int = MAX_CAPTURE_SEED) -> bytes:
    """The first ``size`` bytes of a capture (decompressed)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        return fh.read(size)


def read_pcap(data: bytes) -> tuple[int, list[tuple[float, bytes]], int]:
    """(link type, [(ts, frame)], end of the last whole record) of classic pcap bytes."""
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nanos = data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    frames, off = [], 24
    while off + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(order + "IIII", data, off)
        if off + 16 + caplen > len(data):
            break
        frames.append((sec + frac * (1e-9 if nanos else 1e-6), data[off + 16:off + 16 + caplen]))
        off += 16 + caplen
    return linktype, frames, off


def capture_seeds() -> list[bytes]:
    """For the capture reader: each capture's head cut at a record boundary, the same frames as
    pcapng (little- and big-endian, micro- and nanoseconds), and one gzip-compressed head."""
    seeds = []
    for i, path in enumerate(captures()):
        data = head(path)
        linktype, frames, end = read_pcap(data)
        seeds.append(data[:end])
        buf = io.BytesIO()
        write_pcapng(buf, frames[:MAX_FRAMES], interfaces=((linktype, 9 if i % 2 else 6),),
                     byteorder="big" if i % 3 == 0 else "little")
        seeds.append(buf.getvalue())
        if i == 0:
            seeds.append(gzip.compress(data[:end][:4096], mtime=0))
    return seeds


def frame_seeds() -> list[bytes]:
    """For the frame parser: each capture's first frames in the target's input format."""
    from fuzz.frame_parser import LINKTYPES, encode

    seeds = []
    for path in captures():
        linktype, frames, _ = read_pcap(head(path))
        if linktype in LINKTYPES:
            seeds.append(encode(linktype, [frame for _, frame in frames[:MAX_FRAMES]]))
    return seeds


def reassembly_seeds() -> list[bytes]:
    """For the reassembler: the client segments and server ACKs of each capture's TCP
    connections (offsets relative to the client's ISN), in the target's input format."""
    from fuzz.reassembly import encode, tcp_conversations

    seeds = []
    for path in captures():
        linktype, frames, _ = read_pcap(head(path))
        for steps in tcp_conversations(linktype, frames):
            seeds.append(encode(steps))
    return seeds
