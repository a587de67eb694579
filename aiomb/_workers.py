"""Flow records of one capture from several shared-nothing engines, one per process.

Layer: shells (beside _records, on the same :class:`FlowRun`). N worker processes take the
capture's frames from a :class:`ShardRing` in shared memory, each frame marked with the shard
whose engine tracks its flow (a symmetric hash: both directions of a flow go to one worker;
fragments and frames that are not TCP or UDP go to every worker). A classic pcap file on disk
the workers read themselves, block by block in turn; anything else (pcapng, gzip, a named pipe)
one reader process reads into the ring. Each worker runs its own engine made with
``shard=(index, count)`` on every frame: another shard's frame comes as a clock tick (it counts
and moves the clock, so flows time out at the same packets as in one engine), its own with their
bytes. A worker names each flow by its first packet's number in the capture, and marks each
record with where its flow left the table (``order``). The parent merges the workers' records in
that order, up to the packet every worker has passed, and numbers the flows 1, 2, ... by their
first packets: the same records, in the same order, as one engine writes. Limits hold per worker
(``max_flows`` and the stream memory are each worker's): with evictions the answers differ.

``aiomb run APP --workers N`` forks N processes that each run the app on a shard of the
capture, fed through a ring too (:func:`worker_source`): :func:`worker` tells an app which
one it is, and the stacks it opens take that shard.
"""

import array
import bisect
import collections
import os
import signal
import time
import traceback

from ._core import FlowRecords, FrameBatch, ShardRing, last_flow_id
from ._errors import CaptureError
from ._records import CAPTURE_BLOCK, FlowRun, ReadingStopped, break_read, read_breakable
from .flows._stats import EngineStatistics, MalformedCounts
from .flows._types import EndReason
from .io._capture import capture

SEND_EVERY = 8          # batches of records a worker gathers before it sends them (and how far it got)
SEND_ROWS = 4096        # or rows
IDLE_MS = 10            # or its input has had nothing for this long (a pipe's writer pauses)
WAIT_MS = 100           # a Trio stack's wait for a paused input, in a thread: how long before it looks at cancellation
END = 1 << 62           # how far a worker got once it has read its whole input

# Statistics every worker counts alike (each reads every packet); the rest are summed.
SAME_IN_EVERY_WORKER = ("packets", "bytes", "non_ip", "other_protocol", "malformed", "tunneled_packets",
                        "fragments_held",
                        "fragments_received", "fragment_memory", "max_fragment_memory", "fragments_reassembled",
                        "fragments_expired", "fragments_evicted", "fragment_overlaps",
                        "fragment_duplicates", "max_stream_memory",
                        "max_flows", "max_event_memory")
LARGEST = ("stream_memory_peak", "stream_buffer_peak", "event_memory_peak")
LIMITS = ("max_fragment_memory", "max_stream_memory", "max_flows", "max_event_memory")


class DamagedElsewhere(CaptureError):
    """A worker's input ended at a damaged capture, which the parent reports once (the words and
    offset are in the ring): the worker ends its run as at the damage and says nothing itself."""


class WorkerError(RuntimeError):
    """A worker process failed; the message carries its traceback."""


_current = (0, 1)
_ring = None            # this worker's ShardRing (aiomb run --workers on a capture)
_steered = None         # the Fanout whose steering program sends this worker its frames (a live port)
_parent = None          # the pid of the process that forked this worker (see end_with_parent)
PR_SET_PDEATHSIG = 1    # prctl(2)


def worker() -> tuple[int, int]:
    """This process's place among the workers of ``aiomb run --workers N``: ``(index, N)``;
    ``(0, 1)`` in a program of its own. On a capture its stacks (``open_stack``, ``aiomb.monitor``)
    track only the flows of shard ``index``; on a live port the steering program sends it only
    its flows' frames: each flow lives in exactly one worker. Statistics and results are the
    worker's own: merge them across workers yourself (e.g. each writes its results tagged with
    its index, and you add them up after the run)."""
    return _current


def become_worker(index: int, count: int, ring: ShardRing | None = None, *, steered=None) -> None:
    """Make this (forked) process worker ``index`` of ``count``: reading its share of a capture
    from ``ring`` (see :func:`worker_source`; its stacks take the shard), or the frames that the
    steering program of the Fanout ``steered`` sent it from a live port (its stacks track all
    they get; :func:`leave` cleans up its share of the Fanout if the parent dies)."""
    global _current, _ring, _steered
    _current = (index, count)
    _ring = ring
    _steered = steered


