"""The epoll-compatible shell: Berkeley sockets for middleboxes.

Layer: shells (beside _stack; above the core and io). ``aiomb.monitor(source)`` returns a passive
monitor socket (mOS's MOS_SOCK_MONITOR_STREAM): readable when new flows are pending, ``accept()``
gives a flow socket per flow (a connected socket: both sides' reassembled bytes to ``recv``,
their TCP states, the flow's events). ``aiomb.epoll()`` behaves like ``select.epoll`` over
monitor, flow and timer sockets (and real descriptors); its ``poll()`` drives the sources itself
when nothing is ready, so a plain synchronous loop runs a capture or a live port with no Trio.

Everything here is moved in batches: the engine's events reach a flow socket through the
dispatcher's inbox of that flow, once per batch (never a Python call per packet).

Mask bits: the low 32 are ``select``'s own (EPOLLIN, EPOLLRDHUP, EPOLLHUP, EPOLLERR, EPOLLET,
EPOLLONESHOT, ...). Every aiomb event kind has a bit of its own above them: bit 32 + k for the
kind of bit k (``aiomb.event_mask(kind, ...)``; custom events through ``mon.event_mask``), so
that they never collide.
"""

import errno
import os
import select
import time

from ._core import EVENT_SHIFT, Dispatcher, Engine, FlowSocketCore, FrameBatch, InterestList, MonitorCore, SocketCore
from ._errors import AiombError
from ._workers import shard_option
from .events._kinds import EventKind, split_kinds
from .flows._filter import compile_filter
from .flows._types import EndReason, Hook, Side, end_reason

EVENT_BITS = -1 << EVENT_SHIFT              # every aiomb event kind's bit
_IN, _RDHUP, _HUP, _ERR = select.EPOLLIN, select.EPOLLRDHUP, select.EPOLLHUP, select.EPOLLERR
_BASE_KINDS = (EventKind.NEW_DATA, EventKind.GAP, EventKind.FIN, EventKind.BUFFER_OVERRUN)


def event_mask(*kinds) -> int:
    """The epoll mask bits of built-in event kinds (bit 32 + the kind's bit)."""
    mask = 0
    for kind in split_kinds(list(kinds)):
        if not isinstance(kind, EventKind):
            raise TypeError(f"{kind!r} is a custom event: its bit depends on the monitor; use "
                            "mon.event_mask(kind)")
        mask |= 1 << (EVENT_SHIFT + kind.value.bit_length() - 1)
    return mask


class FlowSocket(FlowSocketCore):
    """One flow, as a connected socket (mOS's MOS_SOCK_MONITOR_STREAM_ACTIVE): made by
    :meth:`MonitorSocket.accept`.

    ``recv(bufsize, side)`` consumes the side's reassembled bytes (b"" at its end; a hole raises
    :class:`aiomb.StreamGap` once, then reading goes on after it; nothing ready yet raises
    BlockingIOError); ``peek``/``ppeek`` look without consuming. Readiness: EPOLLIN while bytes
    (or a hole) wait, EPOLLRDHUP once a side's FIN took effect, EPOLLHUP once the flow ended
    (``end_reason``, ``stats``), EPOLLERR while a limit dropped bytes (the BUFFER_OVERRUN events
    in ``events()``), and an event kind's bit while events of it wait in ``events()``.
    The queues and readiness live in the core (filled as the dispatcher routes each batch);
    per-flow state of the program's own goes in ``context`` (a dict).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        state = " closed" if self.closed else (" ended" if self.end_reason is not None else "")
        return f"<FlowSocket {self.fileno()} #{self.flow_id} {self.key}{state}>"

    def getpeername(self) -> tuple:
        """The server's address and port."""
        return (str(self.key.server_ip), self.key.server_port)

    def getsockname(self) -> tuple:
        """The client's address and port."""
        return (str(self.key.client_ip), self.key.client_port)

    def state(self, side):
        """The TCP state of ``side`` (:class:`aiomb.TcpState`)."""
        return self.flow.state(side)

    @property
    def client_state(self):
        return self.flow.client_state

    @property
    def server_state(self):
        return self.flow.server_state

    def last_packet(self, side) -> bytes | None:
        """A copy of the last frame ``side`` sent (``mtcp_getlastpkt``); needs the monitor's
        ``last_packets=True``."""
        if self.monitor._last is None:
            raise AiombError("the monitor keeps no packets: open it with aiomb.monitor(..., last_packets=True)")
        return self._last[int(Side(side))]

    def timer(self, delay: float, *, interval: float | None = None) -> "TimerSocket":
        """A timer of this flow on the stack's clock, cancelled when the flow ends (it then
        reports EPOLLHUP)."""
        self._check_open()
        if self.end_reason is not None:
            raise ValueError(f"flow #{self.flow_id} has ended: its timers could never fire")
        return self._driver.timer(delay, interval, self)

    def stop(self) -> None:
        """Stop monitoring this flow (mtcp_close of a monitoring socket): its streams stop
        (no more bytes are reassembled), nothing more is queued, and it leaves every epoll."""
        self.close()


