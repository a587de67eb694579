"""aiomb measurement for the benchmarks: every flow of a capture as a pandas DataFrame, the
one-liner a notebook user runs: ``aiomb.read_flows(path).to_pandas()``. Prints one JSON line
(``{"unavailable": reason}`` when aiomb or pandas is missing); the time is taken around the
one-liner, imports included.

Usage: python bench/aiomb_table.py FILE.pcap
"""

import json
import sys
import time


def run(path):
    started = time.perf_counter()
    try:
        import pandas  # noqa: F401  (its import is part of what the user waits for)

        import aiomb
    except ImportError as exc:
        return {"unavailable": f"import failed: {exc}"}
    if not hasattr(aiomb, "read_flows"):
        return {"unavailable": "aiomb API missing: read_flows"}
    frame = aiomb.read_flows(path).to_pandas()
    seconds = time.perf_counter() - started
    return {"packets": int(frame.client_packets.sum() + frame.server_packets.sum()), "flows": len(frame),
            "seconds": round(seconds, 6)}


if __name__ == "__main__":
    print(json.dumps(dict(run(sys.argv[1]), tool="aiomb-table")))
