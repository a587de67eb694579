# TCP stream reassembly: one stream per flow side (the bytes that side sent), addressed by
# 64-bit stream offsets. Held byte ranges (the in-order buffer and the out-of-order segments)
# are kept disjoint: an arriving segment is cut into the pieces nobody holds yet, and where it
# overlaps held bytes the overlap policy decides which copy wins (a conflict is an event).
#
# Its state is a reasm_t (limits, memory, the batch's frame references, the sides with new
# bytes) and the flows' stream_t; it tells the engine what happened through report() alone.

ctypedef struct reasm_t:
    uint64_t memory             # bytes of stream state and buffers, all streams
    uint64_t max_memory
    uint64_t memory_peak        # the most memory ever taken
    uint32_t max_buffer         # bytes held per side (side_bytes)
    uint32_t buffer_peak        # the most bytes one side ever held
    uint32_t max_ooo_segments   # out-of-order segments per side
    uint8_t buffering           # new streams keep their bytes (else offsets and counters only)
    uint32_t overlap_window     # consumed bytes kept per side to compare retransmissions with
    uint8_t rst_payload         # a RST's payload is part of the stream
    uint64_t overruns
    uint64_t seq_jumps
    uint64_t pending            # what the NEW_DATA events due at the batch's flush will hold, at most
    ref_t *refs                 # the batch's in-order payloads left in its frames
    uint32_t n_refs
    uint32_t refs_cap
    int32_t *dirty_slot         # the sides with new in-order bytes in this batch (NEW_DATA due)
    uint64_t *dirty_id
    uint8_t *dirty_side
    uint32_t n_dirty
    uint32_t dirty_cap


cdef void reasm_free(reasm_t *rx) noexcept:
    free(rx.dirty_slot)
    free(rx.dirty_id)
    free(rx.dirty_side)
    free(rx.refs)
    rx.dirty_slot = NULL
    rx.dirty_id = NULL
    rx.dirty_side = NULL
    rx.refs = NULL


cdef inline int report(Engine eng, int bit, int32_t slot, int side, int hook, uint64_t off,
                       uint64_t length, object value) except -1:
    """The one way reassembly tells the engine something happened: a stream event with a range."""
    return eng.em.emit(bit, slot, side, hook, 0, 0, <int64_t>off, <int64_t>length, value)

cdef enum:
    POLICY_FIRST = 0
    POLICY_LAST = 1
    POLICY_BSD = 2          # also hpux10, irix, windows, win2003, macos
    POLICY_LINUX = 3
    POLICY_OLD_LINUX = 4
    POLICY_SOLARIS = 5      # also hpux11
    MAX_SEQ_JUMP = 1 << 26          # 64 MiB ahead of the next expected byte: counted (still buffered)

# name -> rule family (README "Overlap policies" has the table)
POLICY_NAMES = {
    "first": POLICY_FIRST, "vista": POLICY_FIRST,
    "last": POLICY_LAST,
    "bsd": POLICY_BSD, "hpux10": POLICY_BSD, "irix": POLICY_BSD, "windows": POLICY_BSD,
    "win2003": POLICY_BSD, "macos": POLICY_BSD,
    "linux": POLICY_LINUX,
    "old_linux": POLICY_OLD_LINUX,
    "solaris": POLICY_SOLARIS, "hpux11": POLICY_SOLARIS,
}
POLICIES = tuple(POLICY_NAMES)


cdef inline bint new_bytes_win(int policy, uint64_t s0, uint64_t s1, uint64_t h0, uint64_t h1) noexcept nogil:
    """Whether an arriving segment [s0, s1) replaces the held copy of bytes it overlaps, that
    segment [h0, h1) brought (the last one whose copy won there).

    The target-based rules of Suricata's stream engine (after Novak and Sturges): ``first``
    keeps held bytes, ``last`` takes new ones; the OS families take the new bytes when the new
    segment starts before the held one (bsd, linux, old_linux; solaris only if it also ends with
    or after it), starts with it and ends after it (linux, old_linux, solaris) or with it
    (old_linux, solaris), or starts after it and ends after it (solaris).
    """
    if policy == POLICY_LAST:
        return 1
    if policy == POLICY_FIRST:
        return 0
    if s0 < h0:
        return policy != POLICY_SOLARIS or s1 >= h1
    if s0 == h0:
        if s1 > h1:
            return policy != POLICY_BSD
        if s1 == h1:
            return policy == POLICY_OLD_LINUX or policy == POLICY_SOLARIS
        return 0
    return policy == POLICY_SOLARIS and s1 > h1


cdef inline int64_t stream_offset(const stream_t *st, uint32_t seq) noexcept nogil:
    """The 64-bit stream offset of a sequence number, nearest to the next expected offset."""
    cdef uint32_t rel = seq - st.seq_base
    cdef int32_t d = <int32_t>(rel - <uint32_t>st.next_off)
    return <int64_t>st.next_off + d


cdef inline void stream_rebase(stream_t *st, const side_t *s) noexcept nogil:
    """Offset 0 is the byte after the side's ISN, once the side's sequence space is known."""
    if not st.based and (s.flags & SF_SEQ_KNOWN):
        st.seq_base = s.isn + 1
        st.based = 1


cdef inline void mem_take(reasm_t *rx, uint64_t n) noexcept nogil:
    """Count n more bytes of stream memory (the caller checked them against the limit)."""
    rx.memory += n
    if rx.memory > rx.memory_peak:
        rx.memory_peak = rx.memory


cdef inline bint mem_refuses(const reasm_t *rx, uint64_t n) noexcept nogil:
    return rx.memory + n > rx.max_memory


cdef stream_t *stream_new(Engine eng, side_t *s) except? NULL:
    """A side's stream; NULL when max_stream_memory has no room for it."""
    cdef stream_t *st
    if mem_refuses(&eng.rx, sizeof(stream_t)):
        return NULL
    st = <stream_t *>calloc(1, sizeof(stream_t))
    if st == NULL:
        raise MemoryError()
    stream_rebase(st, s)
    st.buffering = eng.rx.buffering
    mem_take(&eng.rx, sizeof(stream_t))
    s.stream = st
    return st


cdef void stream_free(Engine eng, side_t *s) noexcept:
    cdef stream_t *st = s.stream
    cdef seg_t *g
    if st == NULL:
        return
    while st.ooo != NULL:
        g = st.ooo
        st.ooo = g.next
        eng.rx.memory -= sizeof(seg_t) + (g.length if g.data != NULL else 0)
        free(g.data)
        free(g)
    eng.rx.memory -= sizeof(stream_t) + st.buf_cap
    free(st.buf)
    hist_release(eng, st)
    free(st)
    s.stream = NULL


