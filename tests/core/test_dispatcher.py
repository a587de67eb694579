"""Sans-I/O: the engine's event log and the Dispatcher that turns it into deliveries, events as
values, and the misuse the core refuses."""

import gc
import pickle

import pytest

import aiomb
from aiomb import EventKind, FlowFilter, Side
from aiomb.testing import TcpConversation, tcp_frame, udp_frame

CLIENT, SERVER = Side.CLIENT, Side.SERVER


def conversation(client=("10.0.0.1", 40000), server=("10.0.0.2", 80), start_ts=1.0, data=(b"GET /", b"200")):
    c = TcpConversation(client, server, start_ts=start_ts)
    c.handshake()
    c.send("client", data[0])
    c.send("server", data[1])
    c.fin("client")
    c.fin("server")
    c.ack("client")
    return c.frames


def feed(engine, frames):
    for ts, frame in frames:
        engine.feed(frame, ts)


# -- subscriptions --------------------------------------------------------------------


def test_subscription_numbers_are_checked():
    d = aiomb.Dispatcher(aiomb.Engine())
    sub = d.subscribe(EventKind.CONN_START)
    for bad in (5, -1, 1, "0", None):
        with pytest.raises(ValueError, match="no subscription"):
            d.pending(bad)
        with pytest.raises(ValueError, match="no subscription"):
            d.drain(bad)
    assert d.pending(sub) == 0 and d.drain(sub) == []
    with pytest.raises(ValueError, match="no middlebox 3"):
        d.subscribe(EventKind.CONN_START, middlebox=3)
    with pytest.raises(ValueError, match="no event kinds"):
        d.subscribe([])


def test_drain_routes_what_was_logged_and_the_log_is_emptied():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    starts = d.subscribe(EventKind.CONN_START)
    ends = d.subscribe(EventKind.CONN_END | EventKind.CONN_START)
    feed(engine, conversation())
    assert len(engine.log) == 2                      # one start, one end: one record each
    assert [e.kind for e in d.drain(starts)] == [EventKind.CONN_START]
    assert len(engine.log) == 0
    assert d.pending(ends) == 2
    assert [e.kind for e in d.drain(ends)] == [EventKind.CONN_START, EventKind.CONN_END]
    assert d.events_delivered == 3


def test_nothing_is_logged_for_kinds_nobody_wants():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.UDP_START)
    feed(engine, conversation())
    assert len(engine.log) == 0 and d.drain(sub) == []
    assert engine.statistics().events == 0


def test_a_filtered_subscription_sees_only_its_flows_and_uses_no_middlebox():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    web = d.subscribe(EventKind.CONN_START, filter=FlowFilter("dst port 80"))
    ssh = d.subscribe(EventKind.CONN_START, filter=FlowFilter("dst port 22"))
    both = d.subscribe(EventKind.CONN_START)
    feed(engine, sorted(conversation() + conversation(("10.0.0.3", 40001), ("10.0.0.4", 22), 1.001)))
    assert [e.key.server_port for e in d.drain(web)] == [80]
    assert [e.key.server_port for e in d.drain(ssh)] == [22]
    assert [e.key.server_port for e in d.drain(both)] == [80, 22]
    assert engine.add_filter(FlowFilter("dst port 80")) == engine.add_filter(FlowFilter("dst port 80"))
    with pytest.raises(ValueError, match="no middlebox 1"):
        d.subscribe(EventKind.CONN_START, middlebox=1)


def test_a_filter_added_late_is_evaluated_for_the_flows_already_open():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    frames = conversation()
    feed(engine, frames[:3])                         # the handshake: the flow is open
    sub = d.subscribe(EventKind.CONN_END, filter=FlowFilter("port 80"))
    feed(engine, frames[3:])
    assert [e.key.server_port for e in d.drain(sub)] == [80]


def test_subscriptions_of_a_middlebox_follow_its_filter():
    engine = aiomb.Engine()
    mb = engine.add_middlebox(FlowFilter("udp"))
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.CONN_START | EventKind.UDP_START, middlebox=mb)
    feed(engine, conversation() + [(3.0, udp_frame("10.0.0.5", "10.0.0.6", 5000, 53, b"q"))])
    assert [e.kind for e in d.drain(sub)] == [EventKind.UDP_START]


