"""examples/nat.py: its handlers on writable frames through the Engine (each rewritten frame is
byte for byte the frame the other side of the NAT carries, checksums included; both directions
one flow), pool exhaustion, a run on a capture, and option errors."""

import importlib.util
import json
import pathlib
import subprocess
import sys
import types

import aiomb
from aiomb.testing import TcpConversation, udp_frame, write_pcap

REPO = pathlib.Path(__file__).resolve().parents[2]
NAT = REPO / "examples" / "nat.py"
NAT_IP, SERVER = "192.0.2.1", ("198.51.100.7", 80)


def load(ports):
    """A fresh copy of the module (its own table and pool) whose handlers run on a new Engine."""
    saved = sys.argv
    sys.argv = ["nat.py", "--address", NAT_IP, "--ports", ports]
    try:
        spec = importlib.util.spec_from_file_location("nat_under_test", NAT)
        nat = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(nat)
    finally:
        sys.argv = saved
    engine = aiomb.Engine()

    class InlineStack:                    # what setup() uses of a stack on an inline port
        source = types.SimpleNamespace(inline="outside0")

        def __init__(self, index=0):
            self.index = index

        def on(self, kind, handler, hook=None):
            engine.add_handler(kind, handler, middlebox=self.index, hook=hook)

        def middlebox(self, name, filter):
            return InlineStack(engine.add_middlebox(filter))
    nat.setup(InlineStack())
    return nat, engine


class Connection:
    """One connection as each side of the NAT carries it: inside C:c <-> S:s, outside A:a <-> S:s."""

    def __init__(self, client, nat_port, start_ts):
        self.inside = TcpConversation(client, SERVER, start_ts=start_ts)
        self.outside = TcpConversation((NAT_IP, nat_port), SERVER, start_ts=start_ts)

    def step(self, side, build):
        """(frame arriving at the NAT, the frame it must send on) for one segment from ``side``."""
        inside, outside = build(self.inside), build(self.outside)
        return (inside, outside) if side == "client" else (outside, inside)

    def exchange(self):
        return [self.step("client", lambda c: c.syn()), self.step("server", lambda c: c.syn_ack()),
                self.step("client", lambda c: c.ack()),
                self.step("client", lambda c: c.send("client", b"GET / HTTP/1.0\r\n\r\n")),
                self.step("server", lambda c: c.send("server", b"HTTP/1.0 200 OK\r\n\r\nhello")),
                self.step("client", lambda c: c.fin("client")), self.step("server", lambda c: c.fin("server")),
                self.step("client", lambda c: c.ack())]


def feed(engine, frame, ts):
    buf = bytearray(frame)
    return engine.feed(buf, ts), bytes(buf)


def test_rewritten_frames_are_exact_both_ways(capsys):
    nat, engine = load("61000-61001")
    conn = Connection(("10.0.0.5", 40000), 61000, 1.0)
    for i, (arriving, expected) in enumerate(conn.exchange()):
        verdict, sent = feed(engine, arriving, 1.0 + i / 100)
        assert verdict == aiomb.Verdict.FORWARD and sent == expected, i
    assert dict(nat.counters) == {"mapped": 1, "freed": 1}
    assert list(nat.pool) == [61001, 61000]             # freed at the last ACK, to the back of the pool
    stats = engine.statistics()                         # one flow, both ways, ended by the FIN close
    assert (stats.flows_created, stats.flows_ended, stats.orphans) == (1, 1, 0)
    assert (stats.client_packets, stats.server_packets, stats.translated_packets) == (5, 3, 8)
    assert capsys.readouterr().out.splitlines() == [
        f"1.000000 map   10.0.0.5:40000 -> 198.51.100.7:80 as {NAT_IP}:61000",
        f"1.070000 fin   10.0.0.5:40000 -> 198.51.100.7:80 as {NAT_IP}:61000"]
    # the checksums are right: a verifying engine takes every rewritten frame
    checker = aiomb.Engine(checksums="verify")
    for _, expected in Connection(("10.0.0.5", 40000), 61000, 5.0).exchange():
        checker.feed(expected, 5.0)
    assert checker.statistics().malformed.get("bad_checksum", 0) == 0 and checker.statistics().packets == 8


