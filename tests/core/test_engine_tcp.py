"""Sans-I/O: crafted frames in, exact event sequences out (DESIGN.md section 2 order)."""

import pytest

import aiomb
from aiomb import EventKind, TcpState
from aiomb.testing import TcpConversation, tcp_frame, tcp_options

from .events_helpers import run, state_changes

HANDSHAKE = [
    ("CONN_START", "CLIENT"),
    ("STATE_CHANGE", "CLIENT", "CLOSED", "SYN_SENT"),
    ("SYN_ACK", "SERVER"),
    ("STATE_CHANGE", "SERVER", "LISTEN", "SYN_RECEIVED"),
    ("STATE_CHANGE", "CLIENT", "SYN_SENT", "ESTABLISHED"),
    ("STATE_CHANGE", "SERVER", "SYN_RECEIVED", "ESTABLISHED"),
    ("ESTABLISHED", "CLIENT"),
]


def conv(**kw):
    return TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80), **kw)


def test_handshake_data_and_client_first_close():
    c = conv()
    c.handshake()
    c.send("client", b"GET / HTTP/1.0\r\n\r\n")
    c.send("server", b"HTTP/1.0 200 OK\r\n\r\n")
    c.fin("client")
    c.fin("server")
    c.ack("client")
    engine, events = run(c.frames)
    assert events == HANDSHAKE + [
        ("FIN", "CLIENT"),
        ("STATE_CHANGE", "CLIENT", "ESTABLISHED", "FIN_WAIT_1"),
        ("STATE_CHANGE", "SERVER", "ESTABLISHED", "CLOSE_WAIT"),
        ("FIN", "SERVER"),
        ("STATE_CHANGE", "SERVER", "CLOSE_WAIT", "LAST_ACK"),
        ("STATE_CHANGE", "CLIENT", "FIN_WAIT_1", "FIN_WAIT_2"),
        ("STATE_CHANGE", "CLIENT", "FIN_WAIT_2", "TIME_WAIT"),
        ("STATE_CHANGE", "SERVER", "LAST_ACK", "CLOSED"),
        ("CONN_END", "CLIENT", "FIN"),
    ]
    (flow,) = engine.flows()
    st = flow.statistics()
    assert (st.client.packets, st.server.packets) == (5, 3)
    assert (st.client.payload_bytes, st.server.payload_bytes) == (18, 19)
    assert st.end_reason == aiomb.EndReason.FIN
    assert (flow.client_state, flow.server_state) == (TcpState.TIME_WAIT, TcpState.CLOSED)


def test_server_first_close():
    c = conv()
    c.handshake()
    c.fin("server")
    c.fin("client")
    c.ack("server")
    _, events = run(c.frames)
    assert events[len(HANDSHAKE):] == [
        ("FIN", "SERVER"),
        ("STATE_CHANGE", "SERVER", "ESTABLISHED", "FIN_WAIT_1"),
        ("STATE_CHANGE", "CLIENT", "ESTABLISHED", "CLOSE_WAIT"),
        ("FIN", "CLIENT"),
        ("STATE_CHANGE", "CLIENT", "CLOSE_WAIT", "LAST_ACK"),
        ("STATE_CHANGE", "SERVER", "FIN_WAIT_1", "FIN_WAIT_2"),
        ("STATE_CHANGE", "SERVER", "FIN_WAIT_2", "TIME_WAIT"),
        ("STATE_CHANGE", "CLIENT", "LAST_ACK", "CLOSED"),
        ("CONN_END", "SERVER", "FIN"),
    ]


def test_simultaneous_close_goes_through_closing():
    c = conv()
    c.handshake()
    fin_c = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=c.client_seq, ack=c.server_seq, flags="FA")
    fin_s = tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=c.server_seq, ack=c.client_seq, flags="FA")
    ack_c = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=c.client_seq + 1, ack=c.server_seq + 1, flags="A")
    ack_s = tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=c.server_seq + 1, ack=c.client_seq + 1, flags="A")
    frames = c.frames + [(2.0, fin_c), (2.1, fin_s), (2.2, ack_c), (2.3, ack_s)]
    _, events = run(frames)
    assert state_changes(events[len(HANDSHAKE):]) == [
        ("CLIENT", "ESTABLISHED", "FIN_WAIT_1"),
        ("SERVER", "ESTABLISHED", "CLOSE_WAIT"),
        ("SERVER", "CLOSE_WAIT", "LAST_ACK"),
        ("CLIENT", "FIN_WAIT_1", "CLOSING"),
        ("SERVER", "LAST_ACK", "CLOSED"),
        ("CLIENT", "CLOSING", "TIME_WAIT"),
    ]
    assert events[-1] == ("CONN_END", "SERVER", "FIN")


