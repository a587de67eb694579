"""Sans-I/O: event storms are bounded. The events logged and not yet delivered never hold more than
max_event_memory: processing stops before a packet, a timer or a flow's end whose events could pass
it, the caller delivers, and it goes on where it stopped; the events are the same, in the same order,
as without a bound and at any batch size. A side's BUFFER_OVERRUN events coalesce until delivered."""

import io
import select

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aiomb
from aiomb import EventKind
from aiomb._core import CaptureReader
from aiomb.testing import tcp_frame, write_pcap

LIMITS = {"max_buffer": 65536, "max_ooo_segments": 64, "max_fragments": 0}
KINDS = aiomb.ALL_BUILTIN


def client(i):
    return f"10.1.{i // 250}.{i % 250 + 1}", 40000 + i % 20000


def handshake(i, t):
    ip, port = client(i)
    return [(t, tcp_frame(ip, "10.9.0.1", port, 80, seq=1000, flags="S")),
            (t + 1e-4, tcp_frame("10.9.0.1", ip, 80, port, seq=5000, ack=1001, flags="SA")),
            (t + 2e-4, tcp_frame(ip, "10.9.0.1", port, 80, seq=1001, ack=5001, flags="A"))]


def data(i, t, off, n):
    ip, port = client(i)
    return (t, tcp_frame(ip, "10.9.0.1", port, 80, seq=1001 + off, ack=5001, flags="PA",
                         payload=bytes((off + k) % 251 for k in range(n))))


def open_flows(n):
    """``n`` flows that say hello and stay open: the capture's end ends them all at once."""
    frames = []
    for i in range(n):
        frames += handshake(i, 1.0 + i * 1e-3)
        frames.append(data(i, 1.0 + i * 1e-3 + 3e-4, 0, 100))
    return frames


def ooo_flood(flows, holes, size=1000):
    """Flows whose client sends ``holes`` segments each after a hole; then the server ACKs past
    them all (one packet: a GAP and a NEW_DATA per hole) for the even flows, and the odd flows are
    left to the capture's end."""
    frames = []
    t = 1.0
    for i in range(flows):
        frames += handshake(i, t)
        t += 1e-3
    for k in range(holes):
        for i in range(flows):
            frames.append(data(i, t, (2 * k + 1) * size, size))
            t += 1e-5
    for i in range(0, flows, 2):
        ip, port = client(i)
        frames.append((t, tcp_frame("10.9.0.1", ip, 80, port, seq=5001, ack=1001 + 2 * holes * size, flags="A")))
        t += 1e-5
    return frames


def bulk(flows, segments, size=1400):
    """In-order bytes, flows interleaved: a batch's NEW_DATA events carry much."""
    frames = []
    t = 1.0
    for i in range(flows):
        frames += handshake(i, t)
        t += 1e-3
    for k in range(segments):
        for i in range(flows):
            frames.append(data(i, t, k * size, size))
            t += 1e-5
    return frames


def pcap(frames):
    buf = io.BytesIO()
    write_pcap(buf, sorted(frames, key=lambda f: f[0]))
    return buf.getvalue()


def run(capture, batch_size, kinds=KINDS, **options):
    """Events (NEW_DATA as each side's runs of bytes, BUFFER_OVERRUN as totals per side and limit,
    the others in order), the engine's statistics and the most it held at a delivery."""
    engine = aiomb.Engine(**options)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(kinds)
    events, runs, overruns = [], {}, {}
    held = []

    def take():
        held.append(engine.event_memory)
        for ev in d.drain(sub):
            if ev.kind is EventKind.NEW_DATA:
                side = runs.setdefault((ev.flow_id, ev.side), [])
                if side and side[-1][1] == ev.offset:
                    side[-1][1] += ev.length
                    side[-1][2] += ev.value
                else:
                    side.append([ev.offset, ev.offset + ev.length, bytearray(ev.value)])
            elif ev.kind is EventKind.BUFFER_OVERRUN:
                total = overruns.setdefault((ev.flow_id, ev.side, ev.value), [0, 0])
                total[0] += ev.count
                total[1] += ev.length
            else:
                events.append((ev.kind, ev.key, ev.flow_id, ev.side, ev.ts, ev.reason, ev.old_state,
                               ev.new_state, ev.value, ev.offset, ev.length, ev.stats))

    batch = aiomb.FrameBatch(batch_size)
    with CaptureReader(io.BytesIO(capture)) as reader:
        while count := reader.fill(batch):
            pos = 0
            while (pos := engine.process(batch, pos)) < count:
                assert engine.paused
                take()
            take()
    while not engine.finish():
        assert engine.paused
        take()
    take()
    return (events, runs, overruns), engine.statistics(), max(held)


def fill(batch, frames):
    with CaptureReader(io.BytesIO(pcap(frames))) as reader:
        return reader.fill(batch)


def bounded(**options):
    """The tightest bound these limits allow."""
    return aiomb.Engine(**LIMITS, **options).min_event_memory


