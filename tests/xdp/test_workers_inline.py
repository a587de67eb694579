"""Inline workers: client namespace <-> [x | middle | y] <-> server namespace, with aiomb's
steering program on both x and y sending each frame, by its IP address pair, into one worker's
veth pairs; each worker's port joins its two pairs inline and forwards what its handlers do not
drop, and a forwarding program on the near ends sends it on out of the other interface."""

import json
import os
import subprocess
import sys
import threading

import pytest
from pyroute2 import IPRoute

import aiomb
from aiomb import CONN_END, PACKET_IN, Hook
from aiomb.io import _bpf
from aiomb.testing import tcp_frame, udp_frame

from .lab import PEER, attached, sh, wait_for
from .test_cli_live import AIOMB, REPO

SERVER_IP = "10.206.0.2"
CLIENTS = [f"10.206.0.{10 + k}" for k in range(6)]


def topology(lab):
    """Six client addresses in c's namespace, a server on s with servers on ports 5001 and 5002;
    GRO on at both ends so that the kernel can redirect frames into them (the forwarding
    programs' bpf_redirect into x and y delivers at c and s)."""
    client, mid, server, c, x, y, s = lab.inline_path(f"{CLIENTS[0]}/24", f"{SERVER_IP}/24")
    for ip in CLIENTS[1:]:
        lab.address(client, c, f"{ip}/24")
        lab.neighbour(server, s, ip, lab.mac(c, client))
    for ns, dev in ((client, c), (server, s)):
        sh("ethtool", "-K", dev, "gro", "on", netns=ns)
    lab.server(server, SERVER_IP, 5001)
    lab.server(server, SERVER_IP, 5002)
    return client, mid, x, y


def transfer(ns, source, port, up=2000, down=30000, timeout=5):
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, PEER, "client", SERVER_IP, str(port),
                           str(up), str(down), str(timeout), source], capture_output=True, text=True, timeout=60)
    return json.loads(proc.stdout.splitlines()[-1])


def steered_to(ip: str, count: int) -> int:
    return _bpf.steering_hash(tcp_frame(ip, SERVER_IP, 40000, 5001), count)


def veths(ns):
    with IPRoute(netns=ns) as ipr:
        return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()
                if (link.get_attr("IFLA_IFNAME") or "").startswith("amb")]


async def guard_5002(stack):
    """Drop every packet to or from port 5002 (in the core, at the sender hook); report the
    connections that ended."""
    def guard(packet):
        if packet.flow.key.server_port == 5002:
            packet.drop()

    stack.on(PACKET_IN, guard, hook=Hook.SENDER)
    ends = []
    async with stack.subscribe(CONN_END) as events:
        async for ev in events:
            ends.append((str(ev.key.client_ip), ev.key.client_port, ev.key.server_port, ev.reason.name,
                         ev.stats.server.payload_bytes))
    return aiomb.worker(), ends, stack.statistics().engine.dropped_by_verdict


def test_run_workers_inline_forward_and_drop_per_worker(lab):
    assert {steered_to(ip, 2) for ip in CLIENTS} == {0, 1}
    client, mid, x, y = topology(lab)
    allowed, blocked = {}, {}

    def traffic():
        wait_for(lambda: attached(mid, x) == attached(mid, y) == _bpf.STEER_NAME, what="the steering programs")
        for ip in CLIENTS:
            allowed[ip] = transfer(client, ip, 5001)
            blocked[ip] = transfer(client, ip, 5002, timeout=1)

    driver = threading.Thread(target=traffic)
    driver.start()
    try:
        per_worker = aiomb.run_workers(guard_5002, aiomb.port(x, inline=y, netns=mid), workers=2, duration=10)
    finally:
        driver.join(timeout=90)
    assert all(r["ok"] for r in allowed.values()), allowed
    assert not any(r["ok"] for r in blocked.values()), blocked
    assert [place for place, *_ in per_worker] == [(0, 2), (1, 2)]
    ends = [end for _, rows, _ in per_worker for end in rows if end[2] == 5001]
    assert sorted((ip, port) for ip, port, *_ in ends) == sorted((ip, r["local_port"]) for ip, r in allowed.items())
    assert {reason for *_, reason, _ in ends} == {"FIN"}
    # every byte went through; payload_bytes counts a retransmitted segment's bytes again (a loaded
    # machine's TCP retransmits now and then)
    assert all(payload >= 30000 for *_, payload in ends), ends
    for k, (_, rows, dropped) in enumerate(per_worker):
        assert {ip for ip, *_ in rows} == {ip for ip in CLIENTS if steered_to(ip, 2) == k}
        assert dropped >= sum(1 for ip in CLIENTS if steered_to(ip, 2) == k)     # each blocked SYN at least
    assert attached(mid, x) is None and attached(mid, y) is None and veths(mid) == []


