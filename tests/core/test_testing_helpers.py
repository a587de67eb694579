"""The frame builders and capture writers in aiomb.testing, checked by independent decoders.

dpkt decodes every frame and capture; tshark, when installed, re-verifies checksums.
"""

import gzip
import io
import shutil
import struct
import subprocess

import pytest

from aiomb.testing import (
    DEFAULT_DST_MAC,
    DEFAULT_SRC_MAC,
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    TcpConversation,
    ethernet_frame,
    gzip_file,
    icmp_frame,
    ipv4_fragments,
    ipv6_fragments,
    sll2_frame,
    sll_frame,
    tcp_frame,
    tcp_options,
    udp_frame,
    write_pcap,
    write_pcapng,
)

dpkt = pytest.importorskip("dpkt")

V4 = ("10.0.0.1", "10.0.0.2")
V6 = ("fd00::1", "fd00::2")
HOP_BY_HOP, ROUTING, FRAGMENT, DEST_OPTIONS = 0, 43, 44, 60
ROUTING_BODY = bytes([0, 0])  # routing type 0, segments left 0


def _mac(text):
    return bytes.fromhex(text.replace(":", ""))


def _transport_ok(ip, proto, segment):
    """Verify a transport checksum with dpkt's ones'-complement sum and a pseudo-header."""
    if len(ip.src) == 4:
        pseudo = ip.src + ip.dst + struct.pack("!BBH", 0, proto, len(segment))
    else:
        pseudo = ip.src + ip.dst + struct.pack("!IxxxB", len(segment), proto)
    return dpkt.in_cksum(pseudo + segment) == 0


def _ipv4_header_ok(raw_ip):
    return dpkt.in_cksum(raw_ip[: (raw_ip[0] & 0x0F) * 4]) == 0


def _ipv6_chain(raw_ip):
    """Walk IPv6 extension headers up to a Fragment header: return (next headers, rest)."""
    chain, position, nxt = [raw_ip[6]], 40, raw_ip[6]
    while nxt in (HOP_BY_HOP, ROUTING, DEST_OPTIONS, FRAGMENT):
        length = 8 if nxt == FRAGMENT else (raw_ip[position + 1] + 1) * 8
        last, nxt = nxt, raw_ip[position]
        chain.append(nxt)
        position += length
        if last == FRAGMENT:
            break
    return chain, raw_ip[position:]


# -- TCP ------------------------------------------------------------------------------


def test_tcp_ipv4_fields_and_checksums():
    options = tcp_options(mss=1460, wscale=7, sack_permitted=True, timestamps=(11, 22))
    frame = tcp_frame(
        *V4,
        40000,
        80,
        seq=123,
        ack=456,
        flags="PA",
        payload=b"hello",
        window=1000,
        options=options,
        ttl=33,
        ip_id=0xBEEF,
    )
    eth = dpkt.ethernet.Ethernet(frame)
    assert eth.dst == _mac(DEFAULT_DST_MAC) and eth.src == _mac(DEFAULT_SRC_MAC)
    assert eth.type == dpkt.ethernet.ETH_TYPE_IP
    ip = eth.data
    assert (ip.v, ip.hl, ip.len, ip.id, ip.ttl, ip.p) == (4, 5, len(frame) - 14, 0xBEEF, 33, 6)
    assert (ip.rf, ip.df, ip.mf, ip.offset) == (0, 0, 0, 0)
    assert _ipv4_header_ok(frame[14:])
    tcp = ip.data
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, tcp.win) == (40000, 80, 123, 456, 1000)
    assert tcp.flags == dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    assert tcp.data == b"hello"
    assert _transport_ok(ip, 6, bytes(frame[34:]))
    parsed = dict(
        (kind, data)
        for kind, data in dpkt.tcp.parse_opts(tcp.opts)
        if kind != dpkt.tcp.TCP_OPT_NOP
    )
    assert parsed[dpkt.tcp.TCP_OPT_MSS] == struct.pack("!H", 1460)
    assert parsed[dpkt.tcp.TCP_OPT_WSCALE] == b"\x07"
    assert parsed[dpkt.tcp.TCP_OPT_SACKOK] == b""
    assert parsed[dpkt.tcp.TCP_OPT_TIMESTAMP] == struct.pack("!II", 11, 22)


