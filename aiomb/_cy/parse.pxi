# Frame parsing: link layer, VLAN/QinQ, IPv4 (options, fragments), IPv6 (extension headers,
# fragments), TCP (options) and UDP. Pure C: no Python objects are touched.

cdef enum:
    P_OK = 0          # a TCP or UDP packet, fields filled in
    P_NOT_IP = 1      # not IP (ARP, LLDP, ...): counted, skipped
    P_OTHER = 2       # IP but neither TCP nor UDP (ICMP, ...): counted, skipped
    P_HELD = 3        # an IP fragment kept until its datagram is complete
    P_MALFORMED = 4   # counted under a reason

cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]

cdef inline uint32_t rd32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef int parse_link(pkt_t *pk, uint16_t linktype, uint32_t *l3off, uint16_t *ethertype, int *reason) noexcept nogil:
    """Find the network header: returns P_OK with l3off/ethertype set, or P_NOT_IP / P_MALFORMED."""
    cdef const uint8_t *f = pk.frame
    cdef uint32_t n = pk.caplen
    cdef uint32_t off
    cdef uint16_t et
    cdef uint32_t fam
    if linktype == LT_ETHERNET:
        if n < 14:
            reason[0] = MAL_TRUNCATED_L2
            return P_MALFORMED
        et = rd16(f + 12)
        off = 14
        while et == 0x8100 or et == 0x88a8 or et == 0x9100:
            if n < off + 4:
                reason[0] = MAL_TRUNCATED_L2
                return P_MALFORMED
            if pk.nvlan < MAX_VLAN:
                pk.vlan[pk.nvlan] = rd16(f + off) & 0x0fff
                pk.nvlan += 1
            et = rd16(f + off + 2)
            off += 4
    elif linktype == LT_RAW or linktype == LT_RAW_OLD or linktype == LT_RAW_BSD or linktype == LT_IPV4 or linktype == LT_IPV6:
        if n < 1:
            reason[0] = MAL_TRUNCATED_L2
            return P_MALFORMED
        off = 0
        et = 0x0800 if (f[0] >> 4) == 4 else 0x86dd
    elif linktype == LT_LINUX_SLL:
        if n < 16:
            reason[0] = MAL_TRUNCATED_L2
            return P_MALFORMED
        et = rd16(f + 14)
        off = 16
    elif linktype == LT_LINUX_SLL2:
        if n < 20:
            reason[0] = MAL_TRUNCATED_L2
            return P_MALFORMED
        et = rd16(f)
        off = 20
    elif linktype == LT_NULL or linktype == LT_LOOP:
        if n < 4:
            reason[0] = MAL_TRUNCATED_L2
            return P_MALFORMED
        fam = f[0] | (<uint32_t>f[1] << 8) | (<uint32_t>f[2] << 16) | (<uint32_t>f[3] << 24)
        if fam > 0xffff:
            fam = rd32(f)
        off = 4
        if fam == 2:
            et = 0x0800
        elif fam == 24 or fam == 28 or fam == 30 or fam == 10:
            et = 0x86dd
        else:
            return P_NOT_IP
    else:
        reason[0] = MAL_UNKNOWN_LINKTYPE
        return P_MALFORMED
    if et != 0x0800 and et != 0x86dd:
        return P_NOT_IP
    l3off[0] = off
    ethertype[0] = et
    return P_OK


cdef int parse_tcp_options(pkt_t *pk, const uint8_t *o, uint32_t n) noexcept nogil:
    """Decode MSS, window scale, SACK-permitted and timestamps; returns 0, or -1 if malformed."""
    cdef uint32_t i = 0
    cdef uint8_t kind, ln
    while i < n:
        kind = o[i]
        if kind == 0:
            return 0
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n:
            return -1
        ln = o[i + 1]
        if ln < 2 or i + ln > n:
            return -1
        if kind == 2 and ln == 4:
            pk.mss = rd16(o + i + 2)
        elif kind == 3 and ln == 3:
            pk.wscale = o[i + 2] if o[i + 2] <= 14 else 14
        elif kind == 4 and ln == 2:
            pk.sack_ok = 1
        elif kind == 8 and ln == 10:
            pk.has_ts = 1
            pk.ts_val = rd32(o + i + 2)
            pk.ts_ecr = rd32(o + i + 6)
        i += ln
    return 0


cdef int parse_l4(pkt_t *pk, const uint8_t *p, uint32_t n, int *reason) noexcept nogil:
    """Parse the TCP or UDP header at p (n bytes of transport header and payload available)."""
    cdef uint32_t hl, ulen
    pk.l4 = p
    pk.l4len = n
    if pk.proto == 6:
        if n < 20:
            reason[0] = MAL_TRUNCATED_TCP
            return P_MALFORMED
        hl = (p[12] >> 4) * 4
        if hl < 20 or hl > n:
            reason[0] = MAL_BAD_TCP_HEADER_LENGTH if hl < 20 else MAL_TRUNCATED_TCP
            return P_MALFORMED
        pk.sport = rd16(p)
        pk.dport = rd16(p + 2)
        pk.seq = rd32(p + 4)
        pk.ack = rd32(p + 8)
        pk.flags = p[13]
        pk.win = rd16(p + 14)
        pk.payload = p + hl
        pk.paylen = n - hl
        if (pk.flags & TH_SYN) and (pk.flags & (TH_RST | TH_FIN)) == (TH_RST | TH_FIN):
            reason[0] = MAL_BAD_TCP_FLAGS
            return P_MALFORMED
        if hl > 20 and parse_tcp_options(pk, p + 20, hl - 20) < 0:
            reason[0] = MAL_BAD_TCP_OPTION
            return P_MALFORMED
        return P_OK
    if pk.proto == 17:
        if n < 8:
            reason[0] = MAL_TRUNCATED_UDP
            return P_MALFORMED
        ulen = rd16(p + 4)
        if ulen < 8 or ulen > n:
            reason[0] = MAL_BAD_UDP_LENGTH
            return P_MALFORMED
        pk.sport = rd16(p)
        pk.dport = rd16(p + 2)
        pk.payload = p + 8
        pk.paylen = ulen - 8
        return P_OK
    return P_OTHER


cdef inline bint ipv6_ext(uint8_t nh) noexcept nogil:
    return nh == 0 or nh == 43 or nh == 60 or nh == 51 or nh == 135 or nh == 139 or nh == 140


cdef int walk_ipv6_ext(pkt_t *pk, uint8_t nh, const uint8_t *p, uint32_t n, uint32_t *skip,
                       uint8_t *last_nh, int *reason) noexcept nogil:
    """Skip IPv6 extension headers starting with type nh; stops at a fragment header or L4."""
    cdef uint32_t off = 0, hl
    while ipv6_ext(nh):
        if off + 8 > n:
            reason[0] = MAL_BAD_IPV6_EXTENSION
            return P_MALFORMED
        hl = (p[off + 1] + 2) * 4 if nh == 51 else (p[off + 1] + 1) * 8
        if off + hl > n:
            reason[0] = MAL_BAD_IPV6_EXTENSION
            return P_MALFORMED
        nh = p[off]
        off += hl
    skip[0] = off
    last_nh[0] = nh
    return P_OK
