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

MIDSTAT = """\
[1764547202.000] 0 connection(s)
[1764547203.000] 0 connection(s)
[1764547204.000] 1 connection(s)
  #6    tcp 192.0.2.13:40300 -> 198.51.100.20:80             SYN_SENT     LISTEN
[1764547205.000] 1 connection(s)
  #6    tcp 192.0.2.13:40300 -> 198.51.100.20:80             SYN_SENT     LISTEN
[1764547206.000] 1 connection(s)
  #6    tcp 192.0.2.13:40300 -> 198.51.100.20:80             ESTABLISHED  SYN_RECEIVED
[1764547207.000] 1 connection(s)
  #6    tcp 192.0.2.13:40300 -> 198.51.100.20:80             ESTABLISHED  ESTABLISHED
[1764547208.000] 1 connection(s)
  #6    tcp 192.0.2.13:40300 -> 198.51.100.20:80             ESTABLISHED  ESTABLISHED
[1764547209.000] 1 connection(s)
  #6    tcp 192.0.2.13:40300 -> 198.51.100.20:80             ESTABLISHED  ESTABLISHED
[1764547210.000] 1 connection(s)
  #6    tcp 192.0.2.13:40300 -> 198.51.100.20:80             CLOSE_WAIT   FIN_WAIT_1
[1764547211.000] 1 connection(s)
  #6    tcp 192.0.2.13:40300 -> 198.51.100.20:80             LAST_ACK     TIME_WAIT
[1764547211.000] 0 connection(s)
"""

HTTP_REQUESTS = """\
192.0.2.10:51000 -> 198.51.100.20:80  GET / HTTP/1.1
[2001:db8::10]:51001 -> [2001:db8:1::20]:80  GET / HTTP/1.1
192.0.2.13:40300 -> 198.51.100.20:80  GET /retry HTTP/1.1
"""

EXPECTED = {"flow_monitor.py": FLOW_MONITOR, "port_guard.py": PORT_GUARD, "midstat.py": MIDSTAT,
            "midstat_epoll.py": MIDSTAT, "http_requests.py": HTTP_REQUESTS}

HOW = {
    "aiomb run": lambda name: [sys.executable, "-m", "aiomb", "run", f"examples/{name}"],
    "python example": lambda name: [sys.executable, f"examples/{name}"],
}


@pytest.fixture(scope="module")
def example_runs():
    """(how, example) -> CompletedProcess, every example both ways, run in parallel."""
    procs = {}
    for how, cmd in HOW.items():
        for name in EXPECTED:
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


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", ["midstat.py", "midstat_epoll.py", "http_requests.py"])
def test_epoll_and_trio_examples(example_runs, how, name):
    proc = example_runs[how, name]
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == EXPECTED[name]


def test_the_two_midstats_print_the_same_tables_on_a_corpus_capture():
    from tests.conftest import corpus_path

    pcap = str(corpus_path() / "zeek/testing/btest/Traces/ftp/ipv6.pcap")
    outs = [subprocess.run([sys.executable, f"examples/{name}", "--pcap", pcap], cwd=REPO, capture_output=True,
                           text=True, timeout=60) for name in ("midstat.py", "midstat_epoll.py")]
    assert all(p.returncode == 0 and p.stderr == "" for p in outs)
    assert outs[0].stdout == outs[1].stdout and outs[0].stdout.count("connection(s)") > 5


