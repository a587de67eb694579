"""Sans-I/O: the IP fragment table, bounded in datagrams, memory and time, reporting what it drops."""

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aiomb
from aiomb import EventKind
from aiomb._core import LIMIT_ERRORS, MALFORMED_REASONS
from aiomb.testing import ethernet_frame, ipv4_fragments, ipv6_fragments, udp_frame

from .events_helpers import run

ONE_DATAGRAM = 65536 + 2048         # the smallest max_fragment_memory: one datagram of the largest size


def datagram(i, size=2000, *, src="10.0.0.1", dst="10.0.0.2"):
    """A UDP datagram numbered ``i`` (its IPv4 identification, or IPv6 ports), as fragments."""
    if ":" in src:
        return ipv6_fragments(udp_frame(src, dst, 1000 + i % 60000, 53, bytes([i % 251]) * size),
                              fragment_size=1448, identification=i)
    return ipv4_fragments(udp_frame(src, dst, 1000, 53, bytes([i % 251]) * size, ip_id=i), fragment_size=1480)


def test_the_limit_errors_are_distinct_snake_case_names():
    assert len(set(LIMIT_ERRORS)) == len(LIMIT_ERRORS) == 2
    assert not set(LIMIT_ERRORS) & set(MALFORMED_REASONS)
    assert all(n == n.lower() and " " not in n for n in LIMIT_ERRORS)


def test_held_counts_the_fragments_of_incomplete_datagrams_now():
    engine = aiomb.Engine()
    a, b = datagram(1, 4000), datagram(2, 4000)
    assert len(a) == 3
    for frame in a[:2] + b[:1]:
        engine.feed(frame, 1.0)
    st = engine.statistics()
    assert (st.fragments_held, st.fragments_received, st.fragments_reassembled) == (3, 3, 0)
    engine.feed(a[2], 1.1)
    st = engine.statistics()
    assert (st.fragments_held, st.fragments_received, st.fragments_reassembled, st.udp_packets) == (1, 4, 1, 1)


def test_memory_is_what_the_buffers_take_and_is_given_back():
    engine = aiomb.Engine()
    first = datagram(1)[0]                       # 1480 bytes at offset 0: a 1536-byte buffer, 2 x 24 bytes of bitmaps
    engine.feed(first, 1.0)
    assert engine.statistics().fragment_memory == 1536 + 48
    engine.feed(datagram(1)[1], 1.0)             # 2008 bytes in all, length known: 2048 + 64
    st = engine.statistics()
    assert (st.fragment_memory, st.fragments_reassembled, st.max_fragment_memory) == (0, 1, 16 << 20)
    engine.feed(first, 2.0)
    engine.expire(100.0)
    assert engine.statistics().fragment_memory == 0


def test_the_last_fragment_first_sizes_the_buffer_once():
    engine = aiomb.Engine()
    frags = datagram(1, 20000)
    engine.feed(frags[-1], 1.0)
    assert engine.statistics().fragment_memory == 20480 + 640


def test_memory_limit_evicts_the_oldest_and_says_so():
    # each first fragment takes 1584 bytes: 42 fit in one datagram's worth of memory
    frames = [(1.0 + i / 1000, datagram(i)[0]) for i in range(50)]
    engine, events = run(frames, kinds=EventKind.ERROR, max_fragment_memory=ONE_DATAGRAM)
    st = engine.statistics()
    assert (st.fragments_evicted, st.fragments_held, st.fragment_memory) == (8, 42, 42 * 1584)
    assert events == [("ERROR", None, "fragment_evicted")] * 8
    engine.feed(datagram(0)[1], 2.0)             # the oldest went: its second half starts over
    engine.feed(datagram(49)[1], 2.0)            # the newest stayed: complete
    st = engine.statistics()
    assert (st.fragments_reassembled, st.udp_packets) == (1, 1)


def test_a_growing_datagram_makes_room_by_evicting_others():
    big = datagram(1, 60000)
    small = [datagram(i)[0] for i in range(2, 12)]
    engine, events = run([(1.0, f) for f in small + big], kinds=EventKind.ERROR, max_fragment_memory=ONE_DATAGRAM)
    st = engine.statistics()
    assert (st.fragments_reassembled, st.udp_packets, st.fragment_memory) == (1, 1, 0)
    assert st.fragments_evicted == len(events) > 0
    assert st.fragments_held == len(small) - st.fragments_evicted