cdef int buf_reserve(Engine eng, stream_t *st, uint32_t n) noexcept:
    """Room for n more in-order bytes; -1 when the memory cap refuses it."""
    cdef uint32_t need = st.buf_len + n, cap
    cdef uint8_t *nb
    if st.buf_start + need <= st.buf_cap:
        return 0
    if st.buf_start and need <= st.buf_cap:
        memmove(st.buf, st.buf + st.buf_start, st.buf_len)
        st.buf_start = 0
        return 0
    cap = st.buf_cap if st.buf_cap else 2048
    while cap < need:
        cap *= 2
    if cap > eng.rx.max_buffer >= need:    # a side holds at most max_buffer bytes: no room beyond
        cap = eng.rx.max_buffer
    if mem_refuses(&eng.rx, cap - st.buf_cap):
        return -1
    if st.buf_start:
        memmove(st.buf, st.buf + st.buf_start, st.buf_len)
        st.buf_start = 0
    nb = <uint8_t *>realloc(st.buf, cap)
    if nb == NULL:
        return -1
    mem_take(&eng.rx, cap - st.buf_cap)
    st.buf = nb
    st.buf_cap = cap
    return 0


cdef inline uint64_t held_bytes(const stream_t *st) noexcept nogil:
    """In-order bytes not yet consumed (copied into buf, or referenced in this batch's frames)."""
    return st.buf_len + st.ref_bytes


cdef inline uint64_t side_bytes(const stream_t *st) noexcept nogil:
    """What max_buffer bounds: the bytes a side holds, in order and out of order, with the
    bookkeeping of its out-of-order segments."""
    return st.buf_len + st.ref_bytes + st.ooo_bytes + st.ooo_count * sizeof(seg_t)


cdef inline void buffer_grew(reasm_t *rx, const stream_t *st) noexcept nogil:
    """Note a side's new size for the high-water mark."""
    cdef uint64_t n = side_bytes(st)
    if n > rx.buffer_peak:
        rx.buffer_peak = <uint32_t>n


cdef int materialize(Engine eng, stream_t *st) noexcept:
    """Copy referenced payloads into the stream's own buffer (before the batch's frames go, or
    when contiguous bytes are needed); -1 if the memory cap refuses (the bytes are dropped)."""
    cdef uint32_t i, pos
    cdef int32_t r
    if st.nrefs == 0:
        return 0
    if buf_reserve(eng, st, st.ref_bytes) < 0:
        st.buf_off += st.ref_bytes
        st.nrefs = 0
        st.ref_bytes = 0
        st.hist_len = 0                     # the history is contiguous up to buf_off
        return -1
    pos = st.buf_start + st.buf_len
    r = st.ref_first
    for i in range(st.nrefs):
        memcpy(st.buf + pos, eng.rx.refs[r].ptr, eng.rx.refs[r].len)
        pos += eng.rx.refs[r].len
        r = eng.rx.refs[r].next
    st.buf_len += st.ref_bytes
    st.nrefs = 0
    st.ref_bytes = 0
    return 0


cdef void stream_consume(Engine eng, stream_t *st, uint64_t n) noexcept:
    """Drop the first n unconsumed in-order bytes (into the history while OVERLAP is wanted);
    return the buffer when it empties."""
    cdef uint32_t i
    cdef int32_t r
    cdef uint64_t o
    cdef bint keep = st.buffering and eng.rx.overlap_window and eng.em.wants(EV_OVERLAP)
    if st.nrefs:
        if n >= st.ref_bytes and st.buf_len == 0:
            if keep:
                o = st.buf_off
                r = st.ref_first
                for i in range(st.nrefs):
                    hist_add(eng, st, o, eng.rx.refs[r].ptr, eng.rx.refs[r].len)
                    o += eng.rx.refs[r].len
                    r = eng.rx.refs[r].next
            st.buf_off += st.ref_bytes         # references into frames: nothing to free
            st.nrefs = 0
            st.ref_bytes = 0
            return
        materialize(eng, st)
    if n > st.buf_len:
        n = st.buf_len
    if keep:
        hist_add(eng, st, st.buf_off, st.buf + st.buf_start, <uint32_t>n)
    st.buf_start += <uint32_t>n
    st.buf_len -= <uint32_t>n
    st.buf_off += n
    if st.buf_len == 0:
        st.buf_start = 0
        if st.buf_cap > 65536:      # small buffers stay for the next bytes, large ones go back
            buf_release(eng, st)


cdef inline void ring_out(const uint8_t *ring, uint32_t cap, uint64_t at, uint32_t n, uint8_t *dst) noexcept nogil:
    """Copy the ring's bytes of stream offsets [at, at+n) to dst (offset o lies at o % cap)."""
    cdef uint32_t pos = <uint32_t>(at % cap)
    cdef uint32_t first = n if n < cap - pos else cap - pos
    memcpy(dst, ring + pos, first)
    memcpy(dst + first, ring, n - first)


cdef inline void ring_in(uint8_t *ring, uint32_t cap, uint64_t at, const uint8_t *src, uint32_t n) noexcept nogil:
    """Put n bytes of stream offsets [at, at+n) (n <= cap) into the ring."""
    cdef uint32_t pos = <uint32_t>(at % cap)
    cdef uint32_t first = n if n < cap - pos else cap - pos
    memcpy(ring + pos, src, first)
    memcpy(ring, src + first, n - first)


cdef void hist_add(Engine eng, stream_t *st, uint64_t at, const uint8_t *data, uint32_t n) noexcept:
    """Append consumed bytes (stream offsets [at, at+n), right after the history's last byte) to
    the side's history, which keeps the latest ``overlap_window`` of them. Its ring grows by
    doubling up to that size, within the memory cap; without memory the history starts over."""
    cdef uint32_t want, cap
    cdef uint8_t *ring
    if n == 0:
        return
    want = st.hist_len + n if st.hist_len + n < eng.rx.overlap_window else eng.rx.overlap_window
    if want > st.hist_cap:
        cap = st.hist_cap if st.hist_cap else 4096
        while cap < want:
            cap *= 2
        if cap > eng.rx.overlap_window:
            cap = eng.rx.overlap_window
        ring = NULL
        if not mem_refuses(&eng.rx, cap - st.hist_cap):
            ring = <uint8_t *>malloc(cap + st.hist_len)     # the new ring, then room to lay out the old
        if ring != NULL:
            if st.hist_len:                    # the kept bytes, in order, then in their new places
                ring_out(st.hist, st.hist_cap, at - st.hist_len, st.hist_len, ring + cap)
                ring_in(ring, cap, at - st.hist_len, ring + cap, st.hist_len)
                ring = <uint8_t *>realloc(ring, cap)        # shrinking: never fails in practice
            mem_take(&eng.rx, cap - st.hist_cap)
            free(st.hist)
            st.hist = ring
            st.hist_cap = cap
        elif st.hist_cap == 0:
            return
    if n >= st.hist_cap:                       # only the last hist_cap bytes can be kept
        data += n - st.hist_cap
        at += n - st.hist_cap
        n = st.hist_cap
        st.hist_len = 0
    ring_in(st.hist, st.hist_cap, at, data, n)
    st.hist_len = st.hist_len + n if st.hist_len + n < st.hist_cap else st.hist_cap


