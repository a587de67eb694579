"""A source NAT (mOS's nat): TCP connections from the inside leave from one address, each with a
port of a pool; the replies are translated back.

    aiomb run examples/nat.py --iface IF --inline IF2 -- --address A --ports LO-HI   # live, inline (root)
    aiomb run examples/nat.py --pcap CAPTURE -- --address A --ports LO-HI            # decides, rewrites nothing

IF faces the inside (the clients), IF2 the outside. Every line printed is a mapping made or freed;
at the end, the counters.

Design. The engine looks a packet's flow up by the packet's own addresses and ports, before any
inline handler runs; a handler may rewrite the packet only at the sender hook, after the lookup.
So the engine sees a NATed connection as two flows: the inside one (client C:c -> server S:s,
the client's packets as they arrive) and the outside one (S:s -> A:a, the server's replies as they
arrive, a flow whose first packet is the SYN-ACK). Translating before the lookup is impossible, so
the NAT keeps its own table, one mapping per connection, keyed both ways:

* ``CONN_START`` of an inside flow (the client's SYN) takes a port ``a`` from the pool (none left:
  counted in ``exhausted``, and the connection's packets are dropped);
* a ``PACKET_IN`` handler at the sender hook rewrites each packet by the table (``rewrite`` updates
  the IP and TCP checksums): from the inside, source C:c -> A:a; to A:a from S:s, destination -> C:c.
  A packet no mapping covers is dropped (``unmatched``): nothing leaves with an inside address,
  nothing enters that the inside did not ask for;
* a mapping ends, and its port goes back to the pool (last, so a port is reused as late as
  possible), when the connection ends: a RST either way, or once both sides sent their FIN, with
  the last ACK; or at ``CONN_END`` of either of its flows (idle timeout, eviction, end of input).

TCP only: UDP packets are dropped (``unmatched``); ICMP and ARP pass untouched. On a capture the
frames are read-only: the NAT makes and frees its mappings and counts as inline, without rewriting.
"""

import argparse
import collections
import ipaddress
import json
import sys

import aiomb

FIN, RST = 0x01, 0x04


class Mapping:
    """One connection: the client's address and port, the server's, and the NAT port."""

    __slots__ = ("client", "server", "port", "fins", "first_fin")

    def __init__(self, client, server, port):
        self.client, self.server, self.port = client, server, port
        self.fins = set()                      # the directions ("out", "in") that sent a FIN
        self.first_fin = None


def parse_options(argv):
    parser = argparse.ArgumentParser(prog="nat.py", description="a source NAT with a port pool")
    parser.add_argument("--address", required=True, help="the NAT's (outside) IP address")
    parser.add_argument("--ports", required=True, metavar="LO-HI", help="the pool of source ports, e.g. 20000-29999")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text")
    args = parser.parse_args(argv)
    try:
        args.address = ipaddress.ip_address(args.address)
    except ValueError:
        parser.error(f"--address {args.address!r} is not an IP address; give the NAT's outside address")
    lo, _, hi = args.ports.partition("-")
    if not (lo.isdigit() and hi.isdigit() and 1 <= int(lo) <= int(hi) <= 65535):
        parser.error(f"--ports {args.ports!r} is not a range LO-HI with 1 <= LO <= HI <= 65535; e.g. 20000-29999")
    args.pool = range(int(lo), int(hi) + 1)
    return args


outbound = {}                   # (client ip, client port, server ip, server port) -> Mapping
inbound = {}                    # NAT port -> Mapping
pool = collections.deque()
counters = collections.Counter()


def report(ts, what, m):
    if OPTIONS.json:
        print(json.dumps({"ts": round(ts, 6), "event": what, "client": f"{m.client[0]}:{m.client[1]}",
                          "server": f"{m.server[0]}:{m.server[1]}", "port": m.port}), flush=True)
    else:
        print(f"{ts:.6f} {what:<5} {m.client[0]}:{m.client[1]} -> {m.server[0]}:{m.server[1]}"
              f" as {OPTIONS.address}:{m.port}", flush=True)


