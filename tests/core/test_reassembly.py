"""Sans-I/O stream reassembly: whole, split, reordered, duplicated, overlapped, lost, wrapped."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aiomb
from aiomb import EventKind, Side
from aiomb.testing import TcpConversation, tcp_frame

STREAM = EventKind.NEW_DATA | EventKind.GAP | EventKind.OVERLAP | EventKind.RETRANSMIT \
    | EventKind.BUFFER_OVERRUN


def client_segments(data, cuts, isn=0):
    """Split data at the cut offsets: [(stream offset, bytes), ...]."""
    edges = [0] + sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]
    return [(a, data[a:b]) for a, b in zip(edges, edges[1:])]


def run_stream(segments, *, isn=1000, policy="first", server_acks=(), end=True, **options):
    """Feed a handshake then the client's segments (offset, bytes); returns (events, engine)."""
    engine = aiomb.Engine(overlap_policy=policy, **options)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(STREAM)
    c = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80), client_isn=isn)
    c.handshake()
    for ts, f in c.frames:
        engine.feed(f, ts)
    t = 2.0
    for off, data in segments:
        engine.feed(tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=(isn + 1 + off) % 2**32,
                              ack=5001, flags="PA", payload=data), t)
        t += 0.001
    for ack_off in server_acks:
        engine.feed(tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=5001,
                              ack=(isn + 1 + ack_off) % 2**32, flags="A"), t)
        t += 0.001
    if end:
        engine.finish()
    return d.drain(sub), engine


def stream_of(events, side=Side.CLIENT):
    out = bytearray()
    for ev in events:
        if ev.kind is EventKind.NEW_DATA and ev.side is side:
            out += ev.value[-ev.length:]
    return bytes(out)


def test_new_data_and_gaps_tile_the_stream():
    events, _ = run_stream([(0, b"VERY"), (8, b"DATA"), (16, b"MORE")], server_acks=[12])
    ranges = [(e.offset, e.length) for e in events if e.kind in (EventKind.NEW_DATA, EventKind.GAP)]
    assert ranges == [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4)]


def gaps_of(events):
    return [(ev.offset, ev.length) for ev in events if ev.kind is EventKind.GAP]


def test_in_order_stream_and_new_data_once_per_batch():
    data = bytes(range(256)) * 20
    events, engine = run_stream(client_segments(data, range(0, len(data), 700), 1000))
    assert stream_of(events) == data
    new_data = [e for e in events if e.kind is EventKind.NEW_DATA]
    assert len(new_data) == 8                      # feed() is one batch per frame here
    assert engine.statistics().stream_memory == 0  # everything returned at the end


def test_an_ended_flow_returns_its_buffer_while_it_lingers():
    # a segment that arrives early is copied; once the hole is filled it is appended to the
    # side's buffer, which stays for more bytes while the flow is open and goes when it ends
    def run(reorder):
        c = TcpConversation()
        c.handshake()
        c.send("client", b"VERY")
        c.send("client", b"DATA")
        frames = list(c.frames)
        if reorder:
            frames[-2], frames[-1] = frames[-1], frames[-2]
        engine = aiomb.Engine()
        d = aiomb.Dispatcher(engine)
        sub = d.subscribe(EventKind.NEW_DATA | EventKind.CONN_END)
        for ts, f in frames:
            engine.feed(f, ts)
        open_memory = engine.statistics().stream_memory
        for i, frame in enumerate((c.fin("client"), c.fin("server"), c.ack("client"))):
            engine.feed(frame, 2.0 + i / 1000)
        kinds = [ev.kind for ev in d.drain(sub)]
        assert kinds == [EventKind.NEW_DATA] * (1 if reorder else 2) + [EventKind.CONN_END]
        assert engine.statistics().flows_active == 1     # closed, lingering
        return open_memory, engine.statistics().stream_memory
    (open_in_order, ended_in_order), (open_reordered, ended_reordered) = run(False), run(True)
    assert open_reordered == open_in_order + 2048       # the reordered side's buffer
    assert ended_reordered == ended_in_order


