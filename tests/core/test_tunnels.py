"""Tunnel decapsulation: the inner flows of IP-in-IP, GRE (with ERSPAN, PPTP, MPLS and Ethernet
inside), VXLAN, Geneve, Teredo, GTP-U and AYIYA, as tshark, Zeek and Suricata see them.

An IP-protocol tunnel's frame belongs to its inner packet alone; a UDP tunnel's datagram is its
outer UDP flow's and, once more (``tunneled_packets``), its inner packet's. Each test crafts the
frames with the builders below and asserts exact events and counters."""

import io
import ipaddress
import json
import random
import struct
import subprocess
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import aiomb
from aiomb import PACKET_IN, EventKind, Hook, Verdict
from aiomb.testing import TcpConversation, ethernet_frame, internet_checksum, ipv4_fragments, ipv6_fragments, write_pcap

from .events_helpers import run
from .test_batch_invariance import run as run_in_batches
from .test_parse import mpls as mpls_frame
from .test_parse import pppoe, wlan

# -- builders ---------------------------------------------------------------------------------------


def ip(src, dst, proto, payload, *, ip_id=0, hop_by_hop=False):
    """A bare IPv4 (RFC 791, header checksum right) or IPv6 (RFC 8200) packet carrying ``payload``
    as protocol ``proto``; ``hop_by_hop`` puts an 8-byte hop-by-hop options header (PadN) first."""
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ip_id, 0, 64, proto, 0, a.packed, b.packed)
        return header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:] + payload
    if hop_by_hop:
        payload, proto = bytes([proto, 0, 1, 4, 0, 0, 0, 0]) + payload, 0
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, 64, a.packed, b.packed) + payload


def eth(packet, vlan=()):
    """``packet`` (IPv4 or IPv6 by its version nibble) in an Ethernet frame."""
    return ethernet_frame(packet, ethertype=0x0800 if packet[0] >> 4 == 4 else 0x86DD, vlan=vlan)