def test_pool_exhaustion_drops_the_flow_and_a_freed_port_is_taken_again():
    nat, engine = load("62000-62000")
    first = Connection(("10.0.0.5", 40000), 62000, 1.0)
    second = Connection(("10.0.0.6", 40001), 62000, 1.5)
    steps = first.exchange()
    for arriving, expected in steps[:3]:
        assert feed(engine, arriving, 1.0) == (aiomb.Verdict.FORWARD, expected)
    syn, _ = second.step("client", lambda c: c.syn())
    again, _ = second.step("client", lambda c: c.syn())
    assert feed(engine, syn, 1.5) == (aiomb.Verdict.DROP, syn)          # no port left: dropped, untouched
    assert feed(engine, again, 2.5) == (aiomb.Verdict.DROP, again)      # and so is the rest of that flow
    for arriving, expected in steps[3:]:
        assert feed(engine, arriving, 3.0) == (aiomb.Verdict.FORWARD, expected)
    third = Connection(("10.0.0.7", 40002), 62000, 4.0)                 # the port came back
    for arriving, expected in third.exchange()[:3]:
        assert feed(engine, arriving, 4.0) == (aiomb.Verdict.FORWARD, expected)
    assert nat.counters["exhausted"] == 1 and nat.counters["unmatched"] == 2
    assert nat.counters["mapped"] == 2 and nat.counters["freed"] == 1
    # a reply to a port nobody holds, or from another server, is dropped
    stray = TcpConversation(("203.0.113.9", 443), (NAT_IP, 62000), start_ts=5.0)
    assert feed(engine, stray.syn(), 5.0)[0] == aiomb.Verdict.DROP
    assert nat.counters["unmatched"] == 3


def test_udp_is_mapped_and_freed_at_its_end(capsys):
    nat, engine = load("63000-63000")
    query = udp_frame("10.0.0.5", SERVER[0], 5353, 53, b"query")
    assert feed(engine, query, 1.0) == (aiomb.Verdict.FORWARD, udp_frame(NAT_IP, SERVER[0], 63000, 53, b"query"))
    answer = udp_frame(SERVER[0], NAT_IP, 53, 63000, b"answer")
    assert feed(engine, answer, 1.1) == (aiomb.Verdict.FORWARD, udp_frame(SERVER[0], "10.0.0.5", 53, 5353, b"answer"))
    other = udp_frame("10.0.0.6", SERVER[0], 5353, 53, b"query")     # no port left
    assert feed(engine, other, 1.2) == (aiomb.Verdict.DROP, other)
    engine.finish()
    assert engine.statistics().flows_created == 2 and list(nat.pool) == [63000]
    assert capsys.readouterr().out.splitlines()[1] == \
        f"1.200000 end_of_capture 10.0.0.5:5353 -> 198.51.100.7:53 as {NAT_IP}:63000"


def test_on_a_capture_it_maps_and_counts_without_rewriting(tmp_path):
    frames = []
    for i, client in enumerate([("10.0.0.5", 40000), ("10.0.0.6", 40001)]):
        conn = Connection(client, 20000 + i, 1.0 + i)
        frames += [(1.0 + i + k / 100, arriving)
                   for k, (arriving, _) in enumerate(conn.exchange())]
    path = tmp_path / "nat.pcap"
    write_pcap(path, frames)
    proc = subprocess.run([sys.executable, "-m", "aiomb", "run", str(NAT), "--pcap", str(path), "--",
                           "--address", NAT_IP, "--ports", "20000-20009", "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["ts"], r["event"], r["client"], r["port"]) for r in lines[:-1]] == [
        (1.0, "map", "10.0.0.5:40000", 20000), (1.07, "fin", "10.0.0.5:40000", 20000),
        (2.0, "map", "10.0.0.6:40001", 20001), (2.07, "fin", "10.0.0.6:40001", 20001)]
    assert lines[-1] == {"mapped": 2, "freed": 2, "open": 0, "exhausted": 0, "unmatched": 0,
                         "flows": 2, "translated": 16, "rewritten": False}    # one flow per connection


def test_bad_options_exit_with_status_2(tmp_path):
    path = tmp_path / "empty.pcap"
    write_pcap(path, [])
    for options, message in [
        (["--address", "nat", "--ports", "1-2"], "--address 'nat' is not an IP address"),
        (["--address", NAT_IP, "--ports", "9-3"], "--ports '9-3' is not a range LO-HI with 1 <= LO <= HI <= 65535"),
        (["--address", NAT_IP], "the following arguments are required: --ports"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "aiomb", "run", str(NAT), "--pcap", str(path), "--", *options],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr.splitlines()[-1], proc.stderr
