"""The capture reader, sans-I/O: CaptureReader fills FrameBatches, the Engine processes them.

Every test drives ``aiomb._core.CaptureReader`` + ``aiomb.FrameBatch`` + ``aiomb.Engine``
directly (``while reader.fill(batch): engine.process(batch)``) and checks what reached the
engine: the exact frames and timestamps (through an inline PACKET_IN handler), start events,
flow statistics. Errors are checked for their exact offset and for the records returned
before them.
"""

import gc
import gzip
import io
import struct
import warnings
import zlib

import pytest

import aiomb
from aiomb import CaptureError
from aiomb._core import CaptureReader
from aiomb.testing import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    gzip_file,
    sll2_frame,
    sll_frame,
    tcp_frame,
    udp_frame,
    write_pcap,
    write_pcapng,
)

PCAP_HEADER = 24
RECORD_HEADER = 16
SHB_LEN = 28
ETHERTYPE_IPV6 = 0x86DD


# -- helpers --------------------------------------------------------------------------


def udp(i, size=0, *, ethernet=True, v6=False):
    """A distinct UDP frame number ``i`` (its own flow), padded to about ``size`` bytes."""
    src, dst = ("2001:db8::1", "2001:db8::2") if v6 else ("192.0.2.1", "198.51.100.1")
    overhead = (14 if ethernet else 0) + (40 if v6 else 20) + 8
    payload = i.to_bytes(4, "big") + bytes(max(0, size - overhead - 4))
    return udp_frame(src, dst, 10000 + i, 53, payload, ethernet=ethernet)


def syn(i, *, ethernet=True):
    """A distinct TCP SYN number ``i`` (its own connection)."""
    return tcp_frame("192.0.2.1", "198.51.100.1", 20000 + i, 80, seq=1000 + i, ethernet=ethernet)


def pcap_bytes(frames, **options):
    buf = io.BytesIO()
    write_pcap(buf, frames, **options)
    return buf.getvalue()


def pcapng_bytes(frames, **options):
    buf = io.BytesIO()
    write_pcapng(buf, frames, **options)
    return buf.getvalue()


