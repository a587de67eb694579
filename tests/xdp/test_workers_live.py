"""Live workers: ``aiomb flows --iface IF --workers N``. aiomb's steering program on the
interface sends each frame, by its IP address pair, into one worker's veth pair; each worker
reads its own with AF_XDP. Real connections from several client addresses through a mirror tap:
every connection is reported once, both directions counted by one engine, and the frames are
spread over the workers as the steering hash says."""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from pyroute2 import IPRoute

import aiomb
from aiomb import EndReason
from aiomb._live_workers import FanoutRun
from aiomb.io import _bpf
from aiomb.testing import tcp_frame

from ..conftest import children, running
from .lab import PEER, attached, sh, wait_for
from .test_cli_live import AIOMB, REPO

LEFT_IP, RIGHT_IP = "10.205.0.1", "10.205.0.2"
CLIENTS = [f"10.205.0.{10 + k}" for k in range(8)]


def hosts(lab):
    """left <-> right with eight more client addresses on the left, mirrored to a monitor
    interface in a namespace of its own; a transfer server on the right."""
    watch = lab.netns("w")
    left, a, right, b, n = lab.tapped_pair(f"{LEFT_IP}/24", f"{RIGHT_IP}/24", mon_ns=watch)
    for ip in CLIENTS:
        lab.address(left, a, f"{ip}/24")
        lab.neighbour(right, b, ip, lab.mac(a, left))
    lab.server(right, RIGHT_IP, 5001)
    return left, watch, n


def transfer(ns, source, up=3000, down=40000):
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, PEER, "client", RIGHT_IP, "5001",
                           str(up), str(down), "5", source], capture_output=True, text=True, timeout=60)
    result = json.loads(proc.stdout)
    assert result["ok"], result
    return result


def steered_to(ip: str, count: int) -> int:
    frame = tcp_frame(ip, RIGHT_IP, 40000, 5001)
    return _bpf.steering_hash(frame, count)


def veths(ns):
    with IPRoute(netns=ns) as ipr:
        return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()
                if (link.get_attr("IFLA_IFNAME") or "").startswith("amb")]


def test_the_flows_of_two_workers_on_a_live_interface(lab):
    assert {steered_to(ip, 2) for ip in CLIENTS} == {0, 1}         # both workers get connections
    left, watch, n = hosts(lab)
    proc = lab.spawn([*AIOMB, "flows", "--iface", n, "--netns", watch, "--duration", "6", "--workers", "2",
                      "--format", "jsonl", "--stats"], cwd=REPO, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    wait_for(lambda: attached(watch, n) == _bpf.STEER_NAME, what="the steering program to attach")
    assert len(veths(watch)) == 4
    results = {ip: transfer(left, ip) for ip in CLIENTS}
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["flow"] for r in records) == list(range(1, len(records) + 1))
    mine = {(r["client_ip"], r["client_port"]): r for r in records if r["server_port"] == 5001}
    assert len(mine) == len(CLIENTS)
    for ip, result in results.items():
        rec = mine[(ip, result["local_port"])]           # one engine saw both directions
        assert (rec["end_reason"], rec["client_state"], rec["server_state"]) == ("fin", "CLOSED", "TIME_WAIT")
        assert (rec["client_payload_bytes"], rec["server_payload_bytes"]) == (3016, 40000)
        assert rec["client_bytes"] == 3016 and rec["server_bytes"] == 40000
    assert f"aiomb: {n}: " in err and "0 dropped by the ring" in err
    assert f" {len(records)} flows" in err
    assert attached(watch, n) is None and veths(watch) == []


