"""Retransmissions and overlaps recognised whatever the options and the batching: RETRANSMIT turns
on what it needs, conflicts are found after the first copy was delivered (within the overlap
window), and every side counts what a retransmission-rate report divides by."""

import pytest

import aiomb
from aiomb import EventKind, Side
from aiomb.testing import TcpConversation, tcp_frame, write_pcap

CLIENT = Side.CLIENT


def engine_with(kinds, **options):
    engine = aiomb.Engine(**options)
    d = aiomb.Dispatcher(engine)
    return engine, d, d.subscribe(kinds | EventKind.CONN_END)


def feed(engine, frames):
    for ts, frame in frames:
        engine.feed(frame, ts)          # one frame per batch: the hardest case for batching


def resend(c, data, back, ts_step=0.001):
    """The client sends ``data`` again over the last ``back`` bytes it sent (a retransmission)."""
    c.send("client", data, advance=False, seq_offset=-back)


def test_subscribing_to_retransmit_alone_recognises_data_retransmissions():
    c = TcpConversation()
    c.handshake()
    c.send("client", b"abcd")
    resend(c, b"abcd", 4)
    resend(c, b"cd", 2)
    c.send("client", b"ef")
    engine, d, sub = engine_with(EventKind.RETRANSMIT)
    assert engine.reassembling
    feed(engine, c.frames)
    engine.finish()
    events = d.drain(sub)
    assert [(e.offset, e.length) for e in events if e.kind is EventKind.RETRANSMIT] == [(0, 4), (2, 2)]
    st = events[-1].stats.client
    assert (st.data_segments, st.retransmits, st.retransmitted_bytes) == (4, 2, 6)


@pytest.mark.parametrize("reassembly", [True, False])
@pytest.mark.parametrize("payload", [b"bye", b""], ids=["data and FIN", "FIN alone"])
def test_a_fin_segment_sent_again_is_one_retransmission(payload, reassembly):
    """A segment carrying data and a FIN, sent again, is one retransmission (tshark counts one),
    whether the stream counts it (its bytes) or the sender's update (its FIN); one RETRANSMIT."""
    c = TcpConversation()
    c.handshake()
    c.send("client", b"hello")
    c.send("client", payload, flags="FPA")
    c.send("client", payload, flags="FPA", advance=False, seq_offset=-len(payload) - 1)
    kinds = EventKind.RETRANSMIT if reassembly else EventKind.FIN
    engine, d, sub = engine_with(kinds, reassembly=reassembly)
    feed(engine, c.frames)
    engine.finish()
    events = d.drain(sub)
    st = events[-1].stats.client
    assert st.retransmits == 1
    if reassembly:
        assert sum(e.kind is EventKind.RETRANSMIT for e in events) == 1


def test_reassembly_follows_what_is_subscribed():
    engine, d, _ = engine_with(EventKind.RETRANSMIT)
    assert engine.reassembling
    assert not aiomb.Engine().reassembling
    assert not aiomb.Engine(reassembly=False).reassembling


@pytest.mark.parametrize("window, found", [(65536, True), (0, False)])
def test_a_conflict_is_found_after_the_first_copy_was_delivered(window, found):
    c = TcpConversation()
    c.handshake()
    c.send("client", b"GOOD")
    c.ack("server")
    resend(c, b"EVIL", 4)
    engine, d, sub = engine_with(EventKind.OVERLAP | EventKind.NEW_DATA, overlap_window=window)
    feed(engine, c.frames)
    engine.finish()
    events = d.drain(sub)
    overlaps = [(e.offset, e.length, e.value) for e in events if e.kind is EventKind.OVERLAP]
    assert overlaps == ([(0, 4, (b"GOOD", b"EVIL"))] if found else [])
    assert b"".join(e.value for e in events if e.kind is EventKind.NEW_DATA) == b"GOOD"
    st = events[-1].stats.client
    assert (st.overlap_conflicts, st.overlap_conflict_bytes) == ((1, 4) if found else (0, 0))


@pytest.mark.parametrize("one_batch", [False, True])
def test_bytes_older_than_the_window_are_counted_unchecked(tmp_path, one_batch):
    """Bytes further back than ``overlap_window`` from the end of the bytes in order are
    unchecked, whether they were delivered (a batch a frame) or are still held (one batch)."""
    c = TcpConversation()
    c.handshake()
    first = bytes(range(256)) * 40                  # 10240 bytes
    for i in range(0, len(first), 1024):
        c.send("client", first[i:i + 1024])
    resend(c, b"X" * 1024, len(first))               # the first KiB again, other bytes
    resend(c, b"Y" * 1024, 1024)                     # the last KiB again, other bytes
    engine, d, sub = engine_with(EventKind.OVERLAP, overlap_window=4096)
    if one_batch:
        path = tmp_path / "resent.pcap"
        write_pcap(path, c.frames)
        batch = aiomb.FrameBatch(len(c.frames))
        with aiomb.capture(path) as source:
            assert source.read(batch) == len(c.frames)
        engine.process(batch)
    else:
        feed(engine, c.frames)
    engine.finish()
    events = d.drain(sub)
    assert [(e.offset, e.length) for e in events if e.kind is EventKind.OVERLAP] == [(len(first) - 1024, 1024)]
    assert events[-1].stats.client.unchecked_bytes == 1024
    assert engine.overlap_window == 4096
    with pytest.raises(ValueError, match="overlap_window"):
        aiomb.Engine(overlap_window=-1)


def test_out_of_order_segments_and_zero_window_probes_are_counted():
    c = TcpConversation()
    c.handshake()
    c.send("client", b"later", advance=False, seq_offset=3)    # ahead of a hole
    c.send("client", b"abc")                                     # fills it
    c.client_seq += 5
    c.frames.append((2.0, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=c.server_seq,
                                    ack=c.client_seq, flags="A", window=0)))      # window closed
    c.send("client", b"p")                                       # a zero-window probe
    engine, d, sub = engine_with(EventKind.NEW_DATA)
    feed(engine, c.frames)
    engine.finish()
    st = d.drain(sub)[-1].stats.client
    assert (st.data_segments, st.out_of_order, st.zero_window_probes) == (3, 1, 1)
    assert st.stream_bytes == 9
