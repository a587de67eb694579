"""Zeek's view of a flow kept by the core (Engine(conn_history=True)): crafted conversations for
each conn_state, the role flips, repeated and logarithmic history letters, sizes and bounds."""

import pytest

import aiomb
from aiomb._zeek import community_id, conn_rows, conn_state
from aiomb.testing import TcpConversation, tcp_frame, udp_frame


def zeek(frames, **options):
    engine = aiomb.Engine(reassembly=True, midstream=True, conn_history=True, **options)
    engine.keep_records()
    for ts, frame in frames:
        engine.feed(frame, ts)
    engine.finish()
    records = engine.take_records()
    return records, list(conn_rows(records))


def one(frames, **options):
    records, rows = zeek(frames, **options)
    assert len(rows) == 1
    return rows[0], records.conn(0)


def normal(c: TcpConversation, request=b"GET / HTTP/1.1\r\n\r\n", reply=b"HTTP/1.1 200 OK\r\n\r\n"):
    c.handshake()
    c.send("client", request)
    c.ack("server")
    c.send("server", reply)
    c.ack("client")


def test_normal_close_is_sf():
    c = TcpConversation()
    normal(c)
    c.fin("client")
    c.fin("server")
    c.ack("client")
    row, conn = one(c.frames)
    assert (row["conn_state"], row["history"]) == ("SF", "ShADadFf")
    assert (row["orig_bytes"], row["resp_bytes"], row["missed_bytes"]) == (18, 19, 0)
    assert (row["orig_pkts"], row["resp_pkts"]) == (6, 4)
    assert row["duration"] == pytest.approx(0.008)     # the last ACK came after both FINs: not counted
    assert (conn["orig_state"], conn["resp_state"]) == (5, 5)


@pytest.mark.parametrize("script, state, history", [
    (lambda c: [c.syn()], "S0", "S"),
    (lambda c: [c.syn(), c.rst("server", flags="RA")], "REJ", "Sr"),
    (lambda c: [c.syn(), c.rst("client")], "RSTOS0", "SR"),
    (lambda c: [*c.handshake()], "S1", "ShA"),
    (lambda c: [*c.handshake(), c.send("client", b"x"), c.rst("client", flags="RA")], "RSTO", "ShADR"),
    (lambda c: [*c.handshake(), c.send("client", b"x"), c.rst("server", flags="RA")], "RSTR", "ShADr"),
    (lambda c: [*c.handshake(), c.fin("client")], "S2", "ShAF"),
    (lambda c: [*c.handshake(), c.fin("server")], "S3", "ShAf"),
    (lambda c: [c.syn(), c.fin("client")], "SH", "SF"),
])
def test_conn_states(script, state, history):
    c = TcpConversation()
    script(c)
    row, _ = one(c.frames)
    assert (row["conn_state"], row["history"]) == (state, history)


def test_responder_only_after_syn_ack_is_shr_or_rstrh():
    """No SYN seen, the SYN-ACK from a web server: Zeek flips (^) and the close or RST is the
    responder's alone."""
    for last, state in (("fin", "SHR"), ("rst", "RSTRH")):
        c = TcpConversation(client=("10.0.0.1", 40000), server=("10.0.0.2", 80))
        c.syn()
        c.frames.clear()                    # the capture missed the SYN
        c.syn_ack()
        c.fin("server") if last == "fin" else c.rst("server")
        row, conn = one(c.frames)
        assert row["history"].startswith("^h")
        assert conn["orig"] == 0 and row["id.resp_p"] == 80
        assert row["conn_state"] == state


def test_first_packet_from_a_likely_server_port_flips():
    """Mid-stream data from port 443 to 51000: Zeek makes the receiver the originator; from 51000
    to 443 it keeps the sender; between two server ports the lower one is the responder."""
    for sport, dport, orig_p in ((443, 51000, 51000), (51000, 443, 51000), (8080, 80, 8080), (80, 8080, 8080)):
        frame = tcp_frame("10.0.0.1", "10.0.0.2", sport, dport, seq=100, ack=200, flags="PA", payload=b"data")
        row, _ = one([(1.0, frame)])
        assert row["id.orig_p"] == orig_p, (sport, dport)
        assert row["history"].startswith("^") == (orig_p != sport)
        assert row["conn_state"] == "OTH"


