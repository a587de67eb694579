"""Write a deterministic synthetic TCP capture for the aiomb benchmarks.

The capture is a classic pcap file (Ethernet, microsecond timestamps,
little-endian).  Every flow is a complete TCP connection: a 3-way handshake,
a few request/response exchanges with delayed ACKs, and a FIN close from both
sides.  About 1% of the data segments are re-sent later with the same bytes
and about 1% are swapped with the next segment of the same message; every ACK
acknowledges only what its sender has received in order.  IPv4 and TCP
checksums are valid.  Hundreds of flows are open at any time, interleaved by
a time-ordered merge.

Usage: python bench/gen_capture.py OUT.pcap [--flows N] [--seed S]
"""

import argparse
import heapq
import json
import random
import struct
import time

FORMAT_VERSION = 1  # bump when the generated traffic changes

MSS = 1460
TTL = 64
WINDOW = 65535
SEQ_MASK = 0xFFFFFFFF
FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10

RETRANSMIT_RATE = 0.01
REORDER_RATE = 0.015  # per segment with a successor in its message: ~1% overall
CLIENT_CLOSES_FIRST = 0.85
ROUNDS = (1, 4)  # request/response exchanges per flow
REQUEST_SEGMENTS = (1, 2)
RESPONSE_SEGMENTS = (1, 6)
HALF_RTT_US = (1000, 10000)
SAME_SIDE_GAP_US = (5, 60)
ARRIVAL_GAP_US = 250  # mean gap between flow starts: ~300 flows open at once
FLOWS_PER_CLIENT = 8
SERVERS = 64
SERVER_PORTS = (80, 443, 8080, 8443, 25, 22)
EPOCH = 1_700_000_000
WRITE_BATCH = 8192

_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
_RECORD = struct.Struct("<IIII").pack
_HEADERS = struct.Struct("!14sBBHHHBBH8sHHIIBBHHH").pack
_ETHERNET = (  # indexed by sending side: 0 = client, 1 = server
    bytes.fromhex("020000000002" "020000000001" "0800"),
    bytes.fromhex("020000000001" "020000000002" "0800"),
)


class _Flow:
    """The frames of one TCP connection and both endpoints' sequence state.

    Side 0 is the client and side 1 the server.  ``nxt[s]`` is the next
    sequence number side ``s`` sends; ``rcv[s]`` is the next one it expects
    from its peer, i.e. what it acknowledges.
    """

    def __init__(self, rng, pool, stats, client, server, ports):
        self.rng, self.pool, self.stats = rng, pool, stats
        self.addrs = (client + server, server + client)
        self.ports = (ports, ports[::-1])
        words = sum(struct.unpack("!4H", client + server))
        self.ip_base = words + 0x4500 + 0x4000 + (TTL << 8 | 6)
        self.tcp_base = words + 6 + sum(ports) + WINDOW
        self.ip_id = [rng.getrandbits(16), rng.getrandbits(16)]
        self.nxt = [rng.getrandbits(32), rng.getrandbits(32)]
        self.rcv = [0, 0]
        self.half_rtt = rng.uniform(*HALF_RTT_US)
        self.side = 1
        self.gaps, self.frames = [], []

    def frame(self, side, flags, seq, payload=b""):
        """Build one Ethernet/IPv4/TCP frame with valid checksums."""
        ack = self.rcv[side] if flags & ACK else 0
        ip_id = self.ip_id[side] = (self.ip_id[side] + 1) & 0xFFFF
        tcp_len = 20 + len(payload)
        body = int.from_bytes(payload, "big")
        if tcp_len & 1:
            body <<= 8
        ip_sum = -(self.ip_base + 20 + tcp_len + ip_id) % 0xFFFF
        tcp_sum = -(self.tcp_base + tcp_len + seq + ack + (0x5000 | flags) + body) % 0xFFFF
        sport, dport = self.ports[side]
        return _HEADERS(
            _ETHERNET[side], 0x45, 0, 20 + tcp_len, ip_id, 0x4000, TTL, 6, ip_sum,
            self.addrs[side], sport, dport, seq, ack, 0x50, flags, WINDOW, tcp_sum, 0,
        ) + payload

    def send(self, side, frame):
        """Queue a frame; turning the line around costs half a round trip."""
        if side == self.side:
            gap = self.rng.uniform(*SAME_SIDE_GAP_US)
        else:
            gap = self.half_rtt * (0.8 + 0.4 * self.rng.random())
        self.side = side
        self.gaps.append(gap)
        self.frames.append(frame)

    def control(self, side, flags):
        """Send a segment without payload; SYN and FIN take one sequence number."""
        seq = self.nxt[side]
        if flags & (SYN | FIN):
            self.nxt[side] = (seq + 1) & SEQ_MASK
        self.send(side, self.frame(side, flags, seq))
        self.rcv[1 - side] = self.nxt[side]

    def handshake(self):
        """SYN, SYN-ACK, ACK."""
        self.control(0, SYN)
        self.control(1, SYN | ACK)
        self.control(0, ACK)

    def message(self, side, sizes):
        """Send one message as data segments, with the peer's delayed ACKs."""
        segments = []
        for i, size in enumerate(sizes):
            seq = self.nxt[side]
            self.nxt[side] = (seq + size) & SEQ_MASK
            offset = self.rng.randrange(len(self.pool) - MSS)
            flags = ACK | PSH if i == len(sizes) - 1 else ACK
            segments.append((seq, self.frame(side, flags, seq, self.pool[offset:offset + size])))
        self.stats["data_segments"] += len(sizes)
        self.stats[("client_bytes", "server_bytes")[side]] += sum(sizes)
        self.deliver(side, segments, self.wire_order(len(segments)))

    def wire_order(self, count):
        """Segment indices in wire order, with swaps and later re-sends."""
        order = list(range(count))
        i = 0
        while i < count - 1:
            if self.rng.random() < REORDER_RATE:
                order[i], order[i + 1] = order[i + 1], order[i]
                self.stats["reordered"] += 1
                i += 1
            i += 1
        for index in range(count):
            if self.rng.random() < RETRANSMIT_RATE:
                later = order.index(index) + 1 + self.rng.randrange(3)
                order.insert(min(later, len(order)), index)
                self.stats["retransmissions"] += 1
        return order

    def deliver(self, side, segments, order):
        """Put segments on the wire; the peer ACKs every second one and the last."""
        peer = 1 - side
        received = [False] * len(segments)
        in_order = 0
        for sent, index in enumerate(order, 1):
            self.send(side, segments[index][1])
            received[index] = True
            while in_order < len(segments) and received[in_order]:
                in_order += 1
            if sent % 2 == 0 or sent == len(order):
                ack = segments[in_order][0] if in_order < len(segments) else self.nxt[side]
                self.rcv[peer] = ack
                self.send(peer, self.frame(peer, ACK, self.nxt[peer]))

    def close(self, first):
        """FIN from ``first``, ACK, FIN from the other side, ACK."""
        self.control(first, FIN | ACK)
        self.control(1 - first, ACK)
        self.control(1 - first, FIN | ACK)
        self.control(first, ACK)


