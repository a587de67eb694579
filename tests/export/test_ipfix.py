"""IPFIX export (RFC 7011, RFC 5103 biflows) read back by a collector written in the test
(ipfix_reader.py): every element of every flow against the record it came from, message sizes,
sequence numbers, template refresh over UDP, one stream over TCP, and the errors. Only loopback."""

import json
import re
import select
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import aiomb
from aiomb import TcpState
from aiomb._records import FlowTable
from aiomb.cli._common import UsageError
from aiomb.cli.flows import parse_collector
from aiomb.testing import write_pcap

from ..conftest import REPO, corpus_path
from ..core.test_records import conversations, run
from ..core.test_shards import traffic
from .ipfix_reader import REVERSE, Collector

PEN = 32473
REASONS = {"open": 0, "fin": 1, "rst": 2, "timeout": 3, "evicted": 4, "end_of_capture": 5, "reused": 6,
           "interrupted": 7}
RFC_REASONS = {"fin": 3, "rst": 3, "reused": 3, "timeout": 1, "evicted": 5, "end_of_capture": 4, "interrupted": 4,
               "open": 4}
SIDE_COUNTERS = ["payload_bytes", "bytes", "missed", "rexmits", "overlap_conflicts", "data_segments",
                 "retransmitted_bytes", "out_of_order", "zero_window_probes"]


@pytest.fixture
def udp_collector():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)      # a capture's burst of datagrams
    sock.setblocking(False)
    with sock:
        yield sock


def datagrams(sock) -> list:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def expected_flags(tcp, state):
    """The flags a side of these conversations sent: SYN and ACK; FIN once it closed."""
    if not tcp:
        return 0
    return 0x12 | (0x01 if state not in ("ESTABLISHED", "SYN_SENT", "SYN_RECEIVED") else 0)


