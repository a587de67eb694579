"""midstat as Trio coroutines: a table of the live connections, with both sides' TCP states,
every second of stack time (compare examples/midstat_epoll.py, the same program as an epoll
loop; they print the same tables).

    aiomb run examples/midstat.py --pcap examples/captures/demo.pcapng
    aiomb run examples/midstat.py --iface MIRROR_PORT                # live (root), until Ctrl-C
"""

import sys

import trio
from midstat_epoll import print_table  # the same table as the epoll version, side by side

import aiomb

live: dict = {}


def setup(stack) -> None:
    """Inline handlers keep the set of live connections exact at every moment."""
    stack.on(aiomb.CONN_START, lambda packet: live.__setitem__(packet.flow.id, packet.flow))
    stack.on(aiomb.CONN_END, lambda packet: live.pop(packet.flow.id, None))


async def run(stack) -> None:
    """Print the table at each tick of a one-second timer, and once more at the end."""
    async with trio.open_nursery() as nursery:
        async def ticks():
            async for _ in stack.timer(1.0, interval=1.0):
                print_table(stack.time(), list(live.values()), sys.stdout)
        nursery.start_soon(ticks)
        await stack.run()
        nursery.cancel_scope.cancel()
    print_table(stack.time(), list(live.values()), sys.stdout)


if __name__ == "__main__":
    from aiomb.cli import main as cli

    sys.exit(cli(["run", __file__, *sys.argv[1:]]))
