"""``aiomb flows`` against tshark's per-flow oracle for every capture of the corpus.

For each capture: the same TCP flows (5-tuples), the same client/server orientation, the same
packets per side; UDP flow counts equal tshark's UDP stream counts (oracle-summary.json).
Differences that are justified are listed in JUSTIFIED with the reason, and checked too.
"""

import collections
import json

import pytest

import aiomb

from ..conftest import corpus_path, oracle_records

TCP_REASSEMBLY = "pcapplusplus/Tests/ExamplesTest/pcap_examples/tcp-reassembly.pcap"
FRAGMENTED = "zeek/testing/btest/Traces/ipv4/fragmented-4.pcap"

# (pcap, client_ip, client_port, server_ip, server_port) -> why aiomb rightly has no such flow
JUSTIFIED = {
    (TCP_REASSEMBLY, "172.16.133.6", 59187, "172.16.128.201", 443):
        "tshark's stream exists only inside an sFlow sample: frame 66 is a UDP sFlow datagram "
        "whose sampled packet headers tshark dissects as TCP; a middlebox must not count "
        "sampled headers as traffic of that connection",
}


# (pcap, client_ip, client_port, server_ip, server_port) -> ((client, server) packets aiomb counts, why)
PACKETS_JUSTIFIED = {
    (FRAGMENTED, "128.32.46.142", 7790, "10.0.0.1", 80): (
        (1, 0), "frame 5 is an IP fragment ([24, 72)) overlapping held ones ([48, 89), which came in order) "
                "with other bytes: Linux drops the datagram (RFC 5722 for IPv6), and so does aiomb; tshark "
                "reassembles it and counts its segment"),
}


def by_pcap() -> dict[str, list[dict]]:
    groups = collections.defaultdict(list)
    for rec in oracle_records():
        groups[rec["pcap"]].append(rec)
    return dict(groups)


def udp_stream_counts() -> dict[str, int]:
    with open(corpus_path() / "oracle-summary.json") as fh:
        return {p["pcap"]: p["tshark_udp_streams"] for p in json.load(fh)["pcaps"]}


def run_flows(path) -> list[dict]:
    return list(aiomb.read_flows(path))


def key(rec) -> tuple:
    return (rec["client_ip"], rec["client_port"], rec["server_ip"], rec["server_port"])


@pytest.mark.parametrize("pcap", sorted(by_pcap()))
def test_flows_match_tshark(pcap):
    got = run_flows(corpus_path() / pcap)
    got_tcp = {key(r): r for r in got if r["proto"] == "tcp"}
    exp_tcp = {key(r): r for r in by_pcap()[pcap] if (pcap,) + key(r) not in JUSTIFIED}
    assert sorted(got_tcp) == sorted(exp_tcp), "TCP flows or client/server orientation differ"
    for k, exp in exp_tcp.items():
        r = got_tcp[k]
        want, _ = PACKETS_JUSTIFIED.get((pcap,) + k, ((exp["packets"]["client"], exp["packets"]["server"]), ""))
        assert (r["client_packets"], r["server_packets"]) == want, f"packets per side of {k}"
    udp = udp_stream_counts()
    if pcap in udp:
        assert sum(r["proto"] == "udp" for r in got) == udp[pcap]


def test_justified_differences_are_real():
    """Each justified difference names a flow the oracle has and aiomb does not."""
    oracle = {(r["pcap"],) + key(r) for r in oracle_records()}
    for entry in JUSTIFIED:
        assert entry in oracle
        got = {key(r) for r in run_flows(corpus_path() / entry[0])}
        assert entry[1:] not in got
    for entry, (counts, _) in PACKETS_JUSTIFIED.items():
        (rec,) = [r for r in by_pcap()[entry[0]] if key(r) == entry[1:]]
        assert (rec["packets"]["client"], rec["packets"]["server"]) != counts
