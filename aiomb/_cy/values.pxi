# Python-visible values built by the core: FlowKey, Event, the live Flow handle and the
# PacketView given to inline handlers and predicates. Readonly cdef classes, because the core
# builds them at event rate (DESIGN.md section 4.2 allows this shape).

import ipaddress as _ipaddress

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.ref cimport PyObject

cdef extern from "Python.h":
    Py_ssize_t refcount "Py_REFCNT" (PyObject *o)

from aiomb.flows._types import Side, TcpState, Proto, EndReason, Hook, Verdict
from aiomb.flows._stats import SideStatistics, FlowStatistics

cdef tuple SIDES = (Side.CLIENT, Side.SERVER)
cdef tuple STATES = tuple(TcpState)
cdef dict PROTOS = {6: Proto.TCP, 17: Proto.UDP}
cdef object PROTO_TCP = Proto.TCP
cdef object PROTO_UDP = Proto.UDP
cdef tuple NO_VLAN = ()


cdef inline tuple vlan_tuple(const uint16_t *vlan, uint8_t n, bint with_vlan):
    if not with_vlan or n == 0:
        return NO_VLAN
    if n == 1:
        return (vlan[0],)
    return (vlan[0], vlan[1])
cdef tuple REASONS = (None,) + tuple(EndReason)
cdef tuple HOOKS = (None, Hook.SENDER, Hook.RECEIVER)


cdef object ip_object(const uint8_t *addr, uint8_t family):
    if family == 4:
        return _ipaddress.IPv4Address(addr[:4])
    return _ipaddress.IPv6Address(addr[:16])


cdef int pack_ip(object value, uint8_t *out) except -1:
    """Parse an address (str, bytes or ipaddress object) into 16 bytes; returns the family."""
    if isinstance(value, (str, bytes, int)):
        value = _ipaddress.ip_address(value)
    if not isinstance(value, (_ipaddress.IPv4Address, _ipaddress.IPv6Address)):
        raise TypeError(f"expected an IP address, got {value!r}")
    raw = value.packed
    memset(out, 0, 16)
    memcpy(out, <const char *>raw, len(raw))
    return 4 if len(raw) == 4 else 6


@cython.no_gc
cdef class FlowKey:
    """A flow's identity: protocol, client and server address and port, and VLAN tags.

    The client is the initiator (see README "Who is the client"); ``vlan`` is () unless the
    stack keys flows by VLAN. Values compare and hash by content. Layer: core (built once per
    flow); constructible by users for comparisons: ``FlowKey(proto=6, client_ip="10.0.0.1", ...)``.
    """

    cdef readonly object proto
    cdef readonly int client_port
    cdef readonly int server_port
    cdef readonly tuple vlan
    cdef uint8_t _cip[16]
    cdef uint8_t _sip[16]
    cdef uint8_t _family
    cdef object _cip_obj
    cdef object _sip_obj

    def __init__(self, *, proto, client_ip, client_port, server_ip, server_port, vlan=()):
        self.proto = Proto(proto)
        cf = pack_ip(client_ip, self._cip)
        sf = pack_ip(server_ip, self._sip)
        if cf != sf:
            raise ValueError(f"client {client_ip} and server {server_ip} are of different IP families")
        self._family = cf
        for port in (client_port, server_port):
            if not 0 <= port <= 0xffff:
                raise ValueError(f"port {port} is out of range 0..65535")
        self.client_port = client_port
        self.server_port = server_port
        self.vlan = tuple(vlan)

    @property
    def client_ip(self):
        """The client's address (``ipaddress.IPv4Address`` or ``IPv6Address``)."""
        if self._cip_obj is None:
            self._cip_obj = ip_object(self._cip, self._family)
        return self._cip_obj

    @property
    def server_ip(self):
        """The server's address (``ipaddress.IPv4Address`` or ``IPv6Address``)."""
        if self._sip_obj is None:
            self._sip_obj = ip_object(self._sip, self._family)
        return self._sip_obj

    @property
    def ip_version(self):
        """4 or 6."""
        return self._family

    cdef tuple _astuple(self):
        return (int(self.proto), self._cip[:16], self.client_port, self._sip[:16], self.server_port, self.vlan)

    def __eq__(self, other):
        if not isinstance(other, FlowKey):
            return NotImplemented
        return self._astuple() == (<FlowKey>other)._astuple()

    def __hash__(self):
        return hash(self._astuple())

    def __str__(self):
        c, s = self.client_ip, self.server_ip
        cs = f"[{c}]" if self._family == 6 else str(c)
        ss = f"[{s}]" if self._family == 6 else str(s)
        v = f" vlan {'/'.join(map(str, self.vlan))}" if self.vlan else ""
        return f"{self.proto} {cs}:{self.client_port} -> {ss}:{self.server_port}{v}"

    def __repr__(self):
        return f"<FlowKey {self}>"

    def __reduce__(self):
        return (_make_key, (int(self.proto), str(self.client_ip), self.client_port,
                            str(self.server_ip), self.server_port, self.vlan))