class TimerSocket(SocketCore):
    """A timer on the stack's clock (a timerfd analogue): EPOLLIN once it has fired; ``read()``
    returns how many times it fired since the last read. A flow's timer reports EPOLLHUP when
    its flow ends (it is then cancelled)."""

    def __init__(self, driver: "_Driver", timer_id: int, flow: FlowSocket | None):
        self._driver = driver
        self.timer_id = timer_id
        self.flow = flow
        self._count = 0

    def __repr__(self) -> str:
        return f"<TimerSocket {self.fileno()} timer {self.timer_id}{' closed' if self.closed else ''}>"

    def read(self) -> int:
        """Expirations since the last read; BlockingIOError when there was none."""
        self._check_open()
        if not self._count:
            raise BlockingIOError(errno.EAGAIN, "the timer has not fired since the last read")
        n, self._count = self._count, 0
        self._clear(_IN)
        return n

    def close(self) -> None:
        """Disarm the timer and close it; idempotent."""
        if not self.closed:
            self._mark_closed()
            self._driver.engine.cancel_timer(self.timer_id)
            self._driver.timers.pop(self.timer_id, None)

    cancel = close

    def _fired(self, n: int) -> None:
        self._count += n
        self._set(_IN)


class _Driver:
    """One source run through one engine and dispatcher, a batch at a time, for its monitors."""

    def __init__(self, source, *, batch_size: int, **engine_options):
        if not isinstance(batch_size, int) or not 1 <= batch_size <= 1 << 16:
            raise ValueError(f"batch_size must be an int from 1 to 65536, got {batch_size!r}")
        self.source = source
        self.engine = Engine(**shard_option(engine_options))
        self.engine.translation_hook = getattr(source, "translation_hook", None)     # a steered worker's port
        self.dispatcher = Dispatcher(self.engine)
        self.timer_sub = self.dispatcher.subscribe(EventKind.TIMER)
        self.error_sub = None
        self.batch = FrameBatch(batch_size)
        self.pos = 0                    # the batch's next frame to process (captures stop at times, a
                                        # handler's raise leaves the rest for the next step)
        self.verdicts_due = False       # a live batch is read: its frames wait for their verdicts
        self.monitors: list[MonitorSocket] = []
        self.timers: dict[int, TimerSocket] = {}
        self.finished = False
        self.ending = False             # the source has ended: its flows end (a piece at a time)
        self.reached = False
        self.live = bool(getattr(source, "live", False))
        source.open()
        self.opened = True

    def now(self) -> float:
        return self.source.now() if self.live else self.engine.now * 1e-9

    def start_time(self) -> float | None:
        """A capture's clock: the engine's time, or before the first packet that packet's time
        (None at the end)."""
        if self.engine.now or self.finished:
            return self.engine.now * 1e-9 if not self.finished else None
        if not self.fill():
            return None
        return self.batch.ts_at(self.pos)

    def fill(self) -> bool:
        """Have frames to process (a capture reads its next batch); False at the end."""
        if self.pos < self.batch.count:
            return True
        if self.ending:
            return False
        count = self.source.read(self.batch)
        self.pos = 0
        if count is None:
            self.ending = True
            self.end()
            return False
        return True

    def end(self) -> None:
        """The source has ended: every open flow ends. When their events reach
        max_event_memory, the rest end at the next step, after the program has read those."""
        self.finished = self.engine.finish(end_reason(self.source))
        self.deliver()

    def timer(self, delay, interval, flow: FlowSocket | None) -> TimerSocket:
        if self.live:
            self.engine.expire(self.source.now())       # the clock is the wall clock's now
        timer_id = self.engine.set_timer(delay, interval=interval, flow=flow.flow if flow else None)
        sock = TimerSocket(self, timer_id, flow)
        self.timers[timer_id] = sock
        return sock

    def step(self, wait: float = 0.0, until: float | None = None) -> bool:
        """Process the next frames and deliver their events; False once the source has ended.

        A live port processes what it received, waiting up to ``wait`` seconds for frames. A
        capture processes up to a batch, stopping at the frame at or after ``until`` (seconds of
        packet time): its clock then reaches ``until`` (what is due fires) and True is returned
        with ``reached`` set. An exception from an inline handler propagates once; the next step
        goes on after the frame it came from (a live batch gets its verdicts after its last frame)."""
        self.reached = False
        if self.finished:
            return False
        source, engine = self.source, self.engine
        if self.ending:
            self.end()
            return not self.finished
        if self.live:
            if not self.verdicts_due:
                if source.read(self.batch, wait) is None:
                    self.ending = True
                    self.end()
                    return not self.finished
                self.pos = 0
                self.verdicts_due = True
            try:
                while self.pos < self.batch.count:
                    self.process()
                    if self.pos < self.batch.count:
                        self.deliver()  # stopped at max_event_memory: the frames wait for their verdicts
            finally:
                if self.pos == self.batch.count:    # also when the last frame's handler raised
                    self.verdicts_due = False
                    if self.pos:
                        source.apply(self.batch)
            engine.expire(source.now())     # stopped at max_event_memory: the rest is due at the next step
        elif self.fill():
            if not engine.now:          # the clock starts at the first packet: timers set before count from it
                if not engine.expire(self.batch.ts_at(self.pos)):
                    self.deliver()
                    return True
                until = Epoll._until(self, until)
            self.process(until)
            if self.pos < self.batch.count and not engine.paused:
                self.reached = engine.expire(until)
        self.deliver()
        return not self.finished

    def process(self, until: float | None = None) -> None:
        """Process the batch from ``pos`` (up to ``until``), moving ``pos`` to where it stopped,
        also when a handler raised out of it (the engine's ``resume_at``; None: nothing left)."""
        try:
            self.pos = self.engine.process(self.batch, self.pos, until)
        except BaseException:
            at = self.engine.resume_at
            self.pos = self.batch.count if at is None else at
            raise

    def deliver(self) -> None:
        d = self.dispatcher
        d.dispatch()                    # flow sockets and monitors are filled as it routes
        for mon in self.monitors:
            if mon._error_sub is not None and d.pending(mon._error_sub):
                mon._errors += d.drain(mon._error_sub)
                mon._set(_ERR)
        for ev in d.drain(self.timer_sub):
            timer_id, n = ev.value
            sock = self.timers.get(timer_id)
            if sock is not None:
                sock._fired(n)
        for timer_id, sock in list(self.timers.items()):     # a flow's timer went with its flow
            if sock.flow is not None and not self.engine.timer_armed(timer_id):
                del self.timers[timer_id]
                sock._set(_HUP)
        if self.finished:
            for mon in self.monitors:
                mon._set(_HUP)

    def close(self) -> None:
        """Close the source (its last monitor closes). Nothing can feed its open flows any more:
        they end now, INTERRUPTED (those a source that had ended was ending, as it ends them),
        so that their flow sockets report EPOLLHUP and no poll() waits for them."""
        if self.opened:
            self.opened = False
            try:
                if not self.finished:
                    reason = end_reason(self.source) if self.ending else EndReason.INTERRUPTED
                    while not self.engine.finish(reason):
                        self.dispatcher.dispatch()      # stopped at max_event_memory: the sockets take a piece
                    self.finished = True
                    self.deliver()
            finally:
                self.engine.close()
                self.source.close()


