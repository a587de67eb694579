# In-place rewriting of a packet's addresses and ports with incremental checksum updates
# (RFC 1624: HC' = ~(~HC + ~m + m')), for PacketView.rewrite on writable frames (inline ports).
# Pure C: no Python objects are touched.

cdef inline void wr16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xff

cdef inline uint32_t csum_delta(const uint8_t *old, const uint8_t *new, uint32_t n) noexcept nogil:
    """Sum of ~old + new over n bytes (n even), as 16-bit big-endian words, unfolded."""
    cdef uint32_t s = 0, i
    for i in range(0, n, 2):
        s += (~rd16(old + i)) & 0xffff
        s += rd16(new + i)
    return s

cdef inline void csum_apply(uint8_t *field, uint32_t delta, bint udp) noexcept nogil:
    cdef uint32_t s = ((~rd16(field)) & 0xffff) + delta
    cdef uint16_t c
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    c = (~s) & 0xffff
    if udp and c == 0:
        c = 0xffff            # 0 means "no checksum" in UDP
    wr16(field, c)

cdef int rewrite_packet(pkt_t *pk, const uint8_t *src, const uint8_t *dst, int sport, int dport) noexcept nogil:
    """Rewrite the frame's source/destination address (NULL: keep) and ports (-1: keep).

    Updates the IPv4 header checksum and the TCP/UDP checksum (an IPv4 UDP checksum of 0 stays
    0). Returns 0, or -1 when the packet cannot be rewritten in place (no transport header in
    the frame: a datagram reassembled from fragments, or a non-first fragment; or a packet
    inside a tunnel, whose outer checksums, GRE's or UDP's, may cover it).
    """
    cdef uint8_t *ip = <uint8_t *>pk.l3
    cdef uint8_t *l4 = <uint8_t *>pk.l4
    cdef uint32_t alen = 4 if pk.family == 4 else 16
    cdef uint32_t so = 12 if pk.family == 4 else 8
    cdef uint32_t do = 16 if pk.family == 4 else 24
    cdef uint32_t addr_delta = 0, port_delta = 0
    cdef uint8_t nb[2]
    cdef uint8_t *ck
    cdef bint udp = pk.proto == 17
    if pk.reassembled or pk.tunnels or l4 == NULL or l4 < pk.frame or l4 + (8 if udp else 20) > pk.frame + pk.caplen:
        return -1
    if src != NULL:
        addr_delta += csum_delta(ip + so, src, alen)
        memcpy(ip + so, src, alen)
        memcpy(pk.src, src, alen)
    if dst != NULL:
        addr_delta += csum_delta(ip + do, dst, alen)
        memcpy(ip + do, dst, alen)
        memcpy(pk.dst, dst, alen)
    if sport >= 0:
        wr16(nb, <uint16_t>sport)
        port_delta += csum_delta(l4, nb, 2)
        wr16(l4, <uint16_t>sport)
        pk.sport = <uint16_t>sport
    if dport >= 0:
        wr16(nb, <uint16_t>dport)
        port_delta += csum_delta(l4 + 2, nb, 2)
        wr16(l4 + 2, <uint16_t>dport)
        pk.dport = <uint16_t>dport
    if pk.family == 4 and addr_delta:
        csum_apply(ip + 10, addr_delta, 0)
    ck = l4 + (6 if udp else 16)
    if addr_delta + port_delta and not (udp and pk.family == 4 and rd16(ck) == 0):
        csum_apply(ck, addr_delta + port_delta, udp)
    return 0