def worker_source(path=None) -> "RingSource | None":
    """This worker's share of the capture the reader reads (``aiomb run --workers``), or None."""
    return None if _ring is None else RingSource(_ring, _current[0], path=path)


def finish_share() -> None:
    """In a worker of a capture (:func:`worker_source`) whose program returned: take the rest of
    its share without processing it, so that the other workers go on to the end (every slot
    waits for every worker, and the workers read the file's blocks in turn). At once when the
    share has ended; a ring aborted (a process failed) ends it too."""
    if _ring is None:
        return
    batch = FrameBatch(2048)
    try:
        while _ring.receive(_current[0], batch) is not None:
            pass
    except RuntimeError:                # aborted: everyone leaves
        pass
    _ring.close(_current[0])


def end_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """In a process just forked by process ``parent`` (its pid, taken before the fork): have
    ``signum`` sent to this one when the parent dies (Linux's PR_SET_PDEATHSIG: a parent killed
    by SIGKILL passes no signal on, and a worker that waits on something else than the parent
    would wait forever), at once if it died already. The signal comes when the thread that
    forked ends: fork from a thread that outlives the workers (the forking calls wait for them)."""
    import ctypes

    global _parent
    _parent = parent
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:          # it died before the prctl
        os.kill(os.getpid(), signum)


def child_of(parent: int, target, *args) -> None:
    """``target(*args)`` in a process forked by ``parent``, which ends (SIGTERM) when the
    parent dies (:func:`end_with_parent`): the target of the workers' and readers' processes."""
    end_with_parent(parent)
    target(*args)


def orphaned() -> bool:
    """Whether the process that forked this worker has died (and this one was reparented)."""
    return _parent is not None and os.getppid() != _parent


def tell(conn, msg) -> None:
    """Send ``msg`` to the parent over ``conn``; nothing once the parent has died (no one reads)."""
    try:
        conn.send(msg)
    except OSError:
        if not orphaned():
            raise


def leave() -> None:
    """At the end of a worker's life: if it read a live port's steered frames and its parent
    died before it could close the steering (SIGKILL), do for this worker's share what the
    parent's close would have: stop the steering and delete this worker's veth pairs."""
    if _steered is not None and orphaned():
        _steered.release(_current[0])


def shard_option(engine_options: dict) -> dict:
    """The engine options with this worker's shard, unless they name one (or the worker's
    frames were steered to it: they are all its own)."""
    if _current[1] > 1 and _steered is None and "shard" not in engine_options:
        return {**engine_options, "shard": _current}
    return engine_options