cdef inline void hist_release(Engine eng, stream_t *st) noexcept:
    eng.rx.memory -= st.hist_cap
    free(st.hist)
    st.hist = NULL
    st.hist_cap = 0
    st.hist_len = 0


cdef int compare_inorder(Engine eng, int32_t slot, int side, int hook, stream_t *st, uint64_t off,
                         const uint8_t *data, uint64_t cend, uint64_t end) except -1:
    """A segment [off, end) covers in-order bytes [off, cend): compare them with the copy we have,
    in one piece whether it is still held or already consumed (into the history, while OVERLAP
    is wanted), so that the answer does not depend on when bytes were delivered: the window
    counts back from the end of the bytes in order, not from what was delivered. A conflict is
    an OVERLAP, never a change: bytes in order are the receiver's already (queued for its
    application), whatever the policy, which decides between copies held out of order. Bytes
    before the window (or before the history begins) are counted as unchecked."""
    cdef bint history = st.buffering and eng.rx.overlap_window and eng.em.wants(EV_OVERLAP)
    cdef uint64_t lo = st.buf_off - st.hist_len if history else st.buf_off
    if history and st.next_off - lo > eng.rx.overlap_window:
        lo = st.next_off - eng.rx.overlap_window
    cdef uint64_t a = off if off > lo else lo
    cdef uint64_t mid
    cdef uint8_t *held
    if not st.buffering:
        return 0
    if history and off < lo:
        st.unchecked += (lo if lo < cend else cend) - off
    if a >= cend:
        return 0
    if a >= st.buf_off:
        return resolve_overlap(eng, slot, side, hook, st, st.buf + st.buf_start + (a - st.buf_off),
                               a, data + (a - off), <uint32_t>(cend - a), 0, off, end, lo, st.next_off)
    held = <uint8_t *>malloc(<size_t>(cend - a))
    if held == NULL:
        raise MemoryError()
    try:
        mid = cend if cend < st.buf_off else st.buf_off
        ring_out(st.hist, st.hist_cap, a, <uint32_t>(mid - a), held)
        if cend > mid:
            memcpy(held + (mid - a), st.buf + st.buf_start, <size_t>(cend - mid))
        resolve_overlap(eng, slot, side, hook, st, held, a, data + (a - off), <uint32_t>(cend - a), 0,
                        off, end, lo, st.next_off)
    finally:
        free(held)
    return 0


cdef inline void buf_release(Engine eng, stream_t *st) noexcept:
    """Return an empty in-order buffer's memory."""
    eng.rx.memory -= st.buf_cap
    free(st.buf)
    st.buf = NULL
    st.buf_cap = 0


cdef int resolve_overlap(Engine eng, int32_t slot, int side, int hook, stream_t *st, const uint8_t *held,
                         uint64_t off, const uint8_t *data, uint32_t n, bint deliverable,
                         uint64_t s0, uint64_t s1, uint64_t h0, uint64_t h1) except -1:
    """New bytes (of segment [s0, s1)) met held ones (of [h0, h1)) at [off, off+n): report a
    conflict; 1 if the held copy is still ``deliverable`` (out of order) and the flow's overlap
    policy takes the new one (the same bytes or not: the copy is the new segment's now)."""
    cdef uint32_t i, differ = 0
    if held == NULL or data == NULL:
        return 0
    for i in range(n):
        if held[i] != data[i]:
            differ += 1
    if differ:
        st.overlaps += 1
        st.overlap_bytes += differ
        if eng.em.wants(EV_OVERLAP):
            report(eng, B_OVERLAP, slot, side, hook, off, n, (held[:n], data[:n]))
    return deliverable and new_bytes_win(eng.tab.flows[slot].policy, s0, s1, h0, h1)


cdef bint ooo_refuses(Engine eng, int32_t slot, int side, int hook, stream_t *st, uint64_t off,
                      uint32_t n, uint32_t pieces, uint32_t data_bytes) except -1:
    """Whether the limits refuse ``pieces`` more out-of-order pieces holding ``data_bytes`` more
    bytes for [off, off+n) (counted, BUFFER_OVERRUN). In-order bytes this batch has not
    delivered yet, in the way of max_buffer, go out first (a NEW_DATA of their own), as they
    would have one frame at a time: the answer does not depend on the batch size."""
    cdef object limit = None
    cdef uint64_t more = data_bytes + pieces * sizeof(seg_t)
    if st.ooo_count + pieces > eng.rx.max_ooo_segments:
        limit = "ooo_segments"
    else:
        if st.buffering and side_bytes(st) + more > eng.rx.max_buffer and st.next_off > st.delivered_off:
            stream_deliver(eng, slot, side)
        if st.buffering and side_bytes(st) + more > eng.rx.max_buffer:
            limit = "buffer"
        elif mem_refuses(&eng.rx, (data_bytes if st.buffering else 0) + pieces * sizeof(seg_t)):
            limit = "memory"
    if limit is None:
        return 0
    eng.rx.overruns += 1
    if eng.em.wants(EV_BUFFER_OVERRUN):
        report(eng, B_BUFFER_OVERRUN, slot, side, hook, off, n, limit)
    return 1


cdef seg_t *piece_split(Engine eng, stream_t *st, seg_t *g, uint64_t at) except NULL:
    """Cut a held piece in two at ``at`` (inside it; the caller checked the limits): the new
    piece after g, from the same segment, is returned."""
    cdef uint32_t k = <uint32_t>(at - g.off)
    cdef seg_t *t = <seg_t *>malloc(sizeof(seg_t))
    cdef uint8_t *head
    if t == NULL:
        raise MemoryError()
    t.off = at
    t.src_off = g.src_off
    t.src_end = g.src_end
    t.length = g.length - k
    t.data = <uint8_t *>malloc(t.length)
    if t.data == NULL:
        free(t)
        raise MemoryError()
    memcpy(t.data, g.data + k, t.length)
    head = <uint8_t *>realloc(g.data, k)
    if head != NULL:
        g.data = head
    g.length = k
    t.next = g.next
    g.next = t
    if st.ooo_last == g:
        st.ooo_last = t
    st.ooo_count += 1
    mem_take(&eng.rx, sizeof(seg_t))
    buffer_grew(&eng.rx, st)
    return t