@pytest.mark.parametrize(
    ("letters", "bits"),
    [
        ("", 0),
        ("F", 0x01),
        ("S", 0x02),
        ("R", 0x04),
        ("P", 0x08),
        ("A", 0x10),
        ("U", 0x20),
        ("E", 0x40),
        ("C", 0x80),
        ("AS", 0x12),
        ("SA", 0x12),
        ("FSRPAUEC", 0xFF),
    ],
)
def test_tcp_flag_letters(letters, bits):
    frame = tcp_frame(*V4, 1, 2, flags=letters)
    assert frame[14 + 20 + 13] == bits


def test_tcp_seq_and_ack_wrap_modulo_2_32():
    tcp = dpkt.ethernet.Ethernet(tcp_frame(*V4, 1, 2, seq=2**32 + 5, ack=-1, flags="A")).data.data
    assert (tcp.seq, tcp.ack) == (5, 2**32 - 1)


def test_tcp_options_list_of_tuples_is_padded():
    frame = tcp_frame(*V4, 1, 2, options=[(2, b"\x05\xb4"), (3, b"\x07")], ethernet=False)
    tcp = dpkt.ip.IP(frame).data
    assert tcp.off == 7  # 20 bytes + 7 option bytes padded to 8
    assert tcp.opts == b"\x02\x04\x05\xb4\x03\x03\x07\x01"


def test_tcp_options_sack_and_fastopen():
    encoded = tcp_options(sack=[(10, 20), (2**32 + 1, 40)], fastopen_cookie=b"\xaa" * 8)
    assert len(encoded) % 4 == 0
    parsed = [(k, d) for k, d in dpkt.tcp.parse_opts(encoded) if k != dpkt.tcp.TCP_OPT_NOP]
    assert parsed == [(5, struct.pack("!4I", 10, 20, 1, 40)), (34, b"\xaa" * 8)]
    assert tcp_options(fastopen_cookie=b"") == b"\x22\x02\x01\x01"  # cookie request


def test_tcp_options_overflow_is_rejected():
    with pytest.raises(ValueError, match="40 bytes"):
        tcp_options(timestamps=(1, 2), sack=[(1, 2), (3, 4), (5, 6), (7, 8)])
    with pytest.raises(ValueError, match="40 bytes"):
        tcp_frame(*V4, 1, 2, options=bytes(41))


def test_tcp_bad_checksum_is_wrong():
    good = tcp_frame(*V4, 1, 2, payload=b"x")
    bad = tcp_frame(*V4, 1, 2, payload=b"x", bad_checksum=True)
    assert good[:50] == bad[:50] and good[50:52] != bad[50:52]
    ip = dpkt.ethernet.Ethernet(bad).data
    assert not _transport_ok(ip, 6, bad[34:])
    assert _ipv4_header_ok(bad[14:])


def test_ipv4_options_extend_ihl():
    frame = tcp_frame(*V4, 1, 2, ip_options=b"\x94\x04\x00\x00\x01", ethernet=False)
    ip = dpkt.ip.IP(frame)
    assert ip.hl == 7 and ip.opts == b"\x94\x04\x00\x00\x01\x00\x00\x00"
    assert _ipv4_header_ok(frame)
    assert _transport_ok(ip, 6, frame[28:])


def test_tcp_ipv6_extension_chain_and_checksum():
    ext = [
        (HOP_BY_HOP, b""),
        (DEST_OPTIONS, b"\x01\x01\x00"),
        (ROUTING, ROUTING_BODY),
        (DEST_OPTIONS, bytes(12)),
    ]
    frame = tcp_frame(*V6, 1234, 443, flags="S", payload=b"data", ipv6_ext=ext, ttl=7)
    eth = dpkt.ethernet.Ethernet(frame)
    assert eth.type == dpkt.ethernet.ETH_TYPE_IP6
    ip6 = eth.data
    assert (ip6.v, ip6.hlim, ip6.plen) == (6, 7, len(frame) - 14 - 40)
    assert [type(h).__name__ for h in ip6.all_extension_headers] == [
        "IP6HopOptsHeader",
        "IP6DstOptsHeader",
        "IP6RoutingHeader",
        "IP6DstOptsHeader",
    ]
    assert [h.length for h in ip6.all_extension_headers] == [8, 8, 8, 16]
    chain, segment = _ipv6_chain(frame[14:])
    assert chain == [HOP_BY_HOP, DEST_OPTIONS, ROUTING, DEST_OPTIONS, 6]
    tcp = dpkt.tcp.TCP(segment)
    assert (tcp.sport, tcp.dport, tcp.data) == (1234, 443, b"data")
    assert _transport_ok(ip6, 6, segment)