def put(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def pcap_record_offsets(data, order="<"):
    """Start offset of every record of a classic pcap file."""
    offsets, off = [], PCAP_HEADER
    while off < len(data):
        offsets.append(off)
        off += RECORD_HEADER + struct.unpack_from(order + "I", data, off + 8)[0]
    return offsets


def pcapng_blocks(data, order="<"):
    """(offset, type, length) of every block of a pcapng file."""
    out, off = [], 0
    while off < len(data):
        btype, blen = struct.unpack_from(order + "II", data, off)
        out.append((off, btype, blen))
        off += blen
    return out


def pcapng_packet_offsets(data, order="<"):
    return [off for off, btype, _ in pcapng_blocks(data, order) if btype == 6]


class Run:
    """A reader, a batch and an engine wired together; records what reaches the engine."""

    def __init__(self, source, *, capacity=2048, chunk_size=1 << 20, **engine_options):
        self.engine = aiomb.Engine(**engine_options)
        self.seen = []  # (ts, frame) of every packet, at the sender hook
        self.engine.add_handler(aiomb.PACKET_IN, self._record, hook=aiomb.Hook.SENDER)
        self.handles = []  # every flow's handle, taken when it starts
        for start in (aiomb.CONN_START, aiomb.UDP_START):
            self.engine.add_handler(start, lambda packet: self.handles.append(packet.flow))
        self.d = aiomb.Dispatcher(self.engine)
        self.sub = self.d.subscribe((aiomb.CONN_START, aiomb.UDP_START))
        self.reader = CaptureReader(source, chunk_size=chunk_size)
        self.batch = aiomb.FrameBatch(capacity)
        self.counts = []
        self.starts = []

    def _record(self, packet):
        self.seen.append((packet.ts, packet.frame))

    def fill(self):
        n = self.reader.fill(self.batch)
        assert n == self.batch.count
        assert n <= self.batch.capacity
        if n:
            self.counts.append(n)
            self.engine.process(self.batch)
        return n

    def all(self):
        try:
            while self.fill():
                pass
        finally:
            self.reader.close()
        assert self.batch.count == 0
        return self

    @property
    def frames(self):
        return [frame for _, frame in self.seen]

    @property
    def times(self):
        return [ts for ts, _ in self.seen]

    def start_events(self):
        self.starts += self.d.drain(self.sub)
        return self.starts

    def start_times(self):
        return [ev.ts for ev in self.start_events()]

    def first_times(self):
        """first_ts of every flow started, from the handles taken when they started."""
        return [flow.first_ts for flow in self.handles]


def run_all(source, **options):
    return Run(source, **options).all()


def ns(seconds, nanos=0):
    return seconds * 1_000_000_000 + nanos


def sec(nanoseconds):
    """Seconds as the engine computes them from integer nanoseconds (ns * 1e-9)."""
    return nanoseconds * 1e-9


# -- classic pcap ---------------------------------------------------------------------


@pytest.mark.parametrize("byteorder", ["little", "big"])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path, byteorder, nanosecond):
    # Small second values keep every nanosecond exact in a double; the epoch value checks
    # the seconds field in both byte orders.
    stamps = [ns(7, 123_456_789), ns(8, 1), ns(9, 999_999_999), ns(1_764_547_200, 500_000_000)]
    frames = [(t, syn(i)) for i, t in enumerate(stamps)]
    path = put(tmp_path, "t.pcap", pcap_bytes(frames, byteorder=byteorder, nanosecond=nanosecond))
    run = run_all(path)
    expected = stamps if nanosecond else [t // 1000 * 1000 for t in stamps]
    assert run.frames == [f for _, f in frames]
    assert run.times == [sec(t) for t in expected]
    assert run.start_times() == [sec(t) for t in expected]
    assert run.first_times() == [sec(t) for t in expected]
    assert [ev.key.client_port for ev in run.start_events()] == [20000, 20001, 20002, 20003]
    st = run.engine.statistics()
    assert (st.packets, st.tcp_packets, st.flows_created, st.malformed) == (4, 4, 4, {})
    assert run.reader.records == 4
    assert run.reader.offset == path.stat().st_size
    assert not run.reader.compressed


def test_microsecond_pcap_keeps_exact_microseconds(tmp_path):
    frames = [(ns(5, 123_456_000), syn(0)), (ns(5, 123_457_000), syn(1))]
    run = run_all(put(tmp_path, "us.pcap", pcap_bytes(frames)))
    assert run.start_times() == [sec(ns(5, 123_456_000)), sec(ns(5, 123_457_000))]
    assert run.batch.last_ts is None  # the final fill emptied the batch


def test_wire_length_reaches_the_engine(tmp_path):
    data = pcap_bytes([(1.0, udp(0, 200), 1500), (1.1, udp(1, 100))])
    run = run_all(put(tmp_path, "wire.pcap", data))
    assert run.frames == [udp(0, 200), udp(1, 100)]
    assert run.engine.statistics().bytes == 1500 + 100


def test_linktype_of_the_file_reaches_the_engine(tmp_path):
    # A link type the engine does not know: every frame counted under unknown_linktype.
    run = run_all(put(tmp_path, "lt.pcap", pcap_bytes([(1.0, udp(0)), (1.1, udp(1))], linktype=147)))
    st = run.engine.statistics()
    assert st.malformed == {"unknown_linktype": 2}
    assert run.seen == []


# -- link types -----------------------------------------------------------------------


def test_raw_ip_pcap(tmp_path):
    frames = [(1.0, udp(0, ethernet=False)), (1.1, udp(1, ethernet=False, v6=True)),
              (1.2, syn(2, ethernet=False))]
    run = run_all(put(tmp_path, "raw.pcap", pcap_bytes(frames, linktype=LINKTYPE_RAW)))
    assert run.frames == [f for _, f in frames]
    assert [str(f.key) for f in run.engine.flows()] == [
        "udp 192.0.2.1:10000 -> 198.51.100.1:53",
        "udp [2001:db8::1]:10001 -> [2001:db8::2]:53",
        "tcp 192.0.2.1:20002 -> 198.51.100.1:80",
    ]
    st = run.engine.statistics()
    assert (st.udp_packets, st.tcp_packets, st.malformed, st.non_ip) == (2, 1, {}, 0)


@pytest.mark.parametrize("linktype,wrap", [
    (LINKTYPE_LINUX_SLL, sll_frame),
    (LINKTYPE_LINUX_SLL2, sll2_frame),
], ids=["sll", "sll2"])
def test_linux_cooked_captures(tmp_path, linktype, wrap):
    v4 = wrap(udp(0, ethernet=False))
    v6 = wrap(udp(1, ethernet=False, v6=True), protocol=ETHERTYPE_IPV6)
    tcp = wrap(syn(2, ethernet=False))
    arp = wrap(bytes(28), protocol=0x0806)
    frames = [(1.0, v4), (1.1, v6), (1.2, tcp), (1.3, arp)]
    run = run_all(put(tmp_path, "cooked.pcap", pcap_bytes(frames, linktype=linktype)))
    assert run.frames == [v4, v6, tcp]
    assert [str(f.key) for f in run.engine.flows()] == [
        "udp 192.0.2.1:10000 -> 198.51.100.1:53",
        "udp [2001:db8::1]:10001 -> [2001:db8::2]:53",
        "tcp 192.0.2.1:20002 -> 198.51.100.1:80",
    ]
    st = run.engine.statistics()
    assert (st.packets, st.udp_packets, st.tcp_packets, st.non_ip, st.malformed) == (4, 2, 1, 1, {})


# -- pcapng ---------------------------------------------------------------------------


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_pcapng_two_interfaces_with_own_linktype_and_resolution(tmp_path, byteorder):
    interfaces = [(LINKTYPE_ETHERNET, 6), (LINKTYPE_RAW, 9)]
    records = [
        (ns(7, 123_456_789), udp(0), 0),                    # us interface: ns truncated
        (ns(7, 223_456_789), udp(1, ethernet=False), 1),    # ns interface: exact
        (ns(7, 323_456_789), syn(2), 0),
        (ns(7, 423_456_789), syn(3, ethernet=False), 1),
        (ns(1_764_547_200, 987_654_321), udp(4, ethernet=False, v6=True), 1),
    ]
    data = pcapng_bytes(records, interfaces=interfaces, byteorder=byteorder)
    run = run_all(put(tmp_path, "two.pcapng", data))
    expected = [t // 1000 * 1000 if iface == 0 else t for t, _, iface in records]
    assert run.frames == [f for _, f, _ in records]
    assert run.times == [sec(t) for t in expected]
    assert run.start_times() == [sec(t) for t in expected]
    assert run.first_times() == [sec(t) for t in expected]
    st = run.engine.statistics()
    assert (st.packets, st.udp_packets, st.tcp_packets, st.malformed) == (5, 3, 2, {})
    assert run.reader.records == 5
    assert run.reader.offset == len(data)


def test_pcapng_skips_unknown_blocks(tmp_path):
    data = pcapng_bytes([(1.0, udp(0)), (1.1, udp(1))])
    second = pcapng_packet_offsets(data)[1]
    # An interface statistics block (type 5) and a custom block between the packets.
    extra = struct.pack("<II", 5, 20) + bytes(8) + struct.pack("<I", 20)
    extra += struct.pack("<II", 0x00000BAD, 16) + b"abcd" + struct.pack("<I", 16)
    run = run_all(put(tmp_path, "skip.pcapng", data[:second] + extra + data[second:]))
    assert run.frames == [udp(0), udp(1)]


def test_reader_accepts_a_binary_file_object():
    data = pcapng_bytes([(1.0, udp(0)), (2.0, udp(1))])
    run = run_all(io.BytesIO(data))
    assert run.frames == [udp(0), udp(1)]
    assert run.reader.path is None


# -- gzip -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_gzip_compressed_captures(tmp_path, fmt):
    records = [(ns(3, 100_000 * i), udp(i, 300)) for i in range(50)]
    data = pcap_bytes(records, nanosecond=True) if fmt == "pcap" else pcapng_bytes(records)
    plain = put(tmp_path, f"c.{fmt}", data)
    run = run_all(gzip_file(plain), chunk_size=4096)
    assert run.reader.compressed
    assert run.frames == [f for _, f in records]
    assert run.times == [sec(t) for t, _ in records]
    assert run.reader.records == 50
    assert run.reader.offset == len(data)  # offsets count decompressed bytes
    assert run.engine.statistics().flows_created == 50


def test_gzip_file_object():
    data = pcap_bytes([(1.0, udp(0)), (1.5, udp(1))])
    run = run_all(io.BytesIO(gzip.compress(data, mtime=0)))
    assert run.reader.compressed
    assert run.frames == [udp(0), udp(1)]


class Unseekable(io.RawIOBase):
    """A pipe's file object: read in order only (seekable() is False, seek() raises)."""

    def __init__(self, data):
        self.data = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, view):
        return self.data.readinto(view)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_a_capture_from_a_pipe_plain_or_gzip(compress):
    """A pipe cannot be rewound after its first bytes tell gzip from a capture: those bytes go first
    into the decompressor (or the capture's parse) and the rest follows, in two gzip members too."""
    data = pcapng_bytes([(1.0, udp(0)), (1.5, udp(1)), (2.0, udp(2))])
    if compress:
        data = gzip.compress(data[:100], mtime=0) + gzip.compress(data[100:], mtime=0)
    run = run_all(Unseekable(data))
    assert run.reader.compressed == compress
    assert run.frames == [udp(0), udp(1), udp(2)]


class Trickle(io.RawIOBase):
    """A slow writer's pipe, read non-blocking: ``step`` bytes a read, and once ``nonblocking``
    is set, a read that finds nothing yet (None, as a raw file gives for EAGAIN) before each."""

    def __init__(self, data, step):
        self.data = io.BytesIO(data)
        self.step = step
        self.nonblocking = False
        self.quiet = False

    def readable(self):
        return True

    def readinto(self, view):
        self.quiet = not self.quiet
        if self.nonblocking and self.quiet:
            return None
        return self.data.readinto(memoryview(view)[:self.step])


@pytest.mark.parametrize("step", [2, 3, 300, 1 << 16])
@pytest.mark.parametrize("members", [1, 2, 3])
def test_a_gzip_capture_from_a_pipe_with_nothing_to_read_now_is_not_at_its_end(step, members):
    """Where a non-blocking pipe has no byte now, within a gzip member or between two, the
    reader says ``would_block`` (not the end, not damage) and goes on where the bytes come."""
    records = [(1.0 + i / 100, udp(i, 200)) for i in range(30)]
    data = pcap_bytes(records)
    cuts = [len(data) * k // members for k in range(members + 1)]
    gz = b"".join(gzip.compress(data[a:b], mtime=0) for a, b in zip(cuts, cuts[1:]))
    pipe = Trickle(gz, step)
    run = Run(pipe, capacity=8, chunk_size=4096)
    pipe.nonblocking = True
    quiet = 0
    while run.fill() or run.reader.would_block:
        quiet += run.reader.would_block
    run.reader.close()
    assert run.frames == [f for _, f in records]
    assert quiet


# -- batching and chunking ------------------------------------------------------------


def test_batch_smaller_than_the_record_count(tmp_path):
    records = [(1.0 + i / 100, udp(i)) for i in range(10)]
    run = Run(put(tmp_path, "ten.pcap", pcap_bytes(records)), capacity=3)
    seen_counts = []
    while run.fill():
        seen_counts.append(run.batch.count)
    assert seen_counts == [3, 3, 3, 1]
    assert run.counts == [3, 3, 3, 1]
    assert run.batch.count == 0
    assert run.frames == [f for _, f in records]
    assert run.reader.records == 10
    assert run.engine.statistics().packets == 10


@pytest.mark.parametrize("fmt", ["pcap", "pcapng", "pcap.gz"])
def test_records_straddling_chunk_boundaries(tmp_path, fmt):
    records = [(ns(1, 1_000_000 * i), udp(i, 1500)) for i in range(20)]
    data = pcapng_bytes(records) if fmt == "pcapng" else pcap_bytes(records)
    path = put(tmp_path, "x." + fmt.split(".")[0], data)
    if fmt.endswith(".gz"):
        path = gzip_file(path)
    offsets = pcapng_packet_offsets(data) if fmt == "pcapng" else pcap_record_offsets(data)
    ends = offsets[1:] + [len(data)]
    assert any(start // 4096 != (end - 1) // 4096 for start, end in zip(offsets, ends))
    run = run_all(path, chunk_size=4096)
    assert run.frames == [f for _, f in records]
    assert run.times == [sec(ts) for ts, _ in records]
    assert sum(run.counts) == 20
    assert len(run.counts) > 1          # a 4096-byte chunk holds at most 2 such records
    assert max(run.counts) <= 3
    st = run.engine.statistics()
    assert (st.packets, st.udp_packets, st.flows_created, st.malformed) == (20, 20, 20, {})


@pytest.mark.parametrize("fmt", ["pcap", "pcapng", "pcap.gz"])
def test_record_larger_than_the_chunk(tmp_path, fmt):
    sizes = [100, 9000, 60, 9000, 1500, 9000]
    records = [(1.0 + i / 1000, udp(i, size)) for i, size in enumerate(sizes)]
    assert len(records[1][1]) == 9000
    data = pcapng_bytes(records) if fmt == "pcapng" else pcap_bytes(records)
    path = put(tmp_path, "j." + fmt.split(".")[0], data)
    if fmt.endswith(".gz"):
        path = gzip_file(path)
    for capacity in (1, 2048):
        run = run_all(path, chunk_size=4096, capacity=capacity)
        assert run.frames == [f for _, f in records]
        assert sum(run.counts) == len(sizes)
        assert run.engine.statistics().bytes == sum(sizes)


def test_chunk_size_and_capacity_limits(tmp_path):
    path = put(tmp_path, "a.pcap", pcap_bytes([(1.0, udp(0))]))
    with pytest.raises(ValueError, match="chunk_size must be at least 4096"):
        CaptureReader(path, chunk_size=4095)
    with pytest.raises(ValueError, match="at least one frame"):
        aiomb.FrameBatch(0)
    with pytest.raises(TypeError, match="path or a binary file object"):
        CaptureReader(12)


def test_verdicts_are_bytes_of_the_batch_length(tmp_path):
    records = [(1.0 + i / 10, udp(i)) for i in range(6)]
    run = Run(put(tmp_path, "v.pcap", pcap_bytes(records)), capacity=4)
    assert run.batch.verdicts() == b""

    def drop_odd(packet):
        if packet.sport % 2:
            packet.drop()

    run.engine.add_handler(aiomb.PACKET_IN, drop_odd, hook=aiomb.Hook.SENDER)
    got = []
    while run.fill():
        v = run.batch.verdicts()
        assert isinstance(v, bytes)
        assert len(v) == run.batch.count
        got.append(v)
    assert got == [b"\x00\x01\x00\x01", b"\x00\x01"]
    assert run.engine.statistics().dropped_by_verdict == 3


def test_last_ts_of_a_batch(tmp_path):
    records = [(ns(2, 5_000), udp(0)), (ns(3, 250_000_000), udp(1))]
    run = Run(put(tmp_path, "l.pcap", pcap_bytes(records, nanosecond=True)))
    assert run.batch.last_ts is None
    assert run.fill() == 2
    assert run.batch.last_ts == sec(ns(3, 250_000_000))


# -- errors: opening ------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pcap"
    with pytest.raises(CaptureError) as info:
        CaptureReader(path)
    err = info.value
    assert err.offset is None
    assert err.path == str(path)
    assert str(err) == f"{path}: no such capture file; check the path"
    assert isinstance(err, ValueError) and isinstance(err, aiomb.AiombError)


def test_directory(tmp_path):
    with pytest.raises(CaptureError) as info:
        CaptureReader(tmp_path)
    assert info.value.offset is None
    assert str(info.value) == f"{tmp_path}: is a directory, not a capture file"


def test_empty_file(tmp_path):
    path = put(tmp_path, "empty.pcap", b"")
    with pytest.raises(CaptureError) as info:
        CaptureReader(path)
    assert info.value.offset == 0
    assert "too short" in str(info.value)
    assert str(info.value).endswith("at offset 0")


def test_file_shorter_than_a_header(tmp_path):
    path = put(tmp_path, "short.pcap", pcap_bytes([])[:20])
    with pytest.raises(CaptureError, match="need a 24-byte header") as info:
        CaptureReader(path)
    assert info.value.offset == 0


def test_unknown_magic(tmp_path):
    path = put(tmp_path, "text.pcap", b"hello, this is not a capture file at all\n")
    with pytest.raises(CaptureError) as info:
        CaptureReader(path)
    err = info.value
    assert err.offset == 0
    assert "not a pcap or pcapng file" in str(err)
    assert "magic 0x6c6c6568" in str(err)


def test_header_only_pcap_has_no_records(tmp_path):
    run = run_all(put(tmp_path, "h.pcap", pcap_bytes([])))
    assert run.counts == [] and run.reader.records == 0


def test_rejected_file_is_closed(tmp_path):
    path = put(tmp_path, "text.pcap", b"not a capture, not at all, no")

    def attempt():
        with pytest.raises(CaptureError):
            CaptureReader(path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attempt()
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


# -- errors: records ------------------------------------------------------------------


FRAMES5 = [(1.0 + i / 10, udp(i, 100)) for i in range(5)]


def expect_two_then_error(path, offset, *, capacity=2048, chunk_size=1 << 20):
    """The first two records come out of fill() and are processed; then CaptureError."""
    run = Run(path, capacity=capacity, chunk_size=chunk_size)
    while True:
        try:
            if not run.fill():
                pytest.fail("the reader reached the end without an error")
        except CaptureError as exc:
            err = exc
            break
    assert run.frames == [f for _, f in FRAMES5[:2]]
    assert run.engine.statistics().packets == 2
    assert run.reader.records == 2
    assert err.offset == offset
    assert err.path == str(path)
    assert str(err).endswith(f"at offset {offset}")
    return run, err


@pytest.mark.parametrize("capacity,chunk_size", [(2048, 1 << 20), (1, 4096), (2, 4096)])
def test_truncated_record(tmp_path, capacity, chunk_size):
    data = pcap_bytes(FRAMES5)
    third = pcap_record_offsets(data)[2]
    path = put(tmp_path, "cut.pcap", data[:third + RECORD_HEADER + 10])
    run, err = expect_two_then_error(path, third, capacity=capacity, chunk_size=chunk_size)
    assert f"truncated record: header says {len(FRAMES5[2][1])} bytes, file ends after 10" in str(err)
    if capacity == 2048:
        assert run.counts == [2]


def test_truncated_record_header(tmp_path):
    data = pcap_bytes(FRAMES5)
    third = pcap_record_offsets(data)[2]
    path = put(tmp_path, "cuthdr.pcap", data[:third + 7])
    _, err = expect_two_then_error(path, third)
    assert "truncated record header (7 of 16 bytes)" in str(err)


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_corrupt_caplen(tmp_path, byteorder):
    order = "<" if byteorder == "little" else ">"
    data = bytearray(pcap_bytes(FRAMES5, byteorder=byteorder))
    third = pcap_record_offsets(bytes(data), order)[2]
    struct.pack_into(order + "I", data, third + 8, 300_000)
    path = put(tmp_path, "caplen.pcap", bytes(data))
    _, err = expect_two_then_error(path, third)
    assert "captured length 300000 exceeds 262144" in str(err)


def test_caplen_at_the_limit_is_accepted(tmp_path):
    big = udp(0, 1000) + bytes(262144 - 1000)   # Ethernet trailer padding up to the limit
    run = run_all(put(tmp_path, "max.pcap", pcap_bytes([(1.0, big)])), chunk_size=4096)
    assert run.counts == [1]


def test_a_subsecond_field_past_a_second_is_carried_into_the_seconds(tmp_path):
    """As libpcap's readers take it (tshark reads suricata-verify's transform-base64-7296, whose
    8th record says 1011041 microseconds): before, the capture stopped there as corrupt, losing the
    51 sound records after it."""
    data = bytearray(pcap_bytes(FRAMES5))
    third = pcap_record_offsets(bytes(data))[2]
    sec = struct.unpack_from("<I", data, third)[0]
    struct.pack_into("<I", data, third + 4, 1_011_041)
    run = run_all(put(tmp_path, "us.pcap", bytes(data)))
    assert run.frames == [f for _, f in FRAMES5]
    assert run.times[2] == pytest.approx(sec + 1.011041, abs=1e-9)


def pcapng5(tmp_path, mutate, name="bad.pcapng"):
    data = bytearray(pcapng_bytes(FRAMES5, interfaces=[(LINKTYPE_ETHERNET, 6), (LINKTYPE_RAW, 9)]))
    third = pcapng_packet_offsets(bytes(data))[2]
    mutate(data, third)
    return put(tmp_path, name, bytes(data)), third


@pytest.mark.parametrize("length", [101, 8, 1 << 25])
def test_pcapng_bad_block_length(tmp_path, length):
    path, third = pcapng5(tmp_path, lambda d, o: struct.pack_into("<I", d, o + 4, length))
    _, err = expect_two_then_error(path, third)
    assert f"corrupt block: length {length}" in str(err)


def test_pcapng_mismatched_trailing_length(tmp_path):
    def mutate(d, o):
        blen = struct.unpack_from("<I", d, o + 4)[0]
        struct.pack_into("<I", d, o + blen - 4, blen + 4)

    path, third = pcapng5(tmp_path, mutate)
    _, err = expect_two_then_error(path, third)
    assert "trailing length differs from the leading one" in str(err)


def test_pcapng_unknown_interface(tmp_path):
    path, third = pcapng5(tmp_path, lambda d, o: struct.pack_into("<I", d, o + 8, 3))
    _, err = expect_two_then_error(path, third)
    assert "packet block names interface 3, but only 2 are described" in str(err)


def test_pcapng_truncated_block(tmp_path):
    data = pcapng_bytes(FRAMES5)
    third = pcapng_packet_offsets(data)[2]
    blen = struct.unpack_from("<I", data, third + 4)[0]
    _, err = expect_two_then_error(put(tmp_path, "cut.pcapng", data[:third + 40]), third)
    assert f"truncated block: header says {blen} bytes, file ends after 40" in str(err)


def test_pcapng_truncated_block_header(tmp_path):
    data = pcapng_bytes(FRAMES5)
    third = pcapng_packet_offsets(data)[2]
    _, err = expect_two_then_error(put(tmp_path, "cuthdr.pcapng", data[:third + 5]), third)
    assert "truncated block header (5 bytes)" in str(err)


def test_pcapng_captured_length_past_the_block(tmp_path):
    path, third = pcapng5(tmp_path, lambda d, o: struct.pack_into("<I", d, o + 20, 5000))
    _, err = expect_two_then_error(path, third)
    assert "captured length 5000 runs past the block" in str(err)


def test_pcapng_huge_captured_length_is_corrupt(tmp_path):
    path, third = pcapng5(tmp_path, lambda d, o: struct.pack_into("<I", d, o + 20, 0xFFFFFFFF))
    batch = aiomb.FrameBatch(2048)
    with CaptureReader(path) as reader:
        assert reader.fill(batch) == 2   # the two good records (never processed: the batch may be unsafe)
        with pytest.raises(CaptureError, match="runs past the block") as info:
            reader.fill(batch)
    assert info.value.offset == third


def binary_resolution_pcapng(exponent, ticks, frame):
    """A pcapng whose one interface has if_tsresol 2^-exponent, with one packet at ``ticks``."""
    def block(btype, body):
        body += bytes(-len(body) % 4)
        return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 0)
                + struct.pack("<HHB3x", 9, 1, 0x80 | exponent) + struct.pack("<HH", 0, 0))
    epb = block(6, struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
                + frame)
    return shb + idb + epb


def test_pcapng_binary_resolution():
    data = binary_resolution_pcapng(20, 5 * 2**20 + 2**19, udp(0))
    run = run_all(io.BytesIO(data))
    assert run.times == [5.5]


def test_pcapng_fine_binary_resolution():
    data = binary_resolution_pcapng(40, 5 * 2**40 + 2**39, udp(0))
    run = run_all(io.BytesIO(data))
    assert run.times == [5.5]


# -- errors: gzip ---------------------------------------------------------------------


def gzip_cases():
    """FRAMES5 as a pcap, and that pcap gzip-compressed."""
    data = pcap_bytes(FRAMES5)
    return data, gzip.compress(data, mtime=0)


def test_damaged_gzip_raises_capture_error(tmp_path):
    data, gz = gzip_cases()
    for name, damaged in (("garbage.pcap.gz", gz + b"garbage!"), ("cut.pcap.gz", gz[:len(gz) // 2])):
        path = put(tmp_path, name, damaged)
        with pytest.raises(CaptureError, match="the compressed stream is damaged"):
            run_all(path)


def test_garbage_after_gzip_member(tmp_path):
    data, gz = gzip_cases()
    run = Run(put(tmp_path, "garbage.pcap.gz", gz + b"garbage!"))
    with pytest.raises(CaptureError, match="the compressed stream is damaged") as info:
        while run.fill():
            pass
    assert run.frames == [f for _, f in FRAMES5]
    assert info.value.offset == len(data)


def test_garbage_after_larger_gzip_member(tmp_path):
    records = [(1.0 + i / 1000, udp(i, 1042)) for i in range(100)]
    data = pcap_bytes(records)
    run = Run(put(tmp_path, "g.pcap.gz", gzip.compress(data, mtime=0) + b"garbage!"), chunk_size=16384)
    with pytest.raises(CaptureError, match="the compressed stream is damaged") as info:
        while run.fill():
            pass
    assert len(run.frames) == 100
    assert info.value.offset == len(data)


def test_truncated_gzip_stream(tmp_path):
    data, gz = gzip_cases()
    cut = gz[:len(gz) // 2]
    prefix = zlib.decompressobj(wbits=31).decompress(cut)   # what can be gunzipped
    complete = [off for off in pcap_record_offsets(data)
                if off + RECORD_HEADER + len(FRAMES5[0][1]) <= len(prefix)]
    assert 1 <= len(complete) < 5
    run = Run(put(tmp_path, "cut.pcap.gz", cut))
    with pytest.raises(CaptureError, match="the compressed stream is damaged") as info:
        while run.fill():
            pass
    assert run.frames == [f for _, f in FRAMES5[:len(complete)]]
    assert info.value.offset == len(prefix)
