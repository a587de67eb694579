"""Flow records at engine speed: every flow of a capture or a port as one row.

Layer: shells (beside _stack and _epoll; above the core and io). The core writes a fixed-width
record of each flow as it leaves the table (:class:`aiomb.FlowRecords`: final figures,
stragglers included). :class:`FlowRun` runs a source through an engine synchronously and hands
those batches over as flows end (``aiomb flows`` streams them, as Zeek writes conn.log);
:func:`read_flows` gathers every batch of a capture into a :class:`FlowTable`.
"""

import hashlib
import html
import os
import threading
import time

from ._core import RECORD_FIELDS, RECORD_LAYOUT, RECORD_SIZE, Dispatcher, Engine, FlowRecords, FrameBatch
from ._errors import CaptureError
from .events._kinds import EventKind
from .flows._filter import check_vlan_key, compile_filter
from .flows._types import EndReason, end_reason

FIELDS = tuple(name for name, _, _ in RECORD_FIELDS)
"""The record fields, in the order ``aiomb flows`` prints them (its JSON keys, CSV columns)."""

HASHES = ("sha256", "md5", "sha1")

CAPTURE_BLOCK = 1 << 18
"""The capture block size of a record run (``aiomb flows``, :func:`read_flows`): a block stays in
the processor's cache from the copy to the parse. Measured on the 3M-packet benchmark capture,
whole process: 10% faster than the 1 MiB default, 3% than 128 KiB; a Trio stack, which pays more per
batch (a block's end cuts a batch short), gained nothing from it, so the default stays."""


class ReadingStopped(Exception):
    """Raised by :func:`break_read` (from a signal handler) into a :func:`read_breakable` that
    waits for a pipe's next bytes."""


_reading = threading.local()    # .waiting: this thread is in read_breakable()


def read_breakable(source, batch):
    """``source.read(batch)``, which a signal handler can end with :func:`break_read` while it
    waits (a quiet pipe): then it raises ReadingStopped and the frames of that read are left
    out. Needed because a read(2) that a signal interrupts is retried once the handler returns
    (PEP 475), unless the handler raises."""
    _reading.waiting = True
    try:
        return source.read(batch)
    finally:
        _reading.waiting = False


def break_read() -> None:
    """From a signal handler, last: end the :func:`read_breakable` the thread is in (raises
    ReadingStopped into it, once); nothing when it is not in one."""
    if getattr(_reading, "waiting", False):
        _reading.waiting = False
        raise ReadingStopped


def hash_fields(hashes) -> tuple:
    """The extra field names of stream hashes: client_sha256, server_sha256, ..."""
    return tuple(f"{side}_{name}" for name in hashes for side in ("client", "server"))