class MonitorSocket(MonitorCore):
    """A passive monitor socket (mOS's MOS_SOCK_MONITOR_STREAM): made by :func:`aiomb.monitor`.

    EPOLLIN while new flows wait for ``accept()``; EPOLLERR while malformed packets wait in
    ``errors()``; EPOLLHUP once the source has ended (a capture's end). ``monitor(filter=...)``
    adds another monitor socket on the same source (one engine: each packet is processed once).
    The flow sockets are made in the core as the dispatcher routes each batch.
    """

    def __init__(self, driver: _Driver, filter, *, udp: bool, sides: str, last_packets: bool, kinds):
        if sides not in ("both", "client", "server", "none"):
            raise ValueError(f"sides must be 'both', 'client', 'server' or 'none', got {sides!r}")
        self._driver = driver
        self._filter = compile_filter(filter)
        self._udp = udp
        self._kinds = set(split_kinds(list(kinds))) if kinds else set()
        engine = driver.engine
        self._limit = engine.max_buffer
        self._wanted = self._bits(self._kinds)
        self._socket_class = FlowSocket
        self._last = {} if last_packets else None   # flow id -> each side's last frame
        self._mbox = engine.add_middlebox(self._filter)
        self._acc = driver.dispatcher.listen(list(_BASE_KINDS) + list(self._kinds), middlebox=self._mbox,
                                             udp=udp)
        self._listen(driver.dispatcher, self._acc)
        self._errors: list = []
        self._error_sub = None
        self._handlers = []                         # tokens of the inline handlers on its middlebox
        if sides != "both":
            keep = {"client": (Side.SERVER,), "server": (Side.CLIENT,), "none": (Side.CLIENT, Side.SERVER)}
            self._handlers.append(engine.add_handler(
                EventKind.CONN_START, lambda view: [view.flow.set_buffering(s, False) for s in keep[sides]],
                middlebox=self._mbox))
        if last_packets:
            self._handlers.append(engine.add_handler(EventKind.PACKET_IN, self._keep_packet, middlebox=self._mbox,
                                                     hook=Hook.SENDER))
        driver.monitors.append(self)

    def __repr__(self) -> str:
        f = f" filter={self._filter.expression!r}" if self._filter is not None else ""
        return f"<MonitorSocket {self.fileno()}{f}{' closed' if self.closed else ''}>"

    def _bits(self, kinds) -> int:
        """The kinds' bits in this monitor's engine."""
        bits = 0
        for kind in kinds:
            bits |= 1 << self._driver.engine.event_bit(kind)
        return bits

    def _keep_packet(self, view) -> None:
        last = self._last.get(view.flow.id)
        if last is None:
            last = self._last[view.flow.id] = [None, None]
        last[int(view.side)] = view.frame

    @property
    def engine(self) -> Engine:
        """The engine under this monitor (for inline handlers: ``mon.engine.add_handler``)."""
        return self._driver.engine

    @property
    def source(self):
        return self._driver.source

    @property
    def finished(self) -> bool:
        """Whether the source has ended (a capture read to its end)."""
        return self._driver.finished

    def time(self) -> float:
        """The stack's clock: packet time on captures, the wall clock on live ports."""
        return self._driver.now()

    def event_mask(self, *kinds) -> int:
        """The epoll mask bits of event kinds (custom events included) for this monitor's sockets;
        flow sockets accepted from it queue those events."""
        kinds = split_kinds(list(kinds))
        new = [k for k in kinds if k not in self._kinds]
        if new:
            self._kinds.update(new)
            self._wanted |= self._bits(new)
            self._driver.dispatcher.widen(self._acc, new)
        return self._bits(kinds) << EVENT_SHIFT

    def errors(self) -> list:
        """The ERROR events (malformed packets) since the last call; clears EPOLLERR."""
        out, self._errors = self._errors, []
        self._clear(_ERR)
        return out

    def watch_errors(self) -> None:
        """Queue ERROR events (malformed packets) on this socket (EPOLLERR)."""
        if self._error_sub is None:
            self._error_sub = self._driver.dispatcher.subscribe(EventKind.ERROR)

    def monitor(self, filter=None, *, udp: bool = False, sides: str = "both", last_packets: bool = False,
                events=()) -> "MonitorSocket":
        """Another monitor socket on the same source, with a filter of its own. Before the first
        packet only (a middlebox of the engine each); OSError (EBADF) once this one is closed."""
        self._check_open()
        return MonitorSocket(self._driver, filter, udp=udp, sides=sides, last_packets=last_packets,
                             kinds=events)

    def timer(self, delay: float, *, interval: float | None = None) -> TimerSocket:
        """A timer on the stack's clock, ``delay`` seconds from now, then every ``interval``."""
        self._check_open()
        return self._driver.timer(delay, interval, None)

    def statistics(self):
        """The engine's :class:`aiomb.EngineStatistics`."""
        return self._driver.engine.statistics()

    def step(self, wait: float = 0.0) -> bool:
        """Process the next batch of the source without an epoll (False once it has ended)."""
        return self._driver.step(wait)

    def close(self) -> None:
        """Close this monitor; the source closes with its last monitor (a port detaches). The
        flow sockets it gave go on while another monitor keeps the source open; with the
        source they end (EPOLLHUP, ``end_reason`` INTERRUPTED). Flows not accepted are dropped."""
        if self.closed:
            return
        self._mark_closed()
        self._drop_pending()
        self._driver.dispatcher.close_acceptor(self._acc)
        if self._error_sub is not None:
            self._driver.dispatcher.unsubscribe(self._error_sub)
            self._error_sub = None
        engine = self._driver.engine
        if not engine.statistics().flows_active:
            # no flow of its can be open: its middlebox goes (another monitor may take the index);
            # with flows open, its handlers go on serving the flow sockets it accepted
            for token in self._handlers:
                engine.remove_handler(token)
            engine.remove_middlebox(self._mbox)
        self._driver.monitors.remove(self)
        if not self._driver.monitors:
            self._driver.close()

    def __enter__(self) -> "MonitorSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def monitor(source, filter=None, *, udp: bool = False, sides: str = "both", last_packets: bool = False,
            events=(), batch_size: int = 2048, **engine_options) -> MonitorSocket:
    """A passive monitor socket over ``source`` (:func:`aiomb.capture`, :func:`aiomb.port`):
    accept its flows (those ``filter`` accepts; UDP ones with ``udp=True``) as flow sockets.

    ``sides`` chooses which sides' bytes are kept for ``recv`` ("both", "client", "server",
    "none"); ``last_packets`` keeps a copy of each side's last frame; ``events`` lists further
    kinds the flow sockets queue (``mon.event_mask`` adds more). ``engine_options`` go to
    :class:`aiomb.Engine`. The source is opened now (a port attaches) and closed with the last
    monitor. Synchronous: no Trio. Layer: shells.
    """
    driver = _Driver(source, batch_size=batch_size, **engine_options)
    try:
        return MonitorSocket(driver, filter, udp=udp, sides=sides, last_packets=last_packets, kinds=events)
    except BaseException:
        driver.close()
        raise


