# One reader, N engines: the frames of one input handed to shard engines in other processes.
#
# A ShardRing is shared memory made before the processes fork (the same address in each): a
# ring of slots, each one or more batches of frames (their bytes packed, a descriptor per frame
# naming the shard it belongs to). The reader classifies each frame as the engines would (the
# parse and the symmetric flow hash; fragments, malformed and other frames go to every shard),
# copies the batch into the slot being filled and posts the slot to every worker (at once, or
# once it has gathered 1536 frames or 1 MiB). A worker fills its FrameBatch from the slot: its
# own frames and the shared ones with their bytes, another shard's frames as clock ticks (no
# bytes: the engine counts them and moves its clock, so flows time out at the same packets as
# in one engine). A slot is free again once every worker has processed it.
#
# Synchronisation: process-shared POSIX semaphores (futexes: no system call while nobody
# waits) in the ring, a per-slot count of the workers still reading it, and flags the parent
# sets (stop: end the input after the batch at hand; abort: a process failed, everyone leaves).
# Every wait times out every 0.2 s to look at the flags and at its parent (an orphan leaves).

from cpython.exc cimport PyErr_CheckSignals


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
    int aiomb_sem_wait_ms(sem_t *s, long ms) nogil
    int aiomb_sub_fetch(int *p) nogil
    int aiomb_load_int(const int *p) nogil
    void aiomb_store_int(int *p, int v) nogil
    int getppid() nogil
    int getpid() nogil

cdef enum:
    SHARD_ALL = 0xffff          # a frame every shard processes
    RING_SLOTS = 4
    RING_WAIT_MS = 200
    GATHER_FRAMES = 1536        # a gathering slot is posted once it holds this many frames
    GATHER_BYTES = 1 << 20      # or bytes (it stays in the processors' caches)
    RING_END = 1                # the input ends after the slot's frames
    RING_ERROR = 2              # ... at a damaged capture (the reader reports it)

ctypedef struct ring_frame_t:
    int64_t ts
    uint32_t off                # where the frame's bytes start in the slot's data
    uint32_t caplen
    uint32_t wirelen
    uint16_t linktype
    uint16_t shard

ctypedef struct ring_slot_t:
    int pending                 # workers still reading the slot
    int count
    int flags                   # RING_END, RING_ERROR
    int reason                  # with RING_END: the reason the open flows end with

ctypedef struct ring_worker_t:
    sem_t ready                 # slots posted to the worker
    uint64_t next               # the next slot it reads
    int holding                 # it still reads slot next - 1
    int pos                     # the frames of that slot it has taken

ctypedef struct ring_head_t:
    sem_t free                  # slots free for the reader
    int stop                    # the parent asks the reader to end the input (the reason, > 0)
    int abort                   # a process failed: everyone leaves


cdef uint16_t frame_shard(const uint8_t *data, uint32_t caplen, uint32_t wirelen, uint16_t linktype,
                          uint32_t count, bint vlan_in_key, bint verify) noexcept nogil:
    """The shard whose engine tracks the frame's flow, as Engine.process_frame decides it (the
    same parse and hash); SHARD_ALL for a frame every engine must see: an IP fragment (each
    engine reassembles), a frame that is not a TCP or UDP packet, or a malformed one (each
    counts it alike)."""
    cdef pkt_t pk
    cdef int reason = 0
    memset(&pk, 0, sizeof(pkt_t))
    pk.frame = data
    pk.caplen = caplen
    pk.wirelen = wirelen if wirelen > caplen else caplen
    pk.wscale = -1
    if parse_packet(&pk, linktype, NULL, NULL, &reason) != P_OK:
        return SHARD_ALL
    if verify and not checksums_ok(&pk):
        return SHARD_ALL
    return <uint16_t>shard_of(&pk, vlan_in_key, count)


cdef int check_signals() except -1 with gil:
    """Run the Python signal handlers due (one raising ends a ring wait: Ctrl-C)."""
    return PyErr_CheckSignals()