def test_at_most_32_filters_in_use_and_a_released_one_is_reused_for_the_flows_already_open():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    subs = [d.subscribe(EventKind.CONN_END, filter=FlowFilter(f"port {port}")) for port in range(32)]
    with pytest.raises(ValueError, match="at most 32 distinct subscription filters in use"):
        d.subscribe(EventKind.CONN_END, filter=FlowFilter("port 99"))
    d.subscribe(EventKind.CONN_END, filter=FlowFilter("port 3"))          # an equal filter: shared
    frames = conversation()
    feed(engine, frames[:3])                         # a flow to port 80 is open
    d.unsubscribe(subs[0])
    web = d.subscribe(EventKind.CONN_END, filter=FlowFilter("port 80"))   # takes the freed bit
    feed(engine, frames[3:])
    assert [e.key.server_port for e in d.drain(web)] == [80]
    assert all(d.drain(sub) == [] for sub in subs[1:])


# -- one dispatcher per engine --------------------------------------------------------


def test_one_dispatcher_reads_an_engine_and_its_wants_go_with_it():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    d.subscribe(EventKind.CONN_START)
    with pytest.raises(RuntimeError, match="already has a dispatcher"):
        aiomb.Dispatcher(engine)
    del d
    gc.collect()
    feed(engine, conversation())
    assert len(engine.log) == 0                      # nobody reads the log: nothing is kept
    d2 = aiomb.Dispatcher(engine)
    sub = d2.subscribe(EventKind.CONN_START)
    feed(engine, conversation(("10.0.0.7", 41000), start_ts=9.0))
    assert len(d2.drain(sub)) == 1


# -- acceptors and flow inboxes ---------------------------------------------------------


def test_an_acceptor_gives_each_new_flow_an_inbox_with_its_events():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    acc = d.listen(EventKind.NEW_DATA | EventKind.FIN, filter=FlowFilter("tcp"))
    frames = conversation()
    feed(engine, frames[:3])
    (inbox,) = d.accept(acc)
    assert inbox.flow_id == 1 and inbox.key.server_port == 80 and inbox.flow.alive
    assert d.accept(acc) == [] and d.ready_inboxes() == []
    feed(engine, frames[3:4])                        # the request
    assert d.ready_inboxes() == [inbox]
    assert inbox.ready == int(EventKind.NEW_DATA)
    (ev,) = inbox.take()
    assert (ev.kind, ev.side, ev.value) == (EventKind.NEW_DATA, CLIENT, b"GET /")
    assert inbox.ready == 0 and not inbox.ended
    feed(engine, frames[4:])
    assert d.ready_inboxes() == [inbox]
    end = inbox.take()
    assert [e.kind for e in end] == [EventKind.NEW_DATA, EventKind.FIN, EventKind.FIN, EventKind.CONN_END]
    assert end[-1].stats.end_reason is aiomb.EndReason.FIN       # the end always comes, with the figures
    assert inbox.ended and inbox.flow.end_reason is aiomb.EndReason.FIN
    d.close_acceptor(acc)
    with pytest.raises(ValueError, match="no open acceptor"):
        d.accept(acc)


def test_an_acceptor_takes_udp_only_when_asked_and_an_inbox_ends_with_its_flow():
    engine = aiomb.Engine(udp_timeout=5)
    d = aiomb.Dispatcher(engine)
    tcp_only = d.listen(EventKind.UDP_START)
    udp = d.listen(EventKind.UDP_START, tcp=False, udp=True)
    engine.feed(udp_frame("10.0.0.5", "10.0.0.6", 5000, 53, b"q"), 1.0)
    assert d.accept(tcp_only) == []
    (inbox,) = d.accept(udp)
    assert [e.kind for e in inbox.take()] == [EventKind.UDP_START]
    engine.expire(10.0)
    assert d.ready_inboxes() == [inbox] and inbox.ended
    assert [(e.kind, e.reason) for e in inbox.take()] == [(EventKind.UDP_END, aiomb.EndReason.TIMEOUT)]
    with pytest.raises(ValueError, match="TCP or UDP"):
        d.listen(EventKind.FIN, tcp=False)


