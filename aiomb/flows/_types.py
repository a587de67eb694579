"""Flow vocabulary shared by every layer: sides, TCP states, protocols, end reasons.

Layer: flows (the bottom layer; imports nothing from aiomb). The integer values are the
core's C values as well; ``tests/core/test_enums.py`` checks that both agree.
"""

import enum


class Side(enum.IntEnum):
    """One endpoint of a flow: ``CLIENT`` is the initiator, ``SERVER`` the responder."""

    CLIENT = 0
    SERVER = 1

    @property
    def peer(self) -> "Side":
        """The other side of the flow."""
        return Side(1 - self)

    def __str__(self) -> str:
        return self.name.lower()


class TcpState(enum.IntEnum):
    """A TCP endpoint's state as a middlebox infers it, with RFC 793 names."""

    CLOSED = 0
    LISTEN = 1
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    FIN_WAIT_1 = 5
    FIN_WAIT_2 = 6
    CLOSE_WAIT = 7
    CLOSING = 8
    LAST_ACK = 9
    TIME_WAIT = 10

    def __str__(self) -> str:
        return self.name


class Proto(enum.IntEnum):
    """Transport protocols the flow table tracks (IANA protocol numbers)."""

    TCP = 6
    UDP = 17

    def __str__(self) -> str:
        return self.name.lower()


class EndReason(enum.IntEnum):
    """Why a flow ended (the ``reason`` of a connection-end or UDP-end event)."""

    FIN = 1
    RST = 2
    TIMEOUT = 3
    EVICTED = 4
    END_OF_CAPTURE = 5
    REUSED = 6
    """A new connection (a SYN after both sides closed or began closing) took the flow's
    addresses and ports."""
    INTERRUPTED = 7
    """The program stopped before the flow ended (a signal, ``Engine.finish(reason=...)``)."""

    def __str__(self) -> str:
        return self.name.lower()


def end_reason(source) -> EndReason:
    """The reason the flows still open end with once ``source``'s input is over: the source's
    own ``end_reason`` if it has one (a worker's share of a capture the parent stopped:
    INTERRUPTED), else END_OF_CAPTURE."""
    return getattr(source, "end_reason", None) or EndReason.END_OF_CAPTURE


class Hook(enum.IntEnum):
    """Where in a packet's processing an inline handler runs (DESIGN.md section 2)."""

    SENDER = 1
    RECEIVER = 2

    def __str__(self) -> str:
        return self.name.lower()


class Verdict(enum.IntEnum):
    """What happens to a packet after processing."""

    FORWARD = 0
    DROP = 1

    def __str__(self) -> str:
        return self.name.lower()
