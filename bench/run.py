"""Benchmark aiomb against libnids and a plain-Python dpkt tracker.

Generates (or reuses) a synthetic capture, builds the libnids program, then
times every tool over the same file and prints a table; see bench/README.md.

Usage: python bench/run.py [--quick] [--flows N] [--seed S] [--repeat N] [--scale K]
                           [--nfstream-python PY] [--timeout S] [--workdir DIR] [--json OUT.json]
"""

import argparse
import json
import os
import pathlib
import re
import shlex
import statistics
import subprocess
import sys
import time

import gen_capture

BENCH = pathlib.Path(__file__).resolve().parent
NIDS_SOURCE = BENCH / "nids_flows.c"
QUICK_FLOWS = 2_000
LINK_FLAGS = (  # tried in order after pkg-config
    ["-lnids", "-lpcap"],
    ["-lnids", "-lpcap", "-lnet", "-lgthread-2.0", "-lglib-2.0"],
)
NIDS_COLLECT = "libnids (collect)"
NIDS_NO_COLLECT = "libnids (no-collect)"
FLOWS_JSONL = "aiomb flows (jsonl)"
FLOWS_WORKERS = "aiomb flows (jsonl, --workers 2)"
REASSEMBLY = "aiomb (reassembly)"
REASSEMBLY_WORKERS = "aiomb (reassembly, --workers 2)"
TABLE = "aiomb read_flows().to_pandas()"
NFSTREAM = "nfstream to_pandas()"
SUBSCRIPTION = "aiomb (subscription, bytes read)"
EPOLL = "aiomb (epoll, bytes read)"
GNU_TIME = "/usr/bin/time"     # its %M: the peak of the measured process alone (ours is not counted)
PEAK_LINE = re.compile(r"aiomb-bench-peak-kib (\d+)\n?")
STATS_LINE = re.compile(r"aiomb: (\d+) packets, (\d+) flows, .*; ([0-9.]+) s, ")


def default_workdir():
    """``$XDG_CACHE_HOME/aiomb-bench``, else ``~/.cache/aiomb-bench``."""
    cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(cache) / "aiomb-bench"


def ensure_capture(workdir, flows, seed):
    """Return (path, generator counts), generating the capture if it is not cached."""
    stem = f"capture-v{gen_capture.FORMAT_VERSION}-f{flows}-s{seed}"
    path, meta = workdir / f"{stem}.pcap", workdir / f"{stem}.json"
    if path.exists() and meta.exists():
        return path, dict(json.loads(meta.read_text()), cached=True)
    print(f"generating {path} ({flows} flows, seed {seed}) ...", flush=True)
    partial = path.with_suffix(".pcap.partial")
    stats = gen_capture.generate(partial, flows=flows, seed=seed)
    partial.replace(path)
    meta.write_text(json.dumps(stats))
    return path, dict(stats, cached=False)