def udp(sport, dport, payload):
    """A UDP header (RFC 768) with the checksum 0 (none, allowed over IPv4) and ``payload``."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def gre(payload, ptype, *, c=False, key=None, seq=None, r=False, version=0):
    """A GRE header (RFC 2784: C, the checksum over header and payload; RFC 2890: K and S, the key
    and sequence number; RFC 1701: R, routing present, then a NULL SRE ends the routing list)."""
    word = c << 15 | r << 14 | (key is not None) << 13 | (seq is not None) << 12 | version
    header = struct.pack("!HH", word, ptype)
    if c or r:
        header += bytes(4)
    header += (b"" if key is None else struct.pack("!I", key)) + (b"" if seq is None else struct.pack("!I", seq))
    if r:
        header += bytes(4)
    if c:
        header = header[:4] + struct.pack("!H", internet_checksum(header + payload)) + header[6:]
    return header + payload


def pptp(ppp, *, seq=None, ack=None, call_id=7):
    """An enhanced GRE header of PPTP (RFC 2637 §4.1: version 1, K set, protocol 0x880B, the key
    field the payload length and call id; S and A add a sequence and an acknowledgement number)."""
    word = 0x2001 | (seq is not None) << 12 | (ack is not None) << 7
    return struct.pack("!HHHH", word, 0x880B, len(ppp), call_id) + \
        (b"" if seq is None else struct.pack("!I", seq)) + (b"" if ack is None else struct.pack("!I", ack)) + ppp


def ppp(packet, *, address=True, compressed=False):
    """A PPP frame (RFC 1661): the ff 03 address and control bytes or not (RFC 1662 §3.2's ACFC),
    the protocol IPv4 0x21 / IPv6 0x57 in two bytes or, compressed (PFC, RFC 1661 §6.5), one."""
    protocol = 0x21 if packet[0] >> 4 == 4 else 0x57
    return (b"\xff\x03" if address else b"") + (bytes([protocol]) if compressed else struct.pack("!H", protocol)) \
        + packet


def mpls(packet, labels):
    """An MPLS label stack (RFC 3032), bottom of stack set on the last label, then ``packet``."""
    return b"".join(struct.pack("!I", label << 12 | (i == len(labels) - 1) << 8 | 64)
                    for i, label in enumerate(labels)) + packet


def erspan2(frame):
    """An ERSPAN type II header (draft-foschiano-erspan §4.1: version 1, VLAN, session, index) and
    the mirrored Ethernet ``frame``."""
    return struct.pack("!HHI", 1 << 12 | 10, 0x0042, 0x00000123) + frame


def erspan3(frame, *, o=False):
    """An ERSPAN type III header (draft-foschiano-erspan §4.2: version 2, a timestamp, SGT, and the
    O bit, the lowest of its 12th byte, adding an 8-byte platform-specific subheader), then ``frame``."""
    header = struct.pack("!HHIHH", 2 << 12 | 10, 0x0042, 123456789, 0x0001, o)
    return header + (struct.pack("!II", 0x08000000, 1) if o else b"") + frame


def vxlan(frame, *, vni=42, flags=0x08):
    """A VXLAN header (RFC 7348 §5: the I flag 0x08, the 24-bit VNI) and the inner Ethernet frame."""
    return struct.pack("!B3xI", flags, vni << 8) + frame


def geneve(inner, ptype, *, options=b""):
    """A Geneve header (RFC 8926 §3.4: version 0, the options' length in 4-byte words, the protocol
    type, the VNI), its ``options`` (each: class, type, length in 4-byte words, data), then ``inner``."""
    return struct.pack("!BBHI", len(options) // 4, 0, ptype, 42 << 8) + options + inner


GENEVE_OPTIONS = struct.pack("!HBB", 0x0102, 0x80, 1) + b"abcd" + struct.pack("!HBB", 0x0103, 0x01, 2) + bytes(8)


def teredo(packet, *, origin=False, auth=False):
    """Teredo (RFC 4380 §5.1.1): an optional authentication indicator (00 01, id-len, au-len, the
    client id, the authentication value, an 8-byte nonce, a confirmation byte), an optional origin
    indication (00 00, the obfuscated port and IPv4 address), then the IPv6 ``packet``."""
    head = b""
    if auth:
        head += b"\x00\x01" + bytes([3, 4]) + b"cid" + b"auth" + bytes(range(8)) + b"\x00"
    if origin:
        head += b"\x00\x00" + struct.pack("!H", 0xFFFF ^ 40000) + bytes(b ^ 0xFF for b in bytes([192, 0, 2, 9]))
    return head + packet


def gtpu(packet, *, s=False, extensions=(), message=255):
    """A GTP-U header (3GPP TS 29.281 §5.1: version 1, PT 1, E/S/PN flags, the message type, the
    length past the first 8 bytes, the TEID); with S or E the sequence number, N-PDU number and the
    first extension type; each extension header (§5.2: ``(type, content)``, content 4n-2 bytes) a
    length byte in 4-byte units, its content and the next type (0: the last)."""
    flags = 0x30 | (bool(extensions) << 2) | (s << 1)
    optional = b""
    if s or extensions:
        optional = struct.pack("!HBB", 77, 0, extensions[0][0] if extensions else 0)
        for i, (_, content) in enumerate(extensions):
            following = extensions[i + 1][0] if i + 1 < len(extensions) else 0
            optional += bytes([(len(content) + 2) // 4]) + content + bytes([following])
    body = optional + packet
    return struct.pack("!BBHI", flags, message, len(body), 0x1234ABCD) + body


GTP_EXTENSIONS = [(0x85, b"\x00\x09"), (0x40, b"\x9c\x40")]  # PDU session container (QFI 9), UDP port 40000


def ayiya(packet, *, opcode=1):
    """An AYIYA header (draft-massar-v6ops-ayiya §5: id-len 4 -> a 16-byte identity, signature length
    5 -> 20 bytes, the authentication method and op code, the next header 4 or 41, the epoch time)."""
    next_header = 4 if packet[0] >> 4 == 4 else 41
    return struct.pack("!BBBBI", 0x41, 0x52, 0x20 | opcode, next_header, 1700000000) + bytes(range(16)) + \
        bytes(20) + packet


OUTER4, OUTER6 = ("192.0.2.1", "192.0.2.2"), ("2001:db8:ffff::1", "2001:db8:ffff::2")


def over_ip(proto, payload, forward, *, outer=OUTER4, **options):
    """An Ethernet frame of ``payload`` as protocol ``proto`` between the tunnel's two ends (from
    the first to the second one when ``forward``)."""
    a, b = outer if forward else outer[::-1]
    return eth(ip(a, b, proto, payload, **options))


def over_udp(ports, payload, forward, *, outer=OUTER4):
    """An Ethernet frame of a UDP datagram of ``payload`` between the tunnel's two ends, from
    ``ports[0]`` to ``ports[1]`` when ``forward``, back otherwise."""
    a, b = outer if forward else outer[::-1]
    return eth(ip(a, b, 17, udp(*(ports if forward else ports[::-1]), payload)))


# Each IP-protocol tunnel: (name, inner IP version, wrap(inner packet, forward) -> frame).
IP_TUNNELS = [
    ("ipip", 4, lambda p, f: over_ip(4, p, f)),
    ("6in4", 6, lambda p, f: over_ip(41, p, f)),
    ("4in6", 4, lambda p, f: over_ip(4, p, f, outer=OUTER6)),
    ("6in6 behind a hop-by-hop header", 6, lambda p, f: over_ip(41, p, f, outer=OUTER6, hop_by_hop=True)),
    ("gre ipv4", 4, lambda p, f: over_ip(47, gre(p, 0x0800), f)),
    ("gre ipv6", 6, lambda p, f: over_ip(47, gre(p, 0x86DD), f)),
    ("gre over ipv6", 4, lambda p, f: over_ip(47, gre(p, 0x0800), f, outer=OUTER6)),
    ("gre C", 4, lambda p, f: over_ip(47, gre(p, 0x0800, c=True), f)),
    ("gre K", 4, lambda p, f: over_ip(47, gre(p, 0x0800, key=0xDEADBEEF), f)),
    ("gre S", 6, lambda p, f: over_ip(47, gre(p, 0x86DD, seq=5), f)),
    ("gre K S", 4, lambda p, f: over_ip(47, gre(p, 0x0800, key=1, seq=2), f)),
    ("gre C K S", 4, lambda p, f: over_ip(47, gre(p, 0x0800, c=True, key=1, seq=2), f)),
    ("gre C S", 6, lambda p, f: over_ip(47, gre(p, 0x86DD, c=True, seq=9), f)),
    ("gre ethernet", 4, lambda p, f: over_ip(47, gre(eth(p), 0x6558, key=3), f)),
    ("gre ethernet with a vlan tag", 6, lambda p, f: over_ip(47, gre(eth(p, (100,)), 0x6558), f)),
    ("gre ethernet with qinq tags", 4, lambda p, f: over_ip(47, gre(eth(p, (100, 200)), 0x6558), f)),
    ("gre ethernet carrying pppoe", 4, lambda p, f: over_ip(47, gre(pppoe(p, 0x0021), 0x6558), f)),
    ("gre ethernet carrying mpls", 6, lambda p, f: over_ip(47, gre(mpls_frame(p, [16, 17]), 0x6558), f)),
    ("erspan I", 4, lambda p, f: over_ip(47, gre(eth(p), 0x88BE), f)),
    ("erspan II", 4, lambda p, f: over_ip(47, gre(erspan2(eth(p)), 0x88BE, seq=1), f)),
    ("erspan II of ipv6", 6, lambda p, f: over_ip(47, gre(erspan2(eth(p, (7,))), 0x88BE, seq=1), f)),
    ("erspan III", 4, lambda p, f: over_ip(47, gre(erspan3(eth(p)), 0x22EB, seq=1), f)),
    ("erspan III with its O flag", 6, lambda p, f: over_ip(47, gre(erspan3(eth(p), o=True), 0x22EB, seq=1), f)),
    ("gre mpls unicast", 4, lambda p, f: over_ip(47, gre(mpls(p, [16]), 0x8847), f)),
    ("gre mpls multicast, three labels", 6, lambda p, f: over_ip(47, gre(mpls(p, [16, 17, 18]), 0x8848), f)),
    ("gre ppp (version 0)", 4, lambda p, f: over_ip(47, gre(ppp(p), 0x880B, key=5), f)),
    ("gre ppp (version 0), compressed, ipv6", 6, lambda p, f: over_ip(47, gre(ppp(p, compressed=True), 0x880B), f)),
    ("aruba gre 0x8210: 802.11", 4, lambda p, f: over_ip(47, gre(wlan(p), 0x8210), f)),
    ("aruba gre 0x8370: 802.11 qos", 6,
     lambda p, f: over_ip(47, gre(wlan(p, fc=(0x88, 0x02), qos=b"\x06\x00"), 0x8370), f)),
    ("aruba gre 0x9000: 802.11", 4, lambda p, f: over_ip(47, gre(wlan(p), 0x9000), f)),
    ("pptp", 4, lambda p, f: over_ip(47, pptp(ppp(p), seq=3, ack=2), f)),
    ("pptp without ff 03", 4, lambda p, f: over_ip(47, pptp(ppp(p, address=False), seq=3), f)),
    ("pptp, protocol compressed", 4, lambda p, f: over_ip(47, pptp(ppp(p, compressed=True), seq=3, ack=9), f)),
    ("pptp, no ff 03, compressed, ipv6", 6,
     lambda p, f: over_ip(47, pptp(ppp(p, address=False, compressed=True), seq=3), f)),
]

# Each UDP tunnel: (name, inner IP version, the outer ports (forward), wrap(inner packet) -> UDP payload).
UDP_TUNNELS = [
    ("vxlan", 4, (4789, 4789), lambda p: vxlan(eth(p))),
    ("gre in udp", 4, (4754, 4754), lambda p: gre(p, 0x0800)),
    ("gre in udp, ethernet with a key", 6, (4754, 4754), lambda p: gre(eth(p), 0x6558, key=9)),
    ("vxlan of ipv6 behind a vlan tag", 6, (4789, 4789), lambda p: vxlan(eth(p, (5,)))),
    ("vxlan carrying pppoe", 6, (4789, 4789), lambda p: vxlan(pppoe(p, 0x0057))),
    ("geneve ethernet with options", 4, (6081, 6081), lambda p: geneve(eth(p), 0x6558, options=GENEVE_OPTIONS)),
    ("geneve ipv4", 4, (6081, 6081), lambda p: geneve(p, 0x0800)),
    ("geneve ipv6 with options", 6, (6081, 6081), lambda p: geneve(p, 0x86DD, options=GENEVE_OPTIONS)),
    ("teredo", 6, (40001, 3544), lambda p: teredo(p)),
    ("teredo with an origin indication", 6, (3544, 40001), lambda p: teredo(p, origin=True)),
    ("teredo with an authentication indicator", 6, (40001, 3544), lambda p: teredo(p, auth=True)),
    ("teredo with both", 6, (40001, 3544), lambda p: teredo(p, auth=True, origin=True)),
    ("teredo with bytes after its ipv6 packet", 6, (40001, 3544), lambda p: teredo(p + b"\x00\x00")),
    ("gtp-u", 4, (2152, 2152), lambda p: gtpu(p)),
    ("gtp-u with the S flag", 6, (40002, 2152), lambda p: gtpu(p, s=True)),
    ("gtp-u with extension headers", 4, (2152, 40002), lambda p: gtpu(p, extensions=GTP_EXTENSIONS)),
    ("ayiya ipv6", 6, (40003, 5072), lambda p: ayiya(p)),
    ("ayiya ipv4", 4, (5072, 40003), lambda p: ayiya(p)),
]

INNER = {4: (("10.0.0.1", 40000), ("10.0.0.2", 80)), 6: (("2001:db8::1", 40000), ("2001:db8::2", 80))}
REQUEST, RESPONSE = b"GET / HTTP/1.1\r\nHost: inner\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"


def conversation(version):
    """A handshake, a request, a response and its ACK: (ts, from the client?, bare inner IP packet)
    per frame, 4 from the client and 2 from the server."""
    client, server = INNER[version]
    c = TcpConversation(client, server, ethernet=False)
    c.handshake()
    c.send("client", REQUEST)
    c.send("server", RESPONSE)
    c.ack("client")
    forward = ipaddress.ip_address(client[0]).packed
    return [(ts, (p[12:16] if version == 4 else p[8:24]) == forward, p) for ts, p in c.frames]


def reference(version):
    """The bare conversation's engine and events: what the tunneled one must give."""
    return run([(ts, eth(p)) for ts, _, p in conversation(version)])


