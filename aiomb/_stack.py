"""open_stack(): the Trio shell over the core and its dispatcher.

Layer: io/_stack (above the core). The pump task reads one batch of frames from the source,
lets the engine process it (inline handlers run there), has the :class:`~aiomb.Dispatcher`
route the batch's event log, then hands each subscription its list in one channel send and
each served flow's streams their chunks. Channels are bounded: when a consumer falls behind,
the send blocks and the source is not read (a capture pauses; nothing is lost). Everything
that decides who gets which event is in the dispatcher; this module only moves lists.
"""

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import attrs
import trio

from ._core import Dispatcher, Engine, EventStream, FrameBatch
from ._perflow import FlowStream as FlowStream
from ._perflow import Gap as Gap
from ._perflow import PerFlow
from ._workers import shard_option
from .events._kinds import EventKind, split_kinds
from .flows._filter import compile_filter
from .flows._html import fields_table
from .flows._stats import EngineStatistics
from .flows._types import Side, end_reason

CATCH_UP_TURNS = 3      # scheduling turns the pump gives consumers still busy with a batch
CHECK_EVERY = 64        # events of a batch between two cancellation checks of an `async for`


@attrs.frozen(kw_only=True)
class StackStatistics:
    """A snapshot of the stack: the engine's counters plus delivery and backpressure counts."""

    engine: EngineStatistics
    batches: int
    events_delivered: int
    source_pauses: int
    subscriptions: int
    finished: bool

    @property
    def packets(self) -> int:
        """Packets the engine has processed."""
        return self.engine.packets

    def _repr_html_(self) -> str:
        return fields_table(self, title="stack statistics")


@attrs.frozen(kw_only=True)
class SubscriptionStatistics:
    """A snapshot of one subscription's queue."""

    kinds: tuple
    batches_queued: int
    max_batches: int
    events_buffered: int
    events_received: int
    closed: bool
    packets_before: int


