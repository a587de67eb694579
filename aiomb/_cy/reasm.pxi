# TCP stream reassembly: one stream per flow side (the bytes that side sent), addressed by
# 64-bit stream offsets. Held byte ranges (the in-order buffer and the out-of-order segments)
# are kept disjoint: an arriving segment is cut into the pieces nobody holds yet, and where it
# overlaps held bytes the overlap policy decides which copy wins (a conflict is an event).

cdef enum:
    POLICY_FIRST = 0
    POLICY_LAST = 1
    POLICY_BSD = 2          # also hpux10, irix, windows, win2003, macos
    POLICY_LINUX = 3
    POLICY_OLD_LINUX = 4
    POLICY_SOLARIS = 5      # also hpux11
    MAX_SEQ_JUMP = 1 << 26          # 64 MiB ahead of the next expected byte: not buffered

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
    """Whether an arriving segment [s0, s1) replaces held bytes of [h0, h1) where they overlap.

    The target-based rules of Suricata's stream engine (after Novak and Sturges): ``first``
    keeps held bytes, ``last`` takes new ones; the OS families take the new bytes when the new
    segment starts before the held one (bsd, linux, old_linux, solaris), starts with it and
    ends after it (linux, old_linux, solaris) or with it (old_linux, solaris), or starts after
    it and ends after it (solaris).
    """
    if policy == POLICY_LAST:
        return 1
    if policy == POLICY_FIRST:
        return 0
    if s0 < h0:
        return 1
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


cdef stream_t *stream_new(Engine eng, side_t *s) noexcept:
    cdef stream_t *st = <stream_t *>calloc(1, sizeof(stream_t))
    if st == NULL:
        return NULL
    st.seq_base = s.isn + 1
    st.buffering = eng.buffering
    eng.stream_memory += sizeof(stream_t)
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
        eng.stream_memory -= sizeof(seg_t) + (g.length if g.data != NULL else 0)
        free(g.data)
        free(g)
    eng.stream_memory -= sizeof(stream_t) + st.buf_cap
    free(st.buf)
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
    if eng.stream_memory + (cap - st.buf_cap) > eng.max_stream_memory:
        return -1
    if st.buf_start:
        memmove(st.buf, st.buf + st.buf_start, st.buf_len)
        st.buf_start = 0
    nb = <uint8_t *>realloc(st.buf, cap)
    if nb == NULL:
        return -1
    eng.stream_memory += cap - st.buf_cap
    st.buf = nb
    st.buf_cap = cap
    return 0


cdef inline uint64_t held_bytes(const stream_t *st) noexcept nogil:
    """In-order bytes not yet consumed (copied into buf, or referenced in this batch's frames)."""
    return st.buf_len + st.ref_bytes


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
        return -1
    pos = st.buf_start + st.buf_len
    r = st.ref_first
    for i in range(st.nrefs):
        memcpy(st.buf + pos, eng.refs[r].ptr, eng.refs[r].len)
        pos += eng.refs[r].len
        r = eng.refs[r].next
    st.buf_len += st.ref_bytes
    st.nrefs = 0
    st.ref_bytes = 0
    return 0


cdef void stream_consume(Engine eng, stream_t *st, uint64_t n) noexcept:
    """Drop the first n unconsumed in-order bytes; return the buffer when it empties."""
    if st.nrefs:
        if n >= st.ref_bytes and st.buf_len == 0:
            st.buf_off += st.ref_bytes         # references into frames: nothing to free
            st.nrefs = 0
            st.ref_bytes = 0
            return
        materialize(eng, st)
    if n > st.buf_len:
        n = st.buf_len
    st.buf_start += <uint32_t>n
    st.buf_len -= <uint32_t>n
    st.buf_off += n
    if st.buf_len == 0:
        st.buf_start = 0
        if st.buf_cap > 65536:      # small buffers stay for the next bytes, large ones go back
            buf_release(eng, st)


cdef inline void buf_release(Engine eng, stream_t *st) noexcept:
    """Return an empty in-order buffer's memory."""
    eng.stream_memory -= st.buf_cap
    free(st.buf)
    st.buf = NULL
    st.buf_cap = 0


