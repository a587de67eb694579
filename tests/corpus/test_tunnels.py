"""Tunnelled traffic (GRE, ERSPAN, PPTP, IP-in-IP, 6in4, 4in6, 6in6, VXLAN, Geneve, Teredo, GTP-U,
AYIYA), copied from Zeek's and suricata-verify's test traces (see data/ADDED.md), against tshark.

tshark's PDML (``-T pdml``) lists a frame's protocol layers in the order it dissected them, as the
``<proto>`` elements directly under ``<packet>``, each holding its own fields; what a layer quotes (the
IP header and transport ports an ICMP error carries) is nested inside that layer, not a layer of its
own, so walking the top-level elements only sees the packets the frame carries. ``-T fields -E
occurrence=a`` cannot tell which ``ip.src`` goes with which ``udp.srcport`` once IPv4 and IPv6
layers mix (4in6, 6in4, Teredo), and ``-T json`` merges repeated keys; PDML keeps the order.

What aiomb should report (the tunnel semantics, aiomb/flows/_stats.py and the core): every TCP or
UDP layer tshark dissects is one packet of the flow (proto, source, source port, destination,
destination port), with the addresses of the IP layer just before it. A UDP tunnel's datagram (VXLAN,
Geneve, Teredo, GTP-U, AYIYA) is so its outer UDP flow's packet and its inner packet its own flow's;
an IP-protocol tunnel (IP-in-IP, GRE, ERSPAN, PPTP) has no TCP or UDP layer of its own, only the
inner one. A fragmented datagram is dissected once, in the frame that completes it (tshark
reassembles IP fragments, outer and inner), so it counts once there.

tshark decodes more than aiomb follows (GRE in UDP on port 4754, Aruba's WLAN-in-GRE, PPP in GRE
version 0, GTP on other ports, heuristic dissectors): ``check_tunnels_followed`` fails on a capture
where tshark goes through a tunnel the semantics do not, so a capture here never needs its expectation
bent. The statistics test counts what each packet ends in (TCP, UDP, another IP protocol, not IP;
a fragment completing no datagram, nothing), the packets inside UDP tunnels and the IP fragments, as
aiomb's counters do; that is what checks the captures whose inner packets are all ICMP (the ERSPAN
types), which make no flow.
"""

import collections
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

import aiomb

from ..conftest import corpus_path

