"""examples/matcher.py: the suricata-verify expectations about stream content, read from the corpus
(rule files, test.yaml checks), and patterns split across segments at every split point."""

import json
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

from aiomb.testing import TcpConversation, udp_frame, write_pcap

REPO = pathlib.Path(__file__).resolve().parents[2]
SV = REPO / "tests/corpus/data/suricata-verify/tests"
RULE_DIRS = sorted(p.parent for p in SV.rglob("*.rules"))
# the suricata-verify cases about stream content: overlaps, gaps, RST payload, split handshake, one-sided
STREAM_CASES = {"eve-payload-01-tcp-exact-overlap", "eve-payload-04-partial-overlap", "eve-payload-05-tcp-data-gap",
                "eve-payload-06-tcp-data-leading-gap", "tcp-rst-unacked-stream-01-raw", "bug-6244-tcp-rst-with-data",
                "tcp-split-handshake-01-4whs", "bug-2491-02"}

pytest.importorskip("ahocorasick")


def matcher(pcap, *app_args, midstream=False):
    cmd = [sys.executable, "-m", "aiomb", "run", "examples/matcher.py", "--pcap", str(pcap)]
    return subprocess.run(cmd + (["--midstream"] if midstream else []) + ["--", *map(str, app_args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def rule_sids(rule_file: pathlib.Path) -> dict[int, str]:
    """sid -> rule text, for the rules (not comments) of a file."""
    rules = {}
    for line in rule_file.read_text().splitlines():
        m = re.search(r"\bsid\s*:\s*(\d+)", line)
        if m and not line.lstrip().startswith("#"):
            rules[int(m.group(1))] = line
    return rules


def expanded_payload(check: dict) -> list | None:
    """The stream payload of a check, its '[N bytes missing]' holes as N Nones (offset 0 = stream start)."""
    text = check.get("payload_printable")
    if text is None:
        return None
    out = []
    for i, part in enumerate(re.split(r"\[(\d+) bytes missing\]", text)):
        out += [None] * int(part) if i % 2 else list(part.encode("latin-1"))
    return out


def applies(check: dict) -> bool:
    """A check for the current Suricata (not one kept for older versions only)."""
    return "lt-version" not in (check.get("requires") or {})


@pytest.mark.parametrize("case", RULE_DIRS, ids=lambda p: p.name)
def test_suricata_verify_stream_expectations(case):
    rule_file = next(case.glob("*.rules"))
    pcap = next(case.glob("*.pcap"))
    test = yaml.safe_load((case / "test.yaml").read_text())
    args = " ".join(test.get("args") or [])
    proc = matcher(pcap, "--rules", rule_file, "--skip-unsupported", "--json",
                   midstream="stream.midstream=true" in args)
    rules = rule_sids(rule_file)
    skipped = {int(s) for s in re.findall(r"^matcher: skipped sid (\d+) ", proc.stderr, re.M)}
    loaded = set(rules) - skipped
    if not loaded:
        assert case.name not in STREAM_CASES
        assert proc.returncode == 2 and "holds no usable rule" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    alerts = [json.loads(line) for line in proc.stdout.splitlines()]
    asserted = 0
    for check in test["checks"]:
        f = check.get("filter")
        if not f or not applies(f):
            continue
        match = f["match"]
        sid = match.get("alert.signature_id")
        if match.get("event_type") != "alert" or sid not in loaded:
            continue
        mine = [a for a in alerts if a["sid"] == sid]
        assert len(mine) == f["count"], (sid, f, alerts)
        asserted += 1
        payload = expanded_payload(match)
        if mine and payload is not None and match.get("stream", 1) == 1:
            # the alert's stream payload (Suricata's, read from test.yaml) holds the pattern where we say
            content = re.search(r'content:"([^"]*)"', rules[sid]).group(1).encode()
            a = mine[0]
            assert payload[a["offset"]:a["offset"] + a["length"]] == list(content)
    assert asserted >= 1


def test_the_stream_cases_are_all_in_the_corpus():
    assert STREAM_CASES <= {p.name for p in RULE_DIRS}


def test_overlap_reports_the_good_bytes_never_the_evil_ones(tmp_path):
    """eve-payload-01: "GOOD" then "EVIL" at the same sequence number: the stream holds GOOD."""
    case = SV / "eve-payload-01-tcp-exact-overlap"
    rules = tmp_path / "r.rules"
    rules.write_text('alert tcp any any -> any any (content:"good"; nocase; sid:1;)\n'
                     'alert tcp any any -> any any (pcre:"/E.IL/"; sid:2;)\n')
    proc = matcher(next(case.glob("*.pcap")), "--rules", rules, "--json")
    assert proc.returncode == 0, proc.stderr
    assert [(a["sid"], a["offset"], a["direction"]) for a in map(json.loads, proc.stdout.splitlines())] == [
        (1, 0, "to_server")]


FILLER = 2100               # more frames than a receive batch (2048): what follows comes in a later chunk


def split_capture(path, pattern: bytes, prefix: bytes = b"xy"):
    """One flow per split point of ``pattern`` (two segments a batch apart), one flow with it in three
    segments, then one flow with four bytes lost in the pattern's middle (ACKed, never captured); UDP
    filler between the rounds."""
    data = prefix + pattern + b"zz"
    p = len(prefix)
    cuts = [(p + i,) for i in range(1, len(pattern))] + [(p + 3, p + 9)]
    lossy = len(cuts)
    frames, convs = [], []
    for n, points in enumerate(cuts + [(p + 5,)]):
        c = TcpConversation(("10.0.0.1", 40000 + n), ("10.0.0.2", 80), start_ts=1.0 + n * 0.01)
        c.handshake()
        frames += c.frames
        bounds = (0, *points, len(data))
        convs.append((c, [data[a:b] for a, b in zip(bounds, bounds[1:])]))
    convs[lossy][1].insert(1, b"HOLE")         # lost: the bytes on either side would spell the pattern
    for r in range(3):
        t = 2.0 + r
        for n, (c, pieces) in enumerate(convs):
            if r < len(pieces):
                segment = c.send("client", pieces[r])
                if not (n == lossy and r == 1):
                    frames.append((t + n * 1e-4, segment))
        frames += [(t + 0.5 + i * 1e-5, udp_frame("10.9.9.9", "10.9.9.8", 5000, 53, b"q")) for i in range(FILLER)]
    frames.append((5.0, convs[lossy][0].ack("server")))      # ACKs past the hole: a GAP
    write_pcap(path, frames)
    return p, lossy, len(convs)


def test_a_pattern_split_across_segments_matches_once_at_every_split_point(tmp_path):
    pattern = b"Let Me In, please"
    offset, good, flows = split_capture(tmp_path / "split.pcap", pattern)
    rules = tmp_path / "split.rules"
    rules.write_text('alert tcp any any -> any any (msg:"exact"; content:"Let Me In, please"; sid:1;)\n'
                     'alert http any any -> any any (msg:"hex, nocase"; content:"let |6d 65| IN"; nocase; '
                     'flow:to_server; sid:2;)\n'
                     'alert tcp any any -> any 80 (msg:"pcre"; pcre:"/Me\\s+In,\\s*p/"; sid:3;)\n'
                     'alert tcp any any -> any any (msg:"to_client only"; content:"Let"; flow:to_client; sid:4;)\n'
                     'alert tcp any any -> any 81 (msg:"other port"; content:"Let"; sid:5;)\n')
    proc = matcher(tmp_path / "split.pcap", "--rules", rules, "--json")
    assert proc.returncode == 0, proc.stderr
    alerts = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = sorted((40000 + n, sid, start) for n in range(good)
                      for sid, start in ((1, offset), (2, offset), (3, offset + 4)))
    assert sorted((a["client_port"], a["sid"], a["offset"]) for a in alerts) == expected
    assert {a["direction"] for a in alerts} == {"to_server"}
    assert all(a["length"] == len(pattern) for a in alerts if a["sid"] == 1)
    # every flow's stream came in several chunks (the filler splits the batches): the tail did the work
    chunks = int(re.search(r"(\d+) stream chunks", proc.stderr).group(1))
    assert chunks >= 2 * flows


def test_human_output(tmp_path):
    rules = tmp_path / "r.rules"
    rules.write_text('alert tcp any any -> any any (msg:"the stream"; content:"Please"; sid:7;)\n')
    proc = matcher(SV / "bug-6244-tcp-rst-with-data/tcp-rst-with-data.pcap", "--rules", rules)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "1691137947.488066 sid 7 1.1.1.1:12345 -> 2.2.2.2:8080 to_client offset 0 'the stream'\n"


@pytest.mark.parametrize("rule, message", [
    ('alert tcp any any -> any any (content:"x"; dsize:4; sid:1;)', "line 1: keyword 'dsize' is outside"),
    ('alert tcp any any -> any any (content:"x";)', "line 1: no sid"),
    ('alert udp any any -> any any (content:"x"; sid:1;)', "protocol 'udp'"),
    ('alert tcp $HOME_NET any -> any any (content:"x"; sid:1;)', "no $VARIABLES"),
    ('alert tcp any any -> any any (pcre:"/a(/"; sid:1;)', "bad pcre"),
    ('alert tcp any any -> any any (content:"x"; sid:1;)\nalert tcp any any -> any any (content:"y"; sid:1;)',
     "line 2: sid 1 is used twice"),
    ('# nothing', "holds no usable rule"),
])
def test_bad_rule_files_exit_2_naming_the_problem(tmp_path, rule, message):
    rules = tmp_path / "bad.rules"
    rules.write_text(rule + "\n")
    proc = matcher(SV / "bug-6244-tcp-rst-with-data/tcp-rst-with-data.pcap", "--rules", rules)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stdout == ""


def test_missing_rule_file_and_option(tmp_path):
    proc = matcher(SV / "bug-6244-tcp-rst-with-data/tcp-rst-with-data.pcap", "--rules", tmp_path / "nope.rules")
    assert proc.returncode == 2 and "cannot read the rule file" in proc.stderr
    proc = matcher(SV / "bug-6244-tcp-rst-with-data/tcp-rst-with-data.pcap")
    assert proc.returncode == 2 and "--rules" in proc.stderr
