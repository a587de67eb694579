# Zeek's view of a connection: both endpoints as Zeek's TCP analyzer tracks them (its seven
# endpoint states, its sequence bookkeeping, its history letters), so that `aiomb flows --format
# zeek` writes the conn.log Zeek writes. Kept per flow only when the engine is asked
# (Engine(conn_history=True)); the packet path pays one test otherwise.
#
# The rules follow Zeek's TCPSessionAdapter (update_history, update_last_seq, the endpoint state
# machine, FlipRoles) and TCP_Endpoint (Size, ScaledHistoryEntry). Where aiomb's own flow sides
# and Zeek's roles differ (Zeek's originator is the sender of the first packet, flipped by its
# port heuristic, a SYN/SYN-ACK reversal or the first ACK or data after a lone SYN-ACK), `orig`
# says which aiomb side Zeek calls the originator. Content gaps (g/G, missed_bytes) come from
# aiomb's reassembly: holes the peer's ACKs pass, while both endpoints are established or closing
# cleanly.

cdef enum:
    ZS_INACTIVE = 0             # Zeek's TCP_ENDPOINT_* numbering (conn.log's orig/resp states)
    ZS_SYN_SENT = 1
    ZS_SYN_ACK_SENT = 2
    ZS_PARTIAL = 3
    ZS_ESTABLISHED = 4
    ZS_CLOSED = 5
    ZS_RESET = 6

    HIST_SYN = 0x1              # Zeek's "seen" bits (shifted 16 for the responder)
    HIST_FIN = 0x2
    HIST_RST = 0x4
    HIST_FIN_RST = 0x8
    HIST_DATA = 0x10
    HIST_ACK = 0x20
    HIST_MULTI = 0x40

    SCALED_GAP = 0              # letters written at 1, 10, 100, ... occurrences
    SCALED_REXMIT = 1
    SCALED_WIN0 = 2

    HISTORY_MAX = 40            # letters kept per flow; later ones are dropped (counted)
    TOO_LARGE_SEQ_DELTA = 1048576


ctypedef struct zend_t:
    uint64_t fin_seq            # relative, one past the FIN
    uint64_t last_syn           # relative sequence of the last SYN / FIN / RST (repeat letters)
    uint64_t last_fin
    uint64_t last_rst
    uint64_t missed             # bytes of the content gaps reported
    uint32_t start_seq
    uint32_t last_seq
    uint32_t ack_seq
    uint32_t seq_wraps
    uint32_t ack_wraps
    uint32_t fin_cnt
    uint32_t cnt[3]
    uint32_t thresh[3]
    uint8_t state
    uint8_t prev_state
    uint8_t did_close


ctypedef struct conn_t:
    zend_t e[2]                 # by aiomb side
    int64_t last_ts             # Zeek's last_time: packets after both sides closed leave it
    uint32_t seen
    uint32_t dropped            # history letters beyond HISTORY_MAX
    uint8_t orig                # the aiomb side Zeek calls the originator
    uint8_t hlen
    char history[HISTORY_MAX]


# Zeek's likely_server_ports as its default scripts leave it: the server_ports of every
# Analyzer::register_for_ports and PacketAnalyzer::register_for_ports call in scripts/base loaded
# by init-default.zeek in a build with Spicy (client ports such as DHCP's 68 are registered but
# not added), at zeek/zeek a13de64fbbdb01f90961c04719b308fbbb6d199e. A first packet from one of
# these to a port that is not one makes its receiver the originator (Zeek's "^").
LIKELY_SERVER_PORTS = {
    "tcp": (21, 22, 25, 53, 79, 80, 81, 88, 135, 139, 143, 389, 443, 445, 465, 502, 514, 563, 585, 587,
            614, 631, 636, 989, 990, 992, 993, 995, 1080, 1434, 1883, 2811, 3128, 3268, 3306, 3389, 5222,
            5223, 5269, 5432, 6379, 6666, 6667, 6668, 6669, 8000, 8080, 8888, 20000),
    "udp": (53, 67, 88, 123, 137, 161, 162, 389, 443, 514, 1812, 2123, 2152, 3389, 3544, 4011, 4754,
            4789, 5060, 5072, 5353, 5355, 6081, 20000),
}
cdef uint8_t LIKELY_TCP[8192]
cdef uint8_t LIKELY_UDP[8192]
memset(LIKELY_TCP, 0, sizeof(LIKELY_TCP))
memset(LIKELY_UDP, 0, sizeof(LIKELY_UDP))
for _port in LIKELY_SERVER_PORTS["tcp"]:
    LIKELY_TCP[_port >> 3] |= 1 << (_port & 7)
