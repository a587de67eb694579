"""Sans-I/O parsing: link types, VLAN, IP options, IPv6 extension headers, fragments, bad frames."""

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aiomb
from aiomb import EventKind, FrameBatch
from aiomb._core import CaptureReader
from aiomb.testing import (
    TcpConversation,
    ethernet_frame,
    icmp_frame,
    ipv4_fragments,
    ipv6_fragments,
    sll2_frame,
    sll_frame,
    tcp_frame,
    tcp_options,
    udp_frame,
    write_pcap,
)

from .events_helpers import run

SYN = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=1, flags="S")


def one_flow(engine):
    (flow,) = engine.flows()
    return flow


def test_link_types_reach_the_same_flow():
    ip = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=1, flags="S", ethernet=False)
    for frame, linktype in ((SYN, 1), (ip, 101), (ip, 12), (sll_frame(ip), 113), (sll2_frame(ip), 276),
                            (b"\x02\x00\x00\x00" + ip, 0)):
        engine, events = run([(1.0, frame)], linktype=linktype)
        assert events[0] == ("CONN_START", "CLIENT"), linktype
        assert one_flow(engine).key.server_port == 80


def test_unknown_linktype_is_counted_as_malformed():
    engine, events = run([(1.0, SYN)], linktype=9999)
    assert events == [("ERROR", None, "unknown_linktype")]
    assert engine.statistics().malformed == {"unknown_linktype": 1}


def test_ipv4_options_and_ethernet_padding():
    frame = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=1, flags="S", ip_options=b"\x94\x04\x00\x00")
    engine, _ = run([(1.0, frame + b"\x00" * 12)])
    st = one_flow(engine).statistics().client
    assert (st.ip_bytes, st.payload_bytes) == (len(frame) - 14, 0)


def tso(frame):
    """The frame with its IPv4 total length zeroed, as a capture on a sending host with TCP
    segmentation offload (or Linux's BIG TCP, past 64 KiB) shows it."""
    return frame[:16] + b"\x00\x00" + frame[18:]


def test_an_ipv4_total_length_of_zero_is_the_captured_length_unless_checksums_are_verified():
    """As Wireshark and Zeek (with checksums ignored, aiomb's default for the same reason) read it:
    the segment is the rest of the frame. A receiver drops it (checksums="verify")."""
    c = TcpConversation()
    c.handshake()
    c.send("client", b"x" * 3000)
    c.send("server", b"ok")
    frames = [(ts, tso(f) if i == 3 else f) for i, (ts, f) in enumerate(c.frames)]
    engine, events = run(frames, kinds=EventKind.NEW_DATA, reassembly=True)
    st = one_flow(engine).statistics().client
    assert (st.payload_bytes, st.ip_bytes, engine.statistics().malformed_total) == (3000, 40 + 40 + 3040, 0)
    assert [e[:2] for e in events] == [("NEW_DATA", "CLIENT"), ("NEW_DATA", "SERVER")]
    engine, _ = run(frames, checksums="verify")
    assert (one_flow(engine).statistics().client.payload_bytes, engine.statistics().malformed_total) == (0, 1)


