"""open_stack() end to end under Trio: captures written with aiomb.testing, events read back.

Covers delivery (order, batching, backpressure), start/finish semantics, cancellation, error
propagation, middlebox chains, custom events, verdicts and closing subscriptions. Time only
matters through Trio's clock, so the tests that wait use ``autojump_clock``; none sleeps for real.
"""

import collections
import functools
import math

import pytest
import trio
import trio.testing

import aiomb
from aiomb import (
    CONN_END,
    CONN_START,
    PACKET_IN,
    UDP_START,
    EndReason,
    FlowKey,
    Hook,
    Proto,
    Side,
    define_event,
    open_stack,
)
from aiomb.io._capture import CaptureSource
from aiomb.testing import TcpConversation, tcp_frame, udp_frame, write_pcap, write_pcapng

WRITERS = {"pcap": write_pcap, "pcapng": write_pcapng}


# -- capture builders -------------------------------------------------------------------


def _client(i: int) -> tuple[str, int]:
    return (f"10.1.{i // 250}.{i % 250 + 1}", 40000 + i % 1000)


@functools.cache
def rst_flows(n: int) -> tuple:
    """``n`` two-packet flows (SYN, then the server's RST+ACK), one after the other.

    Each packet raises exactly one of CONN_START / CONN_END, so a stack batch of k packets
    carries exactly k such events. Even flows go to port 80, odd ones to port 443.
    """
    frames = []
    for i in range(n):
        conv = TcpConversation(
            _client(i), ("10.0.0.2", 80 if i % 2 == 0 else 443),
            start_ts=1.0 + i * 1e-4, ts_step=1e-5)
        conv.syn()
        conv.rst("server", flags="RA")
        frames += conv.frames
    return tuple(frames)


def rst_flow_key(i: int) -> FlowKey:
    ip, port = _client(i)
    return FlowKey(proto=Proto.TCP, client_ip=ip, client_port=port, server_ip="10.0.0.2",
                   server_port=80 if i % 2 == 0 else 443)


def rst_flow_summaries(n: int) -> list:
    """What :func:`summary` gives for each event of ``rst_flows(n)``, in order."""
    expected = []
    for i in range(n):
        expected += [(CONN_START, rst_flow_key(i), Side.CLIENT, None),
                     (CONN_END, rst_flow_key(i), Side.SERVER, EndReason.RST)]
    return expected


def write_rst_flows(tmp_path, n: int, fmt: str = "pcap"):
    path = tmp_path / f"rst{n}.{fmt}"
    WRITERS[fmt](path, rst_flows(n))
    return path


def full_conversation(client, server, *, start_ts, ts_step=0.01, log=None):
    """Handshake, data both ways, FIN close: 8 frames. ``log`` gets the sender of each."""
    conv = TcpConversation(client, server, start_ts=start_ts, ts_step=ts_step)
    steps = [
        ("client", conv.syn), ("server", conv.syn_ack), ("client", lambda: conv.ack("client")),
        ("client", lambda: conv.send("client", b"GET / foo bar")),
        ("server", lambda: conv.send("server", b"200 OK")),
        ("client", lambda: conv.fin("client")), ("server", lambda: conv.fin("server")),
        ("client", lambda: conv.ack("client")),
    ]
    for side, step in steps:
        step()
        if log is not None:
            log.append(side)
    return conv


def two_port_capture(tmp_path):
    """A port-80 and a port-443 conversation, interleaved. Returns (path, per-frame info).

    Per-frame info is (server_port, sender side) in capture order.
    """
    log80, log443 = [], []
    c80 = full_conversation(("10.0.0.1", 40001), ("10.0.0.2", 80), start_ts=1.0, log=log80)
    c443 = full_conversation(("10.0.0.3", 40002), ("10.0.0.4", 443), start_ts=1.005, log=log443)
    tagged = [(ts, f, 80, s) for (ts, f), s in zip(c80.frames, log80)]
    tagged += [(ts, f, 443, s) for (ts, f), s in zip(c443.frames, log443)]
    tagged.sort(key=lambda t: t[0])
    path = tmp_path / "two.pcap"
    write_pcap(path, [(ts, f) for ts, f, _, _ in tagged])
    side = {"client": Side.CLIENT, "server": Side.SERVER}
    return path, [(port, side[s]) for _, _, port, s in tagged]


KEY80 = FlowKey(proto=Proto.TCP, client_ip="10.0.0.1", client_port=40001,
                server_ip="10.0.0.2", server_port=80)
KEY443 = FlowKey(proto=Proto.TCP, client_ip="10.0.0.3", client_port=40002,
                 server_ip="10.0.0.4", server_port=443)


class CountingSource(CaptureSource):
    """A capture source that counts the non-empty batches it hands to the stack."""

    def __init__(self, path, **options):
        super().__init__(path, **options)
        self.fills = 0
        self.opened = 0

    def open(self):
        self.opened += 1
        super().open()

    async def receive(self, batch):
        n = await super().receive(batch)
        if n:
            self.fills += 1
        return n


def summary(ev):
    """The comparable content of an event (Event equality also works; this reads better)."""
    return (ev.kind, ev.key, ev.side, ev.reason)


async def collect(sub) -> list:
    return [ev async for ev in sub]


async def collect_batches(sub) -> list:
    batches = []
    while True:
        try:
            batches.append(await sub.receive_batch())
        except trio.EndOfChannel:
            return batches