def release(m, ts, why):
    """The connection has ended: its port goes back to the pool."""
    if inbound.get(m.port) is m:
        del inbound[m.port]
        del outbound[(*m.client, *m.server)]
        pool.append(m.port)
        counters["freed"] += 1
        report(ts, why, m)


def on_start(packet):
    """CONN_START: a client's SYN from the inside gets a port of the pool."""
    key = packet.flow.key
    if ADDRESS in (key.client_ip, key.server_ip):
        return                  # the outside flow of a mapping, or a connection to the NAT itself
    if not pool:
        counters["exhausted"] += 1
        return                  # no mapping: its packets are dropped
    m = Mapping((key.client_ip, key.client_port), (key.server_ip, key.server_port), pool.popleft())
    outbound[(*m.client, *m.server)] = inbound[m.port] = m
    counters["mapped"] += 1
    report(packet.ts, "map", m)


def translate(packet):
    """PACKET_IN at the sender hook: rewrite by the table, or drop."""
    if packet.dst == ADDRESS:
        m = inbound.get(packet.dport)
        if m is None or m.server != (packet.src, packet.sport):
            counters["unmatched"] += 1
            packet.drop()
            return
        direction = "in"
        if REWRITE:
            packet.rewrite(dst=m.client[0], dport=m.client[1])
    else:
        m = outbound.get((packet.src, packet.sport, packet.dst, packet.dport))
        if m is None:
            counters["unmatched"] += 1
            packet.drop()
            return
        direction = "out"
        if REWRITE:
            packet.rewrite(src=ADDRESS, sport=m.port)
    counters[direction] += 1
    flags = packet.tcp_flags
    if flags & RST:
        release(m, packet.ts, "rst")
    elif flags & FIN:
        m.fins.add(direction)
        m.first_fin = m.first_fin or direction
    elif len(m.fins) == 2 and direction == m.first_fin:
        release(m, packet.ts, "fin")            # the last ACK of the close has gone through


def on_end(packet):
    """CONN_END of either flow of a mapping (idle timeout, eviction, end of input)."""
    key = packet.flow.key
    if key.client_ip == ADDRESS:
        m = inbound.get(key.client_port)
        if m is not None and m.server == (key.server_ip, key.server_port):
            release(m, packet.ts if packet.ts is not None else 0.0, "end")
    elif (m := outbound.get((key.client_ip, key.client_port, key.server_ip, key.server_port))) is not None:
        release(m, packet.ts if packet.ts is not None else 0.0, "end")


def setup(stack):
    global REWRITE
    REWRITE = getattr(stack.source, "inline", None) is not None     # an inline port's frames are writable
    pool.extend(OPTIONS.pool)
    stack.on(aiomb.CONN_START, on_start, hook=aiomb.Hook.SENDER)
    stack.on(aiomb.PACKET_IN, translate, hook=aiomb.Hook.SENDER)
    stack.on(aiomb.CONN_END, on_end)


async def run(stack):
    await stack.run()
    summary = {"mapped": counters["mapped"], "freed": counters["freed"], "open": len(inbound),
               "exhausted": counters["exhausted"], "unmatched": counters["unmatched"],
               "packets_out": counters["out"], "packets_in": counters["in"], "rewritten": REWRITE}
    if OPTIONS.json:
        print(json.dumps(summary))
    else:
        print(", ".join(f"{k} {v}" for k, v in summary.items()))


if __name__ == "__main__":            # python examples/nat.py --pcap CAPTURE -- --address A --ports LO-HI
    from aiomb.cli import main

    sys.exit(main(["run", __file__, *sys.argv[1:]]))
else:                                  # loaded by aiomb run: what follows -- is sys.argv[1:]
    OPTIONS = parse_options(sys.argv[1:])
    ADDRESS = OPTIONS.address
    REWRITE = False
