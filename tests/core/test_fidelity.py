"""TCP fidelity under evasion and capture loss: what the endpoint saw (issue 13's classes).

Each test crafts the situation frame by frame and asserts exact events and counters."""

import io
import struct

import pytest

import aiomb
from aiomb import EventKind, Side
from aiomb._core import CaptureReader
from aiomb.testing import (
    TcpConversation,
    ethernet_frame,
    internet_checksum,
    ipv4_fragments,
    ipv6_fragments,
    tcp_frame,
    tcp_options,
    udp_frame,
    write_pcap,
)

CLIENT, SERVER = Side.CLIENT, Side.SERVER


def engine_and_events(kinds, **options):
    engine = aiomb.Engine(**options)
    d = aiomb.Dispatcher(engine)
    return engine, d, d.subscribe(kinds)


def feed(engine, frames):
    for ts, frame in frames:
        engine.feed(frame, ts)


# -- 1. bogus replies to a SYN --------------------------------------------------------------


def syn_with_timestamps(tsval=1000):
    c = TcpConversation()
    c.syn(options=tcp_options(timestamps=(tsval, 0)))
    return c


def reply(c, flags, tsecr, ts=1.5, payload=b""):
    opts = tcp_options(timestamps=(777, tsecr)) if tsecr is not None else b""
    return (ts, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=c.server_isn, ack=c.client_isn + 1,
                          flags=flags, options=opts, payload=payload))


def test_a_reset_that_does_not_echo_the_syns_timestamp_is_rejected_and_the_handshake_goes_on():
    c = syn_with_timestamps(1000)
    frames = list(c.frames) + [reply(c, "RA", tsecr=99999)]
    c.frames.clear()
    c.syn_ack(options=tcp_options(timestamps=(777, 1000)))
    c.ack("client")
    c.send("server", b"the data the bogus RST tried to hide")
    frames += [(2.0 + i * 0.01, f) for i, (_, f) in enumerate(c.frames)]
    engine, d, sub = engine_and_events(EventKind.REJECTED | EventKind.ESTABLISHED | EventKind.CONN_END
                                       | EventKind.NEW_DATA | EventKind.RST)
    feed(engine, frames)
    engine.finish()
    events = [(e.kind, e.side, e.value) for e in d.drain(sub)]
    assert events == [
        (EventKind.REJECTED, SERVER, "bad_timestamp_echo"),
        (EventKind.ESTABLISHED, CLIENT, None),
        (EventKind.NEW_DATA, SERVER, b"the data the bogus RST tried to hide"),
        (EventKind.CONN_END, None, None),
    ]
    st = engine.statistics()
    assert st.rejected == 1 and st.flows_created == 1


def test_bogus_ack_and_fin_replies_are_rejected_too_but_a_matching_or_absent_echo_is_not():
    for flags, tsecr, rejected in (("A", 5, True), ("FA", 5, True), ("RA", 1000, False), ("RA", 0, False),
                                   ("RA", None, False)):
        c = syn_with_timestamps(1000)
        engine, d, sub = engine_and_events(EventKind.REJECTED | EventKind.RST)
        feed(engine, list(c.frames) + [reply(c, flags, tsecr)])
        kinds = [e.kind for e in d.drain(sub)]
        assert kinds == ([EventKind.REJECTED] if rejected else ([EventKind.RST] if "R" in flags else [])), \
            (flags, tsecr)


def test_a_reply_echoing_a_timestamp_to_a_syn_that_offered_none_is_rejected():
    """suricata-verify bug-3286-03 (the Windows variant): the SYN offers no timestamps and an
    injected RST/ACK, acking the SYN, echoes one. Linux's PAWS check in SYN_SENT drops it (the echo
    is not of a time the SYN was sent; Suricata's StateSynSentValidateTimestamp too): REJECTED,
    and the handshake and the response go on. An echo of 0 is taken."""
    c = TcpConversation()
    c.syn()
    frames = list(c.frames) + [reply(c, "RA", tsecr=100), reply(c, "FA", tsecr=100, ts=1.6)]
    frames += handshake_and_exchange(c)
    engine, d, sub = engine_and_events(STREAM_KINDS)
    feed(engine, frames)
    assert [(e.kind, e.side, e.value) for e in d.drain(sub)] == [
        (EventKind.REJECTED, SERVER, "bad_timestamp_echo"), (EventKind.REJECTED, SERVER, "bad_timestamp_echo"),
        (EventKind.ESTABLISHED, CLIENT, None),
        (EventKind.NEW_DATA, CLIENT, b"GET / HTTP/1.1\r\n\r\n"),
        (EventKind.NEW_DATA, SERVER, b"HTTP/1.1 200 OK\r\n\r\n"),
    ]
    c = TcpConversation()
    c.syn()
    engine, d, sub = engine_and_events(STREAM_KINDS)
    feed(engine, list(c.frames) + [reply(c, "RA", tsecr=0)])
    assert [e.kind for e in d.drain(sub)] == [EventKind.RST, EventKind.CONN_END]


def test_bytes_of_a_handshake_that_goes_on_after_the_reset_still_count_both_ways():
    """A RST the client takes (it acks the SYN) ends the flow; if the hosts go on anyway, the
    SYN-ACK that comes after gives the server's side its sequence base, so its bytes reach the
    stream as the client's do (NEW_DATA after CONN_END, as any bytes sent after the close).
    Before, the server's bytes were dropped without a GAP."""
    c = TcpConversation()
    c.syn()
    frames = list(c.frames) + [reply(c, "RA", tsecr=None)] + handshake_and_exchange(c)
    engine, d, sub = engine_and_events(STREAM_KINDS)
    feed(engine, frames)
    assert [(e.kind, e.side, e.value) for e in d.drain(sub)] == [
        (EventKind.RST, SERVER, None), (EventKind.CONN_END, SERVER, None),
        (EventKind.NEW_DATA, CLIENT, b"GET / HTTP/1.1\r\n\r\n"),
        (EventKind.NEW_DATA, SERVER, b"HTTP/1.1 200 OK\r\n\r\n"),
    ]


def test_the_echo_may_be_of_a_retransmitted_syns_timestamp():
    c = syn_with_timestamps(1000)
    c.syn(options=tcp_options(timestamps=(1300, 0)))          # the SYN again, a later TSval
    engine, d, sub = engine_and_events(EventKind.REJECTED | EventKind.ESTABLISHED)
    c.syn_ack(options=tcp_options(timestamps=(777, 1300)))
    c.ack("client")
    feed(engine, c.frames)
    assert [e.kind for e in d.drain(sub)] == [EventKind.ESTABLISHED]


def client_frame(flags, seq, ack=0, payload=b"", ts=1.1):
    return (ts, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=seq, ack=ack, flags=flags, payload=payload))


def server_frame(flags, seq, ack=0, payload=b"", ts=1.2):
    return (ts, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=seq, ack=ack, flags=flags, payload=payload))


def handshake_and_exchange(c, t=3.0):
    """The handshake, a request and a response, after whatever came before (from ``t`` on)."""
    c.frames.clear()
    c.syn_ack()
    c.ack("client")
    c.send("client", b"GET / HTTP/1.1\r\n\r\n")
    c.send("server", b"HTTP/1.1 200 OK\r\n\r\n")
    return [(t + i * 0.01, f) for i, (_, f) in enumerate(c.frames)]


STREAM_KINDS = (EventKind.REJECTED | EventKind.RST | EventKind.NEW_DATA | EventKind.GAP | EventKind.CONN_END
                | EventKind.ESTABLISHED)