def check_record(rec, row, ns):
    """A decoded data record against the flow record (dict) and its ns times."""
    tcp = row["proto"] == "tcp"
    assert (str(rec[0, 8] if (0, 8) in rec else rec[0, 27]), rec[0, 7]) == (row["client_ip"], row["client_port"])
    assert (str(rec[0, 12] if (0, 12) in rec else rec[0, 28]), rec[0, 11]) == (row["server_ip"], row["server_port"])
    assert rec[0, 4] == (6 if tcp else 17) and rec[0, 148] == row["flow"]
    assert (rec[0, 2], rec[0, 1]) == (row["client_packets"], row["client_ip_bytes"])
    assert (rec[REVERSE, 2], rec[REVERSE, 1]) == (row["server_packets"], row["server_ip_bytes"])
    assert (rec[0, 152], rec[0, 153]) == (ns[0] // 10 ** 6, ns[1] // 10 ** 6)
    assert (rec[0, 154], rec[0, 155]) == (round(row["first_ts"] * 1e6), round(row["last_ts"] * 1e6))
    assert rec[0, 6] == expected_flags(tcp, row["client_state"])
    assert rec[REVERSE, 6] == expected_flags(tcp, row["server_state"])
    assert rec[0, 136] == RFC_REASONS[row["end_reason"]] and rec[PEN, 3] == REASONS[row["end_reason"]]
    assert rec[0, 239] == (0 if row["midstream"] else 1) and rec[PEN, 4] == (1 if row["midstream"] else 2)
    tags = [int(t) for t in row["vlan"].split("/")] if row["vlan"] else []
    assert (rec[0, 58], rec[0, 245]) == tuple((tags + [0, 0])[:2])
    for number, side in ((1, "client"), (2, "server")):
        state = row[f"{side}_state"]
        assert rec[PEN, number] == (TcpState[state] if tcp else 255)
    for i, name in enumerate(SIDE_COUNTERS):
        assert (rec[PEN, 5 + 2 * i], rec[PEN, 6 + 2 * i]) == (row[f"client_{name}"], row[f"server_{name}"]), name


def test_every_element_of_every_flow_reaches_the_collector(udp_collector):
    records, _ = run(conversations(), vlan_in_key=True)
    with aiomb.IpfixExporter(*udp_collector.getsockname(), domain=7) as exporter:
        assert exporter.send(records) == len(records) == 5
        st = exporter.statistics()
    collector = Collector()
    for msg in datagrams(udp_collector):
        collector.feed(msg)
    assert st.records == 5 and st.messages == len(collector.messages) and st.templates == 1
    assert st.bytes == sum(m.length for m in collector.messages)
    first = collector.messages[0]
    assert first.template_ids == [256, 257] and first.records == [] and first.domain == 7
    v4, v6 = collector.templates[7, 256], collector.templates[7, 257]
    assert v4[:2] == [(0, 8, 4), (0, 12, 4)] and v6[:2] == [(0, 27, 16), (0, 28, 16)] and v4[2:] == v6[2:]
    assert {(pen, n) for pen, n, _ in v4 if pen == REVERSE} == {(REVERSE, 1), (REVERSE, 2), (REVERSE, 6)}
    assert sorted(n for pen, n, _ in v4 if pen == PEN) == list(range(1, 23))
    rows = {r["flow"]: r for r in (records[i] for i in range(len(records)))}
    times = {int(t["flow"]): (int(t["first_ts"]), int(t["last_ts"])) for t in FlowTable(records).to_numpy()}
    assert sorted(rec[0, 148] for rec in collector.records) == sorted(rows)
    for rec in collector.records:
        check_record(rec, rows[rec[0, 148]], times[rec[0, 148]])


def test_microsecond_times_leave_the_fraction_s_low_11_bits_zero_and_decode_exactly():
    """dateTimeMicroseconds (RFC 7011 section 6.1.9): the 11 low-order bits of the NTP fraction
    are zero, and every microsecond of a second decodes to itself whether a collector truncates
    (masking with 0xFFFFF800, as YAF/libfixbuf do) or rounds (as ipfix_reader.py does); the
    nanosecond time is first rounded to the nearest microsecond, halves up."""
    from aiomb._core import RECORD_SIZE, ipfix_data
    from aiomb._ipfix import ELEMENTS, _program

    records, _ = run(conversations())
    row = bytes(memoryview(records))[:RECORD_SIZE]
    assert records[0]["client_ip"] == "10.0.0.1"            # an IPv4 row
    start = next(e for e in ELEMENTS if e.number == 154)
    offset = dict((name, off) for name, _, off in aiomb._core.RECORD_FIELDS)["first_ts"]
    second = 1_700_000_000
    chunk = 100_000
    for first in range(0, 1_000_000, chunk):
        us = np.arange(first, first + chunk, dtype=np.int64)
        ns = second * 10 ** 9 + us * 1000 + us % 1000 - 500      # -500 to +499 ns around the microsecond
        rows = np.tile(np.frombuffer(row, np.uint8), (chunk, 1))
        rows[:, offset:offset + 8] = ns.astype("<i8").view(np.uint8).reshape(chunk, 8)
        out = np.frombuffer(ipfix_data(aiomb.FlowRecords.frombytes(rows.tobytes()), 4, _program([start]), 8), ">u8")
        assert (out >> 32 == second + 2208988800).all()
        fraction = (out & 0xFFFFFFFF).astype(np.uint64)
        assert (fraction & 0x7FF == 0).all()
        assert ((fraction & 0xFFFFF800) * 10 ** 6 >> 32 == us).all()
        assert ((fraction * 10 ** 6 + 2 ** 31) >> 32 == us).all()


def test_udp_messages_fit_the_mtu_and_carry_sequence_numbers_and_templates_again(udp_collector):
    records, _ = run(conversations())
    batch = aiomb.FlowRecords()
    for _ in range(40):
        batch.extend(records)
    with aiomb.IpfixExporter(*udp_collector.getsockname(), mtu=576, template_messages=10) as exporter:
        exporter.send(batch)
    collector = Collector()
    msgs = [collector.feed(m) for m in datagrams(udp_collector)]
    assert max(m.length for m in msgs) <= 576 - 28 and len(collector.records) == 200
    seen = 0
    for m in msgs:
        assert m.sequence == seen
        seen += len(m.records)
    assert msgs[0].template_ids == [256] and msgs[1].template_ids == [257]      # one a message at this MTU
    since = 0
    for m in msgs[2:]:
        since = 0 if m.template_ids else since + 1
        assert since <= 10
    data_messages = sum(1 for m in msgs if m.records)
    assert data_messages == 80 + 40         # 2 IPv4 records a message, 1 IPv6
    assert [m.template_ids for m in msgs].count([256]) == 1 + (data_messages - 1) // 10


def test_udp_templates_again_after_the_interval(udp_collector):
    records, _ = run(conversations())
    now = [1000.0]
    with aiomb.IpfixExporter(*udp_collector.getsockname(), template_interval=30, clock=lambda: now[0]) as exporter:
        for step in (0, 29, 1, 10, 20):
            now[0] += step
            exporter.send(records)
    collector = Collector()
    msgs = [collector.feed(m) for m in datagrams(udp_collector)]
    assert [m.export_time for m in msgs if m.template_ids] == [1000, 1030, 1060]


def test_udp_rate_paces_the_messages(udp_collector):
    records, _ = run(conversations())
    batch = aiomb.FlowRecords()
    for _ in range(20):
        batch.extend(records)
    with aiomb.IpfixExporter(*udp_collector.getsockname(), rate=2000) as exporter:
        started = time.monotonic()
        exporter.send(batch)
        elapsed = time.monotonic() - started
        messages = exporter.statistics().messages
    assert messages == 1 + 16 + 4 and elapsed >= (messages - 1) / 2000
    assert len(datagrams(udp_collector)) == messages


def test_tcp_is_one_stream_with_the_templates_once():
    records, _ = run(conversations())
    batch = aiomb.FlowRecords()
    for _ in range(300):
        batch.extend(records)
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        exporter = aiomb.IpfixExporter(*server.getsockname(), transport="tcp", template_interval=0)
        data = tcp_collector(server)
        with exporter:
            exporter.send(batch)
            exporter.send(records)
            exporter.close()        # waits for the collector to read to the end of the stream
        assert exporter.statistics().records == 1505
    collector = Collector()
    collector.feed_stream(data.result(timeout=10))
    msgs = collector.messages
    assert [m.template_ids for m in msgs].count([256, 257]) == 1 and msgs[0].template_ids == [256, 257]
    assert len(collector.records) == 1505 and max(m.length for m in msgs) > 1500
    assert all(m.length <= 65535 for m in msgs)
    assert [m.sequence for m in msgs[1:]] == [sum(len(p.records) for p in msgs[:i]) for i in range(1, len(msgs))]


def tcp_collector(server, *, stop=None):
    """A collector in a thread: it accepts a connection on ``server`` and reads it to its end (or
    ``stop`` bytes), then closes it; a future of the bytes it read."""
    def read():
        conn, _ = server.accept()
        with conn:
            data = b""
            while (stop is None or len(data) < stop) and (chunk := conn.recv(1 << 20)):
                data += chunk
            return data

    pool = ThreadPoolExecutor(1)
    future = pool.submit(read)
    pool.shutdown(wait=False)
    return future


def test_a_tcp_collector_that_already_closed_the_connection_gets_no_record():
    """A collector that accepts and closes at once (a FIN): the next send exports nothing and
    says so; close() then raises nothing more."""
    records, _ = run(conversations())
    with socket.create_server(("127.0.0.1", 0)) as server:
        exporter = aiomb.IpfixExporter(*server.getsockname(), transport="tcp")
        conn, _ = server.accept()
        conn.close()
        assert select.select([exporter.sock], [], [], 10)[0]       # its FIN has come
        with exporter, pytest.raises(aiomb.ExportError, match=rf"^IPFIX collector 127.0.0.1:{server.getsockname()[1]}: "
                                     r"the TCP export failed \(the collector closed the connection\) after 0 records$"):
            exporter.send(records)
        assert exporter.statistics() == aiomb.ExporterStatistics(records=0, messages=0, bytes=0, templates=1,
                                                                 refused=0)
        exporter.close()


def test_a_tcp_collector_that_closes_with_records_unread_is_an_error_at_close():
    """Sent records the collector never read (it closed with them unread: a RST) are an
    ExportError of close(), which names how many may be lost."""
    records, _ = run(conversations())
    with socket.create_server(("127.0.0.1", 0)) as server:
        exporter = aiomb.IpfixExporter(*server.getsockname(), transport="tcp")
        conn, _ = server.accept()
        assert exporter.send(records) == 5
        time.sleep(0.1)                                 # the records are in the collector's socket
        conn.close()                                    # unread: a RST
        with pytest.raises(aiomb.ExportError, match=r"the TCP export failed \(Connection reset by peer\) after 5 "
                                                    r"records, of which up to 5 may be lost$"):
            exporter.close()
        exporter.close()                                # closed: nothing more


def test_close_waits_a_bounded_time_for_a_tcp_collector_that_keeps_the_connection_open():
    """Over TCP close() waits up to ``close_timeout`` seconds for the collector's end of stream. One that
    keeps the connection open but whose host took every byte is not an error; one whose host
    still had bytes to take at the end of the wait is, naming the records that may be lost."""
    records, _ = run(conversations())
    with socket.create_server(("127.0.0.1", 0)) as server:
        exporter = aiomb.IpfixExporter(*server.getsockname(), transport="tcp", close_timeout=0.3)
        conn, _ = server.accept()
        with conn:
            exporter.send(records)
            started = time.monotonic()
            exporter.close()
            assert 0.3 <= time.monotonic() - started < 2
    batch = aiomb.FlowRecords()
    for _ in range(200):
        batch.extend(records)
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)     # the accepted socket's too
        server.bind(("127.0.0.1", 0))
        server.listen()
        exporter = aiomb.IpfixExporter(*server.getsockname(), transport="tcp", close_timeout=0.3)
        conn, _ = server.accept()
        with conn:
            exporter.send(batch)                        # more than the collector's buffer, which it never reads
            with pytest.raises(aiomb.ExportError, match=r"the TCP export failed \(the collector did not take the last "
                                                        r"\d+ bytes in 0.3 s\) after 1000 records, of which up to "
                                                        r"\d+ may be lost$") as caught:
                exporter.close()
    lost = int(re.search(r"up to (\d+) may be lost", str(caught.value))[1])
    assert 0 < lost <= 1000          # (a message of up to 64 KiB counts until its host took all of it)