# -- 1. basic ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
async def test_conn_start_and_end_in_order_with_keys_sides_reasons(tmp_path, fmt):
    # A: FIN close (8 frames from 1.000, every 10 ms); B: handshake then a client RST
    # (4 frames from 1.005); C: IPv6, handshake and data, left open (5 frames from 1.002);
    # then one UDP datagram at 1.100, which CONN_* subscribers must not see.
    a = full_conversation(("10.0.0.1", 40001), ("10.0.0.2", 80), start_ts=1.0)
    b = TcpConversation(("10.0.0.3", 40002), ("10.0.0.4", 443), start_ts=1.005, ts_step=0.01)
    b.handshake()
    b.rst("client")
    c = TcpConversation(("fd00::1", 40003), ("fd00::2", 22), start_ts=1.002, ts_step=0.01)
    c.handshake()
    c.send("client", b"ssh")
    c.send("server", b"ssh")
    frames = sorted(a.frames + b.frames + c.frames, key=lambda r: r[0])
    frames.append((1.1, udp_frame("10.0.0.9", "10.0.0.10", 5353, 53, b"q")))
    path = tmp_path / f"basic.{fmt}"
    WRITERS[fmt](path, frames)

    key_a = FlowKey(proto=Proto.TCP, client_ip="10.0.0.1", client_port=40001,
                    server_ip="10.0.0.2", server_port=80)
    key_b = FlowKey(proto=6, client_ip="10.0.0.3", client_port=40002,
                    server_ip="10.0.0.4", server_port=443)
    key_c = FlowKey(proto=Proto.TCP, client_ip="fd00::1", client_port=40003,
                    server_ip="fd00::2", server_port=22)

    async with open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(CONN_START, CONN_END) as sub:
            events = await collect(sub)
        stats = stack.statistics()

    assert [summary(ev) for ev in events] == [
        (CONN_START, key_a, Side.CLIENT, None),
        (CONN_START, key_c, Side.CLIENT, None),
        (CONN_START, key_b, Side.CLIENT, None),
        (CONN_END, key_b, Side.CLIENT, EndReason.RST),       # B's RST, at 1.035
        (CONN_END, key_a, Side.CLIENT, EndReason.FIN),       # A's last ACK, at 1.070
        (CONN_END, key_c, None, EndReason.END_OF_CAPTURE),   # at the last packet's time
    ]
    assert [ev.ts for ev in events] == pytest.approx(
        [1.0, 1.002, 1.005, 1.035, 1.07, 1.1], abs=1e-9)
    assert [ev.flow_id for ev in events] == [1, 2, 3, 3, 1, 2]
    assert [ev.stats.end_reason for ev in events[3:]] == [
        EndReason.RST, EndReason.FIN, EndReason.END_OF_CAPTURE]
    assert [ev.stats.packets for ev in events[3:]] == [4, 8, 5]
    assert all(ev.stats is None for ev in events[:3])
    assert stack.flow(events[0]) is None                 # gone from the table by now
    assert stats.packets == 8 + 4 + 5 + 1 == 18
    assert stats.engine.tcp_packets == 17
    assert stats.engine.udp_packets == 1
    assert stats.engine.flows_created == 4
    assert stats.engine.flows_ended == 4
    assert stats.batches == 1                        # 18 frames < default batch_size
    assert stats.events_delivered == 6
    assert stats.source_pauses == 0
    assert stats.finished is True


async def test_udp_start_alone_and_statistics_before_start(tmp_path):
    path = tmp_path / "udp.pcap"
    write_pcap(path, [(1.0 + i, udp_frame("10.0.0.1", "10.0.0.2", 1000 + i, 53, b"x"))
                      for i in range(3)])
    async with open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(UDP_START) as sub:
            before = stack.statistics()
            events = await collect(sub)
    assert (before.packets, before.batches, before.finished, before.subscriptions) == (0, 0, False, 1)
    assert [(ev.kind, ev.key.client_port, ev.key.proto) for ev in events] == [
        (UDP_START, 1000, Proto.UDP), (UDP_START, 1001, Proto.UDP), (UDP_START, 1002, Proto.UDP)]


# -- 2. batching ------------------------------------------------------------------------


async def test_events_arrive_in_batches_matching_source_batches(tmp_path):
    path = write_rst_flows(tmp_path, 5000)
    source = CountingSource(path)
    async with open_stack(source, batch_size=512) as stack:
        async with stack.subscribe(CONN_START, CONN_END) as sub:
            batches = await collect_batches(sub)
        stats = stack.statistics()

    packets = 10_000
    assert stats.packets == packets
    assert source.fills == math.ceil(packets / 512) == 20
    assert stats.batches == source.fills
    # one event per packet, one list per source batch
    assert [len(b) for b in batches] == [512] * 19 + [packets - 19 * 512]
    assert all(isinstance(b, list) and b for b in batches)
    flat = [ev for b in batches for ev in b]
    assert [summary(ev) for ev in flat] == rst_flow_summaries(5000)
    assert stats.events_delivered == packets
    assert sub.statistics().events_received == packets


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
async def test_async_for_yields_what_receive_batch_gives(tmp_path, fmt):
    path = write_rst_flows(tmp_path, 3000, fmt)

    async def run(reader):
        async with open_stack(aiomb.capture(path), batch_size=512) as stack:
            async with stack.subscribe(CONN_START, CONN_END) as sub:
                return await reader(sub), stack.statistics().batches

    iterated, n1 = await run(collect)
    batches, n2 = await run(collect_batches)
    flat = [ev for b in batches for ev in b]
    assert len(iterated) == 6000
    assert iterated == flat                       # Event equality: kind, key, side, ts, ...
    assert [ev.ts for ev in iterated] == [ev.ts for ev in flat]
    assert n1 == n2 == len(batches) == math.ceil(6000 / 512)


async def test_mixed_receive_batch_then_async_for(tmp_path):
    path = write_rst_flows(tmp_path, 1000)
    async with open_stack(aiomb.capture(path), batch_size=100) as stack:
        async with stack.subscribe(CONN_START, CONN_END) as sub:
            first = await sub.receive_batch()
            rest = await collect(sub)
    assert len(first) == 100
    assert [summary(ev) for ev in first + rest][:4] == [
        (CONN_START, rst_flow_key(0), Side.CLIENT, None),
        (CONN_END, rst_flow_key(0), Side.SERVER, EndReason.RST),
        (CONN_START, rst_flow_key(1), Side.CLIENT, None),
        (CONN_END, rst_flow_key(1), Side.SERVER, EndReason.RST)]
    assert len(first) + len(rest) == 2000


async def leave_async_for(sub, how: str, at: int) -> list:
    """Iterate ``sub`` until the ``at``-th event, then leave the loop by ``how``: "break", or
    "cancel" (the scope is cancelled there; iteration goes on until it notices). The events seen."""
    seen = []
    with trio.CancelScope() as scope:
        async for ev in sub:
            seen.append(ev)
            if len(seen) == at:
                if how == "break":
                    break
                scope.cancel()
    assert scope.cancelled_caught == (how == "cancel")
    return seen


