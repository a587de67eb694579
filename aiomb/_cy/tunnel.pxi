# Tunnels: the packet inside another. IP-in-IP (protocols 4 and 41) and GRE (47; ERSPAN, transparent
# Ethernet bridging, MPLS; version 1, PPTP's) are looked through during the parse: the frame is the
# inner packet's, the outer one makes no flow. A UDP tunnel (VXLAN, GRE, Geneve, Teredo, GTP-U, AYIYA) is
# a UDP flow of its own first: the engine follows its datagram, then asks parse_udp_tunnel for the
# packet inside and follows that too (Engine.process_frame). As tshark, Zeek and Suricata do, an
# inner flow is keyed by its own addresses and ports. Pure C: no Python objects are touched.

cdef enum:
    MAX_TUNNELS = 8         # encapsulations followed, one inside another; a packet deeper is P_OTHER
    P_NO_TUNNEL = -1        # parse_udp_tunnel: the datagram is not a tunnel's (``pk`` untouched)


cdef inline bint followed(uint8_t proto) noexcept nogil:
    """Whether packets of this IP protocol are followed (their fragments reassembled): TCP, UDP,
    and the tunnels looked through."""
    return proto == 6 or proto == 17 or proto == 4 or proto == 41 or proto == 47


cdef int parse_transport(pkt_t *pk, const uint8_t *p, uint32_t n, fragtab_t *frags, frag_t **done,
                         int *reason) noexcept nogil:
    """What the IP packet of protocol ``pk.proto`` carries at p (n bytes): a tunnel's packet,
    looked through, or the TCP or UDP header (parse_l4)."""
    if pk.proto == 4:
        return enter_tunnel(pk, 0x0800, p, n, frags, done, reason)
    if pk.proto == 41:
        return enter_tunnel(pk, 0x86dd, p, n, frags, done, reason)
    if pk.proto == 47:
        return parse_gre(pk, p, n, frags, done, reason)
    return parse_l4(pk, p, n, reason)


cdef int enter_tunnel(pkt_t *pk, uint16_t et, const uint8_t *p, uint32_t n, fragtab_t *frags,
                      frag_t **done, int *reason) noexcept nogil:
    """The packet of ethertype ``et`` a tunnel carries at p (n bytes); P_OTHER past MAX_TUNNELS."""
    if pk.tunnels >= MAX_TUNNELS:
        return P_OTHER
    pk.tunnels += 1
    return parse_network(pk, et, p, n, frags, done, reason)


cdef int tunnel_ethernet(pkt_t *pk, const uint8_t *p, uint32_t n, fragtab_t *frags, frag_t **done,
                         int *reason) noexcept nogil:
    """The Ethernet frame a tunnel carries at p (n bytes): its tags, LLC, PPPoE or MPLS as on a
    wire, then its packet; a header cut short is MAL_TRUNCATED_L2."""
    cdef uint32_t off = 0
    cdef uint16_t et = 0
    if ethernet_header(pk, p, n, &off, &et) or shim_layers(p, n, &off, &et):
        reason[0] = MAL_TRUNCATED_L2
        return P_MALFORMED
    return enter_tunnel(pk, et, p + off, n - off, frags, done, reason)


cdef inline int cut_tunnel(int *reason) noexcept nogil:
    reason[0] = MAL_TRUNCATED_TUNNEL
    return P_MALFORMED


cdef inline bint aruba_type(uint16_t et) noexcept nogil:
    """Whether a GRE protocol type is one of Aruba's, which carry 802.11 frames (0x8200 to 0x82f0,
    0x8300 to 0x8370, 0x9000), as Zeek and Wireshark read them."""
    return (et & 0xff0f) == 0x8200 or ((et & 0xff0f) == 0x8300 and et <= 0x8370) or et == 0x9000


cdef int parse_gre(pkt_t *pk, const uint8_t *p, uint32_t n, fragtab_t *frags, frag_t **done,
                   int *reason) noexcept nogil:
    """A GRE packet at p (n bytes). Version 0 (RFC 2784, the key and sequence number of RFC 2890):
    a checksum, key and sequence number each add 4 bytes; routing (RFC 1701), which Linux drops,
    is not followed. Its protocol: IPv4, IPv6, MPLS, PPP (0x880b), Aruba's 802.11 frames
    (aruba_type), Ethernet (0x6558), ERSPAN type I (0x88be
    without a sequence number), II (0x88be, an 8-byte header) and III (0x22eb, a 12-byte header
    and an 8-byte platform header when its O flag is set; frame type Ethernet). Version 1 (PPTP,
    RFC 2637): a key always, a sequence and an acknowledgement number when flagged, then PPP;
    one with no payload only acknowledges. Other versions are not followed (P_OTHER)."""
    cdef uint16_t flags, et
    cdef uint32_t hl = 4
    if n < 4:
        return cut_tunnel(reason)
    flags = rd16(p)
    et = rd16(p + 2)
    if (flags & 7) == 1:
        if not (flags & 0x2000) or et != 0x880b:
            return P_OTHER
        hl = 8 + (4 if flags & 0x1000 else 0) + (4 if flags & 0x0080 else 0)
        if n < hl:
            return cut_tunnel(reason)
        if n == hl:
            return P_OTHER
        if ppp_header(p, n, &hl, &et):
            return cut_tunnel(reason)
        return enter_tunnel(pk, et, p + hl, n - hl, frags, done, reason)
    if (flags & 7) != 0 or (flags & 0x4000):
        return P_OTHER
    hl += (4 if flags & 0x8000 else 0) + (4 if flags & 0x2000 else 0) + (4 if flags & 0x1000 else 0)
    if et == 0x880b or aruba_type(et):
        if n < hl:
            return cut_tunnel(reason)
        if (ppp_header(p, n, &hl, &et) if et == 0x880b else ieee80211_header(p, n, &hl, &et)):
            return cut_tunnel(reason)
        return enter_tunnel(pk, et, p + hl, n - hl, frags, done, reason)
    if et == 0x88be and (flags & 0x1000):
        hl += 8
    elif et == 0x22eb:
        if n < hl + 12:
            return cut_tunnel(reason)
        if (p[hl + 10] >> 2) & 0x1f:        # a frame type other than Ethernet
            return P_NOT_IP
        hl += 20 if p[hl + 11] & 1 else 12
    if n < hl:
        return cut_tunnel(reason)
    if et == 0x6558 or et == 0x88be or et == 0x22eb:
        return tunnel_ethernet(pk, p + hl, n - hl, frags, done, reason)
    if shim_layers(p, n, &hl, &et):
        return cut_tunnel(reason)
    return enter_tunnel(pk, et, p + hl, n - hl, frags, done, reason)


