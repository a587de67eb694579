"""Flow.translate: a flow bound to its outer tuple. Replies to the outer tuple are translated
before the flow lookup (one flow, both sides), the client's packets rewritten after the hooks;
checksums of rewritten frames checked from scratch, read-only frames left as they are."""

import ipaddress

import pytest

import aiomb
from aiomb import CONN_START, PACKET_IN, UDP_START, EventKind, Hook
from aiomb.testing import TcpConversation, ipv4_fragments, tcp_frame, udp_frame

from .events_helpers import compact
from .test_rewrite import check

NAT, SERVER = ("192.0.2.1", 61000), ("198.51.100.7", 80)
CLIENT = ("10.0.0.5", 40000)
REQUEST, RESPONSE = b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nhello"


def exchange(conv):
    """(sender, frame) of a whole connection: handshake, a request, a response, FIN both ways."""
    return [("client", conv.syn()), ("server", conv.syn_ack()), ("client", conv.ack()),
            ("client", conv.send("client", REQUEST)), ("server", conv.send("server", RESPONSE)),
            ("client", conv.fin("client")), ("server", conv.fin("server")), ("client", conv.ack())]


def nat_engine(**options):
    """An engine whose CONN_START handler binds each new flow's client to NAT; its dispatcher
    and a subscription to every event but PACKET_IN; the flows' views at the sender hook."""
    engine = aiomb.Engine(reassembly=True, **options)
    seen = []

    def bind(packet):
        packet.flow.translate(client=NAT)

    def view(packet):
        seen.append((packet.side.name, str(packet.src), packet.sport, str(packet.dst), packet.dport))
    engine.add_handler(CONN_START, bind)
    engine.add_handler(UDP_START, bind)
    engine.add_handler(PACKET_IN, view, hook=Hook.SENDER)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(aiomb.ALL_BUILTIN & ~EventKind.PACKET_IN)
    return engine, d, sub, seen


def test_both_directions_are_one_flow_and_the_frames_leave_translated():
    engine, d, sub, seen = nat_engine()
    inside, outside = TcpConversation(CLIENT, SERVER), TcpConversation(NAT, SERVER)
    for (who, arriving), (_, expected) in zip(exchange(inside), exchange(outside)):
        if who == "server":                        # replies arrive at the outer tuple ...
            arriving, expected = expected, arriving     # ... and leave for the client
        buf = bytearray(arriving)
        assert engine.feed(buf, 1.0) == aiomb.Verdict.FORWARD
        assert bytes(buf) == expected, who         # byte for byte what the other side carries
        check(bytes(buf))                           # every checksum verifies from scratch
    events = d.drain(sub)
    assert [compact(e) for e in events] == [          # one connection, both sides, one end
        ("CONN_START", "CLIENT"), ("STATE_CHANGE", "CLIENT", "CLOSED", "SYN_SENT"),
        ("SYN_ACK", "SERVER"), ("STATE_CHANGE", "SERVER", "LISTEN", "SYN_RECEIVED"),
        ("STATE_CHANGE", "CLIENT", "SYN_SENT", "ESTABLISHED"),
        ("STATE_CHANGE", "SERVER", "SYN_RECEIVED", "ESTABLISHED"), ("ESTABLISHED", "CLIENT"),
        ("NEW_DATA", "CLIENT", REQUEST), ("NEW_DATA", "SERVER", RESPONSE),
        ("FIN", "CLIENT"), ("STATE_CHANGE", "CLIENT", "ESTABLISHED", "FIN_WAIT_1"),
        ("STATE_CHANGE", "SERVER", "ESTABLISHED", "CLOSE_WAIT"),
        ("FIN", "SERVER"), ("STATE_CHANGE", "SERVER", "CLOSE_WAIT", "LAST_ACK"),
        ("STATE_CHANGE", "CLIENT", "FIN_WAIT_1", "FIN_WAIT_2"),
        ("STATE_CHANGE", "CLIENT", "FIN_WAIT_2", "TIME_WAIT"),
        ("STATE_CHANGE", "SERVER", "LAST_ACK", "CLOSED"), ("CONN_END", "CLIENT", "FIN")]
    assert {(str(e.key.client_ip), e.key.client_port, str(e.key.server_ip), e.key.server_port)
            for e in events} == {(*CLIENT, *SERVER)}
    assert len({e.flow_id for e in events}) == 1
    # handlers saw the flow's own addresses both ways (the replies already translated back)
    assert seen == [("CLIENT", *CLIENT, *SERVER) if who == "client" else ("SERVER", *SERVER, *CLIENT)
                    for who, _ in exchange(inside)]
    st = engine.statistics()
    assert (st.flows_created, st.flows_ended, st.orphans) == (1, 1, 0)
    assert (st.translations, st.translated_packets, st.untranslatable) == (1, 8, 0)
    flow = engine.flows()[0]
    assert flow.translation == ((ipaddress.ip_address(NAT[0]), NAT[1]), (flow.key.server_ip, SERVER[1]))
    engine.finish()                                 # the binding leaves with the flow
    assert engine.statistics().translations == 0 and flow.translation is None