@pytest.mark.parametrize("receive", ["receive_batch", "receive_batch_nowait"])
@pytest.mark.parametrize(("how", "at"), [("break", 10), ("break", 100), ("cancel", 10)])
async def test_receive_batch_after_leaving_async_for_gives_the_rest_of_that_batch_first(
        tmp_path, receive, how, at):
    # one subscription is one ordered queue, whichever way it is read
    path = write_rst_flows(tmp_path, 300)          # 600 events, 100 a batch
    async with open_stack(aiomb.capture(path), batch_size=100) as stack:
        async with stack.subscribe(CONN_START, CONN_END) as sub:
            seen = await leave_async_for(sub, how, at)
            if receive == "receive_batch_nowait":
                await trio.testing.wait_all_tasks_blocked()     # the source has queued more
                rest = sub.receive_batch_nowait()
            else:
                rest = await sub.receive_batch()
            following = await sub.receive_batch()
            after = await collect(sub)
            received = sub.statistics().events_received
    assert isinstance(rest, list)
    assert len(rest) == 100 - len(seen) % 100      # the rest of the batch, or the next whole one
    assert len(following) == 100
    assert [summary(ev) for ev in seen + rest + following + after] == rst_flow_summaries(300)
    assert received == 600


async def test_receive_batch_is_a_checkpoint_that_leaves_the_rest_of_a_batch_when_cancelled(tmp_path):
    path = write_rst_flows(tmp_path, 100)          # 200 events, 100 a batch
    async with open_stack(aiomb.capture(path), batch_size=100) as stack:
        async with stack.subscribe(CONN_START, CONN_END) as sub:
            seen = await leave_async_for(sub, "break", 10)
            with trio.CancelScope() as scope:
                scope.cancel()
                await sub.receive_batch()
            assert scope.cancelled_caught
            rest = await sub.receive_batch()
    assert [summary(ev) for ev in seen + rest] == rst_flow_summaries(50)


async def test_tasks_iterating_one_subscription_each_get_a_share_of_its_events(tmp_path):
    # every event goes to exactly one of them, as the items of a Trio channel with several
    # receivers do; which one gets which is up to Trio's scheduling
    path = write_rst_flows(tmp_path, 500)
    got = []

    async def worker(sub):
        async for ev in sub:
            got.append(summary(ev))
            await trio.sleep(0)                    # the other task takes its turn mid-batch

    async with open_stack(aiomb.capture(path), batch_size=20) as stack:
        async with stack.subscribe(CONN_START, CONN_END) as sub:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker, sub)
                nursery.start_soon(worker, sub)
    assert len(got) == 1000
    assert collections.Counter(got) == collections.Counter(rst_flow_summaries(500))


async def test_a_consumer_that_keeps_up_is_done_with_a_batch_before_the_next_is_read(tmp_path):
    # Trio runs ready tasks in random order; the pump gives a busy consumer turns first, so
    # a consumer that never awaits anything else is never more than its batch behind
    path = write_rst_flows(tmp_path, 3000)
    behind = []
    async with open_stack(aiomb.capture(path), batch_size=64) as stack:
        async with stack.subscribe(CONN_START, CONN_END) as sub:
            async for _ev in sub:
                behind.append(stack.statistics().packets - sub.statistics().events_received)
    assert len(behind) == 6000
    assert set(behind) == {0}


# -- 3. backpressure --------------------------------------------------------------------


async def test_slow_consumer_pauses_the_source_and_loses_nothing(tmp_path, autojump_clock):
    flows = 2000
    path = write_rst_flows(tmp_path, flows)
    got = []
    async with open_stack(aiomb.capture(path), batch_size=64, max_batches=2) as stack:
        async with stack.subscribe(CONN_START, CONN_END) as sub:
            stack.start()
            await trio.sleep(1)
            stalled = stack.statistics()
            # two batches queued, the third waiting in the pump's send: nothing more is read
            assert stalled.packets == 3 * 64
            assert stalled.batches == 3
            assert stalled.source_pauses == 1
            assert sub.statistics().batches_queued == 2
            assert sub.statistics().max_batches == 2
            await trio.sleep(100)
            assert stack.statistics().packets == 3 * 64
            assert stack.statistics().source_pauses == 1
            async for ev in sub:
                got.append(ev)
                if len(got) % 16 == 0:
                    await trio.sleep(0.5)
                    # read ahead: exactly max_batches + 1 batches beyond what was taken
                    taken = sub.statistics().events_received
                    assert stack.statistics().packets == min(taken + 3 * 64, flows * 2)
        final = stack.statistics()
    assert len(got) == flows * 2
    assert [summary(ev) for ev in got[:2]] == [
        (CONN_START, rst_flow_key(0), Side.CLIENT, None),
        (CONN_END, rst_flow_key(0), Side.SERVER, EndReason.RST)]
    assert [ev.key for ev in got[::2]] == [rst_flow_key(i) for i in range(flows)]
    assert final.packets == flows * 2
    assert final.events_delivered == flows * 2
    assert final.source_pauses > 1
    assert final.finished


async def test_subscription_max_batches_overrides_the_stack_default(tmp_path, autojump_clock):
    path = write_rst_flows(tmp_path, 500)
    async with open_stack(aiomb.capture(path), batch_size=10, max_batches=16) as stack:
        async with stack.subscribe(CONN_START, max_batches=1) as sub:
            stack.start()
            await trio.sleep(1)
            assert stack.statistics().packets == 2 * 10
            assert sub.statistics().batches_queued == 1
            assert len(await collect(sub)) == 500
        assert stack.statistics().finished


async def test_bad_batch_size_and_max_batches_are_rejected(tmp_path):
    path = write_rst_flows(tmp_path, 1)
    for kw in ({"batch_size": 0}, {"batch_size": 1 << 17}, {"max_batches": 0}):
        with pytest.raises(ValueError):
            async with open_stack(aiomb.capture(path), **kw):
                pass  # pragma: no cover
    async with open_stack(aiomb.capture(path)) as stack:
        with pytest.raises(ValueError, match="max_batches"):
            stack.subscribe(CONN_START, max_batches=0)


# -- 4. start semantics -----------------------------------------------------------------