@pytest.mark.parametrize("proto, sport, dport, dst, flip", [
    ("udp", 67, 68, "10.0.0.2", True),              # DHCP registers 67 as its server port ...
    ("udp", 68, 67, "10.0.0.2", False),             # ... and 68 as a client port, not a likely server
    ("udp", 67, 68, "255.255.255.255", False),      # never toward a broadcast responder
    ("udp", 5072, 53796, "10.0.0.2", True),         # AYIYA, a packet analyzer's port
    ("udp", 4754, 50000, "10.0.0.2", True),         # GRE in UDP
    ("udp", 69, 50000, "10.0.0.2", False),          # TFTP: no default analyzer registers it
    ("tcp", 465, 50000, "10.0.0.2", True),          # SMTPS (the SSL analyzer's ports)
    ("tcp", 23, 50000, "10.0.0.2", False),          # telnet: not loaded by default
    ("tcp", 80, 50000, "255.255.255.255", False),
])
def test_likely_server_ports_are_zeeks(proto, sport, dport, dst, flip):
    """The first packet's ports against Zeek's likely_server_ports (the server ports its default
    scripts register), and no flip toward 255.255.255.255 (IPBasedAnalyzer::NewConn)."""
    if proto == "udp":
        frame = udp_frame("10.0.0.1", dst, sport, dport, b"x")
    else:
        frame = tcp_frame("10.0.0.1", dst, sport, dport, seq=100, ack=200, flags="PA", payload=b"x")
    row, _ = one([(1.0, frame)])
    assert (row["id.orig_p"], row["history"]) == ((dport, "^d") if flip else (sport, "D"))


def test_syn_syn_ack_reversal_flips_roles():
    """A SYN-ACK first, then a plain SYN from its receiver: Zeek's reversal (the SYN's letter is
    written before the flip, as in Zeek)."""
    a, b = ("10.0.0.1", 50000), ("10.0.0.2", 50001)
    frames = [(1.0, tcp_frame(*a[:1], *b[:1], a[1], b[1], seq=1000, ack=5001, flags="SA")),
              (1.1, tcp_frame(*b[:1], *a[:1], b[1], a[1], seq=5000, flags="S"))]
    row, conn = one(frames)
    assert row["history"] == "Hs^"
    assert row["id.orig_p"] == b[1]


def syn_ack_first(ports=(40000, 5555)):
    """A conversation whose SYN the capture missed: its first frame is the SYN-ACK."""
    c = TcpConversation(client=("10.0.0.1", ports[0]), server=("10.0.0.2", ports[1]))
    c.syn()
    c.frames.clear()
    c.syn_ack()
    return c


@pytest.mark.parametrize("first, history", [("client", "^hADaFf"), ("server", "^hdAFf")])
def test_syn_ack_first_flips_at_the_first_ack_or_data(first, history):
    """A lone SYN-ACK between ports that are not likely server ports keeps its sender as the
    originator (H: it may be a stealth scan), until an ACK or data follows from either side:
    then Zeek flips the roles and rewrites the history to ^h (TCP_Endpoint::CheckHistory)."""
    c = syn_ack_first()
    if first == "client":
        c.ack("client")
        c.send("client", b"x")
        c.ack("server")
    else:
        c.send("server", b"x")
        c.ack("client")
    c.fin("client")
    c.fin("server")
    row, conn = one(c.frames)
    assert (row["history"], row["conn_state"]) == (history, "SF")
    assert (row["id.orig_p"], row["id.resp_p"], conn["orig"]) == (40000, 5555, 0)
    assert (row["orig_bytes"], row["resp_bytes"]) == ((1, 0) if first == "client" else (0, 1))
    assert (row["orig_pkts"], row["resp_pkts"]) == ((3, 3) if first == "client" else (2, 3))


def test_syn_ack_first_then_rst_does_not_flip():
    """Only an ACK or data makes the late flip: a RST answering the lone SYN-ACK leaves its sender
    the originator (a stealth scan's SYN-ACK and its reset), and a flip by the first packet's
    ports (^h) is not made again."""
    c = syn_ack_first()
    c.rst("client")
    row, conn = one(c.frames)
    assert (row["history"], row["id.orig_p"], conn["orig"]) == ("Hr", 5555, 1)
    c = syn_ack_first(ports=(40000, 80))
    c.ack("client")
    row, conn = one(c.frames)
    assert (row["history"], row["id.orig_p"], conn["orig"]) == ("^hA", 40000, 0)


def test_retransmissions_are_logarithmic():
    """One T for the first retransmitted segment, a second at the tenth, a third at the hundredth."""
    for count, letters in ((1, 1), (9, 1), (10, 2), (99, 2), (100, 3)):
        c = TcpConversation()
        c.handshake()
        c.send("client", b"abc")
        for _ in range(count):
            c.send("client", b"abc", seq_offset=-3, advance=False)
        row, _ = one(c.frames)
        assert row["history"].count("T") == letters, count


