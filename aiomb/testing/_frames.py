"""Builders for exact test frames: Ethernet/VLAN, IPv4/IPv6, TCP, UDP, ICMP, fragments.

Every builder returns plain ``bytes`` with correct lengths and checksums, so sans-I/O
tests can feed the engine precisely the frame they mean. The single-frame builders put
:data:`DEFAULT_SRC_MAC` as source and :data:`DEFAULT_DST_MAC` as destination whatever
the IP addresses; :class:`TcpConversation` swaps them for server frames, and
:func:`ethernet_frame` takes any addresses.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import NamedTuple

DEFAULT_SRC_MAC = "02:00:00:00:00:01"
DEFAULT_DST_MAC = "02:00:00:00:00:02"

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_TPID_8021Q = 0x8100
_TPID_8021AD = 0x88A8
_ETHERNET_HEADER_LEN = 14

_PROTO_ICMP = 1
_PROTO_TCP = 6
_PROTO_UDP = 17
_PROTO_ICMPV6 = 58

_IPV6_HOP_BY_HOP = 0
_IPV6_ROUTING = 43
_IPV6_FRAGMENT = 44
_IPV6_DEST_OPTIONS = 60
_IPV6_EXTENSIONS = (_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_DEST_OPTIONS)
_IPV6_HEADER_LEN = 40

_IPV4_HEADER_LEN = 20
_IPV4_DF = 0x4000
_IPV4_MF = 0x2000
_IPV4_OFFSET_MASK = 0x1FFF
_IP_OPTIONS_MAX = 40
_IPV4_OPT_EOL = 0
_IPV4_OPT_NOP = 1
_IPV4_OPT_COPIED = 0x80

_TCP_FLAG_BITS = {
    "F": 0x01,
    "S": 0x02,
    "R": 0x04,
    "P": 0x08,
    "A": 0x10,
    "U": 0x20,
    "E": 0x40,
    "C": 0x80,
}
_TCP_OPTIONS_MAX = 40
_TCP_EOL = 0
_TCP_NOP = 1
_TCP_OPT_MSS = 2
_TCP_OPT_WSCALE = 3
_TCP_OPT_SACK_PERMITTED = 4
_TCP_OPT_SACK = 5
_TCP_OPT_TIMESTAMPS = 8
_TCP_OPT_FASTOPEN = 34

# XOR-ing a valid checksum with this never yields 0x0000/0xFFFF equivalents of it.
_CHECKSUM_CORRUPTION = 0x00FF
_SEQ_MOD = 2**32


class _Addresses(NamedTuple):
    """A parsed source/destination address pair of one IP family."""

    version: int
    src: bytes
    dst: bytes


# -- validation helpers ---------------------------------------------------------------


def _check_uint(name: str, value: object, bits: int) -> int:
    """Return ``value`` if it is an int that fits in ``bits`` unsigned bits."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name} must be in 0..{(1 << bits) - 1}, got {value}")
    return value


def _check_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int (bool excluded)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def _check_bytes(name: str, value: object) -> bytes:
    """Return ``value`` as bytes if it is bytes-like."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)


def _parse_addresses(src: object, dst: object) -> _Addresses:
    """Parse two address strings of the same IP family."""
    for name, value in (("src", src), ("dst", dst)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be an IP address string, got {type(value).__name__}")
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if source.version != destination.version:
        raise ValueError(f"src and dst must be the same IP family, got {src!r} and {dst!r}")
    return _Addresses(source.version, source.packed, destination.packed)


def _check_fragment_size(fragment_size: object) -> int:
    """Return ``fragment_size`` if it is a positive multiple of 8."""
    _check_int("fragment_size", fragment_size)
    if fragment_size <= 0 or fragment_size % 8:
        raise ValueError(f"fragment_size must be a positive multiple of 8, got {fragment_size}")
    return fragment_size


# -- checksums ------------------------------------------------------------------------


def internet_checksum(data: bytes) -> int:
    """Compute the RFC 1071 ones'-complement checksum of ``data``; 0 over a header or
    segment (with its pseudo-header) whose checksum field is right."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_header(addrs: _Addresses, proto: int, length: int) -> bytes:
    """Build the IPv4 or IPv6 pseudo-header covered by transport checksums."""
    if addrs.version == 4:
        return addrs.src + addrs.dst + struct.pack("!BBH", 0, proto, length)
    return addrs.src + addrs.dst + struct.pack("!I3xB", length, proto)


def _transport_checksum(addrs: _Addresses, proto: int, segment: bytes) -> int:
    """Checksum a transport segment (its checksum field zeroed) with its pseudo-header."""
    return internet_checksum(_pseudo_header(addrs, proto, len(segment)) + segment)


def _with_checksum(data: bytes, offset: int, checksum: int) -> bytes:
    """Return ``data`` with the 16-bit field at ``offset`` set to ``checksum``."""
    return data[:offset] + struct.pack("!H", checksum) + data[offset + 2 :]