def burst_capture(tmp_path, segments=50, size=1000):
    """A client burst of ``segments`` in-order segments, all in one reader batch."""
    from aiomb.testing import write_pcap
    data = random.Random(5).randbytes(segments * size)
    c = TcpConversation()
    c.handshake()
    for i in range(0, len(data), size):
        c.send("client", data[i:i + size])
    path = tmp_path / "burst.pcap"
    write_pcap(path, c.frames)
    return path, data


def test_a_burst_of_segments_in_one_batch_is_referenced_not_copied(tmp_path):
    path, data = burst_capture(tmp_path)
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    reader = aiomb._core.CaptureReader(path)
    batch = aiomb.FrameBatch(2048)
    assert reader.fill(batch) == 53
    engine.process(batch)
    (ev,) = d.drain(sub)
    # the stream held references into the batch's frames, never a buffer of its own
    assert engine.statistics().stream_memory < 1024
    assert (ev.offset, ev.length) == (0, len(data))
    reader.close()
    del reader, batch               # the frames' block goes: the value's 50 pieces are copied out
    assert ev.value == data


def test_bytes_referenced_when_a_handler_raises_come_with_the_next_delivery(tmp_path):
    path, data = burst_capture(tmp_path)
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA | EventKind.GAP)
    seen, got = [], []

    def fail_once(pv):      # on the 27th data segment, before its payload reaches the stream
        seen.append(pv)
        if len(seen) == 30:
            raise RuntimeError("a middlebox bug")

    def run(batch):
        engine.process(batch)
        # values taken at once: the reader reuses its 4 KiB block for the next frames
        got.extend((ev.kind, ev.offset, ev.length, ev.value) for ev in d.drain(sub))
    engine.add_handler(EventKind.PACKET_IN, fail_once, hook=aiomb.Hook.SENDER)
    reader = aiomb._core.CaptureReader(path, chunk_size=4096)
    batch = aiomb.FrameBatch(40)
    with pytest.raises(RuntimeError, match="a middlebox bug"):
        while reader.fill(batch):
            run(batch)
    while reader.fill(batch):
        run(batch)
    engine.finish()
    got.extend((ev.kind, ev.offset, ev.length, ev.value) for ev in d.drain(sub))
    assert [(off, n) for kind, off, n, _ in got if kind is EventKind.GAP] == [(26000, 1000)]
    assert b"".join(value[-n:] for kind, _, n, value in got if kind is EventKind.NEW_DATA) \
        == data[:26000] + data[27000:]
    reader.close()


def test_one_new_data_event_per_side_per_batch():
    data = b"x" * 5000
    c = TcpConversation()
    c.handshake()
    for i in range(0, 5000, 500):
        c.send("client", data[i:i + 500])
    c.send("server", b"reply")
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    batch = aiomb.FrameBatch(64)
    import io

    from aiomb.testing import write_pcap
    buf = io.BytesIO()
    write_pcap(buf, c.frames)
    buf.seek(0)
    reader = aiomb._core.CaptureReader(buf)
    while reader.fill(batch):
        engine.process(batch)
    reader.close()
    events = d.drain(sub)
    assert [(e.side, e.offset, e.length) for e in events] == [(Side.CLIENT, 0, 5000), (Side.SERVER, 0, 5)]


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.lists(st.integers(0, 3000), max_size=12),
       st.randoms(use_true_random=False), st.integers(0, 2**32 - 1))
def test_any_split_any_order_with_duplicates_reassembles(data, cuts, rnd, isn):
    segs = client_segments(data, cuts, isn)
    dup = [s for s in segs if rnd.random() < 0.3]
    # same-byte overlaps: a segment spanning two neighbours
    spans = [(a, data[a:a + rnd.randint(1, 40)]) for a, _ in segs if rnd.random() < 0.2]
    order = segs + dup + spans
    rnd.shuffle(order)
    events, _ = run_stream(order, isn=isn)
    assert stream_of(events) == data
    assert gaps_of(events) == []
    assert not [e for e in events if e.kind is EventKind.OVERLAP]


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=10, max_size=2000), st.lists(st.integers(1, 2000), min_size=2, max_size=10),
       st.randoms(use_true_random=False))
