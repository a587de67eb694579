"""A program of your own on N cores: :func:`run_workers` runs a function on each shard of a capture.

Layer: shells (beside :mod:`aiomb._workers`, on its reader, ring and worker processes). The
workers are forked before Trio starts in any of them (a process cannot fork inside a running
Trio loop: the child would share its epoll and wakeup descriptors), which is why this is a
function called outside ``trio.run`` and not an option of ``open_stack``. Each worker runs the
function on its share of the capture and sends back what it returned; merging the results is
the caller's (nothing is shared between workers).
"""

import inspect
import os
import pickle
import signal
import traceback

from ._core import ShardRing
from ._errors import CaptureError
from ._records import CAPTURE_BLOCK
from ._workers import (DamagedElsewhere, RingSource, WorkerError, WorkerGroup, become_worker, fork_reader, reader_main,
                       stop_reader)
from .flows._types import EndReason
from .io._capture import CaptureSource, capture


RING_OPTIONS = {"vlan_in_key", "checksums"}     # how the reader keys flows, as the engines do


def run_workers(fn, source, *, workers: int, batch_size: int = 2048, **engine_options) -> list:
    """Run ``fn`` on ``workers`` shards of a capture, each in a process of its own, and return
    what each returned, in worker order (``results[i]`` from worker ``i``).

    ``source`` is a capture's path (or :func:`aiomb.capture` of one; a named pipe will do: it is
    read once). One reader process reads it and hands each worker the frames of the flows that
    hash to it (both directions of a flow alike: each flow is seen by exactly one worker).
    ``fn`` is either ``async def fn(stack)``, run under Trio on a stack opened on the worker's
    share (``open_stack(share, **engine_options)``; the worker ends once ``fn`` has returned and
    the stack has processed its whole share), or ``def fn(source)``, called with the share itself
    (an epoll loop, :func:`aiomb.monitor`, an :class:`aiomb.Engine` of your own). Inside,
    :func:`aiomb.worker` gives ``(index, workers)``. What ``fn`` returns must pickle. The
    reader keys flows as the engines do: ``vlan_in_key`` and ``checksums`` go to it too (with
    ``def fn(source)``, only these, and give your engine the same).

    Call it outside ``trio.run`` (it forks). An exception in a worker stops every worker and is
    raised here with the worker's traceback as a note (a :class:`WorkerError` if it does not
    pickle); a damaged capture raises :class:`aiomb.CaptureError` with its offset. Ctrl-C
    (KeyboardInterrupt) ends the input after the batch at hand, waits for the workers to
    finish on what they got (their open flows end ``interrupted``), then is raised.
    """
    if not callable(fn):
        raise TypeError(f"run_workers() runs a function on each shard: give async def fn(stack) or "
                        f"def fn(source), not {fn!r}")
    path = source.path if isinstance(source, CaptureSource) else source
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"run_workers() shards a capture: give its path or aiomb.capture(path), not {source!r} "
                        "(for a live port run your module under `aiomb run APP --iface IF --workers N`)")
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 1024:
        raise ValueError(f"workers must be an int from 1 to 1024, got {workers!r}")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 1 << 16:
        raise ValueError(f"batch_size must be an int from 1 to 65536, got {batch_size!r}")
    extra = set(engine_options) - RING_OPTIONS
    if extra and not inspect.iscoroutinefunction(fn):
        raise TypeError(f"engine options ({', '.join(sorted(extra))}) are for a stack program (async def fn(stack)); "
                        "def fn(source) makes its own engine (only vlan_in_key and checksums go with it)")
    _outside_trio()
    if workers == 1:                    # no reader, no fork: the whole capture, here
        return [_call(fn, capture(path), engine_options)]
    group = ProgramGroup(os.fspath(path), workers, fn=fn, batch_size=batch_size, engine_options=engine_options)
    return group.run()


