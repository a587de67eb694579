# Frame parsing: the link layer (Ethernet and 802.3 LLC/SNAP, raw IP, Linux SLL/SLL2, BSD loopback,
# PPP, Cisco HDLC, FDDI, 802.11 and radiotap, NFLOG, pflog), VLAN/QinQ, PPPoE, MPLS, IPv4 (options),
# IPv6 (extension headers), TCP (options) and UDP; IP fragments go to the fragment table (frag.pxi),
# and a completed datagram is parsed on from its reassembled payload; a tunnel's packet is looked
# through (tunnel.pxi). Pure C: no Python objects are touched.


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


cdef inline uint16_t bsd_family_ethertype(uint32_t family) noexcept nogil:
    """The ethertype of a BSD address family (loopback and pflog headers): AF_INET is 2 everywhere,
    AF_INET6 24, 28 or 30 by the BSD (10 on Linux); 0 for the others."""
    if family == 2:
        return 0x0800
    return 0x86dd if family == 24 or family == 28 or family == 30 or family == 10 else 0


cdef inline uint16_t ppp_ethertype(uint16_t protocol) noexcept nogil:
    """The ethertype of a PPP protocol number: IPv4 and IPv6; 0 for the others (LCP, IPCP, ...)."""
    return 0x0800 if protocol == 0x0021 else (0x86dd if protocol == 0x0057 else 0)


cdef int ppp_header(const uint8_t *f, uint32_t n, uint32_t *off, uint16_t *et) noexcept nogil:
    """A PPP header at ``off`` (RFC 1661/1662): the address and control bytes ff 03 when present,
    then the protocol, one byte when compressed (its low bit set), else two. Returns 0, or -1
    when the frame ends inside it."""
    cdef uint32_t o = off[0]
    if n >= o + 2 and f[o] == 0xff and f[o + 1] == 0x03:
        o += 2
    if n < o + 1:
        return -1
    if f[o] & 1:
        et[0] = ppp_ethertype(f[o])
        off[0] = o + 1
        return 0
    if n < o + 2:
        return -1
    et[0] = ppp_ethertype(rd16(f + o))
    off[0] = o + 2
    return 0


cdef int llc_snap(const uint8_t *f, uint32_t n, uint32_t *off, uint16_t *et) noexcept nogil:
    """An 802.2 LLC header at ``off``: SNAP (aa aa 03, an OUI, then an ethertype) gives the
    ethertype; any other LLC carries no IP (0). Returns 0, or -1 when the frame ends inside it."""
    cdef uint32_t o = off[0]
    if n < o + 3:
        return -1
    if f[o] != 0xaa or f[o + 1] != 0xaa or f[o + 2] != 0x03:
        et[0] = 0
        return 0
    if n < o + 8:
        return -1
    et[0] = rd16(f + o + 6)
    off[0] = o + 8
    return 0


cdef int ethernet_header(pkt_t *pk, const uint8_t *f, uint32_t n, uint32_t *off, uint16_t *et) noexcept nogil:
    """An Ethernet header at ``off``, its VLAN and QinQ tags (kept in ``pk.vlan``), and the LLC
    header of an 802.3 frame. Returns 0, or -1 when the frame ends inside them."""
    cdef uint32_t o = off[0]
    if n < o + 14:
        return -1
    et[0] = rd16(f + o + 12)
    o += 14
    while et[0] == 0x8100 or et[0] == 0x88a8 or et[0] == 0x9100:
        if n < o + 4:
            return -1
        if pk.nvlan < MAX_VLAN:
            pk.vlan[pk.nvlan] = rd16(f + o) & 0x0fff
            pk.nvlan += 1
        et[0] = rd16(f + o + 2)
        o += 4
    off[0] = o
    if et[0] <= 1500:                   # an 802.3 length: an LLC header follows
        return llc_snap(f, n, off, et)
    return 0


cdef int shim_layers(const uint8_t *f, uint32_t n, uint32_t *off, uint16_t *et) noexcept nogil:
    """What may sit between a link header (or a tunnel's) and IP: a PPPoE session's header and
    its PPP protocol, or an MPLS label stack to its bottom entry (then IP by its version).
    Returns 0, or -1 when the frame ends inside them."""
    cdef uint32_t o = off[0]
    if et[0] == 0x8864:
        off[0] = o + 6
        return ppp_header(f, n, off, et)
    if et[0] == 0x8847 or et[0] == 0x8848:
        while True:
            if n < o + 5:
                return -1
            o += 4
            if f[o - 2] & 1:
                break
        et[0] = 0x0800 if (f[o] >> 4) == 4 else (0x86dd if (f[o] >> 4) == 6 else 0)
        off[0] = o
    return 0


