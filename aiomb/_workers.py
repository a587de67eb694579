"""Flow records of one capture from several shared-nothing engines, one per process.

Layer: shells (beside _records, on the same :class:`FlowRun`). Each worker process reads the
whole capture and runs its own engine made with ``shard=(index, count)``: every packet moves
its clock (so flows time out at the same packets as in one engine), but it tracks only the flows
whose key hashes to its shard (a symmetric hash: both directions of a flow go to one worker).
A worker names each flow by its first packet's number in the capture, and marks each record
with where its flow left the table (``order``). The parent merges the workers' records in that
order, up to the packet every worker has passed, and numbers the flows 1, 2, ... by their first
packets: the same records, in the same order, as one engine writes. Limits hold per
worker (``max_flows`` and the stream memory are each worker's): with evictions the answers differ.

``aiomb run APP --workers N`` forks N processes that each run the app on a shard of the capture:
:func:`worker` tells an app which one it is, and the stacks it opens take that shard.
"""

import array
import bisect
import os
import signal
import time
import traceback

from ._core import FlowRecords
from ._errors import CaptureError
from ._records import CAPTURE_BLOCK, FlowRun
from .flows._stats import EngineStatistics, MalformedCounts
from .flows._types import EndReason
from .io._capture import capture

SEND_EVERY = 8          # batches of records a worker gathers before it sends them (and how far it got)
SEND_ROWS = 4096        # or rows
END = 1 << 62           # how far a worker got once it has read its whole input

# Statistics every worker counts alike (each reads every packet); the rest are summed.
SAME_IN_EVERY_WORKER = ("packets", "bytes", "non_ip", "other_protocol", "malformed", "fragments_held",
                        "fragments_received", "fragment_memory", "max_fragment_memory", "fragments_reassembled",
                        "fragments_expired", "fragments_evicted", "fragment_overlaps", "max_stream_memory",
                        "max_flows", "max_event_memory")
LARGEST = ("stream_memory_peak", "stream_buffer_peak", "event_memory_peak")


class WorkerError(RuntimeError):
    """A worker process failed; the message carries its traceback."""


_current = (0, 1)


def worker() -> tuple[int, int]:
    """This process's place among the workers of ``aiomb run --workers N``: ``(index, N)``;
    ``(0, 1)`` in a program of its own. Its stacks (``open_stack``, ``aiomb.monitor``) track only
    the flows of shard ``index`` (each flow lives in exactly one worker); statistics and results
    are the worker's own: merge them across workers yourself (e.g. each writes its results
    tagged with its index, and you add them up after the run)."""
    return _current


def become_worker(index: int, count: int) -> None:
    """Make this (forked) process worker ``index`` of ``count``."""
    global _current
    _current = (index, count)


def shard_option(engine_options: dict) -> dict:
    """The engine options with this worker's shard, unless they name one."""
    if _current[1] > 1 and "shard" not in engine_options:
        return {**engine_options, "shard": _current}
    return engine_options


