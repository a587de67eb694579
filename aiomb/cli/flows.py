"""``aiomb flows``: one record per flow of a capture or a live port, streamed as flows end.

Layer: cli (top). Synchronous (no Trio): a :class:`aiomb.FlowRun` hands over the core's record
batches as flows leave the table, and JSON lines and CSV are formatted in the core, so that the
output keeps pace with the engine and memory stays flat whatever the capture's size. SIGINT,
SIGTERM and SIGHUP end the run cleanly: the open flows are written with reason ``interrupted``,
a live port is detached, and the exit status is 128 + the signal's number.
"""

import signal
import sys
import time

from .._core import POLICIES
from .._errors import CaptureError, ExportError, PortError
from .._records import CAPTURE_BLOCK, FIELDS, HASHES, FlowRun, break_read, hash_fields
from .._workers import ShardedRun, WorkerError
from .._zeek import ConnLog, community_ids
from ..flows._filter import FilterError, check_vlan_key, compile_filter
from ..flows._types import EndReason
from ..io._capture import capture
from ._common import (
    UsageError,
    add_port_options,
    check_capture,
    check_live_only,
    check_workers,
    endpoint,
    live_port,
    stdout_bytes,
)

CHUNK = 1024                    # records formatted at once
TABLE_COLUMNS = ("flow", "proto", "client", "server", "pkts c/s", "ip bytes c/s", "states", "end")
VLAN_TABLE_COLUMNS = TABLE_COLUMNS[:2] + ("vlan",) + TABLE_COLUMNS[2:]


class Progress:
    """A progress bar on stderr for long captures (only when stderr is a terminal), drawn at
    most four times a second."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.enabled = stream.isatty()
        self.next = 0.0

    def __call__(self, source) -> None:
        now = time.monotonic()
        if now >= self.next and hasattr(source, "progress"):
            self.next = now + 0.25
            self.draw(*source.progress())

    def draw(self, done: int, total: int, final: bool = False) -> None:
        if final:
            done = total
        frac = done / total if total else 1.0
        width = 30
        bar = "#" * int(frac * width)
        self.stream.write(f"\r[{bar:<{width}}] {frac:6.1%} {done / 1e6:8.1f}/{total / 1e6:.1f} MB")
        if final:
            self.stream.write("\n")
        self.stream.flush()


ZEEK_FORMATS = ("zeek", "zeek-json")


class Writer:
    """Writes record batches in one format: JSON lines, CSV and Zeek's conn.log as they come (or
    all at the end, in flow-number order, with ``sort``), the table at the end (its columns are
    aligned). Without extra fields, JSON lines and CSV are formatted and written by the core
    straight to the output's descriptor. (Measured: a writer thread overlapping that with the
    engine was 4% slower whole process on the 3M-packet benchmark capture, so there is none.)"""

    def __init__(self, fmt: str, out, *, run: FlowRun, sort: bool, community_id: bool = False, vlan: bool = False):
        self.fmt = fmt
        self.vlan = vlan
        self.out = out
        self.run = run
        self.sort = sort or fmt == "table"
        self.held = None
        self.community_id = community_id
        self.extra_names = hash_fields(run.hashes) + (("community_id",) if community_id else ())
        self.header = fmt == "csv"
        self.conn_log = ConnLog(fmt, community_id=community_id, vlan=vlan) if fmt in ZEEK_FORMATS else None
        if self.conn_log is not None:
            out.write(self.conn_log.header().encode())
        try:
            self.fd = out.fileno()
        except (AttributeError, OSError, ValueError):  # not a file descriptor (io.UnsupportedOperation)
            self.fd = None

    def write(self, records) -> None:
        if self.sort:
            if self.held is None:
                self.held = records
            else:
                self.held.extend(records)
            return
        self.emit(records)

    def close(self) -> None:
        if self.held is not None:
            self.held.sort()
            self.emit(self.held)
        if self.header:                         # no flow at all: the header still goes out
            self.out.write(",".join(FIELDS + self.extra_names).encode() + b"\n")
        if self.conn_log is not None:
            self.out.write(self.conn_log.footer().encode())
        self.out.flush()

    def extra_fields(self, records) -> list | None:
        """Each row's extra fields (stream digests, Community ID) as JSON or CSV text, or None."""
        if not self.extra_names:
            return None
        rows = [list(d) for d in self.run.digests(records)] if self.run.hashes else [[] for _ in range(len(records))]
        if self.community_id:
            for row, cid in zip(rows, community_ids(records)):
                row.append(cid)
        if self.fmt == "jsonl":
            return [b"".join(f', "{n}": "{v}"'.encode() for n, v in zip(self.extra_names, row)) for row in rows]
        return [b"".join(b"," + v.encode() for v in row) for row in rows]

    def emit(self, records) -> None:
        if self.conn_log is not None:
            self.out.write(self.conn_log.lines(records).encode())
            self.out.flush()
            return
        extra = self.extra_fields(records)
        if self.fmt == "table":
            self.out.write(table(records, vlan=self.vlan).encode())
        elif extra is None and self.fd is not None:     # formatted and written by the core, GIL released
            self.out.flush()
            records.write(self.fd, self.fmt, header=self.header)
        else:
            for start in range(0, len(records), CHUNK):     # a bounded piece of text at a time
                self.out.write(records.format(self.fmt, start, min(start + CHUNK, len(records)),
                                              header=self.header, extra=extra, extra_names=self.extra_names))
                self.header = False
        self.header = False
        self.out.flush()


