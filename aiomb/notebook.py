"""Jupyter: a stack running in the background of a notebook while cells inspect it.

Layer: notebook (the top, beside cli). :func:`start` runs :func:`aiomb.open_stack` in Trio guest
mode on the notebook's running asyncio loop (``trio.lowlevel.start_guest_run``): Trio's scheduler
runs in the loop's thread between cells, so a cell can look at the stack while it works, and the
kernel stays responsive (the stack yields to the loop after every batch). The returned
:class:`BackgroundStack` offers a live flow table, statistics, the last events, per-direction
throughput and flows over packet time, plots, and ``await h.wait()`` / ``h.stop()``.

matplotlib, pandas, tqdm and IPython are imported only by the methods that need them
(``pip install aiomb[notebook]``); ``import aiomb`` imports none of them, nor this module.
"""

import asyncio
import collections
import math
import os
import sys
import time

import attrs
import trio

from ._core import Engine, FlowRecords
from ._records import FlowTable
from ._stack import StackStatistics, check_stack_options, open_stack
from .events._kinds import EventKind, split_kinds
from .flows._html import cell, fields_table, table, text
from .flows._types import EndReason
from .io._capture import capture

DEFAULT_EVENTS = (EventKind.CONN_START, EventKind.CONN_END, EventKind.UDP_START, EventKind.UDP_END,
                  EventKind.RST, EventKind.GAP, EventKind.RETRANSMIT, EventKind.ERROR)
"""The kinds a handle counts and keeps in its ring of recent events unless ``events=`` says otherwise."""

MAX_BINS = 4096
"""Bins of the throughput and flows series; past it two neighbouring bins become one (the
interval doubles), so a long run keeps a bounded series."""

PROGRESS_EVERY = 0.25
"""Seconds (wall clock) between two refreshes of the progress indicator."""

_STACK_OPTIONS = ("batch_size", "max_batches")

_running = None
"""The handle whose run is going on in this thread's loop, if any (Trio runs one at a time per thread)."""


@attrs.frozen(kw_only=True)
class RunStatistics:
    """A snapshot of a :class:`BackgroundStack`: its state, the stack's and the port's counters.

    ``state`` is ``opening`` (the source is being opened; a live port attaches), ``running``,
    ``finished`` (the source ended), ``stopped`` (:meth:`BackgroundStack.stop`) or ``failed``
    (``error`` says why). ``progress`` is the source's (done, total): bytes of a capture file,
    (frames, 0) for a live port. ``stack`` is None until the stack has opened; ``port`` is None
    for a capture. ``events`` counts the events of the handle's kinds seen so far, by kind name.
    """

    state: str
    source: str
    elapsed: float
    progress: tuple
    stack: StackStatistics | None
    port: object | None
    events: dict
    error: str | None

    @property
    def packets(self) -> int:
        """Packets the engine has processed (0 before the stack opened)."""
        return self.stack.packets if self.stack is not None else 0

    def _repr_html_(self) -> str:
        return fields_table(self, title="run statistics")