@cython.final
cdef class ShardRing:
    """Frames of one input from a reader process to ``workers`` shard engines in other
    processes, through shared memory (make it before forking; see the top of shards.pxi).

    Reader: ``send(batch, gather)`` classifies a batch into the slot being filled and posts it
    (False once aborted), ``end(reason, error)`` posts what waits, then the end;
    ``stop_requested`` is the reason the parent asked for (0: none). Worker: ``receive(index,
    batch)`` fills ``batch`` with the next frames of its slot, or of the next slot (another
    shard's as clock ticks: data NULL; a batch smaller than a slot takes it in pieces) and
    returns their count, or None at the end (``end_reason``, ``ended_by_error``); ``close(index)``
    when it leaves. Parent: ``request_stop(reason)``, ``abort()``. Layer: core.
    """

    cdef uint8_t *mem
    cdef size_t mem_len
    cdef ring_head_t *head
    cdef ring_worker_t *wk          # one per worker
    cdef ring_slot_t *slots
    cdef ring_frame_t *frames       # slot_frames per slot
    cdef uint8_t *data              # slot_bytes per slot
    cdef readonly int workers
    cdef readonly int slot_frames
    cdef readonly size_t slot_bytes
    cdef bint vlan_in_key
    cdef bint verify
    cdef int parent                 # the process that made the ring (an orphan leaves)
    cdef uint64_t next_send         # the reader's next slot
    cdef bint filling               # the reader holds slot next_send, partly filled (gathering)
    cdef size_t filled              # bytes in it
    cdef readonly int end_reason
    cdef readonly bint ended_by_error

    def __cinit__(self, int workers, *, int slot_frames=2048, size_t slot_bytes=32 << 20,
                  bint vlan_in_key=False, str checksums="ignore"):
        cdef size_t head_len, ready_len, slots_len, frames_len
        cdef int i
        if not 1 <= workers <= 1024:
            raise ValueError(f"workers must be from 1 to 1024, got {workers}")
        if slot_frames < 1 or slot_bytes < 2 * MAX_RECORD:
            raise ValueError("a slot holds at least one frame and two of the largest records")
        self.workers = workers
        self.slot_frames = slot_frames
        self.slot_bytes = slot_bytes
        self.vlan_in_key = vlan_in_key
        self.verify = checksums == "verify"
        head_len = (sizeof(ring_head_t) + 63) & ~(<size_t>63)
        ready_len = (workers * sizeof(ring_worker_t) + 63) & ~(<size_t>63)
        slots_len = (RING_SLOTS * sizeof(ring_slot_t) + 63) & ~(<size_t>63)
        frames_len = (RING_SLOTS * slot_frames * sizeof(ring_frame_t) + 4095) & ~(<size_t>4095)
        self.mem_len = head_len + ready_len + slots_len + frames_len + RING_SLOTS * slot_bytes
        # reserved, not committed: a slot's pages are touched only as far as its batches reach
        self.mem = <uint8_t *>mmap(NULL, self.mem_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        if self.mem == <uint8_t *>MAP_FAILED:
            self.mem = NULL
            raise MemoryError(f"no shared memory for the shard ring ({self.mem_len} bytes)")
        self.head = <ring_head_t *>self.mem
        self.wk = <ring_worker_t *>(self.mem + head_len)
        self.slots = <ring_slot_t *>(self.mem + head_len + ready_len)
        self.frames = <ring_frame_t *>(self.mem + head_len + ready_len + slots_len)
        self.data = self.mem + head_len + ready_len + slots_len + frames_len
        if sem_init(&self.head.free, 1, RING_SLOTS) != 0:
            raise OSError(c_errno, "sem_init failed")
        for i in range(workers):
            if sem_init(&self.wk[i].ready, 1, 0) != 0:
                raise OSError(c_errno, "sem_init failed")
        self.parent = _os.getpid()

    def __dealloc__(self):
        if self.mem != NULL:
            munmap(self.mem, self.mem_len)

    cdef bint gone(self) noexcept nogil:
        """Everyone must leave: the ring was aborted, or its maker died."""
        return aiomb_load_int(&self.head.abort) != 0 or (getpid() != self.parent and getppid() != self.parent)

    # ---- the parent ---------------------------------------------------------------------------

    def request_stop(self, int reason):
        """Ask the reader to end the input after the batch at hand; the open flows end with
        ``reason`` (an EndReason). Safe in a signal handler."""
        if aiomb_load_int(&self.head.stop) == 0:
            aiomb_store_int(&self.head.stop, reason)

    def abort(self):
        """A process failed: every wait in the ring returns, and the reader and workers leave."""
        aiomb_store_int(&self.head.abort, 1)

    # ---- the reader ---------------------------------------------------------------------------

    @property
    def stop_requested(self):
        """The reason the parent asked the input to end with (0: not asked)."""
        return aiomb_load_int(&self.head.stop)

    cdef int take_slot(self) noexcept nogil:
        """Wait for the next slot to be free; 0 when aborted."""
        while not aiomb_sem_wait_ms(&self.head.free, RING_WAIT_MS):
            if self.gone():
                return 0
        return 1

    cdef void post(self) noexcept nogil:
        """Hand the slot being filled to every worker."""
        cdef int i
        self.slots[self.next_send % RING_SLOTS].pending = self.workers
        self.next_send += 1
        self.filling = 0
        for i in range(self.workers):
            sem_post(&self.wk[i].ready)

    cdef int start_slot(self) noexcept nogil:
        """Wait for the next slot and start filling it; 0 when aborted."""
        cdef ring_slot_t *slot
        if not self.take_slot():
            return 0
        slot = &self.slots[self.next_send % RING_SLOTS]
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
        if batch.count > self.slot_frames:
            raise ValueError(f"a batch of {batch.count} frames does not fit a slot of {self.slot_frames}")
        for i in range(batch.count):
            size += batch.caplen[i]
        if size > self.slot_bytes:
            raise ValueError(f"a batch of {size} bytes does not fit a slot of {self.slot_bytes}")
        with nogil:
            if self.filling:
                slot = &self.slots[self.next_send % RING_SLOTS]
                if slot.count + batch.count > self.slot_frames or self.filled + size > self.slot_bytes:
                    self.post()
            if not self.filling and not self.start_slot():
                ok = 0
            if ok:
                k = self.next_send % RING_SLOTS
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
                    self.post()
        return ok

    def end(self, int reason, bint error=False):
        """Post the end of the input: the open flows end with ``reason`` (``error``: at a damaged
        capture, as FlowRun ends there). False when the ring was aborted."""
        cdef ring_slot_t *slot
        cdef bint ok
        with nogil:
            if self.filling:
                self.post()             # the frames gathered come first
            ok = self.start_slot()
            if ok:
                slot = &self.slots[self.next_send % RING_SLOTS]
                slot.flags = RING_END | (RING_ERROR if error else 0)
                slot.reason = reason
                self.post()
        return ok

    # ---- a worker -----------------------------------------------------------------------------

    cdef void release(self, int index) noexcept nogil:
        """Worker ``index`` is done with the slot it received last: the last worker to finish
        a slot frees it."""
        cdef ring_worker_t *w = &self.wk[index]
        if w.holding:
            w.holding = 0
            if aiomb_sub_fetch(&self.slots[(w.next - 1) % RING_SLOTS].pending) == 0:
                sem_post(&self.head.free)

    def receive(self, int index, FrameBatch batch):
        """Worker ``index``: fill ``batch`` with the next frames of the slot at hand, or release
        it and wait for the next one (another shard's frames with no bytes: ``data`` NULL, a clock
        tick). Returns the count, or None at the end of the input. Raises RuntimeError when the
        ring was aborted; a signal's handler raising while it waits (Ctrl-C) ends the wait."""
        cdef ring_slot_t *slot
        cdef ring_frame_t *fr
        cdef ring_worker_t *w
        cdef uint8_t *src
        cdef int i, j, k, n, got = 1
        if not 0 <= index < self.workers:
            raise ValueError(f"worker index {index} out of range(0, {self.workers})")
        batch.count = 0
        batch.writable = False
        batch.block = None              # values made from these frames are copied at once
        w = &self.wk[index]
        with nogil:
            k = (w.next - 1) % RING_SLOTS
            if not w.holding or w.pos >= self.slots[k].count:
                self.release(index)
                while not aiomb_sem_wait_ms(&w.ready, RING_WAIT_MS):
                    if self.gone():
                        got = 0
                        break
                    check_signals()
                if got:
                    k = w.next % RING_SLOTS
                    w.next += 1
                    w.holding = 1
                    w.pos = 0
            if got:
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
        if not got:
            raise RuntimeError("the shard ring was aborted (another process failed)")
        if slot.flags & RING_END:
            self.end_reason = slot.reason
            self.ended_by_error = (slot.flags & RING_ERROR) != 0
            return None
        return batch.count

    def close(self, int index):
        """Worker ``index`` leaves: it releases the slot it holds."""
        if not 0 <= index < self.workers:
            raise ValueError(f"worker index {index} out of range(0, {self.workers})")
        self.release(index)
