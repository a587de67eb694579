# The live handles: Flow (one flow in the table, its streams, the user's context) and PacketView
# (the current event and packet, given to inline handlers and predicates during their call).

from aiomb._errors import FlowEnded
from aiomb.flows._html import flow_statistics_table as _flow_html_table

cdef uint16_t outer_endpoint(str name, object value, uint8_t family, uint8_t *ip) except? 0:
    """Flow.translate's ``name`` endpoint: its address into ``ip``; returns its port."""
    try:
        address, number = value
    except (TypeError, ValueError):
        raise ValueError(f"translate(): {name} must be an (address, port) pair, got {value!r}") from None
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 0xffff:
        raise ValueError(f"translate(): {name} port must be an int from 0 to 65535, got {number!r}")
    if pack_ip(address, ip) != family:
        raise ValueError(f"translate(): {name} address {address} is not an IPv{family} address like the flow's")
    return number


@cython.no_gc
cdef class Flow:
    """The live handle of one flow: key, both sides' TCP states and counters, user context.

    Live while the flow is in the table; after it is removed the handle keeps its final values
    (``alive`` turns False). Reading stays valid once the flow has ended (``peek``/``ppeek``
    show what is still held while it lingers in the table, nothing once it is removed); what
    changes how bytes still to come are kept (``hold``, ``set_buffering``, ``set_policy``)
    raises :class:`~aiomb.FlowEnded` once it has ended, and what releases bytes (``consume``,
    ``stop``) once it has left the table (its bytes went with it). ``context`` is a dict for middlebox state, shared by every
    middlebox on the stack. Layer: core; reading attributes never blocks. Handles are made at
    flow rate, so they are not tracked by the cyclic garbage collector: keep the handle itself
    out of its own ``context`` (a cycle through it would never be freed).
    """

    cdef Engine _engine
    cdef int32_t _slot
    cdef readonly uint64_t id
    cdef readonly FlowKey key
    cdef FlowSnapshot _final         # the final values, once the flow has left the table
    cdef bint _alive
    cdef bint _pinned                # the table owns a reference (the context is in use)
    cdef dict _context

    def __dealloc__(self):
        if self._alive and self._engine is not None \
                and self._engine.tab.flows[self._slot].handle == <void *>self:
            self._engine.tab.flows[self._slot].handle = NULL

    cdef int _open(self, str what) except -1:
        """Raise FlowEnded unless the flow is open (no end raised yet): ``what`` can only act on
        bytes still to come."""
        if self._alive and self._engine.tab.flows[self._slot].status == FS_OPEN:
            return 0
        raise FlowEnded(f"flow #{self.id} {self.key} has ended ({self.end_reason}): {what} acts on bytes still "
                        "to come, and none will; check flow.end_reason first, or read what remains with peek()",
                        key=self.key, reason=self.end_reason)

    cdef int _in_table(self, str what) except -1:
        """Raise FlowEnded once the flow has left the table (its streams were freed with it)."""
        if self._alive:
            return 0
        raise FlowEnded(f"flow #{self.id} {self.key} has left the flow table ({self.end_reason}): {what} has "
                        "nothing to release, its bytes were freed with it; check flow.alive first",
                        key=self.key, reason=self.end_reason)

    cdef const flow_t *_f(self):
        if self._alive:
            return &self._engine.tab.flows[self._slot]
        return &self._final.f

    @property
    def alive(self):
        """True while the flow is in the flow table."""
        return self._alive

    @property
    def context(self):
        """A dict for the user's per-flow state (created on first use; kept with the flow)."""
        if self._context is None:
            self._context = {}
            if self._alive and not self._pinned:
                self._pinned = True
                Py_INCREF(self)
        return self._context

    def state(self, side):
        """The TCP state of ``side`` (a :class:`Side`), as the middlebox infers it."""
        return STATES[self._f().side[Side(side)].state]

    @property
    def client_state(self):
        """The client's TCP state."""
        return STATES[self._f().side[0].state]

    @property
    def server_state(self):
        """The server's TCP state."""
        return STATES[self._f().side[1].state]

    @property
    def first_ts(self):
        """Time of the flow's first packet, in seconds."""
        return self._f().first_ts * 1e-9

    @property
    def last_ts(self):
        """Time of the flow's latest packet, in seconds."""
        return self._f().last_ts * 1e-9

    @property
    def end_reason(self):
        """How the flow ended (:class:`EndReason`), or None while it is open."""
        return REASONS[self._f().end_reason]

    @property
    def midstream(self):
        """True when the flow was picked up without its handshake."""
        return bool(self._f().fflags & FF_MIDSTREAM)

    def statistics(self):
        """A :class:`FlowStatistics` snapshot of both sides' counters and states."""
        return flow_statistics(self._f())

    # ---- address translation: the flow as seen beyond the middlebox ----------------------

    def translate(self, *, client=None, server=None):
        """Bind the flow to its outer tuple: beyond the middlebox (toward the server) its
        client is ``client`` and its server ``server``, each an ``(address, port)`` pair or
        None (unchanged). TCP and UDP.

        From then on, in the core, without a Python call per packet: a packet that arrives from
        the outer server to the outer client is translated to the flow's own server-to-client
        tuple **before the flow lookup**, so it is this flow's server packet (one flow, both
        sides' state and streams, one end); the client's packets leave with the outer tuple,
        rewritten **after the receiver hook** (handlers see the flow's own addresses both
        ways). Frames that the source lets be written (inline ports) are rewritten in place,
        IPv4 header and TCP/UDP checksums updated incrementally (RFC 1624); on read-only frames
        (captures) only the engine's view of the replies is translated (lookup, events,
        ``PacketView.src``/``dst``/``sport``/``dport``), the frames stay as they are. The
        binding lasts while the flow is in the table (an ended flow lingers there a while, so
        late retransmissions are still translated). The engine's ``translation_hook``, if any,
        is told of the binding (and of its end); if it raises, the binding is not made.

        Raises FlowEnded once the flow has ended; ValueError when it is already bound, for an
        address of the other IP family or a port out of range, or when an open flow holds the
        same outer tuple (an ended one gives it up: its packets are no longer translated).
        """
        cdef Engine eng
        cdef flow_t *f
        cdef xlat_t e
        cdef int32_t other
        if client is None and server is None:
            raise ValueError("translate() needs client=(address, port), server=(address, port) or both")
        self._open("translate()")
        eng = self._engine
        f = &eng.tab.flows[self._slot]
        if f.fflags & FF_TRANSLATED:
            raise ValueError(f"flow #{self.id} {self.key} is already translated to {self.translation}; "
                             "a flow's outer tuple is set once")
        memcpy(e.client_ip, f.client_ip, 16)
        memcpy(e.server_ip, f.server_ip, 16)
        e.client_port = f.client_port
        e.server_port = f.server_port
        e.proto = f.proto
        e.family = f.family
        if client is not None:
            e.client_port = outer_endpoint("client", client, f.family, e.client_ip)
        if server is not None:
            e.server_port = outer_endpoint("server", server, f.family, e.server_ip)
        other = xlat_find(&eng.xt, f.proto, f.family, e.server_ip, e.server_port,
                          e.client_ip, e.client_port) if eng.xt.count else -1
        if other >= 0:
            if eng.tab.flows[other].status == FS_OPEN:
                raise ValueError(f"translate(): flow #{eng.tab.flows[other].id} "
                                 f"{key_from_flow(&eng.tab.flows[other], eng.vlan_in_key)} is open with the "
                                 "same outer tuple; give this flow another address or port")
            xlat_unlink(&eng.xt, &eng.tab, other)
            if eng.translation_hook is not None:
                eng.tell_binding(False, &e)     # the same outer tuple
        xlat_reserve(&eng.xt, &eng.tab)
        eng.xt.ent[self._slot] = e
        xlat_link(&eng.xt, &eng.tab, self._slot)
        if eng.translation_hook is not None:
            try:
                eng.tell_binding(True, &e)
            except BaseException:
                xlat_unlink(&eng.xt, &eng.tab, self._slot)     # refused: not made
                raise

    @property
    def translation(self):
        """The outer tuple given by :meth:`translate`, as ``((client address, client port),
        (server address, server port))``, or None (not translated, or no longer in the table)."""
        cdef const xlat_t *e
        if not self._alive or not self._engine.tab.flows[self._slot].fflags & FF_TRANSLATED:
            return None
        e = &self._engine.xt.ent[self._slot]
        family = self._engine.tab.flows[self._slot].family
        return ((ip_object(e.client_ip, family), e.client_port), (ip_object(e.server_ip, family), e.server_port))

    # ---- streams: the bytes each side sent, reassembled --------------------------------

    cdef stream_t *_stream(self, side, bint create) except? NULL:
        cdef int i = Side(side)
        cdef flow_t *f
        if not self._alive:
            return self._final.f.side[i].stream
        f = &self._engine.tab.flows[self._slot]
        if f.side[i].stream == NULL and create:
            if f.proto != 6:
                raise ValueError(f"{self.key} is not TCP: UDP flows have no reassembled stream")
            if stream_new(self._engine, &f.side[i]) == NULL:
                raise MemoryError(f"max_stream_memory ({self._engine.rx.max_memory} bytes) has no room for "
                                  "another stream; raise it, or hold fewer sides")
        if f.side[i].stream != NULL:
            materialize(self._engine, f.side[i].stream)     # contiguous bytes for peek and co
        return f.side[i].stream

    def peek(self, side, n=None):
        """The next unconsumed in-order bytes of ``side``'s stream (at most ``n``), as bytes.

        Empty when nothing is held: by default bytes are released once NEW_DATA delivered
        them, unless the side is held (:meth:`hold`) or an inline NEW_DATA handler consumed
        only part of them. Raises ValueError for a UDP flow.
        """
        cdef stream_t *st = self._stream(side, 0)
        cdef uint32_t k
        if st == NULL or not st.buffering or st.buf == NULL:
            if st == NULL and int(self.key.proto) != 6:
                raise ValueError(f"{self.key} is not TCP: UDP flows have no reassembled stream")
            return b""
        k = st.buf_len if n is None or n > st.buf_len else n
        return st.buf[st.buf_start:st.buf_start + k]

    def ppeek(self, side, offset, n):
        """``n`` bytes of ``side``'s stream from absolute stream ``offset`` (positional peek).

        Raises ValueError naming the held range when [offset, offset+n) is not all held.
        """
        cdef stream_t *st = self._stream(side, 0)
        if n < 0 or offset < 0:
            raise ValueError("offset and n must not be negative")
        lo = st.buf_off if st != NULL else 0
        hi = lo + (st.buf_len if st != NULL and st.buf != NULL else 0)
        if not (lo <= offset and offset + n <= hi):
            raise ValueError(f"bytes [{offset}, {offset + n}) are not held; the buffer holds "
                             f"[{lo}, {hi}) of the {Side(side)} stream")
        return st.buf[st.buf_start + (offset - lo):st.buf_start + (offset - lo) + n]

    def consume(self, side, n):
        """Release the first ``n`` unconsumed bytes of ``side``'s stream; returns how many.

        In an inline NEW_DATA handler this is libnids' discard: the bytes not consumed stay and
        come again, with the new ones, in the next NEW_DATA. Raises FlowEnded once the flow has
        left the table (while an ended flow lingers there it still releases what is held).
        """
        cdef stream_t *st
        if n < 0:
            raise ValueError("n must not be negative")
        self._in_table("consume()")
        st = self._stream(side, 0)
        if st == NULL:
            return 0
        k = min(n, st.buf_len)
        stream_consume(self._engine, st, k)
        st.consumed_in_call = 1
        return k

    def set_policy(self, name):
        """Choose this flow's overlap policy (``first``, ``last``, ``linux``, ``windows``, ...).

        Raises FlowEnded once the flow has ended.
        """
        self._open("set_policy()")
        self._engine.tab.flows[self._slot].policy = <uint8_t>policy_number(name, "overlap policy")

    def hold(self, side, enabled=True):
        """Keep ``side``'s bytes until :meth:`consume` releases them (bounded by max_buffer).

        Raises FlowEnded once the flow has ended.
        """
        self._open("hold()")
        self._stream(side, 1).manual = bool(enabled)

    def set_buffering(self, side, enabled):
        """Switch byte buffering of one side on or off; off keeps only offsets and counters.

        Raises FlowEnded once the flow has ended (to free what an ended flow holds, use
        :meth:`consume` or :meth:`stop`).
        """
        cdef stream_t *st
        self._open("set_buffering()")
        st = self._stream(side, 1)
        if not enabled and st.buffering:
            self._unbuffer(st)
        st.buffering = bool(enabled)

    cdef void _unbuffer(self, stream_t *st) noexcept:
        """Free the bytes a stream holds, in order and out of order (it keeps its offsets)."""
        cdef seg_t *g
        stream_consume(self._engine, st, st.buf_len)
        g = st.ooo
        while g != NULL:
            if g.data != NULL:
                self._engine.rx.memory -= g.length
                free(g.data)
                g.data = NULL
            g = g.next

    def stop(self, side=None):
        """Stop monitoring one side's stream (or both, with ``side=None``) at once; frees it.

        Raises FlowEnded once the flow has left the table (an ended flow lingering there has
        what it holds freed). A UDP flow has no stream: nothing to stop.
        """
        cdef stream_t *st
        cdef flow_t *f
        self._in_table("stop()")
        f = &self._engine.tab.flows[self._slot]
        sides = (Side.CLIENT, Side.SERVER) if side is None else (Side(side),)
        for sd in sides:
            st = self._stream(sd, f.status == FS_OPEN and f.proto == 6)
            if st != NULL:
                self._unbuffer(st)
                st.buffering = 0
                st.stopped = 1

    def buffer(self, side):
        """A snapshot of ``side``'s reassembly buffer (a dict): the next expected offset, the
        consumed and delivered offsets, bytes held, the highest offset received, and the
        out-of-order segments as (offset, length) pairs.
        """
        cdef stream_t *st = self._stream(side, 0)
        cdef seg_t *g
        if st == NULL:
            return {"next_offset": 0, "consumed_offset": 0, "delivered_offset": 0, "held": 0,
                    "last_received": 0, "out_of_order": [], "buffering": self._engine.buffering}
        segs = []
        g = st.ooo
        last = st.next_off
        while g != NULL:
            segs.append((g.off, g.length))
            last = g.off + g.length
            g = g.next
        return {"next_offset": st.next_off, "consumed_offset": st.buf_off,
                "delivered_offset": st.delivered_off, "held": st.buf_len, "last_received": last,
                "out_of_order": segs, "buffering": bool(st.buffering)}

    def __repr__(self):
        return (f"<Flow #{self.id} {self.key} {self.client_state}/{self.server_state}"
                f"{'' if self._alive else ' removed'}>")

    def _repr_html_(self):
        """An HTML table for notebooks: the key, then both sides' counters and states side by
        side (escaped; a snapshot taken now)."""
        where = "in the table" if self._alive else "removed from the table"
        return _flow_html_table(flow_statistics(self._f()), title=f"Flow #{self.id} {self.key} ({where})")