def test_tcp_ipv6_plain():
    frame = tcp_frame(*V6, 1, 2, flags="A", payload=b"abc", ethernet=False)
    ip6 = dpkt.ip6.IP6(frame)
    assert ip6.nxt == 6 and ip6.data.data == b"abc"
    assert _transport_ok(ip6, 6, frame[40:])


# -- link layer -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vlan", "tpids"),
    [((100,), [0x8100]), ((100, 200), [0x88A8, 0x8100]), ((1, 2, 3), [0x88A8, 0x8100, 0x8100])],
)
def test_vlan_tags(vlan, tpids):
    frame = tcp_frame(*V4, 1, 2, vlan=vlan)
    tags = [struct.unpack_from("!HH", frame, 12 + 4 * i) for i in range(len(vlan))]
    assert tags == list(zip(tpids, vlan, strict=True))
    assert frame[12 + 4 * len(vlan) : 14 + 4 * len(vlan)] == b"\x08\x00"
    if len(vlan) <= 2:
        eth = dpkt.ethernet.Ethernet(frame)
        assert [tag.id for tag in eth.vlan_tags] == list(vlan)
        assert isinstance(eth.data, dpkt.ip.IP)


def test_raw_ip_and_vlan_misuse():
    assert tcp_frame(*V4, 1, 2, ethernet=False)[0] >> 4 == 4
    with pytest.raises(ValueError, match="ethernet=True"):
        tcp_frame(*V4, 1, 2, ethernet=False, vlan=(5,))
    with pytest.raises(ValueError, match="VLAN id"):
        tcp_frame(*V4, 1, 2, vlan=(4096,))


def test_ethernet_frame_custom_macs():
    frame = ethernet_frame(
        b"payload",
        ethertype=0x88B5,
        src_mac=b"\x00\x11\x22\x33\x44\x55",
        dst_mac="ff:ff:ff:ff:ff:ff",
    )
    eth = dpkt.ethernet.Ethernet(frame)
    assert (eth.dst, eth.src, eth.type) == (b"\xff" * 6, bytes.fromhex("001122334455"), 0x88B5)
    with pytest.raises(ValueError, match="aa:bb"):
        ethernet_frame(b"", ethertype=0x0800, src_mac="00:11:22")


def test_sll_headers():
    packet = udp_frame(*V4, 1, 2, b"x", ethernet=False)
    sll = dpkt.sll.SLL(sll_frame(packet, pkttype=4))
    assert (sll.type, sll.hrd, sll.hlen, sll.ethtype) == (4, 1, 6, 0x0800)
    assert len(sll_frame(packet)) == 16 + len(packet)
    sll2 = dpkt.sll2.SLL2(sll2_frame(packet, protocol=0x86DD, ifindex=3))
    assert (sll2.ethtype, sll2.intindex, sll2.hrd, sll2.hlen) == (0x86DD, 3, 1, 6)
    assert len(sll2_frame(packet)) == 20 + len(packet)


# -- UDP and ICMP ---------------------------------------------------------------------


@pytest.mark.parametrize("addrs", [V4, V6])
def test_udp_checksum(addrs):
    frame = udp_frame(*addrs, 5353, 53, b"query", ethernet=False)
    ip = dpkt.ip.IP(frame) if addrs is V4 else dpkt.ip6.IP6(frame)
    udp = ip.data
    assert (udp.sport, udp.dport, udp.ulen, udp.data) == (5353, 53, 13, b"query")
    assert _transport_ok(ip, 17, frame[-13:])


