# The Engine: per packet, parse -> flow lookup -> sender update + sender hook -> receiver update
# + receiver hook -> verdict (DESIGN.md section 2). Events are computed only for kinds someone
# wants; async events are appended to per-subscription lists handed over once per batch.

from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from cpython.list cimport PyList_Append
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from aiomb.events._kinds import EventKind, CustomEvent, split_kinds
from aiomb.flows._stats import EngineStatistics

cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil

MALFORMED_REASONS = (
    "truncated_l2", "truncated_ip", "bad_ip_version", "bad_ip_header_length",
    "bad_ip_total_length", "bad_ipv6_extension", "truncated_tcp", "bad_tcp_header_length",
    "bad_tcp_option", "truncated_udp", "bad_udp_length", "bad_fragment", "unknown_linktype",
    "bad_tcp_flags",
)

cdef enum:
    MAX_SUBS = 256
    MAX_MBOXES = 32

cdef uint32_t ALL_MBOXES = 0xffffffff

cdef inline bint seq_gt(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) > 0

cdef inline bint seq_ge(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) >= 0

cdef object held_value(Engine eng, const stream_t *st, FrameBlock block):
    """The unconsumed in-order bytes: a FrameBytes when they are all referenced in frames of
    ``block`` (copied only if someone looks), else a bytes copy."""
    cdef FrameBytes fb
    if st.nrefs == 0:
        return st.buf[st.buf_start:st.buf_start + st.buf_len]
    fb = FrameBytes.__new__(FrameBytes)
    fb.take(eng.refs, st.ref_first, st.nrefs, st.ref_bytes)
    if block is None:
        return fb.get()
    PyList_Append(block.values, fb)
    return fb


def policy_number(name, what):
    """The rule family of an overlap policy name; ValueError naming the choices otherwise."""
    try:
        return POLICY_NAMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(POLICIES)}") from None


cdef inline bint acks_syn(const side_t *s, uint32_t ack) noexcept nogil:
    """An acceptable ACK of a side's SYN: past the ISN, at most what that side sent (TFO data)."""
    return seq_ge(ack, s.isn + 1) and seq_ge(s.next_seq, ack)

ctypedef struct age_t:
    uint64_t id             # flow ids rise with creation: sorting by id is oldest first
    uint32_t slot

cdef int cmp_age(const void *a, const void *b) noexcept nogil:
    cdef uint64_t x = (<const age_t *>a).id, y = (<const age_t *>b).id
    return (x > y) - (x < y)

cdef inline int64_t to_ns(double seconds):
    return <int64_t>(seconds * 1e9 + (0.5 if seconds >= 0 else -0.5))