for _port in LIKELY_SERVER_PORTS["udp"]:
    LIKELY_UDP[_port >> 3] |= 1 << (_port & 7)


cdef inline conn_t *conn_of(const flowtab_t *t, int32_t slot) noexcept nogil:
    return <conn_t *>t.conns[slot] if t.conns != NULL else NULL


cdef inline bint likely_server(uint16_t port, bint tcp) noexcept nogil:
    if tcp:
        return (LIKELY_TCP[port >> 3] >> (port & 7)) & 1
    return (LIKELY_UDP[port >> 3] >> (port & 7)) & 1


cdef inline int32_t sdelta(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b)


cdef inline void add_letter(conn_t *c, char code) noexcept nogil:
    if c.hlen < HISTORY_MAX:
        c.history[c.hlen] = code
        c.hlen += 1
    else:
        c.dropped += 1


cdef inline void letter(conn_t *c, int side, char code) noexcept nogil:
    """Zeek's AddHistory: upper case for the originator, lower case for the responder."""
    add_letter(c, code if side == c.orig else code + 32)


cdef inline bint seen_before(conn_t *c, int side, uint32_t mask, char code) noexcept nogil:
    """Zeek's CheckHistory: the letter the first time its kind is seen from that role."""
    if side != c.orig:
        mask <<= 16
        code += 32
    if c.seen & mask:
        return True
    c.seen |= mask
    add_letter(c, code)
    return False


cdef inline void late_flip(conn_t *c) noexcept nogil:
    """Zeek's flip of a connection that began with a SYN-ACK (history exactly "H": its sender was
    kept as the originator, as for a stealth scan) at the first ACK or data from either side: the
    roles swap and the history becomes "^h", as though the missing SYN had been seen. The seen
    bits stay as they were (TCP_Endpoint::CheckHistory, Connection::FlipRoles)."""
    if c.hlen == 1 and c.history[0] == b'H':
        c.orig = 1 - c.orig
        c.history[0] = b'^'
        c.history[1] = b'h'
        c.hlen = 2


cdef inline void scaled(conn_t *c, int side, int which, char code) noexcept nogil:
    """Zeek's ScaledHistoryEntry: the letter again at 10, 100, 1000, ... occurrences."""
    cdef zend_t *e = &c.e[side]
    cdef uint32_t nt
    e.cnt[which] += 1
    if e.cnt[which] == e.thresh[which]:
        letter(c, side, code)
        nt = e.thresh[which] * 10
        if nt <= e.thresh[which]:
            e.cnt[which] = 0
        else:
            e.thresh[which] = nt


cdef inline void set_zstate(zend_t *e, uint8_t state) noexcept nogil:
    if state != e.state:
        e.prev_state = e.state
        e.state = state


cdef inline uint64_t full_seq(uint32_t seq, uint32_t wraps) noexcept nogil:
    return (<uint64_t>wraps << 32) | seq


cdef uint64_t relative(const zend_t *e, uint32_t cur, uint32_t last, uint32_t wraps, bint *underflow) noexcept nogil:
    """Zeek's get_relative_seq: ``cur`` against the endpoint's start, across wraps."""
    cdef int32_t d = sdelta(cur, last)
    if d < 0:
        if wraps and cur > last:
            wraps -= 1
    elif d > 0:
        if cur < last:
            wraps += 1
    if wraps == 0:
        d = sdelta(cur, e.start_seq)
        if d < 0:
            underflow[0] = True
        return <uint64_t><int64_t>d
    return full_seq(cur, wraps) - <uint64_t>e.start_seq


