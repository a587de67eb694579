"""Helpers for sans-I/O engine tests: feed frames, get compact event tuples back."""

import aiomb
from aiomb import EventKind

CLIENT, SERVER = aiomb.Side.CLIENT, aiomb.Side.SERVER
STREAM_KINDS = EventKind.NEW_DATA | EventKind.GAP | EventKind.OVERLAP | EventKind.BUFFER_OVERRUN
NOT_PACKETS = aiomb.ALL_BUILTIN & ~EventKind.PACKET_IN & ~STREAM_KINDS


def compact(ev) -> tuple:
    """(kind name, side name or None, extra...) for readable exact assertions."""
    out = [ev.kind.name, ev.side.name if ev.side is not None else None]
    if ev.kind == EventKind.STATE_CHANGE:
        out += [ev.old_state.name, ev.new_state.name]
    elif ev.reason is not None:
        out.append(ev.reason.name)
    elif ev.value is not None:
        out.append(ev.value)
    return tuple(out)


def run(frames, *, kinds=NOT_PACKETS, finish=False, linktype=1, **options):
    """Feed (ts, frame) pairs to a new engine; returns (engine, [compact events])."""
    engine = aiomb.Engine(**options)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(kinds)
    for ts, frame in frames:
        engine.feed(frame, ts, linktype=linktype)
    if finish:
        engine.finish()
    return engine, [compact(e) for e in d.drain(sub)]


def state_changes(events, side=None) -> list[tuple]:
    """Only the STATE_CHANGE events (optionally of one side) as (side, old, new)."""
    return [e[1:] for e in events if e[0] == "STATE_CHANGE" and (side is None or e[1] == side)]
