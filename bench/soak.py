"""Soak: normal traffic with SYN floods, tiny-segment floods and fragment floods mixed in, replayed
for minutes through one process; whole process, clean traffic alone against the mix.

The clean capture is gen_capture.py's (complete TCP flows between 10.1.x.x clients and 172.16.1.x
servers). The mix adds, spread evenly over its time, as many attack frames as it has frames: a
third SYNs to the servers from spoofed 10.200.x.x sources (never answered: the flow table fills
with half-open flows), a third tiny out-of-order segments of 1 byte from 10.201.x.x flows that
completed their handshake (every one after a hole: the out-of-order limits refuse them), a third
first IP fragments from 10.202.x.x that never complete (the fragment table stays full).

Each capture is replayed by its own child process for ``--minutes`` (a new engine per replay,
streams reassembled, NEW_DATA delivered through a dispatcher and hashed for the legitimate flows)
with the limits given here. Printed: the mix's peak RSS above the child's baseline against the sum
of the configured limits (flow table, streams, fragments, undelivered events); packets per second
of the mix against the clean traffic (target: within 2x); and whether every legitimate flow's two
reassembled streams have the same SHA-256 with and without the attack (no byte lost).

Usage: python bench/soak.py [--minutes 3] [--flows 4000] [--json OUT.json]
"""

import argparse
import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gen_capture

LIMITS = {"max_flows": 200_000, "max_stream_memory": 64 << 20, "max_fragments": 1024,
          "max_fragment_memory": 16 << 20, "max_event_memory": 64 << 20}
LEGIT = "10.1.0.0/16"     # the clean capture's clients


def read_pcap(path):
    """(ts, frame) of a classic little-endian microsecond pcap (gen_capture's)."""
    with open(path, "rb") as fh:
        data = fh.read()
    pos = 24
    while pos < len(data):
        sec, usec, incl, _ = struct.unpack_from("<IIII", data, pos)
        yield sec + usec * 1e-6, data[pos + 16:pos + 16 + incl]
        pos += 16 + incl


def attack(n, start, span, seed=7):
    """``n`` attack frames spread over [start, start + span): SYNs, tiny segments, fragments."""
    from aiomb.testing import tcp_frame, udp_frame

    rng = random.Random(seed)
    step = span / max(n, 1)
    frames = []
    tiny_flows = 4
    for i in range(tiny_flows):     # the tiny-segment attackers' handshakes, first
        client = f"10.201.{i // 250}.{i % 250 + 1}"
        frames += [(start, tcp_frame(client, "172.16.1.1", 50000 + i, 80, seq=1000, flags="S")),
                   (start, tcp_frame("172.16.1.1", client, 80, 50000 + i, seq=9000, ack=1001, flags="SA")),
                   (start, tcp_frame(client, "172.16.1.1", 50000 + i, 80, seq=1001, ack=9001, flags="A"))]
    template = bytearray(udp_frame("10.202.0.1", "172.16.1.2", 1000, 53, bytes(1472)))
    template[14 + 6:14 + 8] = struct.pack("!H", 0x2000)        # more fragments, offset 0
    template[14 + 2:14 + 4] = struct.pack("!H", 1500)
    hole = [0] * tiny_flows
    for k in range(n):
        ts = start + k * step
        kind = k % 3
        if kind == 0:
            src = f"10.200.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            frames.append((ts, tcp_frame(src, f"172.16.1.{rng.randrange(1, 65)}", rng.randrange(1024, 65535), 80,
                                         seq=rng.randrange(2 ** 32), flags="S")))
        elif kind == 1:
            i = k % tiny_flows
            hole[i] += 2
            frames.append((ts, tcp_frame(f"10.201.{i // 250}.{i % 250 + 1}", "172.16.1.1", 50000 + i, 80,
                                         seq=1001 + hole[i], ack=9001, flags="PA", payload=b"x")))
        else:
            template[14 + 4:14 + 6] = struct.pack("!H", k & 0xffff)
            template[14 + 12:14 + 16] = struct.pack("!I", (10 << 24) | (202 << 16) | (k >> 16 & 0xffff) + 1)
            frames.append((ts, bytes(template)))
    return frames


