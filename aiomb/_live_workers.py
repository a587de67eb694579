"""Flow records of a live interface from several engines, one per process, each fed by aiomb's
steering program (``aiomb flows --iface IF --workers N``).

Layer: shells (beside _workers, whose process handling it shares). The steering program sends
every frame to one worker by its IP address pair (:class:`aiomb.io._fanout.Fanout`: a veth
pair per worker); each worker reads its own port through its own FlowRun and sends the records
of the flows as they end; the parent passes them on as they come.
"""

import signal
import time
import traceback

from ._core import FlowRecords
from ._errors import PortError
from ._records import FlowRun
from ._workers import LIMITS, WorkerError, WorkerGroup, become_worker, leave, orphaned, quiet_signals, tell
from .flows._types import EndReason
from .io._fanout import Fanout
from .io._port import PortStatistics

READY_TIMEOUT = 30.0    # seconds the live workers have to open their ports


def _port_worker(conn, fanout: Fanout, index: int, port_options: dict, options: dict) -> None:
    """A live worker's life: its veth's frames through its own engine, sending each batch of
    records to the parent; ready once its port is open; stops when the parent says so, or when
    the parent dies (SIGTERM: then it stops the steering and deletes its veth pairs itself)."""
    quiet_signals()
    become_worker(index, fanout.workers, steered=fanout)
    try:
        run = FlowRun(fanout.worker_port(index, **port_options), **options)
        signal.signal(signal.SIGTERM, lambda signum, frame: run.stop(EndReason.INTERRUPTED))
        ready = False

        def progress(_source) -> None:
            nonlocal ready
            if not ready:
                tell(conn, ("ready",))
                ready = True
            if not orphaned() and conn.poll():
                run.stop(EndReason(conn.recv()))

        run.progress = progress
        for records in run:
            tell(conn, ("records", bytes(memoryview(records)), run.digests(records) if run.hashes else None))
        tell(conn, ("done", run.statistics(), run.source.statistics()))
    except PortError as exc:                # said as it is, as one port's error would be
        tell(conn, ("port-error", str(exc)))
    except BaseException:
        tell(conn, ("failed", traceback.format_exc()))
    finally:
        conn.close()
        leave()


def failed(index: int, msg: tuple) -> Exception:
    """What a worker's failure message raises: its port's error as it is, else a WorkerError."""
    if msg[0] == "port-error":
        return PortError(msg[1])
    return WorkerError(f"worker {index} failed:\n{msg[1]}")


class FanoutRun(WorkerGroup):
    """A live interface's flow records from ``workers`` engines in as many processes: the
    interface of :class:`FlowRun` (iterate for record batches as flows end, ``stop()``,
    ``digests()``, ``statistics()``, ``port_statistics()``, ``elapsed``, ``opened``).

    aiomb's steering program on ``iface`` sends each frame to one worker by its IP address
    pair (:class:`aiomb.io._fanout.Fanout`), so each flow, both directions, lives in one
    worker's engine. Records are passed on as they arrive, their flows numbered 1, 2, ... in
    that order. ``port_options``: ``mode``, ``netns``, ``force``, ``prefilter`` (as
    :func:`aiomb.port`), ``frames``, ``frame_size`` (each worker's). Passive only. Layer:
    shells; blocks while it runs.
    """

    SAME = LIMITS                   # every frame reached one worker: every counter is summed

    def __init__(self, iface: str, workers: int, *, progress=None, mode: str = "skb", netns: str | None = None,
                 force: bool = False, prefilter=None, frames: int = 4096, frame_size: int = 2048, **options):
        super().__init__(workers, progress=progress, **options)
        self.fanout = Fanout(iface, workers, mode=mode, netns=netns, force=force, prefilter=prefilter)
        self.iface = iface
        self.port_options = dict(frames=frames, frame_size=frame_size)
        self._ports: list = [None] * workers      # each worker's port statistics, once it is done

    def _start(self) -> None:
        import multiprocessing
        import multiprocessing.connection

        self.fanout.open()
        ctx = multiprocessing.get_context("fork")
        for index in range(self.workers):
            self._fork(ctx, _port_worker, self.fanout, index, self.port_options, self.options)
        waiting = set(self._conns)
        deadline = time.monotonic() + READY_TIMEOUT
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"the workers did not open their ports within {READY_TIMEOUT:.0f} s")
            for conn in multiprocessing.connection.wait(list(waiting), timeout=min(left, 0.25)):
                i = self._conns.index(conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    raise WorkerError(f"worker {i} ended without a word (killed?)") from None
                if msg[0] != "ready":
                    raise failed(i, msg)
                waiting.discard(conn)
        self.fanout.attach()
        self.opened = True

    def __iter__(self):
        import multiprocessing.connection

        self.started = time.monotonic()
        failure = None
        numbered = 0
        try:
            self._start()
            live = {conn: i for i, conn in enumerate(self._conns)}
            stopping = False
            while live:
                if self.reason is not None and not stopping:
                    stopping = True
                    self.fanout.detach()        # no new frames; then every worker ends its flows
                    for conn in live:
                        conn.send(int(self.reason))
                for conn in multiprocessing.connection.wait(list(live), timeout=0.25):
                    i = live[conn]
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        del live[conn]
                        failure = failure or WorkerError(f"worker {i} ended without a word (killed?)")
                        continue
                    if msg[0] == "records":
                        rows = FlowRecords.frombytes(msg[1])
                        rows.number_from(numbered + 1)
                        numbered += len(rows)
                        if msg[2] is not None:
                            self._digests.update(zip(rows.ids(), msg[2]))
                        yield rows
                    elif msg[0] == "done":
                        self._stats.append(msg[1])
                        self._ports[i] = msg[2]
                        del live[conn]
                    else:
                        failure = failed(i, msg)
                        del live[conn]
                if failure is not None:
                    break
                if self.progress is not None:
                    self.progress(self)
        finally:
            self._finish()
        if failure is not None:
            raise failure

    def _finish(self) -> None:
        self.elapsed = time.monotonic() - self.started
        try:
            self.fanout.close()
        finally:
            self._join()

    def port_statistics(self) -> PortStatistics:
        """The workers' ports as one: frames received and dropped summed, every queue listed
        (worker 0's first)."""
        if None in self._ports:
            raise RuntimeError("port_statistics() comes after the run")
        sums = {f: sum(getattr(p, f) for p in self._ports) for f in (
            "received", "received_bytes", "ring_drops", "fill_ring_empty", "forwarded", "dropped_by_verdict",
            "tx_dropped")}
        return PortStatistics(interfaces=(self.iface,), mode=self.fanout.mode,
                              zerocopy=all(p.zerocopy for p in self._ports), inline=False, open=False,
                              queues=tuple(q for p in self._ports for q in p.queues), **sums)
