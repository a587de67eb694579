"""Retransmission auditor (after Abacus, NDSS'14): TCP retransmissions whose bytes differ from
the original, with both versions, and a summary of the retransmitted bytes of each flow.

A retransmission should repeat the bytes it replaces. One that does not is how free mobile data
was had (the meter inspects one copy, the receiver keeps another) and is the signature of a
quantum-insert attack (a forged segment races the real one). The stack compares every copy with
the bytes it holds or has delivered (the last 64 KiB of each side: older ones are only counted,
"unchecked") and raises OVERLAP with both versions; an identical retransmission is only counted.

    aiomb run examples/rexmit_audit.py --pcap CAPTURE [-- --json] [-- --show BYTES]
    aiomb run examples/rexmit_audit.py --iface MIRROR_PORT [-- --json]     # live (root), until Ctrl-C

Human-readable by default: one block per conflicting retransmission (sender -> receiver, stream
offset, the original and the retransmitted bytes, as text when printable, else hex), then a table
of the flows that retransmitted. With --json: one JSON line per conflict ("type": "conflict")
and per flow that retransmitted ("type": "flow"), as they happen.
"""

import argparse
import json
import sys

import aiomb

options = argparse.Namespace(json=False, show=64)


def parse_options(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rexmit_audit.py", description="Report TCP retransmissions whose "
                                     "bytes differ from the original, and the retransmitted bytes per flow.")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text")
    parser.add_argument("--show", type=int, default=64, metavar="BYTES",
                        help="text output: show at most this many bytes of each version (default 64; 0: all)")
    args = parser.parse_args(argv)
    if args.show < 0:
        parser.error(f"--show must be 0 (all) or a number of bytes, got {args.show}")
    return args


def endpoint(ip, port) -> str:
    return f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"


def direction(key, side) -> tuple[str, str]:
    """(sender, receiver) of a side's bytes."""
    client, server = endpoint(key.client_ip, key.client_port), endpoint(key.server_ip, key.server_port)
    return (client, server) if side is aiomb.Side.CLIENT else (server, client)


def printable(data: bytes) -> bool:
    return all(32 <= b < 127 or b in b"\t\r\n" for b in data)


def shown(data: bytes, as_text: bool, limit: int) -> str:
    """Bytes as escaped text ('GET /\\r\\n') or hex, cut at ``limit`` bytes (0: all)."""
    cut = data[:limit] if limit else data
    text = repr(cut.decode("ascii"))[1:-1] if as_text else cut.hex(" ")
    more = f" ... ({len(data)} bytes)" if len(cut) < len(data) else ""
    return (f"'{text}'" if as_text else text) + more


def report_conflict(ev) -> None:
    original, again = ev.value           # (the bytes the stack holds or delivered, the new copy)
    sender, receiver = direction(ev.key, ev.side)
    as_text = printable(original) and printable(again)
    if options.json:
        print(json.dumps({"type": "conflict", "ts": round(ev.ts, 6), "flow": ev.flow_id, "side": str(ev.side),
                          "sender": sender, "receiver": receiver, "offset": ev.offset, "length": ev.length,
                          "encoding": "text" if as_text else "hex",
                          "original": original.decode("ascii") if as_text else original.hex(),
                          "retransmitted": again.decode("ascii") if as_text else again.hex()}), flush=True)
        return
    print(f"{ev.ts:.6f} flow {ev.flow_id} {sender} -> {receiver}  {ev.side} stream bytes "
          f"{ev.offset}-{ev.offset + ev.length} ({ev.length} bytes)")
    print(f"    original:      {shown(original, as_text, options.show)}")
    print(f"    retransmitted: {shown(again, as_text, options.show)}", flush=True)


SIDE_FIELDS = ("retransmits", "retransmitted_bytes", "overlap_conflicts", "overlap_conflict_bytes",
               "unchecked_bytes")


def flow_summary(ev) -> dict | None:
    """The flow's retransmission figures from its statistics at its end (None: it retransmitted nothing)."""
    sides = {"client": ev.stats.client, "server": ev.stats.server}
    figures = {f"{name}_{field}": getattr(st, field) for name, st in sides.items() for field in SIDE_FIELDS}
    if not any(figures.values()):
        return None
    key = ev.key
    return {"type": "flow", "flow": ev.flow_id, "client": endpoint(key.client_ip, key.client_port),
            "server": endpoint(key.server_ip, key.server_port), **figures}


def print_table(flows: list[dict], total_flows: int) -> None:
    print(f"{len(flows)} of {total_flows} TCP flows retransmitted; "
          f"{sum(f['client_overlap_conflicts'] + f['server_overlap_conflicts'] for f in flows)} "
          f"retransmission(s) differed from the original")
    if not flows:
        return
    width = max(len(f"{f['client']} -> {f['server']}") for f in flows)
    columns = ("rexmit segs", "rexmit bytes", "differing", "bytes differ", "unchecked")
    print(f"{'flow':<6}{'client -> server':<{width + 2}}{'side':<8}" + "".join(f"{c:>14}" for c in columns))
    for f in sorted(flows, key=lambda f: f["flow"]):
        for side in ("client", "server"):
            first = side == "client"
            print(f"{f['flow'] if first else '':<6}{f['client'] + ' -> ' + f['server'] if first else '':<{width + 2}}"
                  f"{side:<8}" + "".join(f"{f[side + '_' + field]:>14}" for field in SIDE_FIELDS))


def setup(stack) -> None:
    global options
    options = parse_options(sys.argv[1:])


async def run(stack) -> None:
    """OVERLAP carries both versions of the bytes; the flow's end carries its counters (the stack
    counts retransmissions per side while it tracks the streams, as it does for OVERLAP)."""
    flows, total = [], 0
    async with stack.subscribe(aiomb.OVERLAP, aiomb.CONN_END) as events:
        async for ev in events:
            if ev.kind is aiomb.OVERLAP:
                report_conflict(ev)
            elif ev.kind is aiomb.CONN_END:
                total += 1
                summary = flow_summary(ev)
                if summary is not None:
                    flows.append(summary)
                    if options.json:
                        print(json.dumps(summary), flush=True)
    if not options.json:
        print_table(flows, total)


if __name__ == "__main__":
    from aiomb.cli import main

    sys.exit(main(["run", __file__, *sys.argv[1:]]))