cdef int take_over(Engine eng, int32_t slot, int side, int hook, stream_t *st, seg_t *g, uint64_t off,
                   const uint8_t *data, uint32_t n, uint64_t s0, uint64_t s1) except -1:
    """The new copy of [off, off+n), from segment [s0, s1), wins over the held piece g that holds
    those bytes (and maybe more): they become a piece of their own, the new segment's (a later
    segment is judged against it). Cutting them out of g takes up to two more out-of-order
    pieces: refused by the limits, g's copy stays. Under ``last`` any next copy wins, whoever
    brought this one: the bytes are replaced in place."""
    cdef uint32_t pieces = (off > g.off) + (off + n < g.off + g.length)
    if eng.tab.flows[slot].policy == POLICY_LAST:
        memcpy(g.data + (off - g.off), data, n)
        return 0
    if pieces and ooo_refuses(eng, slot, side, hook, st, off, n, pieces, 0):
        return 0
    if g.data == NULL:
        return 0        # a handler of the NEW_DATA delivered early stopped buffering the side
    if off > g.off:
        g = piece_split(eng, st, g, off)
    if off + n < g.off + g.length:
        piece_split(eng, st, g, off + n)
    memcpy(g.data, data, n)
    g.src_off = s0
    g.src_end = s1
    return 0


cdef int insert_piece(Engine eng, int32_t slot, int side, int hook, stream_t *st, seg_t **link,
                      uint64_t off, const uint8_t *data, uint32_t n, uint64_t src_off,
                      uint64_t src_end) except -1:
    """Hold a piece nobody holds yet as an out-of-order segment (bounded); 1 if dropped."""
    cdef seg_t *g
    if ooo_refuses(eng, slot, side, hook, st, off, n, 1, n):
        return 1
    g = <seg_t *>malloc(sizeof(seg_t))
    if g == NULL:
        raise MemoryError()
    g.off = off
    g.src_off = src_off
    g.src_end = src_end
    g.length = n
    g.data = NULL
    if st.buffering:
        g.data = <uint8_t *>malloc(n if n else 1)
        if g.data == NULL:
            free(g)
            raise MemoryError()
        memcpy(g.data, data, n)
        mem_take(&eng.rx, n)
    mem_take(&eng.rx, sizeof(seg_t))
    g.next = link[0]
    link[0] = g
    if g.next == NULL:
        st.ooo_last = g
    st.ooo_count += 1
    st.ooo_bytes += n
    if st.buffering:
        buffer_grew(&eng.rx, st)
    return 0


cdef int append_inorder(Engine eng, int32_t slot, int side, stream_t *st, const uint8_t *data,
                        uint32_t n, bint can_ref) except -1:
    """Append bytes at next_off; a full buffer is delivered early rather than lost.

    ``can_ref``: data lies in a frame of the current batch, so while the side is not held and
    its buffer is empty it is only referenced, and copied once, into the NEW_DATA value.
    """
    if st.buffering:
        if side_bytes(st) + n > eng.rx.max_buffer and held_bytes(st):
            stream_deliver(eng, slot, side)
            if side_bytes(st) + n > eng.rx.max_buffer and held_bytes(st):
                eng.rx.overruns += 1
                if eng.em.wants(EV_BUFFER_OVERRUN):
                    report(eng, B_BUFFER_OVERRUN, slot, side, HOOK_NONE, st.buf_off, held_bytes(st), "buffer")
                stream_consume(eng, st, held_bytes(st))
        if side_bytes(st) + n > eng.rx.max_buffer:
            return deliver_through(eng, slot, side, st, data, n)
        eng.rx.pending += n
        if can_ref and st.buf_len == 0 and not st.manual and ref_add(eng, st, data, n) == 0:
            st.next_off += n
            st.bytes += n
            buffer_grew(&eng.rx, st)
            return mark_dirty(eng, slot, side)
        materialize(eng, st)
        if buf_reserve(eng, st, n) < 0:
            eng.rx.overruns += 1
            if eng.em.wants(EV_BUFFER_OVERRUN):
                report(eng, B_BUFFER_OVERRUN, slot, side, HOOK_NONE, st.next_off, n, "memory")
            return stream_skip(eng, slot, side, HOOK_NONE, st, st.next_off + n)
        memcpy(st.buf + st.buf_start + st.buf_len, data, n)
        st.buf_len += n
        buffer_grew(&eng.rx, st)
    st.next_off += n
    if not st.buffering:
        st.buf_off = st.next_off
    st.bytes += n
    return mark_dirty(eng, slot, side)


cdef int deliver_through(Engine eng, int32_t slot, int side, stream_t *st, const uint8_t *data,
                         uint32_t n) except -1:
    """In-order bytes with no room beside what the side holds out of order (the retransmission
    that fills the hole before them, say), nothing being held in order: as a full in-order
    buffer is, they are delivered early rather than lost: at once, in their own NEW_DATA, never
    held. A side that keeps its bytes (held, or partly consumed by a NEW_DATA handler) cannot
    keep these: counted, BUFFER_OVERRUN, as when a full buffer drops what such a side kept."""
    cdef uint64_t start
    stream_deliver(eng, slot, side)         # what came before them goes out first
    start = st.next_off
    st.next_off += n
    st.bytes += n
    st.delivered_off = st.next_off
    if eng.rx.overlap_window and eng.em.wants(EV_OVERLAP):
        hist_add(eng, st, start, data, n)   # consumed at once: later copies are compared with them
    st.buf_off = st.next_off
    st.consumed_in_call = 0
    if eng.em.wants(EV_NEW_DATA):
        report(eng, B_NEW_DATA, slot, side, HOOK_NONE, start, n, data[:n])
        st = eng.tab.flows[slot].side[side].stream
        if st == NULL:
            return 0
    if st.manual or st.consumed_in_call:
        eng.rx.overruns += 1
        if eng.em.wants(EV_BUFFER_OVERRUN):
            report(eng, B_BUFFER_OVERRUN, slot, side, HOOK_NONE, start, n, "buffer")
    return 0