def test_the_end_of_a_capture_with_many_open_flows_comes_in_pieces_under_the_bound():
    capture = pcap(open_flows(3000))
    bound = bounded()
    free, free_stats, _ = run(capture, 2048, **LIMITS)
    got, stats, held = run(capture, 2048, max_event_memory=bound, **LIMITS)
    assert free_stats.event_pauses == 0 and free_stats.event_memory_peak > bound
    assert stats.event_pauses >= 2
    assert held <= stats.event_memory_peak <= bound == stats.max_event_memory
    assert got == free
    ends = [e for e in got[0] if e[0] is EventKind.CONN_END]
    assert len(ends) == 3000 and [e[2] for e in ends] == sorted(e[2] for e in ends)    # oldest first
    assert stats.flows_active == 0 and stats.event_memory == 0


def test_an_out_of_order_flood_with_gaps_and_new_data_stays_under_the_bound():
    capture = pcap(ooo_flood(60, 40))
    bound = bounded()
    free, free_stats, _ = run(capture, 4096, **LIMITS)
    got, stats, _ = run(capture, 4096, max_event_memory=bound, **LIMITS)
    assert free_stats.event_memory_peak > bound
    assert stats.event_pauses >= 2 and stats.event_memory_peak <= bound
    assert got == free
    gaps = [e for e in got[0] if e[0] is EventKind.GAP]
    assert len(gaps) == 60 * 40
    assert sorted(sum(r[1] - r[0] for r in side) for side in got[1].values()) == [40 * 1000] * 60


def test_bytes_in_order_stop_a_batch_between_packets_and_it_goes_on_there():
    capture = pcap(bulk(40, 60))
    bound = bounded()
    free, _, _ = run(capture, 4096, **LIMITS)
    got, stats, _ = run(capture, 4096, max_event_memory=bound, **LIMITS)
    assert stats.event_pauses >= 1 and stats.event_memory_peak <= bound
    assert got == free
    assert sum(r[1] - r[0] for side in got[1].values() for r in side) == 40 * 60 * 1400


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 400_000), st.integers(1, 3000), st.sampled_from(["open", "ooo", "bulk"]))
def test_the_bound_holds_exactly_at_any_size_and_batch_size(extra, batch_size, storm):
    frames = {"open": lambda: open_flows(1200), "ooo": lambda: ooo_flood(20, 30),
              "bulk": lambda: bulk(20, 40)}[storm]()
    capture = pcap(frames)
    bound = bounded() + extra
    one, _, _ = run(capture, 1, **LIMITS)
    got, stats, _ = run(capture, batch_size, max_event_memory=bound, **LIMITS)
    assert stats.event_memory_peak <= bound
    assert got == one


def test_a_flood_of_refused_segments_is_one_event_per_side_until_delivered():
    # 64 segments held, then 500 refused: one BUFFER_OVERRUN counts them, per delivery
    capture = pcap(ooo_flood(2, 564, size=10)[: 6 + 2 * 564])
    for batch_size in (1, 7, 4096):
        engine = aiomb.Engine(**LIMITS)
        d = aiomb.Dispatcher(engine)
        sub = d.subscribe(EventKind.BUFFER_OVERRUN)
        seen = []
        batch = aiomb.FrameBatch(batch_size)
        with CaptureReader(io.BytesIO(capture)) as reader:
            while reader.fill(batch):
                engine.process(batch)
                got = d.drain(sub)
                assert len({(e.flow_id, e.side) for e in got}) == len(got)     # one per side at most
                seen += got
        assert engine.statistics().buffer_overruns == sum(e.count for e in seen) == 2 * 500
        assert sum(e.length for e in seen) == 2 * 500 * 10
        assert {e.value for e in seen} == {"ooo_segments"}
        first = min(seen, key=lambda e: e.offset)
        assert first.offset == (2 * 64 + 1) * 10


def test_input_waits_until_a_stopped_batch_or_finish_is_done():
    capture = pcap(bulk(40, 60))
    engine = aiomb.Engine(max_event_memory=bounded(), **LIMITS)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    batch = aiomb.FrameBatch(4096)
    reader = CaptureReader(io.BytesIO(capture))
    count = reader.fill(batch)
    pos = engine.process(batch)
    assert engine.paused and 0 < pos < count
    other = aiomb.FrameBatch(4)
    with pytest.raises(RuntimeError, match=rf"stopped at frame {pos} .* call process\(batch, {pos}\)"):
        engine.process(other)
    with pytest.raises(RuntimeError, match="stopped at frame"):
        engine.process(batch, 0)
    with pytest.raises(RuntimeError, match="stopped at frame"):
        engine.expire(100.0)
    with pytest.raises(RuntimeError, match="stopped at frame"):
        engine.finish()
    d.drain(sub)
    assert engine.process(batch, pos) > pos
    reader.close()
    assert engine.finish(aiomb.EndReason.INTERRUPTED)       # an interrupted run may leave frames

    engine = aiomb.Engine(max_event_memory=bounded(), **LIMITS)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.CONN_END)
    with CaptureReader(io.BytesIO(pcap(open_flows(3000)))) as reader:
        while reader.fill(batch):
            engine.process(batch)
    assert not engine.finish() and engine.paused
    with pytest.raises(RuntimeError, match=r"finish\(\) had stopped"):
        engine.expire(100.0)
    n = len(d.drain(sub))
    while not engine.finish():
        n += len(d.drain(sub))
    assert n + len(d.drain(sub)) == 3000


