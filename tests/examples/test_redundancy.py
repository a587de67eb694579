"""examples/redundancy.py: bytes in chunks seen before, within each flow and across flows."""

import importlib.util
import itertools
import json
import pathlib
import random
import subprocess
import sys

import pytest

from aiomb.testing import TcpConversation, write_pcap

REPO = pathlib.Path(__file__).resolve().parents[2]
RNG = random.Random(7)
P = RNG.randbytes(3 * 4096 + 100)           # 4 fixed-size chunks, the last one of 100 bytes
X = RNG.randbytes(4096)
NOISE = RNG.randbytes(5000)
SHIFT = RNG.randbytes(777)


def conversation(port, ts, client=b"", server=b""):
    """A flow closed by FIN: the client's bytes in 1000-byte segments, then the server's."""
    c = TcpConversation(("10.0.0.1", port), ("10.0.0.2", 80), start_ts=ts)
    c.handshake()
    for i in range(0, len(client), 1000):
        c.send("client", client[i:i + 1000])
    c.ack("server")
    for i in range(0, len(server), 1000):
        c.send("server", server[i:i + 1000])
    c.fin("client")
    c.fin("server")
    c.ack("client")
    return c.frames


@pytest.fixture(scope="module")
def pcap(tmp_path_factory):
    """Flow 1 sends P; flow 2 repeats it; flow 3 sends X twice; flow 4 random bytes; flow 5 sends P and
    its server echoes it; flow 6 sends 777 other bytes, then P (shifted off the 4096-byte grid)."""
    path = tmp_path_factory.mktemp("redundancy") / "repeats.pcap"
    write_pcap(path, conversation(40001, 1, P) + conversation(40002, 2, P) + conversation(40003, 3, X + X)
               + conversation(40004, 4, NOISE) + conversation(40005, 5, P, P) + conversation(40006, 6, SHIFT + P))
    return path


def meter(pcap, *options):
    return subprocess.run([sys.executable, "-m", "aiomb", "run", "examples/redundancy.py", "--pcap", str(pcap),
                           "--", *options], cwd=REPO, capture_output=True, text=True, timeout=120)


def records(pcap, *options):
    proc = meter(pcap, "--json", *options)
    assert (proc.returncode, proc.stderr) == (0, "")
    return [json.loads(line) for line in proc.stdout.splitlines()]


def figures(record):
    return record["bytes"], record["within_flow_bytes"], record["across_flows_bytes"]


def test_fixed_chunks_exact(pcap):
    proc = meter(pcap, "--chunk", "4096")
    assert (proc.returncode, proc.stderr) == (0, "")
    n = len(P)
    assert proc.stdout.splitlines()[:2] == [
        f"flow 1 10.0.0.1:40001 -> 10.0.0.2:80: {n} bytes in 4 chunk(s); seen before in the flow 0 (0.0%), "
        "in any flow 0 (0.0%)",
        f"flow 2 10.0.0.1:40002 -> 10.0.0.2:80: {n} bytes in 4 chunk(s); seen before in the flow 0 (0.0%), "
        f"in any flow {n} (100.0%)"]
    flows = records(pcap)                                    # 4096 is the default
    assert [(r["flow"], r["chunks"], *figures(r)) for r in flows[:-1]] == [
        (1, 4, n, 0, 0),                                    # new
        (2, 4, n, 0, n),                                    # flow 1's bytes again
        (3, 2, 8192, 4096, 4096),                           # X, then X again in the same flow
        (4, 2, 5000, 0, 0),                                 # no repeats
        (5, 8, 2 * n, n, 2 * n),                            # P from the client, echoed by the server
        (6, 4, 777 + n, 0, 0)]                              # P shifted: no fixed chunk lines up
    total = flows[-1]
    assert total == {"type": "total", "flows": 6, "bytes": 5 * n + 8192 + 5000 + 777, "chunks": 24,
                     "within_flow_bytes": n + 4096, "within_flow_ratio": round((n + 4096) / total["bytes"], 6),
                     "across_flows_bytes": 3 * n + 4096,
                     "across_flows_ratio": round((3 * n + 4096) / total["bytes"], 6)}


def test_content_defined_chunks(pcap):
    n = len(P)
    for options in ((), ("--min-size", "64", "--avg-size", "256", "--max-size", "1024")):
        flows = {r.get("flow"): r for r in records(pcap, "--cdc", *options)}
        assert figures(flows[1]) == (n, 0, 0)
        assert figures(flows[2]) == (n, 0, n)               # the same bytes: the same chunks
        assert figures(flows[4]) == (5000, 0, 0)
        assert figures(flows[5]) == (2 * n, n, 2 * n)       # each side chunked from its own start
        assert flows[None]["bytes"] == 5 * n + 8192 + 5000 + 777
    # Small chunks find P behind the shift, and X's second copy: all but the few chunks around the seam
    # (fixed-size chunks found nothing of the shifted P, and X's second copy only by its alignment).
    assert 0.9 * n < flows[6]["across_flows_bytes"] < n
    assert 0.7 * 4096 < flows[3]["within_flow_bytes"] < 4096


def load():
    spec = importlib.util.spec_from_file_location("redundancy", REPO / "examples" / "redundancy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fastcdc_cut_points():
    cut = load().fastcdc_cut
    data = random.Random(1).randbytes(200_000)
    sizes, start = [], 0
    while start < len(data):
        n = cut(data[start:], 2048, 8192, 65536) or len(data) - start
        sizes.append(n)
        start += n
    assert sum(sizes) == len(data)
    assert all(2048 < s <= 65536 for s in sizes[:-1])
    assert 4096 < len(data) / len(sizes) < 16384            # about the average size asked for
    assert cut(data[:3000], 2048, 8192, 65536) in (0, *range(2049, 3001))   # 0: needs more bytes
    assert cut(bytes(70_000), 2048, 8192, 65536) == 65536   # no cut point in zeros: the largest chunk
    # Content-defined: after a prefix, the cut points come back to the same bytes.
    shifted, start, ends = b"junk" * 100 + data, 0, set()
    while start < len(shifted):
        start += cut(shifted[start:], 2048, 8192, 65536) or len(shifted) - start
        ends.add(start - 400)
    assert len(ends & set(itertools.accumulate(sizes))) >= len(sizes) - 3


def test_help_and_bad_options(pcap):
    proc = meter(pcap, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: redundancy.py") and "--cdc" in proc.stdout
    for options, message in ((("--cdc", "--chunk", "4096"), "--chunk and --cdc exclude each other"),
                             (("--cdc", "--avg-size", "5000"), "--avg-size must be a power of two"),
                             (("--cdc", "--min-size", "9000"), "0 < --min-size < --avg-size < --max-size"),
                             (("--chunk", "0"), "--chunk and --cache must be positive")):
        proc = meter(pcap, *options)
        assert proc.returncode == 2 and message in proc.stderr and proc.stdout == "", options
