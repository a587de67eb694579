"""examples/rexmit_audit.py: retransmissions whose bytes differ, with both versions; identical ones only counted."""

import json
import pathlib
import subprocess
import sys

import pytest

from aiomb.testing import TcpConversation, write_pcap
from tests.conftest import corpus_path

REPO = pathlib.Path(__file__).resolve().parents[2]
EXACT_OVERLAP = "suricata-verify/tests/eve-payload-01-tcp-exact-overlap/tcp-overlap.pcap"
PARTIAL_OVERLAP = "suricata-verify/tests/eve-payload-04-partial-overlap/tcp-overlap2.pcap"


def audit(pcap, *options):
    proc = subprocess.run([sys.executable, "-m", "aiomb", "run", "examples/rexmit_audit.py", "--pcap", str(pcap),
                           "--", *options], cwd=REPO, capture_output=True, text=True, timeout=60)
    return proc


def test_good_then_evil_at_the_same_offset_is_reported_with_both_versions():
    proc = audit(corpus_path() / EXACT_OVERLAP)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == """\
1700146003.549304 flow 1 1.1.1.1:12345 -> 2.2.2.2:8080  client stream bytes 0-4 (4 bytes)
    original:      'GOOD'
    retransmitted: 'EVIL'
1 of 1 TCP flows retransmitted; 1 retransmission(s) differed from the original
flow  client -> server               side       rexmit segs  rexmit bytes     differing  bytes differ     unchecked
1     1.1.1.1:12345 -> 2.2.2.2:8080  client               1             4             1             4             0
                                     server               0             0             0             0             0
"""


def test_partial_overlap_as_json():
    proc = audit(corpus_path() / PARTIAL_OVERLAP, "--json")
    assert (proc.returncode, proc.stderr) == (0, "")
    conflict, flow = (json.loads(line) for line in proc.stdout.splitlines())
    assert conflict == {"type": "conflict", "ts": 1700146003.555944, "flow": 1, "side": "client",
                        "sender": "1.1.1.1:12345", "receiver": "2.2.2.2:8080", "offset": 1, "length": 3,
                        "encoding": "text", "original": "OOD", "retransmitted": "XXX"}
    assert flow == {"type": "flow", "flow": 1, "client": "1.1.1.1:12345", "server": "2.2.2.2:8080",
                    "client_retransmits": 1, "client_retransmitted_bytes": 3, "client_overlap_conflicts": 1,
                    "client_overlap_conflict_bytes": 3, "client_unchecked_bytes": 0,
                    "server_retransmits": 0, "server_retransmitted_bytes": 0, "server_overlap_conflicts": 0,
                    "server_overlap_conflict_bytes": 0, "server_unchecked_bytes": 0}


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """A flow with one retransmission that differs (one byte), one identical, a binary one from the
    server, a segment overlapping old and new bytes with the same old bytes; and a flow with none."""
    c = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80))
    c.handshake()
    c.send("client", b"ABCDEFGH")
    c.send("client", b"ABXDEFGH", seq_offset=-8)       # differs at offset 2
    c.send("client", b"ABCDEFGH", seq_offset=-8)       # identical: only counted
    c.send("server", b"\x00\x01\x02\x03")
    c.send("server", b"\x00\x01\xff\x03", seq_offset=-4)
    c.send("client", b"HIJK", seq_offset=-1)           # 'H' again, the same, then new bytes
    quiet = TcpConversation(("10.0.0.3", 40001), ("10.0.0.2", 80), start_ts=2.0)
    quiet.handshake()
    quiet.send("client", b"hello")
    path = tmp_path_factory.mktemp("rexmit_audit") / "crafted.pcap"
    write_pcap(path, c.frames + quiet.frames)
    return path


def test_crafted_conflicts_and_identical_retransmissions(crafted):
    proc = audit(crafted)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == """\
1.004000 flow 1 10.0.0.1:40000 -> 10.0.0.2:80  client stream bytes 0-8 (8 bytes)
    original:      'ABCDEFGH'
    retransmitted: 'ABXDEFGH'
1.007000 flow 1 10.0.0.2:80 -> 10.0.0.1:40000  server stream bytes 0-4 (4 bytes)
    original:      00 01 02 03
    retransmitted: 00 01 ff 03
1 of 2 TCP flows retransmitted; 2 retransmission(s) differed from the original
flow  client -> server               side       rexmit segs  rexmit bytes     differing  bytes differ     unchecked
1     10.0.0.1:40000 -> 10.0.0.2:80  client               2            16             1             1             0
                                     server               1             4             1             1             0
"""


def test_crafted_as_json_and_cut_text(crafted):
    records = [json.loads(line) for line in audit(crafted, "--json").stdout.splitlines()]
    assert [(r["type"], r.get("side"), r.get("offset"), r.get("encoding"), r.get("original"),
             r.get("retransmitted")) for r in records] == [
        ("conflict", "client", 0, "text", "ABCDEFGH", "ABXDEFGH"),
        ("conflict", "server", 0, "hex", "00010203", "0001ff03"),
        ("flow", None, None, None, None, None)]
    assert (records[2]["client_retransmits"], records[2]["client_retransmitted_bytes"]) == (2, 16)
    lines = audit(crafted, "--show", "3").stdout.splitlines()
    assert lines[1:3] == ["    original:      'ABC' ... (8 bytes)", "    retransmitted: 'ABX' ... (8 bytes)"]
    assert lines[4:6] == ["    original:      00 01 02 ... (4 bytes)", "    retransmitted: 00 01 ff ... (4 bytes)"]


def test_help_and_bad_options(crafted):
    proc = audit(crafted, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: rexmit_audit.py") and "--show BYTES" in proc.stdout
    proc = audit(crafted, "--show", "-1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--show must be 0 (all) or a number of bytes, got -1" in proc.stderr
