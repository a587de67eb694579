"""Passive ports: real TCP connections and UDP datagrams between two namespaces, seen through a
tc mirror tap on the far end of a monitoring veth pair, with the right flows, both sides'
states, packet counts and bytes (the interface's own counters are the oracle)."""

import json
import sys
import time

import pytest
import trio

import aiomb
from aiomb import CONN_END, CONN_START, UDP_START, EndReason, TcpState

from .lab import PEER

LEFT_IP, RIGHT_IP = "10.201.0.1", "10.201.0.2"
TRANSFERS = [(1000, 200_000), (300_000, 10), (0, 0)]


async def run_peer(ns, *args):
    proc = await trio.run_process(["ip", "netns", "exec", ns, sys.executable, PEER, *map(str, args)],
                                  capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout.decode().splitlines()[-1])


async def wait_until(predicate, what, timeout=10):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def tap(lab, queues=1):
    """Namespaces left/right joined by a<->b; everything through a is mirrored to a root-side port."""
    left, a, right, _, mon = lab.tapped_pair(f"{LEFT_IP}/24", f"{RIGHT_IP}/24", queues=queues)
    return left, a, right, mon


@pytest.mark.parametrize("mode", ["skb", "native"])
async def test_passive_tcp_and_udp_flows(lab, mode):
    left, a, right, mon = tap(lab)
    lab.server(right, RIGHT_IP, 5001)
    sink = lab.peer(right, "udp-sink", RIGHT_IP, 5002)
    assert sink.stdout.readline().strip() == "ready"     # no ICMP port-unreachable replies
    before = lab.counters(a, left)
    port = aiomb.port(mon, mode=mode)
    starts, ends, udp = [], [], []
    t0 = time.time()
    async with aiomb.open_stack(port) as stack:
        assert port.statistics().open and port.statistics().mode == mode
        assert not port.statistics().zerocopy        # veth has no zero-copy: copy mode
        async with stack.subscribe(CONN_START, CONN_END, UDP_START) as sub:
            async def collect():
                async for ev in sub:
                    # a start's handle, while its flow is surely in the table, for its final values
                    item = ev if ev.kind is CONN_END else stack.flow(ev)
                    {CONN_START: starts, CONN_END: ends, UDP_START: udp}[ev.kind].append(item)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)
                results = [await run_peer(left, "client", RIGHT_IP, 5001, up, down) for up, down in TRANSFERS]
                sent = await run_peer(left, "udp", RIGHT_IP, 5002, 20, 300)
                assert all(r["ok"] for r in results), results
                await wait_until(lambda: len(ends) == len(TRANSFERS) and udp, "the flows to end")
                after = lab.counters(a, left)
                frames = (after["tx_packets"] - before["tx_packets"]) + (after["rx_packets"] - before["rx_packets"])
                await wait_until(lambda: port.statistics().received >= frames, "every mirrored frame")
                nursery.cancel_scope.cancel()
        st = port.statistics()
        engine = stack.statistics().engine
    t1 = time.time()
    tx = after["tx_packets"] - before["tx_packets"]
    rx = after["rx_packets"] - before["rx_packets"]
    assert st.received == tx + rx and st.ring_drops == 0
    assert engine.tcp_packets + engine.udp_packets == tx + rx
    assert engine.non_ip == 0 and not engine.malformed

    by_port = {flow.key.client_port: flow for flow in starts}
    flows = [by_port[r["local_port"]] for r in results]
    for flow, (up, down) in zip(flows, TRANSFERS):
        s = flow.statistics()
        assert str(flow.key.client_ip) == LEFT_IP and str(flow.key.server_ip) == RIGHT_IP
        assert flow.key.server_port == 5001
        assert s.end_reason == EndReason.FIN and not s.midstream
        assert t0 < s.first_ts < s.last_ts < t1         # each frame's own arrival time
        # the sequence space each side used (SYN and FIN take one each): exact even if the
        # kernel retransmitted something, which payload_bytes would count again
        assert ((s.client.next_seq - s.client.isn - 2) % 2**32, (s.server.next_seq - s.server.isn - 2) % 2**32) \
            == (16 + up, down)
        assert s.client.payload_bytes >= 16 + up and s.server.payload_bytes >= down
        # the server closes first (it shuts down its side once the download is sent)
        assert (s.server.state, s.client.state) == (TcpState.TIME_WAIT, TcpState.CLOSED)
        # real TCP may send a FIN again (a tail-loss probe): then it is counted as a retransmission
        for side, opener in ((s.client, s.client.syn), (s.server, s.server.synack)):
            assert opener >= 1 and side.fin >= 1
            assert (opener - 1) + (side.fin - 1) <= side.retransmits
    (u,) = udp
    us = u.statistics()
    assert (u.key.client_port, u.key.server_port) == (sent["local_port"], 5002)
    assert (us.client.packets, us.client.payload_bytes, us.server.packets) == (20, 20 * 300, 0)

    # every frame counted on the right side, IP bytes = interface bytes less Ethernet headers
    stats = [f.statistics() for f in flows] + [us]
    assert sum(s.client.packets for s in stats) == tx
    assert sum(s.server.packets for s in stats) == rx
    assert sum(s.client.ip_bytes for s in stats) == after["tx_bytes"] - before["tx_bytes"] - 14 * tx
    assert sum(s.server.ip_bytes for s in stats) == after["rx_bytes"] - before["rx_bytes"] - 14 * rx
    final = port.statistics()          # kept after close
    assert not final.open and final.received == st.received