def test_read_only_frames_translate_the_view_only():
    engine, d, sub, seen = nat_engine()
    inside, outside = TcpConversation(CLIENT, SERVER), TcpConversation(NAT, SERVER)
    frames = [a if who == "client" else b for (who, a), (_, b) in zip(exchange(inside), exchange(outside))]
    for frame in frames:
        engine.feed(frame, 1.0)                     # bytes: read-only
    assert [e.kind for e in d.drain(sub) if e.kind in (EventKind.CONN_START, EventKind.CONN_END)] == [
        EventKind.CONN_START, EventKind.CONN_END]
    assert {s[1:] for s in seen if s[0] == "SERVER"} == {(*SERVER, *CLIENT)}
    assert engine.statistics().flows_created == 1


def test_udp_and_ipv6():
    engine, d, sub, seen = nat_engine()
    out = bytearray(udp_frame(*CLIENT[:1], SERVER[0], CLIENT[1], 53, b"query"))
    engine.feed(out, 1.0)
    assert check(bytes(out)) == (NAT[0], SERVER[0], NAT[1], 53)
    back = bytearray(udp_frame(SERVER[0], NAT[0], 53, NAT[1], b"answer"))
    engine.feed(back, 1.1)
    assert check(bytes(back)) == (SERVER[0], CLIENT[0], 53, CLIENT[1])
    assert engine.statistics().flows_created == 1 and [s[0] for s in seen] == ["CLIENT", "SERVER"]
    six = aiomb.Engine()
    six.add_handler(CONN_START, lambda p: p.flow.translate(server=("2001:db8::80", 8080)))
    syn = bytearray(tcp_frame("2001:db8::1", "2001:db8::2", 1234, 80, flags="S", seq=1))
    six.feed(syn, 1.0)
    assert check(bytes(syn)) == ("2001:db8::1", "2001:db8::80", 1234, 8080)
    reply = bytearray(tcp_frame("2001:db8::80", "2001:db8::1", 8080, 1234, flags="SA", seq=9, ack=2))
    six.feed(reply, 1.1)
    assert check(bytes(reply)) == ("2001:db8::2", "2001:db8::1", 80, 1234)
    assert six.flows()[0].server_state == aiomb.TcpState.SYN_RECEIVED


def test_a_dropped_packet_is_left_untouched_and_fragments_cannot_be_rewritten():
    engine = aiomb.Engine()
    engine.add_handler(CONN_START, lambda p: p.flow.translate(client=NAT))
    engine.add_handler(PACKET_IN, lambda p: p.drop() if p.payload == b"x" * 100 else None, hook=Hook.SENDER)
    conv = TcpConversation(CLIENT, SERVER)
    for frame in conv.handshake():
        engine.feed(bytearray(frame), 1.0)
    data = conv.send("client", b"x" * 100)
    buf = bytearray(data)
    assert engine.feed(buf, 1.0) == aiomb.Verdict.DROP and bytes(buf) == data
    *head, last = ipv4_fragments(conv.send("client", b"y" * 60), fragment_size=32)
    for frame in head:
        engine.feed(bytearray(frame), 1.0)
    buf = bytearray(last)
    assert engine.feed(buf, 1.0) == aiomb.Verdict.DROP and bytes(buf) == last
    assert engine.statistics().untranslatable == 1