def test_a_reset_a_client_sends_from_syn_sent_is_not_the_connections_end():
    """Suricata bug 3286: a client in SYN_SENT answers a segment it finds unacceptable with a RST
    (no ACK flag, at that segment's ACK number) and stays in SYN_SENT; a server that has not
    answered the SYN is in LISTEN, which ignores a RST (RFC 793). So the handshake goes on, and
    the response must reach the stream: before, the RST ended the flow and the server's bytes,
    with no sequence base, were lost without a GAP."""
    c = TcpConversation()
    c.syn()
    frames = list(c.frames) + [client_frame("R", c.client_isn + 1)] + handshake_and_exchange(c)
    engine, d, sub = engine_and_events(STREAM_KINDS, midstream=True)
    feed(engine, frames)
    engine.finish()
    drained = d.drain(sub)
    assert [(e.kind, e.side, e.value) for e in drained] == [
        (EventKind.ESTABLISHED, CLIENT, None),
        (EventKind.NEW_DATA, CLIENT, b"GET / HTTP/1.1\r\n\r\n"),
        (EventKind.NEW_DATA, SERVER, b"HTTP/1.1 200 OK\r\n\r\n"),
        (EventKind.CONN_END, None, None),
    ]
    assert engine.statistics().flows_created == 1
    assert (drained[-1].stats.client.rst, drained[-1].stats.client.rst_ignored) == (0, 1)


def test_a_reset_from_a_side_that_acks_something_ends_the_handshake_as_before():
    """A RST with the ACK flag from the SYN's sender tells it got a SYN-ACK the capture lost: its
    receiver has the connection, and the RST ends it."""
    c = TcpConversation()
    c.syn()
    engine, d, sub = engine_and_events(STREAM_KINDS)
    feed(engine, list(c.frames) + [client_frame("RA", c.client_isn + 1, c.server_isn + 1)])
    assert [(e.kind, e.side) for e in d.drain(sub)] == [(EventKind.RST, CLIENT), (EventKind.CONN_END, CLIENT)]


def test_an_ack_that_does_not_ack_the_syn_is_rejected_and_the_retried_handshake_is_the_flows():
    """suricata-verify base64-decode-5885: the server answers a SYN with a stale ACK (another
    connection's); the client in SYN_SENT drops it (RFC 793: SEG.ACK =< ISS or > SND.NXT), answers
    with a RST at that ACK number, and sends its SYN again. Before, the stale ACK became the
    server's ACK point (a false hole of ~860 MB), the RST ended the flow, and the connection that
    followed was lost in it."""
    c = TcpConversation()
    c.syn()
    stale = c.client_isn + 860_578_524
    frames = list(c.frames) + [server_frame("A", 777_777, stale), client_frame("R", stale, ts=1.3)]
    c.frames.clear()
    c.syn()
    frames += [(4.0, f) for _, f in c.frames] + handshake_and_exchange(c, t=4.1)
    engine, d, sub = engine_and_events(STREAM_KINDS)
    feed(engine, frames)
    engine.finish()
    events = [(e.kind, e.side, e.value) for e in d.drain(sub)]
    assert events == [
        (EventKind.REJECTED, SERVER, "unacceptable_ack"),
        (EventKind.ESTABLISHED, CLIENT, None),
        (EventKind.NEW_DATA, CLIENT, b"GET / HTTP/1.1\r\n\r\n"),
        (EventKind.NEW_DATA, SERVER, b"HTTP/1.1 200 OK\r\n\r\n"),
        (EventKind.CONN_END, None, None),
    ]
    st = engine.statistics()
    assert (st.flows_created, st.rejected) == (1, 1)


@pytest.mark.parametrize("flags, payload", [("A", b""), ("PA", b"injected"), ("FA", b""), ("SA", b"")])
def test_replies_to_a_syn_whose_ack_is_not_of_it_change_nothing(flags, payload):
    """An ACK, data, FIN or SYN-ACK whose ACK number is not past the ISN and at most what the SYN
    sent: the client in SYN_SENT drops it, so it is REJECTED and the real handshake and bytes go on."""
    c = TcpConversation()
    c.syn()
    frames = list(c.frames) + [server_frame(flags, c.server_isn + 99, c.client_isn + 7, payload)]
    frames += handshake_and_exchange(c)
    engine, d, sub = engine_and_events(STREAM_KINDS)
    feed(engine, frames)
    events = [(e.kind, e.side, e.value) for e in d.drain(sub)]
    assert events == [
        (EventKind.REJECTED, SERVER, "unacceptable_ack"),
        (EventKind.ESTABLISHED, CLIENT, None),
        (EventKind.NEW_DATA, CLIENT, b"GET / HTTP/1.1\r\n\r\n"),
        (EventKind.NEW_DATA, SERVER, b"HTTP/1.1 200 OK\r\n\r\n"),
    ], flags


# -- 2. a RST with data behind a hole nobody ACKed -------------------------------------------


def test_a_reset_leaves_bytes_behind_a_never_acked_hole_undelivered():
    c = TcpConversation()
    c.handshake()
    c.send("client", b"AAAA")
    c.ack("server")                                       # ACKs the AAAA
    c.send("client", b"hole", advance=False)              # never captured, never ACKed: dropped below
    c.frames.pop()
    c.send("client", b"PHANTOM!", advance=False, seq_offset=4)   # behind the hole
    c.rst("client", seq_offset=12)
    engine, d, sub = engine_and_events(EventKind.NEW_DATA | EventKind.GAP | EventKind.CONN_END)
    feed(engine, c.frames)
    events = [(e.kind, e.offset, e.length, e.value if e.kind is not EventKind.CONN_END else e.reason)
              for e in d.drain(sub)]
    assert events == [
        (EventKind.NEW_DATA, 0, 4, b"AAAA"),
        (EventKind.GAP, 4, 12, 8),                      # 12 bytes the application never got, 8 of them captured
        (EventKind.CONN_END, None, None, aiomb.EndReason.RST),
    ]
    st = engine.flows()[0].statistics().client
    assert (st.undelivered_bytes, st.missed, st.stream_bytes) == (8, 4, 4)


def test_a_reset_after_capture_loss_the_receiver_acked_delivers_what_follows():
    c = TcpConversation()
    c.handshake()
    c.send("client", b"AAAA")
    c.send("client", b"lost")
    c.frames.pop()                                        # lost by the capture only: the server ACKs it
    c.send("client", b"BBBB")
    c.ack("server")
    c.rst("client")
    engine, d, sub = engine_and_events(EventKind.NEW_DATA | EventKind.GAP)
    feed(engine, c.frames)
    assert [(e.kind, e.offset, e.length, e.value) for e in d.drain(sub)] == [
        (EventKind.NEW_DATA, 0, 4, b"AAAA"), (EventKind.GAP, 4, 4, None), (EventKind.NEW_DATA, 8, 4, b"BBBB")]


def test_a_reset_after_a_fin_its_receiver_acked_is_no_gap():
    """suricata-verify base64-decode-5885: the server's FIN is taken and ACKed, the client sends
    more, then the server resets. The ACK of the FIN covers its sequence number, which is no byte:
    before, the RST's end of stream made it a 1-byte GAP."""
    c = TcpConversation()
    c.handshake()
    c.send("client", b"req")
    c.send("server", b"response", flags="FPA")
    c.ack("client")
    c.send("client", b"more")
    c.fin("client")
    c.rst("server")
    engine, d, sub = engine_and_events(EventKind.NEW_DATA | EventKind.GAP | EventKind.CONN_END)
    feed(engine, c.frames)
    drained = d.drain(sub)
    assert [(e.kind, e.side, e.offset, e.length) for e in drained] == [
        (EventKind.NEW_DATA, CLIENT, 0, 3), (EventKind.NEW_DATA, SERVER, 0, 8), (EventKind.NEW_DATA, CLIENT, 3, 4),
        (EventKind.CONN_END, SERVER, None, None)]
    assert (drained[-1].stats.server.missed, drained[-1].reason) == (0, aiomb.EndReason.RST)


