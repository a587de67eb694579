"""What the ``aiomb`` subcommands share: usage errors, capture checks, live port options.

Layer: cli (top).
"""

import io
import os
import sys


class UsageError(Exception):
    """A command-line mistake (or a middlebox module that cannot run: a syntax error, no entry
    point): printed after ``aiomb: error:``, exit status 2."""


class AppError(Exception):
    """The middlebox module raised as it was imported: printed after ``aiomb: error:`` with the
    module's own part of the traceback, exit status 1."""


def endpoint(ip: str, port: int) -> str:
    """``ip:port``, with IPv6 addresses in brackets."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def check_capture(path: str) -> str:
    """The file to open for a capture argument: ``-`` is standard input (``/dev/stdin``, a pipe or
    a file, gzip-compressed or not). Raises UsageError for one that cannot be read at all."""
    if path == "-":
        if os.isatty(0):
            raise UsageError("- reads the capture from standard input, which is a terminal: pipe a capture "
                             "in (tcpdump -w - | aiomb flows -) or give its file")
        return "/dev/stdin"
    if not os.path.exists(path):
        raise UsageError(f"capture file not found: {path}")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory; give a .pcap or .pcapng file")
    return path


def stdout_bytes():
    """The binary stdout the commands write to, buffered. Under ``python -u`` (PYTHONUNBUFFERED)
    ``sys.stdout.buffer`` is the raw file, whose write() may write only part of its bytes (into a
    pipe whose reader leaves mid-write) and say so only in its return value, so the rest would be
    lost and the closed pipe unnoticed; a BufferedWriter writes everything or raises
    (BrokenPipeError: exit status 141)."""
    out = sys.stdout.buffer
    if isinstance(out, io.BufferedIOBase):
        return out
    return io.BufferedWriter(io.FileIO(out.fileno(), "wb", closefd=False))


# The options that act on a live port only (argparse dest, flag): a capture is read to its end and
# has no queues, XDP mode, namespace or in-kernel pre-filter. Each defaults to None (or False).
LIVE_ONLY = (("inline", "--inline"), ("queues", "--queues"), ("mode", "--mode"), ("netns", "--netns"),
             ("force", "--force"), ("prefilter_protocols", "--prefilter-protocols"),
             ("prefilter_ports", "--prefilter-ports"), ("prefilter_networks", "--prefilter-networks"),
             ("duration", "--duration"))


def _given(value) -> bool:
    """Whether an option left at None (or False, for a flag) was given: by identity, as
    ``--duration 0`` is given and 0 == False."""
    return value is not None and value is not False


def check_live_only(args) -> None:
    """Raise UsageError naming every live-port option given without ``--iface``. Then fills in
    the XDP mode left out (``--mode`` defaults to None so that a given ``--mode skb`` is seen)."""
    if args.iface is None:
        given = [flag for dest, flag in LIVE_ONLY if _given(getattr(args, dest, None))]
        if given:
            names = given[0] if len(given) == 1 else ", ".join(given[:-1]) + " and " + given[-1]
            raise UsageError(f"{names} {'is' if len(given) == 1 else 'are'} for live ports (--iface IF); a "
                             "capture has no queues, XDP mode, namespace or pre-filter, and is read to its "
                             f"end: drop {'it' if len(given) == 1 else 'them'}")
    if args.mode is None:
        args.mode = "skb"


def check_workers(workers: int) -> None:
    """Raise UsageError unless ``--workers`` is a number of processes aiomb can run: 1 to 1024
    (a capture, file or pipe, is read once for all of them; a live port is steered to them)."""
    if workers < 1:
        raise UsageError(f"--workers {workers}: give a number of worker processes, at least 1")
    if workers > 1024:
        raise UsageError(f"--workers {workers}: at most 1024")


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
    from ..io._prefilter import Prefilter

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
    from ..io._port import port

    if os.geteuid() != 0:
        raise UsageError("live ports (--iface) need root (AF_XDP sockets and XDP programs)")
    return port(args.iface, queues=parse_queues(args.queues), mode=args.mode, inline=inline,
                force=args.force, netns=args.netns, prefilter=parse_prefilter(args))


def sole(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one member, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def add_port_options(p, *, inline: bool) -> None:
    p.add_argument("--iface", metavar="IF", help="a live interface (AF_XDP; needs root)")
    p.add_argument("--queues", metavar="Q", help="RX queues to read, e.g. 0,1 or 0-3 (default: all)")
    p.add_argument("--mode", choices=("skb", "native"),
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
