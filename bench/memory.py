"""Memory per idle tracked TCP flow (handshake done, empty stream buffers), with 1M flows.

Builds the handshakes of N distinct connections in memory (a pcap in a BytesIO), feeds them
to an engine that reassembles (NEW_DATA subscribed) and reads the process's resident memory
before and after. Prints one JSON line: flows, RSS growth, bytes per flow, and the size of a
flow-table entry. Usage: python bench/memory.py [--flows N]
"""

import argparse
import io
import json
import os
import struct

import aiomb
from aiomb._core import FLOW_ENTRY_BYTES, CaptureReader
from aiomb.testing import tcp_frame, write_pcap


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def handshakes(n: int):
    """(ts, frame) of SYN, SYN-ACK, ACK for n connections, by patching three templates."""
    syn = bytearray(tcp_frame("10.0.0.1", "10.128.0.1", 1, 80, seq=100, flags="S"))
    synack = bytearray(tcp_frame("10.128.0.1", "10.0.0.1", 80, 1, seq=900, ack=101, flags="SA"))
    ack = bytearray(tcp_frame("10.0.0.1", "10.128.0.1", 1, 80, seq=101, ack=901, flags="A"))
    for i in range(n):
        port, host = 1024 + i % 60000, i // 60000
        addr = struct.pack("!I", (10 << 24) | (1 << 16) | host)
        for frame, src_side in ((syn, True), (synack, False), (ack, True)):
            ip_off, tcp_off = 14 + (12 if src_side else 16), 34 if src_side else 36
            frame[ip_off:ip_off + 4] = addr               # the client's address
            frame[tcp_off:tcp_off + 2] = struct.pack("!H", port)
            yield (1.0 + i * 1e-6, bytes(frame))


def run(flows: int) -> dict:
    buf = io.BytesIO()
    write_pcap(buf, handshakes(flows))
    buf.seek(0)
    engine = aiomb.Engine(max_flows=flows + 1)
    dispatcher = aiomb.Dispatcher(engine)
    sub = dispatcher.subscribe([aiomb.CONN_START, aiomb.NEW_DATA])   # keys and events made, then dropped
    reader = CaptureReader(buf)
    batch = aiomb.FrameBatch(4096)
    before = rss_bytes()
    while reader.fill(batch):
        engine.process(batch)
        dispatcher.drain(sub)                                # events are not kept
    grown = rss_bytes() - before
    st = engine.statistics()
    reader.close()
    assert st.flows_active == flows, st
    return {"flows": flows, "rss_growth": grown, "bytes_per_flow": round(grown / flows, 1),
            "flow_entry_bytes": FLOW_ENTRY_BYTES, "stream_memory": st.stream_memory}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=1_000_000)
    print(json.dumps(run(parser.parse_args().flows)))


if __name__ == "__main__":
    main()