async def test_source_waits_for_first_iteration(tmp_path, autojump_clock):
    path = write_rst_flows(tmp_path, 100)
    async with open_stack(aiomb.capture(path), batch_size=50) as stack:
        async with stack.subscribe(CONN_START) as sub:
            await trio.sleep(60)
            assert stack.statistics().packets == 0
            assert stack.statistics().batches == 0
            with pytest.raises(trio.WouldBlock):
                sub.receive_batch_nowait()
            events = await collect(sub)        # the first iteration starts the source
    assert len(events) == 100


async def test_start_lets_the_source_run_without_a_consumer(tmp_path, autojump_clock):
    path = write_rst_flows(tmp_path, 100)
    async with open_stack(aiomb.capture(path), batch_size=100) as stack:
        async with stack.subscribe(CONN_START, CONN_END) as sub:
            stack.start()
            stack.start()                      # idempotent
            await stack.finished.wait()
            assert stack.statistics().packets == 200
            # everything is queued: two batches, then the end
            assert len(sub.receive_batch_nowait()) == 100
            assert len(sub.receive_batch_nowait()) == 100
            with pytest.raises(trio.EndOfChannel):
                sub.receive_batch_nowait()


async def test_two_subscriptions_made_before_start_get_every_event(tmp_path):
    path = write_rst_flows(tmp_path, 1500)
    results = {}
    async with open_stack(aiomb.capture(path), batch_size=256) as stack:
        starts = stack.subscribe(CONN_START)
        both = stack.subscribe(CONN_START, CONN_END)

        async def consume(name, sub):
            async with sub:
                results[name] = await collect(sub)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, "starts", starts)
            nursery.start_soon(consume, "both", both)
    assert [(ev.kind, ev.key) for ev in results["starts"]] == [
        (CONN_START, rst_flow_key(i)) for i in range(1500)]
    assert len(results["both"]) == 3000
    assert [ev for ev in results["both"] if ev.kind == CONN_START] == results["starts"]


async def test_run_with_inline_handlers_only_processes_everything(tmp_path):
    path = write_rst_flows(tmp_path, 2500)
    seen = []
    ends = []
    async with open_stack(aiomb.capture(path), batch_size=300) as stack:
        stack.on(PACKET_IN, lambda p: seen.append(p.side))
        stack.on(CONN_END, lambda p: ends.append((p.flow.key, p.event.reason)))
        await stack.run()
        stats = stack.statistics()
        assert stack.finished.is_set()
        with pytest.raises(RuntimeError, match="ended"):
            stack.subscribe(CONN_START)
        with pytest.raises(RuntimeError, match="ended"):
            stack.middleboxes[0].subscribe(CONN_END)
    assert stats.packets == 5000
    assert stats.batches == math.ceil(5000 / 300)
    assert stats.finished
    assert stats.events_delivered == 0
    assert seen == [Side.CLIENT, Side.SERVER] * 2500
    assert ends == [(rst_flow_key(i), EndReason.RST) for i in range(2500)]


async def test_subscribing_after_the_capture_was_consumed_raises(tmp_path):
    path = write_rst_flows(tmp_path, 10)
    async with open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(CONN_START) as sub:
            assert len(await collect(sub)) == 10
        await stack.finished.wait()
        with pytest.raises(RuntimeError):
            stack.subscribe(CONN_END)


# -- 5. cancellation --------------------------------------------------------------------


async def test_timeout_around_slow_consumer_exits_cleanly(tmp_path, autojump_clock):
    path = write_rst_flows(tmp_path, 2000)
    source = aiomb.capture(path)
    got = []
    with trio.move_on_after(10) as scope:
        async with open_stack(source, batch_size=64, max_batches=2) as stack:
            async with stack.subscribe(CONN_START, CONN_END) as sub:
                async for ev in sub:
                    got.append(ev)
                    await trio.sleep(1)
    assert scope.cancelled_caught
    assert len(got) == 10
    assert source._reader is None
    stats = stack.statistics()
    assert not stats.finished
    assert stats.packets == 4 * 64                # one batch consumed from, three waiting


async def test_cancel_after_first_batch_exits_cleanly(tmp_path):
    path = write_rst_flows(tmp_path, 2000)
    source = CountingSource(path)
    after_cancel = []
    with trio.CancelScope() as scope:
        async with open_stack(source, batch_size=128, max_batches=1) as stack:
            async with stack.subscribe(CONN_START, CONN_END) as sub:
                first = await sub.receive_batch()
                scope.cancel()
                try:
                    await sub.receive_batch()
                except trio.Cancelled:
                    after_cancel.append("cancelled")
                    raise
    assert scope.cancelled_caught
    assert after_cancel == ["cancelled"]
    assert len(first) == 128
    assert source._reader is None
    assert source.opened == 1
    assert stack.statistics().packets < 4000
    assert not stack.finished.is_set()


async def test_leaving_the_block_early_stops_and_closes_the_source(tmp_path, autojump_clock):
    path = write_rst_flows(tmp_path, 2000)
    source = aiomb.capture(path)
    async with open_stack(source, batch_size=64, max_batches=1) as stack:
        async with stack.subscribe(CONN_START) as sub:
            async for ev in sub:  # noqa: B007 (the first event, kept past the loop)
                break
    assert ev.key == rst_flow_key(0)
    assert source._reader is None
    packets = stack.statistics().packets
    assert packets <= 3 * 64
    await trio.sleep(10)                          # the pump is gone: nothing else is read
    assert stack.statistics().packets == packets
    assert not stack.statistics().finished


async def test_source_is_closed_after_a_normal_run(tmp_path):
    path = write_rst_flows(tmp_path, 3)
    source = aiomb.capture(path)
    async with open_stack(source) as stack:
        assert source._reader is not None
        await stack.run()
    assert source._reader is None


# -- 6. exceptions ----------------------------------------------------------------------


