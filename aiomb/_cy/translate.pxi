# Address translation around the flow lookup (Flow.translate), conntrack-style: a flow is bound
# to its outer tuple, the addresses and ports it has beyond the middlebox, on the server's side.
# A packet that arrives with the outer reply tuple (outer server -> outer client) is translated
# to the flow's own (server -> client) before the lookup, so it lands on the flow as the
# server's; the client's packets leave with the outer tuple, rewritten after the receiver hook.
# One binding per flow: entries are indexed by flow slot (valid where the flow has
# FF_TRANSLATED) and chained in a hash of outer reply tuples. Pure C; nothing runs per packet
# while no flow is translated (the engine tests the count first).

ctypedef struct xlat_t:
    uint8_t client_ip[16]   # the client as seen beyond the middlebox (the replies' destination)
    uint8_t server_ip[16]   # the server as seen beyond it (the replies' source)
    uint16_t client_port
    uint16_t server_port
    uint8_t proto           # the flow's, so that a probe reads nothing else
    uint8_t family
    uint32_t hash           # of the outer reply tuple
    int32_t hnext           # the next flow slot in the bucket's chain, -1 for the last

ctypedef struct xlattab_t:
    xlat_t *ent             # by flow slot
    int32_t *buckets
    uint32_t cap            # flow slots the entries cover
    uint32_t nbuckets       # power of two, 0 before the first binding
    uint32_t count          # bindings now
    uint64_t translated     # packets translated, either way
    uint64_t untranslatable # writable frames that could not be rewritten in place (dropped)


cdef inline uint32_t reply_hash(uint8_t proto, const uint8_t *src, uint16_t sport,
                                const uint8_t *dst, uint16_t dport) noexcept nogil:
    # directed: a reply tuple and its reverse hash apart
    cdef uint64_t h = endpoint_hash(src, sport) * <uint64_t>0x9e3779b97f4a7c15 + endpoint_hash(dst, dport)
    return <uint32_t>(mix64(h ^ (<uint64_t>proto << 56)) >> 32)


cdef void xlat_free(xlattab_t *x) noexcept nogil:
    free(x.ent)
    free(x.buckets)
    x.ent = NULL
    x.buckets = NULL


cdef int32_t xlat_find(const xlattab_t *x, uint8_t proto, uint8_t family,
                       const uint8_t *src, uint16_t sport, const uint8_t *dst, uint16_t dport) noexcept nogil:
    """The slot of the flow whose outer reply tuple is src:sport -> dst:dport, or -1."""
    cdef uint32_t h = reply_hash(proto, src, sport, dst, dport)
    cdef int32_t i = x.buckets[h & (x.nbuckets - 1)]
    cdef const xlat_t *e
    while i >= 0:
        e = &x.ent[i]
        if e.hash == h and e.proto == proto and e.family == family \
                and e.server_port == sport and e.client_port == dport \
                and addr_equal(e.server_ip, src) and addr_equal(e.client_ip, dst):
            return i
        i = e.hnext
    return -1


cdef void xlat_unlink(xlattab_t *x, flowtab_t *t, int32_t slot) noexcept nogil:
    """Forget a flow's binding."""
    cdef int32_t *pp = &x.buckets[x.ent[slot].hash & (x.nbuckets - 1)]
    while pp[0] != slot:
        pp = &x.ent[pp[0]].hnext
    pp[0] = x.ent[slot].hnext
    t.flows[slot].fflags &= ~FF_TRANSLATED
    x.count -= 1


cdef int xlat_reserve(xlattab_t *x, const flowtab_t *t) except -1:
    """Entries for every slot of the flow table, buckets for one more binding (rehashed)."""
    cdef xlat_t *ent
    cdef int32_t *bk
    cdef uint32_t nb, i, b
    if x.cap < t.cap:
        ent = <xlat_t *>realloc(x.ent, t.cap * sizeof(xlat_t))
        if ent == NULL:
            raise MemoryError("no memory for the translation table")
        x.ent = ent
        x.cap = t.cap
    nb = x.nbuckets if x.nbuckets else 256
    while nb < 2 * (x.count + 1):
        nb *= 2
    if nb == x.nbuckets:
        return 0
    bk = <int32_t *>malloc(nb * sizeof(int32_t))
    if bk == NULL:
        raise MemoryError("no memory for the translation table")
    memset(bk, 0xff, nb * sizeof(int32_t))
    for i in range(x.cap):
        if t.flows[i].status != FS_FREE and t.flows[i].fflags & FF_TRANSLATED:
            b = x.ent[i].hash & (nb - 1)
            x.ent[i].hnext = bk[b]
            bk[b] = <int32_t>i
    free(x.buckets)
    x.buckets = bk
    x.nbuckets = nb
    return 0


cdef void xlat_link(xlattab_t *x, flowtab_t *t, int32_t slot) noexcept nogil:
    """Enter the binding written in x.ent[slot] (xlat_reserve first)."""
    cdef xlat_t *e = &x.ent[slot]
    cdef uint32_t b
    e.hash = reply_hash(e.proto, e.server_ip, e.server_port, e.client_ip, e.client_port)
    b = e.hash & (x.nbuckets - 1)
    e.hnext = x.buckets[b]
    x.buckets[b] = slot
    t.flows[slot].fflags |= FF_TRANSLATED
    x.count += 1


cdef int xlat_apply(pkt_t *pk, bint writable, const uint8_t *src, uint16_t sport,
                    const uint8_t *dst, uint16_t dport) noexcept nogil:
    """Give the packet this tuple: in the frame when writable (checksums updated, only the
    fields that change), always in the engine's view. Returns -1 when a writable frame has no
    transport header to rewrite (a datagram reassembled from IP fragments), else 0."""
    cdef bint ns = not addr_equal(pk.src, src), nd = not addr_equal(pk.dst, dst)
    cdef int r = 0
    if writable:
        r = rewrite_packet(pk, src if ns else NULL, dst if nd else NULL,
                           sport if sport != pk.sport else -1, dport if dport != pk.dport else -1)
        if r == 0:
            return 0
    memcpy(pk.src, src, 16)
    memcpy(pk.dst, dst, 16)
    pk.sport = sport
    pk.dport = dport
    return r
