"""Inline ports: client namespace <-> aiomb between two veth ends (in a middle namespace) <->
server namespace. Frames received on one end are sent out of the other through the TX ring
(one shared UMEM, no copy) unless a handler drops them; sender-hook handlers may rewrite them."""

import json
import sys

import pytest
import trio

import aiomb
from aiomb import CONN_END, PACKET_IN, EndReason, Hook

from .lab import PEER

CLIENT_IP, SERVER_IP, VIRTUAL_IP = "10.203.0.1", "10.203.0.2", "10.203.0.100"


def topology(lab, queues=1):
    """client c <-> [x | mid | y] <-> s server; static neighbours, no ARP."""
    client, mid, server = lab.netns("c"), lab.netns("m"), lab.netns("s")
    c, x = lab.veth("c", "x", a_ns=client, b_ns=mid, queues=queues)
    y, s = lab.veth("y", "s", a_ns=mid, b_ns=server, queues=queues)
    lab.address(client, c, f"{CLIENT_IP}/24")
    lab.address(server, s, f"{SERVER_IP}/24")
    s_mac = lab.mac(s, server)
    lab.neighbour(client, c, SERVER_IP, s_mac)
    lab.neighbour(client, c, VIRTUAL_IP, s_mac)
    lab.neighbour(server, s, CLIENT_IP, lab.mac(c, client))
    return client, mid, server, x, y


async def transfer(ns, ip, port, up, down, timeout=20):
    argv = ["ip", "netns", "exec", ns, sys.executable, PEER, "client", ip, port, up, down, timeout]
    proc = await trio.run_process([str(a) for a in argv], capture_stdout=True, check=False)
    return json.loads(proc.stdout.decode().splitlines()[-1])


async def wait_until(predicate, what, timeout=10):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


@pytest.mark.parametrize("mode", ["skb", "native"])
async def test_inline_multi_megabyte_transfers_are_byte_exact(lab, mode):
    client, mid, server, x, y = topology(lab)
    lab.server(server, SERVER_IP, 5001)
    port = aiomb.port(x, inline=y, netns=mid, mode=mode)
    async with aiomb.open_stack(port) as stack:
        async with stack.subscribe(CONN_END) as ends:
            stack.start()
            async with trio.open_nursery() as nursery:
                results = []

                async def one(up, down):
                    results.append(await transfer(client, SERVER_IP, 5001, up, down))
                for up, down in [(4_000_000, 3_000_000), (100, 6_000_000), (5_000_000, 0)]:
                    nursery.start_soon(one, up, down)
            assert len(results) == 3 and all(r["ok"] for r in results), results
            got = []
            with trio.fail_after(10):
                async for ev in ends:
                    got.append(ev)
                    if len(got) == 3:
                        break
        st = port.statistics()
    assert all(ev.reason == EndReason.FIN for ev in got)
    assert st.inline and st.interfaces == (x, y)
    assert st.received == st.forwarded and st.dropped_by_verdict == 0 and st.tx_dropped == 0
    assert st.received_bytes > 18_000_000
    by_if = {q.interface: q for q in st.queues}
    assert by_if[x].received == by_if[y].forwarded and by_if[y].received == by_if[x].forwarded


async def test_inline_drop_by_port(lab):
    client, mid, server, x, y = topology(lab)
    lab.server(server, SERVER_IP, 5001)
    lab.server(server, SERVER_IP, 5002)

    def guard(packet):
        if packet.flow.key.server_port == 5002:
            packet.drop()

    port = aiomb.port(x, inline=y, netns=mid)
    async with aiomb.open_stack(port) as stack:
        stack.on(PACKET_IN, guard, hook=Hook.SENDER)
        stack.start()
        blocked = await transfer(client, SERVER_IP, 5002, 1000, 1000, timeout=1)
        allowed = await transfer(client, SERVER_IP, 5001, 200_000, 200_000)
        st = port.statistics()
    assert not blocked["ok"] and "timed out" in blocked["error"]
    assert allowed["ok"], allowed
    assert st.dropped_by_verdict >= 1                     # the SYN (and any retransmission)
    assert stack.statistics().engine.dropped_by_verdict == st.dropped_by_verdict


async def test_inline_nat_rewrites_address_and_port(lab):
    """A tiny NAT: the client talks to VIRTUAL_IP:8080, the server listens on SERVER_IP:5001."""
    client, mid, server, x, y = topology(lab)
    lab.server(server, SERVER_IP, 5001)
    rewritten = {"out": 0, "back": 0}
    translated = set()           # (client ip, client port) of the connections we translated

    def nat(packet):
        if str(packet.dst) == VIRTUAL_IP and packet.dport == 8080:
            translated.add((str(packet.src), packet.sport))
            packet.rewrite(dst=SERVER_IP, dport=5001)
            assert (str(packet.dst), packet.dport) == (SERVER_IP, 5001)     # the view shows it
            rewritten["out"] += 1
        elif str(packet.src) == SERVER_IP and packet.sport == 5001 \
                and (str(packet.dst), packet.dport) in translated:
            packet.rewrite(src=VIRTUAL_IP, sport=8080)
            rewritten["back"] += 1

    port = aiomb.port(x, inline=y, netns=mid)
    async with aiomb.open_stack(port, midstream=True) as stack:
        stack.on(PACKET_IN, nat, hook=Hook.SENDER)
        stack.start()
        results = [await transfer(client, VIRTUAL_IP, 8080, 300_000, 700_000) for _ in range(2)]
        direct = await transfer(client, SERVER_IP, 5001, 1000, 1000)   # not translated
    assert all(r["ok"] for r in results), results
    assert direct["ok"], direct
    assert rewritten["out"] > 200 and rewritten["back"] > 500


