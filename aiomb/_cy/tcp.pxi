# The TCP state machine of both endpoints, as a middlebox infers it (RFC 793 state names).
#
# Every packet updates two sides: first the SENDER's (what it just did), then, after the sender
# hook, the RECEIVER's (what receiving it will make the receiver do). The rules:
#
#   sender sends                    sender's side
#   SYN                             records its ISN; CLOSED/LISTEN -> SYN_SENT. The same SYN
#                                   again (same ISN) is a RETRANSMIT.
#   SYN-ACK                         records its ISN; the first one raises SYN_ACK;
#                                   CLOSED/LISTEN/SYN_SENT -> SYN_RECEIVED. The same SYN-ACK
#                                   again (same ISN) is a RETRANSMIT.
#   FIN (first taken)               raises FIN; CLOSE_WAIT -> LAST_ACK; a state before the
#                                   close began (see ON_OWN_FIN) -> FIN_WAIT_1. The same FIN
#                                   again (same sequence number) is a RETRANSMIT. While the
#                                   side's stream is tracked, a FIN is taken where Linux takes
#                                   it (see "FINs" below); else as it comes.
#   RST the receiver accepts        raises RST; -> CLOSED; the receiver -> CLOSED; the flow
#                                   ends (RST). A RST out of the receiver's window is counted
#                                   (rst_ignored, rst_out_of_window) and changes nothing.
#   a reply to a side in SYN_SENT   (ACK, RST or FIN) that echoes a timestamp other than the SYN's
#                                   (or one, when the SYN offered none): rejected (REJECTED,
#                                   "bad_timestamp_echo"): it changes nothing
#   a reply to a side in SYN_SENT   (ACK, data, FIN or SYN-ACK) whose ACK is not of the SYN, while
#                                   that side has ACKed nothing: rejected (REJECTED,
#                                   "unacceptable_ack"): it changes nothing
#   RST without ACK from a side in  to a side in LISTEN (it never answered the SYN): ignored,
#   SYN_SENT that ACKed nothing     counted (rst_ignored); the handshake goes on
#   SYN or SYN-ACK with a new ISN   rejected (REJECTED, "syn_in_connection"): it changes nothing
#   to a synchronized receiver      (counted among the side's SYNs)
#   SYN when both sides are closed  a new connection reuses the tuple: the flow ends (REUSED,
#   or closing (CLOSING_STATES)     unless it had ended) and a new flow starts with this SYN;
#                                   only a duplicate of the ended flow's own SYN, while a flow
#                                   closed by FINs lingers (TIME_WAIT), is not one.
#
#   receiver gets                   receiver's side
#   SYN                             SYN_SENT -> SYN_RECEIVED (simultaneous open)
#   SYN-ACK that ACKs its SYN       SYN_SENT/SYN_RECEIVED -> ESTABLISHED
#   ACK of its SYN                  SYN_RECEIVED -> ESTABLISHED
#   ACK of its FIN                  see ON_FIN_ACKED (FIN_WAIT_1 -> FIN_WAIT_2, CLOSING ->
#                                   TIME_WAIT, LAST_ACK -> CLOSED)
#   FIN (taken)                     see ON_PEER_FIN (FIN_WAIT_1 -> CLOSING, FIN_WAIT_2 ->
#                                   TIME_WAIT, an open state -> CLOSE_WAIT)
#
# FINs. Linux takes a FIN only when the bytes in order reach its sequence number exactly. One
# below them is old (tcp_sequence / tcp_data_queue drop it): ignored. One ahead of them, behind a
# hole, waits out of order: it is taken when the bytes in order reach it, or when the receiver
# ACKs the bytes up to it or the FIN (the capture lost those bytes: a GAP); bytes in order (or an
# ACK) passing it drop it (tcp_ofo_queue). Taking it drops the bytes held past it (tcp_fin purges
# the out-of-order queue). One FIN is held per side: of two behind the hole, the nearer. A FIN
# still held when the flow ends never took effect (the hole before it is a GAP, unless a RST ended
# the flow). Each FIN that never takes effect is counted (the stream's fin_ignored); a held FIN
# moves neither side. Without the side's stream, a FIN is taken as it comes.
#
# The flow is ESTABLISHED (the event, once) when both sides are synchronized (ESTABLISHED or a
# later state). It ends with reason FIN when both sides sent a FIN and both are in TIME_WAIT or
# CLOSED. A RST is acceptable at the sender's next sequence number, or when it falls in the
# receiver's window (from its last ACK, at least one byte wide, at the largest scale when the
# scale is unknown); to a side in SYN_SENT only when it ACKs that side's SYN (RFC 793).

