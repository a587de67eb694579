# One input, N engines: the frames of one capture handed to shard engines in other processes.
#
# A ShardRing is shared memory made before the processes fork (the same address in each): a
# ring of slots, each holding frames (their bytes, and a descriptor per frame naming the shard
# it belongs to), taken by every worker in order. A worker fills its FrameBatch from a slot:
# its own frames and the shared ones with their bytes, another shard's frames as clock ticks
# (no bytes: the engine counts them and moves its clock, so flows time out at the same packets
# as in one engine). A slot is free again once every worker has processed it. Who fills the
# slots:
#
# - The workers themselves, for a classic pcap file on disk (``capture=``): the file is cut
#   into blocks of 1 MiB, block i is read by worker i mod N (pread, straight into slot i mod
#   slots) and holds the records that start in it. Where a block's first record starts is known
#   once the block before has been walked (record headers only), so the reading runs in
#   parallel and only that walk is in sequence: each worker reads a block ahead while the
#   others read theirs. The worker that reads a block classifies its frames (the parse and the
#   symmetric flow hash, as the engines decide; fragments, malformed and other frames go to
#   every shard) and posts it to every worker.
# - A reader process (``send``, ``end``), for anything else (pcapng, gzip, a named pipe): it
#   reads, classifies and copies the frames into the slot being filled and posts it (at once,
#   or once it has gathered 1536 frames or 1 MiB).
#
# Synchronisation: process-shared POSIX semaphores (futexes: no system call while nobody
# waits) in the ring: per slot, one that it is free, one that its block's start is known, and
# one per worker that it is ready; a per-slot count of the workers still reading it; flags the
# parent sets (stop: end the input after the batch or block at hand; abort: a process failed,
# everyone leaves). Every wait times out every 0.2 s to look at the flags and at its parent (an
# orphan leaves). Damage found in the capture is written into the ring (words and offset), for
# the parent to report once.

from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EINTR


