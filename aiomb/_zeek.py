"""Zeek's conn.log from flow records, and the Community ID of a flow.

The core keeps Zeek's view of each flow when asked (``Engine(conn_history=True)``: Zeek's
endpoint states, history letters, sizes and content gaps; see ``FlowRecords.conn``); this module
turns it into conn.log lines, as Zeek's TSV (with its header lines, so that zat, pandas and
Zeek's own zeek-cut read it) or as Zeek's JSON lines. Fields Zeek fills from its protocol
analyzers or site configuration (``service``, ``local_orig``, ``local_resp``,
``tunnel_parents``) are unset ("-"). Layer: shells (beside ``_records``).
"""

import base64
import hashlib
import ipaddress
import json
import re
import struct
import time

CONN_FIELDS = ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service", "duration",
               "orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp", "missed_bytes", "history",
               "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes", "tunnel_parents", "ip_proto")
CONN_TYPES = ("time", "string", "addr", "port", "addr", "port", "enum", "string", "interval", "count", "count",
              "string", "bool", "bool", "count", "string", "count", "count", "count", "count", "set[string]",
              "count")
# With VLAN tags in the flow key, Zeek (its conn_key vlan_fivetuple framework) logs them in the
# connection's id, after id.resp_p: the outer VLAN ID and the inner one (QinQ), unset when absent.
VLAN_FIELDS = ("id.ctx.vlan", "id.ctx.inner_vlan")
VLAN_AFTER = CONN_FIELDS.index("id.resp_p") + 1

# Zeek's endpoint states (TCP_ENDPOINT_*), as FlowRecords.conn reports them; UDP: 1 active.
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)
_RSTOS0 = re.compile(r"\^?S[^HAFGIQ]*R.*")
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE62_PAIRS = [a + b for a in _BASE62 for b in _BASE62]     # two digits per division


def conn_state(proto: str, orig: int, resp: int, orig_bytes: int, resp_bytes: int, history: str) -> str:
    """Zeek's conn_state (its base/protocols/conn script) from both endpoints' states."""
    if proto == "udp":
        if orig:
            return "SF" if resp else "S0"
        return "SHR" if resp else "OTH"
    o_inactive = orig in (INACTIVE, PARTIAL)
    r_inactive = resp in (INACTIVE, PARTIAL)
    if resp == RESET:
        if orig in (SYN_SENT, SYN_ACK_SENT) or (orig == RESET and orig_bytes == 0 and resp_bytes == 0):
            return "REJ"
        return "RSTRH" if o_inactive else "RSTR"
    if orig == RESET:
        if r_inactive:
            return "RSTOS0" if _RSTOS0.fullmatch(history) else "OTH"
        return "RSTO"
    if orig == CLOSED and resp == CLOSED:
        return "SF"
    if orig == CLOSED:
        return "SH" if r_inactive else "S2"
    if resp == CLOSED:
        return "SHR" if o_inactive else "S3"
    if orig == SYN_SENT and resp == INACTIVE:
        return "S0"
    if orig == ESTABLISHED and resp == ESTABLISHED:
        return "S1"
    return "OTH"