class FlowRun:
    """One source (a capture's path, :func:`aiomb.capture` or :func:`aiomb.port`) run through one
    engine for its flow records, synchronously (no Trio).

    Iterating yields :class:`aiomb.FlowRecords` batches as flows leave the table (closed and
    lingered, timed out, evicted; the rest at the end of the source); ``stop()`` (from a signal
    handler, say) ends the run after the batch at hand, the open flows with reason
    ``interrupted``. With ``hashes`` (names from :data:`HASHES`), both sides' reassembled bytes are
    hashed: ``digests(records)`` gives each row's hex digests. ``progress`` is called with the
    source after every batch. Streams are reassembled (their counters are in the records) unless
    ``reassembly=False``. With ``every_batch``, a batch is yielded after every read, even an
    empty one (a shard's worker reports its progress so). Layer: shells; blocks while it reads.
    """

    def __init__(self, source, *, filter=None, hashes=(), batch_size: int = 2048, progress=None,
                 every_batch: bool = False, **engine_options):
        from .io._capture import capture

        for name in hashes:
            if name not in HASHES:
                raise ValueError(f"unknown hash {name!r}: choose from {', '.join(HASHES)}")
        if isinstance(source, (str, os.PathLike)):
            source = capture(source, chunk_size=CAPTURE_BLOCK)
        elif not hasattr(source, "read"):
            raise TypeError(f"FlowRun() reads a capture's path, aiomb.capture(...) or aiomb.port(...), not {source!r}")
        self.source = source
        self.filter = compile_filter(filter)
        self.hashes = tuple(hashes)
        self.progress = progress
        self.every_batch = every_batch
        engine_options.setdefault("reassembly", True)
        self.engine = Engine(**engine_options)
        self.engine.keep_records(self.filter)
        self.batch = FrameBatch(batch_size)
        self.reason = None              # set by stop()
        self.opened = False             # the source opened (a port attached)
        self.started = self.elapsed = None
        self._hashing: dict = {}        # flow id -> each side's hash objects, per name
        self._dispatcher = self._sub = None
        if self.hashes:
            self._dispatcher = Dispatcher(self.engine)
            self._sub = self._dispatcher.subscribe([EventKind.NEW_DATA], filter=self.filter)

    def stop(self, reason: EndReason = EndReason.INTERRUPTED) -> None:
        """End the run after the batch at hand; the open flows end with ``reason``. A signal
        handler that calls it then calls :func:`break_read`, so that a capture from a quiet pipe
        stops without waiting for its next bytes."""
        self.reason = reason

    def __iter__(self):
        source, engine, batch = self.source, self.engine, self.batch
        live = bool(getattr(source, "live", False))
        self.started = time.monotonic()
        source.open()
        self.opened = True
        error = None
        try:
            while self.reason is None:
                try:
                    count = source.read(batch, 0.25) if live else read_breakable(source, batch)
                except ReadingStopped:          # stopped (see stop()) while a pipe had nothing more
                    continue
                except CaptureError as exc:     # a damaged file: the flows seen so far end here
                    error = exc
                    break
                if count is None:
                    break
                pos = 0
                while count and (pos := engine.process(batch, pos)) < count:
                    self._hash()        # stopped at max_event_memory: the bytes so far are hashed first
                while live and not engine.expire(source.now()):
                    self._hash()
                if self.progress is not None:
                    self.progress(source)
                records = self._take()
                if len(records) or self.every_batch:
                    yield records
            if error is not None:           # what the file held: the flows still open stay open
                records = self._take()
                records.extend(engine.table_records())
                if len(records):
                    yield records
                raise error
            while not engine.finish(self.reason or end_reason(source)):
                self._hash()
            records = self._take()
            if len(records):
                yield records
        finally:
            self.elapsed = time.monotonic() - self.started
            engine.close()
            source.close()

    def _hash(self) -> None:
        """Add the bytes delivered since the last call to their sides' digests."""
        if self._sub is not None:
            hashing = self._hashing
            for ev in self._dispatcher.drain(self._sub):
                sides = hashing.get(ev.flow_id)
                if sides is None:
                    sides = hashing[ev.flow_id] = [[hashlib.new(n) for n in self.hashes] for _ in range(2)]
                for h in sides[ev.side]:
                    h.update(ev.value)

    def _take(self) -> FlowRecords:
        self._hash()
        return self.engine.take_records()

    def digests(self, records: FlowRecords) -> list:
        """Each row's hex digests (client then server, per hash name), taken out of the run."""
        out = []
        empty = [hashlib.new(n).hexdigest() for n in self.hashes]
        for flow_id, proto in zip(records.ids(), records.protos()):
            sides = self._hashing.pop(flow_id, None)
            if proto != 6:
                out.append(("",) * (2 * len(self.hashes)))
            elif sides is None:
                out.append(tuple(d for d in empty for _ in range(2)))
            else:
                out.append(tuple(sides[s][k].hexdigest() for k in range(len(self.hashes)) for s in range(2)))
        return out

    def statistics(self):
        return self.engine.statistics()


