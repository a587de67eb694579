# Flow records: one fixed-width row per flow, written by the core when the flow leaves the table
# (its final figures, stragglers included), into a batch the program takes whole. No Python
# object per flow on the way: rows are C structs, read as a buffer (numpy: zero copy) or
# formatted to JSON lines / CSV in C.

from libc.errno cimport errno as write_errno, EINTR
from libc.string cimport strlen
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeASCII
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND

import os as _records_os

cdef extern from "arpa/inet.h" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, int size)

cdef extern from "sys/socket.h" nogil:
    int AF_INET
    int AF_INET6


ctypedef struct rside_t:
    uint64_t packets
    uint64_t ip_bytes
    uint64_t payload_bytes
    uint64_t stream_bytes
    uint64_t missed
    uint64_t retransmits
    uint64_t overlap_conflicts
    uint64_t data_segments
    uint64_t retransmitted_bytes
    uint64_t out_of_order
    uint64_t zero_window_probes


ctypedef struct zrec_t:
    uint64_t size[2]            # Zeek's orig_bytes / resp_bytes (by role: 0 originator)
    uint64_t missed             # Zeek's missed_bytes
    int64_t last_ts             # Zeek's last_time (ns)
    uint32_t dropped            # history letters beyond HISTORY_MAX
    uint8_t valid
    uint8_t orig                # the side (0 client, 1 server) Zeek calls the originator
    uint8_t state[2]            # Zeek's endpoint states by role
    uint8_t hlen
    char history[HISTORY_MAX]


ctypedef struct flowrec_t:
    uint64_t id
    int64_t first_ts            # ns
    int64_t last_ts
    uint8_t client_ip[16]       # IPv4 in the first 4 bytes
    uint8_t server_ip[16]
    uint16_t client_port
    uint16_t server_port
    uint16_t vlan[MAX_VLAN]
    uint8_t nvlan
    uint8_t family              # 4 or 6
    uint8_t proto               # 6 or 17
    uint8_t end_reason          # EndReason
    uint8_t midstream
    uint8_t client_state        # TcpState
    uint8_t server_state
    uint8_t tclass              # the timeout class the flow left from (its place in an expiry pass)
    uint8_t tcp_flags[2]        # per side, the TCP flags it sent as far as the counters tell: SYN ACK FIN RST
    uint64_t order              # when the flow left: packet number << 1, | 1 unless by expiry at that packet
    rside_t side[2]
    zrec_t conn                 # Zeek's view, when the engine kept it (conn.valid)



cdef void record_side(rside_t *o, const side_t *s, bint tcp) noexcept nogil:
    cdef const stream_t *st = s.stream
    o.packets = s.packets
    o.ip_bytes = s.ip_bytes
    o.payload_bytes = s.payload_bytes
    o.retransmits = s.retransmits
    if st == NULL:
        o.stream_bytes = 0 if tcp else s.payload_bytes
        o.missed = o.overlap_conflicts = o.data_segments = o.retransmitted_bytes = 0
        o.out_of_order = o.zero_window_probes = 0
        return
    o.stream_bytes = st.bytes
    o.missed = st.missed
    o.retransmits += st.rexmits
    o.overlap_conflicts = st.overlaps
    o.data_segments = st.segments
    o.retransmitted_bytes = st.rexmit_bytes
    o.out_of_order = st.ooo_segments
    o.zero_window_probes = st.zw_probes


cdef uint8_t sent_flags(const side_t *s) noexcept nogil:
    """The TCP flags a side sent, from its counters: SYN (a SYN or SYN-ACK), ACK (it acknowledged
    something), FIN, RST (taken or ignored). PSH, URG, ECE and CWR are not tracked."""
    cdef uint8_t out = 0
    if s.syn or s.synack:
        out |= TH_SYN
    if s.synack or (s.flags & SF_ACK_KNOWN):
        out |= TH_ACK
    if s.fin:
        out |= TH_FIN
    if s.rst or s.rst_ignored:
        out |= TH_RST
    return out


