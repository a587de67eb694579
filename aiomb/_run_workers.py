"""A program of your own on N cores: :func:`run_workers` runs a function on each shard of a
capture (fed by a reader through a ShardRing) or of a live port (fed by aiomb's steering
program through a veth pair per worker).

Layer: shells (beside :mod:`aiomb._workers` and :mod:`aiomb._live_workers`, on their reader,
ring, steering and worker processes). The workers are forked before Trio starts in any of them
(a process cannot fork inside a running Trio loop: the child would share its epoll and wakeup
descriptors), which is why this is a function called outside ``trio.run`` and not an option of
``open_stack``. Each worker runs the function on its share and sends back what it returned;
merging the results is the caller's (nothing is shared between workers).
"""

import inspect
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from functools import partial

from ._errors import CaptureError, PortError
from ._workers import (
    DamagedElsewhere,
    RingSource,
    WorkerError,
    WorkerGroup,
    become_worker,
    finish_share,
    fork_stoppable,
    leave,
    ring_damage,
    stop_reader,
    tell,
)
from .flows._types import EndReason
from .io._capture import CaptureSource, capture

RING_OPTIONS = {"vlan_in_key", "checksums"}     # how the reader keys flows, as the engines do


def run_workers(fn, source, *, workers: int, duration: float | None = None, batch_size: int = 2048,
                **engine_options) -> list:
    """Run ``fn`` on ``workers`` shards of a capture or a live port, each in a process of its
    own, and return what each returned, in worker order (``results[i]`` from worker ``i``).

    ``source`` is a capture's path (or :func:`aiomb.capture` of one; a named pipe will do: it is
    read once): one reader process reads it and hands each worker the frames of the flows that
    hash to it (both directions of a flow alike: each flow is seen by exactly one worker). Or a
    live :func:`aiomb.port` for ``duration`` seconds, passive or inline: aiomb's steering
    program sends each worker the frames of its flows (by IP address pair, see README "Many
    cores"; a flow bound with ``Flow.translate`` gets its replies too), and inline each worker
    forwards them (or its handlers drop them).
    ``fn`` is either ``async def fn(stack)``, run under Trio on a stack opened on the worker's
    share (``open_stack(share, **engine_options)``; the worker ends once ``fn`` has returned and
    the stack has processed its whole share), or ``def fn(source)``, called with the share itself
    (an epoll loop, :func:`aiomb.monitor`, an :class:`aiomb.Engine` of your own: on a live
    port, give it ``engine.translation_hook = source.translation_hook``). Inside,
    :func:`aiomb.worker` gives ``(index, workers)``. What ``fn`` returns must pickle. A
    capture's reader keys flows as the engines do: ``vlan_in_key`` and ``checksums`` go to it
    too (with ``def fn(source)`` on a capture, only these, and give your engine the same).

    Call it outside ``trio.run`` (it forks). An exception in a worker stops every worker and is
    raised here with the worker's traceback as a note (a :class:`WorkerError` if it does not
    pickle); a damaged capture raises :class:`aiomb.CaptureError` with its offset. Ctrl-C
    (KeyboardInterrupt) ends the input (a capture's after the frames already read, at the same
    packet in every worker; a port's at once), waits for the workers to finish on what they got,
    then is raised.
    """
    if not callable(fn):
        raise TypeError(f"run_workers() runs a function on each shard: give async def fn(stack) or "
                        f"def fn(source), not {fn!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 1024:
        raise ValueError(f"workers must be an int from 1 to 1024, got {workers!r}")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 1 << 16:
        raise ValueError(f"batch_size must be an int from 1 to 65536, got {batch_size!r}")
    stack_program = inspect.iscoroutinefunction(fn)
    if getattr(source, "live", False):  # a live port (pyroute2 is imported for ports only)
        from .io._port import Port

        if not isinstance(source, Port):
            raise TypeError(f"run_workers() takes aiomb.port(IF) as a live source, not {source!r}")
        if source.queues is not None:
            raise ValueError("run_workers() on a live port takes every queue (the steering program runs on each): "
                             "give aiomb.port(IF) without queues=")
        if duration is None or not duration > 0:
            raise ValueError(f"run_workers() on a live port runs for duration= seconds (> 0), got {duration!r}")
        if engine_options and not stack_program:
            raise TypeError(f"engine options ({', '.join(sorted(engine_options))}) are for a stack program "
                            "(async def fn(stack)); def fn(source) makes its own engine")
        _outside_trio()
        if workers == 1:
            return [_call(fn, source, engine_options, duration)]
        group = PortGroup(source, workers, fn=fn, engine_options=engine_options)
        return group.run(deadline=time.monotonic() + duration)
    path = source.path if isinstance(source, CaptureSource) else source
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"run_workers() shards a capture or a live port: give a capture's path, aiomb.capture(path) "
                        f"or aiomb.port(IF), not {source!r}")
    if duration is not None:
        raise ValueError("duration= is for a live port; a capture runs to its end")
    extra = set(engine_options) - RING_OPTIONS
    if extra and not stack_program:
        raise TypeError(f"engine options ({', '.join(sorted(extra))}) are for a stack program (async def fn(stack)); "
                        "def fn(source) makes its own engine (only vlan_in_key and checksums go with it)")
    _outside_trio()
    if workers == 1:                    # no reader, no fork: the whole capture, here
        return [_call(fn, capture(path), engine_options)]
    group = CaptureGroup(os.fspath(path), workers, fn=fn, batch_size=batch_size, engine_options=engine_options)
    return group.run()