def test_aiomb_run_inline_workers(lab):
    """aiomb run APP --iface X --inline Y --workers 2: the app runs in each worker, and the
    connections go through."""
    client, mid, x, y = topology(lab)
    proc = lab.spawn([*AIOMB, "run", "examples/flow_monitor.py", "--iface", x, "--inline", y, "--netns", mid,
                      "--duration", "6", "--workers", "2"], cwd=REPO, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    wait_for(lambda: attached(mid, x) == attached(mid, y) == _bpf.STEER_NAME, what="the steering programs")
    results = {ip: transfer(client, ip, 5001) for ip in CLIENTS}
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert all(r["ok"] for r in results.values()), results
    lines = out.splitlines()
    for ip, result in results.items():
        key = f"tcp {ip}:{result['local_port']} -> {SERVER_IP}:5001"
        assert sum(1 for line in lines if f" end    {key}  fin" in line) == 1, (key, out)
    summaries = [line for line in lines if " flows: " in line]
    assert len(summaries) == 2
    assert attached(mid, x) is None and attached(mid, y) is None and veths(mid) == []


def test_frames_the_prefilter_rejects_bypass_the_workers(lab):
    """With a pre-filter taking only port 5001, the steering programs send port 5002's frames
    straight out of the other interface: no worker sees them, so its handler cannot drop them."""
    client, mid, x, y = topology(lab)
    results = {}

    def traffic():
        wait_for(lambda: attached(mid, x) == attached(mid, y) == _bpf.STEER_NAME, what="the steering programs")
        results.update({port: transfer(client, CLIENTS[0], port) for port in (5001, 5002)})

    driver = threading.Thread(target=traffic)
    driver.start()
    try:
        per_worker = aiomb.run_workers(guard_5002, aiomb.port(x, inline=y, netns=mid, prefilter={"ports": [5001]}),
                                       workers=2, duration=6)
    finally:
        driver.join(timeout=90)
    assert results[5001]["ok"] and results[5002]["ok"], results
    ends = [end for _, rows, _ in per_worker for end in rows]
    assert [(ip, port) for ip, _, port, *_ in ends] == [(CLIENTS[0], 5001)]
    assert sum(dropped for *_, dropped in per_worker) == 0


NAT_IP = "10.206.0.100"


@pytest.mark.parametrize("workers", [1, 2])
def test_nat_inline_on_workers(lab, workers):
    """examples/nat.py on N workers: every connection from the six clients (spread over both
    workers) goes through from the NAT address, although its replies' address pair (server, NAT)
    is steered to one worker only: each binding steers its flow's replies to the worker that
    made it. Each worker hands out ports of its own slice of the pool."""
    outside = _bpf.steering_hash(udp_frame(SERVER_IP, NAT_IP, 5001, 30000), 2)
    assert {steered_to(ip, 2) for ip in CLIENTS} == {0, 1}     # some clients' flows live where replies do not go
    client, mid, server, c, x, y, s = lab.inline_path(f"{CLIENTS[0]}/24", f"{SERVER_IP}/24")
    for ip in CLIENTS[1:]:
        lab.address(client, c, f"{ip}/24")
        lab.neighbour(server, s, ip, lab.mac(c, client))
    lab.neighbour(server, s, NAT_IP, lab.mac(c, client))     # replies to the NAT address go to the wire
    for ns, dev in ((client, c), (server, s)):
        sh("ethtool", "-K", dev, "gro", "on", netns=ns)
    listener = lab.server(server, SERVER_IP, 5001)
    proc = lab.spawn([*AIOMB, "run", os.path.join("examples", "nat.py"), "--iface", x, "--inline", y,
                      "--netns", mid, "--duration", "8", "--workers", str(workers), "--",
                      "--address", NAT_IP, "--ports", "30000-30009", "--json"],
                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    program = _bpf.STEER_NAME if workers > 1 else "aiomb_xsk"
    wait_for(lambda: attached(mid, x) == attached(mid, y) == program, what="the programs")
    results = {ip: transfer(client, ip, 5001, up=3000, down=50000) for ip in CLIENTS}
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert all(r["ok"] for r in results.values()), (results, out)
    seen = [json.loads(listener.stdout.readline()) for _ in CLIENTS]
    assert all(r["upload_ok"] and r["peer"].startswith(f"{NAT_IP}:") for r in seen), seen
    lines = [json.loads(line) for line in out.splitlines()]
    maps = {row["client"]: row["port"] for row in lines if row.get("event") == "map"}
    assert sorted(maps) == sorted(f"{ip}:{r['local_port']}" for ip, r in results.items())
    assert sorted(r["peer"] for r in seen) == sorted(f"{NAT_IP}:{port}" for port in maps.values())
    summaries = [row for row in lines if "mapped" in row]
    assert len(summaries) == workers
    assert sum(row["mapped"] for row in summaries) == sum(row["freed"] for row in summaries) == len(CLIENTS)
    assert all(row["unmatched"] == row["exhausted"] == row["open"] == 0 for row in summaries), summaries
    if workers == 2:        # each worker's ports from its own half of the pool, its clients' flows
        assert {ip_port.rsplit(":", 1)[0]: int(port >= 30005) for ip_port, port in maps.items()} == {
            ip: steered_to(ip, 2) for ip in CLIENTS}
        assert any(steered_to(ip, 2) != outside for ip in CLIENTS)
    assert attached(mid, x) is None and attached(mid, y) is None and veths(mid) == []