cdef int ieee80211_header(const uint8_t *f, uint32_t n, uint32_t *off, uint16_t *et) noexcept nogil:
    """An 802.11 MAC header at ``off``, then its LLC. Only a data frame that carries data, is not
    protected (encrypted), is no fragment of an MSDU and no A-MSDU can hold an IP packet; the rest
    give 0. The header is 24 bytes, 30 with four addresses, 2 more with QoS, 4 more with HT
    control (QoS and the order bit). Returns 0, or -1 when the frame ends inside it."""
    cdef uint32_t o = off[0]
    cdef uint32_t size = 24
    cdef uint8_t fc0, fc1
    if n < o + 24:
        return -1
    fc0 = f[o]
    fc1 = f[o + 1]
    et[0] = 0
    if (fc0 & 0x0c) != 0x08 or (fc0 & 0x40) or (fc1 & 0x44) or (f[o + 22] & 0x0f):
        return 0                        # not data, no data (null/CF subtypes), protected, a fragment
    if (fc1 & 0x03) == 0x03:
        size += 6
    if fc0 & 0x80:
        if n < o + size + 2:
            return -1
        if f[o + size] & 0x80:
            return 0                    # an A-MSDU: subframes, not one LLC packet
        size += 2
        if fc1 & 0x80:
            size += 4
    off[0] = o + size
    return llc_snap(f, n, off, et)


cdef int nflog_payload(const uint8_t *f, uint32_t n, uint32_t *off, uint16_t *et) noexcept nogil:
    """Linux NFLOG: a 4-byte header (address family, version, resource id), then TLVs (length
    including their 4-byte header, type; padded to 4 bytes) up to NFULA_PAYLOAD (type 9), the
    packet. Lengths and types are in the byte order of the machine that logged them: little-endian
    unless that reading gives an impossible type and big-endian does not. Returns 0, or -1 for a
    TLV that is cut short or shorter than its header."""
    cdef uint32_t o = 4
    cdef uint32_t length, kind
    if n < 4:
        return -1
    et[0] = 0x0800 if f[0] == 2 else (0x86dd if f[0] == 10 else 0)
    while True:
        if n < o + 4:
            return -1
        length = f[o] | (<uint32_t>f[o + 1] << 8)
        kind = f[o + 2] | (<uint32_t>f[o + 3] << 8)
        if kind > 0xff and rd16(f + o + 2) <= 0xff:
            length = rd16(f + o)
            kind = rd16(f + o + 2)
        if length < 4 or n < o + length:
            return -1
        if kind == 9:
            off[0] = o + 4
            return 0
        o += (length + 3) & ~3u