def link_flag_candidates():
    """Linker flags to try: pkg-config's answer first if it has one."""
    try:
        found = subprocess.run(["pkg-config", "--libs", "libnids"],
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return list(LINK_FLAGS)
    return [found.stdout.split(), *LINK_FLAGS]


def ensure_nids(workdir):
    """Return the libnids program's path, compiling it if missing or stale."""
    binary = workdir / "nids_flows"
    if binary.exists() and binary.stat().st_mtime >= NIDS_SOURCE.stat().st_mtime:
        return binary
    error = "no linker flags to try"
    for flags in link_flag_candidates():
        cmd = ["gcc", "-O2", "-Wall", "-o", str(binary), str(NIDS_SOURCE), *flags]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            raise RuntimeError(f"cannot build {NIDS_SOURCE.name}: {exc}") from exc
        if done.returncode == 0:
            print(f"built {binary}: {shlex.join(cmd)}", flush=True)
            return binary
        error = (done.stderr.strip().splitlines() or ["gcc failed"])[-1]
    raise RuntimeError(f"cannot build {NIDS_SOURCE.name}: {error}")


def compile_bytecode():
    """Write the bytecode caches of the aiomb package a user's Python writes on its first import
    (this machine sets PYTHONDONTWRITEBYTECODE, which would make every run compile it again)."""
    try:
        import aiomb
    except ImportError:
        return
    import compileall

    compileall.compile_dir(os.path.dirname(aiomb.__file__), quiet=1)


def warm_page_cache(path):
    """Read the whole file so that the run after this pays nothing for the disk."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def flows_command(capture, *options):
    """``aiomb flows CAPTURE --format jsonl --stats`` as a user runs it, its records to /dev/null
    (the shell execs the command: it is the measured process); the figures come from --stats."""
    argv = [sys.executable, "-m", "aiomb", "flows", str(capture), "--format", "jsonl", "--stats", *options]
    return ["sh", "-c", f"exec {shlex.join(argv)} >/dev/null"]


def tools(nids, capture, nfstream_python=None):
    """(row name, command) for every measurement, in table order."""
    python = sys.executable
    rows = []
    if nids is not None:
        rows += [(NIDS_COLLECT, [str(nids), str(capture)]),
                 (NIDS_NO_COLLECT, [str(nids), "--no-collect", str(capture)])]
    rows += [
        ("dpkt", [python, str(BENCH / "dpkt_flows.py"), str(capture)]),
        ("aiomb", [python, str(BENCH / "aiomb_flows.py"), str(capture)]),
        ("aiomb (no subscriber)",
         [python, str(BENCH / "aiomb_flows.py"), "--no-subscriber", str(capture)]),
        (REASSEMBLY, [python, str(BENCH / "aiomb_flows.py"), "--reassemble", str(capture)]),
        ("aiomb (reassembly, bytes read)",
         [python, str(BENCH / "aiomb_flows.py"), "--reassemble", "--read-bytes", str(capture)]),
        (SUBSCRIPTION, [python, str(BENCH / "aiomb_perflow.py"), "--way", "subscription", str(capture)]),
        (EPOLL, [python, str(BENCH / "aiomb_epoll.py"), str(capture)]),
        ("aiomb (per-flow coroutines, bytes read)",
         [python, str(BENCH / "aiomb_perflow.py"), "--way", "coroutine", str(capture)]),
        (FLOWS_JSONL, flows_command(capture)),
        ("aiomb flows (jsonl, --hash sha256)", flows_command(capture, "--hash", "sha256")),
        ("aiomb flows (zeek conn.log)", flows_command(capture, "--format", "zeek")),
        (TABLE, [python, str(BENCH / "aiomb_table.py"), str(capture)]),
        (NFSTREAM, [nfstream_python or python, str(BENCH / "nfstream_table.py"), str(capture)]),
    ]
    return rows


def combine_workers(results):
    """Workers' counts as one run's: events and bytes summed, packets as each counts them all,
    the slowest worker's seconds."""
    out = dict(results[0])
    for key in ("events", "client_bytes", "server_bytes"):
        out[key] = sum(r[key] for r in results)
    out["seconds"] = max(r["seconds"] for r in results)
    out["workers"] = len(results)
    del out["worker"]
    return out


def measure_once(cmd, timeout):
    """Run one measurement; return its result (with ``process_seconds``, the whole process's
    wall time: start-up and imports included, and ``peak_mib``, its peak resident memory as GNU
    time reports it, when /usr/bin/time is there) or {"unavailable": reason}. A tool prints its
    result as a JSON line on stdout; ``aiomb flows`` as its --stats line on stderr."""
    timed = [GNU_TIME, "-f", "aiomb-bench-peak-kib %M", *cmd] if os.path.exists(GNU_TIME) else cmd
    started = time.perf_counter()
    try:
        done = subprocess.run(timed, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"unavailable": f"run timed out after {timeout} s"}
    elapsed = time.perf_counter() - started
    peak = PEAK_LINE.search(done.stderr)
    stderr = PEAK_LINE.sub("", done.stderr)
    if done.returncode != 0:
        last = (stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {"unavailable": f"run failed: {last}"}
    stats = STATS_LINE.search(stderr)
    if stats:
        result = {"packets": int(stats[1]), "flows": int(stats[2]), "seconds": float(stats[3])}
    else:
        lines = done.stdout.strip().splitlines()
        if not lines:
            return {"unavailable": "run printed nothing"}
        result = json.loads(lines[-1])
        if "worker" in result:          # an aiomb run --workers app: a line per worker, added up
            result = combine_workers([json.loads(line) for line in lines])
    if "unavailable" not in result:
        result["process_seconds"] = round(elapsed, 6)
        if peak:
            result["peak_mib"] = round(int(peak[1]) / 1024, 1)
    return result


def measure_all(rows, repeat, timeout, capture):
    """Best (fastest whole process) of ``repeat`` runs of every row, with every run's process
    seconds under "runs" and their median under "median". The rows take turns, one run each per round, so that
    a noisy stretch of the machine is shared out rather than landing on one tool. The
    capture is read again before each run: proactive reclaim (DAMON here) evicts pages of a
    file left unread for a while, and a run would otherwise read some from the disk."""
    best, runs = {}, {name: [] for name, _ in rows}
    for turn in range(repeat):
        print(f"round {turn + 1} of {repeat}:", ", ".join(name for name, _ in rows
                                                      if "unavailable" not in best.get(name, {})),
              flush=True)
        for name, cmd in rows:
            if "unavailable" in best.get(name, {}):
                continue
            warm_page_cache(capture)
            result = measure_once(cmd, timeout)
            if "unavailable" in result:
                best[name] = result
                continue
            runs[name].append(result["process_seconds"])
            if name not in best or result["process_seconds"] < best[name]["process_seconds"]:
                best[name] = result
    return {name: best[name] if "unavailable" in best[name]
            else dict(best[name], runs=runs[name], median=statistics.median(runs[name]))
            for name, _ in rows}


def rate(result):
    """Packets per second of a result's whole process, or None if it has no timing."""
    if not result or "unavailable" in result or not result["process_seconds"]:
        return None
    return result["packets"] / result["process_seconds"]


def ratio(result, reference):
    """Throughput of ``result`` relative to ``reference``, formatted."""
    mine, theirs = rate(result), rate(reference)
    return f"{mine / theirs:.3f}x" if mine and theirs else "-"


HEADER = ("tool", "packets", "process s", "median s", "in-process s", "Mpkt/s", "vs nids(collect)",
          "vs nids(no-collect)", "events/s", "peak MiB")


def row(name, result, results):
    """The table cells of one result."""
    if "unavailable" in result:
        return (name, f"unavailable: {result['unavailable']}")
    events = result.get("events")
    return (
        name, str(result["packets"]), f"{result['process_seconds']:.3f}", f"{result['median']:.3f}",
        f"{result['seconds']:.3f}", f"{rate(result) / 1e6:.3f}",
        ratio(result, results.get(NIDS_COLLECT)),
        ratio(result, results.get(NIDS_NO_COLLECT)),
        f"{events / result['process_seconds']:,.0f}" if events else "-",
        f"{result['peak_mib']:.1f}" if "peak_mib" in result else "-",
    )


def table(results):
    """The results table as text; an unavailable row prints its reason."""
    rows = [HEADER] + [row(name, result, results) for name, result in results.items()]
    full = [r for r in rows if len(r) == len(HEADER)]
    widths = [max(len(r[i]) for r in full) for i in range(len(HEADER))]
    widths[0] = max(len(r[0]) for r in rows)
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])]
        if len(r) == len(HEADER):
            cells += [cell.rjust(w) for cell, w in zip(r[1:], widths[1:])]
        else:
            cells.append(r[1])
        lines.append("  ".join(cells))
    return "\n".join(lines)