def _make_key(proto, client_ip, client_port, server_ip, server_port, vlan):
    return FlowKey(proto=proto, client_ip=client_ip, client_port=client_port,
                   server_ip=server_ip, server_port=server_port, vlan=vlan)


cdef FlowKey key_from_flow(const flow_t *f, bint with_vlan):
    cdef FlowKey k = FlowKey.__new__(FlowKey)
    k.proto = PROTO_TCP if f.proto == 6 else PROTO_UDP
    memcpy(k._cip, f.client_ip, 16)
    memcpy(k._sip, f.server_ip, 16)
    k._family = f.family
    k.client_port = f.client_port
    k.server_port = f.server_port
    k.vlan = vlan_tuple(f.vlan, f.nvlan, with_vlan)
    return k


cdef FlowKey key_from_packet(const pkt_t *pk, bint with_vlan):
    cdef FlowKey k = FlowKey.__new__(FlowKey)
    k.proto = PROTOS.get(pk.proto, pk.proto)
    memcpy(k._cip, pk.src, 16)
    memcpy(k._sip, pk.dst, 16)
    k._family = pk.family
    k.client_port = pk.sport
    k.server_port = pk.dport
    k.vlan = vlan_tuple(pk.vlan, pk.nvlan, with_vlan)
    return k


cdef int64_t _range_field(str name, object value) except -2:
    """An Event's offset or length: None is stored as -1; negative numbers are refused."""
    if value is None:
        return -1
    if value < 0:
        raise ValueError(f"Event {name} must be None or a non-negative int, got {value!r}")
    return value


@cython.no_gc
@cython.final
@cython.freelist(2048)
cdef class FrameBytes:
    """Stream bytes that still lie in the frames of a capture batch: a NEW_DATA value before
    anyone looks at it.

    ``get()`` makes the bytes object (one copy, kept); until then nothing is copied. The
    capture reader calls ``get()`` on every value still referenced before it reuses the frames'
    memory (:class:`FrameBlock`), so a value never outlives its bytes. Layer: core; users only
    ever see the bytes (``Event.value``, ``PacketView.value``).
    """

    cdef const uint8_t *ptr[INLINE_REFS]
    cdef uint32_t len[INLINE_REFS]
    cdef const uint8_t **xptr       # more pieces than INLINE_REFS: n of them, allocated
    cdef uint32_t *xlen
    cdef uint32_t n
    cdef uint64_t total
    cdef bytes data

    def __dealloc__(self):
        self.forget()

    cdef int take(self, const ref_t *refs, int32_t first, uint32_t n, uint64_t total) except -1:
        """Point at the n pieces of a stream side's chain of references, from ``first``."""
        cdef const uint8_t **ptr = self.ptr
        cdef uint32_t *lens = self.len
        cdef uint32_t i
        cdef int32_t r = first
        if n > INLINE_REFS:
            self.xptr = <const uint8_t **>malloc(n * sizeof(uint8_t *))
            self.xlen = <uint32_t *>malloc(n * sizeof(uint32_t))
            if self.xptr == NULL or self.xlen == NULL:
                self.forget()
                raise MemoryError()
            ptr = self.xptr
            lens = self.xlen
        for i in range(n):
            ptr[i] = refs[r].ptr
            lens[i] = refs[r].len
            r = refs[r].next
        self.n = n
        self.total = total
        return 0

    cdef bytes get(self):
        cdef const uint8_t **ptr = self.xptr if self.xptr != NULL else self.ptr
        cdef uint32_t *lens = self.xlen if self.xlen != NULL else self.len
        cdef char *dst
        cdef uint32_t i
        if self.data is None:
            if self.n == 1:
                self.data = ptr[0][:lens[0]]
            else:
                self.data = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>self.total)
                dst = PyBytes_AS_STRING(self.data)
                for i in range(self.n):
                    memcpy(dst, ptr[i], lens[i])
                    dst += lens[i]
            self.forget()
        return self.data

    cdef void lose(self) noexcept:
        """The frames go and there is no memory to copy them: the value becomes empty."""
        if self.data is None:
            self.data = b""
            self.forget()

    cdef void forget(self) noexcept:
        """Let go of the frame pieces."""
        free(self.xptr)
        free(self.xlen)
        self.xptr = NULL
        self.xlen = NULL
        self.n = 0


