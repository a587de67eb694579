# The Engine: per packet, parse -> flow lookup -> sender update + sender hook -> receiver update
# + receiver hook -> verdict (DESIGN.md section 2). Flows bound to an outer tuple (Flow.translate,
# translate.pxi) have their replies translated just before the lookup and their client's packets
# just after the receiver hook. It owns the flow table, the fragment table,
# the streams' context and an Emitter; the TCP rules are in tcp.pxi, reassembly in reasm.pxi,
# events in emit.pxi. Consumers read the batch's events from the Emitter's log (dispatch.pxi).

import array as _array
import numbers as _numbers

from aiomb.flows._filter import check_vlan_key as _check_vlan_key
from aiomb.flows._stats import EngineStatistics, MalformedCounts

MALFORMED_REASONS = (
    "truncated_l2", "truncated_ip", "bad_ip_version", "bad_ip_header_length",
    "bad_ip_total_length", "bad_ipv6_extension", "truncated_tcp", "bad_tcp_header_length",
    "truncated_udp", "bad_udp_length", "bad_fragment", "unknown_linktype",
    "bad_tcp_flags", "bad_checksum", "bad_ip_options", "ip_source_route",
    "ipv6_hop_by_hop_not_first", "bad_ipv6_options", "ipv6_routing_header", "truncated_tunnel",
)

# ERROR event values for a limit's drop, indexed by the LIM_* numbers
LIMIT_ERRORS = ("fragment_timeout", "fragment_evicted")

cdef enum:
    LIM_FRAGMENT_TIMEOUT = 0    # an incomplete datagram's fragments expired
    LIM_FRAGMENT_EVICTED = 1    # an incomplete datagram was dropped to make room (entries or memory)

cdef enum:
    FRAME_FLOW_BITS = 4         # a shard's flow id: its first packet's number, then its place (tunnel.pxi)


def last_flow_id(packet):
    """The largest id a shard gives a flow whose first packet is the input's ``packet``-th (see
    Engine.take_created); a Python int, so that a packet number past any input has one."""
    return ((packet + 1) << FRAME_FLOW_BITS) - 1

cdef enum:
    MAX_MBOXES = 32
    MAX_FILTERS = 32
    HEAP_TOP_PAD = 4 << 20

cdef extern from "<malloc.h>" nogil:
    int mallopt(int param, int value)
    int M_TOP_PAD

cdef bint heap_tuned = False

cdef void tune_heap() noexcept:
    """Once per process: have glibc grow the heap 4 MiB beyond each need (M_TOP_PAD). Stream
    bytes of a batch are freed and allocated again at every batch; with the default pad the
    heap's top is given back to the kernel and faulted in again each time (20% of the time of
    a reassembly run that reads its bytes, measured)."""
    global heap_tuned
    if not heap_tuned:
        mallopt(M_TOP_PAD, HEAP_TOP_PAD)
        heap_tuned = True

ctypedef struct age_t:
    uint64_t id             # flow ids rise with creation: sorting by id is oldest first
    uint32_t slot

cdef int cmp_age(const void *a, const void *b) noexcept nogil:
    cdef uint64_t x = (<const age_t *>a).id, y = (<const age_t *>b).id
    return (x > y) - (x < y)

ctypedef struct idle_t:
    int64_t last_ts
    uint64_t id
    int32_t slot

cdef int cmp_idle(const void *a, const void *b) noexcept nogil:
    cdef const idle_t *x = <const idle_t *>a
    cdef const idle_t *y = <const idle_t *>b
    if x.last_ts != y.last_ts:
        return (x.last_ts > y.last_ts) - (x.last_ts < y.last_ts)
    return (x.id > y.id) - (x.id < y.id)

cdef inline int64_t to_ns(double seconds):
    return <int64_t>(seconds * 1e9 + (0.5 if seconds >= 0 else -0.5))

cdef double MAX_SECONDS = 9223372036.0     # the last whole second int64 nanoseconds reach (year 2262)

DEFAULT_EVENT_MEMORY = 64 << 20


cdef int64_t time_ns(object value, str what) except? -1:
    """A time in seconds from the caller, as nanoseconds; ValueError naming it unless it is a
    number from 0 to MAX_SECONDS (NaN, infinities, negative times and times past 2262 are refused)."""
    cdef double s
    if type(value) is float or type(value) is int:
        s = value
    elif isinstance(value, _numbers.Real) and not isinstance(value, bool):
        s = float(value)
    else:
        raise ValueError(f"{what} must be a number of seconds (a float or an int), got {value!r}")
    if not 0.0 <= s <= MAX_SECONDS:
        raise ValueError(f"{what} must be a time in seconds from 0 to {MAX_SECONDS:.0f} (what int64 nanoseconds "
                         f"hold, up to the year 2262), got {value!r}; pass seconds since the epoch")
    return to_ns(s)


