"""The ``aiomb`` command line: list the flows of a capture or a live interface, run a middlebox
module on either.

Layer: cli (top). ``aiomb flows CAPTURE`` / ``aiomb flows --iface IF --duration S`` prints one
record per flow; ``aiomb run APP.py --pcap CAPTURE`` / ``--iface IF [--inline IF2]`` runs a
user's middlebox module (see README "Writing a middlebox").
"""

import argparse
import csv
import hashlib
import importlib.util
import json
import os
import signal
import sys
import threading

import trio

from ._core import Dispatcher, Engine, FrameBatch
from ._errors import CaptureError, PortError
from ._stack import open_stack
from .events._kinds import EventKind
from .flows._filter import FilterError, compile_filter
from .flows._types import Side
from .io._capture import capture
from .io._port import port
from .io._prefilter import Prefilter

FIELDS = (
    "flow", "proto", "client_ip", "client_port", "server_ip", "server_port", "vlan",
    "client_packets", "server_packets", "client_ip_bytes", "server_ip_bytes",
    "client_payload_bytes", "server_payload_bytes", "first_ts", "last_ts",
    "client_state", "server_state", "end_reason", "midstream",
    "client_bytes", "server_bytes", "client_sha256", "server_sha256", "client_missed",
    "server_missed", "client_rexmits", "server_rexmits", "client_overlap_conflicts",
    "server_overlap_conflicts", "client_data_segments", "server_data_segments",
    "client_retransmitted_bytes", "server_retransmitted_bytes", "client_out_of_order",
    "server_out_of_order", "client_zero_window_probes", "server_zero_window_probes",
)


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


def flow_record(flow, digests=None) -> dict:
    """The record ``aiomb flows`` prints for one flow handle.

    ``digests`` maps a flow id to its two sides' sha256 objects (of the reassembled bytes in
    stream order, gaps left out); without it the hashes are those of no bytes.
    """
    st = flow.statistics()
    key = flow.key
    tcp = int(key.proto) == 6
    sides = (digests or {}).get(flow.id) or (hashlib.sha256(), hashlib.sha256())
    return {
        "flow": flow.id,
        "proto": str(key.proto),
        "client_ip": str(key.client_ip),
        "client_port": key.client_port,
        "server_ip": str(key.server_ip),
        "server_port": key.server_port,
        "vlan": "/".join(map(str, key.vlan)),
        "client_packets": st.client.packets,
        "server_packets": st.server.packets,
        "client_ip_bytes": st.client.ip_bytes,
        "server_ip_bytes": st.server.ip_bytes,
        "client_payload_bytes": st.client.payload_bytes,
        "server_payload_bytes": st.server.payload_bytes,
        "first_ts": round(st.first_ts, 6),
        "last_ts": round(st.last_ts, 6),
        "client_state": st.client.state.name if tcp else "",
        "server_state": st.server.state.name if tcp else "",
        "end_reason": str(st.end_reason) if st.end_reason is not None else "open",
        "midstream": st.midstream,
        "client_bytes": st.client.stream_bytes if tcp else st.client.payload_bytes,
        "server_bytes": st.server.stream_bytes if tcp else st.server.payload_bytes,
        "client_sha256": sides[0].hexdigest() if tcp else "",
        "server_sha256": sides[1].hexdigest() if tcp else "",
        "client_missed": st.client.missed,
        "server_missed": st.server.missed,
        "client_rexmits": st.client.retransmits,
        "server_rexmits": st.server.retransmits,
        "client_overlap_conflicts": st.client.overlap_conflicts,
        "server_overlap_conflicts": st.server.overlap_conflicts,
        "client_data_segments": st.client.data_segments,
        "server_data_segments": st.server.data_segments,
        "client_retransmitted_bytes": st.client.retransmitted_bytes,
        "server_retransmitted_bytes": st.server.retransmitted_bytes,
        "client_out_of_order": st.client.out_of_order,
        "server_out_of_order": st.server.out_of_order,
        "client_zero_window_probes": st.client.zero_window_probes,
        "server_zero_window_probes": st.server.zero_window_probes,
    }


class Progress:
    """A progress bar on stderr for long captures (only when stderr is a terminal)."""

    def __init__(self, source, stream=sys.stderr):
        self.source = source
        self.stream = stream
        self.enabled = stream.isatty()

    def draw(self, final: bool = False) -> None:
        done, total = self.source.progress()
        if final:
            done = total
        frac = done / total if total else 1.0
        width = 30
        bar = "#" * int(frac * width)
        self.stream.write(f"\r[{bar:<{width}}] {frac:6.1%} {done / 1e6:8.1f}/{total / 1e6:.1f} MB")
        if final:
            self.stream.write("\n")
        self.stream.flush()

    async def run(self) -> None:
        while True:
            self.draw()
            await trio.sleep(0.25)