class _Series:
    """Per-direction payload bytes and packets and the flows in the table, in bins of packet time.

    Sampled from the engine's per-direction counters at each tick of a stack timer (packet time
    on a capture, whose reading stops at each tick): no Python call per packet. At most
    MAX_BINS bins: past that the bins' width doubles and neighbouring bins merge.
    """

    def __init__(self, interval: float):
        self.interval = interval            # the width of a bin: the tick, doubled as bins merge
        self.scale = 1                      # ticks per bin
        self.bins: dict[int, list] = {}     # bin -> [client bytes, server bytes, client pkts, server pkts, flows]
        self.ticks = 0                      # periods sampled so far (a bin's number counts them)
        self.last = (0, 0, 0, 0)

    def sample(self, stats, fired: int) -> None:
        """Take the counters' growth since the last sample into the current period, then move on
        ``fired`` periods (the timer's firings; 0 at the end of the run)."""
        counts = (stats.client_payload_bytes, stats.server_payload_bytes, stats.client_packets,
                  stats.server_packets)
        if counts[2:] != self.last[2:]:
            index = self.ticks // self.scale
            row = self.bins.get(index)
            if row is None:
                row = self.bins[index] = [0, 0, 0, 0, 0]
            for k in range(4):
                row[k] += counts[k] - self.last[k]
            row[4] = stats.flows_active
            self.last = counts
            while len(self.bins) > MAX_BINS:
                self._coarsen()
        self.ticks += fired

    def _coarsen(self) -> None:
        merged: dict[int, list] = {}
        for index in sorted(self.bins):
            row = self.bins[index]
            into = merged.get(index // 2)
            if into is None:
                merged[index // 2] = list(row)
            else:
                for k in range(4):
                    into[k] += row[k]
                into[4] = row[4]            # the flows at the later bin's end
        self.bins = merged
        self.interval *= 2
        self.scale *= 2

    def rows(self) -> list:
        """(bin start in seconds since the first packet, client bytes, server bytes, client packets,
        server packets, flows in the table at the bin's end), in time order."""
        return [(index * self.interval, *row) for index, row in sorted(self.bins.items())]


class _Progress:
    """The progress indicator of a capture's run: tqdm's notebook bar when ipywidgets is there,
    else a text line (updated in place in a notebook, rewritten with ``\\r`` on a terminal)."""

    def __init__(self, source_name: str, total: int):
        self.total = total
        self._bar = None
        self._display = None
        self._shown = -1
        self._last_line = ""
        self.desc = os.path.basename(source_name) or source_name
        shell = _ipython_kernel()
        if shell is not None:
            try:
                import ipywidgets  # noqa: F401
                from tqdm.notebook import tqdm
            except ImportError:
                from IPython.display import display

                self._display = display({"text/plain": self._line(0, 0)}, raw=True, display_id=True)
            else:
                self._bar = tqdm(total=total, unit="B", unit_scale=True, desc=self.desc)

    def _line(self, done: int, packets: int) -> str:
        pct = 100.0 * done / self.total if self.total else 100.0
        return f"{self.desc}: {pct:5.1f}% ({done:,} of {self.total:,} bytes), {packets:,} packets"

    def update(self, done: int, packets: int) -> None:
        if done == self._shown:
            return
        if self._bar is not None:
            self._bar.update(done - max(self._shown, 0))
        else:
            line = self._line(done, packets)
            if self._display is not None:
                self._display.update({"text/plain": line}, raw=True)
            else:
                sys.stderr.write("\r" + line)
                sys.stderr.flush()
            self._last_line = line
        self._shown = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._display is None and self._last_line:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _ipython_kernel():
    """The running IPython kernel's shell, or None (a terminal, a plain script)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    shell = ipython.get_ipython()
    if shell is None or "IPKernelApp" not in getattr(shell, "config", {}):
        return None
    return shell


class BackgroundStack:
    """A stack running in the background of a notebook (made by :func:`start`).

    Everything here is read between Trio's scheduling turns, in the loop's thread: a snapshot is
    consistent with the batches processed so far. Methods that wait are coroutines for the
    notebook's loop (``await h.wait()``); the others return at once. Layer: notebook.
    """

    def __init__(self, source, *, loop, setup, run, events, recent: int, interval, progress: bool,
                 stack_options: dict, engine_options: dict):
        self.source = source
        self._loop = loop
        self._setup = setup
        self._run = run
        self._kinds = tuple(events)
        self._recent = collections.deque(maxlen=recent)
        self._counts: dict = {}
        self._stack_options = stack_options
        self._engine_options = engine_options
        self._series = None
        self._interval = interval
        self._progress = None
        path = getattr(source, "path", None)
        if progress and not source.live and path is not None:
            try:
                size = os.path.getsize(path)
            except OSError:                 # the run fails when it opens the file, and says why
                size = 0
            if size:
                self._progress = _Progress(path, size)
        self.state = "opening"
        self._stack = None
        self._engine = None
        self._ended = FlowRecords()         # records of the flows that left the table
        self._final_stats = None
        self._final_progress = None         # the source's progress as it closed
        self._error = None
        self._token = None
        self._outer = self._inner = None
        self._stop_requested = False
        self._started = time.monotonic()
        self._elapsed = None
        self._ready = loop.create_future()
        self._done = loop.create_future()

    def __repr__(self) -> str:
        st = self.statistics()
        done, total = st.progress
        pct = f" {100.0 * done / total:.0f}%" if total and st.state == "running" else ""
        error = f" ({st.error})" if st.error is not None else ""
        return f"<BackgroundStack {st.source} {st.state}{pct}, {st.packets} packets{error}>"

    def _repr_html_(self) -> str:
        st = self.statistics()
        rows = [("source", text(st.source)), ("state", text(st.state)), ("elapsed", f"{st.elapsed:.2f} s")]
        done, total = st.progress
        if total:
            rows.append(("progress", f"{100.0 * done / total:.1f}% ({done:,} of {total:,} bytes)"))
        elif self.source.live:
            rows.append(("frames received", f"{done:,}"))
        if st.stack is not None:
            eng = st.stack.engine
            rows += [("packets", f"{eng.packets:,}"), ("flows in the table", f"{eng.flows_active:,}"),
                     ("flows seen", f"{eng.flows_created:,}"), ("malformed", cell(eng.malformed))]
        rows.append(("events", cell(st.events)))
        if st.error is not None:
            rows.append(("error", f'<span style="color:#b00">{text(st.error)}</span>'))
        return table([(text(k), v) for k, v in rows], title="aiomb stack in the background")

    # ---- what a cell reads ---------------------------------------------------------------

    @property
    def stack(self):
        """The running :class:`aiomb.Stack` (kept after the run, for its figures).

        Raises RuntimeError while the source is still opening (``await h.ready()`` waits for
        it) and when the run failed or was stopped before the stack opened.
        """
        if self._stack is None:
            if self._error is not None:
                raise RuntimeError(f"the run failed before its stack opened ({type(self._error).__name__}: "
                                   f"{self._error}); `await h.wait()` re-raises the error") from self._error
            if self.state == "stopped":
                raise RuntimeError("the run was stopped before its stack opened: there is no stack")
            raise RuntimeError("the stack is still opening (a live port attaches in a worker thread); "
                               "`await h.ready()` waits until it is open")
        return self._stack

    def flows(self) -> FlowTable:
        """A live snapshot of the flows as a :class:`aiomb.FlowTable`: the records of the flows that
        already left the table (with their end reason) and of those still in it, as they stand
        (``end_reason`` ``open``), in flow-number order. Empty while the source is opening.

        Raises RuntimeError when the run failed (the error is the exception's cause; ``await
        h.wait()`` re-raises it). Does not block.
        """
        if self._error is not None:
            raise RuntimeError(f"the run failed ({type(self._error).__name__}: {self._error}): its flows "
                               "are not available; `await h.wait()` re-raises the error") from self._error
        out = FlowRecords()
        if self._engine is not None:
            self._ended.extend(self._engine.take_records())
        out.extend(self._ended)
        if self._engine is not None:
            out.extend(self._engine.table_records())
        out.sort()
        return FlowTable(out)

    def statistics(self) -> RunStatistics:
        """A :class:`RunStatistics` snapshot (the stack's last figures once the run is over)."""
        stack_stats = self._final_stats
        if stack_stats is None and self._engine is not None:
            stack_stats = self._stack.statistics()
        port = self.source.statistics() if self.source.live and hasattr(self.source, "statistics") else None
        elapsed = self._elapsed if self._elapsed is not None else time.monotonic() - self._started
        return RunStatistics(
            state=self.state, source=repr(self.source), elapsed=elapsed,
            progress=self._final_progress if self._final_progress is not None else self.source.progress(),
            stack=stack_stats, port=port, events={str(k): n for k, n in self._counts.items()},
            error=None if self._error is None else f"{type(self._error).__name__}: {self._error}")

    def recent_events(self, n: int | None = None) -> list:
        """The last ``n`` events (all that the ring holds when None), oldest first: the kinds given
        to :func:`start` (``events=``), at most ``recent`` of them kept."""
        events = list(self._recent)
        if n is None:
            return events
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative int or None, got {n!r}")
        return events[max(len(events) - n, 0):] if n else []

    def event_counts(self) -> dict:
        """How many events of each of the handle's kinds were raised so far ({kind: count};
        custom events are keyed by their object, built-in kinds by :class:`aiomb.EventKind`)."""
        return dict(self._counts)

    def timeline(self):
        """The per-direction throughput and the flows over packet time as a pandas DataFrame: one
        row per bin (``interval`` seconds, doubled as needed to stay within MAX_BINS), columns
        ``time`` (seconds since the first packet), ``client_bytes``/``server_bytes`` (payload
        the client, resp. the server, sent), ``client_packets``/``server_packets``, ``flows`` (in
        the table at the bin's end), ``interval``. Needs pandas; raises RuntimeError
        when the handle was started with ``interval=None``."""
        import pandas as pd

        rows = self._timeline_rows()
        columns = ["time", "client_bytes", "server_bytes", "client_packets", "server_packets", "flows"]
        frame = pd.DataFrame(rows, columns=columns)
        frame["interval"] = self._series.interval
        return frame

    def _timeline_rows(self) -> list:
        if self._interval is None:
            raise RuntimeError("this handle keeps no timeline: start it with interval=SECONDS (not None)")
        return self._series.rows() if self._series is not None else []

    # ---- plots ---------------------------------------------------------------------------

    def plot_throughput(self, *, ax=None, unit: str = "bit"):
        """Plot the payload throughput of each direction over packet time (client to server and
        server to client, in ``unit`` ``"bit"`` or ``"byte"`` per second); returns the matplotlib
        Axes (drawn into ``ax`` when given). Needs matplotlib."""
        if unit not in ("bit", "byte"):
            raise ValueError(f"unit must be 'bit' or 'byte', got {unit!r}")
        rows = self._timeline_rows()
        ax = _axes(ax)
        scale = 8 if unit == "bit" else 1
        interval = self._series.interval if self._series is not None else self._interval
        times = [r[0] for r in rows]
        for col, label in ((1, "client \u2192 server"), (2, "server \u2192 client")):
            ax.step(times, [r[col] * scale / interval for r in rows], where="post", label=label)
        ax.set_xlabel("seconds since the first packet")
        ax.set_ylabel(f"payload {unit}s per second (bins of {interval:g} s)")
        ax.set_title(f"throughput: {self.source!r}")
        ax.legend()
        return ax

    def plot_flows(self, *, ax=None):
        """Plot the flows in the table over packet time (at each bin's end); returns the
        matplotlib Axes. Needs matplotlib."""
        rows = self._timeline_rows()
        ax = _axes(ax)
        ax.step([r[0] for r in rows], [r[5] for r in rows], where="post")
        ax.set_xlabel("seconds since the first packet")
        ax.set_ylabel("flows in the table")
        ax.set_title(f"flows: {self.source!r}")
        return ax

    def plot_events(self, *, ax=None):
        """A bar chart of the events seen so far by kind (the handle's kinds); returns the
        matplotlib Axes. Needs matplotlib."""
        ax = _axes(ax)
        names = [str(k) for k in self._counts]
        ax.bar(names, list(self._counts.values()))
        ax.set_ylabel("events")
        ax.set_title(f"events by kind: {self.source!r}")
        ax.tick_params(axis="x", labelrotation=45)
        return ax

    # ---- waiting and stopping ------------------------------------------------------------

    async def ready(self):
        """Wait until the stack is open and ``setup`` has run (a live port is attached), just
        before the source starts; returns the :class:`aiomb.Stack`. Raises the run's exception
        when it failed first, RuntimeError when it was stopped first. Awaited on the notebook's
        loop; blocks only the awaiting cell."""
        await asyncio.wait([self._ready, self._done], return_when=asyncio.FIRST_COMPLETED)
        if self._stack is not None:
            return self._stack
        if self._error is not None:
            raise self._error
        raise RuntimeError("the run was stopped before its stack opened")

    async def wait(self) -> None:
        """Wait until the run is over: the source ended (or :meth:`stop` was called) and ``run``
        returned. Re-raises the run's exception as itself (a handler's, the source's, ``setup``'s).
        Awaited on the notebook's loop; blocks only the awaiting cell."""
        await asyncio.shield(self._done)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """End the run cleanly: stop reading the source, end the flows still open (reason
        ``interrupted``; their records stay in :meth:`flows`, their ends are counted and kept in
        :meth:`recent_events` as every event before them), close the source (a live port is
        detached). Returns at once; ``await h.wait()`` waits until it is done. Idempotent; a run
        that is over is left as it is."""
        if self._done.done() or self._stop_requested:
            return
        self._stop_requested = True
        if self._token is not None:
            try:
                self._token.run_sync_soon(self._cancel)
            except trio.RunFinishedError:
                pass

    @property
    def done(self) -> bool:
        """True once the run is over (finished, stopped or failed)."""
        return self._done.done()

    @property
    def error(self) -> BaseException | None:
        """The exception that ended the run, or None."""
        return self._error

    # ---- the run (Trio, in guest mode) ---------------------------------------------------

    def _cancel(self) -> None:
        scope = self._inner if self._inner is not None else self._outer
        if scope is not None:
            scope.cancel()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        if self._stop_requested:            # stopped in the cell that started it: open nothing
            self.state = "stopped"
            return
        with trio.CancelScope() as self._outer:
            options = dict(self._engine_options, **self._stack_options)
            async with open_stack(self.source, **options) as stack:
                try:
                    await self._run_stack(stack)
                finally:
                    self._final_stats = stack.statistics()
                    self._final_progress = self.source.progress()
                    self._engine = None
        if self._stop_requested:
            self.state = "stopped"
        elif self.state != "failed":
            self.state = "finished"

    async def _run_stack(self, stack) -> None:
        engine = stack.engine
        engine.keep_records()
        sub = stack.subscribe(*self._kinds) if self._kinds else None
        ticks = None
        if self._interval is not None:
            self._series = _Series(self._interval)
            ticks = stack.timer(self._interval, interval=self._interval)
        self._stack, self._engine = stack, engine
        if self._setup is not None:
            self._setup(stack)
        self.state = "running"
        self._ready.set_result(None)
        with trio.CancelScope() as self._inner:
            if self._stop_requested:
                self._inner.cancel()
            try:
                async with trio.open_nursery() as nursery:
                    if sub is not None:
                        nursery.start_soon(self._collect, sub)
                    if ticks is not None:
                        nursery.start_soon(self._sample, ticks, engine)
                    progress = trio.CancelScope()
                    if self._progress is not None:
                        nursery.start_soon(self._show_progress, progress)
                    if self._run is not None:
                        nursery.start_soon(self._run, stack)
                    await stack.run()
                    progress.cancel()
            except BaseExceptionGroup as group:
                if len(group.exceptions) != 1:
                    raise
                raise group.exceptions[0] from None     # a task's error, as itself
        if self._inner.cancelled_caught:
            self._interrupt(stack, sub)
        if sub is not None:
            sub.close()
        if self._series is not None:
            self._series.sample(engine.statistics(), 0)     # the last, partial bin
        self._ended.extend(engine.take_records())

    async def _sample(self, ticks, engine) -> None:
        async for fired in ticks:       # the stack stops the capture at each tick: the counters are that moment's
            self._series.sample(engine.statistics(), fired)

    def _interrupt(self, stack, sub) -> None:
        """Stopped: count what the subscription was handed and not taken yet, end the flows still
        open (reason ``interrupted``, so that they get records) and count their events too."""
        dispatcher = stack._dispatcher
        if sub is not None:
            while True:
                try:
                    self._count(sub.receive_batch_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
        if stack.finished.is_set():
            return
        while True:
            done = stack.engine.finish(EndReason.INTERRUPTED)
            dispatcher.dispatch()
            if sub is not None:
                self._count(dispatcher.drain(sub._id))
            if done:
                return

    def _count(self, batch: list) -> None:
        counts = self._counts
        self._recent.extend(batch)
        for ev in batch:
            kind = ev.kind
            counts[kind] = counts.get(kind, 0) + 1

    async def _collect(self, sub) -> None:
        while True:
            try:
                batch = await sub.receive_batch()
            except trio.EndOfChannel:
                return
            self._count(batch)

    async def _show_progress(self, scope) -> None:
        with scope:
            while True:
                self._progress.update(self.source.progress()[0], self._stack.engine.statistics().packets)
                await trio.sleep(PROGRESS_EVERY)

    def _finished(self, outcome) -> None:
        """The guest run's done callback (in the loop's thread)."""
        global _running
        if _running is self:
            _running = None
        self._elapsed = time.monotonic() - self._started
        try:
            outcome.unwrap()
        except BaseException as exc:       # noqa: B036 - kept for wait(), which re-raises it as itself
            self._error = exc
            self.state = "failed"
        if self._progress is not None:
            if self._error is None and not self._stop_requested:
                self._progress.update(self.source.progress()[1], self.statistics().packets)
            self._progress.close()
        self._done.set_result(None)


def _axes(ax):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=(8, 3.5))
    return ax


def start(source, *, setup=None, run=None, events=DEFAULT_EVENTS, recent: int = 1000,
          interval: float | None = 1.0, progress: bool = True, **options) -> BackgroundStack:
    """Run a stack on ``source`` in the background of the running asyncio loop (a Jupyter kernel's)
    and return its :class:`BackgroundStack` at once.

    ``source`` is a capture path, :func:`aiomb.capture` or :func:`aiomb.port`. Before the source
    starts, ``setup(stack)`` (a plain function) may add inline handlers, custom events,
    middleboxes, ``stack.serve(...)`` coroutines and subscriptions; ``run`` (``async def
    run(stack)``) runs beside the stack, e.g. to consume those subscriptions (a subscription nobody
    consumes holds the source back once its queue is full). ``events`` are the kinds (built-in or
    custom) the handle counts and keeps the last ``recent`` of (empty: none); ``interval`` is the
    width in seconds (packet time) of the throughput and flows bins, None for no timeline (it is
    sampled from the engine's per-direction counters at each tick of a stack timer, where a
    capture's reading stops: no Python call per packet); ``progress`` shows a progress bar for captures.
    Other keywords go to :func:`aiomb.open_stack` (``batch_size``, ``max_batches``) and the
    :class:`aiomb.Engine` (``reassembly`` defaults to True here, so that the flows' stream
    columns are filled).

    Raises RuntimeError when no asyncio loop is running (a plain script: call it from a coroutine
    under ``asyncio.run()`` and ``await h.wait()``, or use ``trio.run`` with
    :func:`aiomb.open_stack`) and while another Trio run is going on in this thread (another handle's:
    Trio runs one at a time per thread, so ``await h.wait()`` on it first), TypeError/ValueError for
    bad arguments or engine options. Errors
    of the run itself (the source cannot be opened, a handler raised) are re-raised by ``await
    h.wait()``. Layer: notebook; does not block.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "aiomb.notebook.start() runs the stack in the background of a running asyncio loop, such as a "
            "Jupyter kernel's, and none is running here. In a script, call it from a coroutine run by "
            "asyncio.run() and `await handle.wait()`, or use trio.run() with aiomb.open_stack()") from None
    global _running
    if trio.lowlevel.in_trio_run():
        what = repr(_running) if _running is not None else "not started by aiomb"
        raise RuntimeError(
            f"aiomb.notebook.start(): another Trio run is going on in this thread ({what}): Trio runs one at a time "
            "per thread, so this one cannot start before it is over. `await h.wait()` on the running handle first "
            "(after `h.stop()` to end it now), or do both jobs in one run (setup= and run= take several "
            "subscriptions and coroutines)")
    if isinstance(source, (str, os.PathLike)):
        source = capture(source)
    elif not callable(getattr(source, "receive", None)):
        raise TypeError(f"source must be a capture path, aiomb.capture(...) or aiomb.port(...), got {source!r}")
    if setup is not None and not callable(setup):
        raise TypeError(f"setup must be a function taking the stack, got {setup!r}")
    if run is not None and not callable(run):
        raise TypeError(f"run must be an async function taking the stack, got {run!r}")
    events = tuple(split_kinds(list(events))) if events else ()
    if not isinstance(recent, int) or isinstance(recent, bool) or recent < 0:
        raise ValueError(f"recent must be a non-negative int, got {recent!r}")
    if interval is not None and (not isinstance(interval, (int, float)) or isinstance(interval, bool)
                                 or not math.isfinite(interval) or interval <= 0):
        raise ValueError(f"interval must be a positive number of seconds or None, got {interval!r}")
    stack_options = {k: options.pop(k) for k in _STACK_OPTIONS if k in options}
    check_stack_options(**stack_options)    # here, in the calling cell, not at `await h.wait()`
    options.setdefault("reassembly", True)
    Engine(**options).close()        # bad engine options raise here, in the calling cell
    handle = BackgroundStack(source, loop=loop, setup=setup, run=run, events=events, recent=recent,
                             interval=interval, progress=progress, stack_options=stack_options,
                             engine_options=options)
    _running = handle
    trio.lowlevel.start_guest_run(
        handle._main, run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        run_sync_soon_not_threadsafe=loop.call_soon, done_callback=handle._finished,
        host_uses_signal_set_wakeup_fd=True)
    return handle


__all__ = ["DEFAULT_EVENTS", "BackgroundStack", "RunStatistics", "start"]
