"""Sans-I/O flow table: bounds, eviction, idle timeouts by protocol and state, handles."""

import aiomb
from aiomb import EndReason, EventKind, TcpState
from aiomb.testing import TcpConversation, tcp_frame, udp_frame

ENDS = EventKind.CONN_END | EventKind.UDP_END


def syn(i, ts=1.0):
    return tcp_frame("10.0.0.1", "10.0.0.2", 1024 + i, 80, seq=i, flags="S")


def feed(engine, frames):
    for ts, f in frames:
        engine.feed(f, ts)


def test_max_flows_evicts_the_least_recently_active_flow():
    engine = aiomb.Engine(max_flows=3)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(ENDS | EventKind.CONN_START)
    feed(engine, [(1.0 + i, syn(i)) for i in range(3)])
    engine.feed(tcp_frame("10.0.0.2", "10.0.0.1", 80, 1024, seq=9, ack=1, flags="SA"), 4.0)
    engine.feed(syn(3), 5.0)
    events = d.drain(sub)
    assert [(e.kind, e.key.client_port) for e in events] == [
        (EventKind.CONN_START, 1024), (EventKind.CONN_START, 1025), (EventKind.CONN_START, 1026),
        (EventKind.CONN_END, 1025), (EventKind.CONN_START, 1027)]
    assert events[3].reason == EndReason.EVICTED
    st = engine.statistics()
    assert (st.flows_evicted, st.flows_active, st.max_flows) == (1, 3, 3)


def test_idle_timeouts_depend_on_state_and_protocol():
    engine = aiomb.Engine(tcp_syn_timeout=10, tcp_established_timeout=100, udp_timeout=50)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(ENDS)
    engine.feed(syn(1), 0.0)                                          # half-open: 10 s
    c = TcpConversation(("10.0.0.5", 5000), ("10.0.0.6", 22), start_ts=0.0)
    c.handshake()
    feed(engine, c.frames)                                              # established: 100 s
    engine.feed(udp_frame("10.0.0.7", "10.0.0.8", 9, 9, b"u"), 0.0)   # udp: 50 s
    engine.expire(10.5)
    assert [e.key.server_port for e in d.drain(sub)] == [80]
    engine.expire(50.5)
    assert [e.kind for e in d.drain(sub)] == [EventKind.UDP_END]
    engine.expire(99.0)
    assert d.drain(sub) == []
    engine.expire(100.1)
    (end,) = d.drain(sub)
    assert (end.key.server_port, end.reason) == (22, EndReason.TIMEOUT)
    assert engine.statistics().flows_timed_out == 3


def test_idle_time_counts_from_the_clock_at_a_flows_last_packet():
    """A packet stamped before the clock (the latest time seen) is as recent as the clock: its
    flow stays its whole timeout from there, and its record keeps the stamp. Eviction takes the
    flow idle longest by the same measure."""
    engine = aiomb.Engine(udp_timeout=10)
    engine.keep_records()
    a = udp_frame("10.0.0.1", "10.0.0.2", 1, 2, b"a")
    b = udp_frame("10.0.0.3", "10.0.0.4", 3, 4, b"b")
    engine.feed(b, 100.0)
    engine.feed(a, 40.0)            # late by 60 s: the clock stays at 100
    engine.feed(b, 101.0)
    engine.expire(109.9)
    assert len(engine.flows()) == 2
    engine.expire(110.0)
    rows = engine.take_records()
    assert [(rows[i]["client_port"], rows[i]["last_ts"], rows[i]["end_reason"]) for i in range(len(rows))] == [
        (1, 40.0, "timeout")]
    small = aiomb.Engine(max_flows=2)
    small.keep_records()
    small.feed(syn(1), 100.0)
    small.feed(a, 101.0)
    small.feed(a, 50.0)             # late, but at clock 101: a is more recent than the SYN
    small.feed(b, 101.5)
    rows = small.take_records()
    assert [(rows[i]["client_port"], rows[i]["end_reason"]) for i in range(len(rows))] == [(1025, "evicted")]


def test_closed_flows_linger_then_leave_silently():
    engine = aiomb.Engine(tcp_closed_timeout=5)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(ENDS | EventKind.PACKET_IN)
    c = TcpConversation(start_ts=0.0)
    c.handshake()
    c.rst("client")
    c.rst("client")                       # a straggler, counted on the closed flow
    feed(engine, c.frames)
    (flow,) = engine.flows()
    assert flow.statistics().client.packets == 4
    assert flow.statistics().client.rst == 2
    engine.expire(6.0)
    assert engine.flows() == []
    kinds = [e.kind for e in d.drain(sub)]
    assert kinds.count(EventKind.CONN_END) == 1
    assert kinds.count(EventKind.PACKET_IN) == 5


def test_finish_ends_open_flows_oldest_first_and_handles_keep_final_values():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(ENDS)
    feed(engine, [(1.0 + i, syn(i)) for i in range(5)])
    engine.feed(udp_frame("10.0.0.1", "10.0.0.9", 1, 2, b"x"), 9.0)
    handles = engine.flows()
    engine.finish()
    events = d.drain(sub)
    assert [e.flow_id for e in events] == [1, 2, 3, 4, 5, 6]
    assert {e.reason for e in events} == {EndReason.END_OF_CAPTURE}
    assert engine.statistics().flows_active == 0
    h = handles[0]
    assert not h.alive and h.client_state == TcpState.SYN_SENT and h.end_reason == EndReason.END_OF_CAPTURE
    assert h.statistics().client.syn == 1 and h.first_ts == 1.0


