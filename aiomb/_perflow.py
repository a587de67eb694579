"""Per-flow coroutines: :meth:`Stack.spawn_per_flow` and :meth:`Stack.serve`.

Layer: io/_stack (beside _stack.py, whose pump calls in here). A dispatcher acceptor gives each
new flow a :class:`~aiomb.FlowInbox`; the pump hands that inbox's events to the flow's
:class:`FlowTask`: stream bytes and holes to its :class:`FlowStream` of that side (bounded),
the other events to its record of what happened (the first event of each kind, per side), the
flow's end last. A :class:`PerFlow` group starts one coroutine per FlowTask in a nursery of its
own, at most ``limit`` at once. Nothing here decides who gets which event: the dispatcher does.

Backpressure. A side's queue holds at most ``max_chunks`` items (chunks and holes) from earlier
batches, and the items of the batch being delivered: one batch can bring a side many (a hole and
a chunk per hole the peer ACKed past), and they go in whole. When it is full the pump waits for
the coroutine (a capture pauses; counted) while the task that last read that side is busy:
running, or awaiting something the stack does not deliver (a socket, ``trio.sleep``). When no
task reads that side, or the reader is itself waiting for the stack (its flow's events or bytes,
``sleep``, a ``stack.timer``, a subscription's batch, another flow's stream: ``Stack._blocking``),
waiting would never end, so the bytes the queue cannot take become a hole, counted in
``overruns``, that the stream reports where it is (never glued over).
"""

import collections
import contextlib
import inspect
import logging
import math
from collections.abc import Iterator

import attrs
import trio

from ._errors import DelimiterNotFound, FlowEnded, StreamGap
from .events._kinds import EventKind, split_kinds
from .flows._filter import compile_filter
from .flows._types import Side

_log = logging.getLogger("aiomb")

WAITABLE = (EventKind.CONN_START, EventKind.SYN_ACK, EventKind.ESTABLISHED, EventKind.FIN, EventKind.RST,
            EventKind.UDP_START)
"""The kinds ``FlowTask.wait`` knows without ``events=``; the flow's end always comes."""
ENDS = (EventKind.CONN_END, EventKind.UDP_END)
STREAM_KINDS = (EventKind.NEW_DATA, EventKind.GAP)
SIDES = {"both": (Side.CLIENT, Side.SERVER), "client": (Side.CLIENT,), "server": (Side.SERVER,), "none": ()}


@attrs.frozen
class Gap:
    """The marker a flow stream yields for a hole when opened with ``gaps="mark"``."""

    offset: int
    length: int