def test_a_forgotten_inbox_receives_nothing_more():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    acc = d.listen(EventKind.NEW_DATA)
    frames = conversation()
    feed(engine, frames[:3])
    (inbox,) = d.accept(acc)
    d.forget(inbox)
    feed(engine, frames[3:])
    assert d.ready_inboxes() == [] and len(inbox) == 0


def test_the_inboxes_of_a_closed_acceptor_go_on_receiving_their_kinds():
    """close_acceptor() accepts no more flows; those it accepted still get their kinds, not only
    their ends, which are logged until the last of its inboxes has gone (ended or forgotten)."""
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    acc = d.listen(EventKind.NEW_DATA, filter=FlowFilter("tcp"))
    frames = sorted(conversation() + conversation(("10.0.0.3", 40001), start_ts=1.0005))
    feed(engine, frames[:6])                         # both handshakes
    kept, forgotten = d.accept(acc)
    d.close_acceptor(acc)
    d.forget(forgotten)
    feed(engine, frames[6:])
    assert d.ready_inboxes() == [kept]
    assert [(e.kind, e.value) for e in kept.take()[:2]] == [(EventKind.NEW_DATA, b"GET /"),
                                                            (EventKind.NEW_DATA, b"200")]
    assert kept.ended and len(forgotten) == 0
    feed(engine, conversation(("10.0.0.5", 40002), start_ts=5.0))
    assert len(engine.log) == 0                      # its inboxes have gone: nothing is logged for it
    assert d.ready_inboxes() == []


def test_flows_that_take_turns_in_one_table_entry_within_a_batch_keep_their_own_inboxes():
    engine = aiomb.Engine(max_flows=1)                # each new flow evicts the last from the one entry
    d = aiomb.Dispatcher(engine)
    acc = d.listen(EventKind.UDP_START, tcp=False, udp=True)
    for i in range(3):                                # logged, then routed at once by accept()
        engine.feed(udp_frame("10.0.0.5", "10.0.0.6", 5000 + i, 53, b"q"), 1.0 + i)
        engine.feed(udp_frame("10.0.0.6", "10.0.0.5", 53, 5000 + i, b"answer"), 1.5 + i)
    inboxes = d.accept(acc)
    assert [ib.key.client_port for ib in inboxes] == [5000, 5001, 5002]
    assert d.ready_inboxes() == inboxes
    got = [[(e.kind, e.key.client_port, e.reason) for e in ib.take()] for ib in inboxes]
    assert got[:2] == [[(EventKind.UDP_START, port, None), (EventKind.UDP_END, port, aiomb.EndReason.EVICTED)]
                       for port in (5000, 5001)]
    assert got[2] == [(EventKind.UDP_START, 5002, None)] and not inboxes[2].ended
    engine.finish()
    assert d.ready_inboxes() == [inboxes[2]]
    assert [(e.kind, e.reason) for e in inboxes[2].take()] == [(EventKind.UDP_END, aiomb.EndReason.END_OF_CAPTURE)]


# -- events are values ------------------------------------------------------------------


def test_events_carry_key_and_flow_id_never_a_live_flow():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.CONN_START | EventKind.CONN_END)
    feed(engine, conversation())
    start, end = d.drain(sub)
    assert not hasattr(start, "flow")
    assert start.flow_id == end.flow_id == 1 and start.key == end.key
    assert engine.flow(start.key, start.flow_id) is engine.flows()[0]     # lingering after the FIN close
    assert start.stats is None
    st = end.stats
    assert (st.end_reason, st.client.packets, st.server.packets) == (aiomb.EndReason.FIN, 5, 3)
    assert pickle.loads(pickle.dumps(end.key)) == end.key


def test_end_figures_are_those_when_the_flow_ended_not_later():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.CONN_END)
    frames = conversation()
    feed(engine, frames)
    last = frames[-1][1]
    engine.feed(last, 3.0)                           # a straggler after the close
    (end,) = d.drain(sub)
    assert end.stats.client.packets == 5
    assert engine.flows()[0].statistics().client.packets == 6