cdef inline object resolved(object value):
    """An event value as users see it: a pending FrameBytes becomes its bytes."""
    if type(value) is FrameBytes:
        return (<FrameBytes>value).get()
    return value


@cython.no_gc
@cython.freelist(2048)
cdef class Event:
    """One event, as a value: what happened (``kind``), to which flow, on which side, when.

    ``ts`` is seconds (packet time for captures). ``reason`` is set on connection/UDP end,
    ``old_state``/``new_state`` on state changes, ``value`` on custom events that carry one and
    on ERROR events (the malformed reason). Stream events carry ``offset``/``length`` (a byte
    range of the side's stream): NEW_DATA's ``value`` is the bytes from ``offset`` (``length``
    of them new), OVERLAP's is (held bytes, new bytes), BUFFER_OVERRUN's the limit hit. ``flow`` is the flow's live handle (None for orphan
    and error events). Layer: core. Events compare equal by content, ``flow`` excepted.
    """

    cdef readonly object kind
    cdef readonly FlowKey key
    cdef readonly object flow
    cdef readonly object side
    cdef readonly double ts
    cdef readonly object reason
    cdef readonly object old_state
    cdef readonly object new_state
    cdef object _value
    cdef int64_t _offset            # -1: not a stream event
    cdef int64_t _length

    def __init__(self, *, kind, key=None, flow=None, side=None, ts=0.0, reason=None,
                 old_state=None, new_state=None, value=None, offset=None, length=None):
        self.kind = kind
        self.key = key
        self.flow = flow
        self.side = side
        self.ts = ts
        self.reason = reason
        self.old_state = old_state
        self.new_state = new_state
        self._value = value
        self._offset = _range_field("offset", offset)
        self._length = _range_field("length", length)

    @property
    def value(self):
        """The event's value (see the class docstring), or None."""
        cdef FrameBytes fb
        if type(self._value) is not FrameBytes:
            return self._value
        fb = <FrameBytes>self._value
        self._value = fb.get()          # the event holds its bytes from now on
        if refcount(<PyObject *>fb) <= 2:
            fb.data = None              # only its block's list (and fb here) hold it: no one reads it again
            fb.total = 0
        return self._value

    @property
    def offset(self):
        """Stream offset of a stream event's byte range, else None."""
        return self._offset if self._offset >= 0 else None

    @property
    def length(self):
        """Length of a stream event's byte range, else None."""
        return self._length if self._length >= 0 else None

    cdef tuple _astuple(self):
        return (self.kind, self.key, self.side, self.ts, self.reason, self.old_state, self.new_state,
                resolved(self._value), self._offset, self._length)

    def __eq__(self, other):
        if not isinstance(other, Event):
            return NotImplemented
        return self._astuple() == (<Event>other)._astuple()

    def __hash__(self):
        return hash(self._astuple())

    def __repr__(self):
        parts = [f"kind={self.kind!s}"]
        if self.key is not None:
            parts.append(f"key={self.key}")
        if self.side is not None:
            parts.append(f"side={self.side!s}")
        parts.append(f"ts={self.ts:.6f}")
        for name in ("reason", "old_state", "new_state", "offset", "length", "value"):
            v = getattr(self, name)
            if v is not None:
                parts.append(f"{name}={v!s}")
        return f"Event({', '.join(parts)})"


cdef object side_stats(const side_t *s, const side_t *peer):
    cdef const stream_t *st = s.stream
    cdef stream_t empty
    if st == NULL:
        memset(&empty, 0, sizeof(stream_t))
        st = &empty
    return SideStatistics(
        stream_bytes=st.bytes, missed=st.missed, overlap_conflicts=st.overlaps,
        overlap_conflict_bytes=st.overlap_bytes, next_offset=st.next_off,
        packets=s.packets, ip_bytes=s.ip_bytes, payload_bytes=s.payload_bytes,
        state=STATES[s.state], syn=s.syn, synack=s.synack, fin=s.fin, rst=s.rst,
        rst_ignored=s.rst_ignored, retransmits=s.retransmits + st.rexmits,
        isn=s.isn if (s.flags & SF_SYN_SEEN) else None, next_seq=s.next_seq if (s.flags & SF_SEQ_KNOWN) else None,
        last_ack=s.last_ack if (s.flags & SF_ACK_KNOWN) else None, window=s.window,
        wscale=s.wscale if s.wscale != 0xff and peer.wscale != 0xff else None)


