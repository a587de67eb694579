# The flow table: one entry per flow for both directions, keyed by the canonical 5-tuple (plus
# VLAN tags when configured). Entries live in a growable array (indices stay valid across
# growth), chained hash buckets, and one idle list per timeout class ordered by last activity.

ctypedef struct flowtab_t:
    flow_t *flows
    int32_t *buckets
    uint32_t cap            # allocated entries
    uint32_t max_flows      # configured bound
    uint32_t nbuckets       # power of two
    uint32_t count          # entries in use
    int32_t free_head       # free list through hnext
    int32_t lru_head[N_TCLASS]
    int32_t lru_tail[N_TCLASS]
    void **conns            # per entry, Zeek's view of the flow (conn_t, history.pxi) when kept, else NULL
    uint8_t vlan_in_key


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    x ^= x >> 33
    x *= <uint64_t>0xff51afd7ed558ccd
    x ^= x >> 33
    x *= <uint64_t>0xc4ceb9fe1a85ec53
    x ^= x >> 33
    return x


cdef inline uint64_t endpoint_hash(const uint8_t *addr, uint16_t port) noexcept nogil:
    cdef uint64_t a0, a1
    memcpy(&a0, addr, 8)
    memcpy(&a1, addr + 8, 8)
    return mix64(a0 ^ mix64(a1 ^ (<uint64_t>port << 32) ^ <uint64_t>0x9e3779b97f4a7c15))


cdef inline uint32_t key_hash(const pkt_t *pk, bint vlan_in_key) noexcept nogil:
    # symmetric in the two endpoints, so both directions land in one bucket
    cdef uint64_t h = endpoint_hash(pk.src, pk.sport) + endpoint_hash(pk.dst, pk.dport)
    h ^= <uint64_t>pk.proto << 56
    if vlan_in_key:
        h ^= (<uint64_t>pk.nvlan << 40) ^ (<uint64_t>pk.vlan[0] << 20) ^ pk.vlan[1]
    return <uint32_t>(mix64(h) >> 32)


cdef inline uint32_t shard_of(const pkt_t *pk, bint vlan_in_key, uint32_t count) noexcept nogil:
    """The shard (of ``count``) whose engine tracks the packet's flow: the high bits of the
    symmetric key hash, so both directions land in one shard (Engine(shard=), ShardRing)."""
    return <uint32_t>((<uint64_t>key_hash(pk, vlan_in_key) * count) >> 32)


cdef int flowtab_init(flowtab_t *t, uint32_t max_flows, bint vlan_in_key) except -1:
    cdef int i
    memset(t, 0, sizeof(flowtab_t))
    t.max_flows = max_flows
    t.vlan_in_key = vlan_in_key
    t.free_head = -1
    for i in range(N_TCLASS):
        t.lru_head[i] = -1
        t.lru_tail[i] = -1
    t.nbuckets = 1024
    t.buckets = <int32_t *>malloc(t.nbuckets * sizeof(int32_t))
    if t.buckets == NULL:
        raise MemoryError()
    memset(t.buckets, 0xff, t.nbuckets * sizeof(int32_t))
    return 0


cdef void flowtab_free(flowtab_t *t) noexcept nogil:
    free(t.flows)
    free(t.buckets)
    free(t.conns)
    t.flows = NULL
    t.buckets = NULL
    t.conns = NULL


cdef int flowtab_keep_conns(flowtab_t *t) except -1:
    """Give every entry (now and after growth) a slot for Zeek's view of its flow."""
    t.conns = <void **>calloc(t.cap if t.cap else 1, sizeof(void *))
    if t.conns == NULL:
        raise MemoryError()
    return 0


cdef int flowtab_grow(flowtab_t *t) noexcept nogil:
    """Double the entry array (bounded by max_flows) and rehash; returns -1 when out of memory."""
    cdef uint32_t newcap = t.cap * 2 if t.cap else 1024
    cdef uint32_t i, nb
    cdef flow_t *nf
    cdef int32_t *bk
    cdef void **nc
    if newcap > t.max_flows:
        newcap = t.max_flows
    if newcap <= t.cap:
        return -1
    if t.conns != NULL:
        nc = <void **>realloc(t.conns, newcap * sizeof(void *))
        if nc == NULL:
            return -1
        memset(nc + t.cap, 0, (newcap - t.cap) * sizeof(void *))
        t.conns = nc
    nf = <flow_t *>realloc(t.flows, newcap * sizeof(flow_t))
    if nf == NULL:
        return -1
    t.flows = nf
    i = newcap
    while i > t.cap:
        i -= 1
        nf[i].status = FS_FREE
        nf[i].hnext = t.free_head
        t.free_head = <int32_t>i
    t.cap = newcap
    nb = t.nbuckets
    while nb < newcap:
        nb *= 2
    if nb != t.nbuckets:
        bk = <int32_t *>malloc(nb * sizeof(int32_t))
        if bk == NULL:
            return 0      # keep the old buckets: longer chains, still correct
        memset(bk, 0xff, nb * sizeof(int32_t))
        free(t.buckets)
        t.buckets = bk
        t.nbuckets = nb
        for i in range(t.cap):
            if nf[i].status != FS_FREE:
                nf[i].hnext = bk[nf[i].hash & (nb - 1)]
                bk[nf[i].hash & (nb - 1)] = <int32_t>i
    return 0


