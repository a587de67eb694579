# The delivery boundary (DESIGN.md section 3): a Dispatcher turns the engine's event log into
# deliveries, with no I/O and no Trio. Every way of programming aiomb is a shell over it: the
# Trio stack hands subscriptions their lists and feeds per-flow streams; a synchronous loop
# drains it directly.
#
#   subscription   events of some kinds, for the flows of a middlebox (and a filter): a list
#                  per subscription, drained by its consumer
#   acceptor       like a listening socket: each new flow it accepts gets an inbox, queued
#                  until the consumer accepts it
#   inbox          the events of one flow (of the kinds the acceptor asked for), with the kinds
#                  seen since last read (its ready mask); inboxes with something new are on the
#                  dispatcher's ready list, as on an epoll instance's

from aiomb.events._kinds import split_kinds


@cython.final
cdef class FlowInbox:
    """The events of one flow for one acceptor, and the kinds seen since last taken.

    Made by a :class:`Dispatcher` when its acceptor accepts a new flow. ``take()`` returns the
    events queued so far (and clears the ready mask); ``ended`` turns True with the flow's
    CONN_END / UDP_END. Layer: core (sans-I/O).
    """

    cdef readonly FlowKey key
    cdef readonly uint64_t flow_id
    cdef int32_t slot               # the flow's table entry
    cdef readonly Flow flow         # the flow's live handle (its final values once it has gone)
    cdef readonly uint64_t acceptor     # the number listen() returned
    cdef uint64_t mask
    cdef readonly uint64_t ready
    cdef readonly bint ended
    cdef bint queued
    cdef list events
    cdef FlowSocketCore sink        # a monitor's acceptor: the flow socket its events go to
    cdef public object context      # the shell's (a stream pair, a task)

    def __cinit__(self):
        self.events = []

    def take(self):
        """The events queued since the last take (a list, maybe empty); clears ``ready``."""
        out = self.events
        if out:
            self.events = []
        self.ready = 0
        return out

    def __len__(self):
        return len(self.events)

    def __repr__(self):
        return f"<FlowInbox #{self.flow_id} {self.key} {len(self.events)} queued{' ended' if self.ended else ''}>"


cdef enum:
    MAX_SUBS = 256
    MAX_ACCEPTORS = 64


