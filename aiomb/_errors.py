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
