"""NFStream measurement for the benchmarks: ``NFStreamer(source=path).to_pandas()`` (NFStream
6.6.0 from pip: a C flow meter with nDPI behind a Python API), the yardstick of
``aiomb.read_flows(path).to_pandas()``. Prints one JSON line (``{"unavailable": reason}``
without NFStream); the time is taken around the one-liner, imports included.

Usage: python bench/nfstream_table.py FILE.pcap   (with a Python that has nfstream installed)
"""

import json
import sys
import time


def run(path):
    started = time.perf_counter()
    try:
        import nfstream
    except ImportError as exc:
        return {"unavailable": f"import nfstream failed: {exc} (pip install nfstream==6.6.0)"}
    frame = nfstream.NFStreamer(source=path).to_pandas()
    seconds = time.perf_counter() - started
    return {"packets": int(frame.bidirectional_packets.sum()), "flows": len(frame), "seconds": round(seconds, 6),
            "version": nfstream.__version__}


if __name__ == "__main__":
    print(json.dumps(dict(run(sys.argv[1]), tool="nfstream")))
