# Timers on the stack's clock (packet time on captures, the wall clock on live ports): a binary
# heap of deadlines, ordered by time and then by the order they were set, so that what fires
# between two packets, and in which order, never depends on how frames are batched.

ctypedef struct tmr_t:
    int64_t due             # ns
    uint64_t seq            # the arming's number: a timer re-armed or cancelled leaves stale entries
    uint32_t id


ctypedef struct timerq_t:
    tmr_t *heap
    uint32_t n
    uint32_t cap
    uint64_t next_seq


cdef inline bint tmr_before(const tmr_t *a, const tmr_t *b) noexcept nogil:
    return a.due < b.due or (a.due == b.due and a.seq < b.seq)


cdef int timerq_push(timerq_t *q, int64_t due, uint32_t id, uint64_t *seq) except -1:
    """Add a deadline; ``seq`` receives the arming's number."""
    cdef uint32_t i, parent, cap
    cdef tmr_t t, *h
    if q.n == q.cap:
        cap = q.cap * 2 if q.cap else 64
        h = <tmr_t *>realloc(q.heap, cap * sizeof(tmr_t))
        if h == NULL:
            raise MemoryError("no memory for another timer")
        q.heap = h
        q.cap = cap
    t.due = due
    t.id = id
    t.seq = q.next_seq
    q.next_seq += 1
    seq[0] = t.seq
    i = q.n
    q.n += 1
    while i > 0:
        parent = (i - 1) >> 1
        if not tmr_before(&t, &q.heap[parent]):
            break
        q.heap[i] = q.heap[parent]
        i = parent
    q.heap[i] = t
    return 0


cdef void timerq_pop(timerq_t *q, tmr_t *out) noexcept nogil:
    """Take the earliest deadline (the queue must not be empty)."""
    cdef uint32_t i = 0, child
    cdef tmr_t last
    out[0] = q.heap[0]
    q.n -= 1
    if q.n == 0:
        return
    last = q.heap[q.n]
    while True:
        child = 2 * i + 1
        if child >= q.n:
            break
        if child + 1 < q.n and tmr_before(&q.heap[child + 1], &q.heap[child]):
            child += 1
        if not tmr_before(&q.heap[child], &last):
            break
        q.heap[i] = q.heap[child]
        i = child
    q.heap[i] = last


cdef void timerq_free(timerq_t *q) noexcept nogil:
    free(q.heap)
    q.heap = NULL
    q.n = 0
    q.cap = 0


@cython.final
@cython.no_gc
cdef class TimerEntry:
    """One armed timer (Engine-internal): when it repeats, its flow, its inline callback."""

    cdef uint64_t seq               # the current arming
    cdef int64_t interval           # ns, 0: one-shot
    cdef int32_t slot               # its flow's entry, -1: not a flow's timer
    cdef uint64_t flow_id
    cdef object callback