cdef void record_flow(flowrec_t *r, const flow_t *f, bint vlan_in_key, const conn_t *conn) noexcept nogil:
    cdef bint tcp = f.proto == 6
    memset(r, 0, sizeof(flowrec_t))     # padding included: rows compare and travel as bytes
    r.id = f.id
    r.first_ts = f.first_ts
    r.last_ts = f.last_ts
    memcpy(r.client_ip, f.client_ip, 16)
    memcpy(r.server_ip, f.server_ip, 16)
    r.client_port = f.client_port
    r.server_port = f.server_port
    r.vlan[0] = f.vlan[0]
    r.vlan[1] = f.vlan[1]
    r.nvlan = f.nvlan if vlan_in_key else 0     # as the flow's key has them
    r.family = f.family
    r.proto = f.proto
    r.end_reason = f.end_reason
    r.midstream = 1 if (f.fflags & FF_MIDSTREAM) else 0
    r.client_state = f.side[0].state
    r.server_state = f.side[1].state
    r.tclass = f.tclass
    r.tcp_flags[0] = sent_flags(&f.side[0]) if tcp else 0
    r.tcp_flags[1] = sent_flags(&f.side[1]) if tcp else 0
    record_side(&r.side[0], &f.side[0], tcp)
    record_side(&r.side[1], &f.side[1], tcp)
    record_conn(&r.conn, conn, f, tcp)


cdef void record_conn(zrec_t *z, const conn_t *c, const flow_t *f, bint tcp) noexcept nogil:
    cdef int role, side
    memset(z, 0, sizeof(zrec_t))
    if c == NULL:
        return
    z.valid = 1
    z.orig = c.orig
    z.last_ts = c.last_ts
    z.dropped = c.dropped
    z.hlen = c.hlen
    memcpy(z.history, c.history, c.hlen)
    for role in range(2):
        side = c.orig if role == 0 else 1 - c.orig
        z.missed += c.e[side].missed
        if tcp:
            z.size[role] = zeek_size(c, side)
            z.state[role] = c.e[side].state
        else:
            z.size[role] = f.side[side].payload_bytes
            z.state[role] = 1 if f.side[side].packets else 0    # Zeek's UDP_ACTIVE / UDP_INACTIVE


# The field names of a record, in the order ``aiomb flows`` prints them, and how each is read
# from a row: (name, kind, offset) with kind one of "u64", "u16", "ts", "ip_c", "ip_s", "proto",
# "vlan", "state_c", "state_s", "reason", "bool".
cdef flowrec_t _layout
cdef size_t _base = <size_t>&_layout


cdef size_t offset_of(void *p):
    return <size_t>p - _base


cdef list side_fields(str name, size_t field):
    return [(f"client_{name}", "u64", offset_of(&_layout.side[0]) + field),
            (f"server_{name}", "u64", offset_of(&_layout.side[1]) + field)]


cdef size_t _side0 = offset_of(&_layout.side[0])
RECORD_FIELDS = tuple(
    [("flow", "u64", offset_of(&_layout.id)), ("proto", "proto", offset_of(&_layout.proto)),
     ("client_ip", "ip_c", offset_of(&_layout.client_ip)), ("client_port", "u16", offset_of(&_layout.client_port)),
     ("server_ip", "ip_s", offset_of(&_layout.server_ip)), ("server_port", "u16", offset_of(&_layout.server_port)),
     ("vlan", "vlan", offset_of(&_layout.vlan))]
    + side_fields("packets", offset_of(&_layout.side[0].packets) - _side0)
    + side_fields("ip_bytes", offset_of(&_layout.side[0].ip_bytes) - _side0)
    + side_fields("payload_bytes", offset_of(&_layout.side[0].payload_bytes) - _side0)
    + [("first_ts", "ts", offset_of(&_layout.first_ts)), ("last_ts", "ts", offset_of(&_layout.last_ts)),
       ("client_state", "state_c", offset_of(&_layout.client_state)),
       ("server_state", "state_s", offset_of(&_layout.server_state)),
       ("end_reason", "reason", offset_of(&_layout.end_reason)), ("midstream", "bool", offset_of(&_layout.midstream))]
    + side_fields("bytes", offset_of(&_layout.side[0].stream_bytes) - _side0)
    + side_fields("missed", offset_of(&_layout.side[0].missed) - _side0)
    + side_fields("rexmits", offset_of(&_layout.side[0].retransmits) - _side0)
    + side_fields("overlap_conflicts", offset_of(&_layout.side[0].overlap_conflicts) - _side0)
    + side_fields("data_segments", offset_of(&_layout.side[0].data_segments) - _side0)
    + side_fields("retransmitted_bytes", offset_of(&_layout.side[0].retransmitted_bytes) - _side0)
    + side_fields("out_of_order", offset_of(&_layout.side[0].out_of_order) - _side0)
    + side_fields("zero_window_probes", offset_of(&_layout.side[0].zero_window_probes) - _side0))
