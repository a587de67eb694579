"""Silent misuse and silent bad input, made loud: the user's misuse raises an exception whose
message says what rule was broken and how to fix it; damaged input is a CaptureError at its offset."""

import io
import math
import re
import struct

import pytest

import aiomb
from aiomb import CaptureError, EventKind, FlowEnded, Side
from aiomb._core import CaptureReader
from aiomb.testing import LINKTYPE_ETHERNET, TcpConversation, udp_frame

CLIENT, SERVER = Side.CLIENT, Side.SERVER


def udp(i=0):
    return udp_frame("192.0.2.1", "198.51.100.1", 10000 + i, 53, b"q%d" % i)


# -- Engine: times and the closed state ---------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0, -1, 1e10, 2**63, 9223372037.0])
def test_feed_refuses_a_time_that_is_no_time(bad):
    engine = aiomb.Engine()
    with pytest.raises(ValueError, match=r"Engine\.feed\(\)'s ts must be a time in seconds from 0 to "
                                         r"9223372036 .*got " + re.escape(repr(bad))):
        engine.feed(udp(), bad)
    assert engine.statistics().packets == 0


@pytest.mark.parametrize("bad", ["1.5", None.__class__, True, b"1"])
def test_feed_refuses_a_time_that_is_not_a_number(bad):
    engine = aiomb.Engine()
    with pytest.raises(ValueError, match="must be a number of seconds"):
        engine.feed(udp(), bad)


def test_feed_takes_times_at_both_ends_of_the_range():
    engine = aiomb.Engine()
    engine.feed(udp(0), 0)
    engine.feed(udp(1), 9223372036.0)
    assert engine.statistics().packets == 2


def test_expire_and_process_refuse_bad_times():
    engine = aiomb.Engine()
    with pytest.raises(ValueError, match=r"Engine\.expire\(\)'s now .* got nan"):
        engine.expire(math.nan)
    with pytest.raises(ValueError, match=r"Engine\.process\(\)'s until .* got -5"):
        engine.process(aiomb.FrameBatch(4), 0, -5)


def test_a_closed_engine_refuses_more_input():
    engine = aiomb.Engine()
    engine.feed(udp(), 1.0)
    engine.close()
    engine.close()      # idempotent
    assert engine.closed
    for name, call in (("feed", lambda: engine.feed(udp(), 2.0)),
                       ("process", lambda: engine.process(aiomb.FrameBatch(4))),
                       ("expire", lambda: engine.expire(3.0)),
                       ("finish", lambda: engine.finish())):
        with pytest.raises(RuntimeError, match=rf"Engine\.{name}\(\) was called on a closed engine .*"
                                               "make a new Engine for more input"):
            call()


# -- pcapng: damaged blocks and times out of range -----------------------------------------------


def block(btype, body):
    body += bytes(-len(body) % 4)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


SHB = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(tsresol=None, tsoffset=None):
    opts = b""
    if tsresol is not None:
        opts += struct.pack("<HHB3x", 9, 1, tsresol)
    if tsoffset is not None:
        opts += struct.pack("<HHq", 14, 8, tsoffset)
    return block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 0) + opts + struct.pack("<HH", 0, 0))


def epb(ticks, frame, iface=0):
    return block(6, struct.pack("<IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)) + frame)


def read_all(data):
    """Every frame's time the reader gives, then the error it raises (or None)."""
    batch = aiomb.FrameBatch(64)
    times = []
    with CaptureReader(io.BytesIO(data)) as reader:
        try:
            while reader.fill(batch):
                times += [batch.ts_at(i) for i in range(batch.count)]
        except CaptureError as exc:
            return times, exc
    return times, None


def test_a_simple_packet_block_shorter_than_its_minimum_is_damage_at_its_offset():
    good = epb(1_000_000, udp(0))
    spb = struct.pack("<III", 3, 12, 12)            # 12 bytes: no room for its original length
    data = SHB + idb() + good + spb + epb(2_000_000, udp(1))
    times, err = read_all(data)
    assert times == [1.0]
    assert err.offset == len(SHB + idb() + good)
    assert "simple packet block too short: length 12, at least 16" in str(err)


def test_a_simple_packet_block_takes_the_time_of_the_packet_before_it():
    frame = udp(1)
    spb = block(3, struct.pack("<I", len(frame)) + frame)
    times, err = read_all(SHB + idb() + epb(7_000_000, udp(0)) + spb)
    assert err is None and times == [7.0, 7.0]
    times, err = read_all(SHB + idb() + spb)
    assert err is None and times == [0.0]


@pytest.mark.parametrize("tsoffset", [2**62, -(2**62), 9223372037])
def test_an_interface_time_offset_beyond_int64_nanoseconds_is_damage(tsoffset):
    interface = idb(tsoffset=tsoffset)
    times, err = read_all(SHB + interface + epb(1, udp(0)))
    assert times == []
    assert err.offset == len(SHB) + 16       # the option, inside the interface block
    assert f"interface time offset (if_tsoffset) of {tsoffset} s is beyond what int64 nanoseconds hold" in str(err)


@pytest.mark.parametrize("tsresol,tsoffset,ticks,when", [
    (0, None, 2**40, "past 2262"),                       # seconds: 2^40 s
    (0x80 | 1, None, 2**63, "past 2262"),                # half seconds
    (9, 9_000_000_000, 500_000_000 * 10**9, "past 2262"),  # the offset pushes it over
    (6, -100, 5_000_000, "before 1970"),                 # 5 s minus 100 s
])
def test_a_packet_time_out_of_range_is_damage_at_its_block(tsresol, tsoffset, ticks, when):
    head = SHB + idb(tsresol, tsoffset) + epb(0 if tsoffset is None or tsoffset > 0 else 100_000_000, udp(0))
    times, err = read_all(head + epb(ticks, udp(1)))
    assert len(times) == 1
    assert err.offset == len(head)
    assert f"packet time out of range: {ticks} ticks of interface 0" in str(err) and when in str(err)


def test_times_at_the_edges_of_the_range_are_kept():
    times, err = read_all(SHB + idb(6, -100) + epb(100_000_000, udp(0)) + idb(0) + epb(9223372036, udp(1), 1))
    assert err is None
    assert times == [0.0, 9223372036.0]


# -- Flow handles: what an ended flow still does -------------------------------------------------


def conversation(*, close=True):
    c = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80), start_ts=1.0)
    c.handshake()
    c.send("client", b"GET /")
    c.send("server", b"200")
    if close:
        c.rst("client")
    return c.frames