cdef int ref_add(Engine eng, stream_t *st, const uint8_t *data, uint32_t n) noexcept:
    """Reference a payload in the current batch's frames at the end of the side's chain; -1
    when there is no memory for the reference (the caller copies the bytes instead)."""
    cdef ref_t *r
    cdef uint32_t cap
    if eng.rx.n_refs == eng.rx.refs_cap:
        cap = eng.rx.refs_cap * 2 if eng.rx.refs_cap else 4096
        r = <ref_t *>realloc(eng.rx.refs, cap * sizeof(ref_t))
        if r == NULL:
            return -1
        eng.rx.refs = r
        eng.rx.refs_cap = cap
    r = &eng.rx.refs[eng.rx.n_refs]
    r.ptr = data
    r.len = n
    r.next = -1
    if st.nrefs:
        eng.rx.refs[st.ref_last].next = <int32_t>eng.rx.n_refs
    else:
        st.ref_first = <int32_t>eng.rx.n_refs
    st.ref_last = <int32_t>eng.rx.n_refs
    eng.rx.n_refs += 1
    st.nrefs += 1
    st.ref_bytes += n
    return 0


cdef int drain_ooo(Engine eng, int32_t slot, int side, stream_t *st) except -1:
    """Move out-of-order segments that became contiguous into the in-order buffer."""
    cdef seg_t *g
    while st.ooo != NULL and st.ooo.off == st.next_off:
        g = st.ooo
        st.ooo = g.next
        if st.ooo == NULL:
            st.ooo_last = NULL
        st.ooo_count -= 1
        st.ooo_bytes -= g.length
        eng.rx.memory -= sizeof(seg_t) + (g.length if g.data != NULL else 0)
        append_inorder(eng, slot, side, st, g.data, g.length, 0)
        free(g.data)
        free(g)
    return 0


cdef int stream_skip(Engine eng, int32_t slot, int side, int hook, stream_t *st, uint64_t upto) except -1:
    """Bytes before ``upto`` will never arrive: raise GAP for the hole, then drain."""
    cdef uint64_t n
    if upto <= st.next_off:
        return 0
    n = upto - st.next_off
    st.missed += n
    if held_bytes(st):
        stream_deliver(eng, slot, side)      # what came before the hole goes out first,
        stream_consume(eng, st, held_bytes(st))  # and a hole ends what peek() can see
    if eng.em.wants(EV_GAP):
        report(eng, B_GAP, slot, side, hook, st.next_off, n, None)
    st.next_off = upto
    st.delivered_off = upto
    st.buf_off = upto
    st.hist_len = 0                         # the history is contiguous up to buf_off
    return drain_ooo(eng, slot, side, st)


cdef int stream_fill(Engine eng, int32_t slot, int side, int hook, stream_t *st, uint64_t off,
                     const uint8_t *data, uint32_t n, bint can_ref) except -1:
    """Take bytes from the next expected byte (off) while segments are held out of order: the
    retransmission that fills the hole before them, say. They are in order, as the endpoint
    took them, so the out-of-order limits do not apply to them. The held copies they overlap
    (all beyond off) are settled by the policy first, while they are still held; then each
    piece between them is appended, and the held segments that now follow drain after it."""
    cdef uint64_t end = off + n, pos = off, cend
    cdef uint32_t k
    cdef seg_t *cur = st.ooo
    while cur != NULL and cur.off < end:
        cend = cur.off + cur.length if cur.off + cur.length < end else end
        if resolve_overlap(eng, slot, side, hook, st, cur.data, cur.off, data + (cur.off - off),
                           <uint32_t>(cend - cur.off), 1, off, end, cur.src_off, cur.src_end):
            memcpy(cur.data, data + (cur.off - off), <size_t>(cend - cur.off))
        cur = cur.next
    while pos < end:
        k = <uint32_t>((st.ooo.off if st.ooo != NULL and st.ooo.off < end else end) - pos)
        append_inorder(eng, slot, side, st, data + (pos - off), k, can_ref)
        st = eng.tab.flows[slot].side[side].stream     # an early NEW_DATA's handler may have let it go
        if st == NULL:
            return 0
        drain_ooo(eng, slot, side, st)
        pos = st.next_off
    return 0


cdef int stream_segment(Engine eng, int32_t slot, int side, int hook, stream_t *st, int64_t soff,
                        const uint8_t *data, uint32_t n, bint can_ref) except -1:
    """Take one segment's payload at stream offset soff into the side's stream."""
    cdef uint64_t off, end, pos, cend, a, s0
    cdef uint32_t skip, k
    cdef seg_t **link
    cdef seg_t *cur
    cdef bint fresh = 0
    if n == 0 or st.stopped:
        return 0
    if soff < 0:
        if soff + n <= 0:
            st.rexmits += 1
            st.rexmit_bytes += n
            return 0
        data += <uint32_t>(-soff)
        n -= <uint32_t>(-soff)
        soff = 0
    off = <uint64_t>soff
    end = off + n
    if off > st.next_off + MAX_SEQ_JUMP:
        eng.rx.seq_jumps += 1           # far ahead: within the memory limits, buffered all the same
    if off > st.next_off and off <= st.acked_off:
        stream_lost_to(eng, slot, side, hook, st, off)     # the peer ACKed past the hole before it
    if off == st.next_off and st.ooo == NULL:
        return append_inorder(eng, slot, side, st, data, n, can_ref)
    # overlap with in-order bytes already held (or consumed)
    if off < st.next_off:
        materialize(eng, st)
        cend = st.next_off if end > st.next_off else end
        compare_inorder(eng, slot, side, hook, st, off, data, cend, end)
        if end <= st.next_off:
            st.rexmits += 1
            st.rexmit_bytes += n
            if eng.em.wants(EV_RETRANSMIT):
                report(eng, B_RETRANSMIT, slot, side, hook, off, n, None)
            return 0
        skip = <uint32_t>(st.next_off - off)
        data += skip
        n -= skip
        off = st.next_off
    if off == st.next_off:
        return stream_fill(eng, slot, side, hook, st, off, data, n, can_ref)
    # out of order: cut it into pieces around the held out-of-order segments
    s0 = off
    pos = off
    link = &st.ooo
    if st.ooo_last != NULL and st.ooo_last.off + st.ooo_last.length <= pos:
        link = &st.ooo_last.next        # beyond every held segment (a flood's, say): no walk
    while pos < end:
        cur = link[0]
        while cur != NULL and cur.off + cur.length <= pos:
            link = &cur.next
            cur = link[0]
        if cur == NULL or cur.off >= end:
            k = <uint32_t>(end - pos)
        elif cur.off > pos:
            k = <uint32_t>(cur.off - pos)
        else:
            cend = cur.off + cur.length if cur.off + cur.length < end else end
            if resolve_overlap(eng, slot, side, hook, st,
                               cur.data + (pos - cur.off) if cur.data != NULL else NULL,
                               pos, data + (pos - off), <uint32_t>(cend - pos), 1,
                               s0, end, cur.src_off, cur.src_end):
                take_over(eng, slot, side, hook, st, cur, pos, data + (pos - off), <uint32_t>(cend - pos), s0, end)
            pos = cend
            continue
        if insert_piece(eng, slot, side, hook, st, link, pos, data + (pos - off), k, s0, end) == 0:
            fresh = 1
            link = &(link[0].next)
        pos += k
    if not fresh:
        st.rexmits += 1
        st.rexmit_bytes += n
        if eng.em.wants(EV_RETRANSMIT):
            report(eng, B_RETRANSMIT, slot, side, hook, off, n, None)
        return 0
    st.ooo_segments += 1                # ahead of a hole: it drains when the hole is filled
    return 0