RECORD_SIZE = sizeof(flowrec_t)
RECORD_LAYOUT = {"family": offset_of(&_layout.family), "nvlan": offset_of(&_layout.nvlan),
                 "tclass": offset_of(&_layout.tclass), "client_tcp_flags": offset_of(&_layout.tcp_flags[0]),
                 "server_tcp_flags": offset_of(&_layout.tcp_flags[1])}


# ---- formatting in C ---------------------------------------------------------------------------

ctypedef struct out_t:
    char *p
    size_t n
    size_t cap


cdef int out_reserve(out_t *o, size_t more) except -1:
    cdef size_t cap
    cdef char *p
    if o.n + more <= o.cap:
        return 0
    cap = max(o.cap * 2, o.n + more, 1 << 16)
    p = <char *>realloc(o.p, cap)
    if p == NULL:
        raise MemoryError("no memory to format flow records")
    o.p = p
    o.cap = cap
    return 0


cdef inline void put(out_t *o, const char *s, size_t n) noexcept nogil:
    memcpy(o.p + o.n, s, n)
    o.n += n


cdef inline void put_s(out_t *o, const char *s) noexcept nogil:
    put(o, s, strlen(s))


cdef inline void put_u64(out_t *o, uint64_t v) noexcept nogil:
    cdef char buf[24]
    cdef int i = 24
    while True:
        i -= 1
        buf[i] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    put(o, &buf[i], 24 - i)


