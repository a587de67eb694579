"""Shard engines (``Engine(shard=(index, count))``): each tracks the flows whose key hashes to it,
names them by their first packets' numbers and marks where each left, so that the records of
all shards merge into exactly one engine's (same rows, same order, same flow numbers)."""

import array
import random

import pytest

import aiomb
from aiomb import FlowRecords, FrameBatch
from aiomb._core import CaptureReader, ShardRing, last_flow_id
from aiomb.testing import TcpConversation, ipv4_fragments, tcp_frame, udp_frame, write_pcap

OPTIONS = dict(midstream=True, reassembly=True, tcp_syn_timeout=2.0, tcp_established_timeout=3.0,
               tcp_closed_timeout=1.0, udp_timeout=2.0)


def traffic(seed=7, flows=60):
    """Interleaved TCP (IPv4 and IPv6, some closed, some left idle) and UDP flows, with many
    packets on the same timestamps, so that flows leave by timeout with ties to break."""
    rng = random.Random(seed)
    frames = []
    for i in range(flows):
        start = rng.choice([1.0, 1.5, 2.0, 4.0, 9.0])
        if i % 5 == 4:
            frames += [(start, udp_frame(f"10.1.0.{i}", "10.2.0.1", 5000 + i, 53, b"q")),
                       (start + 0.5, udp_frame("10.2.0.1", f"10.1.0.{i}", 53, 5000 + i, b"answer"))]
            continue
        client = (f"fd00::{i + 1:x}", 40000 + i) if i % 3 == 0 else (f"10.0.{i // 200}.{i % 200 + 1}", 40000 + i)
        server = ("fd00::ff", 80) if i % 3 == 0 else ("10.9.9.9", 443)
        c = TcpConversation(client, server, start_ts=start)
        c.handshake()
        c.send("client", b"x" * rng.randint(1, 3000))
        c.send("server", b"y" * rng.randint(1, 3000))
        if i % 4 == 0:
            c.fin("client")
            c.fin("server")
            c.ack("client")
        frames += [(round(ts, 1), frame) for ts, frame in c.frames]     # coarse times: ties
    frames.sort(key=lambda f: f[0])
    return frames


def run(frames, shard=None, **options):
    engine = aiomb.Engine(shard=shard, **{**OPTIONS, **options})
    engine.keep_records()
    out = FlowRecords()
    created = array.array("Q")
    for ts, frame in frames:
        engine.feed(frame, ts)
        out.extend(engine.take_records())
        if shard is not None:
            created.extend(engine.take_created())
    engine.finish()
    out.extend(engine.take_records())
    return engine, out, created


def merge(parts):
    """The rows of every shard, merged as aiomb flows --workers merges them."""
    out = FlowRecords()
    created = array.array("Q")
    for _, rows, ids in parts:
        out.extend(rows)
        created.extend(ids)
    out.sort_by_leaving()
    out.number_by(array.array("Q", sorted(created)))
    return out


@pytest.mark.parametrize("count", [2, 3, 5])
def test_the_shards_records_merge_into_one_engines(count):
    frames = traffic()
    _, one, _ = run(frames)
    parts = [run(frames, shard=(k, count)) for k in range(count)]
    assert sum(len(rows) for _, rows, _ in parts) == len(one)
    assert all(len(rows) for _, rows, _ in parts)          # every shard got flows
    merged = merge(parts)
    assert [merged[i] for i in range(len(merged))] == [one[i] for i in range(len(one))]
    assert bytes(memoryview(merged)) == bytes(memoryview(one))
    reasons = {one[i]["end_reason"] for i in range(len(one))}
    assert {"timeout", "fin", "end_of_capture"} <= reasons          # the traffic tests every way out


def vxlan(frame, tunnel):
    """``frame`` (Ethernet) inside a VXLAN datagram between two tunnel endpoints (RFC 7348)."""
    return udp_frame(f"192.0.2.{tunnel}", "192.0.2.200", 4789, 4789, b"\x08\x00\x00\x00\x00\x00\x01\x00" + frame)