cdef int stream_close(Engine eng, int32_t slot, int side, int64_t fin_off, bint reset) except -1:
    """The flow ends: holes before held segments (and before the FIN) are gaps; deliver all,
    and return the emptied buffer. Ended by a RST, the stream stops at the receiver's ACK point:
    bytes held beyond a hole it never ACKed were never delivered to its application (Suricata,
    ticket 7422): one GAP covers them, valued how many of them were captured (``undelivered``)."""
    cdef stream_t *st = eng.tab.flows[slot].side[side].stream
    cdef uint64_t start, last, captured, acked
    cdef seg_t *g
    if st == NULL or st.stopped:
        return 0
    if reset:
        acked = st.acked_off
        if fin_off >= 0 and acked > <uint64_t>fin_off:
            acked = <uint64_t>fin_off     # an ACK of the FIN taken: its sequence number is no byte
        if acked > st.next_off:
            stream_lost_to(eng, slot, side, HOOK_NONE, st, acked)
        if st.ooo != NULL:
            start = last = st.next_off
            captured = 0
            while st.ooo != NULL:
                g = st.ooo
                st.ooo = g.next
                captured += g.length
                if g.off + g.length > last:
                    last = g.off + g.length
                eng.rx.memory -= sizeof(seg_t) + (g.length if g.data != NULL else 0)
                free(g.data)
                free(g)
            st.ooo_last = NULL
            st.ooo_count = 0
            st.ooo_bytes = 0
            st.undelivered += captured
            st.missed += (last - start) - captured
            if held_bytes(st):
                stream_deliver(eng, slot, side)
                st = eng.tab.flows[slot].side[side].stream
                if st == NULL:
                    return 0
                stream_consume(eng, st, held_bytes(st))
            if eng.em.wants(EV_GAP):
                report(eng, B_GAP, slot, side, HOOK_NONE, start, last - start, captured)
                st = eng.tab.flows[slot].side[side].stream
                if st == NULL:
                    return 0
            st.next_off = st.delivered_off = st.buf_off = last
            st.hist_len = 0
    while st.ooo != NULL:
        stream_skip(eng, slot, side, HOOK_NONE, st, st.ooo.off)
    if fin_off > 0 and <uint64_t>fin_off > st.next_off:
        stream_skip(eng, slot, side, HOOK_NONE, st, <uint64_t>fin_off)
    stream_deliver(eng, slot, side)
    st = eng.tab.flows[slot].side[side].stream
    if st != NULL and st.buf_len == 0 and st.buf != NULL:
        buf_release(eng, st)        # an ended flow expects no bytes: its buffer goes back now
    if st != NULL:
        hist_release(eng, st)
    return 0


cdef object new_bytes(Engine eng, const stream_t *st, uint64_t fresh):
    """The ``fresh`` newest in-order bytes: a FrameBytes when they lie in frames of the batch's
    block (copied only if someone looks), else bytes."""
    cdef FrameBytes fb
    cdef uint32_t k
    if st.nrefs:
        fb = FrameBytes.__new__(FrameBytes)
        fb.take(eng.rx.refs, st.ref_first, st.nrefs, st.ref_bytes)
        if eng.block is None:
            return fb.get()
        PyList_Append(eng.block.values, fb)
        return fb
    k = st.buf_len if fresh > st.buf_len else <uint32_t>fresh
    return st.buf[st.buf_start + st.buf_len - k:st.buf_start + st.buf_len]


cdef int mark_dirty(Engine eng, int32_t slot, int side) except -1:
    """Remember a side with new bytes: NEW_DATA is raised once for it at the end of the batch."""
    cdef stream_t *st = eng.tab.flows[slot].side[side].stream
    cdef reasm_t *rx = &eng.rx
    cdef uint32_t cap
    if st.dirty:
        return 0
    if rx.n_dirty == rx.dirty_cap:
        cap = rx.dirty_cap * 2 if rx.dirty_cap else 1024
        rx.dirty_slot = <int32_t *>realloc(rx.dirty_slot, cap * sizeof(int32_t))
        rx.dirty_id = <uint64_t *>realloc(rx.dirty_id, cap * sizeof(uint64_t))
        rx.dirty_side = <uint8_t *>realloc(rx.dirty_side, cap)
        if rx.dirty_slot == NULL or rx.dirty_id == NULL or rx.dirty_side == NULL:
            raise MemoryError()
        rx.dirty_cap = cap
    st.dirty = 1
    rx.pending += EVENT_BYTES + BYTES_HEADER
    rx.dirty_slot[rx.n_dirty] = slot
    rx.dirty_id[rx.n_dirty] = eng.tab.flows[slot].id
    rx.dirty_side[rx.n_dirty] = <uint8_t>side
    rx.n_dirty += 1
    return 0


cdef int stream_deliver(Engine eng, int32_t slot, int side) except -1:
    """Raise NEW_DATA for a side's new in-order bytes, then release what was delivered.

    The event carries the new bytes (``length`` of them from ``offset``). Bytes stay only if the
    side is held (``Flow.hold``) or an inline NEW_DATA handler consumed part of them (libnids'
    discard: ``flow.peek`` shows them, with the next ones, at the next delivery).
    """
    cdef stream_t *st = eng.tab.flows[slot].side[side].stream
    cdef uint64_t fresh, start
    if st == NULL:
        return 0
    st.dirty = 0
    if st.next_off <= st.delivered_off:
        return 0
    fresh = st.next_off - st.delivered_off
    start = st.delivered_off
    st.delivered_off = st.next_off
    st.consumed_in_call = 0
    if eng.em.wants(EV_NEW_DATA):
        report(eng, B_NEW_DATA, slot, side, HOOK_NONE, start, fresh,
               new_bytes(eng, st, fresh) if st.buffering else None)
        st = eng.tab.flows[slot].side[side].stream
        if st == NULL:
            return 0
    if not st.manual and not st.consumed_in_call:
        stream_consume(eng, st, held_bytes(st))
    else:
        materialize(eng, st)           # what stays must outlive the batch's frames
    return 0