def test_many_flows_grow_the_table_and_both_directions_meet():
    engine = aiomb.Engine()
    n = 5000
    for i in range(n):
        engine.feed(tcp_frame(f"10.{i >> 8 & 255}.{i & 255}.1", "192.0.2.1", 2000 + i % 50000, 443,
                              seq=i, flags="S"), 1.0)
    for i in range(n):
        engine.feed(tcp_frame("192.0.2.1", f"10.{i >> 8 & 255}.{i & 255}.1", 443, 2000 + i % 50000,
                              seq=7, ack=i + 1, flags="SA"), 2.0)
    st = engine.statistics()
    assert (st.flows_created, st.flows_active) == (n, n)
    assert all(f.server_state == TcpState.SYN_RECEIVED for f in engine.flows())


def test_finish_orders_thousands_of_flows_by_age_not_by_table_slot():
    # UDP flows time out first; the TCP flows opened after them reuse their table slots, last
    # freed first, so table order is not age order
    engine = aiomb.Engine(udp_timeout=10.0)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(ENDS)
    n = 1500
    for i in range(n):
        engine.feed(udp_frame(f"10.1.{i >> 8}.{i & 255}", "192.0.2.1", 2000 + i, 53, b"q"), 1.0)
    feed(engine, [(2.0, tcp_frame(f"10.2.{i >> 8}.{i & 255}", "192.0.2.1", 2000 + i, 443, seq=i, flags="S"))
                  for i in range(n)])
    engine.expire(12.0)
    assert len(d.drain(sub)) == n
    feed(engine, [(13.0, tcp_frame(f"10.3.{i >> 8}.{i & 255}", "192.0.2.1", 2000 + i, 443, seq=i, flags="S"))
                  for i in range(n)])
    engine.finish()
    ids = [e.flow_id for e in d.drain(sub)]
    assert ids == list(range(n + 1, 3 * n + 1))
    assert engine.statistics().flows_active == 0


def test_flow_context_and_statistics_snapshot():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.CONN_START)
    engine.feed(syn(1), 1.0)
    (ev,) = d.drain(sub)
    flow = engine.flow(ev.key, ev.flow_id)
    flow.context["seen"] = True
    assert engine.flows()[0].context == {"seen": True}
    assert engine.flows()[0] is flow and engine.flow(ev.key) is flow
    assert engine.flow(ev.key, ev.flow_id + 1) is None
    snap = flow.statistics()
    engine.feed(syn(1), 2.0)
    assert snap.client.packets == 1 and flow.statistics().client.packets == 2


def test_engine_option_errors_are_precise():
    import pytest
    with pytest.raises(ValueError, match="max_flows must be an int from 1"):
        aiomb.Engine(max_flows=0)
    with pytest.raises(ValueError, match="udp_timeout must be a positive number of seconds"):
        aiomb.Engine(udp_timeout=-1)
    with pytest.raises(TypeError):
        aiomb.Engine(no_such_option=1)


def test_an_ipv4_and_an_ipv6_flow_with_the_same_address_bytes_are_two_flows():
    """suricata-verify hashaf-flow-v4-v6-collision: 1.2.3.4 -> 5.6.7.8 and 102:304:: -> 506:708::
    hold the same first bytes, and an IPv4 address is kept in 16 bytes with 12 zeroes: the lookup
    must compare the family too. Before, they were one flow, and an IPv6 sender could put bytes in
    an IPv4 connection's stream."""
    engine = aiomb.Engine(reassembly=True)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(aiomb.EventKind.NEW_DATA)
    v4 = TcpConversation(("1.2.3.4", 1000), ("5.6.7.8", 80))
    v4.handshake()
    injected = tcp_frame("102:304::", "506:708::", 1000, 80, seq=v4.client_seq, ack=v4.server_seq, flags="PA",
                         payload=b"IPV6-DATA")
    v4.send("client", b"IPV4-DATA")
    for ts, frame in v4.frames[:3] + [(1.5, injected)] + v4.frames[3:]:
        engine.feed(frame, ts)
    engine.feed(udp_frame("1.2.3.4", "5.6.7.8", 5000, 53, b"q4"), 2.0)
    engine.feed(udp_frame("102:304::", "506:708::", 5000, 53, b"q6"), 2.1)
    flows = sorted((str(f.key), f.statistics().client.payload_bytes) for f in engine.flows())
    assert flows == [("tcp 1.2.3.4:1000 -> 5.6.7.8:80", 9), ("udp 1.2.3.4:5000 -> 5.6.7.8:53", 2),
                     ("udp [102:304::]:5000 -> [506:708::]:53", 2)]
    assert [(e.key.ip_version, e.value) for e in d.drain(sub)] == [(4, b"IPV4-DATA")]
    assert engine.statistics().orphans == 1                 # the IPv6 segment: no flow of its own