def table(records, *, vlan: bool = False) -> str:
    """Records as an aligned table (for people); with ``vlan`` (VLAN tags in the flow key), a
    column of each flow's VLAN IDs (outermost first, "-" for none), without which flows that
    differ only there would print as the same row."""
    columns = VLAN_TABLE_COLUMNS if vlan else TABLE_COLUMNS
    rows = []
    for i in range(len(records)):
        r = records[i]
        row = [str(r["flow"]), r["proto"],
               endpoint(r["client_ip"], r["client_port"]), endpoint(r["server_ip"], r["server_port"]),
               f"{r['client_packets']}/{r['server_packets']}",
               f"{r['client_ip_bytes']}/{r['server_ip_bytes']}",
               f"{r['client_state']}/{r['server_state']}" if r["proto"] == "tcp" else "-",
               r["end_reason"]]
        if vlan:
            row.insert(2, r["vlan"] or "-")
        rows.append(row)
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def stats_line(run: FlowRun, flows: int) -> str:
    """The --stats summary: packets, flows, malformed packets by reason, elapsed time, rate."""
    st = run.statistics()
    elapsed = run.elapsed or 0.0
    malformed = ", ".join(f"{k} {v}" for k, v in sorted(st.malformed.items())) or "none"
    rate = st.packets / elapsed if elapsed > 0 else 0.0
    return (f"aiomb: {st.packets} packets, {flows} flows, malformed: {malformed}; "
            f"{elapsed:.3f} s, {rate / 1e6:.2f} Mpkt/s")


def parse_hashes(text: str | None) -> tuple:
    if not text:
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",")))
    for name in names:
        if name not in HASHES:
            raise UsageError(f"bad --hash {text!r}: choose from {', '.join(HASHES)} (comma-separated)")
    return names


def parse_collector(text: str) -> tuple:
    """``--ipfix [udp://|tcp://]HOST[:PORT]`` -> (transport, host, port); IPv6 addresses in
    brackets, the port 4739 (IPFIX's) when left out. Raises UsageError naming the problem."""
    example = "give HOST:PORT, udp://HOST:PORT or tcp://HOST:PORT (IPv6: [ADDR]:PORT), e.g. 127.0.0.1:4739"
    transport, sep, rest = text.partition("://")
    if not sep:
        transport, rest = "udp", text
    elif transport not in ("udp", "tcp"):
        raise UsageError(f"bad --ipfix {text!r}: unknown transport {transport!r}; {example}")
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise UsageError(f"bad --ipfix {text!r}: an IPv6 address goes in brackets, then :PORT; {example}")
        port = tail[1:] if tail else None
    elif rest.count(":") > 1:
        raise UsageError(f"bad --ipfix {text!r}: an IPv6 address goes in brackets ([ADDR]:PORT); {example}")
    else:
        host, colon, port = rest.partition(":")
        port = port if colon else None
    if not host:
        raise UsageError(f"bad --ipfix {text!r}: no host; {example}")
    if port is None:
        from .._ipfix import IPFIX_PORT

        return transport, host, IPFIX_PORT
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise UsageError(f"bad --ipfix {text!r}: the port must be a number from 1 to 65535; {example}")
    return transport, host, int(port)


