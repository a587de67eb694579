# The source interface (FrameBatch: frames + timestamps in, verdicts out) and the capture
# reader: classic pcap (both byte orders, us/ns) and pcapng (several interfaces, per-interface
# link type and timestamp resolution), gzip-compressed or not, parsed without a Python object
# per packet.

import os as _os
import warnings as _warnings
import zlib as _zlib

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE

from aiomb._errors import CaptureError

cdef enum:
    MAX_BLOCKS = 16           # frame blocks a reader keeps (values pointing into them)
    FEW_VALUES = 8            # values still held that are copied out to keep reading into a block
    MAX_RECORD = 1 << 24      # larger pcap/pcapng records are corrupt
    MAX_SNAP = 1 << 18        # 262144: the largest caplen a pcap record may claim
    FMT_PCAP = 1
    FMT_PCAPNG = 2
    MAX_IFACES = 256


class _GunzipStream:
    """Decompresses a gzip file (one or more members) incrementally, for CaptureReader.

    Unlike gzip.GzipFile it hands over every byte decompressed before damage or truncation is
    found, then raises OSError on the next read, so the records before the damage are kept.
    It reads ``raw`` in order only: a pipe will do, a non-blocking one too (``readinto``
    then returns None where ``raw`` has nothing now, as a raw file does). ``head``: the
    stream's first bytes, already read from a pipe (to tell gzip from a capture), which come
    before the rest of ``raw``.
    """

    def __init__(self, raw, chunk=1 << 16, head=b""):
        self.raw = raw
        self.chunk = chunk
        self.head = head
        self.inflate = _zlib.decompressobj(wbits=31)    # None between members
        self.pending = b""
        self.failure = None
        self.ended = False

    def readinto(self, view):
        """Decompressed bytes into ``view``: how many, 0 at the clean end of the stream, None
        where a non-blocking ``raw`` has nothing to read now (not its end). Raises OSError
        once the bytes before damage or truncation are taken."""
        while not self.pending:
            if self.failure is not None:
                raise OSError(self.failure)
            if self.ended:
                return 0
            data = self.read_raw()
            if data is None:
                return None
            self.pending = self.step(data)
        n = min(len(view), len(self.pending))
        view[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def step(self, data):
        """The bytes that ``data``, the next compressed bytes (b"" at the end of ``raw``),
        decompress to (maybe none); sets ``ended`` or ``failure`` where the stream ends."""
        if self.inflate is None:            # a member ended: the next one, or the end
            if not data:
                self.ended = True
                return b""
            if not b"\x1f\x8b".startswith(data[:2]):
                self.failure = "data after the last gzip member is not gzip"
                return b""
            self.inflate = _zlib.decompressobj(wbits=31)
        elif not data:
            self.failure = "the gzip stream ends before its end marker (truncated file)"
            return self.inflate.flush()
        return self.decompress(data)

    def read_raw(self):
        """The next compressed bytes: ``head`` first; None where a non-blocking ``raw`` has
        nothing now, b"" at its end."""
        if self.head:
            data, self.head = self.head, b""
            return data
        return self.raw.read(self.chunk)

    def decompress(self, data):
        try:
            out = self.inflate.decompress(data)
        except _zlib.error as exc:
            self.failure = str(exc)
            return b""
        if self.inflate.eof:                # what follows the member comes next, from head
            self.head = self.inflate.unused_data
            self.inflate = None
        return out

    def close(self):
        self.raw.close()


@cython.final
cdef class FrameBlock:
    """Memory a capture batch's frames lie in, and the NEW_DATA values still pointing into it.

    The engine registers each :class:`FrameBytes` it makes from the batch's frames here. The
    reader reuses a block once none of them is referenced elsewhere, and copies the bytes out
    of those still referenced when it must reuse the block anyway (or when the block goes), so
    a value never outlives its bytes. Layer: core (capture I/O).
    """

    cdef bytearray buf
    cdef uint8_t *p
    cdef size_t size
    cdef list values

    def __cinit__(self, size_t size):
        self.buf = bytearray(size)
        self.p = <uint8_t *>(<char *>self.buf)
        self.size = size
        self.values = []

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.values is None:
            return
        try:
            self.reclaim()
        except MemoryError:         # no memory to copy into: the values become empty, not dangling
            for i in range(PyList_GET_SIZE(self.values)):
                (<FrameBytes>PyList_GET_ITEM(self.values, i)).lose()

    cdef Py_ssize_t in_use(self, Py_ssize_t limit) except -1:
        """How many values made from these frames are still referenced elsewhere and not yet
        copied out (counting stops past ``limit``); when none is, the block forgets them and is
        free."""
        cdef Py_ssize_t i, live = 0
        cdef PyObject *v
        for i in range(PyList_GET_SIZE(self.values)):
            v = PyList_GET_ITEM(self.values, i)
            if refcount(v) > 1 and (<FrameBytes>v).n:      # held, and still pointing into frames
                live += 1
                if live > limit:
                    return live
        if live == 0 and PyList_GET_SIZE(self.values):
            self.values = []
        return live

    cdef int reclaim(self) except -1:
        """Copy out the bytes of every value still referenced; afterwards the block is free."""
        cdef Py_ssize_t i
        for i in range(PyList_GET_SIZE(self.values)):
            if refcount(PyList_GET_ITEM(self.values, i)) > 1:
                (<FrameBytes>PyList_GET_ITEM(self.values, i)).get()     # a no-op once copied
        self.values = []
        return 0


cdef class FrameBatch:
    """A batch of frames with timestamps and link types, and a verdict slot per frame.

    The source interface: a source fills a batch, the engine processes it and writes verdicts,
    the source applies them (a capture ignores them). Frame pointers stay valid until the
    source refills the batch. Layer: core.
    """

    cdef const uint8_t **data
    cdef uint32_t *caplen
    cdef uint32_t *wirelen
    cdef int64_t *ts
    cdef uint16_t *linktype
    cdef uint8_t *verdict
    cdef readonly int count
    cdef readonly int capacity
    cdef readonly bint writable     # frames may be modified in place (an AF_XDP port's UMEM)
    cdef FrameBlock block           # the capture memory the frames lie in; None: reused after the batch

    def __cinit__(self, int capacity=2048):
        if capacity < 1:
            raise ValueError(f"a batch holds at least one frame, got capacity={capacity}")
        self.capacity = capacity
        self.data = <const uint8_t **>calloc(capacity, sizeof(uint8_t *))
        self.caplen = <uint32_t *>calloc(capacity, sizeof(uint32_t))
        self.wirelen = <uint32_t *>calloc(capacity, sizeof(uint32_t))
        self.ts = <int64_t *>calloc(capacity, sizeof(int64_t))
        self.linktype = <uint16_t *>calloc(capacity, sizeof(uint16_t))
        self.verdict = <uint8_t *>calloc(capacity, sizeof(uint8_t))
        if not (self.data and self.caplen and self.wirelen and self.ts and self.linktype and self.verdict):
            raise MemoryError()

    def __dealloc__(self):
        free(self.data)
        free(self.caplen)
        free(self.wirelen)
        free(self.ts)
        free(self.linktype)
        free(self.verdict)

    def verdicts(self):
        """The verdicts of the frames in the batch, as bytes (0 forward, 1 drop)."""
        return self.verdict[:self.count]

    @property
    def last_ts(self):
        """Timestamp (seconds) of the batch's last frame, or None if empty."""
        return self.ts[self.count - 1] * 1e-9 if self.count else None

    def ts_at(self, int i):
        """Timestamp (seconds) of the batch's i-th frame."""
        if not 0 <= i < self.count:
            raise IndexError(f"frame {i} is not in the batch of {self.count}")
        return self.ts[i] * 1e-9


cdef enum:
    PCAP_SHORT_HEADER = 1       # what is wrong with a pcap record (pcap_problem words it)
    PCAP_CAPLEN = 2
    PCAP_SHORT_RECORD = 3


cdef inline int pcap_header_check(uint32_t caplen) noexcept nogil:
    """0 for a pcap record header that can be read, else what is wrong with it. A sub-second
    field past a second is read as libpcap's readers take it (carried into the seconds): some
    writers produce one, and the records after it are sound."""
    if caplen > MAX_SNAP:
        return PCAP_CAPLEN
    return 0


cdef str pcap_problem(int what, uint32_t caplen, uint64_t have):
    """A damaged pcap record in words: ``what`` from pcap_header_check or PCAP_SHORT_*, ``have``
    the bytes left of the header (PCAP_SHORT_HEADER) or after it (PCAP_SHORT_RECORD). The
    capture reader and the shard ring's workers say it alike."""
    if what == PCAP_SHORT_HEADER:
        return f"truncated record header ({have} of 16 bytes)"
    if what == PCAP_CAPLEN:
        return f"corrupt record header: captured length {caplen} exceeds {MAX_SNAP}"
    return f"truncated record: header says {caplen} bytes, file ends after {have}"


cdef inline uint16_t g16(const uint8_t *p, bint swap) noexcept nogil:
    return ((<uint16_t>p[0] << 8) | p[1]) if swap else ((<uint16_t>p[1] << 8) | p[0])

cdef inline uint32_t g32(const uint8_t *p, bint swap) noexcept nogil:
    if swap:
        return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


@cython.final
cdef class CaptureReader:
    """Reads a pcap or pcapng file (optionally gzip-compressed) into FrameBatches.

    ``fill(batch)`` returns the number of frames put in the batch, 0 at the end of the file.
    A corrupt or truncated file raises :class:`CaptureError` naming the offset (in the
    decompressed stream) once every record before it has been returned. Frames point into
    ``chunk_size`` blocks (:class:`FrameBlock`), reused once no NEW_DATA value needs them; at
    most 16 are kept (``frame_memory``). Layer: core (the capture I/O); reads the file with
    blocking reads.
    """

    cdef object fh
    cdef object read_some          # fh.readinto1 (one read: a pipe's records come as they arrive), else readinto
    cdef readonly object raw_file
    cdef readonly object path
    cdef FrameBlock cur         # the block being read into
    cdef list blocks            # every block, least recently used first (cur is last)
    cdef size_t chunk
    cdef uint8_t *p             # cur's memory
    cdef size_t length          # valid bytes in cur
    cdef size_t pos             # next unread byte in cur
    cdef uint64_t base          # file offset of cur's first byte
    cdef bint eof
    cdef int fmt
    cdef bint swap
    cdef bint nanos
    cdef uint16_t pcap_linktype
    cdef int n_ifaces
    cdef uint16_t if_linktype[MAX_IFACES]
    cdef int64_t if_mul[MAX_IFACES]     # ns per tick when >= 1
    cdef int64_t if_div[MAX_IFACES]     # ticks per ns divisor when > 1
    cdef uint8_t if_pow2[MAX_IFACES]    # binary resolution exponent, 0 when decimal
    cdef int64_t if_offset[MAX_IFACES]  # seconds to add
    cdef int64_t last_ts        # the latest packet block's time: a simple packet block has none of its own
    cdef object pending_error
    cdef object stream_error    # a damaged compressed stream, raised where the good data ends
    cdef readonly uint64_t records
    cdef readonly bint compressed
    cdef readonly bint would_block  # the last fill stopped at a non-blocking file with nothing to read now

    def __init__(self, source, *, int chunk_size=1 << 20):
        if chunk_size < 4096:
            raise ValueError(f"chunk_size must be at least 4096 bytes, got {chunk_size}")
        if isinstance(source, (str, _os.PathLike)):
            self.path = _os.fspath(source)
            try:
                raw = open(self.path, "rb", buffering=0)     # one read(2) per call: a pipe gives what it has
            except FileNotFoundError:
                raise CaptureError("no such capture file; check the path", path=self.path) from None
            except IsADirectoryError:
                raise CaptureError("is a directory, not a capture file", path=self.path) from None
        elif hasattr(source, "readinto"):
            raw = source
            self.path = getattr(source, "name", None)
        else:
            raise TypeError(f"capture source must be a path or a binary file object, got {source!r}")
        self.raw_file = raw
        head = raw.read(2)
        if hasattr(raw, "seek") and raw.seekable():
            raw.seek(-len(head), 1)
            prefix = b""
        else:
            prefix = head
        if head == b"\x1f\x8b":
            self.fh = _GunzipStream(raw, head=prefix)   # the magic bytes read from a pipe go in first
            self.compressed = True
            prefix = b""
        else:
            self.fh = raw
        self.read_some = getattr(self.fh, "readinto1", self.fh.readinto)
        self.chunk = chunk_size
        self.cur = FrameBlock(chunk_size)
        self.blocks = [self.cur]
        self.p = self.cur.p
        self.length = len(prefix)
        if prefix:
            self.cur.buf[:len(prefix)] = prefix
        try:
            self.read_header()
        except BaseException:
            self.close()
            raise

    def close(self):
        """Close the file."""
        if self.fh is not None:
            self.fh.close()
        if self.raw_file is not None and self.raw_file is not self.fh:
            self.raw_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __dealloc__(self):
        if self.raw_file is not None and not self.raw_file.closed:
            _warnings.warn(f"unclosed capture reader for {self.path!r}; call close() or use it "
                           "as a context manager", ResourceWarning, source=self)
            self.close()

    @property
    def frame_memory(self):
        """Bytes of the blocks the reader reads into (at most 16, each the chunk size unless a
        record is larger). A NEW_DATA value keeps its frames' block from reuse until it is
        dropped or its bytes are taken; past 16 blocks the oldest values are copied out."""
        return sum((<FrameBlock>b).size for b in self.blocks)

    @property
    def offset(self):
        """Offset of the next unread byte (in the decompressed stream)."""
        return self.base + self.pos

    cdef object error(self, str message, uint64_t offset):
        return CaptureError(message, offset=offset, path=self.path)

    cdef int want(self, size_t n) except -1:
        """Make n bytes from pos available; returns 1 if they are, 0 at end of file (or, with
        ``would_block`` set, where a non-blocking file has nothing more now)."""
        cdef size_t have = self.length - self.pos
        cdef size_t size
        if have >= n:
            return 1
        if self.eof:
            return 0
        if self.pos or n > self.cur.size:
            blk = self.block_for(n)
            if blk is self.cur:
                memmove(self.p, self.p + self.pos, have)
            else:
                memcpy(blk.p, self.p + self.pos, have)
                self.cur = blk
                self.p = blk.p
            self.base += self.pos
            self.pos = 0
            self.length = have
        while self.length < n and not self.eof:
            try:
                got = self.read_some(memoryview(self.cur.buf)[self.length:])
            except OSError as exc:
                self.eof = True
                self.stream_error = self.error(f"the compressed stream is damaged ({exc}); the "
                                               "records before this offset were read", self.base + self.length)
                break
            if got is None:         # a non-blocking file (a pipe) has nothing now: not its end
                self.would_block = True
                break
            if not got:
                self.eof = True
            else:
                self.length += got
        return 1 if self.length - self.pos >= n else 0

    cdef FrameBlock block_for(self, size_t n):
        """A block to continue in, holding at least n bytes: the current one if at most a few
        values point into it (their bytes copied out), else the least recently used free one,
        else a new one (up to MAX_BLOCKS), else the least recently used one after copying out
        its values' bytes."""
        cdef FrameBlock blk
        cdef size_t size = self.chunk
        while size < n:
            size *= 2
        if self.cur.size >= n and self.cur.in_use(FEW_VALUES) <= FEW_VALUES:
            self.cur.reclaim()      # a few values still held (a consumer's last event): copy them
            return self.cur         # out and keep reading into the block that is in the cache
        for blk in self.blocks:
            if blk is not self.cur and blk.size >= n and blk.in_use(0) == 0:
                self.blocks.remove(blk)
                break
        else:
            blk = None
            if len(self.blocks) == MAX_BLOCKS:
                blk = <FrameBlock>self.blocks.pop(0)
                blk.reclaim()
                if blk.size < n:
                    blk = None
            if blk is None:
                blk = FrameBlock(size)
        self.blocks.append(blk)
        return blk

    cdef read_header(self):
        cdef uint32_t magic
        if not self.want(24):
            if self.stream_error is not None:
                raise self.stream_error
            raise self.error("file too short to be a pcap or pcapng capture (need a 24-byte header)", 0)
        magic = g32(self.p, 0)
        if magic == 0xa1b2c3d4 or magic == 0xa1b23c4d:
            self.swap = 0
        elif magic == 0xd4c3b2a1 or magic == 0x4d3cb2a1:
            self.swap = 1
        elif magic == 0x0a0d0d0a:
            self.fmt = FMT_PCAPNG
            return
        else:
            raise self.error(f"not a pcap or pcapng file (magic 0x{magic:08x}); "
                             "give a .pcap, .pcapng or their .gz", 0)
        self.fmt = FMT_PCAP
        self.nanos = magic == 0xa1b23c4d or magic == 0x4d3cb2a1
        self.pcap_linktype = g32(self.p + 20, self.swap) & 0xffff
        self.pos = 24

    def fill(self, FrameBatch batch):
        """Fill ``batch`` with the next frames; returns how many (0 at the end of the file).

        On a non-blocking file (a pipe), it stops where the file has nothing to read now, even
        within a record, with ``would_block`` set: wait for the file to turn readable, then fill
        again (0 is then not the end)."""
        batch.count = 0
        self.would_block = False
        batch.writable = False
        batch.block = None
        if self.pending_error is not None:
            err, self.pending_error = self.pending_error, None
            raise err
        try:
            if self.fmt == FMT_PCAP:
                self.fill_pcap(batch)
            else:
                self.fill_pcapng(batch)
        except CaptureError as exc:
            if batch.count == 0:
                raise
            self.pending_error = exc
        self.records += batch.count
        batch.block = self.cur      # every frame of a batch lies in one block (see compact_for)
        return batch.count

    cdef inline int compact_for(self, FrameBatch batch, size_t n) except -1:
        """Like want(), but never moves bytes that frames already in the batch point into.

        Returns 1 when n bytes are there, 2 to hand the batch over first (or when a non-blocking
        file has nothing more now), 0 at the end of the data; a damaged compressed stream raises
        its error there instead of 0.
        """
        if self.length - self.pos >= n:
            return 1
        if batch.count and not self.eof:
            return 2        # hand the batch over first; the next fill compacts the buffer
        if self.want(n):
            return 1
        if self.would_block:
            return 2        # the frames so far; the rest of the record when the file has it
        if self.stream_error is not None:
            raise self.stream_error
        return 0

    cdef int fill_pcap(self, FrameBatch batch) except -1:
        cdef const uint8_t *h
        cdef uint32_t caplen, wirelen, sec, frac
        cdef int r
        while batch.count < batch.capacity:
            r = self.compact_for(batch, 16)
            if r == 2:
                return 0
            if r == 0:
                if self.length - self.pos:
                    raise self.error(pcap_problem(PCAP_SHORT_HEADER, 0, self.length - self.pos),
                                     self.base + self.pos)
                return 0
            h = self.p + self.pos
            sec = g32(h, self.swap)
            frac = g32(h + 4, self.swap)
            caplen = g32(h + 8, self.swap)
            wirelen = g32(h + 12, self.swap)
            r = pcap_header_check(caplen)
            if r:
                raise self.error(pcap_problem(r, caplen, 0), self.base + self.pos)
            r = self.compact_for(batch, 16 + caplen)
            if r == 2:
                return 0
            if r == 0:
                raise self.error(pcap_problem(PCAP_SHORT_RECORD, caplen, self.length - self.pos - 16),
                                 self.base + self.pos)
            h = self.p + self.pos
            batch.data[batch.count] = h + 16
            batch.caplen[batch.count] = caplen
            batch.wirelen[batch.count] = wirelen
            batch.ts[batch.count] = <int64_t>sec * 1000000000 + (frac if self.nanos else <int64_t>frac * 1000)
            batch.linktype[batch.count] = self.pcap_linktype
            batch.verdict[batch.count] = 0
            batch.count += 1
            self.pos += 16 + caplen
        return 0

    cdef int64_t pcapng_ts(self, int iface, uint64_t ticks, uint64_t offset) except? -1:
        """A packet block's time in ns: its ticks at the interface's resolution plus the
        interface's offset. A time int64 nanoseconds cannot hold (past 2262, or before 1970 by a
        negative offset) raises CaptureError at the block: a clamped or wrapped time would order
        the flows wrongly without a word."""
        cdef uint64_t v, whole
        cdef uint64_t top = 0x7fffffffffffffff
        cdef int64_t off = self.if_offset[iface] * 1000000000     # |if_offset| checked in read_idb
        cdef uint8_t p = self.if_pow2[iface]
        cdef bint over = 0
        if p:
            whole = ticks >> p if p < 64 else 0
            if whole > top // 1000000000:
                over = 1
            else:
                v = whole * 1000000000 + <uint64_t>(
                    <double>(ticks & ((<uint64_t>1 << p) - 1)) * (1e9 / <double>(<uint64_t>1 << p)))
        elif self.if_div[iface] > 1:
            v = ticks // <uint64_t>self.if_div[iface]
        elif ticks > top // <uint64_t>self.if_mul[iface]:
            over = 1
        else:
            v = ticks * <uint64_t>self.if_mul[iface]
        if not over and v > top:
            over = 1
        if not over and off > 0 and v > top - <uint64_t>off:
            over = 1
        if over or (off < 0 and v < <uint64_t>(-off)):
            raise self.error(f"packet time out of range: {ticks} ticks of interface {iface} plus its offset of "
                             f"{self.if_offset[iface]} s is {'past 2262' if over else 'before 1970'}, beyond "
                             "int64 nanoseconds (a damaged if_tsresol or if_tsoffset, or ticks)", offset)
        return <int64_t>v + off

    cdef int read_idb(self, const uint8_t *b, uint32_t blen) except -1:
        cdef uint32_t o = 16, code, olen
        cdef int i = self.n_ifaces
        cdef int k
        cdef uint8_t res = 6
        if i >= MAX_IFACES:
            raise self.error(f"more than {MAX_IFACES} interfaces in one section", self.base + self.pos)
        if blen < 20:
            raise self.error("interface description block too short", self.base + self.pos)
        self.if_linktype[i] = g16(b + 8, self.swap)
        self.if_offset[i] = 0
        while o + 4 <= blen - 4:
            code = g16(b + o, self.swap)
            olen = g16(b + o + 2, self.swap)
            if code == 0:
                break
            if o + 4 + olen > blen - 4:
                raise self.error("interface option runs past its block", self.base + self.pos + o)
            if code == 9 and olen >= 1:
                res = b[o + 4]
            elif code == 14 and olen >= 8:
                self.if_offset[i] = <int64_t>(<uint64_t>g32(b + o + 4 + (0 if not self.swap else 4), self.swap) |
                                              (<uint64_t>g32(b + o + 4 + (4 if not self.swap else 0), self.swap) << 32))
                if not -9223372036 <= self.if_offset[i] <= 9223372036:
                    raise self.error(f"interface time offset (if_tsoffset) of {self.if_offset[i]} s is beyond what "
                                     "int64 nanoseconds hold (1970 +- 292 years); the option is damaged",
                                     self.base + self.pos + o)
            o += 4 + ((olen + 3) & ~3)
        self.if_pow2[i] = 0
        self.if_mul[i] = 1
        self.if_div[i] = 1
        if res & 0x80:
            if (res & 0x7f) > 63:
                raise self.error(f"interface timestamp resolution 2^-{res & 0x7f} is not supported",
                                 self.base + self.pos)
            self.if_pow2[i] = res & 0x7f
        elif res <= 9:
            for k in range(9 - res):
                self.if_mul[i] *= 10
        elif res <= 18:
            for k in range(res - 9):
                self.if_div[i] *= 10
        else:
            raise self.error(f"interface timestamp resolution 10^-{res} is not supported", self.base + self.pos)
        self.n_ifaces += 1
        return 0

    cdef int fill_pcapng(self, FrameBatch batch) except -1:
        cdef const uint8_t *b
        cdef uint32_t btype, blen, iface, caplen, wirelen, bom
        cdef uint64_t ticks
        cdef int r
        while batch.count < batch.capacity:
            r = self.compact_for(batch, 12)
            if r == 2:
                return 0
            if r == 0:
                if self.length - self.pos:
                    raise self.error(f"truncated block header ({self.length - self.pos} bytes)",
                                     self.base + self.pos)
                return 0
            b = self.p + self.pos
            btype = g32(b, self.swap)
            if btype == 0x0a0d0d0a:
                bom = g32(b + 8, 0)
                if bom == 0x1a2b3c4d:
                    self.swap = 0
                elif bom == 0x4d3c2b1a:
                    self.swap = 1
                else:
                    raise self.error(f"bad byte-order magic 0x{bom:08x} in section header", self.base + self.pos)
                self.n_ifaces = 0
            blen = g32(b + 4, self.swap)
            if blen < 12 or blen % 4 or blen > MAX_RECORD:
                raise self.error(f"corrupt block: length {blen} (must be a multiple of 4, 12 to {MAX_RECORD})",
                                 self.base + self.pos)
            r = self.compact_for(batch, blen)
            if r == 2:
                return 0
            if r == 0:
                raise self.error(f"truncated block: header says {blen} bytes, file ends after "
                                 f"{self.length - self.pos}", self.base + self.pos)
            b = self.p + self.pos
            if g32(b + blen - 4, self.swap) != blen:
                raise self.error("corrupt block: trailing length differs from the leading one", self.base + self.pos)
            if btype == 1:
                self.read_idb(b, blen)
            elif btype == 6 or btype == 2:
                if blen < 32:
                    raise self.error("packet block too short", self.base + self.pos)
                iface = g32(b + 8, self.swap) if btype == 6 else g16(b + 8, self.swap)
                if iface >= <uint32_t>self.n_ifaces:
                    raise self.error(f"packet block names interface {iface}, but only {self.n_ifaces} "
                                     "are described", self.base + self.pos)
                ticks = (<uint64_t>g32(b + 12, self.swap) << 32) | g32(b + 16, self.swap)
                caplen = g32(b + 20, self.swap)
                wirelen = g32(b + 24, self.swap)
                if <uint64_t>caplen + 32 > blen:
                    raise self.error(f"packet block: captured length {caplen} runs past the block",
                                     self.base + self.pos)
                batch.data[batch.count] = b + 28
                batch.caplen[batch.count] = caplen
                batch.wirelen[batch.count] = wirelen
                self.last_ts = self.pcapng_ts(iface, ticks, self.base + self.pos)
                batch.ts[batch.count] = self.last_ts
                batch.linktype[batch.count] = self.if_linktype[iface]
                batch.verdict[batch.count] = 0
                batch.count += 1
            elif btype == 3:
                if self.n_ifaces == 0:
                    raise self.error("simple packet block before any interface description", self.base + self.pos)
                if blen < 16:
                    raise self.error(f"simple packet block too short: length {blen}, at least 16 (its header, "
                                     "original length and trailer)", self.base + self.pos)
                wirelen = g32(b + 8, self.swap)
                caplen = blen - 16 if wirelen > blen - 16 else wirelen
                batch.data[batch.count] = b + 12
                batch.caplen[batch.count] = caplen
                batch.wirelen[batch.count] = wirelen
                batch.ts[batch.count] = self.last_ts
                batch.linktype[batch.count] = self.if_linktype[0]
                batch.verdict[batch.count] = 0
                batch.count += 1
            self.pos += blen
        return 0