def replay(path, digests):
    """One replay of ``path`` through a new engine; the legitimate flows' stream digests go into
    ``digests`` (when given). Returns the engine's statistics."""
    import aiomb
    from aiomb._core import CaptureReader
    from aiomb.flows._filter import compile_filter

    engine = aiomb.Engine(reassembly=True, **LIMITS)
    dispatcher = aiomb.Dispatcher(engine)
    sub = dispatcher.subscribe([aiomb.NEW_DATA, aiomb.CONN_END], filter=compile_filter(f"src net {LEGIT}"))
    hashing = {}

    def take():
        for ev in dispatcher.drain(sub):
            if ev.kind is aiomb.CONN_END:
                sides = hashing.pop(ev.flow_id, None)
                if digests is not None and sides is not None:
                    digests[str(ev.key)] = [h.hexdigest() for h in sides]
            else:
                sides = hashing.setdefault(ev.flow_id, [hashlib.sha256(), hashlib.sha256()])
                sides[ev.side].update(ev.value)

    batch = aiomb.FrameBatch(2048)
    with open(path, "rb") as fh, CaptureReader(fh) as reader:
        while count := reader.fill(batch):
            pos = 0
            while (pos := engine.process(batch, pos)) < count:
                take()
            take()
    while not engine.finish():
        take()
    take()
    stats = engine.statistics()
    engine.close()
    return stats


def peak_rss():
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not carried over from the
    parent that forked it)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(path, minutes):
    """Replay ``path`` until ``minutes`` have passed; print the figures as JSON."""
    import aiomb

    baseline = peak_rss()
    deadline = time.monotonic() + minutes * 60
    digests, replays, packets, busy, overruns, pauses = {}, 0, 0, 0.0, 0, 0
    while not replays or time.monotonic() < deadline:
        started = time.perf_counter()
        st = replay(path, digests if not replays else None)
        busy += time.perf_counter() - started
        packets += st.packets
        overruns += st.buffer_overruns
        pauses += st.event_pauses
        replays += 1
    peak = peak_rss()
    print(json.dumps({"replays": replays, "packets": packets, "seconds": busy, "baseline_rss": baseline,
                      "peak_rss": peak, "flow_table": LIMITS["max_flows"] * aiomb._core.FLOW_ENTRY_BYTES,
                      "buffer_overruns": overruns, "event_pauses": pauses,
                      "digests": hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest(),
                      "legit_flows": len(digests)}))


def run_child(path, minutes):
    out = subprocess.run([sys.executable, __file__, "--child", path, "--minutes", str(minutes)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="replay time of both captures together (half each)")
    parser.add_argument("--flows", type=int, default=4000, help="flows of the clean capture")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.minutes)
        return
    from aiomb.testing import write_pcap

    with tempfile.TemporaryDirectory() as tmp:
        clean_path, mix_path = os.path.join(tmp, "clean.pcap"), os.path.join(tmp, "mix.pcap")
        gen_capture.generate(clean_path, flows=args.flows)
        clean = list(read_pcap(clean_path))
        start, end = clean[0][0], clean[-1][0]
        mix = clean + attack(len(clean), start, end - start)
        mix.sort(key=lambda f: f[0])
        with open(mix_path, "wb") as fh:
            write_pcap(fh, mix)
        half = args.minutes / 2
        base = run_child(clean_path, half)
        flood = run_child(mix_path, half)
    limits = flood["flow_table"] + LIMITS["max_stream_memory"] + LIMITS["max_fragment_memory"] \
        + LIMITS["max_event_memory"]
    grown = flood["peak_rss"] - flood["baseline_rss"]
    rate = {name: r["packets"] / r["seconds"] for name, r in (("clean", base), ("mix", flood))}
    result = {
        "clean": {k: v for k, v in base.items() if k != "digests"},
        "mix": {k: v for k, v in flood.items() if k != "digests"},
        "rss_growth_mib": round(grown / 2 ** 20, 1), "limits_mib": round(limits / 2 ** 20, 1),
        "rss_vs_limits": round(grown / limits, 3),
        "clean_vs_mix_packet_rate": round(rate["clean"] / rate["mix"], 3),
        "legit_streams_identical": base["digests"] == flood["digests"] and base["legit_flows"] == flood["legit_flows"],
    }
    print(f"replays: clean {base['replays']}, mix {flood['replays']} ({args.minutes / 2:g} min each); "
          f"{len(clean)} clean frames, as many attack frames in the mix")
    print(f"peak RSS growth {result['rss_growth_mib']} MiB vs configured limits {result['limits_mib']} MiB: "
          f"{result['rss_vs_limits']:.3f}x (target below 1)")
    print(f"packet rate clean/mix: {result['clean_vs_mix_packet_rate']:.3f}x (target at most 2); "
          f"mix: {flood['buffer_overruns']} segments refused, {flood['event_pauses']} event pauses")
    print(f"legitimate flows: {base['legit_flows']}, streams identical with and without the attack: "
          f"{result['legit_streams_identical']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