@cython.final
cdef class Engine:
    """The flow-processing core: fed frames and timestamps, it tracks flows and raises events.

    Sans-I/O: ``feed()`` / ``process()`` take frames, ``expire()`` advances time, ``finish()``
    ends every flow (end of capture). Subscriptions (``subscribe``/``drain``) collect events as
    values; inline handlers (``add_handler``) run at once, inside the core. Layer: core; never
    blocks, never reads a clock. Options are keyword-only; bad values raise ValueError/TypeError.
    """

    cdef flowtab_t tab
    cdef fragtab_t frags
    cdef pkt_t pk
    cdef frag_t *frag_done
    cdef readonly int64_t now
    cdef uint64_t next_id
    cdef int64_t timeouts[N_TCLASS]
    cdef readonly bint midstream
    cdef readonly bint vlan_in_key
    cdef int verdict
    cdef bint frames_writable   # the current batch's frames may be rewritten (PacketView.rewrite)
    cdef FrameBlock block       # the capture memory the current batch lies in (None: copy out)
    cdef uint64_t n_packets, n_bytes, n_tcp, n_udp, n_non_ip, n_other, n_orphans
    cdef uint64_t n_created, n_ended, n_timed_out, n_evicted, n_rst_oow, n_dropped, n_events
    cdef uint64_t malformed[N_MALFORMED]
    cdef uint64_t need_mask, async_mask, inline_mask, base_mask
    cdef uint64_t interest[MAX_EVENT_BITS]
    cdef int root_of[MAX_EVENT_BITS]
    cdef int nsubs
    cdef uint64_t sub_mask[MAX_SUBS]
    cdef uint64_t sub_mbox[MAX_SUBS]
    cdef list sub_lists
    cdef readonly list kind_objs
    cdef dict custom_bits
    cdef list children
    cdef list handlers
    cdef list mbox_filters
    cdef bint any_filter
    cdef PacketView pv
    # stream reassembly
    cdef int reassembly_mode            # -1 automatic (when stream events are wanted), 0 off, 1 on
    cdef readonly bint reassembling
    cdef readonly bint buffering
    cdef readonly bint rst_payload
    cdef int policy
    cdef list host_policies
    cdef readonly uint32_t max_buffer
    cdef readonly uint32_t max_ooo_segments
    cdef readonly uint64_t max_stream_memory
    cdef readonly uint64_t stream_memory
    cdef uint64_t n_overruns, n_seq_jumps
    cdef int64_t ev_off, ev_len
    cdef int32_t *dirty_slot
    cdef uint64_t *dirty_id
    cdef uint8_t *dirty_side
    cdef uint32_t n_dirty, dirty_cap
    cdef ref_t *refs                    # the batch's in-order payloads left in its frames
    cdef uint32_t n_refs, refs_cap

    def __cinit__(self):
        memset(&self.tab, 0, sizeof(flowtab_t))
        memset(&self.frags, 0, sizeof(fragtab_t))

    def __init__(self, *, max_flows=1_000_000, tcp_syn_timeout=30.0, tcp_established_timeout=300.0,
                 tcp_closed_timeout=5.0, udp_timeout=60.0, midstream=False, vlan_in_key=False,
                 max_fragments=1024, fragment_timeout=30.0, reassembly=None, buffering=True,
                 overlap_policy="first", max_buffer=1 << 20, max_ooo_segments=1024,
                 max_stream_memory=1 << 30, rst_payload=False, host_policies=None):
        cdef int i
        if not isinstance(max_flows, int) or isinstance(max_flows, bool) or not 1 <= max_flows <= 0x7fffffff:
            raise ValueError(f"max_flows must be an int from 1 to {0x7fffffff}, got {max_flows!r}")
        if not isinstance(max_fragments, int) or not 0 <= max_fragments <= 1 << 20:
            raise ValueError(f"max_fragments must be an int from 0 to {1 << 20}, got {max_fragments!r}")
        for name, value in (("tcp_syn_timeout", tcp_syn_timeout),
                            ("tcp_established_timeout", tcp_established_timeout),
                            ("tcp_closed_timeout", tcp_closed_timeout), ("udp_timeout", udp_timeout),
                            ("fragment_timeout", fragment_timeout)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if reassembly is not None and not isinstance(reassembly, bool):
            raise ValueError(f"reassembly must be None (automatic), True or False, got {reassembly!r}")
        self.policy = policy_number(overlap_policy, "overlap_policy")
        self.host_policies = []
        for net, name in dict(host_policies or {}).items():
            try:
                network = _ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"host_policies: {net!r} is not an IP network (e.g. '10.0.0.0/8')") from None
            self.host_policies.append((network, policy_number(name, f"host_policies[{net!r}]")))
        self.host_policies.sort(key=lambda item: -item[0].prefixlen)
        for name, value, low in (("max_buffer", max_buffer, 65536), ("max_ooo_segments", max_ooo_segments, 1),
                                 ("max_stream_memory", max_stream_memory, 1 << 20)):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= (1 << 62):
                raise ValueError(f"{name} must be an int of at least {low}, got {value!r}")
        if max_buffer > 1 << 31:
            raise ValueError(f"max_buffer must be at most {1 << 31} bytes, got {max_buffer}")
        self.reassembly_mode = -1 if reassembly is None else int(reassembly)
        self.reassembling = self.reassembly_mode == 1
        self.buffering = buffering
        self.rst_payload = rst_payload
        self.max_buffer = max_buffer
        self.max_ooo_segments = max_ooo_segments
        self.max_stream_memory = max_stream_memory
        self.ev_off = -1
        self.ev_len = -1
        flowtab_init(&self.tab, max_flows, vlan_in_key)
        fragtab_init(&self.frags, max_fragments, to_ns(fragment_timeout))
        self.timeouts[TC_TCP_OPENING] = to_ns(tcp_syn_timeout)
        self.timeouts[TC_TCP_ESTABLISHED] = to_ns(tcp_established_timeout)
        self.timeouts[TC_TCP_CLOSED] = to_ns(tcp_closed_timeout)
        self.timeouts[TC_UDP] = to_ns(udp_timeout)
        self.midstream = midstream
        self.vlan_in_key = vlan_in_key
        self.next_id = 1
        self.sub_lists = []
        self.kind_objs = [None] * MAX_EVENT_BITS
        for k in EventKind:
            self.kind_objs[__builtin_ctzll(k.value)] = k
        for i in range(MAX_EVENT_BITS):
            self.root_of[i] = i
        self.custom_bits = {}
        self.children = [[] for _ in range(MAX_EVENT_BITS)]
        self.handlers = [[] for _ in range(MAX_EVENT_BITS)]
        self.mbox_filters = [None]
        self.pv = PacketView.__new__(PacketView)
        self.pv._engine = self

    def __dealloc__(self):
        cdef uint32_t i
        if self.tab.flows != NULL:
            for i in range(self.tab.cap):
                if self.tab.flows[i].status != FS_FREE:
                    self.release_handle(&self.tab.flows[i])
                    stream_free(self, &self.tab.flows[i].side[0])
                    stream_free(self, &self.tab.flows[i].side[1])
        flowtab_free(&self.tab)
        fragtab_free(&self.frags)
        free(self.dirty_slot)
        free(self.dirty_id)
        free(self.dirty_side)
        free(self.refs)

    # ---- registration -------------------------------------------------------------------

    def add_middlebox(self, filter=None):
        """Append a middlebox to the chain; returns its index (0 is the default middlebox).

        ``filter`` is None or an object with ``matches(key) -> bool``, evaluated once per new
        flow. Raises ValueError past 32 middleboxes, RuntimeError once flows exist.
        """
        if self.tab.count:
            raise RuntimeError("add middleboxes before the first packet: flows already exist")
        if len(self.mbox_filters) >= MAX_MBOXES:
            raise ValueError("at most 32 middleboxes can share one stack")
        if filter is not None and not callable(getattr(filter, "matches", None)):
            raise TypeError(f"a middlebox filter needs a matches(key) method, got {filter!r}")
        self.mbox_filters.append(filter)
        self.any_filter = any(f is not None for f in self.mbox_filters)
        return len(self.mbox_filters) - 1

    cdef _check_mbox(self, int middlebox):
        if not 0 <= middlebox < len(self.mbox_filters):
            raise ValueError(f"no middlebox {middlebox}; add it with add_middlebox() first")

    cdef int bit_for(self, object kind) except -1:
        """The event bit of a kind, assigning one to a custom event (and its bases) on first use."""
        cdef int bit, base
        if isinstance(kind, EventKind):
            v = kind.value
            if v == 0 or v & (v - 1):
                raise ValueError(f"expected a single event kind, got {kind!r}")
            return __builtin_ctzll(v)
        if not isinstance(kind, CustomEvent):
            raise TypeError(f"expected an aiomb event kind or custom event, got {kind!r}")
        if kind in self.custom_bits:
            return self.custom_bits[kind]
        base = self.bit_for(kind.base)
        used = set(self.custom_bits.values())
        for bit in range(FIRST_CUSTOM_BIT, MAX_EVENT_BITS):
            if bit not in used:
                break
        else:
            raise ValueError(f"at most {MAX_EVENT_BITS - FIRST_CUSTOM_BIT} custom events per stack")
        self.custom_bits[kind] = bit
        self.kind_objs[bit] = kind
        self.root_of[bit] = self.root_of[base]
        (<list>self.children[base]).append(bit)
        return bit

    def subscribe(self, kinds, *, int middlebox=0):
        """Collect events of ``kinds`` for flows the middlebox's filter accepts; returns an id.

        Events accumulate in a list that ``drain(id)`` hands over. Raises ValueError past 256
        subscriptions or for an unknown middlebox.
        """
        self._check_mbox(middlebox)
        if self.nsubs >= MAX_SUBS:
            raise ValueError(f"at most {MAX_SUBS} subscriptions per engine")
        cdef uint64_t mask = 0
        for k in split_kinds(kinds):
            mask |= (<uint64_t>1) << self.bit_for(k)
        cdef int i = self.nsubs
        self.sub_mask[i] = mask
        self.sub_mbox[i] = (<uint64_t>1) << middlebox
        self.sub_lists.append([])
        self.nsubs += 1
        self.recompute()
        return i

    def unsubscribe(self, int sub):
        """Stop collecting for a subscription; its pending events are discarded."""
        if not 0 <= sub < self.nsubs:
            raise ValueError(f"no subscription {sub}")
        self.sub_mask[sub] = 0
        self.sub_lists[sub] = []
        self.recompute()

    def drain(self, int sub):
        """Return the events collected for a subscription since the last drain (a list)."""
        if not 0 <= sub < self.nsubs:
            raise ValueError(f"no subscription {sub}")
        out = self.sub_lists[sub]
        if out:
            self.sub_lists[sub] = []
        return out

    def pending(self, int sub):
        """Number of events collected for a subscription and not yet drained."""
        return len(self.sub_lists[sub])

    def add_handler(self, kind, handler, *, int middlebox=0, hook=None):
        """Run ``handler(packet_view)`` inline whenever ``kind`` fires for an accepted flow.

        ``hook`` None runs it where the event occurs; Hook.SENDER / Hook.RECEIVER restrict it
        (PACKET_IN occurs at both). Returns a token for ``remove_handler``.
        """
        self._check_mbox(middlebox)
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        cdef int h = 0 if hook is None else int(Hook(hook))
        cdef int bit = self.bit_for(kind)
        token = (bit, middlebox, h, handler)
        lst = <list>self.handlers[bit]
        lst.append(token)
        lst.sort(key=lambda t: t[1])
        self.recompute()
        return token

    def remove_handler(self, token):
        """Remove a handler added by ``add_handler``."""
        try:
            (<list>self.handlers[token[0]]).remove(token)
        except (ValueError, TypeError, IndexError):
            raise ValueError(f"{token!r} is not a registered handler") from None
        self.recompute()

    cdef recompute(self):
        """Derive the masks the per-packet path tests from subscriptions and handlers."""
        cdef int bit, i
        cdef uint64_t m
        for bit in range(MAX_EVENT_BITS):
            self.interest[bit] = 0
        self.async_mask = 0
        self.inline_mask = 0
        for i in range(self.nsubs):
            self.async_mask |= self.sub_mask[i]
            m = self.sub_mask[i]
            while m:
                bit = __builtin_ctzll(m)
                self.interest[bit] |= self.sub_mbox[i]
                m &= m - 1
        for bit in range(MAX_EVENT_BITS):
            for token in <list>self.handlers[bit]:
                self.inline_mask |= (<uint64_t>1) << bit
                self.interest[bit] |= (<uint64_t>1) << <int>token[1]
        # custom events: a base needs computing when a descendant has an interest
        for bit in range(MAX_EVENT_BITS - 1, FIRST_CUSTOM_BIT - 1, -1):
            if self.kind_objs[bit] is not None:
                base = self.bit_for(self.kind_objs[bit].base)
                self.interest[base] |= self.interest[bit]
        self.base_mask = 0
        for bit in range(MAX_EVENT_BITS):
            for child in <list>self.children[bit]:
                if self.interest[<int>child]:
                    self.base_mask |= (<uint64_t>1) << bit
        self.need_mask = self.async_mask | self.inline_mask | self.base_mask
        if self.reassembly_mode < 0:
            self.reassembling = (self.need_mask & (EV_NEW_DATA | EV_GAP | EV_OVERLAP | EV_BUFFER_OVERRUN)) != 0
        else:
            self.reassembling = self.reassembly_mode == 1

    # ---- handles and events ---------------------------------------------------------------

    cdef Flow handle(self, int32_t slot):
        """The flow's handle, made on first use. The table keeps only a borrowed pointer (the
        handle clears it when freed), unless the handle's context is in use: then the table
        owns a reference until the flow is removed."""
        cdef flow_t *f = &self.tab.flows[slot]
        cdef Flow h
        if f.handle != NULL:
            return <Flow>f.handle
        h = Flow.__new__(Flow)
        h._engine = self
        h._slot = slot
        h.id = f.id
        h.key = key_from_flow(f, self.vlan_in_key)
        h._alive = True
        f.handle = <void *>h
        return h

    cdef release_handle(self, flow_t *f):
        """The flow leaves the table: its handle, if any, keeps a snapshot of the final values."""
        cdef Flow h
        cdef int i
        if f.handle == NULL:
            return
        h = <Flow>f.handle
        f.handle = NULL
        h._final = <flow_t *>malloc(sizeof(flow_t))
        h._final_streams = <stream_t *>calloc(2, sizeof(stream_t))
        if h._final == NULL or h._final_streams == NULL:
            raise MemoryError()
        h._final[0] = f[0]
        h._final.handle = NULL
        for i in range(2):
            if f.side[i].stream != NULL:
                h._final_streams[i] = f.side[i].stream[0]
                h._final_streams[i].buf = NULL
                h._final_streams[i].buf_len = 0
                h._final_streams[i].nrefs = 0
                h._final_streams[i].ref_bytes = 0
                h._final_streams[i].ooo = NULL
                h._final.side[i].stream = &h._final_streams[i]
        h._alive = False
        if h._pinned:
            h._pinned = False
            Py_DECREF(h)

    def close(self):
        """Drop every flow without raising events (the stack calls this when it closes)."""
        cdef uint32_t i
        for i in range(self.tab.cap):
            if self.tab.flows[i].status != FS_FREE:
                self.release_handle(&self.tab.flows[i])
                stream_free(self, &self.tab.flows[i].side[0])
                stream_free(self, &self.tab.flows[i].side[1])
                flowtab_remove(&self.tab, i)

    cdef Event make_event(self, int bit, int32_t slot, int side, int a, int b, object value):
        cdef Event ev = Event.__new__(Event)
        cdef Flow h
        cdef int root = self.root_of[bit]
        ev.kind = self.kind_objs[bit]
        if slot >= 0:
            h = self.handle(slot)
            ev.flow = h
            ev.key = h.key
        elif root == 8:  # ORPHAN: the packet's own addresses, sender as client
            ev.key = key_from_packet(&self.pk, self.vlan_in_key)
        ev.side = SIDES[side] if side >= 0 else None
        ev.ts = self.now * 1e-9
        if root == 6:  # STATE_CHANGE
            ev.old_state = STATES[a]
            ev.new_state = STATES[b]
        elif root == 7 or root == 10:  # CONN_END, UDP_END
            ev.reason = REASONS[a]
        ev._offset = self.ev_off
        ev._length = self.ev_len
        ev._value = value
        return ev

    cdef int emit_stream(self, int bit, int32_t slot, int side, int hook, uint64_t off, uint64_t length,
                         object value) except -1:
        """Raise a stream event (RETRANSMIT, NEW_DATA, GAP, OVERLAP, BUFFER_OVERRUN) with its range."""
        self.ev_off = <int64_t>off
        self.ev_len = <int64_t>length
        try:
            return self.emit(bit, slot, side, hook, 0, 0, value)
        finally:
            self.ev_off = -1
            self.ev_len = -1

    cdef int mark_dirty(self, int32_t slot, int side) except -1:
        """Remember a side with new bytes: NEW_DATA is raised once for it at the end of the batch."""
        cdef stream_t *st = self.tab.flows[slot].side[side].stream
        cdef uint32_t cap
        if st.dirty:
            return 0
        if self.n_dirty == self.dirty_cap:
            cap = self.dirty_cap * 2 if self.dirty_cap else 1024
            self.dirty_slot = <int32_t *>realloc(self.dirty_slot, cap * sizeof(int32_t))
            self.dirty_id = <uint64_t *>realloc(self.dirty_id, cap * sizeof(uint64_t))
            self.dirty_side = <uint8_t *>realloc(self.dirty_side, cap)
            if self.dirty_slot == NULL or self.dirty_id == NULL or self.dirty_side == NULL:
                raise MemoryError()
            self.dirty_cap = cap
        st.dirty = 1
        self.dirty_slot[self.n_dirty] = slot
        self.dirty_id[self.n_dirty] = self.tab.flows[slot].id
        self.dirty_side[self.n_dirty] = <uint8_t>side
        self.n_dirty += 1
        return 0

    cdef int stream_deliver(self, int32_t slot, int side) except -1:
        """Raise NEW_DATA for a side's new in-order bytes, then release what was delivered.

        The event's value holds every unconsumed in-order byte (from ``offset``); ``length``
        counts the new ones. Bytes stay only if the side is held (``Flow.hold``) or an inline
        NEW_DATA handler consumed part of them (libnids' discard).
        """
        cdef stream_t *st = self.tab.flows[slot].side[side].stream
        cdef uint64_t fresh, start
        if st == NULL:
            return 0
        st.dirty = 0
        if st.next_off <= st.delivered_off:
            return 0
        fresh = st.next_off - st.delivered_off
        start = st.buf_off if st.buffering else st.delivered_off
        st.delivered_off = st.next_off
        st.consumed_in_call = 0
        if self.need_mask & EV_NEW_DATA:
            self.emit_stream(12, slot, side, HOOK_NONE, start, fresh,
                             held_value(self, st, self.block) if st.buffering else None)
            st = self.tab.flows[slot].side[side].stream
            if st == NULL:
                return 0
        if not st.manual and not st.consumed_in_call:
            stream_consume(self, st, held_bytes(st))
        else:
            materialize(self, st)           # what stays must outlive the batch's frames
        return 0

    cdef inline stream_t *dirty_stream(self, uint32_t i) noexcept:
        """The stream of the i-th side marked for NEW_DATA, or NULL if its flow has gone."""
        cdef int32_t slot = self.dirty_slot[i]
        if self.tab.flows[slot].status == FS_FREE or self.tab.flows[slot].id != self.dirty_id[i]:
            return NULL
        return self.tab.flows[slot].side[self.dirty_side[i]].stream

    cdef int flush_streams(self) except -1:
        """End of a receive batch: NEW_DATA at most once per flow side."""
        cdef uint32_t i = 0
        while i < self.n_dirty:
            if self.dirty_stream(i) != NULL:
                self.stream_deliver(self.dirty_slot[i], self.dirty_side[i])
            i += 1
        self.n_dirty = 0
        return 0

    cdef void end_batch(self) noexcept:
        """The batch's frames go: forget the references into them. If a handler raised before
        NEW_DATA went out, the bytes still referenced are copied first, and delivered with the
        side's next bytes."""
        cdef uint32_t i
        cdef stream_t *st
        for i in range(self.n_dirty):
            st = self.dirty_stream(i)
            if st != NULL:
                materialize(self, st)
                st.dirty = 0
        self.n_dirty = 0
        self.n_refs = 0

    cdef int emit(self, int bit, int32_t slot, int side, int hook, int a, int b, object value) except -1:
        """Raise one event: inline handlers now, then async subscribers, then child events."""
        cdef uint64_t m = (<uint64_t>1) << bit
        cdef uint64_t fm = self.tab.flows[slot].mbox_mask if slot >= 0 else ALL_MBOXES
        cdef bint occurrence = bit != 0 or hook != HOOK_RECEIVER
        cdef int i
        cdef Event ev = None
        self.n_events += 1
        if m & self.inline_mask:
            self.run_handlers(bit, slot, side, hook, a, b, value, fm)
        if occurrence and (m & self.async_mask):
            for i in range(self.nsubs):
                if (self.sub_mask[i] & m) and (self.sub_mbox[i] & fm):
                    if ev is None:
                        ev = self.make_event(bit, slot, side, a, b, value)
                    PyList_Append(<list>self.sub_lists[i], ev)
        if occurrence and (m & self.base_mask):
            for child in <list>self.children[bit]:
                if self.interest[<int>child] & fm:
                    self.raise_custom(<int>child, slot, side, hook, a, b, value)
        return 0

    cdef int raise_custom(self, int bit, int32_t slot, int side, int hook, int a, int b,
                          object base_value) except -1:
        """Evaluate a custom event's predicate; the view's value is its base occurrence's."""
        cdef PacketView pv = self.pv
        self.set_view(bit, slot, side, hook, a, b, base_value)
        r = self.kind_objs[bit].predicate(pv)
        if r is None or r is False:
            return 0
        if r is True:
            return self.emit(bit, slot, side, hook, a, b, None)
        if isinstance(r, (list, tuple)):
            for item in r:
                self.emit(bit, slot, side, hook, a, b, item)
            return 0
        if r:
            return self.emit(bit, slot, side, hook, a, b, r)
        return 0

    cdef inline void set_view(self, int bit, int32_t slot, int side, int hook, int a, int b, object value):
        cdef PacketView pv = self.pv
        pv._has_packet = hook != HOOK_NONE
        pv._bit = bit
        pv._slot = slot
        pv._side = side
        pv._hook = hook
        pv._a = a
        pv._b = b
        pv._value = value

    cdef int run_handlers(self, int bit, int32_t slot, int side, int hook, int a, int b,
                          object value, uint64_t fm) except -1:
        cdef list lst = <list>self.handlers[bit]
        cdef Py_ssize_t n = len(lst), j, idx
        cdef int hh
        cdef tuple t
        for j in range(n):
            idx = n - 1 - j if side == 1 else j      # server-to-client: reverse chain order
            t = <tuple>lst[idx]
            hh = <int>t[2]
            if hh == 0:
                if bit == 0 and hook == HOOK_RECEIVER:
                    continue
            elif hh != hook:
                continue
            if not (((<uint64_t>1) << <int>t[1]) & fm):
                continue
            self.set_view(bit, slot, side, hook, a, b, value)
            t[3](self.pv)
        return 0

    cdef inline int fire(self, int bit, int32_t slot, int side, int hook, int a, int b) except -1:
        if self.need_mask & ((<uint64_t>1) << bit):
            return self.emit(bit, slot, side, hook, a, b, None)
        return 0

    cdef int set_state(self, int32_t slot, int side, uint8_t state, int hook) except -1:
        cdef side_t *s = &self.tab.flows[slot].side[side]
        cdef uint8_t old = s.state
        if old == state:
            return 0
        s.state = state
        return self.fire(6, slot, side, hook, old, state)

    # ---- per packet -----------------------------------------------------------------------

    cdef int parse(self, pkt_t *pk, uint16_t linktype, int *reason) noexcept:
        cdef uint32_t off, n, ihl, tot, avail, fo, skip, hl
        cdef uint16_t et
        cdef uint8_t nh, fnh
        cdef const uint8_t *p
        cdef const uint8_t *fh
        cdef frag_t *e
        cdef int r = parse_link(pk, linktype, &off, &et, reason)
        if r != P_OK:
            return r
        pk.l3_off = off
        p = pk.frame + off
        n = pk.caplen - off
        if et == 0x0800:
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
                e = fragtab_get(&self.frags, 4, pk.proto, pk.src, pk.dst, rd16(p + 4), pk.ts)
                if e == NULL:
                    reason[0] = MAL_BAD_FRAGMENT
                    return P_MALFORMED
                r = frag_add(&self.frags, e, (fo & 0x1fff) * 8, p + ihl, avail - ihl, fo & 0x2000, ihl)
                if r < 0:
                    frag_release(e)
                    reason[0] = MAL_BAD_FRAGMENT
                    return P_MALFORMED
                if r == 0:
                    return P_HELD
                self.frags.reassembled += 1
                self.frag_done = e
                pk.reassembled = 1
                pk.ip_len = e.hdrlen + e.total
                return parse_l4(pk, e.data, e.total, reason)
            return parse_l4(pk, p + ihl, avail - ihl, reason)
        # IPv6
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
        if nh == 44:
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
            e = fragtab_get(&self.frags, 6, fnh, pk.src, pk.dst, rd32(fh + 4), pk.ts)
            if e == NULL:
                reason[0] = MAL_BAD_FRAGMENT
                return P_MALFORMED
            r = frag_add(&self.frags, e, fo & 0xfff8, fh + 8, avail - 40 - skip - 8, fo & 1, 40 + skip)
            if r < 0:
                frag_release(e)
                reason[0] = MAL_BAD_FRAGMENT
                return P_MALFORMED
            if r == 0:
                return P_HELD
            self.frags.reassembled += 1
            self.frag_done = e
            pk.reassembled = 1
            pk.ip_len = e.hdrlen + e.total
            r = walk_ipv6_ext(pk, e.proto, e.data, e.total, &hl, &nh, reason)
            if r != P_OK:
                return r
            pk.proto = nh
            return parse_l4(pk, e.data + hl, e.total - hl, reason)
        pk.proto = nh
        return parse_l4(pk, p + 40 + skip, avail - 40 - skip, reason)

    cdef int process_frame(self, const uint8_t *data, uint32_t caplen, uint32_t wirelen,
                           int64_t ts, uint16_t linktype) except -1:
        cdef pkt_t *pk = &self.pk
        cdef int reason = 0, r
        self.release_fragment()      # left over if a handler raised while it was in use
        memset(pk, 0, sizeof(pkt_t))
        pk.frame = data
        pk.caplen = caplen
        pk.wirelen = wirelen if wirelen > caplen else caplen
        pk.ts = ts
        pk.wscale = -1
        self.verdict = VERDICT_FORWARD
        self.n_packets += 1
        self.n_bytes += pk.wirelen
        if ts > self.now:
            self.now = ts
        r = self.parse(pk, linktype, &reason)
        if r == P_OK:
            if pk.proto == 6:
                self.n_tcp += 1
                self.tcp_packet(pk)
            else:
                self.n_udp += 1
                self.udp_packet(pk)
        elif r == P_MALFORMED:
            self.malformed[reason] += 1
            if self.need_mask & EV_ERROR:
                self.emit(16, -1, -1, HOOK_NONE, 0, 0, MALFORMED_REASONS[reason])
        elif r == P_NOT_IP:
            self.n_non_ip += 1
        elif r == P_OTHER:
            self.n_other += 1
        self.release_fragment()
        if self.verdict == VERDICT_DROP:
            self.n_dropped += 1
        return self.verdict

    cdef inline void release_fragment(self) noexcept:
        if self.frag_done != NULL:
            frag_release(self.frag_done)
            self.frag_done = NULL

    cdef int32_t new_flow(self, pkt_t *pk, uint32_t h, bint sender_is_client) except -2:
        cdef int32_t slot = flowtab_insert(&self.tab, pk, h, sender_is_client)
        cdef flow_t *f
        cdef Flow handle
        cdef uint32_t mask
        cdef int i
        if slot < 0:
            self.evict_one()
            slot = flowtab_insert(&self.tab, pk, h, sender_is_client)
            if slot < 0:
                raise MemoryError("the flow table could not take a new entry")
        f = &self.tab.flows[slot]
        f.id = self.next_id
        self.next_id += 1
        f.first_ts = pk.ts
        f.last_ts = pk.ts
        self.n_created += 1
        f.policy = <uint8_t>self.policy
        if self.host_policies:
            server = self.handle(slot).key.server_ip
            for network, number in self.host_policies:
                if server.version == network.version and server in network:
                    self.tab.flows[slot].policy = <uint8_t>number
                    break
            f = &self.tab.flows[slot]
        if self.any_filter:
            handle = self.handle(slot)
            mask = 0
            for i, flt in enumerate(self.mbox_filters):
                if flt is None or flt.matches(handle.key):
                    mask |= (<uint32_t>1) << i
            f.mbox_mask = mask
        else:
            f.mbox_mask = ALL_MBOXES
        return slot

    cdef int close_streams(self, int32_t slot) except -1:
        """Holes before held segments (and before a FIN) become gaps; every byte is delivered."""
        cdef flow_t *f = &self.tab.flows[slot]
        cdef int i
        cdef stream_t *st
        for i in range(2):
            st = f.side[i].stream
            if st != NULL:
                stream_close(self, slot, i, stream_offset(st, f.side[i].fin_seq) if (f.side[i].flags & SF_FIN_SEEN) else -1)
                f = &self.tab.flows[slot]
        return 0

    cdef int end_flow(self, int32_t slot, int side, int hook, uint8_t reason) except -1:
        """Mark a flow ended and raise CONN_END / UDP_END; the entry lingers if it closed."""
        cdef flow_t *f
        self.close_streams(slot)
        f = &self.tab.flows[slot]
        f.end_reason = reason
        f.status = FS_CLOSED
        self.n_ended += 1
        return self.fire(7 if f.proto == 6 else 10, slot, side, hook, reason, 0)

    cdef int remove_flow(self, int32_t slot) except -1:
        self.close_streams(slot)        # bytes that came after the close, if any
        self.release_handle(&self.tab.flows[slot])
        stream_free(self, &self.tab.flows[slot].side[0])
        stream_free(self, &self.tab.flows[slot].side[1])
        flowtab_remove(&self.tab, slot)
        return 0

    cdef int evict_one(self) except -1:
        """Make room: drop a lingering closed flow, else end the least recently active one."""
        cdef int32_t victim = self.tab.lru_head[TC_TCP_CLOSED]
        cdef int c
        cdef int32_t cand
        if victim < 0:
            for c in range(N_TCLASS):
                cand = self.tab.lru_head[c]
                if cand >= 0 and (victim < 0 or self.tab.flows[cand].last_ts < self.tab.flows[victim].last_ts):
                    victim = cand
        if victim < 0:
            return 0
        if self.tab.flows[victim].status == FS_OPEN:
            self.n_evicted += 1
            self.end_flow(victim, -1, HOOK_NONE, END_EVICTED)
        return self.remove_flow(victim)

    cdef bint rst_acceptable(self, flow_t *f, int side, const pkt_t *pk) noexcept:
        cdef side_t *r = &f.side[1 - side]
        cdef uint32_t wnd
        if r.state == ST_SYN_SENT and (r.flags & SF_SYN_SEEN):
            return (pk.flags & TH_ACK) != 0 and acks_syn(r, pk.ack)
        if (r.flags & SF_ACK_KNOWN):
            wnd = r.window if r.window > 0 else 1
            return seq_ge(pk.seq, r.last_ack) and seq_gt(r.last_ack + wnd, pk.seq)
        return 1

    cdef int tcp_packet(self, pkt_t *pk) except -1:
        cdef uint32_t h = key_hash(pk, self.vlan_in_key)
        cdef int side = 0, rs
        cdef int32_t slot = flowtab_lookup(&self.tab, pk, h, &side)
        cdef uint8_t fl = pk.flags
        cdef bint syn = (fl & TH_SYN) != 0, ackf = (fl & TH_ACK) != 0
        cdef bint created = 0, rst_ok = 0, sender_is_client
        cdef flow_t *f
        cdef side_t *s
        cdef side_t *r
        if slot >= 0 and self.tab.flows[slot].status == FS_CLOSED and syn and not ackf \
                and not ((self.tab.flows[slot].side[side].flags & SF_SYN_SEEN) and pk.seq == self.tab.flows[slot].side[side].isn):
            self.remove_flow(slot)      # a new connection reuses a closed flow's tuple
            slot = -1
        if slot < 0:
            if syn:
                sender_is_client = not ackf
            elif self.midstream:
                sender_is_client = pk.dport < 1024 <= pk.sport or not (pk.sport < 1024 <= pk.dport)
            else:
                self.n_orphans += 1
                if self.need_mask & EV_ORPHAN:
                    self.emit(8, -1, -1, HOOK_SENDER, 0, 0, None)
                return 0
            slot = self.new_flow(pk, h, sender_is_client)
            side = 0 if sender_is_client else 1
            created = 1
            f = &self.tab.flows[slot]
            f.side[1].state = ST_LISTEN
            if not syn:
                f.midstream = 1
                f.established = 1
                f.side[0].state = ST_ESTABLISHED
                f.side[1].state = ST_ESTABLISHED
            elif ackf:
                f.side[0].state = ST_SYN_SENT
                f.side[0].isn = pk.ack - 1
                f.side[0].next_seq = pk.ack
                f.side[0].flags |= SF_SEQ_KNOWN
        f = &self.tab.flows[slot]
        rs = 1 - side
        s = &f.side[side]
        r = &f.side[rs]
        s.packets += 1
        s.ip_bytes += pk.ip_len
        s.payload_bytes += pk.paylen
        f.last_ts = pk.ts
        if created:
            self.fire(1, slot, side, HOOK_SENDER, 0, 0)
        if f.status == FS_CLOSED:
            self.count_flags(s, pk)
            self.fire(0, slot, side, HOOK_SENDER, 0, 0)
            if self.reassembling and not (fl & (TH_RST | TH_SYN)):
                self.reassemble(slot, side, pk)      # bytes sent after the close still count
            self.fire(0, slot, side, HOOK_RECEIVER, 0, 0)
            lru_touch(&self.tab, slot, TC_TCP_CLOSED)
            return 0
        # sender update, then the sender hook
        if fl & TH_RST:
            if self.rst_acceptable(f, side, pk):
                rst_ok = 1
                bump8(&s.rst)
                self.fire(5, slot, side, HOOK_SENDER, 0, 0)
                self.set_state(slot, side, ST_CLOSED, HOOK_SENDER)
            else:
                bump8(&s.rst_ignored)
                self.n_rst_oow += 1
        elif syn:
            self.sender_syn(slot, side, pk)
        else:
            self.sender_data(slot, side, pk)
        if ackf and (not (s.flags & SF_ACK_KNOWN) or seq_gt(pk.ack, s.last_ack)):
            s.last_ack = pk.ack
            s.flags |= SF_ACK_KNOWN
        s.window = <uint32_t>pk.win << (s.wscale if (s.wscale != 0xff and r.wscale != 0xff and not syn) else 0)
        self.fire(0, slot, side, HOOK_SENDER, 0, 0)
        # receiver update, then the receiver hook
        f = &self.tab.flows[slot]
        if self.reassembling and (not (fl & TH_RST) or rst_ok and self.rst_payload):
            self.reassemble(slot, side, pk)
        if rst_ok:
            self.set_state(slot, rs, ST_CLOSED, HOOK_RECEIVER)
            self.end_flow(slot, side, HOOK_RECEIVER, END_RST)
        else:
            self.receiver_update(slot, side, pk)
        self.fire(0, slot, side, HOOK_RECEIVER, 0, 0)
        f = &self.tab.flows[slot]
        lru_touch(&self.tab, slot, TC_TCP_CLOSED if f.status == FS_CLOSED else
                  (TC_TCP_ESTABLISHED if f.established else TC_TCP_OPENING))
        return 0

    cdef int reassemble(self, int32_t slot, int side, const pkt_t *pk) except -1:
        """Receiver phase: the sender's payload into its stream; the ACK may reveal a gap."""
        cdef flow_t *f = &self.tab.flows[slot]
        cdef side_t *s = &f.side[side]
        cdef side_t *r = &f.side[1 - side]
        cdef stream_t *st
        cdef int64_t soff, ack_off, end_off, target
        if pk.paylen and ((s.flags & SF_SEQ_KNOWN) or (s.flags & SF_SYN_SEEN)):
            st = s.stream if s.stream != NULL else stream_new(self, s)
            if st == NULL:
                raise MemoryError()
            soff = stream_offset(st, pk.seq) + (1 if pk.flags & TH_SYN else 0)
            stream_segment(self, slot, side, HOOK_RECEIVER, st, soff, pk.payload, pk.paylen,
                           not pk.reassembled)
        if not (pk.flags & TH_ACK) or pk.flags & TH_SYN or not ((r.flags & SF_SYN_SEEN) or (r.flags & SF_SEQ_KNOWN)):
            return 0
        st = r.stream
        if st == NULL:
            if <int32_t>(pk.ack - (r.isn + 1)) <= 0:
                return 0
            st = stream_new(self, r)
            if st == NULL:
                raise MemoryError()
        if st.stopped:
            return 0
        ack_off = stream_offset(st, pk.ack)
        end_off = stream_offset(st, r.next_seq) - (1 if (r.flags & SF_FIN_SEEN) else 0)
        if ack_off > end_off:
            ack_off = end_off        # an ACK of bytes never seen from the peer: bounded by them
        while <int64_t>st.next_off < ack_off:
            target = ack_off
            if st.ooo != NULL and <int64_t>st.ooo.off < target:
                target = st.ooo.off
            if target <= <int64_t>st.next_off:
                break
            stream_skip(self, slot, 1 - side, HOOK_RECEIVER, st, <uint64_t>target)
        return 0

    cdef void count_flags(self, side_t *s, const pkt_t *pk) noexcept:
        if pk.flags & TH_RST:
            bump8(&s.rst)
        elif pk.flags & TH_SYN:
            if pk.flags & TH_ACK:
                bump8(&s.synack)
            else:
                bump8(&s.syn)
        elif pk.flags & TH_FIN:
            bump8(&s.fin)

    cdef int sender_syn(self, int32_t slot, int side, const pkt_t *pk) except -1:
        cdef flow_t *f = &self.tab.flows[slot]
        cdef side_t *s = &f.side[side]
        if not (pk.flags & TH_ACK):
            bump8(&s.syn)
            if (s.flags & SF_SYN_SEEN) and pk.seq == s.isn:
                s.retransmits += 1
                return self.fire(11, slot, side, HOOK_SENDER, 0, 0)
            s.flags |= SF_SYN_SEEN
            s.isn = pk.seq
            s.flags |= SF_SEQ_KNOWN
            s.next_seq = pk.seq + 1 + pk.paylen
            s.wscale = <uint8_t>pk.wscale if pk.wscale >= 0 else 0xff
            if s.state == ST_CLOSED or s.state == ST_LISTEN:
                return self.set_state(slot, side, ST_SYN_SENT, HOOK_SENDER)
            return 0
        bump8(&s.synack)
        if s.synack > 1 and pk.seq == s.isn:
            s.retransmits += 1
            return self.fire(11, slot, side, HOOK_SENDER, 0, 0)
        s.flags |= SF_SYN_SEEN
        s.isn = pk.seq
        s.flags |= SF_SEQ_KNOWN
        s.next_seq = pk.seq + 1 + pk.paylen
        s.wscale = <uint8_t>pk.wscale if pk.wscale >= 0 else 0xff
        if s.synack == 1:
            self.fire(2, slot, side, HOOK_SENDER, 0, 0)
        if s.state <= ST_SYN_SENT:
            self.set_state(slot, side, ST_SYN_RECEIVED, HOOK_SENDER)
        return 0

    cdef int sender_data(self, int32_t slot, int side, const pkt_t *pk) except -1:
        cdef flow_t *f = &self.tab.flows[slot]
        cdef side_t *s = &f.side[side]
        cdef uint32_t end = pk.seq + pk.paylen
        cdef bint fin = (pk.flags & TH_FIN) != 0
        if fin:
            end += 1
        if not (s.flags & SF_SEQ_KNOWN):
            s.flags |= SF_SEQ_KNOWN
            s.isn = pk.seq - 1
            s.next_seq = end
        elif seq_gt(end, s.next_seq):
            s.next_seq = end
        if not fin:
            return 0
        bump8(&s.fin)
        if (s.flags & SF_FIN_SEEN):
            if pk.seq + pk.paylen == s.fin_seq:
                s.retransmits += 1
                return self.fire(11, slot, side, HOOK_SENDER, 0, 0)
            return 0
        s.flags |= SF_FIN_SEEN
        s.fin_seq = pk.seq + pk.paylen
        self.fire(4, slot, side, HOOK_SENDER, 0, 0)
        if s.state == ST_CLOSE_WAIT:
            return self.set_state(slot, side, ST_LAST_ACK, HOOK_SENDER)
        if s.state <= ST_ESTABLISHED:
            return self.set_state(slot, side, ST_FIN_WAIT_1, HOOK_SENDER)
        return 0

    cdef int receiver_update(self, int32_t slot, int side, const pkt_t *pk) except -1:
        cdef int rs = 1 - side
        cdef flow_t *f = &self.tab.flows[slot]
        cdef side_t *r = &f.side[rs]
        cdef side_t *s = &f.side[side]
        cdef uint8_t fl = pk.flags
        cdef bint syn = (fl & TH_SYN) != 0, ackf = (fl & TH_ACK) != 0
        if syn and not ackf:
            if r.state == ST_SYN_SENT:          # simultaneous open
                self.set_state(slot, rs, ST_SYN_RECEIVED, HOOK_RECEIVER)
        elif syn:
            if (r.state == ST_SYN_SENT or r.state == ST_SYN_RECEIVED) and (not (r.flags & SF_SYN_SEEN) or acks_syn(r, pk.ack)):
                self.set_state(slot, rs, ST_ESTABLISHED, HOOK_RECEIVER)
        else:
            if ackf:
                if r.state == ST_SYN_RECEIVED and (not (r.flags & SF_SYN_SEEN) or seq_ge(pk.ack, r.isn + 1)):
                    self.set_state(slot, rs, ST_ESTABLISHED, HOOK_RECEIVER)
                if (r.flags & SF_FIN_SEEN) and seq_ge(pk.ack, r.fin_seq + 1):
                    if r.state == ST_FIN_WAIT_1:
                        self.set_state(slot, rs, ST_FIN_WAIT_2, HOOK_RECEIVER)
                    elif r.state == ST_CLOSING:
                        self.set_state(slot, rs, ST_TIME_WAIT, HOOK_RECEIVER)
                    elif r.state == ST_LAST_ACK:
                        self.set_state(slot, rs, ST_CLOSED, HOOK_RECEIVER)
            if fl & TH_FIN:
                if r.state == ST_FIN_WAIT_1:
                    self.set_state(slot, rs, ST_CLOSING, HOOK_RECEIVER)
                elif r.state == ST_FIN_WAIT_2:
                    self.set_state(slot, rs, ST_TIME_WAIT, HOOK_RECEIVER)
                elif r.state <= ST_ESTABLISHED and r.state != ST_CLOSED:
                    self.set_state(slot, rs, ST_CLOSE_WAIT, HOOK_RECEIVER)
        f = &self.tab.flows[slot]
        r = &f.side[rs]
        s = &f.side[side]
        if not f.established and s.state >= ST_ESTABLISHED and r.state >= ST_ESTABLISHED:
            f.established = 1
            self.fire(3, slot, side, HOOK_RECEIVER, 0, 0)
        if (s.flags & SF_FIN_SEEN) and (r.flags & SF_FIN_SEEN) and (s.state == ST_TIME_WAIT or s.state == ST_CLOSED) \
                and (r.state == ST_TIME_WAIT or r.state == ST_CLOSED):
            self.end_flow(slot, side, HOOK_RECEIVER, END_FIN)
        return 0

    cdef int udp_packet(self, pkt_t *pk) except -1:
        cdef uint32_t h = key_hash(pk, self.vlan_in_key)
        cdef int side = 0
        cdef int32_t slot = flowtab_lookup(&self.tab, pk, h, &side)
        cdef flow_t *f
        cdef side_t *s
        cdef bint created = 0
        if slot < 0:
            slot = self.new_flow(pk, h, 1)
            side = 0
            created = 1
        f = &self.tab.flows[slot]
        s = &f.side[side]
        s.packets += 1
        s.ip_bytes += pk.ip_len
        s.payload_bytes += pk.paylen
        f.last_ts = pk.ts
        if created:
            self.fire(9, slot, side, HOOK_SENDER, 0, 0)
        self.fire(0, slot, side, HOOK_SENDER, 0, 0)
        self.fire(0, slot, side, HOOK_RECEIVER, 0, 0)
        lru_touch(&self.tab, slot, TC_UDP)
        return 0

    # ---- time -----------------------------------------------------------------------------

    cdef int expire_to(self, int64_t now) except -1:
        cdef int c
        cdef int32_t i
        cdef flow_t *f
        if now > self.now:
            self.now = now
        for c in range(N_TCLASS):
            while True:
                i = self.tab.lru_head[c]
                if i < 0:
                    break
                f = &self.tab.flows[i]
                if self.now - f.last_ts < self.timeouts[c]:
                    break
                if f.status == FS_OPEN:
                    self.n_timed_out += 1
                    self.end_flow(i, -1, HOOK_NONE, END_TIMEOUT)
                self.remove_flow(i)
        fragtab_expire(&self.frags, self.now)
        return 0

    # ---- public entry points --------------------------------------------------------------

    def feed(self, frame, ts=None, *, int linktype=LT_ETHERNET):
        """Process one frame at time ``ts`` (seconds; default: the latest time seen).

        Returns the packet's :class:`Verdict`. Expires idle flows up to ``ts`` afterwards.
        Exceptions from inline handlers and predicates propagate. A ``bytearray`` frame is
        writable: sender-hook handlers may ``rewrite()`` it in place.
        """
        cdef const uint8_t[::1] view = frame
        cdef int64_t t = self.now if ts is None else to_ns(ts)
        cdef int v
        self.frames_writable = isinstance(frame, bytearray)
        try:
            if view.shape[0] == 0:
                v = self.process_frame(NULL, 0, 0, t, linktype)
            else:
                v = self.process_frame(&view[0], view.shape[0], view.shape[0], t, linktype)
            self.flush_streams()
        finally:
            self.end_batch()
        self.expire_to(t)
        return Verdict(v)

    def process(self, FrameBatch batch):
        """Process every frame of a batch, storing each verdict in it; then expire idle flows."""
        cdef int i
        self.frames_writable = batch.writable
        self.block = batch.block
        try:
            for i in range(batch.count):
                batch.verdict[i] = <uint8_t>self.process_frame(
                    batch.data[i], batch.caplen[i], batch.wirelen[i], batch.ts[i], batch.linktype[i])
            self.flush_streams()
        finally:
            self.end_batch()
            self.block = None
        self.expire_to(self.now)
        return batch.count

    def expire(self, now):
        """Advance time to ``now`` (seconds) and end flows idle past their timeout."""
        self.expire_to(to_ns(now))

    def finish(self):
        """End of input: end every open flow (reason END_OF_CAPTURE), oldest first, and empty the table."""
        cdef uint32_t i, n = 0, j
        cdef age_t *order = <age_t *>malloc(max(self.tab.count, 1) * sizeof(age_t))
        if order == NULL:
            raise MemoryError("no memory to end the open flows")
        try:
            for i in range(self.tab.cap):
                if self.tab.flows[i].status != FS_FREE:
                    order[n].id = self.tab.flows[i].id
                    order[n].slot = i
                    n += 1
            qsort(order, n, sizeof(age_t), cmp_age)
            for j in range(n):
                if self.tab.flows[order[j].slot].status == FS_OPEN:
                    self.end_flow(order[j].slot, -1, HOOK_NONE, END_END_OF_CAPTURE)
            for j in range(n):
                if self.tab.flows[order[j].slot].status != FS_FREE:
                    self.remove_flow(order[j].slot)
        finally:
            free(order)

    def flows(self):
        """Handles of the flows now in the table, oldest first."""
        cdef uint32_t i
        out = []
        for i in range(self.tab.cap):
            if self.tab.flows[i].status != FS_FREE:
                out.append(self.handle(i))
        out.sort(key=lambda h: h.id)
        return out

    def statistics(self):
        """An :class:`EngineStatistics` snapshot of the core's counters."""
        return EngineStatistics(
            packets=self.n_packets, bytes=self.n_bytes, tcp_packets=self.n_tcp,
            udp_packets=self.n_udp, non_ip=self.n_non_ip, other_protocol=self.n_other,
            malformed={MALFORMED_REASONS[i]: self.malformed[i] for i in range(N_MALFORMED) if self.malformed[i]},
            orphans=self.n_orphans, flows_active=self.tab.count, flows_created=self.n_created,
            flows_ended=self.n_ended, flows_timed_out=self.n_timed_out, flows_evicted=self.n_evicted,
            max_flows=self.tab.max_flows, rst_out_of_window=self.n_rst_oow,
            fragments_held=self.frags.held, fragments_reassembled=self.frags.reassembled,
            fragments_expired=self.frags.expired, fragments_evicted=self.frags.evicted,
            fragment_overlaps=self.frags.overlaps, dropped_by_verdict=self.n_dropped,
            events=self.n_events, stream_memory=self.stream_memory,
            max_stream_memory=self.max_stream_memory, buffer_overruns=self.n_overruns,
            sequence_jumps=self.n_seq_jumps)