EXPECTED_EVENTS = [
    ("CONN_START", "CLIENT"),
    ("STATE_CHANGE", "CLIENT", "CLOSED", "SYN_SENT"),           # the SYN's
    ("SYN_ACK", "SERVER"),
    ("STATE_CHANGE", "SERVER", "LISTEN", "SYN_RECEIVED"),
    ("STATE_CHANGE", "CLIENT", "SYN_SENT", "ESTABLISHED"),
    ("STATE_CHANGE", "SERVER", "SYN_RECEIVED", "ESTABLISHED"),
    ("ESTABLISHED", "CLIENT"),                                  # all by the end of the handshake
]


def counts(engine):
    """(tcp, udp, non_ip, other_protocol, malformed, tunneled_packets, flows_created), after checking
    that every frame is accounted for."""
    st = engine.statistics()
    assert st.tcp_packets + st.udp_packets + st.non_ip + st.other_protocol + st.malformed_total \
        + st.fragments_received + st.fragment_duplicates - st.fragments_reassembled == st.packets + st.tunneled_packets
    return st.tcp_packets, st.udp_packets, st.non_ip, st.other_protocol, dict(st.malformed), st.tunneled_packets, \
        st.flows_created


def tcp_flow(engine):
    (flow,) = [f for f in engine.flows() if f.key.proto == 6]
    return flow


