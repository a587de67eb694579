"""The ``aiomb`` command line, run as ``python -m aiomb`` in subprocesses (cwd = the repo).

The bundled capture's flows are known exactly from examples/captures/make_demo.py. To keep
the module fast, a module fixture writes every input capture first and runs all commands
concurrently; each test then checks the result of its own commands.
"""

import concurrent.futures
import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import pathlib
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from aiomb.cli import FIELDS
from aiomb.testing import TcpConversation, tcp_frame, udp_frame, write_pcap

from ..conftest import children, running

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO = "examples/captures/demo.pcapng"
PYTHON_M_AIOMB = (sys.executable, "-m", "aiomb")


def record(flow, proto, client, server, packets, ip_bytes, payload, first_ts, last_ts,
           states, end, *, vlan="", midstream=False, streams=(b"", b""), rexmits=(0, 0), segments=(0, 0)):
    """One expected ``aiomb flows`` record; ``streams`` are the bytes each side sent (TCP), kept
    for the digests of ``--hash`` (see ``hashed``)."""
    STREAMS[flow] = streams if proto == "tcp" else None
    tcp = proto == "tcp"
    return {
        "flow": flow, "proto": proto,
        "client_ip": client[0], "client_port": client[1],
        "server_ip": server[0], "server_port": server[1], "vlan": vlan,
        "client_packets": packets[0], "server_packets": packets[1],
        "client_ip_bytes": ip_bytes[0], "server_ip_bytes": ip_bytes[1],
        "client_payload_bytes": payload[0], "server_payload_bytes": payload[1],
        "first_ts": first_ts, "last_ts": last_ts,
        "client_state": states[0], "server_state": states[1],
        "end_reason": end, "midstream": midstream,
        "client_bytes": len(streams[0]) if tcp else payload[0],
        "server_bytes": len(streams[1]) if tcp else payload[1],
        "client_missed": 0, "server_missed": 0,
        "client_rexmits": rexmits[0], "server_rexmits": rexmits[1],
        "client_overlap_conflicts": 0, "server_overlap_conflicts": 0,
        "client_data_segments": segments[0], "server_data_segments": segments[1],
        "client_retransmitted_bytes": 0, "server_retransmitted_bytes": 0,
        "client_out_of_order": 0, "server_out_of_order": 0,
        "client_zero_window_probes": 0, "server_zero_window_probes": 0,
    }


STREAMS: dict = {}


def hashed(rec, *names):
    """``rec`` as ``aiomb flows --hash NAME,...`` prints it: each side's digests at the end."""
    streams = STREAMS[rec["flow"]]
    out = dict(rec)
    for name in names:
        for side, data in zip(("client", "server"), streams or (None, None)):
            out[f"{side}_{name}"] = hashlib.new(name, data).hexdigest() if streams else ""
    return out


GET = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world\n"


DEMO_FLOWS = [
    record(1, "udp", ("192.0.2.10", 53000), ("198.51.100.53", 53), (1, 1), (40, 56), (12, 28),
           1764547201.0, 1764547201.004, ("", ""), "end_of_capture"),
    record(2, "tcp", ("192.0.2.10", 51000), ("198.51.100.20", 80), (6, 4), (277, 211), (37, 51),
           1764547201.1, 1764547201.19, ("TIME_WAIT", "CLOSED"), "fin", streams=(GET, OK), segments=(1, 1)),
    record(3, "tcp", ("2001:db8::10", 51001), ("2001:db8:1::20", 80), (6, 4), (397, 291), (37, 51),
           1764547201.5, 1764547201.59, ("TIME_WAIT", "CLOSED"), "fin", streams=(GET, OK), segments=(1, 1)),
    record(4, "tcp", ("192.0.2.11", 40100), ("198.51.100.30", 25), (6, 4), (246, 226), (6, 66),
           1764547202.0, 1764547202.18, ("TIME_WAIT", "CLOSED"), "fin",
           streams=(b"QUIT\r\n", b"221 bye\r\n(server still talking after the client closed its side)\r\n"),
           segments=(1, 2)),
    record(5, "tcp", ("192.0.2.12", 40200), ("198.51.100.40", 8080), (1, 1), (40, 40), (0, 0),
           1764547202.5, 1764547202.501, ("CLOSED", "CLOSED"), "rst"),
    record(6, "tcp", ("192.0.2.13", 40300), ("198.51.100.20", 80), (5, 4), (223, 187), (23, 27),
           1764547203.0, 1764547211.0, ("CLOSED", "TIME_WAIT"), "fin",
           streams=(b"GET /retry HTTP/1.1\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"), rexmits=(1, 0),
           segments=(1, 1)),
    record(7, "tcp", ("192.0.2.14", 40400), ("198.51.100.50", 443), (4, 4), (223, 3232), (63, 3072),
           1764547203.2, 1764547203.235, ("CLOSED", "CLOSED"), "rst",
           streams=(b"\x16\x03\x01" + bytes(60), bytes(range(256)) * 12), segments=(1, 3)),
]