@pytest.mark.parametrize("count", [2, 3])
def test_a_udp_tunnels_flow_and_the_one_inside_merge_in_one_engines_order(count):
    """A VXLAN datagram makes two flows (its own first, then the one inside), which may be two
    shards': each names its flow by the datagram's number and its place in the frame, so that the
    merge numbers them as one engine does. Some tunnels start with the inner flow's first packet."""
    frames = []
    for i, (ts, frame) in enumerate(traffic(flows=30)):
        frames.append((ts, vxlan(frame, i % 4) if i % 3 else frame))
    _, one, _ = run(frames)
    parts = [run(frames, shard=(k, count)) for k in range(count)]
    assert len({one[i]["client_ip"] for i in range(len(one)) if one[i]["server_port"] == 4789}) == 4
    merged = merge(parts)
    assert bytes(memoryview(merged)) == bytes(memoryview(one))
    assert [merged[i]["flow"] for i in range(len(merged))] == [one[i]["flow"] for i in range(len(one))]


def unordered(frames, seed):
    """The frames with stamps out of order, as merged or multi-queue captures have them: some a
    little late or early, some far behind the clock, some far ahead of it (which times out
    every flow at once, and then the flows whose packets come next stamped before it)."""
    rng = random.Random(seed)
    out = []
    for ts, frame in frames:
        ts += 100.0
        r = rng.random()
        if r < 0.15:
            ts += rng.choice([-0.05, -0.001, 0.002])
        elif r < 0.2:
            ts -= rng.choice([1.5, 2.5, 20.0])
        elif r < 0.21:
            ts += rng.choice([2.5, 40.0])
        out.append((ts, frame))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("count", [2, 3, 5])
def test_the_shards_records_merge_into_one_engines_when_stamps_go_back(count, seed):
    """A flow's idle time counts from the clock at its last packet, so which flows end, and
    when, does not depend on the other flows in the table: a shard, which holds only some of
    them, ends each where one engine does."""
    frames = unordered(traffic(seed=seed, flows=80), seed)
    _, one, _ = run(frames)
    merged = merge([run(frames, shard=(k, count)) for k in range(count)])
    assert bytes(memoryview(merged)) == bytes(memoryview(one))
    assert sum(one[i]["last_ts"] < one[i]["first_ts"] for i in range(len(one)))     # stamps did go back


def endpoints(row):
    return row["proto"], row["client_ip"], row["client_port"], row["server_ip"], row["server_port"]


def test_a_shard_names_flows_by_their_first_packets_number():
    frames = traffic(flows=20)
    single = aiomb.Engine(**OPTIONS)
    single.keep_records()
    firsts = []                     # the id of each flow's first packet's first flow, flow 1 first
    for kind in (aiomb.EventKind.CONN_START, aiomb.EventKind.UDP_START):
        single.add_handler(kind, lambda packet: firsts.append(last_flow_id(single.packets - 1) + 1))
    for ts, frame in frames:
        single.feed(frame, ts)
    single.finish()
    one = single.take_records()
    first_of = {endpoints(one[i]): firsts[one[i]["flow"] - 1] for i in range(len(one))}
    engine, rows, created = run(frames, shard=(1, 2))
    assert 0 < len(rows) < len(one)
    assert list(created) == sorted(first_of[endpoints(rows[i])] for i in range(len(rows)))
    assert all(rows[i]["flow"] == first_of[endpoints(rows[i])] for i in range(len(rows)))
    assert engine.shard_index == 1 and engine.shard_count == 2


def test_both_directions_and_every_fragment_reach_the_flows_shard():
    frames = []
    for i in range(40):
        c = TcpConversation((f"10.0.0.{i + 1}", 1000 + i), ("10.0.1.1", 80), start_ts=1.0 + i)
        c.handshake()
        c.send("server", b"z" * 100)
        frames += c.frames
    big = udp_frame("10.3.0.1", "10.3.0.2", 7000, 7001, b"f" * 3000)
    frames += [(50.0, f) for f in ipv4_fragments(big, fragment_size=1000)]
    shards = [run(frames, shard=(k, 2)) for k in range(2)]
    _, one, _ = run(frames)
    for _, rows, _ in shards:
        for i in range(len(rows)):
            r = rows[i]
            if r["proto"] == "tcp":         # SYN, ACK / SYN-ACK, data: each side's every packet
                assert (r["client_packets"], r["server_packets"], r["server_bytes"]) == (2, 2, 100)
            else:
                assert (r["client_packets"], r["client_payload_bytes"]) == (1, 3000)
    stats = [engine.statistics() for engine, _, _ in shards]
    assert all(s.packets == len(frames) for s in stats)            # every shard reads every packet
    assert all(s.fragments_reassembled == 1 for s in stats)        # and puts every datagram together
    assert sum(s.flows_created for s in stats) == len(one) == 41
    assert sum(s.tcp_packets + s.udp_packets for s in stats) == 40 * 4 + 1