@cython.final
cdef class Engine:
    """The flow-processing core: fed frames and timestamps, it tracks flows and raises events.

    Sans-I/O: ``feed()`` / ``process()`` take frames, ``expire()`` advances time, ``finish()``
    ends every flow (end of capture). Inline handlers (``add_handler``) run at once, inside the
    core; everything else reads the events of a batch from the engine's log through a
    :class:`Dispatcher`. Layer: core; never blocks, never reads a clock. Options are
    keyword-only; bad values raise ValueError/TypeError.

    ``translation_hook`` (None, or a callable a shell sets) is called once for each binding
    ``Flow.translate`` makes and once when it ends (its flow leaves the table, or another
    flow's binding takes its outer tuple; not at ``close()``), never per packet:
    ``hook(bound, protocol, (source address, port), (destination address, port))`` with the
    outer reply tuple, what the replies the binding translates carry. A steered worker's
    port gives its engines one that steers those replies to the worker (README "Inline
    workers"). An exception from it leaves ``translate()`` (the binding is not made) or the
    call that removed the flow.
    """

    cdef flowtab_t tab
    cdef fragtab_t frags
    cdef xlattab_t xt              # the flows' outer tuples (Flow.translate)
    cdef public object translation_hook     # told of each binding made and ended (None: no one)
    cdef int32_t xlat_slot          # the flow a reply was translated to before the lookup (-1: none)
    cdef int32_t cur_slot           # the current packet's flow and sender's side (-1: none)
    cdef int cur_side
    cdef reasm_t rx
    cdef pkt_t pk
    cdef frag_t *frag_done
    cdef readonly int64_t now
    cdef uint64_t next_id
    cdef readonly uint32_t shard_index  # this engine tracks the flows whose key hashes to its shard
    cdef readonly uint32_t shard_count
    cdef uint32_t frame_place       # the current packet's place among its frame's TCP/UDP packets (a UDP
                                    # tunnel's datagram, then the one inside: tunnel.pxi), in every shard
    cdef object created             # shards: the ids of the flows created since take_created()
    cdef idle_t *idle               # an expiry pass's flows, and room for idle_cap of them
    cdef uint32_t idle_cap
    cdef int64_t timeouts[N_TCLASS]
    cdef readonly bint midstream
    cdef readonly bint vlan_in_key
    cdef int verdict
    cdef readonly bint closed   # close() was called: no more input
    cdef bint busy              # inside feed/process/expire/finish (handlers must not re-enter)
    cdef bint frames_writable   # the current batch's frames may be rewritten (PacketView.rewrite)
    cdef FrameBlock block       # the capture memory the current batch lies in (None: copy out)
    cdef uint64_t n_packets, n_bytes, n_tcp, n_udp, n_non_ip, n_other, n_orphans
    cdef uint64_t n_tunneled         # packets found inside a UDP tunnel's datagram (tunnel.pxi)
    cdef uint64_t side_packets[2]       # packets and payload bytes of tracked flows, by the sender's side
    cdef uint64_t side_payload[2]
    cdef uint64_t n_created, n_ended, n_timed_out, n_evicted, n_rst_oow, n_dropped, n_rejected
    cdef uint64_t n_bad_options     # TCP packets taken whose options end at a malformed one
    cdef uint64_t malformed[N_MALFORMED]
    cdef Emitter em
    cdef list mbox_filters          # each middlebox's filter (None: every flow)
    cdef list mbox_rank             # each one's place in the chain (the order added); -1: a free index
    cdef int next_rank
    cdef list flow_filters          # subscription filters (one bit each in flow_t.filter_mask; None: free)
    cdef list filter_uses           # how many subscriptions use each
    cdef bint any_filter
    cdef int reassembly_mode        # -1 automatic (when stream events are wanted), 0 off, 1 on
    cdef bint buffering_option      # streams may keep their bytes
    cdef readonly bint verify_checksums
    cdef readonly bint conn_history  # keep Zeek's view of each flow (history.pxi) for its record
    cdef FlowRecords records        # the batch the flows leaving the table are written to, or None
    cdef uint32_t records_filter    # the filter bit a recorded flow needs (0: every flow)
    cdef readonly bint reassembling
    cdef int policy
    cdef list host_policies
    cdef object dispatcher          # a weak reference to the dispatcher reading the log, or None
    cdef timerq_t tq
    cdef dict timers                # timer id -> TimerEntry
    cdef uint32_t last_timer_id
    cdef bint clock_started         # a packet (or expire()) has set the clock
    cdef list unstarted             # (delay ns, timer id) of timers set before the clock started
    cdef object event_memory_option # max_event_memory as given (None: the default)
    cdef readonly uint64_t max_event_memory
    cdef uint64_t unit_reserve      # the most memory of events one unit of work raises: a timer,
    cdef uint64_t end_reserve       # a flow's end (or its leaving the table),
    cdef uint64_t packet_reserve    # a packet (with a flow evicted or reused, fragments dropped)
    cdef readonly bint paused       # the last process/expire/finish stopped at max_event_memory
    cdef uint64_t n_pauses
    cdef bint unbounded             # feed(): one packet, whatever the log holds
    cdef object resume_batch        # the batch process() stopped in (max_event_memory, or a raise), or None
    cdef int resume_pos             # its frame to go on from
    cdef bint resume_raised         # stopped because an exception left it
    cdef age_t *fin_order           # a finish() under way: the flows, oldest first,
    cdef uint32_t fin_n, fin_pos    # how many, the next one,
    cdef int fin_phase              # 0: ending them, 1: taking them out of the table

    def __cinit__(self):
        memset(&self.tab, 0, sizeof(flowtab_t))
        memset(&self.frags, 0, sizeof(fragtab_t))
        memset(&self.xt, 0, sizeof(xlattab_t))
        memset(&self.rx, 0, sizeof(reasm_t))
        memset(&self.tq, 0, sizeof(timerq_t))

    def __init__(self, *, max_flows=1_000_000, tcp_syn_timeout=30.0, tcp_established_timeout=300.0,
                 tcp_closed_timeout=5.0, udp_timeout=60.0, midstream=False, vlan_in_key=False,
                 max_fragments=1024, fragment_timeout=30.0, max_fragment_memory=16 << 20, reassembly=None, buffering=True,
                 overlap_policy="first", max_buffer=1 << 20, max_ooo_segments=1024,
                 max_stream_memory=1 << 30, rst_payload=False, host_policies=None,
                 overlap_window=65536, checksums="ignore", conn_history=False, shard=None,
                 max_event_memory=None):
        if not isinstance(max_flows, int) or isinstance(max_flows, bool) or not 1 <= max_flows <= 0x7fffffff:
            raise ValueError(f"max_flows must be an int from 1 to {0x7fffffff}, got {max_flows!r}")
        if not isinstance(max_fragments, int) or not 0 <= max_fragments <= 1 << 20:
            raise ValueError(f"max_fragments must be an int from 0 to {1 << 20}, got {max_fragments!r}")
        if not isinstance(max_fragment_memory, int) or isinstance(max_fragment_memory, bool) \
                or not FRAG_MIN_MEMORY <= max_fragment_memory <= 1 << 40:
            raise ValueError(f"max_fragment_memory must be an int from {FRAG_MIN_MEMORY} (one datagram of the "
                             f"largest size) to {1 << 40} bytes, got {max_fragment_memory!r}")
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
        if not isinstance(overlap_window, int) or isinstance(overlap_window, bool) \
                or not 0 <= overlap_window <= 1 << 24:
            raise ValueError(f"overlap_window must be an int from 0 to {1 << 24} bytes, got {overlap_window!r}")
        if checksums not in ("ignore", "verify"):
            raise ValueError(f"checksums must be 'ignore' or 'verify', got {checksums!r}")
        self.verify_checksums = checksums == "verify"
        self.shard_index, self.shard_count = 0, 1
        if shard is not None:
            if not (isinstance(shard, tuple) and len(shard) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in shard)
                    and 0 <= shard[0] < shard[1] <= 1024):
                raise ValueError(f"shard must be (index, count) with 0 <= index < count <= 1024, got {shard!r}")
            self.shard_index, self.shard_count = shard
            self.created = _array.array("Q")
        self.conn_history = bool(conn_history)
        self.buffering_option = bool(buffering)
        self.rx.overlap_window = overlap_window
        self.rx.rst_payload = bool(rst_payload)
        self.rx.max_buffer = max_buffer
        self.rx.max_ooo_segments = max_ooo_segments
        self.rx.max_memory = max_stream_memory
        flowtab_init(&self.tab, max_flows, vlan_in_key)
        if self.conn_history:
            flowtab_keep_conns(&self.tab)
        fragtab_init(&self.frags, max_fragments, to_ns(fragment_timeout), max_fragment_memory)
        self.timeouts[TC_TCP_OPENING] = to_ns(tcp_syn_timeout)
        self.timeouts[TC_TCP_ESTABLISHED] = to_ns(tcp_established_timeout)
        self.timeouts[TC_TCP_CLOSED] = to_ns(tcp_closed_timeout)
        self.timeouts[TC_UDP] = to_ns(udp_timeout)
        self.midstream = midstream
        self.vlan_in_key = vlan_in_key
        self.next_id = 1
        self.mbox_filters = [None]
        self.mbox_rank = [0]
        self.next_rank = 1
        self.timers = {}
        self.unstarted = []
        self.flow_filters = []
        self.filter_uses = []
        self.reassembly_mode = -1 if reassembly is None else int(reassembly)
        self.event_memory_option = max_event_memory
        self.em = Emitter(self)
        self.interest_changed()
        if max_event_memory is not None:
            if not isinstance(max_event_memory, int) or isinstance(max_event_memory, bool) \
                    or not self.packet_reserve <= max_event_memory <= 1 << 62:
                raise ValueError(f"max_event_memory must be an int of at least {self.packet_reserve} (what one "
                                 f"packet can raise with these max_buffer, max_ooo_segments and max_fragments), "
                                 f"got {max_event_memory!r}")
        tune_heap()

    def __dealloc__(self):
        free(self.fin_order)
        self.drop_all()
        free(self.idle)
        xlat_free(&self.xt)
        flowtab_free(&self.tab)
        fragtab_free(&self.frags)
        reasm_free(&self.rx)
        timerq_free(&self.tq)

    # ---- options, read back ----------------------------------------------------------------

    @property
    def buffering(self):
        """Whether streams may keep their bytes (the option; they do when something needs them:
        stream events other than GAP and RETRANSMIT, or ``reassembly=True``)."""
        return self.buffering_option

    @property
    def overlap_window(self):
        """Bytes of each side's stream kept after delivery while OVERLAP is wanted, to compare
        retransmissions with."""
        return self.rx.overlap_window

    @property
    def rst_payload(self):
        """Whether a RST's payload is part of the stream."""
        return bool(self.rx.rst_payload)

    @property
    def max_buffer(self):
        """Bytes held per stream side at most."""
        return self.rx.max_buffer

    @property
    def max_ooo_segments(self):
        """Out-of-order segments held per stream side at most."""
        return self.rx.max_ooo_segments

    @property
    def max_stream_memory(self):
        """Bytes of stream state and buffers, all streams together, at most."""
        return self.rx.max_memory

    @property
    def stream_memory(self):
        """Bytes of stream state and buffers now."""
        return self.rx.memory

    @property
    def min_event_memory(self):
        """The least ``max_event_memory`` these limits allow: what one packet's events can hold
        at most (with the custom events defined so far)."""
        return self.packet_reserve

    @property
    def event_memory(self):
        """Bytes the events logged and not yet delivered hold now (at most ``max_event_memory``)."""
        return self.em.log.memory

    @property
    def resume_at(self):
        """The frame ``process()`` goes on from in the batch it stopped in, or None when no batch
        is unfinished. It stopped there at ``max_event_memory`` (``paused``), or an exception
        escaped it (a handler's, raised out of the frame before, which counts as processed; a
        timer callback's, before this frame): call ``process(batch, resume_at)`` next."""
        return self.resume_pos if self.resume_batch is not None else None

    # ---- registration -------------------------------------------------------------------

    cdef int not_running(self, str what) except -1:
        """Before processing: refuse re-entry from a handler; forget a dispatcher that has gone."""
        if self.closed:
            raise RuntimeError(f"{what} was called on a closed engine (close() dropped its flows); "
                               "make a new Engine for more input")
        if self.busy:
            raise RuntimeError(f"{what} cannot be called from an inline handler or predicate "
                               "(the engine is processing a packet)")
        if self.em.stale:
            self.em.recompute()
        return 0

    def add_middlebox(self, filter=None):
        """Append a middlebox to the chain; returns its index (0 is the default middlebox; a
        removed one's index is given again, its place in the chain is the end).

        ``filter`` is None or an object with ``matches(key) -> bool``, evaluated once per new
        flow. Raises ValueError past 32 middleboxes at once, RuntimeError once flows exist,
        FilterError for a filter on VLAN IDs without ``vlan_in_key``.
        """
        if self.tab.count:
            raise RuntimeError("add middleboxes before the first packet: flows already exist")
        if filter is not None and not callable(getattr(filter, "matches", None)):
            raise TypeError(f"a middlebox filter needs a matches(key) method, got {filter!r}")
        _check_vlan_key(filter, self.vlan_in_key)
        if -1 in self.mbox_rank:
            index = self.mbox_rank.index(-1)
        elif len(self.mbox_filters) < MAX_MBOXES:
            index = len(self.mbox_filters)
            self.mbox_filters.append(None)
            self.mbox_rank.append(-1)
        else:
            raise ValueError(f"at most {MAX_MBOXES} middleboxes can share one stack; remove_middlebox() "
                             "the ones no longer used")
        self.mbox_filters[index] = filter
        self.mbox_rank[index] = self.next_rank
        self.next_rank += 1
        self.any_filter = True if filter is not None else self.any_filter
        return index

    def remove_middlebox(self, int index):
        """Take a middlebox out of the chain; its index may be given again by add_middlebox.

        Raises ValueError for the default middlebox (0) or an unknown index, RuntimeError while
        inline handlers, subscriptions or acceptors use it (remove and close them first).
        """
        cdef uint64_t bit
        if index == 0:
            raise ValueError("the default middlebox (0) stays for as long as its engine")
        self.check_middlebox(index)
        bit = (<uint64_t>1) << index
        if any((<HandlerToken>token).middlebox == index for lst in self.em.handlers for token in lst):
            raise RuntimeError(f"middlebox {index} still has inline handlers; remove them first")
        for ref, wants in self.em.log_wants.values():
            if ref() is not None and any(mb != ALL_MBOXES and mb & bit for _, mb, _ in wants):
                raise RuntimeError(f"middlebox {index} still has subscriptions or acceptors; "
                                   "unsubscribe and close them first")
        self.mbox_filters[index] = None
        self.mbox_rank[index] = -1
        self.any_filter = any(f is not None for f in self.mbox_filters)

    cdef int check_middlebox(self, int index) except -1:
        if not 0 <= index < len(self.mbox_rank) or self.mbox_rank[index] < 0:
            raise ValueError(f"no middlebox {index}; add it with Engine.add_middlebox() first")
        return 0

    def add_filter(self, filter):
        """Use a flow filter for subscriptions (``matches(key) -> bool``); returns its bit number.

        A filter is evaluated once per new flow, and at once for the flows already in the table.
        An equal filter in use shares its bit (each use counts: give each back with
        ``release_filter``). Raises ValueError when 32 distinct filters are in use, FilterError
        for a filter on VLAN IDs without ``vlan_in_key``.
        """
        cdef uint32_t i
        cdef int n = -1
        if not callable(getattr(filter, "matches", None)):
            raise TypeError(f"a flow filter needs a matches(key) method, got {filter!r}")
        _check_vlan_key(filter, self.vlan_in_key)
        for i, known in enumerate(self.flow_filters):
            if known is not None and (known is filter or known == filter):
                self.filter_uses[i] += 1
                return i
        for i, known in enumerate(self.flow_filters):
            if known is None:
                n = i
                break
        else:
            if len(self.flow_filters) >= MAX_FILTERS:
                raise ValueError(f"at most {MAX_FILTERS} distinct subscription filters in use per stack; "
                                 "subscribe once with a broader filter and tell flows apart by key")
            self.flow_filters.append(None)
            self.filter_uses.append(0)
            n = len(self.flow_filters) - 1
        for i in range(self.tab.cap):          # the flows already here: the bit is (re)computed
            if self.tab.flows[i].status != FS_FREE:
                if filter.matches(flow_key(&self.tab.flows[i], self.vlan_in_key)):
                    self.tab.flows[i].filter_mask |= (<uint32_t>1) << n
                else:
                    self.tab.flows[i].filter_mask &= ~((<uint32_t>1) << n)
        self.flow_filters[n] = filter
        self.filter_uses[n] = 1
        return n

    def release_filter(self, int bit):
        """Give back one use of a filter bit from ``add_filter``; unused, the bit can be reused."""
        if not 0 <= bit < len(self.flow_filters) or self.flow_filters[bit] is None:
            raise ValueError(f"no filter {bit} in use")
        self.filter_uses[bit] -= 1
        if self.filter_uses[bit] == 0:
            self.flow_filters[bit] = None

    cdef int forget_dispatcher_filters(self) except -1:
        """A dispatcher has gone: every use of a filter bit was its own, except the records'."""
        for i, known in enumerate(self.flow_filters):
            if known is not None and self.records_filter != (<uint32_t>1) << <int>i:
                self.flow_filters[i] = None
                self.filter_uses[i] = 0
            elif known is not None:
                self.filter_uses[i] = 1
        return 0

    def keep_records(self, filter=None):
        """Write a record of each flow (accepted by ``filter``, an object with ``matches(key)``)
        when it leaves the table, with its final figures; every flow leaves, at ``finish()`` at
        the latest. ``take_records()`` hands the rows over. Before the first packet."""
        if self.n_packets:
            raise RuntimeError("keep_records() goes before the first packet: flows seen so far would be missing")
        if self.records is None:
            self.records = FlowRecords.__new__(FlowRecords)
        if filter is not None and self.records_filter == 0:
            self.records_filter = (<uint32_t>1) << <int>self.add_filter(filter)

    def take_records(self):
        """The :class:`FlowRecords` written since the last call (in the order the flows left the
        table); None when records are not kept."""
        out = self.records
        if out is not None:
            self.records = FlowRecords.__new__(FlowRecords)
        return out

    def table_records(self):
        """Records of the flows now in the table as they stand (an open flow's ``end_reason``
        is "open"), oldest first: a :class:`FlowRecords` batch; the flows stay."""
        cdef FlowRecords out = FlowRecords.__new__(FlowRecords)
        cdef uint32_t i
        cdef flowrec_t *r
        for i in range(self.tab.cap):
            if self.tab.flows[i].status != FS_FREE and (
                    self.records_filter == 0 or (self.tab.flows[i].filter_mask & self.records_filter)):
                r = out.add()
                record_flow(r, &self.tab.flows[i], self.vlan_in_key, conn_of(&self.tab, i))
                r.order = (self.n_packets + 1) << 1 | 1
        out.sort()
        return out

    @property
    def packets(self):
        """Frames taken so far (``statistics().packets``, without the snapshot)."""
        return self.n_packets

    def take_created(self):
        """A shard's flows created since the last call: their ids (the number of their first
        packet in the input, shifted left by ``FRAME_FLOW_BITS``, plus that packet's place among
        its frame's TCP and UDP packets: a UDP tunnel's datagram 0, the one inside 1), rising, as an
        ``array('Q')``. Merging shards numbers the flows of the whole input by them."""
        if self.shard_count == 1:
            raise RuntimeError("take_created() is for an engine made with shard=(index, count)")
        out, self.created = self.created, _array.array("Q")
        return out

    def event_bit(self, kind):
        """The bit number of an event kind (a custom event gets one on first use)."""
        return self.em.bit_for(kind)


    cdef int interest_changed(self) except -1:
        """What the wanted events need: streams are tracked for any stream event or RETRANSMIT
        (data retransmissions are recognised by the ranges seen), and keep their bytes for the
        events that carry or compare them (NEW_DATA, OVERLAP, BUFFER_OVERRUN)."""
        if self.reassembly_mode < 0:
            self.reassembling = self.em.wants(EV_STREAM | EV_RETRANSMIT | EV_WINDOW)
        else:
            self.reassembling = self.reassembly_mode == 1
        self.rx.buffering = self.buffering_option and (
            self.reassembly_mode == 1 or self.em.wants(EV_NEW_DATA | EV_OVERLAP | EV_BUFFER_OVERRUN))
        return self.set_reserves()

    cdef int set_reserves(self) except -1:
        """The most memory of events each unit of work can raise, from the limits (the bound's
        proof): a stream side delivers at most what it holds and what one packet brings, twice
        (counted when due, and again when raised early), with a GAP, a NEW_DATA and an OVERLAP
        per held segment; a flow's end does so for both sides; a packet for its flow and for one
        other flow it evicts or reuses, with an ERROR per datagram of the fragment table. Each
        occurrence may also raise each custom event once."""
        cdef uint64_t custom = 1 + len(self.em.custom_bits)
        cdef uint64_t rec = (EVENT_BYTES + 3 * BYTES_HEADER + VALUE_BYTES) * custom
        cdef uint64_t side = 2 * <uint64_t>self.rx.max_buffer + 4 * 65536 + (3 * <uint64_t>self.rx.max_ooo_segments + 16) * rec
        self.unit_reserve = rec
        self.end_reserve = 2 * side + 8 * (rec + SNAPSHOT_BYTES + HANDLE_BYTES)
        self.packet_reserve = 2 * self.end_reserve + (<uint64_t>self.frags.n + 64) * rec
        if self.event_memory_option is None:
            self.max_event_memory = max(DEFAULT_EVENT_MEMORY, 2 * self.packet_reserve)
        else:
            self.max_event_memory = self.event_memory_option
        return 0

    cdef inline bint room(self, uint64_t reserve) noexcept:
        """Whether a unit of work raising events of at most ``reserve`` bytes fits under
        max_event_memory with what the log holds and the batch's NEW_DATA will (an empty log
        takes one whatever its size: the engine always makes progress)."""
        cdef uint64_t held = self.em.log.memory + self.rx.pending
        return self.unbounded or held == 0 or held + reserve <= self.max_event_memory

    cdef int full(self) except -1:
        """Stop at max_event_memory: counted; the caller delivers and calls again."""
        self.paused = True
        self.n_pauses += 1
        return 0

    cdef int check_resumed(self, str what) except -1:
        """Refuse input while a batch (stopped at max_event_memory or by a raise) or a finish()
        stopped at max_event_memory is unfinished."""
        if self.resume_batch is not None:
            why = ("when an inline handler, predicate or timer callback raised" if self.resume_raised else
                   "to let the events logged be delivered (max_event_memory)")
            raise RuntimeError(f"{what} was called while process() had stopped at frame {self.resume_pos} of "
                               f"its batch {why}; call process(batch, {self.resume_pos}) with that batch first")
        if self.fin_order != NULL:
            raise RuntimeError(f"{what} was called while finish() had stopped to let the events logged be "
                               "delivered (max_event_memory); call finish() again until it returns True")
        return 0

    def add_handler(self, kind, handler, *, int middlebox=0, hook=None):
        """Run ``handler(packet_view)`` inline whenever ``kind`` fires for an accepted flow.

        ``hook`` None runs it where the event occurs; Hook.SENDER / Hook.RECEIVER restrict it
        (PACKET_IN occurs at both). Returns a :class:`HandlerToken` for ``remove_handler``.

        Handlers may add and remove handlers: an event's dispatch (a kind firing at a hook) runs
        the handlers registered when it began, in chain order (reversed for server-to-client
        packets), each once, except those removed before their turn; one added meanwhile first
        runs for the next event of its kind.
        """
        self.check_middlebox(middlebox)
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        return self.em.add_handler(kind, handler, middlebox, 0 if hook is None else int(Hook(hook)))

    def remove_handler(self, token):
        """Remove a handler added by ``add_handler`` (not called from then on, even in the event
        being dispatched). Raises ValueError for a token that is not registered (any more)."""
        self.em.remove_handler(token)

    # ---- handles --------------------------------------------------------------------------

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

    cdef void release_handle(self, flow_t *f) noexcept:
        """The flow leaves the table: its handle, if any, keeps a snapshot of the final values."""
        cdef Flow h
        if f.handle == NULL:
            return
        h = <Flow>f.handle
        f.handle = NULL
        h._final = snapshot(f)
        h._alive = False
        if h._pinned:
            h._pinned = False
            Py_DECREF(h)

    def flow(self, key, flow_id=None):
        """The live :class:`Flow` handle of the flow with ``key`` now in the table (and number
        ``flow_id``, when given), or None."""
        cdef pkt_t q
        cdef int side = 0
        cdef int32_t slot
        cdef FlowKey k
        if not isinstance(key, FlowKey):
            raise TypeError(f"expected a FlowKey, got {key!r}")
        k = <FlowKey>key
        memset(&q, 0, sizeof(pkt_t))
        q.family = k._family
        q.proto = int(k.proto)
        memcpy(q.src, k._cip, 16)
        memcpy(q.dst, k._sip, 16)
        q.sport = k.client_port
        q.dport = k.server_port
        q.nvlan = len(k.vlan)
        for i, tag in enumerate(k.vlan[:MAX_VLAN]):
            q.vlan[i] = tag
        slot = flowtab_lookup(&self.tab, &q, key_hash(&q, self.vlan_in_key), &side)
        if slot < 0 or side != 0 or (flow_id is not None and self.tab.flows[slot].id != flow_id):
            return None
        return self.handle(slot)

    def flows(self):
        """Handles of the flows now in the table, oldest first."""
        cdef uint32_t i
        out = []
        for i in range(self.tab.cap):
            if self.tab.flows[i].status != FS_FREE:
                out.append(self.handle(i))
        out.sort(key=lambda h: h.id)
        return out

    # ---- the flow lifecycle ---------------------------------------------------------------

    cdef int32_t new_flow(self, pkt_t *pk, uint32_t h, bint sender_is_client) except -2:
        cdef int32_t slot = flowtab_insert(&self.tab, pk, h, sender_is_client)
        cdef flow_t *f
        cdef uint32_t mask
        cdef uint32_t fmask
        cdef int i
        if slot < 0:
            self.evict_one()
            slot = flowtab_insert(&self.tab, pk, h, sender_is_client)
            if slot < 0:
                raise MemoryError("the flow table could not take a new entry")
        f = &self.tab.flows[slot]
        if self.shard_count > 1:        # a shard's flow is named by its first packet's number in the input
            f.id = self.n_packets << FRAME_FLOW_BITS | self.frame_place     # and its place in the frame
            self.created.append(f.id)
        else:
            f.id = self.next_id
            self.next_id += 1
        f.first_ts = pk.ts
        f.last_ts = pk.ts
        f.active_ts = self.now
        self.n_created += 1
        f.policy = <uint8_t>self.policy
        f.mbox_mask = ALL_MBOXES
        if self.host_policies or self.any_filter or self.flow_filters:
            key = flow_key(f, self.vlan_in_key)
            for network, number in self.host_policies:
                if key.server_ip.version == network.version and key.server_ip in network:
                    self.tab.flows[slot].policy = <uint8_t>number
                    break
            if self.any_filter:
                mask = 0
                for i, flt in enumerate(self.mbox_filters):
                    if self.mbox_rank[i] >= 0 and (flt is None or flt.matches(key)):
                        mask |= (<uint32_t>1) << i
                self.tab.flows[slot].mbox_mask = mask
            fmask = 0
            for i, flt in enumerate(self.flow_filters):
                if flt is not None and flt.matches(key):
                    fmask |= (<uint32_t>1) << i
            self.tab.flows[slot].filter_mask = fmask
        return slot

    cdef int end_flow(self, int32_t slot, int side, int hook, uint8_t reason) except -1:
        """Mark a flow ended and raise CONN_END / UDP_END; the entry lingers if it closed."""
        cdef flow_t *f
        streams_close(self, slot, reason == END_RST)
        f = &self.tab.flows[slot]
        f.end_reason = reason
        f.status = FS_CLOSED
        self.n_ended += 1
        return self.em.fire(B_CONN_END if f.proto == 6 else B_UDP_END, slot, side, hook, reason, 0)

    cdef void teardown(self, int32_t slot) noexcept:
        """Take an entry out of the table: its handle keeps the final values, its key and
        streams go. No event (see remove_flow)."""
        cdef flow_t *f = &self.tab.flows[slot]
        self.release_handle(f)
        if f.fflags & FF_TRANSLATED:
            xlat_unlink(&self.xt, &self.tab, slot)
        stream_free(self, &f.side[0])
        stream_free(self, &f.side[1])
        if self.tab.conns != NULL:
            free(self.tab.conns[slot])
            self.tab.conns[slot] = NULL
        flowtab_remove(&self.tab, slot)

    cdef int remove_flow(self, int32_t slot, uint64_t order) except -1:
        """An ended flow leaves the table (bytes that came after its close are delivered first),
        its record written when records are kept, with ``order``: where it left in the input,
        twice the number of the packet at hand, plus one unless by the expiry pass before that
        packet. Shards of one input merge their records by it (then, within an expiry pass, by
        timeout class, last activity and flow id: the order of the pass itself). A translated
        flow's end of binding is told to the translation hook last, once the flow is out."""
        cdef flow_t *f
        cdef flowrec_t *r
        cdef xlat_t ended
        cdef bint tell
        streams_close(self, slot, False)
        f = &self.tab.flows[slot]
        tell = self.translation_hook is not None and f.fflags & FF_TRANSLATED
        if self.records is not None and (self.records_filter == 0 or (f.filter_mask & self.records_filter)):
            r = self.records.add()
            record_flow(r, f, self.vlan_in_key, conn_of(&self.tab, slot))
            r.order = order
        if tell:
            ended = self.xt.ent[slot]
        self.teardown(slot)
        if tell:
            self.tell_binding(False, &ended)
        return 0

    cdef int tell_binding(self, bint bound, const xlat_t *e) except -1:
        """Call the translation hook: a binding made (``bound``) or ended, by its outer reply tuple."""
        self.translation_hook(bound, e.proto, (ip_object(e.server_ip, e.family), e.server_port),
                              (ip_object(e.client_ip, e.family), e.client_port))
        return 0

    cdef void drop_all(self) noexcept:
        cdef uint32_t i
        if self.tab.flows == NULL:
            return
        for i in range(self.tab.cap):
            if self.tab.flows[i].status != FS_FREE:
                self.teardown(i)

    cdef int evict_one(self) except -1:
        """Make room: drop a lingering closed flow, else end the least recently active one."""
        cdef int32_t victim = self.tab.lru_head[TC_TCP_CLOSED]
        cdef int c
        cdef int32_t cand
        if victim < 0:
            for c in range(N_TCLASS):
                cand = self.tab.lru_head[c]
                if cand >= 0 and (victim < 0 or self.tab.flows[cand].active_ts < self.tab.flows[victim].active_ts):
                    victim = cand
        if victim < 0:
            return 0
        if self.tab.flows[victim].status == FS_OPEN:
            self.n_evicted += 1
            self.end_flow(victim, -1, HOOK_NONE, END_EVICTED)
        return self.remove_flow(victim, self.n_packets << 1 | 1)

    # ---- per packet -----------------------------------------------------------------------

    @cython.boundscheck(False)     # indexes come from the core's own enums and bit numbers
    @cython.wraparound(False)
    cdef int process_frame(self, const uint8_t *data, uint32_t caplen, uint32_t wirelen,
                           int64_t ts, uint16_t linktype) except -1:
        """One packet, the clock already at ``ts`` (advance(): time passes per packet, so that
        the answer is the same at any batch size); returns its verdict."""
        cdef pkt_t *pk = &self.pk
        cdef int reason = 0, r
        self.release_fragment()      # left over if a handler raised while it was in use
        memset(pk, 0, sizeof(pkt_t))
        pk.frame = data
        pk.caplen = caplen
        pk.wirelen = wirelen if wirelen > caplen else caplen
        pk.ts = ts
        pk.wscale = -1
        pk.verify_checksums = self.verify_checksums
        self.verdict = VERDICT_FORWARD
        self.n_packets += 1
        self.frame_place = 0
        self.n_bytes += pk.wirelen
        r = parse_packet(pk, linktype, &self.frags, &self.frag_done, &reason)
        while self.take_packet(pk, r, reason) and self.verdict != VERDICT_DROP:
            r = parse_udp_tunnel(pk, &self.frags, &self.frag_done, &reason)
            if r == P_NO_TUNNEL:
                break
            self.n_tunneled += 1
        self.release_fragment()
        if self.verdict == VERDICT_DROP:
            self.n_dropped += 1
        return self.verdict

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int take_packet(self, pkt_t *pk, int r, int reason) except -1:
        """Follow what parsing found (its flow's packet, or a count); whether it is a UDP datagram
        taken, which may carry a tunnel's packet."""
        if self.frags.new_expired or self.frags.new_evicted:
            self.fragment_drops()
        if r == P_OK and self.verify_checksums and not checksums_ok(pk):
            r = P_MALFORMED                 # the endpoint would drop it: it changes nothing here
            reason = MAL_BAD_CHECKSUM
        if r == P_OK:
            self.cur_slot = -1
            self.xlat_slot = -1
            if self.xt.count:
                self.translate_in(pk)
            if self.shard_count > 1 and shard_of(pk, self.vlan_in_key, self.shard_count) != self.shard_index:
                pass                        # another shard's flow
            elif pk.proto == 6:
                self.n_tcp += 1
                self.n_bad_options += pk.bad_options
                self.tcp_packet(pk)
            else:
                self.n_udp += 1
                self.udp_packet(pk)
            if self.xt.count and self.cur_slot >= 0 and self.cur_side == 0 \
                    and self.tab.flows[self.cur_slot].fflags & FF_TRANSLATED:
                self.translate_out(pk)
            self.frame_place += 1
        elif r == P_MALFORMED:
            self.malformed[reason] += 1
            if self.em.wants(EV_ERROR):
                self.em.emit(B_ERROR, -1, -1, HOOK_NONE, 0, 0, -1, -1, MALFORMED_REASONS[reason])
        elif r == P_NOT_IP:
            self.n_non_ip += 1
        elif r == P_OTHER:
            self.n_other += 1
        return r == P_OK and pk.proto == 17

    cdef inline void translate_in(self, pkt_t *pk) noexcept:
        """Before the lookup: a reply to a flow's outer tuple becomes the flow's server's packet."""
        cdef int32_t slot = xlat_find(&self.xt, pk.proto, pk.family, pk.src, pk.sport, pk.dst, pk.dport)
        cdef flow_t *f
        if slot < 0:
            return
        f = &self.tab.flows[slot]
        self.xlat_slot = slot
        self.xt.translated += 1
        if xlat_apply(pk, self.frames_writable, f.server_ip, f.server_port, f.client_ip, f.client_port) < 0:
            self.xt.untranslatable += 1
            self.verdict = VERDICT_DROP

    cdef inline void translate_out(self, pkt_t *pk) noexcept:
        """After the receiver hook: the client's packet leaves with the flow's outer tuple."""
        cdef xlat_t *e = &self.xt.ent[self.cur_slot]
        self.xt.translated += 1
        if self.verdict == VERDICT_FORWARD and self.frames_writable \
                and xlat_apply(pk, 1, e.client_ip, e.client_port, e.server_ip, e.server_port) < 0:
            self.xt.untranslatable += 1
            self.verdict = VERDICT_DROP

    cdef inline void release_fragment(self) noexcept:
        if self.frag_done != NULL:
            frag_release(&self.frags, self.frag_done)
            self.frag_done = NULL

    cdef int fragment_drops(self) except -1:
        """An ERROR event for each incomplete datagram the fragment table dropped since the last
        call: its timeouts first, then its evictions."""
        cdef uint64_t expired = self.frags.new_expired, evicted = self.frags.new_evicted
        self.frags.new_expired = 0
        self.frags.new_evicted = 0
        if self.em.wants(EV_ERROR):
            for _ in range(expired):
                self.em.emit(B_ERROR, -1, -1, HOOK_NONE, 0, 0, -1, -1, LIMIT_ERRORS[LIM_FRAGMENT_TIMEOUT])
            for _ in range(evicted):
                self.em.emit(B_ERROR, -1, -1, HOOK_NONE, 0, 0, -1, -1, LIMIT_ERRORS[LIM_FRAGMENT_EVICTED])
        return 0

    cdef inline int32_t lookup(self, pkt_t *pk, uint32_t h, int *side) noexcept:
        """The packet's flow and its sender's side: the flow its reply was translated to, else
        the table's answer."""
        if self.xlat_slot >= 0:
            side[0] = 1
            return self.xlat_slot
        return flowtab_lookup(&self.tab, pk, h, side)

    cdef int tcp_packet(self, pkt_t *pk) except -1:
        cdef uint32_t h = key_hash(pk, self.vlan_in_key)
        cdef int side = 0, rs
        cdef int32_t slot = self.lookup(pk, h, &side)
        cdef uint8_t fl = pk.flags
        cdef bint syn = (fl & TH_SYN) != 0, ackf = (fl & TH_ACK) != 0
        cdef bint created = 0, rst_ok = 0, sender_is_client
        cdef flow_t *f
        cdef side_t *s
        cdef side_t *r
        if slot >= 0 and syn and not ackf and reuses(&self.tab.flows[slot], side, pk):
            if self.tab.flows[slot].status == FS_OPEN:
                self.end_flow(slot, -1, HOOK_NONE, END_REUSED)
            self.remove_flow(slot, self.n_packets << 1 | 1)      # a new connection reuses the tuple
            slot = -1
        if slot < 0:
            if syn:
                sender_is_client = not ackf
            elif self.midstream:
                sender_is_client = pk.dport < 1024 <= pk.sport or not (pk.sport < 1024 <= pk.dport)
            else:
                self.n_orphans += 1
                if self.em.wants(EV_ORPHAN):
                    self.em.emit(B_ORPHAN, -1, -1, HOOK_SENDER, 0, 0, -1, -1, None)
                return 0
            slot = self.new_flow(pk, h, sender_is_client)
            side = 0 if sender_is_client else 1
            created = 1
            f = &self.tab.flows[slot]
            f.side[1].state = ST_LISTEN
            if not syn:
                f.fflags |= FF_MIDSTREAM | FF_ESTABLISHED
                f.side[0].state = ST_ESTABLISHED
                f.side[1].state = ST_ESTABLISHED
            elif ackf:
                f.side[0].state = ST_SYN_SENT
                f.side[0].isn = pk.ack - 1
                f.side[0].next_seq = pk.ack
                f.side[0].flags |= SF_SEQ_KNOWN
        f = &self.tab.flows[slot]
        self.cur_slot = slot
        self.cur_side = side
        rs = 1 - side
        s = &f.side[side]
        r = &f.side[rs]
        s.packets += 1
        s.ip_bytes += pk.ip_len
        s.payload_bytes += pk.paylen
        self.side_packets[side] += 1
        self.side_payload[side] += pk.paylen
        f.last_ts = pk.ts
        if self.conn_history:
            if created:
                self.tab.conns[slot] = conn_new(pk, side, pk.ts)
                if self.tab.conns[slot] == NULL:
                    raise MemoryError("no memory for a flow's connection history")
            conn_tcp(<conn_t *>self.tab.conns[slot], side, pk)
        if created:
            self.em.fire(B_CONN_START, slot, side, HOOK_SENDER, 0, 0)
        if bad_echo_to_syn(f, side, pk):
            return self.reject(slot, side, "bad_timestamp_echo")
        if ackf and not (fl & TH_RST) and ack_not_of_syn(f, side, pk):
            return self.reject(slot, side, "unacceptable_ack")
        if syn and syn_in_connection(f, side, pk):
            count_flags(s, pk)
            return self.reject(slot, side, "syn_in_connection")
        if f.status == FS_CLOSED:
            s = &self.tab.flows[slot].side[side]
            count_flags(s, pk)
            if not (s.flags & SF_SEQ_KNOWN) and not (fl & TH_RST):
                straggler_base(s, pk)   # a side first heard after the close: its bytes count too
            self.em.fire(B_PACKET_IN, slot, side, HOOK_SENDER, 0, 0)
            if self.verdict != VERDICT_DROP:
                if self.reassembling and not (fl & (TH_RST | TH_SYN)):
                    stream_receive(self, slot, side, pk)      # bytes sent after the close still count
                self.em.fire(B_PACKET_IN, slot, side, HOOK_RECEIVER, 0, 0)
            lru_touch(&self.tab, slot, TC_TCP_CLOSED, self.now)
            return 0
        # the sender's update, then the sender hook
        if fl & TH_RST:
            if rst_to_listen(f, side, pk):
                bump8(&s.rst_ignored)
            elif rst_acceptable(f, side, pk):
                rst_ok = 1
                bump8(&s.rst)
                self.em.fire(B_RST, slot, side, HOOK_SENDER, 0, 0)
                set_state(self, slot, side, ST_CLOSED, HOOK_SENDER)
            else:
                bump8(&s.rst_ignored)
                self.n_rst_oow += 1
        elif syn:
            tcp_sender_syn(self, slot, side, pk)
        else:
            tcp_sender_data(self, slot, side, pk)
        s = &self.tab.flows[slot].side[side]
        r = &self.tab.flows[slot].side[rs]
        if ackf and (not (s.flags & SF_ACK_KNOWN) or seq_gt(pk.ack, s.last_ack)):
            s.last_ack = pk.ack
            s.flags |= SF_ACK_KNOWN
        if not (fl & TH_RST):           # a RST's window field means nothing (often 0)
            s.window = <uint32_t>pk.win << (s.wscale if (s.wscale != 0xff and r.wscale != 0xff and not syn) else 0)
        self.em.fire(B_PACKET_IN, slot, side, HOOK_SENDER, 0, 0)
        # the receiver's update, then the receiver hook: unless a handler at the sender hook
        # dropped the packet, which then never reaches its receiver
        if self.verdict != VERDICT_DROP:
            if self.reassembling and (not (fl & TH_RST) or rst_ok and self.rx.rst_payload):
                stream_receive(self, slot, side, pk)
                f = &self.tab.flows[slot]
                if (f.side[0].flags | f.side[1].flags) & SF_FIN_HELD:
                    fins_settle(self, slot)
            if rst_ok:
                set_state(self, slot, rs, ST_CLOSED, HOOK_RECEIVER)
                self.end_flow(slot, side, HOOK_RECEIVER, END_RST)
            elif tcp_receiver(self, slot, side, pk):
                self.end_flow(slot, side, HOOK_RECEIVER, END_FIN)
            self.em.fire(B_PACKET_IN, slot, side, HOOK_RECEIVER, 0, 0)
        f = &self.tab.flows[slot]
        lru_touch(&self.tab, slot, TC_TCP_CLOSED if f.status == FS_CLOSED else
                  (TC_TCP_ESTABLISHED if f.fflags & FF_ESTABLISHED else TC_TCP_OPENING), self.now)
        return 0

    cdef int reject(self, int32_t slot, int side, str reason) except -1:
        """A TCP packet its receiver would drop: counted as the flow's packet, and nothing else."""
        self.n_rejected += 1
        self.em.fire(B_PACKET_IN, slot, side, HOOK_SENDER, 0, 0)
        if self.em.wants(EV_REJECTED):
            self.em.emit(B_REJECTED, slot, side, HOOK_SENDER, 0, 0, -1, -1, reason)
        self.em.fire(B_PACKET_IN, slot, side, HOOK_RECEIVER, 0, 0)
        return 0

    cdef int udp_packet(self, pkt_t *pk) except -1:
        cdef uint32_t h = key_hash(pk, self.vlan_in_key)
        cdef int side = 0
        cdef int32_t slot = self.lookup(pk, h, &side)
        cdef flow_t *f
        cdef side_t *s
        cdef bint created = 0
        if slot < 0:
            slot = self.new_flow(pk, h, 1)
            side = 0
            created = 1
        f = &self.tab.flows[slot]
        self.cur_slot = slot
        self.cur_side = side
        s = &f.side[side]
        s.packets += 1
        s.ip_bytes += pk.ip_len
        s.payload_bytes += pk.l4len - 8         # its UDP length's: captured or not (pk.paylen)
        self.side_packets[side] += 1
        self.side_payload[side] += pk.l4len - 8
        f.last_ts = pk.ts
        if self.conn_history:
            if created:
                self.tab.conns[slot] = conn_new(pk, side, pk.ts)
                if self.tab.conns[slot] == NULL:
                    raise MemoryError("no memory for a flow's connection history")
            conn_udp(<conn_t *>self.tab.conns[slot], side, pk.ts)
        if created:
            self.em.fire(B_UDP_START, slot, side, HOOK_SENDER, 0, 0)
        self.em.fire(B_PACKET_IN, slot, side, HOOK_SENDER, 0, 0)
        if self.verdict != VERDICT_DROP:
            self.em.fire(B_PACKET_IN, slot, side, HOOK_RECEIVER, 0, 0)
        lru_touch(&self.tab, slot, TC_UDP, self.now)
        return 0

    # ---- time -----------------------------------------------------------------------------

    cdef inline bint flows_due(self) noexcept:
        """Whether a flow has been idle past its timeout at ``now``, counted from the clock at
        its last packet (the head of each class's list has been idle longest)."""
        cdef int c
        cdef int32_t i
        for c in range(N_TCLASS):
            i = self.tab.lru_head[c]
            if i >= 0 and self.now - self.tab.flows[i].active_ts >= self.timeouts[c]:
                return True
        return False

    cdef int expire_flows(self) except -1:
        """End (and take out) every flow idle past its timeout at ``now`` (counted from the clock
        at its last packet, so which flows end depends on no other flow: a shard ends each where
        one engine does): class by class, each class's in the order of their last packet's
        stamp, then of their ids (creation); their records leave as before the next packet (see
        remove_flow). 0 when the log has no room for the next one's events (it and those after
        it stay due), 1 when done."""
        cdef int c
        cdef int32_t i
        cdef uint32_t n, j
        cdef flow_t *f
        for c in range(N_TCLASS):
            n = 0
            i = self.tab.lru_head[c]
            while i >= 0 and self.now - self.tab.flows[i].active_ts >= self.timeouts[c]:
                if n == self.idle_cap:
                    self.grow_idle()
                self.idle[n].last_ts = self.tab.flows[i].last_ts
                self.idle[n].id = self.tab.flows[i].id
                self.idle[n].slot = i
                n += 1
                i = self.tab.flows[i].lru_next
            if n > 1:
                qsort(self.idle, n, sizeof(idle_t), cmp_idle)
            for j in range(n):
                i = self.idle[j].slot
                f = &self.tab.flows[i]
                if f.status == FS_FREE or f.id != self.idle[j].id:
                    continue                # a handler took it out meanwhile
                if not self.room(self.end_reserve):
                    return 0
                if f.status == FS_OPEN:
                    self.n_timed_out += 1
                    self.end_flow(i, -1, HOOK_NONE, END_TIMEOUT)
                self.remove_flow(i, (self.n_packets + 1) << 1)
        return 1

    cdef int grow_idle(self) except -1:
        cdef uint32_t cap = max(self.idle_cap * 2, 64)
        cdef idle_t *p = <idle_t *>realloc(self.idle, cap * sizeof(idle_t))
        if p == NULL:
            raise MemoryError("no memory to expire idle flows")
        self.idle = p
        self.idle_cap = cap
        return 0

    cdef int advance(self, int64_t ts) except -1:
        """Move the clock to ``ts`` (before a packet at that time): the timers due fire and idle
        flows end, each while the log has room for its events. 1 when the clock is at ``ts``;
        0 when stopped at max_event_memory (what is left is due at the next call)."""
        if not self.clock_started:
            self.start_clock(ts)
        if ts > self.now:
            if self.tq.n and self.tq.heap[0].due <= ts and not self.fire_timers(ts):
                return 0
            self.now = ts
        if self.flows_due() and not self.expire_flows():
            return 0
        return 1

    cdef int expire_to(self, int64_t now) except -1:
        """Advance time to ``now``: fire due timers, expire idle flows and fragments; 0 when
        stopped at max_event_memory. Outside a batch: what the flows ended owe is raised."""
        cdef int done = self.advance(now) and self.room(self.packet_reserve)
        if done:
            fragtab_expire(&self.frags, self.now)
            if self.frags.new_expired:
                self.fragment_drops()
        streams_flush(self)
        return done

    cdef int start_clock(self, int64_t now) except -1:
        """The first packet (or ``expire``) sets the clock: timers set before it with a delay
        count from there (a capture's clock starts at its first packet)."""
        cdef TimerEntry e
        self.clock_started = True
        if now > self.now:
            self.now = now
        for delay, timer_id in self.unstarted:
            e = self.timers.get(timer_id)
            if e is not None:
                timerq_push(&self.tq, self.now + delay, timer_id, &e.seq)
        self.unstarted = []
        return 0

    cdef int fire_timers(self, int64_t until) except -1:
        """Fire the timers due by ``until``, in deadline order, each at its deadline (engine time
        moves there): its inline callback, then a TIMER event valued (id, expirations). A
        periodic timer late by several periods fires once, counting them (as a timerfd). 0 when
        the log has no room for the next one's event (it stays due), 1 when done."""
        cdef tmr_t t
        cdef TimerEntry e
        cdef int32_t slot
        cdef int64_t n
        while self.tq.n and self.tq.heap[0].due <= until:
            if not self.room(self.unit_reserve):
                return 0
            timerq_pop(&self.tq, &t)
            e = self.timers.get(t.id)
            if e is None or e.seq != t.seq:
                continue                    # cancelled, or re-armed since
            slot = -1
            if e.flow_id:
                if self.tab.flows[e.slot].status != FS_OPEN or self.tab.flows[e.slot].id != e.flow_id:
                    del self.timers[t.id]       # its flow has ended: the timer went with it
                    continue
                slot = e.slot
            if t.due > self.now:
                self.now = t.due
            n = 1
            if e.interval:
                n += (until - t.due) // e.interval
                timerq_push(&self.tq, t.due + n * e.interval, t.id, &e.seq)
            else:
                del self.timers[t.id]
            value = (t.id, n)
            if e.callback is not None:
                self.em.call(e.callback, B_TIMER, slot, value)
            if self.em.wants(EV_TIMER):
                self.em.emit(B_TIMER, slot, -1, HOOK_NONE, 0, 0, -1, -1, value)
        return 1

    def set_timer(self, delay=None, *, at=None, interval=None, flow=None, callback=None):
        """Arm a timer on the engine's clock; returns its id (an int).

        It fires ``delay`` seconds from now, or ``at`` (seconds), and then every ``interval``
        seconds if given. With ``flow`` (a live :class:`Flow`) it is that flow's and is
        cancelled when the flow ends. When it fires, ``callback(view)`` runs inline (a
        :class:`PacketView` of the TIMER occurrence: no packet; ``view.flow`` for a flow's
        timer) and a TIMER event is raised, valued (id, expirations). On captures the clock is
        packet time: a timer due at t fires before the first packet at or after t is processed;
        before the first packet, ``delay`` counts from it.
        Raises ValueError for a bad time, a flow that has ended or a callback that is not callable.
        """
        cdef TimerEntry e = TimerEntry.__new__(TimerEntry)
        cdef int64_t due
        cdef Flow h
        if (delay is None) == (at is None):
            raise ValueError("give the timer either delay=SECONDS (from now) or at=SECONDS")
        for name, v in (("delay", delay), ("at", at), ("interval", interval)):
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v != v):
                raise ValueError(f"timer {name} must be a number of seconds, got {v!r}")
        if delay is not None and delay < 0:
            raise ValueError(f"timer delay must not be negative, got {delay!r}")
        if interval is not None and not interval > 0:
            raise ValueError(f"timer interval must be a positive number of seconds, got {interval!r}")
        if callback is not None and not callable(callback):
            raise ValueError(f"timer callback must be callable, got {callback!r}")
        due = self.now + to_ns(delay) if delay is not None else to_ns(at)
        e.interval = to_ns(interval) if interval is not None else 0
        e.slot = -1
        if flow is not None:
            if not isinstance(flow, Flow) or (<Flow>flow)._engine is not self or not (<Flow>flow)._alive:
                raise ValueError(f"a flow's timer needs a live Flow of this engine, got {flow!r}")
            h = <Flow>flow
            if self.tab.flows[h._slot].status != FS_OPEN:
                raise ValueError(f"flow #{h.id} has ended: its timers could never fire")
            e.slot = h._slot
            e.flow_id = h.id
        e.callback = callback
        self.last_timer_id += 1
        if delay is not None and not self.clock_started:
            self.unstarted.append((to_ns(delay), self.last_timer_id))
        else:
            timerq_push(&self.tq, due, self.last_timer_id, &e.seq)
        self.timers[self.last_timer_id] = e
        return self.last_timer_id

    def timer_armed(self, timer_id):
        """Whether a timer is armed (not fired if one-shot, not cancelled, its flow open)."""
        cdef TimerEntry e = self.timers.get(timer_id)
        if e is None:
            return False
        if e.flow_id and (self.tab.flows[e.slot].status != FS_OPEN or self.tab.flows[e.slot].id != e.flow_id):
            del self.timers[timer_id]
            return False
        return True

    def cancel_timer(self, timer_id):
        """Disarm a timer; returns False if it was not armed (it fired, or was cancelled)."""
        return self.timers.pop(timer_id, None) is not None

    @property
    def next_timer(self):
        """When the next armed timer is due (seconds on the engine's clock), or None (also
        before the clock started)."""
        cdef tmr_t t
        while self.tq.n:
            e = self.timers.get(self.tq.heap[0].id)
            if e is not None and (<TimerEntry>e).seq == self.tq.heap[0].seq:
                return self.tq.heap[0].due * 1e-9
            timerq_pop(&self.tq, &t)
        return None

    # ---- public entry points --------------------------------------------------------------

    def feed(self, frame, ts=None, *, int linktype=LT_ETHERNET):
        """Process one frame at time ``ts`` (seconds; default: the latest time seen).

        Returns the packet's :class:`Verdict`. Expires idle flows up to ``ts`` afterwards.
        Exceptions from inline handlers and predicates propagate. A ``bytearray`` frame is
        writable: sender-hook handlers may ``rewrite()`` it in place.
        """
        cdef const uint8_t[::1] view = frame
        cdef int64_t t
        cdef int v
        self.not_running("Engine.feed()")
        self.check_resumed("Engine.feed()")
        t = self.now if ts is None else time_ns(ts, "Engine.feed()'s ts")
        self.busy = True
        self.unbounded = True
        self.paused = False
        self.frames_writable = isinstance(frame, bytearray)
        try:
            try:
                self.advance(t)
                if view.shape[0] == 0:
                    v = self.process_frame(NULL, 0, 0, t, linktype)
                else:
                    v = self.process_frame(&view[0], view.shape[0], view.shape[0], t, linktype)
                streams_flush(self)
            finally:
                streams_end_batch(self)
            self.expire_to(t)
        finally:
            self.busy = False
            self.unbounded = False
        return Verdict(v)

    def process(self, FrameBatch batch, int start=0, until=None):
        """Process the frames of a batch from ``start``, storing each verdict in it; then expire
        idle flows. Returns where it stopped: the batch's count, or with ``until`` (seconds) the
        first frame at or after that time (the caller goes on from there, after ``expire(until)``
        if it wants the clock to reach it: what is due by then fires, as it would before that
        frame), or, with ``paused`` set, the frame before which the events logged reached
        ``max_event_memory``: deliver them (a dispatcher), then call ``process(batch, i)`` with
        the same batch (anything else raises RuntimeError until then). An exception from an
        inline handler, predicate or timer callback propagates; when frames are left, ``resume_at``
        then says where to go on in the same way. A frame with no bytes (another shard's, from
        a :class:`ShardRing`) counts as a packet and moves the clock."""
        cdef int i = start
        cdef int64_t limit
        cdef bint in_frame = False
        self.not_running("Engine.process()")
        if self.resume_batch is not None and batch is self.resume_batch and start == self.resume_pos:
            self.resume_batch = None
        self.check_resumed("Engine.process()")
        limit = time_ns(until, "Engine.process()'s until") if until is not None else 0x7fffffffffffffff
        if not 0 <= start <= batch.count:
            raise ValueError(f"start must be within the batch's {batch.count} frames, got {start}")
        self.busy = True
        self.paused = False
        self.frames_writable = batch.writable
        self.block = batch.block
        try:
            try:
                while i < batch.count and batch.ts[i] < limit:
                    if not self.room(self.packet_reserve) or not self.advance(batch.ts[i]):
                        self.full()
                        self.resume_batch = batch
                        self.resume_pos = i
                        self.resume_raised = False
                        break
                    if i + PREFETCH_AHEAD < batch.count and batch.data[i + PREFETCH_AHEAD] != NULL:
                        prefetch(batch.data[i + PREFETCH_AHEAD])
                    if batch.data[i] == NULL:       # another shard's frame (ShardRing): a clock tick
                        self.n_packets += 1
                        self.n_bytes += batch.wirelen[i] if batch.wirelen[i] > batch.caplen[i] else batch.caplen[i]
                        batch.verdict[i] = VERDICT_FORWARD
                    else:
                        in_frame = True
                        batch.verdict[i] = <uint8_t>self.process_frame(
                            batch.data[i], batch.caplen[i], batch.wirelen[i], batch.ts[i], batch.linktype[i])
                        in_frame = False
                    i += 1
                streams_flush(self)
            finally:
                streams_end_batch(self)
                self.block = None
            if not self.paused and not self.expire_to(self.now):
                self.full()
        except BaseException:
            if in_frame:    # its flow's state moved before the handler raised: doing it again would
                batch.verdict[i] = <uint8_t>self.verdict        # count it twice (a SYN as a retransmission)
                if self.verdict == VERDICT_DROP:
                    self.n_dropped += 1
                i += 1
            if i < batch.count:     # the caller goes on from there, as after a stop at max_event_memory
                self.resume_batch = batch
                self.resume_pos = i
                self.resume_raised = True
            raise
        finally:
            self.busy = False
        return i

    def expire(self, now):
        """Advance time to ``now`` (seconds) and end flows idle past their timeout. Returns True
        when the clock got there, False when it stopped (``paused``) because the events logged
        reached ``max_event_memory``: deliver them, then call again."""
        cdef int64_t t
        cdef int done
        self.not_running("Engine.expire()")
        self.check_resumed("Engine.expire()")
        t = time_ns(now, "Engine.expire()'s now")
        self.busy = True
        self.paused = False
        try:
            done = self.expire_to(t)
            if not done:
                self.full()
        finally:
            self.busy = False
        return bool(done)

    def finish(self, reason=EndReason.END_OF_CAPTURE):
        """End of input: end every open flow (``reason``: END_OF_CAPTURE, or INTERRUPTED when
        the program stops early), oldest first, and empty the table.

        Returns True when done; False when it stopped (``paused``) because the events logged
        reached ``max_event_memory``: deliver them (a dispatcher), then call ``finish()`` again
        until it returns True (no other input is taken meanwhile). Raises RuntimeError while a
        batch stopped at ``max_event_memory`` is unfinished, unless ``reason`` is INTERRUPTED."""
        cdef uint32_t i, n = 0
        cdef int32_t slot
        cdef uint8_t why
        self.not_running("Engine.finish()")
        if reason not in (EndReason.END_OF_CAPTURE, EndReason.INTERRUPTED):
            raise ValueError(f"a finish ends flows with END_OF_CAPTURE or INTERRUPTED, not {reason!r}")
        why = <uint8_t>int(reason)
        if why == END_INTERRUPTED:
            self.resume_batch = None
        if self.fin_order == NULL:
            self.check_resumed("Engine.finish()")
            self.fin_order = <age_t *>malloc(max(self.tab.count, 1) * sizeof(age_t))
            if self.fin_order == NULL:
                raise MemoryError("no memory to end the open flows")
            for i in range(self.tab.cap):
                if self.tab.flows[i].status != FS_FREE:
                    self.fin_order[n].id = self.tab.flows[i].id
                    self.fin_order[n].slot = i
                    n += 1
            qsort(self.fin_order, n, sizeof(age_t), cmp_age)
            self.fin_n = n
            self.fin_pos = 0
            self.fin_phase = 0
        self.busy = True
        self.paused = False
        try:
            while self.fin_phase < 2:
                while self.fin_pos < self.fin_n:
                    slot = self.fin_order[self.fin_pos].slot
                    if self.tab.flows[slot].status == (FS_OPEN if self.fin_phase == 0 else FS_CLOSED):
                        if not self.room(self.end_reserve):
                            streams_flush(self)
                            self.full()
                            return False
                        if self.fin_phase == 0:
                            self.end_flow(slot, -1, HOOK_NONE, why)
                        else:
                            self.remove_flow(slot, (self.n_packets + 1) << 1 | 1)
                    self.fin_pos += 1
                self.fin_phase += 1
                self.fin_pos = 0
            streams_flush(self)
        finally:
            self.busy = False
        free(self.fin_order)
        self.fin_order = NULL
        return True

    def close(self):
        """Drop every flow without raising events (the stack calls this when it closes).

        Idempotent. Afterwards feed(), process(), expire() and finish() raise RuntimeError.
        """
        if self.closed:
            return
        self.not_running("Engine.close()")
        self.drop_all()
        max_flows = self.tab.max_flows
        flowtab_free(&self.tab)             # its memory goes now, not when the engine is collected (an
        flowtab_init(&self.tab, max_flows, self.vlan_in_key)    # engine and its emitter form a cycle)
        if self.conn_history:
            flowtab_keep_conns(&self.tab)
        free(self.fin_order)
        self.fin_order = NULL
        self.resume_batch = None
        self.closed = True

    @property
    def log(self):
        """The :class:`EventLog` of the events raised since a dispatcher last read it."""
        return self.em.log

    def statistics(self):
        """An :class:`EngineStatistics` snapshot of the core's counters."""
        return EngineStatistics(
            packets=self.n_packets, bytes=self.n_bytes, tcp_packets=self.n_tcp,
            udp_packets=self.n_udp, non_ip=self.n_non_ip, other_protocol=self.n_other,
            malformed=MalformedCounts({MALFORMED_REASONS[i]: self.malformed[i]
                                       for i in range(N_MALFORMED) if self.malformed[i]}),
            orphans=self.n_orphans, flows_active=self.tab.count, flows_created=self.n_created,
            flows_ended=self.n_ended, flows_timed_out=self.n_timed_out, flows_evicted=self.n_evicted,
            max_flows=self.tab.max_flows, rst_out_of_window=self.n_rst_oow,
            bad_tcp_options=self.n_bad_options,
            fragments_held=self.frags.held, fragments_received=self.frags.received,
            fragment_memory=self.frags.memory, max_fragment_memory=self.frags.max_memory,
            fragments_reassembled=self.frags.reassembled,
            fragments_expired=self.frags.expired, fragments_evicted=self.frags.evicted,
            fragment_overlaps=self.frags.overlaps, fragment_duplicates=self.frags.duplicates,
            dropped_by_verdict=self.n_dropped,
            events=self.em.n_events, stream_memory=self.rx.memory,
            max_stream_memory=self.rx.max_memory, buffer_overruns=self.rx.overruns,
            stream_memory_peak=self.rx.memory_peak, stream_buffer_peak=self.rx.buffer_peak,
            sequence_jumps=self.rx.seq_jumps, rejected=self.n_rejected,
            client_packets=self.side_packets[0], server_packets=self.side_packets[1],
            client_payload_bytes=self.side_payload[0], server_payload_bytes=self.side_payload[1],
            translations=self.xt.count, translated_packets=self.xt.translated,
            untranslatable=self.xt.untranslatable, tunneled_packets=self.n_tunneled,
            event_memory=self.em.log.memory, event_memory_peak=self.em.log.peak,
            max_event_memory=self.max_event_memory, event_pauses=self.n_pauses)
