# IP fragment reassembly (IPv4 and IPv6), bounded: at most max_datagrams in progress, each at
# most 65535 bytes, expired after a timeout of packet time. Overlaps: first copy wins.

cdef enum:
    FRAG_MAX_PAYLOAD = 65535
    FRAG_UNITS = 8192        # 8-byte units of 65536 bytes

ctypedef struct frag_t:
    int64_t first_ts
    uint32_t ident
    uint32_t total          # payload length once the last fragment is seen, else 0
    uint32_t units_have
    uint16_t hdrlen         # IP header length of the first fragment (for the datagram's IP length)
    uint8_t used
    uint8_t family
    uint8_t proto           # IPv4 protocol / IPv6 next header after the fragment header
    uint8_t src[16]
    uint8_t dst[16]
    uint8_t *data           # the reassembled transport header and payload
    uint8_t *bitmap         # FRAG_UNITS bits

ctypedef struct fragtab_t:
    frag_t *slots
    uint32_t n
    int64_t timeout
    uint64_t held           # fragments taken in
    uint64_t reassembled    # datagrams completed
    uint64_t expired        # datagrams dropped by timeout
    uint64_t evicted        # datagrams dropped because the table was full
    uint64_t overlaps       # fragments that overlapped bytes already held


cdef int fragtab_init(fragtab_t *t, uint32_t n, int64_t timeout) except -1:
    t.slots = <frag_t *>calloc(n if n else 1, sizeof(frag_t))
    if t.slots == NULL:
        raise MemoryError()
    t.n = n
    t.timeout = timeout
    return 0


cdef void frag_release(frag_t *e) noexcept nogil:
    free(e.data)
    free(e.bitmap)
    e.data = NULL
    e.bitmap = NULL
    e.used = 0


cdef void fragtab_free(fragtab_t *t) noexcept nogil:
    cdef uint32_t i
    if t.slots == NULL:
        return
    for i in range(t.n):
        if t.slots[i].used:
            frag_release(&t.slots[i])
    free(t.slots)
    t.slots = NULL


cdef void fragtab_expire(fragtab_t *t, int64_t now) noexcept nogil:
    cdef uint32_t i
    for i in range(t.n):
        if t.slots[i].used and now - t.slots[i].first_ts > t.timeout:
            frag_release(&t.slots[i])
            t.expired += 1


cdef frag_t *fragtab_get(fragtab_t *t, uint8_t family, uint8_t proto, const uint8_t *src,
                         const uint8_t *dst, uint32_t ident, int64_t now) noexcept nogil:
    """Find or make the entry for a datagram; NULL only when memory is exhausted."""
    cdef uint32_t i, free_i = t.n, oldest = 0
    cdef frag_t *e
    if t.n == 0:
        return NULL
    for i in range(t.n):
        e = &t.slots[i]
        if not e.used:
            if free_i == t.n:
                free_i = i
            continue
        if e.ident == ident and e.family == family and e.proto == proto \
                and memcmp(e.src, src, 16) == 0 and memcmp(e.dst, dst, 16) == 0:
            if now - e.first_ts <= t.timeout:
                return e
            frag_release(e)             # timed out (the periodic sweep has not come yet): start over
            t.expired += 1
            if free_i == t.n:
                free_i = i
            continue
        if e.first_ts < t.slots[oldest].first_ts or not t.slots[oldest].used:
            oldest = i
    if free_i == t.n:
        free_i = oldest
        frag_release(&t.slots[free_i])
        t.evicted += 1
    e = &t.slots[free_i]
    e.data = <uint8_t *>malloc(FRAG_MAX_PAYLOAD + 1)
    e.bitmap = <uint8_t *>calloc(FRAG_UNITS // 8, 1)
    if e.data == NULL or e.bitmap == NULL:
        frag_release(e)
        return NULL
    e.used = 1
    e.family = family
    e.proto = proto
    e.ident = ident
    memcpy(e.src, src, 16)
    memcpy(e.dst, dst, 16)
    e.first_ts = now
    e.total = 0
    e.units_have = 0
    e.hdrlen = 0
    return e


cdef int frag_add(fragtab_t *t, frag_t *e, uint32_t offset, const uint8_t *p, uint32_t n,
                  bint more, uint32_t hdrlen) noexcept nogil:
    """Add one fragment's payload; returns 1 when the datagram is complete, 0 if not, -1 if invalid."""
    cdef uint32_t end = offset + n, u, u0, u1, i
    cdef bint overlapped = 0
    if end > FRAG_MAX_PAYLOAD or (more and (n & 7)) or (n == 0 and more):
        return -1
    if not more:
        if e.total and e.total != end:
            return -1
        e.total = end
    elif e.total and end > e.total:
        return -1
    if offset == 0:
        e.hdrlen = <uint16_t>hdrlen
    u0 = offset >> 3
    u1 = (end + 7) >> 3
    for u in range(u0, u1):
        if e.bitmap[u >> 3] & (1 << (u & 7)):
            overlapped = 1
            continue
        e.bitmap[u >> 3] |= (1 << (u & 7))
        e.units_have += 1
        i = u << 3
        memcpy(e.data + i, p + (i - offset), (end - i) if end - i < 8 else 8)
    t.held += 1
    if overlapped:
        t.overlaps += 1
    if e.total and e.units_have == (e.total + 7) >> 3 and (e.bitmap[0] & 1):
        return 1
    return 0


cdef int frag_input(fragtab_t *t, pkt_t *pk, uint8_t proto, uint32_t ident, uint32_t offset,
                    const uint8_t *p, uint32_t n, bint more, uint32_t hdrlen, frag_t **done,
                    int *reason) noexcept nogil:
    """Hold one fragment of ``pk``'s datagram: P_HELD until the datagram is complete, then P_OK
    with ``done`` set (its payload in done.data; the caller parses on and releases it), or
    P_MALFORMED (a bad fragment, or no memory)."""
    cdef frag_t *e = fragtab_get(t, pk.family, proto, pk.src, pk.dst, ident, pk.ts)
    cdef int r
    if e == NULL:
        reason[0] = MAL_BAD_FRAGMENT
        return P_MALFORMED
    r = frag_add(t, e, offset, p, n, more, hdrlen)
    if r < 0:
        frag_release(e)
        reason[0] = MAL_BAD_FRAGMENT
        return P_MALFORMED
    if r == 0:
        return P_HELD
    t.reassembled += 1
    done[0] = e
    pk.reassembled = 1
    pk.ip_len = e.hdrlen + e.total
    return P_OK