@pytest.mark.parametrize("src, dst", [("10.0.0.1", "10.0.0.2"), ("2001:db8::1", "2001:db8::2")])
def test_a_udp_datagram_cut_by_the_snaplen_is_taken_whole_in_its_counts(tmp_path, src, dst):
    """A capture of headers only (``tcpdump -s 120``) cuts datagrams short: each is still its flow's,
    its payload counted by its UDP length (as Zeek counts it), what was captured of it the bytes a
    handler reads; a VXLAN datagram cut so still carries its packet. A UDP length past the IP
    payload's stays malformed."""
    vxlan = b"\x08\x00\x00\x00\x00\x00\x01\x00" + udp_frame("192.168.0.1", "192.168.0.2", 7000, 53, b"v" * 300)
    header = 14 + (20 if "." in src else 40) + 8
    lying = bytearray(udp_frame(src, dst, 5002, 53, b"x" * 100))
    lying[header - 4:header - 2] = (200).to_bytes(2, "big")     # a UDP length past the IP payload
    frames = [(1.0, udp_frame(src, dst, 5000, 53, b"q" * 100)), (1.1, udp_frame(dst, src, 53, 5000, b"a" * 200)),
              (1.2, udp_frame(src, dst, 5001, 4789, vxlan)), (1.3, bytes(lying))]
    path = tmp_path / "cut.pcap"
    write_pcap(path, frames, snaplen=120)
    engine = aiomb.Engine()
    seen = []
    engine.add_handler(EventKind.PACKET_IN, lambda p: seen.append((p.dport, len(p.payload))))
    batch = FrameBatch(16)
    with CaptureReader(path) as reader:
        while reader.fill(batch):
            engine.process(batch)
    assert seen == [(53, 120 - header), (5000, 120 - header), (4789, 120 - header), (53, 120 - header - 50)]
    got = [(f.key.proto.name, f.key.server_port, f.statistics()) for f in engine.flows()]
    assert [(proto, port, st.client.payload_bytes, st.server.payload_bytes) for proto, port, st in got] == [
        ("UDP", 53, 100, 200), ("UDP", 4789, len(vxlan), 0), ("UDP", 53, 300, 0)]
    assert dict(engine.statistics().malformed) == {"bad_udp_length": 1}


def test_non_ip_and_other_protocols_are_counted_not_tracked():
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    engine, events = run([(1.0, arp), (1.1, icmp_frame("10.0.0.1", "10.0.0.2")),
                          (1.2, icmp_frame("2001:db8::1", "2001:db8::2"))])
    st = engine.statistics()
    assert (st.non_ip, st.other_protocol, st.flows_created, events) == (1, 2, 0, [])


def pppoe(packet, protocol):
    return ethernet_frame(b"\x11\x00\x12\x34" + struct.pack("!HH", len(packet) + 2, protocol) + packet,
                          ethertype=0x8864)


def pppoe_compressed(packet, protocol):
    """A PPPoE session frame whose PPP protocol field is compressed to one byte (RFC 1661 §6.5:
    RFC 2516 says not to, some access concentrators do; tcpdump and Suricata read it)."""
    return ethernet_frame(b"\x11\x00\x12\x34" + struct.pack("!HB", len(packet) + 1, protocol) + packet,
                          ethertype=0x8864)


def mpls(packet, labels, *, ethertype=0x8847):
    stack = b"".join(struct.pack("!I", label << 12 | (i == len(labels) - 1) << 8 | 64)
                     for i, label in enumerate(labels))
    return ethernet_frame(stack + packet, ethertype=ethertype)


@pytest.mark.parametrize("src, dst, ppp", [("10.0.0.1", "10.0.0.2", 0x0021), ("2001:db8::1", "2001:db8::2", 0x0057)])
def test_pppoe_sessions_and_mpls_label_stacks_are_looked_through(src, dst, ppp):
    """As tcpdump, Zeek and Suricata do: PPPoE session frames (PPP's IPv4 or IPv6) and MPLS
    label stacks (any depth, behind VLAN tags too) carry IP packets, which are tracked; other
    PPP protocols and an MPLS payload that is not IP are not IP."""
    c = TcpConversation(client=(src, 40000), server=(dst, 80), ethernet=False)
    c.handshake()
    c.send("client", b"through the tunnel")
    wraps = [lambda p: pppoe(p, ppp), lambda p: mpls(p, [16]), lambda p: mpls(p, [16, 17, 18], ethertype=0x8848),
             lambda p: pppoe_compressed(p, ppp)]
    for wrap in wraps:
        engine, events = run([(ts, wrap(frame)) for ts, frame in c.frames])
        st = engine.statistics()
        assert (st.tcp_packets, st.flows_created, st.non_ip, st.malformed_total) == (4, 1, 0, 0)
        assert one_flow(engine).statistics().client.payload_bytes == 18
    tagged = ethernet_frame(struct.pack("!HH", 7, 0x8847) + mpls(c.frames[0][1], [16])[14:], ethertype=0x8100)
    engine, _ = run([(1.0, tagged)], vlan_in_key=True)
    assert (engine.statistics().tcp_packets, one_flow(engine).key.vlan) == (1, (7,))
    not_ip = [pppoe(b"\xc0\x21" + bytes(20), 0xc021), mpls(bytes(20), [16])]     # LCP; a pseudowire's zeroes
    engine, _ = run([(1.0, f) for f in not_ip])
    assert (engine.statistics().non_ip, engine.statistics().malformed_total) == (2, 0)
    engine, _ = run([(1.0, pppoe(b"", 0x0021)[:18]), (1.1, mpls(b"", [16, 17])[:18]), (1.2, pppoe(b"", 0x0021)[:20])])
    assert engine.statistics().malformed == {"truncated_l2": 3}