cdef enum:
    KEEP = 0xff             # in a transition table: the state does not change
    N_STATES = 11

# A transition table maps the side's current state to its next one (KEEP: unchanged).
# The sender's next state when its first FIN takes effect:
cdef uint8_t ON_OWN_FIN[N_STATES]
ON_OWN_FIN[:] = [
    ST_FIN_WAIT_1,          # CLOSED
    ST_FIN_WAIT_1,          # LISTEN
    ST_FIN_WAIT_1,          # SYN_SENT
    ST_FIN_WAIT_1,          # SYN_RECEIVED
    ST_FIN_WAIT_1,          # ESTABLISHED
    KEEP,                   # FIN_WAIT_1
    KEEP,                   # FIN_WAIT_2
    ST_LAST_ACK,            # CLOSE_WAIT
    KEEP,                   # CLOSING
    KEEP,                   # LAST_ACK
    KEEP,                   # TIME_WAIT
]
# The receiver's next state when the peer's FIN takes effect:
cdef uint8_t ON_PEER_FIN[N_STATES]
ON_PEER_FIN[:] = [
    KEEP,                   # CLOSED
    ST_CLOSE_WAIT,          # LISTEN
    ST_CLOSE_WAIT,          # SYN_SENT
    ST_CLOSE_WAIT,          # SYN_RECEIVED
    ST_CLOSE_WAIT,          # ESTABLISHED
    ST_CLOSING,             # FIN_WAIT_1
    ST_TIME_WAIT,           # FIN_WAIT_2
    KEEP,                   # CLOSE_WAIT
    KEEP,                   # CLOSING
    KEEP,                   # LAST_ACK
    KEEP,                   # TIME_WAIT
]
# The receiver's next state when the peer ACKs the receiver's FIN:
cdef uint8_t ON_FIN_ACKED[N_STATES]
ON_FIN_ACKED[:] = [
    KEEP,                   # CLOSED
    KEEP,                   # LISTEN
    KEEP,                   # SYN_SENT
    KEEP,                   # SYN_RECEIVED
    KEEP,                   # ESTABLISHED
    ST_FIN_WAIT_2,          # FIN_WAIT_1
    KEEP,                   # FIN_WAIT_2
    KEEP,                   # CLOSE_WAIT
    ST_TIME_WAIT,           # CLOSING
    ST_CLOSED,              # LAST_ACK
    KEEP,                   # TIME_WAIT
]
# States of a side that has closed or begun to close (a FIN sent or received, or a RST): a SYN
# when both sides are in one starts a new connection on the same addresses and ports.
cdef uint8_t CLOSING_STATES[N_STATES]
CLOSING_STATES[:] = [1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
# States in which a side has completed its part of the handshake (RFC 793's synchronized states):
cdef uint8_t SYNCHRONIZED[N_STATES]
SYNCHRONIZED[:] = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]


# Where a FIN lies for its receiver (fin_place, fin_reach):
cdef enum:
    FIN_TAKEN = 0           # reached: it takes effect now
    FIN_STALE = 1           # below the bytes in order, or passed by them: ignored
    FIN_HELD = 2            # ahead of the bytes in order, behind a hole: it waits