async def test_handler_exception_propagates_as_itself_and_cancels_consumer(tmp_path):
    path = write_rst_flows(tmp_path, 2000)
    source = aiomb.capture(path)
    raised = []
    consumer = []

    def handler(packet):
        if packet.flow.key == rst_flow_key(1500):
            exc = ValueError("boom")
            raised.append(exc)
            raise exc

    with pytest.raises(ValueError, match="^boom$") as info:
        async with open_stack(source, batch_size=256) as stack:
            stack.on(CONN_START, handler)
            async with stack.subscribe(CONN_START) as sub:
                try:
                    async for ev in sub:
                        consumer.append(ev)
                except trio.Cancelled:
                    consumer.append("cancelled")
                    raise
                consumer.append("ended normally")  # pragma: no cover
    assert type(info.value) is ValueError
    assert info.value is raised[0]
    assert consumer[-1] == "cancelled"
    assert all(ev.kind == CONN_START for ev in consumer[:-1])
    assert len(consumer) - 1 <= 1500
    assert source._reader is None


async def test_handler_exception_during_run(tmp_path):
    path = write_rst_flows(tmp_path, 100)

    def handler(packet):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="^boom$") as info:
        async with open_stack(aiomb.capture(path)) as stack:
            stack.on(CONN_END, handler)
            await stack.run()
    assert type(info.value) is ValueError
    assert stack.statistics().packets == 2       # raised at the first flow's end (its RST)


async def test_consumer_exception_propagates_as_itself(tmp_path):
    path = write_rst_flows(tmp_path, 2000)
    source = aiomb.capture(path)
    exc = KeyError("consumer")
    with pytest.raises(KeyError) as info:
        async with open_stack(source, batch_size=64) as stack:
            async with stack.subscribe(CONN_START) as sub:
                async for ev in sub:
                    if ev.key == rst_flow_key(100):
                        raise exc
    assert info.value is exc
    assert source._reader is None


async def test_consumer_exception_group_propagates_as_itself(tmp_path):
    # Trio may rebuild a group (split() to drop Cancelled), so the group is compared by
    # content: same type and message, the very same leaf exception, not unwrapped.
    path = write_rst_flows(tmp_path, 10)
    leaf = KeyError("inner")
    group = ExceptionGroup("from the consumer's own nursery", [leaf])
    with pytest.raises(ExceptionGroup) as info:
        async with open_stack(aiomb.capture(path)):
            raise group
    assert info.value.message == group.message
    assert list(info.value.exceptions) == [leaf] and info.value.exceptions[0] is leaf


async def test_predicate_exception_propagates_as_itself(tmp_path):
    path = write_rst_flows(tmp_path, 500)
    exc = ZeroDivisionError("predicate")

    def predicate(packet):
        if packet.flow.key == rst_flow_key(300):
            raise exc
        return False

    custom = define_event(PACKET_IN, predicate, name="bad")
    with pytest.raises(ZeroDivisionError) as info:
        async with open_stack(aiomb.capture(path), batch_size=64) as stack:
            async with stack.subscribe(custom, CONN_START) as sub:
                async for _ in sub:
                    pass
    assert info.value is exc


async def test_corrupt_capture_raises_capture_error_after_the_good_records(tmp_path):
    path = write_rst_flows(tmp_path, 50)
    data = path.read_bytes()
    path.write_bytes(data[:-10])                 # the last record is cut short
    got = []
    with pytest.raises(aiomb.CaptureError):
        async with open_stack(aiomb.capture(path), batch_size=16) as stack:
            async with stack.subscribe(CONN_START) as sub:
                async for ev in sub:
                    got.append(ev)
    assert stack.statistics().packets == 99
    assert len(got) <= 50


# -- 7. middlebox chain -----------------------------------------------------------------


async def test_middlebox_chain_order_filters_and_shared_flow_state(tmp_path):
    path, frames = two_port_capture(tmp_path)
    log = []
    marks = []
    async with open_stack(aiomb.capture(path)) as stack:
        a = stack.middlebox("a")
        b = stack.middlebox("b", filter="tcp port 80")
        assert [m.name for m in stack.middleboxes] == ["default", "a", "b"]

        def recorder(name):
            def handler(packet):
                log.append((name, packet.flow.key.server_port, packet.side))
            return handler

        def a_handler(packet):
            log.append(("a", packet.flow.key.server_port, packet.side))
            packet.flow.context["x"] = (packet.seq, packet.side)

        def b_handler(packet):
            log.append(("b", packet.flow.key.server_port, packet.side))
            marks.append((packet.side, packet.flow.context.get("x") == (packet.seq, packet.side),
                          packet.flow.client_state))

        stack.on(PACKET_IN, recorder("default"))
        a.on(PACKET_IN, a_handler)
        b.on(PACKET_IN, b_handler)
        subs = {"default": stack.subscribe(CONN_START, CONN_END),
                "a": a.subscribe(CONN_START, CONN_END), "b": b.subscribe(CONN_START, CONN_END)}
        results = {}

        async def consume(name):
            async with subs[name] as sub:
                results[name] = [(ev.kind, ev.key) for ev in await collect(sub)]

        async with trio.open_nursery() as nursery:
            for name in subs:
                nursery.start_soon(consume, name)

    expected = []
    for port, side in frames:
        chain = ["default", "a"] + (["b"] if port == 80 else [])
        if side == Side.SERVER:
            chain.reverse()
        expected += [(name, port, side) for name in chain]
    assert log == expected
    assert len(frames) == 16
    # b runs after a for client packets (sees a's mark of this very packet) and before a for
    # server packets (sees the previous packet's mark)
    assert [(side, same) for side, same, _ in marks] == [
        (s, s == Side.CLIENT) for p, s in frames if p == 80]
    both = [(CONN_START, KEY80), (CONN_START, KEY443), (CONN_END, KEY80), (CONN_END, KEY443)]
    assert results["default"] == both
    assert results["a"] == both
    assert results["b"] == [(CONN_START, KEY80), (CONN_END, KEY80)]


async def test_context_set_by_one_middlebox_is_seen_by_the_next_in_same_packet(tmp_path):
    path, frames = two_port_capture(tmp_path)
    seen = []
    handles = []
    async with open_stack(aiomb.capture(path)) as stack:
        a = stack.middlebox("a")
        b = stack.middlebox("b", filter="port 80")

        def a_handler(packet):
            packet.flow.context["x"] = packet.flow.context.get("x", 0) + 1
            handles.append(("a", packet.flow))

        def b_handler(packet):
            seen.append((packet.side, packet.flow.context["x"]))
            handles.append(("b", packet.flow))

        a.on(PACKET_IN, a_handler, hook=Hook.SENDER)
        b.on(PACKET_IN, b_handler, hook=Hook.RECEIVER)   # after every sender-hook handler
        await stack.run()
    n80 = sum(1 for p, _ in frames if p == 80)
    assert seen == [(s, i + 1) for i, s in enumerate(s for p, s in frames if p == 80)]
    assert len(seen) == n80 == 8
    flows80 = {id(f) for name, f in handles if f.key == KEY80}
    assert len(flows80) == 1                    # the same handle in both middleboxes