def udp_flow(engine):
    (flow,) = [f for f in engine.flows() if f.key.proto == 17]
    return flow


def sides(flow):
    st = flow.statistics()
    return (st.client.packets, st.client.ip_bytes, st.client.payload_bytes), \
        (st.server.packets, st.server.ip_bytes, st.server.payload_bytes)


def test_the_bare_conversation_gives_the_events_the_tunneled_ones_are_compared_with():
    for version in (4, 6):
        engine, events = reference(version)
        assert events == EXPECTED_EVENTS
        assert counts(engine) == (6, 0, 0, 0, {}, 0, 1)
        header = 20 if version == 4 else 40
        assert sides(tcp_flow(engine)) == ((4, 4 * (header + 20) + len(REQUEST), len(REQUEST)),
                                           (2, 2 * (header + 20) + len(RESPONSE), len(RESPONSE)))


# -- 1. IP-protocol tunnels ------------------------------------------------------------------------


@pytest.mark.parametrize("name, version, wrap", IP_TUNNELS, ids=[t[0] for t in IP_TUNNELS])
def test_an_ip_protocol_tunnel_gives_the_inner_flow_alone(name, version, wrap):
    frames = [(ts, wrap(p, forward)) for ts, forward, p in conversation(version)]
    bare, _ = reference(version)
    engine, events = run(frames)
    assert events == EXPECTED_EVENTS
    assert counts(engine) == (6, 0, 0, 0, {}, 0, 1)
    flow = tcp_flow(engine)
    assert flow.key == tcp_flow(bare).key
    assert sides(flow) == sides(tcp_flow(bare))            # the inner packets' lengths and payload
    _, data = run(frames, kinds=EventKind.NEW_DATA, reassembly=True)
    assert data == [("NEW_DATA", "CLIENT", REQUEST), ("NEW_DATA", "SERVER", RESPONSE)]


SYN4 = conversation(4)[0][2]
NOT_FOLLOWED = [
    ("gre R flag", over_ip(47, gre(SYN4, 0x0800, r=True), True), "other"),
    ("gre R and C flags", over_ip(47, gre(SYN4, 0x0800, r=True, c=True), True), "other"),
    ("gre version 2", over_ip(47, gre(SYN4, 0x0800, version=2), True), "other"),
    ("gre version 7", over_ip(47, gre(SYN4, 0x0800, version=7), True), "other"),
    ("pptp acknowledgement only", over_ip(47, pptp(b"", ack=12), True), "other"),
    ("gre unknown protocol type", over_ip(47, gre(SYN4, 0x88B5), True), "non_ip"),
    ("gre 0x8380, past aruba's types", over_ip(47, gre(wlan(SYN4), 0x8380), True), "non_ip"),
    ("aruba gre: a protected 802.11 frame", over_ip(47, gre(wlan(SYN4, fc=(0x08, 0x41)), 0x8200), True), "non_ip"),
    ("gre ethernet carrying arp", over_ip(47, gre(bytes(12) + b"\x08\x06" + bytes(28), 0x6558), True), "non_ip"),
    ("gre mpls not ip", over_ip(47, gre(mpls(bytes(20), [16]), 0x8847), True), "non_ip"),
    ("pptp lcp", over_ip(47, pptp(b"\xff\x03\xc0\x21" + bytes(8), seq=1), True), "non_ip"),
    ("pptp ccp without ff 03", over_ip(47, pptp(b"\x80\xfd" + bytes(8), seq=1), True), "non_ip"),
    ("ipip carrying icmp", over_ip(4, ip("10.0.0.1", "10.0.0.2", 1, bytes(8)), True), "other"),
]


@pytest.mark.parametrize("name, frame, kind", NOT_FOLLOWED, ids=[t[0] for t in NOT_FOLLOWED])
def test_what_an_ip_protocol_tunnel_does_not_lead_to_ip_counts_as_one_non_ip_or_other_protocol(name, frame, kind):
    engine, events = run([(1.0, frame)])
    assert events == []
    assert counts(engine) == (0, 0, kind == "non_ip", kind == "other", {}, 0, 0)


# -- 2. UDP tunnels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, version, ports, wrap", UDP_TUNNELS, ids=[t[0] for t in UDP_TUNNELS])
def test_a_udp_tunnel_gives_its_udp_flow_and_the_inner_flow(name, version, ports, wrap):
    conv = conversation(version)
    frames = [(ts, over_udp(ports, wrap(p), forward)) for ts, forward, p in conv]
    bare, _ = reference(version)
    engine, events = run(frames)
    assert events == [("UDP_START", "CLIENT"), *EXPECTED_EVENTS]
    assert counts(engine) == (6, 6, 0, 0, {}, 6, 2)
    flow = tcp_flow(engine)
    assert flow.key == tcp_flow(bare).key
    assert sides(flow) == sides(tcp_flow(bare))
    outer = udp_flow(engine)
    assert (outer.key.client_port, outer.key.server_port, str(outer.key.client_ip)) == (*ports, OUTER4[0])
    sizes = [len(wrap(p)) for _, _, p in conv]
    forward = [f for _, f, _ in conv]
    assert sides(outer) == ((4, sum(20 + 8 + n for n, f in zip(sizes, forward) if f),
                             sum(n for n, f in zip(sizes, forward) if f)),
                            (2, sum(20 + 8 + n for n, f in zip(sizes, forward) if not f),
                             sum(n for n, f in zip(sizes, forward) if not f)))
    _, data = run(frames, kinds=EventKind.NEW_DATA, reassembly=True)
    assert data == [("NEW_DATA", "CLIENT", REQUEST), ("NEW_DATA", "SERVER", RESPONSE)]


