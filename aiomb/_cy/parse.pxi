# Frame parsing: link layer, VLAN/QinQ, PPPoE, MPLS, IPv4 (options), IPv6 (extension headers), TCP (options)
# and UDP; IP fragments go to the fragment table (frag.pxi), and a completed datagram is parsed
# on from its reassembled payload. Pure C: no Python objects are touched.


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
    if et == 0x8864:                    # a PPPoE session: its 6-byte header, then the PPP protocol
        if n < off + 8:
            reason[0] = MAL_TRUNCATED_L2
            return P_MALFORMED
        et = rd16(f + off + 6)
        off += 8
        et = 0x0800 if et == 0x0021 else (0x86dd if et == 0x0057 else 0)
    elif et == 0x8847 or et == 0x8848:  # MPLS: the label stack to its bottom entry, then IP by its version
        while True:
            if n < off + 5:
                reason[0] = MAL_TRUNCATED_L2
                return P_MALFORMED
            off += 4
            if f[off - 2] & 1:
                break
        et = 0x0800 if (f[off] >> 4) == 4 else (0x86dd if (f[off] >> 4) == 6 else 0)
    if et != 0x0800 and et != 0x86dd:
        return P_NOT_IP
    l3off[0] = off
    ethertype[0] = et
    return P_OK


