"""Event kinds: the built-in bits and user-defined (predicate) events.

Layer: events (imports flows only). Built-in kinds are bits of one ``EventKind`` flag so that
a set of kinds is a mask, as in epoll. The bit values are the core's as well; a test checks them.
"""

import enum
import itertools
from collections.abc import Callable
from typing import Any


class EventKind(enum.IntFlag):
    """Built-in event kinds; ``|`` combines them into a mask."""

    PACKET_IN = 1 << 0
    """Every packet of a tracked flow, at both hooks."""
    CONN_START = 1 << 1
    """A TCP connection is first seen (its first SYN, a SYN-ACK, or mid-stream pickup)."""
    SYN_ACK = 1 << 2
    """A side's first SYN-ACK (a retransmitted one does not raise it again)."""
    ESTABLISHED = 1 << 3
    """The three-way handshake completed: both sides are ESTABLISHED."""
    FIN = 1 << 4
    """A side's FIN took effect: its receiver reached it (README "Flows and TCP state": FINs)."""
    RST = 1 << 5
    """A side sent a RST that the receiver would accept (in its window)."""
    STATE_CHANGE = 1 << 6
    """One side's TCP state changed; the event carries old and new state."""
    CONN_END = 1 << 7
    """A TCP connection ended; the event carries the reason."""
    ORPHAN = 1 << 8
    """A TCP packet that belongs to no tracked flow and cannot start one."""
    UDP_START = 1 << 9
    """The first datagram of a UDP flow."""
    UDP_END = 1 << 10
    """A UDP flow ended (timeout, eviction, end of capture)."""
    RETRANSMIT = 1 << 11
    """A SYN, SYN-ACK or FIN was sent again (segment retransmissions come with reassembly)."""
    NEW_DATA = 1 << 12
    """New in-order bytes on a side, once per side per batch."""
    GAP = 1 << 13
    """Bytes of a side's stream that will never arrive."""
    OVERLAP = 1 << 14
    """Bytes received again with different content; the value is (held bytes, new bytes)."""
    BUFFER_OVERRUN = 1 << 15
    """A reassembly limit was hit; what it dropped becomes a gap."""
    ERROR = 1 << 16
    """A packet was malformed, or a table limit was hit; the event's value says which."""
    TIMER = 1 << 17
    """A timer fired (``Engine.set_timer``); the value is (timer id, expirations)."""
    REJECTED = 1 << 18
    """A packet its receiver would drop, which changes nothing; the value says why
    (``"bad_timestamp_echo"``: a reply to a SYN that does not echo the SYN's timestamp;
    ``"unacceptable_ack"``: a reply to a SYN whose ACK is not of it; ``"syn_in_connection"``: a
    SYN with a new ISN on an open connection)."""
    WINDOW = 1 << 19
    """A data segment that does not fit its receiver's advertised window (counted; its bytes are
    taken): the value is ``"zero_window_probe"`` or ``"beyond_window"``."""

    def __str__(self) -> str:
        return self.name or repr(self)


ALL_BUILTIN = EventKind(sum(k.value for k in EventKind))

_custom_ids = itertools.count(1)


class CustomEvent:
    """A user-defined event: fires when ``base`` fires and ``predicate`` holds.

    Created by :func:`define_event`. ``predicate(packet)`` is called in the core, once per
    occurrence of ``base``, for flows that have a subscriber; ``packet`` is the live
    :class:`~aiomb.PacketView`. It returns a false value (no event), ``True`` (one event), or a
    list or tuple (one event per element, each carrying that element as ``value``; this is
    mOS's alloc/raise, e.g. one event per matched pattern).
    """

    __slots__ = ("base", "predicate", "name", "_id")

    def __init__(self, base: "Kind", predicate: Callable[[Any], Any], name: str):
        self.base = base
        self.predicate = predicate
        self.name = name
        self._id = next(_custom_ids)

    @property
    def root(self) -> EventKind:
        """The built-in kind at the root of this event's tree."""
        base = self.base
        while isinstance(base, CustomEvent):
            base = base.base
        return base

    def __repr__(self) -> str:
        return f"<CustomEvent {self.name} on {self.base}>"

    def __str__(self) -> str:
        return self.name


Kind = EventKind | CustomEvent


def define_event(base: Kind, predicate: Callable[[Any], Any], *, name: str | None = None) -> CustomEvent:
    """Define an event that fires when ``base`` fires and ``predicate`` holds.

    Returns a :class:`CustomEvent`, usable wherever a built-in kind is (subscriptions, inline
    handlers, as the base of another custom event). Raises ``TypeError`` when ``base`` is not a
    single event kind or ``predicate`` is not callable. Layer: events; does not block.
    """
    if isinstance(base, EventKind):
        if base.value == 0 or base.value & (base.value - 1):
            raise TypeError(
                f"define_event() needs one base event kind, got {base!r}; "
                "define one custom event per base kind"
            )
    elif not isinstance(base, CustomEvent):
        raise TypeError(
            f"define_event() base must be an aiomb event kind or a custom event, got {base!r}"
        )
    if not callable(predicate):
        raise TypeError(f"define_event() predicate must be callable, got {predicate!r}")
    if name is None:
        name = getattr(predicate, "__name__", "custom")
    return CustomEvent(base, predicate, name)


def split_kinds(kinds) -> list:
    """Normalise event kinds given as flags, custom events or iterables of them into a list.

    Raises ``TypeError`` for anything else and ``ValueError`` for an empty selection.
    """
    out: list = []
    stack = list(kinds) if isinstance(kinds, (list, tuple, set, frozenset)) else [kinds]
    for k in stack:
        if isinstance(k, CustomEvent):
            out.append(k)
        elif isinstance(k, EventKind):
            out.extend(bit for bit in EventKind if bit.value & k.value)
        elif isinstance(k, (list, tuple, set, frozenset)):
            out.extend(split_kinds(k))
        else:
            raise TypeError(f"expected an aiomb event kind or custom event, got {k!r}")
    if not out:
        raise ValueError("no event kinds given; pass at least one, e.g. aiomb.CONN_START")
    return out
