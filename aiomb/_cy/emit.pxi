# Event emission (DESIGN.md section 2): which kinds fire for whom, inline handlers, custom
# (predicate) events, and the per-batch event log.
#
# An event fires at one place of the per-packet path: a kind bit, a flow, a side, a hook. The
# Emitter runs the inline handlers registered for it at once, appends it to the batch's event
# log when a consumer of the log (a dispatcher) wants that kind for that flow, and evaluates the
# predicates of the custom events based on it. Nothing else calls Python per event: Event values
# are made from the log by the dispatcher, only for the kinds someone receives.
#
# Handlers may add and remove handlers while they run (as DOM event listeners may): a kind's
# list of handlers is never changed in place, add_handler and remove_handler put a new one in
# its place, so that a dispatch under way goes on with the list it began with; a handler removed
# meanwhile is marked, and skipped when its turn comes. No copy per event.

import weakref as _weakref

from aiomb.events._kinds import EventKind, CustomEvent

cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil

cdef uint32_t ALL_MBOXES = 0xffffffff
cdef uint32_t ALL_FILTERS = 0xffffffff

ctypedef struct evrec_t:
    # one logged event; the flow's key, value and figures are held in the log
    int64_t ts              # ns
    int64_t off             # stream range, -1: not a stream event
    int64_t length
    uint64_t flow_id        # 0: no flow (ORPHAN, ERROR)
    uint32_t filters        # the subscription filters that accept the flow
    int32_t slot            # the flow's table entry (stable while it lives), -1: no flow
    PyObject *key           # the FlowKey (owned), or NULL
    int32_t value           # index in EventLog.values, -1: none
    int32_t stats           # index in EventLog.values of a FlowSnapshot, -1: none
    int32_t handle          # index in EventLog.values of the Flow handle (a start, for acceptors)
    uint32_t mboxes         # the middleboxes that accept the flow
    uint8_t bit
    int8_t side             # -1: none
    uint8_t a               # STATE_CHANGE: old state; CONN_END/UDP_END: reason
    uint8_t b               # STATE_CHANGE: new state
    uint32_t count          # BUFFER_OVERRUN: the refusals it stands for (coalesced), else 1


# What undelivered events cost (EventLog.memory): a record and the Event made from it, with its
# key, and what its value holds: the bytes of a NEW_DATA or OVERLAP, an end's figures, a start's
# handle; a reason or a custom event's object counts VALUE_BYTES.
cdef uint64_t BYTES_HEADER = 48
cdef uint64_t VALUE_BYTES = 64
cdef uint64_t EVENT_BYTES = sizeof(evrec_t) + (<type>Event).__basicsize__ + (<type>FlowKey).__basicsize__
cdef uint64_t SNAPSHOT_BYTES = (<type>FlowSnapshot).__basicsize__
cdef uint64_t HANDLE_BYTES = (<type>Flow).__basicsize__


cdef inline uint64_t value_bytes(object value, int64_t length):
    """What an event's value holds, as counted against max_event_memory."""
    if value is None:
        return 0
    if type(value) is FrameBytes or type(value) is bytes:
        return <uint64_t>length + BYTES_HEADER       # NEW_DATA: length bytes (copied when read)
    if type(value) is tuple and len(<tuple>value) == 2 and type((<tuple>value)[0]) is bytes:
        return 2 * <uint64_t>length + 3 * BYTES_HEADER   # OVERLAP: both copies
    return VALUE_BYTES