SYN6 = conversation(6)[0][2]
BUBBLE = ip("2001:0:c000:201::1", "2001:0:c000:202::2", 59, b"")
ONLY_UDP = [
    ("vxlan without its I flag", (4789, 4789), vxlan(eth(SYN4), flags=0x00)),
    ("vxlan to another port", (4789, 4790), vxlan(eth(SYN4))),
    ("gre in udp from port 4754", (4754, 40001), gre(SYN4, 0x0800)),
    ("gre in udp of version 1", (40001, 4754), gre(SYN4, 0x0800, version=1)),
    ("geneve version 1", (6081, 6081), b"\x40" + geneve(SYN4, 0x0800)[1:]),
    ("teredo cut inside its ipv6 payload", (40001, 3544), teredo(SYN6[:-1])),
    ("teredo of ipv4", (40001, 3544), teredo(SYN4)),
    ("teredo with an unknown indicator", (40001, 3544), b"\x00\x02" + bytes(6) + SYN6),
    ("gtp-u echo request carrying what looks like ip", (2152, 2152), gtpu(SYN4, s=True, message=1)),
    ("gtp-u version 2", (2152, 2152), b"\x48" + gtpu(SYN4)[1:]),
    ("gtp' (PT 0)", (2152, 2152), b"\x20" + gtpu(SYN4)[1:]),
    ("ayiya echo request", (40003, 5072), ayiya(SYN6, opcode=2)),
    ("ayiya forward of next header 17", (40003, 5072), ayiya(SYN6)[:3] + b"\x11" + ayiya(SYN6)[4:]),
]


@pytest.mark.parametrize("name, ports, payload", ONLY_UDP, ids=[t[0] for t in ONLY_UDP])
def test_a_datagram_that_is_not_one_of_the_tunnels_is_only_udp(name, ports, payload):
    engine, events = run([(1.0, over_udp(ports, payload, True))])
    assert events == [("UDP_START", "CLIENT")]
    assert counts(engine) == (0, 1, 0, 0, {}, 0, 1)
    assert udp_flow(engine).statistics().client.payload_bytes == len(payload)


UDP_NOT_IP = [
    ("vxlan of arp", (4789, 4789), vxlan(bytes(12) + b"\x08\x06" + bytes(28)), "non_ip"),
    ("geneve unknown protocol", (6081, 6081), geneve(SYN4, 0x88B5, options=GENEVE_OPTIONS), "non_ip"),
    ("teredo bubble", (40001, 3544), teredo(BUBBLE, origin=True), "other"),
]


@pytest.mark.parametrize("name, ports, payload, kind", UDP_NOT_IP, ids=[t[0] for t in UDP_NOT_IP])
def test_a_udp_tunnels_inner_packet_that_is_not_tracked_counts_once_more(name, ports, payload, kind):
    engine, events = run([(1.0, over_udp(ports, payload, True))])
    assert events == [("UDP_START", "CLIENT")]
    assert counts(engine) == (0, 1, kind == "non_ip", kind == "other", {}, 1, 1)


# -- 3. cut short -----------------------------------------------------------------------------------


CUT = [
    ("gre of 2 bytes", over_ip(47, b"\x00\x00", True), False),
    ("gre K flag, key cut", over_ip(47, gre(b"", 0x0800, key=1)[:6], True), False),
    ("erspan II of 4 bytes", over_ip(47, gre(erspan2(b"")[:4], 0x88BE, seq=1), True), False),
    ("erspan III with its O flag, subheader cut", over_ip(47, gre(erspan3(b"", o=True)[:16], 0x22EB, seq=1), True),
     False),
    ("pptp, acknowledgement number cut", over_ip(47, pptp(b"", seq=1, ack=1)[:14], True), False),
    ("vxlan of 4 bytes", over_udp((4789, 4789), vxlan(b"")[:4], True), True),
    ("geneve options past the datagram", over_udp((6081, 6081), geneve(b"", 0x0800, options=GENEVE_OPTIONS)[:16],
                                                   True), True),
    ("gtp-u extension header cut", over_udp((2152, 2152), gtpu(b"", extensions=GTP_EXTENSIONS)[:14], True), True),
]


@pytest.mark.parametrize("name, frame, over_udp_", CUT, ids=[t[0] for t in CUT])
def test_a_tunnel_header_cut_short_is_malformed(name, frame, over_udp_):
    engine, events = run([(1.0, frame)])
    assert counts(engine) == (0, over_udp_, 0, 0, {"truncated_tunnel": 1}, over_udp_, over_udp_)
    assert events == ([("UDP_START", "CLIENT"), ("ERROR", None, "truncated_tunnel")] if over_udp_
                      else [("ERROR", None, "truncated_tunnel")])
    if over_udp_:
        assert udp_flow(engine).statistics().client.packets == 1


SWEPT = [
    ("gre C K S", gre(SYN4, 0x0800, c=True, key=1, seq=2), 16),
    ("erspan II", gre(erspan2(eth(SYN4)), 0x88BE, seq=1), 16),
    ("erspan III with its O flag", gre(erspan3(eth(SYN4), o=True), 0x22EB, seq=1), 28),
    ("pptp S A", pptp(ppp(SYN4), seq=1, ack=1), 16),
]