cdef inline stream_t *dirty_stream(Engine eng, uint32_t i) noexcept:
    """The stream of the i-th side marked for NEW_DATA, or NULL if its flow has gone."""
    cdef int32_t slot = eng.rx.dirty_slot[i]
    if eng.tab.flows[slot].status == FS_FREE or eng.tab.flows[slot].id != eng.rx.dirty_id[i]:
        return NULL
    return eng.tab.flows[slot].side[eng.rx.dirty_side[i]].stream


cdef int streams_flush(Engine eng) except -1:
    """End of a receive batch: NEW_DATA at most once per flow side."""
    cdef uint32_t i = 0
    while i < eng.rx.n_dirty:
        if dirty_stream(eng, i) != NULL:
            stream_deliver(eng, eng.rx.dirty_slot[i], eng.rx.dirty_side[i])
        i += 1
    eng.rx.n_dirty = 0
    eng.rx.pending = 0
    return 0


cdef void streams_end_batch(Engine eng) noexcept:
    """The batch's frames go: forget the references into them. If a handler raised before
    NEW_DATA went out, the bytes still referenced are copied first, and delivered with the
    side's next bytes."""
    cdef uint32_t i
    cdef stream_t *st
    for i in range(eng.rx.n_dirty):
        st = dirty_stream(eng, i)
        if st != NULL:
            materialize(eng, st)
            st.dirty = 0
    eng.rx.n_dirty = 0
    eng.rx.pending = 0
    eng.rx.n_refs = 0


cdef inline bint keep_alive(const stream_t *st, int64_t soff, const side_t *r, const pkt_t *pk) noexcept nogil:
    """One byte re-sent at the last byte of the stream in order, which the peer has ACKed, without
    SYN, FIN or RST: a keep-alive (RFC 9293 3.8.4; Windows sends a byte of garbage), which the
    receiver drops as old: neither a data segment nor a retransmission, its byte compared with
    nothing."""
    return pk.paylen == 1 and not (pk.flags & (TH_SYN | TH_FIN | TH_RST)) and soff + 1 == <int64_t>st.next_off \
        and (r.flags & SF_ACK_KNOWN) and seq_ge(r.last_ack, pk.seq + 1)


cdef int stream_receive(Engine eng, int32_t slot, int side, const pkt_t *pk) except -1:
    """The receiver phase of a packet from ``side``: its payload into the sender's stream; its
    ACK may reveal a gap in the receiver's (then tcp.pxi's fins_settle sees whether a held FIN
    was reached)."""
    cdef flow_t *f = &eng.tab.flows[slot]
    cdef side_t *s = &f.side[side]
    cdef side_t *r = &f.side[1 - side]
    cdef stream_t *st
    cdef int64_t soff, ack_off, end_off, target
    cdef uint32_t n = pk.paylen
    if n and (s.flags & SF_FIN_SEEN) and seq_gt(pk.seq + n, s.fin_seq):
        n = s.fin_seq - pk.seq if seq_gt(s.fin_seq, pk.seq) else 0     # the receiver ignores text past the FIN
    if pk.paylen and ((s.flags & SF_SEQ_KNOWN) or (s.flags & SF_SYN_SEEN)):
        st = s.stream if s.stream != NULL else stream_new(eng, s)
        if st == NULL:
            refuse_unmade(eng, slot, side, s, pk)
        else:
            stream_rebase(st, s)
            soff = stream_offset(st, pk.seq) + (1 if pk.flags & TH_SYN else 0)
            if keep_alive(st, soff, r, pk):
                st.keep_alives += 1
                n = 0
            else:
                st.segments += 1
                st.after_fin += pk.paylen - n
            if n and r.flags & SF_ACK_KNOWN:
                window_check(eng, slot, side, st, soff, r, pk, (s.flags & SF_SYN_SEEN) and (r.flags & SF_SYN_SEEN))
                st = eng.tab.flows[slot].side[side].stream
                if st == NULL:
                    return 0
            if n:
                stream_segment(eng, slot, side, HOOK_RECEIVER, st, soff, pk.payload, n, not pk.reassembled)
    if not (pk.flags & TH_ACK) or pk.flags & TH_SYN or not ((r.flags & SF_SYN_SEEN) or (r.flags & SF_SEQ_KNOWN)):
        return 0
    f = &eng.tab.flows[slot]
    r = &f.side[1 - side]
    st = r.stream
    if st == NULL:
        if <int32_t>(pk.ack - (r.isn + 1)) <= 0:
            return 0
        st = stream_new(eng, r)
        if st == NULL:
            return 0                    # no memory for the stream: its holes go unseen
    stream_rebase(st, r)
    if st.stopped or not st.based:
        return 0
    ack_off = stream_offset(st, pk.ack)
    if ack_off > <int64_t>st.acked_off:
        st.acked_off = ack_off   # remembered beyond the bytes captured: a later segment below it came after a lost one
    end_off = stream_offset(st, r.fin_seq if (r.flags & SF_FIN_SEEN) else r.next_seq)
    if (r.flags & SF_FIN_HELD) and ack_off == stream_offset(st, r.fin_seq) + 1:
        end_off = ack_off - 1    # the ACK of a held FIN: the receiver took it (fins_settle), no byte at its place
    if ack_off > end_off:
        ack_off = end_off        # holes are known up to the bytes seen from the peer (its stream ends at its FIN)
    if ack_off > <int64_t>st.next_off:
        stream_lost_to(eng, slot, 1 - side, HOOK_RECEIVER, st, <uint64_t>ack_off)
    return 0


cdef int fin_place(Engine eng, side_t *s, const pkt_t *pk) except -1:
    """Where a FIN from side ``s`` (none taken yet) lies for its receiver: FIN_TAKEN when its
    segment reaches the bytes in order (its own bytes bring them to it), FIN_STALE when it lies
    below them (or below what the receiver ACKed past it), FIN_HELD ahead of them, behind a hole.
    A FIN not taken needs the side's stream (made here, for one past bytes never seen): without
    it (streams not tracked, no memory) a FIN is taken as it comes."""
    cdef stream_t *st = s.stream
    cdef int64_t soff, foff, next_off = 0, acked_off = 0
    cdef int where
    if not eng.reassembling:
        return FIN_TAKEN
    if st == NULL:
        soff = <int32_t>(pk.seq - (s.isn + 1))
    else:
        stream_rebase(st, s)
        if not st.based or st.stopped:
            return FIN_TAKEN
        soff = stream_offset(st, pk.seq)
        next_off = <int64_t>st.next_off
        acked_off = <int64_t>st.acked_off
    foff = soff + pk.paylen
    if foff < next_off or acked_off > foff + 1:
        where = FIN_STALE
    elif soff <= next_off:
        return FIN_TAKEN
    else:
        where = FIN_HELD
    if st == NULL and stream_new(eng, s) == NULL:
        return FIN_TAKEN
    return where