def test_entries_limit_evicts_the_oldest_first():
    frames = [(1.0 + i, datagram(i)[0]) for i in range(3)]
    engine, events = run(frames + [(5.0, datagram(1)[1]), (5.0, datagram(0)[1])], kinds=EventKind.ERROR,
                         max_fragments=2)
    st = engine.statistics()
    assert events == [("ERROR", None, "fragment_evicted")]          # datagram 0, when 2 came
    assert (st.fragments_evicted, st.fragments_reassembled, st.fragments_held) == (1, 1, 2)     # 0's second half waits


def test_timeouts_raise_errors_when_expired_and_when_a_late_fragment_comes():
    frags = datagram(1)
    engine, events = run([(1.0, frags[0]), (2.0, datagram(2)[0]), (40.0, frags[1])], kinds=EventKind.ERROR,
                         fragment_timeout=30)
    assert events == [("ERROR", None, "fragment_timeout")] * 2
    st = engine.statistics()
    assert (st.fragments_expired, st.fragments_reassembled, st.fragments_held) == (2, 0, 1)
    engine2 = aiomb.Engine(fragment_timeout=5)
    disp = aiomb.Dispatcher(engine2)
    sub = disp.subscribe(EventKind.ERROR)
    engine2.feed(frags[0], 1.0)
    engine2.expire(6.0)
    assert disp.drain(sub) == []                 # exactly the timeout: still held
    engine2.expire(6.5)
    (ev,) = disp.drain(sub)
    assert (ev.value, ev.key, ev.ts) == ("fragment_timeout", None, 6.5)
    assert engine2.statistics().fragments_held == 0


def test_packet_time_stepping_back_does_not_revive_or_reorder():
    frags = datagram(1)
    engine, events = run([(10.0, frags[0]), (5.0, datagram(2)[0]), (41.0, datagram(3)[0])], kinds=EventKind.ERROR,
                         fragment_timeout=30)
    assert events == [("ERROR", None, "fragment_timeout")] * 2      # both were stamped 10.0
    assert engine.statistics().fragments_held == 1


@pytest.mark.parametrize("src, dst", [("10.0.0.1", "10.0.0.2"), ("2001:db8::1", "2001:db8::2")])
@pytest.mark.parametrize("last_first", [False, True])
def test_a_fragment_past_the_datagrams_end_drops_the_datagram(src, dst, last_first):
    """A fragment reaching past the end the last fragment gives: the datagram is dropped (as Linux
    does), never completed, and the units past its end never stand in for a hole in it."""
    def pieces(size):                  # a UDP datagram in 8-byte fragments, identification 7
        if ":" in src:
            return ipv6_fragments(udp_frame(src, dst, 1000, 53, bytes([size]) * size), fragment_size=8,
                                  identification=7)
        return ipv4_fragments(udp_frame(src, dst, 1000, 53, bytes([size]) * size, ip_id=7), fragment_size=8)
    short, long = pieces(24), pieces(56)         # 32 and 64 bytes: 4 and 8 fragments
    beyond = long[6]                             # bytes [48, 56), more to come
    hole = [short[0], short[1], short[3], beyond] if last_first else [short[0], short[1], beyond, short[3]]
    engine, _ = run([(1.0, f) for f in hole], kinds=EventKind.ERROR)
    st = engine.statistics()
    assert (st.fragments_reassembled, st.udp_packets, st.malformed) == (0, 0, {"bad_fragment": 1})
    for frame in short:
        engine.feed(frame, 2.0)
    st = engine.statistics()
    assert (st.fragments_reassembled, st.udp_packets, st.fragments_held) == (1, 1, 0)


def empty_last_fragment(src, dst, offset, identification=7):
    """A last fragment (no more to come) with no payload, at ``offset``."""
    if ":" in src:
        header = struct.pack("!IHBB16s16s", 0x60000000, 8, 44, 64, ipaddress.ip_address(src).packed,
                             ipaddress.ip_address(dst).packed)
        return ethernet_frame(header + struct.pack("!BBHI", 17, 0, offset, identification), ethertype=0x86DD)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, identification, offset // 8, 64, 17, 0,
                         ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return ethernet_frame(header, ethertype=0x0800)