DEMO_TABLE = """\
flow  proto  client                server               pkts c/s  ip bytes c/s  states            end
1     udp    192.0.2.10:53000      198.51.100.53:53     1/1       40/56         -                 end_of_capture
2     tcp    192.0.2.10:51000      198.51.100.20:80     6/4       277/211       TIME_WAIT/CLOSED  fin
3     tcp    [2001:db8::10]:51001  [2001:db8:1::20]:80  6/4       397/291       TIME_WAIT/CLOSED  fin
4     tcp    192.0.2.11:40100      198.51.100.30:25     6/4       246/226       TIME_WAIT/CLOSED  fin
5     tcp    192.0.2.12:40200      198.51.100.40:8080   1/1       40/40         CLOSED/CLOSED     rst
6     tcp    192.0.2.13:40300      198.51.100.20:80     5/4       223/187       CLOSED/TIME_WAIT  fin
7     tcp    192.0.2.14:40400      198.51.100.50:443    4/4       223/3232      CLOSED/CLOSED     rst
"""


# -- inputs ---------------------------------------------------------------------------


def demo_packet_blocks():
    """The demo capture's bytes and (offset, length) of each of its packet blocks."""
    data = (REPO / DEMO).read_bytes()
    packets, off = [], 0
    while off < len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        if btype == 6:
            packets.append((off, blen))
        off += blen
    return data, packets


def write_midstream(path):
    """A connection picked up mid-stream (no SYN seen), then a normal handshake."""
    mid = [
        (1.0, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, flags="PA", seq=100, ack=200,
                        payload=b"hello")),
        (1.1, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, flags="A", seq=200, ack=105)),
    ]
    conv = TcpConversation(("10.0.0.3", 40001), ("10.0.0.4", 443), start_ts=2.0)
    conv.handshake()
    write_pcap(path, mid + conv.frames)


def write_vlan(path):
    """The same connection seen twice: untagged and in VLAN 42, each copy 0.1 ms later."""
    copies = []
    for vlan in ((), (42,)):
        c = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80), vlan=vlan)
        c.handshake()
        c.send("client", b"GET / HTTP/1.0\r\n\r\n")
        c.fin("client")
        c.fin("server")
        c.ack("client")
        copies.append(c.frames)
    frames = []
    for (t, untagged), (_, tagged) in zip(*copies, strict=True):
        frames += [(t, untagged), (t + 0.0001, tagged)]
    write_pcap(path, frames)


