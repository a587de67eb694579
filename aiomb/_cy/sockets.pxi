# Sockets' readiness, flow sockets' stream queues and epoll interest lists: the sans-I/O half
# of the epoll shell (aiomb/_epoll.py adds descriptors, waiting and the sources).
#
# The dispatcher fills a flow socket straight from the event log while it routes a batch: a
# NEW_DATA record's bytes go to the side's queue as they are (still in the capture's frames
# until recv() takes them), a GAP becomes a hole, FIN and the flow's end set RDHUP and HUP; an
# Event is made only for the kinds the program asked to see. Readiness changes put the socket
# on the candidate lists of the interest lists that watch it, which collect() walks: no
# Python call per flow per batch between the engine and the program's poll().

from aiomb._errors import StreamGap

import errno as _errno
import operator as _operator
import os as _sock_os

cdef uint32_t R_IN = 0x001          # select.EPOLLIN and friends (a test pins them to select's)
cdef uint32_t R_ERR = 0x008
cdef uint32_t R_HUP = 0x010
cdef uint32_t R_RDHUP = 0x2000
cdef uint32_t R_ONESHOT = 1u << 30
cdef uint32_t R_ET = 1u << 31
cdef uint32_t R_EXCLUSIVE = 1u << 28
# what the kernel takes beside EPOLLEXCLUSIVE (fs/eventpoll.c's EPOLLEXCLUSIVE_OK_BITS: IN, OUT,
# ERR, HUP, WAKEUP, ET); any other bit with it is EINVAL
cdef uint32_t R_EXCLUSIVE_OK = R_IN | 0x004 | R_ERR | R_HUP | (1u << 29) | R_ET | R_EXCLUSIVE
READINESS_BITS = {"EPOLLIN": R_IN, "EPOLLERR": R_ERR, "EPOLLHUP": R_HUP, "EPOLLRDHUP": R_RDHUP,
                  "EPOLLONESHOT": R_ONESHOT, "EPOLLET": R_ET}
EVENT_SHIFT = 32                    # an event kind of bit k is readiness bit 32 + k

cdef int64_t next_socket_number = 1 << 24       # above any real descriptor
cdef dict socket_registry = {}                  # number -> weak reference to the socket
cdef object SIDE_CLIENT = Side.CLIENT
cdef object SIDE_SERVER = Side.SERVER
cdef dict SIDE_INDEX = {Side.CLIENT: 0, Side.SERVER: 1, 0: 0, 1: 1}
cdef tuple NOT_READY = tuple(f"no byte of the {side} stream is ready yet" for side in Side)
cdef list NOTHING = []              # an empty queue or event list, never appended to (made when needed)


def socket_of(fd):
    """The aiomb socket numbered ``fd``, or None (a real descriptor, or a socket gone)."""
    ref = socket_registry.get(fd)
    return ref() if ref is not None else None


cdef object mask_value(uint32_t lo, uint64_t kinds):
    if kinds == 0:
        return lo
    return ((<object>kinds) << EVENT_SHIFT) | lo


cdef int check_exclusive(object eventmask, bint modify) except -1:
    """OSError (EINVAL) where epoll_ctl(2) refuses EPOLLEXCLUSIVE: in a modify, or beside bits
    other than EPOLLEXCLUSIVE_OK_BITS. Only the low 32 bits are the kernel's: select.epoll drops
    the others (here aiomb's event kinds)."""
    cdef uint32_t lo = eventmask & 0xFFFFFFFF
    if lo & R_EXCLUSIVE and (modify or lo & ~R_EXCLUSIVE_OK):
        raise OSError(_errno.EINVAL, f"{_sock_os.strerror(_errno.EINVAL)}: EPOLLEXCLUSIVE is taken by register() "
                      "only, beside EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLWAKEUP and EPOLLET (as by "
                      f"epoll_ctl(2)); got {lo:#x}{' in modify()' if modify else ''}")
    return 0