def run(frames, engine=None):
    engine = engine or aiomb.Engine(reassembly=True)
    for ts, frame in frames:
        engine.feed(frame, ts)
    return engine


CHANGES = [("hold", lambda f: f.hold(CLIENT)), ("set_buffering", lambda f: f.set_buffering(CLIENT, False)),
           ("set_policy", lambda f: f.set_policy("last"))]


@pytest.mark.parametrize("name,call", CHANGES)
def test_changing_how_an_ended_flow_keeps_bytes_raises_flow_ended(name, call):
    ends = []
    engine = aiomb.Engine(reassembly=True)
    engine.add_handler(EventKind.CONN_END, lambda view: ends.append(view.flow))
    run(conversation(), engine)
    flow = ends[0]
    assert flow.alive and flow.end_reason is aiomb.EndReason.RST       # ended, lingering in the table
    with pytest.raises(FlowEnded, match=rf"flow #\d+ .* has ended \(rst\): {name}\(\) acts on bytes still to come, "
                                        "and none will; check flow.end_reason first") as info:
        call(flow)
    assert info.value.key == flow.key and info.value.reason is aiomb.EndReason.RST
    engine.finish()
    assert not flow.alive
    with pytest.raises(FlowEnded, match=rf"{name}\(\) acts on bytes still to come"):
        call(flow)


def test_an_ended_flow_still_reads_and_releases_what_it_holds_until_it_leaves_the_table():
    ends = []
    engine = aiomb.Engine(reassembly=True)
    engine.add_handler(EventKind.ESTABLISHED, lambda view: view.flow.hold(SERVER))
    engine.add_handler(EventKind.CONN_END, lambda view: ends.append(view.flow))
    run(conversation(), engine)
    flow = ends[0]
    assert flow.peek(SERVER) == b"200" and flow.ppeek(SERVER, 1, 2) == b"00"
    assert flow.consume(SERVER, 1) == 1 and flow.peek(SERVER) == b"00"
    flow.stop()
    assert flow.peek(SERVER) == b""
    engine.finish()
    assert flow.peek(SERVER) == b"" and flow.buffer(SERVER)["held"] == 0     # reading stays valid
    for name, call in (("consume", lambda f: f.consume(SERVER, 1)), ("stop", lambda f: f.stop())):
        with pytest.raises(FlowEnded, match=rf"has left the flow table \(rst\): {name}\(\) has nothing to "
                                            "release, its bytes were freed with it; check flow.alive first"):
            call(flow)


def test_an_open_flow_takes_every_change():
    engine = run(conversation(close=False))
    flow = engine.flows()[0]
    flow.hold(CLIENT)
    flow.set_policy("last")
    flow.set_buffering(SERVER, False)
    flow.stop(CLIENT)
    assert flow.consume(CLIENT, 10) == 0


def test_every_use_of_a_packet_view_kept_past_its_handler_raises():
    kept = []
    engine = aiomb.Engine()
    engine.add_handler(EventKind.PACKET_IN, kept.append, hook=aiomb.Hook.SENDER)
    run(conversation(close=False), engine)
    view = kept[0]
    for use in (lambda v: v.kind, lambda v: v.ts, lambda v: v.verdict, lambda v: v.drop(), lambda v: v.hook,
                lambda v: v.rewrite(sport=1), lambda v: v.payload_length, lambda v: v.src, lambda v: v.ttl):
        with pytest.raises(RuntimeError, match="this PacketView was kept after its handler returned; a view is "
                                               "valid only during the call: copy what you need"):
            use(view)