cdef int resolve_overlap(Engine eng, int32_t slot, int side, int hook, stream_t *st, uint8_t *held,
                         uint64_t off, const uint8_t *data, uint32_t n, bint deliverable,
                         uint64_t s0, uint64_t s1, uint64_t h0, uint64_t h1) except -1:
    """New bytes (of segment [s0, s1)) met held ones (of [h0, h1)) at [off, off+n): report a
    conflict and let the flow's overlap policy pick the copy that stays."""
    cdef uint32_t i, differ = 0
    if held == NULL or data == NULL:
        return 0
    for i in range(n):
        if held[i] != data[i]:
            differ += 1
    if not differ:
        return 0
    st.overlaps += 1
    st.overlap_bytes += differ
    if eng.need_mask & EV_OVERLAP:
        eng.emit_stream(14, slot, side, hook, off, n, (held[:n], data[:n]))
    if deliverable and new_bytes_win(eng.tab.flows[slot].policy, s0, s1, h0, h1):
        memcpy(held, data, n)
    return 0


cdef int insert_piece(Engine eng, int32_t slot, int side, int hook, stream_t *st, seg_t **link,
                      uint64_t off, const uint8_t *data, uint32_t n, uint64_t src_off,
                      uint64_t src_end) except -1:
    """Hold a piece nobody holds yet as an out-of-order segment (bounded); 1 if dropped."""
    cdef seg_t *g
    cdef object limit = None
    if st.ooo_count >= eng.max_ooo_segments:
        limit = "ooo_segments"
    elif st.buffering and st.ooo_bytes + held_bytes(st) + n > eng.max_buffer:
        limit = "buffer"
    elif st.buffering and eng.stream_memory + n + sizeof(seg_t) > eng.max_stream_memory:
        limit = "memory"
    if limit is not None:
        eng.n_overruns += 1
        if eng.need_mask & EV_BUFFER_OVERRUN:
            eng.emit_stream(15, slot, side, hook, off, n, limit)
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
        eng.stream_memory += n
    eng.stream_memory += sizeof(seg_t)
    g.next = link[0]
    link[0] = g
    st.ooo_count += 1
    st.ooo_bytes += n
    return 0


cdef int append_inorder(Engine eng, int32_t slot, int side, stream_t *st, const uint8_t *data,
                        uint32_t n, bint can_ref) except -1:
    """Append bytes at next_off; a full buffer is delivered early rather than lost.

    ``can_ref``: data lies in a frame of the current batch, so while the side is not held and
    its buffer is empty it is only referenced, and copied once, into the NEW_DATA value.
    """
    if st.buffering:
        if held_bytes(st) + n > eng.max_buffer and held_bytes(st):
            eng.stream_deliver(slot, side)
            if held_bytes(st) + n > eng.max_buffer:
                eng.n_overruns += 1
                if eng.need_mask & EV_BUFFER_OVERRUN:
                    eng.emit_stream(15, slot, side, HOOK_NONE, st.buf_off, held_bytes(st), "buffer")
                stream_consume(eng, st, held_bytes(st))
        if can_ref and st.buf_len == 0 and not st.manual and ref_add(eng, st, data, n) == 0:
            st.next_off += n
            st.bytes += n
            return eng.mark_dirty(slot, side)
        materialize(eng, st)
        if buf_reserve(eng, st, n) < 0:
            eng.n_overruns += 1
            if eng.need_mask & EV_BUFFER_OVERRUN:
                eng.emit_stream(15, slot, side, HOOK_NONE, st.next_off, n, "memory")
            return stream_skip(eng, slot, side, HOOK_NONE, st, st.next_off + n)
        memcpy(st.buf + st.buf_start + st.buf_len, data, n)
        st.buf_len += n
    st.next_off += n
    if not st.buffering:
        st.buf_off = st.next_off
    st.bytes += n
    return eng.mark_dirty(slot, side)


cdef int ref_add(Engine eng, stream_t *st, const uint8_t *data, uint32_t n) noexcept:
    """Reference a payload in the current batch's frames at the end of the side's chain; -1
    when there is no memory for the reference (the caller copies the bytes instead)."""
    cdef ref_t *r
    cdef uint32_t cap
    if eng.n_refs == eng.refs_cap:
        cap = eng.refs_cap * 2 if eng.refs_cap else 4096
        r = <ref_t *>realloc(eng.refs, cap * sizeof(ref_t))
        if r == NULL:
            return -1
        eng.refs = r
        eng.refs_cap = cap
    r = &eng.refs[eng.n_refs]
    r.ptr = data
    r.len = n
    r.next = -1
    if st.nrefs:
        eng.refs[st.ref_last].next = <int32_t>eng.n_refs
    else:
        st.ref_first = <int32_t>eng.n_refs
    st.ref_last = <int32_t>eng.n_refs
    eng.n_refs += 1
    st.nrefs += 1
    st.ref_bytes += n
    return 0


