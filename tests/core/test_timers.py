"""Timers on the engine's clock: a timer due at t fires before the first packet at or after t,
periodic ones re-arm (late periods counted in one firing), a flow's timers go with the flow, and
what fires does not depend on the batch size."""

import io

import pytest

import aiomb
from aiomb import EventKind
from aiomb._core import CaptureReader
from aiomb.testing import TcpConversation, udp_frame, write_pcap


def udp(ts, n=0):
    return (ts, udp_frame("10.0.0.1", "10.0.0.2", 1000 + n, 53, b"q"))


def run(frames, arm, *, batch_size=1):
    """Feed frames in batches; ``arm(engine, log)`` sets timers. Returns the log of packets and
    timer callbacks, and the TIMER events."""
    engine = aiomb.Engine(udp_timeout=100)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.TIMER)
    log = []
    engine.add_handler(EventKind.PACKET_IN, lambda v: log.append(("packet", v.ts)), hook=aiomb.Hook.SENDER)
    arm(engine, log)
    buf = io.BytesIO()
    write_pcap(buf, frames)
    buf.seek(0)
    batch = aiomb.FrameBatch(batch_size)
    events = []
    with CaptureReader(buf) as reader:
        while reader.fill(batch):
            engine.process(batch)
            events += d.drain(sub)
    return engine, log, [(e.ts, e.value) for e in events]


def test_a_timer_fires_before_the_first_packet_at_or_after_its_time():
    def arm(engine, log):
        engine.set_timer(at=5.0, callback=lambda v: log.append(("timer", v.ts, v.value)))
    _, log, events = run([udp(1.0), udp(4.9), udp(5.0), udp(6.0)], arm)
    assert log == [("packet", 1.0), ("packet", 4.9), ("timer", 5.0, (1, 1)), ("packet", 5.0), ("packet", 6.0)]
    assert events == [(5.0, (1, 1))]


def test_a_periodic_timer_rearms_and_counts_the_periods_a_gap_skipped():
    def arm(engine, log):
        engine.set_timer(at=2.0, interval=1.0)
    engine, _, events = run([udp(1.0), udp(2.5), udp(6.2), udp(6.3)], arm)
    assert events == [(2.0, (1, 1)), (3.0, (1, 4))]        # 3, 4, 5 and 6 are due by 6.2
    assert engine.next_timer == 7.0


def test_timers_are_cancelled_and_the_next_one_is_known():
    engine = aiomb.Engine()
    assert engine.set_timer(1.0) and engine.next_timer is None       # counts from the first packet
    engine.expire(0.0)                                                # the clock starts
    assert engine.next_timer == 1.0
    engine.cancel_timer(1)
    a = engine.set_timer(3.0)
    b = engine.set_timer(at=1.5)
    assert engine.next_timer == 1.5
    assert engine.cancel_timer(b) and not engine.cancel_timer(b)
    assert engine.next_timer == 3.0
    assert engine.cancel_timer(a) and engine.next_timer is None
    for bad, match in ((dict(), "either delay"), (dict(delay=1, at=2), "either delay"),
                       (dict(delay=-1), "not be negative"), (dict(delay=1, interval=0), "interval"),
                       (dict(delay=1, callback=3), "callable"), (dict(delay="soon"), "number")):
        with pytest.raises(ValueError, match=match):
            engine.set_timer(**bad)


def test_a_flows_timer_goes_with_its_flow():
    c = TcpConversation(start_ts=1.0)
    c.handshake()
    c.rst("client")
    frames = c.frames + [udp(9.0)]
    fired = []

    def arm(engine, log):
        def on_start(view):
            engine.set_timer(2.0, flow=view.flow, callback=lambda v: fired.append("flow"))
            engine.set_timer(2.0, callback=lambda v: fired.append("plain"))
        engine.add_handler(EventKind.CONN_START, on_start)
    run(frames, arm)
    assert fired == ["plain"]


def test_a_flows_timer_fires_with_the_flow_in_its_view():
    c = TcpConversation(start_ts=1.0)
    c.handshake()
    frames = c.frames + [udp(5.0)]
    seen = []

    def arm(engine, log):
        engine.add_handler(EventKind.CONN_START, lambda view: engine.set_timer(
            1.0, flow=view.flow, callback=lambda v: seen.append((v.kind, v.flow.id, v.ts))))
    run(frames, arm)
    assert seen == [(EventKind.TIMER, 1, 2.0)]
    with pytest.raises(ValueError, match="live Flow"):
        aiomb.Engine().set_timer(1.0, flow="flow #1")


@pytest.mark.parametrize("size", [2, 7, 64])
def test_what_fires_does_not_depend_on_the_batch_size(size):
    frames = [udp(1.0 + i * 0.37, i % 5) for i in range(60)]

    def arm(engine, log):
        engine.set_timer(at=3.0, interval=0.5)
        engine.set_timer(at=7.77, callback=lambda v: log.append(("timer", v.ts)))
    one = run(frames, arm)[1:]
    other = run(frames, arm, batch_size=size)[1:]
    assert other == one