async def test_filtered_subscription_gets_only_matching_flows(tmp_path):
    path, _ = two_port_capture(tmp_path)
    async with open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(CONN_START, CONN_END, filter="dst port 443") as only443:
            assert len(stack.middleboxes) == 1          # a filter uses up no middlebox
            events = await collect(only443)
    assert [(ev.kind, ev.key) for ev in events] == [(CONN_START, KEY443), (CONN_END, KEY443)]


async def test_many_filtered_subscriptions_use_no_middlebox_and_share_equal_filters(tmp_path):
    path, _ = two_port_capture(tmp_path)
    async with open_stack(aiomb.capture(path)) as stack:
        subs = [stack.subscribe(CONN_START, filter=f"dst port {443 if i % 2 else 80} or port {i % 20}")
                for i in range(40)]             # 40 filtered subscriptions (more than 32 middleboxes), 20 filters
        same = stack.subscribe(CONN_START, filter="dst port 443 or port 1")
        assert len(stack.middleboxes) == 1
        stack.start()
        got = [[ev.key for ev in await sub.receive_batch()] for sub in subs + [same]]
    assert got == [[KEY443] if i % 2 else [KEY80] for i in range(40)] + [[KEY443]]


async def test_a_middlebox_filter_can_be_an_object_asked_once_per_new_flow(tmp_path):
    path, _ = two_port_capture(tmp_path)
    asked, seen = [], []

    class Port443:
        def matches(self, key):
            asked.append(key)
            return key.server_port == 443

        def __repr__(self):
            return "Port443()"
    async with open_stack(aiomb.capture(path)) as stack:
        mb = stack.middlebox("secure", filter=Port443())
        assert repr(mb) == "<Middlebox 'secure' #1 filter=Port443()>"
        mb.on(PACKET_IN, lambda packet: seen.append(packet.flow.key), hook=Hook.SENDER)
        await stack.run()
    assert asked == [KEY80, KEY443] and set(seen) == {KEY443} and len(seen) == 8


async def test_duplicate_middlebox_name_and_bad_filter(tmp_path):
    path, _ = two_port_capture(tmp_path)
    async with open_stack(aiomb.capture(path)) as stack:
        stack.middlebox("a")
        with pytest.raises(ValueError, match="already exists"):
            stack.middlebox("a")
        with pytest.raises(ValueError):
            stack.middlebox("c", filter="tcp port")
        await stack.run()


async def test_middleboxes_and_inline_handlers_added_too_late_are_refused(tmp_path):
    """A middlebox joins the chain before the first packet (even one that made no flow: an
    orphan); after the source has ended, no middlebox nor inline handler would ever see a packet."""
    orphan = tcp_frame("10.0.0.9", "10.0.0.2", 40009, 80, seq=1, ack=1, flags="A")    # no SYN: no flow
    path = tmp_path / "late.pcap"
    write_pcap(path, [(0.5, orphan)] + full_conversation(("10.0.0.1", 40001), ("10.0.0.2", 80), start_ts=1.0).frames)
    async with open_stack(aiomb.capture(path), batch_size=1) as stack:
        async with stack.subscribe(aiomb.ORPHAN) as sub:
            await sub.receive_batch()
            assert not stack.flows()
            with pytest.raises(RuntimeError, match=r"^stack.middlebox\(\) after 1 packet: add middleboxes before the "
                                                   r"source starts \(before stack.start\(\), stack.run\(\) or "
                                                   r"iterating a subscription\), so that they see every flow$"):
                stack.middlebox("late")
        await stack.run()
        for call in (lambda: stack.middlebox("later"), lambda: stack.middlebox("later", filter="port 80")):
            with pytest.raises(RuntimeError, match=r"^the stack's source has ended: a middlebox added now would "
                                                   r"see no packet; add middleboxes before the source starts"):
                call()
        for call in (lambda: stack.on(PACKET_IN, print), lambda: stack.middleboxes[0].on(CONN_END, print)):
            with pytest.raises(RuntimeError, match=r"^the stack's source has ended: an inline handler added now "
                                                   r"would never run; add handlers before it finishes$"):
                call()
        assert [mb.name for mb in stack.middleboxes] == ["default"]


# -- 8. custom events -------------------------------------------------------------------


async def test_custom_event_list_predicate_yields_one_event_per_element(tmp_path):
    path, frames = two_port_capture(tmp_path)

    def words(packet):
        return [w for w in (b"foo", b"bar", b"OK") if w in packet.payload]

    matches = define_event(PACKET_IN, words, name="words")
    async with open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(matches) as sub:
            events = await collect(sub)
    # each conversation: client "GET / foo bar", server "200 OK"
    assert [(ev.kind, ev.key, ev.side, ev.value) for ev in events] == [
        (matches, KEY80, Side.CLIENT, b"foo"), (matches, KEY80, Side.CLIENT, b"bar"),
        (matches, KEY443, Side.CLIENT, b"foo"), (matches, KEY443, Side.CLIENT, b"bar"),
        (matches, KEY80, Side.SERVER, b"OK"), (matches, KEY443, Side.SERVER, b"OK"),
    ]
    assert str(events[0].kind) == "words"


async def test_custom_event_true_and_other_values(tmp_path):
    path, _ = two_port_capture(tmp_path)
    flag = define_event(PACKET_IN, lambda p: p.payload_length > 0, name="data")
    length = define_event(PACKET_IN, lambda p: p.payload_length, name="len")
    async with open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(flag, length) as sub:
            events = await collect(sub)
    assert [(ev.kind, ev.value) for ev in events if ev.key == KEY80] == [
        (flag, None), (length, 13), (flag, None), (length, 6)]
    assert len(events) == 8