def test_close_timeout_must_not_be_negative():
    with pytest.raises(ValueError, match="close_timeout .* must be 0 or more, got -1"):
        aiomb.IpfixExporter("127.0.0.1", close_timeout=-1)


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tcp_collector_that_refuses_or_goes_away_is_an_export_error():
    port = free_port()
    with pytest.raises(aiomb.ExportError, match=rf"IPFIX collector 127.0.0.1:{port} refused the TCP connection: "
                                                r"is a collector listening there over TCP\?"):
        aiomb.IpfixExporter("127.0.0.1", port, transport="tcp")
    records, _ = run(conversations())
    batch = aiomb.FlowRecords()
    for _ in range(2000):
        batch.extend(records)
    with socket.create_server(("127.0.0.1", 0)) as server:
        with aiomb.IpfixExporter(*server.getsockname(), transport="tcp") as exporter:
            conn, _ = server.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")    # close with a RST
            conn.close()
            failed = r"IPFIX collector 127.0.0.1:\d+: the TCP export failed \((Connection reset by peer|Broken pipe)\)"
            with pytest.raises(aiomb.ExportError, match=failed + r" after \d+ records"):
                for _ in range(100):
                    exporter.send(batch)


def test_over_udp_a_closed_port_is_counted_not_raised():
    records, _ = run(conversations())
    with aiomb.IpfixExporter("127.0.0.1", free_port(socket.SOCK_DGRAM)) as exporter:
        for _ in range(3):
            assert exporter.send(records) == 5
        assert exporter.statistics().refused >= 1


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="transport must be 'udp' or 'tcp', got 'sctp'"):
        aiomb.IpfixExporter("127.0.0.1", transport="sctp")
    with pytest.raises(ValueError, match="rate .* must be above 0, and only over UDP; got 10"):
        aiomb.IpfixExporter("127.0.0.1", transport="tcp", rate=10)
    with pytest.raises(ValueError, match="observation domain ID"):
        aiomb.IpfixExporter("127.0.0.1", domain=-1)
    with pytest.raises(ValueError, match="not 29305"):
        aiomb.IpfixExporter("127.0.0.1", pen=29305)
    with pytest.raises(ValueError, match="mtu 300 leaves no room for a template or a record"):
        aiomb.IpfixExporter("127.0.0.1", mtu=300)
    with pytest.raises(aiomb.ExportError, match="nohost.invalid:4739: the host does not resolve"):
        aiomb.IpfixExporter("nohost.invalid")


