"""A storm of events through the Trio stack: at the end of a capture with thousands of open flows,
the stack hands the flows' ends over a piece at a time (each under max_event_memory) and reads on
only once the subscription has taken each piece; nothing is lost."""

import trio

import aiomb
from aiomb import EventKind, open_stack
from aiomb.testing import write_pcap

from ..core.test_event_memory import LIMITS, bounded, open_flows


async def test_the_end_of_a_capture_is_handed_over_in_pieces_each_taken_before_the_next(tmp_path, autojump_clock):
    path = tmp_path / "open.pcap"
    with open(path, "wb") as f:
        write_pcap(f, open_flows(3000))
    bound = bounded()
    ends, sizes, ahead = [], [], []
    async with open_stack(aiomb.capture(path), max_event_memory=bound, **LIMITS) as stack:
        async with stack.subscribe(EventKind.CONN_END) as sub:
            stack.start()
            while True:
                try:
                    batch = await sub.receive_batch()
                except trio.EndOfChannel:
                    break
                ends += batch
                sizes.append(len(batch))
                await trio.sleep(1)     # a slow consumer: the stack ends one more piece of flows, then waits
                ahead.append(stack.engine.statistics().flows_ended - len(ends))
        stats = stack.statistics().engine
    assert len(ends) == 3000 and len({e.flow_id for e in ends}) == 3000
    assert len(sizes) >= 3 and stats.event_pauses >= 2
    assert max(ahead) <= max(sizes) < 3000
    assert stats.event_memory_peak <= bound