def open_exporter(args):
    """The IpfixExporter of --ipfix/--ipfix-domain, or None without --ipfix."""
    if args.ipfix is None:
        if args.ipfix_domain is not None or args.ipfix_rate is not None:
            raise UsageError("--ipfix-domain and --ipfix-rate go with --ipfix COLLECTOR")
        return None
    from .._ipfix import IpfixExporter  # (socket and the encoder: only when asked)

    transport, host, port = parse_collector(args.ipfix)
    domain = 0 if args.ipfix_domain is None else args.ipfix_domain
    if not 0 <= domain < 2 ** 32:
        raise UsageError(f"bad --ipfix-domain {domain}: an observation domain ID is 0 to 4294967295")
    try:
        return IpfixExporter(host, port, transport=transport, domain=domain, rate=args.ipfix_rate)
    except ValueError as exc:
        raise UsageError(f"bad --ipfix-rate: {exc}") from None
    except ExportError as exc:
        raise UsageError(str(exc)) from None


def cmd_flows(args) -> int:
    if (args.capture is None) == (args.iface is None):
        raise UsageError("give a capture file or --iface IF (one of them)")
    if args.format is None and args.ipfix is None:
        args.format = "table"
    if args.format is None and (args.hash or args.community_id):
        raise UsageError("--hash and --community-id add fields to printed records, which IPFIX records do not "
                         "carry: add --format jsonl (or csv) to print them beside the export")
    check_live_only(args)
    try:
        check_vlan_key(compile_filter(args.filter), args.vlan)
    except FilterError as exc:
        raise UsageError(f"bad --filter expression:\n{exc}") from None
    hashes = parse_hashes(args.hash)
    if hashes and args.format in ZEEK_FORMATS + ("table",):
        raise UsageError(f"--hash adds fields to jsonl and csv; --format {args.format} has no place for them")
    if args.community_id and args.format == "table":
        raise UsageError("--community-id adds a field to jsonl, csv, zeek and zeek-json; not to the table")
    if args.iface is not None:
        if args.duration is None or not args.duration > 0:
            raise UsageError("--iface needs --duration SECONDS (how long to watch)")
        check_workers(args.workers)
        if args.workers > 1 and args.queues is not None:
            raise UsageError("--queues does not go with --workers: the workers' steering program takes "
                             "every queue of the interface")
        source = live_port(args)
    else:
        args.capture = check_capture(args.capture)
        check_workers(args.workers)
        source = capture(args.capture, chunk_size=CAPTURE_BLOCK)
    bar = Progress()
    live = args.iface is not None
    deadline = None

    def progress(src) -> None:
        if live and time.monotonic() >= deadline:
            run.stop(EndReason.END_OF_CAPTURE)      # the watch is over: flows end as at a capture's end
        elif bar.enabled and not live:
            bar(src)

    options = dict(filter=args.filter, hashes=hashes, midstream=not args.no_midstream, vlan_in_key=args.vlan,
                   overlap_policy=args.policy, conn_history=args.format in ZEEK_FORMATS)
    if args.workers > 1 and live:
        from .._live_workers import FanoutRun

        run = FanoutRun(args.iface, args.workers, progress=progress, mode=args.mode, netns=args.netns,
                        force=args.force, prefilter=source.prefilter, **options)
    elif args.workers > 1:
        bar.enabled = False
        run = ShardedRun(args.capture, args.workers, **options)
    else:
        run = FlowRun(source, progress=progress if (live or bar.enabled) else None, **options)
    exporter = open_exporter(args)
    writer = None if args.format is None else \
        Writer(args.format, stdout_bytes(), run=run, sort=args.sort, community_id=args.community_id,
               vlan=args.vlan)
    caught = []

    def interrupted(signum, frame) -> None:
        caught.append(signum)
        run.stop(EndReason.INTERRUPTED)
        break_read()        # one engine waiting for a quiet pipe's next bytes stops at once

    handlers = {s: signal.signal(s, interrupted) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    flows, error = 0, None
    try:
        deadline = time.monotonic() + (args.duration or 0)
        for records in run:
            flows += len(records)
            if writer is not None:
                writer.write(records)
            if exporter is not None:
                exporter.send(records)
    except (CaptureError, PortError, ExportError, WorkerError) as exc:
        error = exc
    finally:
        if exporter is not None:
            try:
                exporter.close()        # over TCP: waits for the collector to read to the end
            except ExportError as exc:
                error = error or exc
        for s, h in handlers.items():
            signal.signal(s, h)
    if bar.enabled and not live:
        bar.draw(*source.progress(), final=True)
    if writer is not None:
        writer.close()
    # No figures: the input failed before it opened (nothing was read), or a worker or the port failed.
    lost = not run.opened or (args.workers > 1 and isinstance(error, (WorkerError, PortError)))
    if live and run.opened and not lost:
        st = run.port_statistics() if args.workers > 1 else source.statistics()
        print(f"aiomb: {args.iface}: {st.received} frames received, {st.ring_drops} dropped by "
              f"the ring", file=sys.stderr)
    if args.stats and not lost:
        print(stats_line(run, flows), file=sys.stderr)
    unread = run.statistics().malformed.get("unknown_linktype", 0) if run.opened and not lost else 0
    if unread:
        print(f"aiomb: warning: {unread} frames of a link type aiomb does not read were counted and skipped "
              "(it reads Ethernet, raw IP, Linux SLL/SLL2, BSD loopback, PPP, Cisco HDLC, FDDI, 802.11, "
              "radiotap, NFLOG and pflog)", file=sys.stderr)
    if exporter is not None:
        st = exporter.statistics()
        if args.stats:
            print(f"aiomb: IPFIX to {exporter.where} ({exporter.transport}, domain {exporter.domain}): "
                  f"{st.records} records in {st.messages} messages, {st.bytes} bytes", file=sys.stderr)
        if st.refused:
            print(f"aiomb: warning: IPFIX collector {exporter.where}: {st.refused} messages refused (port "
                  "unreachable): is a collector listening there over UDP?", file=sys.stderr)
    if error is not None:
        print(f"aiomb: error: {error}", file=sys.stderr)
        return 1
    if caught:
        return 128 + caught[0]
    return 0


def add_parser(sub) -> None:
    f = sub.add_parser("flows", help="list the flows of a capture, one record per flow")
    f.add_argument("capture", nargs="?", help="a .pcap or .pcapng file, optionally .gz; - for standard input")
    f.add_argument("--format", choices=("table", "jsonl", "csv") + ZEEK_FORMATS,
                   help="table (aligned, for people; printed at the end; the default without --ipfix); jsonl, csv, "
                        "or Zeek's conn.log as TSV (zeek) or JSON lines (zeek-json), streamed as flows end")
    f.add_argument("--ipfix", metavar="COLLECTOR",
                   help="export every flow over IPFIX to [udp://|tcp://]HOST[:PORT] (default udp, port 4739; "
                        "IPv6: [ADDR]:PORT), as flows end; nothing is printed unless --format is given too")
    f.add_argument("--ipfix-domain", metavar="ID", type=int,
                   help="the IPFIX observation domain ID (default 0): one per box or worker of a fleet")
    f.add_argument("--ipfix-rate", metavar="N", type=float,
                   help="over UDP, send at most N IPFIX messages a second (default: as fast as flows end)")
    f.add_argument("--community-id", action="store_true",
                   help="add each flow's Community ID (v1, seed 0) as a community_id field")
    f.add_argument("--sort", action="store_true",
                   help="jsonl/csv in flow-number order (first seen first): every record is held to the end")
    f.add_argument("--hash", metavar="NAME[,NAME]",
                   help=f"hash both sides' reassembled bytes ({', '.join(HASHES)}): client_NAME, server_NAME fields")
    f.add_argument("--stats", action="store_true",
                   help="a summary line on stderr: packets, flows, malformed packets, elapsed time, rate")
    f.add_argument("--filter", metavar="EXPR", help="tcpdump-style flow filter, e.g. 'tcp port 80'")
    f.add_argument("--vlan", action="store_true", help="make VLAN tags part of the flow key")
    f.add_argument("--no-midstream", action="store_true",
                   help="track only flows whose SYN or SYN-ACK is seen (others are orphans)")
    f.add_argument("--policy", choices=POLICIES, default="first", help="overlap policy for reassembly (default first)")
    f.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N engines in N processes, each tracking the flows that hash to it: a capture "
                        "(a pcap file the workers read themselves, anything else through one reader; the "
                        "records are the same as with one) or a live port, through aiomb's XDP steering "
                        "program (--iface)")
    add_port_options(f, inline=False)
    f.add_argument("--duration", metavar="SECONDS", type=float,
                   help="with --iface: watch for this long, then print the flows")
    f.set_defaults(func=cmd_flows)
