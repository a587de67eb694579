# IP fragment reassembly (IPv4 and IPv6), bounded: at most max_datagrams in progress, each at
# most 65535 bytes, all of their buffers within max_memory bytes, each expired after a timeout of
# packet time. Overlaps as Linux's inet_frag_queue_insert (since FragmentSmack; RFC 5722 for
# IPv6): a fragment that overlaps bytes held drops its datagram, unless it lies within one run of
# held fragments (fragments that came in order, each starting where the one before ended): that
# duplicate is ignored.
#
# Datagrams in progress live in a fixed array of entries, found through chained hash buckets
# keyed by (family, protocol, source, destination, identification), and kept on an age list
# (oldest first: the order of their first fragments), so that a fragment costs O(1) however many
# datagrams are held, and timeouts and evictions take the list's head. A datagram's buffer grows
# with the fragments that come (its two bitmaps of 8-byte units with it); what is allocated is what
# is counted against max_memory.

cdef enum:
    FRAG_MAX_PAYLOAD = 65535
    FRAG_GRAIN = 512            # buffers grow in multiples of 512 bytes (their bitmaps by 2 bytes per 64)
    FRAG_MAX_CAP = 65536        # the largest buffer (FRAG_MAX_PAYLOAD rounded up to the grain)
    FRAG_MIN_MEMORY = FRAG_MAX_CAP + FRAG_MAX_CAP // 32     # one datagram of the largest size

cdef enum:                      # what frag_add did with a fragment
    FA_INVALID = -1             # a bad fragment, or no memory: the datagram is dropped
    FA_HELD = 0
    FA_DONE = 1                 # it completed the datagram
    FA_DUPLICATE = 2            # within a run of held fragments: ignored
    FA_OVERLAP = 3              # overlapping bytes held otherwise: the datagram is dropped

cdef enum:
    FE_FREE = 0
    FE_HELD = 1                 # in reassembly: in a bucket and on the age list
    FE_DONE = 2                 # complete: out of the table, its buffers kept until released

ctypedef struct frag_t:
    int64_t first_ts
    uint32_t ident
    uint32_t total          # payload length once the last fragment is seen, else 0
    uint32_t units_have
    uint32_t high           # the end of the furthest fragment taken in
    uint32_t cap            # bytes of data (a multiple of FRAG_GRAIN); each bitmap has cap // 64
    uint32_t nfrags         # fragments taken in
    uint32_t hash
    int32_t hnext           # next entry in the bucket's chain, or in the free list
    int32_t prev            # the age list
    int32_t next
    uint16_t hdrlen         # IP header length of the first fragment (for the datagram's IP length)
    uint8_t state           # FE_*
    uint8_t family
    uint8_t proto           # IPv4 protocol / IPv6 next header after the fragment header
    uint8_t src[16]
    uint8_t dst[16]
    uint8_t *data           # the reassembled transport header and payload
    uint8_t *bitmap         # one bit per 8-byte unit of data: held
    uint8_t *runs           # one bit per 8-byte unit: a run of fragments starts there

ctypedef struct fragtab_t:
    frag_t *slots
    int32_t *buckets
    uint32_t n              # entries (max_fragments)
    uint32_t mask           # buckets - 1 (a power of two)
    uint32_t count          # datagrams in reassembly
    uint32_t fresh          # entries below this have been used (the rest are untouched)
    int32_t free_head       # entries given back, through hnext
    int32_t head            # the age list: oldest first
    int32_t tail
    uint64_t seed           # per table, so that chains cannot be aimed at from outside
    int64_t timeout
    int64_t clock           # the latest packet time seen (packet times may step back)
    uint64_t memory         # bytes of buffers and bitmaps, complete datagrams included
    uint64_t max_memory
    uint64_t held           # fragments of the datagrams in reassembly
    uint64_t received       # fragments taken in, ever
    uint64_t reassembled    # datagrams completed
    uint64_t expired        # datagrams dropped by timeout
    uint64_t evicted        # datagrams dropped to make room (entries or memory)
    uint64_t overlaps       # datagrams dropped for a fragment overlapping bytes held
    uint64_t duplicates     # fragments ignored: within a run of fragments held
    uint64_t new_expired    # drops not yet reported (ERROR events)
    uint64_t new_evicted


cdef int fragtab_init(fragtab_t *t, uint32_t n, int64_t timeout, uint64_t max_memory) except -1:
    cdef uint32_t nb = 16
    while nb < n:
        nb <<= 1
    t.slots = <frag_t *>calloc(n if n else 1, sizeof(frag_t))
    t.buckets = <int32_t *>malloc(nb * sizeof(int32_t))
    if t.slots == NULL or t.buckets == NULL:
        raise MemoryError()
    memset(t.buckets, 0xff, nb * sizeof(int32_t))
    t.n = n
    t.mask = nb - 1
    t.free_head = -1
    t.head = -1
    t.tail = -1
    t.seed = mix64(<uint64_t><size_t>t.slots ^ <uint64_t><size_t>t.buckets)
    t.timeout = timeout
    t.max_memory = max_memory
    return 0