cdef inline void init_seqs(zend_t *e, uint32_t start, uint32_t last) noexcept nogil:
    e.start_seq = start
    e.ack_seq = start
    e.last_seq = last


cdef uint64_t zeek_size(const conn_t *c, int side) noexcept nogil:
    """Zeek's TCP_Endpoint::Size: the sequence space the side used (holes included), less the
    SYN and the FIN."""
    cdef const zend_t *e = &c.e[side]
    cdef const zend_t *p = &c.e[1 - side]
    cdef uint64_t last64, ack64, start, size
    start = e.start_seq
    ack64 = full_seq(e.ack_seq, e.ack_wraps)
    if e.prev_state == ZS_SYN_SENT and e.state == ZS_RESET and p.state == ZS_INACTIVE \
            and not (ack64 == start or ack64 == start + 1):
        return 0                # a half-open connection discovered and aborted
    last64 = full_seq(e.last_seq, e.seq_wraps)
    size = (last64 if last64 > ack64 else ack64) - start
    if size != 0:
        size -= 1
    if e.fin_cnt > 0 and size != 0:
        size -= 1
    return size


cdef inline bint broadcast(const pkt_t *pk) noexcept nogil:
    """The packet is to 255.255.255.255 (Zeek's IPAddr::IsBroadcast)."""
    return pk.family == 4 and pk.dst[0] == 255 and pk.dst[1] == 255 and pk.dst[2] == 255 and pk.dst[3] == 255


cdef conn_t *conn_new(const pkt_t *pk, int sender, int64_t ts) noexcept nogil:
    """Zeek's view of a new flow from its first packet (NULL when out of memory). Zeek makes
    the first packet's receiver the originator when the packet is not a plain SYN and comes
    from a likely server port to one that is not (of two, the lower port when no SYN), unless
    that receiver is the broadcast address (IPBasedAnalyzer::NewConn)."""
    cdef conn_t *c = <conn_t *>calloc(1, sizeof(conn_t))
    cdef bint tcp = pk.proto == 6
    cdef bint flip = False
    cdef uint8_t fl = pk.flags
    if c == NULL:
        return NULL
    c.orig = sender
    c.last_ts = ts
    c.e[0].thresh[0] = c.e[0].thresh[1] = c.e[0].thresh[2] = 1
    c.e[1].thresh[0] = c.e[1].thresh[1] = c.e[1].thresh[2] = 1
    if tcp:
        if (not (fl & TH_SYN) or (fl & TH_ACK)) and likely_server(pk.sport, True):
            if likely_server(pk.dport, True):
                flip = not (fl & TH_SYN) and pk.sport < pk.dport
            else:
                flip = True
    else:
        flip = likely_server(pk.sport, False) and not likely_server(pk.dport, False)
    if flip and not broadcast(pk):
        c.orig = 1 - sender
        add_letter(c, b'^')
    return c


cdef void conn_udp(conn_t *c, int side, int64_t ts) noexcept nogil:
    seen_before(c, side, HIST_DATA, b'D')
    c.last_ts = ts