class Inputs:
    def __init__(self, root):
        self.root = root
        data, packets = demo_packet_blocks()
        self.demo_packets = packets
        # Cut in the middle of the 20th packet (the IPv6 HTTP flow's 8th).
        self.cut_offset, self.cut_blen = packets[19]
        self.cut = root / "cut.pcapng"
        self.cut.write_bytes(data[:self.cut_offset + self.cut_blen // 2])
        self.missing = root / "missing.pcap"
        self.notes = root / "notes.txt"
        self.notes.write_text("hello, this is not a capture file at all\n")
        self.midstream = root / "mid.pcap"
        write_midstream(self.midstream)
        self.vlan = root / "vlan.pcap"
        write_vlan(self.vlan)
        self.empty_app = root / "nothing.py"
        self.empty_app.write_text("X = 1\n")


def commands(inp):
    """Name -> argv (after the executable) of every command this module checks."""
    flows_jsonl = ("flows", "--format", "jsonl")
    return {
        "table": ("flows", DEMO),
        "jsonl": (*flows_jsonl, DEMO),
        "jsonl-sorted": (*flows_jsonl, DEMO, "--sort"),
        "jsonl-hashes": (*flows_jsonl, DEMO, "--sort", "--hash", "sha256,md5"),
        "csv": ("flows", DEMO, "--format", "csv"),
        "csv-hash": ("flows", DEMO, "--format", "csv", "--hash", "sha1"),
        "bad-hash": ("flows", DEMO, "--hash", "crc32"),
        "port80": (*flows_jsonl, DEMO, "--filter", "tcp port 80"),
        "udp": (*flows_jsonl, DEMO, "--filter", "udp"),
        "bad-filter": ("flows", DEMO, "--filter", "tcp port"),
        "missing": ("flows", inp.missing),
        "directory": ("flows", inp.root),
        "not-a-capture": (*flows_jsonl, inp.notes),
        "truncated": (*flows_jsonl, inp.cut),
        "midstream": (*flows_jsonl, inp.midstream),
        "no-midstream": (*flows_jsonl, inp.midstream, "--no-midstream"),
        "no-vlan": (*flows_jsonl, inp.vlan),
        "vlan": (*flows_jsonl, inp.vlan, "--vlan"),
        "help": ("--help",),
        "run-empty-module": ("run", inp.empty_app, "--pcap", DEMO),
    }


def run(argv):
    return subprocess.run([str(a) for a in argv], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return Inputs(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def runs(inputs):
    """Name -> CompletedProcess of every command, run concurrently (plus the console script)."""
    argvs = {name: (*PYTHON_M_AIOMB, *args) for name, args in commands(inputs).items()}
    script = shutil.which("aiomb")
    if script is not None:
        argvs["console-script"] = (script, "flows", DEMO, "--format", "csv")
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run, argv) for name, argv in argvs.items()}
        return {name: f.result() for name, f in futures.items()}


def jsonl(stdout):
    return [json.loads(line) for line in stdout.splitlines()]


def as_csv_row(rec):
    return {k: str(v) for k, v in rec.items()}


def ok(proc):
    assert proc.stderr == ""
    assert proc.returncode == 0
    return proc.stdout


# -- flows on the bundled capture -----------------------------------------------------


def test_flows_table(runs):
    assert ok(runs["table"]) == DEMO_TABLE


# The order flows leave the table, which JSON lines and CSV follow (streamed as flows end): a
# closed flow lingers 5 s of packet time for stragglers; the DNS flow (1) and flow 6, which
# closes at the capture's end, leave at the end, oldest first.
END_ORDER = [2, 3, 4, 5, 7, 1, 6]


def test_flows_jsonl(runs):
    records = jsonl(ok(runs["jsonl"]))
    assert [list(r) for r in records] == [list(FIELDS)] * 7
    assert [r["flow"] for r in records] == END_ORDER
    assert sorted(records, key=lambda r: r["flow"]) == DEMO_FLOWS
    assert [r["end_reason"] for r in records].count("fin") == 4
    assert jsonl(ok(runs["jsonl-sorted"])) == DEMO_FLOWS


def test_flows_hashes_are_asked_for(runs):
    assert jsonl(ok(runs["jsonl-hashes"])) == [hashed(r, "sha256", "md5") for r in DEMO_FLOWS]
    rows = list(csv.DictReader(io.StringIO(ok(runs["csv-hash"]))))
    assert sorted(rows, key=lambda r: int(r["flow"])) == [as_csv_row(hashed(r, "sha1")) for r in DEMO_FLOWS]
    proc = runs["bad-hash"]
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "aiomb: error: bad --hash 'crc32': choose from sha256, md5, sha1 (comma-separated)\n"


def test_flows_csv(runs):
    out = ok(runs["csv"])
    reader = csv.DictReader(io.StringIO(out))
    assert tuple(reader.fieldnames) == FIELDS
    assert [int(r["flow"]) for r in list(csv.DictReader(io.StringIO(out)))] == END_ORDER
    assert sorted(reader, key=lambda r: int(r["flow"])) == [as_csv_row(r) for r in DEMO_FLOWS]
    assert out.splitlines()[0] == ",".join(FIELDS)


def test_filter_tcp_port_80(runs):
    records = jsonl(ok(runs["port80"]))
    assert records == [r for r in DEMO_FLOWS if r["server_port"] == 80]
    assert [r["flow"] for r in records] == [2, 3, 6]


def test_filter_udp(runs):
    assert jsonl(ok(runs["udp"])) == [DEMO_FLOWS[0]]


def test_bad_filter_expression(runs):
    proc = runs["bad-filter"]
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == "aiomb: error: bad --filter expression:"
    assert "after 'port' at position 8" in lines[1]
    assert lines[2] == "    tcp port"
    assert lines[3] == " " * 12 + "^"          # under the end of the expression



# -- capture errors -------------------------------------------------------------------


def test_missing_capture(runs, inputs):
    proc = runs["missing"]
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"aiomb: error: capture file not found: {inputs.missing}\n"


def test_directory_as_capture(runs, inputs):
    proc = runs["directory"]
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"aiomb: error: {inputs.root} is a directory; give a .pcap or .pcapng file\n"


def test_not_a_capture(runs, inputs):
    proc = runs["not-a-capture"]
    assert proc.returncode in (1, 2)
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"aiomb: error: {inputs.notes}: not a pcap or pcapng file")
    assert "magic 0x6c6c6568" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_truncated_capture(runs, inputs):
    assert len(inputs.demo_packets) == 51
    proc = runs["truncated"]
    assert proc.returncode == 1
    blen = inputs.cut_blen
    assert proc.stderr == (f"aiomb: error: {inputs.cut}: truncated block: header says {blen} bytes, "
                           f"file ends after {blen // 2} at offset {inputs.cut_offset}\n")
    records = jsonl(proc.stdout)
    assert [r["flow"] for r in records] == [1, 2, 3]
    # Flows seen before the cut: the DNS flow still open, HTTP/IPv4 complete, HTTP/IPv6 cut
    # after its first 7 packets (the client's FIN not yet seen).
    assert records[0] == {**DEMO_FLOWS[0], "end_reason": "open"}
    assert records[1] == DEMO_FLOWS[1]
    third = records[2]
    assert (third["client_packets"], third["server_packets"]) == (4, 3)
    assert (third["client_payload_bytes"], third["server_payload_bytes"]) == (37, 51)
    assert (third["client_state"], third["server_state"], third["end_reason"]) == (
        "ESTABLISHED", "ESTABLISHED", "open")



def drained(pipe, limit=10.0) -> None:
    """Wait until the reader has taken every byte written into ``pipe`` (a named pipe's write
    end): then it is in its run, waiting for more."""
    deadline = time.monotonic() + limit
    left = bytearray(4)
    while fcntl.ioctl(pipe.fileno(), termios.FIONREAD, left) == 0 and int.from_bytes(left, sys.byteorder):
        assert time.monotonic() < deadline, "the reader did not take the capture from the pipe"
        time.sleep(0.01)


def test_frames_of_a_link_type_it_does_not_read_are_named_on_stderr(tmp_path):
    """A capture of another link type gives no flow: a warning says why (it is not an error:
    a pcapng may mix interfaces, and the frames aiomb reads still count)."""
    frames = [(1.0, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=1, flags="S"))] * 3
    write_pcap(tmp_path / "lt147.pcap", frames, linktype=147)
    write_pcap(tmp_path / "eth.pcap", frames)
    other = run([*PYTHON_M_AIOMB, "flows", tmp_path / "lt147.pcap", "--format", "csv"])
    assert other.returncode == 0
    assert "warning: 3 frames of a link type aiomb does not read" in other.stderr
    assert "Ethernet" in other.stderr
    assert run([*PYTHON_M_AIOMB, "flows", tmp_path / "eth.pcap", "--format", "csv"]).stderr == ""