SNAP = b"\xaa\xaa\x03\x00\x00\x00"                       # LLC SNAP, then the ethertype
MAC = bytes(range(1, 7))


def wlan(ip, *, fc=(0x08, 0x01), qos=b"", four_addresses=False, ht=b""):
    """An 802.11 data frame (ToDS by default) carrying ``ip`` in LLC SNAP."""
    header = bytes(fc) + b"\x00\x00" + MAC * 3 + b"\x10\x00" + (MAC if four_addresses else b"")
    return header + qos + ht + SNAP + struct.pack("!H", 0x86dd if ip[0] >> 4 == 6 else 0x0800) + ip


def radiotap(frame):
    return struct.pack("<BBHI", 0, 0, 12, 0x00000002) + b"\x10\x00\x00\x00" + frame   # the flags field: FCS at the end


def nflog(ip, *, family=2, order="<", before=((1, b"\x08\x00\x01\x00"), (10, b"\x00" * 5))):
    """An NFLOG record: its header, then TLVs (``before``, each padded to 4 bytes) and the payload."""
    out = struct.pack("!BBH", family, 0, 42)
    for kind, value in ((*before, (9, ip))):
        out += struct.pack(order + "HH", len(value) + 4, kind) + value + bytes(-len(value) % 4)
    return out


def other_link_frames(ip, ethertype=0x0800):
    ppp_protocol = struct.pack("!H", 0x0021 if ethertype == 0x0800 else 0x0057)
    return [
        ("ppp", 9, b"\xff\x03" + ppp_protocol + ip),
        ("ppp without address and control", 9, ppp_protocol + ip),
        ("ppp, protocol compressed", 9, ppp_protocol[1:] + ip),
        ("ppp in hdlc framing", 50, b"\xff\x03" + ppp_protocol + ip),
        ("cisco hdlc in a ppp capture", 50, b"\x0f\x00" + struct.pack("!H", ethertype) + ip),
        ("cisco hdlc", 104, b"\x0f\x00" + struct.pack("!H", ethertype) + ip),
        ("cisco hdlc broadcast", 104, b"\x8f\x00" + struct.pack("!H", ethertype) + ip),
        ("fddi", 10, b"\x50" + MAC * 2 + SNAP + struct.pack("!H", ethertype) + ip),
        ("802.11 data", 105, wlan(ip)),
        ("802.11 qos data", 105, wlan(ip, fc=(0x88, 0x02), qos=b"\x06\x00")),
        ("802.11 four addresses, qos, ht control", 105,
         wlan(ip, fc=(0x88, 0x83), qos=b"\x00\x00", four_addresses=True, ht=b"\x00" * 4)),
        ("radiotap", 127, radiotap(wlan(ip, fc=(0x88, 0x01), qos=b"\x00\x00")) + b"\xde\xad\xbe\xef"),
        ("nflog", 239, nflog(ip, family=2 if ethertype == 0x0800 else 10)),
        ("nflog big-endian", 239, nflog(ip, family=2 if ethertype == 0x0800 else 10, order=">")),
        ("pflog", 117, bytes([61, 2 if ethertype == 0x0800 else 24]) + bytes(62) + ip),   # 61 bytes, padded to 64
        ("802.3 llc snap", 1, MAC * 2 + struct.pack("!H", len(ip) + 8) + SNAP + struct.pack("!H", ethertype) + ip),
        ("802.3 llc snap behind a vlan tag", 1,
         MAC * 2 + struct.pack("!HHH", 0x8100, 5, len(ip) + 8) + SNAP + struct.pack("!H", ethertype) + ip),
    ]