def test_each_worker_reads_the_frames_steered_to_it(lab):
    left, watch, n = hosts(lab)
    run = FanoutRun(n, 2, netns=watch, midstream=False)
    rows = []

    def progress(r):
        if not done and attached(watch, n) == _bpf.STEER_NAME:
            for ip in CLIENTS:
                results.append(transfer(left, ip, 100, 100))
            done.append(True)
            r.stop(EndReason.END_OF_CAPTURE)

    done, results = [], []
    run.progress = progress
    for batch in run:
        rows += [batch[i] for i in range(len(batch))]
    assert {(r["client_ip"], r["server_port"]) for r in rows} == {(ip, 5001) for ip in CLIENTS}
    per_worker = [q.received for q in run.port_statistics().queues]
    expected = [sum(1 for ip in CLIENTS if steered_to(ip, 2) == k) for k in range(2)]
    frames = sum(r["client_packets"] + r["server_packets"] for r in rows)
    assert sum(per_worker) == frames and all(per_worker) and len(per_worker) == 2
    by_worker = [sum(r["client_packets"] + r["server_packets"] for r in rows
                     if steered_to(r["client_ip"], 2) == k) for k in range(2)]
    assert per_worker == by_worker and [bool(k) for k in expected] == [True, True]
    stats = run.statistics()
    assert stats.flows_created == len(CLIENTS) and stats.tcp_packets == frames
    assert attached(watch, n) is None and veths(watch) == []


