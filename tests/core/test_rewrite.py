"""PacketView.rewrite: addresses and ports rewritten in place with incremental IPv4, TCP and
UDP checksum updates, checked against checksums computed from scratch (RFC 1071)."""

import ipaddress
import struct

import pytest

import aiomb
from aiomb import PACKET_IN, Hook
from aiomb.testing import internet_checksum, tcp_frame, udp_frame


def check(frame: bytes) -> tuple:
    """(src, dst, sport, dport) of an Ethernet frame whose checksums must all verify."""
    ip = frame[14:]
    if ip[0] >> 4 == 4:
        ihl = (ip[0] & 15) * 4
        assert internet_checksum(ip[:ihl]) == 0, "IPv4 header checksum"
        proto, src, dst, l4 = ip[9], ip[12:16], ip[16:20], ip[ihl:struct.unpack("!H", ip[2:4])[0]]
    else:
        proto, src, dst, l4 = ip[6], ip[8:24], ip[24:40], ip[40:40 + struct.unpack("!H", ip[4:6])[0]]
    pseudo = src + dst + struct.pack("!HH", proto, len(l4)) if len(src) == 4 else \
        src + dst + struct.pack("!IxxxB", len(l4), proto)
    if not (proto == 17 and len(src) == 4 and l4[6:8] == b"\0\0"):
        assert internet_checksum(pseudo + l4) == 0, "transport checksum"
    sport, dport = struct.unpack("!HH", l4[:4])
    return str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), sport, dport


def rewrite(frame: bytes, **changes) -> bytes:
    engine = aiomb.Engine()
    seen = []

    def handler(packet):
        packet.rewrite(**changes)
        seen.append((str(packet.src), str(packet.dst), packet.sport, packet.dport))
    engine.add_handler(PACKET_IN, handler, hook=Hook.SENDER)
    buf = bytearray(frame)
    engine.feed(buf, 1.0)
    assert len(seen) == 1 and seen[0] == check(bytes(buf))
    return bytes(buf)


CASES = [
    ("tcp4", lambda: tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, flags="S", seq=7, payload=b"hello"),
     dict(src="192.0.2.9", dst="198.51.100.7", sport=1, dport=65535)),
    ("udp4", lambda: udp_frame("10.0.0.1", "10.0.0.2", 5353, 53, b"query!"),
     dict(dst="10.9.8.7", dport=5300)),
    ("tcp6", lambda: tcp_frame("2001:db8::1", "2001:db8::2", 1234, 443, flags="S", seq=1),
     dict(src="2001:db8:ffff::1", sport=4321)),
    ("udp6", lambda: udp_frame("2001:db8::1", "2001:db8::2", 1, 2, b"odd"),
     dict(dst="::1", sport=0xfffe, dport=0)),
]


@pytest.mark.parametrize("name,make,changes", CASES, ids=[c[0] for c in CASES])
def test_rewrite_keeps_checksums_valid(name, make, changes):
    frame = make()
    check(frame)
    out = rewrite(frame, **changes)
    src, dst, sport, dport = check(out)
    old = check(frame)
    assert (src, dst, sport, dport) == (changes.get("src", old[0]), changes.get("dst", old[1]),
                                        changes.get("sport", old[2]), changes.get("dport", old[3]))
    back = rewrite(out, src=old[0], dst=old[1], sport=old[2], dport=old[3])
    assert back == frame                      # and the way back restores every byte


def test_udp4_without_checksum_stays_without():
    frame = bytearray(udp_frame("10.0.0.1", "10.0.0.2", 1000, 53, b"x"))
    frame[14 + 20 + 6:14 + 20 + 8] = b"\0\0"
    out = rewrite(bytes(frame), dport=54)
    assert out[14 + 20 + 6:14 + 20 + 8] == b"\0\0"


def test_rewrite_errors():
    engine = aiomb.Engine()
    errors = []

    def handler(packet):
        for kwargs in (dict(dst="2001:db8::1"), dict(sport=70000)):
            try:
                packet.rewrite(**kwargs)
            except ValueError as exc:
                errors.append(str(exc))
    engine.add_handler(PACKET_IN, handler, hook=Hook.SENDER)
    engine.feed(bytearray(udp_frame("10.0.0.1", "10.0.0.2", 1000, 53, b"x")), 1.0)
    assert errors == ["2001:db8::1 is not an IPv4 address like the packet's",
                      "port 70000 is out of range 0..65535"]

    def at_receiver(packet):
        with pytest.raises(RuntimeError, match="only be rewritten at the sender hook"):
            packet.rewrite(dport=1)
        errors.append("receiver")
    engine.add_handler(PACKET_IN, at_receiver, hook=Hook.RECEIVER)
    engine.feed(bytearray(udp_frame("10.0.0.1", "10.0.0.2", 1000, 53, b"x")), 1.0)
    assert errors[-1] == "receiver"