def test_lost_segments_are_gaps_at_exactly_their_ranges(data, cuts, rnd):
    segs = client_segments(data, cuts, 0)
    lost = {i for i in range(len(segs)) if rnd.random() < 0.3}
    kept = [s for i, s in enumerate(segs) if i not in lost]
    rnd.shuffle(kept)
    events, engine = run_stream(kept)
    expected_gaps = []
    for i, (off, chunk) in enumerate(segs):
        if i in lost:
            if expected_gaps and expected_gaps[-1][0] + expected_gaps[-1][1] == off:
                expected_gaps[-1] = (expected_gaps[-1][0], expected_gaps[-1][1] + len(chunk))
            else:
                expected_gaps.append((off, len(chunk)))
    # a hole after the last kept segment is only known to be missing if something says so
    last_kept_end = max((off + len(c) for i, (off, c) in enumerate(segs) if i not in lost), default=0)
    expected_gaps = [g for g in expected_gaps if g[0] < last_kept_end]
    assert gaps_of(events) == expected_gaps
    assert stream_of(events) == b"".join(c for i, (_, c) in enumerate(segs) if i not in lost)
    assert engine.statistics().stream_memory == 0


def test_ack_past_a_hole_reports_the_gap_at_once():
    events, _ = run_stream([(0, b"VERY"), (8, b"DATA")], server_acks=[12], end=False)
    assert gaps_of(events) == [(4, 4)]
    assert stream_of(events) == b"VERYDATA"


@pytest.mark.parametrize("policy,expected", [("first", b"GOOD"), ("last", b"EVIL")])
def test_conflicting_overlap_follows_the_policy(policy, expected):
    events, engine = run_stream([(4, b"GOOD"), (4, b"EVIL"), (0, b"head")], policy=policy)
    assert stream_of(events) == b"head" + expected
    (ov,) = [e for e in events if e.kind is EventKind.OVERLAP]
    assert (ov.offset, ov.length, ov.value) == (4, 4, (b"GOOD", b"EVIL"))


def test_partial_overlaps_left_and_right():
    # held "BBBB" at 4..8; new "aaaaXX" at 2..8 (left overlap), new "YYcc" at 6..10 (right)
    for policy, expected in (("first", b"..aaBBBBcc"), ("last", b"..aaXXYYcc")):
        events, _ = run_stream([(4, b"BBBB"), (2, b"aaXX"), (6, b"YYcc"), (0, b"..")],
                               policy=policy)
        assert stream_of(events) == expected, policy
        assert len([e for e in events if e.kind is EventKind.OVERLAP]) == 2


def test_retransmission_of_seen_bytes():
    events, _ = run_stream([(0, b"abcdef"), (0, b"abc"), (2, b"cdef")])
    assert [(e.offset, e.length) for e in events if e.kind is EventKind.RETRANSMIT] == [(0, 3), (2, 4)]


def test_sequence_wraparound():
    data = bytes(range(200)) * 10
    isn = 2**32 - 700               # the stream crosses the wrap
    segs = client_segments(data, [300, 650, 699, 700, 1200], isn)
    segs = [segs[2], segs[0], segs[4], segs[1], segs[3], segs[5]]
    events, _ = run_stream(segs, isn=isn)
    assert stream_of(events) == data


def test_streams_longer_than_4_gib_use_64_bit_offsets():
    engine = aiomb.Engine(buffering=False)          # offsets and counters only: no copies
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    c = TcpConversation(client_isn=10)
    c.handshake()
    for ts, f in c.frames:
        engine.feed(f, ts)
    chunk = 60000
    frame = bytearray(tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=0, ack=5001, flags="A",
                                payload=b"z" * chunk))
    seq = 11
    for _i in range(72_000):           # 4.32 GB of sequence space: the 32-bit numbers wrap once
        frame[38:42] = (seq % 2**32).to_bytes(4, "big")
        engine.feed(frame, 2.0)
        seq += chunk
    events = d.drain(sub)
    assert len(events) == 72_000
    assert events[-1].offset + events[-1].length == 72_000 * chunk > 2**32
    assert engine.flows()[0].statistics().client.stream_bytes == 72_000 * chunk


def test_buffering_off_keeps_counters_and_events():
    events, engine = run_stream([(0, b"hello"), (5, b" world")], end=False, buffering=False)
    new = [e for e in events if e.kind is EventKind.NEW_DATA]
    assert [(e.offset, e.length, e.value) for e in new] == [(0, 5, None), (5, 6, None)]


