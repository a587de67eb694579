"""examples/rexmit_rate.py: retransmitted segments and bytes per flow and side, next to the data sent."""

import json
import pathlib
import subprocess
import sys

import pytest

from aiomb.testing import TcpConversation, write_pcap
from tests.conftest import corpus_path

REPO = pathlib.Path(__file__).resolve().parents[2]
SSH_DUPS = "zeek/testing/btest/Traces/tcp/ssh-dups.pcap"
SAME_AS_FLOWS = ("flow", "client_ip", "client_port", "server_ip", "server_port") + tuple(
    f"{side}_{field}" for side in ("client", "server")
    for field in ("data_segments", "payload_bytes", "rexmits", "retransmitted_bytes"))


def run(*args, cmd="run"):
    pre = ["examples/rexmit_rate.py", "--pcap"] if cmd == "run" else []
    return subprocess.run([sys.executable, "-m", "aiomb", cmd, *pre, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def flows_records(pcap):
    proc = run(pcap, "--format", "jsonl", "--sort", cmd="flows")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_ssh_dups_figures_equal_the_flow_records_of_aiomb_flows():
    pcap = corpus_path() / SSH_DUPS
    proc = run(pcap, "--", "--json")
    assert (proc.returncode, proc.stderr) == (0, "")
    (record,) = [json.loads(line) for line in proc.stdout.splitlines()]
    (expected,) = [r for r in flows_records(pcap) if r["proto"] == "tcp"]
    assert {k: record[k] for k in SAME_AS_FLOWS} == {k: expected[k] for k in SAME_AS_FLOWS}
    assert record["client_rexmits"] + record["server_rexmits"] == 166        # as the corpus' manifest says
    assert record["client_segment_rate"] == round(record["client_rexmits"] / record["client_data_segments"], 6)
    assert record["server_byte_rate"] == round(record["server_retransmitted_bytes"] / record["server_payload_bytes"], 6)


def test_ssh_dups_table():
    proc = run(corpus_path() / SSH_DUPS)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == """\
flow  side      data segs  data bytes  rexmit segs  rexmit bytes   segs %  bytes %
1     192.168.0.102:53206 -> 192.168.0.112:22
      client           96       14820           74         11115    77.1%    75.0%
      server          120       17092           92         12819    76.7%    75.0%
all   1 TCP flows
      both            216       31912          166         23934    76.9%    75.0%
"""


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """Flow 1: the client sends 1000 bytes twice (identical), then 500; the server 300, then its last 100
    again. Flow 2 (IPv6): a SYN sent twice, 10 bytes, no data retransmitted. Flow 3: no data."""
    a = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80))
    a.handshake()
    a.send("client", bytes(1000))
    a.send("client", bytes(1000), seq_offset=-1000)
    a.send("client", b"x" * 500)
    a.send("server", b"y" * 300)
    a.send("server", b"y" * 100, seq_offset=-100)
    b = TcpConversation(("2001:db8::1", 40001), ("2001:db8::2", 443), start_ts=2.0)
    b.syn()
    b.syn()
    b.syn_ack()
    b.ack()
    b.send("client", b"0123456789")
    c = TcpConversation(("10.0.0.3", 40002), ("10.0.0.2", 22), start_ts=3.0)
    c.handshake()
    path = tmp_path_factory.mktemp("rexmit_rate") / "crafted.pcap"
    write_pcap(path, a.frames + b.frames + c.frames)
    return path


def test_crafted_json(crafted):
    proc = run(crafted, "--", "--json")
    assert (proc.returncode, proc.stderr) == (0, "")
    records = sorted((json.loads(line) for line in proc.stdout.splitlines()), key=lambda r: r["flow"])
    assert [{k: v for k, v in r.items() if k.startswith(("client_", "server_")) and not k.endswith(("ip", "port"))}
            for r in records] == [
        {"client_data_segments": 3, "client_payload_bytes": 2500, "client_rexmits": 1,
         "client_retransmitted_bytes": 1000, "client_segment_rate": 0.333333, "client_byte_rate": 0.4,
         "server_data_segments": 2, "server_payload_bytes": 400, "server_rexmits": 1,
         "server_retransmitted_bytes": 100, "server_segment_rate": 0.5, "server_byte_rate": 0.25},
        {"client_data_segments": 1, "client_payload_bytes": 10, "client_rexmits": 1,
         "client_retransmitted_bytes": 0, "client_segment_rate": 1.0, "client_byte_rate": 0.0,
         "server_data_segments": 0, "server_payload_bytes": 0, "server_rexmits": 0,
         "server_retransmitted_bytes": 0, "server_segment_rate": None, "server_byte_rate": None},
        {"client_data_segments": 0, "client_payload_bytes": 0, "client_rexmits": 0,
         "client_retransmitted_bytes": 0, "client_segment_rate": None, "client_byte_rate": None,
         "server_data_segments": 0, "server_payload_bytes": 0, "server_rexmits": 0,
         "server_retransmitted_bytes": 0, "server_segment_rate": None, "server_byte_rate": None}]
    expected = flows_records(crafted)
    assert [{k: r[k] for k in SAME_AS_FLOWS} for r in records] == [{k: r[k] for k in SAME_AS_FLOWS} for r in expected]


def test_crafted_table(crafted):
    proc = run(crafted)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == """\
flow  side      data segs  data bytes  rexmit segs  rexmit bytes   segs %  bytes %
1     10.0.0.1:40000 -> 10.0.0.2:80
      client            3        2500            1          1000    33.3%    40.0%
      server            2         400            1           100    50.0%    25.0%
2     [2001:db8::1]:40001 -> [2001:db8::2]:443
      client            1          10            1             0   100.0%     0.0%
      server            0           0            0             0        -        -
3     10.0.0.3:40002 -> 10.0.0.2:22
      client            0           0            0             0        -        -
      server            0           0            0             0        -        -
all   3 TCP flows
      both              6        2910            3          1100    50.0%    37.8%
"""


def test_figures_are_those_at_the_flows_end(tmp_path):
    """A segment sent again after the RST that ended the flow: aiomb flows' record counts it (the
    flow lingers in the table), the report gives the figures at CONN_END."""
    c = TcpConversation()
    c.handshake()
    c.send("client", b"abcd")
    c.rst("client")
    c.send("client", b"abcd", seq_offset=-4)
    write_pcap(tmp_path / "late.pcap", c.frames)
    (record,) = [json.loads(line) for line in run(tmp_path / "late.pcap", "--", "--json").stdout.splitlines()]
    (flows,) = flows_records(tmp_path / "late.pcap")
    assert (record["client_data_segments"], record["client_rexmits"]) == (1, 0)
    assert (flows["client_data_segments"], flows["client_rexmits"]) == (2, 1)


def test_help_and_bad_options(crafted):
    proc = run(crafted, "--", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: rexmit_rate.py") and "--json" in proc.stdout
    proc = run(crafted, "--", "--csv")
    assert proc.returncode == 2 and "unrecognized arguments: --csv" in proc.stderr