cdef int drain_ooo(Engine eng, int32_t slot, int side, stream_t *st) except -1:
    """Move out-of-order segments that became contiguous into the in-order buffer."""
    cdef seg_t *g
    while st.ooo != NULL and st.ooo.off == st.next_off:
        g = st.ooo
        st.ooo = g.next
        st.ooo_count -= 1
        st.ooo_bytes -= g.length
        eng.stream_memory -= sizeof(seg_t) + (g.length if g.data != NULL else 0)
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
        eng.stream_deliver(slot, side)      # what came before the hole goes out first,
        stream_consume(eng, st, held_bytes(st))  # and a hole ends what peek() can see
    if eng.need_mask & EV_GAP:
        eng.emit_stream(13, slot, side, hook, st.next_off, n, None)
    st.next_off = upto
    st.delivered_off = upto
    st.buf_off = upto
    return drain_ooo(eng, slot, side, st)


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
            return 0
        data += <uint32_t>(-soff)
        n -= <uint32_t>(-soff)
        soff = 0
    off = <uint64_t>soff
    end = off + n
    if off > st.next_off + MAX_SEQ_JUMP:
        eng.n_seq_jumps += 1
        return 0
    if off == st.next_off and st.ooo == NULL:
        return append_inorder(eng, slot, side, st, data, n, can_ref)
    # overlap with in-order bytes already held (or consumed)
    if off < st.next_off:
        materialize(eng, st)
        cend = st.next_off if end > st.next_off else end
        a = off if off > st.buf_off else st.buf_off
        if st.buffering and a < cend and st.buf_len:
            resolve_overlap(eng, slot, side, hook, st, st.buf + st.buf_start + (a - st.buf_off),
                            a, data + (a - off), <uint32_t>(cend - a), a >= st.delivered_off,
                            off, end, st.delivered_off, st.next_off)
        if end <= st.next_off:
            st.rexmits += 1
            if eng.need_mask & EV_RETRANSMIT:
                eng.emit_stream(11, slot, side, hook, off, n, None)
            return 0
        skip = <uint32_t>(st.next_off - off)
        data += skip
        n -= skip
        off = st.next_off
    # cut the rest into pieces around the held out-of-order segments
    s0 = off
    pos = off
    link = &st.ooo
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
            resolve_overlap(eng, slot, side, hook, st,
                            cur.data + (pos - cur.off) if cur.data != NULL else NULL,
                            pos, data + (pos - off), <uint32_t>(cend - pos), 1,
                            s0, end, cur.src_off, cur.src_end)
            pos = cend
            continue
        if insert_piece(eng, slot, side, hook, st, link, pos, data + (pos - off), k, s0, end) == 0:
            fresh = 1
            link = &(link[0].next)
        pos += k
    if not fresh:
        st.rexmits += 1
        if eng.need_mask & EV_RETRANSMIT:
            eng.emit_stream(11, slot, side, hook, off, n, None)
        return 0
    return drain_ooo(eng, slot, side, st)


cdef int stream_close(Engine eng, int32_t slot, int side, int64_t fin_off) except -1:
    """The flow ends: holes before held segments (and before the FIN) are gaps; deliver all,
    and return the emptied buffer."""
    cdef stream_t *st = eng.tab.flows[slot].side[side].stream
    if st == NULL or st.stopped:
        return 0
    while st.ooo != NULL:
        stream_skip(eng, slot, side, HOOK_NONE, st, st.ooo.off)
    if fin_off > 0 and <uint64_t>fin_off > st.next_off:
        stream_skip(eng, slot, side, HOOK_NONE, st, <uint64_t>fin_off)
    eng.stream_deliver(slot, side)
    st = eng.tab.flows[slot].side[side].stream
    if st != NULL and st.buf_len == 0 and st.buf != NULL:
        buf_release(eng, st)        # an ended flow expects no bytes: its buffer goes back now
    return 0