cdef inline void put_ts(out_t *o, int64_t ns) noexcept nogil:
    """Seconds to the microsecond nearest the nanosecond time (halves up), as Python prints
    that float: 12.5, 12.0, 12.000001."""
    cdef int64_t us
    cdef int64_t frac
    cdef char digits[6]
    cdef int i, n = 6
    if ns < 0:
        put(o, "-", 1)
        ns = -ns
    us = (ns + 500) // 1000
    put_u64(o, <uint64_t>(us // 1000000))
    put(o, ".", 1)
    frac = us % 1000000
    for i in range(5, -1, -1):
        digits[i] = <char>(48 + frac % 10)
        frac //= 10
    while n > 1 and digits[n - 1] == 48:
        n -= 1
    put(o, digits, n)


cdef inline void put_ip(out_t *o, const uint8_t *ip, int family) noexcept nogil:
    cdef char buf[64]
    cdef int i
    if family == 4:
        for i in range(4):
            if i:
                put(o, ".", 1)
            put_u64(o, ip[i])
        return
    inet_ntop(AF_INET6, ip, buf, 64)
    put_s(o, buf)


cdef inline void put_vlan(out_t *o, const flowrec_t *r) noexcept nogil:
    cdef int i
    for i in range(r.nvlan):
        if i:
            put(o, "/", 1)
        put_u64(o, r.vlan[i])


cdef const char *STATE_NAMES[11]
STATE_NAMES[:] = [b"CLOSED", b"LISTEN", b"SYN_SENT", b"SYN_RECEIVED", b"ESTABLISHED", b"FIN_WAIT_1",
                  b"FIN_WAIT_2", b"CLOSE_WAIT", b"CLOSING", b"LAST_ACK", b"TIME_WAIT"]
cdef const char *REASON_NAMES[8]
REASON_NAMES[:] = [b"open", b"fin", b"rst", b"timeout", b"evicted", b"end_of_capture", b"reused",
                   b"interrupted"]

cdef enum:
    K_U64, K_U16, K_TS, K_IP, K_PROTO, K_VLAN, K_STATE, K_REASON, K_BOOL
    MAX_FIELDS = 64

ctypedef struct fieldspec_t:
    int kind
    size_t off
    char json_name[48]          # ', "name": ' (the first without the comma)
    size_t json_len
    char csv_name[40]           # ',name'
    size_t csv_len

cdef fieldspec_t FIELDSPEC[MAX_FIELDS]
cdef int NFIELDS = 0
cdef size_t ROW_MAX = 0             # the longest a formatted row can be (brackets and newline included)
cdef dict VALUE_MAX = {"u64": 20, "u16": 5, "ts": 28, "ip_c": 47, "ip_s": 47, "proto": 5, "vlan": 13, "state_c": 14,
             "state_s": 14, "reason": 16, "bool": 5}
cdef dict KIND_CODES = {"u64": K_U64, "u16": K_U16, "ts": K_TS, "ip_c": K_IP, "ip_s": K_IP, "proto": K_PROTO,
              "vlan": K_VLAN, "state_c": K_STATE, "state_s": K_STATE, "reason": K_REASON, "bool": K_BOOL}


cdef int describe_fields() except -1:
    """The field table the formatters walk (from RECORD_FIELDS, once)."""
    global NFIELDS, ROW_MAX
    cdef fieldspec_t *f
    cdef bytes j, c
    for i, (name, kind, off) in enumerate(RECORD_FIELDS):
        f = &FIELDSPEC[i]
        f.kind = KIND_CODES[kind]
        f.off = off
        j = (("" if i == 0 else ", ") + f'"{name}": ').encode()
        c = (("" if i == 0 else ",") + name).encode()
        memcpy(f.json_name, <const char *>j, len(j))
        f.json_len = len(j)
        memcpy(f.csv_name, <const char *>c, len(c))
        f.csv_len = len(c)
        ROW_MAX += len(j) + VALUE_MAX[kind]
    NFIELDS = len(RECORD_FIELDS)
    ROW_MAX += 3
    return 0


describe_fields()


cdef inline void put_quoted(out_t *o, const char *s, bint json) noexcept nogil:
    if json:
        put(o, "\"", 1)
        put_s(o, s)
        put(o, "\"", 1)
    else:
        put_s(o, s)


cdef void put_row(out_t *o, const flowrec_t *r, bint json) noexcept nogil:
    """One record's fields, separated (JSON: with their names), without brackets or newline."""
    cdef int i
    for i in range(NFIELDS):
        if json:
            put(o, FIELDSPEC[i].json_name, FIELDSPEC[i].json_len)
        elif i:
            put(o, ",", 1)
        put_value(o, r, &FIELDSPEC[i], json)


cdef void put_line(out_t *o, const flowrec_t *r, bint json, const char *extra, size_t extra_len) noexcept nogil:
    """A whole row and its newline (room for it reserved: ROW_MAX plus ``extra_len``)."""
    if json:
        put(o, "{", 1)
    put_row(o, r, json)
    if extra_len:
        put(o, extra, extra_len)
    if json:
        put(o, "}\n", 2)
    else:
        put(o, "\n", 1)


cdef void put_value(out_t *o, const flowrec_t *r, const fieldspec_t *f, bint json) noexcept nogil:
    """One field's value (JSON: strings quoted)."""
    cdef const char *base = <const char *>r
    cdef bint tcp = r.proto == 6
    if f.kind == K_U64:
        put_u64(o, (<const uint64_t *>(base + f.off))[0])
    elif f.kind == K_U16:
        put_u64(o, (<const uint16_t *>(base + f.off))[0])
    elif f.kind == K_TS:
        put_ts(o, (<const int64_t *>(base + f.off))[0])
    elif f.kind == K_IP:
        if json:
            put(o, "\"", 1)
        put_ip(o, <const uint8_t *>(base + f.off), r.family)
        if json:
            put(o, "\"", 1)
    elif f.kind == K_PROTO:
        put_quoted(o, b"tcp" if tcp else b"udp", json)
    elif f.kind == K_VLAN:
        if json:
            put(o, "\"", 1)
        put_vlan(o, r)
        if json:
            put(o, "\"", 1)
    elif f.kind == K_STATE:
        if tcp:
            put_quoted(o, STATE_NAMES[(<const uint8_t *>(base + f.off))[0]], json)
        else:
            put_quoted(o, b"", json)
    elif f.kind == K_REASON:
        put_quoted(o, REASON_NAMES[r.end_reason], json)
    elif json:
        put_s(o, b"true" if r.midstream else b"false")
    else:
        put_s(o, b"True" if r.midstream else b"False")


cdef class FlowRecords:
    """A batch of flow records: one fixed-width row per flow (see ``RECORD_FIELDS``), in the
    order the flows left the table. ``len``, ``records[i]`` (a dict keyed by the field names of
    ``aiomb flows``), iteration, the buffer protocol (the raw rows, ``RECORD_SIZE`` bytes each:
    ``numpy.frombuffer`` reads them without a copy), ``sort()`` by flow number, and
    ``format("jsonl" | "csv")`` (bytes, made in C). Layer: core."""

    cdef flowrec_t *rows
    cdef Py_ssize_t n
    cdef Py_ssize_t cap
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]
    cdef int views

    def __dealloc__(self):
        free(self.rows)

    cdef flowrec_t *add(self) except NULL:
        cdef Py_ssize_t cap
        cdef flowrec_t *p
        if self.views:
            raise BufferError("the records are being read through a buffer; take a new batch")
        if self.n == self.cap:
            cap = max(self.cap * 2, 256)
            p = <flowrec_t *>realloc(self.rows, cap * sizeof(flowrec_t))
            if p == NULL:
                raise MemoryError("no memory for flow records")
            self.rows = p
            self.cap = cap
        self.n += 1
        return &self.rows[self.n - 1]

    def __len__(self):
        return self.n

    def __getitem__(self, Py_ssize_t i):
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"record {i} of {self.n}")
        return self.record(i)

    cdef dict record(self, Py_ssize_t i):
        cdef const flowrec_t *r = &self.rows[i]
        cdef const char *base = <const char *>r
        cdef bint tcp = r.proto == 6
        out = {}
        for name, kind, off in RECORD_FIELDS:
            if kind == "u64":
                out[name] = (<const uint64_t *>(base + <size_t>off))[0]
            elif kind == "u16":
                out[name] = (<const uint16_t *>(base + <size_t>off))[0]
            elif kind == "ts":
                out[name] = ((<const int64_t *>(base + <size_t>off))[0] + 500) // 1000 / 1e6
            elif kind == "ip_c" or kind == "ip_s":
                out[name] = str(ip_object(<uint8_t *>(base + <size_t>off), r.family))
            elif kind == "proto":
                out[name] = "tcp" if tcp else "udp"
            elif kind == "vlan":
                out[name] = "/".join([str(r.vlan[j]) for j in range(r.nvlan)])
            elif kind == "state_c" or kind == "state_s":
                out[name] = STATES[(<const uint8_t *>(base + <size_t>off))[0]].name if tcp else ""
            elif kind == "reason":
                out[name] = REASON_NAMES[r.end_reason].decode()
            else:
                out[name] = bool(r.midstream)
        return out

    def extend(self, FlowRecords other):
        """Append another batch's rows (a copy)."""
        cdef Py_ssize_t need = self.n + other.n
        cdef flowrec_t *p
        if self.views:
            raise BufferError("the records are being read through a buffer; take a new batch")
        if need > self.cap:
            p = <flowrec_t *>realloc(self.rows, max(need, 256) * sizeof(flowrec_t))
            if p == NULL:
                raise MemoryError("no memory for flow records")
            self.rows = p
            self.cap = max(need, 256)
        if other.n:
            memcpy(&self.rows[self.n], other.rows, other.n * sizeof(flowrec_t))
        self.n = need

    @staticmethod
    def frombytes(data):
        """A batch of the raw rows in ``data`` (a bytes-like object of whole ``RECORD_SIZE`` rows,
        as ``bytes(memoryview(records))`` gives them: how records cross a process boundary)."""
        cdef const uint8_t[::1] raw = memoryview(data).cast("B")
        cdef FlowRecords out = FlowRecords.__new__(FlowRecords)
        cdef Py_ssize_t n = raw.shape[0] // <Py_ssize_t>sizeof(flowrec_t)
        if raw.shape[0] % <Py_ssize_t>sizeof(flowrec_t):
            raise ValueError(f"{raw.shape[0]} bytes are not whole records of {sizeof(flowrec_t)} bytes")
        if n:
            out.rows = <flowrec_t *>malloc(n * sizeof(flowrec_t))
            if out.rows == NULL:
                raise MemoryError("no memory for flow records")
            memcpy(out.rows, &raw[0], n * sizeof(flowrec_t))
            out.n = out.cap = n
        return out

    def split(self, uint64_t order):
        """Take out the leading rows that left the table before ``order`` (see
        ``Engine.remove_flow``'s order: twice a packet number, plus one past that packet's expiry
        pass) and return them as a batch; the rest stay."""
        cdef FlowRecords out = FlowRecords.__new__(FlowRecords)
        cdef Py_ssize_t k = 0
        if self.views:
            raise BufferError("the records are being read through a buffer")
        while k < self.n and self.rows[k].order < order:
            k += 1
        if k:
            out.rows = <flowrec_t *>malloc(k * sizeof(flowrec_t))
            if out.rows == NULL:
                raise MemoryError("no memory for flow records")
            memcpy(out.rows, self.rows, k * sizeof(flowrec_t))
            out.n = out.cap = k
            memmove(self.rows, &self.rows[k], (self.n - k) * sizeof(flowrec_t))
            self.n -= k
        return out

    def sort_by_leaving(self):
        """Put the rows in the order their flows left the table in one engine: by their order,
        an expiry pass's rows by timeout class, last activity and id, rows leaving at the
        end of the input by id. Shards' records merge so."""
        if self.views:
            raise BufferError("the records are being read through a buffer")
        qsort(self.rows, self.n, sizeof(flowrec_t), cmp_leaving)

    def number_by(self, created):
        """Renumber the rows' flows 1, 2, ... over a whole input: ``created`` holds the id of
        every flow of the input created up to the rows' (rising uint64 values, an array('Q'));
        a row's flow number becomes its id's place there, counted from 1."""
        cdef const uint64_t[::1] ids = memoryview(created).cast("B").cast("Q") if len(created) else None
        cdef Py_ssize_t i, lo, hi, mid, n = len(created)
        cdef uint64_t v
        if self.views:
            raise BufferError("the records are being read through a buffer")
        for i in range(self.n):
            v = self.rows[i].id
            lo, hi = 0, n
            while lo < hi:
                mid = (lo + hi) >> 1
                if ids[mid] < v:
                    lo = mid + 1
                else:
                    hi = mid
            if lo == n or ids[lo] != v:
                raise ValueError(f"flow id {v} is not among the created flows")
            self.rows[i].id = lo + 1

    def number_from(self, uint64_t first):
        """Renumber the rows' flows ``first``, ``first + 1``, ... in row order (the records of
        engines that each numbered their own flows, merged as they come)."""
        cdef Py_ssize_t i
        if self.views:
            raise BufferError("the records are being read through a buffer")
        for i in range(self.n):
            self.rows[i].id = first + i

    def ids(self):
        """The rows' flow numbers (a list)."""
        return [self.rows[i].id for i in range(self.n)]

    def conn(self, Py_ssize_t i):
        """Zeek's view of row ``i`` (kept when the engine ran with ``conn_history=True``, else
        None): a dict with ``orig`` (the side Zeek calls the originator: 0 client, 1 server),
        ``history`` (Zeek's letters), ``orig_state``/``resp_state`` (Zeek's endpoint state
        numbers: TCP 0 inactive .. 6 reset; UDP 1 active), ``orig_bytes``/``resp_bytes``,
        ``missed_bytes``, ``last_ts`` (seconds) and ``history_dropped`` (letters beyond the
        bound). Raises IndexError."""
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"record {i} of {self.n}")
        cdef const zrec_t *z = &self.rows[i].conn
        if not z.valid:
            return None
        return {"orig": z.orig, "history": PyUnicode_DecodeASCII(z.history, z.hlen, NULL),
                "orig_state": z.state[0], "resp_state": z.state[1], "orig_bytes": z.size[0],
                "resp_bytes": z.size[1], "missed_bytes": z.missed,
                "last_ts": (z.last_ts + 500) // 1000 / 1e6, "history_dropped": z.dropped}

    def protos(self):
        """The rows' IP protocol numbers (a list: 6 TCP, 17 UDP)."""
        return [self.rows[i].proto for i in range(self.n)]

    def sort(self):
        """Put the rows in flow-number order (the order the flows were first seen)."""
        if self.views:
            raise BufferError("the records are being read through a buffer")
        qsort(self.rows, self.n, sizeof(flowrec_t), cmp_record)

    def format(self, str fmt, Py_ssize_t start=0, Py_ssize_t stop=-1, *, bint header=False, list extra=None,
               tuple extra_names=()):
        """Rows ``start`` to ``stop`` (-1: the last) as JSON lines (``json.dumps`` of each record)
        or CSV (``header``: the field names first), as bytes. ``extra`` (one bytes per row of
        the batch) is put at the end of each row as it is, e.g. ``b', "client_sha256": "..."'``
        (with ``header``, ``extra_names`` go too)."""
        cdef out_t o
        cdef Py_ssize_t i
        cdef bytes piece
        cdef bint json
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"format must be 'jsonl' or 'csv', got {fmt!r}")
        if extra is not None and len(extra) != self.n:
            raise ValueError(f"extra has {len(extra)} items for {self.n} rows")
        if stop < 0:
            stop = self.n
        if not 0 <= start <= stop <= self.n:
            raise IndexError(f"rows {start} to {stop} of {self.n}")
        json = fmt == "jsonl"
        o.p = NULL
        o.n = o.cap = 0
        try:
            if header and not json:
                out_reserve(&o, 4096)
                for i in range(NFIELDS):
                    put(&o, FIELDSPEC[i].csv_name, FIELDSPEC[i].csv_len)
                for name in extra_names:
                    piece = b"," + name.encode()
                    out_reserve(&o, len(piece))
                    put(&o, <const char *>piece, len(piece))
                put(&o, "\n", 1)
            if extra is None:           # in C without the GIL: another thread may run meanwhile
                out_reserve(&o, (stop - start) * ROW_MAX)
                with nogil:
                    for i in range(start, stop):
                        put_line(&o, &self.rows[i], json, NULL, 0)
            else:
                for i in range(start, stop):
                    piece = <bytes>extra[i]
                    out_reserve(&o, ROW_MAX + len(piece))
                    put_line(&o, &self.rows[i], json, <const char *>piece, len(piece))
            return PyBytes_FromStringAndSize(o.p, o.n) if o.n else b""
        finally:
            free(o.p)

    def write(self, int fd, str fmt, *, bint header=False):
        """Write every row to the file descriptor ``fd`` as JSON lines or CSV (``header``: the
        field names first), formatting and writing a piece at a time without holding the GIL
        (another thread runs meanwhile). Raises OSError (BrokenPipeError when the reader went
        away) as write(2) fails."""
        cdef out_t o
        cdef Py_ssize_t i = 0, j
        cdef bint json = fmt == "jsonl"
        cdef int err = 0
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"format must be 'jsonl' or 'csv', got {fmt!r}")
        o.p = NULL
        o.n = o.cap = 0
        try:
            out_reserve(&o, WRITE_ROWS * ROW_MAX)
            if header and not json:
                for j in range(NFIELDS):
                    put(&o, FIELDSPEC[j].csv_name, FIELDSPEC[j].csv_len)
                put(&o, "\n", 1)
            with nogil:
                while True:
                    j = min(i + WRITE_ROWS, self.n)
                    while i < j:
                        put_line(&o, &self.rows[i], json, NULL, 0)
                        i += 1
                    err = write_all(fd, o.p, o.n)
                    o.n = 0
                    if err or i >= self.n:
                        break
            if err:
                raise OSError(err, _records_os.strerror(err))
        finally:
            free(o.p)

    def text_column(self, str name):
        """A field of every row as text, as CSV prints it (a list of str, made in C): what
        addresses, states and reasons become in a table."""
        cdef out_t o
        cdef Py_ssize_t i
        cdef int k = -1
        for i in range(NFIELDS):
            if RECORD_FIELDS[i][0] == name:
                k = i
        if k < 0:
            raise KeyError(f"no field {name!r}; the fields are {', '.join(n for n, _, _ in RECORD_FIELDS)}")
        out = []
        o.p = NULL
        o.n = o.cap = 0
        try:
            out_reserve(&o, 256)
            for i in range(self.n):
                o.n = 0
                put_value(&o, &self.rows[i], &FIELDSPEC[k], False)
                out.append(PyUnicode_DecodeASCII(o.p, o.n, NULL))
            return out
        finally:
            free(o.p)

    def __getbuffer__(self, Py_buffer *view, int flags):
        self.shape[0] = self.n * sizeof(flowrec_t)
        self.strides[0] = 1
        view.buf = <void *>self.rows
        view.obj = self
        view.len = self.shape[0]
        view.readonly = 1
        view.itemsize = 1
        view.format = NULL
        if flags & PyBUF_FORMAT:
            view.format = b"B"
        view.ndim = 1
        view.shape = NULL
        view.strides = NULL
        if flags & PyBUF_ND:
            view.shape = self.shape
            view.strides = self.strides
        view.suboffsets = NULL
        view.internal = NULL
        self.views += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.views -= 1