def test_a_handler_raising_out_of_a_batch_leaves_it_to_go_on_after_that_frame():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    starts = d.subscribe(EventKind.CONN_START)
    retransmits = d.subscribe(EventKind.RETRANSMIT)
    raised = []

    def fail_once(view):        # at flow 2's SYN (frame 3), after its flow was made
        if view.flow.id == 2 and not raised:
            raised.append(2)
            raise ValueError("a middlebox bug")
    token = engine.add_handler(EventKind.CONN_START, fail_once)
    batch = aiomb.FrameBatch(64)
    count = fill(batch, [f for i in range(5) for f in handshake(i, 1.0 + i)])
    with pytest.raises(ValueError, match="a middlebox bug"):
        engine.process(batch)
    assert not engine.paused and engine.resume_at == 4 and engine.statistics().packets == 4
    for call in (lambda: engine.process(batch, 3), lambda: engine.process(aiomb.FrameBatch(4)),
                 lambda: engine.expire(100.0), engine.finish):
        with pytest.raises(RuntimeError, match=r"stopped at frame 4 of its batch when an inline handler, "
                                               r"predicate or timer callback raised; call process\(batch, 4\)"):
            call()
    assert engine.process(batch, 4) == count and engine.resume_at is None
    assert engine.statistics().packets == count == 15
    assert [ev.flow_id for ev in d.drain(starts)] == [1, 2, 3, 4, 5] and not d.drain(retransmits)
    engine.remove_handler(token)

    # a timer's callback raises before a frame: that frame is the one to go on from, and the
    # timer's event is logged (it fired), as an inline handler's
    timers = d.subscribe(EventKind.TIMER)
    timer_id = engine.set_timer(at=7.5, callback=lambda view: 1 / 0)
    count = fill(batch, [f for i in range(5, 8) for f in handshake(i, 2.0 + i)])
    with pytest.raises(ZeroDivisionError):
        engine.process(batch)
    assert engine.resume_at == 3 and engine.statistics().packets == 15 + 3
    assert [ev.value for ev in d.drain(timers)] == [(timer_id, 1)]
    assert engine.process(batch, 3) == count and engine.statistics().packets == 15 + 9

    # at the batch's last frame: the batch is done, other input is taken
    engine.add_handler(EventKind.CONN_START, lambda view: 1 / 0)
    fill(batch, handshake(9, 20.0)[:1])
    with pytest.raises(ZeroDivisionError):
        engine.process(batch)
    assert engine.resume_at is None and engine.finish()


def test_max_event_memory_is_at_least_what_one_packet_can_raise():
    engine = aiomb.Engine(**LIMITS)
    low = engine.min_event_memory
    assert engine.max_event_memory == max(64 << 20, 2 * low)
    assert aiomb.Engine(max_event_memory=low, **LIMITS).max_event_memory == low
    with pytest.raises(ValueError, match=f"max_event_memory must be an int of at least {low} "):
        aiomb.Engine(max_event_memory=low - 1, **LIMITS)
    with pytest.raises(ValueError, match="max_event_memory"):
        aiomb.Engine(max_event_memory=1.5)
    big = aiomb.Engine(max_buffer=64 << 20)
    assert big.max_event_memory == 2 * big.min_event_memory > 64 << 20


def test_without_a_dispatcher_nothing_is_logged_and_nothing_stops():
    engine = aiomb.Engine(max_event_memory=bounded(), **LIMITS)
    batch = aiomb.FrameBatch(4096)
    with CaptureReader(io.BytesIO(pcap(open_flows(3000)))) as reader:
        while count := reader.fill(batch):
            assert engine.process(batch) == count
    assert engine.finish()
    assert engine.statistics().event_memory_peak == 0


def test_an_epoll_program_gets_every_flow_end_of_a_storm_a_piece_at_a_time(tmp_path):
    path = tmp_path / "open.pcap"
    with open(path, "wb") as f:
        write_pcap(f, open_flows(3000))
    bound = bounded()
    ended = 0
    with aiomb.monitor(aiomb.capture(path), max_event_memory=bound, **LIMITS) as mon, aiomb.epoll() as ep:
        ep.register(mon, select.EPOLLIN)
        socks = {}
        while ready := ep.poll():
            for fd, mask in ready:
                if fd == mon.fileno():
                    for sock in iter_accept(mon):
                        socks[sock.fileno()] = sock
                        ep.register(sock, select.EPOLLIN)
                    if mask & select.EPOLLHUP:
                        ep.unregister(mon)
                elif mask & select.EPOLLHUP:
                    ep.unregister(fd)
                    socks.pop(fd).close()
                    ended += 1
                else:
                    socks[fd].recv(65536, aiomb.Side.CLIENT)
        stats = mon.engine.statistics()
    assert ended == 3000 and not socks
    assert stats.event_pauses >= 2 and stats.event_memory_peak <= bound


def iter_accept(mon):
    while True:
        try:
            yield mon.accept()
        except BlockingIOError:
            return
