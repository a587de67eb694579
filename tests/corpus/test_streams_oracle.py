"""Reassembled streams against tshark's oracle for every TCP flow of the corpus.

Under the default ``first`` overlap policy each flow side's reassembled length, SHA-256 and
gap list equal oracle-tshark.jsonl. Where aiomb is right and tshark is not, or where aiomb
follows another documented semantic, JUSTIFIED says why and a test checks the other oracle.
"""

import collections
import hashlib

import pytest
import trio

import aiomb

from ..conftest import corpus_path, oracle_records

UNIDIRECTIONAL = "pcapplusplus/Tests/Pcap++Test/PcapExamples/unidirectional_tcp_stream_with_missing_packet.pcap"
RST_WITH_DATA = "suricata-verify/tests/bug-6244-tcp-rst-with-data/tcp-rst-with-data.pcap"
RST_UNACKED = "suricata-verify/tests/tcp-rst-unacked-stream-01-raw/input.pcap"
FRAGMENTED = "zeek/testing/btest/Traces/ipv4/fragmented-4.pcap"
MISS_END = "zeek/testing/btest/Traces/tcp/miss_end_data.pcap"
ONE_STREAM = "pcapplusplus/Tests/Pcap++Test/PcapExamples/one_tcp_stream.pcap"

# (pcap, client port, side) -> why aiomb differs from tshark there
JUSTIFIED = {
    (UNIDIRECTIONAL, 61541, "client"):
        "tshark drops data queued behind a hole no captured ACK covers; aiomb reports the hole "
        "as a gap when the flow ends and delivers the 7108 bytes after it (as PcapPlusPlus does)",
    (RST_WITH_DATA, 12345, "client"):
        "a RST's payload is not part of the stream by default (Suricata's semantics, pinned by "
        "bug-6244: its stream-only rule does not see 'Access Denied'); rst_payload=True keeps it",
    (RST_UNACKED, 12345, "client"):
        "the client's RST carries 13 bytes: not part of the stream by default (as above)",
    (FRAGMENTED, 7790, "client"):
        "an IP fragment overlaps held ones with different bytes: Linux drops the datagram, and so "
        "does aiomb (counting the overlap); tshark reassembles it, keeping the last copy",
    (MISS_END, 60648, "server"):
        "the server's 2902-byte response was ACKed but never captured: aiomb reports it as a "
        "gap at offset 0 (Zeek: content_gap(resp, seq 1, len 2902)); tshark lists no gap",
}

# (pcap, client port, side) -> (bytes the raw segments count as conflicting that aiomb does not, why)
NOT_CONFLICTS = {
    (ONE_STREAM, 61541, "client"):
        (1, "frame 17 sends the last byte the server ACKed again, with another value: a keep-alive "
            "(tshark's tcp.analysis.keep_alive), which the receiver drops as old"),
}


def reassemble(path, **options) -> dict:
    """{(client port, side name): (bytes, gaps)} for every TCP flow of a capture."""
    async def run():
        streams = collections.defaultdict(bytearray)
        gaps = collections.defaultdict(list)
        async with aiomb.open_stack(aiomb.capture(path), midstream=True, **options) as stack:
            async with stack.subscribe(aiomb.NEW_DATA, aiomb.GAP) as sub:
                async for ev in sub:
                    k = (ev.key.client_port, str(ev.side))
                    if ev.kind is aiomb.NEW_DATA:
                        streams[k] += ev.value[-ev.length:]
                    else:
                        gaps[k].append([ev.offset, ev.length])
            stats = stack.statistics()
        return streams, gaps, stats
    streams, gaps, stats = trio.run(run)
    keys = set(streams) | set(gaps)
    return {k: (bytes(streams[k]), gaps[k]) for k in keys}, stats


def oracle_sides():
    for rec in oracle_records():
        if rec["proto"] == "tcp":
            for side in ("client", "server"):
                yield rec["pcap"], rec, side


CASES = sorted({(pcap, rec["client_port"], side) for pcap, rec, side in oracle_sides()})