# -- 3. capture loss with far-ahead segments -------------------------------------------------


def test_an_ack_beyond_the_bytes_seen_makes_a_later_segment_below_it_deliverable_at_once():
    c = TcpConversation()
    c.handshake()
    c.send("client", b"head")
    c.client_seq += 100_000                               # 100 kB the capture lost
    c.ack("server")                                       # the server ACKs beyond everything seen
    engine, d, sub = engine_and_events(EventKind.NEW_DATA | EventKind.GAP)
    feed(engine, c.frames)
    assert [(e.kind, e.offset, e.length) for e in d.drain(sub)] == [(EventKind.NEW_DATA, 0, 4)]
    late = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=c.client_seq - 10, ack=c.server_seq, flags="PA",
                     payload=b"0123456789")               # the last 10 bytes before the ACK point
    engine.feed(late, 3.0)
    assert [(e.kind, e.offset, e.length, e.value) for e in d.drain(sub)] == [
        (EventKind.GAP, 4, 99_990, None), (EventKind.NEW_DATA, 99_994, 10, b"0123456789")]
    assert engine.flows()[0].statistics().client.missed == 99_990


def test_a_segment_far_ahead_is_buffered_not_thrown_away():
    c = TcpConversation()
    c.handshake()
    c.send("client", b"far", advance=False, seq_offset=100 << 20)     # 100 MiB ahead
    c.send("client", b"near")
    engine, d, sub = engine_and_events(EventKind.NEW_DATA | EventKind.GAP)
    feed(engine, c.frames)
    engine.finish()
    assert [(e.kind, e.offset, e.length) for e in d.drain(sub)] == [
        (EventKind.NEW_DATA, 0, 4), (EventKind.GAP, 4, (100 << 20) - 4), (EventKind.NEW_DATA, 100 << 20, 3)]
    assert engine.statistics().sequence_jumps == 1


# -- 4. data beyond the advertised window, zero-window probes --------------------------------


def test_zero_window_probes_and_data_beyond_the_window_are_counted_and_reported():
    c = TcpConversation()
    c.handshake()
    c.send("client", b"abc")
    c.frames.append((2.0, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=c.server_seq, ack=c.client_seq,
                                    flags="A", window=0)))           # the server closes its window
    c.send("client", b"p")                                           # a probe
    c.frames.append((3.0, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=c.server_seq, ack=c.client_seq,
                                    flags="A", window=10)))          # opens 10 bytes
    c.send("client", b"0123456789ABCDEF")                            # 6 bytes too many
    engine, d, sub = engine_and_events(EventKind.WINDOW | EventKind.CONN_END)
    feed(engine, c.frames)
    engine.finish()
    events = d.drain(sub)
    assert [(e.kind, e.offset, e.length, e.value) for e in events[:-1]] == [
        (EventKind.WINDOW, 3, 1, "zero_window_probe"), (EventKind.WINDOW, 4, 16, "beyond_window")]
    st = events[-1].stats.client
    assert (st.zero_window_probes, st.beyond_window, st.stream_bytes) == (1, 1, 20)


def test_a_resets_window_field_is_not_a_window():
    c = TcpConversation()
    c.handshake()
    c.frames.append((2.0, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=c.server_seq, ack=c.client_seq,
                                    flags="RA", window=0)))
    c.send("client", b"after the reset")
    engine, d, sub = engine_and_events(EventKind.WINDOW | EventKind.CONN_END)
    feed(engine, c.frames)
    engine.finish()
    assert [e.kind for e in d.drain(sub)] == [EventKind.CONN_END]


# -- 5. the evasion suite: aiomb's documented answer beside what Linux does (README table) ----


def established(**conv):
    c = TcpConversation(**conv)
    c.handshake()
    return c


def client_segment(c, payload, *, flags="PA", seq_offset=0, **frame):
    return tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=c.client_seq + seq_offset, ack=c.server_seq,
                     flags=flags, payload=payload, **frame)


def client_stream(frames, **options):
    engine = aiomb.Engine(reassembly=True, **options)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA | EventKind.CONN_END)
    feed(engine, frames)
    engine.finish()
    events = d.drain(sub)
    data = b"".join(e.value for e in events if e.kind is EventKind.NEW_DATA and e.side is CLIENT)
    return data, [e.reason for e in events if e.kind is EventKind.CONN_END], engine.statistics()


def test_bad_checksums_are_dropped_when_verified_as_linux_does():
    c = established()
    frames = list(c.frames) + [
        (2.0, client_segment(c, b"EVIL", bad_checksum=True)),                 # the endpoint never sees it
        (2.1, client_segment(c, b"", flags="RA", bad_checksum=True)),
        (2.2, client_segment(c, b"good"))]
    data, ends, st = client_stream(frames, checksums="verify")
    assert (data, ends) == (b"good", [aiomb.EndReason.END_OF_CAPTURE])
    assert st.malformed == {"bad_checksum": 2}
    data, ends, st = client_stream(frames)                                  # the default: not checked
    assert (data, ends, st.malformed) == (b"EVIL", [aiomb.EndReason.RST], {})


@pytest.mark.parametrize("src, dst", [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")])
def test_verified_checksums_cover_udp_fragments_and_ipv4_headers(src, dst):
    def malformed(frames):
        engine = aiomb.Engine(checksums="verify")
        feed(engine, [(1.0, f) for f in frames])
        return engine.statistics().malformed

    datagram = udp_frame(src, dst, 5000, 53, b"x" * 100)
    split = ipv4_fragments if "." in src else ipv6_fragments
    assert malformed([datagram, *split(datagram, fragment_size=48)]) == {}
    corrupt = bytearray(datagram)
    corrupt[-1] ^= 1
    assert malformed([bytes(corrupt), *split(bytes(corrupt), fragment_size=48)]) == {"bad_checksum": 2}
    if "." in src:
        no_checksum = bytearray(corrupt)
        no_checksum[14 + 20 + 6:14 + 20 + 8] = b"\0\0"             # IPv4 UDP may send none
        bad_header = bytearray(datagram)
        bad_header[14 + 10] ^= 1                                      # the IPv4 header checksum
        assert malformed([bytes(no_checksum), bytes(bad_header)]) == {"bad_checksum": 1}


def test_documented_differences_from_linux():
    # TTL-expiring injections: aiomb takes them (it cannot know the hops left); Linux never sees them
    c = established()
    data, _, _ = client_stream(list(c.frames) + [(2.0, client_segment(c, b"TTL1", ttl=1))])
    assert data == b"TTL1"
    # urgent data: aiomb keeps the urgent byte in the stream (SO_OOBINLINE); Linux takes it out of band
    c = established()
    data, _, _ = client_stream(list(c.frames) + [(2.0, client_segment(c, b"urgent!", flags="PAU"))])
    assert data == b"urgent!"
    # data on a SYN: aiomb keeps it (TCP Fast Open); Linux keeps it only with a valid TFO cookie
    c = TcpConversation()
    c.syn(payload=b"early")
    c.syn_ack()
    c.ack("client")
    data, _, _ = client_stream(c.frames)
    assert data == b"early"
    # an old timestamp (PAWS) on an established flow: aiomb takes the segment; Linux drops it
    c = established()
    frames = list(c.frames) + [
        (2.0, client_segment(c, b"new.", options=tcp_options(timestamps=(5000, 1)))),
        (2.1, client_segment(c, b"old?", seq_offset=4, options=tcp_options(timestamps=(10, 1))))]
    data, _, _ = client_stream(frames)
    assert data == b"new.old?"
    # a RST in the window but past the next expected byte: aiomb ends the flow (a capture that lost
    # bytes cannot tell the receiver's next byte for sure); Linux sends a challenge ACK and goes on
    c = established()
    frames = list(c.frames) + [(2.0, client_segment(c, b"", flags="R", seq_offset=1000)),
                               (2.1, client_segment(c, b"after"))]
    data, ends, st = client_stream(frames)
    assert (data, ends, st.rst_out_of_window) == (b"after", [aiomb.EndReason.RST], 0)


def test_a_reset_outside_the_window_is_ignored_as_linux_does():
    c = established()
    frames = list(c.frames) + [
        (2.0, client_segment(c, b"", flags="R", seq_offset=1 << 20)),     # far outside the server's window
        (2.1, client_segment(c, b"still here"))]
    data, ends, st = client_stream(frames)
    assert (data, ends, st.rst_out_of_window) == (b"still here", [aiomb.EndReason.END_OF_CAPTURE], 1)


def test_a_reset_at_the_next_byte_the_receiver_expects_is_taken_beyond_its_last_acks_window():
    """RFC 5961 section 3.2: a RST exactly at RCV.NXT resets, however far that is past the
    receiver's last ACK: a full window of bytes it has not ACKed yet, or a window whose scale a flow
    picked up mid-stream does not know."""
    c = TcpConversation()
    c.syn()
    c.frames.append((1.001, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=5000, ack=c.client_isn + 1,
                                      flags="SA", window=1000)))
    c.server_seq = 5001
    c.ack("client")
    c.send("client", b"y" * 1000)               # the server's whole window, not ACKed yet
    c.rst("client")
    data, ends, st = client_stream(c.frames)
    assert (data, ends, st.rst_out_of_window) == (b"y" * 1000, [aiomb.EndReason.RST], 0)
    midstream = [                                # the window field 100 is 12,800 bytes (scale 7)
        (1.0, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=900000, ack=100000, flags="A", window=100)),
        (1.1, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=100000, ack=900000, flags="PA", payload=b"x" * 1000)),
        (1.2, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=101000, ack=900000, flags="R"))]
    data, ends, st = client_stream(midstream, midstream=True)
    assert (data, ends, st.rst_out_of_window) == (b"x" * 1000, [aiomb.EndReason.RST], 0)