@pytest.mark.parametrize("name, payload, header", SWEPT, ids=[t[0] for t in SWEPT])
def test_every_cut_of_a_gre_header_is_a_truncated_tunnel_and_every_cut_past_it_is_malformed(name, payload, header):
    for n in range(len(payload)):
        engine, _ = run([(1.0, over_ip(47, payload[:n], True))])
        st = engine.statistics()
        if n < header:
            assert counts(engine) == (0, 0, 0, 0, {"truncated_tunnel": 1}, 0, 0), n
        elif name.startswith("pptp") and n < header + 4:
            assert (st.tcp_packets, st.flows_created, st.packets) == (0, 0, 1), n     # no IP packet, or PPP cut
        else:
            assert (st.malformed_total, st.flows_created, st.tunneled_packets) == (1, 0, 0), n
            assert "truncated_tunnel" not in st.malformed, n


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255), st.integers(min_value=0, max_value=3))
@example(seed=2762, value=1, kind=2)    # the first and last frames the same fragment: the second a duplicate
def test_bit_flips_in_tunneled_frames_are_safe_and_every_frame_is_accounted_for(seed, value, kind):
    """As test_parse's bit flips, through each kind of tunnel: whatever byte a flip hits, in the
    outer headers, the tunnel's or the inner packet's, every frame is counted (once more as an inner
    packet when a UDP tunnel's) and the engine ends clean."""
    wrap = [lambda p, f: over_ip(47, gre(eth(p), 0x6558, key=1, seq=2), f),
            lambda p, f: over_ip(47, pptp(ppp(p), seq=1, ack=1), f),
            lambda p, f: over_udp((2152, 2152), gtpu(p, extensions=GTP_EXTENSIONS), f),
            lambda p, f: over_udp((6081, 6081), geneve(eth(p), 0x6558, options=GENEVE_OPTIONS), f)][kind]
    rnd = random.Random(seed)
    engine = aiomb.Engine(midstream=True)
    frames = [(ts, wrap(p, f)) for ts, f, p in conversation(4)]
    for ts, frame in frames:
        b = bytearray(frame)
        b[rnd.randrange(len(b))] = value
        engine.feed(bytes(b), ts)
    counts(engine)
    assert engine.statistics().packets == len(frames)
    engine.finish()
    assert engine.statistics().flows_active == 0


# -- 4. fragments -----------------------------------------------------------------------------------


def data_segment(version, payload=bytes(range(256)) * 6):
    """The handshake of a conversation and one big client segment (bare IP packets)."""
    client, server = INNER[version]
    c = TcpConversation(client, server, ethernet=False)
    c.handshake()
    return [p for _, p in c.frames], c.send("client", payload), payload


@pytest.mark.parametrize("version, wrap", [(4, lambda p: over_ip(47, gre(p, 0x0800, key=1), True)),
                                           (6, lambda p: over_ip(41, p, True)),
                                           (6, lambda p: over_udp((4789, 4789), vxlan(eth(p)), True))],
                         ids=["ipv4 in gre", "ipv6 in 6in4", "ipv6 in vxlan"])
def test_inner_fragments_are_reassembled(version, wrap):
    handshake, segment, payload = data_segment(version)
    split = ipv4_fragments if version == 4 else ipv6_fragments
    fragments = split(segment, fragment_size=400, ethernet=False)
    assert len(fragments) == 4
    frames = [(1.0 + i / 100, wrap(p)) for i, p in enumerate(handshake + fragments[::-1])]
    engine, data = run(frames, kinds=EventKind.NEW_DATA, reassembly=True)
    assert data == [("NEW_DATA", "CLIENT", payload)]
    st = engine.statistics()
    assert (st.fragments_received, st.fragments_reassembled) == (4, 1)
    udp_tunnel = frames[0][1][23] == 17
    assert counts(engine) == (4, 7 * udp_tunnel, 0, 0, {}, 7 * udp_tunnel, 1 + udp_tunnel)
    assert tcp_flow(engine).statistics().client.payload_bytes == len(payload)


@pytest.mark.parametrize("outer", [OUTER4, OUTER6], ids=["gre over ipv4", "gre over ipv6"])
def test_outer_fragments_of_a_gre_packet_are_reassembled_then_decapsulated(outer):
    handshake, segment, payload = data_segment(4)
    split = ipv4_fragments if outer == OUTER4 else ipv6_fragments
    fragments = split(over_ip(47, gre(segment, 0x0800), True, outer=outer), fragment_size=512)
    assert len(fragments) == 4
    frames = [(1.0, over_ip(47, gre(p, 0x0800), True, outer=outer)) for p in handshake] + \
        [(1.1, f) for f in fragments[::-1]]
    engine, data = run(frames, kinds=EventKind.NEW_DATA, reassembly=True)
    assert data == [("NEW_DATA", "CLIENT", payload)]
    st = engine.statistics()
    assert (st.fragments_received, st.fragments_reassembled) == (4, 1)
    assert counts(engine) == (4, 0, 0, 0, {}, 0, 1)


def test_an_inner_fragment_inside_a_reassembled_outer_datagram_is_not_followed():
    _, segment, _ = data_segment(4)
    first = ipv4_fragments(segment, fragment_size=800, ethernet=False)[0]
    outer = ipv4_fragments(over_ip(4, first, True, ip_id=7), fragment_size=400)
    assert len(outer) == 3
    engine, events = run([(1.0, f) for f in outer])
    assert events == []
    st = engine.statistics()
    assert (st.fragments_received, st.fragments_reassembled, st.fragments_held) == (3, 1, 0)
    assert counts(engine) == (0, 0, 0, 1, {}, 0, 0)


# -- 5. nesting -------------------------------------------------------------------------------------