cdef extern from *:
    """
    #include <semaphore.h>
    #include <time.h>
    #include <errno.h>
    #include <unistd.h>
    /* 1: got it, 0: timed out or interrupted (look at the flags, then wait again) */
    static int aiomb_sem_wait_ms(sem_t *s, long ms) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += (ms % 1000) * 1000000L;
        t.tv_sec += ms / 1000 + t.tv_nsec / 1000000000L;
        t.tv_nsec %= 1000000000L;
        return sem_timedwait(s, &t) == 0;
    }
    static inline int aiomb_sub_fetch(int *p) { return __atomic_sub_fetch(p, 1, __ATOMIC_ACQ_REL); }
    static inline int aiomb_load_int(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void aiomb_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    ctypedef struct sem_t:
        pass
    int sem_init(sem_t *s, int pshared, unsigned int value) nogil
    int sem_post(sem_t *s) nogil
    int sem_trywait(sem_t *s) nogil
    int aiomb_sem_wait_ms(sem_t *s, long ms) nogil
    int aiomb_sub_fetch(int *p) nogil
    int aiomb_load_int(const int *p) nogil
    void aiomb_store_int(int *p, int v) nogil
    int getppid() nogil
    int getpid() nogil
    ssize_t pread(int fd, void *buf, size_t count, int64_t offset) nogil
    int dup(int fd) nogil
    int close(int fd) nogil

cdef enum:
    SHARD_ALL = 0xffff          # a frame every shard processes
    READER_SLOTS = 4            # slots a reader process fills
    RING_WAIT_MS = 200
    GATHER_FRAMES = 1536        # a gathering slot is posted once it holds this many frames
    GATHER_BYTES = 1 << 20      # or bytes (it stays in the processors' caches)
    RING_END = 1                # the input ends after the slot's frames
    RING_ERROR = 2              # ... at a damaged capture (the ring holds the words)
    BLOCK = 1 << 20             # the workers read a pcap file in blocks of this many bytes
    READ_PIECE = 1 << 17        # in preads of at most this many (larger ones cost more kernel time)
    READ_PAST = 1 << 12         # bytes read past a block's end at first, for its last record
    PCAP_START = 24             # a pcap file's first record
    MAX_SLOTS = 66              # slots the workers read into: two blocks ahead each, up to 32 workers
    DAMAGE_WORDS = 1024


ctypedef struct ring_frame_t:
    int64_t ts
    uint32_t off                # where the frame's bytes start in the slot's data
    uint32_t caplen
    uint32_t wirelen
    uint16_t linktype
    uint16_t shard

ctypedef struct ring_slot_t:
    sem_t free                  # the slot may be filled (posted by the last worker done with it)
    sem_t started               # workers reading: the first record of the slot's next block is known
    int pending                 # workers still reading the slot
    int count
    int flags                   # RING_END, RING_ERROR
    int reason                  # with RING_END: the reason the open flows end with
    uint64_t start              # workers reading: where the slot's next block's first record starts,
    int start_flags             # or, with flags, that the input ended before it (and why)
    int start_reason

ctypedef struct ring_worker_t:
    uint64_t next               # the next slot it reads
    uint64_t produce            # workers reading: the next block it reads
    int holding                 # it still reads slot next - 1
    int pos                     # the frames of that slot it has taken
    int ended                   # it has taken the end of the input

ctypedef struct ring_head_t:
    int stop                    # the parent asks to end the input (the reason, > 0)
    int abort                   # a process failed: everyone leaves
    int damaged                 # the capture is damaged: at damage_offset, in damage's words
    int damage_len
    uint64_t damage_offset
    char damage[DAMAGE_WORDS]


cdef uint16_t frame_shard(const uint8_t *data, uint32_t caplen, uint32_t wirelen, uint16_t linktype,
                          uint32_t count, bint vlan_in_key, bint verify) noexcept nogil:
    """The shard whose engine tracks the frame's flow, as Engine.process_frame decides it (the
    same parse and hash); SHARD_ALL for a frame every engine must see: an IP fragment (each
    engine reassembles), a frame that is not a TCP or UDP packet, or a malformed one (each
    counts it alike), and a UDP tunnel's datagram (its flow and the one inside may be two
    engines'; each counts the packet inside alike)."""
    cdef pkt_t pk
    cdef int reason = 0
    memset(&pk, 0, sizeof(pkt_t))
    pk.frame = data
    pk.caplen = caplen
    pk.wirelen = wirelen if wirelen > caplen else caplen
    pk.wscale = -1
    pk.verify_checksums = verify
    if parse_packet(&pk, linktype, NULL, NULL, &reason) != P_OK:
        return SHARD_ALL
    if verify and not checksums_ok(&pk):
        return SHARD_ALL
    if pk.proto == 17 and parse_udp_tunnel(&pk, NULL, NULL, &reason) != P_NO_TUNNEL:
        return SHARD_ALL
    return <uint16_t>shard_of(&pk, vlan_in_key, count)


cdef int check_signals() except -1 with gil:
    """Run the Python signal handlers due (one raising ends a ring wait: Ctrl-C)."""
    return PyErr_CheckSignals()


