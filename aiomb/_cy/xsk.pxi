# AF_XDP sockets: one UMEM (frame_size x frames, mmapped) shared by every socket of a port set,
# one socket per (interface, RX queue), each with its own fill, completion, RX and (inline) TX
# ring. Receiving fills a FrameBatch with pointers into the UMEM; apply() then gives the
# frames back to the fill rings, or (inline) hands forwarded ones to the peer socket's TX ring
# with no copy, and frames come back through the completion rings.
#
# Ring discipline (the kernel is the other side of every ring): a consumer reads the producer
# index with acquire semantics, reads the descriptors, then publishes its consumer index with
# release; a producer reads the consumer index with acquire, writes descriptors, publishes its
# producer index with release. need_wakeup: the fill and TX rings say when the kernel must be
# kicked (recvfrom / sendto); in copy mode TX always needs sendto.

from aiomb._cy.if_xdp cimport *
from libc.errno cimport errno as c_errno
import os as _xsk_os
import warnings as _warnings

cdef enum:
    META_MAGIC = 0x6d6f6961  # aiomb's XDP program stamps each frame (see aiomb.io._bpf)
    META_LEN = 16
    MAX_XSKS = 128
    MAX_KICKS = 256          # sendto calls per TX kick (copy mode sends a budget per call)
    NO_PEER = -1


ctypedef struct xring_t:
    uint32_t *producer
    uint32_t *consumer
    uint32_t *flags
    void *desc
    uint32_t size
    uint32_t mask
    uint32_t local          # our own index: producer of fill/TX, consumer of RX/completion
    uint32_t published      # last value of `local` made visible
    void *map
    size_t map_len


cdef inline uint32_t pow2_at_least(uint32_t n) noexcept nogil:
    cdef uint32_t p = 1
    while p < n:
        p <<= 1
    return p