cdef class SocketCore:
    """What monitor, flow and timer sockets share: a number (unique in the process, above any
    real descriptor), a readiness mask (select's bits, then event kinds' bits from bit 32), and
    the interest lists that watch it, told when it turns ready. Layer: core (sans-I/O)."""

    cdef readonly int64_t _fd
    cdef object fd_obj
    cdef uint32_t ready_lo
    cdef uint64_t ready_kinds
    cdef readonly uint64_t _seq        # grows with each new readiness (edge-triggered epolls)
    cdef readonly bint _closed
    cdef list watchers                 # its Registrations in the interest lists that watch it
    cdef public object _driver
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        global next_socket_number
        self._fd = next_socket_number
        next_socket_number += 1
        self.fd_obj = self._fd
        self.watchers = []
        socket_registry[self.fd_obj] = _weakref.ref(self)

    def __dealloc__(self):
        if socket_registry is not None:
            socket_registry.pop(self.fd_obj, None)

    def fileno(self):
        """The socket's number."""
        return self.fd_obj

    @property
    def closed(self):
        return self._closed

    @property
    def _ready(self):
        """The readiness mask now (select's bits and event kinds' bits)."""
        return mask_value(self.ready_lo, self.ready_kinds)

    def _set(self, bits, *, bint new=True):
        """``bits`` become ready (``new``: an edge, e.g. more data, even if they were set)."""
        self.set_bits(bits & 0xFFFFFFFF, (bits >> EVENT_SHIFT) & 0xFFFFFFFFFFFFFFFF, new)

    def _clear(self, bits):
        self.ready_lo &= ~<uint32_t>(bits & 0xFFFFFFFF)
        self.ready_kinds &= ~<uint64_t>((bits >> EVENT_SHIFT) & 0xFFFFFFFFFFFFFFFF)

    def _check_open(self):
        if self._closed:
            raise OSError(_errno.EBADF, f"{self!r} is closed")

    cdef int set_bits(self, uint32_t lo, uint64_t kinds, bint new) except -1:
        cdef Registration reg
        if new or (lo & ~self.ready_lo) or (kinds & ~self.ready_kinds):
            self._seq += 1
        self.ready_lo |= lo
        self.ready_kinds |= kinds
        for reg in self.watchers:
            reg.il.candidates[self.fd_obj] = reg
        return 0

    cpdef _mark_closed(self):
        """Closed: every interest list forgets it (the subclasses' close())."""
        cdef Registration reg
        self._closed = True
        for reg in list(self.watchers):
            reg.il.drop(self.fd_obj)
        return 0


cdef class MonitorCore(SocketCore):
    """A monitor socket's sans-I/O half: the flow sockets its acceptor made (in the order their
    flows started) until ``accept()`` takes them. Layer: core."""

    cdef list pending
    cdef Py_ssize_t head
    cdef public uint64_t _wanted       # event kinds' bits the flow sockets queue to events()
    cdef public uint64_t _limit        # unread bytes per flow socket side
    cdef public dict _last             # flow id -> each side's last frame (last_packets), or None
    cdef public type _socket_class
    cdef Dispatcher dispatcher

    def __cinit__(self, *args, **kwargs):
        self.pending = []

    def accept(self):
        """The next new flow, as a flow socket; BlockingIOError when none is pending."""
        cdef FlowSocketCore sock
        if self._closed:
            raise OSError(_errno.EBADF, f"{self!r} is closed")
        if self.head == len(self.pending):
            raise BlockingIOError(_errno.EAGAIN, "no new flow is pending")
        sock = <FlowSocketCore>self.pending[self.head]
        self.pending[self.head] = None
        self.head += 1
        if self.head == len(self.pending):
            self.pending = []
            self.head = 0
            self.ready_lo &= ~R_IN
        return sock

    def _drop_pending(self):
        """The monitor closes: the flows no one accepted will never be (as a listening socket's
        backlog): their sockets close and stop being filled; their flows go on for the others."""
        cdef FlowSocketCore sock
        for sock in self.pending[self.head:]:
            self.dispatcher.forget_socket(sock)
            sock._mark_closed()
        self.pending = []
        self.head = 0
        self.ready_lo &= ~R_IN

    def _listen(self, Dispatcher dispatcher, int acceptor):
        """Take the flows a dispatcher's acceptor accepts as flow sockets (of ``_socket_class``)."""
        self.dispatcher = dispatcher
        dispatcher.acc_monitors[dispatcher.check_acc(acceptor)] = self

    cdef FlowSocketCore new_socket(self, FlowInbox ib):
        cdef FlowSocketCore sock = FlowSocketCore.__new__(self._socket_class)
        sock.key = ib.key
        sock.flow_id = ib.flow_id
        sock.flow = ib.flow
        sock.monitor = self
        sock._driver = self._driver
        sock.tcp = ib.key.proto == 6
        if self._last is not None:
            sock.last = self._last.setdefault(ib.flow_id, [None, None])
        ib.sink = sock
        self.pending.append(sock)
        self.set_bits(R_IN, 0, True)
        return sock