def quiet_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def fork_stoppable(start) -> None:
    """Call ``start()``, which forks processes that SIGUSR1 stops (the reader, a live worker),
    with SIGUSR1 blocked: a child keeps it blocked until its handler is in place (an early
    stop cannot kill it)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ring_for(source, workers: int, *, batch_size: int, vlan_in_key: bool, checksums: str = "ignore") -> ShardRing:
    """The ring for an open capture ``source``: its workers read a classic pcap file on disk
    themselves, anything else is for a reader process to feed (``ring.workers_reading`` says
    which; ``batch_size``: the frames of the reader's batches)."""
    if ShardRing.workers_read(source.reader):
        return ShardRing(workers, vlan_in_key=vlan_in_key, checksums=checksums, capture=source.reader)
    return ShardRing(workers, slot_frames=batch_size, vlan_in_key=vlan_in_key, checksums=checksums)


def stop_reader(ring: ShardRing, pid: int | None, reason: int) -> None:
    """End the ring's input after the batch (or the blocks) at hand, the open flows with
    ``reason``; SIGUSR1 breaks the wait of a reader process ``pid`` (None: the workers read) for
    a quiet pipe. Safe in a signal handler."""
    ring.request_stop(reason)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass


def reader_main(conn, ring: ShardRing, source, batch_size: int) -> None:
    """The reader's life: the capture's frames into the ring, batch by batch, then its end (the
    end of the file, a stop the parent asked for, or a damaged record: reported here). Forked
    by :func:`fork_stoppable`, stopped by :func:`stop_reader`."""
    quiet_signals()
    signal.signal(signal.SIGUSR1, lambda signum, frame: break_read())      # see stop_reader
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    try:
        batch = FrameBatch(batch_size)
        gather = os.path.isfile(source.path)        # a pipe's next frames may be long in coming
        while True:
            reason = ring.stop_requested
            if reason:
                ring.end(reason)
                break
            try:
                count = read_breakable(source, batch)
            except ReadingStopped:
                continue                # the stop is in the ring: ended at the top
            except CaptureError as exc:
                ring.end(int(EndReason.END_OF_CAPTURE), damage=exc)     # the parent reports it
                break
            if count is None:
                ring.end(int(EndReason.END_OF_CAPTURE))
                break
            if not ring.send(batch, gather):
                break                   # aborted: a worker failed
        conn.send(("done", None))
    except BaseException:
        conn.send(("failed", traceback.format_exc()))
    finally:
        source.close()
        conn.close()


class RingSource:
    """A worker's share of a capture that comes through a :class:`ShardRing`: the source
    interface of :func:`aiomb.capture` (``read``, ``receive``, ``close``...); every frame,
    another shard's as a clock tick. At the end, ``end_reason`` is the reason the ring posted
    (the end of the file, or the stop the parent asked for: INTERRUPTED), with which the shells
    (FlowRun, the stack, monitors) end the open flows; a damaged capture raises
    DamagedElsewhere there (the parent reports where, from the ring). Layer: shells."""

    live = False

    def __init__(self, ring: ShardRing, index: int, *, path=None, idle=None):
        self.ring = ring
        self.index = index
        self.path = path
        self.idle = idle                # called when the input pauses, before the read waits on
        self.end_reason = None

    def __repr__(self) -> str:
        return f"<worker {self.index} of {self.ring.workers}: {self.path or 'a capture'}>"

    def open(self) -> None:
        pass

    def read(self, batch):
        count = self.ring.receive(self.index, batch, -1 if self.idle is None else IDLE_MS)
        if count == 0:                  # nothing for IDLE_MS
            self.idle()
            count = self.ring.receive(self.index, batch)
        return self._ended(count)

    async def receive(self, batch):
        """``read()`` for the Trio stack: a checkpoint, then the next frames (None at the end).
        When the ring has had nothing for IDLE_MS (a reader's pipe is quiet), the wait goes on in
        a worker thread, WAIT_MS at a time, so that the Trio loop runs meanwhile (other tasks,
        timers, cancellation)."""
        import trio

        await trio.lowlevel.checkpoint()
        count = self.ring.receive(self.index, batch, IDLE_MS)
        while count == 0:
            count = await trio.to_thread.run_sync(self.ring.receive, self.index, batch, WAIT_MS)
        return self._ended(count)

    def _ended(self, count):
        if count is None:
            if self.ring.ended_by_error:        # as FlowRun at a damaged file: open flows stay open
                raise DamagedElsewhere("the capture is damaged (the parent reports where)", path=self.path)
            self.end_reason = EndReason(self.ring.end_reason)
        return count

    def apply(self, batch) -> None:
        """Verdicts do not apply to a capture."""

    def progress(self) -> tuple[int, int]:
        return (0, 0)

    def close(self) -> None:
        self.ring.close(self.index)


def _worker(conn, ring: ShardRing, index: int, count: int, options: dict) -> None:
    """A worker's life: its share of the ring through a shard engine, sending its records (with
    the flows it created and how far it got) to the parent every few batches, and whenever its
    input pauses, then its statistics."""
    quiet_signals()
    try:
        held, batches, reported = FlowRecords(), 0, 0

        def send(reached: int) -> None:
            nonlocal held, batches, reported
            conn.send(("records", reached, bytes(memoryview(held)), engine.take_created().tobytes(),
                       run.digests(held) if run.hashes else None))
            held, batches, reported = FlowRecords(), 0, reached

        def idle() -> None:
            # Every record of what the worker has processed has been handed over by the run: the
            # parent, which merges up to the packet every worker has passed, can write the flows
            # that ended now rather than when more input comes.
            if len(held) or engine.packets != reported:
                send(engine.packets)

        run = FlowRun(RingSource(ring, index, idle=idle), shard=(index, count), every_batch=True, **options)
        engine = run.engine
        try:
            for records in run:
                held.extend(records)
                batches += 1
                if batches >= SEND_EVERY or len(held) >= SEND_ROWS:
                    send(engine.packets)
        except CaptureError:
            pass                        # the parent reports it
        send(END)
        conn.send(("done", run.statistics()))
    except BaseException:                   # everything goes to the parent
        conn.send(("failed", traceback.format_exc()))
    finally:
        conn.close()


class WorkerGroup:
    """Worker processes with a pipe each (forked): what ShardedRun and FanoutRun share, the
    flow-record interface of :class:`FlowRun` (``stop()``, ``digests()``, ``statistics()``,
    ``elapsed``, ``opened``) and the forking and joining. Layer: shells."""

    def __init__(self, workers: int, *, progress=None, **options):
        if not isinstance(workers, int) or isinstance(workers, bool) or not 2 <= workers <= 1024:
            raise ValueError(f"workers must be an int from 2 to 1024 (1: use FlowRun), got {workers!r}")
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
        self.reader_pid = None          # the reader process of a ring, if it has one
        self._procs: list = []

    def stop(self, reason: EndReason = EndReason.INTERRUPTED) -> None:
        """End the run soon; the open flows end with ``reason``. Safe in a signal handler."""
        if self.reason is None:
            self.reason = reason

    def _fork(self, ctx, target, *args) -> None:
        """Fork a process running ``target(pipe, *args)``, which ends when this one dies."""
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=child_of, args=(os.getpid(), target, child, *args),
                           name=f"aiomb-{target.__name__.strip('_')}", daemon=True)
        proc.start()
        child.close()
        self._conns.append(parent)
        self._procs.append(proc)

    def _fork_ring(self, path, fork_workers, *, batch_size: int, vlan_in_key: bool, checksums: str) -> ShardRing:
        """Open the capture at ``path`` (a missing or damaged file fails here, once), make the
        ring, call ``fork_workers(ring, ctx)``. A classic pcap file on disk the workers read
        themselves; anything else a reader process reads, forked last (``reader_pid``, stopped
        by :func:`stop_reader`). Returns the ring; after the run, a damaged capture is the ring's
        (:func:`ring_damage`)."""
        import multiprocessing

        source = capture(path, chunk_size=CAPTURE_BLOCK)
        source.open()
        try:
            ctx = multiprocessing.get_context("fork")
            ring = ring_for(source, self.workers, batch_size=batch_size, vlan_in_key=vlan_in_key, checksums=checksums)
            fork_workers(ring, ctx)
            if not ring.workers_reading:
                fork_stoppable(lambda: self._fork(ctx, reader_main, ring, source, batch_size))
                self.reader_pid = self._procs[-1].pid
        finally:
            source.close()              # the workers and the reader have their own
        return ring

    def _join(self) -> None:
        """Close the pipes and wait for the processes (killing one that does not end)."""
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
        """The workers' statistics as one engine's (see :func:`merge_statistics`)."""
        if not self._stats:
            raise RuntimeError("statistics() comes after the run")
        return merge_statistics(self._stats, same=self.SAME)