def test_equal_last_times_leave_by_flow_id_in_one_engine_too():
    """An expiry pass's flows leave class by class, by last packet time, then by id: two flows
    whose last packets share a time leave oldest first whatever order they were touched in."""
    a = udp_frame("10.0.0.1", "10.0.0.2", 1, 2, b"a")
    b = udp_frame("10.0.0.3", "10.0.0.4", 3, 4, b"b")
    engine = aiomb.Engine(udp_timeout=1.0)
    engine.keep_records()
    engine.feed(a, 1.0)
    engine.feed(b, 1.0)
    engine.feed(b, 1.5)             # b touched before a, both last at 1.5: still a (flow 1) first
    engine.feed(a, 1.5)
    engine.expire(10.0)
    rows = engine.take_records()
    assert [rows[i]["flow"] for i in range(len(rows))] == [1, 2]


def test_misuse_is_refused_precisely():
    for bad in [(2, 2), (0, 0), (-1, 2), (0, 1025), (True, 2), [0, 2], (0,)]:
        with pytest.raises(ValueError, match="shard must be"):
            aiomb.Engine(shard=bad)
    with pytest.raises(RuntimeError, match="shard=\\(index, count\\)"):
        aiomb.Engine().take_created()
    _, rows, created = run(traffic(flows=5), shard=(0, 2))
    with pytest.raises(ValueError, match="not among the created flows"):
        rows.number_by(array.array("Q", [created[0] + 1000]))
    with pytest.raises(ValueError, match="not whole records"):
        FlowRecords.frombytes(bytes(memoryview(rows))[:-1])


def test_split_takes_the_rows_that_left_before_a_point():
    frames = traffic(flows=30)
    _, rows, _ = run(frames)
    copy = FlowRecords.frombytes(bytes(memoryview(rows)))
    head = copy.split(2 * len(frames) + 2)          # all but the rows the end of input took out
    assert {head[i]["end_reason"] for i in range(len(head))} == {"timeout", "fin"}
    assert "end_of_capture" in {copy[i]["end_reason"] for i in range(len(copy))}     # (and lingering closed ones)
    joined = FlowRecords()
    joined.extend(head)
    joined.extend(copy)
    assert bytes(memoryview(joined)) == bytes(memoryview(rows))
    rest = len(copy)
    assert len(copy.split(2 * len(frames) + 4)) == rest and len(copy) == 0


def ring_run(tmp_path, frames, count, worker_batch=64, sharded=True):
    """The frames through a ShardRing to ``count`` shard engines (``sharded``; else engines that
    track whatever has bytes), all in this process (a worker's place in the ring is its index):
    each engine's records and ids, as run() gives. A worker batch smaller than a slot takes the
    slot in pieces."""
    path = tmp_path / "ring.pcap"
    write_pcap(path, frames)
    ring = ShardRing(count, slot_frames=64)
    engines = [aiomb.Engine(shard=(k, count) if sharded else None, **OPTIONS) for k in range(count)]
    parts = [(engine, FlowRecords(), array.array("Q")) for engine in engines]
    batch, mine = FrameBatch(64), [FrameBatch(worker_batch) for _ in range(count)]
    for engine in engines:
        engine.keep_records()

    def deliver():
        for k, (engine, rows, ids) in enumerate(parts):
            taken = 0
            while taken < batch.count or not batch.count:
                got = ring.receive(k, mine[k])
                if got is None:
                    return False
                assert got == mine[k].count == min(worker_batch, batch.count - taken)  # others' as ticks
                taken += got
                engine.process(mine[k])
                rows.extend(engine.take_records())
                if sharded:
                    ids.extend(engine.take_created())
        return True

    with CaptureReader(path) as reader:
        while reader.fill(batch):
            assert ring.send(batch)
            assert deliver()
    assert ring.end(int(aiomb.EndReason.END_OF_CAPTURE))
    assert not deliver()
    assert ring.end_reason == aiomb.EndReason.END_OF_CAPTURE and not ring.ended_by_error
    for k, (engine, rows, _) in enumerate(parts):
        ring.close(k)
        assert ring.receive(k, mine[k]) is None         # the end stays the end, closed or not
        engine.finish()
        rows.extend(engine.take_records())
    return parts