def _outside_trio() -> None:
    trio = sys.modules.get("trio")      # not imported: not inside it either
    if trio is not None and trio.lowlevel.in_trio_run():
        raise RuntimeError("run_workers() forks its workers, which a running Trio loop does not survive: "
                           "call it outside trio.run (e.g. at the top of your program, or in a Jupyter cell "
                           "as a plain call), and open the stacks in the function it runs")


class ProgramGroup(WorkerGroup):
    """The processes of one :func:`run_workers` call and what they send back: the subclasses make
    the workers' shares and stop them. Layer: shells."""

    def __init__(self, workers: int, *, fn, engine_options: dict):
        super().__init__(workers)
        self.fn = fn
        self.engine_options = engine_options

    def _start(self) -> None:
        """Fork the workers (and whatever feeds them)."""
        raise NotImplementedError

    def _stop(self) -> None:
        """End the workers' input (Ctrl-C, the duration): they finish on what they got."""
        raise NotImplementedError

    def _abort(self) -> None:
        """A process failed: the others leave."""
        raise NotImplementedError

    def _damage(self) -> CaptureError | None:
        """After the run: the damage found in the input, if any."""
        return None

    def _fork_workers(self, share, ctx) -> None:
        """Fork the workers, each running ``fn`` on ``share(index)``."""
        for index in range(self.workers):
            self._fork(ctx, _program_worker, index, self.fn, self.engine_options, share)

    def run(self, deadline: float | None = None) -> list:
        """Start, then gather each worker's result until all have sent theirs; at ``deadline``
        (time.monotonic()) or Ctrl-C, the input ends first."""
        import multiprocessing.connection

        results = [None] * self.workers
        failure = None
        interrupted = stopped = False
        try:
            self._start()
            live = {conn: i for i, conn in enumerate(self._conns)}     # the workers, then a reader
            while live:
                timeout = None if deadline is None or stopped else max(deadline - time.monotonic(), 0.0)
                try:
                    ready = multiprocessing.connection.wait(list(live), timeout)
                except KeyboardInterrupt:
                    interrupted = True
                    ready = []
                if (interrupted or (deadline is not None and time.monotonic() >= deadline)) and not stopped:
                    stopped = True
                    self._stop()
                for conn in ready:
                    i = live.pop(conn)
                    who = "the reader" if i == self.workers else f"worker {i}"
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        failure = failure or WorkerError(f"{who} ended without a word (killed?)")
                        continue
                    if msg[0] == "result":
                        results[i] = msg[1]
                    elif msg[0] == "raised":
                        failure = failure or _worker_exception(who, msg[1], msg[2])
                    elif msg[0] == "failed":
                        failure = failure or WorkerError(f"{who} failed:\n{msg[1]}")
                if failure is not None:
                    break
        finally:
            self._abort()               # a process still waiting leaves
            self._join()
        if failure is not None:
            raise failure
        damaged = self._damage()
        if damaged is not None:
            raise damaged
        if interrupted:
            raise KeyboardInterrupt
        return results


class CaptureGroup(ProgramGroup):
    """:func:`run_workers` on a capture: the workers take its frames from a ShardRing (which
    they fill themselves from a classic pcap file, else a reader process does)."""

    def __init__(self, path: str, workers: int, *, fn, batch_size: int, engine_options: dict):
        super().__init__(workers, fn=fn, engine_options=engine_options)
        self.path = path
        self.batch_size = batch_size
        self.ring = None

    def _start(self) -> None:
        def share(ring, index: int) -> RingSource:
            become_worker(index, self.workers, ring)
            return RingSource(ring, index, path=self.path)

        self.ring = self._fork_ring(self.path, lambda ring, ctx: self._fork_workers(partial(share, ring), ctx),
                                    batch_size=self.batch_size,
                                    vlan_in_key=bool(self.engine_options.get("vlan_in_key", False)),
                                    checksums=self.engine_options.get("checksums", "ignore"))

    def _stop(self) -> None:
        stop_reader(self.ring, self.reader_pid, int(EndReason.INTERRUPTED))

    def _damage(self) -> CaptureError | None:
        return ring_damage(self.ring, self.path)

    def _abort(self) -> None:
        if self.ring is not None:
            self.ring.abort()