def test_misuse_and_collisions():
    engine = aiomb.Engine()
    flows = []
    engine.add_handler(CONN_START, lambda p: flows.append(p.flow))
    first, second = TcpConversation(CLIENT, SERVER), TcpConversation(("10.0.0.6", 40001), SERVER)
    engine.feed(first.syn(), 1.0)
    engine.feed(second.syn(), 1.0)
    a, b = flows
    for kwargs, message in [
        ({}, "translate() needs client=(address, port), server=(address, port) or both"),
        ({"client": NAT[0]}, "translate(): client must be an (address, port) pair, got '192.0.2.1'"),
        ({"client": (NAT[0], 70000)}, "translate(): client port must be an int from 0 to 65535, got 70000"),
        ({"server": ("::1", 1)}, "translate(): server address ::1 is not an IPv4 address like the flow's"),
    ]:
        with pytest.raises(ValueError) as info:
            a.translate(**kwargs)
        assert str(info.value) == message
    a.translate(client=NAT)
    with pytest.raises(ValueError, match=r"is already translated to .*; a flow's outer tuple is set once"):
        a.translate(client=NAT)
    with pytest.raises(ValueError, match=r"translate\(\): flow #1 .* is open with the same outer tuple"):
        b.translate(client=NAT)
    engine.feed(first.rst("server", flags="RA"), 2.0)    # refused: ended, lingering, it gives the tuple up
    b.translate(client=NAT)
    assert a.translation is None and b.translation[0][1] == NAT[1]
    with pytest.raises(aiomb.FlowEnded):
        a.translate(client=("192.0.2.1", 1))
    assert engine.statistics().translations == 1


def test_the_translation_hook_hears_of_each_binding_and_its_end():
    """Engine.translation_hook (what a steered worker gives its engines) is called once per
    binding made and once per binding ended, with the outer reply tuple: not per packet."""
    engine = aiomb.Engine()
    heard = []
    engine.translation_hook = lambda *change: heard.append(change)
    engine.add_handler(CONN_START, lambda p: p.flow.translate(client=NAT))
    engine.add_handler(UDP_START, lambda p: p.flow.translate(client=("192.0.2.1", 5353)))
    nat, server = ipaddress.ip_address(NAT[0]), ipaddress.ip_address(SERVER[0])
    reply = (6, (server, SERVER[1]), (nat, NAT[1]))
    for _, frame in exchange(TcpConversation(CLIENT, SERVER)):
        engine.feed(bytearray(frame), 1.0)
    assert heard == [(True, *reply)]
    first = TcpConversation(("10.0.0.6", 40001), SERVER)    # takes the outer tuple the ended flow gave up
    engine.feed(first.syn(), 2.0)
    assert heard == [(True, *reply), (False, *reply), (True, *reply)]
    engine.feed(udp_frame(CLIENT[0], SERVER[0], CLIENT[1], 53, b"query"), 2.0)
    engine.feed(udp_frame(SERVER[0], "192.0.2.1", 53, 5353, b"answer"), 2.1)
    udp = (17, (server, 53), (nat, 5353))
    assert heard[3:] == [(True, *udp)]
    engine.expire(100.0)                            # both time out and leave the table
    assert len(heard) == 6 and set(heard[4:]) == {(False, *reply), (False, *udp)}
    assert engine.statistics().translations == 0


def test_a_binding_the_hook_refuses_is_not_made():
    engine = aiomb.Engine()
    flows = []
    engine.add_handler(CONN_START, lambda p: flows.append(p.flow))
    engine.feed(TcpConversation(CLIENT, SERVER).syn(), 1.0)

    def refuse(bound, *_):
        raise OSError("no room")
    engine.translation_hook = refuse
    with pytest.raises(OSError, match="no room"):
        flows[0].translate(client=NAT)
    assert flows[0].translation is None and engine.statistics().translations == 0
    engine.translation_hook = None
    flows[0].translate(client=NAT)
    assert engine.statistics().translations == 1