def test_repeated_flags_count_at_new_sequence_numbers():
    """A FIN repeated at the same sequence number is one F; a RST at a new one is a second R."""
    c = TcpConversation()
    c.handshake()
    c.fin("client")
    c.client_seq -= 1
    c.fin("client")
    c.rst("client")
    c.rst("client", seq_offset=10)
    row, _ = one(c.frames)
    assert row["history"] == "ShAFRR"


def test_zero_windows_and_multi_flag_packets():
    c = TcpConversation()
    c.handshake()
    frames = list(c.frames)
    frames.append((1.1, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, seq=5001, ack=1001, flags="A", window=0)))
    frames.append((1.2, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=1001, ack=5001, flags="FRA")))
    row, _ = one(frames)
    assert row["history"] == "ShAawI"


def test_gap_acked_by_the_peer_is_missed():
    """The server's first 1000 bytes are never captured but the client ACKs them: g, 1000 missed."""
    c = TcpConversation()
    c.handshake()
    c.send("server", b"x" * 1000)
    c.frames.pop()
    c.ack("client")
    c.send("server", b"y" * 10)
    c.fin("client")
    c.fin("server")
    c.ack("client")
    row, _ = one(c.frames)
    assert row["missed_bytes"] == 1000
    assert "g" in row["history"] and row["conn_state"] == "SF"
    assert row["resp_bytes"] == 1010


def test_udp_states_and_flip():
    """UDP: SF when both sides sent, S0 when only the originator did; a first packet from port 53
    to a high port is Zeek's flip."""
    row, _ = one([(1.0, udp_frame("10.0.0.1", "10.0.0.2", 5000, 53, b"q")),
                  (1.5, udp_frame("10.0.0.2", "10.0.0.1", 53, 5000, b"answer"))])
    assert (row["conn_state"], row["history"], row["orig_bytes"], row["resp_bytes"]) == ("SF", "Dd", 1, 6)
    assert row["duration"] == pytest.approx(0.5)
    row, _ = one([(1.0, udp_frame("10.0.0.1", "10.0.0.2", 5000, 9999, b"q"))])
    assert (row["conn_state"], row["history"]) == ("S0", "D")
    assert "duration" not in row and "orig_bytes" not in row        # Zeek leaves them unset at 0 s
    row, _ = one([(1.0, udp_frame("10.0.0.2", "10.0.0.1", 53, 5000, b"late answer"))])
    assert (row["conn_state"], row["history"], row["id.orig_p"]) == ("SHR", "^d", 5000)


def test_history_is_bounded_and_counted():
    """Forty letters are kept; RSTs at ever new sequence numbers beyond them are counted."""
    c = TcpConversation()
    c.handshake()
    for i in range(60):
        c.rst("client", seq_offset=i)
    records, rows = zeek(c.frames)
    assert len(rows[0]["history"]) == 40
    assert records.conn(0)["history_dropped"] == 3 + 60 - 40


def test_without_conn_history_there_is_no_view():
    engine = aiomb.Engine()
    engine.keep_records()
    c = TcpConversation()
    c.handshake()
    for ts, frame in c.frames:
        engine.feed(frame, ts)
    engine.finish()
    records = engine.take_records()
    assert records.conn(0) is None and engine.conn_history is False
    with pytest.raises(ValueError, match="conn_history=True"):
        list(conn_rows(records))
    with pytest.raises(IndexError):
        records.conn(1)


def test_conn_state_table():
    """Zeek's conn_state function on the endpoint states directly (1 SYN sent .. 6 reset)."""
    assert conn_state("tcp", 6, 6, 0, 0, "SR") == "REJ"
    assert conn_state("tcp", 6, 6, 5, 0, "ShADRr") == "RSTR"
    assert conn_state("tcp", 4, 6, 5, 0, "ShADr") == "RSTR"
    assert conn_state("tcp", 3, 6, 5, 0, "Dr") == "RSTRH"
    assert conn_state("tcp", 6, 0, 0, 0, "^SR") == "RSTOS0"
    assert conn_state("tcp", 6, 0, 0, 0, "SFR") == "OTH"
    assert conn_state("tcp", 3, 3, 0, 0, "Dd") == "OTH"
    assert conn_state("udp", 0, 1, 0, 0, "d") == "SHR"
    assert conn_state("udp", 0, 0, 0, 0, "") == "OTH"


@pytest.mark.parametrize("proto, src, sport, dst, dport, expected", [
    (6, "128.232.110.120", 34855, "66.35.250.204", 80, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (6, "66.35.250.204", 80, "128.232.110.120", 34855, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (17, "192.168.1.52", 54585, "8.8.8.8", 53, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
])
def test_community_id_published_vectors(proto, src, sport, dst, dport, expected):
    """The Community ID specification's examples (as its reference implementations print them)."""
    assert community_id(proto, src, sport, dst, dport) == expected