@cython.no_gc
cdef class Flow:
    """The live handle of one flow: key, both sides' TCP states and counters, user context.

    Live while the flow is in the table; after it is removed the handle keeps its final values
    (``alive`` turns False). ``context`` is a dict for middlebox state, shared by every
    middlebox on the stack. Layer: core; reading attributes never blocks. Handles are made at
    flow rate, so they are not tracked by the cyclic garbage collector: keep the handle itself
    out of its own ``context`` (a cycle through it would never be freed).
    """

    cdef Engine _engine
    cdef int32_t _slot
    cdef readonly uint64_t id
    cdef readonly FlowKey key
    cdef flow_t *_final              # the final values, once the flow has left the table
    cdef stream_t *_final_streams
    cdef bint _alive
    cdef bint _pinned                # the table owns a reference (the context is in use)
    cdef dict _context

    def __dealloc__(self):
        if self._alive and self._engine is not None \
                and self._engine.tab.flows[self._slot].handle == <void *>self:
            self._engine.tab.flows[self._slot].handle = NULL
        free(self._final)
        free(self._final_streams)

    cdef const flow_t *_f(self):
        if self._alive:
            return &self._engine.tab.flows[self._slot]
        return self._final

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
        return bool(self._f().midstream)

    def statistics(self):
        """A :class:`FlowStatistics` snapshot of both sides' counters and states."""
        cdef const flow_t *f = self._f()
        return FlowStatistics(
            client=side_stats(&f.side[0], &f.side[1]), server=side_stats(&f.side[1], &f.side[0]),
            first_ts=f.first_ts * 1e-9, last_ts=f.last_ts * 1e-9,
            end_reason=REASONS[f.end_reason], midstream=bool(f.midstream))

    # ---- streams: the bytes each side sent, reassembled --------------------------------

    cdef stream_t *_stream(self, side, bint create) except? NULL:
        cdef int i = Side(side)
        cdef flow_t *f
        if not self._alive:
            return self._final.side[i].stream
        f = &self._engine.tab.flows[self._slot]
        if f.side[i].stream == NULL and create:
            if f.proto != 6:
                raise ValueError(f"{self.key} is not TCP: UDP flows have no reassembled stream")
            stream_new(self._engine, &f.side[i])
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
        come again, with the new ones, in the next NEW_DATA.
        """
        cdef stream_t *st = self._stream(side, 0)
        if n < 0:
            raise ValueError("n must not be negative")
        if st == NULL or not self._alive:
            return 0
        k = min(n, st.buf_len)
        stream_consume(self._engine, st, k)
        st.consumed_in_call = 1
        return k

    def set_policy(self, name):
        """Choose this flow's overlap policy (``first``, ``last``, ``linux``, ``windows``, ...)."""
        if not self._alive:
            raise RuntimeError(f"flow #{self.id} has ended; its policy can no longer change")
        self._engine.tab.flows[self._slot].policy = <uint8_t>policy_number(name, "overlap policy")

    def hold(self, side, enabled=True):
        """Keep ``side``'s bytes until :meth:`consume` releases them (bounded by max_buffer)."""
        self._stream(side, 1).manual = bool(enabled)

    def set_buffering(self, side, enabled):
        """Switch byte buffering of one side on or off; off keeps only offsets and counters."""
        cdef stream_t *st = self._stream(side, 1)
        cdef seg_t *g
        if not enabled and st.buffering:
            stream_consume(self._engine, st, st.buf_len)
            g = st.ooo
            while g != NULL:
                if g.data != NULL:
                    self._engine.stream_memory -= g.length
                    free(g.data)
                    g.data = NULL
                g = g.next
        st.buffering = bool(enabled)

    def stop(self, side=None):
        """Stop monitoring one side's stream (or both, with ``side=None``) at once; frees it."""
        sides = (Side.CLIENT, Side.SERVER) if side is None else (Side(side),)
        for sd in sides:
            st = self._stream(sd, 1) if self._alive else NULL
            if st != NULL:
                stream_consume(self._engine, st, st.buf_len)
                self.set_buffering(sd, False)
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


