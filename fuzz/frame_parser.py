"""Fuzz target: random frames -> Engine.feed (parse, fragments, flows, TCP, reassembly, events).

Input: one options byte (the link type, checksum checking, mid-stream pickup, Zeek's conn
history, VLAN in the key), then frames, each as a 2-byte big-endian length, one byte of time
step (in 0.1 s: flows and fragments time out) and the frame. Every frame must be counted
(as a packet, and as malformed when it is), nothing may raise, and after ``finish()`` no flow
or stream memory may be left.
"""

import struct

import aiomb
from fuzz import fuzz_main

# Ethernet, raw IP, SLL, SLL2, BSD loopback (2), IPv4, IPv6; PPP (2), FDDI, Cisco HDLC, 802.11, radiotap,
# NFLOG, pflog: the options byte's bits 0-2 and 7 pick one.
LINKTYPES = (1, 101, 113, 276, 0, 108, 228, 229, 9, 50, 10, 104, 105, 127, 239, 117)


def encode(linktype: int, frames: list[bytes], options: int = 0) -> bytes:
    """A target input of ``frames`` of ``linktype`` fed 1 ms apart (``options``: the other bits)."""
    index = LINKTYPES.index(linktype)
    out = [bytes([index & 7 | (index & 8) << 4 | options & 0x78])]
    for frame in frames:
        frame = frame[:0xFFFF]
        out.append(struct.pack("!HB", len(frame), 0) + frame)
    return b"".join(out)


def decode(data: bytes) -> tuple[int, dict, list[tuple[float, bytes]]]:
    """(link type, engine options, [(ts, frame)]) of a target input."""
    if not data:
        return LINKTYPES[0], {}, []
    opt = data[0]
    options = {"checksums": "verify" if opt & 0x08 else "ignore", "midstream": bool(opt & 0x10),
               "conn_history": bool(opt & 0x20), "vlan_in_key": bool(opt & 0x40), "reassembly": True}
    frames, ts, off = [], 1.0, 1
    while off + 3 <= len(data):
        n, step = struct.unpack_from("!HB", data, off)
        off += 3
        ts += 0.001 + step * 0.1
        frames.append((ts, data[off:off + n]))
        off += n
    return LINKTYPES[opt & 7 | (opt & 0x80) >> 4], options, frames


def TestOneInput(data: bytes) -> None:
    linktype, options, frames = decode(data)
    engine = aiomb.Engine(**options)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(aiomb.ALL_BUILTIN)
    for ts, frame in frames:
        engine.feed(frame, ts, linktype=linktype)
        for ev in d.drain(sub):
            repr(ev)
    stats = engine.statistics()
    assert stats.packets == len(frames), (stats.packets, len(frames))
    assert sum(stats.malformed.values()) <= stats.packets, stats
    engine.finish()
    for ev in d.drain(sub):
        repr(ev)
    stats = engine.statistics()
    assert stats.flows_active == 0 and stats.stream_memory == 0, stats
    assert stats.flows_created == stats.flows_ended + stats.flows_evicted, stats
    engine.close()


if __name__ == "__main__":
    fuzz_main(TestOneInput)