def checks(results, capture):
    """Lines comparing each tool's counts with what the generator wrote."""
    expected = {"packets": capture["packets"], "conn_starts": capture["flows"],
                "conn_ends": capture["flows"],
                "client_bytes": capture["client_bytes"],
                "server_bytes": capture["server_bytes"]}
    lines = []
    for name, result in results.items():
        want_events = 2 * capture["flows"] if name == "aiomb" else None
        wrong = [f"{key} {result[key]} != {want}" for key, want in expected.items()
                 if key in result and result[key] != want]
        if want_events is not None and result.get("events") != want_events:
            wrong.append(f"events {result.get('events')} != {want_events}")
        lines.append(f"  {name}: {'; '.join(wrong) if wrong else 'ok'}"
                     if "unavailable" not in result else f"  {name}: not run")
    return lines


def per_event(ns):
    """A cost per event from a difference of two timings; below zero the noise was larger."""
    return f"{ns:.0f} ns" if ns >= 0 else "within noise (negative difference)"


def delivery_table(result):
    """The event-delivery measurement as text (see bench/delivery.py)."""
    if "unavailable" in result:
        return f"event delivery: unavailable: {result['unavailable']}"
    return "\n".join([
        f"event delivery, {result['events']} events (best of the runs):",
        f"  core alone, no event created     {result['engine_seconds']:.3f} s",
        f"  core creating the events         {result['created_seconds']:.3f} s"
        f"  ({result['create_ns_per_event']:.0f} ns per event to create)",
        f"  Trio task, receive_batch + for   {result['batches_seconds']:.3f} s",
        f"  Trio task, async for             {result['async_seconds']:.3f} s"
        f"  (per event: async iteration {per_event(result['async_for_ns_per_event'])}, "
        f"whole hand-off {per_event(result['deliver_ns_per_event'])}; target < 100 ns)",
    ])