ZEEK = "zeek/testing/btest/Traces/"
SV = "suricata-verify/tests/"
CAPTURES = {
    ZEEK + "tunnels/4in4.pcap": "IP-in-IP (IPv4 in IPv4)",
    ZEEK + "tunnels/6in4.pcap": "6in4 (IPv6 in IPv4)",
    ZEEK + "tunnels/4in6.pcap": "4in6 (IPv4 in IPv6)",
    ZEEK + "tunnels/6in6in6.pcap": "6in6 in 6in6",
    ZEEK + "tunnels/6in6-tunnel-change.pcap": "6in6: one inner flow through two tunnels",
    ZEEK + "tunnels/gre-sample.pcap": "GRE (IPv4 inside)",
    SV + "bug-5633-gre-01/gre-udp.pcap": "GRE (IPv4 inside), VLAN outside",
    ZEEK + "tunnels/gre-within-gre.pcap": "GRE in GRE",
    ZEEK + "tunnels/gre-over-udp-4754.pcap": "GRE in UDP (port 4754)",
    SV + "defrag/bug-6942-6887-defrag-eth-ip-gre-ppp-ip-udp-data/eth-ip-gre-ppp-max-ip-packet.pcap":
        "PPP in GRE version 0; outer IP fragments",
    ZEEK + "tunnels/gre-aruba.pcap": "Aruba GRE: 802.11 frames inside",
    ZEEK + "tunnels/gre-aruba-ccmp.pcap": "Aruba GRE: a protected (CCMP) 802.11 frame",
    ZEEK + "tunnels/gre-aruba-amsdu.pcap": "Aruba GRE: an 802.11 A-MSDU",
    ZEEK + "tunnels/tunnel-direct-bypass.pcap": "GRE, the same flow also not tunnelled",
    ZEEK + "erspan.pcap": "GRE with a key, Ethernet inside (0x6558); outer IP fragments",
    ZEEK + "erspanI.pcap": "ERSPAN type I",
    SV + "decode-erspan-typeII-01/input.pcap": "ERSPAN type II: IPv4 and CDP",
    ZEEK + "erspanIII.pcap": "ERSPAN type III",
    ZEEK + "tunnels/gre-erspan3-dot1q.pcap": "ERSPAN type III with its optional header, VLAN inside",
    ZEEK + "tunnels/gre-pptp.pcap": "PPTP (GRE version 1, with and without A), in IPv4 in IPv6",
    ZEEK + "tunnels/vxlan-encapsulated-http.pcap": "VXLAN",
    SV + "vxlan-decoder-03/vxlan.pcap": "VXLAN",
    SV + "vxlan-decoder-02/vxlan.pcap": "VXLAN: ICMP and ARP",
    SV + "vxlan-non-zero-reserved-fields/input.pcap": "VXLAN, reserved fields set",
    ZEEK + "tunnels/vxlan-triple-v2.pcap": "VXLAN in VXLAN in VXLAN",
    ZEEK + "tunnels/geneve-47101.pcap": "Geneve with options",
    ZEEK + "tunnels/geneve-ipv6.pcap": "Geneve, IPv6 inside (0x86DD)",
    ZEEK + "tunnels/geneve-tagged-udp-packet.pcap": "Geneve, VLAN inside",
    ZEEK + "tunnels/geneve-arp.pcap": "Geneve, ARP inside (0x0806)",
    ZEEK + "tunnels/Teredo.pcap": "Teredo",
    ZEEK + "tunnels/teredo_bubble_with_payload.pcap": "Teredo, a bubble with bytes after its IPv6 header",
    ZEEK + "tunnels/gtp/gtp8_teredo.pcap": "Teredo inside GTP-U, bubbles with bytes after them",
    ZEEK + "tunnels/gtp/gtp6_gtp_0x32.pcap": "GTP-U, some with S",
    ZEEK + "tunnels/gtp/gtp7_ipv6.pcap": "GTP-U, IPv6 inside",
    ZEEK + "tunnels/gtp/gtp_ext_header.pcap": "GTP-U with an extension header, in two outer IP fragments",
    ZEEK + "tunnels/gtp/gtp1_gn_normal_incl_fragmentation.pcap": "GTP-U, outer IP fragments",
    ZEEK + "tunnels/gtp/gtp4_udp_2152_inside.pcap": "GTP-U, inner UDP from port 2152",
    ZEEK + "tunnels/ayiya3.pcap": "AYIYA",
    ZEEK + "tunnels/ayiya-large-identity.pcap": "AYIYA, a 256-byte identity",
}

# The UDP tunnels the semantics follow: the port they are found on (the destination port, or either),
# and the layers tshark may find first in what they carry (None: any, by the header's protocol type).
UDP_TUNNELS = {"vxlan": ("dst", 4789, {"eth"}), "gre": ("dst", 4754, None), "geneve": ("dst", 6081, None),
               "teredo": ("any", 3544, {"ipv6"}), "gtp": ("any", 2152, {"ip", "ipv6"}),
               "ayiya": ("any", 5072, {"ip", "ipv6"})}
ARUBA_TYPES = {*range(0x8200, 0x8300, 0x10), *range(0x8300, 0x8380, 0x10), 0x9000}
GRE_TYPES = {0: {0x0800, 0x86DD, 0x6558, 0x88BE, 0x22EB, 0x8847, 0x8848, 0x880B, *ARUBA_TYPES}, 1: {0x880B}}
IP_LAYERS = ("ip", "ipv6")