def test_a_keep_alive_with_a_byte_is_neither_a_retransmission_nor_a_conflict():
    """A keep-alive re-sends the last byte its peer ACKed (Windows sends one byte of garbage, Linux
    none): the receiver drops it as old, so it is counted as a keep-alive, not as a retransmitted
    or conflicting segment. A byte not ACKed yet is a retransmission as before."""
    c = established()
    c.send("client", b"hello")
    c.ack("server")
    c.send("client", b"\x00", flags="A", seq_offset=-1, advance=False)
    c.send("client", b"", flags="A", seq_offset=-1, advance=False)
    c.send("client", b"world")
    c.send("client", b"\x00", flags="A", seq_offset=-1, advance=False)     # 'd' is not ACKed yet
    engine, d, sub = engine_and_events(EventKind.RETRANSMIT | EventKind.OVERLAP | EventKind.CONN_END,
                                       reassembly=True)
    feed(engine, c.frames)
    engine.finish()
    events = d.drain(sub)
    assert [(e.kind, e.offset) for e in events] == [(EventKind.OVERLAP, 9), (EventKind.RETRANSMIT, 9),
                                                    (EventKind.CONN_END, None)]
    client = events[-1].stats.client
    assert (client.keep_alives, client.retransmits, client.overlap_conflicts) == (1, 1, 1)


@pytest.mark.parametrize("seq_offset", [0, -1])
def test_bytes_sent_past_a_fin_are_not_the_stream_as_linux_ignores_them(seq_offset):
    """Once the peer's FIN is in, Linux ignores segment text at or past it (CLOSE_WAIT, LAST_ACK:
    RFC 9293 3.10.7.4, eighth step): the stream ends at the FIN, with no hole for the FIN's own
    sequence number."""
    c = established()
    c.send("client", b"AAAA")
    c.fin("client")
    c.ack("server")
    c.send("client", b"BBBB", seq_offset=seq_offset)      # past the FIN, or at it
    c.ack("server")
    engine, d, sub = engine_and_events(EventKind.NEW_DATA | EventKind.GAP | EventKind.CONN_END, reassembly=True)
    feed(engine, c.frames)
    engine.finish()
    events = d.drain(sub)
    assert [(e.kind, e.value) for e in events] == [(EventKind.NEW_DATA, b"AAAA"), (EventKind.CONN_END, None)]
    assert (events[-1].stats.client.after_fin_bytes, events[-1].stats.client.missed) == (4, 0)


# -- FINs the receiver never takes ------------------------------------------------------------
# Linux takes a FIN only when the bytes in order reach its sequence number exactly: one below them
# is an old segment (dropped), one ahead waits out of order and is dropped if bytes in order pass it.


def client_fin(c, seq_offset, payload=b""):
    """A FIN from the client at its next sequence number plus ``seq_offset`` (after ``payload``),
    which does not move the conversation's sequence numbers."""
    c.send("client", payload, flags="FA", seq_offset=seq_offset, advance=False)


def both_close(c, client_fin_taken=True):
    """The rest of a close: the server ACKs (the client's FIN, if its sequence number was taken), sends
    its FIN, the client ACKs it."""
    if client_fin_taken:
        c.client_seq += 1
    c.ack("server")
    c.fin("server")
    c.ack("client")


def stale_fin():
    """A FIN below bytes already in order, then the rest of the stream: the FIN is old, ignored."""
    c = established()
    c.send("client", b"hello ")
    c.ack("server")
    client_fin(c, -4)                                     # FIN at offset 2
    client_fin(c, -6, b"hel")                             # old bytes, FIN at offset 3
    c.send("client", b"world: the real request")
    c.fin("client")
    both_close(c, client_fin_taken=False)
    return c.frames


def future_fin_passed():
    """A FIN behind a hole, then one segment covering its sequence number: the FIN is dropped."""
    c = established()
    client_fin(c, 5)
    c.send("client", b"hello world: the request")
    c.fin("client")
    both_close(c, client_fin_taken=False)
    return c.frames


def future_fin_passed_out_of_order():
    """The same, the bytes over the FIN held out of order until the hole before them is filled."""
    c = established()
    client_fin(c, 5)
    c.send("client", b"lo world: the request", seq_offset=3, advance=False)
    c.send("client", b"hel")
    c.client_seq += 21
    c.fin("client")
    both_close(c, client_fin_taken=False)
    return c.frames


def future_fin_reached():
    """A FIN behind a hole, bytes past it held out of order, then the hole filled exactly up to the
    FIN: the FIN is taken, the held bytes past it dropped, and bytes sent at it later are past it."""
    c = established()
    client_fin(c, 5)
    c.send("client", b"JUNK", seq_offset=6, advance=False)
    c.send("client", b"hello")
    c.send("client", b"world", advance=False)
    both_close(c)
    return c.frames


def future_fin_with_bytes_reached():
    """A FIN with bytes, behind a hole; the hole filled: the FIN is taken after its bytes."""
    c = established()
    client_fin(c, 5, b"world")
    c.send("client", b"hello")
    c.client_seq += 5
    both_close(c)
    return c.frames


def fin_in_order_after_held_bytes():
    """Bytes past a FIN held out of order before the FIN came in order: dropped with the FIN."""
    c = established()
    c.send("client", b"JUNK", seq_offset=6, advance=False)
    c.send("client", b"hello")
    c.fin("client")
    both_close(c, client_fin_taken=False)
    return c.frames