cdef void update_history(conn_t *c, int side, uint8_t fl, uint64_t rel, uint32_t paylen) noexcept nogil:
    cdef zend_t *e = &c.e[side]
    cdef int bits = ((fl & TH_SYN) != 0) + ((fl & TH_FIN) != 0) + ((fl & TH_RST) != 0)
    cdef char code
    if bits > 1:
        if (fl & TH_FIN) and (fl & TH_RST):
            seen_before(c, side, HIST_FIN_RST, b'I')
        else:
            seen_before(c, side, HIST_MULTI, b'Q')
    elif bits == 1:
        if fl & TH_SYN:
            code = b'H' if fl & TH_ACK else b'S'
            if seen_before(c, side, HIST_SYN, code) and rel != e.last_syn:
                letter(c, side, code)
            e.last_syn = rel
        if fl & TH_FIN:
            if seen_before(c, side, HIST_FIN, b'F') and rel + paylen != e.last_fin:
                letter(c, side, b'F')
            e.last_fin = rel + paylen
        if fl & TH_RST:
            if seen_before(c, side, HIST_RST, b'R') and rel != e.last_rst:
                letter(c, side, b'R')
            e.last_rst = rel
    elif paylen:
        late_flip(c)
        seen_before(c, side, HIST_DATA, b'D')
    elif fl & TH_ACK:
        late_flip(c)
        seen_before(c, side, HIST_ACK, b'A')


cdef void update_last_seq(conn_t *c, int side, uint32_t last, uint8_t fl, uint32_t paylen) noexcept nogil:
    cdef zend_t *e = &c.e[side]
    cdef int32_t d = sdelta(last, e.last_seq)
    if (fl & (TH_SYN | TH_RST)) and (d > TOO_LARGE_SEQ_DELTA or d < -TOO_LARGE_SEQ_DELTA):
        pass                    # an outlandish SYN or RST sequence number is not trusted
    elif (fl & TH_FIN) and e.last_seq == e.start_seq + 1:
        if last < e.last_seq:
            e.seq_wraps += 1
        e.last_seq = last
    elif e.state == ZS_RESET:
        pass
    elif d > 0:
        if last < e.last_seq:
            e.seq_wraps += 1
        e.last_seq = last
    elif paylen > 0:
        scaled(c, side, SCALED_REXMIT, b'T')


cdef bint update_states(conn_t *c, int side, uint8_t fl, uint32_t seq, uint32_t paylen) noexcept nogil:
    """Zeek's endpoint state machine for a packet from ``side``; True when it closes the side."""
    cdef zend_t *e = &c.e[side]
    cdef zend_t *p = &c.e[1 - side]
    cdef bint is_orig = side == c.orig
    cdef bint close = False
    cdef uint8_t st = e.state
    if st == ZS_INACTIVE:
        if fl & TH_SYN:
            if is_orig:
                set_zstate(e, ZS_SYN_ACK_SENT if fl & TH_ACK else ZS_SYN_SENT)
            else:
                if not (fl & TH_ACK) and p.state == ZS_SYN_ACK_SENT and seq == e.start_seq:
                    c.orig = side       # a SYN/SYN-ACK reversal: Zeek flips the roles
                    add_letter(c, b'^')
                    set_zstate(p, ZS_ESTABLISHED)
                if p.state == ZS_SYN_SENT:
                    set_zstate(p, ZS_ESTABLISHED)
                set_zstate(e, ZS_ESTABLISHED)
        if fl & TH_FIN:
            set_zstate(e, ZS_CLOSED)
            close = True
        if fl & TH_RST:
            set_zstate(e, ZS_RESET)
            close = True
        if e.state == ZS_INACTIVE:
            if not is_orig and paylen == 0 and c.e[c.orig].state == ZS_SYN_SENT:
                pass            # an ACK of the SYN before the SYN-ACK
            elif (fl & TH_ACK) and p.state == ZS_ESTABLISHED:
                set_zstate(e, ZS_ESTABLISHED)
            else:
                set_zstate(e, ZS_PARTIAL)
    elif st == ZS_SYN_SENT or st == ZS_SYN_ACK_SENT:
        if fl & TH_FIN:
            set_zstate(e, ZS_CLOSED)
            close = True
        if fl & TH_RST:
            set_zstate(e, ZS_RESET)
            close = True
    elif st == ZS_ESTABLISHED or st == ZS_PARTIAL:
        if (fl & TH_SYN) and st == ZS_PARTIAL and p.state == ZS_INACTIVE and not (fl & TH_ACK):
            set_zstate(e, ZS_SYN_SENT)
        if (fl & TH_FIN) and not (fl & TH_RST):
            set_zstate(e, ZS_CLOSED)
            if p.state == ZS_RESET and p.prev_state == ZS_CLOSED:
                set_zstate(p, ZS_CLOSED)    # the peer's FIN then RST: a normal close after all
            close = True
        if fl & TH_RST:
            set_zstate(e, ZS_RESET)
            close = True
    elif st == ZS_CLOSED:
        if (fl & TH_RST) and p.state != ZS_CLOSED:
            set_zstate(e, ZS_RESET)
            close = not e.did_close
    return close


