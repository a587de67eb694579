"""One middlebox written two ways: a coroutine per flow (Stack.spawn_per_flow) and a subscription.

The middlebox reads every byte of both sides of each TCP flow and records each flow's byte counts
when it ends. Written as a coroutine per flow it iterates ``flow.stream(side)`` (one task per
side); written as a subscription it iterates NEW_DATA and CONN_END events and keeps a dict by
flow. Both read the bytes (``len(chunk)``, ``len(ev.value)``), so they do the same work.

With ``--way`` it runs one way over one capture and prints a JSON line (bench/run.py has a row
for each way). Without it, it measures both ways as whole processes (time and peak memory, under
GNU time as bench/run.py does) on (a) a generated capture where 10,000 flows are open at once and
(b) bench/run.py's generated capture (40,000 flows, about 1M packets), and prints the ratios.

Usage: python bench/aiomb_perflow.py [--way coroutine|subscription CAPTURE] [--repeat N] [--workdir DIR]
"""

import argparse
import json
import pathlib
import sys
import time

BENCH = pathlib.Path(__file__).resolve().parent
CONCURRENT_FLOWS = 10_000
WAYS = ("coroutine", "subscription")


async def by_coroutine(path):
    import trio

    import aiomb
    totals = []

    async def count(flow):
        n = [0, 0]

        async def read(side):
            async for chunk in flow.stream(side):
                n[side] += len(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, aiomb.Side.SERVER)
            await read(aiomb.Side.CLIENT)
        totals.append(n)

    async with aiomb.open_stack(aiomb.capture(path)) as stack:
        per_flow = stack.spawn_per_flow(count, "tcp", limit=100_000)
        await stack.run()
        packets = stack.statistics().packets
    stats = per_flow.statistics()
    return packets, totals, {"max_running": stats.max_running, "overruns": stats.overruns,
                             "pauses": stats.pauses, "failed": stats.failed}


async def by_subscription(path):
    import aiomb
    totals = []
    open_flows = {}
    new_data, conn_end = aiomb.NEW_DATA, aiomb.CONN_END
    async with aiomb.open_stack(aiomb.capture(path)) as stack:
        async with stack.subscribe(new_data, conn_end) as events:
            async for ev in events:
                if ev.kind is new_data:
                    n = open_flows.get(ev.flow_id)
                    if n is None:
                        n = open_flows[ev.flow_id] = [0, 0]
                    n[ev.side] += len(ev.value)
                elif ev.kind is conn_end:
                    totals.append(open_flows.pop(ev.flow_id, [0, 0]))
        packets = stack.statistics().packets
    return packets, totals, {}


def run_one(way, path):
    """Run one way over ``path``; the JSON result bench/run.py reads (time taken around the run)."""
    import trio
    started = time.perf_counter()
    packets, totals, extra = trio.run(by_coroutine if way == "coroutine" else by_subscription, str(path))
    seconds = time.perf_counter() - started
    return dict({"packets": packets, "seconds": round(seconds, 6), "flows": len(totals),
                 "client_bytes": sum(n[0] for n in totals), "server_bytes": sum(n[1] for n in totals)}, **extra)


def concurrent_capture(workdir, flows=CONCURRENT_FLOWS):
    """A capture where ``flows`` TCP flows are all open at once (cached): every flow's handshake,
    then every request (200 bytes), every response (two 1,000-byte segments), every FIN close."""
    path = workdir / f"perflow-concurrent-v1-f{flows}.pcap"
    if path.exists():
        return path
    from aiomb.testing import TcpConversation, write_pcap
    print(f"generating {path} ...", flush=True)
    frames = []
    for i in range(flows):
        c = TcpConversation((f"10.{1 + i // 60000}.{i // 250 % 240}.{i % 250 + 1}", 1024 + i % 60000),
                            ("10.0.0.2", 80))
        c.handshake()
        c.send("client", b"q" * 200)
        c.send("server", b"r" * 1000)
        c.send("server", b"s" * 1000)
        c.ack("client")
        c.fin("client")
        c.fin("server")
        c.ack("client")
        frames += [(1.0 + k * 0.1 + i * 1e-6, f) for k, (_, f) in enumerate(c.frames)]
    frames.sort(key=lambda f: f[0])
    partial = path.with_suffix(".partial")
    write_pcap(partial, frames)
    partial.replace(path)
    return path


def measure(path, repeat, timeout):
    """Both ways on ``path``, ``repeat`` rounds taking turns: the best whole process of each."""
    import run
    rows = [(way, [sys.executable, str(BENCH / "aiomb_perflow.py"), "--way", way, str(path)]) for way in WAYS]
    return run.measure_all(rows, repeat, timeout, path)


def report(name, results):
    co, sub = results["coroutine"], results["subscription"]
    lines = [f"\n{name}"]
    for way in WAYS:
        r = results[way]
        if "unavailable" in r:
            lines.append(f"  {way:<13} unavailable: {r['unavailable']}")
            continue
        lines.append(f"  {way:<13} {r['packets']:>9} packets {r['flows']:>7} flows  "
                     f"process {r['process_seconds']:7.3f} s  (in-process {r['seconds']:.3f} s)  "
                     f"peak {r.get('peak_mib', float('nan')):7.1f} MiB")
    if "unavailable" not in co and "unavailable" not in sub:
        same = all(co[k] == sub[k] for k in ("flows", "client_bytes", "server_bytes"))
        lines.append(f"  coroutine / subscription: time {co['process_seconds'] / sub['process_seconds']:.2f}x, "
                     f"in-process {co['seconds'] / sub['seconds']:.2f}x, peak memory "
                     f"{co.get('peak_mib', 0) / max(sub.get('peak_mib', 1), 1e-9):.2f}x; "
                     f"same counts: {'yes' if same else 'NO'}; coroutines alive at most {co.get('max_running')}, "
                     f"overruns {co.get('overruns')}, pauses {co.get('pauses')}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--way", choices=WAYS, help="run one way over CAPTURE and print its JSON line")
    parser.add_argument("capture", nargs="?", type=pathlib.Path)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--workdir", type=pathlib.Path, default=None)
    parser.add_argument("--flows", type=int, default=40_000, help="flows of bench/run.py's capture")
    args = parser.parse_args()
    if args.way:
        if args.capture is None:
            parser.error("--way needs a CAPTURE")
        print(json.dumps(run_one(args.way, args.capture)))
        return
    sys.path.insert(0, str(BENCH))
    import run
    workdir = args.workdir or run.default_workdir()
    workdir.mkdir(parents=True, exist_ok=True)
    concurrent = concurrent_capture(workdir)
    bench_capture, _ = run.ensure_capture(workdir, args.flows, 1)
    for name, path in ((f"(a) {CONCURRENT_FLOWS:,} flows open at once: {concurrent.name}", concurrent),
                       (f"(b) bench/run.py's capture: {bench_capture.name}", bench_capture)):
        print(report(name, measure(path, args.repeat, args.timeout)), flush=True)


if __name__ == "__main__":
    main()