cdef int parse_link(pkt_t *pk, uint16_t linktype, uint32_t *l3off, uint16_t *ethertype, int *reason) noexcept nogil:
    """Find the network header: returns P_OK with l3off/ethertype set (0 for a frame that carries
    no IP: parse_network says P_NOT_IP), or P_MALFORMED."""
    cdef const uint8_t *f = pk.frame
    cdef uint32_t n = pk.caplen
    cdef uint32_t off = 0
    cdef uint16_t et = 0
    cdef uint32_t fam
    cdef int cut = 0
    if linktype == LT_ETHERNET:
        cut = ethernet_header(pk, f, n, &off, &et)
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
        et = bsd_family_ethertype(fam)
    elif linktype == LT_C_HDLC or ((linktype == LT_PPP_HDLC or linktype == LT_PPP) and n >= 1 and (f[0] == 0x0f or f[0] == 0x8f)):
        if n < 4:                       # Cisco HDLC: address (0x0f unicast, 0x8f broadcast), control, ethertype
            reason[0] = MAL_TRUNCATED_L2
            return P_MALFORMED
        et = rd16(f + 2)
        off = 4
    elif linktype == LT_PPP or linktype == LT_PPP_HDLC:
        cut = ppp_header(f, n, &off, &et)
    elif linktype == LT_FDDI:
        off = 13                        # frame control, destination, source; then LLC
        cut = llc_snap(f, n, &off, &et)
    elif linktype == LT_IEEE802_11:
        cut = ieee80211_header(f, n, &off, &et)
    elif linktype == LT_IEEE802_11_RADIOTAP:
        if n < 4:                       # version, pad, the header's length (little-endian), ...
            reason[0] = MAL_TRUNCATED_L2
            return P_MALFORMED
        off = f[2] | (<uint32_t>f[3] << 8)
        cut = ieee80211_header(f, n, &off, &et)
    elif linktype == LT_NFLOG:
        cut = nflog_payload(f, n, &off, &et)
    elif linktype == LT_PFLOG:
        if n < 2:                       # OpenBSD pf: the header's length (padded to 4), address family
            reason[0] = MAL_TRUNCATED_L2
            return P_MALFORMED
        off = (<uint32_t>f[0] + 3) & ~3u
        et = bsd_family_ethertype(f[1])
        if n < off:
            cut = -1
    else:
        reason[0] = MAL_UNKNOWN_LINKTYPE
        return P_MALFORMED
    if cut or shim_layers(f, n, &off, &et):
        reason[0] = MAL_TRUNCATED_L2
        return P_MALFORMED
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
        if ulen == 0 and pk.family == 6:
            ulen = n + pk.uncaptured    # as Linux's udp6 takes it: all of the payload (a jumbogram's rule)
        if ulen < 8 or ulen > n + pk.uncaptured:
            reason[0] = MAL_BAD_UDP_LENGTH
            return P_MALFORMED
        pk.l4len = ulen                 # the datagram; bytes after it are not its (Linux trims them)
        pk.sport = rd16(p)
        pk.dport = rd16(p + 2)
        pk.payload = p + 8
        pk.paylen = (ulen if ulen <= n else n) - 8      # what was captured of it
        return P_OK
    return P_OTHER


cdef inline bint ipv6_ext(uint8_t nh) noexcept nogil:
    return nh == 0 or nh == 43 or nh == 60 or nh == 51    # not 135, 139, 140: nothing in Linux takes them


cdef bint ipv6_options_ok(const uint8_t *h, uint32_t hl, bint hop_by_hop) noexcept nogil:
    """Whether Linux's ip6_parse_tlv takes the options of a hop-by-hop or destination options
    header (h, hl bytes): each option within the header, at most 7 bytes of padding in a row,
    PadN bytes all zero, at most 8 other options (max_hbh_opts_cnt, max_dst_opts_cnt); an option
    Linux does not know whose type's two high bits say discard (01, 10, 11) drops the packet.
    Known: a hop-by-hop router alert, which must be 4 bytes long. The jumbo payload option (0xc2)
    counts as unknown: Linux drops it when the IPv6 payload length is not 0, and a packet whose
    payload length is 0 never gets here."""
    cdef uint32_t i = 2, ln, j, pad = 0, count = 0
    cdef uint8_t kind
    while i < hl:
        kind = h[i]
        if kind == 0:                   # Pad1
            pad += 1
            if pad > 7:
                return 0
            i += 1
            continue
        if i + 2 > hl:
            return 0
        ln = h[i + 1] + 2
        if i + ln > hl:
            return 0
        if kind == 1:                   # PadN
            pad += ln
            if pad > 7:
                return 0
            for j in range(i + 2, i + ln):
                if h[j]:
                    return 0
        else:
            count += 1
            if count > 8:
                return 0
            if hop_by_hop and kind == 5:
                if ln != 4:
                    return 0
            elif kind & 0xc0:
                return 0
            pad = 0
        i += ln
    return 1


cdef int walk_ipv6_ext(pkt_t *pk, uint8_t nh, const uint8_t *p, uint32_t n, bint first, uint32_t *skip,
                       uint8_t *last_nh, int *reason) noexcept nogil:
    """Skip IPv6 extension headers starting with type nh (``first``: right after the IPv6 header);
    stops at a fragment header or L4. Headers Linux drops are malformed (RFC 8200 section 4): a
    hop-by-hop header anywhere but first, options ipv6_options_ok refuses, a routing header with
    segments left (Linux forwards it or drops it, RFC 5095) or of type 2, 3 or 4 (mobile IPv6,
    RPL, segment routing: dropped unless configured)."""
    cdef uint32_t off = 0, hl
    while ipv6_ext(nh):
        if nh == 0 and (off or not first):
            reason[0] = MAL_IPV6_HOP_BY_HOP_NOT_FIRST
            return P_MALFORMED
        if off + 8 > n:
            reason[0] = MAL_BAD_IPV6_EXTENSION
            return P_MALFORMED
        hl = (p[off + 1] + 2) * 4 if nh == 51 else (p[off + 1] + 1) * 8
        if off + hl > n:
            reason[0] = MAL_BAD_IPV6_EXTENSION
            return P_MALFORMED
        if (nh == 0 or nh == 60) and not ipv6_options_ok(p + off, hl, nh == 0):
            reason[0] = MAL_BAD_IPV6_OPTIONS
            return P_MALFORMED
        if nh == 43 and (p[off + 3] or 2 <= p[off + 2] <= 4):
            reason[0] = MAL_IPV6_ROUTING_HEADER
            return P_MALFORMED
        nh = p[off]
        off += hl
    skip[0] = off
    last_nh[0] = nh
    return P_OK


