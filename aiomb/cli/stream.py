"""``aiomb stream CAPTURE --flow N``: one flow side's reassembled bytes to stdout.

Layer: cli (top). Synchronous: the core and its dispatcher over the capture, no Trio.
"""

import ipaddress
import sys

from .._core import POLICIES, Dispatcher, Engine, FrameBatch
from .._errors import CaptureError
from ..events._kinds import EventKind
from ..flows._types import Side
from ..io._capture import capture
from ._common import UsageError, check_capture, stdout_bytes

GAP_MARK = b"\n[aiomb: %d bytes missing at stream offset %d]\n"
KEY_FORM = ("give CLIENT_IP:PORT-SERVER_IP:PORT, IPv6 addresses in brackets "
            "(10.0.0.1:40000-10.0.0.2:80, [2001:db8::1]:40000-[2001:db8::2]:80)")


def parse_key(text: str) -> tuple:
    """``--key CLIENT_IP:PORT-SERVER_IP:PORT`` (IPv6 in brackets) -> (client_ip, client_port,
    server_ip, server_port), the addresses as ipaddress objects: compared with a flow's, any
    spelling of an address (upper case, zeros written out) names it. Raises UsageError saying
    what is wrong and the form expected."""
    def bad(problem: str):
        return UsageError(f"bad --key {text!r}: {problem}; {KEY_FORM}")

    ends = text.split("-")
    if len(ends) != 2:
        raise bad("not two endpoints joined by one -")
    out = []
    for end, role in zip(ends, ("client", "server")):
        if end.startswith("["):
            addr, bracket, port = end[1:].partition("]:")
            if not bracket:
                raise bad(f"the {role} {end!r}: an IPv6 address in brackets is followed by :PORT")
        elif end.count(":") > 1:
            raise bad(f"the {role} {end!r}: an IPv6 address goes in brackets, [ADDRESS]:PORT")
        else:
            addr, colon, port = end.partition(":")
            if not colon:
                raise bad(f"the {role} {end!r} is not ADDRESS:PORT")
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            raise bad(f"the {role} address {addr!r} is not an IP address") from None
        if (ip.version == 6) != end.startswith("["):
            raise bad(f"the {role} address {addr!r}: IPv6 addresses, and only they, go in brackets")
        if not (port.isascii() and port.isdigit() and int(port) <= 65535):
            raise bad(f"the {role} port {port!r} is not a number from 0 to 65535")
        out += [ip, int(port)]
    if out[0].version != out[2].version:
        raise bad("the client and the server are not both IPv4 or both IPv6")
    return tuple(out)


def write_stream(path: str, out, *, flow_id=None, key=None, side=Side.CLIENT, gaps: str = "warn",
                 midstream=True, vlan_in_key=False, **engine_options) -> tuple[dict, BaseException | None]:
    """Write one flow side's reassembled bytes to ``out`` (a binary file).

    The flow is chosen by its number (as ``aiomb flows`` prints it) or by a key string
    ``"client_ip:port-server_ip:port"`` (the first flow with that key; raises UsageError for a
    malformed one, see :func:`parse_key`). A hole is left out
    (``gaps="warn"`` or ``"skip"``), written as NUL bytes (``"fill"``) or as a one-line marker
    (``"mark"``). Returns ({"found": bool, "udp": bool, "written": bytes, "gaps": [(offset,
    length), ...]}, the capture error that ended the run early, or None). Synchronous: the core
    and its dispatcher over the capture, no Trio.
    """
    result = {"found": False, "udp": False, "written": 0, "gaps": []}
    wanted = parse_key(key) if key is not None else None
    engine = Engine(midstream=midstream, vlan_in_key=vlan_in_key, **engine_options)
    dispatcher = Dispatcher(engine)
    sub = dispatcher.subscribe([EventKind.CONN_START, EventKind.UDP_START, EventKind.NEW_DATA, EventKind.GAP])
    chosen = flow_id

    def take() -> None:
        nonlocal chosen
        for ev in dispatcher.drain(sub):
            if chosen is None and ev.kind in (EventKind.CONN_START, EventKind.UDP_START) \
                    and (ev.key.client_ip, ev.key.client_port, ev.key.server_ip, ev.key.server_port) == wanted:
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


def cmd_stream(args) -> int:
    path = check_capture(args.capture)
    if (args.flow is None) == (args.key is None):
        raise UsageError("choose the flow with exactly one of --flow N or --key CLIENT-SERVER")
    which = f"flow {args.flow}" if args.flow is not None else f"flow {args.key}"
    out = stdout_bytes()
    result, error = write_stream(
        path, out, flow_id=args.flow, key=args.key,
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
    t.add_argument("capture", help="a .pcap or .pcapng file, optionally .gz; - for standard input")
    t.add_argument("--flow", type=int, help="the flow number, as 'aiomb flows' prints it")
    t.add_argument("--key", help="the flow as CLIENT_IP:PORT-SERVER_IP:PORT ([v6]:port)")
    t.add_argument("--side", choices=("client", "server"), default="client")
    t.add_argument("--vlan", action="store_true", help="make VLAN tags part of the flow key")
    t.add_argument("--no-midstream", action="store_true", help="ignore flows without a handshake")
    t.add_argument("--policy", choices=POLICIES, default="first", help="overlap policy for reassembly (default first)")
    t.add_argument("--gaps", choices=("warn", "skip", "fill", "mark"), default="warn",
                   help="bytes never seen: left out with a warning (default), left out silently, "
                        "written as NUL bytes, or as a marker line")
    t.set_defaults(func=cmd_stream)