def test_half_close_keeps_data_flowing():
    c = conv()
    c.handshake()
    c.fin("client")
    c.send("server", b"still talking")
    c.ack("client")
    engine, events = run(c.frames)
    assert events[len(HANDSHAKE):] == [
        ("FIN", "CLIENT"),
        ("STATE_CHANGE", "CLIENT", "ESTABLISHED", "FIN_WAIT_1"),
        ("STATE_CHANGE", "SERVER", "ESTABLISHED", "CLOSE_WAIT"),
        ("STATE_CHANGE", "CLIENT", "FIN_WAIT_1", "FIN_WAIT_2"),
    ]
    (flow,) = engine.flows()
    assert (flow.client_state, flow.server_state) == (TcpState.FIN_WAIT_2, TcpState.CLOSE_WAIT)
    assert flow.statistics().server.payload_bytes == 13
    assert flow.end_reason is None


@pytest.mark.parametrize("who", ["client", "server"])
def test_rst_in_established(who):
    c = conv()
    c.handshake()
    c.rst(who)
    _, events = run(c.frames)
    side = who.upper()
    other = "SERVER" if side == "CLIENT" else "CLIENT"
    assert events[len(HANDSHAKE):] == [
        ("RST", side),
        ("STATE_CHANGE", side, "ESTABLISHED", "CLOSED"),
        ("STATE_CHANGE", other, "ESTABLISHED", "CLOSED"),
        ("CONN_END", side, "RST"),
    ]


def test_rst_answering_a_syn_is_accepted_only_if_it_acks_the_syn():
    c = conv()
    c.syn()
    bad = tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=0, ack=c.client_isn, flags="RA")
    good = tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=0, ack=c.client_isn + 1, flags="RA")
    engine, events = run(c.frames + [(2.0, bad), (2.1, good)])
    assert events == [
        ("CONN_START", "CLIENT"),
        ("STATE_CHANGE", "CLIENT", "CLOSED", "SYN_SENT"),
        ("RST", "SERVER"),
        ("STATE_CHANGE", "SERVER", "LISTEN", "CLOSED"),
        ("STATE_CHANGE", "CLIENT", "SYN_SENT", "CLOSED"),
        ("CONN_END", "SERVER", "RST"),
    ]
    st = engine.statistics()
    assert st.rst_out_of_window == 1
    assert engine.flows()[0].statistics().server.rst_ignored == 1


def test_rst_in_syn_received_and_in_fin_wait():
    c = conv()
    c.syn()
    c.syn_ack()
    c.rst("client")
    _, events = run(c.frames)
    assert events[-4:] == [
        ("RST", "CLIENT"),
        ("STATE_CHANGE", "CLIENT", "ESTABLISHED", "CLOSED"),
        ("STATE_CHANGE", "SERVER", "SYN_RECEIVED", "CLOSED"),
        ("CONN_END", "CLIENT", "RST"),
    ]
    c = conv()
    c.handshake()
    c.fin("client")
    c.ack("server")
    c.rst("server")
    _, events = run(c.frames)
    assert events[-3:] == [
        ("STATE_CHANGE", "SERVER", "CLOSE_WAIT", "CLOSED"),
        ("STATE_CHANGE", "CLIENT", "FIN_WAIT_2", "CLOSED"),
        ("CONN_END", "SERVER", "RST"),
    ]


def test_rst_outside_the_window_is_counted_and_ignored():
    c = conv()
    c.handshake()
    c.rst("server", seq_offset=10_000_000)
    engine, events = run(c.frames)
    assert events == HANDSHAKE
    assert engine.statistics().rst_out_of_window == 1
    (flow,) = engine.flows()
    assert flow.server_state == TcpState.ESTABLISHED