def memory_line(result):
    """The memory-per-flow measurement as text (see bench/memory.py)."""
    if "unavailable" in result:
        return f"memory per flow: unavailable: {result['unavailable']}"
    return (f"memory per idle TCP flow: {result['bytes_per_flow']:.0f} bytes (resident growth over "
            f"{result['flows']:,} flows; flow-table entry {result['flow_entry_bytes']} bytes; target <= 256)")


def table_line(results):
    """read_flows().to_pandas() against NFStream's to_pandas(), whole processes."""
    mine, theirs = results.get(TABLE, {}), results.get(NFSTREAM, {})
    if "unavailable" in mine or "unavailable" in theirs or not mine or not theirs:
        why = theirs.get("unavailable") or mine.get("unavailable") or "not run"
        return f"flow table vs NFStream: {why}"
    return (f"flow table: aiomb read_flows().to_pandas() {mine['process_seconds']:.3f} s, NFStream "
            f"{theirs.get('version', '')} to_pandas() {theirs['process_seconds']:.3f} s: "
            f"{theirs['process_seconds'] / mine['process_seconds']:.1f}x faster (target >= 10x)")


def epoll_line(results):
    """The epoll program against the same middlebox written as a subscription, whole processes."""
    mine, theirs = results.get(EPOLL, {}), results.get(SUBSCRIPTION, {})
    if "unavailable" in mine or "unavailable" in theirs or not mine or not theirs:
        return "epoll vs subscription: not run"
    return (f"epoll vs subscription (the same middlebox: connections and bytes of both sides): "
            f"{mine['process_seconds']:.3f} s vs {theirs['process_seconds']:.3f} s: "
            f"{mine['process_seconds'] / theirs['process_seconds']:.2f}x the time (target <= 1.10x)")


def workers_line(results, single, double, what):
    """Row ``double`` (two worker processes) against row ``single`` (one engine), whole processes."""
    one, two = results.get(single, {}), results.get(double, {})
    if "process_seconds" not in one or "process_seconds" not in two:
        return f"{what} --workers 2: not run"
    return (f"{what} --workers 2 vs one engine (reassembly on in both): {two['process_seconds']:.3f} s vs "
            f"{one['process_seconds']:.3f} s: {one['process_seconds'] / two['process_seconds']:.2f}x "
            f"(target >= 1.7x on 2 cores)")


