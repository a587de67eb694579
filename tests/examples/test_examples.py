"""The examples run on the bundled capture and print exactly what its generator implies.

examples/captures/make_demo.py builds demo.pcapng: a DNS exchange (open at the end of the
capture), HTTP over IPv4 and IPv6 closed by FIN, a half-close on port 25, a refused
connection to port 8080 (RST), a SYN retry to port 80 with a GET /retry, and a reset in the
middle of a transfer on port 443.
"""

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DEMO = EXAMPLES / "captures" / "demo.pcapng"

FLOW_MONITOR = """\
1764547201.000000 start  udp 192.0.2.10:53000 -> 198.51.100.53:53
1764547201.100000 start  tcp 192.0.2.10:51000 -> 198.51.100.20:80
1764547201.190000 end    tcp 192.0.2.10:51000 -> 198.51.100.20:80  fin  packets 6/4  payload 37/51 bytes
1764547201.500000 start  tcp [2001:db8::10]:51001 -> [2001:db8:1::20]:80
1764547201.590000 end    tcp [2001:db8::10]:51001 -> [2001:db8:1::20]:80  fin  packets 6/4  payload 37/51 bytes
1764547202.000000 start  tcp 192.0.2.11:40100 -> 198.51.100.30:25
1764547202.180000 end    tcp 192.0.2.11:40100 -> 198.51.100.30:25  fin  packets 6/4  payload 6/66 bytes
1764547202.500000 start  tcp 192.0.2.12:40200 -> 198.51.100.40:8080
1764547202.501000 end    tcp 192.0.2.12:40200 -> 198.51.100.40:8080  rst  packets 1/1  payload 0/0 bytes
1764547203.000000 start  tcp 192.0.2.13:40300 -> 198.51.100.20:80
1764547203.200000 start  tcp 192.0.2.14:40400 -> 198.51.100.50:443
1764547203.235000 end    tcp 192.0.2.14:40400 -> 198.51.100.50:443  rst  packets 4/4  payload 63/3072 bytes
1764547211.000000 end    tcp 192.0.2.13:40300 -> 198.51.100.20:80  fin  packets 5/4  payload 23/27 bytes
1764547211.000000 end    udp 192.0.2.10:53000 -> 198.51.100.53:53  end_of_capture  packets 1/1  payload 12/28 bytes
7 flows: 1 end_of_capture, 4 fin, 2 rst
"""

PORT_GUARD = """\
1764547207.000000 suspicious request '/retry' on tcp 192.0.2.13:40300 -> 198.51.100.20:80
dropped 12 packets of 2 flows to ports [25, 8080]
"""

HOW = {
    "aiomb run": lambda name: [sys.executable, "-m", "aiomb", "run", f"examples/{name}"],
    "python example": lambda name: [sys.executable, f"examples/{name}"],
}


@pytest.fixture(scope="module")
def example_runs():
    """(how, example) -> CompletedProcess, every example both ways, run in parallel."""
    procs = {}
    for how, cmd in HOW.items():
        for name in ("flow_monitor.py", "port_guard.py"):
            args = cmd(name) + ["--pcap", "examples/captures/demo.pcapng"]
            procs[how, name] = (args, subprocess.Popen(args, cwd=REPO, text=True,
                                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = {}
    for key, (args, proc) in procs.items():
        out, err = proc.communicate(timeout=60)
        results[key] = subprocess.CompletedProcess(args, proc.returncode, out, err)
    return results


@pytest.mark.parametrize("how", HOW)
def test_flow_monitor(example_runs, how):
    proc = example_runs[how, "flow_monitor.py"]
    assert proc.stderr == ""
    assert proc.returncode == 0
    assert proc.stdout == FLOW_MONITOR
    lines = proc.stdout.splitlines()
    assert sum(" start  " in line for line in lines) == 7
    ends = [line for line in lines if " end    " in line]
    assert len(ends) == 7
    assert [re.search(r"  (\w+)  packets ", line).group(1) for line in ends] == [
        "fin", "fin", "fin", "rst", "rst", "fin", "end_of_capture"]


@pytest.mark.parametrize("how", HOW)
def test_port_guard(example_runs, how):
    proc = example_runs[how, "port_guard.py"]
    assert proc.stderr == ""
    assert proc.returncode == 0
    assert proc.stdout == PORT_GUARD


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == ["flow_monitor.py", "port_guard.py"]


def load_make_demo():
    spec = importlib.util.spec_from_file_location("make_demo", EXAMPLES / "captures" / "make_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundled_capture_is_what_make_demo_generates(tmp_path, monkeypatch):
    make_demo = load_make_demo()
    assert make_demo.HERE == DEMO.parent
    monkeypatch.setattr(make_demo, "HERE", tmp_path)
    make_demo.main()
    assert (tmp_path / "demo.pcapng").read_bytes() == DEMO.read_bytes()
    # Deterministic: a second run writes the same bytes.
    first = (tmp_path / "demo.pcapng").read_bytes()
    make_demo.main()
    assert (tmp_path / "demo.pcapng").read_bytes() == first
