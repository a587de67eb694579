"""A flow monitor: one line per connection start and end, then a summary.

Run it on the bundled capture:  aiomb run examples/flow_monitor.py --pcap examples/captures/demo.pcapng
or directly:                    python examples/flow_monitor.py --pcap CAPTURE
live (root), until Ctrl-C:      aiomb run examples/flow_monitor.py --iface MIRROR_PORT
"""

import collections

import aiomb


async def run(stack):
    """Print connection and UDP-flow starts and ends as they happen; a summary at the end."""
    ends = collections.Counter()
    async with stack.subscribe(aiomb.CONN_START, aiomb.CONN_END, aiomb.UDP_START, aiomb.UDP_END) as events:
        async for ev in events:
            if ev.kind in (aiomb.CONN_START, aiomb.UDP_START):
                print(f"{ev.ts:.6f} start  {ev.key}")
                continue
            st = ev.stats
            ends[str(ev.reason)] += 1
            print(f"{ev.ts:.6f} end    {ev.key}  {ev.reason}  "
                  f"packets {st.client.packets}/{st.server.packets}  "
                  f"payload {st.client.payload_bytes}/{st.server.payload_bytes} bytes")
    total = sum(ends.values())
    print(f"{total} flows: " + ", ".join(f"{n} {reason}" for reason, n in sorted(ends.items())))


if __name__ == "__main__":
    import sys

    from aiomb.cli import main

    sys.exit(main(["run", __file__, *sys.argv[1:]]))