@cython.final
cdef class EventLog:
    """The events a batch raised for consumers of the log, in firing order: (kind bit, flow id,
    side, stream range, value slot) records in C, with the values they carry beside them.

    Filled by the engine's Emitter, read and cleared by a :class:`Dispatcher`. Layer: core.
    """

    cdef evrec_t *recs
    cdef uint32_t n
    cdef uint32_t cap
    cdef list values
    cdef readonly uint64_t memory   # what the events logged now hold (see EVENT_BYTES)
    cdef readonly uint64_t peak     # the most memory ever held
    cdef dict overruns              # (flow id, side, limit) -> the index of its BUFFER_OVERRUN

    def __cinit__(self):
        self.values = []
        self.overruns = {}

    def __dealloc__(self):
        self.clear()
        free(self.recs)

    def __len__(self):
        return self.n

    cdef evrec_t *add(self) except NULL:
        cdef uint32_t cap
        cdef evrec_t *r
        if self.n == self.cap:
            cap = self.cap * 2 if self.cap else 1024
            r = <evrec_t *>realloc(self.recs, cap * sizeof(evrec_t))
            if r == NULL:
                raise MemoryError("no memory for the event log")
            self.recs = r
            self.cap = cap
        r = &self.recs[self.n]
        r.key = NULL
        r.value = -1
        r.stats = -1
        r.handle = -1
        r.count = 1
        self.n += 1
        return r

    cdef inline void charge(self, uint64_t cost) noexcept:
        self.memory += cost
        if self.memory > self.peak:
            self.peak = self.memory

    cdef inline int32_t keep(self, object value) except -2:
        if value is None:
            return -1
        self.values.append(value)
        return <int32_t>(len(self.values) - 1)

    cdef void clear(self) noexcept:
        cdef uint32_t i
        for i in range(self.n):
            Py_XDECREF(self.recs[i].key)
        self.n = 0
        self.memory = 0
        if self.values:
            self.values = []
        if self.overruns:
            self.overruns = {}


cdef inline FlowKey flow_key(const flow_t *f, bint with_vlan):
    """The flow's FlowKey: its handle's, else a new one. The table keeps no key: one kept per
    flow through its linger costs more (cache misses) than making one when an event needs it."""
    if f.handle != NULL:
        return (<Flow>f.handle).key
    return key_from_flow(f, with_vlan)


@cython.final
cdef class HandlerToken:
    """An inline handler as registered: what ``Engine.add_handler`` returns and
    ``Engine.remove_handler`` takes. Opaque. Layer: core."""

    cdef object kind
    cdef object handler
    cdef int bit
    cdef int middlebox
    cdef int hook                   # 0: where the event occurs, else a Hook
    cdef bint removed               # a dispatch that began before its removal skips it

    def __repr__(self):
        hook = "" if self.hook == 0 else f" hook={Hook(self.hook).name}"
        gone = " removed" if self.removed else ""
        return f"<HandlerToken {self.kind.name} middlebox={self.middlebox}{hook} {self.handler!r}{gone}>"


ctypedef struct scope_t:
    # the flows some consumers want a kind for: those of the middleboxes in ``mboxes``, and
    # those of the middleboxes in ``fmboxes`` that one of ``filters`` accepts (a superset when
    # several filtered wants are merged: the dispatcher filters exactly)
    uint64_t mboxes
    uint64_t fmboxes
    uint64_t filters

cdef inline bint in_scope(const scope_t *s, uint64_t fm, uint64_t ff) noexcept nogil:
    return (s.mboxes & fm) != 0 or ((s.fmboxes & fm) != 0 and (s.filters & ff) != 0)

cdef inline void widen(scope_t *s, const scope_t *t) noexcept nogil:
    s.mboxes |= t.mboxes
    s.fmboxes |= t.fmboxes
    s.filters |= t.filters