def test_udp_ipv6_extension_headers():
    frame = udp_frame(*V6, 1, 2, b"u", ipv6_ext=[(DEST_OPTIONS, b"")], ethernet=False)
    chain, segment = _ipv6_chain(frame)
    assert chain == [DEST_OPTIONS, 17]
    assert _transport_ok(dpkt.ip6.IP6(frame), 17, segment)


def test_icmp_v4_and_v6():
    v4 = dpkt.ip.IP(icmp_frame(*V4, payload=b"\x00\x01\x00\x02ping", ethernet=False))
    assert (v4.p, v4.data.type, v4.data.code) == (1, 8, 0)
    assert dpkt.in_cksum(bytes(v4)[20:]) == 0
    raw6 = icmp_frame(*V6, payload=b"\x00\x01\x00\x02", ethernet=False)
    v6 = dpkt.ip6.IP6(raw6)
    assert (v6.nxt, v6.data.type) == (58, 128)
    assert _transport_ok(v6, 58, raw6[40:])
    unreachable = dpkt.ip.IP(icmp_frame(*V4, type=3, code=1, ethernet=False))
    assert (unreachable.data.type, unreachable.data.code) == (3, 1)


# -- fragments ------------------------------------------------------------------------


def test_ipv4_fragments_reassemble():
    payload = bytes(range(256)) * 2
    frame = udp_frame(*V4, 1, 2, payload, ip_id=0x4242)
    original = dpkt.ethernet.Ethernet(frame).data
    fragments = ipv4_fragments(frame, fragment_size=120, vlan=(7,))
    assert len(fragments) == 5  # 520 bytes of UDP
    pieces = []
    for index, fragment in enumerate(fragments):
        assert fragment[12:16] == b"\x81\x00\x00\x07"
        eth = dpkt.ethernet.Ethernet(fragment)
        ip = eth.data
        assert ip.id == 0x4242 and ip.p == 17
        assert ip.offset * 8 == 120 * index
        assert bool(ip.mf) == (index < len(fragments) - 1)
        assert _ipv4_header_ok(fragment[18:])
        pieces.append(fragment[18 + ip.hl * 4 : 18 + ip.len])
    assert all(len(piece) == 120 for piece in pieces[:-1])
    assert b"".join(pieces) == bytes(original.data)


def test_ipv4_fragments_copy_only_copied_options():
    record_route = b"\x07\x07\x04" + bytes(4)  # copied flag clear
    router_alert = b"\x94\x04\x00\x00"  # copied flag set
    frame = tcp_frame(
        *V4, 1, 2, payload=bytes(40), ip_options=record_route + router_alert, ethernet=False
    )
    first, second = ipv4_fragments(frame, fragment_size=32, ethernet=False)
    assert dpkt.ip.IP(first).opts == record_route + router_alert + b"\x00"
    assert dpkt.ip.IP(second).opts == router_alert
    assert _ipv4_header_ok(first) and _ipv4_header_ok(second)


def test_ipv4_fragments_misuse():
    frame = udp_frame(*V4, 1, 2, bytes(64))
    with pytest.raises(ValueError, match="multiple of 8"):
        ipv4_fragments(frame, fragment_size=20)
    with pytest.raises(ValueError, match="already an IPv4 fragment"):
        ipv4_fragments(ipv4_fragments(frame, fragment_size=16)[0], fragment_size=8)
    with pytest.raises(ValueError, match="untagged"):
        ipv4_fragments(udp_frame(*V4, 1, 2, vlan=(3,)), fragment_size=8)
    with pytest.raises(ValueError, match="ethertype 0x0800"):
        ipv4_fragments(udp_frame(*V6, 1, 2), fragment_size=8)


