"""The aiomb command line's handling of what it is given: option values (overlap policies, flow
keys, filters on VLAN IDs, live-only options with a capture), capture paths (``-`` for standard
input, gzip from a pipe, a name after ``--``), the table with --vlan, and output into a pipe that
closes early, whatever the format and however stdout is buffered."""

import gzip
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import aiomb
from aiomb._core import POLICIES
from aiomb.testing import TcpConversation, udp_frame, write_pcap

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO = REPO / "examples/captures/demo.pcapng"
AIOMB = (sys.executable, "-m", "aiomb")


def run(*argv, env=None, **kwargs):
    return subprocess.run([*AIOMB, *map(str, argv)], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=None if env is None else {**os.environ, **env}, **kwargs)


def usage_error(proc) -> str:
    """The one-line usage error of a refused command line (exit status 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    return proc.stderr.splitlines()[-1]


def jsonl(stdout):
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def vlans(tmp_path_factory) -> pathlib.Path:
    """One connection in VLAN 10, then the same connection in VLAN 20, then untagged."""
    frames = []
    for start, vlan in ((1.0, (10,)), (2.0, (20,)), (3.0, ())):
        c = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80), vlan=vlan, start_ts=start)
        c.handshake()
        c.send("client", b"GET / HTTP/1.0\r\n\r\n")
        frames += c.frames
    path = tmp_path_factory.mktemp("vlans") / "vlans.pcap"
    write_pcap(path, frames)
    return path


# -- F1: --policy takes the engine's policy names -------------------------------------------


@pytest.mark.parametrize("command", [("flows", DEMO), ("stream", DEMO, "--flow", "2")])
def test_an_unknown_policy_is_a_usage_error_naming_the_policies(command):
    line = usage_error(run(*command, "--policy", "bogus"))
    assert line.startswith(f"aiomb {command[0]}: error: argument --policy: invalid choice: 'bogus' (choose from ")
    assert all(name in line for name in POLICIES)


@pytest.mark.parametrize("command", ["flows", "stream"])
def test_help_lists_the_policies(command):
    proc = run(command, "--help")
    assert proc.returncode == 0
    assert "{" + ",".join(POLICIES) + "}" in proc.stdout.replace("\n", "").replace(" ", "")


def test_a_policy_name_is_taken():
    assert run("flows", DEMO, "--policy", "linux").returncode == 0


# -- F5: a filter on VLAN IDs needs VLAN tags in the flow key --------------------------------


@pytest.mark.parametrize("expression, position", [("vlan 20", 0), ("tcp and not vlan", 12),
                                                  ("port 80 and (vlan 10 or 20)", 13)])
def test_a_filter_on_vlans_without_vlan_is_refused(vlans, expression, position):
    proc = run("flows", vlans, "--format", "jsonl", "--filter", expression)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("aiomb: error: bad --filter expression:\n"
                                  f"a filter on VLAN IDs needs VLAN tags in the flow key at position {position}\n")
    assert "add --vlan (vlan_in_key=True)" in proc.stderr


def test_a_filter_on_vlans_with_vlan_matches_as_tcpdump(vlans):
    proc = run("flows", vlans, "--format", "jsonl", "--vlan", "--filter", "vlan 20")
    assert proc.returncode == 0, proc.stderr
    assert [(r["flow"], r["vlan"]) for r in jsonl(proc.stdout)] == [(2, "20")]
    proc = run("flows", vlans, "--format", "jsonl", "--vlan", "--filter", "not vlan")
    assert [(r["flow"], r["vlan"]) for r in jsonl(proc.stdout)] == [(3, "")]


def test_the_python_api_refuses_a_filter_on_vlans_without_vlan_in_key(vlans):
    with pytest.raises(aiomb.FilterError, match=r"(?s)VLAN IDs needs VLAN tags in the flow key.*vlan_in_key=True"):
        aiomb.read_flows(str(vlans), filter="vlan 20")
    with pytest.raises(aiomb.FilterError, match="VLAN IDs needs VLAN tags in the flow key"):
        aiomb.read_flows(str(vlans), filter="vlan 20", workers=2)
    with pytest.raises(aiomb.FilterError, match="VLAN IDs needs VLAN tags in the flow key"):
        aiomb.Engine().add_middlebox(aiomb.FlowFilter("vlan 20"))
    assert [r["vlan"] for r in aiomb.read_flows(str(vlans), filter="vlan 20", vlan_in_key=True)] == ["20"]
    assert len(aiomb.read_flows(str(vlans), filter="tcp port 80")) == 1


# -- F6: the table shows the VLAN IDs with --vlan; Zeek's id.ctx.vlan --------------------------


def test_the_table_has_a_vlan_column_with_vlan(vlans):
    proc = run("flows", vlans, "--vlan")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:3] == ["flow", "proto", "vlan"]
    assert [row.split()[:3] for row in rows] == [["1", "tcp", "10"], ["2", "tcp", "20"], ["3", "tcp", "-"]]
    proc = run("flows", vlans)
    assert "vlan" not in proc.stdout.splitlines()[0]


def test_jsonl_and_csv_always_carry_vlan(vlans):
    """The field is there with or without --vlan (programs parse a fixed schema), empty without."""
    assert [r["vlan"] for r in jsonl(run("flows", vlans, "--format", "jsonl").stdout)] == [""]
    assert run("flows", vlans, "--format", "csv").stdout.splitlines()[0].split(",")[:7] == [
        "flow", "proto", "client_ip", "client_port", "server_ip", "server_port", "vlan"]


# -- F7: live-only options with a capture -----------------------------------------------------


@pytest.mark.parametrize("option", [("--queues", "0"), ("--mode", "native"), ("--netns", "x"), ("--force",),
                                    ("--prefilter-protocols", "tcp"), ("--prefilter-ports", "80"),
                                    ("--prefilter-networks", "10.0.0.0/8"), ("--duration", "1")])
@pytest.mark.parametrize("command", [("flows", DEMO), ("run", "APP", "--pcap", DEMO)])
def test_a_live_only_option_with_a_capture_is_refused(tmp_path, command, option):
    app = tmp_path / "app.py"
    app.write_text("def main(source):\n    pass\n")
    command = tuple(app if a == "APP" else a for a in command)
    line = usage_error(run(*command, *option))
    assert line == (f"aiomb: error: {option[0]} is for live ports (--iface IF); a capture has no queues, "
                    "XDP mode, namespace or pre-filter, and is read to its end: drop it")


def test_several_live_only_options_are_named_together(tmp_path):
    line = usage_error(run("flows", DEMO, "--prefilter-ports", "80", "--queues", "0", "--netns", "x"))
    assert line.startswith("aiomb: error: --queues, --netns and --prefilter-ports are for live ports (--iface IF);")
    app = tmp_path / "app.py"
    app.write_text("def setup(stack):\n    pass\n")
    app_line = usage_error(run("run", app, "--pcap", DEMO, "--inline", "eth1"))
    assert app_line.startswith("aiomb: error: --inline is for live ports (--iface IF);")


# -- F8: --key is parsed, compared in canonical form, and checked -----------------------------


@pytest.mark.parametrize("key", ["[2001:DB8::10]:51001-[2001:db8:1::20]:80",
                                 "[2001:db8:0::10]:51001-[2001:0db8:1:0:0:0:0:20]:80",
                                 "[2001:db8::10]:51001-[2001:db8:1::20]:80"])
def test_a_key_names_a_flow_in_any_spelling_of_its_addresses(key):
    by_number = run("stream", DEMO, "--flow", "3")
    proc = run("stream", DEMO, "--key", key)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == by_number.stdout != ""


@pytest.mark.parametrize("key", ["garbage", "10.0.0.1:40000", "10.0.0.1:40000-10.0.0.2", "10.0.0.1:x-10.0.0.2:80",
                                 "10.0.0.1:40000-10.0.0.2:70000", "2001:db8::1:5-2001:db8::2:80",
                                 "[2001:db8::1:5-[2001:db8::2]:80", "[10.0.0.300]:1-10.0.0.2:80",
                                 "10.0.0.1:1-[2001:db8::2]:80"])
def test_a_malformed_key_is_a_usage_error_saying_the_form(key):
    line = usage_error(run("stream", DEMO, "--key", key))
    assert line.startswith(f"aiomb: error: bad --key {key!r}: ")
    assert line.endswith("give CLIENT_IP:PORT-SERVER_IP:PORT, IPv6 addresses in brackets "
                         "(10.0.0.1:40000-10.0.0.2:80, [2001:db8::1]:40000-[2001:db8::2]:80)")


# -- F9: - is standard input; gzip through a pipe ---------------------------------------------


@pytest.fixture(scope="module")
def demo_gz(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("gz") / "demo.pcapng.gz"
    path.write_bytes(gzip.compress(DEMO.read_bytes()))
    return path


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("name", ["-", "/dev/stdin"])
def test_a_capture_through_a_pipe_plain_or_gzip(demo_gz, name, gzipped):
    """`cat x | aiomb flows -` (or /dev/stdin): the same records as from the file."""
    command = " ".join(f"'{a}'" for a in ("cat", demo_gz if gzipped else DEMO, "|", *AIOMB, "flows", name,
                                           "--format", "jsonl")).replace("'|'", "|")
    proc = subprocess.run(["sh", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == run("flows", DEMO, "--format", "jsonl").stdout


def test_stream_and_run_read_standard_input_too(tmp_path, demo_gz):
    with open(demo_gz, "rb") as stdin:
        proc = subprocess.run([*AIOMB, "stream", "-", "--flow", "2"], stdin=stdin, cwd=REPO, capture_output=True,
                              timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == subprocess.run([*AIOMB, "stream", DEMO, "--flow", "2"], capture_output=True).stdout
    app = tmp_path / "app.py"
    app.write_text("import aiomb\n\ndef setup(stack):\n    stack.on(aiomb.CONN_START, lambda pkt: print(pkt.dport))\n")
    with open(DEMO, "rb") as stdin:
        proc = subprocess.run([*AIOMB, "run", app, "--pcap", "-"], stdin=stdin, cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr, proc.stdout) == (0, "", "80\n80\n25\n8080\n80\n443\n")


# -- F10: a closed pipe gives 141 whatever the format and buffering ---------------------------


def closed_early(argv, env) -> tuple[int, bytes]:
    """(exit status, stderr) of a command whose reader takes 100 bytes, then closes the pipe."""
    with subprocess.Popen([str(a) for a in argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert len(proc.stdout.read(100)) == 100
        proc.stdout.close()
        err = proc.stderr.read()
        return proc.wait(timeout=60), err


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> pathlib.Path:
    """3000 UDP flows: every format prints far more than a pipe holds."""
    path = tmp_path_factory.mktemp("many") / "many.pcap"
    write_pcap(path, [(1.0 + i * 1e-3, udp_frame(f"10.1.{i >> 8}.{i & 255}", "10.0.0.53", 1024 + i, 53, b"q"))
                      for i in range(3000)])
    return path


@pytest.mark.parametrize("unbuffered", ["", "1"])
@pytest.mark.parametrize("argv", [("--format", "table"), ("--format", "jsonl"), ("--format", "csv"),
                                  ("--format", "jsonl", "--community-id"), ("--format", "zeek"),
                                  ("--format", "zeek-json")])
def test_output_into_a_pipe_closed_early_exits_141(many, argv, unbuffered):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    assert closed_early((*AIOMB, "flows", many, *argv), env) == (141, b"")


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_stream_into_a_pipe_closed_early_exits_141(tmp_path, unbuffered):
    c = TcpConversation()
    c.handshake()
    for _ in range(64):
        c.send("client", b"x" * 1400)
    path = tmp_path / "big.pcap"
    write_pcap(path, c.frames)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    assert closed_early((*AIOMB, "stream", path, "--flow", "1"), env) == (141, b"")


# -- F11: -- ends the options of flows and stream ---------------------------------------------


def test_double_dash_ends_the_options_of_flows_and_stream(tmp_path):
    shutil.copy(DEMO, tmp_path / "-dash.pcapng")
    expected = run("flows", DEMO, "--format", "csv").stdout
    proc = subprocess.run([*AIOMB, "flows", "--format", "csv", "--", "-dash.pcapng"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (proc.returncode, proc.stderr, proc.stdout) == (0, "", expected)
    proc = subprocess.run([*AIOMB, "stream", "--flow", "2", "--", "-dash.pcapng"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == run("stream", DEMO, "--flow", "2").stdout
    line = usage_error(run("flows", DEMO, "--", "x"))
    assert line.endswith("error: unrecognized arguments: x")
