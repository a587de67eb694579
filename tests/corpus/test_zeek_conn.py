"""`aiomb flows --format zeek` against every Zeek conn.log baseline (and endpoint baseline) in the
corpus, field by field. Each field that differs is named with the reason: Zeek's ``service`` comes
from its protocol analyzers (aiomb has none: "-"), ``local_orig``/``local_resp`` from the site
networks those tests configured (aiomb knows none: "-"), ``uid`` and ``ts`` are masked in the
baselines (btest canonifies them), and ``tunnel_parents``/``ip_proto`` are what aiomb writes too."""

import csv
import io
import json
import subprocess
import sys

import pytest

import aiomb
from aiomb._records import FlowRun
from aiomb._zeek import CONN_FIELDS

BASELINE = "zeek/testing/btest/Baseline"
TRACES = "zeek/testing/btest/Traces"
NOT_COMPARED = {"ts": "masked in the baseline", "uid": "masked in the baseline (random in Zeek)",
                "service": "Zeek's protocol analyzers name it; aiomb has none and writes -",
                "local_orig": "Zeek's Site::local_nets, set by that test; aiomb writes -",
                "local_resp": "Zeek's Site::local_nets, set by that test; aiomb writes -"}


def zeek_log(text: str) -> tuple[list[str], list[dict]]:
    """A Zeek TSV log's field names and rows (dicts), from its #fields line; the btest header
    line and other # lines are skipped."""
    fields, rows = None, []
    for line in text.splitlines():
        if line.startswith("#fields\t"):
            fields = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            rows.append(dict(zip(fields, line.split("\t"), strict=True)))
    return fields, rows