cdef class PacketView:
    """The live view given to inline handlers and predicates: the current event and packet.

    Valid only during the call: a view kept after its handler returns raises RuntimeError when
    used (copy what you need, e.g. ``view.payload``, ``view.event``, inside the handler).
    ``packet`` fields are None for events raised without a packet (timeouts, end of capture).
    Only handlers at the sender hook may ``drop()`` the packet. Layer: core.
    """

    cdef Engine _engine
    cdef bint _dead                 # kept past its call: every access raises
    cdef bint _has_packet
    cdef int _side
    cdef int _hook
    cdef int _bit
    cdef int32_t _slot
    cdef int _a
    cdef int _b
    cdef int64_t _off
    cdef int64_t _len
    cdef object _value

    cdef inline Engine _eng(self):
        if self._dead:
            raise RuntimeError("this PacketView was kept after its handler returned; a view is valid "
                               "only during the call: copy what you need (view.payload, view.event, "
                               "view.flow) inside the handler")
        return self._engine

    cdef inline bint _packet(self) except -1:
        """Whether the event came with a packet (raises for a kept view)."""
        self._eng()
        return self._has_packet

    @property
    def kind(self):
        """The event being handled."""
        return self._eng().em.kind_objs[self._bit]

    @property
    def event(self):
        """The current event as an :class:`Event` value."""
        return self._eng().em.view_event(self)

    @property
    def flow(self):
        """The flow's live :class:`Flow` handle, or None for orphan packets."""
        cdef Engine eng = self._eng()
        return eng.handle(self._slot) if self._slot >= 0 else None

    @property
    def side(self):
        """The sending side of the packet (:class:`Side`), or None."""
        self._eng()
        return SIDES[self._side] if self._side >= 0 else None

    @property
    def hook(self):
        """:class:`Hook` at which the handler runs, or None when there is no packet."""
        self._eng()
        return HOOKS[self._hook]

    @property
    def value(self):
        """The event's value, if any (for NEW_DATA the new bytes; ``flow.peek`` shows every
        unconsumed byte of the side)."""
        self._eng()
        return resolved(self._value)

    @property
    def ts(self):
        """Packet (or event) time in seconds."""
        return self._eng().now * 1e-9

    @property
    def frame(self):
        """The raw frame (bytes copy), or None without a packet."""
        if not self._packet():
            return None
        cdef pkt_t *pk = &self._eng().pk
        return pk.frame[:pk.caplen]

    @property
    def payload(self):
        """The transport payload (bytes copy), or None without a packet."""
        if not self._packet():
            return None
        cdef pkt_t *pk = &self._eng().pk
        return pk.payload[:pk.paylen]

    @property
    def payload_length(self):
        """Length of the transport payload."""
        return self._eng().pk.paylen if self._packet() else 0

    @property
    def tcp_flags(self):
        """TCP flags byte (0 for UDP)."""
        return self._eng().pk.flags if self._packet() else None

    @property
    def seq(self):
        """TCP sequence number."""
        return self._eng().pk.seq if self._packet() else None

    @property
    def ack(self):
        """TCP acknowledgement number."""
        return self._eng().pk.ack if self._packet() else None

    @property
    def window(self):
        """TCP window field as sent (unscaled)."""
        return self._eng().pk.win if self._packet() else None

    @property
    def ttl(self):
        """IPv4 time to live or IPv6 hop limit as captured (of the last fragment, for a datagram
        rebuilt from fragments; of the inner packet, for one found inside a tunnel)."""
        if not self._packet():
            return None
        cdef const pkt_t *pk = &self._eng().pk
        return pk.l3[8 if pk.family == 4 else 7]

    @property
    def tunnels(self):
        """How many tunnels the packet was found in (0: none; see README, "Tunnels"): its fields are
        the innermost packet's."""
        return self._eng().pk.tunnels if self._packet() else None

    @property
    def src(self):
        """Source address of the packet."""
        return ip_object(self._eng().pk.src, self._eng().pk.family) if self._packet() else None

    @property
    def dst(self):
        """Destination address of the packet."""
        return ip_object(self._eng().pk.dst, self._eng().pk.family) if self._packet() else None

    @property
    def sport(self):
        """Source port."""
        return self._eng().pk.sport if self._packet() else None

    @property
    def dport(self):
        """Destination port."""
        return self._eng().pk.dport if self._packet() else None

    @property
    def verdict(self):
        """The packet's verdict so far (:class:`Verdict`)."""
        return Verdict(self._eng().verdict)

    def drop(self):
        """Set the packet's verdict to DROP (inline mode applies it; statistics count it).

        Raises RuntimeError outside the sender hook: only there may a packet be dropped.
        """
        if not self._packet() or self._hook != HOOK_SENDER:
            raise RuntimeError(
                "a packet can only be dropped at the sender hook; register the handler with "
                "hook=aiomb.Hook.SENDER (or an event raised there, such as PACKET_IN)")
        self._eng().verdict = VERDICT_DROP

    def rewrite(self, *, src=None, dst=None, sport=None, dport=None):
        """Rewrite the packet's source/destination address and ports in place (a NAT's step).

        The IPv4 header checksum and the TCP/UDP checksum are updated incrementally, and the
        view's ``src``/``dst``/``sport``/``dport`` show the new values; the packet stays on the
        flow it was looked up in (to keep a NAT's two directions one flow, use
        :meth:`Flow.translate` instead). Only at the sender hook, and only on frames the source lets
        be written (an inline port's UMEM); raises RuntimeError otherwise, ValueError for an
        address of the other IP family or a port out of range.
        """
        cdef uint8_t sa[16]
        cdef uint8_t da[16]
        cdef pkt_t *pk = &self._eng().pk
        if not self._packet() or self._hook != HOOK_SENDER:
            raise RuntimeError("a packet can only be rewritten at the sender hook; register the "
                               "handler with hook=aiomb.Hook.SENDER")
        if not self._eng().frames_writable:
            raise RuntimeError("this packet's frame is read-only: only inline ports "
                               "(aiomb.port(..., inline=...)) let handlers rewrite packets")
        for port in (sport, dport):
            if port is not None and not 0 <= port <= 0xffff:
                raise ValueError(f"port {port} is out of range 0..65535")
        if src is not None and pack_ip(src, sa) != pk.family:
            raise ValueError(f"{src} is not an IPv{pk.family} address like the packet's")
        if dst is not None and pack_ip(dst, da) != pk.family:
            raise ValueError(f"{dst} is not an IPv{pk.family} address like the packet's")
        if rewrite_packet(pk, sa if src is not None else NULL, da if dst is not None else NULL,
                          -1 if sport is None else sport, -1 if dport is None else dport) < 0:
            raise RuntimeError("this packet has no transport header of its own in its frame (an IP fragment), "
                               "or is inside a tunnel whose checksums would cover the change; "
                               "it cannot be rewritten in place")
