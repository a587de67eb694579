"""Exceptions shared by every layer (imports nothing from aiomb)."""


class AiombError(Exception):
    """Base class of aiomb's own exceptions."""


class CaptureError(AiombError, ValueError):
    """A capture file is unreadable or corrupt at ``offset`` (bytes from its start, after gunzip).

    Everything before ``offset`` was processed; the message says what was wrong there
    (``detail``: the same without the path and offset).
    """

    def __init__(self, message: str, *, offset: int | None = None, path: str | None = None):
        self.detail = message
        self.offset = offset
        self.path = path
        where = f"{path}: " if path else ""
        at = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"{where}{message}{at}")


class PortError(AiombError, OSError):
    """A live port could not be opened or driven: no such interface, an XDP program that is not
    aiomb's already attached (pass ``force=True`` to replace it), a mode the driver refuses.

    The message names the interface and what to do.
    """


class ExportError(AiombError, OSError):
    """Flow records could not be exported: the collector refused the connection or closed it
    (IPFIX over TCP), or its address does not resolve. The message names the collector and what
    to do.
    """


class StreamGap(AiombError):
    """Bytes of a stream that will never arrive: ``length`` bytes from stream ``offset``.

    Raised by a flow stream's iteration (the default), so that a hole is never glued over
    silently; iterate the same stream again to go on after the gap.

    ``partial`` holds the bytes a per-flow coroutine's ``read_until`` had read before the hole
    (they are not glued to what follows it).
    """

    def __init__(self, offset: int, length: int, what: str = "stream", *, partial: bytes = b""):
        self.offset = offset
        self.length = length
        self.partial = partial
        super().__init__(f"bytes [{offset}, {offset + length}) of the {what} will never arrive "
                         "(a gap); iterate the stream again to continue after it")


class FlowEnded(AiombError):
    """Something was asked of a flow that its end rules out: the flow ended first.

    Raised by a per-flow coroutine's ``wait(kind)`` for a kind that did not fire, and by
    ``read_until`` when the stream ended without the delimiter (``partial``: the bytes read);
    by a :class:`~aiomb.Flow` handle's ``hold``/``set_buffering``/``set_policy`` once its flow
    has ended, and its ``consume``/``stop`` once the flow has left the table. ``key`` and ``reason`` (an
    :class:`~aiomb.EndReason`) name the flow and how it ended. Escaping the coroutine, it ends
    it quietly (counted as finished, not as failed).
    """

    def __init__(self, message: str, *, key=None, reason=None, partial: bytes = b""):
        self.key = key
        self.reason = reason
        self.partial = partial
        super().__init__(message)


class DelimiterNotFound(AiombError):
    """``read_until`` found no delimiter within ``max_size`` bytes of a stream.

    The bytes stay in the stream (read them by iterating it); ``buffered`` says how many. The
    peer's bytes are data: catch this to handle an over-long header as the protocol requires.
    """

    def __init__(self, message: str, *, buffered: int):
        self.buffered = buffered
        super().__init__(message)
