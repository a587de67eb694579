"""``aiomb stream CAPTURE --flow N``: one flow side's reassembled bytes to stdout.

Layer: cli (top). Synchronous: the core and its dispatcher over the capture, no Trio.
"""

import sys

from .._core import Dispatcher, Engine, FrameBatch
from .._errors import CaptureError
from ..events._kinds import EventKind
from ..flows._types import Side
from ..io._capture import capture
from ._common import UsageError, check_capture, endpoint

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
            while count := source.read(batch):
                pos = 0
                while (pos := engine.process(batch, pos)) < count:
                    take()          # stopped at max_event_memory: what it logged first
                take()
    except CaptureError as exc:
        return result, exc
    finally:
        while not engine.finish():
            take()
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


def add_parser(sub) -> None:
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