class Epoll(InterestList):
    """An epoll object (``select.epoll``'s interface) over aiomb's sockets and real descriptors.

    ``poll(timeout=-1, maxevents=-1)`` returns [(fd, events), ...]. A live port is read at every
    poll (its frames do not wait for the program); a capture waits for the program: when nothing
    is ready, poll reads the captures of the registered sockets a batch at a time until something
    is, or the timeout passes: on captures the timeout is counted in packet time (a capture is replayed as
    fast as it is read), with a live port or real descriptors in wall time. Once every source
    has ended (a capture's end, its last monitor closed), with nothing else to wait for, it
    returns [] at once. Level-triggered by default; EPOLLET and EPOLLONESHOT as epoll's.
    ``fileno()`` is a real epoll descriptor, readable while events are pending or a capture has
    more to read, so that the object nests in ``select.epoll``, asyncio (``loop.add_reader``) or
    Trio (``wait_readable``): whoever sees it readable calls ``poll(0)``, which drives the
    sources one batch (never blocks).
    ``register``/``modify``/``unregister`` and the readiness rules are the core's
    (:class:`InterestList`); this class adds the descriptors and the waiting.
    """

    def __init__(self, sizehint: int = -1, flags: int = 0):
        self._real = select.epoll(sizehint, flags)
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._real.register(self._wake_fd, select.EPOLLIN)
        self._real_fds: set[int] = set()
        self._port_fds: set[int] = set()

    def __repr__(self) -> str:
        return f"<aiomb.Epoll {len(self)} socket(s){' closed' if self._closed else ''}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        self._check()
        return self._real.fileno()

    def __enter__(self) -> "Epoll":
        self._check()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the epoll object (not the sockets); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._forget_all()
        self._real.close()
        os.close(self._wake_fd)

    # -- what the core asks of the shell ------------------------------------------------------

    def _register_real(self, fd: int, eventmask: int) -> None:
        self._real.register(fd, eventmask & 0xFFFFFFFF)
        self._real_fds.add(fd)

    def _modify_real(self, fd: int, eventmask: int) -> None:
        self._real.modify(fd, eventmask & 0xFFFFFFFF)

    def _unregister_real(self, fd: int) -> None:
        self._real.unregister(fd)
        self._real_fds.discard(fd)

    def _driver_added(self, driver) -> None:
        """A socket of a new source was registered: a port's descriptors are waited on."""
        if driver.live:
            for pfd in driver.source.wait_fds():
                self._real.register(pfd, select.EPOLLIN)
                self._port_fds.add(pfd)
        self._signal()

    def _driver_removed(self, driver) -> None:
        if driver.live:
            for pfd in driver.source.wait_fds():
                self._port_fds.discard(pfd)
                self._real.unregister(pfd)

    def _wake(self) -> None:
        """A watched socket turned ready: fileno() becomes readable."""
        if not self._woken:
            os.eventfd_write(self._wake_fd, 1)
            self._woken = True

    def _drivers(self) -> list:
        return list(self._driver_uses)

    def _real_ready(self, room: int) -> list:
        """Real descriptors the user registered that are ready now."""
        if not self._real_fds or room <= 0:
            return []
        events = self._real.poll(0, len(self._real_fds) + len(self._port_fds) + 1)
        return [(fd, ev) for fd, ev in events if fd in self._real_fds][:room]

    def poll(self, timeout: float | None = -1, maxevents: int = -1) -> list:
        """Wait for events; returns [(fd, events), ...] (see the class docstring). Blocks."""
        self._check()
        if not isinstance(maxevents, int):
            raise TypeError(f"'{type(maxevents).__name__}' object cannot be interpreted as an integer")
        if maxevents == -1:
            maxevents = 1 << 30
        elif maxevents <= 0:
            raise ValueError(f"maxevents must be greater than 0, got {maxevents}")
        block = timeout is None or timeout < 0
        drivers = self._drivers()
        wall = bool(self._real_fds) or any(d.live and not d.finished for d in drivers)
        started = time.monotonic()
        deadlines = {}                  # a capture's poll deadline, in its packet time
        if timeout == 0 and not wall:   # poll(0): one step of each capture, for outer loops
            for d in drivers:
                if not d.finished:
                    d.step(until=self._until(d, None))
            ready = self._collect(maxevents)
            self._signal()
            return ready
        if not block and not wall:
            for d in drivers:
                base = d.start_time()
                if base is not None:
                    deadlines[d] = base + timeout
        try:
            while True:
                for d in drivers:           # a port's frames do not wait for the program: take them
                    if d.live and not d.finished:
                        d.step(0.0)
                ready = self._collect(maxevents)
                ready += self._real_ready(maxevents - len(ready))
                if ready:
                    return ready
                running = [d for d in drivers if not d.finished]
                captures = [d for d in running if not d.live]
                if not running and not wall:
                    return []               # every capture has ended: nothing more will come
                if not wall:                # captures only: their time is packet time
                    if not block and all(d.reached and d.now() >= deadlines.get(d, 0) for d in captures):
                        return []
                    for d in captures:
                        d.step(until=self._until(d, deadlines.get(d)))
                    continue
                for d in captures:          # captures beside ports or descriptors: a batch each
                    d.step(until=self._until(d, None))
                if captures:
                    continue
                left = None if block else timeout - (time.monotonic() - started)
                if left is not None and left <= 0:
                    return self._real_ready(maxevents)
                self._real_wait(self._wait_time(running, left))
        finally:
            self._signal()

    @staticmethod
    def _until(driver, deadline):
        """Where a capture's processing stops: the poll's deadline, or the next timer's time (so
        that a timer's socket turns readable with the stack as it was at that time)."""
        due = driver.engine.next_timer
        if due is None:
            return deadline
        return due if deadline is None else min(due, deadline)

    def _wait_time(self, running, left):
        """How long to wait for a descriptor: the timeout left, the next live timer, a tick."""
        wait = left
        for d in running:
            limit = d.source.tick
            due = d.engine.next_timer
            if due is not None:
                limit = min(limit, max(0.0, due - d.now()))
            wait = limit if wait is None else min(wait, limit)
        return wait

    def _real_wait(self, wait) -> None:
        """Wait until a port or a real descriptor is readable, or ``wait`` seconds (the wake-up
        event is cleared first: poll() itself is the one waiting)."""
        if self._woken:
            os.eventfd_read(self._wake_fd)
            self._woken = False
        self._real.poll(-1 if wait is None else wait)

    def _signal(self) -> None:
        """Make fileno() readable exactly while something is pending or a capture has more to
        read (an outer loop then calls poll(0))."""
        if self._closed:
            return
        pending = self._pending() or any(not d.finished and not d.live for d in self._driver_uses)
        if pending:
            self._wake()
        elif self._woken:
            os.eventfd_read(self._wake_fd)
            self._woken = False

    async def apoll(self, timeout: float | None = None, maxevents: int = -1) -> list:
        """``poll`` for Trio code: waits on ``fileno()`` without blocking the loop, then
        ``poll(0)``; [] after ``timeout`` seconds (wall clock)."""
        import trio

        with trio.move_on_after(float("inf") if timeout is None else timeout):
            while True:
                ready = self.poll(0, maxevents)
                if ready:
                    return ready
                if all(d.finished for d in self._drivers()) and not self._real_fds:
                    return []
                await trio.lowlevel.wait_readable(self.fileno())
        return []


def epoll(sizehint: int = -1, flags: int = 0) -> Epoll:
    """An epoll object over aiomb's monitor, flow and timer sockets (see :class:`Epoll`)."""
    return Epoll(sizehint, flags)
