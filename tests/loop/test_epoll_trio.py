"""pytest-trio: the epoll object under Trio, through ``apoll`` and through ``wait_readable``."""

import select

import trio

import aiomb
from aiomb import Side

from ..core.test_epoll import EXPECTED, HUP, IN, accept_all, nest_capture


async def run(ep, mon, wait):
    socks, seen, watched = {}, {}, {mon.fileno()}
    while watched:
        for fd, mask in await wait():
            if fd == mon.fileno():
                for sock in accept_all(mon):
                    socks[sock.fileno()] = sock
                    seen[sock.flow_id] = b""
                    ep.register(sock, IN)
                    watched.add(sock.fileno())
            else:
                try:
                    seen[socks[fd].flow_id] += socks[fd].recv(1 << 20, Side.CLIENT)
                except BlockingIOError:
                    pass
            if mask & HUP:
                ep.unregister(fd)
                watched.discard(fd)
    return seen


async def test_apoll_runs_a_capture_without_blocking_trio(tmp_path):
    mon = aiomb.monitor(aiomb.capture(nest_capture(tmp_path)), batch_size=8)
    ep = aiomb.epoll()
    ep.register(mon, IN)
    ticks = 0

    async def other_task():
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            assert await run(ep, mon, ep.apoll) == EXPECTED
            nursery.cancel_scope.cancel()
    finally:
        mon.close()
    assert ticks > 1                                    # Trio went on running meanwhile


async def test_wait_readable_on_fileno_then_poll_zero(tmp_path):
    mon = aiomb.monitor(aiomb.capture(nest_capture(tmp_path)), batch_size=8)
    ep = aiomb.epoll()
    ep.register(mon, select.EPOLLIN)

    async def wait():
        while True:
            ready = ep.poll(0)
            if ready:
                return ready
            await trio.lowlevel.wait_readable(ep.fileno())

    try:
        assert await run(ep, mon, wait) == EXPECTED
    finally:
        mon.close()