cdef inline bint reuses(const flow_t *f, int side, const pkt_t *pk) noexcept nogil:
    """Whether a bare SYN from ``side`` starts a new connection on this flow's tuple: both sides
    are closed or closing, and it is not (while a flow closed by FINs lingers, as in TIME_WAIT)
    a duplicate of the flow's own SYN. After a RST no side keeps the connection: every SYN is a
    new attempt."""
    if not (CLOSING_STATES[f.side[0].state] and CLOSING_STATES[f.side[1].state]):
        return 0
    return not (f.status == FS_CLOSED and f.end_reason != END_RST and (f.side[side].flags & SF_SYN_SEEN)
                and pk.seq == f.side[side].isn)


cdef inline bint seq_gt(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) > 0

cdef inline bint seq_ge(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) >= 0

cdef inline bint acks_syn(const side_t *s, uint32_t ack) noexcept nogil:
    """An acceptable ACK of a side's SYN: past the ISN, at most what that side sent (TFO data)."""
    return seq_ge(ack, s.isn + 1) and seq_ge(s.next_seq, ack)


cdef int set_state(Engine eng, int32_t slot, int side, uint8_t state, int hook) except -1:
    """Move a side to ``state`` (KEEP: no change), raising STATE_CHANGE."""
    cdef side_t *s = &eng.tab.flows[slot].side[side]
    cdef uint8_t old = s.state
    if state == KEEP or old == state:
        return 0
    s.state = state
    return eng.em.fire(B_STATE_CHANGE, slot, side, hook, old, state)


cdef inline void take_isn(side_t *s, const pkt_t *pk) noexcept:
    s.flags |= SF_SYN_SEEN | SF_SEQ_KNOWN
    s.isn = pk.seq
    s.next_seq = pk.seq + 1 + pk.paylen
    s.wscale = <uint8_t>pk.wscale if pk.wscale >= 0 else 0xff
    syn_timestamp(s, pk)


cdef inline void take_base(side_t *s, uint32_t seq, uint32_t end) noexcept:
    """The sequence base of a side first seen without its SYN: as though its ISN were the byte
    before ``seq``; it has sent up to ``end``."""
    s.flags |= SF_SEQ_KNOWN
    s.isn = seq - 1
    s.next_seq = end


cdef inline void syn_timestamp(side_t *s, const pkt_t *pk) noexcept:
    """Keep the TSval of a bare SYN that offers timestamps (the latest, if it is sent again)."""
    if pk.has_ts and not (pk.flags & TH_ACK) and not (s.flags & SF_ACK_KNOWN):
        s.flags |= SF_SYN_TS
        s.last_ack = pk.ts_val


cdef inline bint bad_echo_to_syn(const flow_t *f, int side, const pkt_t *pk) noexcept nogil:
    """A reply (ACK, RST or FIN) to a side in SYN_SENT echoing a timestamp other than its SYN's,
    or echoing one when its SYN offered none: Linux drops it (PAWS in tcp_rcv_synsent_state_process:
    the echo is of no time the SYN was sent; Suricata's StateSynSentValidateTimestamp), so it must
    change nothing (the evasion of CVE-2021-37592). An echo of 0, or no timestamp option, is taken
    as Linux takes it."""
    cdef const side_t *r = &f.side[1 - side]
    if r.state != ST_SYN_SENT or not (r.flags & SF_SYN_SEEN) or (r.flags & SF_ACK_KNOWN):
        return 0
    if not (pk.flags & (TH_ACK | TH_RST | TH_FIN)) or not pk.has_ts or pk.ts_ecr == 0:
        return 0
    return not (r.flags & SF_SYN_TS) or pk.ts_ecr != r.last_ack