def test_ipv6_fragments_keep_unfragmentable_part():
    ext = [
        (HOP_BY_HOP, b""),
        (DEST_OPTIONS, b""),
        (ROUTING, ROUTING_BODY),
        (DEST_OPTIONS, b"\x01\x02\x00\x00"),
    ]
    frame = udp_frame(*V6, 1, 2, bytes(range(100)), ipv6_ext=ext)
    original = frame[14:]
    fragmentable = original[40 + 24 :]  # final destination options + UDP
    fragments = ipv6_fragments(frame, fragment_size=48, identification=0xABCDEF01)
    assert len(fragments) == 3
    pieces = []
    for index, fragment in enumerate(fragments):
        raw = fragment[14:]
        chain, data = _ipv6_chain(raw)
        assert chain == [HOP_BY_HOP, DEST_OPTIONS, ROUTING, FRAGMENT, DEST_OPTIONS]
        assert raw[40 : 40 + 16] == original[40:56]  # hop-by-hop and first dest options unchanged
        assert int.from_bytes(raw[4:6], "big") == len(raw) - 40
        header = dpkt.ip6.IP6FragmentHeader(raw[40 + 24 :])
        assert (header.nxt, header.id, header.m_flag) == (DEST_OPTIONS, 0xABCDEF01, int(index < 2))
        assert header.frag_off * 8 == 48 * index
        pieces.append(data)
    assert b"".join(pieces) == fragmentable


def test_ipv6_fragments_without_extensions():
    frame = tcp_frame(*V6, 1, 2, payload=bytes(30), ethernet=False)
    fragments = ipv6_fragments(frame, fragment_size=32, ethernet=False)
    assert [f[6] for f in fragments] == [FRAGMENT, FRAGMENT]
    assert [f[40] for f in fragments] == [6, 6]
    assert b"".join(f[48:] for f in fragments) == frame[40:]
    (atomic,) = ipv6_fragments(frame, fragment_size=64, ethernet=False)
    assert atomic[42:44] == b"\x00\x00"  # offset 0, M clear


def test_ipv6_fragments_misuse():
    frame = udp_frame(*V6, 1, 2, bytes(40))
    with pytest.raises(ValueError, match="multiple of 8"):
        ipv6_fragments(frame, fragment_size=0)
    with pytest.raises(ValueError, match="Fragment header"):
        ipv6_fragments(ipv6_fragments(frame, fragment_size=16)[0], fragment_size=8)
    with pytest.raises(ValueError, match="ethernet=True"):
        ipv6_fragments(frame[14:], fragment_size=8, ethernet=False, vlan=(1,))


# -- TcpConversation ------------------------------------------------------------------


def _tcp(frame):
    return dpkt.ethernet.Ethernet(frame).data.data


def test_conversation_handshake_and_data():
    conv = TcpConversation(client_isn=1000, server_isn=5000)
    syn, syn_ack, ack = (_tcp(f) for f in conv.handshake())
    assert (syn.seq, syn.ack, syn.flags) == (1000, 0, dpkt.tcp.TH_SYN)
    assert (syn_ack.seq, syn_ack.ack, syn_ack.flags) == (
        5000,
        1001,
        dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK,
    )
    assert (ack.seq, ack.ack, ack.flags) == (1001, 5001, dpkt.tcp.TH_ACK)
    request = _tcp(conv.send("client", b"GET /"))
    assert (request.seq, request.ack, request.data) == (1001, 5001, b"GET /")
    response = _tcp(conv.send("server", b"200 OK"))
    assert (response.seq, response.ack) == (5001, 1006)
    assert (conv.client_seq, conv.server_seq) == (1006, 5007)
    assert (response.sport, response.dport) == (80, 40000)


def test_conversation_fin_consumes_one_and_rst():
    conv = TcpConversation()
    conv.handshake()
    fin = _tcp(conv.fin("client"))
    assert fin.flags == dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK and fin.seq == 1001
    assert conv.client_seq == 1002
    assert _tcp(conv.ack("server")).ack == 1002
    rst = _tcp(conv.rst("server", seq_offset=10))
    assert (rst.seq, rst.ack, rst.flags) == (5011, 0, dpkt.tcp.TH_RST)
    assert conv.server_seq == 5001


def test_conversation_retransmission_and_offsets():
    conv = TcpConversation(client_isn=2**32 - 2)
    conv.handshake()
    assert conv.client_seq == 2**32 - 1
    first = _tcp(conv.send("client", b"abcd"))
    again = _tcp(conv.send("client", b"abcd", advance=False, seq_offset=-4))
    assert first.seq == again.seq == 2**32 - 1
    assert conv.client_seq == 3  # wrapped past 2**32
    ahead = _tcp(conv.send("client", b"zz", seq_offset=4))
    assert ahead.seq == 7 and conv.client_seq == 9
    gap = _tcp(conv.send("client", b"wxyz", seq_offset=-6))
    assert gap.seq == 3 and conv.client_seq == 9