cdef void conn_tcp(conn_t *c, int side, const pkt_t *pk) noexcept nogil:
    """One TCP packet from ``side`` as Zeek's TCP analyzer takes it (before aiomb's reassembly
    sees it, so that gaps its ACK reveals come after its own letters, as in Zeek)."""
    cdef zend_t *e = &c.e[side]
    cdef zend_t *p = &c.e[1 - side]
    cdef uint8_t fl = pk.flags
    cdef uint32_t seg = pk.paylen
    cdef uint32_t seq = pk.seq
    cdef uint64_t rel
    cdef int32_t d
    cdef bint underflow = False
    if fl & TH_SYN:
        seg += 1
    if fl & TH_FIN:
        seg += 1
    if fl & TH_RST:
        seg -= pk.paylen
    if e.state == ZS_INACTIVE:
        if fl & TH_SYN:
            init_seqs(e, seq, seq + seg)
        else:
            init_seqs(e, seq - 1, seq)      # as though a SYN had been seen
    elif e.state == ZS_SYN_SENT or e.state == ZS_SYN_ACK_SENT:
        if (fl & TH_SYN) and seq != e.start_seq:
            init_seqs(e, seq, seq + seg)
    elif e.state == ZS_ESTABLISHED or e.state == ZS_PARTIAL:
        if fl & TH_SYN:
            init_seqs(e, seq, seq + seg)
    elif e.state == ZS_RESET:
        if (fl & TH_SYN) and e.prev_state == ZS_INACTIVE:
            init_seqs(e, seq, seq + seg)    # the RST that set it up was likely injected
    rel = relative(e, seq, e.last_seq, e.seq_wraps, &underflow)
    update_history(c, side, fl, rel, pk.paylen)
    if pk.win == 0 and not (fl & TH_RST) and p.state != ZS_CLOSED and e.state != ZS_RESET:
        scaled(c, side, SCALED_WIN0, b'W')
    if not (e.did_close and p.did_close):
        c.last_ts = pk.ts
    if fl & TH_FIN:
        e.fin_cnt += 1
        e.fin_seq = rel + seg
    if fl & TH_ACK:
        if p.state == ZS_INACTIVE:
            init_seqs(p, pk.ack - 1, pk.ack - 1)
        else:
            underflow = False
            relative(p, pk.ack, p.ack_seq, p.ack_wraps, &underflow)
            if not underflow and not (fl & TH_RST):
                d = sdelta(pk.ack, p.ack_seq)
                if not (pk.ack == 0 and d > TOO_LARGE_SEQ_DELTA) and d > 0:
                    if pk.ack < p.ack_seq:
                        p.ack_wraps += 1
                    p.ack_seq = pk.ack
    update_last_seq(c, side, seq + seg, fl, pk.paylen)
    if update_states(c, side, fl, seq, pk.paylen):
        e.did_close = True


cdef inline bint clean(const zend_t *e) noexcept nogil:
    return e.state == ZS_ESTABLISHED or (e.state == ZS_CLOSED and e.prev_state == ZS_ESTABLISHED)


cdef void conn_gap(conn_t *c, int side, uint64_t length) noexcept nogil:
    """A content gap in ``side``'s stream that its peer's ACK passed: Zeek reports it (g/G,
    missed_bytes) while both endpoints are established or closing cleanly."""
    if clean(&c.e[side]) and clean(&c.e[1 - side]):
        scaled(c, side, SCALED_GAP, b'G')
        c.e[side].missed += length