@pytest.mark.parametrize(("text", "parsed"), [
    ("127.0.0.1:4739", ("udp", "127.0.0.1", 4739)), ("collector", ("udp", "collector", 4739)),
    ("tcp://[::1]:9995", ("tcp", "::1", 9995)), ("udp://[fd00::1]", ("udp", "fd00::1", 4739)),
])
def test_collector_addresses(text, parsed):
    assert parse_collector(text) == parsed


@pytest.mark.parametrize(("text", "problem"), [
    ("sctp://h:1", "unknown transport 'sctp'"), ("::1:4739", r"an IPv6 address goes in brackets \(\[ADDR\]:PORT\)"),
    ("[::1", "an IPv6 address goes in brackets, then :PORT"), ("h:0", "the port must be a number from 1 to 65535"),
    ("h:http", "the port must be a number from 1 to 65535"), (":4739", "no host"),
    ("h:\u00b2", "the port must be a number from 1 to 65535"),       # superscript 2: isdigit(), not int()
    ("h:\u2460", "the port must be a number from 1 to 65535"),       # circled 1: the same
    ("h:\u0661", "the port must be a number from 1 to 65535"),       # Arabic-Indic 1: int() reads it as 1
])
def test_bad_collector_addresses_name_the_problem_and_the_form(text, problem):
    with pytest.raises(UsageError, match=rf"bad --ipfix .*: {problem}; give HOST:PORT, udp://HOST:PORT or "
                                         r"tcp://HOST:PORT \(IPv6: \[ADDR\]:PORT\)"):
        parse_collector(text)