def test_ooo_flood_is_bounded():
    segs = [(10 + 3 * i, b"x") for i in range(5000)]     # tiny out-of-order segments, holes between
    events, engine = run_stream(segs, end=False, max_ooo_segments=100)
    overruns = [e for e in events if e.kind is EventKind.BUFFER_OVERRUN]
    assert [(e.value, e.count, e.offset, e.length) for e in overruns] == [("ooo_segments", 4900, 10 + 3 * 100, 4900)]
    st = engine.statistics()
    assert st.buffer_overruns == 4900 and st.stream_memory < 100 * 200
    (flow,) = engine.flows()
    assert len(flow.buffer(Side.CLIENT)["out_of_order"]) == 100


def test_a_far_sequence_jump_is_counted_and_still_buffered():
    events, engine = run_stream([(0, b"ok"), (1 << 30, b"far away")])
    assert stream_of(events) == b"okfar away"                # bounded by bytes, not by distance
    assert gaps_of(events) == [(2, (1 << 30) - 2)]
    assert engine.statistics().sequence_jumps == 1


def test_peek_consume_and_hold():
    engine = aiomb.Engine(reassembly=True)
    seen = []

    def on_data(pkt):
        flow = pkt.flow
        seen.append(flow.peek(Side.CLIENT))
        flow.consume(Side.CLIENT, 2)                      # keep the rest for the next delivery

    engine.add_handler(EventKind.NEW_DATA, on_data)
    c = TcpConversation()
    c.handshake()
    c.send("client", b"abcd")
    c.send("client", b"ef")
    for ts, f in c.frames:
        engine.feed(f, ts)
    assert seen == [b"abcd", b"cdef"]
    (flow,) = engine.flows()
    assert flow.buffer(Side.CLIENT)["consumed_offset"] == 4
    assert flow.ppeek(Side.CLIENT, 4, 2) == b"ef"
    with pytest.raises(ValueError, match=r"bytes \[0, 2\) are not held; the buffer holds \[4, 6\)"):
        flow.ppeek(Side.CLIENT, 0, 2)


def test_stop_monitoring_a_side():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    c = TcpConversation()
    c.handshake()
    c.send("client", b"before")
    for ts, f in c.frames:
        engine.feed(f, ts)
    (flow,) = engine.flows()
    flow.stop(Side.CLIENT)
    engine.feed(c.send("client", b"after"), 3.0)
    assert [e.value for e in d.drain(sub)] == [b"before"]


def test_reassembly_is_off_unless_stream_events_are_wanted():
    engine = aiomb.Engine()
    aiomb.Dispatcher(engine).subscribe(EventKind.CONN_START)
    c = TcpConversation()
    c.handshake()
    c.send("client", b"data")
    for ts, f in c.frames:
        engine.feed(f, ts)
    assert not engine.reassembling
    assert engine.flows()[0].statistics().client.stream_bytes == 0


def test_reassembly_true_works_with_nobody_subscribed():
    engine = aiomb.Engine(reassembly=True)
    assert engine.reassembling
    c = TcpConversation()
    c.handshake()
    c.send("client", b"data")
    for ts, f in c.frames:
        engine.feed(f, ts)
    assert engine.flows()[0].statistics().client.stream_bytes == 4


# held "HHHH" at stream offsets 4..8, then a new segment; rows: (start, new bytes)
OVERLAP_CASES = {
    "same start, ends before": (4, b"nn"),
    "same start, ends same": (4, b"nnnn"),
    "same start, ends after": (4, b"nnnnnn"),
    "starts before, ends within": (2, b"nnnn"),
    "starts before, ends same": (2, b"nnnnnn"),
    "starts before, ends after": (2, b"nnnnnnnn"),
    "starts after, ends after": (6, b"nnnn"),
    "starts after, ends same": (5, b"nnn"),
    "starts after, ends within": (5, b"nn"),
}
STARTS_BEFORE = {"starts before, ends within", "starts before, ends same", "starts before, ends after"}
# which cases take the new bytes, per policy family (Suricata's target-based rules)
NEW_WINS = {
    "first": set(),
    "last": set(OVERLAP_CASES),
    "bsd": STARTS_BEFORE,
    "linux": STARTS_BEFORE | {"same start, ends after"},
    "old_linux": STARTS_BEFORE | {"same start, ends after", "same start, ends same"},
    "solaris": {"starts before, ends same", "starts before, ends after", "same start, ends after",
                "same start, ends same", "starts after, ends after"},
}
ALIASES = {"vista": "first", "windows": "bsd", "win2003": "bsd", "macos": "bsd", "hpux10": "bsd",
           "irix": "bsd", "hpux11": "solaris"}