@pytest.mark.parametrize("mode", ["skb", "native"])
async def test_passive_several_queues(lab, mode):
    """One socket per RX queue, one shared UMEM; every frame is seen whatever queue it took."""
    left, a, right, mon = tap(lab, queues=2)
    lab.server(right, RIGHT_IP, 5001)
    before = lab.counters(a, left)
    port = aiomb.port(mon, mode=mode)
    async with aiomb.open_stack(port) as stack:
        stack.start()
        assert [q.queue for q in port.statistics().queues] == [0, 1]
        flows = []
        async with stack.subscribe(CONN_START) as sub:
            results = [await run_peer(left, "client", RIGHT_IP, 5001, 5000, 50_000) for _ in range(4)]
            while len(flows) < 4:
                flows += [stack.flow(ev) for ev in await sub.receive_batch()]
        assert all(r["ok"] for r in results), results
        after = lab.counters(a, left)
        frames = sum(after[k] - before[k] for k in ("tx_packets", "rx_packets"))
        await wait_until(lambda: port.statistics().received >= frames, "every mirrored frame")
        # a veth spreads one flow's two directions over different queues: the frames of the
        # queues are merged by the arrival time the XDP program stamped on each
        await wait_until(lambda: stack.statistics().engine.flows_ended == 4, "four FIN closes")
        st = port.statistics()
    assert st.received == frames == sum(q.received for q in st.queues)
    assert all(f.end_reason == EndReason.FIN for f in flows)
    assert stack.statistics().engine.flows_created == 4


async def test_passive_prefilter_in_the_kernel(lab):
    """Frames the pre-filter rejects never reach aiomb: only port 5001's connection is seen."""
    left, a, right, mon = tap(lab)
    lab.server(right, RIGHT_IP, 5001)
    sink = lab.peer(right, "udp-sink", RIGHT_IP, 5002)
    assert sink.stdout.readline().strip() == "ready"
    port = aiomb.port(mon, prefilter=aiomb.Prefilter(protocols={"tcp"}, ports={5001}))
    async with aiomb.open_stack(port) as stack:
        async with stack.subscribe(CONN_END) as ends:
            stack.start()
            result = await run_peer(left, "client", RIGHT_IP, 5001, 1000, 1000)
            await run_peer(left, "udp", RIGHT_IP, 5002, 50, 100)
            assert result["ok"]
            with trio.fail_after(10):
                (end,) = await ends.receive_batch()
        engine = stack.statistics().engine
        st = port.statistics()
    assert end.key.server_port == 5001 and end.reason == EndReason.FIN
    assert engine.udp_packets == 0 and engine.flows_created == 1
    assert st.received == engine.packets == engine.tcp_packets