cdef int check_ipv4_options(const uint8_t *o, uint32_t n, int *reason) noexcept nogil:
    """Check an IPv4 header's options (o, n bytes) as Linux's ip_options_compile and
    ip_rcv_options do on receive: P_OK, or P_MALFORMED with MAL_BAD_IP_OPTIONS for a list it
    rejects (an option with no length byte, a length below 2 or past the header; a source route,
    record route or timestamp too short, its pointer too low or no room at it, or twice; a full
    timestamp whose overflow count is at 15; a router alert shorter than 4 bytes), or
    MAL_IP_SOURCE_ROUTE for a loose or strict source route (Linux drops it: accept_source_route
    is 0 by default)."""
    cdef uint32_t i = 0, ln, ptr
    cdef uint8_t kind, flag
    cdef bint srr = 0, rr = 0, ts = 0
    while i < n:
        kind = o[i]
        if kind == 0:                   # end of the list
            break
        if kind == 1:                   # no operation
            i += 1
            continue
        if i + 2 > n:
            reason[0] = MAL_BAD_IP_OPTIONS
            return P_MALFORMED
        ln = o[i + 1]
        if ln < 2 or i + ln > n:
            reason[0] = MAL_BAD_IP_OPTIONS
            return P_MALFORMED
        ptr = o[i + 2] if ln > 2 else 0
        if kind == 131 or kind == 137:  # loose, strict source route
            if srr or ln < 3 or ptr < 4:
                reason[0] = MAL_BAD_IP_OPTIONS
                return P_MALFORMED
            srr = 1
        elif kind == 7:                 # record route
            if rr or ln < 3 or ptr < 4 or (ptr <= ln and ptr + 3 > ln):
                reason[0] = MAL_BAD_IP_OPTIONS
                return P_MALFORMED
            rr = 1
        elif kind == 68:                # timestamp
            if ts or ln < 4 or ptr < 5:
                reason[0] = MAL_BAD_IP_OPTIONS
                return P_MALFORMED
            flag = o[i + 3] & 15
            if (ptr <= ln and (ptr + 3 > ln or ((flag == 1 or flag == 3) and ptr + 7 > ln))) \
                    or (ptr > ln and flag != 3 and o[i + 3] >> 4 == 15):
                reason[0] = MAL_BAD_IP_OPTIONS
                return P_MALFORMED
            ts = 1
        elif kind == 148 and ln < 4:    # router alert
            reason[0] = MAL_BAD_IP_OPTIONS
            return P_MALFORMED
        i += ln
    if srr:
        reason[0] = MAL_IP_SOURCE_ROUTE
        return P_MALFORMED
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
    if pk.verify_checksums and fold16(sum16(p, ihl, 0)) != 0xffff:
        reason[0] = MAL_BAD_CHECKSUM    # Linux's ip_rcv drops it, a fragment before reassembly too
        return P_MALFORMED
    tot = rd16(p + 2)
    if tot == 0 and not pk.verify_checksums:
        # Zero, as a capture on the sending host shows a segment its NIC cuts up (TCP segmentation
        # offload; Linux's BIG TCP past 64 KiB): the packet is the rest of the frame, as Wireshark
        # and Zeek take it. A receiver drops it, so with verified checksums it stays malformed.
        tot = n + (pk.wirelen - pk.caplen if pk.wirelen > pk.caplen else 0)
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
    pk.uncaptured = tot - avail
    pk.family = 4
    pk.l3 = p
    if pk.tunnels:                      # inside IPv6: no byte of its addresses may stay
        memset(pk.src, 0, 16)
        memset(pk.dst, 0, 16)
    memcpy(pk.src, p + 12, 4)
    memcpy(pk.dst, p + 16, 4)
    pk.proto = p[9]
    pk.ip_len = tot
    if ihl > 20:
        r = check_ipv4_options(p + 20, ihl - 20, reason)
        if r != P_OK:
            return r
    fo = rd16(p + 6)
    if fo & 0x3fff:
        if not followed(pk.proto):
            return P_OTHER
        if frags == NULL:
            return P_HELD
        if done[0] != NULL:
            return P_OTHER      # inside a tunnel's datagram rebuilt from fragments: not followed
        r = frag_input(frags, pk, pk.proto, rd16(p + 4), (fo & 0x1fff) * 8, p + ihl, avail - ihl,
                       fo & 0x2000, ihl, done, reason)
        if r != P_OK:
            return r
        pk.uncaptured = 0       # the datagram is what its fragments brought
        return parse_transport(pk, done[0].data, done[0].total, frags, done, reason)
    return parse_transport(pk, p + ihl, avail - ihl, frags, done, reason)


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
    pk.uncaptured = tot - avail
    pk.family = 6
    pk.l3 = p
    memcpy(pk.src, p + 8, 16)
    memcpy(pk.dst, p + 24, 16)
    pk.ip_len = tot
    r = walk_ipv6_ext(pk, p[6], p + 40, avail - 40, 1, &skip, &nh, reason)
    if r != P_OK:
        return r
    if nh != 44:
        pk.proto = nh
        return parse_transport(pk, p + 40 + skip, avail - 40 - skip, frags, done, reason)
    if 40 + skip + 8 > avail:
        reason[0] = MAL_BAD_IPV6_EXTENSION
        return P_MALFORMED
    fh = p + 40 + skip
    fnh = fh[0]
    fo = rd16(fh + 2)
    if (fo & 0xfff9) == 0:     # atomic fragment: just skip the header
        r = walk_ipv6_ext(pk, fnh, fh + 8, avail - 40 - skip - 8, 0, &hl, &nh, reason)
        if r != P_OK:
            return r
        pk.proto = nh
        return parse_transport(pk, fh + 8 + hl, avail - 40 - skip - 8 - hl, frags, done, reason)
    if frags == NULL:
        return P_HELD
    if done[0] != NULL:
        return P_OTHER          # inside a tunnel's datagram rebuilt from fragments: not followed
    r = frag_input(frags, pk, fnh, rd32(fh + 4), fo & 0xfff8, fh + 8, avail - 40 - skip - 8, fo & 1,
                   40 + skip, done, reason)
    if r != P_OK:
        return r
    pk.uncaptured = 0           # the datagram is what its fragments brought
    r = walk_ipv6_ext(pk, done[0].proto, done[0].data, done[0].total, 0, &hl, &nh, reason)
    if r != P_OK:
        return r
    pk.proto = nh
    return parse_transport(pk, done[0].data + hl, done[0].total - hl, frags, done, reason)


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
    return parse_network(pk, et, pk.frame + off, pk.caplen - off, frags, done, reason)


