"""examples/firewall.py on a capture built here: exact verdicts, hit counters and dropped packets;
rule-file errors exit with status 2 naming the line."""

import json
import pathlib
import subprocess
import sys

import pytest

from aiomb.testing import TcpConversation, tcp_frame, write_pcap

REPO = pathlib.Path(__file__).resolve().parents[2]
FIREWALL = REPO / "examples" / "firewall.py"

RULES = """\
# the test's rules
DROP   any          10.0.0.0/8   dport:22     # no ssh inside
ACCEPT 10.1.0.0/16  any

DROP   any          any          dport:443
drop   2001:db8::/32 any         sport:5000 dport:80
ACCEPT any          any          dport:80
"""


def capture(tmp_path):
    """Six connections and a packet of none; returns the capture's path.

    1 10.1.0.5 -> 192.0.2.10:80, a whole HTTP exchange (10 packets): rule 2 accepts
    2 10.1.0.5 -> 10.2.0.9:22, SYN and two retransmissions, then an ACK with data (4): rule 1 drops
    3 172.16.0.1 -> 192.0.2.10:443, handshake and a request (4): rule 3 drops, the server's SYN-ACK too
    4 [2001:db8::1]:5000 -> [2001:db8:1::2]:80 (4): rule 4 drops
    5 10.1.0.6 -> 192.0.2.10:443 at 4.0, handshake (3): rule 2 accepts it before rule 3 would drop it
    6 172.16.0.2 -> 192.0.2.10:25, handshake (3): no rule, the default policy
    and an ACK of no connection (an orphan) at 3.1.
    """
    frames = []
    c = TcpConversation(("10.1.0.5", 40000), ("192.0.2.10", 80), start_ts=0.5)
    c.handshake()
    c.send("client", b"GET / HTTP/1.0\r\n\r\n")
    c.ack("server")
    c.send("server", b"HTTP/1.0 200 OK\r\n\r\n")
    c.ack("client")
    c.fin("client")
    c.fin("server")
    c.ack("client")
    d = TcpConversation(("10.1.0.5", 40001), ("10.2.0.9", 22), start_ts=1.2, ts_step=0.5)
    d.syn()
    d.syn()
    d.syn()
    d.send("client", b"SSH-2.0-x\r\n")
    e = TcpConversation(("172.16.0.1", 5555), ("192.0.2.10", 443), start_ts=2.5)
    e.handshake()
    e.send("client", b"\x16\x03\x01")
    f = TcpConversation(("2001:db8::1", 5000), ("2001:db8:1::2", 80), start_ts=3.3)
    f.handshake()
    f.send("client", b"GET /")
    g = TcpConversation(("172.16.0.2", 6000), ("192.0.2.10", 25), start_ts=4.2)
    g.handshake()
    h = TcpConversation(("10.1.0.6", 7000), ("192.0.2.10", 443), start_ts=4.0)
    h.handshake()
    orphan = (3.1, tcp_frame("172.16.0.9", "192.0.2.10", 1234, 80, flags="A", seq=5, ack=7))
    frames = sorted([*c.frames, *d.frames, *e.frames, *f.frames, *g.frames, *h.frames, orphan], key=lambda x: x[0])
    assert len(frames) == 29
    path = tmp_path / "fw.pcap"
    write_pcap(path, frames)
    return path


