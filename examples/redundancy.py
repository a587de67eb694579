"""Redundancy meter (after Monbot, MobiSys'13): how much of the traffic repeats bytes already sent.

Each side's reassembled stream is cut into chunks, fixed-size (--chunk, default 4096 bytes) or
content-defined (--cdc: FastCDC with normalized chunking, --min-size/--avg-size/--max-size), and
each chunk's SHA-1 is looked up among the chunks seen before. The redundancy ratio is the bytes of
chunks seen before over all bytes: within each flow (chunks its own streams carried earlier) and
across flows (chunks any flow carried earlier). A hole in a stream ends the chunk before it.

    aiomb run examples/redundancy.py --pcap CAPTURE [-- --chunk 4096 | --cdc] [-- --json]
    aiomb run examples/redundancy.py --iface MIRROR_PORT [-- --cdc]       # live (root), until Ctrl-C

One line per TCP flow that carried bytes, as it ends, then the totals (--json: JSON lines, the
flows' with "type": "flow", the totals' "type": "total"). The chunker is pure Python (a few MB/s).
"""

import argparse
import hashlib
import json
import sys

import aiomb

MASK64 = (1 << 64) - 1
GEAR = [int.from_bytes(hashlib.sha256(bytes([i])).digest()[:8], "big") for i in range(256)]  # FastCDC's table


def fastcdc_cut(data, min_size: int, avg_size: int, max_size: int) -> int:
    """FastCDC (Xia et al., USENIX ATC'16): the length of the chunk starting at data[0], or 0 when
    data ends before a cut point and is shorter than max_size (more bytes are needed).

    A gear hash over the bytes after min_size; a cut where its top bits are zero: one more bit
    than log2(avg_size) must be zero before avg_size (cuts are rarer), one fewer after."""
    end = min(len(data), max_size)
    bits = avg_size.bit_length() - 1
    hard, easy = ((1 << (bits + 1)) - 1) << (63 - bits), ((1 << (bits - 1)) - 1) << (65 - bits)
    fp = 0
    for i in range(min_size, end):
        fp = ((fp << 1) + GEAR[data[i]]) & MASK64
        if not fp & (hard if i < avg_size else easy):
            return i + 1
    return end if end == max_size else 0


class SeenChunks:
    """The digests of the last ``limit`` distinct chunks (the oldest forgotten first)."""

    def __init__(self, limit: int):
        self.limit, self.digests = limit, {}

    def seen_before(self, digest: bytes) -> bool:
        """Whether ``digest`` was seen before; it is remembered either way."""
        if digest in self.digests:
            return True
        if len(self.digests) >= self.limit:
            del self.digests[next(iter(self.digests))]
        self.digests[digest] = None
        return False


class FlowMeter:
    """One flow's chunkers (one per side) and its figures."""

    def __init__(self, key, limit: int):
        self.key, self.seen = key, SeenChunks(limit)
        self.pending = {aiomb.Side.CLIENT: bytearray(), aiomb.Side.SERVER: bytearray()}
        self.next_offset = {aiomb.Side.CLIENT: 0, aiomb.Side.SERVER: 0}
        self.bytes = self.chunks = self.within = self.across = 0

    def add(self, side, offset: int, data: bytes) -> None:
        if offset != self.next_offset[side]:      # a hole: the chunk before it ends there
            self.flush(side)
        self.pending[side] += data
        self.next_offset[side] = offset + len(data)
        self.cut(side, final=False)

    def flush(self, side) -> None:
        self.cut(side, final=True)

    def cut(self, side, final: bool) -> None:
        buf = self.pending[side]
        start = 0
        while start < len(buf):
            if options.cdc:
                if len(buf) - start < options.max_size and not final:
                    break                         # wait for max_size bytes: each byte is scanned once
                n = fastcdc_cut(memoryview(buf)[start:], options.min_size, options.avg_size, options.max_size)
                n = n or len(buf) - start
            else:
                n = min(options.chunk, len(buf) - start)
                if n < options.chunk and not final:
                    break
            self.count(bytes(buf[start:start + n]))
            start += n
        del buf[:start]

    def count(self, chunk: bytes) -> None:
        digest = hashlib.sha1(chunk).digest()
        self.bytes += len(chunk)
        self.chunks += 1
        self.within += len(chunk) if self.seen.seen_before(digest) else 0
        self.across += len(chunk) if everywhere.seen_before(digest) else 0