class Layer:
    """One top-level ``<proto>`` of a PDML packet: its name and its own fields, the first value of
    each (with those of the IPv6 extension headers, which PDML nests in their IPv6 layer, but not
    those of what a layer quotes, nested in it too)."""

    def __init__(self, element):
        self.name = element.get("name")
        self.pos = int(element.get("pos", 0))
        self.fields = {}
        stack = list(element)
        while stack:
            e = stack.pop(0)
            if e.tag == "field" or e.get("name", "").startswith(self.name + "."):
                if e.tag == "field":
                    self.fields.setdefault(e.get("name"), e.get("show"))
                stack[:0] = list(e)

    def __repr__(self):
        return self.name

    def fragment(self) -> bool:
        """An IPv4 or IPv6 layer of a fragment (complete or not)."""
        f = self.fields
        return f.get("ip.flags.mf") == "1" or f.get("ip.frag_offset", "0") != "0" \
            or f.get("ipv6.fraghdr.more") == "1" or f.get("ipv6.fraghdr.offset", "0") != "0"


def tshark_frames(path) -> list[list[Layer]]:
    """Every frame's top-level protocol layers, in order (tshark's default preferences: IP
    fragments reassembled, outer and inner)."""
    out = subprocess.run(["tshark", "-r", str(path), "-T", "pdml"], capture_output=True, check=True).stdout
    return [[Layer(p) for p in packet.findall("proto") if p.get("name") not in ("geninfo", "fake-field-wrapper")]
            for packet in ET.fromstring(out).findall("packet")]


def tunnel_at(layers, i) -> str | None:
    """The UDP tunnel whose header follows the UDP layer ``layers[i]`` and carries a packet, if any."""
    if i + 2 < len(layers) and layers[i + 1].name in UDP_TUNNELS:
        inner = UDP_TUNNELS[layers[i + 1].name][2]
        if inner is None or layers[i + 2].name in inner:
            return layers[i + 1].name
    return None


def header_followed(name, udp, header, inner) -> bool:
    """Whether the semantics follow the UDP tunnel header tshark went through: VXLAN with its I flag,
    GRE version 0 without routing,
    Geneve version 0, Teredo whose IPv6 packet fits the datagram, GTP-U's G-PDU (version 1,
    PT 1, type 255), AYIYA forwarding IPv4 or IPv6."""
    if name == "vxlan":
        return header.get("vxlan.flag_i") == "1"
    if name == "gre":
        return int(header["gre.flags_and_version"], 16) & 0x4007 == 0
    if name == "geneve":
        return header.get("geneve.version") == "0"
    if name == "teredo":
        return inner.pos + 40 + int(inner.fields["ipv6.plen"]) <= udp.pos + int(udp.fields["udp.length"])
    if name == "gtp":
        return int(header["gtp.flags"], 16) & 0xF0 == 0x30 and int(header["gtp.message"], 16) == 255
    return int(header["ayiya.opcode"], 16) == 1 and int(header["ayiya.nextheader"], 16) in (4, 41)


def check_tunnels_followed(layers, frame):
    """Fails where tshark goes through a tunnel the semantics do not follow (the capture would then
    not test them): a UDP datagram carrying Ethernet or IP is one of UDP_TUNNELS, on its port, with a
    header the semantics follow; a GRE header tshark goes through carries one of GRE_TYPES, with no routing."""
    for i, layer in enumerate(layers):
        if layer.name == "udp" and any(n.name in IP_LAYERS + ("eth",) for n in layers[i + 1:]):
            name = tunnel_at(layers, i)
            assert name, f"frame {frame}: tshark follows {layers[i + 1].name} in UDP"
            where, port, _ = UDP_TUNNELS[name]
            ports = [int(layer.fields["udp.dstport"])] + ([int(layer.fields["udp.srcport"])] if where == "any" else [])
            assert port in ports, f"frame {frame}: tshark follows {name} on UDP ports {ports}"
            assert header_followed(name, layer, layers[i + 1].fields, layers[i + 2]), \
                f"frame {frame}: tshark follows a {name} header the semantics do not"
        if layer.name == "gre" and i + 1 < len(layers):
            version = int(layer.fields["gre.flags_and_version"], 16)
            assert not version & 0x4000, f"frame {frame}: GRE with routing (R) followed"
            assert int(layer.fields["gre.proto"], 16) in GRE_TYPES.get(version & 7, ()), \
                f"frame {frame}: GRE version {version & 7} type {layer.fields['gre.proto']} followed"


