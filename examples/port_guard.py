"""A port guard: inline handlers drop connection attempts to blocked ports, and a custom
event flags HTTP requests with a suspicious path.

Shows the three pieces a middlebox is made of: an inline handler (runs in the core, may set
the packet's verdict), a custom predicate event, and an async consumer of batched events.

    aiomb run examples/port_guard.py --pcap examples/captures/demo.pcapng
    aiomb run examples/port_guard.py --iface IF1 --inline IF2     # live, inline (root): really drops
"""

import aiomb

BLOCKED_PORTS = {25, 8080}


def looks_like_probe(packet):
    """Custom-event predicate: an HTTP request whose path is not '/' (evaluated in the core)."""
    data = packet.payload
    if data.startswith(b"GET ") and not data.startswith(b"GET / "):
        return data.split(b" ", 2)[1].decode("latin-1")
    return False


SUSPICIOUS_REQUEST = aiomb.define_event(aiomb.PACKET_IN, looks_like_probe, name="SUSPICIOUS_REQUEST")

dropped = []


def guard(packet):
    """Inline, at the sender hook: drop every packet of flows to a blocked port."""
    if packet.flow.key.server_port in BLOCKED_PORTS:
        packet.drop()
        dropped.append(packet.flow.id)


def setup(stack):
    """Register the inline handler before the first packet."""
    stack.on(aiomb.PACKET_IN, guard, hook=aiomb.Hook.SENDER)


async def run(stack):
    async with stack.subscribe(SUSPICIOUS_REQUEST) as events:
        async for ev in events:
            print(f"{ev.ts:.6f} suspicious request {ev.value!r} on {ev.key}")
    stats = stack.statistics().engine
    print(f"dropped {stats.dropped_by_verdict} packets of {len(set(dropped))} flows to ports "
          f"{sorted(BLOCKED_PORTS)}")


if __name__ == "__main__":
    import sys

    from aiomb.cli import main

    sys.exit(main(["run", __file__, *sys.argv[1:]]))
