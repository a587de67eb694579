"""The inline examples live: ``aiomb run examples/firewall.py|nat.py --iface X --inline Y`` between a
client namespace and a server namespace (the middlebox in a middle namespace, as in
test_cli_live.py's port guard)."""

import json
import os
import subprocess

from .lab import attached, wait_for
from .test_cli_live import AIOMB, REPO, client

CLIENT_IP, SERVER_IP = "10.205.0.1", "10.205.0.2"


def start(lab, mid, x, y, example, *app_options, duration=6):
    proc = lab.spawn([*AIOMB, "run", os.path.join("examples", example), "--iface", x, "--inline", y,
                      "--netns", mid, "--duration", str(duration), "--", *app_options],
                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: attached(mid, x) == "aiomb_xsk" and attached(mid, y) == "aiomb_xsk",
             what="both ports to attach")
    return proc


def test_firewall_inline(lab, tmp_path):
    client_ns, mid, server_ns, c, x, y, s = lab.inline_path(f"{CLIENT_IP}/24", f"{SERVER_IP}/24")
    lab.server(server_ns, SERVER_IP, 5001)
    lab.server(server_ns, SERVER_IP, 8080)
    rules = tmp_path / "rules.txt"
    rules.write_text("DROP any any dport:8080   # refused\nACCEPT any 10.205.0.0/24\n")
    proc = start(lab, mid, x, y, "firewall.py", "--rules", str(rules), "--default", "drop", "--json")
    blocked = client(client_ns, SERVER_IP, 8080, 100, 100, timeout="1")
    allowed = client(client_ns, SERVER_IP, 5001, 300_000, 200_000)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not blocked["ok"] and "timed out" in blocked["error"], blocked
    assert allowed["ok"] and allowed["received"] == 200_000, allowed
    lines = [json.loads(line) for line in out.splitlines()]
    verdicts = [(r["verdict"], r["rule"], r["client"].rsplit(":", 1)[0], r["server"]) for r in lines if "verdict" in r]
    assert verdicts == [("DROP", 1, CLIENT_IP, f"{SERVER_IP}:8080"), ("ACCEPT", 2, CLIENT_IP, f"{SERVER_IP}:5001")]
    assert [r["client"] for r in lines if "verdict" in r][1] == f"{CLIENT_IP}:{allowed['local_port']}"
    final = lines[-1]
    assert final["final"] and [h["hits"] for h in final["hits"]] == [1, 1, 0]
    # the refused SYN and its retransmission(s): only they were dropped (no orphans)
    assert final["orphans_dropped"] == 0 and 1 <= final["dropped_packets"] <= 3
    assert sum(1 for r in lines if "hits" in r and not r["final"]) >= 3    # a tick every second
    assert attached(mid, x) is None and attached(mid, y) is None



NAT_IP = "10.205.0.100"


def test_nat_inline(lab):
    """Connections from the client reach the server from the NAT address, byte-exact both ways;
    the NAT sees each connection as one flow (its replies translated before the flow lookup)."""
    client_ns, mid, server_ns, c, x, y, s = lab.inline_path(f"{CLIENT_IP}/24", f"{SERVER_IP}/24")
    lab.neighbour(server_ns, s, NAT_IP, lab.mac(c, client_ns))     # replies to the NAT address go to the wire
    server = lab.server(server_ns, SERVER_IP, 5001)
    proc = start(lab, mid, x, y, "nat.py", "--address", NAT_IP, "--ports", "30000-30009", "--json")
    results = [client(client_ns, SERVER_IP, 5001, up, down) for up, down in [(300_000, 500_000), (1000, 2_000_000)]]
    seen = [json.loads(server.stdout.readline()) for _ in results]
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert all(r["ok"] for r in results), results
    assert [r["received"] for r in results] == [500_000, 2_000_000]
    assert [(r["upload_ok"], r["peer"]) for r in seen] == [(True, f"{NAT_IP}:30000"), (True, f"{NAT_IP}:30001")]
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["event"], r["client"], r["port"]) for r in lines[:-1]] == [
        ("map", f"{CLIENT_IP}:{results[0]['local_port']}", 30000),
        ("fin", f"{CLIENT_IP}:{results[0]['local_port']}", 30000),
        ("map", f"{CLIENT_IP}:{results[1]['local_port']}", 30001),
        ("fin", f"{CLIENT_IP}:{results[1]['local_port']}", 30001)]
    summary = lines[-1]         # one flow per connection, both directions, ended by its FIN close
    assert summary["rewritten"] and summary["mapped"] == summary["freed"] == summary["flows"] == 2
    assert summary["open"] == summary["exhausted"] == summary["unmatched"] == 0
    assert summary["translated"] > 1700
    assert attached(mid, x) is None and attached(mid, y) is None
