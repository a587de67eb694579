"""Flow records made in the core: one fixed-width row per flow as it leaves the table, read as
dicts, as a buffer (numpy), or formatted in C exactly as ``json.dumps`` and ``csv`` would."""

import csv
import io
import json
import os

import numpy as np
import pytest

import aiomb
from aiomb import EndReason, EventKind, FlowFilter
from aiomb._records import FIELDS, FlowTable, record_dtype
from aiomb.testing import TcpConversation, udp_frame, write_pcap


def conversations():
    """Frames of flows of every kind: IPv4 and IPv6, VLAN-tagged, UDP, one picked up mid-stream
    and one left open; nanosecond timestamps, some on a half microsecond."""
    frames = []
    for i, (client, server, vlan) in enumerate([(("10.0.0.1", 40000), ("10.0.0.2", 80), ()),
                                                (("fd00::1", 40001), ("fd00::2", 443), ()),
                                                (("10.0.0.3", 40002), ("10.0.0.4", 25), (7, 42))]):
        c = TcpConversation(client, server, vlan=vlan, start_ts=1.0 + i + 0.0000005)
        c.handshake()
        c.send("client", b"hello " * (i + 1))
        c.send("server", b"world")
        c.fin("client")
        c.fin("server")
        c.ack("client")
        frames += c.frames
    c = TcpConversation(("10.0.0.5", 40003), ("10.0.0.6", 8080), start_ts=5.123456789)
    c.handshake()
    c.send("client", b"still talking")
    frames += c.frames
    frames += [(6.0, udp_frame("10.0.0.7", "10.0.0.8", 5353, 53, b"query")),
               (6.5, udp_frame("10.0.0.8", "10.0.0.7", 53, 5353, b"answer!"))]
    return sorted(frames, key=lambda f: f[0])


def run(frames, **options):
    engine = aiomb.Engine(reassembly=True, **options)
    engine.keep_records(options.pop("filter", None))
    handles = []
    engine.add_handler(EventKind.CONN_START, lambda packet: handles.append(packet.flow))
    engine.add_handler(EventKind.UDP_START, lambda packet: handles.append(packet.flow))
    for ts, frame in frames:
        engine.feed(frame, ts)
    engine.finish()
    return engine.take_records(), handles


def microseconds(seconds):
    """A record's time: the microsecond nearest the packet's nanosecond time, halves up."""
    return (round(seconds * 1e9) + 500) // 1000 / 1e6


def expected(handle, vlan_in_key=False):
    """The record of a flow handle, made from its statistics in Python."""
    st, key = handle.statistics(), handle.key
    tcp = key.proto == aiomb.Proto.TCP
    out = {"flow": handle.id, "proto": str(key.proto), "client_ip": str(key.client_ip),
           "client_port": key.client_port, "server_ip": str(key.server_ip), "server_port": key.server_port,
           "vlan": "/".join(map(str, key.vlan))}
    for name in ("packets", "ip_bytes", "payload_bytes"):
        out[f"client_{name}"], out[f"server_{name}"] = getattr(st.client, name), getattr(st.server, name)
    out.update({"first_ts": microseconds(st.first_ts), "last_ts": microseconds(st.last_ts),
                "client_state": st.client.state.name if tcp else "",
                "server_state": st.server.state.name if tcp else "",
                "end_reason": str(st.end_reason), "midstream": st.midstream})
    for field, name in (("bytes", "stream_bytes"), ("missed", "missed"), ("rexmits", "retransmits"),
                        ("overlap_conflicts", "overlap_conflicts"), ("data_segments", "data_segments"),
                        ("retransmitted_bytes", "retransmitted_bytes"), ("out_of_order", "out_of_order"),
                        ("zero_window_probes", "zero_window_probes")):
        for side in ("client", "server"):
            value = getattr(getattr(st, side), name)
            out[f"{side}_{field}"] = value if tcp or field != "bytes" else getattr(st, side).payload_bytes
    return out


@pytest.mark.parametrize("vlan_in_key", [False, True])
def test_a_record_holds_the_flows_final_figures(vlan_in_key):
    records, handles = run(conversations(), vlan_in_key=vlan_in_key)
    assert len(records) == 5
    assert [records[i]["flow"] for i in range(5)] == [1, 2, 3, 4, 5]    # all left at finish(), oldest first
    by_id = {h.id: expected(h, vlan_in_key) for h in handles}
    assert [records[i] for i in range(5)] == [by_id[i] for i in range(1, 6)]
    assert records[2]["vlan"] == ("7/42" if vlan_in_key else "")
    assert records[-1]["proto"] == "udp" and records[-1]["client_bytes"] == 5
    assert records[3]["end_reason"] == "end_of_capture" and records[3]["client_state"] == "ESTABLISHED"


def test_the_formats_are_json_dumps_and_csv_of_the_records():
    records, _ = run(conversations())
    rows = [records[i] for i in range(len(records))]
    assert records.format("jsonl") == "".join(json.dumps(r) + "\n" for r in rows).encode()
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    assert records.format("csv", header=True) == text.getvalue().encode()
    assert records.format("jsonl", 1, 3) == "".join(json.dumps(r) + "\n" for r in rows[1:3]).encode()
    extra = [f', "n": {i}'.encode() for i in range(5)]
    assert json.loads(records.format("jsonl", extra=extra).splitlines()[4]) == {**rows[4], "n": 4}
    with pytest.raises(ValueError, match="format must be 'jsonl' or 'csv'"):
        records.format("xml")
    with pytest.raises(IndexError, match="rows 3 to 9 of 5"):
        records.format("csv", 3, 9)
    with pytest.raises(ValueError, match="extra has 1 items for 5 rows"):
        records.format("csv", extra=[b""])