def test_http_requests_reads_what_the_client_streams_carry():
    """On the corpus' HTTP captures: the epoll program's lines equal those of the client streams
    as a subscription reassembles them (their requests carry no bodies: every request line is a
    line of the stream)."""
    import re

    import aiomb
    from aiomb._core import CaptureReader
    from tests.conftest import corpus_path

    pattern = re.compile(rb"^[A-Z]{3,10} \S+ HTTP/\d\.\d$")
    for pcap in ("pcapplusplus/Tests/Pcap++Test/PcapExamples/three_http_streams.pcap",
                 "pcapplusplus/Tests/Pcap++Test/PcapExamples/one_ipv6_http_stream.pcap",
                 "zeek/testing/btest/Traces/tcp/ssh-dups.pcap"):
        path = corpus_path() / pcap
        engine = aiomb.Engine()
        d = aiomb.Dispatcher(engine)
        sub = d.subscribe(aiomb.NEW_DATA | aiomb.CONN_END)
        streams, keys, over = {}, {}, set()
        batch = aiomb.FrameBatch(2048)
        with CaptureReader(path) as reader:
            while reader.fill(batch):
                engine.process(batch)
        engine.finish()
        for ev in d.drain(sub):
            keys[ev.flow_id] = ev.key
            if ev.kind is aiomb.CONN_END:
                over.add(ev.flow_id)        # a flow socket ends with its flow
            elif ev.side is aiomb.Side.CLIENT and ev.flow_id not in over:
                streams[ev.flow_id] = streams.get(ev.flow_id, b"") + ev.value
        expected = []
        for flow_id, data in streams.items():
            key = keys[flow_id]
            client = f"[{key.client_ip}]" if key.ip_version == 6 else str(key.client_ip)
            server = f"[{key.server_ip}]" if key.ip_version == 6 else str(key.server_ip)
            expected += [f"{client}:{key.client_port} -> {server}:{key.server_port}  {line.decode('latin-1')}"
                         for line in data.split(b"\r\n")[:-1] if pattern.match(line)]
        proc = subprocess.run([sys.executable, "examples/http_requests.py", "--pcap", str(path)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stderr) == (0, "")
        assert sorted(proc.stdout.splitlines()) == sorted(expected), pcap
        assert expected or "ssh" in pcap                  # the HTTP captures do have requests


# A keep-alive client stream: requests with bodies framed every way, the bodies holding lines that look
# like request lines (which are no requests), and a line that is no request where one should start.
KEEP_ALIVE = (
    b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\na=1"
    b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    b"POST /up HTTP/1.1\r\nHost: h\r\ntransfer-encoding: gzip, Chunked\r\nContent-Length: 99\r\n\r\n"
    b"12;name=\"a;b\"\r\nGET /no HTTP/1.1\r\n\r\n5\r\nab\r\nc\r\n0;last\r\nChecksum: x\r\nX: y\r\n\r\n"
    b"PUT /put HTTP/1.0\r\ncontent-length:  21 \r\n\r\nDELETE /no HTTP/1.1\r\n"
    b"not a request\r\n"
    b"OPTIONS * HTTP/1.1\r\n\r\n"
    b"POST /chunked-empty HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    b"GET /last HTTP/1.1\r\n\r\n"
)
KEEP_ALIVE_LINES = ["POST /form HTTP/1.1", "GET /next HTTP/1.1", "POST /up HTTP/1.1", "PUT /put HTTP/1.0",
                    "OPTIONS * HTTP/1.1", "POST /chunked-empty HTTP/1.1", "GET /last HTTP/1.1"]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_http_requests_frames_request_bodies_split_anywhere():
    """The request lines of a keep-alive stream whose requests carry bodies (Content-Length;
    chunked, with chunk extensions and trailers, Transfer-Encoding before Content-Length), fed
    whole, at every split point, and byte by byte: each request's line once, nothing from a
    body (before, the line after a body was glued to it and lost, and a body's lines were
    taken for requests)."""
    http_requests = load_example("http_requests")

    def lines(*pieces):
        requests = http_requests.Requests()
        return [line for piece in pieces for line in requests.feed(piece)]

    assert lines(KEEP_ALIVE) == KEEP_ALIVE_LINES
    for cut in range(len(KEEP_ALIVE) + 1):
        assert lines(KEEP_ALIVE[:cut], KEEP_ALIVE[cut:]) == KEEP_ALIVE_LINES, cut
    assert lines(*(KEEP_ALIVE[i:i + 1] for i in range(len(KEEP_ALIVE)))) == KEEP_ALIVE_LINES


def test_http_requests_prints_the_request_after_a_body(tmp_path):
    """A keep-alive POST with a 3-byte body, then a GET (and the rest of KEEP_ALIVE): every
    request's line, in order."""
    from aiomb.testing import TcpConversation, write_pcap

    c = TcpConversation(("10.0.0.1", 43001), ("10.0.0.2", 80))
    c.handshake()
    c.send("client", KEEP_ALIVE[:60])
    c.send("server", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    c.send("client", KEEP_ALIVE[60:])
    c.fin("client")
    c.fin("server")
    c.ack("client")
    path = tmp_path / "keep_alive.pcap"
    with open(path, "wb") as fh:
        write_pcap(fh, c.frames)
    proc = subprocess.run([sys.executable, "examples/http_requests.py", "--pcap", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.splitlines() == [f"10.0.0.1:43001 -> 10.0.0.2:80  {line}" for line in KEEP_ALIVE_LINES]


def test_every_example_is_covered():
    """Each example runs above on the demo capture, or has its own tests/examples/test_NAME.py."""
    own = {p.name for p in EXAMPLES.glob("*.py") if (REPO / "tests/examples" / f"test_{p.stem}.py").is_file()}
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(set(EXPECTED) | own)


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