@cython.final
cdef class Dispatcher:
    """Turns the events an engine logs into deliveries: subscriptions, acceptors, flow inboxes.

    Sans-I/O: ``dispatch()`` reads what the engine logged since the last call (after
    ``Engine.process``/``feed``/``expire``/``finish``) and routes it; consumers then ``drain``
    their subscriptions and ``take`` from ready inboxes. An Event is made once per logged event
    that someone receives. One dispatcher per engine. Layer: core; never blocks, never imports
    Trio.
    """

    cdef Engine engine
    cdef int nsubs                          # slots used so far; a slot whose mask is 0 is free
    cdef uint32_t sub_gen[MAX_SUBS]         # a slot's reuses: a subscription's number is
                                            # slot + MAX_SUBS * generation, so an old one is refused
    cdef uint64_t sub_mask[MAX_SUBS]
    cdef uint64_t sub_mbox[MAX_SUBS]
    cdef uint64_t sub_filter[MAX_SUBS]      # 0: no filter
    cdef list sub_lists
    cdef int nacc                           # slots used so far; a closed acceptor's slot is free
    cdef uint32_t acc_gen[MAX_ACCEPTORS]    # numbered as subscriptions are
    cdef uint64_t acc_mask[MAX_ACCEPTORS]   # kinds delivered to the accepted flows' inboxes
    cdef uint64_t acc_mbox[MAX_ACCEPTORS]
    cdef uint64_t acc_filter[MAX_ACCEPTORS]
    cdef uint8_t acc_protos[MAX_ACCEPTORS]  # bit 0: TCP flows, bit 1: UDP flows
    cdef bint acc_open[MAX_ACCEPTORS]
    cdef list acc_pending
    cdef list acc_monitors                   # a MonitorCore making flow sockets, or None
    cdef dict serving                        # a closed acceptor's number -> [its inboxes left, kinds, middlebox]
    cdef bint serving_changed                # an entry went: the wants shrink at the next update
    cdef dict inboxes                        # flow id -> [FlowInbox, ...]
    cdef uint64_t *slot_ids                  # the same lists by flow-table entry (no lookup per event):
    cdef PyObject **slot_lists               # the flow id there, and its list (the dict holds it)
    cdef uint32_t nslots
    cdef list ready
    cdef readonly uint64_t events_delivered
    cdef object __weakref__

    def __cinit__(self, Engine engine):
        if engine.dispatcher is not None and engine.dispatcher() is not None:
            raise RuntimeError("this engine already has a dispatcher; one dispatcher reads one engine's log")
        if engine.dispatcher is not None:
            engine.forget_dispatcher_filters()      # the filters of the one that has gone
        engine.dispatcher = _weakref.ref(self)
        self.engine = engine
        self.sub_lists = []
        self.acc_pending = []
        self.acc_monitors = []
        self.serving = {}
        self.inboxes = {}
        self.ready = []

    # ---- registration -------------------------------------------------------------------

    cdef uint64_t mask_of(self, kinds) except? 0:
        cdef uint64_t mask = 0
        for k in split_kinds(kinds):
            mask |= (<uint64_t>1) << self.engine.em.bit_for(k)
        return mask

    cdef uint64_t scope(self, int middlebox, object filter) except? 0:
        self.engine.check_middlebox(middlebox)
        if filter is None:
            return 0
        return (<uint64_t>1) << <int>self.engine.add_filter(filter)

    def subscribe(self, kinds, *, int middlebox=0, filter=None):
        """Collect events of ``kinds`` for the flows of a middlebox (and a flow ``filter``, an
        object with ``matches(key)``); returns the subscription's number for ``drain``.

        What the engine logged before is routed first: a subscription receives the events
        raised after it was made. Raises ValueError past 256 subscriptions open at once, for an
        unknown middlebox or for no kinds.
        """
        cdef int i = 0
        while i < self.nsubs and self.sub_mask[i]:
            i += 1
        if i == MAX_SUBS:
            raise ValueError(f"at most {MAX_SUBS} subscriptions open at once per dispatcher; "
                             "unsubscribe the ones no longer read")
        cdef uint64_t mask = self.mask_of(kinds)
        if self.engine.em.log.n:
            self.dispatch()
        cdef uint64_t flt = self.scope(middlebox, filter)
        self.sub_mask[i] = mask
        self.sub_mbox[i] = (<uint64_t>1) << middlebox
        self.sub_filter[i] = flt
        if i == self.nsubs:
            self.sub_lists.append([])
            self.nsubs += 1
        self.update_wants()
        return i + MAX_SUBS * <uint64_t>self.sub_gen[i]

    cdef int check_sub(self, object sub) except -1:
        """The slot of an open subscription's number."""
        cdef int i
        if isinstance(sub, int) and sub >= 0:
            i = sub % MAX_SUBS
            if i < self.nsubs and self.sub_mask[i] and sub // MAX_SUBS == self.sub_gen[i]:
                return i
        raise ValueError(f"no subscription {sub!r}; subscribe() returns the numbers there are "
                         "(an unsubscribed one is gone)")

    def unsubscribe(self, sub):
        """Stop collecting for a subscription; its undrained events are discarded, and its number
        is refused from now on."""
        cdef int i = self.check_sub(sub)
        if self.sub_filter[i]:
            self.engine.release_filter(__builtin_ctzll(self.sub_filter[i]))
        self.sub_mask[i] = 0
        self.sub_filter[i] = 0
        self.sub_gen[i] += 1
        self.sub_lists[i] = []
        self.update_wants()

    def drain(self, sub):
        """The events collected for a subscription since its last drain (a list, maybe empty);
        what the engine logged meanwhile is routed first."""
        cdef int i = self.check_sub(sub)
        if self.engine.em.log.n:
            self.dispatch()
        out = self.sub_lists[i]
        if out:
            self.sub_lists[i] = []
        return out

    def pending(self, sub):
        """How many events a subscription has collected and not yet handed over (what the
        engine logged since the last dispatch not counted)."""
        return len(self.sub_lists[self.check_sub(sub)])

    def listen(self, kinds, *, int middlebox=0, filter=None, tcp=True, udp=False):
        """An acceptor: each new flow (TCP and/or UDP) of a middlebox (and ``filter``) gets an
        inbox receiving that flow's events of ``kinds``; returns the acceptor's number.

        The flow's start event (CONN_START / UDP_START) is in its inbox when ``kinds`` has it;
        its end (CONN_END / UDP_END, with the flow's figures) always is, and closes the inbox
        (``ended``). Flows that started before are not accepted (what the engine logged is
        routed first). Raises ValueError past 64 acceptors open at once.
        """
        cdef int i = 0
        while i < self.nacc and self.acc_open[i]:
            i += 1
        if i == MAX_ACCEPTORS:
            raise ValueError(f"at most {MAX_ACCEPTORS} acceptors open at once per dispatcher; "
                             "close the ones no longer accepting")
        if not (tcp or udp):
            raise ValueError("an acceptor needs TCP or UDP flows (or both)")
        cdef uint64_t mask = self.mask_of(kinds) | EV_CONN_END | EV_UDP_END
        if self.engine.em.log.n:
            self.dispatch()
        cdef uint64_t flt = self.scope(middlebox, filter)
        self.acc_mask[i] = mask
        self.acc_mbox[i] = (<uint64_t>1) << middlebox
        self.acc_filter[i] = flt
        self.acc_protos[i] = (1 if tcp else 0) | (2 if udp else 0)
        self.acc_open[i] = True
        if i == self.nacc:
            self.acc_pending.append([])
            self.acc_monitors.append(None)
            self.nacc += 1
        self.update_wants()
        return i + MAX_ACCEPTORS * <uint64_t>self.acc_gen[i]

    cdef int check_acc(self, object acc) except -1:
        """The slot of an open acceptor's number."""
        cdef int i
        if isinstance(acc, int) and acc >= 0:
            i = acc % MAX_ACCEPTORS
            if i < self.nacc and self.acc_open[i] and acc // MAX_ACCEPTORS == self.acc_gen[i]:
                return i
        raise ValueError(f"no open acceptor {acc!r}; listen() returns the numbers there are")

    def accept(self, acc):
        """The inboxes of the flows an acceptor accepted since the last call (a list); what the
        engine logged meanwhile is routed first."""
        cdef int i = self.check_acc(acc)
        if self.engine.em.log.n:
            self.dispatch()
        out = self.acc_pending[i]
        if out:
            self.acc_pending[i] = []
        return out

    def widen(self, acc, kinds):
        """Have an acceptor's inboxes (those to come and those it made) receive ``kinds`` too."""
        cdef int i = self.check_acc(acc)
        cdef uint64_t mask = self.mask_of(kinds)
        cdef FlowInbox ib
        self.acc_mask[i] |= mask
        for lst in self.inboxes.values():
            for ib in <list>lst:
                if ib.acceptor == acc:
                    ib.mask |= mask
        self.update_wants()

    def close_acceptor(self, acc):
        """Accept no more flows; the inboxes already made go on receiving their kinds (logged
        for the acceptor's middlebox until the last of them has gone)."""
        cdef int i = self.check_acc(acc)
        cdef FlowInbox ib
        cdef Py_ssize_t left = 0
        if self.engine.em.log.n:
            self.dispatch()         # the ends logged meanwhile take their inboxes first
        for lst in self.inboxes.values():
            for ib in <list>lst:
                if ib.acceptor == acc:
                    left += 1
        if left:        # its kinds stay logged for its middlebox's flows until its last inbox goes
            self.serving[acc] = [left, self.acc_mask[i], self.acc_mbox[i]]
        if self.acc_filter[i]:
            self.engine.release_filter(__builtin_ctzll(self.acc_filter[i]))
        self.acc_open[i] = False
        self.acc_filter[i] = 0
        self.acc_gen[i] += 1
        self.acc_pending[i] = []
        self.acc_monitors[i] = None
        self.update_wants()

    def forget(self, FlowInbox inbox):
        """Stop filling an inbox (its flow stays tracked by the engine)."""
        lst = self.inboxes.get(inbox.flow_id)
        if lst is not None and inbox in lst:
            lst.remove(inbox)
            if self.serving:
                self.inbox_gone(inbox)
            if not lst:
                self.drop_inboxes(inbox.flow_id, inbox.slot)
            if self.serving_changed:
                self.update_wants()

    cdef int inbox_gone(self, FlowInbox ib) except -1:
        """One inbox fewer for its acceptor: the last of a closed acceptor's takes its wants."""
        entry = self.serving.get(ib.acceptor)
        if entry is not None:
            entry[0] -= 1
            if not entry[0]:
                del self.serving[ib.acceptor]
                self.serving_changed = True
        return 0

    cdef int drop_inboxes(self, uint64_t flow_id, int32_t slot) except -1:
        cdef FlowInbox ib
        lst = self.inboxes.pop(flow_id)
        if self.serving:
            for ib in <list>lst:
                self.inbox_gone(ib)
        if 0 <= slot < <int32_t>self.nslots and self.slot_ids[slot] == flow_id:
            self.slot_ids[slot] = 0
            self.slot_lists[slot] = NULL
        return 0

    cdef int keep_inboxes(self, int32_t slot, uint64_t flow_id, list lst) except -1:
        cdef uint32_t n = self.nslots
        cdef void *p
        if slot >= <int32_t>n:
            n = max(<uint32_t>slot + 1, n * 2, 1024)
            p = realloc(self.slot_ids, n * sizeof(uint64_t))
            if p == NULL:
                raise MemoryError()
            self.slot_ids = <uint64_t *>p
            p = realloc(self.slot_lists, n * sizeof(PyObject *))
            if p == NULL:
                raise MemoryError()
            self.slot_lists = <PyObject **>p
            memset(&self.slot_ids[self.nslots], 0, (n - self.nslots) * sizeof(uint64_t))
            memset(&self.slot_lists[self.nslots], 0, (n - self.nslots) * sizeof(PyObject *))
            self.nslots = n
        self.slot_ids[slot] = flow_id
        self.slot_lists[slot] = <PyObject *>lst
        return 0

    cdef int forget_socket(self, FlowSocketCore sock) except -1:
        """Stop filling a flow socket (its inbox holds it; it does not hold its inbox, so that
        no cycle is left for the garbage collector)."""
        cdef FlowInbox ib
        lst = self.inboxes.get(sock.flow_id)
        if lst is None:
            return 0
        for ib in <list>lst:
            if ib.sink is sock:
                self.forget(ib)
                return 0
        return 0

    def ready_inboxes(self):
        """The inboxes that received events since the last call, in the order they did; what
        the engine logged meanwhile is routed first."""
        cdef FlowInbox ib
        if self.engine.em.log.n:
            self.dispatch()
        out = self.ready
        if out:
            self.ready = []
            for ib in out:
                ib.queued = False
        return out

    cdef int update_wants(self) except -1:
        cdef int i
        wants = []
        for i in range(self.nsubs):
            if self.sub_mask[i]:
                wants.append((self.sub_mask[i], self.sub_mbox[i], self.sub_filter[i]))
        for i in range(self.nacc):
            if self.acc_open[i]:
                wants.append((self.acc_mask[i] | EV_CONN_START | EV_UDP_START | EV_CONN_END | EV_UDP_END,
                              self.acc_mbox[i], self.acc_filter[i]))
        if self.inboxes:
            wants.append((EV_CONN_END | EV_UDP_END, ALL_MBOXES, 0))
        for _, mask, mbox in self.serving.values():     # its filter went with it: the middlebox's flows
            wants.append((mask, mbox, 0))
        self.serving_changed = False
        self.engine.em.log_handles = any(self.acc_open[i] for i in range(self.nacc))
        self.engine.em.want_logged(self, wants)
        return 0

    def __dealloc__(self):
        free(self.slot_ids)
        free(self.slot_lists)
        # its wants go with it: the engine recomputes them before its next packet (no Python
        # work here, which may run while the garbage collector takes the engine apart)
        if self.engine is not None and self.engine.em is not None:
            self.engine.em.log_handles = False
            self.engine.em.stale = True

    # ---- routing ------------------------------------------------------------------------

    @cython.boundscheck(False)     # indexes come from the core's own enums and bit numbers
    @cython.wraparound(False)
    def dispatch(self):
        """Route what the engine logged since the last call; returns how many events were
        delivered (to subscriptions and inboxes). Exceptions leave the log as it was read."""
        cdef EventLog log = self.engine.em.log
        cdef Emitter em = self.engine.em
        cdef const evrec_t *r
        cdef uint64_t m
        cdef uint32_t i
        cdef int j, root
        cdef Event ev
        cdef uint64_t delivered = 0
        cdef bint had_inboxes = len(self.inboxes) > 0
        try:
            for i in range(log.n):
                r = &log.recs[i]
                m = (<uint64_t>1) << r.bit
                ev = None
                for j in range(self.nsubs):
                    if (self.sub_mask[j] & m) and (self.sub_mbox[j] & r.mboxes) \
                            and (self.sub_filter[j] == 0 or (self.sub_filter[j] & r.filters)):
                        if ev is None:
                            ev = em.make_event(i)
                        PyList_Append(<list>self.sub_lists[j], ev)
                        delivered += 1
                if r.flow_id == 0:
                    continue
                root = em.root_of[r.bit]
                if (root == B_CONN_START or root == B_UDP_START) and r.bit == root and self.nacc:
                    self.open_inboxes(r)
                if self.inboxes:
                    delivered += self.to_inboxes(i, r, m, root, ev)
        finally:
            log.clear()
            self.events_delivered += delivered
        if had_inboxes != (len(self.inboxes) > 0) or self.serving_changed:
            self.update_wants()
        return delivered

    @cython.boundscheck(False)     # indexes come from the core's own enums and bit numbers
    @cython.wraparound(False)
    cdef int open_inboxes(self, const evrec_t *r) except -1:
        cdef int j
        cdef FlowInbox ib
        cdef uint8_t proto = 1 if r.bit == B_CONN_START else 2
        for j in range(self.nacc):
            if self.acc_open[j] and (self.acc_protos[j] & proto) and (self.acc_mbox[j] & r.mboxes) \
                    and (self.acc_filter[j] == 0 or (self.acc_filter[j] & r.filters)):
                ib = FlowInbox.__new__(FlowInbox)
                ib.key = <FlowKey>r.key
                ib.flow_id = r.flow_id
                ib.slot = r.slot
                if r.handle >= 0:
                    ib.flow = <Flow>self.engine.em.log.values[r.handle]
                ib.acceptor = j + MAX_ACCEPTORS * <uint64_t>self.acc_gen[j]
                ib.mask = self.acc_mask[j]
                lst = self.inboxes.get(r.flow_id)
                if lst is None:
                    lst = [ib]
                    self.inboxes[r.flow_id] = lst
                    self.keep_inboxes(r.slot, r.flow_id, lst)
                else:
                    (<list>lst).append(ib)
                if self.acc_monitors[j] is not None:
                    (<MonitorCore>self.acc_monitors[j]).new_socket(ib)
                else:
                    (<list>self.acc_pending[j]).append(ib)
        return 0

    cdef uint64_t to_inboxes(self, uint32_t i, const evrec_t *r, uint64_t m, int root, Event ev) except? 0:
        cdef FlowInbox ib
        cdef uint64_t n = 0
        cdef bint end = (root == B_CONN_END or root == B_UDP_END) and r.bit == root
        cdef list lst
        if r.slot < 0 or r.slot >= <int32_t>self.nslots or self.slot_ids[r.slot] != r.flow_id:
            return 0                    # the flow has no inbox
        lst = <list>self.slot_lists[r.slot]
        for ib in lst:
            if ib.sink is not None:
                if ib.mask & m:
                    ib.sink.route(self.engine.em, i, r, m)
                    n += 1
                if end:
                    ib.ended = True
                continue
            if ib.mask & m:
                if ev is None:
                    ev = self.engine.em.make_event(i)
                ib.events.append(ev)
                ib.ready |= m
                n += 1
            if end:
                ib.ended = True
            if (ib.mask & m or end) and not ib.queued:
                ib.queued = True
                self.ready.append(ib)
        if end:
            self.drop_inboxes(r.flow_id, r.slot)
        return n
