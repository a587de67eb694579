"""The epoll shell sees what subscriptions see: on every capture of the corpus, the flows a monitor
socket accepts, their hang-ups with reasons and the bytes ``recv`` reads from each side equal the
CONN_START/UDP_START, CONN_END/UDP_END and NEW_DATA events of a plain subscription (a flow socket
ends with its flow: bytes that stragglers bring while the ended flow lingers are in the flow's
figures, not in its socket)."""

import select

import pytest

import aiomb
from aiomb import EventKind, Side
from aiomb._core import CaptureReader

from ..conftest import corpus_path
from .test_batch_invariance import captures


def by_subscription(path):
    engine = aiomb.Engine(midstream=True)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe([EventKind.CONN_START, EventKind.UDP_START, EventKind.CONN_END, EventKind.UDP_END,
                       EventKind.NEW_DATA])
    flows = {}

    def take():
        for ev in d.drain(sub):
            if ev.kind in (EventKind.CONN_START, EventKind.UDP_START):
                flows[ev.flow_id] = {"key": ev.key, "end": None, "bytes": [b"", b""]}
            elif ev.kind is EventKind.NEW_DATA:
                if flows[ev.flow_id]["end"] is None:
                    flows[ev.flow_id]["bytes"][ev.side] += ev.value
            else:
                flows[ev.flow_id]["end"] = ev.reason

    batch = aiomb.FrameBatch(256)
    with CaptureReader(path) as reader:
        while reader.fill(batch):
            engine.process(batch)
            take()
    engine.finish()
    take()
    return flows


def by_epoll(path, *, edge: bool):
    mon = aiomb.monitor(aiomb.capture(path), udp=True, midstream=True, batch_size=256)
    ep = aiomb.epoll()
    ep.register(mon, select.EPOLLIN)
    socks, flows = {}, {}
    trigger = select.EPOLLET if edge else 0
    while True:
        ready = ep.poll()
        if not ready:
            break
        for fd, mask in ready:
            if fd == mon.fileno():
                if mask & select.EPOLLHUP:
                    ep.unregister(mon)
                while True:
                    try:
                        sock = mon.accept()
                    except BlockingIOError:
                        break
                    socks[sock.fileno()] = sock
                    flows[sock.flow_id] = {"key": sock.key, "end": None, "bytes": [b"", b""]}
                    ep.register(sock, select.EPOLLIN | trigger)
                continue
            sock = socks[fd]
            rec = flows[sock.flow_id]
            if mask & select.EPOLLIN:
                for side in (Side.CLIENT, Side.SERVER):
                    while True:
                        try:
                            data = sock.recv(1000, side)
                        except (BlockingIOError, ValueError):
                            break
                        except aiomb.StreamGap:
                            continue
                        if not data:
                            break
                        rec["bytes"][side] += data
            if mask & select.EPOLLHUP:
                rec["end"] = sock.end_reason
                ep.unregister(sock)
                sock.close()
    ep.close()
    mon.close()
    return flows


@pytest.mark.parametrize("edge", [False, True], ids=["level", "edge"])
@pytest.mark.parametrize("pcap", captures())
def test_epoll_reports_what_subscriptions_report(pcap, edge):
    path = corpus_path() / pcap
    expected = by_subscription(path)
    got = by_epoll(path, edge=edge)
    assert got == expected
    assert all(rec["end"] is not None for rec in got.values())