cdef int parse_network(pkt_t *pk, uint16_t et, const uint8_t *p, uint32_t n, fragtab_t *frags,
                       frag_t **done, int *reason) noexcept nogil:
    """The packet of ethertype ``et`` at p (n bytes): IPv4 or IPv6, else P_NOT_IP."""
    if et == 0x0800:
        return parse_ipv4(pk, p, n, frags, done, reason)
    if et == 0x86dd:
        return parse_ipv6(pk, p, n, frags, done, reason)
    return P_NOT_IP


cdef bint checksums_ok(const pkt_t *pk) noexcept nogil:
    """Whether a parsed packet's TCP/UDP checksum is right (RFC 1071), over the UDP length for
    UDP; parsing checked the IPv4 header's (``verify_checksums``). A frame the capture cut short
    cannot be checked: it passes; so does an IPv4 UDP checksum of 0 (none)."""
    cdef uint32_t acc
    if pk.caplen < pk.wirelen:
        return 1
    if pk.proto == 17 and pk.family == 4 and rd16(pk.l4 + 6) == 0:
        return 1
    acc = sum16(pk.src, 4 if pk.family == 4 else 16, 0)
    acc = sum16(pk.dst, 4 if pk.family == 4 else 16, acc)
    acc += pk.proto + pk.l4len
    return fold16(sum16(pk.l4, pk.l4len, acc)) == 0xffff