def scale_run(args, nids, base):
    """aiomb flows and libnids on a capture with ``args.scale`` times the flows: the whole-process
    ratio there, and how aiomb flows' peak memory grew (target <= 1.2x: records stream out)."""
    path, capture = ensure_capture(args.workdir, args.flows * args.scale, args.seed)
    print(f"\n{args.scale}x capture: {path}: {capture['packets']} packets, {capture['flows']} flows", flush=True)
    app = [sys.executable, "-m", "aiomb", "run", str(BENCH / "reassembly_app.py"), "--pcap", str(path),
           "--workers", "2"]
    rows = [(FLOWS_JSONL, flows_command(path)), (FLOWS_WORKERS, flows_command(path, "--workers", "2")),
            (REASSEMBLY, [sys.executable, str(BENCH / "aiomb_flows.py"), "--reassemble", str(path)]),
            (REASSEMBLY_WORKERS, app)]
    if nids is not None:
        rows.insert(0, (NIDS_COLLECT, [str(nids), str(path)]))
    results = measure_all(rows, args.repeat, args.timeout, path)
    print(table(results))
    print("counts vs generator:\n" + "\n".join(checks(results, capture)))
    print(workers_line(results, FLOWS_JSONL, FLOWS_WORKERS, "aiomb flows"))
    print(workers_line(results, REASSEMBLY, REASSEMBLY_WORKERS, "reassembly (aiomb run app)"))
    small, large = base.get(FLOWS_JSONL, {}), results.get(FLOWS_JSONL, {})
    if "peak_mib" in small and "peak_mib" in large:
        print(f"aiomb flows peak memory: {small['peak_mib']:.1f} MiB on {small['packets']} packets, "
              f"{large['peak_mib']:.1f} MiB on {large['packets']} packets: "
              f"{large['peak_mib'] / small['peak_mib']:.2f}x (target <= 1.2x)")
    return results


def parse_args():
    """Command line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=40_000, help="flows in the capture (default 40000)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_FLOWS} flows")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool, best kept (default 3)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per run (default 900)")
    parser.add_argument("--workdir", type=pathlib.Path, default=default_workdir(),
                        help="cache for captures and binaries (default %(default)s)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the raw numbers here")
    parser.add_argument("--scale", type=int, default=3,
                        help="also run aiomb flows and libnids on a capture with K times the flows (default 3; "
                             "0: no): time and peak memory as the capture grows")
    parser.add_argument("--nfstream-python", metavar="PY",
                        help="the Python with nfstream installed (default: this one)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.quick:
        args.flows = QUICK_FLOWS
    return args


def main():
    """Generate, build, measure, report."""
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    compile_bytecode()
    capture_path, capture = ensure_capture(args.workdir, args.flows, args.seed)
    print(f"capture: {capture_path}: {capture['packets']} packets, {capture['flows']} flows, "
          f"{capture['max_concurrent']} open at most, generated in {capture['seconds']} s"
          f"{' (cached)' if capture['cached'] else ''}")
    try:
        nids, nids_error = ensure_nids(args.workdir), None
    except RuntimeError as exc:
        nids, nids_error = None, str(exc)
    results = {} if nids else {NIDS_COLLECT: {"unavailable": nids_error},
                               NIDS_NO_COLLECT: {"unavailable": nids_error}}
    results.update(measure_all(tools(nids, capture_path, args.nfstream_python), args.repeat, args.timeout,
                               capture_path))
    print(f"\nbest of {args.repeat} whole processes (start-up included; median beside it, and the "
          "tool's own timing of its work); ratios are the best runs' whole-process packet rates "
          "relative to libnids\n")
    print(table(results))
    print("\ncounts vs generator:")
    print("\n".join(checks(results, capture)))
    print("\n" + epoll_line(results))
    print(table_line(results))
    scaled = None
    if args.scale > 1:
        scaled = scale_run(args, nids, results)
    print("\nmeasuring event delivery (one PACKET_IN event per packet) ...", flush=True)
    warm_page_cache(capture_path)
    delivery = measure_once([sys.executable, str(BENCH / "delivery.py"), str(capture_path),
                             "--repeat", str(args.repeat)], args.timeout)
    print(delivery_table(delivery))
    print("\nmeasuring memory per idle TCP flow (1,000,000 flows) ...", flush=True)
    memory = measure_once([sys.executable, str(BENCH / "memory.py")], args.timeout)
    print(memory_line(memory))
    if args.json:
        args.json.write_text(json.dumps({"capture": dict(capture, path=str(capture_path)),
                                         "repeat": args.repeat, "results": results, "scaled": scaled,
                                         "delivery": delivery, "memory": memory}, indent=2))


if __name__ == "__main__":
    main()