def expected_overlap(case, new_wins):
    start, new = OVERLAP_CASES[case]
    out = bytearray(b"....HHHH")
    for i, b in enumerate(new):
        off = start + i
        if off >= len(out):
            out.append(b)
        elif off < 4 or off >= 8 or new_wins:
            out[off] = b
    return bytes(out)


@pytest.mark.parametrize("policy", sorted(NEW_WINS) + sorted(ALIASES))
@pytest.mark.parametrize("case", sorted(OVERLAP_CASES))
def test_overlap_policy_table(policy, case):
    family = ALIASES.get(policy, policy)
    start, new = OVERLAP_CASES[case]
    head = (0, b"...."[:min(start, 4)])            # the bytes before offset 4 nobody sent yet
    events, _ = run_stream([(4, b"HHHH"), (start, new), head], policy=policy)
    assert stream_of(events) == expected_overlap(case, case in NEW_WINS[family])
    assert [e.kind for e in events].count(EventKind.OVERLAP) == 1


@pytest.mark.parametrize("policy", sorted(NEW_WINS) + sorted(ALIASES))
def test_a_segment_partly_in_order_settles_held_copies_by_the_policy(policy):
    # ".." in order, "HHHH" held at 4..8 in the one out-of-order slot, then a segment from 1 to
    # 10: its bytes from 2 are in order (no slot needed), and it starts before the held copy
    family = ALIASES.get(policy, policy)
    events, engine = run_stream([(0, b".."), (4, b"HHHH"), (1, b"." + b"n" * 8)], policy=policy,
                                max_ooo_segments=1)
    held = b"nnnn" if "starts before, ends after" in NEW_WINS[family] else b"HHHH"
    assert stream_of(events) == b"..nn" + held + b"nn"
    assert [e.kind for e in events if e.kind is not EventKind.NEW_DATA] == [EventKind.OVERLAP]
    assert engine.statistics().buffer_overruns == 0


def test_policy_per_server_network_and_per_flow():
    policies = {"10.0.0.0/24": "last"}
    events, _ = run_stream([(4, b"GOOD"), (4, b"EVIL"), (0, b"head")], host_policies=policies)
    assert stream_of(events) == b"headEVIL"                        # server 10.0.0.2 is in the net
    events, _ = run_stream([(4, b"GOOD"), (4, b"EVIL"), (0, b"head")],
                           host_policies={"192.0.2.0/24": "last"})
    assert stream_of(events) == b"headGOOD"
    with pytest.raises(ValueError, match="unknown overlap_policy 'ntfs'; choose one of first"):
        aiomb.Engine(overlap_policy="ntfs")
    with pytest.raises(ValueError, match="is not an IP network"):
        aiomb.Engine(host_policies={"nonsense": "last"})


def test_set_policy_on_a_flow():
    engine = aiomb.Engine(reassembly=True)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    c = TcpConversation()
    c.handshake()
    for ts, f in c.frames:
        engine.feed(f, ts)
    engine.flows()[0].set_policy("last")
    for off, data in ((4, b"GOOD"), (4, b"EVIL"), (0, b"head")):
        engine.feed(tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=1001 + off, ack=5001, flags="PA",
                              payload=data), 3.0)
    assert b"".join(e.value for e in d.drain(sub)) == b"headEVIL"


def model_new_wins(family, s, h):
    """The README's policy table, as a function of the new segment s and the held segment h."""
    (s0, s1), (h0, h1) = s, h
    if family in ("first", "last"):
        return family == "last"
    if family == "solaris":                 # the copy reaching furthest, then the one starting first
        return s1 > h1 or (s1 == h1 and s0 <= h0)
    if s0 != h0:
        return s0 < h0
    return {"bsd": False, "linux": s1 > h1, "old_linux": s1 >= h1}[family]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(NEW_WINS)),
       st.lists(st.tuples(st.integers(1, 40), st.integers(1, 12)), min_size=1, max_size=8))