def test_new_data_carries_only_its_new_bytes_even_when_the_side_is_held():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    engine.add_handler(EventKind.ESTABLISHED, lambda pv: pv.flow.hold(CLIENT))
    c = TcpConversation()
    c.handshake()
    c.send("client", b"abc")
    c.send("client", b"defg")
    feed(engine, c.frames)
    events = d.drain(sub)
    assert [(e.offset, e.length, e.value) for e in events] == [(0, 3, b"abc"), (3, 4, b"defg")]
    assert engine.flows()[0].peek(CLIENT) == b"abcdefg"


def test_reading_a_value_twice_gives_the_same_bytes_and_events_compare_by_content():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    feed(engine, conversation())
    a, b = d.drain(sub)
    assert a.value == a.value == b"GET /" and b.value == b"200"
    copy = aiomb.Event(kind=a.kind, key=a.key, flow_id=a.flow_id, side=a.side, ts=a.ts,
                       offset=a.offset, length=a.length, value=b"GET /")
    assert copy == a and hash(copy) == hash(a)
    other = aiomb.Event(kind=a.kind, key=a.key, flow_id=2, side=a.side, ts=a.ts,
                        offset=a.offset, length=a.length, value=b"GET /")
    assert other != a
    with pytest.raises(ValueError, match="flow_id"):
        aiomb.Event(kind=a.kind, flow_id=0)


# -- misuse the core refuses --------------------------------------------------------------


def test_a_packet_view_kept_after_its_handler_raises_when_used():
    engine = aiomb.Engine()
    kept, during = [], []

    def handler(pv):
        kept.append(pv)
        during.append((pv.kind, pv.side, pv.payload_length))

    engine.add_handler(EventKind.CONN_START, handler)
    feed(engine, conversation())
    assert during == [(EventKind.CONN_START, CLIENT, 0)]
    for use in (lambda v: v.payload, lambda v: v.flow, lambda v: v.side, lambda v: v.value,
                lambda v: v.frame, lambda v: v.event, lambda v: v.seq):
        with pytest.raises(RuntimeError, match="kept after its handler returned"):
            use(kept[0])


def test_views_not_kept_are_reused_and_stay_valid_in_every_call():
    engine = aiomb.Engine()
    ports = []
    engine.add_handler(EventKind.PACKET_IN, lambda pv: ports.append(pv.sport))
    feed(engine, conversation())
    assert len(ports) == 8 and set(ports) == {40000, 80}


def test_handlers_cannot_reenter_the_engine():
    engine = aiomb.Engine()
    errors = []

    def handler(pv):
        for call in (lambda: engine.feed(b""), engine.finish, lambda: engine.expire(5.0), engine.close):
            with pytest.raises(RuntimeError, match="cannot be called from an inline handler"):
                call()
            errors.append(call)

    engine.add_handler(EventKind.CONN_START, handler)
    engine.feed(tcp_frame("10.0.0.1", "10.0.0.2", 1000, 80, flags="S"), 1.0)
    assert len(errors) == 4
    engine.finish()                                  # usable again afterwards


def test_malformed_counts_are_a_read_only_value():
    engine = aiomb.Engine()
    engine.feed(b"\x00" * 10, 1.0)
    st = engine.statistics()
    assert st.malformed == {"truncated_l2": 1} and st.malformed_total == 1
    with pytest.raises(TypeError):
        st.malformed["truncated_l2"] = 5
    with pytest.raises(AttributeError):
        st.malformed._counts = {}
    assert hash(st) == hash(engine.statistics())
    assert pickle.loads(pickle.dumps(st.malformed)) == st.malformed


def test_filter_errors_are_aiomb_errors():
    with pytest.raises(aiomb.AiombError):
        FlowFilter("tcp port")
    assert issubclass(aiomb.FilterError, ValueError)


@pytest.mark.parametrize("when", [EventKind.CONN_START, EventKind.SYN_ACK, EventKind.ESTABLISHED])
def test_a_side_held_before_its_sequence_numbers_are_known_starts_at_offset_0(when):
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA)
    engine.add_handler(when, lambda pv: (pv.flow.hold(CLIENT), pv.flow.hold(SERVER)))
    feed(engine, conversation())
    assert [(e.side, e.offset, e.length, e.value) for e in d.drain(sub)] == [
        (CLIENT, 0, 5, b"GET /"), (SERVER, 0, 3, b"200")]
    flow = engine.flows()[0]
    assert (flow.peek(CLIENT), flow.peek(SERVER)) == (b"GET /", b"200")