def acked_fin_behind_lost_bytes(ack_first=False):
    """Bytes the capture lost, then the FIN after them, which the server ACKs: the server took the
    bytes (GAP) and the FIN."""
    c = established()
    c.send("client", b"hello")
    c.frames.pop()
    client_fin(c, 0)
    c.client_seq += 1
    c.ack("server")
    if ack_first:
        c.frames[-2], c.frames[-1] = (c.frames[-2][0], c.frames[-1][1]), (c.frames[-1][0], c.frames[-2][1])
    c.fin("server")
    c.ack("client")
    return c.frames


def held_fin_then(end):
    """A FIN behind bytes the capture lost, which nobody ACKs; then the flow ends otherwise."""
    c = established()
    c.send("client", b"hello")
    c.frames.pop()
    client_fin(c, 0)
    if end == "rst":
        c.rst("server")
    return c.frames


def two_held_fins():
    """Two FINs behind a hole, then bytes passing the nearer and reaching the farther: Linux takes
    the farther; aiomb holds one FIN per side (the nearer), so it takes neither (README, Evasions)."""
    c = established()
    client_fin(c, 5)
    client_fin(c, 10)
    c.send("client", b"helloworld")
    c.send("client", b"JUNK")
    return c.frames


FIN_CLOSE = [(EventKind.FIN, CLIENT, None), (EventKind.FIN, SERVER, None),
             (EventKind.CONN_END, CLIENT, aiomb.EndReason.FIN)]
FIN_CASES = {
    # name: (frames, the client's stream, the other events, the client's (fin_ignored, after_fin_bytes, missed))
    "stale": (stale_fin(), b"hello world: the real request", FIN_CLOSE, (2, 0, 0)),
    "future, passed": (future_fin_passed(), b"hello world: the request", FIN_CLOSE, (1, 0, 0)),
    "future, passed out of order": (future_fin_passed_out_of_order(), b"hello world: the request", FIN_CLOSE,
                                    (1, 0, 0)),
    "future, reached": (future_fin_reached(), b"hello", FIN_CLOSE, (0, 9, 0)),
    "future with bytes, reached": (future_fin_with_bytes_reached(), b"helloworld", FIN_CLOSE, (0, 0, 0)),
    "in order, held bytes past it": (fin_in_order_after_held_bytes(), b"hello", FIN_CLOSE, (0, 4, 0)),
    "acked behind lost bytes": (acked_fin_behind_lost_bytes(), b"", [(EventKind.GAP, CLIENT, (0, 5))] + FIN_CLOSE,
                                (0, 0, 5)),
    "acked behind lost bytes, ACK first": (acked_fin_behind_lost_bytes(ack_first=True), b"",
                                           [(EventKind.GAP, CLIENT, (0, 5))] + FIN_CLOSE, (0, 0, 5)),
    "two held, the farther reached": (two_held_fins(), b"helloworldJUNK", [
        (EventKind.CONN_END, None, aiomb.EndReason.END_OF_CAPTURE)], (2, 0, 0)),
    "held, then a RST": (held_fin_then("rst"), b"", [
        (EventKind.RST, SERVER, None), (EventKind.CONN_END, SERVER, aiomb.EndReason.RST)],
        (1, 0, 0)),
    "held at the end of the capture": (held_fin_then("end"), b"", [     # the bytes before it were sent
        (EventKind.GAP, CLIENT, (0, 5)), (EventKind.CONN_END, None, aiomb.EndReason.END_OF_CAPTURE)],
        (1, 0, 5)),
}


def fin_case_events(frames, batch_size=1):
    """The frames read in batches of ``batch_size``: the client's stream, the other events, the
    client's figures (as in FIN_CASES) and the flow's final statistics."""
    engine, d, sub = engine_and_events(EventKind.NEW_DATA | EventKind.GAP | EventKind.FIN | EventKind.RST
                                       | EventKind.CONN_END)
    buf = io.BytesIO()
    write_pcap(buf, frames)
    events = []
    batch = aiomb.FrameBatch(batch_size)
    with CaptureReader(io.BytesIO(buf.getvalue())) as reader:
        while reader.fill(batch):
            engine.process(batch)
            events += d.drain(sub)
    engine.finish()
    events += d.drain(sub)
    stream = b"".join(bytes(e.value) for e in events if e.kind is EventKind.NEW_DATA and e.side is CLIENT)
    others = [(e.kind, e.side, (e.offset, e.length) if e.kind is EventKind.GAP else
               e.reason if e.kind is EventKind.CONN_END else None)
              for e in events if e.kind is not EventKind.NEW_DATA]
    client = events[-1].stats.client
    return stream, others, (client.fin_ignored, client.after_fin_bytes, client.missed), events[-1].stats


@pytest.mark.parametrize("case", FIN_CASES.values(), ids=FIN_CASES)
def test_a_fin_is_taken_where_linux_takes_it(case):
    """A FIN below the bytes in order is ignored and the stream goes on; one ahead of them waits:
    taken if they reach it exactly (or the receiver ACKs it after bytes the capture lost), dropped if
    they pass it; one still waiting when the flow ends never took effect (the hole before it is a
    GAP, unless a RST ended the flow: the stream stops at the receiver's ACK point)."""
    frames, stream, others, figures = case
    got_stream, got_others, got_figures, stats = fin_case_events(frames)
    assert (got_stream, got_others, got_figures) == (stream, others, figures)
    if others[-1][2] is aiomb.EndReason.FIN:
        assert (stats.client.state, stats.server.state) == (aiomb.TcpState.TIME_WAIT, aiomb.TcpState.CLOSED)
    else:                                                   # the held FIN moved neither side
        assert (stats.client.state, stats.server.state) == ((aiomb.TcpState.CLOSED,) * 2 if others[-1][2] is
                                                            aiomb.EndReason.RST else (aiomb.TcpState.ESTABLISHED,) * 2)


def test_a_fin_right_after_bytes_its_receiver_acked_is_taken_at_once():
    """The server ACKed bytes the capture lost; the FIN right after them is in order for it: the
    bytes are a GAP, and the FIN is taken as it comes, before any ACK of it."""
    c = established()
    c.send("client", b"hello")
    c.frames.pop()
    c.ack("server")
    client_fin(c, 0)
    stream, others, figures, stats = fin_case_events(c.frames)
    assert (stream, others, figures) == (b"", [(EventKind.GAP, CLIENT, (0, 5)), (EventKind.FIN, CLIENT, None),
                                               (EventKind.CONN_END, None, aiomb.EndReason.END_OF_CAPTURE)], (0, 0, 5))
    assert (stats.client.state, stats.server.state) == (aiomb.TcpState.FIN_WAIT_1, aiomb.TcpState.CLOSE_WAIT)


@pytest.mark.parametrize("batch_size", [2, 3, 7, 100])
def test_fins_are_taken_the_same_at_any_batch_size(batch_size):
    for name, (frames, _, _, _) in FIN_CASES.items():
        one = fin_case_events(frames)
        assert fin_case_events(frames, batch_size)[:3] == one[:3], name


