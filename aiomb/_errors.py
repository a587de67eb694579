"""Exceptions shared by every layer (imports nothing from aiomb)."""


class AiombError(Exception):
    """Base class of aiomb's own exceptions."""


class CaptureError(AiombError, ValueError):
    """A capture file is unreadable or corrupt at ``offset`` (bytes from its start, after gunzip).

    Everything before ``offset`` was processed; the message says what was wrong there.
    """

    def __init__(self, message: str, *, offset: int | None = None, path: str | None = None):
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


class StreamGap(AiombError):
    """Bytes of a stream that will never arrive: ``length`` bytes from stream ``offset``.

    Raised by a flow stream's iteration (the default), so that a hole is never glued over
    silently; iterate the same stream again to go on after the gap.
    """

    def __init__(self, offset: int, length: int, what: str = "stream"):
        self.offset = offset
        self.length = length
        super().__init__(f"bytes [{offset}, {offset + length}) of the {what} will never arrive "
                         "(a gap); iterate the stream again to continue after it")