@cython.final
cdef class Emitter:
    """The engine's events: kinds (built-in and custom), inline handlers, what is logged for
    dispatchers, and the batch's :class:`EventLog`. Layer: core; owned by one Engine.

    ``interest[bit]`` holds the flows for which a kind is wanted computed (a handler, a logged
    want, or a custom event based on it), ``logged[bit]`` those for which it is logged;
    ``need_mask`` the kinds computed at all, which is what the per-packet path tests before
    doing any work for an event.
    """

    cdef Engine eng
    cdef list kind_objs
    cdef dict custom_bits
    cdef int root_of[MAX_EVENT_BITS]
    cdef list children
    cdef list handlers              # per bit, its HandlerTokens in chain order; a list is never
                                    # changed once here (a dispatch under way may be reading it)
    cdef dict log_wants             # id(consumer) -> (weak ref, [(kind mask, middlebox mask), ...])
    cdef bint stale                 # a consumer has gone: recompute before the next packet
    cdef scope_t interest[MAX_EVENT_BITS]
    cdef scope_t logged[MAX_EVENT_BITS]
    cdef uint64_t need_mask, log_mask, inline_mask, base_mask
    cdef EventLog log
    cdef bint log_handles           # a flow's start carries its handle (a dispatcher accepts flows)
    cdef PacketView pv
    cdef uint64_t n_events

    def __cinit__(self, Engine eng):
        cdef int i
        self.eng = eng
        self.kind_objs = [None] * MAX_EVENT_BITS
        for k in EventKind:
            self.kind_objs[__builtin_ctzll(k.value)] = k
        for i in range(MAX_EVENT_BITS):
            self.root_of[i] = i
        self.custom_bits = {}
        self.children = [[] for _ in range(MAX_EVENT_BITS)]
        self.handlers = [[] for _ in range(MAX_EVENT_BITS)]
        self.log_wants = {}
        self.log = EventLog()
        self.pv = self.new_view()

    cdef PacketView new_view(self):
        cdef PacketView pv = PacketView.__new__(PacketView)
        pv._engine = self.eng
        return pv

    # ---- registration -------------------------------------------------------------------

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

    cdef HandlerToken add_handler(self, object kind, object handler, int middlebox, int hook):
        """Register a handler after those of its middlebox (a new list: see ``handlers``)."""
        cdef HandlerToken token = HandlerToken.__new__(HandlerToken)
        token.bit = self.bit_for(kind)
        token.kind = kind
        token.handler = handler
        token.middlebox = middlebox
        token.hook = hook
        lst = <list>self.handlers[token.bit] + [token]
        lst.sort(key=lambda t: self.eng.mbox_rank[(<HandlerToken>t).middlebox])      # chain order
        self.handlers[token.bit] = lst
        self.recompute()
        return token

    cdef int remove_handler(self, object token) except -1:
        """Unregister a handler (a new list: see ``handlers``); a dispatch under way skips it."""
        cdef HandlerToken t
        if isinstance(token, HandlerToken):
            t = <HandlerToken>token
            lst = [other for other in <list>self.handlers[t.bit] if other is not t]
            if len(lst) < len(<list>self.handlers[t.bit]):
                t.removed = True
                self.handlers[t.bit] = lst
                self.recompute()
                return 0
        raise ValueError(f"{token!r} is not a registered handler")

    cdef int want_logged(self, object consumer, list wants) except -1:
        """Log the kinds of ``wants`` ([(kind mask, middlebox mask, filter mask), ...]; filter
        mask 0: every flow of those middleboxes) for ``consumer`` (held by a weak reference: its
        wants go with it); an empty list withdraws its wants."""
        if wants:
            self.log_wants[id(consumer)] = (_weakref.ref(consumer), wants)
        else:
            self.log_wants.pop(id(consumer), None)
        self.recompute()
        return 0

    cdef int recompute(self) except -1:
        """Derive the masks the per-packet path tests from handlers and logged wants."""
        cdef int bit
        cdef uint64_t m, mboxes, filters
        memset(self.interest, 0, sizeof(self.interest))
        memset(self.logged, 0, sizeof(self.logged))
        self.log_mask = 0
        self.inline_mask = 0
        self.stale = False
        for consumer, (ref, wants) in list(self.log_wants.items()):
            if ref() is None:
                del self.log_wants[consumer]
                continue
            for kinds, mb, flt in wants:
                m = kinds
                mboxes = mb
                filters = flt
                self.log_mask |= m
                while m:
                    bit = __builtin_ctzll(m)
                    if filters:
                        self.logged[bit].fmboxes |= mboxes
                        self.logged[bit].filters |= filters
                    else:
                        self.logged[bit].mboxes |= mboxes
                    m &= m - 1
        for bit in range(MAX_EVENT_BITS):
            self.interest[bit] = self.logged[bit]
            for token in <list>self.handlers[bit]:
                self.inline_mask |= (<uint64_t>1) << bit
                self.interest[bit].mboxes |= (<uint64_t>1) << (<HandlerToken>token).middlebox
        # custom events: a base needs computing when a descendant has an interest
        for bit in range(MAX_EVENT_BITS - 1, FIRST_CUSTOM_BIT - 1, -1):
            if self.kind_objs[bit] is not None:
                widen(&self.interest[self.bit_for(self.kind_objs[bit].base)], &self.interest[bit])
        self.base_mask = 0
        for bit in range(MAX_EVENT_BITS):
            for child in <list>self.children[bit]:
                if self.interest[<int>child].mboxes or self.interest[<int>child].fmboxes:
                    self.base_mask |= (<uint64_t>1) << bit
        self.need_mask = self.log_mask | self.inline_mask | self.base_mask
        self.eng.interest_changed()
        return 0

    # ---- firing (the per-packet path) ----------------------------------------------------

    cdef inline bint wants(self, uint64_t kinds) noexcept:
        return (self.need_mask & kinds) != 0

    cdef inline int fire(self, int bit, int32_t slot, int side, int hook, int a, int b) except -1:
        """An event without a range or value, if anyone wants its kind."""
        if self.need_mask & ((<uint64_t>1) << bit):
            return self.emit(bit, slot, side, hook, a, b, -1, -1, None)
        return 0

    @cython.boundscheck(False)     # indexes come from the core's own enums and bit numbers
    @cython.wraparound(False)
    cdef int emit(self, int bit, int32_t slot, int side, int hook, int a, int b, int64_t off,
                  int64_t length, object value) except -1:
        """Raise one event: inline handlers now, then the log, then custom events based on it.

        ``slot`` is the flow's entry (-1: none). PACKET_IN fires at both hooks but occurs once
        (the sender hook's) for the log and for custom events. A handler raising leaves the
        event logged (it occurred) and its custom events unevaluated.
        """
        cdef uint64_t m = (<uint64_t>1) << bit
        cdef uint64_t fm = self.eng.tab.flows[slot].mbox_mask if slot >= 0 else ALL_MBOXES
        cdef uint32_t ff = self.eng.tab.flows[slot].filter_mask if slot >= 0 else ALL_FILTERS
        cdef bint occurrence = bit != B_PACKET_IN or hook != HOOK_RECEIVER
        self.n_events += 1
        if m & self.inline_mask:
            try:
                self.run_handlers(bit, slot, side, hook, a, b, off, length, value, fm)
            except BaseException:   # the program goes on after this packet: a flow's start must not be lost
                if occurrence and in_scope(&self.logged[bit], fm, ff):
                    self.record(bit, slot, side, a, b, off, length, value)
                raise
        if occurrence and in_scope(&self.logged[bit], fm, ff):
            self.record(bit, slot, side, a, b, off, length, value)
        if occurrence and (m & self.base_mask):
            for child in <list>self.children[bit]:
                if in_scope(&self.interest[<int>child], fm, ff):
                    self.raise_custom(<int>child, slot, side, hook, a, b, off, length, value)
        return 0

    cdef int record(self, int bit, int32_t slot, int side, int a, int b, int64_t off, int64_t length,
                    object value) except -1:
        """Append an event to the batch's log (with its flow's key, and figures for an end).

        A side's BUFFER_OVERRUN for the same limit as one already logged is added to that one
        (its ``count`` and ``length``) rather than logged again: under a flood of refused
        segments a side holds one event until the next delivery."""
        cdef evrec_t *r
        cdef flow_t *f
        cdef int root = self.root_of[bit]
        cdef object key
        cdef uint64_t cost = EVENT_BYTES
        if bit == B_BUFFER_OVERRUN and slot >= 0:
            at = self.log.overruns.get((self.eng.tab.flows[slot].id, side, value))
            if at is not None:
                r = &self.log.recs[<uint32_t>at]
                r.count += 1
                r.length += length
                return 0
            self.log.overruns[(self.eng.tab.flows[slot].id, side, value)] = self.log.n
        r = self.log.add()
        r.ts = self.eng.now
        r.off = off
        r.length = length
        r.bit = <uint8_t>bit
        r.side = <int8_t>side
        r.a = <uint8_t>a
        r.b = <uint8_t>b
        r.value = self.log.keep(value)
        cost += value_bytes(value, length)
        r.slot = slot
        if slot >= 0:
            f = &self.eng.tab.flows[slot]
            r.flow_id = f.id
            r.filters = f.filter_mask
            r.mboxes = f.mbox_mask
            key = flow_key(f, self.eng.vlan_in_key)
            if root == B_CONN_END or root == B_UDP_END:
                r.stats = self.log.keep(snapshot(f))
                cost += SNAPSHOT_BYTES
            elif self.log_handles and bit == root and (root == B_CONN_START or root == B_UDP_START):
                r.handle = self.log.keep(self.eng.handle(slot))
                cost += HANDLE_BYTES
        else:
            r.flow_id = 0
            r.filters = ALL_FILTERS
            r.mboxes = ALL_MBOXES
            key = key_from_packet(&self.eng.pk, self.eng.vlan_in_key) if root == B_ORPHAN else None
        if key is not None:
            Py_INCREF(key)
            r.key = <PyObject *>key
        self.log.charge(cost)
        return 0

    cdef int raise_custom(self, int bit, int32_t slot, int side, int hook, int a, int b, int64_t off,
                          int64_t length, object base_value) except -1:
        """Evaluate a custom event's predicate; the view's value is its base occurrence's."""
        cdef PacketView pv = self.set_view(bit, slot, side, hook, a, b, off, length, base_value)
        try:
            r = self.kind_objs[bit].predicate(pv)
        finally:
            self.let_go(pv)
        if r is None or r is False:
            return 0
        if r is True:
            return self.emit(bit, slot, side, hook, a, b, off, length, None)
        if isinstance(r, (list, tuple)):
            for item in r:
                self.emit(bit, slot, side, hook, a, b, off, length, item)
            return 0
        if r:
            return self.emit(bit, slot, side, hook, a, b, off, length, r)
        return 0

    @cython.boundscheck(False)     # indexes come from the core's own enums and bit numbers
    @cython.wraparound(False)
    cdef int run_handlers(self, int bit, int32_t slot, int side, int hook, int a, int b, int64_t off,
                          int64_t length, object value, uint64_t fm) except -1:
        """The kind's inline handlers, in chain order (reversed for server-to-client packets):
        those registered when it began, less those removed before their turn."""
        cdef list lst = <list>self.handlers[bit]     # never changed (see ``handlers``); held here
        cdef Py_ssize_t n = len(lst), j, idx
        cdef HandlerToken t
        cdef PacketView pv
        for j in range(n):
            idx = n - 1 - j if side == 1 else j
            t = <HandlerToken>lst[idx]
            if t.hook == 0:
                if bit == B_PACKET_IN and hook == HOOK_RECEIVER:
                    continue
            elif t.hook != hook:
                continue
            if not (((<uint64_t>1) << t.middlebox) & fm) or t.removed:
                continue
            pv = self.set_view(bit, slot, side, hook, a, b, off, length, value)
            try:
                t.handler(pv)
            finally:
                self.let_go(pv)
        return 0

    cdef int call(self, object fn, int bit, int32_t slot, object value) except -1:
        """Run ``fn(view)`` for an occurrence without a packet (a timer's callback). When it
        raises, the occurrence is logged all the same (it occurred), as after an inline handler;
        the caller raises its event only when it returns."""
        cdef PacketView pv = self.set_view(bit, slot, -1, HOOK_NONE, 0, 0, -1, -1, value)
        cdef uint64_t fm = self.eng.tab.flows[slot].mbox_mask if slot >= 0 else ALL_MBOXES
        cdef uint32_t ff = self.eng.tab.flows[slot].filter_mask if slot >= 0 else ALL_FILTERS
        try:
            fn(pv)
        except BaseException:
            if in_scope(&self.logged[bit], fm, ff):
                self.record(bit, slot, -1, 0, 0, -1, -1, value)
            raise
        finally:
            self.let_go(pv)
        return 0

    cdef inline PacketView set_view(self, int bit, int32_t slot, int side, int hook, int a, int b,
                                    int64_t off, int64_t length, object value):
        cdef PacketView pv = self.pv
        pv._has_packet = hook != HOOK_NONE
        pv._bit = bit
        pv._slot = slot
        pv._side = side
        pv._hook = hook
        pv._a = a
        pv._b = b
        pv._off = off
        pv._len = length
        pv._value = value
        return pv

    cdef inline void let_go(self, PacketView pv) noexcept:
        """After a handler or predicate: a view it kept (or an exception's traceback holds) is
        retired, so that it raises when used; the next call gets a new one."""
        pv._value = None
        if refcount(<PyObject *>pv) > 2:        # self.pv and the caller's variable
            pv._dead = 1
            self.pv = self.new_view()

    # ---- values -------------------------------------------------------------------------

    @cython.boundscheck(False)     # indexes come from the core's own enums and bit numbers
    @cython.wraparound(False)
    cdef Event make_event(self, uint32_t i):
        """The Event value of the log's i-th record."""
        cdef const evrec_t *r = &self.log.recs[i]
        cdef Event ev = Event.__new__(Event)
        cdef int root = self.root_of[r.bit]
        ev.kind = self.kind_objs[r.bit]
        if r.key != NULL:
            ev.key = <FlowKey>r.key
        ev._flow_id = r.flow_id
        ev.side = SIDES[r.side] if r.side >= 0 else None
        ev.ts = r.ts * 1e-9
        if root == B_STATE_CHANGE:
            ev.old_state = STATES[r.a]
            ev.new_state = STATES[r.b]
        elif root == B_CONN_END or root == B_UDP_END:
            ev.reason = REASONS[r.a]
        elif root == B_BUFFER_OVERRUN:
            ev._count = r.count
        ev._offset = r.off
        ev._length = r.length
        if r.value >= 0:
            ev._value = self.log.values[r.value]
        if r.stats >= 0:
            ev._stats = <FlowSnapshot>self.log.values[r.stats]
        return ev

    cdef Event view_event(self, PacketView pv):
        """The Event value of the occurrence a view shows (as the log would record it)."""
        cdef Event ev = Event.__new__(Event)
        cdef int root = self.root_of[pv._bit]
        cdef flow_t *f
        ev.kind = self.kind_objs[pv._bit]
        if pv._slot >= 0:
            f = &self.eng.tab.flows[pv._slot]
            ev.key = flow_key(f, self.eng.vlan_in_key)
            ev._flow_id = f.id
            if root == B_CONN_END or root == B_UDP_END:
                ev._stats = snapshot(f)
        elif root == B_ORPHAN:
            ev.key = key_from_packet(&self.eng.pk, self.eng.vlan_in_key)
        ev.side = SIDES[pv._side] if pv._side >= 0 else None
        ev.ts = self.eng.now * 1e-9
        if root == B_STATE_CHANGE:
            ev.old_state = STATES[pv._a]
            ev.new_state = STATES[pv._b]
        elif root == B_CONN_END or root == B_UDP_END:
            ev.reason = REASONS[pv._a]
        elif root == B_BUFFER_OVERRUN:
            ev._count = 1
        ev._offset = pv._off
        ev._length = pv._len
        ev._value = pv._value
        return ev