@pytest.mark.parametrize("midstream", [False, True])
def test_a_syn_with_a_new_isn_on_an_open_connection_is_rejected_and_the_streams_go_on(midstream):
    """RFC 5961 section 4: a receiver in a synchronized state answers a SYN (or SYN-ACK), whatever
    its sequence number, with a challenge ACK and drops it. Taking its ISN would move the sender's
    sequence space and make the rest of its stream retransmissions (hidden, no GAP)."""
    c = established()
    c.send("client", b"first ")
    c.ack("server")
    if midstream:
        del c.frames[:3]
    c.frames.append((1.5, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=77777, flags="S",
                                    options=tcp_options(wscale=9))))
    c.frames.append((1.6, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=88888, ack=77778, flags="SA")))
    c.send("client", b"GET /secret")
    c.ack("server")
    c.send("server", b"200 OK")
    c.ack("client")
    c.fin("client")
    c.fin("server")
    c.ack("client")
    engine, d, sub = engine_and_events(EventKind.REJECTED | EventKind.NEW_DATA | EventKind.GAP
                                       | EventKind.RETRANSMIT | EventKind.WINDOW | EventKind.CONN_END,
                                       midstream=midstream)
    feed(engine, c.frames)
    engine.finish()
    events = d.drain(sub)
    assert [(e.kind, e.side, e.reason if e.kind is EventKind.CONN_END else e.value) for e in events] == [
        (EventKind.NEW_DATA, CLIENT, b"first "),
        (EventKind.REJECTED, CLIENT, "syn_in_connection"),
        (EventKind.REJECTED, SERVER, "syn_in_connection"),
        (EventKind.NEW_DATA, CLIENT, b"GET /secret"),
        (EventKind.NEW_DATA, SERVER, b"200 OK"),
        (EventKind.CONN_END, CLIENT, aiomb.EndReason.FIN),
    ]
    stats = events[-1].stats                    # the rejected SYN and SYN-ACK were seen all the same
    assert (stats.client.syn, stats.server.synack, engine.statistics().rejected) == \
        ((1, 1) if midstream else (2, 2)) + (2,)


# Option lists that end at a malformed option: Linux's tcp_parse_options stops there (an option
# length below 2 is a "silly option", one past the header a partial option) and takes the segment.
BAD_OPTION_LISTS = {
    "length 0": b"\x22\x00",
    "length 1": b"\x22\x01",
    "past the header": b"\x08\x28",               # a 40-byte timestamp option in 4 bytes of options
    "lone kind byte": b"\x01\x01\x01\x05",        # a SACK kind with no length byte after it
}


@pytest.mark.parametrize("options", BAD_OPTION_LISTS.values(), ids=BAD_OPTION_LISTS)
def test_data_behind_a_malformed_option_list_reaches_the_stream_as_linux_takes_it(options):
    c = established()
    c.send("client", b"GET / HTTP/1.1\r\n")
    frames = list(c.frames) + [(2.0, client_segment(c, b"X-Evil: 1\r\n", options=options))]
    c.client_seq += len(b"X-Evil: 1\r\n")
    c.frames.clear()
    c.send("client", b"Host: x\r\n\r\n")
    c.ack("server")                                   # the server ACKs it all: it took the segment
    frames += [(2.1 + i * 0.01, f) for i, (_, f) in enumerate(c.frames)]
    for checksums in ("ignore", "verify"):
        data, _, st = client_stream(frames, checksums=checksums)
        assert data == b"GET / HTTP/1.1\r\nX-Evil: 1\r\nHost: x\r\n\r\n", checksums
        assert (st.malformed, st.bad_tcp_options) == ({}, 1), checksums


@pytest.mark.parametrize("options", BAD_OPTION_LISTS.values(), ids=BAD_OPTION_LISTS)
def test_a_fin_or_reset_behind_a_malformed_option_list_ends_the_flow_as_linux_takes_it(options):
    for flags, answer in (("FA", [(EventKind.FIN, CLIENT, None), (EventKind.FIN, SERVER, None),
                                  (EventKind.CONN_END, CLIENT, aiomb.EndReason.FIN)]),
                          ("RA", [(EventKind.RST, CLIENT, None), (EventKind.CONN_END, CLIENT, aiomb.EndReason.RST)])):
        c = established()
        frames = list(c.frames) + [(2.0, client_segment(c, b"", flags=flags, options=options))]
        if flags == "FA":
            c.client_seq += 1
            c.frames.clear()
            c.fin("server")
            c.ack("client")
            frames += [(2.1 + i * 0.01, f) for i, (_, f) in enumerate(c.frames)]
        engine, d, sub = engine_and_events(EventKind.FIN | EventKind.RST | EventKind.CONN_END)
        feed(engine, frames)
        engine.finish()
        assert [(e.kind, e.side, e.reason) for e in d.drain(sub)] == answer, flags
        st = engine.statistics()
        assert (st.malformed, st.bad_tcp_options) == ({}, 1), flags


@pytest.mark.parametrize("family", ["10.0.0.", "fd00::"])
def test_inline_handlers_see_each_packets_ttl_to_spot_injections(family):
    c = TcpConversation(client=(family + "1", 40000), server=(family + "2", 80))
    c.handshake()
    c.frames.append((2.0, tcp_frame(family + "1", family + "2", 40000, 80, seq=c.client_seq, ack=c.server_seq,
                                    flags="PA", payload=b"TTL1", ttl=1)))
    engine = aiomb.Engine()
    ttls = []
    engine.add_handler(EventKind.PACKET_IN, lambda packet: ttls.append(packet.ttl), hook=aiomb.Hook.SENDER)
    feed(engine, c.frames)
    assert ttls == [64, 64, 64, 1]


# -- 6. the IP layer: what Linux drops before TCP or UDP sees it ---------------------------


def injected_then_real(c, evil, good):
    """The flow's frames, an injected segment (``evil``: the client's next bytes, "EVIL"), then
    the real one (``good``: "GOOD") at the same sequence number: the client stream says which
    copy was taken."""
    return list(c.frames) + [(2.0, evil), (2.1, good)]