def test_conversation_tfo_syn_ipv6_vlan_and_timestamps():
    conv = TcpConversation(
        ("fd00::1", 1111), ("fd00::2", 443), vlan=(10, 20), start_ts=5.0, ts_step=0.5
    )
    frame = conv.syn(payload=b"early", options=tcp_options(fastopen_cookie=b"c" * 8))
    assert conv.client_seq == 1000 + 1 + 5
    assert _tcp(conv.syn_ack()).ack == 1006
    eth = dpkt.ethernet.Ethernet(frame)
    assert [t.id for t in eth.vlan_tags] == [10, 20] and isinstance(eth.data, dpkt.ip6.IP6)
    assert eth.src == _mac(DEFAULT_SRC_MAC)
    assert dpkt.ethernet.Ethernet(conv.frames[1][1]).src == _mac(DEFAULT_DST_MAC)
    assert [ts for ts, _ in conv.frames] == [5.0, 5.5]
    assert conv.frames[0][1] == frame


def test_conversation_misuse():
    conv = TcpConversation()
    with pytest.raises(ValueError, match="'client' or 'server'"):
        conv.send("server ", b"x")
    with pytest.raises(ValueError, match="same IP family"):
        TcpConversation(("10.0.0.1", 1), ("fd00::1", 2))
    with pytest.raises(ValueError, match="unknown TCP flag"):
        conv.send("client", b"x", flags="PX")
    assert conv.frames == []


# -- misuse of the builders -----------------------------------------------------------


def test_builder_misuse_messages():
    with pytest.raises(ValueError, match="same IP family"):
        tcp_frame("10.0.0.1", "fd00::1", 1, 2)
    with pytest.raises(ValueError, match=r"unknown TCP flag letter\(s\) 'Zs'"):
        tcp_frame(*V4, 1, 2, flags="Zs")
    with pytest.raises(ValueError, match=r"sport must be in 0\.\.65535"):
        tcp_frame(*V4, 70000, 2)
    with pytest.raises(TypeError, match="payload must be bytes"):
        tcp_frame(*V4, 1, 2, payload="text")
    with pytest.raises(ValueError, match="ipv6_ext needs IPv6"):
        tcp_frame(*V4, 1, 2, ipv6_ext=[(DEST_OPTIONS, b"")])
    with pytest.raises(ValueError, match="ip_options is IPv4-only"):
        tcp_frame(*V6, 1, 2, ip_options=b"\x01")
    with pytest.raises(ValueError, match="type must be one of 0, 43, 60"):
        tcp_frame(*V6, 1, 2, ipv6_ext=[(44, b"")])
    with pytest.raises(ValueError, match="hop-by-hop"):
        tcp_frame(*V6, 1, 2, ipv6_ext=[(DEST_OPTIONS, b""), (HOP_BY_HOP, b"")])
    with pytest.raises(ValueError, match="maximum is 65535"):
        udp_frame(*V4, 1, 2, bytes(65510))


# -- capture files --------------------------------------------------------------------


def _sample_frames():
    conv = TcpConversation()
    conv.handshake()
    conv.send("client", b"hello")
    return conv.frames


@pytest.mark.parametrize("byteorder", ["little", "big"])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_write_pcap_roundtrip(tmp_path, byteorder, nanosecond):
    path = tmp_path / "c.pcap"
    frames = [(1.5, b"a" * 60), (1_700_000_000_123_456_789, b"b" * 70), (2.25, b"c" * 80, 1500)]
    write_pcap(path, frames, nanosecond=nanosecond, byteorder=byteorder, snaplen=64)
    raw = path.read_bytes()
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    assert raw[:4] == magic.to_bytes(4, byteorder)
    with open(path, "rb") as file:
        reader = dpkt.pcap.Reader(file)
        assert reader.datalink() == LINKTYPE_ETHERNET and reader.snaplen == 64
        records = list(reader)
    assert [buf for _, buf in records] == [b"a" * 60, b"b" * 64, b"c" * 64]
    assert float(records[0][0]) == 1.5 and float(records[2][0]) == 2.25
    expected = "1700000000.123456789" if nanosecond else "1700000000.123456"
    assert f"{records[1][0]:.{9 if nanosecond else 6}f}" == expected
    orig_lens = [
        struct.unpack_from(("<" if byteorder == "little" else ">") + "I", raw, off + 12)[0]
        for off in (24, 24 + 16 + 60, 24 + 16 + 60 + 16 + 64)
    ]
    assert orig_lens == [60, 70, 1500]