cdef void parse_tcp_options(pkt_t *pk, const uint8_t *o, uint32_t n) noexcept nogil:
    """Decode MSS, window scale, SACK-permitted and timestamps as Linux's tcp_parse_options does:
    an option of the wrong size for its kind is skipped; at a kind byte with no length, a length
    below 2 or one running past the header the reading stops, the options before it kept, and
    ``bad_options`` is set. The endpoint takes such a segment, so the engine must too: dropping
    it would hide its bytes, FIN or RST from the middlebox."""
    cdef uint32_t i = 0
    cdef uint8_t kind, ln
    while i < n:
        kind = o[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n:
            pk.bad_options = 1
            return
        ln = o[i + 1]
        if ln < 2 or i + ln > n:
            pk.bad_options = 1
            return
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
        if hl > 20:
            parse_tcp_options(pk, p + 20, hl - 20)
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


cdef int parse_ipv4(pkt_t *pk, const uint8_t *p, uint32_t n, fragtab_t *frags, frag_t **done,
                    int *reason) noexcept nogil:
    cdef uint32_t ihl, tot, avail, fo
    cdef int r
    if n < 20:
        reason[0] = MAL_TRUNCATED_IP
        return P_MALFORMED
    if (p[0] >> 4) != 4:
        reason[0] = MAL_BAD_IP_VERSION
        return P_MALFORMED
    ihl = (p[0] & 15) * 4
    if ihl < 20:
        reason[0] = MAL_BAD_IP_HEADER_LENGTH
        return P_MALFORMED
    if ihl > n:
        reason[0] = MAL_TRUNCATED_IP
        return P_MALFORMED
    tot = rd16(p + 2)
    if tot < ihl:
        reason[0] = MAL_BAD_IP_TOTAL_LENGTH
        return P_MALFORMED
    if tot > n:
        if pk.caplen >= pk.wirelen:
            reason[0] = MAL_BAD_IP_TOTAL_LENGTH
            return P_MALFORMED
        avail = n          # cut by the capture's snaplen: keep what was captured
    else:
        avail = tot        # drop Ethernet padding
    pk.family = 4
    memcpy(pk.src, p + 12, 4)
    memcpy(pk.dst, p + 16, 4)
    pk.proto = p[9]
    pk.ip_len = tot
    fo = rd16(p + 6)
    if fo & 0x3fff:
        if pk.proto != 6 and pk.proto != 17:
            return P_OTHER
        if frags == NULL:
            return P_HELD
        r = frag_input(frags, pk, pk.proto, rd16(p + 4), (fo & 0x1fff) * 8, p + ihl, avail - ihl,
                       fo & 0x2000, ihl, done, reason)
        if r != P_OK:
            return r
        return parse_l4(pk, done[0].data, done[0].total, reason)
    return parse_l4(pk, p + ihl, avail - ihl, reason)


cdef int parse_ipv6(pkt_t *pk, const uint8_t *p, uint32_t n, fragtab_t *frags, frag_t **done,
                    int *reason) noexcept nogil:
    cdef uint32_t tot, avail, fo, skip, hl
    cdef uint8_t nh, fnh
    cdef const uint8_t *fh
    cdef int r
    if n < 40:
        reason[0] = MAL_TRUNCATED_IP
        return P_MALFORMED
    if (p[0] >> 4) != 6:
        reason[0] = MAL_BAD_IP_VERSION
        return P_MALFORMED
    tot = 40 + rd16(p + 4)
    if tot > n:
        if pk.caplen >= pk.wirelen:
            reason[0] = MAL_BAD_IP_TOTAL_LENGTH
            return P_MALFORMED
        avail = n
    else:
        avail = tot
    pk.family = 6
    memcpy(pk.src, p + 8, 16)
    memcpy(pk.dst, p + 24, 16)
    pk.ip_len = tot
    r = walk_ipv6_ext(pk, p[6], p + 40, avail - 40, &skip, &nh, reason)
    if r != P_OK:
        return r
    if nh != 44:
        pk.proto = nh
        return parse_l4(pk, p + 40 + skip, avail - 40 - skip, reason)
    if 40 + skip + 8 > avail:
        reason[0] = MAL_BAD_IPV6_EXTENSION
        return P_MALFORMED
    fh = p + 40 + skip
    fnh = fh[0]
    fo = rd16(fh + 2)
    if (fo & 0xfff9) == 0:     # atomic fragment: just skip the header
        r = walk_ipv6_ext(pk, fnh, fh + 8, avail - 40 - skip - 8, &hl, &nh, reason)
        if r != P_OK:
            return r
        pk.proto = nh
        return parse_l4(pk, fh + 8 + hl, avail - 40 - skip - 8 - hl, reason)
    if frags == NULL:
        return P_HELD
    r = frag_input(frags, pk, fnh, rd32(fh + 4), fo & 0xfff8, fh + 8, avail - 40 - skip - 8, fo & 1,
                   40 + skip, done, reason)
    if r != P_OK:
        return r
    r = walk_ipv6_ext(pk, done[0].proto, done[0].data, done[0].total, &hl, &nh, reason)
    if r != P_OK:
        return r
    pk.proto = nh
    return parse_l4(pk, done[0].data + hl, done[0].total - hl, reason)


cdef int parse_packet(pkt_t *pk, uint16_t linktype, fragtab_t *frags, frag_t **done,
                      int *reason) noexcept nogil:
    """Parse the frame in ``pk``: P_OK with its fields filled in (``done`` set when it completed
    a fragmented datagram), else what it is (P_NOT_IP, P_OTHER, P_HELD, or P_MALFORMED with
    ``reason`` set). With no fragment table (``frags`` NULL), a fragment is P_HELD, untouched."""
    cdef uint32_t off
    cdef uint16_t et
    cdef int r = parse_link(pk, linktype, &off, &et, reason)
    if r != P_OK:
        return r
    pk.l3_off = off
    if et == 0x0800:
        return parse_ipv4(pk, pk.frame + off, pk.caplen - off, frags, done, reason)
    return parse_ipv6(pk, pk.frame + off, pk.caplen - off, frags, done, reason)


cdef inline uint32_t sum16(const uint8_t *p, uint32_t n, uint32_t acc) noexcept nogil:
    """Add 16-bit big-endian words of p[:n] (an odd last byte padded with zero) to ``acc``."""
    cdef uint32_t i = 0
    while i + 1 < n:
        acc += (<uint32_t>p[i] << 8) | p[i + 1]
        i += 2
    if n & 1:
        acc += <uint32_t>p[n - 1] << 8
    return acc


cdef inline uint16_t fold16(uint32_t acc) noexcept nogil:
    while acc >> 16:
        acc = (acc & 0xffff) + (acc >> 16)
    return <uint16_t>acc


cdef bint checksums_ok(const pkt_t *pk) noexcept nogil:
    """Whether a parsed packet's IPv4 header and TCP/UDP checksums are right (RFC 1071). A frame
    the capture cut short cannot be checked: it passes; so does an IPv4 UDP checksum of 0 (none)."""
    cdef const uint8_t *ip = pk.frame + pk.l3_off
    cdef uint32_t acc
    if pk.caplen < pk.wirelen:
        return 1
    if pk.family == 4 and fold16(sum16(ip, (ip[0] & 15) * 4, 0)) != 0xffff:
        return 0
    if pk.proto == 17 and pk.family == 4 and rd16(pk.l4 + 6) == 0:
        return 1
    acc = sum16(pk.src, 4 if pk.family == 4 else 16, 0)
    acc = sum16(pk.dst, 4 if pk.family == 4 else 16, acc)
    acc += pk.proto + pk.l4len
    return fold16(sum16(pk.l4, pk.l4len, acc)) == 0xffff
