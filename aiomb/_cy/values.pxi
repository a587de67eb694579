# Python-visible values built by the core: FlowKey, Event, the live Flow handle and the
# PacketView given to inline handlers and predicates. Readonly cdef classes, because the core
# builds them at event rate (DESIGN.md section 4.2 allows this shape).

import ipaddress as _ipaddress

cimport cython

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


@cython.no_gc
cdef class Event:
    """One event, as a value: what happened (``kind``), to which flow, on which side, when.

    ``ts`` is seconds (packet time for captures). ``reason`` is set on connection/UDP end,
    ``old_state``/``new_state`` on state changes, ``value`` on custom events that carry one and
    on ERROR events (the malformed reason). ``flow`` is the flow's live handle (None for orphan
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
    cdef readonly object value

    def __init__(self, *, kind, key=None, flow=None, side=None, ts=0.0, reason=None,
                 old_state=None, new_state=None, value=None):
        self.kind = kind
        self.key = key
        self.flow = flow
        self.side = side
        self.ts = ts
        self.reason = reason
        self.old_state = old_state
        self.new_state = new_state
        self.value = value

    cdef tuple _astuple(self):
        return (self.kind, self.key, self.side, self.ts, self.reason, self.old_state, self.new_state, self.value)

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
        for name in ("reason", "old_state", "new_state", "value"):
            v = getattr(self, name)
            if v is not None:
                parts.append(f"{name}={v!s}")
        return f"Event({', '.join(parts)})"


cdef object side_stats(const side_t *s, const side_t *peer):
    return SideStatistics(
        packets=s.packets, ip_bytes=s.ip_bytes, payload_bytes=s.payload_bytes,
        state=STATES[s.state], syn=s.syn, synack=s.synack, fin=s.fin, rst=s.rst,
        rst_ignored=s.rst_ignored, retransmits=s.retransmits,
        isn=s.isn if s.syn_seen else None, next_seq=s.next_seq if s.seq_known else None,
        last_ack=s.last_ack if s.ack_known else None, window=s.window,
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
    cdef flow_t _final
    cdef bint _alive
    cdef dict _context

    cdef const flow_t *_f(self):
        if self._alive:
            return &self._engine.tab.flows[self._slot]
        return &self._final

    @property
    def alive(self):
        """True while the flow is in the flow table."""
        return self._alive

    @property
    def context(self):
        """A dict for the user's per-flow state (created on first use)."""
        if self._context is None:
            self._context = {}
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
        """The custom event's value, if any."""
        return self._value

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