def _message_sizes(rng, segments, full):
    """Payload sizes of one message: full-sized segments then a partial one."""
    count = rng.randint(*segments)
    sizes = [MSS if full else rng.randint(1, MSS) for _ in range(count - 1)]
    sizes.append(rng.randint(1, MSS))
    return sizes


def _build_flow(rng, pool, stats, endpoints):
    """Return the (gaps, frames) of one complete connection."""
    flow = _Flow(rng, pool, stats, *endpoints)
    flow.handshake()
    for _ in range(rng.randint(*ROUNDS)):
        flow.message(0, _message_sizes(rng, REQUEST_SEGMENTS, full=False))
        flow.message(1, _message_sizes(rng, RESPONSE_SEGMENTS, full=True))
    flow.close(0 if rng.random() < CLIENT_CLOSES_FIRST else 1)
    return flow.gaps, flow.frames


class _Endpoints:
    """Hands out unique (client address, server address, ports) per flow."""

    def __init__(self, rng, flows):
        self.rng = rng
        self.next_port = [rng.randrange(32768, 40000) for _ in range(max(256, flows // FLOWS_PER_CLIENT))]

    def __call__(self):
        rng = self.rng
        client = rng.randrange(len(self.next_port))
        sport = self.next_port[client]
        self.next_port[client] = sport + 1 + rng.randrange(4)
        server = rng.randrange(SERVERS)
        return (
            struct.pack("!I", (10 << 24 | 1 << 16) + client),
            struct.pack("!I", (172 << 24 | 16 << 16 | 1 << 8) + server),
            (sport, rng.choice(SERVER_PORTS)),
        )


def _write(out, flows, rng, stats):
    """Merge all flows in time order and write their pcap records to ``out``."""
    pool = rng.randbytes(1 << 20)
    endpoints = _Endpoints(rng, flows)
    heap, batch = [], []
    started, next_start, last = 0, 0.0, -1
    while started < flows or heap:
        if started < flows and (not heap or next_start <= heap[0][0]):
            gaps, frames = _build_flow(rng, pool, stats, endpoints())
            heapq.heappush(heap, (next_start, started, 0, gaps, frames))
            stats["max_concurrent"] = max(stats["max_concurrent"], len(heap))
            started += 1
            next_start += rng.expovariate(1 / ARRIVAL_GAP_US)
            continue
        when, flow, pos, gaps, frames = heap[0]
        frame = frames[pos]
        last = max(int(when), last + 1)
        batch.append(_RECORD(EPOCH + last // 1_000_000, last % 1_000_000, len(frame), len(frame)))
        batch.append(frame)
        pos += 1
        if pos < len(frames):
            heapq.heapreplace(heap, (when + gaps[pos], flow, pos, gaps, frames))
        else:
            heapq.heappop(heap)
        if len(batch) >= WRITE_BATCH:
            out.write(b"".join(batch))
            stats["packets"] += len(batch) // 2
            batch.clear()
    out.write(b"".join(batch))
    stats["packets"] += len(batch) // 2
    stats["duration_s"] = round(last / 1e6, 6)


def generate(path, *, flows=40_000, seed=1):
    """Write the capture to ``path`` and return what it contains.

    The result counts packets, flows, data segments (first transmissions),
    retransmissions, reordered (swapped) segment pairs, unique payload bytes
    sent by clients and by servers, the most flows open at once, the capture's
    duration and the seconds the generation took.
    """
    started = time.perf_counter()
    stats = dict.fromkeys(
        ("packets", "data_segments", "retransmissions", "reordered",
         "client_bytes", "server_bytes", "max_concurrent"), 0)
    with open(path, "wb") as out:
        out.write(_PCAP_HEADER)
        _write(out, flows, random.Random(seed), stats)
    stats.update(flows=flows, seed=seed, seconds=round(time.perf_counter() - started, 3))
    return stats


def main():
    """Command line entry point: generate and print the counts as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="pcap file to write")
    parser.add_argument("--flows", type=int, default=40_000, help="TCP connections (default 40000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args()
    print(json.dumps(generate(args.out, flows=args.flows, seed=args.seed)))


if __name__ == "__main__":
    main()