def test_syn_retry_raises_one_conn_start_and_retransmit_events():
    c = conv()
    c.syn()
    c.syn()
    c.syn()
    c.syn_ack()
    c.syn_ack()
    c.ack("client")
    engine, events = run(c.frames)
    assert events == [
        ("CONN_START", "CLIENT"),
        ("STATE_CHANGE", "CLIENT", "CLOSED", "SYN_SENT"),
        ("RETRANSMIT", "CLIENT"),
        ("RETRANSMIT", "CLIENT"),
        ("SYN_ACK", "SERVER"),
        ("STATE_CHANGE", "SERVER", "LISTEN", "SYN_RECEIVED"),
        ("STATE_CHANGE", "CLIENT", "SYN_SENT", "ESTABLISHED"),
        ("RETRANSMIT", "SERVER"),
        ("STATE_CHANGE", "SERVER", "SYN_RECEIVED", "ESTABLISHED"),
        ("ESTABLISHED", "CLIENT"),
    ]
    st = engine.flows()[0].statistics()
    assert (st.client.syn, st.server.synack, st.client.retransmits) == (3, 2, 2)


def test_simultaneous_open():
    a, b = ("10.0.0.1", 5000), ("10.0.0.2", 6000)
    syn_a = tcp_frame(a[0], b[0], a[1], b[1], seq=100, flags="S")
    syn_b = tcp_frame(b[0], a[0], b[1], a[1], seq=900, flags="S")
    sa_a = tcp_frame(a[0], b[0], a[1], b[1], seq=100, ack=901, flags="SA")
    sa_b = tcp_frame(b[0], a[0], b[1], a[1], seq=900, ack=101, flags="SA")
    _, events = run([(1, syn_a), (1.1, syn_b), (1.2, sa_a), (1.3, sa_b)])
    assert events == [
        ("CONN_START", "CLIENT"),
        ("STATE_CHANGE", "CLIENT", "CLOSED", "SYN_SENT"),
        ("STATE_CHANGE", "SERVER", "LISTEN", "SYN_SENT"),
        ("STATE_CHANGE", "CLIENT", "SYN_SENT", "SYN_RECEIVED"),
        ("SYN_ACK", "CLIENT"),
        ("STATE_CHANGE", "SERVER", "SYN_SENT", "ESTABLISHED"),
        ("SYN_ACK", "SERVER"),
        ("STATE_CHANGE", "CLIENT", "SYN_RECEIVED", "ESTABLISHED"),
        ("ESTABLISHED", "SERVER"),
    ]


def test_split_handshake_reaches_established_on_both_sides():
    c, s = ("1.1.1.1", 12345), ("2.2.2.2", 80)
    frames = [
        (1.0, tcp_frame(c[0], s[0], c[1], s[1], seq=1000, flags="S")),
        (1.1, tcp_frame(s[0], c[0], s[1], c[1], seq=3000, flags="S")),
        (1.2, tcp_frame(c[0], s[0], c[1], s[1], seq=1000, ack=3001, flags="SA")),
        (1.3, tcp_frame(s[0], c[0], s[1], c[1], seq=3001, ack=1001, flags="A")),
    ]
    engine, events = run(frames)
    (flow,) = engine.flows()
    assert (flow.client_state, flow.server_state) == (TcpState.ESTABLISHED, TcpState.ESTABLISHED)
    assert events.count(("ESTABLISHED", "SERVER")) == 1


def test_syn_ack_seen_first_makes_its_receiver_the_client():
    c = conv()
    c.syn_ack()
    c.ack("client")
    engine, events = run(c.frames)
    (flow,) = engine.flows()
    assert (str(flow.key.client_ip), flow.key.client_port) == ("10.0.0.1", 40000)
    assert events[0] == ("CONN_START", "SERVER")
    assert flow.server_state == TcpState.ESTABLISHED and flow.client_state == TcpState.ESTABLISHED


def test_tcp_fast_open_data_on_syn_is_counted():
    c = conv()
    c.syn(payload=b"GET / HTTP/1.1\r\n\r\n", options=tcp_options(fastopen_cookie=b"12345678"))
    c.syn_ack()
    c.ack("client")
    engine, events = run(c.frames)
    assert events == HANDSHAKE
    assert engine.flows()[0].statistics().client.payload_bytes == 18