cdef inline bint ack_not_of_syn(const flow_t *f, int side, const pkt_t *pk) noexcept nogil:
    """A segment with an ACK (not a RST: see rst_acceptable) to a side in SYN_SENT that has ACKed
    nothing, not acknowledging its SYN (SEG.ACK =< ISS or > SND.NXT): its receiver answers it with
    a RST and drops it (RFC 793, Linux's tcp_rcv_synsent_state_process), so it must change nothing.
    Taking it made a stale ACK the peer's ACK point (a hole of any size) and its data the stream."""
    cdef const side_t *r = &f.side[1 - side]
    return r.state == ST_SYN_SENT and (r.flags & SF_SYN_SEEN) and not (r.flags & SF_ACK_KNOWN) \
        and not acks_syn(r, pk.ack)


cdef inline bint rst_to_listen(const flow_t *f, int side, const pkt_t *pk) noexcept nogil:
    """A RST without ACK from a side in SYN_SENT that has ACKed nothing, to a side that has not
    answered the SYN (LISTEN): the answer to a segment its sender found unacceptable (sent at that
    segment's ACK number; the sender stays in SYN_SENT), which a listener ignores (RFC 793). The
    handshake goes on (Suricata bug 3286: taking it hid the server's response)."""
    cdef const side_t *s = &f.side[side]
    return not (pk.flags & TH_ACK) and s.state == ST_SYN_SENT and not (s.flags & SF_ACK_KNOWN) \
        and f.side[1 - side].state == ST_LISTEN


cdef inline bint syn_in_connection(const flow_t *f, int side, const pkt_t *pk) noexcept nogil:
    """A SYN or SYN-ACK with a new ISN to a receiver in a synchronized state: the receiver
    answers it with a challenge ACK and drops it (RFC 5961 section 4, Linux; Suricata drops it
    too), so it must change nothing: taking its ISN would move the sender's sequence space and
    make the rest of its stream look retransmitted. (A SYN after both sides closed is a new
    connection: see reuses, checked before.)"""
    cdef const side_t *s = &f.side[side]
    return SYNCHRONIZED[f.side[1 - side].state] and not ((s.flags & SF_SYN_SEEN) and pk.seq == s.isn)


cdef inline void straggler_base(side_t *s, const pkt_t *pk) noexcept:
    """The sequence base of a side whose first packet comes after its flow ended (a handshake
    that goes on after a RST): its SYN-ACK's ISN, else the packet's own sequence number, as a
    side picked up mid-stream. Without one its bytes, sent after the close, would be lost."""
    if pk.flags & TH_SYN:
        take_isn(s, pk)
    else:
        take_base(s, pk.seq, pk.seq + pk.paylen)


cdef void count_flags(side_t *s, const pkt_t *pk) noexcept:
    """Count a packet's SYN / SYN-ACK / FIN / RST (saturating), without changing any state."""
    if pk.flags & TH_RST:
        bump8(&s.rst)
    elif pk.flags & TH_SYN:
        if pk.flags & TH_ACK:
            bump8(&s.synack)
        else:
            bump8(&s.syn)
    elif pk.flags & TH_FIN:
        bump8(&s.fin)


cdef bint rst_acceptable(const flow_t *f, int side, const pkt_t *pk) noexcept:
    """Whether the receiver of a RST from ``side`` would accept it (see the rules above). One at
    the byte the receiver expects next (the sender's next, RFC 5961's RCV.NXT when the capture
    lost nothing) always is, however far past the receiver's last ACK's window that lies. A
    window whose scale is unknown (a SYN not seen) is taken at the largest scale."""
    cdef const side_t *s = &f.side[side]
    cdef const side_t *r = &f.side[1 - side]
    cdef uint64_t wnd
    if r.state == ST_SYN_SENT and (r.flags & SF_SYN_SEEN):
        return (pk.flags & TH_ACK) != 0 and acks_syn(r, pk.ack)
    if (s.flags & SF_SEQ_KNOWN) and pk.seq == s.next_seq:
        return 1
    if (r.flags & SF_ACK_KNOWN):
        wnd = r.window if r.window > 0 else 1
        if not ((s.flags & SF_SYN_SEEN) and (r.flags & SF_SYN_SEEN)):
            wnd = wnd << 14 if wnd << 14 < 0x7fffffff else 0x7fffffff
        return seq_ge(pk.seq, r.last_ack) and <uint64_t>(pk.seq - r.last_ack) < wnd
    return 1