@pytest.fixture(scope="module")
def results():
    cache = {}

    def get(pcap, **options):
        key = (pcap, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = reassemble(corpus_path() / pcap, **options)
        return cache[key]
    return get


def expected(pcap, port, side):
    for p, rec, s in oracle_sides():
        if (p, rec["client_port"], s) == (pcap, port, side):
            return rec
    raise KeyError((pcap, port, side))


@pytest.mark.parametrize("pcap,port,side", [c for c in CASES if c not in JUSTIFIED],
                         ids=lambda v: str(v).split("/")[-1])
def test_stream_matches_tshark(results, pcap, port, side):
    rec = expected(pcap, port, side)
    streams, _ = results(pcap)
    data, gaps = streams.get((port, side), (b"", []))
    assert len(data) == rec[f"{side}_bytes"]
    assert hashlib.sha256(data).hexdigest() == rec[f"{side}_sha256"]
    assert gaps == rec[f"{side}_gaps"]


def test_data_behind_an_unacked_hole_is_delivered(results):
    rec = expected(UNIDIRECTIONAL, 61541, "client")
    data, gaps = results(UNIDIRECTIONAL)[0][(61541, "client")]
    seg = rec["segments"]["client"]
    assert len(data) == seg["covered_bytes"] == 8528          # every captured byte
    assert gaps == [[1420, seg["extent"] - seg["covered_bytes"]]]
    assert hashlib.sha256(data[:rec["client_bytes"]]).hexdigest() == rec["client_sha256"]


def test_rst_payload_is_left_out_unless_asked(results):
    for pcap in (RST_WITH_DATA, RST_UNACKED):
        rec = expected(pcap, 12345, "client")
        data, _ = results(pcap)[0].get((12345, "client"), (b"", []))
        assert data == b""
        data, _ = results(pcap, rst_payload=True)[0][(12345, "client")]
        assert hashlib.sha256(data).hexdigest() == rec["client_sha256"] and len(data) == 13


def test_overlapping_fragments_drop_their_datagram(results):
    rec = expected(FRAGMENTED, 7790, "client")
    streams, stats = results(FRAGMENTED)
    assert rec["client_bytes"] == 69 and (7790, "client") not in streams
    assert (stats.engine.fragment_overlaps, stats.engine.malformed) == (1, {"bad_fragment": 1})


def test_acked_but_missing_response_is_a_gap(results, corpus):
    baseline = (corpus / "zeek/testing/btest/Baseline/core.tcp.miss-end-data/out").read_text()
    assert baseline.splitlines()[1].endswith("F, 1, 2902")     # content_gap(resp, seq 1, 2902)
    streams, _ = results(MISS_END)
    assert streams[(60648, "server")] == (b"", [[0, 2902]])


def test_every_justification_names_a_real_flow_side():
    assert set(JUSTIFIED) <= set(CASES)


@pytest.mark.parametrize("pcap", sorted({p for p, _, _ in oracle_sides()}), ids=lambda p: p.split("/")[-1])
def test_overlap_conflict_bytes_match_the_raw_segments(pcap):
    """Bytes carried twice with different content, as the oracle counted them in the segments."""
    engine = aiomb.Engine(midstream=True, reassembly=True)
    flows = []
    engine.add_handler(aiomb.CONN_START, lambda packet: flows.append(packet.flow))
    batch = aiomb.FrameBatch()
    with aiomb.capture(corpus_path() / pcap) as source:
        while source.read(batch):
            engine.process(batch)
    engine.finish()
    stats = {f.key.client_port: f.statistics() for f in flows}
    for p, rec, side in oracle_sides():
        if p == pcap and rec["client_port"] in stats:
            got = getattr(stats[rec["client_port"]], side)
            keep_alive_bytes, _ = NOT_CONFLICTS.get((p, rec["client_port"], side), (0, ""))
            assert got.overlap_conflict_bytes == rec["segments"][side]["overlap_conflict_bytes"] - keep_alive_bytes, \
                (rec["client_port"], side)
            assert got.keep_alives >= keep_alive_bytes