def aiomb_flows(*args):
    return subprocess.run([sys.executable, "-m", "aiomb", "flows", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def export_over_tcp(capture, tmp_path, *args):
    """``aiomb flows CAPTURE --format jsonl --ipfix tcp://...`` to a collector in the test: its
    exit status, stderr, JSON-lines rows and what the collector decoded."""
    with socket.create_server(("127.0.0.1", 0)) as server, open(tmp_path / "rows.jsonl", "w+") as out:
        server.settimeout(60)
        port = server.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "aiomb", "flows", capture, "--format", "jsonl",
                                 "--ipfix", f"tcp://127.0.0.1:{port}", *args],
                                cwd=REPO, stdout=out, stderr=subprocess.PIPE, text=True)
        conn, _ = server.accept()
        with conn:
            data = b""
            while chunk := conn.recv(1 << 20):
                data += chunk
        _, err = proc.communicate(timeout=60)
        out.seek(0)
        rows = [json.loads(line) for line in out]
    collector = Collector()
    collector.feed_stream(data)
    return proc.returncode, err, rows, collector, port


def test_the_command_exports_over_tcp_beside_its_json_lines(tmp_path):
    code, err, rows, collector, port = export_over_tcp(REPO / "examples/captures/demo.pcapng", tmp_path,
                                                       "--ipfix-domain", "42", "--stats")
    assert code == 0, err
    assert {m.domain for m in collector.messages} == {42}
    assert f"IPFIX to 127.0.0.1:{port} (tcp, domain 42): {len(rows)} records in" in err
    got = {rec[0, 148]: rec for rec in collector.records}
    assert sorted(got) == sorted(r["flow"] for r in rows)
    for r in rows:
        rec = got[r["flow"]]
        assert (rec[0, 2], rec[0, 1], rec[REVERSE, 2], rec[REVERSE, 1]) == (
            r["client_packets"], r["client_ip_bytes"], r["server_packets"], r["server_ip_bytes"])
        assert (rec[0, 154], rec[0, 155]) == (round(r["first_ts"] * 1e6), round(r["last_ts"] * 1e6))


