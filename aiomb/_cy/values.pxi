# Python-visible values built by the core: FlowKey, the bytes of NEW_DATA values (FrameBytes),
# Event and FlowSnapshot. Readonly cdef classes, because they are built at event rate (DESIGN.md
# section 4.2 allows this shape). The live handles (Flow, PacketView) are in handle.pxi.

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

    ``key`` and ``flow_id`` name the flow (None for ERROR events; an ORPHAN's key is the packet's
    own, its sender as client, and it has no ``flow_id``). ``ts`` is seconds (packet time for
    captures). ``reason`` is set on connection/UDP end, ``old_state``/``new_state`` on state
    changes, ``stats`` (a :class:`FlowStatistics`) on CONN_END and UDP_END: the flow's figures
    when it ended. ``value`` is set on custom events that carry one and on ERROR events (the
    malformed reason). Stream events carry ``offset``/``length`` (a byte range of the side's
    stream): NEW_DATA's ``value`` is the ``length`` new bytes from ``offset`` (None when the
    side's buffering is off), OVERLAP's is (held bytes, new bytes), BUFFER_OVERRUN's the limit
    hit. A BUFFER_OVERRUN stands for ``count`` refusals of its side for that limit since the
    last delivery (coalesced): ``length`` bytes refused in all, the first at ``offset``. An event holds no live flow: the stack's ``flow(ev)`` gives the handle while the flow
    is in the table. Layer: core. Events compare equal by content.
    """

    cdef readonly object kind
    cdef readonly FlowKey key
    cdef uint64_t _flow_id          # 0: no flow
    cdef readonly object side
    cdef readonly double ts
    cdef readonly object reason
    cdef readonly object old_state
    cdef readonly object new_state
    cdef object _value
    cdef FlowSnapshot _stats
    cdef int64_t _offset            # -1: not a stream event
    cdef int64_t _length
    cdef uint32_t _count            # BUFFER_OVERRUN: refusals; 0: not one

    def __init__(self, *, kind, key=None, flow_id=None, side=None, ts=0.0, reason=None,
                 old_state=None, new_state=None, value=None, offset=None, length=None, count=None):
        self.kind = kind
        self.key = key
        if flow_id is not None and (not isinstance(flow_id, int) or flow_id < 1):
            raise ValueError(f"Event flow_id must be None or a positive int, got {flow_id!r}")
        self._flow_id = flow_id or 0
        self.side = side
        self.ts = ts
        self.reason = reason
        self.old_state = old_state
        self.new_state = new_state
        self._value = value
        self._offset = _range_field("offset", offset)
        self._length = _range_field("length", length)
        if count is not None and (not isinstance(count, int) or not 1 <= count <= 0xffffffff):
            raise ValueError(f"Event count must be None or a positive int, got {count!r}")
        self._count = count or 0

    @property
    def flow_id(self):
        """The flow's number (as ``Flow.id`` and ``aiomb flows`` give it), or None."""
        return self._flow_id if self._flow_id else None

    @property
    def value(self):
        """The event's value (see the class docstring), or None. NEW_DATA bytes still in capture
        frames are copied on the first read and kept by the event (the same bytes on every read)."""
        cdef FrameBytes fb
        if type(self._value) is not FrameBytes:
            return self._value
        fb = <FrameBytes>self._value
        self._value = fb.get()
        if refcount(<PyObject *>fb) <= 2:
            fb.data = None      # only the frame block's list (and fb here) hold it: nobody reads it again
        return self._value

    @property
    def stats(self):
        """The flow's :class:`FlowStatistics` when the event fired (CONN_END, UDP_END), else None."""
        return self._stats.statistics() if self._stats is not None else None

    @property
    def offset(self):
        """Stream offset of a stream event's byte range, else None."""
        return self._offset if self._offset >= 0 else None

    @property
    def length(self):
        """Length of a stream event's byte range, else None."""
        return self._length if self._length >= 0 else None

    @property
    def count(self):
        """How many refusals a BUFFER_OVERRUN stands for (at least 1), else None."""
        return self._count if self._count else None

    cdef tuple _astuple(self):
        return (self.kind, self.key, self._flow_id, self.side, self.ts, self.reason, self.old_state,
                self.new_state, resolved(self._value), self._offset, self._length, self._count)

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
        if self._flow_id:
            parts.append(f"flow_id={self._flow_id}")
        if self.side is not None:
            parts.append(f"side={self.side!s}")
        parts.append(f"ts={self.ts:.6f}")
        for name in ("reason", "old_state", "new_state", "offset", "length", "count", "value"):
            v = getattr(self, name)
            if v is not None:
                parts.append(f"{name}={v!s}")
        return f"Event({', '.join(parts)})"


@cython.boundscheck(False)
@cython.wraparound(False)
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
        wscale=s.wscale if s.wscale != 0xff and peer.wscale != 0xff else None,
        data_segments=st.segments, retransmitted_bytes=st.rexmit_bytes, out_of_order=st.ooo_segments,
        zero_window_probes=st.zw_probes, beyond_window=st.beyond_window, unchecked_bytes=st.unchecked,
        undelivered_bytes=st.undelivered, after_fin_bytes=st.after_fin, fin_ignored=st.fin_ignored,
        keep_alives=st.keep_alives)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef object flow_statistics(const flow_t *f):
    """A :class:`FlowStatistics` of a flow entry (live or snapshot)."""
    return FlowStatistics(
        client=side_stats(&f.side[0], &f.side[1]), server=side_stats(&f.side[1], &f.side[0]),
        first_ts=f.first_ts * 1e-9, last_ts=f.last_ts * 1e-9,
        end_reason=REASONS[f.end_reason], midstream=bool(f.fflags & FF_MIDSTREAM))


@cython.no_gc
@cython.final
@cython.freelist(256)
cdef class FlowSnapshot:
    """A flow's entry and stream counters copied at one moment (no buffers, no Python objects).

    Taken for an end event (``Event.stats``) and for a handle whose flow leaves the table (its
    final values). Layer: core.
    """

    cdef flow_t f
    cdef stream_t streams[2]

    cdef FlowSnapshot take(self, const flow_t *f):
        cdef int i
        self.f = f[0]
        self.f.handle = NULL
        for i in range(2):
            if f.side[i].stream != NULL:
                self.streams[i] = f.side[i].stream[0]
                self.streams[i].buf = NULL
                self.streams[i].buf_len = 0
                self.streams[i].nrefs = 0
                self.streams[i].ref_bytes = 0
                self.streams[i].ooo = NULL
                self.f.side[i].stream = &self.streams[i]
        return self

    def statistics(self):
        """The snapshot as a :class:`FlowStatistics`."""
        return flow_statistics(&self.f)


cdef inline FlowSnapshot snapshot(const flow_t *f):
    cdef FlowSnapshot snap = FlowSnapshot.__new__(FlowSnapshot)
    return snap.take(f)
