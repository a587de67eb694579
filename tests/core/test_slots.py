"""Sans-I/O: subscriptions, acceptors, middleboxes and filter bits are bounded by how many are in
use at once, not by how many were ever made; a slot given again never carries its previous owner's
events, and a previous owner's number is refused."""

import pytest

import aiomb
from aiomb import EventKind, FlowFilter, Hook
from aiomb.testing import TcpConversation, udp_frame, write_pcap

CYCLES = 3000


def conversation(port, start=1.0):
    c = TcpConversation(("10.0.0.1", port), ("10.0.0.2", 80), start_ts=start)
    c.handshake()
    c.send("client", b"hello")
    return c.frames


def feed(engine, frames):
    for ts, frame in frames:
        engine.feed(frame, ts)


def test_subscriptions_are_bounded_by_those_open():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    for i in range(CYCLES):
        d.unsubscribe(d.subscribe(EventKind.CONN_START, filter=FlowFilter(f"port {i % 500}") if i % 2 else None))
    subs = [d.subscribe(EventKind.CONN_START) for _ in range(256)]
    with pytest.raises(ValueError, match="at most 256 subscriptions open at once"):
        d.subscribe(EventKind.CONN_START)
    d.unsubscribe(subs[7])
    d.subscribe(EventKind.CONN_START)
    assert engine.statistics().flows_active == 0


def test_a_reused_subscription_slot_starts_empty_and_the_old_number_is_refused():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    old = d.subscribe(EventKind.CONN_START | EventKind.NEW_DATA)
    feed(engine, conversation(40000))              # logged for the old subscription, not yet routed
    d.unsubscribe(old)
    new = d.subscribe(EventKind.CONN_START | EventKind.NEW_DATA)
    assert new != old and new % 256 == old % 256    # the same slot, another number
    assert d.drain(new) == []
    for call in (d.drain, d.pending, d.unsubscribe):
        with pytest.raises(ValueError, match="no subscription"):
            call(old)
    feed(engine, conversation(40001, start=2.0))
    assert {e.key.client_port for e in d.drain(new)} == {40001}


def test_acceptors_are_bounded_by_those_open_and_a_reused_one_is_its_own():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    for i in range(CYCLES):
        d.close_acceptor(d.listen(EventKind.CONN_START, filter=FlowFilter(f"port {i % 500}") if i % 2 else None))
    old = d.listen(EventKind.CONN_START)
    feed(engine, conversation(40000)[:1])
    (inbox,) = d.accept(old)
    assert inbox.acceptor == old
    feed(engine, conversation(40001, start=2.0)[:1])  # started before the new acceptor: not its flow
    d.close_acceptor(old)
    new = d.listen(EventKind.CONN_START)
    assert new != old and new % 64 == old % 64
    assert d.accept(new) == []
    with pytest.raises(ValueError, match="no open acceptor"):
        d.accept(old)
    d.widen(new, EventKind.NEW_DATA)                 # the new owner's inboxes only
    feed(engine, conversation(40000)[1:])
    assert [e.kind for e in inbox.take()] == [EventKind.CONN_START]
    accs = [new] + [d.listen(EventKind.CONN_START) for _ in range(63)]
    with pytest.raises(ValueError, match="at most 64 acceptors open at once"):
        d.listen(EventKind.CONN_START)
    assert len(set(accs)) == 64


def test_middleboxes_are_bounded_by_those_in_the_chain_and_a_reused_index_goes_last():
    engine = aiomb.Engine()
    for _ in range(CYCLES):
        engine.remove_middlebox(engine.add_middlebox(FlowFilter("tcp")))
    boxes = [engine.add_middlebox() for _ in range(31)]
    with pytest.raises(ValueError, match="at most 32 middleboxes"):
        engine.add_middlebox()
    for mb in boxes:
        engine.remove_middlebox(mb)
    first, second = engine.add_middlebox(), engine.add_middlebox()
    engine.remove_middlebox(first)
    third = engine.add_middlebox()
    assert third == first
    seen = []
    for mb, name in ((second, "second"), (third, "third")):
        engine.add_handler(EventKind.PACKET_IN, lambda view, name=name: seen.append((name, view.side.name)),
                           middlebox=mb, hook=Hook.SENDER)
    feed(engine, conversation(40000)[:2])
    assert seen == [("second", "CLIENT"), ("third", "CLIENT"), ("third", "SERVER"), ("second", "SERVER")]