def test_gre_inside_vxlan_inside_ipv4_reaches_the_innermost_flow():
    conv = conversation(4)
    frames = [(ts, over_udp((4789, 4789), vxlan(over_ip(47, gre(p, 0x0800), f, outer=OUTER6)), f))
              for ts, f, p in conv]
    engine, events = run(frames)
    assert events == [("UDP_START", "CLIENT"), *EXPECTED_EVENTS]
    assert counts(engine) == (6, 6, 0, 0, {}, 6, 2)
    assert sides(tcp_flow(engine)) == sides(tcp_flow(reference(4)[0]))
    _, data = run(frames, kinds=EventKind.NEW_DATA, reassembly=True)
    assert data == [("NEW_DATA", "CLIENT", REQUEST), ("NEW_DATA", "SERVER", RESPONSE)]


def test_a_packet_tells_how_many_tunnels_it_was_found_in():
    """PacketView.tunnels: 0 for the VXLAN datagram, 2 for the TCP segment in GRE inside it (one
    for VXLAN, one for GRE), 1 for a segment in IP-in-IP, 0 for a bare one; its fields (addresses,
    time to live) are the innermost packet's."""
    syn = conversation(4)[0][2]
    frames = [over_udp((4789, 4789), vxlan(over_ip(47, gre(syn, 0x0800), True, outer=OUTER6)), True),
              over_ip(4, syn, True), eth(syn)]
    engine = aiomb.Engine()
    seen = []
    engine.add_handler(EventKind.PACKET_IN, lambda p: seen.append((p.tunnels, str(p.src), p.sport, p.ttl)))
    for i, frame in enumerate(frames):
        engine.feed(frame, 1.0 + i)
    inner = ("10.0.0.1", 40000, syn[8])
    assert seen == [(0, OUTER4[0], 4789, 64), (2, *inner), (1, *inner), (0, *inner)]


def nested(packet, depth):
    """``packet`` in ``depth`` IPv4-in-IPv4 encapsulations (RFC 2003), in an Ethernet frame."""
    for i in range(depth):
        packet = ip(f"198.51.100.{i + 1}", f"203.0.113.{i + 1}", 4, packet)
    return eth(packet)


def test_eight_encapsulations_are_followed_and_a_ninth_is_not():
    conv = conversation(4)
    engine, events = run([(ts, nested(p, 8)) for ts, _, p in conv])
    assert events == EXPECTED_EVENTS
    assert counts(engine) == (6, 0, 0, 0, {}, 0, 1)
    assert sides(tcp_flow(engine)) == sides(tcp_flow(reference(4)[0]))
    engine, events = run([(ts, nested(p, 9)) for ts, _, p in conv])
    assert events == []
    assert counts(engine) == (0, 0, 0, 6, {}, 0, 0)


def test_eight_tunnels_of_mixed_kinds_are_followed_and_a_ninth_is_not():
    """GRE, VXLAN and IP-in-IP in turn: the limit counts every encapsulation, UDP ones too."""
    def layers(packet, depth):
        for i in range(depth):
            a, b = f"198.51.100.{i + 1}", f"203.0.113.{i + 1}"
            if i % 3 == 0:
                packet = ip(a, b, 47, gre(packet, 0x0800))
            elif i % 3 == 1:
                packet = ip(a, b, 17, udp(4789, 4789, vxlan(eth(packet))))
            else:
                packet = ip(a, b, 4, packet)
        return eth(packet)
    syn = conversation(4)[0][2]
    engine, events = run([(1.0, layers(syn, 8))])
    assert events == [("UDP_START", "CLIENT")] * 3 + EXPECTED_EVENTS[:2]
    assert counts(engine) == (1, 3, 0, 0, {}, 3, 4)
    engine, events = run([(1.0, layers(syn, 9))])
    assert events == [("UDP_START", "CLIENT")] * 3
    assert counts(engine) == (0, 3, 0, 1, {}, 3, 3)


# -- 6. flows, verdicts, rewriting ------------------------------------------------------------------


def test_the_same_inner_tuple_through_two_tunnels_is_one_flow():
    conv = conversation(4)
    one = lambda p, f: over_ip(47, gre(p, 0x0800, key=1), f)                           # noqa: E731
    other = lambda p, f: over_ip(47, gre(p, 0x0800, key=2), f, outer=("198.51.100.1", "198.51.100.2"))  # noqa: E731
    frames = [(ts, (one if i % 2 else other)(p, f)) for i, (ts, f, p) in enumerate(conv)]
    engine, events = run(frames)
    assert events == EXPECTED_EVENTS
    assert counts(engine) == (6, 0, 0, 0, {}, 0, 1)
    frames = [(ts, (one(p, f) if i < 3 else over_udp((4789, 4789), vxlan(eth(p)), f)))
              for i, (ts, f, p) in enumerate(conv)]
    engine, events = run(frames)
    assert events == EXPECTED_EVENTS + [("UDP_START", "CLIENT")]           # the handshake's events, thenthe datagram's
    assert counts(engine) == (6, 3, 0, 0, {}, 3, 2)
    assert sides(tcp_flow(engine)) == sides(tcp_flow(reference(4)[0]))


@pytest.mark.parametrize("wrap, udp_tunnel", [(lambda p, f: over_ip(47, gre(p, 0x0800), f), False),
                                              (lambda p, f: over_udp((4789, 4789), vxlan(eth(p)), f), True)],
                         ids=["gre", "vxlan"])
def test_an_inline_handlers_drop_of_the_inner_packet_drops_the_frame(wrap, udp_tunnel):
    def dropping(wrap):
        engine = aiomb.Engine()
        seen = []

        def handler(packet):
            seen.append((packet.flow.key.proto, packet.payload))
            if packet.payload == REQUEST:
                packet.drop()
        engine.add_handler(PACKET_IN, handler, hook=Hook.SENDER)
        verdicts = [engine.feed(bytearray(wrap(p, f)), ts) for ts, f, p in conversation(4)]
        return verdicts, engine.statistics().dropped_by_verdict, seen
    verdicts, dropped, seen = dropping(wrap)
    assert (verdicts, dropped) == dropping(lambda p, f: eth(p))[:2] \
        == ([Verdict.FORWARD] * 3 + [Verdict.DROP] + [Verdict.FORWARD] * 2, 1)
    assert [s for s in seen if s[0] == 6] == [(6, b""), (6, b""), (6, b""), (6, REQUEST), (6, RESPONSE), (6, b"")]
    assert len([s for s in seen if s[0] == 17]) == 6 * udp_tunnel


