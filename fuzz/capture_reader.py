"""Fuzz target: capture bytes (pcap, pcapng, gzip of either) -> CaptureReader -> Engine.

The input is a whole capture file. The reader must return records or raise CaptureError with
the offset of the damage (within the decompressed bytes); anything else escaping, or a crash,
is a bug. The records go through an engine with reassembly on, and NEW_DATA values are kept
across fills so that the reader's frame blocks are reused and copied out under them.
"""

import io

import aiomb
from aiomb import CaptureError, EventKind
from aiomb._core import CaptureReader
from fuzz import fuzz_main

KEPT_VALUES = 32        # NEW_DATA values held while the reader goes on


def check_offset(err: CaptureError, data: bytes, compressed: bool) -> None:
    assert isinstance(err.offset, int) and err.offset >= 0, f"CaptureError without an offset: {err!r}"
    assert compressed or err.offset <= len(data), f"offset {err.offset} past the {len(data)} bytes: {err!r}"


def TestOneInput(data: bytes) -> None:
    try:
        reader = CaptureReader(io.BytesIO(data), chunk_size=4096)
    except CaptureError as err:
        check_offset(err, data, data[:2] == b"\x1f\x8b")
        return
    engine = aiomb.Engine(reassembly=True)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(aiomb.ALL_BUILTIN)
    batch = aiomb.FrameBatch(1 + len(data) % 16)
    kept = []
    records = 0
    with reader:
        try:
            while n := reader.fill(batch):
                records += n
                assert reader.compressed or reader.offset <= len(data)
                engine.process(batch)
                for ev in d.drain(sub):
                    if ev.kind is EventKind.NEW_DATA:
                        kept.append(ev)
                del kept[:-KEPT_VALUES]
        except CaptureError as err:
            check_offset(err, data, reader.compressed)
        assert reader.records == records
        engine.finish()
    for ev in kept + [ev for ev in d.drain(sub) if ev.kind is EventKind.NEW_DATA]:
        assert len(ev.value) == ev.length, (ev, len(ev.value))
    assert engine.statistics().packets == records
    engine.close()


if __name__ == "__main__":
    fuzz_main(TestOneInput)