def _worker(conn, index: int, count: int, path: str, options: dict) -> None:
    """A worker's life: run the capture through a shard engine, sending each batch's records
    (with the flows it created and how far it got) to the parent, then its statistics."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        run = FlowRun(capture(path, chunk_size=CAPTURE_BLOCK), shard=(index, count), every_batch=True, **options)

        stop_at = None                  # (packet number, reason): where every worker stops

        def stop_if_asked(source) -> None:
            nonlocal stop_at
            if stop_at is None and conn.poll():     # asked to stop: say where we are, learn where all stop
                conn.recv()
                conn.send(("stopping", engine.packets))
                stop_at = conn.recv()
            if stop_at is not None and engine.packets >= stop_at[0]:
                run.stop(EndReason(stop_at[1]))

        run.progress = stop_if_asked
        engine = run.engine
        held, batches = FlowRecords(), 0
        try:
            for records in run:
                held.extend(records)
                batches += 1
                if batches >= SEND_EVERY or len(held) >= SEND_ROWS:
                    conn.send(("records", engine.packets, bytes(memoryview(held)),
                               engine.take_created().tobytes(), run.digests(held) if run.hashes else None))
                    held, batches = FlowRecords(), 0
        except CaptureError as exc:
            conn.send(("capture-error", exc.detail, exc.offset, exc.path))
        conn.send(("records", END, bytes(memoryview(held)), engine.take_created().tobytes(),
                   run.digests(held) if run.hashes else None))
        conn.send(("done", run.statistics()))
    except BaseException:                   # everything goes to the parent
        conn.send(("failed", traceback.format_exc()))
    finally:
        conn.close()


class ShardedRun:
    """A capture's flow records from ``workers`` engines in as many processes, merged: the
    interface of :class:`FlowRun` (iterate for record batches, ``stop()``, ``digests()``,
    ``statistics()``, ``elapsed``), and the same records in the same order as one engine's.
    ``options`` are FlowRun's and the engine's. Layer: shells; blocks while it reads."""

    def __init__(self, path, workers: int, *, progress=None, **options):
        if not isinstance(workers, int) or isinstance(workers, bool) or not 2 <= workers <= 1024:
            raise ValueError(f"workers must be an int from 2 to 1024 (1: use FlowRun), got {workers!r}")
        self.path = os.fspath(path)
        self.workers = workers
        self.options = options
        self.hashes = tuple(options.get("hashes", ()))
        self.progress = progress
        self.reason = None
        self.opened = False
        self.started = self.elapsed = None
        self._stats: list = []
        self._digests: dict = {}        # flow number -> its row's digests, until digests() takes them
        self._conns: list = []
        self._procs: list = []

    def stop(self, reason: EndReason = EndReason.INTERRUPTED) -> None:
        """End the run soon; the open flows end with ``reason``. Every worker stops after the same
        packet (the furthest any of them had reached when asked; they read in the same batches),
        so the records are those of one engine stopped there. Safe in a signal handler."""
        if self.reason is None:
            self.reason = reason

    def _start(self) -> None:
        import multiprocessing

        with open(self.path, "rb"):         # a missing or unreadable file fails here, once
            pass
        ctx = multiprocessing.get_context("fork")
        for index in range(self.workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, index, self.workers, self.path, self.options),
                               name=f"aiomb-worker-{index}", daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self.opened = True

    def __iter__(self):
        import multiprocessing.connection

        self.started = time.monotonic()
        self._start()
        count = self.workers
        pending = [FlowRecords() for _ in range(count)]
        digests: list = [[] for _ in range(count)]      # each pending row's digests
        created = [array.array("Q") for _ in range(count)]
        reached = [0] * count           # the packet number each worker has passed
        numbered = array.array("Q")     # the ids of every flow created up to the merge point, rising
        error = failure = None
        live = {conn: i for i, conn in enumerate(self._conns)}
        stopping = None                 # once stop() was called: where each worker was when asked
        decided = False
        try:
            while live:
                if self.reason is not None and stopping is None:
                    stopping = {}
                    for conn in live:
                        conn.send("stop")
                if stopping is not None and not decided and all(c in stopping for c in live):
                    # every worker stops after the same packet; if one has read the whole input,
                    # the others read it all too (the flows end as at its end)
                    at = END if END in reached else max(stopping.values(), default=0)
                    for conn in stopping:
                        if conn in live:
                            conn.send((at, int(self.reason)))
                    decided = True
                for conn in multiprocessing.connection.wait(list(live), timeout=0.25):
                    i = live[conn]
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):     # gone, maybe in the middle of a message
                        del live[conn]
                        failure = failure or f"worker {i} ended without a word (killed?)"
                        continue
                    if msg[0] == "records":
                        _, reached[i], rows, ids, row_digests = msg
                        pending[i].extend(FlowRecords.frombytes(rows))
                        created[i].frombytes(ids)
                        if row_digests is not None:
                            digests[i].extend(row_digests)
                    elif msg[0] == "stopping":
                        stopping[conn] = msg[1]
                    elif msg[0] == "capture-error":
                        error = CaptureError(msg[1], offset=msg[2], path=msg[3])
                    elif msg[0] == "done":
                        self._stats.append(msg[1])
                        del live[conn]
                    else:
                        failure = msg[1]
                        del live[conn]
                if failure is not None:
                    break
                if self.progress is not None:
                    self.progress(self)
                merged = self._merge(pending, digests, created, numbered, min(reached))
                if len(merged):
                    yield merged
        finally:
            self._finish()
        if failure is not None:
            raise WorkerError(failure)
        if error is not None:
            raise error

    def _merge(self, pending, digests, created, numbered, reached: int) -> FlowRecords:
        """The records every worker has written up to packet ``reached``, in one engine's order
        and numbering."""
        limit = (reached + 1) << 1
        out = FlowRecords()
        by_id = {}                      # the digests of the rows taken, by their workers' ids
        for i, rows in enumerate(pending):
            part = rows.split(limit)
            if self.hashes:
                by_id.update(zip(part.ids(), digests[i][:len(part)]))
                del digests[i][:len(part)]
            out.extend(part)
        new = []
        for ids in created:
            k = bisect.bisect_right(ids, reached)    # the ids at most ``reached`` (rising)
            new.extend(ids[:k])
            del ids[:k]
        new.sort()
        numbered.extend(new)
        if len(out):
            out.sort_by_leaving()
            row_digests = [by_id[k] for k in out.ids()] if self.hashes else None
            out.number_by(numbered)
            if self.hashes:
                self._digests.update(zip(out.ids(), row_digests))
        return out

    def _finish(self) -> None:
        self.elapsed = time.monotonic() - self.started
        for conn in self._conns:
            conn.close()
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def digests(self, records: FlowRecords) -> list:
        """Each row's hex digests (client then server, per hash name), as FlowRun's."""
        return [self._digests.pop(n) for n in records.ids()]

    def statistics(self) -> EngineStatistics:
        """The workers' statistics as one engine's: flow and TCP/UDP counters summed, the
        counters of what every worker reads alike (packets, malformed, fragments) once."""
        if not self._stats:
            raise RuntimeError("statistics() comes after the run")
        first = self._stats[0]
        values = {}
        for field in EngineStatistics.__attrs_attrs__:
            name = field.name
            vals = [getattr(s, name) for s in self._stats]
            if name in SAME_IN_EVERY_WORKER:
                values[name] = vals[0]
            elif name in LARGEST:
                values[name] = max(vals)
            elif isinstance(vals[0], MalformedCounts):
                values[name] = vals[0]
            else:
                values[name] = sum(vals)
        return type(first)(**values)