def read_flows(source, filter=None, *, workers: int = 1, **options) -> "FlowTable":
    """Every flow of ``source`` (a capture path, :func:`aiomb.capture` or :func:`aiomb.port`)
    as a :class:`FlowTable`: runs it to its end (a port until it stops). ``options`` go to the
    engine (``midstream`` is on, as for ``aiomb flows``). ``workers`` > 1 (a capture file's
    path): that many engines in as many processes, the same table. Synchronous; blocks."""
    from ._workers import ShardedRun

    options.setdefault("midstream", True)
    if workers != 1:
        if not (isinstance(source, str) or hasattr(source, "__fspath__")):
            raise TypeError(f"read_flows(workers={workers!r}) reads a capture file: give its path, not {source!r}")
        # here, not only in the workers' engines: their failure would come as a WorkerError
        check_vlan_key(compile_filter(filter), options.get("vlan_in_key", False))
        run = ShardedRun(source, workers, filter=filter, **options)
    else:
        run = FlowRun(source, filter=filter, **options)
    table = FlowRecords()
    for records in run:
        table.extend(records)
    table.sort()
    return FlowTable(table)


class FlowTable:
    """Flow records as a table: ``len()``, iteration and indexing as dicts (the fields of
    ``aiomb flows --format jsonl``), ``columns``, ``to_numpy()`` (a structured array over the
    rows, no copy), ``to_pandas()`` (a DataFrame with the same columns; needs pandas) and an
    HTML view for notebooks."""

    def __init__(self, records: FlowRecords):
        self.records = records

    columns = FIELDS

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.records[i]

    def __iter__(self):
        for i in range(len(self.records)):
            yield self.records[i]

    def __repr__(self) -> str:
        return f"<FlowTable {len(self)} flows>"

    def to_numpy(self):
        """The rows as a numpy structured array (raw fields: addresses as 16 bytes with
        ``family``, timestamps in ns, states and reasons as numbers), sharing their memory."""
        import numpy as np

        return np.frombuffer(memoryview(self.records), dtype=record_dtype()) if len(self) else \
            np.zeros(0, dtype=record_dtype())

    def to_pandas(self):
        """A pandas DataFrame with the columns of ``aiomb flows --format jsonl``."""
        import pandas as pd

        rows = self.to_numpy()
        data = {}
        for name, kind, _ in RECORD_FIELDS:
            if kind in ("u64", "u16"):
                data[name] = rows[name]
            elif kind == "ts":
                data[name] = (rows[name] + 500) // 1000 / 1e6
            elif kind == "bool":
                data[name] = rows[name].astype(bool)
            else:                       # addresses, protocol, VLAN tags, states, reasons: text
                data[name] = pd.Series(self.records.text_column(name), dtype=object)
        return pd.DataFrame(data, columns=list(FIELDS))

    def _repr_html_(self) -> str:
        shown = [self.records[i] for i in range(min(len(self), 20))]
        cols = ("flow", "proto", "client_ip", "client_port", "server_ip", "server_port", "client_packets",
                "server_packets", "client_bytes", "server_bytes", "end_reason")
        head = "".join(f"<th>{c}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>" for r in shown)
        more = f"<p>{len(self) - len(shown)} more flows</p>" if len(self) > len(shown) else ""
        return f"<p>{len(self)} flows</p><table><tr>{head}</tr>{body}</table>{more}"


def record_dtype():
    """The numpy dtype of a record row (the core's layout)."""
    import numpy as np

    kinds = {"u64": np.uint64, "u16": np.uint16, "ts": np.int64, "ip_c": "V16", "ip_s": "V16",
             "proto": np.uint8, "vlan": ("<u2", (2,)), "state_c": np.uint8, "state_s": np.uint8,
             "reason": np.uint8, "bool": np.uint8}
    names, formats, offsets = [], [], []
    for name, kind, off in RECORD_FIELDS:
        names.append(name)
        formats.append(kinds[kind])
        offsets.append(off)
    for name, off in RECORD_LAYOUT.items():
        names.append(name)
        formats.append(np.uint8)
        offsets.append(off)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": RECORD_SIZE})