async def test_custom_event_tree(tmp_path):
    path, _ = two_port_capture(tmp_path)
    parent_calls = []
    child_calls = []

    def words(packet):
        parent_calls.append(packet.flow.key)
        return [w for w in (b"foo", b"bar") if w in packet.payload]

    def from_client_80(packet):
        child_calls.append(packet.flow.key)
        return packet.flow.key.server_port == 80

    parent = define_event(PACKET_IN, words, name="words")
    child = define_event(parent, from_client_80, name="client80")
    grandchild = define_event(child, lambda p: "deep", name="deep")
    assert grandchild.root == PACKET_IN
    async with open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(grandchild, child) as sub:   # not the parent itself
            events = await collect(sub)
    assert [(ev.kind, ev.key, ev.value) for ev in events] == [
        (child, KEY80, None), (grandchild, KEY80, "deep"),
        (child, KEY80, None), (grandchild, KEY80, "deep")]
    assert len(parent_calls) == 16              # once per packet
    assert child_calls == [KEY80, KEY80, KEY443, KEY443]   # once per parent occurrence


async def test_predicate_runs_only_for_flows_a_subscriber_accepts(tmp_path):
    path, frames = two_port_capture(tmp_path)
    calls = []

    def predicate(packet):
        calls.append((packet.flow.key.server_port, packet.hook))
        return True

    custom = define_event(PACKET_IN, predicate, name="every")
    async with open_stack(aiomb.capture(path)) as stack:
        stack.on(PACKET_IN, lambda p: None)      # default middlebox, every flow
        async with stack.subscribe(custom, filter="tcp port 80") as sub:
            events = await collect(sub)
    n80 = sum(1 for p, _ in frames if p == 80)
    assert calls == [(80, Hook.SENDER)] * n80
    assert len(events) == n80
    assert {ev.key for ev in events} == {KEY80}


async def test_unsubscribed_custom_event_predicate_is_never_called(tmp_path):
    path, _ = two_port_capture(tmp_path)
    calls = []
    define_event(PACKET_IN, lambda p: calls.append(p) or True, name="unused")
    async with open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(CONN_START) as sub:
            assert len(await collect(sub)) == 2
    assert calls == []


async def test_inline_handler_on_custom_event_sees_its_value(tmp_path):
    path, _ = two_port_capture(tmp_path)
    words = define_event(PACKET_IN, lambda p: [w for w in (b"foo", b"bar") if w in p.payload])
    seen = []
    async with open_stack(aiomb.capture(path)) as stack:
        b = stack.middlebox("b", filter="port 443")
        b.on(words, lambda p: seen.append((p.flow.key, p.value, p.kind)))
        await stack.run()
    assert seen == [(KEY443, b"foo", words), (KEY443, b"bar", words)]


# -- 9. verdicts ------------------------------------------------------------------------


async def test_sender_hook_drop_is_counted(tmp_path):
    path = write_rst_flows(tmp_path, 300)
    verdicts = []

    def drop_client(packet):
        if packet.side == Side.CLIENT:
            packet.drop()

    async with open_stack(aiomb.capture(path), batch_size=64) as stack:
        stack.on(PACKET_IN, drop_client, hook=Hook.SENDER)
        stack.on(PACKET_IN, lambda p: verdicts.append(p.verdict), hook=Hook.RECEIVER)
        await stack.run()
        stats = stack.statistics()
    assert stats.engine.dropped_by_verdict == 300
    assert verdicts == [aiomb.Verdict.FORWARD] * 300      # a dropped packet never reaches the receiver hook


async def test_default_hook_packet_in_handler_may_drop(tmp_path):
    path = write_rst_flows(tmp_path, 10)
    async with open_stack(aiomb.capture(path)) as stack:
        stack.on(PACKET_IN, lambda p: p.drop())
        await stack.run()
    assert stack.statistics().engine.dropped_by_verdict == 20


async def test_receiver_hook_drop_raises_runtime_error(tmp_path):
    path = write_rst_flows(tmp_path, 300)
    source = aiomb.capture(path)
    with pytest.raises(RuntimeError, match="sender hook") as info:
        async with open_stack(source) as stack:
            stack.on(PACKET_IN, lambda p: p.drop(), hook=Hook.RECEIVER)
            async with stack.subscribe(CONN_START) as sub:
                async for _ in sub:
                    pass
    assert type(info.value) is RuntimeError
    assert stack.statistics().engine.dropped_by_verdict == 0
    assert stack.statistics().packets == 1
    assert source._reader is None


# -- 10. closing subscriptions ----------------------------------------------------------


async def test_break_out_of_subscription_then_stack_finishes(tmp_path):
    path = write_rst_flows(tmp_path, 1000)
    async with open_stack(aiomb.capture(path), batch_size=100, max_batches=64) as stack:
        keep = stack.subscribe(CONN_END)
        async with stack.subscribe(CONN_START) as early:
            async for ev in early:  # noqa: B007 (the first event, kept past the loop)
                break
        assert early.statistics().closed
        assert stack.statistics().subscriptions == 1
        async with keep:
            kept = await collect(keep)
        await stack.finished.wait()
        stats = stack.statistics()
    assert ev.key == rst_flow_key(0)
    assert len(kept) == 1000
    assert stats.packets == 2000
    assert stats.finished
    # after close, iterating is the user's mistake: it raises instead of yielding nothing
    with pytest.raises(trio.ClosedResourceError, match=CLOSED_MESSAGE):
        await collect(early)


async def test_closing_after_leaving_async_for_mid_batch_drops_the_rest_of_that_batch(tmp_path):
    path = write_rst_flows(tmp_path, 100)
    async with open_stack(aiomb.capture(path), batch_size=100) as stack:
        async with stack.subscribe(CONN_START, CONN_END) as sub:
            async for _ in sub:
                break
        got = []
        with pytest.raises(trio.ClosedResourceError, match=CLOSED_MESSAGE):
            async for ev in sub:
                got.append(ev)
        with pytest.raises(trio.ClosedResourceError, match=CLOSED_MESSAGE):
            sub.receive_batch_nowait()
    assert got == []


