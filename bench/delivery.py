"""Cost of handing events to an async subscriber, beyond creating them.

Three passes over the same capture, every packet raising one PACKET_IN event:
  engine       the core alone, nothing subscribed (no event is created);
  created      the core and its dispatcher with PACKET_IN subscribed, each batch's events
               drained and counted by a plain ``for`` loop (events are created and consumed,
               synchronously);
  batches      open_stack() with a Trio task taking each batch (``await sub.receive_batch()``)
               and counting it with a plain ``for`` loop;
  async        the same with ``async for ev in subscription``.
Creation cost per event = (created - engine) / events; the async iteration's own cost per
event = (async - batches) / events; the whole hand-off to a Trio task (source, engine, channel,
scheduling and the async iteration, against the same loop run inline) = (async - created) / events.
Prints one JSON line.

Usage: python bench/delivery.py FILE.pcap [--repeat N]
"""

import argparse
import json
import time

import trio


def engine_pass(aiomb, path, subscribe):
    """Seconds for the core to process the capture (events drained if subscribed)."""
    from aiomb._core import CaptureReader
    engine = aiomb.Engine()
    dispatcher = aiomb.Dispatcher(engine)
    sub = dispatcher.subscribe(aiomb.PACKET_IN) if subscribe else None
    reader = CaptureReader(path)
    batch = aiomb.FrameBatch(2048)
    events = 0
    started = time.perf_counter()
    while reader.fill(batch):
        engine.process(batch)
        if sub is not None:
            for _ in dispatcher.drain(sub):
                events += 1
    engine.finish()
    seconds = time.perf_counter() - started
    reader.close()
    return seconds, events


def async_pass(aiomb, path, per_batch=False):
    """Seconds for the stack with one async subscriber counting PACKET_IN events."""
    async def main():
        n = 0
        async with aiomb.open_stack(aiomb.capture(path)) as stack:
            async with stack.subscribe(aiomb.PACKET_IN) as events:
                if per_batch:
                    while True:
                        try:
                            batch = await events.receive_batch()
                        except trio.EndOfChannel:
                            break
                        for _ in batch:
                            n += 1
                else:
                    async for _ in events:
                        n += 1
        return n
    started = time.perf_counter()
    n = trio.run(main)
    return time.perf_counter() - started, n


def run(path, repeat=3):
    """Best-of-``repeat`` timings and the derived per-event costs, as a dict."""
    import aiomb
    engine = min(engine_pass(aiomb, path, False)[0] for _ in range(repeat))
    created, events = min(engine_pass(aiomb, path, True) for _ in range(repeat))
    batches, _ = min(async_pass(aiomb, path, per_batch=True) for _ in range(repeat))
    delivered, received = min(async_pass(aiomb, path) for _ in range(repeat))
    assert received == events, (received, events)
    return {
        "events": events,
        "engine_seconds": round(engine, 6),
        "created_seconds": round(created, 6),
        "batches_seconds": round(batches, 6),
        "async_seconds": round(delivered, 6),
        "create_ns_per_event": round((created - engine) / events * 1e9, 1),
        "async_for_ns_per_event": round((delivered - batches) / events * 1e9, 1),
        "deliver_ns_per_event": round((delivered - created) / events * 1e9, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pcap")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.pcap, args.repeat)))


if __name__ == "__main__":
    main()
