"""``aiomb flows --ipfix`` into a real collector: nfdump's nfcapd (Debian: apt-get install nfdump),
started on loopback into a temporary directory, read back with ``nfdump -o json``; every flow
must match what the same run printed as JSON lines. nfdump 1.7 keeps RFC 5103's reverse packet
and octet counts (as its ``out_packets``/``out_bytes``), times to the millisecond and the
forward TCP flags; it ignores the other reverse and the enterprise elements (the test collector in
test_ipfix.py checks those). nfcapd takes IPFIX over UDP only. The tests skip with one line when
nfcapd or nfdump is missing; ``.ci/run`` installs them and fails if these were skipped."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from ..conftest import REPO, corpus_path

if shutil.which("nfcapd") is None or shutil.which("nfdump") is None:
    pytest.skip("the IPFIX collector tests (tests/export/test_nfdump.py) need nfcapd and nfdump: "
                "apt-get install nfdump (Debian/Ubuntu)", allow_module_level=True)

CAPTURES = ["bench/echo-connections.pcap.gz",                   # 500 IPv4 TCP flows: 100 messages
            "zeek/testing/btest/Traces/ftp/ipv6.pcap",          # IPv6 (another template)
            "pcapplusplus/Tests/Pcap++Test/PcapExamples/three_http_streams.pcap"]


def start_nfcapd(directory, log):
    """nfcapd writing into ``directory`` from a free loopback UDP port, once it has bound it:
    (process, port)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", str(directory), "-t", "3600",
                                 "-B", "8000000"],      # a burst of 100 datagrams fits (as root)
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if f"127.0.0.1:{port}" in _bound_udp_ports():
                return proc, port
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    log.seek(0)
    pytest.fail(f"nfcapd did not start: {log.read()}")


def _bound_udp_ports() -> set:
    out = set()
    with open("/proc/net/udp") as fh:
        for line in list(fh)[1:]:
            addr, port = line.split()[1].split(":")
            ip = ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0))
            out.add(f"{ip}:{int(port, 16)}")
    return out


def run_into(collector, capture, port, log) -> tuple:
    """``aiomb flows CAPTURE --format jsonl --ipfix`` into the collector, then stop it (nfcapd
    writes its file as it ends): (the JSON lines, nfcapd's log)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "aiomb", "flows", capture, "--format", "jsonl",
                               "--ipfix", f"127.0.0.1:{port}", "--ipfix-domain", "5"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr
    log.seek(0)
    return proc.stdout, log.read()


@pytest.mark.parametrize("name", CAPTURES)
def test_nfcapd_collects_what_aiomb_flows_prints(name, tmp_path):
    capture = corpus_path() / name
    flows_dir = tmp_path / "flows"
    flows_dir.mkdir()
    with open(tmp_path / "nfcapd.log", "w+") as log:
        collector, port = start_nfcapd(flows_dir, log)
        text = run_into(collector, capture, port, log)
    rows = [json.loads(line) for line in text[0].splitlines()]
    assert f"Flows: {len(rows)}," in text[1] and "Sequence Errors: 0," in text[1], text[1]
    assert "Observation domain 5 from: 127.0.0.1" in text[1], text[1]
    read = subprocess.run(["nfdump", "-R", str(flows_dir), "-o", "json"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "TZ": "UTC"})

    assert read.returncode == 0, read.stderr
    flows = json.loads(read.stdout)
    assert len(flows) == len(rows)
    got = {}
    for f in flows:
        src, dst = f.get("src4_addr", f.get("src6_addr")), f.get("dst4_addr", f.get("dst6_addr"))
        got[src, f["src_port"], dst, f["dst_port"], f["proto"]] = f
    for r in rows:
        f = got.pop((r["client_ip"], r["client_port"], r["server_ip"], r["server_port"],
                     6 if r["proto"] == "tcp" else 17))
        assert (f["in_packets"], f["in_bytes"]) == (r["client_packets"], r["client_ip_bytes"])
        assert (f["out_packets"], f["out_bytes"]) == (r["server_packets"], r["server_ip_bytes"])
        for field, ts in (("first", r["first_ts"]), ("last", r["last_ts"])):
            t = time.strptime(f[field][:19], "%Y-%m-%dT%H:%M:%S")
            ms = (int(time.mktime(t)) - time.timezone) * 1000 + int(f[field][20:23])
            assert abs(ms - ts * 1000) < 1, (field, f[field], ts)
        if r["proto"] == "tcp" and r["end_reason"] == "fin":
            assert "S" in f["tcp_flags"] and "F" in f["tcp_flags"] and "A" in f["tcp_flags"]
    assert got == {}
