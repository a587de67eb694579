"""The command line on live ports: ``aiomb flows --iface``, ``aiomb run --iface [--inline]`` with
the bundled examples, and Ctrl-C detaching the program."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .lab import PEER, attached, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AIOMB = [sys.executable, "-m", "aiomb"]
LEFT_IP, RIGHT_IP = "10.204.0.1", "10.204.0.2"


def client(ns, ip, port, up, down, timeout="5"):
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, PEER, "client", ip, str(port),
                           str(up), str(down), timeout], capture_output=True, text=True, timeout=60)
    return json.loads(proc.stdout)


def watched_pair(lab):
    watch = lab.netns("w")
    left, _, right, _, n = lab.tapped_pair(f"{LEFT_IP}/24", f"{RIGHT_IP}/24", mon_ns=watch)
    lab.server(right, RIGHT_IP, 5001)
    return left, watch, n


def test_flows_on_a_live_interface(lab):
    left, watch, n = watched_pair(lab)
    proc = lab.spawn([*AIOMB, "flows", "--iface", n, "--netns", watch, "--duration", "5",
                      "--format", "jsonl", "--prefilter-ports", "5001"], cwd=REPO,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: attached(watch, n) == "aiomb_xsk", what="the port to attach")
    results = [client(left, RIGHT_IP, 5001, 2000, 30000) for _ in range(2)]
    assert all(r["ok"] for r in results)
    subprocess.run(["ip", "netns", "exec", left, sys.executable, PEER, "udp", RIGHT_IP, "5002", "5", "10"],
                   check=True, capture_output=True)      # not on port 5001: filtered in the kernel
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert {r["server_port"] for r in records} == {5001}
    mine = {r["client_port"]: r for r in records}
    for r in results:
        rec = mine[r["local_port"]]
        assert (rec["proto"], rec["client_ip"], rec["server_ip"], rec["server_port"]) == \
            ("tcp", LEFT_IP, RIGHT_IP, 5001)
        assert (rec["end_reason"], rec["client_state"], rec["server_state"]) == ("fin", "CLOSED", "TIME_WAIT")
        assert rec["server_payload_bytes"] == 30000 and rec["client_payload_bytes"] == 2016
        assert rec["first_ts"] > time.time() - 60
    assert f"aiomb: {n}: " in err and "frames received, 0 dropped by the ring" in err
    assert attached(watch, n) is None


def test_run_port_guard_inline(lab):
    client_ns, mid, server_ns, c, x, y, s = lab.inline_path(f"{LEFT_IP}/24", f"{RIGHT_IP}/24")
    lab.server(server_ns, RIGHT_IP, 5001)
    lab.server(server_ns, RIGHT_IP, 8080)
    proc = lab.spawn([*AIOMB, "run", "examples/port_guard.py", "--iface", x, "--inline", y,
                      "--netns", mid, "--duration", "6"], cwd=REPO, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    wait_for(lambda: attached(mid, x) == "aiomb_xsk" and attached(mid, y) == "aiomb_xsk",
             what="both ports to attach")
    blocked = client(client_ns, RIGHT_IP, 8080, 100, 100, timeout="1")
    allowed = client(client_ns, RIGHT_IP, 5001, 100_000, 100_000)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not blocked["ok"] and allowed["ok"]
    assert "of 1 flows to ports [25, 8080]" in out
    assert attached(mid, x) is None and attached(mid, y) is None


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_detaches(lab, signum):
    """Ctrl-C cancels the run; SIGTERM and SIGHUP end the port's input first (the open flows end
    as at the end of a capture); each detaches the program and exits with 128 + the signal."""
    left, watch, n = watched_pair(lab)
    proc = lab.spawn([*AIOMB, "run", "examples/flow_monitor.py", "--iface", n, "--netns", watch],
                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: attached(watch, n) == "aiomb_xsk", what="the port to attach")
    assert client(left, RIGHT_IP, 5001, 10, 10)["ok"]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err
    assert f"start  tcp {LEFT_IP}:" in out
    assert attached(watch, n) is None


def test_live_usage_errors(lab):
    proc = subprocess.run([*AIOMB, "flows", "--iface", "lo"], cwd=REPO, capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (2, "aiomb: error: --iface needs --duration SECONDS "
                                                 "(how long to watch)\n")
    proc = subprocess.run([*AIOMB, "flows", "--iface", "nosuch0", "--duration", "1"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("aiomb: error: no interface named 'nosuch0'")
    proc = subprocess.run([*AIOMB, "flows", "--iface", "lo", "--duration", "1", "--prefilter-protocols",
                           "tcpp"], cwd=REPO, capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (2, "aiomb: error: bad pre-filter: unknown protocol 'tcpp'; "
                                                 "use a number or one of ['icmp', 'icmpv6', 'sctp', "
                                                 "'tcp', 'udp']\n")