def test_midstream_pickup_is_opt_in_and_uses_the_port_rule():
    # server (port 80) speaks first in the capture: the client is still the high-port side
    frames = [(1.0, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=5, ack=9, flags="PA", payload=b"x")),
              (1.1, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=9, ack=6, flags="A"))]
    engine, events = run(frames)
    assert events == [("ORPHAN", None), ("ORPHAN", None)]
    assert engine.statistics().orphans == 2
    engine, events = run(frames, midstream=True)
    assert events == [("CONN_START", "SERVER")]
    (flow,) = engine.flows()
    assert flow.key.client_port == 40000 and flow.midstream
    assert (flow.client_state, flow.server_state) == (TcpState.ESTABLISHED, TcpState.ESTABLISHED)


def test_midstream_both_ports_high_takes_the_first_sender():
    frames = [(1.0, tcp_frame("10.0.0.2", "10.0.0.1", 6000, 7000, seq=5, flags="A"))]
    engine, _ = run(frames, midstream=True)
    assert engine.flows()[0].key.client_port == 6000


def test_new_syn_after_close_starts_a_new_flow_but_a_retransmitted_one_does_not():
    c = conv()
    c.handshake()
    c.fin("client")
    c.fin("server")
    c.ack("client")
    c.syn()                       # same ISN: in TIME_WAIT a duplicate of the SYN, absorbed by the closed flow
    frames = list(c.frames)
    d = conv(client_isn=777777, start_ts=2.0)
    d.syn()
    engine, events = run(frames + d.frames)
    assert events.count(("CONN_START", "CLIENT")) == 2
    assert [f.id for f in engine.flows()] == [2]


def test_a_syn_again_after_a_reset_is_a_new_attempt_even_with_the_same_isn():
    """After a RST no side keeps the connection (no TIME_WAIT): the SYN sent again is a new
    connection for the server, as for Zeek (a connection refused and tried again is three REJ
    rows in Zeek's pop3.basic). Before, the same ISN made it a retransmission of the ended flow."""
    c = conv()
    frames = []
    for attempt in range(3):
        c.syn()
        c.frames.append((c.frames[-1][0] + 0.01, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=0,
                                                           ack=c.client_isn + 1, flags="RA")))
        frames += [(attempt + ts, f) for ts, f in c.frames]
        c.frames.clear()
    engine, events = run(frames, finish=True)
    assert [e for e in events if e[0] in ("CONN_START", "CONN_END")] == [
        ("CONN_START", "CLIENT"), ("CONN_END", "SERVER", "RST")] * 3
    assert ("RETRANSMIT", "CLIENT") not in events


def test_ipv6_with_extension_headers():
    c = TcpConversation(("2001:db8::1", 40000), ("2001:db8::2", 443))
    c.handshake()
    frame = tcp_frame("2001:db8::1", "2001:db8::2", 40000, 443, seq=c.client_seq, ack=c.server_seq,
                      flags="PA", payload=b"hello", ipv6_ext=[(0, b""), (60, b"")])
    engine, events = run(c.frames + [(2.0, frame)])
    assert events == HANDSHAKE
    st = engine.flows()[0].statistics()
    assert st.client.payload_bytes == 5
    assert engine.flows()[0].key.ip_version == 6


@pytest.mark.parametrize("vlan", [(42,), (10, 20)])
def test_vlan_and_qinq(vlan):
    c = conv(vlan=vlan)
    c.handshake()
    engine, events = run(c.frames)
    assert events == HANDSHAKE
    assert engine.flows()[0].key.vlan == ()
    engine, _ = run(c.frames, vlan_in_key=True)
    assert engine.flows()[0].key.vlan == vlan


def test_vlan_in_key_separates_tagged_copies():
    frames = []
    for i, vlan in enumerate([(), (42,), (10, 20)]):
        c = conv(vlan=vlan, start_ts=1 + i)
        c.handshake()
        frames += c.frames
    assert len(run(frames)[0].flows()) == 1
    engine, events = run(frames, vlan_in_key=True)
    assert sorted(f.key.vlan for f in engine.flows()) == [(), (10, 20), (42,)]
    assert events.count(("CONN_START", "CLIENT")) == 3


def test_state_change_and_established_kinds_are_filtered_by_subscription():
    c = conv()
    c.handshake()
    _, events = run(c.frames, kinds=EventKind.ESTABLISHED | EventKind.CONN_START)
    assert events == [("CONN_START", "CLIENT"), ("ESTABLISHED", "CLIENT")]


def test_packet_in_once_per_packet_for_subscribers():
    c = conv()
    c.handshake()
    c.send("client", b"abc")
    _, events = run(c.frames, kinds=EventKind.PACKET_IN)
    assert [e[1] for e in events] == ["CLIENT", "SERVER", "CLIENT", "CLIENT"]