cdef int tcp_sender_syn(Engine eng, int32_t slot, int side, const pkt_t *pk) except -1:
    """The sender's update for a SYN or SYN-ACK."""
    cdef side_t *s = &eng.tab.flows[slot].side[side]
    if not (pk.flags & TH_ACK):
        bump8(&s.syn)
        if (s.flags & SF_SYN_SEEN) and pk.seq == s.isn:
            s.retransmits += 1
            syn_timestamp(s, pk)
            return eng.em.fire(B_RETRANSMIT, slot, side, HOOK_SENDER, 0, 0)
        take_isn(s, pk)
        if s.state == ST_CLOSED or s.state == ST_LISTEN:
            return set_state(eng, slot, side, ST_SYN_SENT, HOOK_SENDER)
        return 0
    bump8(&s.synack)
    if s.synack > 1 and pk.seq == s.isn:
        s.retransmits += 1
        return eng.em.fire(B_RETRANSMIT, slot, side, HOOK_SENDER, 0, 0)
    take_isn(s, pk)
    if s.synack == 1:
        eng.em.fire(B_SYN_ACK, slot, side, HOOK_SENDER, 0, 0)
    s = &eng.tab.flows[slot].side[side]
    if s.state == ST_CLOSED or s.state == ST_LISTEN or s.state == ST_SYN_SENT:
        set_state(eng, slot, side, ST_SYN_RECEIVED, HOOK_SENDER)
    return 0


cdef int tcp_sender_data(Engine eng, int32_t slot, int side, const pkt_t *pk) except -1:
    """The sender's update for a segment without SYN or RST: its sequence space and its FIN."""
    cdef side_t *s = &eng.tab.flows[slot].side[side]
    cdef uint32_t end = pk.seq + pk.paylen
    cdef bint fin = (pk.flags & TH_FIN) != 0
    cdef int where
    if fin:
        end += 1
    if not (s.flags & SF_SEQ_KNOWN):
        take_base(s, pk.seq, end)
    elif seq_gt(end, s.next_seq):
        s.next_seq = end
    if not fin:
        return 0
    bump8(&s.fin)
    if (s.flags & (SF_FIN_SEEN | SF_FIN_HELD)) and pk.seq + pk.paylen == s.fin_seq:
        if pk.paylen and eng.reassembling and s.stream != NULL and not s.stream.stopped:
            return 0                        # its bytes again: one retransmission, which its stream counts
        s.retransmits += 1
        return eng.em.fire(B_RETRANSMIT, slot, side, HOOK_SENDER, 0, 0)
    if s.flags & SF_FIN_SEEN:
        return 0
    where = fin_place(eng, s, pk)
    if where == FIN_STALE or where == FIN_HELD and (s.flags & SF_FIN_HELD) and seq_gt(pk.seq + pk.paylen, s.fin_seq):
        s.stream.fin_ignored += 1           # old, or behind the FIN held already
        return 0
    if s.flags & SF_FIN_HELD:
        s.stream.fin_ignored += 1           # this one comes before the FIN held: that one never will
    s.fin_seq = pk.seq + pk.paylen
    if where == FIN_HELD:
        s.flags |= SF_FIN_HELD
        return 0
    return fin_take(eng, slot, side, HOOK_SENDER, 0)