@pytest.mark.parametrize("name", ["generated.pcap", "echo-connections.pcap.gz"])
def test_workers_export_the_records_of_one_engine(tmp_path, name):
    """With --workers 2 (reading a pcap file themselves, or fed by a reader from a gzip) the
    collector gets one engine's records: every element of every flow (messages group records by
    template, IPv4 and IPv6, as batches come, so their order in the stream may differ)."""
    if name == "generated.pcap":
        capture = tmp_path / name
        write_pcap(capture, traffic(flows=200))
    else:
        capture = corpus_path() / "bench" / name
    one = export_over_tcp(capture, tmp_path)
    two = export_over_tcp(capture, tmp_path, "--workers", "2")
    assert one[0] == two[0] == 0, (one[1], two[1])
    assert two[2] == one[2] and len(one[2]) >= 200
    by_flow = [sorted(c.records, key=lambda rec: rec[0, 148]) for c in (one[3], two[3])]
    assert by_flow[1] == by_flow[0] and len(by_flow[0]) == len(one[2])
    families = {rec.get((0, 8)) is None for rec in by_flow[0]}     # an IPv4 source address, or not
    assert families == ({True, False} if name == "generated.pcap" else {False})


def test_the_command_ends_when_its_tcp_collector_goes_away():
    capture = corpus_path() / "bench/echo-connections.pcap.gz"
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        proc = subprocess.Popen([sys.executable, "-m", "aiomb", "flows", capture, "--format", "jsonl",
                                 "--ipfix", f"tcp://127.0.0.1:{server.getsockname()[1]}"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn, _ = server.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")    # close with a RST
        conn.close()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "aiomb: error: IPFIX collector 127.0.0.1:" in err and "the TCP export failed" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and re.search(r"the TCP export failed \((Connection reset by peer|Broken pipe)\) after 0 records",
                              err)      # the records were printed first


def test_the_command_ends_when_its_tcp_collector_has_closed_the_connection(tmp_path):
    """The collector accepts and closes at once (a FIN) before the first records: exit status 1 at
    the first batch, printed and not exported (no record counted)."""
    capture = corpus_path() / "bench/echo-connections.pcap.gz"
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        port = server.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "aiomb", "flows", "-", "--format", "jsonl", "--stats",
                                 "--ipfix", f"tcp://127.0.0.1:{port}"], cwd=REPO, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        conn, _ = server.accept()
        conn.close()
        time.sleep(0.2)                                         # the FIN reaches the command
        out, err = proc.communicate(capture.read_bytes(), timeout=60)
    err = err.decode()
    assert proc.returncode == 1, err
    assert out.splitlines()                                     # the records of that moment: printed
    assert f"aiomb: IPFIX to 127.0.0.1:{port} (tcp, domain 0): 0 records in 0 messages, 0 bytes\n" in err
    assert err.endswith(f"aiomb: error: IPFIX collector 127.0.0.1:{port}: the TCP export failed (the collector "
                        "closed the connection) after 0 records\n")


def test_the_command_ends_in_an_error_when_its_tcp_collector_leaves_records_unread():
    """The collector takes the records into its socket and closes it without reading them (a RST):
    the end of the run reports them as possibly lost, exit status 1."""
    capture = corpus_path() / "bench/echo-connections.pcap.gz"
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        port = server.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "aiomb", "flows", capture, "--stats",
                                 "--ipfix", f"tcp://127.0.0.1:{port}"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        conn, _ = server.accept()
        assert select.select([conn], [], [], 60)[0]
        time.sleep(0.3)                                         # the records are in its socket
        conn.close()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert re.search(rf"IPFIX to 127.0.0.1:{port} \(tcp, domain 0\): (\d+) records in", err)[1] != "0"
    assert re.search(rf"\naiomb: error: IPFIX collector 127.0.0.1:{port}: the TCP export failed \((Connection reset "
                     r"by peer|Broken pipe)\) after [1-9]\d* records, of which up to [1-9]\d* may be lost\n$", err), err


def test_the_command_without_a_collector():
    capture = REPO / "examples/captures/demo.pcapng"
    port = free_port()
    proc = aiomb_flows(capture, "--ipfix", f"tcp://127.0.0.1:{port}")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"aiomb: error: IPFIX collector 127.0.0.1:{port} refused the TCP connection: is a "
                           "collector listening there over TCP? (start it, or export over UDP)\n")
    proc = aiomb_flows(capture, "--ipfix", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}")
    assert proc.returncode == 0 and proc.stdout == ""       # --ipfix alone prints no records
    assert "messages refused (port unreachable): is a collector listening there over UDP?" in proc.stderr
    proc = aiomb_flows(capture, "--ipfix", "127.0.0.1:1", "--hash", "md5")
    assert proc.returncode == 2 and "add --format jsonl (or csv)" in proc.stderr


