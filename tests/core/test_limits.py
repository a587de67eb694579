"""Sans-I/O: stream limits are limits. max_buffer (per side) and max_stream_memory (all streams)
are never exceeded, not even between checks; what they refuse is counted (BUFFER_OVERRUN)."""

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aiomb
from aiomb import EventKind, Side
from aiomb._core import CaptureReader
from aiomb.testing import TcpConversation, tcp_frame, write_pcap

SEG = 48                                # bytes of bookkeeping per out-of-order segment
KINDS = EventKind.NEW_DATA | EventKind.GAP | EventKind.BUFFER_OVERRUN | EventKind.OVERLAP


def conversation_frames(port, segments, *, t0=2.0, acks=()):
    """A handshake on client port ``port`` then the client's segments [(stream offset, length)]
    (bytes derived from the offset, so that copies agree) and the server's ACKs (stream offsets)."""
    c = TcpConversation(("10.0.0.1", port), ("10.0.0.2", 80), client_isn=1000)
    c.handshake()
    frames = list(c.frames)
    t = t0
    for off, n in segments:
        payload = bytes((off + i) % 251 for i in range(n))
        frames.append((t, tcp_frame("10.0.0.1", "10.0.0.2", port, 80, seq=1001 + off, ack=5001, flags="PA",
                                    payload=payload)))
        t += 0.001
    for off in acks:
        frames.append((t, tcp_frame("10.0.0.2", "10.0.0.1", 80, port, seq=5001, ack=1001 + off, flags="A")))
        t += 0.001
    return frames


def feed_batches(engine, frames, batch_size, after_batch=None):
    """Feed frames through a capture in batches (in-order bytes then stay in the batch's frames)."""
    buf = io.BytesIO()
    write_pcap(buf, sorted(frames, key=lambda f: f[0]))
    buf.seek(0)
    batch = aiomb.FrameBatch(batch_size)
    with CaptureReader(buf) as reader:
        while reader.fill(batch):
            engine.process(batch)
            if after_batch is not None:
                after_batch()


def test_out_of_order_segments_count_their_bookkeeping_against_max_buffer():
    # a hole at 0, then 1000-byte segments: 62 of them (with 48 bytes each) fit in 64 KiB, not 65
    engine = aiomb.Engine(max_buffer=65536)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(KINDS)
    for ts, f in conversation_frames(40000, [(1 + 1000 * k, 1000) for k in range(65)]):
        engine.feed(f, ts)
    (flow,) = engine.flows()
    assert len(flow.buffer(Side.CLIENT)["out_of_order"]) == 62
    st = engine.statistics()
    assert (st.buffer_overruns, st.stream_buffer_peak) == (3, 62 * (1000 + SEG))
    # the three refusals, held until the drain: one event that counts them
    assert [(e.kind, e.value, e.count, e.length) for e in d.drain(sub)] == [
        (EventKind.BUFFER_OVERRUN, "buffer", 3, 3000)]


def test_a_held_side_is_bounded_with_its_out_of_order_bytes():
    # a held side keeps its in-order bytes: with 40,000 of them out of order, 25,536 fit in order
    engine = aiomb.Engine(max_buffer=65536)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(KINDS)
    frames = conversation_frames(40000, [(50000, 40000 - SEG)] + [(k * 1000, 1000) for k in range(30)])
    for ts, f in frames[:3]:
        engine.feed(f, ts)
    (flow,) = engine.flows()
    flow.hold(Side.CLIENT)
    for ts, f in frames[3:]:
        engine.feed(f, ts)
        assert engine.statistics().stream_buffer_peak <= 65536
    overruns = [e for e in d.drain(sub) if e.kind is EventKind.BUFFER_OVERRUN]
    assert overruns and engine.statistics().buffer_overruns == sum(e.count for e in overruns)


# a lost segment [0, 100), then out-of-order segments up to max_ooo_segments, then what fills the hole
FILLS = {
    "the lost segment again": ([(100, 100), (200, 100), (300, 100)], [(0, 100)]),
    "in two halves": ([(100, 100), (200, 100), (300, 100)], [(0, 50), (50, 50)]),
    "starting before the next byte": ([(100, 100), (200, 100), (300, 100)], [(0, 30), (20, 80)]),
    "reaching over the held ones": ([(100, 100), (200, 100), (300, 100)], [(0, 450)]),
    "over holes between the held ones": ([(100, 100), (300, 100), (500, 100)], [(0, 700)]),
}