cdef class XskSet:
    """A UMEM and the AF_XDP sockets sharing it (one per interface and RX queue).

    ``add()`` creates and binds a socket (the first registers the UMEM; the others share it,
    each with its own fill and completion ring). ``receive(batch, now_ns)`` takes the frames
    waiting in the RX rings into the batch without copying; ``apply(batch)`` acts on the
    verdicts: each frame goes back to its fill ring, or, when the socket has a TX peer and the
    verdict is FORWARD, to the peer's TX ring. Never blocks: wait on ``fileno(i)`` (poll
    semantics) before receiving. Layer: core (the XDP I/O). Close with ``close()``.
    """

    cdef uint8_t *umem
    cdef size_t umem_len
    cdef readonly uint32_t frame_size
    cdef readonly uint32_t frames
    cdef uint32_t ring_size
    cdef readonly int count
    cdef readonly bint zerocopy
    cdef readonly bint closed
    cdef int fd[MAX_XSKS]
    cdef int ifindex[MAX_XSKS]
    cdef int queue[MAX_XSKS]
    cdef int peer[MAX_XSKS]
    cdef bint has_rx[MAX_XSKS]
    cdef bint has_tx[MAX_XSKS]
    cdef xring_t rx[MAX_XSKS]
    cdef xring_t tx[MAX_XSKS]
    cdef xring_t fill[MAX_XSKS]
    cdef xring_t comp[MAX_XSKS]
    cdef uint64_t n_rx[MAX_XSKS]
    cdef uint64_t n_rx_bytes[MAX_XSKS]
    cdef uint64_t n_fwd[MAX_XSKS]       # per sending (TX) socket
    cdef uint64_t n_drop[MAX_XSKS]      # per receiving socket, by verdict
    cdef uint64_t n_tx_full[MAX_XSKS]   # forwarded frames the TX ring had no room for
    cdef uint64_t n_tx_errors[MAX_XSKS]
    cdef uint64_t n_kicks[MAX_XSKS]
    cdef uint16_t *origin               # per UMEM frame: the socket whose fill ring it belongs to
    cdef uint64_t *baddr                # per batch slot: UMEM address of the frame
    cdef int16_t *bsock                 # per batch slot: receiving socket
    cdef const uint8_t **tdata          # scratch for merging several queues' runs by time
    cdef uint32_t *tlen
    cdef int64_t *tts
    cdef uint64_t *taddr
    cdef int16_t *tsock
    cdef readonly uint64_t stamped      # frames that carried the XDP program's timestamp
    cdef public bint prefixed           # the stamp comes in front of each frame (aiomb.io._bpf.stamp_mode)
    cdef int bcount
    cdef int bcap
    cdef int rr
    cdef uint32_t unfilled              # frames not yet given to any fill ring
    cdef uint32_t max_take              # frames one receive may hold at most

    def __cinit__(self):
        cdef int i
        for i in range(MAX_XSKS):
            self.fd[i] = -1
        self.closed = True

    def __init__(self, uint32_t frame_size=2048, uint32_t frames=4096):
        if frame_size not in (2048, 4096):
            raise ValueError(f"frame_size must be 2048 or 4096 (a power of two the kernel accepts in "
                             f"aligned mode), got {frame_size}")
        if not 64 <= frames <= 1 << 20:
            raise ValueError(f"frames must be from 64 to {1 << 20}, got {frames}")
        self.frame_size = frame_size
        self.frames = frames
        self.ring_size = pow2_at_least(frames)
        self.umem_len = <size_t>frame_size * frames
        cdef void *m = mmap(NULL, self.umem_len, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
        if m == MAP_FAILED:
            raise MemoryError(f"cannot map a UMEM of {self.umem_len} bytes")
        self.umem = <uint8_t *>m
        self.origin = <uint16_t *>calloc(frames, sizeof(uint16_t))
        if self.origin == NULL:
            raise MemoryError()
        self.unfilled = frames
        self.max_take = frames // 4     # 3/4 of the frames stay with the kernel while a batch is out
        self.closed = False

    def __dealloc__(self):
        if not self.closed:
            _warnings.warn("an XskSet was not closed (AF_XDP sockets leaked until exit); "
                           "close the port", ResourceWarning)
            self._release()
        self.free_scratch()
        free(self.origin)

    # ---- set-up ---------------------------------------------------------------------------

    cdef int map_ring(self, xring_t *r, int fd, const xdp_ring_offset *off, uint32_t size,
                      size_t desc_size, unsigned long long pgoff) except -1:
        r.map_len = off.desc + <size_t>size * desc_size
        r.map = mmap(NULL, r.map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, pgoff)
        if r.map == MAP_FAILED:
            r.map = NULL
            raise OSError(c_errno, f"mmap of an AF_XDP ring failed: {_xsk_os.strerror(c_errno)}")
        r.producer = <uint32_t *>(<uint8_t *>r.map + off.producer)
        r.consumer = <uint32_t *>(<uint8_t *>r.map + off.consumer)
        r.flags = <uint32_t *>(<uint8_t *>r.map + off.flags)
        r.desc = <uint8_t *>r.map + off.desc
        r.size = size
        r.mask = size - 1
        r.local = r.producer[0] if pgoff == XDP_UMEM_PGOFF_FILL_RING or pgoff == XDP_PGOFF_TX_RING \
            else r.consumer[0]
        r.published = r.local
        return 0

    cdef int sockopt(self, int fd, int name, uint32_t value, str what) except -1:
        if setsockopt(fd, SOL_XDP, name, &value, sizeof(value)) != 0:
            raise OSError(c_errno, f"{what}: {_xsk_os.strerror(c_errno)}")
        return 0

    def add(self, int ifindex, int queue, *, bint rx=True, bint tx=False, zerocopy=None):
        """Create a socket bound to (ifindex, queue); returns its index in the set.

        ``zerocopy`` True requires zero-copy, False forces copy mode, None tries zero-copy and
        falls back to copy (only the first socket chooses; the others share its UMEM and mode).
        Raises OSError from the failing call (bind's errno says why: EBUSY when the queue
        already has a socket, ENODEV for no such interface).
        """
        cdef int i = self.count
        if self.closed:
            raise RuntimeError("the XskSet is closed")
        if i >= MAX_XSKS:
            raise ValueError(f"at most {MAX_XSKS} AF_XDP sockets per set")
        if not (rx or tx):
            raise ValueError("a socket needs an RX or a TX ring")
        self.ifindex[i] = ifindex
        self.queue[i] = queue
        self.peer[i] = NO_PEER
        self.has_rx[i] = rx
        self.has_tx[i] = tx
        if i > 0:
            self.setup(i, XDP_SHARED_UMEM)
        elif zerocopy is None or zerocopy:
            # a failed bind leaves the socket without its rings: start over for copy mode
            try:
                self.setup(i, XDP_ZEROCOPY | XDP_USE_NEED_WAKEUP)
                self.zerocopy = True
            except OSError:
                self.drop_socket(i)
                if zerocopy:
                    raise
        if self.fd[i] < 0:
            self.setup(i, XDP_COPY | XDP_USE_NEED_WAKEUP)
            self.zerocopy = False
        self.count += 1
        return i

    cdef void drop_socket(self, int i) noexcept:
        self.unmap(&self.rx[i])
        self.unmap(&self.tx[i])
        self.unmap(&self.fill[i])
        self.unmap(&self.comp[i])
        if self.fd[i] >= 0:
            close(self.fd[i])
            self.fd[i] = -1

    cdef int setup(self, int i, uint16_t bind_flags) except -1:
        """Create, size, map and bind socket ``i``; on error it is dropped again."""
        try:
            self._setup(i, bind_flags)
        except BaseException:
            self.drop_socket(i)
            raise
        return 0

    cdef int _setup(self, int i, uint16_t bind_flags) except -1:
        cdef int fd
        cdef xdp_umem_reg reg
        cdef xdp_mmap_offsets off
        cdef socklen_t optlen = sizeof(off)
        cdef sockaddr_xdp sa
        cdef uint32_t budget
        fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0)
        if fd < 0:
            raise OSError(c_errno, f"socket(AF_XDP): {_xsk_os.strerror(c_errno)}")
        self.fd[i] = fd
        if i == 0:
            memset(&reg, 0, sizeof(reg))
            reg.addr = <uint64_t><size_t>self.umem
            reg.len = self.umem_len
            reg.chunk_size = self.frame_size
            reg.headroom = 0
            reg.flags = 0
            if setsockopt(fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)) != 0:
                raise OSError(c_errno, f"registering the UMEM: {_xsk_os.strerror(c_errno)}")
        self.sockopt(fd, XDP_UMEM_FILL_RING, self.ring_size, "sizing the fill ring")
        self.sockopt(fd, XDP_UMEM_COMPLETION_RING, self.ring_size, "sizing the completion ring")
        if self.has_rx[i]:
            self.sockopt(fd, XDP_RX_RING, self.ring_size, "sizing the RX ring")
        if self.has_tx[i]:
            self.sockopt(fd, XDP_TX_RING, self.ring_size, "sizing the TX ring")
            budget = self.ring_size      # copy mode: send more than 32 frames per sendto (6.17+)
            setsockopt(fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, &budget, sizeof(budget))
        if getsockopt(fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &optlen) != 0:
            raise OSError(c_errno, f"reading the ring offsets: {_xsk_os.strerror(c_errno)}")
        self.map_ring(&self.fill[i], fd, &off.fr, self.ring_size, sizeof(uint64_t), XDP_UMEM_PGOFF_FILL_RING)
        self.map_ring(&self.comp[i], fd, &off.cr, self.ring_size, sizeof(uint64_t), XDP_UMEM_PGOFF_COMPLETION_RING)
        if self.has_rx[i]:
            self.map_ring(&self.rx[i], fd, &off.rx, self.ring_size, sizeof(xdp_desc), XDP_PGOFF_RX_RING)
        if self.has_tx[i]:
            self.map_ring(&self.tx[i], fd, &off.tx, self.ring_size, sizeof(xdp_desc), XDP_PGOFF_TX_RING)
        memset(&sa, 0, sizeof(sa))
        sa.sxdp_family = AF_XDP
        sa.sxdp_ifindex = self.ifindex[i]
        sa.sxdp_queue_id = self.queue[i]
        sa.sxdp_flags = bind_flags
        if bind_flags & XDP_SHARED_UMEM:
            sa.sxdp_shared_umem_fd = self.fd[0]
        if bind(fd, <sockaddr *>&sa, sizeof(sa)) != 0:
            raise OSError(c_errno, f"bind to interface {self.ifindex[i]} queue {self.queue[i]}"
                          f"{' (zero-copy)' if bind_flags & XDP_ZEROCOPY else ''}: {_xsk_os.strerror(c_errno)}")
        return 0

    def set_peer(self, int sock, int peer):
        """Forwarded frames received on ``sock`` are sent on ``peer``'s TX ring (inline mode)."""
        if not (0 <= sock < self.count and 0 <= peer < self.count) or not self.has_tx[peer]:
            raise ValueError("set_peer needs two sockets of the set, the peer with a TX ring")
        self.peer[sock] = peer

    def fileno(self, int sock):
        """The socket's fd, to wait on for readability (frames in its RX ring)."""
        if not 0 <= sock < self.count:
            raise IndexError(sock)
        return self.fd[sock]

    def start(self):
        """Give the UMEM's frames to the fill rings of the RX sockets (evenly); call once."""
        cdef int i, nrx = 0, k = 0
        cdef uint32_t f, per, end
        for i in range(self.count):
            if self.has_rx[i]:
                nrx += 1
        if nrx == 0:
            return
        per = self.unfilled // nrx
        f = 0
        for i in range(self.count):
            if not self.has_rx[i]:
                continue
            k += 1
            end = self.frames if k == nrx else f + per
            while f < end:
                self.origin[f] = i
                self.push_fill(i, <uint64_t>f * self.frame_size)
                f += 1
        self.unfilled = 0
        self.submit_fills()

    # ---- rings ----------------------------------------------------------------------------

    cdef inline void push_fill(self, int s, uint64_t addr) noexcept nogil:
        cdef xring_t *r = &self.fill[s]
        (<uint64_t *>r.desc)[r.local & r.mask] = addr
        r.local += 1

    cdef inline void recycle(self, uint64_t addr) noexcept nogil:
        """Give a frame back to the fill ring it was taken from (its ring has room for all)."""
        cdef uint32_t f = <uint32_t>(addr // self.frame_size)
        self.push_fill(self.origin[f], <uint64_t>f * self.frame_size)

    cdef void submit_fills(self) noexcept nogil:
        cdef int i
        cdef xring_t *r
        for i in range(self.count):
            r = &self.fill[i]
            if r.local != r.published:
                aiomb_store_release(r.producer, r.local)
                r.published = r.local
                aiomb_full_fence()
                if aiomb_load_relaxed(r.flags) & XDP_RING_NEED_WAKEUP:
                    recvfrom(self.fd[i], NULL, 0, MSG_DONTWAIT, NULL, NULL)

    cdef void reap(self) noexcept nogil:
        """Frames the kernel has sent come back through the completion rings: refill with them."""
        cdef int i
        cdef uint32_t prod, n
        cdef xring_t *c
        for i in range(self.count):
            if not self.has_tx[i]:
                continue
            c = &self.comp[i]
            prod = aiomb_load_acquire(c.producer)
            n = prod - c.local
            if n == 0:
                continue
            while c.local != prod:
                self.recycle((<uint64_t *>c.desc)[c.local & c.mask])
                c.local += 1
            aiomb_store_release(c.consumer, c.local)

    cdef void kick(self, int i) noexcept nogil:
        """Have the kernel send what the TX ring holds (copy mode sends a budget per sendto)."""
        cdef xring_t *t = &self.tx[i]
        cdef int k, e
        cdef ssize_t r
        if t.local != t.published:
            aiomb_store_release(t.producer, t.local)
            t.published = t.local
        if aiomb_load_acquire(t.consumer) == t.local:
            return
        aiomb_full_fence()
        if not (aiomb_load_relaxed(t.flags) & XDP_RING_NEED_WAKEUP):
            return
        for k in range(MAX_KICKS):
            self.n_kicks[i] += 1
            r = sendto(self.fd[i], NULL, 0, MSG_DONTWAIT, NULL, 0)
            if r < 0:
                e = c_errno
                if e != EAGAIN and e != EBUSY and e != ENOBUFS and e != EINTR:
                    self.n_tx_errors[i] += 1
                    return
                if e == EBUSY or e == ENOBUFS:
                    return          # the device is busy: the next kick resumes
            if aiomb_load_acquire(t.consumer) == t.local:
                return

    # ---- the data path --------------------------------------------------------------------

    cdef void free_scratch(self) noexcept:
        free(self.baddr)
        free(self.bsock)
        free(self.tdata)
        free(self.tlen)
        free(self.tts)
        free(self.taddr)
        free(self.tsock)
        self.baddr = NULL
        self.bsock = NULL
        self.tdata = NULL
        self.tlen = NULL
        self.tts = NULL
        self.taddr = NULL
        self.tsock = NULL
        self.bcap = 0

    cdef int grow(self, int capacity) except -1:
        self.free_scratch()
        self.baddr = <uint64_t *>malloc(capacity * sizeof(uint64_t))
        self.bsock = <int16_t *>malloc(capacity * sizeof(int16_t))
        self.tdata = <const uint8_t **>malloc(capacity * sizeof(uint8_t *))
        self.tlen = <uint32_t *>malloc(capacity * sizeof(uint32_t))
        self.tts = <int64_t *>malloc(capacity * sizeof(int64_t))
        self.taddr = <uint64_t *>malloc(capacity * sizeof(uint64_t))
        self.tsock = <int16_t *>malloc(capacity * sizeof(int16_t))
        if not (self.baddr and self.bsock and self.tdata and self.tlen and self.tts and self.taddr
                and self.tsock):
            self.free_scratch()
            raise MemoryError()
        self.bcap = capacity
        return 0

    cdef inline int64_t stamp(self, uint64_t addr, int64_t now_ns, int64_t mono_to_real) noexcept nogil:
        """The frame's arrival time from the program's metadata (cleared once read), else now."""
        cdef uint8_t *m
        cdef uint32_t magic
        cdef uint64_t t
        if (addr & (self.frame_size - 1)) < META_LEN:
            return now_ns
        m = self.umem + addr - META_LEN
        memcpy(&magic, m, 4)
        if magic != META_MAGIC:
            return now_ns
        memcpy(&t, m + 8, 8)
        memset(m, 0, 4)
        self.stamped += 1
        return <int64_t>t + mono_to_real

    cdef inline int64_t unprefix(self, uint64_t *addr, uint32_t *length, int64_t now_ns,
                                 int64_t mono_to_real) noexcept nogil:
        """The arrival time from the stamp in front of the frame, which it then skips; else now."""
        cdef const uint8_t *m = self.umem + addr[0]
        cdef uint32_t magic, zero
        cdef uint64_t t
        if length[0] < META_LEN:
            return now_ns
        memcpy(&magic, m, 4)
        memcpy(&zero, m + 4, 4)
        if magic != META_MAGIC or zero != 0:
            return now_ns
        memcpy(&t, m + 8, 8)
        memset(<uint8_t *>m, 0, 4)              # never read again when the frame's memory is reused
        addr[0] += META_LEN
        length[0] -= META_LEN
        self.stamped += 1
        return <int64_t>t + mono_to_real

    def receive(self, FrameBatch batch, int64_t now_ns, int64_t mono_to_real=0):
        """Take waiting frames into ``batch`` (at most its capacity); returns their number.

        Each frame's timestamp is its arrival time as stamped by aiomb's XDP program
        (CLOCK_MONOTONIC ns, plus ``mono_to_real``; with ``prefixed``, the stamp in front of the
        frame is taken off), or ``now_ns`` when unstamped; the frames of
        several queues are merged in time order. Frames stay owned by the batch until
        ``apply(batch)``; the frames of a previous receive not yet applied are recycled first.
        Never blocks.
        """
        cdef int n = 0, k, s, nruns = 0
        cdef uint32_t prod, take, j, limit
        cdef xring_t *r
        cdef const xdp_desc *d
        cdef uint64_t addr
        cdef uint32_t length
        cdef int run_start[MAX_XSKS]
        cdef int run_end[MAX_XSKS]
        if self.closed:
            raise RuntimeError("the XskSet is closed")
        if self.bcount:
            self.release_batch()
        if self.bcap < batch.capacity:
            self.grow(batch.capacity)
        limit = batch.capacity if <uint32_t>batch.capacity < self.max_take else self.max_take
        self.reap()
        for k in range(self.count):
            s = (self.rr + k) % self.count
            if not self.has_rx[s]:
                continue
            r = &self.rx[s]
            prod = aiomb_load_acquire(r.producer)
            take = prod - r.local
            if take > limit - <uint32_t>n:
                take = limit - <uint32_t>n
            if take:
                run_start[nruns] = n
            for j in range(take):
                d = &(<const xdp_desc *>r.desc)[(r.local + j) & r.mask]
                addr = d.addr
                length = d.len
                if self.prefixed:
                    batch.ts[n] = self.unprefix(&addr, &length, now_ns, mono_to_real)
                else:
                    batch.ts[n] = self.stamp(addr, now_ns, mono_to_real)
                batch.data[n] = self.umem + addr
                batch.caplen[n] = length
                batch.wirelen[n] = length
                batch.linktype[n] = LT_ETHERNET
                batch.verdict[n] = VERDICT_FORWARD
                self.baddr[n] = addr
                self.bsock[n] = s
                self.n_rx_bytes[s] += length
                n += 1
            if take:
                run_end[nruns] = n
                nruns += 1
                r.local += take
                aiomb_store_release(r.consumer, r.local)
                self.n_rx[s] += take
            if <uint32_t>n >= limit:
                break
        self.rr = (self.rr + 1) % self.count if self.count else 0
        if nruns > 1:
            self.merge(batch, n, nruns, run_start, run_end)
        batch.count = n
        batch.writable = True
        self.bcount = n
        return n

    cdef void merge(self, FrameBatch batch, int n, int nruns, int *head, const int *end) noexcept nogil:
        """Order the batch by timestamp: a k-way merge of the queues' runs (each in ring order)."""
        cdef int o, k, best
        cdef int64_t t
        for o in range(n):
            best = -1
            for k in range(nruns):
                if head[k] < end[k] and (best < 0 or batch.ts[head[k]] < t):
                    best = k
                    t = batch.ts[head[k]]
            k = head[best]
            head[best] += 1
            self.tdata[o] = batch.data[k]
            self.tlen[o] = batch.caplen[k]
            self.tts[o] = batch.ts[k]
            self.taddr[o] = self.baddr[k]
            self.tsock[o] = self.bsock[k]
        memcpy(batch.data, self.tdata, n * sizeof(uint8_t *))
        memcpy(batch.caplen, self.tlen, n * sizeof(uint32_t))
        memcpy(batch.wirelen, self.tlen, n * sizeof(uint32_t))
        memcpy(batch.ts, self.tts, n * sizeof(int64_t))
        memcpy(self.baddr, self.taddr, n * sizeof(uint64_t))
        memcpy(self.bsock, self.tsock, n * sizeof(int16_t))

    cdef void release_batch(self) noexcept nogil:
        cdef int i
        for i in range(self.bcount):
            self.recycle(self.baddr[i])
        self.bcount = 0
        self.submit_fills()

    def apply(self, FrameBatch batch):
        """Act on the verdicts of the last received batch: forward (inline) or recycle each frame.

        Returns the number of frames handed to TX rings.
        """
        cdef int i, s, p, sent = 0
        cdef uint32_t cons
        cdef xring_t *t
        cdef xdp_desc *d
        cdef uint64_t touched = 0
        if self.closed or self.bcount == 0:
            return 0
        for i in range(self.bcount):
            s = self.bsock[i]
            p = self.peer[s]
            if batch.verdict[i] != VERDICT_FORWARD:
                self.n_drop[s] += 1
                self.recycle(self.baddr[i])
            elif p != NO_PEER:
                t = &self.tx[p]
                if t.local - aiomb_load_acquire(t.consumer) >= t.size:
                    self.n_tx_full[p] += 1
                    self.recycle(self.baddr[i])
                    continue
                d = &(<xdp_desc *>t.desc)[t.local & t.mask]
                d.addr = self.baddr[i]
                d.len = batch.caplen[i]
                d.options = 0
                t.local += 1
                self.n_fwd[p] += 1
                touched |= (<uint64_t>1) << (p & 63)
                sent += 1
            else:
                self.recycle(self.baddr[i])
        self.bcount = 0
        batch.count = 0          # the frames are no longer the batch's
        for p in range(self.count):
            if self.has_tx[p] and (touched >> (p & 63)) & 1:
                self.kick(p)
        self.reap()
        self.submit_fills()
        return sent

    def service(self):
        """Idle work: resend what TX rings still hold, take completions back, refill."""
        cdef int p
        if self.closed:
            return
        for p in range(self.count):
            if self.has_tx[p]:
                self.kick(p)
        self.reap()
        self.submit_fills()

    # ---- statistics and teardown ----------------------------------------------------------

    def socket_info(self, int sock):
        """(ifindex, queue, peer) of a socket of the set."""
        return self.ifindex[sock], self.queue[sock], self.peer[sock]

    def counters(self, int sock):
        """A dict of the socket's counters: aiomb's own and the kernel's XDP_STATISTICS."""
        cdef xdp_statistics st
        cdef socklen_t n = sizeof(st)
        memset(&st, 0, sizeof(st))
        if not self.closed and self.fd[sock] >= 0:
            getsockopt(self.fd[sock], SOL_XDP, XDP_STATISTICS, &st, &n)
        return {
            "received": self.n_rx[sock], "received_bytes": self.n_rx_bytes[sock],
            "forwarded": self.n_fwd[sock], "dropped_by_verdict": self.n_drop[sock],
            "tx_ring_full": self.n_tx_full[sock], "tx_errors": self.n_tx_errors[sock],
            "tx_kicks": self.n_kicks[sock],
            "rx_dropped": st.rx_dropped, "rx_ring_full": st.rx_ring_full,
            "rx_fill_ring_empty": st.rx_fill_ring_empty_descs,
            "rx_invalid_descs": st.rx_invalid_descs, "tx_invalid_descs": st.tx_invalid_descs,
        }

    cdef void unmap(self, xring_t *r) noexcept nogil:
        if r.map != NULL:
            munmap(r.map, r.map_len)
            r.map = NULL

    cdef void _release(self) noexcept:
        cdef int i
        # sockets sharing the UMEM go first; the owner (socket 0) last
        for i in range(self.count - 1, -1, -1):
            self.drop_socket(i)
        if self.umem != NULL:
            munmap(self.umem, self.umem_len)
            self.umem = NULL
        self.closed = True
        self.bcount = 0

    def close(self):
        """Close every socket and unmap the rings and the UMEM (idempotent).

        Frame pointers of a batch received from this set are invalid afterwards.
        """
        if not self.closed:
            self._release()
