"""The reassembly row's middlebox as an ``aiomb run`` app, for ``--workers N`` (bench/run.py runs
it with two workers beside ``aiomb_flows.py --reassemble``, one engine): a task subscribed to
NEW_DATA adds up both sides' new bytes (``ev.length``); each worker prints its counts as one JSON
line tagged with its index (``aiomb.worker()``), which bench/run.py adds up.

Usage: python -m aiomb run bench/reassembly_app.py --pcap FILE.pcap --workers 2
"""

import json
import time

import aiomb

STARTED = time.perf_counter()


async def run(stack):
    events = 0
    side_bytes = [0, 0]                 # indexed by Side (CLIENT 0, SERVER 1)
    async with stack.subscribe(aiomb.NEW_DATA) as sub:
        async for ev in sub:
            events += 1
            side_bytes[ev.side] += ev.length
    print(json.dumps({"tool": "aiomb", "worker": aiomb.worker()[0], "events": events,
                      "client_bytes": side_bytes[0], "server_bytes": side_bytes[1],
                      "packets": stack.statistics().packets,
                      "seconds": round(time.perf_counter() - STARTED, 6)}))