cdef inline bint addr_equal(const uint8_t *a, const uint8_t *b) noexcept nogil:
    cdef uint64_t a0, a1, b0, b1
    memcpy(&a0, a, 8)
    memcpy(&a1, a + 8, 8)
    memcpy(&b0, b, 8)
    memcpy(&b1, b + 8, 8)
    return a0 == b0 and a1 == b1


cdef inline bint vlan_equal(const flow_t *f, const pkt_t *pk) noexcept nogil:
    return f.nvlan == pk.nvlan and f.vlan[0] == pk.vlan[0] and f.vlan[1] == pk.vlan[1]


cdef int32_t flowtab_lookup(flowtab_t *t, const pkt_t *pk, uint32_t h, int *side) noexcept nogil:
    """Find the packet's flow; sets side to the sender's side (0 client, 1 server)."""
    cdef int32_t i = t.buckets[h & (t.nbuckets - 1)]
    cdef flow_t *f
    while i >= 0:
        f = &t.flows[i]
        if f.hash == h and f.proto == pk.proto and f.family == pk.family \
                and (not t.vlan_in_key or vlan_equal(f, pk)):
            if f.client_port == pk.sport and f.server_port == pk.dport \
                    and addr_equal(f.client_ip, pk.src) and addr_equal(f.server_ip, pk.dst):
                side[0] = 0
                return i
            if f.client_port == pk.dport and f.server_port == pk.sport \
                    and addr_equal(f.client_ip, pk.dst) and addr_equal(f.server_ip, pk.src):
                side[0] = 1
                return i
        i = f.hnext
    return -1


cdef inline void lru_unlink(flowtab_t *t, int32_t i) noexcept nogil:
    cdef flow_t *f = &t.flows[i]
    if f.lru_prev >= 0:
        t.flows[f.lru_prev].lru_next = f.lru_next
    else:
        t.lru_head[f.tclass] = f.lru_next
    if f.lru_next >= 0:
        t.flows[f.lru_next].lru_prev = f.lru_prev
    else:
        t.lru_tail[f.tclass] = f.lru_prev


cdef inline void lru_append(flowtab_t *t, int32_t i, uint8_t tclass) noexcept nogil:
    cdef flow_t *f = &t.flows[i]
    f.tclass = tclass
    f.lru_next = -1
    f.lru_prev = t.lru_tail[tclass]
    if f.lru_prev >= 0:
        t.flows[f.lru_prev].lru_next = i
    else:
        t.lru_head[tclass] = i
    t.lru_tail[tclass] = i


cdef inline void lru_touch(flowtab_t *t, int32_t i, uint8_t tclass, int64_t now) noexcept nogil:
    """A packet of the entry at clock ``now``: move it to the tail of its (possibly new) timeout
    class list."""
    t.flows[i].active_ts = now
    if t.lru_tail[tclass] == i:
        return
    lru_unlink(t, i)
    lru_append(t, i, tclass)


cdef int32_t flowtab_insert(flowtab_t *t, const pkt_t *pk, uint32_t h, bint sender_is_client) noexcept nogil:
    """Take a free entry for the packet's flow (oriented as given); -1 when the table is full."""
    cdef int32_t i
    cdef flow_t *f
    cdef uint32_t b
    if t.free_head < 0 and flowtab_grow(t) < 0:
        return -1
    i = t.free_head
    f = &t.flows[i]
    t.free_head = f.hnext
    memset(f, 0, sizeof(flow_t))
    f.hash = h
    f.proto = pk.proto
    f.family = pk.family
    if sender_is_client:
        memcpy(f.client_ip, pk.src, 16)
        memcpy(f.server_ip, pk.dst, 16)
        f.client_port = pk.sport
        f.server_port = pk.dport
    else:
        memcpy(f.client_ip, pk.dst, 16)
        memcpy(f.server_ip, pk.src, 16)
        f.client_port = pk.dport
        f.server_port = pk.sport
    f.nvlan = pk.nvlan
    f.vlan[0] = pk.vlan[0]
    f.vlan[1] = pk.vlan[1]
    f.side[0].wscale = 0xff
    f.side[1].wscale = 0xff
    f.status = FS_OPEN
    b = h & (t.nbuckets - 1)
    f.hnext = t.buckets[b]
    t.buckets[b] = i
    t.count += 1
    lru_append(t, i, TC_UDP if pk.proto == 17 else TC_TCP_OPENING)
    return i


cdef void flowtab_remove(flowtab_t *t, int32_t i) noexcept nogil:
    cdef flow_t *f = &t.flows[i]
    cdef int32_t *pp = &t.buckets[f.hash & (t.nbuckets - 1)]
    while pp[0] != i:
        pp = &t.flows[pp[0]].hnext
    pp[0] = f.hnext
    lru_unlink(t, i)
    f.status = FS_FREE
    f.hnext = t.free_head
    t.free_head = i
    t.count -= 1