class PortGroup(ProgramGroup):
    """:func:`run_workers` on a live port: aiomb's steering program sends each worker its flows'
    frames through a veth pair of its own (:class:`aiomb.io._fanout.Fanout`)."""

    def __init__(self, port, workers: int, *, fn, engine_options: dict):
        from .io._fanout import Fanout

        super().__init__(workers, fn=fn, engine_options=engine_options)
        self.port = port
        self.fanout = Fanout(port.iface, workers, inline=port.inline, mode=port.mode, netns=port.netns,
                             force=port.force, prefilter=port.prefilter)

    def _start(self) -> None:
        import multiprocessing

        from ._live_workers import READY_TIMEOUT

        self.fanout.open()
        ctx = multiprocessing.get_context("fork")
        fork_stoppable(lambda: self._fork_workers(self._share, ctx))    # SIGUSR1 ends a worker's input
        if not self.fanout.attach_when_ready(lambda: not all(p.is_alive() for p in self._procs), READY_TIMEOUT):
            self._stop()                # a worker failed (its message says why) or none came in time
            if all(p.is_alive() for p in self._procs):
                raise PortError(f"{self.port.iface}: the workers did not open their ports within "
                                f"{READY_TIMEOUT:.0f} s")

    def _share(self, index: int):
        become_worker(index, self.workers, steered=self.fanout)
        share = self.fanout.worker_port(index, frame_size=self.port.frame_size, frames=self.port.frames,
                                        tick=self.port.tick)
        for signum in (signal.SIGUSR1, signal.SIGTERM):     # the parent's stop; the parent died
            signal.signal(signum, lambda signum, frame: share.stop())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        return share

    def _stop(self) -> None:
        self.fanout.detach()            # no new frames; then every worker ends its flows
        for proc in self._procs:
            try:
                os.kill(proc.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass

    def _abort(self) -> None:
        try:
            self._stop()
        finally:
            self.fanout.close()


def _worker_exception(who: str, pickled: bytes | None, text: str) -> BaseException:
    """The exception a worker raised, with its traceback as a note; a WorkerError if it does not
    come back through pickle."""
    try:
        exc = pickle.loads(pickled) if pickled is not None else None
    except Exception:
        exc = None
    if not isinstance(exc, BaseException):
        return WorkerError(f"{who} failed:\n{text}")
    exc.add_note(f"raised in {who} of run_workers():\n{text.rstrip()}")
    return exc


def _program_worker(conn, index: int, fn, engine_options: dict, share) -> None:
    """A worker's life: ``fn`` on ``share(index)``; what it returned (or raised) to the parent
    (nothing if the parent died: a live worker then cleans up its share of the steering)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # the parent ends the input instead
    try:
        result = _call(fn, share(index), engine_options)
        try:
            tell(conn, ("result", result))
        except Exception as exc:
            tell(conn, ("failed", f"its result {type(result).__name__} does not pickle ({exc}): return plain "
                                  "data (numbers, strings, lists, dicts, FlowRecords)"))
        finish_share()                  # fn may have stopped reading before the end: the others go on
    except DamagedElsewhere:
        tell(conn, ("result", None))    # the parent reports the damage
    except BaseException as exc:
        text = traceback.format_exc()
        try:
            pickled = pickle.dumps(exc)
        except Exception:
            pickled = None
        tell(conn, ("raised", pickled, text))
    finally:
        conn.close()
        leave()


def _call(fn, source, engine_options: dict, duration: float | None = None):
    """What ``fn`` returns run on ``source``: under Trio on a stack (a coroutine function), or
    called with the source; a live source is stopped after ``duration`` seconds."""
    stopper = None
    if duration is not None:
        stopper = threading.Timer(duration, source.stop)
        stopper.daemon = True
        stopper.start()
    try:
        if inspect.iscoroutinefunction(fn):
            import trio

            return trio.run(_stack_program, fn, source, engine_options)
        try:
            return fn(source)
        finally:
            source.close()
    finally:
        if stopper is not None:
            stopper.cancel()


async def _stack_program(fn, source, engine_options: dict):
    """``await fn(stack)`` beside ``stack.run()``: the worker's share processed and ``fn`` returned."""
    import trio

    from ._stack import open_stack

    result = None

    async def call() -> None:
        nonlocal result
        result = await fn(stack)

    async with open_stack(source, **engine_options) as stack:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await stack.run()
        except BaseExceptionGroup as group:
            if len(group.exceptions) != 1:
                raise
            raise group.exceptions[0] from None     # fn's own exception, as it raised it
    return result
