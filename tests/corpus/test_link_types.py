"""Captures of other link types (PPP, Cisco HDLC, FDDI, 802.11, radiotap, NFLOG) and of PPPoE, copied from
suricata-verify and Zeek's test traces (see data/ADDED.md), against tshark: the same TCP and UDP
flows, with the same packets in each direction."""

import collections
import shutil
import struct
import subprocess

import pytest

import aiomb

from ..conftest import corpus_path

CAPTURES = {
    "suricata-verify/tests/bug-4810/pppoe-session-http.pcap": 1,         # PPPoE, the PPP protocol compressed
    "suricata-verify/tests/decode-chdlc-01/hdlc-http_1tx.pcap": 104,
    "suricata-verify/tests/defrag/bug-6887-defrag-ppp-ipv6-tcp/frag-ppp-ipv6-tcp.pcap": 9,
    "zeek/testing/btest/Traces/ppp/quic-interop-retry.pcap": 9,
    "zeek/testing/btest/Traces/dns-inverse-query.pcap": 10,
    "zeek/testing/btest/Traces/wlanmon.pcap": 105,
    "zeek/testing/btest/Traces/radiotap.pcap": 127,
    "zeek/testing/btest/Traces/nflog-http.pcap": 239,
}
FIELDS = ("frame.protocols", "ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "tcp.srcport", "udp.srcport",
          "tcp.dstport", "udp.dstport")


def tshark_directions(path) -> collections.Counter:
    """Packets per (proto, source, source port, destination, destination port), as tshark reads them
    (a fragmented datagram counts once, in the frame that completes it)."""
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", *(a for f in FIELDS for a in ("-e", f)),
                          "-E", "occurrence=l"], capture_output=True, text=True, check=True).stdout
    counts = collections.Counter()
    for line in out.splitlines():
        protocols, src4, src6, dst4, dst6, tsport, usport, tdport, udport = line.split("\t")
        proto = "tcp" if ":tcp" in protocols else "udp" if ":udp" in protocols else None
        if proto and (tsport or usport):
            counts[proto, src4 or src6, int(tsport or usport), dst4 or dst6, int(tdport or udport)] += 1
    return counts


def aiomb_directions(path) -> collections.Counter:
    counts = collections.Counter()
    for r in aiomb.read_flows(path):
        client = (r["client_ip"], r["client_port"])
        server = (r["server_ip"], r["server_port"])
        counts[(r["proto"], *client, *server)] += r["client_packets"]
        counts[(r["proto"], *server, *client)] += r["server_packets"]
    return +counts


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (apt install tshark)")
@pytest.mark.parametrize("pcap", sorted(CAPTURES), ids=lambda p: p.split("/")[-1])
def test_flows_of_other_link_types_match_tshark(pcap):
    path = corpus_path() / pcap
    header = path.read_bytes()[:24]
    assert struct.unpack_from("<I" if header[:4] == b"\xd4\xc3\xb2\xa1" else ">I", header, 20)[0] == CAPTURES[pcap]
    expected = tshark_directions(path)
    assert expected, "tshark sees TCP or UDP packets in every one of these captures"
    assert aiomb_directions(path) == expected