def test_a_middlebox_in_use_cannot_go():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    with pytest.raises(ValueError, match="default middlebox"):
        engine.remove_middlebox(0)
    with pytest.raises(ValueError, match="no middlebox 5"):
        engine.remove_middlebox(5)
    mb = engine.add_middlebox(FlowFilter("udp"))
    token = engine.add_handler(EventKind.UDP_START, lambda view: None, middlebox=mb)
    with pytest.raises(RuntimeError, match=f"middlebox {mb} still has inline handlers"):
        engine.remove_middlebox(mb)
    engine.remove_handler(token)
    sub = d.subscribe(EventKind.UDP_START, middlebox=mb)
    acc = d.listen(EventKind.UDP_START, middlebox=mb, udp=True)
    with pytest.raises(RuntimeError, match=f"middlebox {mb} still has subscriptions or acceptors"):
        engine.remove_middlebox(mb)
    d.unsubscribe(sub)
    with pytest.raises(RuntimeError, match="still has subscriptions or acceptors"):
        engine.remove_middlebox(mb)
    d.close_acceptor(acc)
    engine.remove_middlebox(mb)
    with pytest.raises(ValueError, match=f"no middlebox {mb}"):
        d.subscribe(EventKind.UDP_START, middlebox=mb)
    with pytest.raises(ValueError, match=f"no middlebox {mb}"):
        engine.add_handler(EventKind.UDP_START, lambda view: None, middlebox=mb)
    again = engine.add_middlebox(FlowFilter("tcp"))  # the index again, with its own filter
    sub = d.subscribe(EventKind.UDP_START | EventKind.CONN_START, middlebox=again)
    feed(engine, [(1.0, udp_frame("10.0.0.5", "10.0.0.6", 5000, 53, b"q"))] + conversation(40000, start=2.0))
    assert [e.kind for e in d.drain(sub)] == [EventKind.CONN_START]


def test_filter_bits_are_given_back_by_every_user():
    engine = aiomb.Engine()
    d = aiomb.Dispatcher(engine)
    for i in range(CYCLES):
        d.unsubscribe(d.subscribe(EventKind.CONN_END, filter=FlowFilter(f"port {i}")))
        d.close_acceptor(d.listen(EventKind.CONN_END, filter=FlowFilter(f"port {i}")))
    subs = [d.subscribe(EventKind.CONN_END, filter=FlowFilter(f"port {p}")) for p in range(32)]
    with pytest.raises(ValueError, match="at most 32 distinct subscription filters in use"):
        d.subscribe(EventKind.CONN_END, filter=FlowFilter("port 99"))
    assert len(subs) == 32


def test_monitors_opened_and_closed_give_their_middlebox_back(tmp_path):
    path = tmp_path / "c.pcap"
    write_pcap(path, conversation(40000))
    mon = aiomb.monitor(aiomb.capture(path), batch_size=1)
    for i in range(300):
        other = mon.monitor(f"port {i}", last_packets=True, sides="client")
        other.watch_errors()
        other.close()
    kept = mon.monitor("port 80")
    while mon.step():
        pass
    assert [s.key.client_port for s in (mon.accept(), kept.accept())] == [40000, 40000]
    mon.close()
    kept.close()


def test_a_dispatcher_that_has_gone_gives_its_filter_bits_back():
    engine = aiomb.Engine()
    engine.keep_records(FlowFilter("port 80"))
    for i in range(100):
        d = aiomb.Dispatcher(engine)
        d.subscribe(EventKind.CONN_END, filter=FlowFilter(f"port {i % 40}"))
        d.listen(EventKind.CONN_END, filter=FlowFilter(f"port {1000 + i}"))
        del d
    d = aiomb.Dispatcher(engine)
    subs = [d.subscribe(EventKind.CONN_END, filter=FlowFilter(f"port {p}")) for p in range(2000, 2031)]
    with pytest.raises(ValueError, match="at most 32 distinct subscription filters in use"):
        d.subscribe(EventKind.CONN_END, filter=FlowFilter("port 99"))
    feed(engine, conversation(40000))
    engine.finish()
    assert [r["server_port"] for r in engine.take_records()] == [80]      # the records' filter stayed
    assert len(subs) == 31