def run(tmp_path, *options, rules=RULES):
    (tmp_path / "rules.txt").write_text(rules)
    return subprocess.run([sys.executable, "-m", "aiomb", "run", str(FIREWALL), "--pcap", str(capture(tmp_path)),
                           "--", "--rules", str(tmp_path / "rules.txt"), *options],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def records(out):
    lines = [json.loads(line) for line in out.splitlines()]
    return [r for r in lines if "verdict" in r], [r for r in lines if "hits" in r]


@pytest.mark.parametrize("default, default_drops", [("accept", 0), ("drop", 3)])
def test_verdicts_counters_and_drops_are_exact(tmp_path, default, default_drops):
    proc = run(tmp_path, "--json", "--default", default)
    assert proc.returncode == 0, proc.stderr
    verdicts, counters = records(proc.stdout)
    assert [(v["ts"], v["verdict"], v["rule"], v["line"], v["client"], v["server"]) for v in verdicts] == [
        (0.5, "ACCEPT", 2, 3, "10.1.0.5:40000", "192.0.2.10:80"),
        (1.2, "DROP", 1, 2, "10.1.0.5:40001", "10.2.0.9:22"),
        (2.5, "DROP", 3, 5, "172.16.0.1:5555", "192.0.2.10:443"),
        (3.3, "DROP", 4, 6, "2001:db8::1:5000", "2001:db8:1::2:80"),
        (4.0, "ACCEPT", 2, 3, "10.1.0.6:7000", "192.0.2.10:443"),
        (4.2, default.upper(), 0, 0, "172.16.0.2:6000", "192.0.2.10:25"),
    ]
    # ticks every second of packet time from the first packet, each the counters as they stood then
    hits = [(r["ts"], [h["hits"] for h in r["hits"]], r["dropped_packets"], r["orphans_dropped"]) for r in counters]
    assert hits == [
        (1.5, [1, 1, 0, 0, 0, 0], 1, 0),
        (2.5, [1, 1, 0, 0, 0, 0], 3, 0),                    # the SYN and its two retransmissions
        (3.5, [1, 1, 1, 1, 0, 0], 4 + 4 + 1 + 4, 1),        # flows 2, 3, the orphan, flow 4
        (4.202, [1, 2, 1, 1, 0, 1], 13 + default_drops, 1),  # the end (the last packet's time)
    ]
    assert [r["final"] for r in counters] == [False] * 3 + [True]
    assert [(h["rule"], h["line"], h["action"]) for h in counters[-1]["hits"]] == [
        (1, 2, "DROP"), (2, 3, "ACCEPT"), (3, 5, "DROP"), (4, 6, "DROP"), (5, 7, "ACCEPT"), (0, 0, default.upper())]


def test_text_output(tmp_path):
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line[:1].isdigit() and " hits: " not in line] == [
        "0.500000 ACCEPT tcp 10.1.0.5:40000 -> 192.0.2.10:80  rule 2 (line 3)",
        "1.200000 DROP   tcp 10.1.0.5:40001 -> 10.2.0.9:22  rule 1 (line 2)",
        "2.500000 DROP   tcp 172.16.0.1:5555 -> 192.0.2.10:443  rule 3 (line 5)",
        "3.300000 DROP   tcp [2001:db8::1]:5000 -> [2001:db8:1::2]:80  rule 4 (line 6)",
        "4.000000 ACCEPT tcp 10.1.0.6:7000 -> 192.0.2.10:443  rule 2 (line 3)",
        "4.200000 ACCEPT tcp 172.16.0.2:6000 -> 192.0.2.10:25  default",
    ]
    assert "3.500000 hits: rule 1 1, rule 2 1, rule 3 1, rule 4 1, rule 5 0, default 0; " \
           "dropped 13 packets (1 of no connection)" in lines
    assert lines[-8:] == [
        "rule     line  rule text                                              hits",
        "rule 1      2  DROP any 10.0.0.0/8 dport:22                              1",
        "rule 2      3  ACCEPT 10.1.0.0/16 any                                    2",
        "rule 3      5  DROP any any dport:443                                    1",
        "rule 4      6  drop 2001:db8::/32 any sport:5000 dport:80                1",
        "rule 5      7  ACCEPT any any dport:80                                   0",
        "default        ACCEPT                                                    1",
        "dropped 13 packets (1 of no connection)",
    ]


@pytest.mark.parametrize("line, message", [
    ("REJECT any any", "unknown action 'REJECT' (use DROP or ACCEPT)"),
    ("DROP any", "too few fields"),
    ("DROP 10.0.0.0/33 any", "bad address '10.0.0.0/33' (use any, an address or a network such as 10.0.0.0/8)"),
    ("DROP any any port:22", "bad option 'port:22' (use sport:N or dport:N, N in 0..65535)"),
    ("DROP any any dport:70000", "bad option 'dport:70000' (use sport:N or dport:N, N in 0..65535)"),
    ("DROP any any dport:1 dport:2", "dport given twice"),
    ("DROP 10.0.0.1 2001:db8::1", "src and dst are of different IP families"),
])
def test_a_bad_rule_line_is_exit_status_2_naming_it(tmp_path, line, message):
    proc = run(tmp_path, rules=f"# ok\nACCEPT any any dport:80\n{line}  # the bad one\n")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == (
        f"firewall.py: error: {tmp_path / 'rules.txt'}, line 3: {message}: '{line}  # the bad one'; "
        "a rule is DROP|ACCEPT src[/mask] dst[/mask] [sport:N] [dport:N]")


def test_a_missing_rule_file_is_exit_status_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "aiomb", "run", str(FIREWALL), "--pcap", str(capture(tmp_path)),
                           "--", "--rules", str(tmp_path / "nosuch.txt")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert f"firewall.py: error: cannot read the rule file {tmp_path / 'nosuch.txt'}: " in proc.stderr