def test_write_pcap_to_file_object_and_linktypes():
    buffer = io.BytesIO()
    packet = tcp_frame(*V4, 1, 2, ethernet=False)
    write_pcap(buffer, [(0.0, packet)], linktype=LINKTYPE_RAW)
    buffer.seek(0)
    reader = dpkt.pcap.Reader(buffer)
    assert reader.datalink() == LINKTYPE_RAW
    assert isinstance(dpkt.ip.IP(next(iter(reader))[1]), dpkt.ip.IP)
    for linktype, wrap in ((LINKTYPE_LINUX_SLL, sll_frame), (LINKTYPE_LINUX_SLL2, sll2_frame)):
        buffer = io.BytesIO()
        write_pcap(buffer, [(0.0, wrap(packet))], linktype=linktype)
        buffer.seek(0)
        assert dpkt.pcap.Reader(buffer).datalink() == linktype


def test_write_pcap_misuse(tmp_path):
    with pytest.raises(ValueError, match="'little' or 'big'"):
        write_pcap(tmp_path / "x.pcap", [], byteorder="network")
    with pytest.raises(ValueError, match=r"\(ts, frame\) or \(ts, frame, wire_len\)"):
        write_pcap(tmp_path / "x.pcap", [b"frame"])
    with pytest.raises(ValueError, match="wire_len"):
        write_pcap(tmp_path / "x.pcap", [(0.0, b"abc", 2)])
    with pytest.raises(TypeError, match="float seconds or int nanoseconds"):
        write_pcap(tmp_path / "x.pcap", [("now", b"abc")])
    with pytest.raises(ValueError, match="non-negative"):
        write_pcap(tmp_path / "x.pcap", [(-1.0, b"abc")])
    assert not (tmp_path / "x.pcap").exists()


@pytest.mark.parametrize("byteorder", ["little", "big"])
@pytest.mark.parametrize("tsresol", [6, 9])
def test_write_pcapng_roundtrip(tmp_path, byteorder, tsresol):
    path = tmp_path / "c.pcapng"
    frames = [*_sample_frames(), (1_700_000_000_123_456_789, b"odd-length")]
    write_pcapng(path, frames, interfaces=[(LINKTYPE_ETHERNET, tsresol)], byteorder=byteorder)
    raw = path.read_bytes()
    assert raw[8:12] == (0x1A2B3C4D).to_bytes(4, byteorder)
    with open(path, "rb") as file:
        reader = dpkt.pcapng.Reader(file)
        assert reader.datalink() == LINKTYPE_ETHERNET
        records = list(reader)
    assert [buf for _, buf in records] == [frame for _, frame in frames]
    assert [round(ts, 6) for ts, _ in records[:4]] == [1.0, 1.001, 1.002, 1.003]
    expected = 1_700_000_000.123456789 if tsresol == 9 else 1_700_000_000.123456
    assert records[4][0] == pytest.approx(expected, abs=1e-6)
    assert (b"\x09\x00\x01\x00" in raw or b"\x00\x09\x00\x01" in raw) == (tsresol == 9)