cdef int parse_udp_tunnel(pkt_t *pk, fragtab_t *frags, frag_t **done, int *reason) noexcept nogil:
    """The packet inside the UDP datagram just parsed into ``pk`` (overwriting its fields), or
    P_NO_TUNNEL when the datagram is not a tunnel's: VXLAN (RFC 7348: to port 4789, the I flag
    set), GRE in UDP (RFC 8086: to port 4754, GRE version 0 without routing), Geneve (RFC 8926:
    to port 6081, version 0), Teredo (RFC 4380: from or to port 3544; an authentication and an
    origin indication may come first, then an IPv6 packet, which bytes may follow, as after a
    bubble), GTP-U (3GPP TS 29.281: from or to port 2152, a G-PDU, its extension headers) and
    AYIYA (from or to port 5072, forwarding IPv4 or IPv6). With no fragment table (``frags``
    NULL), an inner fragment is P_HELD, untouched."""
    cdef const uint8_t *p = pk.payload
    cdef uint32_t n = pk.paylen, hl
    cdef uint16_t et
    cdef uint8_t next_type
    if pk.dport == 4789:
        if n == 0 or not (p[0] & 0x08):
            return P_NO_TUNNEL
        if n < 8:
            return cut_tunnel(reason)
        return tunnel_ethernet(pk, p + 8, n - 8, frags, done, reason)
    if pk.dport == 4754:
        if n < 4 or (rd16(p) & 0x4007) != 0:
            return P_NO_TUNNEL
        return parse_gre(pk, p, n, frags, done, reason)
    if pk.dport == 6081:
        if n == 0 or (p[0] >> 6) != 0:
            return P_NO_TUNNEL
        hl = 8 + 4 * (p[0] & 0x3f)
        if n < hl:
            return cut_tunnel(reason)
        et = rd16(p + 2)
        if et == 0x6558:
            return tunnel_ethernet(pk, p + hl, n - hl, frags, done, reason)
        return enter_tunnel(pk, et, p + hl, n - hl, frags, done, reason)
    if pk.sport == 3544 or pk.dport == 3544:
        hl = 0
        if n >= 4 and p[0] == 0 and p[1] == 1:
            hl = 13 + <uint32_t>p[2] + p[3]
        if n >= hl + 2 and p[hl] == 0 and p[hl + 1] == 0:
            hl += 8
        if n < hl + 40 or (p[hl] >> 4) != 6 or 40 + <uint32_t>rd16(p + hl + 4) > n - hl:
            return P_NO_TUNNEL
        return enter_tunnel(pk, 0x86dd, p + hl, n - hl, frags, done, reason)
    if pk.sport == 2152 or pk.dport == 2152:
        if n < 8 or (p[0] & 0xf0) != 0x30 or p[1] != 0xff:
            return P_NO_TUNNEL
        hl = 8
        if p[0] & 0x07:
            hl = 12
            if n < hl:
                return cut_tunnel(reason)
            next_type = p[11] if p[0] & 0x04 else 0
            while next_type:
                if n < hl + 4 or p[hl] == 0 or n < hl + 4 * <uint32_t>p[hl]:
                    return cut_tunnel(reason)
                hl += 4 * <uint32_t>p[hl]
                next_type = p[hl - 1]
        et = 0
        if n > hl:
            et = 0x0800 if (p[hl] >> 4) == 4 else (0x86dd if (p[hl] >> 4) == 6 else 0)
        return enter_tunnel(pk, et, p + hl, n - hl, frags, done, reason)
    if pk.sport == 5072 or pk.dport == 5072:
        if n < 8 or (p[2] & 0x0f) != 1 or (p[3] != 4 and p[3] != 41):
            return P_NO_TUNNEL
        hl = 8 + (1u << (p[0] >> 4)) + 4 * <uint32_t>(p[1] >> 4)
        if n < hl:
            return cut_tunnel(reason)
        return enter_tunnel(pk, 0x0800 if p[3] == 4 else 0x86dd, p + hl, n - hl, frags, done, reason)
    return P_NO_TUNNEL