def test_times_are_the_nearest_microsecond():
    records, handles = run(conversations())
    ts = [json.loads(line)["first_ts"] for line in records.format("jsonl").splitlines()]
    assert ts == [1.000001, 2.000001, 3.000001, 5.123457, 6.0]       # halves up, never a float's whim
    assert ts == [microseconds(h.statistics().first_ts) for h in sorted(handles, key=lambda h: h.id)]


def test_flows_are_written_as_they_leave_the_table():
    frames = conversations()
    engine = aiomb.Engine(reassembly=True, tcp_closed_timeout=1.0)
    engine.keep_records()
    for ts, frame in frames:
        engine.feed(frame, ts)
    gone = engine.take_records()
    assert [gone[i]["flow"] for i in range(len(gone))] == [1, 2, 3]     # closed, then lingered 1 s
    table = engine.table_records()
    assert [(table[i]["flow"], table[i]["end_reason"]) for i in range(len(table))] == [(4, "open"), (5, "open")]
    engine.finish(EndReason.INTERRUPTED)
    rest = engine.take_records()
    assert [(rest[i]["flow"], rest[i]["end_reason"]) for i in range(len(rest))] == [
        (4, "interrupted"), (5, "interrupted")]
    assert len(engine.take_records()) == 0
    with pytest.raises(ValueError, match="END_OF_CAPTURE or INTERRUPTED"):
        aiomb.Engine().finish(EndReason.RST)


def test_a_flow_run_takes_a_capture_path_or_a_source(tmp_path):
    path = tmp_path / "flows.pcap"
    write_pcap(path, conversations(), nanosecond=True)
    by_path = [r for records in aiomb.FlowRun(path, midstream=True) for r in records]
    by_str = [r for records in aiomb.FlowRun(str(path), midstream=True) for r in records]
    by_source = [r for records in aiomb.FlowRun(aiomb.capture(path), midstream=True) for r in records]
    assert len(by_path) == 5 and by_path == by_str == by_source
    with pytest.raises(TypeError, match=r"FlowRun\(\) reads a capture's path, aiomb.capture\(\.\.\.\) or "
                                        r"aiomb.port\(\.\.\.\), not 42"):
        aiomb.FlowRun(42)


def test_records_only_of_the_flows_a_filter_accepts():
    engine = aiomb.Engine()
    engine.keep_records(FlowFilter("udp or port 443"))
    for ts, frame in conversations():
        engine.feed(frame, ts)
    engine.finish()
    records = engine.take_records()
    assert [records[i]["server_port"] for i in range(len(records))] == [443, 53]
    with pytest.raises(RuntimeError, match="before the first packet"):
        engine.keep_records()


def test_the_rows_read_as_numpy_without_a_copy():
    records, _ = run(conversations())
    rows = np.frombuffer(memoryview(records), dtype=record_dtype())
    assert list(rows["flow"]) == [1, 2, 3, 4, 5]
    assert list(rows["client_port"]) == [40000, 40001, 40002, 40003, 5353]
    assert list(rows["family"]) == [4, 6, 4, 4, 4]
    assert rows["client_ip"][0].tobytes()[:4] == bytes([10, 0, 0, 1])
    with pytest.raises(BufferError):
        records.extend(records)                     # the rows are in use: they cannot move
    del rows
    records.extend(records)
    assert len(records) == 10
    records.sort()
    assert records.ids() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_a_flow_table_as_pandas_has_the_records_columns():
    records, _ = run(conversations())
    table = FlowTable(records)
    frame = table.to_pandas()
    assert list(frame.columns) == list(FIELDS)
    assert frame.to_dict("records") == list(table)
    assert "5 flows" in table._repr_html_() and "fd00::1" in table._repr_html_()
    assert len(FlowTable(aiomb.FlowRecords()).to_pandas()) == 0
    assert records.text_column("client_ip") == ["10.0.0.1", "fd00::1", "10.0.0.3", "10.0.0.5", "10.0.0.7"]
    with pytest.raises(KeyError, match="no field 'nope'; the fields are flow, proto"):
        records.text_column("nope")


def test_records_write_to_a_descriptor_as_they_format(tmp_path):
    records, _ = run(conversations())
    path = tmp_path / "out.csv"
    with open(path, "wb") as out:
        records.write(out.fileno(), "csv", header=True)
        records.write(out.fileno(), "jsonl")
    assert path.read_bytes() == records.format("csv", header=True) + records.format("jsonl")
    read, write = os.pipe()
    os.close(read)
    try:
        with pytest.raises(BrokenPipeError):        # the reader went away
            records.write(write, "jsonl")
    finally:
        os.close(write)


def test_each_side_keeps_the_tcp_flags_it_sent():
    """SYN (SYN or SYN-ACK), ACK, FIN and RST per side, for IPFIX's tcpControlBits (0 for UDP)."""
    refused = TcpConversation(("10.0.0.9", 40009), ("10.0.0.10", 81), start_ts=1.0)
    refused.syn()
    refused.rst("server", flags="RA")
    closed = TcpConversation(("10.0.0.11", 40011), ("10.0.0.12", 80), start_ts=2.0)
    closed.handshake()
    closed.fin("client")
    closed.rst("server")
    frames = sorted(refused.frames + closed.frames + [(3.0, udp_frame("10.0.0.7", "10.0.0.8", 5353, 53, b"q"))],
                    key=lambda f: f[0])
    records, _ = run(frames)
    flags = {int(r["server_port"]): (int(r["client_tcp_flags"]), int(r["server_tcp_flags"]))
             for r in FlowTable(records).to_numpy()}
    assert flags == {81: (0x02, 0x14), 80: (0x13, 0x16), 53: (0, 0)}