def test_write_pcapng_interfaces(tmp_path):
    buffer = io.BytesIO()
    packet = udp_frame(*V4, 1, 2, b"x", ethernet=False)
    write_pcapng(
        buffer,
        [(1.0, packet, 1), (2.0, udp_frame(*V4, 1, 2, b"y"))],
        interfaces=[(LINKTYPE_ETHERNET, 6), (LINKTYPE_RAW, 9)],
    )
    raw = buffer.getvalue()
    blocks, position = [], 0
    while position < len(raw):
        block_type, length = struct.unpack_from("<II", raw, position)
        assert (
            length % 4 == 0 and struct.unpack_from("<I", raw, position + length - 4)[0] == length
        )
        blocks.append((block_type, raw[position + 8 : position + length - 4]))
        position += length
    assert [t for t, _ in blocks] == [0x0A0D0D0A, 1, 1, 6, 6]
    assert struct.unpack_from("<H", blocks[2][1])[0] == LINKTYPE_RAW
    interface, high, low, caplen = struct.unpack_from("<IIII", blocks[3][1])
    assert (interface, (high << 32 | low), caplen) == (1, 10**9, len(packet))
    with pytest.raises(ValueError, match="interface_index 2 is out of range"):
        write_pcapng(io.BytesIO(), [(0.0, b"x", 2)], interfaces=[(1, 6), (1, 6)])


def test_gzip_file(tmp_path):
    path = tmp_path / "c.pcap"
    write_pcap(path, _sample_frames())
    gz_path = gzip_file(path)
    assert gz_path == str(path) + ".gz"
    with gzip.open(gz_path, "rb") as file:
        assert len(list(dpkt.pcap.Reader(file))) == 4
    assert path.exists()


# -- tshark cross-check ---------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_agrees_on_checksums_and_reassembly(tmp_path):
    ext = [(HOP_BY_HOP, b""), (ROUTING, ROUTING_BODY), (DEST_OPTIONS, b"\x01\x00")]
    # (frame, the status field tshark must report), None for non-final fragments.
    checked = [
        (
            tcp_frame(
                *V4, 1000, 80, flags="PA", payload=b"abc", options=tcp_options(mss=1400, wscale=2)
            ),
            "tcp",
        ),
        (tcp_frame(*V4, 1000, 80, flags="S", vlan=(5, 6), ip_options=b"\x94\x04\x00\x00"), "tcp"),
        (tcp_frame(*V6, 1000, 80, flags="SA", payload=b"x" * 33, ipv6_ext=ext, vlan=(9,)), "tcp"),
        (udp_frame(*V4, 5000, 5001, b"datagram"), "udp"),
        (udp_frame(*V6, 5000, 5001, b"datagram6", ipv6_ext=[(DEST_OPTIONS, b"")]), "udp"),
        (icmp_frame(*V4, payload=b"\x00\x01\x00\x01"), "icmp"),
        (icmp_frame(*V6, payload=b"\x00\x01\x00\x01"), "icmpv6"),
    ]
    for fragments in (
        ipv4_fragments(udp_frame(*V4, 7, 8, bytes(range(200)), ip_id=77), fragment_size=64),
        ipv6_fragments(udp_frame(*V6, 7, 8, bytes(range(200)), ipv6_ext=ext), fragment_size=64),
    ):
        checked += [(fragment, None) for fragment in fragments[:-1]] + [(fragments[-1], "udp")]
    frames = [frame for frame, _ in checked] + [tcp_frame(*V4, 1, 2, bad_checksum=True)]
    path = tmp_path / "checks.pcapng"
    write_pcapng(path, [(float(i), frame) for i, frame in enumerate(frames)], interfaces=[(1, 9)])
    protocols = ["ip", "tcp", "udp", "icmp", "icmpv6"]
    fields = [f"{proto}.checksum.status" for proto in protocols] + ["udp.length", "_ws.malformed"]
    command = [
        "tshark",
        "-n",
        "-r",
        str(path),
        "-T",
        "fields",
        "-E",
        "occurrence=l",
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
    ]
    for field in fields:
        command += ["-e", field]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    rows = [
        dict(zip([*protocols, "udp.length", "malformed"], line.split("\t"), strict=True))
        for line in output.splitlines()
    ]
    assert len(rows) == len(frames)
    for row, (_, required) in zip(rows[:-1], checked, strict=True):
        assert all(row[proto] in ("", "1") for proto in protocols), row
        assert required is None or row[required] == "1", row
        assert not row["malformed"], row
    assert [row["udp.length"] for row in rows if row["udp.length"]][-2:] == [
        "208",
        "208",
    ]  # reassembled
    assert rows[-1]["tcp"] == "0" and rows[-1]["ip"] == "1"
