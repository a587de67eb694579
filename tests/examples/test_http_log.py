"""examples/http_log.py: the corpus' expected HTTP transactions (suricata-verify test.yaml, the
lua-output-streaming body file), the request and status lines of the streams as aiomb reassembles them,
and a scripted conversation with pipelining, HEAD, chunked bodies, 1xx and a body until close."""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import trio
import yaml

import aiomb
from aiomb.testing import TcpConversation, write_pcap

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = REPO / "tests/corpus/data"
SV = DATA / "suricata-verify/tests"
# Suricata's eve "http" fields -> http_log's (the others, user agent, content type, redirect, are not logged)
FIELDS = {"http.url": "uri", "http.http_method": "method", "http.status": "status", "http.length": "response_bytes",
          "http.hostname": "host", "http.protocol": "version", "src_ip": "client_ip", "src_port": "client_port",
          "dest_ip": "server_ip", "dest_port": "server_port"}


def http_log(pcap, *app_args, midstream=False):
    cmd = [sys.executable, "-m", "aiomb", "run", "examples/http_log.py", "--pcap", str(pcap)]
    proc = subprocess.run(cmd + (["--midstream"] if midstream else []) + ["--", *app_args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    return proc


def records(pcap, midstream=False):
    return [json.loads(line) for line in http_log(pcap, "--json", midstream=midstream).stdout.splitlines()]


def same(theirs, ours) -> bool:
    if isinstance(theirs, str) and ":" in theirs and isinstance(ours, str):     # Suricata's full IPv6 form
        import ipaddress
        try:
            return ipaddress.ip_address(theirs) == ipaddress.ip_address(ours)
        except ValueError:
            pass
    return theirs == ours


@pytest.mark.parametrize("case", ["tcp-fastopen-01", "bug-814"])
def test_suricata_verify_http_transactions(case):
    test = yaml.safe_load((SV / case / "test.yaml").read_text())
    txs = records(next((SV / case).glob("*.pcap")))
    checked = 0
    for check in test["checks"]:
        f = check["filter"]
        if f["match"].get("event_type") != "http":
            continue
        wanted = {FIELDS[k]: v for k, v in f["match"].items() if k in FIELDS}
        assert sum(all(same(v, tx[k]) for k, v in wanted.items()) for tx in txs) == f["count"], (f, txs)
        checked += 1
    assert checked >= 1


def test_the_pdf_body_size_is_the_one_suricata_extracts():
    """lua-output-streaming's expected/http-FLOW file is the HTTP body Suricata wrote for that flow."""
    expected = next((SV / "lua-output-streaming/expected").glob("http-*"))
    _, client_ip, server_ip, client_port, server_port = expected.name.split("-", 1)[1].split("-")
    [tx] = records(SV / "filestore-v2.1-forced/suricata-update-pdf.pcap")
    assert (tx["client_ip"], tx["client_port"], tx["server_ip"], tx["server_port"]) == (
        client_ip, int(client_port), server_ip, int(server_port))
    assert (tx["method"], tx["status"], tx["body"]) == ("GET", 200, "content-length")
    assert tx["response_bytes"] == expected.stat().st_size


def streams(pcap, midstream=False) -> dict:
    """(client port, side) -> the side's bytes, as aiomb's subscription reassembles them (holes refused)."""
    out = {}

    async def main():
        async with aiomb.open_stack(aiomb.capture(str(pcap)), midstream=midstream) as stack:
            async with stack.subscribe(aiomb.NEW_DATA, aiomb.GAP) as events:
                async for ev in events:
                    assert ev.kind == aiomb.NEW_DATA, "these captures have no holes"
                    key = (ev.key.client_port, ev.side)
                    out[key] = out.get(key, b"") + ev.value
    trio.run(main)
    return out


HTTP_CAPTURES = [("pcapplusplus/Tests/Pcap++Test/PcapExamples/" + name, False) for name in
                 ("one_http_stream_fin.pcap", "one_ipv6_http_stream.pcap", "one_tcp_stream.pcap",
                  "three_http_streams.pcap")] + [
    ("suricata-verify/tests/bug-2491-02/simple_http_download.onesided.nosyn.pcap", True),
    ("suricata-verify/tests/tcp-fastopen-01/tfo.pcap", False)]


@pytest.mark.parametrize("pcap, midstream", HTTP_CAPTURES, ids=lambda p: str(p).rsplit("/", 1)[-1])
def test_transactions_are_the_request_and_status_lines_of_the_streams(pcap, midstream):
    data = streams(DATA / pcap, midstream)
    txs = records(DATA / pcap, midstream)
    for port in sorted({port for port, _ in data}):
        client = data.get((port, aiomb.Side.CLIENT), b"")
        server = data.get((port, aiomb.Side.SERVER), b"")
        # a message may follow a body directly: look for the lines anywhere
        requests = re.findall(rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) (\S+) HTTP/1\.[01]\r\n", client)
        statuses = [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n", server)]
        mine = [tx for tx in txs if tx["client_port"] == port]
        assert [(tx["method"].encode(), tx["uri"].encode()) for tx in mine] == requests
        assert [tx["status"] for tx in mine if tx["status"] is not None] == statuses
        assert all("error" not in tx for tx in mine)
        assert sum(tx["response_bytes"] for tx in mine) <= len(server)
    assert txs


def test_a_hole_ends_the_flow_log_with_the_transaction_it_cut():
    [tx] = records(DATA / "pcapplusplus/Tests/Pcap++Test/PcapExamples/"
                          "unidirectional_tcp_stream_with_missing_packet.pcap")
    assert tx["method"] == "POST" and tx["status"] is None
    assert tx["error"] == "a hole of 1420 bytes at offset 1420"


def scripted(path):
    c = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 8080))
    c.handshake()
    c.send("client", b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\nHEAD /b HTTP/1.1\r\nHost: example.com\r\n\r\n"
                     b"GET /c HTTP/1.1\r\nHost: Example.com\r\n\r\nPOST /d HTTP/1.1\r\nHost: example.com\r\n")
    c.send("client", b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    c.send("server", b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello")
    c.send("server", b" world!HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")       # the HEAD's: no body
    c.send("server", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    c.send("server", b"lo\r\n1A; ext=1\r\n" + b"x" * 26 + b"\r\n0\r\nX-Trailer: 1\r\n\r\n")
    c.send("server", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n")
    c.send("client", b"GET /e HTTP/1.0\r\n\r\nGET /f HTTP/1.0\r\n\r\n")
    c.send("server", b"HTTP/1.0 200 OK\r\n\r\nuntil the close")
    c.fin("server")
    c.fin("client")
    c.ack("server")
    write_pcap(path, c.frames)


def test_pipelining_head_chunked_interim_and_close(tmp_path):
    scripted(tmp_path / "http.pcap")
    txs = [(t["method"], t["uri"], t["host"], t["status"], t["response_bytes"], t["body"], t.get("error"))
           for t in records(tmp_path / "http.pcap")]
    assert txs == [
        ("GET", "/a", "example.com", 200, 12, "content-length", None),
        ("HEAD", "/b", "example.com", 200, 0, "none", None),
        ("GET", "/c", "Example.com", 200, 31, "chunked", None),
        ("POST", "/d", "example.com", 304, 0, "none", None),
        ("GET", "/e", None, 200, 15, "close", None),
        ("GET", "/f", None, None, 0, "none", None),            # its connection closed before an answer
    ]
    human = http_log(tmp_path / "http.pcap").stdout.splitlines()
    assert human[0] == "10.0.0.1:40000 -> 10.0.0.2:8080  GET example.com /a  200  12 bytes (content-length)"
    assert human[5] == "10.0.0.1:40000 -> 10.0.0.2:8080  GET - /f  -  0 bytes (none)"


def test_a_bad_filter_exits_2_naming_it():
    proc = subprocess.run([sys.executable, "-m", "aiomb", "run", "examples/http_log.py", "--pcap",
                           str(SV / "bug-814/input.pcap"), "--", "--filter", "tcp prt 80"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--filter 'tcp prt 80'" in proc.stderr and proc.stdout == ""


def tshark_http(pcap) -> tuple[dict, dict]:
    """Wireshark's HTTP dissection of a capture: per client port, the requests (method, URI, Host)
    and the responses (status code, Content-Length header or None), in stream order."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "http.request || http.response", "-T", "fields",
                          "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "http.request.method",
                          "-e", "http.request.uri", "-e", "http.host", "-e", "http.response.code",
                          "-e", "http.content_length_header", "-E", "occurrence=f"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    requests, responses = {}, {}
    for line in out.splitlines():
        sport, dport, method, uri, host, code, length = line.split("\t")
        if method:
            requests.setdefault(int(sport), []).append((method, uri, host or None))
        elif code and not code.startswith("1"):
            responses.setdefault(int(dport), []).append((int(code), int(length) if length else None))
    return requests, responses


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (apt install tshark)")
@pytest.mark.parametrize("pcap, midstream", HTTP_CAPTURES + [
    ("suricata-verify/tests/filestore-v2.1-forced/suricata-update-pdf.pcap", False)],
    ids=lambda p: str(p).rsplit("/", 1)[-1])
def test_transactions_match_tshark(pcap, midstream):
    """Every request (method, URI, Host) and response (status, Content-Length) Wireshark's HTTP
    dissector finds, http_log logs, flow by flow and in order."""
    requests, responses = tshark_http(DATA / pcap)
    txs = records(DATA / pcap, midstream)
    ports = {tx["client_port"] for tx in txs}
    assert ports == set(requests)
    for port in ports:
        mine = [tx for tx in txs if tx["client_port"] == port]
        assert [(tx["method"], tx["uri"], tx["host"]) for tx in mine] == requests[port]
        answered = [tx for tx in mine if tx["status"] is not None]
        assert [tx["status"] for tx in answered] == [code for code, _ in responses.get(port, [])]
        for tx, (_, length) in zip(answered, responses.get(port, [])):
            if tx["body"] == "content-length":
                assert tx["response_bytes"] == length