cdef void fragtab_free(fragtab_t *t) noexcept nogil:
    cdef uint32_t i
    if t.slots != NULL:
        for i in range(t.fresh):
            free(t.slots[i].data)
            free(t.slots[i].bitmap)
            free(t.slots[i].runs)
    free(t.slots)
    free(t.buckets)
    t.slots = NULL
    t.buckets = NULL


cdef inline uint32_t frag_hash(const fragtab_t *t, uint8_t family, uint8_t proto, const uint8_t *src,
                               const uint8_t *dst, uint32_t ident) noexcept nogil:
    cdef uint64_t a0, a1, b0, b1
    memcpy(&a0, src, 8)
    memcpy(&a1, src + 8, 8)
    memcpy(&b0, dst, 8)
    memcpy(&b1, dst + 8, 8)
    return <uint32_t>(mix64(mix64(a0 ^ t.seed) ^ a1 ^ mix64(b0 ^ (<uint64_t>ident << 16)
                                                               ^ (<uint64_t>proto << 8) ^ family) ^ b1) >> 32)


cdef void frag_unlink(fragtab_t *t, int32_t i) noexcept nogil:
    """Take a datagram in reassembly out of its bucket and the age list."""
    cdef frag_t *e = &t.slots[i]
    cdef int32_t *link = &t.buckets[e.hash & t.mask]
    while link[0] != i:
        link = &t.slots[link[0]].hnext
    link[0] = e.hnext
    if e.prev >= 0:
        t.slots[e.prev].next = e.next
    else:
        t.head = e.next
    if e.next >= 0:
        t.slots[e.next].prev = e.prev
    else:
        t.tail = e.prev
    t.count -= 1
    t.held -= e.nfrags


cdef void frag_release(fragtab_t *t, frag_t *e) noexcept nogil:
    """Give a complete (or unlinked) datagram's buffers and entry back."""
    t.memory -= e.cap + e.cap // 32
    free(e.data)
    free(e.bitmap)
    free(e.runs)
    e.data = NULL
    e.bitmap = NULL
    e.runs = NULL
    e.cap = 0
    e.state = FE_FREE
    e.hnext = t.free_head
    t.free_head = <int32_t>(e - t.slots)


cdef void frag_drop(fragtab_t *t, int32_t i) noexcept nogil:
    """Drop a datagram in reassembly."""
    frag_unlink(t, i)
    frag_release(t, &t.slots[i])


cdef void fragtab_expire(fragtab_t *t, int64_t now) noexcept nogil:
    """Drop the datagrams whose first fragment came more than the timeout before ``now``."""
    if now > t.clock:
        t.clock = now
    while t.head >= 0 and t.clock - t.slots[t.head].first_ts > t.timeout:
        frag_drop(t, t.head)
        t.expired += 1
        t.new_expired += 1


cdef inline void frag_evict_oldest(fragtab_t *t, int32_t keep) noexcept nogil:
    """Make room: drop the oldest datagram in reassembly other than ``keep``."""
    cdef int32_t victim = t.head
    if victim == keep:
        victim = t.slots[victim].next
    frag_drop(t, victim)
    t.evicted += 1
    t.new_evicted += 1


cdef frag_t *fragtab_get(fragtab_t *t, uint8_t family, uint8_t proto, const uint8_t *src,
                         const uint8_t *dst, uint32_t ident, int64_t now) noexcept nogil:
    """Find or make the entry for a datagram (dropping expired ones, and the oldest one when
    every entry is taken); NULL when the table has no entries at all."""
    cdef uint32_t h
    cdef int32_t i
    cdef frag_t *e
    if t.n == 0:
        return NULL
    fragtab_expire(t, now)
    h = frag_hash(t, family, proto, src, dst, ident)
    i = t.buckets[h & t.mask]
    while i >= 0:
        e = &t.slots[i]
        if e.hash == h and e.ident == ident and e.proto == proto and e.family == family \
                and memcmp(e.src, src, 16) == 0 and memcmp(e.dst, dst, 16) == 0:
            return e
        i = e.hnext
    if t.count == t.n:
        frag_evict_oldest(t, -1)
    if t.free_head >= 0:
        i = t.free_head
        t.free_head = t.slots[i].hnext
    else:
        i = <int32_t>t.fresh
        t.fresh += 1
    e = &t.slots[i]
    e.state = FE_HELD
    e.family = family
    e.proto = proto
    e.ident = ident
    memcpy(e.src, src, 16)
    memcpy(e.dst, dst, 16)
    e.first_ts = t.clock
    e.total = 0
    e.units_have = 0
    e.high = 0
    e.nfrags = 0
    e.hdrlen = 0
    e.hash = h
    e.hnext = t.buckets[h & t.mask]
    t.buckets[h & t.mask] = i
    e.next = -1
    e.prev = t.tail
    if t.tail >= 0:
        t.slots[t.tail].next = i
    else:
        t.head = i
    t.tail = i
    t.count += 1
    return e