@pytest.mark.parametrize("batch_size", [1, 64])
@pytest.mark.parametrize("case", sorted(FILLS))
def test_bytes_that_fill_the_hole_are_in_order_whatever_is_held_out_of_order(case, batch_size):
    # the held segments take every out-of-order slot; the retransmission needs none: its bytes
    # are in order (the endpoint queued them), and the held ones then follow in order
    held, fill = FILLS[case]
    end = max(off + n for off, n in held + fill)
    engine = aiomb.Engine(max_ooo_segments=len(held))
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(KINDS | EventKind.RETRANSMIT)
    events = []
    feed_batches(engine, conversation_frames(40000, held + fill, acks=[end]), batch_size,
                 lambda: events.extend(d.drain(sub)))
    engine.finish()
    events += d.drain(sub)
    assert {e.kind for e in events} == {EventKind.NEW_DATA}
    assert b"".join(e.value for e in events) == bytes(i % 251 for i in range(end))
    assert engine.statistics().buffer_overruns == 0


@pytest.mark.parametrize("hold", [False, True])
def test_bytes_that_fill_the_hole_are_delivered_early_when_held_ones_fill_max_buffer(hold):
    # 45 segments held out of order take 45 * 1448 = 65,160 of the side's 65,536 bytes: the
    # 1,400 that fill the hole do not fit beside them, so they go out at once, as a full
    # in-order buffer does; a held side cannot keep them (BUFFER_OVERRUN), but nothing is lost
    engine = aiomb.Engine(max_buffer=65536)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(KINDS)
    frames = conversation_frames(40000, [(1400 * k, 1400) for k in range(1, 46)] + [(0, 1400)],
                                 acks=[46 * 1400])
    for ts, f in frames[:3]:
        engine.feed(f, ts)
    if hold:
        engine.flows()[0].hold(Side.CLIENT)
    for ts, f in frames[3:]:
        engine.feed(f, ts)
        assert engine.statistics().stream_buffer_peak <= 65536
    engine.finish()
    events = d.drain(sub)
    assert b"".join(e.value for e in events if e.kind is EventKind.NEW_DATA) == \
        bytes(i % 251 for i in range(46 * 1400))
    assert [(e.offset, e.length) for e in events if e.kind is EventKind.NEW_DATA][:2] == \
        [(0, 1400), (1400, 45 * 1400)]
    overruns = [(e.offset, e.length, e.value) for e in events if e.kind is EventKind.BUFFER_OVERRUN]
    assert overruns == ([(0, 1400, "buffer")] if hold else [])
    assert engine.statistics().buffer_overruns == len(overruns)
    assert not [e for e in events if e.kind is EventKind.GAP]


def test_limits_refuse_segments_then_streams_and_count_each_refusal():
    limit = 1 << 20
    engine = aiomb.Engine(max_stream_memory=limit, max_buffer=65536)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(KINDS)
    for ts, f in conversation_frames(30000, [(1000, 100)]):
        engine.feed(f, ts)
    stream_state = engine.statistics().stream_memory - 100 - SEG        # one side's stream, made for its bytes
    for port in range(40000, 40018):                 # 60,000 bytes out of order each: the last ones are refused
        for ts, f in conversation_frames(port, [(1000, 60000 - SEG - 400), (0, 100)]):
            engine.feed(f, ts)
    refused = [e for e in d.drain(sub) if e.kind is EventKind.BUFFER_OVERRUN]
    assert refused and {e.value for e in refused} == {"memory"}
    room = limit - engine.statistics().stream_memory
    # a segment that leaves less room than a stream takes: the next side finds no room for its stream
    for ts, f in conversation_frames(50000, [(1000, room - stream_state - 2 * SEG - 100)]):
        engine.feed(f, ts)
    assert limit - engine.statistics().stream_memory < stream_state
    for ts, f in conversation_frames(50001, [(0, 700)]):
        engine.feed(f, ts)
    (last,) = [e for e in d.drain(sub) if e.kind is EventKind.BUFFER_OVERRUN]
    assert (last.key.client_port, last.offset, last.length, last.value) == (50001, 0, 700, "memory")
    assert engine.flow(last.key).statistics().client.stream_bytes == 0
    st = engine.statistics()
    assert st.stream_memory_peak <= limit
    assert st.buffer_overruns == sum(e.count for e in refused) + 1


def test_turning_buffering_off_gives_out_of_order_bytes_back():
    engine = aiomb.Engine(reassembly=True)
    frames = conversation_frames(40000, [(1000, 5000)])
    for ts, f in frames:
        engine.feed(f, ts)
    before = engine.statistics().stream_memory
    (flow,) = engine.flows()
    flow.set_buffering(Side.CLIENT, False)
    assert engine.statistics().stream_memory == before - 5000


segment = st.tuples(st.integers(0, 120_000), st.integers(1, 1460))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(segment, min_size=1, max_size=120), min_size=1, max_size=24),
       st.integers(1, 64), st.booleans(), st.lists(st.integers(0, 120_000), max_size=4))