@pytest.mark.parametrize("src, dst, ethertype", [("10.0.0.1", "10.0.0.2", 0x0800),
                                                 ("2001:db8::1", "2001:db8::2", 0x86dd)])
def test_ppp_hdlc_fddi_wlan_nflog_pflog_and_llc_frames_are_looked_through(src, dst, ethertype):
    """As tcpdump, Zeek and Suricata read them: each link type's header, and the 802.2 LLC/SNAP
    header behind 802.3, FDDI and 802.11, lead to the same IP packets and the same flow."""
    c = TcpConversation(client=(src, 40000), server=(dst, 80), ethernet=False)
    c.handshake()
    c.send("client", b"over another link")
    for name, linktype, _ in other_link_frames(b"\x45"):
        frames = [(ts, dict((n, f) for n, _, f in other_link_frames(ip, ethertype))[name]) for ts, ip in c.frames]
        engine, events = run(frames, linktype=linktype)
        st = engine.statistics()
        assert (st.tcp_packets, st.flows_created, st.non_ip, st.malformed_total) == (4, 1, 0, 0), name
        flow = one_flow(engine)
        assert (flow.key.server_port, flow.statistics().client.payload_bytes) == (80, 17), name


def test_frames_of_those_link_types_that_carry_no_ip_are_counted_as_not_ip():
    ip = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=1, flags="S", ethernet=False)
    not_ip = [
        (9, b"\xff\x03\xc0\x21" + bytes(20)),                              # PPP LCP
        (104, b"\x8f\x00\x80\x35" + bytes(20)),                            # Cisco SLARP
        (1, MAC * 2 + b"\x00\x26\x42\x42\x03" + bytes(35)),                  # 802.3 spanning tree
        (10, b"\x50" + MAC * 2 + b"\x42\x42\x03" + bytes(20)),               # FDDI, no SNAP
        (105, b"\x80\x00" + bytes(22) + bytes(40)),                          # a beacon
        (105, wlan(ip, fc=(0x08, 0x41))),                                    # protected data
        (105, wlan(ip, fc=(0x48, 0x01))),                                    # null data
        (105, wlan(ip, fc=(0x08, 0x05))),                                    # an MSDU fragment
        (105, wlan(ip, fc=(0x88, 0x01), qos=b"\x80\x00")),                   # an A-MSDU
        (239, nflog(ip, family=7)),                                          # NFLOG of another family
        (117, bytes([61, 17]) + bytes(62) + ip),                             # pflog, another family
    ]
    for linktype, frame in not_ip:
        engine, events = run([(1.0, frame)], linktype=linktype)
        st = engine.statistics()
        assert (st.non_ip, st.malformed_total, events) == (1, 0, []), (linktype, frame[:8])


def test_those_link_headers_cut_short_are_malformed():
    ip = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=1, flags="S", ethernet=False)
    cut = [
        (9, b"\xff\x03\x00"),
        (104, b"\x0f\x00\x08"),
        (10, b"\x50" + MAC * 2 + SNAP),
        (105, wlan(ip)[:20]),
        (105, wlan(ip, fc=(0x88, 0x01), qos=b"\x00\x00")[:25]),
        (127, radiotap(wlan(ip))[:30]),
        (127, b"\x00\x00\xff\x00" + wlan(ip)),                              # a radiotap length past the frame
        (239, nflog(ip)[:10]),
        (239, struct.pack("!BBH", 2, 0, 0) + struct.pack("<HH", 2, 1) + ip),   # a TLV shorter than its header
        (239, struct.pack("!BBH", 2, 0, 0) + struct.pack("<HH", 4000, 9) + ip),  # one past the frame
        (117, b"\x40"),
        (117, bytes([61, 2]) + bytes(20)),
    ]
    for linktype, frame in cut:
        engine, _ = run([(1.0, frame)], linktype=linktype)
        assert engine.statistics().malformed == {"truncated_l2": 1}, (linktype, frame[:8])