def test_conflicting_overlaps_follow_the_documented_policy(family, shapes):
    # every segment carries its own letter, so the winner of each byte is visible. A byte's copy
    # changes only if the new segment wins against every earlier segment that brought that byte
    # (as Suricata compares a new segment with each one it overlaps), not only the first of them
    segments = [(start, bytes([65 + i]) * length) for i, (start, length) in enumerate(shapes)]
    copy, earlier = {}, {}                      # offset -> byte; offset -> segment ranges
    for start, data in segments:
        rng = (start, start + len(data))
        for i, b in enumerate(data):
            off = start + i
            if all(model_new_wins(family, rng, h) for h in earlier.get(off, ())):
                copy[off] = b
            earlier.setdefault(off, []).append(rng)
    events, _ = run_stream(segments + [(0, b".")], policy=family)
    assert stream_of(events) == b"." + bytes(copy[off] for off in range(1, max(copy) + 1) if off in copy)


@pytest.mark.parametrize("policy,expected", [("linux", b".BBBBAAAAA"), ("bsd", b".BBBBAAAAA"),
                                             ("old_linux", b".BBBBAAAAA"), ("solaris", b".BBAAAAAAA")])
def test_an_overlap_is_judged_against_the_segment_whose_copy_is_held(policy, expected):
    # A is held at 3..10; B starts before it, so B's copy of 3..5 wins (not for solaris: B ends
    # within A); C has B's start and ends within B: for all of 1..4, B's copy or A's is held and
    # C loses against it (C would win against A at 3..4, but that copy is B's now). Real Linux
    # delivers .BBBBAAAAA
    events, _ = run_stream([(3, b"AAAAAAA"), (1, b"BBBB"), (1, b"CCC"), (0, b".")], policy=policy)
    assert stream_of(events) == expected
def test_a_new_copy_cut_out_of_a_held_piece_needs_an_out_of_order_slot():
    # B's copy of 3..5 wins over A's (linux: B starts before A) and becomes a piece of its own,
    # B's, cut out of A's: one slot more. With two slots (A's, then B's 1..3) it is refused:
    # counted, BUFFER_OVERRUN, and A's copy stays; with three it is taken
    segments = [(3, b"AAAAAAA"), (1, b"BBBB"), (0, b".")]
    events, engine = run_stream(segments, policy="linux", max_ooo_segments=2)
    assert stream_of(events) == b".BBAAAAAAA"
    assert [(e.offset, e.length, e.value) for e in events if e.kind is EventKind.BUFFER_OVERRUN] \
        == [(3, 2, "ooo_segments")]
    assert engine.statistics().buffer_overruns == 1
    for policy, slots in (("linux", 3), ("last", 2)):    # last: any next copy wins, no cut needed
        events, engine = run_stream(segments, policy=policy, max_ooo_segments=slots)
        assert stream_of(events) == b".BBBBAAAAA"
        assert engine.statistics().buffer_overruns == 0


def test_split_at_every_byte_in_both_orders():
    data = bytes(range(64))
    for k in range(1, len(data)):
        for order in ((0, 1), (1, 0)):
            parts = [(0, data[:k]), (k, data[k:])]
            events, _ = run_stream([parts[i] for i in order])
            assert stream_of(events) == data, (k, order)
    one_byte = [(i, data[i:i + 1]) for i in range(len(data))]
    events, _ = run_stream(one_byte[::-1])
    assert stream_of(events) == data


def test_data_on_syn_starts_the_stream():
    engine = aiomb.Engine(reassembly=True)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    c = TcpConversation()
    c.syn(payload=b"GET / HTTP/1.1\r\n\r\n")
    c.syn_ack()
    c.ack("client")
    c.send("client", b"more")
    for ts, f in c.frames:
        engine.feed(f, ts)
    assert b"".join(e.value for e in d.drain(sub)) == b"GET / HTTP/1.1\r\n\r\nmore"