@pytest.mark.parametrize("count,worker_batch", [(2, 64), (3, 64), (2, 7)])
def test_a_ring_feeds_shard_engines_the_records_of_one(tmp_path, count, worker_batch):
    """One reader classifies each frame as the engines do (fragments, a frame that is not IP
    and a malformed one to every shard): the shards' records merge into one engine's, every
    shard counts every packet, and each TCP/UDP packet is processed by one shard only."""
    big = udp_frame("10.3.0.1", "10.3.0.2", 7000, 7001, b"f" * 3000)
    frames = traffic() + [(9.5, f) for f in ipv4_fragments(big, fragment_size=1000)]
    frames += [(9.6, b"\xff" * 12 + b"\x88\xcc" + b"\0" * 50), (9.7, udp_frame("10.0.0.1", "10.0.0.2", 1, 2)[:30])]
    parts = ring_run(tmp_path, frames, count, worker_batch)
    one, rows, _ = run(frames)
    assert bytes(memoryview(merge(parts))) == bytes(memoryview(rows))
    stats = [engine.statistics() for engine, _, _ in parts]
    whole = one.statistics()
    assert all((s.packets, s.non_ip, s.fragments_reassembled, sum(s.malformed.values()))
               == (whole.packets, 1, 1, 1) for s in stats)
    assert sum(s.tcp_packets for s in stats) == whole.tcp_packets
    assert sum(s.udp_packets for s in stats) == whole.udp_packets
    assert sum(s.flows_created for s in stats) == whole.flows_created
    # engines that track whatever has bytes: a TCP packet's bytes reach only its shard's worker
    # (the others get a tick), so the TCP counts still add up to one engine's
    blind = [engine.statistics() for engine, _, _ in ring_run(tmp_path, frames, count, worker_batch, sharded=False)]
    assert all(s.packets == whole.packets for s in blind)
    assert sum(s.tcp_packets for s in blind) == whole.tcp_packets


def test_a_segment_whose_option_list_ends_badly_reaches_its_flows_shard_only(tmp_path):
    """The reader classifies as the engines parse: a segment whose option list ends at a malformed
    option is taken (Linux takes it), so it goes to its flow's shard, not to every shard as a
    malformed packet, and its bytes reach the stream once."""
    c = TcpConversation(("10.5.0.1", 40000), ("10.5.0.2", 80), start_ts=9.5)
    c.handshake()
    c.frames.append((9.6, tcp_frame("10.5.0.1", "10.5.0.2", 40000, 80, seq=c.client_seq, ack=c.server_seq,
                                    flags="PA", payload=b"hidden?", options=b"\x22\x00")))
    c.client_seq += 7
    c.fin("client")
    frames = traffic(flows=10) + c.frames
    parts = ring_run(tmp_path, frames, 2)
    one, rows, _ = run(frames)
    assert bytes(memoryview(merge(parts))) == bytes(memoryview(rows))
    stats = [engine.statistics() for engine, _, _ in parts]
    assert [s.malformed for s in stats] == [{}, {}]
    assert sorted(s.bad_tcp_options for s in stats) == [0, 1] and one.statistics().bad_tcp_options == 1
    assert sum(s.client_payload_bytes for s in stats) == one.statistics().client_payload_bytes


def test_a_ring_stops_aborts_and_refuses_misuse():
    ring = ShardRing(2, slot_frames=16)
    assert ring.stop_requested == 0
    ring.request_stop(int(aiomb.EndReason.INTERRUPTED))
    ring.request_stop(int(aiomb.EndReason.END_OF_CAPTURE))         # the first reason stays
    assert ring.stop_requested == aiomb.EndReason.INTERRUPTED
    with pytest.raises(ValueError, match="worker index 2"):
        ring.receive(2, FrameBatch(16))
    with pytest.raises(ValueError, match="workers must be"):
        ShardRing(0)
    ring.abort()
    with pytest.raises(RuntimeError, match="aborted"):
        ring.receive(0, FrameBatch(16))