def test_udp_flow_start_and_end_by_timeout():
    q = udp_frame("10.0.0.1", "10.0.0.53", 5353, 53, b"q")
    r = udp_frame("10.0.0.53", "10.0.0.1", 53, 5353, b"answer")
    engine, events = run([(1.0, q), (1.1, r)], udp_timeout=10)
    assert events == [("UDP_START", "CLIENT")]
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.UDP_END)
    engine.expire(11.0)
    assert d.drain(sub) == []
    engine.expire(11.1)
    (end,) = d.drain(sub)
    assert (end.kind, end.reason, end.side) == (EventKind.UDP_END, aiomb.EndReason.TIMEOUT, None)
    assert end.stats.client.payload_bytes == 1
    assert end.stats.server.payload_bytes == 6
    assert engine.flow(end.key) is None


def test_ipv4_fragments_reassemble_in_any_order():
    c = TcpConversation()
    c.handshake()
    data = c.send("client", bytes(range(256)) * 8, flags="PA")
    frags = ipv4_fragments(data, fragment_size=512)
    assert len(frags) > 3
    for order in (frags, frags[::-1], [frags[1], frags[0]] + frags[2:]):
        engine, _ = run(c.frames[:3] + [(2.0 + i / 10, f) for i, f in enumerate(order)])
        st = one_flow(engine).statistics().client
        assert (st.packets, st.payload_bytes) == (3, 2048)
        assert engine.statistics().fragments_reassembled == 1


def test_ipv6_fragments_in_vlan():
    c = TcpConversation(("2001:db8::1", 1234), ("2001:db8::2", 80))
    c.handshake()
    data = c.send("client", b"A" * 1000)
    frags = ipv6_fragments(data, fragment_size=400, vlan=(7,))
    engine, _ = run(c.frames[:3] + [(2.0, f) for f in frags])
    assert one_flow(engine).statistics().client.payload_bytes == 1000
    assert (engine.statistics().fragments_received, engine.statistics().fragments_held) == (len(frags), 0)


def test_incomplete_fragments_expire_and_are_bounded():
    c = TcpConversation()
    c.handshake()
    data = c.send("client", b"x" * 2000)
    first = ipv4_fragments(data, fragment_size=800)[0]
    engine, _ = run(c.frames[:3] + [(2.0, first)], fragment_timeout=5)
    assert one_flow(engine).statistics().client.payload_bytes == 0
    engine.expire(8.0)
    assert engine.statistics().fragments_expired == 1
    frames = []
    for i in range(10):
        d = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=1, flags="A", payload=b"y" * 100, ip_id=i)
        frames.append((1.0 + i, ipv4_fragments(d, fragment_size=64)[0]))
    engine, _ = run(frames, max_fragments=4)
    assert engine.statistics().fragments_evicted == 6


def test_a_duplicate_fragment_is_ignored():
    d = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=1, flags="S", payload=b"G" * 64)
    frags = ipv4_fragments(d, fragment_size=40)
    engine, _ = run([(1.0, frags[0]), (1.1, frags[0])] + [(1.2, f) for f in frags[1:]])
    st = engine.statistics()
    assert (st.fragment_overlaps, st.fragment_duplicates, st.fragments_received, st.fragments_reassembled) \
        == (0, 1, len(frags), 1)
    assert one_flow(engine).statistics().client.payload_bytes == 64


def truncations(frame):
    return [frame[:n] for n in range(len(frame))]


def test_every_truncation_of_a_tcp_frame_is_counted_never_tracked():
    frame = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=1, flags="S",
                      options=b"\x02\x04\x05\xb4\x01\x03\x03\x07")
    engine = aiomb.Engine()
    for cut in truncations(frame):
        engine.feed(cut, 1.0)
    st = engine.statistics()
    assert st.flows_created == 0
    assert st.malformed_total == len(frame)
    assert set(st.malformed) <= {"truncated_l2", "truncated_ip", "bad_ip_total_length", "truncated_tcp"}