def batch_of(frames):
    """Feed helper: all frames in one FrameBatch (so in-order payloads are referenced)."""
    import io

    from aiomb.testing import write_pcap
    buf = io.BytesIO()
    write_pcap(buf, frames)
    buf.seek(0)
    reader = aiomb._core.CaptureReader(buf)
    batch = aiomb.FrameBatch(len(frames))
    assert reader.fill(batch) == len(frames)
    return reader, batch


def test_peek_mid_batch_sees_referenced_bytes_and_held_sides_keep_them():
    c = TcpConversation()
    c.handshake()
    for part in (b"one ", b"two ", b"three"):
        c.send("client", part)
    engine = aiomb.Engine(reassembly=True)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    peeks = []

    def at_receiver(pkt):
        if pkt.side is Side.CLIENT and pkt.payload_length:
            peeks.append(pkt.flow.peek(Side.CLIENT))
            if len(peeks) == 1:
                pkt.flow.hold(Side.CLIENT)

    engine.add_handler(EventKind.PACKET_IN, at_receiver, hook=aiomb.Hook.RECEIVER)
    reader, batch = batch_of(c.frames)
    engine.process(batch)
    reader.close()
    assert peeks == [b"one ", b"one two ", b"one two three"]
    (ev,) = d.drain(sub)
    assert (ev.offset, ev.length, ev.value) == (0, 13, b"one two three")
    (flow,) = engine.flows()
    assert flow.peek(Side.CLIENT) == b"one two three"    # held: copied out of the frames


def test_one_batch_many_segments_beyond_the_reference_slots():
    c = TcpConversation()
    c.handshake()
    data = bytes(range(256)) * 4
    for i in range(0, len(data), 32):                     # 32 segments > the 8 reference slots
        c.send("client", data[i:i + 32])
    engine = aiomb.Engine(reassembly=True)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    reader, batch = batch_of(c.frames)
    engine.process(batch)
    reader.close()
    assert b"".join(e.value for e in d.drain(sub)) == data


def interleaved_capture(tmp_path, flows=24, segments=40):
    """A pcap of ``flows`` connections sending interleaved segments; returns (path, streams)."""
    from aiomb.testing import write_pcap
    rnd = random.Random(7)
    convs, streams, frames = [], {}, []
    for i in range(flows):
        c = TcpConversation((f"10.0.1.{i + 1}", 40000 + i), ("10.0.2.1", 80))
        c.handshake()
        convs.append(c)
        streams[40000 + i] = [bytearray(), bytearray()]
    for _ in range(segments):
        for i, c in enumerate(convs):
            side = rnd.choice(("client", "server"))
            data = rnd.randbytes(rnd.randrange(1, 600))
            c.send(side, data)
            streams[40000 + i][side == "server"] += data
    for c in convs:
        c.fin("client")
        c.fin("server")
    # handshakes first, then the data of every flow interleaved, then the FINs
    per_flow = [c.frames for c in convs]
    for frames_of in per_flow:
        frames += frames_of[:3]
    for k in range(3, 3 + segments):
        for frames_of in per_flow:
            frames.append(frames_of[k])
    for frames_of in per_flow:
        frames += frames_of[3 + segments:]
    frames = [(1.0 + n * 1e-4, f) for n, (_, f) in enumerate(frames)]
    path = tmp_path / "interleaved.pcap"
    write_pcap(path, frames)
    return path, {port: (bytes(a), bytes(b)) for port, (a, b) in streams.items()}


def read_events(path, *, chunk_size, look=lambda ev: False):
    """Every NEW_DATA event of the capture, read through small blocks; ``look`` picks the
    events whose value is taken as soon as they are made."""
    engine = aiomb.Engine(reassembly=True)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    reader = aiomb._core.CaptureReader(path, chunk_size=chunk_size)
    batch = aiomb.FrameBatch(64)
    events = []
    while reader.fill(batch):
        engine.process(batch)
        for ev in d.drain(sub):
            if look(ev):
                _ = ev.value
            events.append(ev)
    engine.finish()
    events += d.drain(sub)
    return events, reader


def joined(events):
    out = {}
    for ev in events:
        pair = out.setdefault(ev.key.client_port, [b"", b""])
        pair[ev.side] += ev.value
    return {port: tuple(pair) for port, pair in out.items()}