def test_gathered_batches_reach_the_workers_in_fewer_slots(tmp_path):
    """With ``gather`` (a capture file) the reader fills a slot with several batches before it
    posts it; the workers, here threads, get the same frames in fewer pieces, and the same
    records."""
    import threading

    path = tmp_path / "ring.pcap"
    write_pcap(path, traffic(seed=11, flows=120))
    ring = ShardRing(2, slot_frames=256)
    parts = [(aiomb.Engine(shard=(k, 2), **OPTIONS), FlowRecords(), array.array("Q")) for k in range(2)]
    pieces = [0, 0]

    def work(k):
        engine, rows, ids = parts[k]
        engine.keep_records()
        batch = FrameBatch(256)
        while ring.receive(k, batch) is not None:
            pieces[k] += 1
            engine.process(batch)
            rows.extend(engine.take_records())
            ids.extend(engine.take_created())
        ring.close(k)
        engine.finish()
        rows.extend(engine.take_records())

    workers = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in workers:
        t.start()
    sent = 0
    with CaptureReader(path) as reader:
        batch = FrameBatch(16)
        while reader.fill(batch):
            assert ring.send(batch, gather=True)
            sent += 1
    assert ring.end(int(aiomb.EndReason.END_OF_CAPTURE))
    for t in workers:
        t.join(timeout=30)
    _, rows, _ = run(traffic(seed=11, flows=120))
    assert bytes(memoryview(merge(parts))) == bytes(memoryview(rows))
    assert pieces[0] == pieces[1] and sent >= 8 * pieces[0] > 0          # 16 batches of 16 to a slot


BLOCK = ShardRing.block_size


def bulky_traffic(seed, *, at_boundaries=False, datagrams=120):
    """About 4 blocks of traffic (with 120 ``datagrams``): the flows of traffic(), UDP datagrams of up to 60 KB and
    frames that are not IP of up to 200 KB (records that straddle a block's end, some wider
    than a quarter of a block). ``at_boundaries``: a filler frame before each block's end puts
    the next record exactly at the block's start."""
    rng = random.Random(seed)
    frames = traffic(seed=seed, flows=80)
    for i in range(datagrams):
        ts = round(rng.uniform(1.0, 9.0), 1)
        frames.append((ts, udp_frame(f"10.5.{i // 250}.{i % 250}", "10.6.0.1", 6000 + i, 7000,
                                     bytes(rng.randrange(60000)))))
        if i % 12 == 0:
            frames.append((ts, b"\xff" * 12 + b"\x88\xcc" + bytes(rng.randrange(200000))))
    frames.sort(key=lambda f: f[0])
    if not at_boundaries:
        return frames
    out, offset = [], 24
    for ts, frame in frames:
        end = offset + 16 + len(frame)
        boundary = (offset - 24) // BLOCK * BLOCK + BLOCK + 24
        if offset < boundary < end and boundary - offset - 16 >= 14:
            out.append((ts, b"\xff" * 12 + b"\x88\xcc" + bytes(boundary - offset - 30)))
            offset = boundary
            end = offset + 16 + len(frame)
        out.append((ts, frame))
        offset = end
    return out


