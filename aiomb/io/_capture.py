"""Capture files as a packet source.

Layer: io. The source interface (shared with live ports): ``open()``; ``await receive(batch)``
filling a :class:`~aiomb._core.FrameBatch` and returning its frame count, which a live source
may return as 0 when a tick passes without traffic, or None at the end of input (a capture also
offers ``read(batch)``, the same without Trio, for synchronous programs);
``apply(batch)`` acting on the verdicts the engine wrote; ``close()``; ``live`` (False: time
comes from packet timestamps; True: ``now()`` gives the clock in seconds, and the stack expires
flows by it after every receive) and ``progress()``. A source may also offer ``async aopen()``
and ``async aclose()``, which the stack then uses instead (live ports do: their netlink calls
run in a worker thread, and closing is shielded from cancellation).
"""

import os
import select
import stat

from .._core import CaptureReader
from ..flows._types import EndReason


class CaptureSource:
    """A pcap or pcapng file (optionally gzip-compressed) replayed as fast as it is consumed.

    Reading pauses whenever the stack's consumers fall behind (backpressure); nothing is dropped.
    A pipe (``tcpdump -w - | ...``, a named pipe; any file that is not a regular file) is read
    as its bytes come: ``pipe`` is True once it is open, the Trio stack waits for its next bytes
    in the Trio loop (other tasks, timers and cancellation go on meanwhile), and ``stop()`` ends it.
    """

    live = False

    def __init__(self, path: str | os.PathLike, *, chunk_size: int = 1 << 20):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"capture() takes a file path, got {path!r}")
        self.path = os.fspath(path)
        self._chunk_size = chunk_size
        self._reader: CaptureReader | None = None
        self._size = 0
        self.pipe = False
        self.end_reason = None          # set by stop(): the open flows end with it
        self._poll = None               # a pipe's poll object, for read()
        self._waiting = None            # the cancel scope of a receive() waiting for a pipe's bytes

    def __repr__(self) -> str:
        return f"capture({self.path!r})"

    def open(self) -> None:
        """Open the file and check its header; raises CaptureError naming the problem. A named
        pipe's open waits for its writer (see ``aopen()``)."""
        self._take(CaptureReader(self.path, chunk_size=self._chunk_size))

    async def aopen(self) -> None:
        """``open()`` for the Trio stack: a named pipe no one writes yet is opened at once and
        the stack waits for its writer's first bytes in the Trio loop (cancellable; ``stop()``
        ends the wait, and the input with it), then reads the capture's header as they come."""
        import trio

        try:
            fifo = stat.S_ISFIFO(os.stat(self.path).st_mode)
        except OSError:
            fifo = False                # open() names what is wrong
        if not fifo:
            self.open()
            return
        self.pipe = True                # a signal now stops it as a pipe (aiomb run)
        raw = open(self.path, "rb", buffering=0, opener=lambda path, flags: os.open(path, flags | os.O_NONBLOCK))
        try:
            with trio.CancelScope() as self._waiting:
                await trio.lowlevel.wait_readable(raw.fileno())     # bytes, or a writer came and left
            self._waiting = None
            if self.end_reason is not None:
                raw.close()
                return
            os.set_blocking(raw.fileno(), True)
            self._take(CaptureReader(raw, chunk_size=self._chunk_size))
        except BaseException:
            raw.close()
            raise

    def _take(self, reader: CaptureReader) -> None:
        self._reader = reader
        fd = reader.raw_file.fileno()
        st = os.fstat(fd)
        self._size = st.st_size
        self.pipe = not stat.S_ISREG(st.st_mode)
        if self.pipe:
            # A pipe's writer may be quiet for long: a read(2) waiting for it would hold the Trio
            # loop (timers, other tasks, cancellation, signals). Reads do not wait: receive() waits
            # for the pipe in the loop, read() in poll(2). A regular file reads as before.
            os.set_blocking(fd, False)
            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN)

    @property
    def reader(self) -> CaptureReader | None:
        """The open file's :class:`CaptureReader` (None until ``open()``)."""
        return self._reader

    def __enter__(self) -> "CaptureSource":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, batch) -> int | None:
        """Fill ``batch`` with the next frames; returns how many, None at the end of the file.

        Blocks on file reads, and on a pipe until its next bytes come; None once stopped. Raises
        CaptureError where the file is damaged (what came before was returned). Use the source
        in ``with`` (or ``open()`` it) first.
        """
        reader = self._open_reader()
        if self.end_reason is not None:
            return None
        count = reader.fill(batch)
        while not count and reader.would_block:
            self._poll.poll()
            count = reader.fill(batch)
        return count or None

    async def receive(self, batch) -> int | None:
        """``read()`` for the Trio stack: a checkpoint, then the next frames (None at the end,
        or once stopped). On a pipe it waits for the next bytes in the Trio loop (cancellable;
        ``stop()`` ends the wait); a regular file is read in the loop's thread."""
        import trio

        await trio.lowlevel.checkpoint()
        if self.end_reason is not None:     # stopped, maybe before a named pipe's writer came
            return None
        reader = self._open_reader()
        while self.end_reason is None:
            count = reader.fill(batch)
            if count or not reader.would_block:
                return count or None
            with trio.CancelScope() as self._waiting:
                await trio.lowlevel.wait_readable(reader.raw_file.fileno())
            self._waiting = None
        return None

    def stop(self, reason: EndReason = EndReason.INTERRUPTED) -> None:
        """End the input: the next ``receive()`` or ``read()`` returns None (a ``receive()``
        waiting for a pipe's bytes returns it now), so the stack ends the open flows with
        ``reason``. Does not block; call it from the Trio thread."""
        self.end_reason = reason
        if self._waiting is not None:
            self._waiting.cancel()

    def _open_reader(self) -> CaptureReader:
        if self._reader is None:
            raise RuntimeError("the capture source is not open: use it in a with block, call open(), "
                               "or give it to aiomb.open_stack()")
        return self._reader

    def apply(self, batch) -> None:
        """Verdicts do not apply to a capture (there is no wire to forward to)."""

    def progress(self) -> tuple[int, int]:
        """(bytes read, file size): compressed bytes for a gzip file."""
        if self._reader is None:
            return (0, self._size)
        if self._reader.compressed and self._reader.raw_file.seekable():    # a pipe cannot tell()
            return (self._reader.raw_file.tell(), self._size)
        return (self._reader.offset, self._size)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def capture(path: str | os.PathLike, **options) -> CaptureSource:
    """A capture file as a packet source for :func:`aiomb.open_stack`.

    Classic pcap (either byte order, micro- or nanosecond), pcapng (several interfaces, each
    with its link type and timestamp resolution), gzip-compressed or not. Link types: Ethernet,
    raw IP, Linux cooked (SLL, SLL2), BSD loopback, PPP, Cisco HDLC, FDDI, 802.11 (with or
    without radiotap), NFLOG, pflog. Errors are raised when the stack opens it.
    """
    return CaptureSource(path, **options)