def test_new_data_values_kept_past_the_reuse_of_their_frames_keep_their_bytes(tmp_path):
    # 4 KiB blocks: the capture needs hundreds, so every block is reused while events made
    # from its frames are still held (values copied out then), or reclaimed once they are gone
    path, streams = interleaved_capture(tmp_path)
    for look in (lambda ev: False, lambda ev: ev.offset % 2 == 0):
        events, reader = read_events(path, chunk_size=4096, look=look)
        assert reader.frame_memory <= 16 * 4096 * 2     # MAX_BLOCKS, a block at most doubled
        reader.close()
        assert joined(events) == streams


def test_new_data_values_outlive_the_reader(tmp_path):
    import gc
    path, streams = interleaved_capture(tmp_path, flows=4, segments=10)
    events, reader = read_events(path, chunk_size=1 << 20)
    reader.close()
    del reader
    gc.collect()
    assert joined(events) == streams


def test_event_ranges_are_none_or_non_negative():
    ev = aiomb.Event(kind=EventKind.GAP, offset=3, length=4)
    assert (ev.offset, ev.length) == (3, 4)
    assert aiomb.Event(kind=EventKind.FIN).offset is None
    with pytest.raises(ValueError, match="offset must be None or a non-negative int, got -1"):
        aiomb.Event(kind=EventKind.GAP, offset=-1, length=4)


def test_two_subscribers_share_each_value_and_both_read_it(tmp_path):
    path, streams = interleaved_capture(tmp_path, flows=6, segments=20)
    engine = aiomb.Engine(reassembly=True)
    d = aiomb.Dispatcher(engine)
    subs = [d.subscribe(EventKind.NEW_DATA) for _ in range(2)]
    reader = aiomb._core.CaptureReader(path, chunk_size=4096)
    batch = aiomb.FrameBatch(64)
    first, second = [], []
    while reader.fill(batch):
        engine.process(batch)
        a, b = d.drain(subs[0]), d.drain(subs[1])
        for ev in a:
            _ = ev.value                # the first subscriber looks at once, the second later
        first += a
        second += b
    reader.close()
    assert joined(first) == joined(second) == streams


def test_a_few_values_kept_from_each_batch_keep_their_bytes(tmp_path):
    # a consumer holding on to the last event of each batch: the reader copies those few out
    # and reads on into the same block
    path, streams = interleaved_capture(tmp_path)
    engine = aiomb.Engine(reassembly=True)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    reader = aiomb._core.CaptureReader(path, chunk_size=4096)
    batch = aiomb.FrameBatch(64)
    kept = []
    while reader.fill(batch):
        engine.process(batch)
        kept += d.drain(sub)[-1:]
    assert reader.frame_memory == 4096
    reader.close()
    assert len(kept) > 50
    for ev in kept:
        stream = streams[ev.key.client_port][ev.side]
        assert ev.value == stream[ev.offset:ev.offset + ev.length]


@pytest.mark.parametrize("data", [b"", b"abc"])
def test_a_fin_past_bytes_never_seen_ends_the_stream_with_a_gap(data):
    # found by fuzz/reassembly.py: a side that sent no payload had no stream, so the hole
    # before its FIN went unreported (and uncounted in ``missed``), unlike a side with payload
    engine = aiomb.Engine(reassembly=True)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(STREAM)
    c = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80), client_isn=1000)
    c.handshake()
    frames = [f for _, f in c.frames]
    if data:
        frames.append(tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=1001, ack=5001, flags="PA", payload=data))
    frames.append(tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=1101, ack=5001, flags="FA"))
    flows = []
    engine.add_handler(EventKind.CONN_START, lambda packet: flows.append(packet.flow))
    for i, frame in enumerate(frames):
        engine.feed(frame, 1.0 + i / 1000)
    engine.finish()
    events = [(ev.kind, ev.side, ev.offset, ev.length) for ev in d.drain(sub)]
    gap = [(EventKind.GAP, Side.CLIENT, len(data), 100 - len(data))]
    assert events == ([(EventKind.NEW_DATA, Side.CLIENT, 0, len(data))] if data else []) + gap
    assert flows[0].statistics().client.missed == 100 - len(data)
    assert engine.statistics().stream_memory == 0