class Subscription:
    """Events of some kinds for one middlebox, delivered a batch at a time.

    ``async for ev in sub`` yields events one by one (one await per batch, not per event; a
    cancellation is noticed within every CHECK_EVERY events of a batch, and loses no event:
    iterating again yields the one at which it was noticed); ``await
    sub.receive_batch()`` returns a whole list; ``receive_batch_nowait()`` raises
    ``trio.WouldBlock`` when nothing is queued. The subscription is one ordered queue however
    it is read: after a loop left mid-batch (break, cancellation), ``receive_batch()`` first
    returns the rest of that batch. Several tasks may read one subscription: each event goes to
    one of them, as with a Trio channel's receivers. Iteration ends when the source ends. Use as
    ``async with stack.subscribe(...) as sub``; leaving the block unsubscribes, and iterating
    or receiving after that raises ``trio.ClosedResourceError`` (as a closed Trio channel does).

    ``packets_before`` is how many packets the engine had processed when the subscription was
    made: 0 when it was made before the source started (it misses nothing); more for one made
    mid-run, which never sees those packets' events (flows already open show up without their
    start). It is in :meth:`statistics` too.
    """

    def __init__(self, stack: "Stack", sub_id: int, kinds: tuple, max_batches: int, packets_before: int = 0):
        self._stack = stack
        self._id = sub_id
        self._kinds = kinds
        self._max_batches = max_batches
        self._send, self._recv = trio.open_memory_channel(max_batches)
        self._stream = EventStream(self._refill, trio.lowlevel.checkpoint_if_cancelled, CHECK_EVERY)
        self._received = 0
        self._closed = False
        self._batches_sent = 0      # by the stack
        self._batches_taken = 0     # by the consumer
        self._batches_done = 0      # taken before the consumer asked for more
        self.packets_before = packets_before

    def __repr__(self) -> str:
        late = f" after {self.packets_before} packets" if self.packets_before else ""
        return f"<Subscription {'|'.join(map(str, self._kinds))}{late}{' closed' if self._closed else ''}>"

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Unsubscribe: no more events are queued, and what was queued is dropped; receiving or
        iterating afterwards raises trio.ClosedResourceError (also in a task waiting for a batch
        now). Idempotent."""
        if not self._closed:
            self._closed = True
            self._stream.take_rest()    # what an `async for` left of its batch was queued too
            self._stack._unsubscribe(self)

    def __aiter__(self):
        return self._stream

    async def _refill(self):
        try:
            return await self._receive()
        except trio.EndOfChannel:
            return None

    def _closed_error(self) -> trio.ClosedResourceError:
        return trio.ClosedResourceError(
            f"{self!r} was closed (close(), or leaving its async with block): it delivers nothing more; "
            "iterate it inside the block, or subscribe again (a new subscription sees only later events)")

    async def receive_batch(self) -> list:
        """The next batch of events (a non-empty list): the rest of the batch an ``async for``
        left unfinished, if one did, else the next batch queued; raises trio.EndOfChannel at the
        end, trio.ClosedResourceError once the subscription was closed.

        Starts the stack's source if it has not started yet. Blocks until a batch arrives.
        """
        # a checkpoint on every path, as a channel's receive() is; a cancellation before the
        # rest is taken leaves it queued
        await trio.lowlevel.checkpoint_if_cancelled()
        rest = self._stream.take_rest()         # empty once closed: close() dropped it
        if rest:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return rest
        return await self._receive()

    async def _receive(self) -> list:
        """The next batch from the channel (the stream's refill: it holds no rest then)."""
        if self._closed:
            raise self._closed_error()
        self._stack.start()
        self._batches_done = self._batches_taken
        try:
            with self._stack._blocking():
                batch = await self._recv.receive()
        except trio.ClosedResourceError:
            raise self._closed_error() from None        # closed by another task while this one waited
        self._batches_taken += 1
        self._received += len(batch)
        self._stack._taken.unpark_all()
        return batch

    def receive_batch_nowait(self) -> list:
        """What :meth:`receive_batch` would return without blocking, or raise trio.WouldBlock
        (trio.EndOfChannel at the end, trio.ClosedResourceError once the subscription was closed)."""
        if self._closed:
            raise self._closed_error()
        rest = self._stream.take_rest()
        if rest:
            return rest
        self._batches_done = self._batches_taken
        batch = self._recv.receive_nowait()
        self._batches_taken += 1
        self._received += len(batch)
        self._stack._taken.unpark_all()
        return batch

    def statistics(self) -> SubscriptionStatistics:
        """A snapshot of the queue: batches waiting, events received so far."""
        st = self._recv.statistics()
        return SubscriptionStatistics(
            kinds=self._kinds, batches_queued=st.current_buffer_used, max_batches=self._max_batches,
            events_buffered=self._stack._dispatcher.pending(self._id) if not self._closed else 0,
            events_received=self._received, closed=self._closed, packets_before=self.packets_before)


class StackTimer:
    """A timer on the stack's clock for Trio code (made by :meth:`Stack.timer`): ``await
    timer.wait()`` returns how many times it fired since the last wait (at least once); ``async
    for n in timer`` does so until it is cancelled (or its flow ends)."""

    def __init__(self, stack: "Stack", timer_id: int, flow_id: int | None):
        self._stack = stack
        self.timer_id = timer_id
        self._flow_id = flow_id
        self._count = 0
        self._fired = trio.Event()
        self._done = False
        self._waiting = False       # a task waits: the pump lets it see the moment it fired
        self._on_fire = None        # called when it fires (a per-flow deadline cancels a scope)

    def __repr__(self) -> str:
        return f"<StackTimer {self.timer_id}{' done' if self._done else ''}>"

    async def wait(self) -> int:
        """Wait until the timer has fired; its expirations since the last wait. Raises
        trio.EndOfChannel once it is cancelled (or its flow has ended) with none left."""
        while not self._count:
            if self._done:
                raise trio.EndOfChannel(f"timer {self.timer_id} is cancelled")
            self._stack.start()
            self._waiting = True
            try:
                with self._stack._blocking():
                    await self._fired.wait()
            finally:
                self._waiting = False
            self._fired = trio.Event()
        n, self._count = self._count, 0
        return n

    def __aiter__(self):
        return self

    async def __anext__(self) -> int:
        try:
            return await self.wait()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        """Disarm the timer: a wait ends (EndOfChannel) once the expirations are taken."""
        self._stack.engine.cancel_timer(self.timer_id)
        self._stack._timers.pop(self.timer_id, None)
        self._end()

    def _fire(self, n: int) -> None:
        self._count += n
        self._fired.set()
        if self._on_fire is not None:
            self._on_fire()

    def _end(self) -> None:
        self._done = True
        self._fired.set()


class Middlebox:
    """One middlebox in the stack's chain: a flow filter, inline handlers, subscriptions.

    Client-to-server packets visit the chain's middleboxes in the order they were added,
    server-to-client packets in reverse order. Create with :meth:`Stack.middlebox`.
    """

    def __init__(self, stack: "Stack", name: str, index: int, flt):
        self._stack = stack
        self.name = name
        self.index = index
        self.filter = flt

    def __repr__(self) -> str:
        f = f" filter={getattr(self.filter, 'expression', self.filter)!r}" if self.filter is not None else ""
        return f"<Middlebox {self.name!r} #{self.index}{f}>"

    def subscribe(self, *kinds, max_batches: int | None = None) -> Subscription:
        """Subscribe to events of ``kinds`` for the flows this middlebox's filter accepts."""
        return self._stack._subscribe(kinds, self.index, None, max_batches)

    def on(self, kind, handler, *, hook=None):
        """Run ``handler(packet)`` inline, in the core, each time ``kind`` fires.

        ``packet`` is a live :class:`~aiomb.PacketView` (valid during the call). ``hook``
        (:class:`~aiomb.Hook`) restricts where it runs; only sender-hook handlers may drop.
        Returns a token for :meth:`remove`. Raises RuntimeError once the source has ended.
        A handler may add and remove handlers: one added first runs for the next event of its
        kind, one removed before its turn in the event under way is not called.
        """
        if self._stack.finished.is_set():
            raise RuntimeError("the stack's source has ended: an inline handler added now would never run; add "
                               "handlers before it finishes")
        return self._stack.engine.add_handler(kind, handler, middlebox=self.index, hook=hook)

    def remove(self, token) -> None:
        """Remove an inline handler added by :meth:`on` (not called from then on, even in the
        event under way). Raises ValueError for a token not registered (any more)."""
        self._stack.engine.remove_handler(token)


class Stack:
    """A running stack: one source, one engine and its dispatcher, a chain of middleboxes.

    Made by :func:`open_stack`. ``subscribe``/``on`` act on the default middlebox (the first in
    the chain); ``middlebox()`` adds more. The source starts when a subscription is first
    iterated, or at :meth:`start` / :meth:`run`, so that subscriptions made first miss nothing.
    """

    def __init__(self, engine: Engine, source, *, batch_size: int, max_batches: int):
        self.engine = engine
        self.source = source
        self._dispatcher = Dispatcher(engine)
        self._batch_size = batch_size
        self._max_batches = max_batches
        self._subs: dict[int, Subscription] = {}
        self._middleboxes = [Middlebox(self, "default", 0, None)]
        self._go = trio.Event()
        self._nursery = None
        self._per_flow: list[PerFlow] = []
        self._timers: dict[int, StackTimer] = {}
        self._timer_sub = self._dispatcher.subscribe(EventKind.TIMER)
        self.finished = trio.Event()
        self._settled = trio.Event()                 # run() may return (or raise _error)
        self._error = None                           # the per-flow exception that failed the stack
        self._batches = 0
        self._pauses = 0
        self._taken = trio.lowlevel.ParkingLot()     # a consumer took a batch
        self._blocked: set = set()                   # Trio tasks waiting for what only the pump delivers
        self._progress = None                        # an Event the pump waits on for a per-flow reader

    def __repr__(self) -> str:
        return f"<Stack {self.source!r} {len(self._middleboxes)} middlebox(es)>"

    @property
    def middleboxes(self) -> tuple:
        """The chain, in configured order."""
        return tuple(self._middleboxes)

    def middlebox(self, name: str, *, filter=None) -> Middlebox:
        """Append a middlebox named ``name`` with an optional flow filter: tcpdump syntax, or
        an object with a ``matches(key) -> bool`` method (evaluated once per new flow, when it
        is created, before its ``CONN_START``/``UDP_START``).

        Raises ValueError for a duplicate name or a bad filter (FilterError), RuntimeError once
        packets have been processed or the source has ended.
        """
        if self.finished.is_set():
            raise RuntimeError("the stack's source has ended: a middlebox added now would see no packet; add "
                               "middleboxes before the source starts")
        packets = self.engine.statistics().packets
        if packets:                     # even with no flow in the table: it would miss the flows before it
            raise RuntimeError(f"stack.middlebox() after {packets} packet{'s' if packets > 1 else ''}: add "
                               "middleboxes before the source starts (before stack.start(), stack.run() or "
                               "iterating a subscription), so that they see every flow")
        if any(m.name == name for m in self._middleboxes):
            raise ValueError(f"a middlebox named {name!r} already exists; choose another name")
        flt = filter if callable(getattr(filter, "matches", None)) else compile_filter(filter)
        index = self.engine.add_middlebox(flt)
        mb = Middlebox(self, name, index, flt)
        self._middleboxes.append(mb)
        return mb

    def subscribe(self, *kinds, filter=None, max_batches: int | None = None) -> Subscription:
        """Subscribe to events of ``kinds`` (of the default middlebox's flows; with ``filter``,
        a tcpdump-style expression, only of the flows it accepts). Returns a
        :class:`Subscription`; use it in ``async with``. Made after the source started, it
        misses the events before it: its ``packets_before`` says after how many packets it began.
        """
        return self._subscribe(kinds, 0, compile_filter(filter), max_batches)

    def flow(self, ev):
        """The live :class:`~aiomb.Flow` handle of an event's flow while it is in the flow
        table, else None (its figures at the end are the end event's ``stats``)."""
        if ev.key is None or ev.flow_id is None:
            return None
        return self.engine.flow(ev.key, ev.flow_id)

    def serve(self, handler, *, filter=None, gaps: str = "raise", max_chunks: int = 64) -> None:
        """Run ``await handler(flow, client_stream, server_stream)`` for each new TCP flow.

        The streams are :class:`FlowStream` objects, made when the flow starts (so no byte is
        missed); each holds at most ``max_chunks`` chunks (then the source waits for a handler
        that is behind; see :mod:`aiomb._perflow`). Handlers run in a nursery of the stack's,
        with no limit and not cancelled at their flow's end: an exception cancels the stack and
        reaches the caller of :meth:`run` and of open_stack. Call before the source starts. Raises ValueError when
        the stack does not buffer stream bytes (``buffering=False``).
        """
        if gaps not in ("raise", "mark"):
            raise ValueError(f"gaps must be 'raise' or 'mark', got {gaps!r}")
        if not self.engine.buffering:
            raise ValueError("serve() hands handlers the streams' bytes, but this stack was opened with "
                             "buffering=False (offsets and counters only); open it with buffering=True")
        if self._go.is_set():
            raise RuntimeError("serve() must be called before the source starts")

        async def call(task):
            await handler(task.flow, task.stream(Side.CLIENT), task.stream(Side.SERVER))

        self._add_per_flow(PerFlow(self, handler, filter=filter, limit=None, errors="raise", gaps=gaps,
                                   max_chunks=max_chunks, udp=False, cancel_at_end=False, call=call))

    def spawn_per_flow(self, fn, filter=None, *, limit: int = 10_000, overflow: str = "queue",
                       max_queued: int = 1024, errors: str = "log", sides: str = "both", gaps: str = "raise",
                       max_chunks: int = 64, events=()) -> PerFlow:
        """Run ``await fn(flow)`` for each new TCP and UDP flow that ``filter`` (tcpdump syntax) accepts.

        ``flow`` is a :class:`~aiomb._perflow.FlowTask`: its events (``wait``, ``ended``), bytes
        (``stream``, ``read_until``) and time (``sleep``, ``move_on_after``). At most ``limit``
        coroutines run at once; beyond, ``overflow="queue"`` holds up to ``max_queued`` flows
        (their events kept) and ``"skip"`` leaves the flow alone, both counted. A coroutine is
        cancelled when its flow ends (after it was handed the end) and at the stack's exit. An
        exception is logged (logger "aiomb", with the flow key) and ends that flow's handling, or
        with ``errors="raise"`` fails the stack. ``sides`` whose bytes to keep, ``gaps`` and
        ``max_chunks`` as :meth:`serve`'s; ``events``: more kinds for ``wait``. Returns the
        registration (``statistics()``). Flows already open are not taken. Raises ValueError for
        a bad option, RuntimeError once the source has ended. Does not block.
        """
        return self._add_per_flow(PerFlow(self, fn, filter=filter, limit=limit, overflow=overflow,
                                          max_queued=max_queued, errors=errors, sides=sides, gaps=gaps,
                                          max_chunks=max_chunks, events=events))

    def _add_per_flow(self, group: PerFlow) -> PerFlow:
        if self.finished.is_set():
            raise RuntimeError("the stack's source has ended: no new flows will come")
        self._per_flow.append(group)
        self._nursery.start_soon(group._run)
        return group

    def timer(self, delay: float, *, interval: float | None = None, flow=None) -> StackTimer:
        """A timer on the stack's clock (packet time on captures, the wall clock on live ports),
        ``delay`` seconds from now and then every ``interval``; a ``flow``'s timer (a live
        :class:`~aiomb.Flow`) ends with its flow. ``await timer.wait()``."""
        if self.source.live:
            self.engine.expire(self.source.now())
        timer_id = self.engine.set_timer(delay, interval=interval, flow=flow)
        timer = StackTimer(self, timer_id, flow.id if flow is not None else None)
        self._timers[timer_id] = timer
        return timer

    def time(self) -> float:
        """The stack's clock: packet time on captures, the wall clock on live ports."""
        return self.source.now() if self.source.live else self.engine.now * 1e-9

    def on(self, kind, handler, *, hook=None):
        """Add an inline handler on the default middlebox (see :meth:`Middlebox.on`)."""
        return self._middleboxes[0].on(kind, handler, hook=hook)

    def remove(self, token) -> None:
        """Remove an inline handler."""
        self.engine.remove_handler(token)

    def _subscribe(self, kinds, index: int, flt, max_batches: int | None) -> Subscription:
        if self.finished.is_set():
            raise RuntimeError("the stack's source has ended; subscribe before it finishes")
        kinds = tuple(split_kinds(list(kinds)))
        if max_batches is None:
            max_batches = self._max_batches
        if not isinstance(max_batches, int) or max_batches < 1:
            raise ValueError(f"max_batches must be a positive int, got {max_batches!r}")
        sub_id = self._dispatcher.subscribe(list(kinds), middlebox=index, filter=flt)
        sub = Subscription(self, sub_id, kinds, max_batches, self.engine.statistics().packets)
        self._subs[sub_id] = sub
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.pop(sub._id, None) is not None:
            self._dispatcher.unsubscribe(sub._id)
            sub._recv.close()     # a pump blocked sending to it gets BrokenResourceError
            self._taken.unpark_all()

    def start(self) -> None:
        """Let the source start delivering (idempotent; does not block)."""
        self._go.set()

    async def run(self) -> None:
        """Start the source; wait until it has ended, every event was handed over and every
        per-flow coroutine (:meth:`serve`, :meth:`spawn_per_flow`) has returned.

        Raises the exception of a per-flow coroutine that failed the stack (``serve``, or
        ``errors="raise"``) as itself, as soon as it fails (the stack is cancelled; leaving
        ``open_stack`` raises it too). Blocks.
        """
        self.start()
        if self._error is None:
            await self._settled.wait()
        if self._error is not None:
            raise self._error

    def _settle(self) -> None:
        """Wake run() once the source has ended and every per-flow group is done, or a coroutine failed the stack."""
        if self._error is not None or (self.finished.is_set()
                                       and all(group.done.is_set() for group in self._per_flow)):
            self._settled.set()

    def _fail(self, exc: BaseException) -> None:
        """A per-flow coroutine failed the stack: run() raises ``exc`` (the first one)."""
        if self._error is None:
            self._error = exc
            self._settle()

    def flows(self) -> list:
        """Live handles of the flows in the table now, oldest first."""
        return self.engine.flows()

    def statistics(self) -> StackStatistics:
        """A :class:`StackStatistics` snapshot."""
        return StackStatistics(
            engine=self.engine.statistics(), batches=self._batches,
            events_delivered=self._dispatcher.events_delivered, source_pauses=self._pauses,
            subscriptions=len(self._subs), finished=self.finished.is_set())

    # ---- the pump ---------------------------------------------------------------------

    @contextmanager
    def _blocking(self) -> Iterator[None]:
        """Around a wait for what only the pump delivers (a flow's events or bytes, a timer's
        firing, a subscription's batch): the pump never waits for room in the stream of a
        per-flow reader inside it, which would wait for the pump in turn (see :mod:`aiomb._perflow`)."""
        task = trio.lowlevel.current_task()
        self._blocked.add(task)
        self._poke()
        try:
            yield
        finally:
            self._blocked.discard(task)

    def _poke(self) -> None:
        """Wake the pump if it waits for a per-flow reader: that reader moved."""
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    async def _wait_for_progress(self) -> None:
        """The pump waits for a per-flow reader to take a chunk, wait for the stack or finish."""
        self._progress = progress = trio.Event()
        await progress.wait()

    async def _send(self, channel, item) -> None:
        """Hand over one item; a full channel pauses the source (counted)."""
        try:
            channel.send_nowait(item)
        except trio.WouldBlock:
            self._pauses += 1
            try:
                await channel.send(item)
            except trio.BrokenResourceError:
                pass          # the consumer closed it meanwhile
            else:             # a cancelled stack whose consumer took the item (a stopped notebook run
                await trio.lowlevel.checkpoint_if_cancelled()  # drains it) reads nothing more
        except trio.BrokenResourceError:
            pass

    async def _deliver(self) -> None:
        d = self._dispatcher
        d.dispatch()
        for ev in d.drain(self._timer_sub):
            timer_id, n = ev.value
            timer = self._timers.get(timer_id)
            if timer is not None:
                timer._fire(n)
        for timer_id, timer in list(self._timers.items()):
            if not timer._count and not self.engine.timer_armed(timer_id):   # done, its firings taken
                del self._timers[timer_id]
                timer._end()
        for sub_id, sub in list(self._subs.items()):
            events = d.drain(sub_id)
            if events:
                sub._batches_sent += 1
                await self._send(sub._send, events)
        for group in self._per_flow:
            await group._accept(d.accept(group.acceptor))
        for inbox in d.ready_inboxes():
            task = inbox.context
            events = inbox.take()
            if task is not None:
                await task._deliver(events, inbox.ended)

    async def _deliver_piece(self) -> None:
        """The engine stopped at max_event_memory: hand its events over, and read nothing more
        until every subscription has taken what it was handed (the source pauses, counted in
        the engine's ``event_pauses``), so that a storm of events is delivered a piece at a
        time instead of piling up."""
        await self._deliver()
        while any(sub._batches_taken < sub._batches_sent for sub in self._subs.values()):
            await self._taken.park()

    async def _let_consumers_catch_up(self) -> None:
        """Give consumers still busy with a batch a few turns before the next batch is read.

        Trio runs ready tasks in random order (per-flow coroutines handed events are consumers
        too, until they wait on their flow again). A consumer that runs before the pump reads on
        is done with the previous batch's events, so fewer are alive at once and the reader
        can reuse the frame block that is in the cache; a task waiting for a timer that fired
        sees the stack as it was at that moment. A consumer that stays busy (awaiting
        something else) is not waited for: after CATCH_UP_TURNS the pump goes on.
        """
        for _ in range(CATCH_UP_TURNS):
            if all(sub._batches_done == sub._batches_sent for sub in self._subs.values()) \
                    and not any(t._count and t._waiting for t in self._timers.values()) \
                    and not any(group._behind for group in self._per_flow):
                return
            await trio.lowlevel.checkpoint()

    async def _pump(self) -> None:
        await self._go.wait()
        batch = FrameBatch(self._batch_size)
        engine = self.engine
        source = self.source
        while (count := await source.receive(batch)) is not None:
            if source.live:
                if count:
                    pos = 0
                    while (pos := engine.process(batch, pos)) < count:
                        await self._deliver_piece()
                    source.apply(batch)
                    self._batches += 1
                while not engine.expire(source.now()):
                    await self._deliver_piece()
            else:
                self._batches += 1
                pos = 0
                if count and not engine.now and self._timers:
                    while not engine.expire(batch.ts_at(0)):    # the clock starts at the first packet
                        await self._deliver_piece()
                while pos < count:          # a capture stops at each timer: its waiters see that moment
                    due = engine.next_timer if self._timers else None
                    pos = engine.process(batch, pos, due)
                    if engine.paused:
                        await self._deliver_piece()
                    elif pos < count:
                        while not engine.expire(due):
                            await self._deliver_piece()
                        await self._deliver()
                        await self._let_consumers_catch_up()
            await self._deliver()
            await self._let_consumers_catch_up()
        while not engine.finish(end_reason(source)):
            await self._deliver_piece()
        await self._deliver()
        for sub in list(self._subs.values()):
            sub._send.close()
        for timer in self._timers.values():
            timer._end()
        self.finished.set()
        self._settle()


def check_stack_options(*, batch_size: int = 2048, max_batches: int = 16) -> None:
    """ValueError for a ``batch_size`` or ``max_batches`` :func:`open_stack` cannot take (its
    defaults here), for callers that refuse them before opening it (aiomb.notebook.start)."""
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 1 << 16:
        raise ValueError(f"batch_size must be an int from 1 to 65536, got {batch_size!r}")
    if not isinstance(max_batches, int) or max_batches < 1:
        raise ValueError(f"max_batches must be a positive int, got {max_batches!r}")


@asynccontextmanager
async def open_stack(source, *, batch_size: int = 2048, max_batches: int = 16,
                     **engine_options) -> AsyncIterator[Stack]:
    """Open a stack on ``source`` (:func:`aiomb.capture`, :func:`aiomb.port`) and run it in the background.

    ``engine_options`` go to :class:`aiomb.Engine` (``max_flows``, timeouts, ``midstream``,
    ``vlan_in_key``, ...). ``max_batches`` bounds each subscription's queue. On leaving the
    block the source is stopped and closed (a port detaches its XDP program, even when the block
    is cancelled); an exception in a handler or the source cancels the block and is re-raised
    here as itself. A source with ``aopen()``/``aclose()`` is opened and closed through them
    (a live port runs netlink there in a worker thread). Layer: io/_stack.
    """
    if "workers" in engine_options:
        raise TypeError("open_stack() runs one engine in this Trio loop and has no workers= option: to run your "
                        "code on N cores, call aiomb.run_workers(fn, capture_path, workers=N) outside trio.run "
                        "(fn opens no stack: it is given one per worker), or run your module under "
                        "`aiomb run APP --workers N`")
    check_stack_options(batch_size=batch_size, max_batches=max_batches)
    engine = Engine(**shard_option(engine_options))
    engine.translation_hook = getattr(source, "translation_hook", None)     # a steered worker's port
    aopen = getattr(source, "aopen", None)
    if aopen is not None:
        await aopen()           # a live port: netlink and bpf(2) in a worker thread
    else:
        source.open()
    try:
        stack = Stack(engine, source, batch_size=batch_size, max_batches=max_batches)
        try:
            async with trio.open_nursery() as nursery:
                stack._nursery = nursery
                nursery.start_soon(stack._pump)
                yield stack
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            errors = list({id(exc): exc for exc in group.exceptions}.values())
            if len(errors) != 1:
                raise
            raise errors[0] from None   # the nursery's group, one level only (run() raised a coroutine's error too)
    finally:
        engine.close()
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):     # detach XDP even when cancelled
                await aclose()
        else:
            source.close()