cdef int fin_take(Engine eng, int32_t slot, int side, int hook, bint held) except -1:
    """A side's FIN (at fin_seq) takes effect: the bytes held past it go, FIN, the sender's state;
    a FIN ``held`` until now moves its receiver too (one taken as it comes does in tcp_receiver)."""
    cdef side_t *s = &eng.tab.flows[slot].side[side]
    s.flags = (s.flags & ~SF_FIN_HELD) | SF_FIN_SEEN
    if s.stream != NULL and s.stream.based:
        stream_fin(eng, s.stream, stream_offset(s.stream, s.fin_seq))
    eng.em.fire(B_FIN, slot, side, hook, 0, 0)
    set_state(eng, slot, side, ON_OWN_FIN[eng.tab.flows[slot].side[side].state], hook)
    if held:
        set_state(eng, slot, 1 - side, ON_PEER_FIN[eng.tab.flows[slot].side[1 - side].state], hook)
    return 0


cdef int fins_settle(Engine eng, int32_t slot) except -1:
    """After a packet's bytes and ACK moved the streams: a held FIN they reached takes effect."""
    cdef int i
    for i in range(2):
        if (eng.tab.flows[slot].side[i].flags & SF_FIN_HELD) and fin_reach(eng, slot, i, HOOK_RECEIVER) == FIN_TAKEN:
            fin_take(eng, slot, i, HOOK_RECEIVER, 1)
    return 0


cdef int tcp_receiver(Engine eng, int32_t slot, int side, const pkt_t *pk) except -1:
    """The receiver's update for a packet from ``side`` (not an accepted RST); then whether
    the handshake completed or the flow closed. Returns 1 when the flow ended (FIN close)."""
    cdef int rs = 1 - side
    cdef side_t *r = &eng.tab.flows[slot].side[rs]
    cdef flow_t *f
    cdef side_t *s
    cdef uint8_t fl = pk.flags
    if (fl & TH_SYN) and not (fl & TH_ACK):
        if r.state == ST_SYN_SENT:
            set_state(eng, slot, rs, ST_SYN_RECEIVED, HOOK_RECEIVER)
    elif fl & TH_SYN:
        if (r.state == ST_SYN_SENT or r.state == ST_SYN_RECEIVED)                 and (not (r.flags & SF_SYN_SEEN) or acks_syn(r, pk.ack)):
            set_state(eng, slot, rs, ST_ESTABLISHED, HOOK_RECEIVER)
    else:
        if fl & TH_ACK:
            if r.state == ST_SYN_RECEIVED and (not (r.flags & SF_SYN_SEEN) or seq_ge(pk.ack, r.isn + 1)):
                set_state(eng, slot, rs, ST_ESTABLISHED, HOOK_RECEIVER)
            r = &eng.tab.flows[slot].side[rs]
            if (r.flags & SF_FIN_SEEN) and seq_ge(pk.ack, r.fin_seq + 1):
                set_state(eng, slot, rs, ON_FIN_ACKED[r.state], HOOK_RECEIVER)
        if (fl & TH_FIN) and (eng.tab.flows[slot].side[side].flags & SF_FIN_SEEN):
            set_state(eng, slot, rs, ON_PEER_FIN[eng.tab.flows[slot].side[rs].state], HOOK_RECEIVER)
    f = &eng.tab.flows[slot]
    r = &f.side[rs]
    s = &f.side[side]
    if not (f.fflags & FF_ESTABLISHED) and SYNCHRONIZED[s.state] and SYNCHRONIZED[r.state]:
        f.fflags |= FF_ESTABLISHED
        eng.em.fire(B_ESTABLISHED, slot, side, HOOK_RECEIVER, 0, 0)
        f = &eng.tab.flows[slot]
        r = &f.side[rs]
        s = &f.side[side]
    return (s.flags & SF_FIN_SEEN) and (r.flags & SF_FIN_SEEN)         and (s.state == ST_TIME_WAIT or s.state == ST_CLOSED)         and (r.state == ST_TIME_WAIT or r.state == ST_CLOSED)
