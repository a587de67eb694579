"""A live port under Trio guest mode on a running asyncio loop (as in a Jupyter notebook):
pyroute2's synchronous IPRoute cannot run inside that loop, so the port does its netlink work
in a worker thread; opening, receiving and detaching must all work there."""

import asyncio
import json
import sys

import trio
from pyroute2 import IPRoute

import aiomb
from aiomb.io import _xdp

from .lab import PEER

LEFT_IP, RIGHT_IP = "10.206.0.1", "10.206.0.2"


def test_port_in_trio_guest_mode_on_asyncio(lab):
    watch = lab.netns("w")
    left, _, right, _, n = lab.tapped_pair(f"{LEFT_IP}/24", f"{RIGHT_IP}/24", mon_ns=watch)
    lab.server(right, RIGHT_IP, 5001)

    def attached():
        with IPRoute(netns=watch) as ipr:
            return _xdp.query(ipr, ipr.link_lookup(ifname=n)[0]).name

    async def trio_main():
        ends = []
        async with aiomb.open_stack(aiomb.port(n, netns=watch)) as stack:
            async with stack.subscribe(aiomb.CONN_END) as sub:
                stack.start()
                seen_attached = await trio.to_thread.run_sync(attached)
                proc = await trio.run_process(
                    ["ip", "netns", "exec", left, sys.executable, PEER, "client", RIGHT_IP, "5001",
                     "1000", "1000"], capture_stdout=True)
                with trio.fail_after(10):
                    ends += await sub.receive_batch()
        return seen_attached, json.loads(proc.stdout), ends

    async def asyncio_main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        trio.lowlevel.start_guest_run(
            trio_main, run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=lambda outcome: done.set_result(outcome))
        return (await done).unwrap()

    seen_attached, result, ends = asyncio.run(asyncio_main())
    assert seen_attached == "aiomb_xsk" and result["ok"]
    assert [ev.key.server_port for ev in ends] == [5001]
    assert attached() is None