cdef enum:
    WRITE_ROWS = 1024               # rows formatted per write(2)


cdef extern from "unistd.h" nogil:
    ssize_t c_write "write"(int fd, const void *buf, size_t n)


cdef int write_all(int fd, const char *p, size_t n) noexcept nogil:
    """write(2) until done; 0, or the errno that stopped it (interrupted calls are retried)."""
    cdef ssize_t done
    while n:
        done = c_write(fd, p, n)
        if done < 0:
            if write_errno == EINTR:
                continue
            return write_errno
        p += done
        n -= done
    return 0


cdef int cmp_leaving(const void *a, const void *b) noexcept nogil:
    cdef const flowrec_t *x = <const flowrec_t *>a
    cdef const flowrec_t *y = <const flowrec_t *>b
    if x.order != y.order:
        return -1 if x.order < y.order else 1
    if not (x.order & 1):               # one expiry pass: as the pass goes
        if x.tclass != y.tclass:
            return -1 if x.tclass < y.tclass else 1
        if x.last_ts != y.last_ts:
            return -1 if x.last_ts < y.last_ts else 1
    return -1 if x.id < y.id else (1 if x.id > y.id else 0)


cdef int cmp_record(const void *a, const void *b) noexcept nogil:
    cdef uint64_t x = (<const flowrec_t *>a).id
    cdef uint64_t y = (<const flowrec_t *>b).id
    return -1 if x < y else (1 if x > y else 0)
