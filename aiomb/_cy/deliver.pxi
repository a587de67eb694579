# Delivery of event batches to async consumers without an await per event.
#
# An EventStream yields the events of the batch it holds from __anext__ through one reusable
# awaitable whose am_send slot returns the event at once (no coroutine, no StopIteration per
# event); only when the batch is used up does it return the consumer's own refill coroutine,
# which waits for the next batch. Trio-agnostic: the refill coroutine comes from the caller.

cdef extern from "Python.h":
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    ctypedef PySendResult (*sendfunc)(PyObject *, PyObject *, PyObject **)
    ctypedef struct PyAsyncMethods:
        sendfunc am_send
    ctypedef struct PyTypeObject:
        PyAsyncMethods *tp_as_async


cdef class _Ready:
    """An awaitable that is already done: awaiting it returns its value."""

    cdef object value

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        v = self.value
        self.value = None
        raise StopIteration(v)


cdef PySendResult _ready_send(PyObject *obj, PyObject *arg, PyObject **result) noexcept:
    cdef _Ready r = <_Ready>obj
    cdef object v = r.value
    r.value = None
    Py_INCREF(v)
    result[0] = <PyObject *>v
    return PYGEN_RETURN

(<PyTypeObject *>_Ready).tp_as_async.am_send = _ready_send


cdef list NO_EVENTS = []           # never appended to


cdef class EventStream:
    """Async iterator over events handed over in batches (lists), one await per batch.

    ``refill`` is an async callable returning the next non-empty list, or None at the end.
    ``check`` (optional) is an async callable awaited before every ``every``-th event of a batch,
    so that a consumer iterating a long batch still notices cancellation: it must either return
    without yielding or raise (Trio's ``checkpoint_if_cancelled``). The event is taken from the
    batch only once the check has returned, so an exception raised by the check loses nothing:
    the next ``__anext__`` yields that event. Several tasks may iterate one stream: each event
    goes to one of them. Layer: core (Trio-agnostic); the stack's Subscription builds on it.
    """

    cdef list items
    cdef Py_ssize_t index
    cdef object refill
    cdef object check
    cdef Py_ssize_t every
    cdef Py_ssize_t until_check
    cdef _Ready ready

    def __init__(self, refill, check=None, Py_ssize_t every=64):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.items = NO_EVENTS
        self.index = 0
        self.refill = refill
        self.check = check
        self.every = every
        self.until_check = every
        self.ready = _Ready()

    def __aiter__(self):
        return self

    def __anext__(self):
        if self.index < len(self.items):
            if self.check is not None:
                self.until_check -= 1
                if self.until_check == 0:
                    self.until_check = self.every
                    return self._checked()
            self.ready.value = self._take()
            return self.ready
        return self._next_batch()

    @cython.final
    @cython.boundscheck(False)     # index < len(items): checked by __anext__, and a check does not
    @cython.wraparound(False)      # yield unless it raises
    cdef inline object _take(self):
        """The next event of the batch held (there must be one)."""
        cdef object item = self.items[self.index]
        self.index += 1
        if self.index == len(self.items):
            self.items = NO_EVENTS  # the batch is used up: its events go with the consumer's
        return item

    async def _checked(self):
        await self.check()      # may raise (trio.Cancelled): the event is not taken before
        return self._take()

    def take_rest(self):
        """Remove and return the events of the batch held not yet yielded (a list, empty when
        there are none); the next ``__anext__`` refills. Does not block."""
        rest = self.items[self.index:]
        self.items = NO_EVENTS
        self.index = 0
        return rest

    async def _next_batch(self):
        items = await self.refill()
        if items is None:
            raise StopAsyncIteration
        if self.index < len(self.items):
            # another task iterating this stream got a batch while this one waited: both are
            # kept, that one's rest first
            items = self.items[self.index:] + items
        self.items = items
        self.index = 1
        self.until_check = self.every
        if len(items) == 1:
            self.items = NO_EVENTS
        return items[0]
