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

from .._core import CaptureReader


class CaptureSource:
    """A pcap or pcapng file (optionally gzip-compressed) replayed as fast as it is consumed.

    Reading pauses whenever the stack's consumers fall behind (backpressure); nothing is dropped.
    """

    live = False

    def __init__(self, path: str | os.PathLike, *, chunk_size: int = 1 << 20):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"capture() takes a file path, got {path!r}")
        self.path = os.fspath(path)
        self._chunk_size = chunk_size
        self._reader: CaptureReader | None = None
        self._size = 0

    def __repr__(self) -> str:
        return f"capture({self.path!r})"

    def open(self) -> None:
        """Open the file and check its header; raises CaptureError naming the problem."""
        self._reader = CaptureReader(self.path, chunk_size=self._chunk_size)
        self._size = os.path.getsize(self.path)

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

        Blocks on file reads only; raises CaptureError where the file is damaged (what came
        before was returned). Use the source in ``with`` (or ``open()`` it) first.
        """
        if self._reader is None:
            raise RuntimeError("the capture source is not open: use it in a with block, call open(), "
                               "or give it to aiomb.open_stack()")
        return self._reader.fill(batch) or None

    async def receive(self, batch) -> int | None:
        """``read()`` for the Trio stack: a checkpoint, then the next frames (None at the end)."""
        import trio

        await trio.lowlevel.checkpoint()
        return self.read(batch)

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
    raw IP, Linux cooked (SLL, SLL2), BSD loopback. Errors are raised when the stack opens it.
    """
    return CaptureSource(path, **options)
