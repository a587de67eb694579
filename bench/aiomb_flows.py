"""aiomb measurements for the benchmarks.

By default a Trio task subscribes to connection starts and ends and counts
the events while the stack reads the capture; with --no-subscriber the stack
is only run to the end of the capture; with --reassemble a task subscribed
to NEW_DATA adds up both sides' stream bytes (--read-bytes: taking every
value's bytes rather than its length).  The time is taken around
``trio.run``.  Prints one JSON line, ``{"unavailable": reason}`` when aiomb
cannot be imported or lacks the API used here.

Usage: python bench/aiomb_flows.py [--no-subscriber | --reassemble [--read-bytes]] FILE.pcap
"""

import argparse
import json
import time

import trio


async def _count_events(aiomb, path):
    """Count CONN_START and CONN_END events; return (events, packets)."""
    events_seen = 0
    async with aiomb.open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(aiomb.CONN_START, aiomb.CONN_END) as events:
            async for _ in events:
                events_seen += 1
        packets = stack.statistics().packets
    return events_seen, packets


async def _reassemble(aiomb, path, read_bytes=False):
    """Reassemble both sides of every flow: one task subscribed to NEW_DATA adds up each side's
    new bytes (``ev.length``, or with ``read_bytes`` the length of the bytes object taken from
    ``ev.value``, which makes the copy that is otherwise never made); returns the counts."""
    events_seen = 0
    side_bytes = [0, 0]                 # indexed by Side (CLIENT 0, SERVER 1)
    new_data = aiomb.NEW_DATA
    async with aiomb.open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(new_data) as events:
            if read_bytes:
                async for ev in events:
                    events_seen += 1
                    side_bytes[ev.side] += len(ev.value)
            else:
                async for ev in events:
                    events_seen += 1
                    side_bytes[ev.side] += ev.length
        packets = stack.statistics().packets
    return (events_seen, *side_bytes), packets


async def _run_to_end(aiomb, path):
    """Run the stack over the capture with nobody listening; return (None, packets)."""
    async with aiomb.open_stack(aiomb.capture(path)) as stack:
        await stack.run()
        packets = stack.statistics().packets
    return None, packets


def _attribute_error(exc):
    """The AttributeError that ``exc`` is, or is all that a group holds; else None."""
    if isinstance(exc, BaseExceptionGroup):
        match, rest = exc.split(AttributeError)
        if rest is not None:
            return None
        while isinstance(match, BaseExceptionGroup):
            match = match.exceptions[0]
        return match
    return exc if isinstance(exc, AttributeError) else None


def run(path, *, subscribe=True, reassemble=False, read_bytes=False):
    """Time one aiomb pass over ``path``.

    Returns packets, seconds, the imported module's file and, when
    subscribed, the events counted; or ``{"unavailable": reason}``.
    """
    try:
        import aiomb
    except ImportError as exc:
        return {"unavailable": f"import aiomb failed: {exc}"}
    if reassemble:
        measure, args = _reassemble, (aiomb, path, read_bytes)
    else:
        measure, args = (_count_events if subscribe else _run_to_end), (aiomb, path)
    started = time.perf_counter()
    try:
        events, packets = trio.run(measure, *args)
    except (AttributeError, BaseExceptionGroup) as exc:
        missing = _attribute_error(exc)
        if missing is None:
            raise
        return {"unavailable": f"aiomb API missing: {missing}"}
    seconds = time.perf_counter() - started
    result = {"packets": packets, "seconds": round(seconds, 6),
              "module": getattr(aiomb, "__file__", None)}
    if isinstance(events, tuple):
        result["events"], result["client_bytes"], result["server_bytes"] = events
    elif events is not None:
        result["events"] = events
    return result


def main():
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pcap")
    parser.add_argument("--no-subscriber", action="store_true",
                        help="run the stack without subscribing to events")
    parser.add_argument("--reassemble", action="store_true",
                        help="reassemble both sides of every flow (NEW_DATA subscribed, bytes counted)")
    parser.add_argument("--read-bytes", action="store_true",
                        help="with --reassemble: take every NEW_DATA value's bytes and count their length")
    args = parser.parse_args()
    if args.read_bytes and not args.reassemble:
        parser.error("--read-bytes needs --reassemble")
    result = run(args.pcap, subscribe=not args.no_subscriber, reassemble=args.reassemble,
                 read_bytes=args.read_bytes)
    print(json.dumps(dict(result, tool="aiomb")))


if __name__ == "__main__":
    main()