async def collect_flows(source, *, filter=None, midstream=True, vlan_in_key=False,
                        progress: bool = True, digests: dict | None = None,
                        **engine_options) -> tuple[list, BaseException | None]:
    """Run ``source`` through a stack; returns (flow handles in first-seen order, error or None).

    With ``digests`` (a dict), streams are reassembled and each flow id maps to its two sides'
    sha256 objects over the reassembled bytes. A capture error ends the run early: the flows
    seen before it are returned with it.
    """
    flows: list = []
    error = None
    bar = Progress(source)

    def started(packet) -> None:
        flow = packet.flow
        flows.append(flow)
        if digests is not None:
            digests[flow.id] = (hashlib.sha256(), hashlib.sha256())

    try:
        async with open_stack(source, midstream=midstream, vlan_in_key=vlan_in_key,
                              **engine_options) as stack:
            box = stack.middlebox("flows", filter=filter)
            box.on(EventKind.CONN_START, started)
            box.on(EventKind.UDP_START, started)
            async with trio.open_nursery() as nursery:
                if progress and bar.enabled:
                    nursery.start_soon(bar.run)
                if digests is None:
                    await stack.run()
                else:
                    async with box.subscribe(EventKind.NEW_DATA) as sub:
                        async for ev in sub:
                            digests[ev.flow_id][ev.side].update(ev.value)
                nursery.cancel_scope.cancel()
            if progress and bar.enabled:
                bar.draw(final=True)
    except CaptureError as exc:
        error = exc
    return flows, error


def endpoint(ip: str, port: int) -> str:
    """``ip:port``, with IPv6 addresses in brackets."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def write_records(records: list, fmt: str, out) -> None:
    """Print records as an aligned table, JSON lines or CSV."""
    if fmt == "jsonl":
        for r in records:
            out.write(json.dumps(r) + "\n")
        return
    if fmt == "csv":
        w = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(records)
        return
    cols = ("flow", "proto", "client", "server", "pkts c/s", "ip bytes c/s", "states", "end")
    rows = [
        (str(r["flow"]), r["proto"],
         endpoint(r["client_ip"], r["client_port"]), endpoint(r["server_ip"], r["server_port"]),
         f"{r['client_packets']}/{r['server_packets']}",
         f"{r['client_ip_bytes']}/{r['server_ip_bytes']}",
         f"{r['client_state']}/{r['server_state']}" if r["proto"] == "tcp" else "-",
         r["end_reason"])
        for r in records
    ]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(cols)]
    out.write("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip() + "\n")
    for row in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def check_capture(path: str) -> None:
    """Raise UsageError for a capture path that cannot be read at all."""
    if not os.path.exists(path):
        raise UsageError(f"capture file not found: {path}")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory; give a .pcap or .pcapng file")


def parse_queues(text: str | None, option: str = "--queues"):
    """``--queues 0,2-3`` -> [0, 2, 3]; None -> None (every queue)."""
    if text is None:
        return None
    out = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UsageError(f"bad {option} {text!r}: give numbers like 0,1 or 0-3") from None
    if not out or min(out) < 0:
        raise UsageError(f"bad {option} {text!r}: give numbers like 0,1 or 0-3")
    return out


def parse_prefilter(args):
    """The Prefilter of --prefilter-protocols/-ports/-networks (comma-separated), or None."""
    fields = {}
    try:
        if args.prefilter_protocols:
            fields["protocols"] = [int(p) if p.isdigit() else p for p in args.prefilter_protocols.split(",")]
        if args.prefilter_ports:
            fields["ports"] = parse_queues(args.prefilter_ports, "--prefilter-ports")
        if args.prefilter_networks:
            fields["networks"] = args.prefilter_networks.split(",")
        return Prefilter(**fields) if fields else None
    except ValueError as exc:
        raise UsageError(f"bad pre-filter: {exc}") from None


def live_port(args, *, inline=None):
    """The port described by --iface/--queues/--mode/--netns/--force/--prefilter-* (and --inline)."""
    if os.geteuid() != 0:
        raise UsageError("live ports (--iface) need root (AF_XDP sockets and XDP programs)")
    return port(args.iface, queues=parse_queues(args.queues), mode=args.mode, inline=inline,
                force=args.force, netns=args.netns, prefilter=parse_prefilter(args))


async def stop_after(source, seconds: float) -> None:
    """End a live port's input after ``seconds`` (the stack then ends every open flow)."""
    await trio.sleep(seconds)
    source.stop()