@cython.final
cdef class Hole:
    """A hole in a flow socket's queue (bytes that will never come)."""
    cdef uint64_t offset
    cdef uint64_t length


cdef class FlowSocketCore(SocketCore):
    """A flow socket's sans-I/O half: each side's unread bytes and holes, FIN and end, the
    events asked for, filled by the dispatcher from the event log. Layer: core."""

    cdef readonly FlowKey key
    cdef readonly uint64_t flow_id
    cdef readonly Flow flow
    cdef readonly object end_reason
    cdef Event end
    cdef readonly MonitorCore monitor
    cdef bint tcp
    cdef list q0, q1                   # each side's bytes (or FrameBytes) and Holes, in order
    cdef Py_ssize_t head[2]
    cdef Py_ssize_t skip[2]            # bytes of the head chunk already read
    cdef uint64_t avail[2]
    cdef uint64_t offset[2]            # stream offset of the next byte recv() returns
    cdef bint fin[2]
    cdef list queued_events
    cdef list last                     # each side's last frame (the monitor's last_packets)
    cdef readonly uint64_t overruns
    cdef dict ctx

    def __cinit__(self, *args, **kwargs):
        self.q0 = NOTHING
        self.q1 = NOTHING
        self.queued_events = NOTHING

    @property
    def context(self):
        """A dict for the program's own per-flow state."""
        if self.ctx is None:
            self.ctx = {}
        return self.ctx

    cdef inline list queue(self, int s):
        return self.q0 if s == 0 else self.q1

    cdef inline bint empty(self, int s):
        return self.head[s] == len(self.queue(s))

    cdef int push(self, int s, object item) except -1:
        cdef list q = self.queue(s)
        if q is NOTHING:
            q = [item]
            if s == 0:
                self.q0 = q
            else:
                self.q1 = q
        else:
            PyList_Append(q, item)
        return 0

    cdef int queue_event(self, Event ev) except -1:
        if self.queued_events is NOTHING:
            self.queued_events = [ev]
        else:
            PyList_Append(self.queued_events, ev)
        return 0

    cdef int pop(self, int s) except -1:
        cdef list q = self.queue(s)
        q[self.head[s]] = None
        self.head[s] += 1
        self.skip[s] = 0
        if self.head[s] == len(q):
            if s == 0:
                self.q0 = NOTHING
            else:
                self.q1 = NOTHING
            self.head[s] = 0
        return 0

    cdef int route(self, Emitter em, uint32_t i, const evrec_t *r, uint64_t m) except -1:
        """One logged event of the flow (its inbox's kinds): into the queues and readiness."""
        cdef uint32_t lo = 0
        cdef uint64_t kinds = 0
        cdef bint fresh = False
        cdef int s = r.side
        cdef Event ev = None
        cdef bint queued = False
        cdef Hole hole
        cdef int bit = r.bit
        if bit == B_NEW_DATA:
            if self.avail[s] + <uint64_t>r.length > self.monitor._limit:       # unread bytes are bounded too
                self.overruns += 1
                hole = Hole.__new__(Hole)
                hole.offset = r.off
                hole.length = r.length
                self.push(s, hole)
                ev = em.make_event(i)
                self.queue_event(ev)
                queued = True
                lo |= R_IN | R_ERR
                fresh = True
            elif r.length > 0 and r.value >= 0:
                self.push(s, em.log.values[r.value])
                self.avail[s] += r.length
                lo |= R_IN
                fresh = True
        elif bit == B_GAP:
            hole = Hole.__new__(Hole)
            hole.offset = r.off
            hole.length = r.length
            self.push(s, hole)
            lo |= R_IN
            fresh = True
        elif bit == B_FIN:
            self.fin[s] = True
            lo |= R_RDHUP
        elif bit == B_CONN_END or bit == B_UDP_END:
            self.end_reason = REASONS[r.a]
            ev = em.make_event(i)
            self.end = ev
            if self.monitor._last is not None:
                self.monitor._last.pop(self.flow_id, None)     # the socket keeps its own
            lo |= R_HUP
        elif bit == B_BUFFER_OVERRUN:
            ev = em.make_event(i)
            self.queue_event(ev)
            queued = True
            lo |= R_ERR
        if self.monitor._wanted & m:
            if not queued:
                self.queue_event(ev if ev is not None else em.make_event(i))
            kinds = m
            fresh = True
        if lo or kinds:
            self.set_bits(lo, kinds, fresh)
        return 0

    cdef int side_of(self, object side) except -1:
        if side is SIDE_CLIENT:
            return 0
        if side is SIDE_SERVER:
            return 1
        s = SIDE_INDEX.get(side)
        if s is None:
            return int(Side(side))              # raises ValueError naming the sides
        return s

    def recv(self, Py_ssize_t bufsize, side):
        """Take up to ``bufsize`` bytes of ``side``'s stream (``mtcp_peek`` that consumes).

        Returns b"" once the side has ended (its FIN, or the flow's end) and everything was
        read. Raises StreamGap at a hole (once: the next call goes on after it),
        BlockingIOError when no byte is ready yet, OSError (EBADF) once closed, ValueError for
        a UDP flow.
        """
        return self.read(bufsize, side, True)

    def peek(self, Py_ssize_t bufsize, side):
        """The next bytes ``recv`` would return, without taking them (up to a hole)."""
        return self.read(bufsize, side, False)

    cdef bytes chunk(self, list q, Py_ssize_t j):
        """The queue's j-th item as bytes (bytes still in capture frames are copied now)."""
        item = q[j]
        if type(item) is FrameBytes:
            item = (<FrameBytes>item).get()
            q[j] = item
        return <bytes>item

    cdef object read(self, Py_ssize_t bufsize, object side, bint consume):
        cdef int s
        cdef list q
        cdef Py_ssize_t j, n, k, size
        cdef bytes first, out
        cdef Hole hole
        if self._closed:
            raise OSError(_errno.EBADF, f"{self!r} is closed")
        s = self.side_of(side)
        if not self.tcp:
            raise ValueError(f"{self.key} is not TCP: UDP flows have no stream to read")
        if bufsize < 0:
            raise ValueError(f"bufsize must not be negative, got {bufsize}")
        q = self.queue(s)
        j = self.head[s]
        n = len(q)
        if j == n:
            if self.fin[s] or self.end_reason is not None or bufsize == 0:
                return b""
            raise BlockingIOError(_errno.EAGAIN, NOT_READY[s])
        if type(q[j]) is Hole:
            hole = <Hole>q[j]
            if consume:
                self.pop(s)
                self.offset[s] = hole.offset + hole.length
                if self.empty(0) and self.empty(1):
                    self.ready_lo &= ~R_IN
            raise StreamGap(hole.offset, hole.length, f"{SIDES[s]} stream of {self.key}")
        first = self.chunk(q, j)
        k = self.skip[s]
        size = len(first) - k
        if size >= bufsize or j + 1 == n or type(q[j + 1]) is Hole:
            size = min(size, bufsize)                   # the common case: one chunk
            out = first if k == 0 and size == len(first) else first[k:k + size]
            if consume:
                if k + size == len(first):
                    self.pop(s)
                else:
                    self.skip[s] = k + size             # a partial read costs the bytes it returns
        else:
            parts = [first[k:]]
            size = len(parts[0])
            j += 1
            while j < n and type(q[j]) is not Hole and size < bufsize:
                piece = self.chunk(q, j)
                if len(piece) > bufsize - size:
                    piece = piece[:bufsize - size]
                parts.append(piece)
                size += len(piece)
                j += 1
            out = b"".join(parts)
            if consume:
                for _ in range(len(parts) - 1):
                    self.pop(s)                     # whole pieces: the last one is still queued
                if len(parts[-1]) < len(self.chunk(q, self.head[s])):
                    self.skip[s] = len(parts[-1])
                else:
                    self.pop(s)
        if consume:
            self.avail[s] -= len(out)
            self.offset[s] += len(out)
            if self.empty(0) and self.empty(1):
                self.ready_lo &= ~R_IN
        return out

    def unread(self, side):
        """How many bytes of ``side``'s stream wait to be read (``ioctl(FIONREAD)``), up to the
        socket's limit (the monitor's ``max_buffer``)."""
        return self.avail[self.side_of(side)]

    def ppeek(self, uint64_t offset, Py_ssize_t n, side):
        """``n`` unread bytes of ``side``'s stream from stream ``offset`` (positional peek);
        ValueError naming the range held when they are not all there."""
        cdef int s
        cdef list q
        cdef Py_ssize_t j
        if self._closed:
            raise OSError(_errno.EBADF, f"{self!r} is closed")
        s = self.side_of(side)
        q = self.queue(s)
        parts = []
        for j in range(self.head[s], len(q)):
            if type(q[j]) is Hole:
                break
            parts.append(self.chunk(q, j)[self.skip[s]:] if j == self.head[s] else self.chunk(q, j))
        data = b"".join(parts)
        lo, hi = self.offset[s], self.offset[s] + len(data)
        if offset < lo or n < 0 or offset + n > hi:
            raise ValueError(f"bytes [{offset}, {offset + n}) are not held; the socket holds "
                             f"[{lo}, {hi}) of the {SIDES[s]} stream unread")
        return data[offset - lo:offset - lo + n]

    def events(self):
        """The flow's events queued since the last call (the kinds put in epoll masks, and the
        BUFFER_OVERRUN that set EPOLLERR); clears their bits."""
        out = self.queued_events
        self.queued_events = NOTHING
        if out is NOTHING:
            out = []
        self.ready_lo &= ~R_ERR
        self.ready_kinds = 0
        return out

    @property
    def stats(self):
        """The flow's :class:`aiomb.FlowStatistics` when it ended (None before)."""
        return self.end.stats if self.end is not None else None

    def statistics(self):
        """The flow's :class:`aiomb.FlowStatistics` now (its figures at the end, once ended)."""
        return self.end.stats if self.end is not None else self.flow.statistics()

    @property
    def _last(self):
        return self.last

    def close(self):
        """Close the socket: its flow's streams stop (no more bytes are reassembled), nothing
        more is queued, and it leaves every epoll; idempotent."""
        if self._closed:
            return
        if self.monitor.dispatcher is not None:
            self.monitor.dispatcher.forget_socket(self)
        if self.end is None and self.flow is not None and self.flow.alive:
            self.flow.stop()
        self._mark_closed()
        self.q0 = self.q1 = NOTHING
        self.head[0] = self.head[1] = 0
        self.skip[0] = self.skip[1] = 0