def ipv6_ext(nh, body):
    assert (len(body) + 2) % 8 == 0
    return bytes([nh, (len(body) + 2) // 8 - 1]) + body


def with_ipv6_chain(frame, first_nh, chain):
    """An Ethernet IPv6 frame with ``chain`` put between its IPv6 header and its upper layer."""
    ip = bytearray(frame[14:54])
    ip[6] = first_nh
    struct.pack_into("!H", ip, 4, len(frame) - 54 + len(chain))
    return ethernet_frame(bytes(ip) + chain + frame[54:], ethertype=0x86DD)


PAD4 = b"\x01\x04\x00\x00\x00\x00"
IPV6_CHAINS = {                         # (first next header, chain, the reason Linux drops it or None)
    "hop-by-hop after destination options": (60, ipv6_ext(0, PAD4) + ipv6_ext(6, PAD4), "ipv6_hop_by_hop_not_first"),
    "two hop-by-hop headers": (0, ipv6_ext(0, PAD4) + ipv6_ext(6, PAD4), "ipv6_hop_by_hop_not_first"),
    "hop-by-hop after an atomic fragment header": (44, bytes([0, 0, 0, 0, 0, 0, 0, 1]) + ipv6_ext(6, PAD4),
                                                   "ipv6_hop_by_hop_not_first"),
    "unknown option, action 10 (discard)": (60, ipv6_ext(6, b"\x80\x04" + bytes(4)), "bad_ipv6_options"),
    "unknown option, action 01 (discard)": (0, ipv6_ext(6, b"\x40\x04" + bytes(4)), "bad_ipv6_options"),
    "unknown option, action 11 (discard)": (60, ipv6_ext(6, b"\xc9\x04" + bytes(4)), "bad_ipv6_options"),
    "jumbo payload with a payload length": (0, ipv6_ext(6, b"\xc2\x04\x00\x01\x00\x00"), "bad_ipv6_options"),
    "router alert of 4 bytes": (0, ipv6_ext(6, b"\x05\x04" + bytes(4)), "bad_ipv6_options"),
    "option past its header": (60, ipv6_ext(6, b"\x1e\x10" + bytes(4)), "bad_ipv6_options"),
    "option length byte past its header": (60, ipv6_ext(6, bytes(5) + b"\x1e"), "bad_ipv6_options"),
    "PadN with a non-zero byte": (60, ipv6_ext(6, b"\x01\x04\x00\x00\x07\x00"), "bad_ipv6_options"),
    "8 bytes of padding in a row": (60, ipv6_ext(6, bytes(8) + b"\x1e\x04" + bytes(4)), "bad_ipv6_options"),
    "9 options": (60, ipv6_ext(6, b"\x1e\x00" * 9 + b"\x01\x02\x00\x00"), "bad_ipv6_options"),
    "routing type 0, segments left 1": (43, bytes([6, 2, 0, 1]) + bytes(20), "ipv6_routing_header"),
    "routing type 253, segments left 1": (43, bytes([6, 0, 253, 1]) + bytes(4), "ipv6_routing_header"),
    "routing type 2 (mobile IPv6)": (43, bytes([6, 2, 2, 0]) + bytes(20), "ipv6_routing_header"),
    "routing type 4 (segment routing)": (43, bytes([6, 2, 4, 0]) + bytes(20), "ipv6_routing_header"),
    "PadN only": (60, ipv6_ext(6, PAD4), None),
    "7 Pad1s, then an option": (60, ipv6_ext(6, bytes(7) + b"\x1e\x05" + bytes(5)), None),
    "unknown option, action 00 (skip), 8 of them": (60, ipv6_ext(6, b"\x1e\x00" * 8 + b"\x01\x04" + bytes(4)), None),
    "router alert": (0, ipv6_ext(60, b"\x05\x02\x00\x00\x01\x00") + ipv6_ext(6, PAD4), None),
    "routing type 0, segments left 0": (43, bytes([6, 2, 0, 0]) + bytes(20), None),
    "routing type 253, segments left 0, then destination options": (43, bytes([60, 0, 253, 0]) + bytes(4)
                                                                     + ipv6_ext(6, PAD4), None),
}


@pytest.mark.parametrize("case", IPV6_CHAINS.values(), ids=IPV6_CHAINS)
def test_ipv6_extension_headers_linux_drops_are_malformed(case):
    """RFC 8200 as Linux applies it: a hop-by-hop header only first; options whose type says
    discard (and Linux does not know), badly sized or overrunning ones, more than 7 bytes of
    padding in a row, non-zero PadN, more than 8 options; a routing header with segments left
    or of a type Linux drops by default (2, 3, 4)."""
    first_nh, chain, reason = case
    c = established(client=("fd00::1", 40000), server=("fd00::2", 80))
    evil, good = (tcp_frame("fd00::1", "fd00::2", 40000, 80, seq=c.client_seq, ack=c.server_seq, flags="PA",
                            payload=payload) for payload in (b"EVIL", b"GOOD"))
    frames = injected_then_real(c, with_ipv6_chain(evil, first_nh, chain), good)
    for checksums in ("ignore", "verify"):
        data, _, st = client_stream(frames, checksums=checksums)
        assert (data, st.malformed) == ((b"GOOD", {reason: 1}) if reason else (b"EVIL", {})), checksums


@pytest.mark.parametrize("nh", [135, 139, 140], ids=["mobility", "HIP", "shim6"])
def test_a_segment_behind_a_header_linux_does_not_take_is_not_the_flows(nh):
    """Linux has no upper-layer handler for the mobility (135; its payload is "no next header"),
    HIP (139) and shim6 (140) headers: the packet is dropped there, and what follows them never
    reaches TCP. aiomb stops at them too: another protocol, not the flow's segment."""
    c = established(client=("fd00::1", 40000), server=("fd00::2", 80))
    evil, good = (tcp_frame("fd00::1", "fd00::2", 40000, 80, seq=c.client_seq, ack=c.server_seq, flags="PA",
                            payload=payload) for payload in (b"EVIL", b"GOOD"))
    data, _, st = client_stream(injected_then_real(c, with_ipv6_chain(evil, nh, ipv6_ext(6, PAD4)), good))
    assert (data, st.other_protocol, st.malformed) == (b"GOOD", 1, {})


def test_ipv6_extension_headers_after_the_fragment_header_are_checked_too():
    c = established(client=("fd00::1", 40000), server=("fd00::2", 80))
    c.send("client", b"A" * 100)
    data = c.frames.pop()[1]
    bad = with_ipv6_chain(data, 60, ipv6_ext(6, b"\x80\x04" + bytes(4)))
    frames = list(c.frames) + [(2.0 + i / 100, f) for i, f in enumerate(ipv6_fragments(bad, fragment_size=48))]
    data, _, st = client_stream(frames)
    assert (data, st.malformed, st.fragments_reassembled) == (b"", {"bad_ipv6_options": 1}, 1)


IPV4_OPTIONS = {                        # options (padded with EOL to 4 bytes), the reason Linux drops it or None
    "length past the header": (b"\x07\x0c\x04", "bad_ip_options"),
    "length 1": (b"\x88\x01", "bad_ip_options"),
    "a lone kind byte": (b"\x01\x01\x01\x88", "bad_ip_options"),
    "timestamp of 2 bytes": (b"\x44\x02", "bad_ip_options"),
    "timestamp pointer below 5": (b"\x44\x08\x04\x00" + bytes(4), "bad_ip_options"),
    "timestamp with addresses, no room for one": (b"\x44\x08\x05\x01" + bytes(4), "bad_ip_options"),
    "full timestamp, overflow 15": (b"\x44\x08\x09\xf0" + bytes(4), "bad_ip_options"),
    "two timestamps": (b"\x44\x04\x05\x00" * 2, "bad_ip_options"),
    "record route pointer below 4": (b"\x07\x07\x03" + bytes(4), "bad_ip_options"),
    "record route, no room for the address": (b"\x07\x05\x04\x00\x00", "bad_ip_options"),
    "two record routes": (b"\x07\x03\x04" * 2, "bad_ip_options"),
    "router alert of 2 bytes": (b"\x94\x02", "bad_ip_options"),
    "loose source route of 2 bytes": (b"\x83\x02", "bad_ip_options"),
    "loose source route": (b"\x83\x07\x04\x0a\x00\x00\x02", "ip_source_route"),
    "strict source route": (b"\x89\x07\x04\x0a\x00\x00\x02", "ip_source_route"),
    "NOPs and EOL": (b"\x01\x01\x00\x07", None),
    "router alert": (b"\x94\x04\x00\x00", None),
    "timestamp": (b"\x44\x0c\x05\x00" + bytes(8), None),
    "full timestamp, overflow 14": (b"\x44\x08\x09\xe0" + bytes(4), None),
    "record route": (b"\x07\x07\x04" + bytes(4), None),
    "stream id and an unknown option": (b"\x88\x04\x00\x01\x9e\x04\x00\x00", None),
}


@pytest.mark.parametrize("case", IPV4_OPTIONS.values(), ids=IPV4_OPTIONS)
def test_ipv4_options_linux_drops_are_malformed(case):
    """Linux's ip_options_compile rejects a malformed option list (and the packet); ip_rcv_options
    drops a source-routed packet (accept_source_route is 0 by default)."""
    options, reason = case
    c = established()
    frames = injected_then_real(c, client_segment(c, b"EVIL", ip_options=options), client_segment(c, b"GOOD"))
    for checksums in ("ignore", "verify"):
        data, _, st = client_stream(frames, checksums=checksums)
        assert (data, st.malformed) == ((b"GOOD", {reason: 1}) if reason else (b"EVIL", {})), checksums


def test_each_ipv4_fragments_options_are_checked():
    c = established()
    evil = client_segment(c, b"EVIL" * 10, ip_options=b"\x44\x02")   # not copied: only in the first
    first, *rest = ipv4_fragments(evil, fragment_size=24)
    data, _, st = client_stream(list(c.frames) + [(2.0, first)] + [(2.1, f) for f in rest])
    assert (data, st.malformed, st.fragments_held) == (b"", {"bad_ip_options": 1}, len(rest))
    evil = client_segment(c, b"EVIL" * 10, ip_options=b"\x83\x07\x04\x0a\x00\x00\x02")   # copied
    frames = ipv4_fragments(evil, fragment_size=24)
    data, _, st = client_stream(list(c.frames) + [(2.0, f) for f in frames])
    assert (data, st.malformed, st.fragments_held) == (b"", {"ip_source_route": len(frames)}, 0)


def ipv4_fragment(frame, start, end, *, data=None, ip_id=77):
    """The fragment of an unfragmented Ethernet IPv4 ``frame`` holding bytes ``start:end`` of its
    payload (or ``data`` in their place), datagram ``ip_id``."""
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    payload = ip[ihl:]
    chunk = payload[start:end] if data is None else data
    header = bytearray(ip[:ihl])
    struct.pack_into("!HHHBBH", header, 2, ihl + len(chunk), ip_id, (end < len(payload)) << 13 | start // 8,
                     ip[8], ip[9], 0)
    struct.pack_into("!H", header, 10, internet_checksum(bytes(header)))
    return frame[:14] + bytes(header) + chunk


def test_verified_checksums_cover_each_fragments_ip_header():
    c = established()
    evil = client_segment(c, b"EVIL" * 4)
    first = bytearray(ipv4_fragment(evil, 0, 24))
    first[14 + 10] ^= 1                                  # its IP header checksum: Linux's ip_rcv drops it
    good = client_segment(c, b"GOOD" * 4)
    frames = list(c.frames) + [(2.0, bytes(first)), (2.1, ipv4_fragment(evil, 24, 36)),
                               (2.2, ipv4_fragment(good, 0, 24, ip_id=78)),
                               (2.3, ipv4_fragment(good, 24, 36, ip_id=78))]
    data, _, st = client_stream(frames, checksums="verify")
    assert (data, st.malformed, st.fragments_reassembled) == (b"GOOD" * 4, {"bad_checksum": 1}, 1)
    data, _, st = client_stream(frames)
    assert (data, st.malformed, st.fragments_reassembled) == (b"EVIL" * 4, {}, 2)


def fragmented_stream(pieces):
    """The client stream of a flow whose next segment (40 bytes, "A"*40) comes as IPv4 fragments:
    ``pieces`` are (start, end, byte) of its IP payload (20 bytes of TCP header, then the data),
    in the order sent, a byte given for pieces whose data is replaced."""
    c = established()
    segment = client_segment(c, b"A" * 40)
    frames = list(c.frames)
    for i, (start, end, fill) in enumerate(pieces):
        frames.append((2.0 + i / 100, ipv4_fragment(segment, start, end, data=fill and fill * (end - start))))
    return client_stream(frames)


def test_an_overlapping_fragment_drops_its_datagram_as_linux_does():
    """Linux (since FragmentSmack, RFC 5722 for IPv6) drops a datagram when a fragment overlaps
    bytes held; a fragment within one run of held fragments (a duplicate) is ignored."""
    data, _, st = fragmented_stream([(0, 24, None), (16, 40, b"E"), (40, 60, None)])
    assert (data, st.malformed, st.fragment_overlaps, st.fragments_held) == (b"", {"bad_fragment": 1}, 1, 1)
    data, _, st = fragmented_stream([(0, 24, None), (16, 40, b"E"), (0, 24, None), (24, 60, None)])
    assert (data, st.fragments_reassembled) == (b"A" * 40, 1)               # sent again: a new datagram
    data, _, st = fragmented_stream([(0, 24, None), (0, 24, b"E"), (24, 60, None)])
    assert (data, st.malformed, st.fragment_overlaps, st.fragment_duplicates, st.fragments_received) \
        == (b"A" * 40, {}, 0, 1, 2)
    # in order, [0, 24) and [24, 48) are one run: [8, 40) within it is a duplicate
    data, _, st = fragmented_stream([(0, 24, None), (24, 48, None), (8, 40, b"E"), (48, 60, None)])
    assert (data, st.malformed, st.fragment_overlaps, st.fragment_duplicates) == (b"A" * 40, {}, 0, 1)
    # [24, 48) then [0, 24) are two runs: [8, 40) spans both, an overlap
    data, _, st = fragmented_stream([(24, 48, None), (0, 24, None), (8, 40, b"E"), (48, 60, None)])
    assert (data, st.malformed, st.fragment_overlaps) == (b"", {"bad_fragment": 1}, 1)


def test_an_overlapping_ipv6_fragment_drops_its_datagram():
    c = established(client=("fd00::1", 40000), server=("fd00::2", 80))
    evil = tcp_frame("fd00::1", "fd00::2", 40000, 80, seq=c.client_seq, ack=c.server_seq, flags="PA",
                     payload=b"E" * 100)
    c.send("client", b"A" * 100)
    frags = ipv6_fragments(c.frames.pop()[1], fragment_size=48)
    longer = ipv6_fragments(evil, fragment_size=64)[0]
    frames = list(c.frames) + [(2.0, frags[0]), (2.1, longer)] + [(2.2, f) for f in frags[1:]]
    data, _, st = client_stream(frames)
    assert (data, st.malformed, st.fragment_overlaps) == (b"", {"bad_fragment": 1}, 1)


def udp_with_length(src, dst, payload, udp_length):
    """A UDP frame whose UDP length field says ``udp_length`` (its checksum over that many bytes)."""
    frame = bytearray(udp_frame(src, dst, 5000, 53, payload))
    l4 = 14 + (20 if "." in src else 40)
    struct.pack_into("!HH", frame, l4 + 4, udp_length, 0)
    covered = udp_length or len(frame) - l4
    family = 4 if "." in src else 6
    ip = frame[14:]
    addresses = ip[12:20] if family == 4 else ip[8:40]
    pseudo = addresses + (struct.pack("!BBH", 0, 17, covered) if family == 4 else struct.pack("!IxxxB", covered, 17))
    struct.pack_into("!H", frame, l4 + 6, internet_checksum(bytes(pseudo) + bytes(frame[l4:l4 + covered])) or 0xFFFF)
    return bytes(frame)


@pytest.mark.parametrize("src, dst", [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")])
def test_a_udp_datagram_is_its_udp_length_as_linux_trims_it(src, dst):
    """Linux trims a UDP datagram to its UDP length and checks the checksum over that; an IPv6
    UDP length of 0 means the whole IP payload (udp6's jumbogram rule)."""
    cases = [(udp_with_length(src, dst, b"x" * 20, 18), 10)]
    if ":" in src:
        cases.append((udp_with_length(src, dst, b"x" * 20, 0), 20))
    for frame, size in cases:
        for checksums in ("ignore", "verify"):
            engine = aiomb.Engine(checksums=checksums)
            engine.feed(frame, 1.0)
            st = engine.statistics()
            assert (st.malformed, st.udp_packets) == ({}, 1), checksums
            (flow,) = engine.flows()
            assert flow.statistics().client.payload_bytes == size, checksums
    corrupt = bytearray(cases[0][0])
    corrupt[-11] ^= 1                                     # within the UDP length
    engine = aiomb.Engine(checksums="verify")
    engine.feed(bytes(corrupt), 1.0)
    corrupt = bytearray(cases[0][0])
    corrupt[-1] ^= 1                                      # past it: not the datagram's
    engine.feed(bytes(corrupt), 1.1)
    assert engine.statistics().malformed == {"bad_checksum": 1}