class ShardedRun(WorkerGroup):
    """A capture's flow records from ``workers`` engines in as many processes, fed through a
    ShardRing (see the top of the module), merged: the interface of :class:`FlowRun` (iterate
    for record batches, ``stop()``, ``digests()``, ``statistics()``, ``elapsed``), and the same
    records in the same order as one engine's. ``source`` is a capture's path (a named pipe too:
    it is read once). ``options`` are FlowRun's and the engine's. Layer: shells; blocks while it
    reads."""

    SAME = SAME_IN_EVERY_WORKER     # what every worker counts alike: taken once

    def __init__(self, source, workers: int, *, progress=None, **options):
        super().__init__(workers, progress=progress, **options)
        self.source = source
        self._ring = None

    def stop(self, reason: EndReason = EndReason.INTERRUPTED) -> None:
        """End the run soon; the open flows end with ``reason``. The input ends after the batch
        (a reader's) or the blocks read ahead (the workers'), so every worker stops after the same
        packet: the records are those of one engine stopped there. Safe in a signal handler."""
        if self.reason is None:
            super().stop(reason)
            if self._ring is not None:
                stop_reader(self._ring, self.reader_pid, int(reason))

    def _start(self) -> None:
        def fork_workers(ring, ctx) -> None:
            for index in range(self.workers):
                self._fork(ctx, _worker, ring, index, self.workers, self.options)

        self._ring = self._fork_ring(self.source, fork_workers, batch_size=self.options.get("batch_size", 2048),
                                     vlan_in_key=bool(self.options.get("vlan_in_key", False)),
                                     checksums=self.options.get("checksums", "ignore"))
        if self.reason is not None:     # stopped while it started
            stop_reader(self._ring, self.reader_pid, int(self.reason))
        self.opened = True

    def __iter__(self):
        import multiprocessing.connection

        self.started = time.monotonic()
        self._start()
        count = self.workers
        pending = [collections.deque() for _ in range(count)]       # each worker's record batches, in order
        digests: list = [[] for _ in range(count)]      # each pending row's digests
        created = [array.array("Q") for _ in range(count)]
        reached = [0] * count           # the packet number each worker has passed
        numbered = array.array("Q")     # the ids of every flow created up to the merge point, rising
        failure = None
        live = {conn: i for i, conn in enumerate(self._conns)}         # the workers, then a reader
        try:
            while live:
                for conn in multiprocessing.connection.wait(list(live), timeout=0.25):
                    i = live[conn]
                    who = "the reader" if i == count else f"worker {i}"
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):     # gone, maybe in the middle of a message
                        del live[conn]
                        failure = failure or f"{who} ended without a word (killed?)"
                        continue
                    if msg[0] == "records":
                        _, reached[i], rows, ids, row_digests = msg
                        if rows:
                            pending[i].append(FlowRecords.frombytes(rows))
                        created[i].frombytes(ids)
                        if row_digests is not None:
                            digests[i].extend(row_digests)
                    elif msg[0] == "done":
                        if i < count:
                            self._stats.append(msg[1])
                        del live[conn]
                    else:
                        failure = f"{who} failed:\n{msg[1]}"
                        del live[conn]
                if failure is not None:
                    self._ring.abort()
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
        damage = ring_damage(self._ring, self.source)
        if damage is not None:
            raise damage

    def _merge(self, pending, digests, created, numbered, reached: int) -> FlowRecords:
        """The records every worker has written up to packet ``reached``, in one engine's order
        and numbering."""
        limit = (reached + 1) << 1
        out = FlowRecords()
        by_id = {}                      # the digests of the rows taken, by their workers' ids
        for i, batches in enumerate(pending):
            while batches:              # whole batches, then the head of the one that reaches past
                part = batches[0].split(limit)
                if self.hashes:
                    by_id.update(zip(part.ids(), digests[i][:len(part)]))
                    del digests[i][:len(part)]
                out.extend(part)
                if len(batches[0]):
                    break
                batches.popleft()
        new = []
        last_id = last_flow_id(reached)
        for ids in created:
            k = bisect.bisect_right(ids, last_id)    # the flows first seen by packet ``reached`` (rising)
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
        if self._ring is not None:
            self._ring.abort()          # a worker or the reader still waiting leaves
        self._join()
        self.reader_pid = None


def ring_damage(ring: ShardRing | None, path) -> CaptureError | None:
    """The damage the ring's capture (at ``path``) was found to have, as one engine reports it."""
    damage = None if ring is None else ring.damage
    return None if damage is None else CaptureError(damage[0], offset=damage[1], path=os.fspath(path))


def merge_statistics(stats: list, *, same=LIMITS) -> EngineStatistics:
    """Several engines' statistics as one's: the fields named in ``same`` taken from the first
    (each engine's limits, or what every engine counts alike), the peaks the largest, the rest
    (malformed packets reason by reason) summed."""
    values = {}
    for field in EngineStatistics.__attrs_attrs__:
        name = field.name
        vals = [getattr(s, name) for s in stats]
        if name in same:
            values[name] = vals[0]
        elif name in LARGEST:
            values[name] = max(vals)
        elif isinstance(vals[0], MalformedCounts):
            total: dict = {}
            for counts in vals:
                for reason, n in counts.items():
                    total[reason] = total.get(reason, 0) + n
            values[name] = MalformedCounts(total)
        else:
            values[name] = sum(vals)
    return type(stats[0])(**values)