async def test_rewrite_refused_on_read_only_frames():
    from aiomb.testing import udp_frame
    engine = aiomb.Engine()
    errors = []

    def handler(packet):
        try:
            packet.rewrite(dport=1)
        except RuntimeError as exc:
            errors.append(str(exc))
    engine.add_handler(PACKET_IN, handler, hook=Hook.SENDER)
    engine.feed(udp_frame("10.0.0.1", "10.0.0.2", 1000, 53, b"x"), 1.0)
    assert errors == ["this packet's frame is read-only: only inline ports "
                      "(aiomb.port(..., inline=...)) let handlers rewrite packets"]


async def test_inline_prefilter_bypass_forwards_in_the_kernel(lab):
    """Inline, the frames the pre-filter rejects are forwarded by the kernel, unseen by aiomb."""
    client, mid, server, x, y = topology(lab)
    lab.server(server, SERVER_IP, 5001)
    lab.server(server, SERVER_IP, 5002)
    port = aiomb.port(x, inline=y, netns=mid, prefilter={"ports": {5001}})
    async with aiomb.open_stack(port) as stack:
        stack.start()
        watched = await transfer(client, SERVER_IP, 5001, 100_000, 100_000)
        bypassed = await transfer(client, SERVER_IP, 5002, 300_000, 300_000)
        flows = stack.flows()
        st = port.statistics()
    assert watched["ok"] and bypassed["ok"], (watched, bypassed)
    assert {f.key.server_port for f in flows} == {5001}
    assert st.forwarded == st.received < 400          # the 5002 transfer never reached aiomb


async def test_inline_ipv6_transfer_and_rewrite(lab):
    """IPv6 end to end through an inline port, with a handler rewriting the port both ways."""
    client, mid, server = lab.netns("c", ipv6=True), lab.netns("m"), lab.netns("s", ipv6=True)
    c, x = lab.veth("c", "x", a_ns=client, b_ns=mid)
    y, s = lab.veth("y", "s", a_ns=mid, b_ns=server)
    cip, sip = "fd00:203::1", "fd00:203::2"
    lab.address(client, c, f"{cip}/64")
    lab.address(server, s, f"{sip}/64")
    lab.neighbour(client, c, sip, lab.mac(s, server))
    lab.neighbour(server, s, cip, lab.mac(c, client))
    lab.server(server, sip, 5001)

    translated = set()

    def nat(packet):
        if packet.dport == 8080:
            translated.add(packet.sport)
            packet.rewrite(dport=5001)
        elif packet.sport == 5001 and packet.dport in translated:
            packet.rewrite(sport=8080)

    port = aiomb.port(x, inline=y, netns=mid)
    async with aiomb.open_stack(port, midstream=True) as stack:
        stack.on(PACKET_IN, nat, hook=Hook.SENDER)
        stack.start()
        direct = await transfer(client, sip, 5001, 500_000, 500_000)
        natted = await transfer(client, sip, 8080, 200_000, 300_000)
        keys = {(f.key.ip_version, f.key.server_port) for f in stack.flows()}
    assert direct["ok"] and natted["ok"], (direct, natted)
    assert (6, 5001) in keys and (6, 8080) in keys


HOLD_INLINE = """
import sys, trio, aiomb
async def main():
    port = aiomb.port(sys.argv[1], inline=sys.argv[2], netns=sys.argv[3])
    async with aiomb.open_stack(port) as stack:
        stack.start()
        print("ready", flush=True)
        await trio.sleep_forever()
trio.run(main)
"""


async def test_inline_after_sigkill_the_next_start_replaces_both_stale_programs(lab):
    import os
    import signal
    import subprocess

    from pyroute2 import IPRoute

    from aiomb.io import _xdp

    def names():
        with IPRoute(netns=mid) as ipr:
            return [_xdp.query(ipr, ipr.link_lookup(ifname=dev)[0]).name for dev in (x, y)]

    client, mid, server, x, y = topology(lab)
    lab.server(server, SERVER_IP, 5001)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = lab.spawn([sys.executable, "-c", HOLD_INLINE, x, y, mid], cwd=repo, stdout=subprocess.PIPE,
                     text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert (await transfer(client, SERVER_IP, 5001, 10_000, 10_000))["ok"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert names() == ["aiomb_xsk", "aiomb_xsk"]                  # stale, passing to the kernel
    async with aiomb.open_stack(aiomb.port(x, inline=y, netns=mid)) as stack:
        stack.start()
        assert (await transfer(client, SERVER_IP, 5001, 100_000, 100_000))["ok"]
    assert names() == [None, None]


async def test_inline_several_queues_native(lab):
    """Two RX queues on each side: four sockets on one UMEM, each forwarding to its peer's queue."""
    client, mid, server, x, y = topology(lab, queues=2)
    lab.server(server, SERVER_IP, 5001)
    port = aiomb.port(x, inline=y, netns=mid, mode="native")
    async with aiomb.open_stack(port) as stack:
        stack.start()
        async with trio.open_nursery() as nursery:
            results = []

            async def one():
                results.append(await transfer(client, SERVER_IP, 5001, 1_000_000, 1_000_000))
            for _ in range(4):
                nursery.start_soon(one)
        st = port.statistics()
    assert len(results) == 4 and all(r["ok"] for r in results), results
    assert [(q.interface, q.queue) for q in st.queues] == [(x, 0), (x, 1), (y, 0), (y, 1)]
    assert st.received == st.forwarded and st.tx_dropped == 0
