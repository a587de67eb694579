"""Teardown: the XDP program is detached and the sockets closed after a normal exit, a handler's
exception and cancellation; after SIGKILL the stale program lets traffic pass (XDP_PASS) and
the next start replaces it; a program that is not aiomb's is refused unless forced.

The port is put on the server's own interface (in its namespace), where it takes every frame
while it runs, so that "traffic flows again" is the proof that it is gone.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import trio
from pyroute2 import IPRoute

import aiomb
from aiomb import PACKET_IN, PortError
from aiomb.io import _bpf, _xdp

from .lab import PEER

LEFT_IP, RIGHT_IP = "10.202.0.1", "10.202.0.2"
HOLD = """
import sys, trio, aiomb
async def main():
    async with aiomb.open_stack(aiomb.port(sys.argv[1], netns=sys.argv[2], mode=sys.argv[3])) as stack:
        stack.start()
        print("ready", flush=True)
        await trio.sleep_forever()
trio.run(main)
"""


def setup(lab):
    left, a, right, b = lab.pair(f"{LEFT_IP}/24", f"{RIGHT_IP}/24")
    lab.server(right, RIGHT_IP, 5001)
    return left, right, b


def connects(left, timeout="0.5") -> bool:
    proc = subprocess.run(["ip", "netns", "exec", left, sys.executable, PEER, "client", RIGHT_IP, "5001",
                           "100", "100", timeout], capture_output=True, text=True, timeout=30)
    return json.loads(proc.stdout)["ok"]


def xdp_state(right, b):
    with IPRoute(netns=right) as ipr:
        return _xdp.query(ipr, ipr.link_lookup(ifname=b)[0])


@pytest.mark.parametrize("mode", ["skb", "native"])
async def test_normal_exit_detaches(lab, mode):
    left, right, b = setup(lab)
    assert connects(left)
    async with aiomb.open_stack(aiomb.port(b, netns=right, mode=mode)) as stack:
        stack.start()
        state = xdp_state(right, b)
        assert (state.mode, state.name) == (mode, "aiomb_xsk")
        assert not await trio.to_thread.run_sync(connects, left)      # the port takes the frames
        assert stack.statistics().engine.tcp_packets >= 1
    assert xdp_state(right, b).mode is None
    assert connects(left)


async def test_handler_exception_detaches(lab):
    left, right, b = setup(lab)

    def boom(packet):
        raise RuntimeError(f"handler failed on {packet.flow.key}")

    with pytest.raises(RuntimeError, match="handler failed on tcp 10.202.0.1:"):
        async with aiomb.open_stack(aiomb.port(b, netns=right)) as stack:
            stack.on(PACKET_IN, boom)
            stack.start()
            await trio.to_thread.run_sync(connects, left)
            await trio.sleep_forever()
    assert xdp_state(right, b).mode is None
    assert connects(left)


async def test_cancellation_detaches(lab):
    left, right, b = setup(lab)
    with trio.move_on_after(0.3) as scope:
        async with aiomb.open_stack(aiomb.port(b, netns=right)) as stack:
            await stack.run()
    assert scope.cancelled_caught
    assert xdp_state(right, b).mode is None
    assert connects(left)


async def test_sigkill_leaves_a_passing_stale_program_replaced_at_next_start(lab):
    left, right, b = setup(lab)
    proc = lab.spawn([sys.executable, "-c", HOLD, b, right, "native"], stdout=subprocess.PIPE,
                     text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.stdout.readline().strip() == "ready"
    assert not connects(left)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = xdp_state(right, b)
    assert (stale.mode, stale.name) == ("native", "aiomb_xsk")    # still attached...
    assert connects(left)                                          # ...but its sockets are gone
    port = aiomb.port(b, netns=right, mode="skb")                  # another mode, even
    async with aiomb.open_stack(port) as stack:
        stack.start()
        now = xdp_state(right, b)
        assert (now.mode, now.name) == ("skb", "aiomb_xsk") and now.prog_id != stale.prog_id
    assert xdp_state(right, b).mode is None
    assert connects(left)


async def test_foreign_program_refused_unless_forced(lab):
    left, right, b = setup(lab)
    foreign = _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP,
                             _bpf.Asm().mov(0, imm=_bpf.XDP_PASS).exit().code(), name="not_ours")
    try:
        with IPRoute(netns=right) as ipr:
            _xdp.attach(ipr, ipr.link_lookup(ifname=b)[0], foreign, "skb")
    finally:
        os.close(foreign)           # stays attached without its fd
    with pytest.raises(PortError, match=rf"^{b} already runs an XDP program that is not aiomb's "
                                        r"\(id \d+, name 'not_ours', skb mode\); detach it .*force=True"):
        async with aiomb.open_stack(aiomb.port(b, netns=right)):
            pass
    assert xdp_state(right, b).name == "not_ours"                   # left alone
    async with aiomb.open_stack(aiomb.port(b, netns=right, force=True)) as stack:
        stack.start()
        assert xdp_state(right, b).name == "aiomb_xsk"
    assert xdp_state(right, b).mode is None
    assert connects(left)


async def test_second_port_on_a_queue_in_use_is_refused_cleanly(lab):
    left, right, b = setup(lab)
    async with aiomb.open_stack(aiomb.port(b, netns=right)) as stack:
        stack.start()
        with pytest.raises(PortError, match=rf"{b} queue 0: cannot bind .*another aiomb running"):
            async with aiomb.open_stack(aiomb.port(b, netns=right)):
                pass
        assert xdp_state(right, b).name == "aiomb_xsk"
    assert xdp_state(right, b).mode is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode must be 'skb'"):
        aiomb.port("x", mode="fast")
    with pytest.raises(ValueError, match="frame_size must be 2048 or 4096"):
        aiomb.port("x", frame_size=1000)
    with pytest.raises(ValueError, match="inline must name a second interface"):
        aiomb.port("x", inline="x")


async def test_unknown_interface_and_namespace():
    with pytest.raises(PortError, match="no interface named 'nosuch0'"):
        async with aiomb.open_stack(aiomb.port("nosuch0")):
            pass
    with pytest.raises(PortError, match="no network namespace 'aiomb-nosuch'"):
        async with aiomb.open_stack(aiomb.port("lo", netns="aiomb-nosuch")):
            pass


async def test_zero_copy_required_but_refused_by_veth(lab):
    left, right, b = setup(lab)
    with pytest.raises(PortError, match=rf"{b} queue 0: cannot bind an AF_XDP socket \(.*\)"):
        async with aiomb.open_stack(aiomb.port(b, netns=right, mode="native", zerocopy=True)):
            pass
    assert xdp_state(right, b).mode is None
    assert connects(left)


async def test_a_port_reopens_after_stop_and_close(lab):
    left, right, b = setup(lab)
    port = aiomb.port(b, netns=right)
    for _ in range(2):
        async with aiomb.open_stack(port) as stack:
            async with stack.subscribe(aiomb.CONN_END) as sub:
                stack.start()
                assert port.statistics().open
                port.stop()                      # input ends: the subscription finishes
                assert [ev async for ev in sub] == []
        assert not port.statistics().open and xdp_state(right, b).mode is None


async def test_cancelled_while_opening_closes_again(lab):
    import threading

    left, right, b = setup(lab)
    opened, release = threading.Event(), threading.Event()

    class SlowPort(aiomb.Port):
        def open(self):
            super().open()
            opened.set()
            release.wait(10)         # the cancellation arrives while the thread still works

    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run():
            with scope:
                async with aiomb.open_stack(SlowPort(b, netns=right)):
                    await trio.sleep_forever()     # cancelled at its first checkpoint
        nursery.start_soon(run)
        await trio.to_thread.run_sync(opened.wait)
        assert xdp_state(right, b).name == "aiomb_xsk"
        scope.cancel()
        release.set()
    assert scope.cancelled_caught
    assert xdp_state(right, b).mode is None
    assert connects(left)