# -- link layer -----------------------------------------------------------------------


def _mac_bytes(name: str, mac: object) -> bytes:
    """Parse a MAC given as ``"aa:bb:cc:dd:ee:ff"`` or as 6 bytes."""
    if isinstance(mac, str):
        parts = mac.split(":")
        if len(parts) != 6 or not all(len(part) == 2 for part in parts):
            raise ValueError(f"{name} must look like 'aa:bb:cc:dd:ee:ff', got {mac!r}")
        try:
            return bytes.fromhex("".join(parts))
        except ValueError:
            raise ValueError(f"{name} must look like 'aa:bb:cc:dd:ee:ff', got {mac!r}") from None
    raw = _check_bytes(name, mac)
    if len(raw) != 6:
        raise ValueError(f"{name} must be 6 bytes, got {len(raw)}")
    return raw


def _vlan_tags(vlan: object) -> bytes:
    """Encode VLAN ids (outermost first): one is 802.1Q, two or more start with 802.1ad."""
    if not isinstance(vlan, (tuple, list)):
        raise TypeError(f"vlan must be a tuple of VLAN ids, got {type(vlan).__name__}")
    outer_tpid = _TPID_8021AD if len(vlan) > 1 else _TPID_8021Q
    return b"".join(
        struct.pack("!HH", _TPID_8021Q if index else outer_tpid, _check_uint("VLAN id", vid, 12))
        for index, vid in enumerate(vlan)
    )


def ethernet_frame(
    payload: bytes,
    *,
    ethertype: int,
    vlan: Sequence[int] = (),
    src_mac: str | bytes = DEFAULT_SRC_MAC,
    dst_mac: str | bytes = DEFAULT_DST_MAC,
) -> bytes:
    """Wrap ``payload`` in an Ethernet header, with optional 802.1Q/QinQ tags.

    ``vlan`` lists VLAN ids outermost first: a single id gets TPID 0x8100; with two or
    more, the outermost gets 0x88a8 and the rest 0x8100. Tags carry PCP 0 and DEI 0.
    """
    header = _mac_bytes("dst_mac", dst_mac) + _mac_bytes("src_mac", src_mac) + _vlan_tags(vlan)
    return (
        header
        + struct.pack("!H", _check_uint("ethertype", ethertype, 16))
        + _check_bytes("payload", payload)
    )


def _link_frame(packet: bytes, version: int, *, ethernet: bool, vlan: Sequence[int]) -> bytes:
    """Return ``packet`` in an Ethernet frame, or bare when ``ethernet`` is false."""
    if ethernet:
        ethertype = _ETHERTYPE_IPV4 if version == 4 else _ETHERTYPE_IPV6
        return ethernet_frame(packet, ethertype=ethertype, vlan=vlan)
    if vlan:
        raise ValueError("vlan tags need an Ethernet header; pass ethernet=True or vlan=()")
    return packet


def sll_frame(ip_packet: bytes, *, protocol: int = _ETHERTYPE_IPV4, pkttype: int = 0) -> bytes:
    """Prefix ``ip_packet`` with a 16-byte Linux cooked-capture (SLL v1) header.

    The header claims ARPHRD_ETHER with link-layer address :data:`DEFAULT_SRC_MAC`.
    """
    header = struct.pack(
        "!HHH8sH",
        _check_uint("pkttype", pkttype, 16),
        1,
        6,
        _mac_bytes("src_mac", DEFAULT_SRC_MAC),
        _check_uint("protocol", protocol, 16),
    )
    return header + _check_bytes("ip_packet", ip_packet)


def sll2_frame(
    ip_packet: bytes, *, protocol: int = _ETHERTYPE_IPV4, ifindex: int = 1, pkttype: int = 0
) -> bytes:
    """Prefix ``ip_packet`` with a 20-byte Linux cooked-capture v2 (SLL2) header.

    The header claims ARPHRD_ETHER with link-layer address :data:`DEFAULT_SRC_MAC`.
    """
    header = struct.pack(
        "!HHIHBB8s",
        _check_uint("protocol", protocol, 16),
        0,
        _check_uint("ifindex", ifindex, 32),
        1,
        _check_uint("pkttype", pkttype, 8),
        6,
        _mac_bytes("src_mac", DEFAULT_SRC_MAC),
    )
    return header + _check_bytes("ip_packet", ip_packet)


# -- network layer --------------------------------------------------------------------