@pytest.mark.parametrize("wrap", [lambda p: over_ip(4, p, True),
                                  lambda p: over_udp((4789, 4789), vxlan(eth(p)), True)],
                         ids=["ipip", "vxlan"])
def test_a_tunneled_packet_is_not_rewritten_in_place(wrap):
    engine = aiomb.Engine()
    outcomes = []

    def handler(packet):
        if packet.flow.key.proto != 6:
            return
        try:
            packet.rewrite(dport=8080)
            outcomes.append("rewritten")
        except RuntimeError:
            outcomes.append("RuntimeError")
    engine.add_handler(PACKET_IN, handler, hook=Hook.SENDER)
    syn = conversation(4)[0][2]
    bare = bytearray(eth(syn))
    engine.feed(bare, 1.0)
    assert outcomes == ["rewritten"] and bytes(bare) != eth(syn)       # the same packet unwrapped: rewritten
    engine = aiomb.Engine()
    engine.add_handler(PACKET_IN, handler, hook=Hook.SENDER)
    buf = bytearray(wrap(syn))
    engine.feed(buf, 1.0)
    assert outcomes == ["rewritten", "RuntimeError"] and bytes(buf) == wrap(syn)


def test_a_translated_flows_tunneled_packets_are_untranslatable():
    """Flow.translate rewrites the client's packets after the hooks: bare, its 4 are; tunneled, they
    are counted untranslatable and dropped, left as they were."""
    def translated(wrap):
        engine = aiomb.Engine()
        engine.add_handler(EventKind.CONN_START, lambda p: p.flow.translate(client=("192.0.2.99", 61000)))
        conv = conversation(4)
        frames = [bytearray(wrap(p, f)) for _, f, p in conv]
        verdicts = [engine.feed(b, ts) for b, (ts, _, _) in zip(frames, conv)]
        st = engine.statistics()
        unchanged = [bytes(b) == wrap(p, f) for b, (_, f, p) in zip(frames, conv)]
        return verdicts, (st.flows_created, st.translations, st.translated_packets, st.untranslatable), unchanged
    forwards = [Verdict.FORWARD] * 6
    assert translated(lambda p, f: eth(p)) == (forwards, (1, 1, 4, 0), [False, True, False, False, True, False])
    client_drops = [Verdict.DROP, Verdict.FORWARD, Verdict.DROP, Verdict.DROP, Verdict.FORWARD, Verdict.DROP]
    assert translated(lambda p, f: over_ip(47, gre(p, 0x0800), f)) == (client_drops, (1, 1, 4, 4), [True] * 6)


# -- 7. batches and workers -------------------------------------------------------------------------


def tunnel_traffic(flows=12):
    """Interleaved conversations through tunnels of several kinds (4 outer UDP flows), every other
    one changing tunnels frame by frame (the same inner tuple through several); some ended by FIN."""
    kinds = [lambda p, f: over_ip(47, gre(p, 0x0800, key=1), f),
             lambda p, f: over_ip(47, gre(p, 0x0800, key=2), f, outer=("198.51.100.1", "198.51.100.2")),
             lambda p, f: over_ip(4, p, f),
             lambda p, f: over_udp((4789, 4789), vxlan(eth(p)), f),
             lambda p, f: over_udp((49152 + f, 4789), vxlan(eth(p)), True),
             lambda p, f: over_udp((2152, 2152), gtpu(p, extensions=GTP_EXTENSIONS), f),
             lambda p, f: over_ip(47, pptp(ppp(p), seq=1), f)]
    frames = []
    for n in range(flows):
        client, server = ("10.0.0.1", 40000 + n), ("10.0.0.2", 80)
        c = TcpConversation(client, server, ethernet=False, start_ts=1.0 + n * 0.37, ts_step=0.05)
        c.handshake()
        c.send("client", REQUEST * (n + 1))
        c.send("server", RESPONSE * (n + 2))
        if n % 3 == 0:
            c.fin("client")
            c.fin("server")
            c.ack("client")
        for i, (ts, p) in enumerate(c.frames):
            forward = p[12:16] == ipaddress.ip_address(client[0]).packed
            frames.append((round(ts, 2), kinds[(n + i * (n % 2)) % len(kinds)](p, forward)))
    frames.sort(key=lambda f: f[0])
    return frames


def test_events_do_not_depend_on_the_batch_size():
    buf = io.BytesIO()
    write_pcap(buf, tunnel_traffic())
    one, other = run_in_batches(buf.getvalue(), 1), run_in_batches(buf.getvalue(), 64)
    assert len([e for e in one[0] if e[0] is EventKind.CONN_START]) == 12
    assert len([e for e in one[0] if e[0] is EventKind.UDP_START]) == 4
    assert other == one


def test_workers_give_one_engines_records(tmp_path):
    path = tmp_path / "tunnels.pcap"
    write_pcap(path, tunnel_traffic(flows=40))

    def flows(workers):
        proc = subprocess.run([sys.executable, "-m", "aiomb", "flows", str(path), "--format", "jsonl", "--stats",
                               "--workers", str(workers)], capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout.splitlines(), proc.stderr.decode().split(";")[0]
    one, stats = flows(1)
    rows = [json.loads(line) for line in one]
    assert sorted(r["proto"] for r in rows) == ["tcp"] * 40 + ["udp"] * 4
    assert flows(2) == (one, stats)