async def collect_live_flows(source, duration: float, **options):
    """collect_flows() on a live port for ``duration`` seconds; a port error is raised as itself."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_after, source, duration)
            result = await collect_flows(source, progress=False, **options)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise sole(group) from None
    return result


def sole(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one member, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def cmd_flows(args) -> int:
    if (args.capture is None) == (args.iface is None):
        raise UsageError("give a capture file or --iface IF (one of them)")
    try:
        compile_filter(args.filter)
    except FilterError as exc:
        raise UsageError(f"bad --filter expression:\n{exc}") from None
    digests: dict = {}
    options = dict(filter=args.filter, midstream=not args.no_midstream, vlan_in_key=args.vlan,
                   digests=digests, overlap_policy=args.policy)
    if args.iface is not None:
        if args.duration is None or not args.duration > 0:
            raise UsageError("--iface needs --duration SECONDS (how long to watch)")
        source = live_port(args)
        try:
            flows, error = trio.run(lambda: collect_live_flows(source, args.duration, **options))
        except PortError as exc:
            print(f"aiomb: error: {exc}", file=sys.stderr)
            return 1
        st = source.statistics()
        print(f"aiomb: {args.iface}: {st.received} frames received, {st.ring_drops} dropped by "
              f"the ring", file=sys.stderr)
    else:
        if args.duration is not None:
            raise UsageError("--duration is for live ports (--iface)")
        check_capture(args.capture)
        flows, error = trio.run(lambda: collect_flows(capture(args.capture), **options))
    if flows or error is None:
        write_records([flow_record(f, digests) for f in flows], args.format, sys.stdout)
    if error is not None:
        print(f"aiomb: error: {error}", file=sys.stderr)
        return 1
    return 0


GAP_MARK = b"\n[aiomb: %d bytes missing at stream offset %d]\n"


def write_stream(path: str, out, *, flow_id=None, key=None, side=Side.CLIENT, gaps: str = "warn",
                 midstream=True, vlan_in_key=False, **engine_options) -> tuple[dict, BaseException | None]:
    """Write one flow side's reassembled bytes to ``out`` (a binary file).

    The flow is chosen by its number (as ``aiomb flows`` prints it) or by a key string
    ``"client_ip:port-server_ip:port"`` (the first flow with that key). A hole is left out
    (``gaps="warn"`` or ``"skip"``), written as NUL bytes (``"fill"``) or as a one-line marker
    (``"mark"``). Returns ({"found": bool, "udp": bool, "written": bytes, "gaps": [(offset,
    length), ...]}, the capture error that ended the run early, or None). Synchronous: the core
    and its dispatcher over the capture, no Trio.
    """
    result = {"found": False, "udp": False, "written": 0, "gaps": []}
    engine = Engine(midstream=midstream, vlan_in_key=vlan_in_key, **engine_options)
    dispatcher = Dispatcher(engine)
    sub = dispatcher.subscribe([EventKind.CONN_START, EventKind.UDP_START, EventKind.NEW_DATA, EventKind.GAP])
    chosen = flow_id

    def take() -> None:
        nonlocal chosen
        for ev in dispatcher.drain(sub):
            if chosen is None and ev.kind in (EventKind.CONN_START, EventKind.UDP_START) \
                    and key_string(ev.key) == key:
                chosen = ev.flow_id
            if ev.flow_id != chosen:
                continue
            if ev.kind in (EventKind.CONN_START, EventKind.UDP_START):
                result["found"] = True
                result["udp"] = ev.kind is EventKind.UDP_START
            elif ev.side == side and ev.kind is EventKind.NEW_DATA:
                out.write(ev.value)
                result["written"] += ev.length
            elif ev.side == side:
                result["gaps"].append((ev.offset, ev.length))
                if gaps == "fill":
                    out.write(bytes(ev.length))
                elif gaps == "mark":
                    out.write(GAP_MARK % (ev.length, ev.offset))

    batch = FrameBatch(2048)
    try:
        with capture(path) as source:
            while source.read(batch):
                engine.process(batch)
                take()
    except CaptureError as exc:
        return result, exc
    finally:
        engine.finish()
        take()
    return result, None


def key_string(key) -> str:
    """``client_ip:port-server_ip:port`` (IPv6 in brackets): how --key names a flow."""
    return f"{endpoint(str(key.client_ip), key.client_port)}-{endpoint(str(key.server_ip), key.server_port)}"


def cmd_stream(args) -> int:
    check_capture(args.capture)
    if (args.flow is None) == (args.key is None):
        raise UsageError("choose the flow with exactly one of --flow N or --key CLIENT-SERVER")
    which = f"flow {args.flow}" if args.flow is not None else f"flow {args.key}"
    out = sys.stdout.buffer
    result, error = write_stream(
        args.capture, out, flow_id=args.flow, key=args.key,
        side=Side.CLIENT if args.side == "client" else Side.SERVER, gaps=args.gaps,
        midstream=not args.no_midstream, vlan_in_key=args.vlan, overlap_policy=args.policy)
    out.flush()
    if error is not None:
        print(f"aiomb: error: {error}", file=sys.stderr)
        return 1
    if not result["found"]:
        what = f"no flow number {args.flow}" if args.flow is not None else f"no flow {args.key}"
        print(f"aiomb: error: {what} in {args.capture}; `aiomb flows {args.capture}` lists its flows "
              "with their numbers and endpoints", file=sys.stderr)
        return 1
    if result["udp"]:
        print(f"aiomb: error: {which} is a UDP flow: only TCP flows have a "
              "reassembled stream (`aiomb flows --format jsonl` gives its payload bytes)", file=sys.stderr)
        return 1
    if result["gaps"] and args.gaps == "warn":
        holes = ", ".join(f"[{o}, {o + n})" for o, n in result["gaps"][:10])
        more = f" and {len(result['gaps']) - 10} more" if len(result["gaps"]) > 10 else ""
        total = sum(n for _, n in result["gaps"])
        print(f"aiomb: warning: the {args.side} stream has {len(result['gaps'])} gap(s), {total} bytes "
              f"never seen, left out: stream offsets {holes}{more} (--gaps fill writes NUL bytes, "
              "--gaps mark a marker line, --gaps skip says nothing)", file=sys.stderr)
    return 0


def load_app(path: str):
    """Import a middlebox module from a file path (its folder first on sys.path, as for a script):
    it defines setup(stack) and/or async run(stack) (a stack program), or main(source) (a
    synchronous program, e.g. an epoll loop)."""
    if not os.path.isfile(path):
        raise UsageError(f"middlebox module not found: {path}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec = importlib.util.spec_from_file_location(
        "aiomb_app_" + os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = [name for name in ("setup", "run", "main") if callable(getattr(module, name, None))]
    if not kinds:
        raise UsageError(f"{path} defines none of setup(stack), async run(stack) or main(source); "
                         "define one (see README)")
    if "main" in kinds and len(kinds) > 1:
        raise UsageError(f"{path} defines main(source) and a stack's setup/run: define one kind of program")
    return module


async def run_app(module, source, *, duration: float | None = None, **engine_options) -> None:
    """Run a middlebox module on a source until the source ends and the app returns.

    A live source runs until interrupted (Ctrl-C), or for ``duration`` seconds.
    """
    async with open_stack(source, **engine_options) as stack:
        setup = getattr(module, "setup", None)
        if setup is not None:
            setup(stack)
        run = getattr(module, "run", None)
        async with trio.open_nursery() as nursery:
            timer = trio.CancelScope()
            if duration is not None:
                async def stop_later():
                    with timer:
                        await stop_after(source, duration)
                nursery.start_soon(stop_later)
            if run is not None:
                nursery.start_soon(run, stack)
            await stack.run()
            timer.cancel()


def cmd_run(args) -> int:
    if (args.pcap is None) == (args.iface is None):
        raise UsageError("give one source: --pcap CAPTURE or --iface IF")
    if args.iface is None and (args.inline or args.duration is not None or args.queues):
        raise UsageError("--inline, --queues and --duration are for live ports (--iface)")
    if args.pcap is not None:
        check_capture(args.pcap)
    module = load_app(args.app)
    if args.iface is not None:
        source = live_port(args, inline=args.inline)
    else:
        source = capture(args.pcap)
    try:
        if hasattr(module, "main"):
            run_main(module.main, source, args.duration)
            return 0
        try:
            trio.run(lambda: run_app(module, source, duration=args.duration, midstream=args.midstream,
                                     vlan_in_key=args.vlan))
        except BaseExceptionGroup as group:
            raise sole(group) from None
    except (CaptureError, PortError) as exc:
        print(f"aiomb: error: {exc}", file=sys.stderr)
        return 1
    return 0


def run_main(main, source, duration: float | None) -> None:
    """A synchronous program: ``main(source)``, no Trio; a live port is stopped after ``duration``."""
    stopper = None
    if duration is not None:
        stopper = threading.Timer(duration, source.stop)
        stopper.daemon = True
        stopper.start()
    try:
        main(source)
    finally:
        if stopper is not None:
            stopper.cancel()


def add_port_options(p, *, inline: bool) -> None:
    p.add_argument("--iface", metavar="IF", help="a live interface (AF_XDP; needs root)")
    p.add_argument("--queues", metavar="Q", help="RX queues to read, e.g. 0,1 or 0-3 (default: all)")
    p.add_argument("--mode", choices=("skb", "native"), default="skb",
                   help="XDP mode: skb (generic, any driver; default) or native (the driver's)")
    p.add_argument("--netns", metavar="NS", help="the network namespace the interface is in")
    p.add_argument("--force", action="store_true",
                   help="replace an XDP program that is not aiomb's on the interface")
    p.add_argument("--prefilter-protocols", metavar="P,..",
                   help="in-kernel pre-filter: only these IP protocols (tcp,udp,icmp or numbers)")
    p.add_argument("--prefilter-ports", metavar="PORT,..",
                   help="in-kernel pre-filter: only TCP/UDP with one of these ports (e.g. 80,443,8000-8010)")
    p.add_argument("--prefilter-networks", metavar="NET,..",
                   help="in-kernel pre-filter: only packets from or to these networks (e.g. 10.0.0.0/8)")
    if inline:
        p.add_argument("--inline", metavar="IF2",
                       help="forward between --iface and IF2 (inline: handlers may drop/rewrite)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiomb", description="Async middleboxes on a shared flow stack.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("flows", help="list the flows of a capture, one record per flow")
    f.add_argument("capture", nargs="?", help="a .pcap or .pcapng file, optionally .gz")
    f.add_argument("--format", choices=("table", "jsonl", "csv"), default="table")
    f.add_argument("--filter", metavar="EXPR", help="tcpdump-style flow filter, e.g. 'tcp port 80'")
    f.add_argument("--vlan", action="store_true", help="make VLAN tags part of the flow key")
    f.add_argument("--no-midstream", action="store_true",
                   help="track only flows whose SYN or SYN-ACK is seen (others are orphans)")
    f.add_argument("--policy", default="first", help="overlap policy for reassembly (default first)")
    add_port_options(f, inline=False)
    f.add_argument("--duration", metavar="SECONDS", type=float,
                   help="with --iface: watch for this long, then print the flows")
    f.set_defaults(func=cmd_flows)
    t = sub.add_parser("stream", help="write one flow side's reassembled bytes to stdout")
    t.add_argument("capture", help="a .pcap or .pcapng file, optionally .gz")
    t.add_argument("--flow", type=int, help="the flow number, as 'aiomb flows' prints it")
    t.add_argument("--key", help="the flow as CLIENT_IP:PORT-SERVER_IP:PORT ([v6]:port)")
    t.add_argument("--side", choices=("client", "server"), default="client")
    t.add_argument("--vlan", action="store_true", help="make VLAN tags part of the flow key")
    t.add_argument("--no-midstream", action="store_true", help="ignore flows without a handshake")
    t.add_argument("--policy", default="first", help="overlap policy for reassembly (default first)")
    t.add_argument("--gaps", choices=("warn", "skip", "fill", "mark"), default="warn",
                   help="bytes never seen: left out with a warning (default), left out silently, "
                        "written as NUL bytes, or as a marker line")
    t.set_defaults(func=cmd_stream)
    r = sub.add_parser("run", help="run a middlebox module (APP.py) on a capture or a live port")
    r.add_argument("app", help="a Python file defining setup(stack) and/or async run(stack)")
    r.add_argument("--pcap", metavar="CAPTURE", help="replay this capture")
    add_port_options(r, inline=True)
    r.add_argument("--duration", metavar="SECONDS", type=float,
                   help="with --iface: stop after this long (default: run until Ctrl-C)")
    r.add_argument("--midstream", action="store_true", help="pick up flows without a handshake")
    r.add_argument("--vlan", action="store_true", help="make VLAN tags part of the flow key")
    r.set_defaults(func=cmd_run)
    return p


def main(argv=None) -> int:
    """Entry point of the ``aiomb`` console script and ``python -m aiomb``."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"aiomb: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if not isinstance(sole(exc), BrokenPipeError):
            raise
        # the reader went away (`aiomb ... | head`): end quietly, as a command killed by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