@cython.final
cdef class ShardRing:
    """Frames of one capture to ``workers`` shard engines in other processes, through shared
    memory (make it before forking; see the top of shards.pxi).

    With ``capture`` (an open :class:`CaptureReader` of a classic pcap file on disk, see
    ``workers_read``) the workers read the file themselves, in turn. Otherwise a reader process
    feeds it: ``send(batch, gather)`` classifies a batch into the slot being filled and posts
    it (False once aborted), ``end(reason, damage)`` posts what waits, then the end;
    ``stop_requested`` is the reason the parent asked for (0: none). Worker: ``receive(index,
    batch)`` fills ``batch`` with the next frames of its slot, or of the next slot (another
    shard's as clock ticks: data NULL; a batch smaller than a slot takes it in pieces) and
    returns their count, or None at the end (``end_reason``, ``ended_by_error``); ``close(index)``
    when it leaves. Parent: ``request_stop(reason)``, ``abort()``, and after the run ``damage``.
    Layer: core.
    """

    cdef uint8_t *mem
    cdef size_t mem_len
    cdef ring_head_t *head
    cdef ring_worker_t *wk          # one per worker
    cdef sem_t *ready               # per worker, per slot: the slot is ready for the worker
    cdef ring_slot_t *slots
    cdef ring_frame_t *frames       # slot_frames per slot
    cdef uint8_t *data              # slot_bytes per slot
    cdef readonly int workers
    cdef readonly int nslots
    cdef readonly int slot_frames
    cdef readonly size_t slot_bytes
    cdef bint vlan_in_key
    cdef bint verify
    cdef int parent                 # the process that made the ring (an orphan leaves)
    cdef uint64_t next_send         # the reader's next slot
    cdef bint filling               # the reader holds slot next_send, partly filled (gathering)
    cdef size_t filled              # bytes in it
    cdef int fd                     # workers reading: the pcap file (-1: a reader feeds the ring)
    cdef bint swap
    cdef bint nanos
    cdef uint16_t linktype
    cdef readonly int end_reason
    cdef readonly bint ended_by_error

    block_size = BLOCK              # the bytes of a pcap file each block the workers read covers

    def __cinit__(self, int workers, *, int slot_frames=2048, size_t slot_bytes=32 << 20,
                  bint vlan_in_key=False, str checksums="ignore", CaptureReader capture=None):
        cdef size_t head_len, wk_len, ready_len, slots_len, frames_len
        cdef int i
        self.fd = -1
        if not 1 <= workers <= 1024:
            raise ValueError(f"workers must be from 1 to 1024, got {workers}")
        if capture is not None:
            if not ShardRing.workers_read(capture):
                raise ValueError(f"the workers read a classic pcap file on disk, not {capture.path!r}: "
                                 "give it to a reader process (send) instead")
            slot_frames = BLOCK // 16 + 1                  # the records that start in a block
            slot_bytes = BLOCK + 16 + MAX_SNAP             # and the end of the last one
            self.nslots = min(2 * workers + 2, MAX_SLOTS)
            self.swap = capture.swap
            self.nanos = capture.nanos
            self.linktype = capture.pcap_linktype
        elif slot_frames < 1 or slot_bytes < 2 * MAX_RECORD:
            raise ValueError("a slot holds at least one frame and two of the largest records")
        else:
            self.nslots = READER_SLOTS
        self.workers = workers
        self.slot_frames = slot_frames
        self.slot_bytes = slot_bytes
        self.vlan_in_key = vlan_in_key
        self.verify = checksums == "verify"
        head_len = (sizeof(ring_head_t) + 63) & ~(<size_t>63)
        wk_len = (workers * sizeof(ring_worker_t) + 63) & ~(<size_t>63)
        ready_len = (<size_t>workers * self.nslots * sizeof(sem_t) + 63) & ~(<size_t>63)
        slots_len = (self.nslots * sizeof(ring_slot_t) + 63) & ~(<size_t>63)
        frames_len = (<size_t>self.nslots * slot_frames * sizeof(ring_frame_t) + 4095) & ~(<size_t>4095)
        self.mem_len = head_len + wk_len + ready_len + slots_len + frames_len + self.nslots * slot_bytes
        # reserved, not committed: a slot's pages are touched only as far as its frames reach
        self.mem = <uint8_t *>mmap(NULL, self.mem_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        if self.mem == <uint8_t *>MAP_FAILED:
            self.mem = NULL
            raise MemoryError(f"no shared memory for the shard ring ({self.mem_len} bytes)")
        self.head = <ring_head_t *>self.mem
        self.wk = <ring_worker_t *>(self.mem + head_len)
        self.ready = <sem_t *>(self.mem + head_len + wk_len)
        self.slots = <ring_slot_t *>(self.mem + head_len + wk_len + ready_len)
        self.frames = <ring_frame_t *>(self.mem + head_len + wk_len + ready_len + slots_len)
        self.data = self.mem + head_len + wk_len + ready_len + slots_len + frames_len
        for i in range(self.nslots):
            if sem_init(&self.slots[i].free, 1, 1) != 0 or sem_init(&self.slots[i].started, 1, 0) != 0:
                raise OSError(c_errno, "sem_init failed")
        for i in range(workers * self.nslots):
            if sem_init(&self.ready[i], 1, 0) != 0:
                raise OSError(c_errno, "sem_init failed")
        for i in range(workers):
            self.wk[i].produce = i
        if capture is not None:
            self.fd = dup(capture.raw_file.fileno())
            if self.fd < 0:
                raise OSError(c_errno, "dup of the capture's descriptor failed")
            self.slots[0].start = PCAP_START                # block 0 starts after the file header
            sem_post(&self.slots[0].started)
        self.parent = _os.getpid()

    def __dealloc__(self):
        if self.mem != NULL:
            munmap(self.mem, self.mem_len)
        if self.fd >= 0:
            close(self.fd)

    @staticmethod
    def workers_read(CaptureReader capture):
        """Whether the workers can read ``capture`` themselves, each its own blocks: a classic
        pcap file on disk, not compressed (pcapng, gzip and pipes come through a reader)."""
        import stat as _stat
        return (capture.fmt == FMT_PCAP and not capture.compressed and capture.raw_file is not None
                and hasattr(capture.raw_file, "fileno") and _stat.S_ISREG(_os.fstat(capture.raw_file.fileno()).st_mode))

    @property
    def workers_reading(self):
        """True when the workers read the capture themselves (no reader process)."""
        return self.fd >= 0

    cdef bint gone(self) noexcept nogil:
        """Everyone must leave: the ring was aborted, or its maker died."""
        return aiomb_load_int(&self.head.abort) != 0 or (getpid() != self.parent and getppid() != self.parent)

    cdef int wait(self, sem_t *s, bint signals=False, long limit_ms=-1) except -1 nogil:
        """Wait for ``s``: 1 once it came, 0 when the ring was aborted (or its maker died), 2
        when ``limit_ms`` (if >= 0) passed without it. With ``signals`` the Python signal
        handlers due run while it waits (one raising ends the wait: Ctrl-C)."""
        cdef long step
        while True:
            step = RING_WAIT_MS if limit_ms < 0 or limit_ms > RING_WAIT_MS else limit_ms
            if aiomb_sem_wait_ms(s, step):
                return 1
            if self.gone():
                return 0
            if signals:
                check_signals()
            if limit_ms >= 0:
                limit_ms -= step
                if limit_ms <= 0:
                    return 2

    cdef void post(self, int k) noexcept nogil:
        """Slot ``k`` is ready for every worker."""
        cdef int i
        self.slots[k].pending = self.workers
        for i in range(self.workers):
            sem_post(&self.ready[<size_t>i * self.nslots + k])

    # ---- the parent ---------------------------------------------------------------------------

    def request_stop(self, int reason):
        """Ask to end the input after the batch (or block) at hand; the open flows end with
        ``reason`` (an EndReason). Safe in a signal handler."""
        if aiomb_load_int(&self.head.stop) == 0:
            aiomb_store_int(&self.head.stop, reason)

    def abort(self):
        """A process failed: every wait in the ring returns, and the reader and workers leave."""
        aiomb_store_int(&self.head.abort, 1)

    @property
    def damage(self):
        """Where the capture was found damaged and what is wrong there: ``(words, offset)``, or
        None (for the parent to report once the workers are done)."""
        if not aiomb_load_int(&self.head.damaged):
            return None
        return (self.head.damage[:self.head.damage_len].decode("utf-8", "replace"), self.head.damage_offset)

    cdef int note_damage(self, str words, uint64_t offset) except -1:
        cdef bytes b = words.encode("utf-8")[:DAMAGE_WORDS]
        memcpy(self.head.damage, <const char *>b, len(b))
        self.head.damage_len = len(b)
        self.head.damage_offset = offset
        aiomb_store_int(&self.head.damaged, 1)
        return 0

    # ---- a reader process ---------------------------------------------------------------------

    @property
    def stop_requested(self):
        """The reason the parent asked the input to end with (0: not asked)."""
        return aiomb_load_int(&self.head.stop)

    cdef int check_reader(self) except -1:
        if self.fd >= 0:
            raise RuntimeError("the workers read this ring's capture themselves: there is no reader")
        return 0

    cdef void post_sent(self) noexcept nogil:
        """Hand the slot being filled to every worker."""
        self.post(self.next_send % self.nslots)
        self.next_send += 1
        self.filling = 0

    cdef int start_slot(self) noexcept nogil:
        """Wait for the next slot to be free and start filling it; 0 when aborted."""
        cdef ring_slot_t *slot = &self.slots[self.next_send % self.nslots]
        if not self.wait(&slot.free):
            return 0
        slot.count = 0
        slot.flags = 0
        slot.reason = 0
        self.filled = 0
        self.filling = 1
        return 1

    def send(self, FrameBatch batch, bint gather=False):
        """Classify the batch's frames and copy them into the slot being filled (waiting for a
        free one), then post it to every worker. With ``gather`` the slot waits for more batches
        until it holds 1536 frames or 1 MiB (fewer hand-overs; ``end()`` posts what waits): for
        a file, not for a pipe whose next frames may be long in coming. False when the ring was
        aborted."""
        cdef ring_slot_t *slot
        cdef ring_frame_t *fr
        cdef uint8_t *dst
        cdef size_t size = 0
        cdef int i, k
        cdef uint32_t n
        cdef bint ok = 1
        self.check_reader()
        if batch.count > self.slot_frames:
            raise ValueError(f"a batch of {batch.count} frames does not fit a slot of {self.slot_frames}")
        for i in range(batch.count):
            size += batch.caplen[i]
        if size > self.slot_bytes:
            raise ValueError(f"a batch of {size} bytes does not fit a slot of {self.slot_bytes}")
        with nogil:
            if self.filling:
                slot = &self.slots[self.next_send % self.nslots]
                if slot.count + batch.count > self.slot_frames or self.filled + size > self.slot_bytes:
                    self.post_sent()
            if not self.filling and not self.start_slot():
                ok = 0
            if ok:
                k = self.next_send % self.nslots
                slot = &self.slots[k]
                fr = self.frames + <size_t>k * self.slot_frames + slot.count
                dst = self.data + <size_t>k * self.slot_bytes
                for i in range(batch.count):
                    n = batch.caplen[i]
                    fr[i].ts = batch.ts[i]
                    fr[i].caplen = n
                    fr[i].wirelen = batch.wirelen[i]
                    fr[i].linktype = batch.linktype[i]
                    fr[i].shard = frame_shard(batch.data[i], n, batch.wirelen[i], batch.linktype[i],
                                              self.workers, self.vlan_in_key, self.verify)
                    fr[i].off = <uint32_t>self.filled
                    memcpy(dst + self.filled, batch.data[i], n)
                    self.filled += n
                slot.count += batch.count
                if not gather or slot.count >= GATHER_FRAMES or self.filled >= GATHER_BYTES:
                    self.post_sent()
        return ok

    def end(self, int reason, damage=None):
        """Post the end of the input: the open flows end with ``reason``; ``damage``, a
        CaptureError, when it ends at a damaged capture (as FlowRun ends there; the ring keeps
        its words and offset for the parent). False when the ring was aborted."""
        cdef ring_slot_t *slot
        cdef bint ok
        self.check_reader()
        if damage is not None:
            self.note_damage(damage.detail, damage.offset or 0)
        with nogil:
            if self.filling:
                self.post_sent()        # the frames gathered come first
            ok = self.start_slot()
            if ok:
                slot = &self.slots[self.next_send % self.nslots]
                slot.flags = RING_END | (RING_ERROR if damage is not None else 0)
                slot.reason = reason
                self.post_sent()
        return ok

    # ---- workers reading the file -------------------------------------------------------------

    cdef size_t read_into(self, uint8_t *dst, uint64_t at, size_t have, size_t want, bint *eof) noexcept nogil:
        """Read the file's bytes from ``at + have`` into ``dst + have`` until ``want`` bytes are
        there (or the file ends: ``eof``); returns how many are there."""
        cdef ssize_t got
        cdef size_t n
        while have < want and not eof[0]:
            n = want - have
            if n > READ_PIECE:
                n = READ_PIECE
            got = pread(self.fd, dst + have, n, <int64_t>(at + have))
            if got < 0 and c_errno == EINTR:
                continue
            if got <= 0:
                eof[0] = 1      # a read error ends the input as the file's end would
            else:
                have += got
        return have

    cdef void publish(self, uint64_t block, uint64_t start, int flags, int reason) noexcept nogil:
        """Block ``block`` starts at ``start``; or, with ``flags``, the input ended before it: then
        so is every block a worker may be reading ahead (none of them will publish)."""
        cdef ring_slot_t *slot
        cdef uint64_t b
        for b in range(block, block + (<uint64_t>self.nslots if flags else 1)):
            slot = &self.slots[b % self.nslots]
            slot.start = start
            slot.start_flags = flags
            slot.start_reason = reason
            sem_post(&slot.started)

    cdef int produce(self, uint64_t block, bint wait) except -2:
        """Read block ``block`` of the file into its slot, walk its records, classify them and post
        it to every worker. Waits for the slot to be free when ``wait``, else returns 0 if it is
        not. Returns 1 when posted, -1 when the ring was aborted."""
        cdef int k = block % self.nslots
        cdef ring_slot_t *slot = &self.slots[k]
        cdef uint8_t *dst = self.data + <size_t>k * self.slot_bytes
        cdef ring_frame_t *fr = self.frames + <size_t>k * self.slot_frames
        cdef uint64_t base = PCAP_START + block * BLOCK
        cdef size_t have = 0, pos
        cdef bint eof = 0
        cdef int count = 0, flags = 0, reason = 0, stop, what = 0, i, inherited
        cdef uint32_t caplen = 0, wirelen, sec, frac = 0
        cdef const uint8_t *h
        with nogil:
            if wait:
                if not self.wait(&slot.free):
                    return -1
            elif sem_trywait(&slot.free) != 0:
                return 0
            stop = aiomb_load_int(&self.head.stop)
            if not stop:
                have = self.read_into(dst, base, 0, BLOCK + READ_PAST, &eof)
            if not self.wait(&slot.started):
                return -1
            pos = slot.start - base
            inherited = slot.start_flags
            if inherited:               # the input ended before this block
                flags = inherited
                reason = slot.start_reason
            elif stop:
                flags = RING_END
                reason = stop
            while not flags and pos < BLOCK:
                if pos + 16 > have:
                    have = self.read_into(dst, base, have, pos + 16, &eof)
                    if pos + 16 > have:
                        flags = RING_END
                        reason = END_END_OF_CAPTURE
                        if pos < have:
                            what = PCAP_SHORT_HEADER
                        break
                h = dst + pos
                sec = g32(h, self.swap)
                frac = g32(h + 4, self.swap)
                caplen = g32(h + 8, self.swap)
                wirelen = g32(h + 12, self.swap)
                what = pcap_header_check(caplen)
                if not what and pos + 16 + caplen > have:
                    have = self.read_into(dst, base, have, pos + 16 + caplen, &eof)
                    if pos + 16 + caplen > have:
                        what = PCAP_SHORT_RECORD
                if what:
                    flags = RING_END
                    reason = END_END_OF_CAPTURE
                    break
                fr[count].ts = <int64_t>sec * 1000000000 + (frac if self.nanos else <int64_t>frac * 1000)
                fr[count].off = <uint32_t>(pos + 16)
                fr[count].caplen = caplen
                fr[count].wirelen = wirelen
                fr[count].linktype = self.linktype
                count += 1
                pos += 16 + caplen
            if not inherited:
                self.publish(block + 1, base + pos, flags | (RING_ERROR if what else 0), reason)
        if what:
            self.note_damage(pcap_problem(what, caplen, have - pos if what == PCAP_SHORT_HEADER
                                          else have - pos - 16), base + pos)
            flags |= RING_ERROR
        with nogil:
            for i in range(count):
                fr[i].shard = frame_shard(dst + fr[i].off, fr[i].caplen, fr[i].wirelen, self.linktype,
                                          self.workers, self.vlan_in_key, self.verify)
            slot.count = count
            slot.flags = flags
            slot.reason = reason
            self.post(k)
        return 1

    cdef int produce_ahead(self, ring_worker_t *w) except -1:
        """The worker ``w`` reads its blocks from the one the workers take next, while their slots
        are free: it waits for the next one only if it is its own."""
        cdef int r
        while w.produce < w.next + <uint64_t>self.nslots:
            r = self.produce(w.produce, w.produce == w.next)
            if r < 0:
                raise RuntimeError("the shard ring was aborted (another process failed)")
            if r == 0:
                break
            w.produce += self.workers
        return 0

    # ---- a worker -----------------------------------------------------------------------------

    cdef void release(self, int index) noexcept nogil:
        """Worker ``index`` is done with the slot it received last: the last worker to finish
        a slot frees it."""
        cdef ring_worker_t *w = &self.wk[index]
        cdef int k
        if w.holding:
            w.holding = 0
            k = (w.next - 1) % self.nslots
            if aiomb_sub_fetch(&self.slots[k].pending) == 0:
                sem_post(&self.slots[k].free)

    def receive(self, int index, FrameBatch batch, long idle_ms=-1):
        """Worker ``index``: fill ``batch`` with the next frames of the slot at hand, or release
        it and wait for the next one (another shard's frames with no bytes: ``data`` NULL, a clock
        tick). Returns the count, or None at the end of the input; 0 when ``idle_ms`` (if >= 0)
        passed with no next slot (the input pauses: call again to wait on). Raises RuntimeError
        when the ring was aborted; a signal's handler raising while it waits (Ctrl-C) ends the
        wait."""
        cdef ring_slot_t *slot
        cdef ring_frame_t *fr
        cdef ring_worker_t *w
        cdef uint8_t *src
        cdef int i, j, k, n, got
        if not 0 <= index < self.workers:
            raise ValueError(f"worker index {index} out of range(0, {self.workers})")
        batch.count = 0
        batch.writable = False
        batch.block = None              # values made from these frames are copied at once
        w = &self.wk[index]
        if w.ended:                     # again (after close(), too)
            return None
        while True:
            k = (w.next - 1) % self.nslots
            slot = &self.slots[k]
            if w.holding and w.pos >= slot.count and slot.flags & RING_END:
                self.end_reason = slot.reason
                self.ended_by_error = (slot.flags & RING_ERROR) != 0
                w.ended = 1
                return None
            if not w.holding or w.pos >= slot.count:
                self.release(index)
                if self.fd >= 0:
                    self.produce_ahead(w)
                k = w.next % self.nslots
                with nogil:
                    got = self.wait(&self.ready[<size_t>index * self.nslots + k], True, idle_ms)
                if not got:
                    raise RuntimeError("the shard ring was aborted (another process failed)")
                if got == 2:            # released, not holding: the next call waits for slot k again
                    return 0
                w.next += 1
                w.holding = 1
                w.pos = 0
                slot = &self.slots[k]
            fr = self.frames + <size_t>k * self.slot_frames
            src = self.data + <size_t>k * self.slot_bytes
            n = slot.count - w.pos
            if n > batch.capacity:
                n = batch.capacity
            for i in range(n):
                j = w.pos + i
                batch.data[i] = src + fr[j].off if fr[j].shard == index or fr[j].shard == SHARD_ALL else NULL
                batch.caplen[i] = fr[j].caplen
                batch.wirelen[i] = fr[j].wirelen
                batch.ts[i] = fr[j].ts
                batch.linktype[i] = fr[j].linktype
                batch.verdict[i] = 0
            w.pos += n
            batch.count = n
            if n:
                return n

    def close(self, int index):
        """Worker ``index`` leaves: it releases the slot it holds."""
        if not 0 <= index < self.workers:
            raise ValueError(f"worker index {index} out of range(0, {self.workers})")
        self.release(index)