def _ipv4_header(
    src: bytes,
    dst: bytes,
    proto: int,
    payload_length: int,
    *,
    ttl: int,
    ip_id: int,
    options: bytes = b"",
    tos: int = 0,
    fragment_field: int = 0,
) -> bytes:
    """Build an IPv4 header with options padded by EOL and a correct header checksum."""
    options = _check_bytes("ip_options", options)
    options += bytes(-len(options) % 4)
    if len(options) > _IP_OPTIONS_MAX:
        raise ValueError(f"ip_options must fit in {_IP_OPTIONS_MAX} bytes, got {len(options)}")
    header_length = _IPV4_HEADER_LEN + len(options)
    total_length = header_length + payload_length
    if total_length > 0xFFFF:
        raise ValueError(f"IPv4 packet would be {total_length} bytes; the maximum is 65535")
    header = (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | header_length // 4,
            tos,
            total_length,
            _check_uint("ip_id", ip_id, 16),
            fragment_field,
            _check_uint("ttl", ttl, 8),
            proto,
            0,
            src,
            dst,
        )
        + options
    )
    return _with_checksum(header, 10, internet_checksum(header))


def _ipv6_option_padding(length: int) -> bytes:
    """Return ``length`` bytes of Pad1/PadN options for hop-by-hop/destination headers."""
    if length == 0:
        return b""
    if length == 1:
        return b"\x00"
    return bytes([1, length - 2]) + bytes(length - 2)