cdef int fin_reach(Engine eng, int32_t slot, int side, int hook) except -1:
    """A side's held FIN, once a packet moved its stream: FIN_TAKEN when the bytes in order reach
    it, or when the receiver ACKed the bytes up to it or the FIN itself (the bytes before it, lost
    by the capture, are a GAP first); FIN_STALE (counted, no longer held) once the bytes in order
    or the receiver's ACK pass it; else FIN_HELD."""
    cdef side_t *s = &eng.tab.flows[slot].side[side]
    cdef stream_t *st = s.stream
    cdef int64_t foff
    if st == NULL or st.stopped:
        return FIN_TAKEN
    foff = stream_offset(st, s.fin_seq)
    if <int64_t>st.next_off < foff and foff <= <int64_t>st.acked_off <= foff + 1:
        stream_lost_to(eng, slot, side, hook, st, <uint64_t>foff)
        s = &eng.tab.flows[slot].side[side]
        st = s.stream
        if st == NULL:
            return FIN_TAKEN
    if <int64_t>st.next_off == foff and <int64_t>st.acked_off <= foff + 1:
        return FIN_TAKEN
    if <int64_t>st.next_off > foff or <int64_t>st.acked_off > foff + 1:
        s.flags &= ~SF_FIN_HELD
        st.fin_ignored += 1
        return FIN_STALE
    return FIN_HELD


cdef void stream_fin(Engine eng, stream_t *st, uint64_t fin_off) noexcept:
    """The side's FIN took effect at ``fin_off``: bytes held out of order at or past it never
    reach the application (Linux's tcp_fin purges its out-of-order queue): dropped, counted
    with the bytes past the FIN (after_fin)."""
    cdef seg_t **link = &st.ooo
    cdef seg_t *g
    cdef uint32_t cut
    st.ooo_last = NULL
    while link[0] != NULL and link[0].off + link[0].length <= fin_off:
        st.ooo_last = link[0]
        link = &link[0].next
    if link[0] != NULL and link[0].off < fin_off:     # held bytes across the FIN: those past it go
        g = link[0]
        cut = <uint32_t>(g.off + g.length - fin_off)
        g.length -= cut
        st.ooo_bytes -= cut
        st.after_fin += cut
        if g.data != NULL:
            eng.rx.memory -= cut
            g.data = <uint8_t *>realloc(g.data, g.length)      # shrinking: never fails in practice
        st.ooo_last = g
        link = &g.next
    while link[0] != NULL:
        g = link[0]
        link[0] = g.next
        st.ooo_count -= 1
        st.ooo_bytes -= g.length
        st.after_fin += g.length
        eng.rx.memory -= sizeof(seg_t) + (g.length if g.data != NULL else 0)
        free(g.data)
        free(g)


cdef int refuse_unmade(Engine eng, int32_t slot, int side, const side_t *s, const pkt_t *pk) except -1:
    """No memory for a side's stream: its payload is refused (BUFFER_OVERRUN, at the offset the
    stream would have given it); once a stream is made, the bytes refused are a hole in it."""
    cdef stream_t unmade
    cdef int64_t soff
    memset(&unmade, 0, sizeof(stream_t))
    stream_rebase(&unmade, s)
    soff = stream_offset(&unmade, pk.seq) + (1 if pk.flags & TH_SYN else 0)
    eng.rx.overruns += 1
    if eng.em.wants(EV_BUFFER_OVERRUN):
        report(eng, B_BUFFER_OVERRUN, slot, side, HOOK_RECEIVER, soff if soff > 0 else 0, pk.paylen, "memory")
    return 0


cdef int window_check(Engine eng, int32_t slot, int side, stream_t *st, int64_t soff,
                      const side_t *r, const pkt_t *pk, bint scale_known) except -1:
    """A data segment against its receiver's advertised window (from its last ACK): one byte at
    the edge of a closed window is a zero-window probe; bytes past the right edge are beyond
    the window (judged only when both SYNs were seen: else the window scale is unknown). Either
    is counted and raises WINDOW; the bytes are taken all the same (a window update may have
    been lost by the capture)."""
    cdef str what
    if pk.paylen == 1 and r.window == 0 and soff == <int64_t>st.next_off:
        st.zw_probes += 1
        what = "zero_window_probe"
    elif scale_known and seq_gt(pk.seq + pk.paylen, r.last_ack + r.window):
        st.beyond_window += 1
        what = "beyond_window"
    else:
        return 0
    if eng.em.wants(EV_WINDOW):
        report(eng, B_WINDOW, slot, side, HOOK_RECEIVER, <uint64_t>soff if soff > 0 else 0, pk.paylen, what)
    return 0


cdef int stream_lost_to(Engine eng, int32_t slot, int side, int hook, stream_t *st, uint64_t upto) except -1:
    """Every byte before ``upto`` reached the endpoint (its peer ACKed it): the holes before it
    were lost by the capture (GAP), and the held bytes after each are delivered."""
    cdef uint64_t target
    while st.next_off < upto:
        target = upto
        if st.ooo != NULL and st.ooo.off < target:
            target = st.ooo.off
        if target <= st.next_off:
            break
        if hook != HOOK_NONE and eng.tab.conns != NULL:
            conn_gap(conn_of(&eng.tab, slot), side, target - st.next_off)
        stream_skip(eng, slot, side, hook, st, target)
    return 0


cdef int streams_close(Engine eng, int32_t slot, bint reset) except -1:
    """The flow ends: holes before held segments (and before a FIN) become gaps; every byte is
    delivered (ended by a RST: up to the receiver's ACK point, see stream_close). A FIN still
    held never took effect (counted in fin_ignored), but the bytes before it were sent: unless a
    RST ended the flow, the hole before it is a gap too."""
    cdef flow_t *f = &eng.tab.flows[slot]
    cdef int i
    cdef stream_t *st
    cdef side_t *s
    cdef int64_t fin_off
    for i in range(2):
        s = &f.side[i]
        st = s.stream
        if st != NULL:
            fin_off = -1
            if (s.flags & SF_FIN_SEEN) or (s.flags & SF_FIN_HELD) and not reset:
                fin_off = stream_offset(st, s.fin_seq)
            if s.flags & SF_FIN_HELD:
                s.flags &= ~SF_FIN_HELD
                st.fin_ignored += 1
            stream_close(eng, slot, i, fin_off, reset)
            f = &eng.tab.flows[slot]
    return 0


def policy_number(name, what):
    """The rule family of an overlap policy name; ValueError naming the choices otherwise."""
    try:
        return POLICY_NAMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(POLICIES)}") from None