cdef int frag_reserve(fragtab_t *t, frag_t *e, uint32_t end) noexcept nogil:
    """Room in a datagram's buffer for bytes up to ``end``, within the memory limit (the oldest
    other datagrams are evicted until it fits); -1 when there is no memory."""
    cdef uint32_t cap = (end + FRAG_GRAIN - 1) // FRAG_GRAIN * FRAG_GRAIN, grow
    cdef uint8_t *p
    if cap <= e.cap:
        return 0
    if e.total == 0 and cap < 2 * e.cap:      # length unknown: double, to copy less often
        cap = 2 * e.cap if 2 * e.cap < <uint32_t>FRAG_MAX_CAP else FRAG_MAX_CAP
    grow = (cap + cap // 32) - (e.cap + e.cap // 32)
    while t.memory + grow > t.max_memory and t.count > 1:
        frag_evict_oldest(t, <int32_t>(e - t.slots))
    if t.memory + grow > t.max_memory:
        return -1
    p = <uint8_t *>realloc(e.data, cap)
    if p == NULL:
        return -1
    e.data = p
    p = <uint8_t *>realloc(e.bitmap, cap // 64)
    if p == NULL:
        return -1
    memset(p + e.cap // 64, 0, (cap - e.cap) // 64)
    e.bitmap = p
    p = <uint8_t *>realloc(e.runs, cap // 64)
    if p == NULL:
        return -1
    memset(p + e.cap // 64, 0, (cap - e.cap) // 64)
    e.runs = p
    t.memory += grow
    e.cap = cap
    return 0


cdef int frag_add(fragtab_t *t, frag_t *e, uint32_t offset, const uint8_t *p, uint32_t n,
                  bint more, uint32_t hdrlen) noexcept nogil:
    """Add one fragment's payload; returns an FA_* value (the caller drops the datagram on
    FA_INVALID and FA_OVERLAP)."""
    cdef uint32_t end = offset + n, u, u0, u1, ucap, i, held = 0
    cdef bint split = 0
    if end > FRAG_MAX_PAYLOAD or (more and (n & 7)) or n == 0:
        return FA_INVALID               # Linux drops a datagram with an empty fragment (end == offset)
    if not more:
        if (e.total and e.total != end) or e.high > end:    # bytes past the end: Linux drops it all
            return FA_INVALID
        e.total = end
    elif e.total and end > e.total:
        return FA_INVALID
    u0 = offset >> 3
    u1 = (end + 7) >> 3
    ucap = e.cap >> 3
    for u in range(u0, u1 if u1 < ucap else ucap):
        if e.bitmap[u >> 3] & (1 << (u & 7)):
            held += 1
        if u > u0 and e.runs[u >> 3] & (1 << (u & 7)):
            split = 1
    if held:
        return FA_DUPLICATE if held == u1 - u0 and not split else FA_OVERLAP
    if frag_reserve(t, e, end) < 0:
        return FA_INVALID
    if offset == 0:
        e.hdrlen = <uint16_t>hdrlen
    if not (e.nfrags and offset == e.high):     # not at the end of the furthest: a run starts
        e.runs[u0 >> 3] |= (1 << (u0 & 7))
    if end > e.high:
        e.high = end
    for u in range(u0, u1):
        e.bitmap[u >> 3] |= (1 << (u & 7))
    e.units_have += u1 - u0
    memcpy(e.data + offset, p, n)
    e.nfrags += 1
    t.held += 1
    t.received += 1
    if e.total and e.units_have == (e.total + 7) >> 3 and (e.bitmap[0] & 1):
        return FA_DONE
    return FA_HELD


cdef int frag_input(fragtab_t *t, pkt_t *pk, uint8_t proto, uint32_t ident, uint32_t offset,
                    const uint8_t *p, uint32_t n, bint more, uint32_t hdrlen, frag_t **done,
                    int *reason) noexcept nogil:
    """Hold one fragment of ``pk``'s datagram: P_HELD until the datagram is complete (a duplicate
    is ignored), then P_OK with ``done`` set (its payload in done.data, out of the table; the
    caller parses on and gives it back with frag_release), or P_MALFORMED (a bad fragment, an
    overlapping one, or no memory: the datagram is dropped; its later fragments start anew)."""
    cdef frag_t *e = fragtab_get(t, pk.family, proto, pk.src, pk.dst, ident, pk.ts)
    cdef int r
    cdef int32_t i
    if e == NULL:
        reason[0] = MAL_BAD_FRAGMENT
        return P_MALFORMED
    i = <int32_t>(e - t.slots)
    r = frag_add(t, e, offset, p, n, more, hdrlen)
    if r == FA_INVALID or r == FA_OVERLAP:
        frag_drop(t, i)
        t.overlaps += r == FA_OVERLAP
        reason[0] = MAL_BAD_FRAGMENT
        return P_MALFORMED
    if r != FA_DONE:
        t.duplicates += r == FA_DUPLICATE
        return P_HELD
    frag_unlink(t, i)
    e.state = FE_DONE
    t.reassembled += 1
    done[0] = e
    pk.reassembled = 1
    pk.ip_len = e.hdrlen + e.total
    return P_OK
