"""Per-flow retransmission rates: for each TCP flow and each side, the segments and bytes sent
again next to the data segments and bytes sent (rate = retransmitted / data).

    aiomb run examples/rexmit_rate.py --pcap CAPTURE [-- --json]
    aiomb run examples/rexmit_rate.py --iface MIRROR_PORT [-- --json]      # live (root), until Ctrl-C

Retransmitted segments are those carrying only bytes the side had sent already, and SYNs and FINs
sent again; data segments are the segments carrying payload. The figures are the flow's own
counters when it ends (the fields of `aiomb flows`: rexmits, retransmitted_bytes, data_segments,
payload_bytes). Two differences: `aiomb flows` picks flows up mid-stream (give `aiomb run`
--midstream to count those too), and its records also count the stragglers that reach an ended flow
while it lingers in the table (5 s after a FIN or RST close). A table at the end by default; with
--json one JSON line per flow as it ends.
"""

import argparse
import json
import sys

import aiomb

options = argparse.Namespace(json=False)


def parse_options(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rexmit_rate.py", description="Retransmitted segments and bytes "
                                     "per TCP flow and side, next to the data segments and bytes.")
    parser.add_argument("--json", action="store_true", help="one JSON line per flow as it ends, no table")
    return parser.parse_args(argv)


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def flow_record(ev) -> dict:
    """One flow's figures, named as in `aiomb flows` (plus each side's two rates)."""
    key = ev.key
    record = {"flow": ev.flow_id, "client_ip": str(key.client_ip), "client_port": key.client_port,
              "server_ip": str(key.server_ip), "server_port": key.server_port}
    for name, st in (("client", ev.stats.client), ("server", ev.stats.server)):
        record |= {f"{name}_data_segments": st.data_segments, f"{name}_payload_bytes": st.payload_bytes,
                   f"{name}_rexmits": st.retransmits, f"{name}_retransmitted_bytes": st.retransmitted_bytes,
                   f"{name}_segment_rate": rate(st.retransmits, st.data_segments),
                   f"{name}_byte_rate": rate(st.retransmitted_bytes, st.payload_bytes)}
    return record


def endpoint(ip, port) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def print_table(records: list[dict]) -> None:
    """Per flow a line with its endpoints, then a line per side; a total line at the end."""
    widths = {"data segs": 11, "data bytes": 12, "rexmit segs": 13, "rexmit bytes": 14, "segs %": 9, "bytes %": 9}
    print(f"{'flow':<6}{'side':<8}" + "".join(f"{c:>{w}}" for c, w in widths.items()))
    fields = ("data_segments", "payload_bytes", "rexmits", "retransmitted_bytes")
    totals = dict.fromkeys(fields, 0)

    def row(label, figures, segment_rate, byte_rate):
        cells = [*figures, percent(segment_rate), percent(byte_rate)]
        print(f"{'':<6}{label:<8}" + "".join(f"{cell:>{w}}" for cell, w in zip(cells, widths.values())))

    for r in sorted(records, key=lambda r: r["flow"]):
        client, server = endpoint(r["client_ip"], r["client_port"]), endpoint(r["server_ip"], r["server_port"])
        print(f"{r['flow']:<6}{client} -> {server}")
        for side in ("client", "server"):
            for field in fields:
                totals[field] += r[f"{side}_{field}"]
            row(side, [r[f"{side}_{field}"] for field in fields], r[f"{side}_segment_rate"], r[f"{side}_byte_rate"])
    print(f"all   {len(records)} TCP flows")
    row("both", totals.values(), rate(totals["rexmits"], totals["data_segments"]),
        rate(totals["retransmitted_bytes"], totals["payload_bytes"]))


def setup(stack) -> None:
    global options
    options = parse_options(sys.argv[1:])


async def run(stack) -> None:
    records = []
    # Wanting RETRANSMIT makes the stack track each side's stream ranges, hence count retransmissions
    # and data segments; the figures are read from the flow's statistics at its end.
    async with stack.subscribe(aiomb.RETRANSMIT, aiomb.CONN_END) as events:
        async for ev in events:
            if ev.kind is aiomb.CONN_END:
                record = flow_record(ev)
                if options.json:
                    print(json.dumps(record), flush=True)
                else:
                    records.append(record)
    if not options.json:
        print_table(records)


if __name__ == "__main__":
    from aiomb.cli import main

    sys.exit(main(["run", __file__, *sys.argv[1:]]))