@pytest.mark.parametrize("src, dst", [("10.0.0.1", "10.0.0.2"), ("2001:db8::1", "2001:db8::2")])
@pytest.mark.parametrize("offset", [8, 512, 4096])
def test_a_last_fragment_with_no_payload_drops_the_datagram(src, dst, offset):
    """Linux's ip_frag_queue (and the IPv6 one) drops the whole datagram when a fragment holds no
    byte (end == offset). Before, aiomb took it, and one at an offset that is a multiple of 512 with
    nothing else held wrote past the end of the datagram's bitmap (found by the fuzzers)."""
    engine, _ = run([(1.0, empty_last_fragment(src, dst, offset))])
    st = engine.statistics()
    assert (st.malformed, st.fragments_held, st.fragment_memory) == ({"bad_fragment": 1}, 0, 0)
    whole = udp_frame(src, dst, 1000, 53, bytes(offset), ip_id=7) if ":" not in src else \
        udp_frame(src, dst, 1000, 53, bytes(offset))      # its first fragment holds bytes [0, offset)
    first = (ipv6_fragments(whole, fragment_size=offset, identification=7) if ":" in src
             else ipv4_fragments(whole, fragment_size=offset))[0]
    engine, _ = run([(1.0, first), (1.1, empty_last_fragment(src, dst, offset))])
    st = engine.statistics()
    assert (st.fragments_reassembled, st.udp_packets, st.malformed, st.fragments_held) == \
        (0, 0, {"bad_fragment": 1}, 0)


def test_datagrams_differ_by_every_field_of_the_key():
    engine = aiomb.Engine()
    firsts = [datagram(1)[0], datagram(2)[0], datagram(1, src="10.0.0.3")[0], datagram(1, dst="10.0.0.4")[0],
              datagram(1, src="2001:db8::1", dst="2001:db8::2")[0]]
    seconds = [datagram(1)[1], datagram(2)[1], datagram(1, src="10.0.0.3")[1], datagram(1, dst="10.0.0.4")[1],
               datagram(1, src="2001:db8::1", dst="2001:db8::2")[1]]
    for f in firsts:
        engine.feed(f, 1.0)
    assert engine.statistics().fragments_held == 5
    for f in seconds:
        engine.feed(f, 1.0)
    st = engine.statistics()
    assert (st.fragments_reassembled, st.udp_packets, st.fragments_held, st.malformed_total) == (5, 5, 0, 0)
    assert len(engine.flows()) == 4              # the two IPv4 datagrams 1 and 2 are one flow


def test_many_interleaved_datagrams_all_reassemble():
    n = 5000
    engine = aiomb.Engine(max_fragments=65536, max_fragment_memory=1 << 30, max_flows=2 * n)
    all_frags = [datagram(i, 3000, src=f"10.{i // 250}.{i % 250}.1") for i in range(n)]
    for part in range(3):
        for frags in all_frags:
            engine.feed(frags[part], 1.0)
        assert engine.statistics().fragments_held == ((part + 1) * n if part < 2 else 0)
    st = engine.statistics()
    assert (st.fragments_reassembled, st.udp_packets, st.fragments_evicted, st.fragment_memory) == (n, n, 0, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5), st.integers(200, 9000)), min_size=1, max_size=120),
       st.integers(2, 12))
def test_memory_and_entries_never_exceed_their_limits(picks, max_fragments):
    """Random fragments of random datagrams: the table's memory and size stay within the limits
    after every frame, and every fragment is accounted for."""
    engine = aiomb.Engine(max_fragments=max_fragments, max_fragment_memory=ONE_DATAGRAM)
    for t, (ident, part, size) in enumerate(picks):
        frags = datagram(ident, size * (ident % 7 + 1))
        engine.feed(frags[part % len(frags)], 1.0 + t / 100)
        st = engine.statistics()
        assert st.fragment_memory <= ONE_DATAGRAM
        assert st.fragments_held <= st.fragments_received
    st = engine.statistics()
    assert st.udp_packets + st.fragments_received + st.fragment_duplicates - st.fragments_reassembled \
        + st.malformed_total == len(picks)
    engine.expire(1e6)
    st = engine.statistics()
    assert (st.fragments_held, st.fragment_memory) == (0, 0)


def test_max_fragment_memory_is_checked():
    for bad in (ONE_DATAGRAM - 1, 1 << 41, 2.5, True):
        with pytest.raises(ValueError, match="max_fragment_memory must be an int from 67584"):
            aiomb.Engine(max_fragment_memory=bad)
    assert aiomb.Engine(max_fragment_memory=ONE_DATAGRAM).statistics().max_fragment_memory == ONE_DATAGRAM