class FlowStream:
    """One flow side's reassembled bytes for a coroutine: ``async for chunk in stream``.

    Yields ``bytes`` chunks in stream order. A hole raises :class:`aiomb.StreamGap` (iterate
    again to continue after it), or, with ``gaps="mark"``, is yielded as a :class:`Gap`.
    Iteration ends when the flow ends, after the chunks already queued. Made for each flow by
    :meth:`Stack.serve` and :meth:`Stack.spawn_per_flow` (``flow.stream(side)``). Reads block
    until bytes come; once the flow has ended they answer from what it delivered without raising
    a cancellation. Holds at most ``max_chunks`` items (chunks and holes) from earlier batches,
    and those of the batch being delivered (see the module's note on backpressure).
    """

    def __init__(self, task: "FlowTask", side: Side, gaps: str, max_chunks: int):
        self._task = task
        self.side = side
        self._gaps = gaps
        self._max = max_chunks
        self._items: collections.deque = collections.deque()
        self._rest = b""            # bytes read_until read past its delimiter
        self._consumer = None       # the Trio task that last took from the stream
        self._new = 0               # how many of the items are the batch being delivered (the last ones)
        self._ended = False
        self._waiter = None         # an Event a reader waits on (made when one does)

    def __repr__(self) -> str:
        return f"<FlowStream {self.side} of {self._task.key}>"

    @property
    def flow(self):
        """The live :class:`~aiomb.Flow` whose side this is."""
        return self._task.flow

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self._take()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, Gap) and self._gaps == "raise":
            raise StreamGap(item.offset, item.length, f"{self.side} stream of {self._task.key}")
        return item

    async def receive(self) -> bytes:
        """The next chunk; raises StreamGap for a hole and trio.EndOfChannel at the flow's end."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise trio.EndOfChannel from None

    async def read_until(self, delimiter: bytes, *, max_size: int = 65536) -> bytes:
        """The stream's next bytes up to and including ``delimiter``, across chunks.

        Bytes after the delimiter stay in the stream. Raises :class:`aiomb.FlowEnded` when the
        flow ends first (its ``partial``: the bytes read), :class:`aiomb.StreamGap` at a hole
        (also with ``gaps="mark"``; ``partial``: the bytes before it, taken from the stream),
        :class:`aiomb.DelimiterNotFound` when ``max_size`` bytes hold no delimiter (they stay in
        the stream), ValueError for an empty delimiter or a bad ``max_size``. Blocks.
        """
        if not isinstance(delimiter, bytes | bytearray) or not delimiter:
            raise ValueError(f"read_until needs a non-empty bytes delimiter, got {delimiter!r}")
        if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < len(delimiter):
            raise ValueError(f"max_size must be an int of at least len(delimiter), got {max_size!r}")
        buf = bytearray()
        start = 0
        while True:
            item = await self._take()
            if item is None:
                task = self._task
                raise FlowEnded(f"flow {task.key} ended ({task._end.reason}) before {bytes(delimiter)!r} "
                                f"on its {self.side} stream", key=task.key, reason=task._end.reason,
                                partial=bytes(buf))
            if isinstance(item, Gap):
                raise StreamGap(item.offset, item.length, f"{self.side} stream of {self._task.key}",
                                partial=bytes(buf))
            buf += item
            i = buf.find(delimiter, start)
            if 0 <= i <= max_size - len(delimiter):
                end = i + len(delimiter)
                self._rest = bytes(buf[end:])
                return bytes(buf[:end])
            if len(buf) >= max_size:
                self._rest = bytes(buf)
                raise DelimiterNotFound(f"no {bytes(delimiter)!r} in the first {max_size} bytes of the {self.side} "
                                        f"stream of {self._task.key}; they stay in the stream (read them, or "
                                        "pass a larger max_size)", buffered=len(buf))
            start = max(0, len(buf) - len(delimiter) + 1)

    async def _take(self):
        """The next item (bytes or Gap), or None at the end; blocks while there is none."""
        task = self._task
        if task._end is None:
            await trio.lowlevel.checkpoint_if_cancelled()
        blocked = False
        while True:
            if self._rest:
                item, self._rest = self._rest, b""
                break
            if self._items:
                item = self._items.popleft()
                self._new = min(self._new, len(self._items))
                task._poke()
                break
            if self._ended:
                item = None
                task._maybe_cancel()
                break
            await task._block(self)
            blocked = True
        self._consumer = trio.lowlevel.current_task()
        if not blocked:
            await trio.lowlevel.cancel_shielded_checkpoint()     # a schedule point, never a cancellation
        return item

    def _overrun(self, item) -> None:
        """Take ``item`` (bytes or Gap) as a hole: the queue is full and nobody will empty it."""
        offset, length = item
        last = self._items[-1] if self._items else None
        if isinstance(last, Gap) and last.offset + last.length == offset:
            self._items[-1] = Gap(last.offset, last.length + length)
        else:
            self._items.append(Gap(offset, length))


@attrs.frozen(kw_only=True)
class PerFlowStatistics:
    """A snapshot of one :meth:`Stack.spawn_per_flow` registration.

    ``accepted`` flows matched its filter; each was ``started``, is ``queued``, or was
    ``skipped`` (``overflow="skip"`` at the limit, or the queue full). Started coroutines are
    ``running``, or ``finished`` (returned, or let :class:`aiomb.FlowEnded` out), ``failed`` (an
    exception, logged) or ``cancelled`` (at their flow's end or the stack's exit). ``overruns``
    chunks (``overrun_bytes`` captured bytes) became holes because no task read their side (the
    holes they join are not counted); ``pauses`` counts the times the pump waited for a
    coroutine that was behind.
    """

    limit: int | None
    overflow: str
    max_queued: int
    accepted: int
    started: int
    running: int
    max_running: int
    queued: int
    skipped: int
    finished: int
    failed: int
    cancelled: int
    overruns: int
    overrun_bytes: int
    pauses: int


class FlowTask:
    """A flow as its coroutine sees it (the ``flow`` given to a :meth:`Stack.spawn_per_flow`
    function): the live :class:`~aiomb.Flow` plus awaitables for its events and bytes.

    ``key``, ``flow_id``, ``flow`` (the live handle), ``client_state``/``server_state``/``state``,
    ``statistics()`` and ``end_reason`` read the flow now. ``await wait(kind)`` returns the
    flow's first event of ``kind``, ``stream(side)`` its bytes, ``read_until`` bytes up to a
    delimiter, ``ended()`` its end event; ``sleep`` and ``move_on_after`` count the stack's
    clock (packet time on captures). When the flow ends, reads answer from what it delivered
    (streams stop, waits for what never came raise :class:`aiomb.FlowEnded`), and once nothing
    is left to read the coroutine is cancelled. Layer: io/_stack.
    """

    def __init__(self, group: "PerFlow", inbox):
        self._group = group
        self._inbox = inbox                 # until the coroutine is done (then forgotten)
        self.flow = inbox.flow
        self.key = inbox.key
        self.flow_id = inbox.flow_id
        self._seen: dict = {}               # (kind, side or None) -> the first such event
        self._end = None                    # the flow's CONN_END / UDP_END event
        self._waiter = None                 # an Event wait()/ended() wait on (made when one does)
        self._scope = trio.CancelScope()
        self._state = "queued"
        self._streams = tuple(FlowStream(self, s, group.gaps, group.max_chunks) if s in group.sides else None
                              for s in (Side.CLIENT, Side.SERVER))

    def __repr__(self) -> str:
        return f"<FlowTask #{self.flow_id} {self.key} {self.client_state}/{self.server_state} {self._state}>"

    # ---- the flow now -----------------------------------------------------------------

    @property
    def client_state(self):
        """The client's TCP state now."""
        return self.flow.client_state

    @property
    def server_state(self):
        """The server's TCP state now."""
        return self.flow.server_state

    def state(self, side):
        """The TCP state of ``side`` now."""
        return self.flow.state(side)

    def statistics(self):
        """The flow's :class:`~aiomb.FlowStatistics` now (its final figures once it has gone)."""
        return self.flow.statistics()

    @property
    def end_reason(self):
        """How the flow ended (:class:`~aiomb.EndReason`), or None while it is open."""
        return self._end.reason if self._end is not None else None

    def time(self) -> float:
        """The stack's clock: packet time on captures, the wall clock on live ports."""
        return self._group._stack.time()

    # ---- awaiting the flow ------------------------------------------------------------

    def stream(self, side) -> FlowStream:
        """The :class:`FlowStream` of ``side``'s bytes (the same object at every call).

        Raises ValueError when the registration does not keep that side (``sides=``).
        """
        stream = self._streams[Side(side)]
        if stream is None:
            raise ValueError(f"this spawn_per_flow keeps no {Side(side)} bytes (sides={self._group.sides_name!r}); "
                             "pass sides='both' or that side")
        return stream

    async def read_until(self, delimiter: bytes, side, *, max_size: int = 65536) -> bytes:
        """``side``'s next bytes up to and including ``delimiter`` (see :meth:`FlowStream.read_until`)."""
        return await self.stream(side).read_until(delimiter, max_size=max_size)

    async def wait(self, kind, *, side=None):
        """The flow's first event of ``kind`` (of ``side``, when given): at once if it already
        fired, else when it does. Raises :class:`aiomb.FlowEnded` if the flow ends first,
        ValueError for a kind this registration does not collect (add it with ``events=``;
        stream bytes come from :meth:`stream`). Blocks.
        """
        kinds = split_kinds(kind)
        if len(kinds) != 1:
            raise ValueError(f"wait() takes one event kind, got {kind!r}")
        kind = kinds[0]
        if kind not in self._group.kinds:
            if kind in STREAM_KINDS:
                raise ValueError(f"wait({kind}) is not how bytes come: read flow.stream(side)")
            raise ValueError(f"this spawn_per_flow does not collect {kind} events; pass events=[{kind!r}, ...]")
        if side is not None:
            side = Side(side)
        if self._end is None:
            await trio.lowlevel.checkpoint_if_cancelled()
        while (ev := self._seen.get((kind, side))) is None:
            if self._end is not None:
                self._maybe_cancel()
                raise FlowEnded(f"flow {self.key} ended ({self._end.reason}) before {kind}"
                                f"{'' if side is None else f' from the {side}'}", key=self.key, reason=self._end.reason)
            await self._block(self)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return ev

    async def ended(self):
        """The flow's end event (CONN_END or UDP_END, with ``reason`` and ``stats``); blocks until then."""
        if self._end is None:
            await trio.lowlevel.checkpoint_if_cancelled()
        while self._end is None:
            await self._block(self)
        self._maybe_cancel()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return self._end

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` on the stack's clock (packet time on captures). Blocks; the flow's end
        cancels it, as it cancels the coroutine."""
        timer = self._group._stack.timer(seconds)
        try:
            await timer.wait()          # the pump does not wait for a task waiting for it
        finally:
            timer.cancel()

    @contextlib.contextmanager
    def move_on_after(self, seconds: float) -> Iterator[trio.CancelScope]:
        """``with flow.move_on_after(s) as scope:`` cancels its body ``s`` seconds later on the stack's
        clock (packet time on captures: ``trio.move_on_after`` counts Trio's clock, which a capture
        does not advance); ``scope.cancelled_caught`` says whether it did. Not async."""
        timer = self._group._stack.timer(seconds)
        with trio.CancelScope() as scope:
            timer._on_fire = scope.cancel
            timer._waiting = True       # once it fires, the pump lets the body see that moment
            try:
                yield scope
            finally:
                timer._waiting = False
                timer.cancel()

    # ---- plumbing ---------------------------------------------------------------------

    async def _block(self, owner) -> None:
        """Wait until the pump wakes ``owner`` (this task's record of events, or one of its streams)."""
        self._group._behind.discard(self)
        waiter = owner._waiter
        if waiter is None:
            waiter = owner._waiter = trio.Event()
        with self._group._stack._blocking():
            await waiter.wait()

    def _wake(self, owner) -> None:
        """Wake the tasks waiting on ``owner``; the pump then gives them turns until they wait again."""
        waiter = owner._waiter
        if waiter is not None:
            owner._waiter = None
            waiter.set()
            if self._state == "running":
                self._group._behind.add(self)

    def _poke(self) -> None:
        self._group._stack._poke()

    def _may_wait_for(self, stream: FlowStream) -> bool:
        """Whether the pump may wait for room in ``stream``: its reader is busy, not waiting for the stack."""
        reader = stream._consumer
        return (self._state == "running" and reader is not None and reader not in self._group._stack._blocked
                and inspect.getcoroutinestate(reader.coro) != inspect.CORO_CLOSED)

    async def _deliver(self, events: list, ended: bool) -> None:
        """Hand the coroutine its flow's events (the pump; waits while a busy reader is behind)."""
        if self._state == "done":
            return
        streams = self._streams
        for stream in streams:
            if stream is not None:
                stream._new = 0
        for ev in events:
            kind = ev.kind
            if kind is EventKind.NEW_DATA:
                if ev.value is None:        # the side's buffering was turned off
                    continue
                await self._put(streams[ev.side], ev.value, ev.offset, ev.length)
            elif kind is EventKind.GAP:
                await self._put(streams[ev.side], Gap(ev.offset, ev.length), ev.offset, ev.length)
            else:
                self._seen.setdefault((kind, None), ev)
                if ev.side is not None:
                    self._seen.setdefault((kind, ev.side), ev)
                if kind in ENDS:
                    self._end = ev
                self._wake(self)
        for stream in streams:
            if stream is not None:
                if ended:
                    stream._ended = True
                if stream._items or ended:
                    self._wake(stream)
        if ended:
            self._maybe_cancel()        # after the wake: a read woken with the end returns it

    def _maybe_cancel(self) -> None:
        """Cancel the coroutine once its flow has ended and it has nothing left to read: no
        chunk waits in a stream that one of its tasks reads."""
        if self._end is None or not self._group.cancel_at_end or self._scope.cancel_called:
            return
        for stream in self._streams:
            if stream is not None and stream._consumer is not None and (stream._items or stream._rest):
                return
        self._scope.cancel()

    async def _put(self, stream: FlowStream | None, item, offset: int, length: int) -> None:
        if stream is None or self._state == "done":
            return
        group = self._group
        paused = False
        while len(stream._items) - stream._new >= stream._max:     # the batch being delivered goes in whole
            self._wake(stream)          # what this batch brought so far, first
            if not self._may_wait_for(stream):
                if not isinstance(item, Gap):   # a hole already was one: no captured byte lost
                    group._overruns += 1
                    group._overrun_bytes += length
                stream._overrun((offset, length))
                return
            if not paused:
                paused = True
                group._pauses += 1
                group._stack._pauses += 1
            await group._stack._wait_for_progress()
            if self._state == "done":
                return
        stream._items.append(item)
        stream._new += 1

    def _finish(self) -> None:
        self._state = "done"
        self._group._behind.discard(self)
        self._poke()
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            inbox.context = None
            if not inbox.ended:
                self._group._stack._dispatcher.forget(inbox)
        for stream in self._streams:
            if stream is not None:
                stream._items.clear()
                stream._consumer = None


class PerFlow:
    """One :meth:`Stack.spawn_per_flow` (or :meth:`Stack.serve`) registration: its acceptor,
    function, bounds and counters. ``statistics()`` returns a :class:`PerFlowStatistics`.
    Layer: io/_stack; made by the stack, not directly.
    """

    def __init__(self, stack, fn, *, filter=None, limit: int | None = 10_000, overflow: str = "queue",
                 max_queued: int = 1024, errors: str = "log", sides: str = "both", gaps: str = "raise",
                 max_chunks: int = 64, events=(), udp: bool = True, cancel_at_end: bool = True,
                 call=None):
        if not callable(fn):
            raise TypeError(f"spawn_per_flow needs an async function taking the flow, got {fn!r}")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ValueError(f"limit must be a positive int (coroutines alive at once), got {limit!r}")
        if overflow not in ("queue", "skip"):
            raise ValueError(f"overflow must be 'queue' or 'skip', got {overflow!r}")
        if not isinstance(max_queued, int) or isinstance(max_queued, bool) or max_queued < 0:
            raise ValueError(f"max_queued must be an int >= 0 (flows waiting for a slot), got {max_queued!r}")
        if errors not in ("log", "raise"):
            raise ValueError(f"errors must be 'log' (log and stop handling the flow) or 'raise' (fail the "
                             f"stack), got {errors!r}")
        if sides not in SIDES:
            raise ValueError(f"sides must be one of {', '.join(map(repr, SIDES))}, got {sides!r}")
        if gaps not in ("raise", "mark"):
            raise ValueError(f"gaps must be 'raise' or 'mark', got {gaps!r}")
        if not isinstance(max_chunks, int) or isinstance(max_chunks, bool) or max_chunks < 1:
            raise ValueError(f"max_chunks must be a positive int, got {max_chunks!r}")
        if sides != "none" and not stack.engine.buffering:
            raise ValueError("per-flow streams hand coroutines the streams' bytes, but this stack was opened with "
                             "buffering=False (offsets and counters only); open it with buffering=True, "
                             "or pass sides='none'")
        extra = split_kinds(list(events)) if events else []
        for kind in extra:
            if kind in STREAM_KINDS:
                raise ValueError(f"{kind} is not an event to wait for: stream bytes come from flow.stream(side)")
        self._stack = stack
        self.fn = fn
        self._call = call or fn
        self.limit = limit
        self.overflow = overflow
        self.max_queued = max_queued if overflow == "queue" else 0
        self.errors = errors
        self.sides_name = sides
        self.sides = SIDES[sides]
        self.gaps = gaps
        self.max_chunks = max_chunks
        self.cancel_at_end = cancel_at_end
        self.kinds = frozenset(WAITABLE + ENDS + tuple(extra))
        listened = list(self.kinds) + (list(STREAM_KINDS) if self.sides else [])
        self.acceptor = stack._dispatcher.listen(listened, filter=compile_filter(filter), tcp=True, udp=udp)
        self._queue: collections.deque = collections.deque()
        self._running: set = set()
        self._behind: set = set()           # running coroutines handed events they have not waited past
        self._nursery = None
        self._error = None                  # with errors="raise": the first coroutine's exception
        self.ready = trio.Event()           # its nursery is open: flows can be handed to it
        self.done = trio.Event()
        self._accepted = self._started = self._max_running = self._skipped = 0
        self._finished = self._failed = self._cancelled = 0
        self._overruns = self._overrun_bytes = self._pauses = 0

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return f"<PerFlow {name} {len(self._running)} running, {len(self._queue)} queued>"

    def statistics(self) -> PerFlowStatistics:
        """A :class:`PerFlowStatistics` snapshot."""
        return PerFlowStatistics(
            limit=self.limit, overflow=self.overflow, max_queued=self.max_queued, accepted=self._accepted,
            started=self._started, running=len(self._running), max_running=self._max_running,
            queued=len(self._queue), skipped=self._skipped, finished=self._finished, failed=self._failed,
            cancelled=self._cancelled, overruns=self._overruns, overrun_bytes=self._overrun_bytes,
            pauses=self._pauses)

    async def _run(self) -> None:
        """Own the coroutines' nursery until the source has ended and every coroutine returned."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.ready.set()
                await self._stack.finished.wait()
        finally:
            self._queue.clear()
            self.done.set()
            self._stack._settle()
        if self._error is not None:
            raise self._error                       # a coroutine's error (errors="raise"), as itself

    async def _accept(self, inboxes: list) -> None:
        """Take the flows the acceptor accepted (the pump): start, queue or skip each."""
        if not self.ready.is_set():
            await self.ready.wait()
        limit = math.inf if self.limit is None else self.limit
        for inbox in inboxes:
            self._accepted += 1
            if len(self._running) < limit:
                task = inbox.context = FlowTask(self, inbox)
                self._start(task)
            elif len(self._queue) < self.max_queued:
                inbox.context = task = FlowTask(self, inbox)
                self._queue.append(task)
            else:
                self._skipped += 1
                self._stack._dispatcher.forget(inbox)

    def _start(self, task: FlowTask) -> None:
        task._state = "running"
        self._running.add(task)
        self._started += 1
        self._max_running = max(self._max_running, len(self._running))
        self._nursery.start_soon(self._run_one, task, name=f"per-flow {task.key}")

    async def _run_one(self, task: FlowTask) -> None:
        failed = False
        try:
            with task._scope:
                try:
                    await self._call(task)
                except FlowEnded:
                    pass
                except Exception as exc:
                    failed = True
                    if self.errors == "raise" and self._error is None:
                        self._error = exc           # the first one fails the stack; later ones are logged
                        self._stack._fail(exc)      # stack.run() raises it
                        self._nursery.cancel_scope.cancel()
                    else:
                        _log.exception("per-flow coroutine %s failed on flow %s; no longer handling that flow",
                                       getattr(self.fn, "__qualname__", self.fn), task.key)
            if failed:
                self._failed += 1
            elif task._scope.cancelled_caught:
                self._cancelled += 1
            else:
                self._finished += 1
        except trio.Cancelled:
            self._cancelled += 1        # the stack's exit (or another coroutine's error with errors="raise")
            raise
        finally:
            task._finish()
            self._running.discard(task)
            if self._queue:
                self._start(self._queue.popleft())
