"""Plain-Python flow tracker on dpkt: the pure-Python baseline of the benchmarks.

Reads a pcap with ``dpkt.pcap.Reader``, parses Ethernet/IPv4/TCP and keeps one
record per canonical 5-tuple with per-side packet and byte counters and a
minimal TCP state (SYN seen, FIN per side, RST).  A connection starts at its
first SYN and ends when both sides have sent a FIN or either sent a RST; a
SYN on an ended flow starts a new connection.

Usage: python bench/dpkt_flows.py FILE.pcap   (prints the counts as JSON)
"""

import json
import sys
import time

import dpkt

TCP = dpkt.ip.IP_PROTO_TCP

# Indexes into a flow record (a list, for speed).
PACKETS = (0, 1)  # per side: side 0 is the lower (address, port) endpoint
BYTES = (2, 3)
SYN, FIN_0, FIN_1, RST = 4, 5, 6, 7
FINS = (FIN_0, FIN_1)


def _new_record():
    """A flow record: per-side packets and bytes, then the TCP state flags."""
    return [0, 0, 0, 0, False, False, False, False]


def _update(record, side, tcp, counts):
    """Account one TCP segment and count connection starts and ends."""
    record[PACKETS[side]] += 1
    record[BYTES[side]] += len(tcp.data)
    flags = tcp.flags
    ended = record[RST] or (record[FIN_0] and record[FIN_1])
    if flags & dpkt.tcp.TH_SYN and not flags & dpkt.tcp.TH_ACK and (ended or not record[SYN]):
        record[SYN] = True
        record[FIN_0] = record[FIN_1] = record[RST] = ended = False
        counts["conn_starts"] += 1
    if not record[SYN] or ended:
        return
    if flags & dpkt.tcp.TH_FIN:
        record[FINS[side]] = True
    if flags & dpkt.tcp.TH_RST:
        record[RST] = True
    if record[RST] or (record[FIN_0] and record[FIN_1]):
        counts["conn_ends"] += 1


def track(path):
    """Track all TCP flows of ``path``; return the counts and the flow table."""
    counts = {"packets": 0, "conn_starts": 0, "conn_ends": 0}
    flows = {}
    with open(path, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            counts["packets"] += 1
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP) or ip.p != TCP:
                continue
            tcp = ip.data
            a, b = (ip.src, tcp.sport), (ip.dst, tcp.dport)
            key, side = ((a, b), 0) if a < b else ((b, a), 1)
            record = flows.get(key)
            if record is None:
                record = flows[key] = _new_record()
            _update(record, side, tcp, counts)
    return counts, flows


def run(path):
    """Time one tracking pass over ``path``.

    Returns packets, flows (distinct 5-tuples), conn_starts, conn_ends and
    seconds (wall time of the whole pass, including reading the file).
    """
    started = time.perf_counter()
    counts, flows = track(path)
    seconds = time.perf_counter() - started
    return dict(counts, flows=len(flows), seconds=round(seconds, 6))


def main():
    """Command line entry point."""
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    print(json.dumps(dict(run(sys.argv[1]), tool="dpkt")))


if __name__ == "__main__":
    main()