def endpoint(ip, port) -> str:
    return f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"


def ratio(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def report(kind: str, name: str, total: int, chunks: int, within: int, across: int) -> None:
    if options.json:
        print(json.dumps({"type": kind, **({"flow": name} if kind == "flow" else {"flows": name}),
                          "bytes": total, "chunks": chunks, "within_flow_bytes": within,
                          "within_flow_ratio": ratio(within, total), "across_flows_bytes": across,
                          "across_flows_ratio": ratio(across, total)}), flush=True)
    else:
        print(f"{name}: {total} bytes in {chunks} chunk(s); seen before in the flow {within} "
              f"({100 * ratio(within, total):.1f}%), in any flow {across} ({100 * ratio(across, total):.1f}%)",
              flush=True)


def parse_options(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="redundancy.py", description="Redundancy of the reassembled TCP "
                                     "streams: bytes in chunks seen before, within each flow and across flows.")
    parser.add_argument("--chunk", type=int, metavar="BYTES", help="fixed-size chunks of BYTES (default 4096)")
    parser.add_argument("--cdc", action="store_true", help="content-defined chunks (FastCDC) instead")
    parser.add_argument("--min-size", type=int, default=2048, help="--cdc: smallest chunk (default 2048)")
    parser.add_argument("--avg-size", type=int, default=8192,
                        help="--cdc: typical chunk, a power of two (default 8192)")
    parser.add_argument("--max-size", type=int, default=65536, help="--cdc: largest chunk (default 65536)")
    parser.add_argument("--cache", type=int, default=1_000_000, metavar="N",
                        help="remember the last N distinct chunks (default 1000000; per flow too)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text")
    args = parser.parse_args(argv)
    if args.cdc and args.chunk is not None:
        parser.error("--chunk and --cdc exclude each other: give one of them")
    if args.chunk is None:
        args.chunk = 4096
    if args.chunk < 1 or args.cache < 1:
        parser.error("--chunk and --cache must be positive")
    if args.avg_size < 4 or args.avg_size & (args.avg_size - 1):
        parser.error(f"--avg-size must be a power of two, at least 4 (got {args.avg_size}); e.g. 8192")
    if not 0 < args.min_size < args.avg_size < args.max_size:
        parser.error(f"--cdc needs 0 < --min-size < --avg-size < --max-size (got {args.min_size}, "
                     f"{args.avg_size}, {args.max_size})")
    return args


options = parse_options([])
everywhere = SeenChunks(options.cache)


def setup(stack) -> None:
    global options, everywhere
    options = parse_options(sys.argv[1:])
    everywhere = SeenChunks(options.cache)


async def run(stack) -> None:
    """A FlowMeter per flow from its start; NEW_DATA feeds it; at the flow's end, the last chunks."""
    meters, flows, totals = {}, 0, [0, 0, 0, 0]
    async with stack.subscribe(aiomb.CONN_START, aiomb.NEW_DATA, aiomb.CONN_END) as events:
        async for ev in events:
            if ev.kind is aiomb.CONN_START:
                meters[ev.flow_id] = FlowMeter(ev.key, options.cache)
            elif ev.kind is aiomb.NEW_DATA and ev.flow_id in meters:   # not after the flow's end
                meters[ev.flow_id].add(ev.side, ev.offset, ev.value)
            elif ev.kind is aiomb.CONN_END and ev.flow_id in meters:
                meter = meters.pop(ev.flow_id)
                meter.flush(aiomb.Side.CLIENT)
                meter.flush(aiomb.Side.SERVER)
                if meter.bytes:
                    k = meter.key
                    name = f"flow {ev.flow_id} {endpoint(k.client_ip, k.client_port)} -> " \
                           f"{endpoint(k.server_ip, k.server_port)}"
                    report("flow", ev.flow_id if options.json else name, meter.bytes, meter.chunks,
                           meter.within, meter.across)
                    flows += 1
                    totals = [t + n for t, n in zip(totals, (meter.bytes, meter.chunks, meter.within, meter.across))]
    report("total", flows if options.json else f"{flows} flows", *totals)


if __name__ == "__main__":
    from aiomb.cli import main

    sys.exit(main(["run", __file__, *sys.argv[1:]]))