def _outside_trio() -> None:
    try:
        import trio
    except ImportError:                 # no Trio at all: not inside it either
        return
    if trio.lowlevel.in_trio_run():
        raise RuntimeError("run_workers() forks its workers, which a running Trio loop does not survive: "
                           "call it outside trio.run (e.g. at the top of your program, or in a Jupyter cell "
                           "as a plain call), and open the stacks in the function it runs")


class ProgramGroup(WorkerGroup):
    """The reader and worker processes of one :func:`run_workers` call. Layer: shells."""

    def __init__(self, path: str, workers: int, *, fn, batch_size: int, engine_options: dict):
        super().__init__(workers)
        self.path = path
        self.fn = fn
        self.batch_size = batch_size
        self.engine_options = engine_options
        self.ring = None

    def run(self) -> list:
        import multiprocessing
        import multiprocessing.connection

        source = capture(self.path, chunk_size=CAPTURE_BLOCK)
        source.open()                   # a missing or damaged file fails here, once
        try:
            self.ring = ShardRing(self.workers, slot_frames=self.batch_size,
                                  vlan_in_key=bool(self.engine_options.get("vlan_in_key", False)),
                                  checksums=self.engine_options.get("checksums", "ignore"))
            ctx = multiprocessing.get_context("fork")
            for index in range(self.workers):
                self._fork(ctx, _program_worker, self.ring, index, self.workers, self.fn, self.engine_options)
            fork_reader(lambda: self._fork(ctx, reader_main, self.ring, source, self.batch_size))
        finally:
            source.close()              # the reader has its own
        results = [None] * self.workers
        damaged = failure = None
        interrupted = False
        live = {conn: i for i, conn in enumerate(self._conns)}     # the workers, then the reader
        try:
            while live:
                try:
                    ready = multiprocessing.connection.wait(list(live))
                except KeyboardInterrupt:
                    interrupted = True
                    stop_reader(self.ring, self._procs[-1].pid, int(EndReason.INTERRUPTED))
                    continue
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
                    elif msg[0] == "capture-error":
                        damaged = CaptureError(msg[1], offset=msg[2], path=msg[3])
                        live[conn] = i          # its "done" follows
                    elif msg[0] == "raised":
                        failure = failure or _worker_exception(who, msg[1], msg[2])
                    elif msg[0] == "failed":
                        failure = failure or WorkerError(f"{who} failed:\n{msg[1]}")
                if failure is not None:
                    self.ring.abort()
                    break
        finally:
            self.ring.abort()           # a worker or the reader still waiting leaves
            self._join()
        if failure is not None:
            raise failure
        if damaged is not None:
            raise damaged
        if interrupted:
            raise KeyboardInterrupt
        return results


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


def _program_worker(conn, ring: ShardRing, index: int, count: int, fn, engine_options: dict) -> None:
    """A worker's life: ``fn`` on its share of the ring; what it returned (or raised) to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # the parent ends the input instead
    become_worker(index, count, ring)
    try:
        result = _call(fn, RingSource(ring, index), engine_options)
        try:
            conn.send(("result", result))
        except Exception as exc:
            conn.send(("failed", f"its result {type(result).__name__} does not pickle ({exc}): return plain "
                                 "data (numbers, strings, lists, dicts, FlowRecords)"))
    except DamagedElsewhere:
        conn.send(("result", None))     # the reader reports the damage
    except BaseException as exc:
        text = traceback.format_exc()
        try:
            pickled = pickle.dumps(exc)
        except Exception:
            pickled = None
        conn.send(("raised", pickled, text))
    finally:
        conn.close()


def _call(fn, source, engine_options: dict):
    """What ``fn`` returns run on ``source``: under Trio on a stack (a coroutine function), or
    called with the source."""
    if inspect.iscoroutinefunction(fn):
        import trio

        return trio.run(_stack_program, fn, source, engine_options)
    try:
        return fn(source)
    finally:
        source.close()


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
