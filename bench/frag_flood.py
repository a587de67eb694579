"""A flood of first IP fragments against plain UDP of the same packet count, whole process.

Writes two captures of N 1514-byte frames each: first fragments (1480 bytes at offset 0, more to
come) of N distinct datagrams that never complete, and unfragmented UDP datagrams of the same
size among 1,000 flows. Each capture is read by its own process (interpreter start-up and
imports included, as a user waits for it) through an engine with the given ``max_fragments``;
the table is printed with the flood's time over plain UDP's. Usage:
python bench/frag_flood.py [--packets N] [--max-fragments M ...] [--repeat R]
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

from aiomb.testing import udp_frame, write_pcap


def flood(n: int):
    """(ts, frame) of n first fragments of distinct datagrams (by source address and id)."""
    template = bytearray(udp_frame("10.0.0.1", "192.168.0.1", 1000, 53, bytes(1472)))
    template[14 + 6:14 + 8] = struct.pack("!H", 0x2000)          # more fragments, offset 0
    template[14 + 2:14 + 4] = struct.pack("!H", 1500)
    for i in range(n):
        template[14 + 4:14 + 6] = struct.pack("!H", i & 0xffff)
        template[14 + 12:14 + 16] = struct.pack("!I", (10 << 24) | (i >> 16) + 1)
        yield (1.0 + i * 1e-6, bytes(template))


def plain(n: int):
    """(ts, frame) of n unfragmented UDP datagrams of the same size, among 1,000 flows."""
    template = bytearray(udp_frame("10.0.0.1", "192.168.0.1", 1000, 53, bytes(1472)))
    for i in range(n):
        template[14 + 34:14 + 36] = struct.pack("!H", 1000 + i % 1000)   # the source port
        yield (1.0 + i * 1e-6, bytes(template))


def child(path: str, max_fragments: int) -> None:
    """Read one capture through an engine; print its figures as JSON."""
    import aiomb
    from aiomb._core import CaptureReader

    start = time.perf_counter()
    engine = aiomb.Engine(max_fragments=max_fragments)
    batch = aiomb.FrameBatch(2048)
    with open(path, "rb") as fh:
        reader = CaptureReader(fh)
        while reader.fill(batch):
            engine.process(batch)
        reader.close()
    st = engine.statistics()
    print(json.dumps({"engine_seconds": time.perf_counter() - start, "packets": st.packets,
                      "udp": st.udp_packets, "fragments_held": st.fragments_held,
                      "fragments_evicted": st.fragments_evicted, "fragment_memory": st.fragment_memory}))


def timed(path: str, max_fragments: int) -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", path, "--max-fragments", str(max_fragments)],
                         check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    result["seconds"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--max-fragments", type=int, nargs="+", default=[1024, 65536])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest is shown")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.max_fragments[0])
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"flood": os.path.join(tmp, "flood.pcap"), "plain": os.path.join(tmp, "plain.pcap")}
        write_pcap(paths["flood"], flood(args.packets))
        write_pcap(paths["plain"], plain(args.packets))
        print(f"{args.packets:,} frames of 1514 bytes; whole-process seconds (fastest of {args.repeat}), "
              "engine seconds beside")
        print(f"{'max_fragments':>13} | {'plain UDP':>15} | {'fragment flood':>15} | {'ratio':>5} | "
              "held, evicted, memory")
        for m in args.max_fragments:
            best = {}
            for _ in range(args.repeat):
                for kind, path in paths.items():
                    r = timed(path, m)
                    if kind not in best or r["seconds"] < best[kind]["seconds"]:
                        best[kind] = r
            p, f = best["plain"], best["flood"]
            assert p["udp"] == args.packets and f["udp"] == 0, (p, f)
            print(f"{m:>13,} | {p['seconds']:6.2f} ({p['engine_seconds']:5.2f}) | "
                  f"{f['seconds']:6.2f} ({f['engine_seconds']:5.2f}) | {f['seconds'] / p['seconds']:5.2f} | "
                  f"{f['fragments_held']:,}, {f['fragments_evicted']:,}, {f['fragment_memory']:,} B")


if __name__ == "__main__":
    main()