cdef class PacketView:
    """The live view given to inline handlers and predicates: the current event and packet.

    Valid only during the call (it is reused for the next packet). ``packet`` fields are None
    for events raised without a packet (timeouts, end of capture). Only handlers at the sender
    hook may ``drop()`` the packet. Layer: core.
    """

    cdef Engine _engine
    cdef bint _has_packet
    cdef int _side
    cdef int _hook
    cdef int _bit
    cdef int32_t _slot
    cdef int _a
    cdef int _b
    cdef object _value

    @property
    def kind(self):
        """The event being handled."""
        return self._engine.kind_objs[self._bit]

    @property
    def event(self):
        """The current event as an :class:`Event` value."""
        return self._engine.make_event(self._bit, self._slot, self._side, self._a, self._b, self._value)

    @property
    def flow(self):
        """The flow's live :class:`Flow` handle, or None for orphan packets."""
        return self._engine.handle(self._slot) if self._slot >= 0 else None

    @property
    def side(self):
        """The sending side of the packet (:class:`Side`), or None."""
        return SIDES[self._side] if self._side >= 0 else None

    @property
    def hook(self):
        """:class:`Hook` at which the handler runs, or None when there is no packet."""
        return HOOKS[self._hook]

    @property
    def value(self):
        """The event's value, if any (for NEW_DATA the side's unconsumed in-order bytes)."""
        return resolved(self._value)

    @property
    def ts(self):
        """Packet (or event) time in seconds."""
        return self._engine.now * 1e-9

    @property
    def frame(self):
        """The raw frame (bytes copy), or None without a packet."""
        if not self._has_packet:
            return None
        cdef pkt_t *pk = &self._engine.pk
        return pk.frame[:pk.caplen]

    @property
    def payload(self):
        """The transport payload (bytes copy), or None without a packet."""
        if not self._has_packet:
            return None
        cdef pkt_t *pk = &self._engine.pk
        return pk.payload[:pk.paylen]

    @property
    def payload_length(self):
        """Length of the transport payload."""
        return self._engine.pk.paylen if self._has_packet else 0

    @property
    def tcp_flags(self):
        """TCP flags byte (0 for UDP)."""
        return self._engine.pk.flags if self._has_packet else None

    @property
    def seq(self):
        """TCP sequence number."""
        return self._engine.pk.seq if self._has_packet else None

    @property
    def ack(self):
        """TCP acknowledgement number."""
        return self._engine.pk.ack if self._has_packet else None

    @property
    def window(self):
        """TCP window field as sent (unscaled)."""
        return self._engine.pk.win if self._has_packet else None

    @property
    def src(self):
        """Source address of the packet."""
        return ip_object(self._engine.pk.src, self._engine.pk.family) if self._has_packet else None

    @property
    def dst(self):
        """Destination address of the packet."""
        return ip_object(self._engine.pk.dst, self._engine.pk.family) if self._has_packet else None

    @property
    def sport(self):
        """Source port."""
        return self._engine.pk.sport if self._has_packet else None

    @property
    def dport(self):
        """Destination port."""
        return self._engine.pk.dport if self._has_packet else None

    @property
    def verdict(self):
        """The packet's verdict so far (:class:`Verdict`)."""
        return Verdict(self._engine.verdict)

    def drop(self):
        """Set the packet's verdict to DROP (inline mode applies it; statistics count it).

        Raises RuntimeError outside the sender hook: only there may a packet be dropped.
        """
        if not self._has_packet or self._hook != HOOK_SENDER:
            raise RuntimeError(
                "a packet can only be dropped at the sender hook; register the handler with "
                "hook=aiomb.Hook.SENDER (or an event raised there, such as PACKET_IN)")
        self._engine.verdict = VERDICT_DROP

    def rewrite(self, *, src=None, dst=None, sport=None, dport=None):
        """Rewrite the packet's source/destination address and ports in place (a NAT's step).

        The IPv4 header checksum and the TCP/UDP checksum are updated incrementally, and the
        view's ``src``/``dst``/``sport``/``dport`` show the new values; the packet stays on the
        flow it was looked up in. Only at the sender hook, and only on frames the source lets
        be written (an inline port's UMEM); raises RuntimeError otherwise, ValueError for an
        address of the other IP family or a port out of range.
        """
        cdef uint8_t sa[16]
        cdef uint8_t da[16]
        cdef pkt_t *pk = &self._engine.pk
        if not self._has_packet or self._hook != HOOK_SENDER:
            raise RuntimeError("a packet can only be rewritten at the sender hook; register the "
                               "handler with hook=aiomb.Hook.SENDER")
        if not self._engine.frames_writable:
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
            raise RuntimeError("this packet has no transport header in its frame (an IP fragment); "
                               "it cannot be rewritten in place")