async def test_closed_subscription_before_start_gets_nothing(tmp_path):
    path = write_rst_flows(tmp_path, 100)
    async with open_stack(aiomb.capture(path)) as stack:
        sub = stack.subscribe(CONN_START)
        sub.close()
        sub.close()                              # idempotent
        await stack.run()
        with pytest.raises(trio.ClosedResourceError, match=CLOSED_MESSAGE):
            await collect(sub)
        assert stack.statistics().events_delivered == 0
        assert stack.statistics().packets == 200


CLOSED_MESSAGE = (r"<Subscription .* closed> was closed \(close\(\), or leaving its async with block\): it "
                  r"delivers nothing more; iterate it inside the block, or subscribe again")


async def test_every_way_of_receiving_from_a_closed_subscription_raises(tmp_path):
    path = write_rst_flows(tmp_path, 10)
    async with open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(CONN_START) as sub:
            pass
        with pytest.raises(trio.ClosedResourceError, match=CLOSED_MESSAGE):
            await sub.receive_batch()
        with pytest.raises(trio.ClosedResourceError, match=CLOSED_MESSAGE):
            sub.receive_batch_nowait()
        with pytest.raises(trio.ClosedResourceError, match=CLOSED_MESSAGE):
            async for _ in sub:
                pass


async def test_closing_a_subscription_another_task_waits_on_raises_there(tmp_path):
    path = write_rst_flows(tmp_path, 100)
    async with open_stack(aiomb.capture(path), batch_size=10) as stack:
        sub = stack.subscribe(CONN_START)
        stack.subscribe(CONN_START, max_batches=1)     # never read: the source pauses, sub waits
        errors = []

        async def consume():
            try:
                async for _ in sub:
                    pass
            except trio.ClosedResourceError as exc:
                errors.append(str(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            sub.close()
    assert len(errors) == 1 and "was closed (close(), or leaving its async with block)" in errors[0]


async def test_a_subscription_says_how_many_packets_it_came_after(tmp_path):
    path = write_rst_flows(tmp_path, 100)
    async with open_stack(aiomb.capture(path), batch_size=10, max_batches=64) as stack:
        async with stack.subscribe(CONN_START) as early:
            assert early.packets_before == 0 and early.statistics().packets_before == 0
            first = await early.receive_batch()
            async with stack.subscribe(CONN_START) as late:
                assert late.packets_before == stack.statistics().packets > 0
                assert late.statistics().packets_before == late.packets_before
                assert f"after {late.packets_before} packets" in repr(late)
                got = await collect(late)
            assert len(first) + len(got) <= 100 and "after" not in repr(early)


async def test_receive_batch_nowait_before_start_raises_would_block(tmp_path):
    path = write_rst_flows(tmp_path, 5)
    async with open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(CONN_START) as sub:
            with pytest.raises(trio.WouldBlock):
                sub.receive_batch_nowait()
            assert not stack.statistics().finished
            assert stack.statistics().packets == 0   # receive_batch_nowait does not start it
            assert len(await sub.receive_batch()) == 5
            with pytest.raises(trio.EndOfChannel):
                await sub.receive_batch()


async def test_break_while_the_source_is_paused_on_that_subscription(tmp_path, autojump_clock):
    path = write_rst_flows(tmp_path, 1000)
    async with open_stack(aiomb.capture(path), batch_size=16, max_batches=1) as stack:
        async with stack.subscribe(CONN_START) as sub:
            async for _ev in sub:
                await trio.sleep(1)
                assert stack.statistics().source_pauses == 1   # the pump waits in send()
                break
        # leaving the subscription must unblock the pump, not break it
        await stack.run()
        assert stack.statistics().packets == 2000


async def test_consumer_exception_while_the_source_is_paused(tmp_path, autojump_clock):
    path = write_rst_flows(tmp_path, 1000)
    exc = KeyError("consumer")
    with pytest.raises(KeyError) as info:
        async with open_stack(aiomb.capture(path), batch_size=16, max_batches=1) as stack:
            async with stack.subscribe(CONN_START):
                stack.start()
                await trio.sleep(1)
                assert stack.statistics().source_pauses == 1
                raise exc
    assert info.value is exc


async def test_async_for_notices_a_cancellation_within_a_batch(tmp_path):
    from aiomb._stack import CHECK_EVERY

    path = write_rst_flows(tmp_path, 1000)           # 2000 events, one batch
    seen = 0
    async with open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(CONN_START, CONN_END) as sub:
            with trio.CancelScope() as scope:
                async for _ in sub:
                    seen += 1
                    if seen == 1:
                        scope.cancel()
            assert scope.cancelled_caught
        assert stack.statistics().batches == 1
    assert 1 <= seen <= CHECK_EVERY


@pytest.mark.parametrize("batch_size", [65, 100, 1000])
async def test_a_cancelled_async_for_loses_no_event(tmp_path, batch_size):
    # the event at which iteration notices the cancellation stays queued: the next `async for`
    # yields it (with 65 events a batch, it is the batch's last)
    from aiomb._stack import CHECK_EVERY

    path = write_rst_flows(tmp_path, 500)           # 1000 events
    async with open_stack(aiomb.capture(path), batch_size=batch_size) as stack:
        async with stack.subscribe(CONN_START, CONN_END) as sub:
            seen = await leave_async_for(sub, "cancel", 10)
            after = await collect(sub)
    assert 10 <= len(seen) <= CHECK_EVERY
    assert [summary(ev) for ev in seen + after] == rst_flow_summaries(500)


async def test_stack_timers_fire_on_packet_time_and_a_flows_ends_with_it(tmp_path):
    path = write_rst_flows(tmp_path, 200)             # 1.0 .. 1.02 s: 200 flows, 2 packets each
    async with open_stack(aiomb.capture(path), batch_size=16) as stack:
        every = stack.timer(0.005, interval=0.005)
        once = stack.timer(0.01)
        got = []

        async def ticks():
            async for n in every:
                got.append(("every", n, round(stack.time(), 4)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticks)
            assert await once.wait() == 1
            got.append(("once", 1, round(stack.time(), 4)))
            with pytest.raises(trio.EndOfChannel):
                await once.wait()
            await stack.run()
            every.cancel()
    assert ("once", 1, 1.01) in got                                 # woken at its moment, not the batch's end
    assert [(n, t) for name, n, t in got if name == "every"] == [(1, 1.005), (1, 1.01), (1, 1.015)]