def test_the_readme_lists_every_element_of_the_template():
    from aiomb._ipfix import ADDRESSES, ELEMENTS

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Exporting flows (IPFIX)"):text.index("## Deployment: a fleet of boxes")]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
    registry = {0: "IANA", 29305: "reverse (29305)", "aiomb": "aiomb's PEN"}
    assert [(r[0][3:-1], int(r[1]), r[2], r[3]) for r in rows] == [
        (e.name, e.number, registry[e.pen], f"{e.type} ({e.length})") for e in ADDRESSES[4] + ADDRESSES[6] + ELEMENTS]


async def test_a_middlebox_on_the_stack_exports_on_a_timer(udp_collector):
    capture = REPO / "tests/corpus/data/bench/echo-connections.pcap.gz"
    with aiomb.IpfixExporter(*udp_collector.getsockname(), domain=3) as exporter:
        async with aiomb.open_stack(aiomb.capture(capture), midstream=True, tcp_closed_timeout=0.5) as stack:
            stack.engine.keep_records()
            async for _ in stack.timer(1.0, interval=1.0):
                exporter.send(stack.engine.take_records())
        during = exporter.statistics().records
        exporter.send(stack.engine.take_records())
    collector = Collector()
    for msg in datagrams(udp_collector):
        collector.feed(msg)
    assert len(collector.records) == 500 == len({rec[0, 148] for rec in collector.records})
    assert 0 < during < 500         # sent as flows left the table, the rest at the end


def test_an_ipv6_collector_gets_messages_under_the_ipv6_mtu():
    records, _ = run(conversations())
    batch = aiomb.FlowRecords()
    for _ in range(10):
        batch.extend(records)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        sock.setblocking(False)
        with aiomb.IpfixExporter("::1", sock.getsockname()[1]) as exporter:
            assert exporter.where == f"[::1]:{sock.getsockname()[1]}"
            exporter.send(batch)
        collector = Collector()
        msgs = [collector.feed(m) for m in datagrams(sock)]
    assert len(collector.records) == 50
    assert max(m.length for m in msgs) == 20 + 5 * 267 <= 1500 - 40 - 8 < 20 + 6 * 267     # 5 IPv6 records a message