def test_malformed_reasons():
    ip = bytearray(tcp_frame("10.0.0.1", "10.0.0.2", 1, 2, flags="S"))
    cases = {
        "bad_ip_version": lambda b: b.__setitem__(14, 0x55),
        "bad_ip_header_length": lambda b: b.__setitem__(14, 0x44),
        "bad_tcp_header_length": lambda b: b.__setitem__(14 + 20 + 12, 0x40),
        "bad_tcp_flags": lambda b: b.__setitem__(14 + 20 + 13, 0x07),
    }
    for reason, mutate in cases.items():
        frame = bytearray(ip)
        mutate(frame)
        engine, _ = run([(1.0, bytes(frame))])
        assert engine.statistics().malformed == {reason: 1}, reason
    bad_udp = bytearray(udp_frame("10.0.0.1", "10.0.0.2", 1, 2, b"abc"))
    bad_udp[14 + 20 + 5] = 200
    assert run([(1.0, bytes(bad_udp))])[0].statistics().malformed == {"bad_udp_length": 1}


def test_options_before_a_malformed_one_count_and_the_segment_is_taken():
    """Linux's tcp_parse_options stops at an option of length 0 or 1, one running past the header
    or a lone kind byte, keeping the options before it, and takes the segment; an option of the
    wrong size for its kind is skipped alone."""
    for bad in (b"\x22\x00", b"\x22\x01", b"\x02\x09", b"\x01\x01\x01\x02"):
        c = TcpConversation()
        c.syn(options=tcp_options(wscale=7) + bad)
        c.syn_ack(options=tcp_options(wscale=2))
        c.ack("client")
        engine, events = run(c.frames)
        assert ("ESTABLISHED", "CLIENT") in events, bad
        assert one_flow(engine).statistics().client.wscale == 7, bad
        st = engine.statistics()
        assert (st.malformed, st.bad_tcp_options, st.tcp_packets) == ({}, 1, 3), bad
    c = TcpConversation()
    c.syn(options=b"\x03\x04\x09\x00" + tcp_options(wscale=5))     # a 4-byte window scale, then a good one
    c.syn_ack(options=tcp_options(wscale=2))
    engine, _ = run(c.frames)
    assert one_flow(engine).statistics().client.wscale == 5
    assert engine.statistics().bad_tcp_options == 0


def test_error_events_name_the_reason():
    engine, events = run([(1.0, SYN[:20])], kinds=EventKind.ERROR)
    assert events == [("ERROR", None, "truncated_ip")]


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=120), st.sampled_from([1, 101, 113, 276, 0]))
def test_garbage_never_crashes_and_never_corrupts_a_tracked_flow(garbage, linktype):
    c = TcpConversation()
    c.handshake()
    engine = aiomb.Engine()
    for ts, f in c.frames:
        engine.feed(f, ts)
    before = one_flow(engine).statistics()
    engine.feed(garbage, 2.0, linktype=linktype)
    after = [f for f in engine.flows() if f.key.server_port == 80 and str(f.key.server_ip) == "10.0.0.2"]
    if after:
        assert after[0].statistics().client.state == before.client.state


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_bit_flips_in_real_frames_are_safe(seed, value):
    rnd = random.Random(seed)
    c = TcpConversation(("2001:db8::1", 1), ("2001:db8::2", 2))
    c.handshake()
    c.send("client", b"data" * 10)
    engine = aiomb.Engine(midstream=True)
    for ts, f in c.frames:
        b = bytearray(f)
        b[rnd.randrange(len(b))] = value
        engine.feed(bytes(b), ts)
    st = engine.statistics()
    assert st.packets == len(c.frames)
    assert st.tcp_packets + st.udp_packets + st.non_ip + st.other_protocol + st.malformed_total \
        + st.fragments_received + st.fragment_duplicates - st.fragments_reassembled == st.packets
    engine.finish()
    assert engine.statistics().flows_active == 0