def packets_of(layers) -> list[list[Layer]]:
    """A frame's packets: the frame's layers, cut after each UDP tunnel's header (the datagram is
    one packet, what it carries another)."""
    packets, start = [], 0
    for i, layer in enumerate(layers):
        if layer.name == "udp" and tunnel_at(layers, i):
            packets.append(layers[start:i + 2])
            start = i + 2
    return packets + [layers[start:]]


def ending(packet) -> str | None:
    """What a packet ends in, as aiomb counts it: ``tcp_packets``, ``udp_packets``,
    ``other_protocol`` (IP, innermost, carrying neither; a PPTP acknowledgement, GRE version 1 with
    nothing inside) or ``non_ip`` (its link, or its innermost tunnel, carries no IP); None for a
    fragment that completes no datagram."""
    last_ip = max((i for i, layer in enumerate(packet) if layer.name in IP_LAYERS), default=None)
    if last_ip is None:
        return "non_ip"
    after = packet[last_ip + 1:]
    if packet[last_ip].fragment() and all(layer.name == "data" for layer in after):
        return None
    if after and after[0].name in ("tcp", "udp"):
        return f"{after[0].name}_packets"
    if after and after[0].name == "gre":
        pptp_ack = len(after) == 1 and int(after[0].fields["gre.flags_and_version"], 16) & 7 == 1
        return "other_protocol" if pptp_ack else "non_ip"
    return "other_protocol"


def tshark_directions(frames) -> collections.Counter:
    """Packets per (proto, source, source port, destination, destination port): every TCP and UDP
    layer, with the addresses of the IP layer before it."""
    counts = collections.Counter()
    for layers in frames:
        src = dst = None
        for layer in layers:
            if layer.name in IP_LAYERS:
                src, dst = layer.fields.get(f"{layer.name}.src"), layer.fields.get(f"{layer.name}.dst")
            elif layer.name in ("tcp", "udp"):
                sport, dport = int(layer.fields[f"{layer.name}.srcport"]), int(layer.fields[f"{layer.name}.dstport"])
                counts[layer.name, src, sport, dst, dport] += 1
    return counts


def tshark_statistics(frames) -> dict:
    """aiomb's counters as tshark's layers give them: each packet by what it ends in, the packets
    inside UDP tunnels, every IP fragment (outer or inner)."""
    counts = dict.fromkeys(("tcp_packets", "udp_packets", "non_ip", "other_protocol", "tunneled_packets",
                            "fragments_received"), 0)
    for layers in frames:
        packets = packets_of(layers)
        counts["tunneled_packets"] += len(packets) - 1
        counts["fragments_received"] += sum(layer.name in IP_LAYERS and layer.fragment() for layer in layers)
        for packet in packets:
            if ending(packet):
                counts[ending(packet)] += 1
    return counts


def aiomb_directions(records) -> collections.Counter:
    counts = collections.Counter()
    for r in records:
        client = (r["client_ip"], r["client_port"])
        server = (r["server_ip"], r["server_port"])
        counts[(r["proto"], *client, *server)] += r["client_packets"]
        counts[(r["proto"], *server, *client)] += r["server_packets"]
    return +counts


needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (apt install tshark)")
each_capture = pytest.mark.parametrize("pcap", sorted(CAPTURES), ids=lambda p: "/".join(p.split("/")[-2:]))


@needs_tshark
@each_capture
def test_tunnelled_flows_match_tshark(pcap):
    frames = tshark_frames(corpus_path() / pcap)
    for n, layers in enumerate(frames, 1):
        check_tunnels_followed(layers, n)
    expected = tshark_directions(frames)
    assert aiomb_directions(aiomb.read_flows(corpus_path() / pcap)) == expected


@needs_tshark
@each_capture
def test_tunnelled_packets_counted_as_tshark_ends_them(pcap):
    frames = tshark_frames(corpus_path() / pcap)
    assert not any(layer.name == "_ws.malformed" for layers in frames for layer in layers), "tshark: malformed"
    run = aiomb.FlowRun(corpus_path() / pcap, midstream=True)
    for _ in run:
        pass
    stats = run.statistics()
    assert stats.packets == len(frames) and not stats.malformed
    expected = tshark_statistics(frames)
    assert {k: getattr(stats, k) for k in expected} == expected
