"""A source NAT (mOS's nat): TCP and UDP flows from the inside leave from one address, each with
a port of a pool; the replies are translated back.

    aiomb run examples/nat.py --iface IF --inline IF2 -- --address A --ports LO-HI   # live, inline (root)
    aiomb run examples/nat.py --pcap CAPTURE -- --address A --ports LO-HI            # decides, rewrites nothing

IF faces the inside (the clients), IF2 the outside. Every line printed is a mapping made or freed;
at the end, the counters.

How it works: the NAT only decides; the core translates, with no Python call per packet.

* ``CONN_START`` (a client's SYN; ``UDP_START``) takes a port ``a`` from the pool and binds the
  flow to its outer tuple: ``flow.translate(client=(A, a))``. From then on the client's packets
  leave from A:a (rewritten after the hooks, checksums updated), and the server's replies, which
  arrive for A:a, are translated back to the client *before the flow lookup*: the engine sees one
  flow per connection, both directions (both sides' TCP state, one ``CONN_END``).
* ``CONN_END`` / ``UDP_END`` (FIN close, RST, idle timeout, eviction, end of input) gives the port
  back to the pool, last, so that a port is reused as late as possible.
* What the NAT does not map loses every packet (``unmatched``): flows from the outside to the
  NAT's address, and every flow started while the pool is empty (``exhausted``), through a second
  middlebox whose flow filter (evaluated once per new flow) picks them; TCP packets of no flow
  (``ORPHAN``) too. Nothing leaves with an inside address, nothing enters that the inside did not
  ask for. ICMP and ARP pass untouched.

On N cores (``aiomb run examples/nat.py --iface IF --inline IF2 --workers N -- ...``) each worker
runs its own NAT on the flows steered to it, with its own share of the pool (``aiomb.worker()``:
worker k takes the k-th of N consecutive slices of LO-HI), so no two workers hand out the same
outside port. Each binding tells aiomb's steering program to send the flow's replies (server to
A:a, whatever their address pair) to the worker that made it; a reply that comes in IP fragments
is steered by its address pair instead, and is ``unmatched`` unless that is the same worker (TCP
does not fragment in practice; large UDP answers may).

On a capture (of the NAT's input: the inside's packets, and the replies to A) the frames are
read-only: the NAT makes and frees its mappings, the replies are translated in the engine's view
only (it still sees one flow per connection), drops are counted, not applied; no frame changes.
"""

import argparse
import collections
import ipaddress
import json
import sys

import aiomb


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
    args.ports = range(int(lo), int(hi) + 1)
    return args


def share(ports):
    """This worker's share of the pool (``aiomb.worker()``, known once the worker runs: in setup)."""
    index, workers = aiomb.worker()
    mine = ports[index * len(ports) // workers:(index + 1) * len(ports) // workers]
    if not mine:
        sys.exit(f"nat.py: error: --ports has {len(ports)} ports for {workers} workers: give each worker one at least")
    return mine


pool = collections.deque()
counters = collections.Counter()


def report(ts, what, key, port):
    if OPTIONS.json:
        print(json.dumps({"ts": round(ts, 6), "event": what, "client": f"{key.client_ip}:{key.client_port}",
                          "server": f"{key.server_ip}:{key.server_port}", "port": port}), flush=True)
    else:
        print(f"{ts:.6f} {what:<5} {key.client_ip}:{key.client_port} -> {key.server_ip}:{key.server_port}"
              f" as {OPTIONS.address}:{port}", flush=True)


def from_outside(key):
    return ADDRESS in (key.client_ip, key.server_ip)


class Unmapped:
    """The flow filter of the middlebox that drops what the NAT does not map; the core asks it
    once per new flow, just before that flow's CONN_START / UDP_START."""

    def matches(self, key):
        return from_outside(key) or not pool


def bind(packet):
    """CONN_START / UDP_START: a flow from the inside gets a port of the pool."""
    flow = packet.flow
    if from_outside(flow.key):
        return
    if not pool:
        counters["exhausted"] += 1
        return
    port = pool.popleft()
    flow.translate(client=(ADDRESS, port))
    counters["mapped"] += 1
    report(packet.ts, "map", flow.key, port)


def release(packet):
    """CONN_END / UDP_END: the flow has ended, its port goes back to the pool."""
    flow = packet.flow
    if flow.translation is not None:
        port = flow.translation[0][1]
        pool.append(port)
        counters["freed"] += 1
        report(packet.ts, flow.end_reason.name.lower(), flow.key, port)


def drop(packet):
    """A packet of a flow the NAT did not map, or a TCP packet of no flow."""
    counters["unmatched"] += 1
    packet.drop()


def setup(stack):
    global REWRITE
    REWRITE = getattr(stack.source, "inline", None) is not None     # an inline port's frames are writable
    pool.extend(share(OPTIONS.ports))
    for kind in (aiomb.CONN_START, aiomb.UDP_START):
        stack.on(kind, bind)
    for kind in (aiomb.CONN_END, aiomb.UDP_END):
        stack.on(kind, release)
    stack.on(aiomb.ORPHAN, drop, hook=aiomb.Hook.SENDER)
    stack.middlebox("unmapped", filter=Unmapped()).on(aiomb.PACKET_IN, drop, hook=aiomb.Hook.SENDER)


async def run(stack):
    await stack.run()
    engine = stack.statistics().engine
    summary = {"mapped": counters["mapped"], "freed": counters["freed"], "open": counters["mapped"] - counters["freed"],
               "exhausted": counters["exhausted"], "unmatched": counters["unmatched"], "flows": engine.flows_created,
               "translated": engine.translated_packets, "rewritten": REWRITE}
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