def _ipv6_extension_header(kind: int, body: bytes, next_header: int) -> bytes:
    """Encode one extension header, padding its body to a multiple of 8 bytes.

    Options headers are padded with Pad1/PadN, the routing header with zeros.
    """
    unpadded = 2 + len(body)
    length = max(8, unpadded + -unpadded % 8)
    if length > 2048:
        raise ValueError(f"IPv6 extension header body must be at most 2046 bytes, got {len(body)}")
    pad = length - unpadded
    padding = bytes(pad) if kind == _IPV6_ROUTING else _ipv6_option_padding(pad)
    return bytes([next_header, length // 8 - 1]) + body + padding


def _ipv6_extension_chain(ipv6_ext: object, upper_proto: int) -> tuple[int, bytes]:
    """Encode ``ipv6_ext`` and return (first next-header value, encoded chain)."""
    if not isinstance(ipv6_ext, (tuple, list)):
        raise TypeError(
            f"ipv6_ext must be a list of (type, body) tuples, got {type(ipv6_ext).__name__}"
        )
    entries = []
    for index, entry in enumerate(ipv6_ext):
        if not isinstance(entry, tuple) or len(entry) != 2:
            raise TypeError(f"ipv6_ext[{index}] must be a (type, body) tuple, got {entry!r}")
        kind, body = entry
        if kind not in _IPV6_EXTENSIONS:
            raise ValueError(f"ipv6_ext[{index}] type must be one of 0, 43, 60, got {kind!r}")
        if kind == _IPV6_HOP_BY_HOP and index:
            raise ValueError("a hop-by-hop header (type 0) must be the first ipv6_ext entry")
        entries.append((kind, _check_bytes(f"ipv6_ext[{index}] body", body)))
    next_headers = [*(kind for kind, _ in entries), upper_proto]
    chain = b"".join(
        _ipv6_extension_header(kind, body, nxt)
        for (kind, body), nxt in zip(entries, next_headers[1:], strict=True)
    )
    return next_headers[0], chain


def _ipv6_header(
    addrs: _Addresses, next_header: int, payload_length: int, *, hop_limit: int
) -> bytes:
    """Build a fixed IPv6 header (traffic class and flow label zero)."""
    if payload_length > 0xFFFF:
        raise ValueError(f"IPv6 payload would be {payload_length} bytes; the maximum is 65535")
    return struct.pack(
        "!IHBB16s16s",
        6 << 28,
        payload_length,
        next_header,
        _check_uint("ttl", hop_limit, 8),
        addrs.src,
        addrs.dst,
    )


def _ip_packet(
    addrs: _Addresses,
    proto: int,
    segment: bytes,
    *,
    ttl: int,
    ip_id: int,
    ip_options: bytes = b"",
    ipv6_ext: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """Put ``segment`` behind an IPv4 header, or an IPv6 header and extension chain."""
    if addrs.version == 4:
        if ipv6_ext:
            raise ValueError("ipv6_ext needs IPv6 addresses; use ip_options for IPv4")
        header = _ipv4_header(
            addrs.src, addrs.dst, proto, len(segment), ttl=ttl, ip_id=ip_id, options=ip_options
        )
        return header + segment
    if ip_options:
        raise ValueError("ip_options is IPv4-only; use ipv6_ext for IPv6")
    if ip_id:
        raise ValueError("ip_id is IPv4-only; IPv6 has no identification outside fragments")
    first_header, chain = _ipv6_extension_chain(ipv6_ext, proto)
    payload = chain + segment
    return _ipv6_header(addrs, first_header, len(payload), hop_limit=ttl) + payload


# -- transport layer ------------------------------------------------------------------


def _tcp_flags(flags: object) -> int:
    """Translate a string of flag letters from ``"FSRPAUEC"`` into the flags byte."""
    if not isinstance(flags, str):
        raise TypeError(
            f"flags must be a string of letters from 'FSRPAUEC', got {type(flags).__name__}"
        )
    unknown = sorted(set(flags) - set(_TCP_FLAG_BITS))
    if unknown:
        raise ValueError(
            f"unknown TCP flag letter(s) {''.join(unknown)!r}; use letters from 'FSRPAUEC'"
        )
    bits = 0
    for letter in flags:
        bits |= _TCP_FLAG_BITS[letter]
    return bits


def _pad_tcp_options(encoded: bytes) -> bytes:
    """Pad encoded options with NOPs to a multiple of 4, enforcing the 40-byte limit."""
    encoded += bytes([_TCP_NOP]) * (-len(encoded) % 4)
    if len(encoded) > _TCP_OPTIONS_MAX:
        raise ValueError(f"TCP options must fit in {_TCP_OPTIONS_MAX} bytes, got {len(encoded)}")
    return encoded


def _tcp_option(kind: int, data: bytes = b"") -> bytes:
    """Encode one kind/length/data TCP option (EOL and NOP are a lone kind byte)."""
    if kind in (_TCP_EOL, _TCP_NOP):
        if data:
            raise ValueError(f"TCP option kind {kind} (EOL/NOP) takes no data")
        return bytes([kind])
    if len(data) > _TCP_OPTIONS_MAX - 2:
        raise ValueError(f"TCP option kind {kind} data must be at most 38 bytes, got {len(data)}")
    return bytes([kind, 2 + len(data)]) + data


def _encode_tcp_options(options: object) -> bytes:
    """Encode ``options`` given as raw bytes or as a list of ``(kind, data)`` tuples."""
    if isinstance(options, (bytes, bytearray, memoryview)):
        return _pad_tcp_options(bytes(options))
    if not isinstance(options, list):
        raise TypeError(
            f"options must be bytes or a list of (kind, data) tuples, got {type(options).__name__}"
        )
    encoded = b""
    for index, entry in enumerate(options):
        if not isinstance(entry, tuple) or len(entry) != 2:
            raise TypeError(f"options[{index}] must be a (kind, data) tuple, got {entry!r}")
        kind, data = entry
        encoded += _tcp_option(
            _check_uint(f"options[{index}] kind", kind, 8),
            _check_bytes(f"options[{index}] data", data),
        )
    return _pad_tcp_options(encoded)


def tcp_options(
    *,
    mss: int | None = None,
    wscale: int | None = None,
    sack_permitted: bool = False,
    sack: Sequence[tuple[int, int]] = (),
    timestamps: tuple[int, int] | None = None,
    fastopen_cookie: bytes | None = None,
) -> bytes:
    """Encode common TCP options, in this order, padded with NOPs to a multiple of 4.

    Order: MSS, SACK-permitted, timestamps ``(tsval, tsecr)``, window scale, SACK blocks
    ``[(left, right), ...]`` (edges taken modulo 2**32), Fast Open cookie (kind 34;
    ``b""`` encodes a cookie request). Raises ValueError past the 40-byte option space.
    """
    encoded = b""
    if mss is not None:
        encoded += _tcp_option(_TCP_OPT_MSS, struct.pack("!H", _check_uint("mss", mss, 16)))
    if sack_permitted:
        encoded += _tcp_option(_TCP_OPT_SACK_PERMITTED)
    if timestamps is not None:
        if not isinstance(timestamps, tuple) or len(timestamps) != 2:
            raise TypeError(f"timestamps must be a (tsval, tsecr) tuple, got {timestamps!r}")
        tsval, tsecr = timestamps
        encoded += _tcp_option(
            _TCP_OPT_TIMESTAMPS,
            struct.pack("!II", _check_uint("tsval", tsval, 32), _check_uint("tsecr", tsecr, 32)),
        )
    if wscale is not None:
        encoded += _tcp_option(_TCP_OPT_WSCALE, bytes([_check_uint("wscale", wscale, 8)]))
    if sack:
        encoded += _tcp_option(_TCP_OPT_SACK, _sack_blocks(sack))
    if fastopen_cookie is not None:
        encoded += _tcp_option(_TCP_OPT_FASTOPEN, _check_bytes("fastopen_cookie", fastopen_cookie))
    return _pad_tcp_options(encoded)


def _sack_blocks(sack: Sequence[tuple[int, int]]) -> bytes:
    """Encode SACK ``(left, right)`` edges, each taken modulo 2**32."""
    blocks = b""
    for index, block in enumerate(sack):
        if not isinstance(block, tuple) or len(block) != 2:
            raise TypeError(f"sack[{index}] must be a (left, right) tuple, got {block!r}")
        left, right = (_check_int(f"sack[{index}] edge", edge) % _SEQ_MOD for edge in block)
        blocks += struct.pack("!II", left, right)
    return blocks


def tcp_frame(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    *,
    seq: int = 0,
    ack: int = 0,
    flags: str = "S",
    payload: bytes = b"",
    window: int = 65535,
    options: bytes | list[tuple[int, bytes]] = b"",
    vlan: Sequence[int] = (),
    ttl: int = 64,
    ip_options: bytes = b"",
    ipv6_ext: Sequence[tuple[int, bytes]] = (),
    ip_id: int = 0,
    ethernet: bool = True,
    bad_checksum: bool = False,
) -> bytes:
    """Build a TCP segment in an IPv4/IPv6 packet, in an Ethernet frame unless told not to.

    ``flags`` is any combination of the letters ``FSRPAUEC``; ``seq``/``ack`` are taken
    modulo 2**32. ``options`` is raw option bytes (e.g. from :func:`tcp_options`) or a
    list of ``(kind, data)`` tuples; either is NOP-padded to a multiple of 4.
    ``ipv6_ext`` lists ``(type, body)`` extension headers (0 hop-by-hop, 43 routing,
    60 destination options) put between the IPv6 header and TCP; ``body`` excludes the
    next-header/length bytes and is padded to a multiple of 8. The checksum always uses
    ``dst`` in the pseudo-header. ``bad_checksum`` deliberately corrupts the TCP checksum.
    """
    addrs = _parse_addresses(src, dst)
    encoded_options = _encode_tcp_options(options)
    header = struct.pack(
        "!HHIIBBHHH",
        _check_uint("sport", sport, 16),
        _check_uint("dport", dport, 16),
        _check_int("seq", seq) % _SEQ_MOD,
        _check_int("ack", ack) % _SEQ_MOD,
        (5 + len(encoded_options) // 4) << 4,
        _tcp_flags(flags),
        _check_uint("window", window, 16),
        0,
        0,
    )
    segment = header + encoded_options + _check_bytes("payload", payload)
    checksum = _transport_checksum(addrs, _PROTO_TCP, segment)
    if bad_checksum:
        checksum ^= _CHECKSUM_CORRUPTION
    segment = _with_checksum(segment, 16, checksum)
    packet = _ip_packet(
        addrs, _PROTO_TCP, segment, ttl=ttl, ip_id=ip_id, ip_options=ip_options, ipv6_ext=ipv6_ext
    )
    return _link_frame(packet, addrs.version, ethernet=ethernet, vlan=vlan)


def udp_frame(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    vlan: Sequence[int] = (),
    ttl: int = 64,
    ip_id: int = 0,
    ethernet: bool = True,
    ipv6_ext: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """Build a UDP datagram with a correct checksum in an IPv4/IPv6 packet (and frame)."""
    addrs = _parse_addresses(src, dst)
    payload = _check_bytes("payload", payload)
    length = 8 + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"UDP datagram would be {length} bytes; the maximum is 65535")
    segment = struct.pack(
        "!HHHH", _check_uint("sport", sport, 16), _check_uint("dport", dport, 16), length, 0
    )
    segment += payload
    # A computed checksum of zero is sent as 0xFFFF; zero means "no checksum" in UDP.
    segment = _with_checksum(segment, 6, _transport_checksum(addrs, _PROTO_UDP, segment) or 0xFFFF)
    packet = _ip_packet(addrs, _PROTO_UDP, segment, ttl=ttl, ip_id=ip_id, ipv6_ext=ipv6_ext)
    return _link_frame(packet, addrs.version, ethernet=ethernet, vlan=vlan)


def icmp_frame(
    src: str,
    dst: str,
    *,
    type: int | None = None,
    code: int = 0,
    payload: bytes = b"",
    vlan: Sequence[int] = (),
    ethernet: bool = True,
) -> bytes:
    """Build an ICMPv4 or ICMPv6 message (by address family) with a correct checksum.

    ``type`` defaults to echo request for the family (8 for ICMPv4, 128 for ICMPv6).
    ``payload`` is everything after the 4-byte type/code/checksum header, so for an echo
    it starts with the identifier and sequence number.
    """
    addrs = _parse_addresses(src, dst)
    if type is None:
        type = 8 if addrs.version == 4 else 128
    message = struct.pack("!BBH", _check_uint("type", type, 8), _check_uint("code", code, 8), 0)
    message += _check_bytes("payload", payload)
    if addrs.version == 4:
        proto, checksum = _PROTO_ICMP, internet_checksum(message)
    else:
        proto, checksum = _PROTO_ICMPV6, _transport_checksum(addrs, _PROTO_ICMPV6, message)
    packet = _ip_packet(addrs, proto, _with_checksum(message, 2, checksum), ttl=64, ip_id=0)
    return _link_frame(packet, addrs.version, ethernet=ethernet, vlan=vlan)


# -- fragmentation --------------------------------------------------------------------


class _Link(NamedTuple):
    """The Ethernet addresses of a frame being re-emitted as fragments."""

    src_mac: bytes
    dst_mac: bytes


def _split_link(frame: object, *, ethernet: bool, ethertype: int) -> tuple[_Link | None, bytes]:
    """Split an untagged Ethernet frame (or a raw IP packet) into link info and packet."""
    frame = _check_bytes("frame", frame)
    if not ethernet:
        return None, frame
    if len(frame) < _ETHERNET_HEADER_LEN:
        raise ValueError(f"frame is {len(frame)} bytes, too short for an Ethernet header")
    found = int.from_bytes(frame[12:14], "big")
    if found != ethertype:
        raise ValueError(
            f"expected an untagged Ethernet frame with ethertype 0x{ethertype:04x}, "
            f"got 0x{found:04x}"
        )
    return _Link(src_mac=frame[6:12], dst_mac=frame[0:6]), frame[_ETHERNET_HEADER_LEN:]


def _relink(packet: bytes, link: _Link | None, *, ethertype: int, vlan: Sequence[int]) -> bytes:
    """Re-wrap a fragment like the original frame, with ``vlan`` tags applied."""
    if link is None:
        if vlan:
            raise ValueError("vlan tags need an Ethernet header; pass ethernet=True or vlan=()")
        return packet
    return ethernet_frame(
        packet, ethertype=ethertype, vlan=vlan, src_mac=link.src_mac, dst_mac=link.dst_mac
    )


def _copied_ipv4_options(options: bytes) -> bytes:
    """Return the IPv4 options whose copied flag says they belong in every fragment."""
    copied = b""
    position = 0
    while position < len(options) and options[position] != _IPV4_OPT_EOL:
        kind = options[position]
        if kind == _IPV4_OPT_NOP:
            position += 1
            continue
        length = options[position + 1] if position + 1 < len(options) else 0
        if length < 2 or position + length > len(options):
            raise ValueError(f"malformed IPv4 option of kind {kind} at option offset {position}")
        if kind & _IPV4_OPT_COPIED:
            copied += options[position : position + length]
        position += length
    return copied


def ipv4_fragments(
    frame: bytes, *, fragment_size: int, ethernet: bool = True, vlan: Sequence[int] = ()
) -> list[bytes]:
    """Split an unfragmented IPv4 packet's payload into fragments of ``fragment_size`` bytes.

    ``frame`` is an untagged Ethernet frame (``ethernet=True``; its MACs are kept) or a
    raw IPv4 packet. ``fragment_size`` must be a positive multiple of 8; the last fragment
    holds the remainder. All fragments keep the input's id, TOS, TTL and DF bit; the first
    carries every IP option, later ones only options with the copied flag. ``vlan`` tags
    are applied to each output frame.
    """
    _check_fragment_size(fragment_size)
    link, packet = _split_link(frame, ethernet=ethernet, ethertype=_ETHERTYPE_IPV4)
    if len(packet) < _IPV4_HEADER_LEN or packet[0] >> 4 != 4:
        raise ValueError("frame does not contain an IPv4 packet")
    header_length = (packet[0] & 0x0F) * 4
    tos, total_length, ip_id, fragment_field, ttl, proto = struct.unpack("!xBHHHBB", packet[:10])
    if header_length < _IPV4_HEADER_LEN or not header_length <= total_length <= len(packet):
        raise ValueError("IPv4 header or total length is inconsistent with the frame size")
    if fragment_field & (_IPV4_MF | _IPV4_OFFSET_MASK):
        raise ValueError("frame is already an IPv4 fragment")
    payload = packet[header_length:total_length]
    if not payload:
        raise ValueError("IPv4 packet has no payload to fragment")
    src, dst = packet[12:16], packet[16:20]
    first_options = packet[_IPV4_HEADER_LEN:header_length]
    later_options = _copied_ipv4_options(first_options)
    fragments = []
    for offset in range(0, len(payload), fragment_size):
        chunk = payload[offset : offset + fragment_size]
        more = _IPV4_MF if offset + fragment_size < len(payload) else 0
        header = _ipv4_header(
            src,
            dst,
            proto,
            len(chunk),
            ttl=ttl,
            ip_id=ip_id,
            tos=tos,
            options=first_options if offset == 0 else later_options,
            fragment_field=(fragment_field & _IPV4_DF) | more | offset // 8,
        )
        fragments.append(_relink(header + chunk, link, ethertype=_ETHERTYPE_IPV4, vlan=vlan))
    return fragments


def _ipv6_unfragmentable(packet: bytes) -> tuple[int, int]:
    """Locate the unfragmentable part: return (its length, offset of its last next-header byte).

    The part is the IPv6 header plus any leading hop-by-hop, routing, and destination
    options headers up to and including the last hop-by-hop or routing header.
    """
    end, next_header_offset = _IPV6_HEADER_LEN, 6
    position, next_header = _IPV6_HEADER_LEN, packet[6]
    while next_header in _IPV6_EXTENSIONS:
        if position + 2 > len(packet):
            raise ValueError("IPv6 extension header chain is truncated")
        length = (packet[position + 1] + 1) * 8
        if position + length > len(packet):
            raise ValueError("IPv6 extension header chain is truncated")
        if next_header != _IPV6_DEST_OPTIONS:
            end, next_header_offset = position + length, position
        next_header = packet[position]
        position += length
    if next_header == _IPV6_FRAGMENT:
        raise ValueError("frame already contains an IPv6 Fragment header")
    return end, next_header_offset


def ipv6_fragments(
    frame: bytes,
    *,
    fragment_size: int,
    identification: int = 0x1234,
    ethernet: bool = True,
    vlan: Sequence[int] = (),
) -> list[bytes]:
    """Fragment an IPv6 packet by inserting Fragment headers (type 44) and splitting.

    The unfragmentable part (IPv6 header plus hop-by-hop, routing, and destination
    options headers that precede a routing header) is repeated in every fragment; the
    rest is split into ``fragment_size`` chunks (a positive multiple of 8, last one the
    remainder). ``frame`` is an untagged Ethernet frame (MACs kept) or a raw IPv6 packet;
    ``vlan`` tags are applied to each output frame. A packet that fits in one fragment
    yields a single atomic fragment.
    """
    _check_fragment_size(fragment_size)
    _check_uint("identification", identification, 32)
    link, packet = _split_link(frame, ethernet=ethernet, ethertype=_ETHERTYPE_IPV6)
    if len(packet) < _IPV6_HEADER_LEN or packet[0] >> 4 != 6:
        raise ValueError("frame does not contain an IPv6 packet")
    packet_length = _IPV6_HEADER_LEN + int.from_bytes(packet[4:6], "big")
    if packet_length > len(packet):
        raise ValueError("IPv6 payload length exceeds the frame size")
    packet = packet[:packet_length]
    end, next_header_offset = _ipv6_unfragmentable(packet)
    rest = packet[end:]
    if not rest:
        raise ValueError("IPv6 packet has no fragmentable part")
    unfragmentable = bytearray(packet[:end])
    next_header = unfragmentable[next_header_offset]
    unfragmentable[next_header_offset] = _IPV6_FRAGMENT
    fragments = []
    for offset in range(0, len(rest), fragment_size):
        chunk = rest[offset : offset + fragment_size]
        more = 1 if offset + fragment_size < len(rest) else 0
        fragment_header = struct.pack(
            "!BxHI", next_header, (offset // 8) << 3 | more, identification
        )
        struct.pack_into(
            "!H", unfragmentable, 4, len(unfragmentable) - _IPV6_HEADER_LEN + 8 + len(chunk)
        )
        ip_packet = bytes(unfragmentable) + fragment_header + chunk
        fragments.append(_relink(ip_packet, link, ethertype=_ETHERTYPE_IPV6, vlan=vlan))
    return fragments


# -- conversations --------------------------------------------------------------------


def _check_endpoint(name: str, endpoint: object) -> tuple[str, int]:
    """Return ``endpoint`` if it is an ``(address, port)`` tuple."""
    if not isinstance(endpoint, tuple) or len(endpoint) != 2:
        raise TypeError(f"{name} must be an (address, port) tuple, got {endpoint!r}")
    _check_uint(f"{name} port", endpoint[1], 16)
    return endpoint


def _seq_after(a: int, b: int) -> bool:
    """Tell whether sequence number ``a`` lies after ``b`` in modulo-2**32 space."""
    return 0 < (a - b) % _SEQ_MOD < 2**31


class TcpConversation:
    """Script a TCP connection frame by frame while tracking both sides' sequence numbers.

    Each method builds one frame, appends ``(ts, frame)`` to :attr:`frames` (``ts``
    starts at ``start_ts`` and grows by ``ts_step`` per frame) and returns the frame.
    ``client_seq``/``server_seq`` hold the next sequence number each side will use;
    segments carrying ACK acknowledge everything the other side has sent so far, and
    segments without ACK carry an acknowledgment number of 0. SYN and FIN each consume
    one sequence number. Sides are ``"client"`` or ``"server"``. Ethernet frames from
    the client go from :data:`DEFAULT_SRC_MAC` to :data:`DEFAULT_DST_MAC`, and frames
    from the server the other way.
    """

    def __init__(
        self,
        client: tuple[str, int] = ("10.0.0.1", 40000),
        server: tuple[str, int] = ("10.0.0.2", 80),
        *,
        client_isn: int = 1000,
        server_isn: int = 5000,
        vlan: Sequence[int] = (),
        ethernet: bool = True,
        start_ts: float = 1.0,
        ts_step: float = 0.001,
    ) -> None:
        self.client = _check_endpoint("client", client)
        self.server = _check_endpoint("server", server)
        self._ethertype = (
            _ETHERTYPE_IPV4
            if _parse_addresses(client[0], server[0]).version == 4
            else _ETHERTYPE_IPV6
        )
        self.client_isn = _check_int("client_isn", client_isn) % _SEQ_MOD
        self.server_isn = _check_int("server_isn", server_isn) % _SEQ_MOD
        self.client_seq = self.client_isn
        self.server_seq = self.server_isn
        _vlan_tags(vlan)  # validates the VLAN ids up front
        if vlan and not ethernet:
            raise ValueError("vlan tags need an Ethernet header; pass ethernet=True or vlan=()")
        self.vlan = vlan
        self.ethernet = ethernet
        self.start_ts = start_ts
        self.ts_step = ts_step
        self.frames: list[tuple[float, bytes]] = []

    def syn(
        self, *, payload: bytes = b"", options: bytes | list[tuple[int, bytes]] = b""
    ) -> bytes:
        """Build the client SYN at ``client_isn``; a ``payload`` makes it a TFO SYN."""
        self.client_seq = self.client_isn
        return self._segment("client", "S", payload, options=options)

    def syn_ack(self, *, options: bytes | list[tuple[int, bytes]] = b"") -> bytes:
        """Build the server SYN-ACK at ``server_isn``, acknowledging the client's SYN."""
        self.server_seq = self.server_isn
        return self._segment("server", "SA", b"", options=options)

    def ack(self, side: str = "client") -> bytes:
        """Build a pure ACK from ``side`` acknowledging everything the peer sent."""
        return self._segment(side, "A", b"")

    def handshake(self) -> list[bytes]:
        """Build the three-way handshake: SYN, SYN-ACK, ACK."""
        return [self.syn(), self.syn_ack(), self.ack("client")]

    def send(
        self,
        side: str,
        data: bytes,
        *,
        flags: str = "PA",
        advance: bool = True,
        seq_offset: int = 0,
    ) -> bytes:
        """Build a data segment from ``side`` at its next sequence number plus ``seq_offset``.

        With ``advance`` the side's next sequence number moves to the segment's end when
        that lies beyond it; ``advance=False`` builds a retransmission or out-of-order
        segment without moving it.
        """
        return self._segment(side, flags, data, seq_offset=seq_offset, advance=advance)

    def fin(self, side: str, *, flags: str = "FA") -> bytes:
        """Build a FIN from ``side``; it consumes one sequence number."""
        return self._segment(side, flags, b"")

    def rst(self, side: str, *, seq_offset: int = 0, flags: str = "R") -> bytes:
        """Build a RST from ``side`` at its next sequence number plus ``seq_offset``."""
        return self._segment(side, flags, b"", seq_offset=seq_offset, advance=False)

    def _peer(self, side: object) -> str:
        """Return the side opposite ``side``, rejecting anything but the two side names."""
        if side == "client":
            return "server"
        if side == "server":
            return "client"
        raise ValueError(f"side must be 'client' or 'server', got {side!r}")

    def _link(self, side: str, packet: bytes) -> bytes:
        """Frame ``packet`` per the conversation's link settings, MACs following ``side``."""
        if not self.ethernet:
            return packet
        macs = (
            (DEFAULT_SRC_MAC, DEFAULT_DST_MAC)
            if side == "client"
            else (DEFAULT_DST_MAC, DEFAULT_SRC_MAC)
        )
        return ethernet_frame(
            packet, ethertype=self._ethertype, vlan=self.vlan, src_mac=macs[0], dst_mac=macs[1]
        )

    def _segment(
        self,
        side: str,
        flags: str,
        data: bytes,
        *,
        options: bytes | list[tuple[int, bytes]] = b"",
        seq_offset: int = 0,
        advance: bool = True,
    ) -> bytes:
        """Build, record and return one segment from ``side``, updating its sequence number."""
        peer = self._peer(side)
        bits = _tcp_flags(flags)
        (src, sport), (dst, dport) = getattr(self, side), getattr(self, peer)
        seq = (getattr(self, f"{side}_seq") + _check_int("seq_offset", seq_offset)) % _SEQ_MOD
        packet = tcp_frame(
            src,
            dst,
            sport,
            dport,
            seq=seq,
            ack=getattr(self, f"{peer}_seq") if bits & _TCP_FLAG_BITS["A"] else 0,
            flags=flags,
            payload=data,
            options=options,
            ethernet=False,
        )
        frame = self._link(side, packet)
        consumed = len(data) + bool(bits & _TCP_FLAG_BITS["S"]) + bool(bits & _TCP_FLAG_BITS["F"])
        end = (seq + consumed) % _SEQ_MOD
        if advance and _seq_after(end, getattr(self, f"{side}_seq")):
            setattr(self, f"{side}_seq", end)
        self.frames.append((self.start_ts + len(self.frames) * self.ts_step, frame))
        return frame