def flows(path, *options, fmt="zeek") -> str:
    proc = subprocess.run([sys.executable, "-m", "aiomb", "flows", str(path), "--format", fmt, *options],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("test, trace", [("core.tcp.miss-end-data", "tcp/miss_end_data.pcap"),
                                         ("core.tcp.missing-syn", "tcp/missing-syn.pcap"),
                                         ("core.tcp.flip-without-syn", "tcp/http-on-irc-port-missing-syn.pcapng"),
                                         ("core.local-flip", "http/zeek-image-post-1080-8000-x.pcap")])
def test_conn_log_field_by_field(corpus, test, trace):
    _, expected = zeek_log((corpus / BASELINE / test / "conn.log").read_text())
    fields, got = zeek_log(flows(corpus / TRACES / trace))
    assert fields == list(CONN_FIELDS)
    assert len(got) == len(expected) == 1
    for name in CONN_FIELDS:
        if name not in NOT_COMPARED:
            assert got[0][name] == expected[0][name], name
    assert got[0]["service"] == got[0]["local_orig"] == got[0]["local_resp"] == "-"


def test_miss_end_data_in_words(corpus):
    """The server's whole response never captured but ACKed, then both FINs: Zeek's SF with a
    content gap (g) of 2902 bytes, sizes from sequence numbers."""
    _, (row,) = zeek_log(flows(corpus / TRACES / "tcp/miss_end_data.pcap"))
    assert (row["conn_state"], row["history"], row["missed_bytes"]) == ("SF", "ShADafgF", "2902")
    assert (row["orig_bytes"], row["resp_bytes"]) == ("538", "2902")


def test_missing_syn_flips_roles(corpus):
    """The first packet is the SYN-ACK from port 80: Zeek makes its receiver the originator (^)."""
    _, (row,) = zeek_log(flows(corpus / TRACES / "tcp/missing-syn.pcap"))
    assert row["history"].startswith("^h")
    assert (row["id.orig_p"], row["id.resp_p"]) == ("56730", "80")


@pytest.mark.parametrize("test, trace", [("scripts.base.protocols.dhcp.dhcp-all-msg-types", "dhcp/dhcp.pcap"),
                                         ("core.tunnels.ayiya", "tunnels/ayiya3.pcap")])
def test_likely_server_ports_and_broadcast(corpus, test, trace):
    """UDP roles by Zeek's likely_server_ports: DHCP's replies from 67 to 68 make their receiver the
    originator, except one broadcast to 255.255.255.255; AYIYA's reply from 5072 likewise. The
    AYIYA tunnel's TCP connection inside is logged too (its ICMPv6 ones are Zeek's alone)."""
    fields = ("id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "conn_state", "history",
              "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes")
    _, expected = zeek_log((corpus / BASELINE / test / "conn.log").read_text())
    _, got = zeek_log(flows(corpus / TRACES / trace))
    got = sorted(tuple(r[f] for f in fields) for r in got)
    expected = sorted(tuple(r[f] for f in fields) for r in expected if r["proto"] != "icmp")
    assert got == expected and len(got) == (4 if "dhcp" in trace else 3)


@pytest.mark.parametrize("trace, line", [("tcp/single-rst.pcap", "R, OTH"),
                                         ("tcp/syn-then-stuff-then-rst.pcap", "SaFR, OTH")])
def test_conn_state_rst_behavior(corpus, trace, line):
    """Zeek's conn_state-RST-behavior baseline: its lines 1 and 4 (lines 2-3 belong to captures
    not in the corpus)."""
    out = (corpus / BASELINE / "scripts.base.protocols.conn.conn_state-RST-behavior/out").read_text()
    assert line in out.splitlines()
    _, (row,) = zeek_log(flows(corpus / TRACES / trace))
    assert f"{row['history']}, {row['conn_state']}" == line


def test_retransmission_history_is_logarithmic(corpus):
    """ssh-dups: 166 retransmissions; Zeek's history at removal (tcp-dups baseline) has T twice for
    the originator (1 and 10) and t twice for the responder, and three FINs each way count once."""
    out = (corpus / BASELINE / "core.tcp.tcp-dups/out").read_text()
    final = out.strip().splitlines()[-1].rsplit(", ", 1)[1]
    _, (row,) = zeek_log(flows(corpus / TRACES / "tcp/ssh-dups.pcap"))
    assert row["history"] == final == "ShADTadtTtFf"


def endpoint_baseline(text: str) -> list[dict]:
    """Zeek's endpoint records as printed (``[size=0, state=5, num_pkts=3, ...]``)."""
    out = []
    for line in text.splitlines():
        if "[size=" in line:
            body = line[line.index("[size=") + 1:line.rindex("]")]
            out.append(dict(item.split("=", 1) for item in body.split(", ")))
    return out


@pytest.mark.parametrize("test, file, trace", [("core.tcp.fin-retransmit", "out", "tcp/fin_retransmission.pcap"),
                                               ("core.tcp.rst-after-syn", ".stdout", "tcp/rst-inject-rae.pcap")])
def test_endpoint_sizes_states_and_counts(corpus, test, file, trace):
    """Zeek's endpoint values (size from sequence numbers, state, packets, IP bytes) per role:
    a FIN before the SYN-ACK and a RST answer; an injected RST that must not reset the sequence
    base."""
    orig, resp = endpoint_baseline((corpus / BASELINE / test / file).read_text())
    (records,) = list(FlowRun(aiomb.capture(corpus / TRACES / trace), midstream=True, conn_history=True))
    assert len(records) == 1
    r, c = records[0], records.conn(0)
    roles = ("client", "server") if c["orig"] == 0 else ("server", "client")
    for want, role, name in ((orig, roles[0], "orig"), (resp, roles[1], "resp")):
        assert int(want["size"]) == c[f"{name}_bytes"]
        assert int(want["state"]) == c[f"{name}_state"]
        assert int(want["num_pkts"]) == r[f"{role}_packets"]
        assert int(want["num_bytes_ip"]) == r[f"{role}_ip_bytes"]


def test_vlan_collisions(corpus):
    """One connection seen untagged, in VLAN 42 and in QinQ 10/20: one conn with Zeek's default key
    (21/21 packets), three of 7/7 with the VLAN in the key (Zeek's vlan_fivetuple baselines)."""
    trace = corpus / TRACES / "vlan-collisions.pcap"
    _, rows = zeek_log(flows(trace))
    cut = (corpus / BASELINE / "scripts.policy.frameworks.conn_key.vlan_fivetuple/conn.log.cut").read_text()
    (want,) = list(csv.DictReader(io.StringIO(cut.split("\n", 1)[1]), delimiter="\t"))
    assert [(r["orig_pkts"], r["resp_pkts"]) for r in rows] == [(want["orig_pkts"], want["resp_pkts"])]
    _, rows = zeek_log(flows(trace, "--vlan"))
    cut = (corpus / BASELINE / "scripts.policy.frameworks.conn_key.vlan_fivetuple-2/conn.log.cut").read_text()
    want = list(csv.DictReader(io.StringIO(cut.split("\n", 1)[1]), delimiter="\t"))
    assert sorted((r["orig_pkts"], r["resp_pkts"]) for r in rows) == \
        sorted((w["orig_pkts"], w["resp_pkts"]) for w in want)


def test_vlan_ids_in_the_key_are_logged_as_zeek_logs_them(corpus):
    """--vlan: id.ctx.vlan and id.ctx.inner_vlan after id.resp_p, as Zeek's vlan_fivetuple baseline
    has them (unset without a tag); the same in zeek-json (unset: left out); none without --vlan."""
    trace = corpus / TRACES / "vlan-collisions.pcap"
    cut = (corpus / BASELINE / "scripts.policy.frameworks.conn_key.vlan_fivetuple-2/conn.log.cut").read_text()
    want = sorted((w["id.ctx.vlan"], w["id.ctx.inner_vlan"])
                  for w in csv.DictReader(io.StringIO(cut.split("\n", 1)[1]), delimiter="\t"))
    fields, rows = zeek_log(flows(trace, "--vlan", "--community-id"))
    at = fields.index("id.resp_p") + 1
    assert fields[at:at + 2] == ["id.ctx.vlan", "id.ctx.inner_vlan"]
    assert fields[:at] + fields[at + 2:] == [*CONN_FIELDS, "community_id"]
    assert sorted((r["id.ctx.vlan"], r["id.ctx.inner_vlan"]) for r in rows) == want
    lines = [json.loads(line) for line in flows(trace, "--vlan", fmt="zeek-json").splitlines()]
    assert sorted((str(j.get("id.ctx.vlan", "-")), str(j.get("id.ctx.inner_vlan", "-"))) for j in lines) == want
    assert all(list(j)[5:7] == ["id.resp_p", "id.ctx.vlan"] for j in lines if "id.ctx.vlan" in j)
    fields, _ = zeek_log(flows(trace))
    assert fields == list(CONN_FIELDS)


def test_zeek_json_matches_the_tsv(corpus):
    """--format zeek-json: the same values as the TSV, numbers as numbers, unset fields left out."""
    trace = corpus / TRACES / "tcp/missing-syn.pcap"
    _, (tsv,) = zeek_log(flows(trace, "--community-id"))
    (row,) = [json.loads(line) for line in flows(trace, "--community-id", fmt="zeek-json").splitlines()]
    for name, value in tsv.items():
        if value == "-":
            assert name not in row, name
        elif name in ("ts", "duration"):
            assert f"{row[name]:.6f}" == value
        else:
            assert str(row[name]) == value, name
    assert row["community_id"].startswith("1:")


def test_conn_log_loads_in_pandas(corpus):
    """The TSV as conn.log readers take it: the #fields line names the columns, "-" is unset."""
    pd = pytest.importorskip("pandas")
    text = flows(corpus / TRACES / "tcp/ssh-dups.pcap", "--community-id")
    fields = next(line for line in text.splitlines() if line.startswith("#fields\t")).split("\t")[1:]
    frame = pd.read_csv(io.StringIO(text), sep="\t", comment="#", names=fields, na_values="-")
    assert len(frame) == 1
    assert frame.loc[0, "history"] == "ShADTadtTtFf" and frame.loc[0, "orig_bytes"] == 3705
    assert frame["service"].isna().all() and frame.loc[0, "community_id"].startswith("1:")


@pytest.mark.parametrize("options, message", [(("--format", "zeek", "--hash", "md5"), "--hash adds fields"),
                                              (("--format", "table", "--community-id"), "not to the table")])
def test_options_that_do_not_fit_the_format(corpus, options, message):
    proc = subprocess.run([sys.executable, "-m", "aiomb", "flows", str(corpus / TRACES / "tcp/single-rst.pcap"),
                           *options], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr


def test_community_id_in_jsonl_and_csv(corpus):
    """--community-id in jsonl and csv: the same ID as conn.log's, whichever side spoke first."""
    trace = corpus / TRACES / "tcp/missing-syn.pcap"
    _, (tsv,) = zeek_log(flows(trace, "--community-id"))
    (record,) = [json.loads(line) for line in flows(trace, "--community-id", fmt="jsonl").splitlines()]
    (row,) = list(csv.DictReader(io.StringIO(flows(trace, "--community-id", fmt="csv"))))
    assert record["community_id"] == row["community_id"] == tsv["community_id"]