@cython.final
cdef class Registration:
    """One socket in an interest list: what it is watched for, and edge/one-shot state."""
    cdef SocketCore sock
    cdef InterestList il               # None once dropped
    cdef uint32_t lo
    cdef uint64_t kinds
    cdef int64_t seen                  # the socket's readiness number last reported (edge-triggered)
    cdef bint off                      # one-shot, reported: silent until modify()

    cdef int set_mask(self, object mask) except -1:
        self.lo = mask & 0xFFFFFFFF
        self.kinds = (mask >> EVENT_SHIFT) & 0xFFFFFFFFFFFFFFFF
        self.seen = -1
        self.off = False
        return 0

    cdef inline uint32_t ready_lo(self):
        return self.sock.ready_lo & (self.lo | R_HUP | R_ERR)

    cdef inline uint64_t ready_kinds(self):
        return self.sock.ready_kinds & self.kinds


cdef class InterestList:
    """An epoll object's interest list over aiomb sockets (sans-I/O): which sockets it watches
    and for what, and the candidates (sockets that may be ready, in the order they became so),
    from which ``_collect`` makes poll()'s answer with epoll's level, edge and one-shot rules.
    Real descriptors go to the subclass's ``_register_real``/``_modify_real``/
    ``_unregister_real``; the subclass hears of the drivers its sockets use through
    ``_driver_added``/``_driver_removed`` and is woken (``_wake``) when a socket turns ready.
    Layer: core; the epoll shell subclasses it."""

    cdef dict regs                     # socket number -> Registration
    cdef dict candidates               # socket number -> Registration
    cdef readonly dict _driver_uses    # driver -> registrations of its sockets
    cdef public bint _closed
    cdef public bint _woken

    def __cinit__(self, *args, **kwargs):
        self.regs = {}
        self.candidates = {}
        self._driver_uses = {}

    def _check(self):
        if self._closed:
            raise ValueError("I/O operation on closed epoll object")

    cdef object resolve(self, object fd_or_obj):
        """(number, socket or None) of what register() and friends were given; TypeError and
        ValueError as select.epoll's."""
        if isinstance(fd_or_obj, SocketCore):
            return (<SocketCore>fd_or_obj).fd_obj, fd_or_obj
        if isinstance(fd_or_obj, int):
            fd = fd_or_obj
        else:
            fileno = getattr(fd_or_obj, "fileno", None)
            if fileno is None:
                raise TypeError(f"argument must be an int, or have a fileno() method, not "
                                f"{type(fd_or_obj).__name__}")
            fd = fileno()
            if not isinstance(fd, int):
                raise TypeError(f"fileno() returned a non-integer ({type(fd).__name__})")
        if fd < 0:
            raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
        return fd, socket_of(fd)

    def register(self, fd, eventmask=R_IN | 0x002 | 0x004):
        """Watch an aiomb socket (or a real descriptor) for ``eventmask``. Raises as
        select.epoll: FileExistsError if it is watched already, OSError EBADF once it is closed,
        EINVAL for EPOLLEXCLUSIVE beside a bit epoll_ctl(2) refuses with it, TypeError for what
        is no descriptor or no int mask."""
        cdef SocketCore sock
        cdef Registration reg
        num, obj = self.resolve(fd)
        eventmask = _operator.index(eventmask)
        self._check()
        if obj is None:
            self._register_real(num, eventmask)
            return
        sock = <SocketCore>obj
        sock._check_open()          # then what the kernel checks, in its order
        check_exclusive(eventmask, False)
        if num in self.regs:
            raise FileExistsError(_errno.EEXIST, _sock_os.strerror(_errno.EEXIST))
        reg = Registration.__new__(Registration)
        reg.sock = sock
        reg.il = self
        reg.set_mask(eventmask)
        self.regs[num] = reg
        sock.watchers.append(reg)
        self.candidates[num] = reg
        driver = sock._driver
        if driver is not None:
            uses = self._driver_uses.get(driver, 0)
            self._driver_uses[driver] = uses + 1
            if uses == 0:
                self._driver_added(driver)
        self.wake_if_ready(reg)

    def modify(self, fd, eventmask):
        """Change what a watched socket is watched for (and re-arm a one-shot one). Raises as
        select.epoll: FileNotFoundError if it is not watched, OSError EBADF once it is closed,
        EINVAL for EPOLLEXCLUSIVE (register() only)."""
        cdef Registration reg
        num, obj = self.resolve(fd)
        eventmask = _operator.index(eventmask)
        self._check()
        if obj is None:
            self._modify_real(num, eventmask)
            return
        (<SocketCore>obj)._check_open()
        check_exclusive(eventmask, True)
        reg = self.regs.get(num)
        if reg is None:
            raise FileNotFoundError(_errno.ENOENT, _sock_os.strerror(_errno.ENOENT))
        reg.set_mask(eventmask)
        self.candidates[num] = reg
        self.wake_if_ready(reg)

    def unregister(self, fd):
        """Stop watching a socket or descriptor; FileNotFoundError if it was not watched,
        OSError EBADF once it is closed (as select.epoll)."""
        num, obj = self.resolve(fd)
        self._check()
        if obj is None:
            self._unregister_real(num)
            return
        (<SocketCore>obj)._check_open()
        if num not in self.regs:
            raise FileNotFoundError(_errno.ENOENT, _sock_os.strerror(_errno.ENOENT))
        self.drop(num)

    cdef int wake_if_ready(self, Registration reg) except -1:
        if not self._woken and (reg.ready_lo() or reg.ready_kinds()):
            self._wake()
        return 0

    cdef int drop(self, object num) except -1:
        cdef Registration reg = self.regs.pop(num, None)
        if reg is None:
            return 0
        reg.sock.watchers.remove(reg)
        reg.il = None
        self.candidates.pop(num, None)
        driver = reg.sock._driver
        if driver is not None:
            uses = self._driver_uses[driver] - 1
            if uses:
                self._driver_uses[driver] = uses
            else:
                del self._driver_uses[driver]
                if not self._closed:
                    self._driver_removed(driver)
        return 0

    def _forget_all(self):
        """Leave every socket (the epoll object closes; the sockets stay open)."""
        cdef Registration reg
        for reg in self.regs.values():
            reg.sock.watchers.remove(reg)
            reg.il = None
        self.regs.clear()
        self.candidates.clear()
        self._driver_uses.clear()

    def _collect(self, Py_ssize_t maxevents):
        """The ready sockets, as poll() reports them: [(number, events), ...], at most
        ``maxevents``; a level-triggered one goes to the back of the line."""
        cdef Registration reg
        cdef SocketCore sock
        cdef uint32_t lo
        cdef uint64_t kinds
        cdef list out = []
        cdef dict cands = self.candidates
        for reg in list(cands.values()):
            if reg.il is None:          # dropped meanwhile
                continue
            sock = reg.sock
            num = sock.fd_obj
            if sock._closed:
                self.drop(num)
                continue
            lo = reg.ready_lo()
            kinds = reg.ready_kinds()
            del cands[num]
            if reg.off or not (lo or kinds):
                continue
            if reg.lo & R_ET:
                if reg.seen == <int64_t>sock._seq:
                    continue
                reg.seen = sock._seq
            else:                       # level-triggered: stays a candidate, to the back of the line
                cands[num] = reg
            if reg.lo & R_ONESHOT:
                reg.off = True
            out.append((num, mask_value(lo, kinds)))
            if len(out) == maxevents:
                break
        return out

    def _pending(self):
        """Whether a watched socket is ready for what it is watched for."""
        cdef Registration reg
        for reg in self.candidates.values():
            if not reg.off and (reg.ready_lo() or reg.ready_kinds()):
                return True
        return False

    def __len__(self):
        return len(self.regs)