def test_high_water_marks_never_exceed_the_limits(flows, batch_size, hold, acks):
    """Random segments (overlapping, reordered, far ahead) of many flows, fed in random batches:
    no side ever holds more than max_buffer, all streams never take more than max_stream_memory,
    and every refusal is a BUFFER_OVERRUN."""
    max_buffer, max_memory = 65536 + 1000, 1 << 20
    engine = aiomb.Engine(max_buffer=max_buffer, max_stream_memory=max_memory, overlap_policy="last")
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(KINDS)
    if hold:
        engine.add_handler(EventKind.CONN_START, lambda view: view.flow.hold(Side.CLIENT))
    overruns = 0

    def check():
        nonlocal overruns
        stats = engine.statistics()
        assert stats.stream_memory <= max_memory
        assert stats.stream_memory_peak <= max_memory
        assert stats.stream_buffer_peak <= max_buffer
        overruns += sum(e.kind is EventKind.BUFFER_OVERRUN for e in d.drain(sub))

    frames = []
    for i, segments in enumerate(flows):
        frames += conversation_frames(20000 + i, segments, t0=2.0 + i * 1e-4, acks=acks)
    feed_batches(engine, frames, batch_size, check)
    engine.finish()
    check()
    assert engine.statistics().buffer_overruns == overruns
    assert engine.statistics().stream_memory == 0


@pytest.mark.parametrize("hold", [False, True])
def test_out_of_order_limits_give_the_same_answer_at_any_batch_size(hold):
    # 40 segments in order (56,000 bytes), then 10 out of order beyond a hole, its fill (they
    # drain in order), then 39 out of order beyond another hole, and its fill. One at a time,
    # the in-order bytes are delivered before the next segment comes, so 39 * 1448 = 56,472
    # bytes out of order fit in 65,536; a batch that still holds in-order bytes must judge the
    # out-of-order segments as one frame at a time would: it delivers those bytes first. A
    # side's refusals until the dispatcher's next delivery are one event: they are compared in
    # all, per limit
    in_order = [(1400 * k, 1400) for k in range(40)]
    first = [(1400 * k, 1400) for k in range(41, 51)] + [(1400 * 40, 1400)]
    second = [(1400 * k, 1400) for k in range(52, 91)] + [(1400 * 51, 1400)]
    frames = conversation_frames(40000, in_order + first + second, acks=[91 * 1400])

    def run(batch_size):
        engine = aiomb.Engine(max_buffer=65536)
        d = aiomb.Dispatcher(engine)
        sub = d.subscribe(KINDS)
        if hold:
            engine.add_handler(EventKind.CONN_START, lambda view: view.flow.hold(Side.CLIENT))
        events, runs, refused = [], [], {}      # runs of contiguous bytes: [offset, bytes]

        def take():
            for e in d.drain(sub):
                if e.kind is EventKind.NEW_DATA:
                    if runs and runs[-1][0] + len(runs[-1][1]) == e.offset:
                        runs[-1][1] += e.value
                    else:
                        runs.append([e.offset, bytearray(e.value)])
                elif e.kind is EventKind.BUFFER_OVERRUN:
                    total = refused.setdefault(e.value, [0, 0])
                    total[0] += e.count
                    total[1] += e.length
                else:
                    events.append((e.kind, e.offset, e.length, e.value))
            assert engine.statistics().stream_buffer_peak <= 65536

        feed_batches(engine, frames, batch_size, take)
        engine.finish()
        take()
        return events, runs, refused, engine.statistics().buffer_overruns

    one = run(1)
    if not hold:
        assert one == ([], [[0, bytes(i % 251 for i in range(91 * 1400))]], {}, 0)
    assert run(7) == one
    assert run(2048) == one


def test_a_handler_of_bytes_delivered_early_may_stop_buffering_the_side():
    # in one batch: 60,000 bytes in order, then 5,390 held out of order in three pieces, which
    # leave 2 bytes of max_buffer; a segment whose bytes win (bsd) over part of the second piece
    # needs one more piece (48 bytes), so the in-order bytes go out first, and their NEW_DATA
    # handler turns buffering off: no held copy is left to cut
    engine = aiomb.Engine(max_buffer=65536, overlap_policy="bsd")
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(KINDS)
    engine.add_handler(EventKind.NEW_DATA, lambda view: view.flow.set_buffering(Side.CLIENT, False))
    segments = [(1000 * k, 1000) for k in range(60)] + [(61000, 1000), (62000, 2000), (64000, 2390),
                                                         (61500, 1500)]
    feed_batches(engine, conversation_frames(40000, segments), 2048)
    assert [(e.kind, e.offset, e.length) for e in d.drain(sub)] == [(EventKind.NEW_DATA, 0, 60000)]
    (flow,) = engine.flows()
    assert flow.buffer(Side.CLIENT)["held"] == 0
    assert engine.statistics().buffer_overruns == 0