def read_by_workers(path, count, *, stop_at=None):
    """The capture through a ShardRing its ``count`` workers (threads) read themselves: each
    worker's engine and records, how many frames each took, and the ring. ``stop_at``: the
    parent asks for a stop once worker 0 has taken that many frames."""
    import threading

    with CaptureReader(path) as reader:
        assert ShardRing.workers_read(reader)
        ring = ShardRing(count, capture=reader)
    assert ring.workers_reading
    parts = [(aiomb.Engine(shard=(k, count), **OPTIONS), FlowRecords(), array.array("Q")) for k in range(count)]
    taken = [0] * count
    failures = []

    def work(k):
        engine, rows, ids = parts[k]
        engine.keep_records()
        batch = FrameBatch(512)
        try:
            while (got := ring.receive(k, batch)) is not None:
                taken[k] += got
                engine.process(batch)
                rows.extend(engine.take_records())
                ids.extend(engine.take_created())
                if k == 0 and stop_at is not None and taken[0] >= stop_at:
                    ring.request_stop(int(aiomb.EndReason.INTERRUPTED))
            ring.close(k)
            engine.finish(aiomb.EndReason(ring.end_reason) if not ring.ended_by_error else
                          aiomb.EndReason.END_OF_CAPTURE)
            rows.extend(engine.take_records())
        except BaseException as exc:        # the test thread reports it
            failures.append(exc)
            ring.abort()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    return parts, taken, ring


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("layout", [dict(), dict(byteorder="big", nanosecond=True), dict(at_boundaries=True)])
def test_workers_reading_a_pcap_file_give_one_engines_records(tmp_path, count, layout):
    """The workers read the file's blocks in turn, each record in the block it starts in (one
    straddling a block's end, one at its very start, big- or little-endian, micro- or
    nanoseconds): the shards' records merge into one engine's."""
    layout = dict(layout)
    at_boundaries = layout.pop("at_boundaries", False)
    frames = bulky_traffic(3, at_boundaries=at_boundaries)
    path = tmp_path / "bulky.pcap"
    write_pcap(path, frames, **layout)
    size = path.stat().st_size
    assert size > 3 * BLOCK
    if at_boundaries:
        starts, offset = set(), 24
        for _, frame in frames:
            starts.add(offset)
            offset += 16 + len(frame)
        assert {24 + k * BLOCK for k in range(1, size // BLOCK)} <= starts
    parts, taken, ring = read_by_workers(path, count)
    _, rows, _ = run(frames)
    assert bytes(memoryview(merge(parts))) == bytes(memoryview(rows))
    assert taken == [len(frames)] * count               # every frame: its own, or a tick
    assert ring.end_reason == aiomb.EndReason.END_OF_CAPTURE and not ring.ended_by_error
    assert ring.damage is None


def damaged(path, tmp_path, how):
    """A copy of the capture at ``path`` damaged ``how``, past its second block."""
    data = bytearray(path.read_bytes())
    offset = 24
    while offset < 2 * BLOCK + 1000:                    # the first record past 2 blocks and a bit
        offset += 16 + int.from_bytes(data[offset + 8:offset + 12], "little")
    if how == "caplen":
        data[offset + 8:offset + 12] = (300000).to_bytes(4, "little")
    elif how == "short header":
        del data[offset + 7:]
    else:
        del data[offset + 40:]
    out = tmp_path / f"damaged-{how.replace(' ', '-')}.pcap"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("how", ["caplen", "short header", "short record"])
def test_workers_reading_a_damaged_file_end_where_one_reader_does(tmp_path, how):
    """Damage past the second block: the workers end there with what came before, and the
    ring holds the capture reader's own words and offset for the parent to report."""
    whole = tmp_path / "bulky.pcap"
    write_pcap(whole, bulky_traffic(4))
    path = damaged(whole, tmp_path, how)
    good = []
    with CaptureReader(path) as reader:
        batch = FrameBatch(64)
        with pytest.raises(aiomb.CaptureError) as err:
            while reader.fill(batch):
                good += [(batch.ts_at(i), None) for i in range(batch.count)]
    parts, taken, ring = read_by_workers(path, 2)
    assert ring.ended_by_error and ring.end_reason == aiomb.EndReason.END_OF_CAPTURE
    assert ring.damage == (err.value.detail, err.value.offset)
    assert taken == [len(good)] * 2


def test_a_stop_ends_every_reading_worker_after_the_same_block(tmp_path):
    path = tmp_path / "bulky.pcap"
    frames = bulky_traffic(5, datagrams=600)           # more blocks than the workers read ahead
    write_pcap(path, frames)
    assert path.stat().st_size > 12 * BLOCK
    parts, taken, ring = read_by_workers(path, 2, stop_at=10)
    assert ring.end_reason == aiomb.EndReason.INTERRUPTED and ring.damage is None
    assert taken[0] == taken[1] < len(frames)
    assert [engine.statistics().packets for engine, _, _ in parts] == taken


def test_only_a_classic_pcap_file_on_disk_is_read_by_the_workers(tmp_path):
    import gzip
    import os

    from aiomb.testing import write_pcapng

    frames = traffic()
    write_pcapng(tmp_path / "a.pcapng", frames)
    write_pcap(tmp_path / "a.pcap", frames)
    (tmp_path / "a.pcap.gz").write_bytes(gzip.compress((tmp_path / "a.pcap").read_bytes()))
    for name in ("a.pcapng", "a.pcap.gz"):
        with CaptureReader(tmp_path / name) as reader:
            assert not ShardRing.workers_read(reader)
            with pytest.raises(ValueError, match="classic pcap file on disk"):
                ShardRing(2, capture=reader)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)           # a writer, so that opening it to read does not block
    try:
        os.write(fd, (tmp_path / "a.pcap").read_bytes()[:24])
        with CaptureReader(fifo) as reader:
            assert not ShardRing.workers_read(reader)
    finally:
        os.close(fd)
    with CaptureReader(tmp_path / "a.pcap") as reader:
        ring = ShardRing(2, capture=reader)
    with pytest.raises(RuntimeError, match="no reader"):
        ring.send(FrameBatch(4))
    with pytest.raises(RuntimeError, match="no reader"):
        ring.end(int(aiomb.EndReason.END_OF_CAPTURE))