def community_id(proto: int, src: str, sport: int, dst: str, dport: int, seed: int = 0) -> str:
    """The Community ID (v1) of a TCP or UDP flow: ``1:`` and the base64 SHA-1 of the seed, the
    endpoints in order (the lower address first; for equal addresses the lower port), the
    protocol and the ports. The same for both directions of a flow."""
    a = ipaddress.ip_address(src).packed
    b = ipaddress.ip_address(dst).packed
    if (a, sport) > (b, dport):
        a, sport, b, dport = b, dport, a, sport
    data = struct.pack("!H", seed) + a + b + struct.pack("!BxHH", proto, sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def community_ids(records) -> list:
    """Each record's Community ID (a list, in record order)."""
    out = []
    for i in range(len(records)):
        r = records[i]
        out.append(community_id(6 if r["proto"] == "tcp" else 17, r["client_ip"], r["client_port"],
                                r["server_ip"], r["server_port"]))
    return out


def uid(flow_id: int, first_ts: float, client: str, client_port: int) -> str:
    """A conn.log uid: "C" and 96 bits in base62 as Zeek's, derived from the flow (so the same
    capture gives the same uids on every run)."""
    n = int.from_bytes(hashlib.blake2b(f"{flow_id}|{first_ts:.6f}|{client}|{client_port}".encode(),
                                       digest_size=12).digest(), "big")
    out = []
    while n:
        n, r = divmod(n, 3844)
        out.append(_BASE62_PAIRS[r])
    return "C" + "".join(reversed(out)).lstrip("0")


def conn_rows(records, *, with_community_id: bool = False, with_vlan: bool = False):
    """Each record's conn.log fields (a dict in log order; unset fields absent), in record order;
    ``with_vlan``: the VLAN IDs (records made with ``vlan_in_key``). Raises ValueError for
    records made without ``conn_history``."""
    for i in range(len(records)):
        r = records[i]
        c = records.conn(i)
        if c is None:
            raise ValueError("these records hold no connection history: run the engine with conn_history=True")
        roles = ("client", "server") if c["orig"] == 0 else ("server", "client")
        o, p = roles
        proto = r["proto"]
        row = {"ts": r["first_ts"], "uid": uid(r["flow"], r["first_ts"], r["client_ip"], r["client_port"]),
               "id.orig_h": r[f"{o}_ip"], "id.orig_p": r[f"{o}_port"],
               "id.resp_h": r[f"{p}_ip"], "id.resp_p": r[f"{p}_port"]}
        if with_vlan and r["vlan"]:
            for name, vlan_id in zip(VLAN_FIELDS, r["vlan"].split("/")):
                row[name] = int(vlan_id)
        row["proto"] = proto
        duration = c["last_ts"] - r["first_ts"]
        if duration > 0:
            row["duration"] = duration
            row["orig_bytes"] = c["orig_bytes"]
            row["resp_bytes"] = c["resp_bytes"]
        row["conn_state"] = conn_state(proto, c["orig_state"], c["resp_state"], c["orig_bytes"], c["resp_bytes"],
                                       c["history"])
        row["missed_bytes"] = c["missed_bytes"]
        if c["history"]:
            row["history"] = c["history"]
        row["orig_pkts"] = r[f"{o}_packets"]
        row["orig_ip_bytes"] = r[f"{o}_ip_bytes"]
        row["resp_pkts"] = r[f"{p}_packets"]
        row["resp_ip_bytes"] = r[f"{p}_ip_bytes"]
        row["ip_proto"] = 6 if proto == "tcp" else 17
        if with_community_id:
            row["community_id"] = community_id(row["ip_proto"], row["id.orig_h"], row["id.orig_p"],
                                               row["id.resp_h"], row["id.resp_p"])
        yield row


def _tsv_line(row: dict, community: bool, vlan: bool) -> str:
    """One conn.log TSV line (addresses, numbers and history letters need no escaping)."""
    if "duration" in row:
        sizes = f"{row['duration']:.6f}\t{row['orig_bytes']}\t{row['resp_bytes']}"
    else:
        sizes = "-\t-\t-"
    vlans = "".join(f"\t{row.get(name, '-')}" for name in VLAN_FIELDS) if vlan else ""
    line = (f"{row['ts']:.6f}\t{row['uid']}\t{row['id.orig_h']}\t{row['id.orig_p']}\t{row['id.resp_h']}\t"
            f"{row['id.resp_p']}{vlans}\t{row['proto']}\t-\t{sizes}\t{row['conn_state']}\t-\t-\t{row['missed_bytes']}\t"
            f"{row.get('history', '-')}\t{row['orig_pkts']}\t{row['orig_ip_bytes']}\t{row['resp_pkts']}\t"
            f"{row['resp_ip_bytes']}\t-\t{row['ip_proto']}")
    return line + "\t" + row["community_id"] if community else line


class ConnLog:
    """Writes conn.log text: ``header()``, ``lines(records)`` and ``footer()`` for Zeek's TSV
    (``fmt="zeek"``), or ``lines`` alone for Zeek's JSON lines (``fmt="zeek-json"``). With
    ``community_id``, a ``community_id`` field ends each line (as Zeek's community-id policy
    script adds it). With ``vlan`` (records made with ``vlan_in_key``), ``id.ctx.vlan`` and
    ``id.ctx.inner_vlan`` follow ``id.resp_p``, as Zeek logs them with VLAN IDs in its
    connection key."""

    def __init__(self, fmt: str, *, community_id: bool = False, vlan: bool = False):
        if fmt not in ("zeek", "zeek-json"):
            raise ValueError(f"fmt must be 'zeek' or 'zeek-json', got {fmt!r}")
        self.fmt = fmt
        self.community_id = community_id
        self.vlan = vlan
        vlan_fields, vlan_types = (VLAN_FIELDS, ("int", "int")) if vlan else ((), ())
        self.fields = (CONN_FIELDS[:VLAN_AFTER] + vlan_fields + CONN_FIELDS[VLAN_AFTER:]
                       + (("community_id",) if community_id else ()))
        self.types = (CONN_TYPES[:VLAN_AFTER] + vlan_types + CONN_TYPES[VLAN_AFTER:]
                      + (("string",) if community_id else ()))

    def header(self) -> str:
        if self.fmt != "zeek":
            return ""
        return ("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
                f"#open\t{time.strftime('%Y-%m-%d-%H-%M-%S')}\n"
                "#fields\t" + "\t".join(self.fields) + "\n#types\t" + "\t".join(self.types) + "\n")

    def footer(self) -> str:
        return f"#close\t{time.strftime('%Y-%m-%d-%H-%M-%S')}\n" if self.fmt == "zeek" else ""

    def lines(self, records) -> str:
        out = []
        for row in conn_rows(records, with_community_id=self.community_id, with_vlan=self.vlan):
            if self.fmt == "zeek":
                out.append(_tsv_line(row, self.community_id, self.vlan))
            else:
                if "duration" in row:
                    row["duration"] = round(row["duration"], 6)
                out.append(json.dumps(row, separators=(",", ":")))
        return "".join(line + "\n" for line in out)