def closed_then(conversation_end, *, later: float, isn: int = 1000):
    """A connection ended by ``conversation_end``, then a new one on the same tuple ``later`` s after."""
    c = conv(client_isn=1000)
    c.handshake()
    c.send("client", b"one")
    conversation_end(c)
    d = conv(client_isn=isn, start_ts=c.frames[-1][0] + later)
    d.handshake()
    d.send("client", b"two")
    return c.frames + d.frames


@pytest.mark.parametrize("later, isn", [(0.5, 99999), (10.0, 99999), (10.0, 1000), (1000.0, 1000)])
def test_a_reused_tuple_after_a_fin_close_is_a_new_flow_even_with_the_same_isn(later, isn):
    # the same ISN while the ended flow lingers (5 s) is a duplicate of its SYN (Linux's TIME_WAIT
    # takes it for one too); after that, or with another ISN, it is a new connection
    def close(c):
        c.fin("client")
        c.fin("server")
        c.ack("client")
    engine, events = run(closed_then(close, later=later, isn=isn), finish=True)
    assert [e for e in events if e[0] in ("CONN_START", "CONN_END")] == [
        ("CONN_START", "CLIENT"), ("CONN_END", "CLIENT", "FIN"),
        ("CONN_START", "CLIENT"), ("CONN_END", None, "END_OF_CAPTURE")]
    assert ("RETRANSMIT", "CLIENT") not in events


def test_a_syn_on_a_half_closed_tuple_ends_the_old_flow_as_reused():
    def half_close(c):            # both sides send a FIN, the last ACK is lost: still open
        c.fin("client")
        c.fin("server")
    engine, events = run(closed_then(half_close, later=2.0), finish=True)
    assert [e for e in events if e[0] in ("CONN_START", "CONN_END")] == [
        ("CONN_START", "CLIENT"), ("CONN_END", None, "REUSED"),
        ("CONN_START", "CLIENT"), ("CONN_END", None, "END_OF_CAPTURE")]


def test_a_syn_while_the_connection_is_open_is_not_a_new_flow():
    c = conv()
    c.handshake()
    c.send("client", b"data")
    c.frames.append((2.0, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=5555, flags="S")))
    engine, events = run(c.frames)
    assert events.count(("CONN_START", "CLIENT")) == 1


def test_a_packet_dropped_at_the_sender_hook_never_reaches_its_receiver():
    """An IPS drops a data segment once and every RST: the receiver's stream gets the segment's
    bytes from the retransmission (new to it: NEW_DATA, no RETRANSMIT), and the dropped RST ends
    nothing (only its sender's side closes); the receiver hook does not run for either."""
    c = conv()
    c.handshake()
    c.send("client", b"GOOD ")
    c.send("client", b"EVIL ")
    c.rst("server")
    c.send("client", b"EVIL ", advance=False, seq_offset=-5)
    c.send("client", b"MORE")
    engine = aiomb.Engine(reassembly=True)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(aiomb.ALL_BUILTIN & ~EventKind.PACKET_IN & ~EventKind.STATE_CHANGE)
    dropped, received = [], []

    def ips(packet):
        if packet.payload == b"EVIL " and not dropped or packet.tcp_flags & 0x04:
            dropped.append(packet.payload)
            packet.drop()
    engine.add_handler(EventKind.PACKET_IN, ips, hook=aiomb.Hook.SENDER)
    engine.add_handler(EventKind.PACKET_IN, lambda packet: received.append(packet.payload), hook=aiomb.Hook.RECEIVER)
    for ts, frame in c.frames:
        engine.feed(frame, ts)
    events = [(ev.kind.name, ev.value) for ev in d.drain(sub)]
    assert events == [("CONN_START", None), ("SYN_ACK", None), ("ESTABLISHED", None), ("NEW_DATA", b"GOOD "),
                      ("RST", None), ("NEW_DATA", b"EVIL "), ("NEW_DATA", b"MORE")]
    assert dropped == [b"EVIL ", b""] and engine.statistics().dropped_by_verdict == 2
    assert received == [b"", b"", b"", b"GOOD ", b"EVIL ", b"MORE"]
    (flow,) = engine.flows()
    assert (flow.client_state, flow.server_state) == (TcpState.ESTABLISHED, TcpState.CLOSED)