def test_an_app_on_two_steered_workers(lab):
    """aiomb run APP --iface IF --workers 2: each worker runs the app on the frames steered to
    it (its stacks track all they get): every connection starts and ends once, in one worker,
    and the workers' summaries add up."""
    left, watch, n = hosts(lab)
    proc = lab.spawn([*AIOMB, "run", "examples/flow_monitor.py", "--iface", n, "--netns", watch, "--duration", "6",
                      "--workers", "2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: attached(watch, n) == _bpf.STEER_NAME, what="the steering program to attach")
    results = {ip: transfer(left, ip, 500, 500) for ip in CLIENTS}
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    for ip, result in results.items():
        key = f"tcp {ip}:{result['local_port']} -> {RIGHT_IP}:5001"
        assert sum(1 for line in lines if f" start  {key}" in line) == 1, key
        assert sum(1 for line in lines if f" end    {key}  fin" in line) == 1, key
    summaries = [line for line in lines if " flows: " in line]
    assert len(summaries) == 2 and sum(int(line.split()[0]) for line in summaries) == len(CLIENTS)
    assert attached(watch, n) is None and veths(watch) == []


def test_a_stale_fanout_is_replaced_and_misuse_refused(lab):
    left, watch, n = hosts(lab)
    stale = "amb3fffff-0"                   # a pid that cannot run (above pid_max)
    sh("ip", "link", "add", stale + "a", "type", "veth", "peer", "name", stale + "b", netns=watch)
    proc = subprocess.run([*AIOMB, "flows", "--iface", n, "--netns", watch, "--duration", "1", "--workers", "2",
                           "--format", "jsonl"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert veths(watch) == [] and attached(watch, n) is None
    sh("ip", "link", "set", n, "mtu", "9000", netns=watch)          # jumbo frames: refused with the fix
    sh("ip", "link", "set", lab.name("m"), "mtu", "9000", netns=left)  # (a veth checks its peer's MTU)
    jumbo = subprocess.run([*AIOMB, "flows", "--iface", n, "--netns", watch, "--duration", "1", "--workers", "2"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert jumbo.returncode == 1 and f"{n}: its MTU (9000) is more than native XDP on a veth takes" in jumbo.stderr
    assert veths(watch) == [] and attached(watch, n) is None
    single = subprocess.run([*AIOMB, "flows", "--iface", n, "--netns", watch, "--duration", "1", "--mode", "native"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert single.returncode == 1 and "its MTU (9000) is more than the driver's XDP takes in native mode" \
        in single.stderr
    bad = subprocess.run([*AIOMB, "flows", "--iface", n, "--netns", watch, "--duration", "1", "--workers", "2",
                          "--queues", "0"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--queues does not go with --workers" in bad.stderr
    run_queues = subprocess.run([*AIOMB, "run", "examples/flow_monitor.py", "--iface", n, "--netns", watch,
                                 "--workers", "2", "--queues", "0"], cwd=REPO, capture_output=True, text=True,
                                timeout=60)
    assert run_queues.returncode == 2 and "drop --queues (or --workers)" in run_queues.stderr


async def connection_ends(stack):
    """Each TCP connection's end as a stack program in a worker sees it."""
    ends = []
    async with stack.subscribe(aiomb.CONN_END) as events:
        async for ev in events:
            key = ev.key
            ends.append((str(key.client_ip), key.client_port, key.server_port, ev.reason.name,
                         ev.stats.server.payload_bytes))
    return aiomb.worker(), ends


def test_run_workers_on_a_live_interface(lab):
    """aiomb.run_workers(fn, aiomb.port(IF), workers=2, duration=S): each worker's stack gets
    the flows steered to it, every connection ends once, and the steering and veths are gone
    afterwards."""
    left, watch, n = hosts(lab)
    results = {}

    def traffic():
        wait_for(lambda: attached(watch, n) == _bpf.STEER_NAME, what="the steering program to attach")
        results.update({ip: transfer(left, ip, 700, 7000) for ip in CLIENTS})

    driver = threading.Thread(target=traffic)
    driver.start()
    try:
        per_worker = aiomb.run_workers(connection_ends, aiomb.port(n, netns=watch), workers=2, duration=6)
    finally:
        driver.join(timeout=60)
    assert [place for place, _ in per_worker] == [(0, 2), (1, 2)]
    ends = [end for _, rows in per_worker for end in rows if end[2] == 5001]
    assert sorted((ip, port) for ip, port, *_ in ends) == sorted((ip, r["local_port"]) for ip, r in results.items())
    assert {(reason, payload) for *_, reason, payload in ends} == {("FIN", 7000)}
    for k, (_, rows) in enumerate(per_worker):
        assert {ip for ip, *_ in rows} == {ip for ip in CLIENTS if steered_to(ip, 2) == k}
    assert attached(watch, n) is None and veths(watch) == []


RUN_WORKERS = """
import sys
import aiomb

async def ends(stack):
    async with stack.subscribe(aiomb.CONN_END) as events:
        return [ev.key async for ev in events]

aiomb.run_workers(ends, aiomb.port(sys.argv[1], netns=sys.argv[2]), workers=2, duration=600)
"""


@pytest.mark.parametrize("command", ["run", "flows", "run_workers"])
def test_the_workers_clean_up_when_their_parent_is_killed(lab, command):
    """The parent of `aiomb run APP --iface IF --workers 2`, `aiomb flows --iface IF --workers 2`
    or aiomb.run_workers() on a port is killed (SIGKILL: it can neither pass a signal on nor
    close the steering): its workers end within seconds, and the steering program and every
    veth pair are gone (before, the workers ran on forever, reparented to init, past any
    --duration, holding their veth pairs; the program sent every frame into them)."""
    left, watch, n = hosts(lab)
    argv = {"run": [*AIOMB, "run", "examples/flow_monitor.py", "--iface", n, "--netns", watch, "--workers", "2"],
            "flows": [*AIOMB, "flows", "--iface", n, "--netns", watch, "--workers", "2", "--duration", "600"],
            "run_workers": [sys.executable, "-c", RUN_WORKERS, n, watch]}[command]
    proc = lab.spawn(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids = []
    try:
        wait_for(lambda: attached(watch, n) == _bpf.STEER_NAME, what="the steering program to attach")
        assert len(veths(watch)) == 4
        transfer(left, CLIENTS[0], 500, 500)        # the workers are at work
        kids = children(proc.pid)
        assert len(kids) == 2
        proc.kill()
        proc.wait()
        wait_for(lambda: not any(running(pid) for pid in kids), timeout=10, what="the workers to end")
        assert attached(watch, n) is None and veths(watch) == []
    finally:
        for pid in kids:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