def open_flow_pcap() -> bytes:
    """A pcap of one connection left open: its handshake and a request (4 packets, 18 bytes)."""
    c = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80))
    c.handshake()
    c.send("client", b"GET / HTTP/1.0\r\n\r\n")
    data = io.BytesIO()
    write_pcap(data, c.frames)
    return data.getvalue()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_ends_a_quiet_pipe_at_once(tmp_path, signum):
    """The capture is a pipe whose writer stays open and quiet (tcpdump -w - with no traffic):
    the run waits for its next bytes; a signal ends it at once, the open flow written as
    interrupted (before, it waited for the next bytes or the writer to go)."""
    fifo = tmp_path / "live.pcap"
    os.mkfifo(fifo)
    proc = subprocess.Popen([*PYTHON_M_AIOMB, "flows", fifo, "--format", "jsonl", "--stats"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(fifo, "wb") as pipe:
        pipe.write(open_flow_pcap())
        pipe.flush()
        drained(pipe)
        proc.send_signal(signum)
        try:
            out, err = proc.communicate(timeout=10)     # the writer is still open
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{signal.Signals(signum).name} did not end the run while the pipe was quiet")
    assert proc.returncode == 128 + signum, err
    (rec,) = jsonl(out)
    assert (rec["end_reason"], rec["client_packets"], rec["client_bytes"]) == ("interrupted", 3, 18)
    assert err.startswith("aiomb: 4 packets, 1 flows, malformed: none; ")


FLOW_APP = """
import aiomb

async def run(stack):
    async with stack.subscribe(aiomb.CONN_START, aiomb.CONN_END) as events:
        async for ev in events:
            print("start" if ev.kind == aiomb.CONN_START else f"end {ev.reason} {ev.stats.client.packets}",
                  flush=True)
    print("done", flush=True)
"""


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_ends_aiomb_run_on_a_quiet_pipe_at_once(tmp_path, signum, workers):
    """`aiomb run APP --pcap FIFO`, the writer open and quiet: the stack waits for the pipe's
    next bytes with its Trio loop running, so a signal acts at once. SIGTERM and SIGHUP end the
    input (the open flow ends interrupted, the app sees it and returns), Ctrl-C cancels (before,
    each waited for the next bytes or the writer to go, and the flow ended end_of_capture).
    With two workers the same: the flow's worker prints its start and end, each prints "done"
    (before, SIGTERM and SIGHUP cancelled the workers' apps)."""
    app = tmp_path / "app.py"
    app.write_text(FLOW_APP)
    fifo = tmp_path / "live.pcap"
    os.mkfifo(fifo)
    proc = subprocess.Popen([*PYTHON_M_AIOMB, "run", str(app), "--pcap", str(fifo), "--workers", str(workers)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(fifo, "wb") as pipe:
        pipe.write(open_flow_pcap())
        pipe.flush()
        # the app has the flow's start: the signal receiver is installed and the source reads on
        ready = select.select([proc.stdout], [], [], 10)[0] and proc.stdout.readline()
        proc.send_signal(signum)
        try:
            out, err = proc.communicate(timeout=10)     # the writer is still open
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{signal.Signals(signum).name} did not end the run while the pipe was quiet")
    assert ready == "start\n", err
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert sorted(out.splitlines()) == ([] if signum == signal.SIGINT else ["done"] * workers + ["end interrupted 3"])


STACK_APP = """
import trio

async def run(stack):
    try:
        print("ready", flush=True)
        await trio.sleep_forever()
    finally:
        print("cleaned up", flush=True)
"""
SYNC_APP = """
import time

def main(source):
    try:
        print("ready", flush=True)
        while True:
            time.sleep(0.01)
    finally:
        print("cleaned up", flush=True)
"""


@pytest.mark.parametrize("app", [STACK_APP, SYNC_APP], ids=["stack", "sync"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_ends_aiomb_run_cleanly(tmp_path, app, signum):
    """SIGTERM and SIGHUP end `aiomb run` as Ctrl-C does: the app's finally blocks run, the exit
    status is 128 + the signal."""
    path = tmp_path / "app.py"
    path.write_text(app)
    proc = subprocess.Popen([*PYTHON_M_AIOMB, "run", str(path), "--pcap", str(REPO / DEMO)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err
    assert out == "cleaned up\n"


RUN_WORKERS_SCRIPT = """
import os, sys, time
import aiomb

def idle(source):
    os.write(1, b"ready\\n")
    while True:
        time.sleep(0.01)

aiomb.run_workers(idle, sys.argv[1], workers=2)
"""


@pytest.mark.parametrize("command", ["run", "flows", "run_workers"])
def test_the_workers_end_when_their_parent_is_killed(tmp_path, command):
    """The parent of `aiomb run APP --workers 2`, `aiomb flows --workers 2` or aiomb.run_workers()
    is killed (SIGKILL: it cannot pass anything on): its workers (and the reader of a pipe) end
    within seconds (before, a worker whose app never read its ring again, and the reader of a
    quiet pipe, stayed forever, reparented to init)."""
    fifo = tmp_path / "live.pcap"
    os.mkfifo(fifo)
    app = tmp_path / "app.py"
    app.write_text(SYNC_APP)
    argv = {"run": [*PYTHON_M_AIOMB, "run", app, "--pcap", REPO / DEMO, "--workers", "2"],
            "flows": [*PYTHON_M_AIOMB, "flows", fifo, "--workers", "2"],
            "run_workers": [sys.executable, "-c", RUN_WORKERS_SCRIPT, REPO / DEMO]}[command]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    kids = []
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [os.kill(pid, signal.SIGKILL) for pid in kids if running(pid)])
        stack.callback(proc.kill)
        if command == "flows":          # the reader has the pipe open; the workers wait for frames
            pipe = stack.enter_context(open(fifo, "wb"))    # its writer stays open and quiet
            pipe.write(open_flow_pcap())
            pipe.flush()
            drained(pipe)
        else:
            assert proc.stdout.readline() == proc.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 10
        while len(kids := children(proc.pid)) < 3 and command == "flows" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(kids) >= 2           # the workers, and the reader (of a pipe; of pcapng, until its end)
        proc.kill()
        proc.wait()
        proc.stdout.close()
        deadline = time.monotonic() + 5
        while any(running(pid) for pid in kids) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = [pid for pid in kids if running(pid)]
    assert left == []


BROKEN_APPS = {
    "syntax": "import os\n\ndef setup(stack)\n    pass\n",
    "raises": "import json\n\ndef fail():\n    json.loads('{')\n\nfail()\n\ndef main(source):\n    pass\n",
    "noentry": "x = 1\n",
}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", BROKEN_APPS)
def test_an_app_that_does_not_load_is_reported_once_with_its_own_traceback(tmp_path, kind, workers):
    """An app with a syntax error (exit status 2), one raising as it is imported (1), one without
    an entry point (2): `aiomb: error:` naming the app, then only the app's part of the traceback
    (before, a syntax error or an exception came with a traceback through runpy, aiomb's cli and
    importlib, exit status 1, and with --workers once per worker)."""
    app = tmp_path / f"{kind}.py"
    app.write_text(BROKEN_APPS[kind])
    proc = run([*PYTHON_M_AIOMB, "run", app, "--pcap", DEMO, "--workers", str(workers)])
    assert proc.stdout == ""
    if kind == "syntax":
        assert proc.returncode == 2
        assert proc.stderr == (f"aiomb: error: the middlebox module {app} has a syntax error:\n"
                               f'  File "{app}", line 3\n'
                               "    def setup(stack)\n"
                               "                    ^\n"
                               "SyntaxError: expected ':'\n")
    elif kind == "raises":
        assert proc.returncode == 1
        head, _, rest = proc.stderr.partition("\n")
        assert head == f"aiomb: error: the middlebox module {app} raised JSONDecodeError as it was imported:"
        frames = [line for line in rest.splitlines() if line.startswith("  File ")]
        assert frames[:2] == [f'  File "{app}", line 6, in <module>', f'  File "{app}", line 4, in fail']
        assert "json" in frames[-1]     # down to where it was raised
        assert rest.startswith("Traceback (most recent call last):\n") and rest.count("Traceback") == 1
        assert rest.endswith("json.decoder.JSONDecodeError: Expecting property name enclosed in double quotes: "
                             "line 1 column 2 (char 1)\n")
        assert "aiomb" not in rest.replace(str(tmp_path), "")
    else:
        assert proc.returncode == 2
        assert proc.stderr == (f"aiomb: error: {app} defines none of setup(stack), async run(stack) or "
                               "main(source); define one (see README)\n")


def test_with_workers_the_app_is_imported_once(tmp_path):
    """`aiomb run APP --workers 2` imports the module once, in aiomb's process, before it forks
    the workers: its import-time code runs once; each worker runs main (or setup/run)."""
    app = tmp_path / "app.py"
    app.write_text("import aiomb\n\nprint('imported', aiomb.worker(), flush=True)\n\n"
                   "def main(source):\n    print('main', aiomb.worker(), flush=True)\n")
    proc = run([*PYTHON_M_AIOMB, "run", app, "--pcap", DEMO, "--workers", "2"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == ["imported (0, 1)", "main (0, 2)", "main (1, 2)"]


def test_app_options_after_a_double_dash(tmp_path):
    """`aiomb run APP.py --pcap X -- OPTIONS`: the module sees its path and OPTIONS as sys.argv,
    also when an option looks like aiomb's own; for other commands -- only ends the options."""
    path = tmp_path / "app.py"
    path.write_text("import sys\n\ndef main(source):\n    print(sys.argv[1:])\n")
    proc = subprocess.run([*PYTHON_M_AIOMB, "run", str(path), "--pcap", str(REPO / DEMO), "--", "--rules", "x",
                           "--pcap"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "['--rules', 'x', '--pcap']\n"
    proc = subprocess.run([*PYTHON_M_AIOMB, "flows", str(REPO / DEMO), "--", "x"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.endswith("error: unrecognized arguments: x\n")


def test_read_flows_gives_the_records_of_aiomb_flows(runs):
    import aiomb

    table = aiomb.read_flows(REPO / DEMO)
    assert len(table) == 7 and list(table) == DEMO_FLOWS
    assert [r["flow"] for r in aiomb.read_flows(aiomb.capture(REPO / DEMO), filter="udp")] == [1]
    assert list(table.to_pandas()["client_port"]) == [r["client_port"] for r in DEMO_FLOWS]


# -- engine options -------------------------------------------------------------------


def test_midstream_flow_is_listed_by_default(runs):
    records = jsonl(ok(runs["midstream"]))
    assert [(r["client_port"], r["server_port"], r["midstream"]) for r in records] == [
        (40000, 80, True), (40001, 443, False)]
    assert (records[0]["client_packets"], records[0]["server_packets"]) == (1, 1)
    assert records[0]["client_payload_bytes"] == 5


def test_no_midstream(runs):
    records = jsonl(ok(runs["no-midstream"]))
    assert [(r["flow"], r["client_port"], r["server_port"], r["midstream"]) for r in records] == [
        (1, 40001, 443, False)]
    assert (records[0]["client_packets"], records[0]["server_packets"]) == (2, 1)


def test_vlan_in_key(runs):
    merged = jsonl(ok(runs["no-vlan"]))
    assert [(r["vlan"], r["client_packets"], r["server_packets"]) for r in merged] == [("", 10, 4)]

    split = jsonl(ok(runs["vlan"]))
    assert [(r["flow"], r["vlan"], r["client_packets"], r["server_packets"], r["end_reason"])
            for r in split] == [(1, "", 5, 2, "fin"), (2, "42", 5, 2, "fin")]
    assert [(r["client_state"], r["server_state"]) for r in split] == [("TIME_WAIT", "CLOSED")] * 2


# -- help, run, console script --------------------------------------------------------


def test_help(runs):
    out = ok(runs["help"])
    assert out.startswith("usage: aiomb ")
    assert "flows" in out and "run" in out
    assert "Async middleboxes" in out



def test_run_module_without_setup_run_or_main(runs, inputs):
    proc = runs["run-empty-module"]
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (f"aiomb: error: {inputs.empty_app} defines none of setup(stack), async run(stack) "
                           "or main(source); define one (see README)\n")



def test_console_script(runs):
    if "console-script" not in runs:
        pytest.skip("the aiomb console script is not installed")
    assert ok(runs["console-script"]) == ok(runs["csv"])


def test_progress_bar_on_a_terminal():
    """With stderr on a terminal, aiomb flows draws a progress bar there (and only there)."""
    import os
    import pty
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([*PYTHON_M_AIOMB, "flows", DEMO, "--format", "jsonl"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=follower, timeout=60)
        os.close(follower)
        follower = None
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    assert len(jsonl(proc.stdout.decode())) == 7
    assert b"100.0%" in drawn and b"[" in drawn


# -- aiomb stream: unknown flows, UDP flows, gaps; output into a closed pipe -----------------


@pytest.fixture(scope="module")
def gapped(tmp_path_factory):
    """Flow 1: the client sends VERY, GOOD (lost), DATA; the server ACKs past the hole. Flow 2: UDP."""
    c = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80))
    c.handshake()
    c.send("client", b"VERY")
    c.send("client", b"GOOD")
    c.frames.pop()
    c.send("client", b"DATA")
    c.ack("server")
    frames = c.frames + [(2.0, udp_frame("10.0.0.5", "10.0.0.6", 5000, 53, b"query"))]
    path = tmp_path_factory.mktemp("stream") / "gap.pcap"
    write_pcap(path, frames)
    return path


def run_bytes(argv):
    return subprocess.run([str(a) for a in argv], cwd=REPO, capture_output=True, timeout=60)


def test_stream_leaves_a_gap_out_and_warns_with_its_offsets(gapped):
    proc = run_bytes((*PYTHON_M_AIOMB, "stream", gapped, "--flow", "1"))
    assert proc.returncode == 0 and proc.stdout == b"VERYDATA"
    assert proc.stderr.decode() == (
        "aiomb: warning: the client stream has 1 gap(s), 4 bytes never seen, left out: stream offsets "
        "[4, 8) (--gaps fill writes NUL bytes, --gaps mark a marker line, --gaps skip says nothing)\n")


@pytest.mark.parametrize("mode, expected", [
    ("skip", b"VERYDATA"), ("fill", b"VERY\0\0\0\0DATA"),
    ("mark", b"VERY\n[aiomb: 4 bytes missing at stream offset 4]\nDATA")])
def test_stream_gap_modes(gapped, mode, expected):
    proc = run_bytes((*PYTHON_M_AIOMB, "stream", gapped, "--key", "10.0.0.1:40000-10.0.0.2:80", "--gaps", mode))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, b"")


@pytest.mark.parametrize("argv, message", [
    (("--flow", "7"), "aiomb: error: no flow number 7 in {path}; `aiomb flows {path}` lists its flows"),
    (("--key", "10.9.9.9:1-10.0.0.2:80"), "aiomb: error: no flow 10.9.9.9:1-10.0.0.2:80 in {path};"),
    (("--flow", "2"), "aiomb: error: flow 2 is a UDP flow: only TCP flows have a reassembled stream"),
])
def test_stream_of_an_unknown_or_udp_flow_says_so_and_fails(gapped, argv, message):
    proc = run_bytes((*PYTHON_M_AIOMB, "stream", gapped, *argv))
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().startswith(message.format(path=gapped))


def test_output_into_a_pipe_closed_early_ends_quietly(tmp_path):
    path = tmp_path / "many.pcap"
    write_pcap(path, [(1.0 + i * 1e-3, udp_frame(f"10.1.{i >> 8}.{i & 255}", "10.0.0.53", 1024 + i, 53, b"q"))
                      for i in range(3000)])
    argv = " ".join(f"'{a}'" for a in (*PYTHON_M_AIOMB, "flows", path, "--format", "jsonl"))
    proc = subprocess.run(["sh", "-c", f"{argv} | head -n 1"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.stderr == ""
    assert json.loads(proc.stdout.splitlines()[0])["flow"] == 1
