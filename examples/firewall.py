"""A stateful firewall (mOS's simple_firewall): a rule file judges each TCP connection on its
first SYN; a denied connection loses every packet, an accepted one is left alone.

    aiomb run examples/firewall.py --pcap CAPTURE -- --rules RULES [--default accept|drop] [--json]
    aiomb run examples/firewall.py --iface IF --inline IF2 -- --rules RULES   # live, inline (root)

The rule file has one rule a line; the first rule that matches wins, else the default policy
(``--default``, accept unless told). ``src`` is the client (the SYN's sender), ``dst`` the server;
an address is ``any``, an address or a network (``10.0.0.0/8``, IPv6 too):

    # ACTION  SRC[/MASK]    DST[/MASK]    [sport:N] [dport:N]
    DROP      any           10.0.0.0/8    dport:22
    ACCEPT    10.1.0.0/16   any

How it works:

* ``JUDGED``, a custom event on ``CONN_START``, runs the rules once per connection, in the core,
  and carries the rule that matched (or the default policy). Its inline handler counts the hit and
  drops a denied connection's SYN; an async consumer prints one line per verdict.
* Every later packet of a denied connection is dropped by a handler on a second middlebox whose
  flow filter is the rule file compiled to one tcpdump expression ("the connections the rules
  deny"). A flow filter is evaluated once, when the flow is created: an accepted connection never
  calls Python again (the fast path; nothing is looked up per packet).
* A TCP packet of no connection (no flow and not a SYN: ``ORPHAN``) is dropped: only connections
  the firewall judged get through. Other protocols pass.
* The hit counters are printed every second of stack time (a ``stack.timer``) and at the end.
  On a capture the verdicts are counted (``dropped``), not applied; inline they are.

A bad rule file line ends the program with exit status 2 and a message naming the line.
"""

import argparse
import ipaddress
import json
import sys

import trio

import aiomb
from aiomb.flows import compile_filter

USAGE = "DROP|ACCEPT src[/mask] dst[/mask] [sport:N] [dport:N]"


class Rule:
    """One line of the rule file (or the default policy), with its hit counter."""

    def __init__(self, number, line, action, text, expr):
        self.number, self.line, self.action, self.text = number, line, action, text
        self.expr = expr                        # the tcpdump expression of the flows it matches
        self.filter = compile_filter(expr)
        self.hits = 0

    def name(self):
        return f"rule {self.number}" if self.number else "default"


def parse_address(word):
    if word.lower() in ("any", "*"):
        return None
    try:
        return ipaddress.ip_network(word, strict=False)
    except ValueError:
        raise ValueError(f"bad address {word!r} (use any, an address or a network such as 10.0.0.0/8)") from None


def parse_rule(number, line, text):
    """A Rule from one line's words; ValueError says what is wrong."""
    words = text.split()
    if len(words) < 3:
        raise ValueError("too few fields")
    action = words[0].upper()
    if action not in ("DROP", "ACCEPT"):
        raise ValueError(f"unknown action {words[0]!r} (use DROP or ACCEPT)")
    src, dst = parse_address(words[1]), parse_address(words[2])
    if src is not None and dst is not None and src.version != dst.version:
        raise ValueError("src and dst are of different IP families")
    terms = ["tcp"]
    terms += [f"{d} net {net}" for d, net in (("src", src), ("dst", dst)) if net is not None]
    seen = set()
    for word in words[3:]:
        kind, _, value = word.partition(":")
        if kind not in ("sport", "dport") or not value.isdigit() or not 0 <= int(value) <= 65535:
            raise ValueError(f"bad option {word!r} (use sport:N or dport:N, N in 0..65535)")
        if kind in seen:
            raise ValueError(f"{kind} given twice")
        seen.add(kind)
        terms.append(f"{'src' if kind == 'sport' else 'dst'} port {int(value)}")
    return Rule(number, line, action, " ".join(words), " and ".join(terms))


def load_rules(path, parser):
    """The rules of a file, in order; a bad line is a usage error (exit status 2) naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"cannot read the rule file {path}: {exc}")
    rules = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            try:
                rules.append(parse_rule(len(rules) + 1, n, text))
            except ValueError as exc:
                parser.error(f"{path}, line {n}: {exc}: {line.strip()!r}; a rule is {USAGE}")
    return rules


def denied_expression(rules, default):
    """One tcpdump expression for the connections that the rules (first match wins) deny.

    A connection is denied by DROP rule i when it matches i and no ACCEPT rule before i, or by
    the default policy when it matches no ACCEPT rule at all. None: nothing is denied.
    """
    terms, accepts = [], []
    for rule in rules:
        if rule.action == "DROP":
            terms.append(" and ".join([f"({rule.expr})", *accepts]))
        else:
            accepts.append(f"not ({rule.expr})")
    if default.action == "DROP":
        terms.append(" and ".join(["tcp", *accepts]))
    return " or ".join(f"({t})" for t in terms) or None


def parse_options(argv):
    parser = argparse.ArgumentParser(prog="firewall.py", description="a stateful firewall")
    parser.add_argument("--rules", required=True, metavar="FILE", help=f"one rule a line: {USAGE}")
    parser.add_argument("--default", choices=("accept", "drop"), default="accept",
                        help="the verdict when no rule matches (default: accept)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text")
    args = parser.parse_args(argv)
    args.rule_list = load_rules(args.rules, parser)
    args.default_rule = Rule(0, 0, args.default.upper(), "default", "tcp")
    return args


def judge(packet):
    """JUDGED's predicate, once per new connection: the first rule that matches, else the default."""
    key = packet.flow.key
    for rule in RULES:
        if rule.filter.matches(key):
            return rule
    return DEFAULT


JUDGED = aiomb.define_event(aiomb.CONN_START, judge, name="JUDGED")
orphans = 0


def on_judged(packet):
    """Inline, at the sender hook: count the hit; a denied connection's SYN goes no further."""
    packet.value.hits += 1
    if packet.value.action == "DROP":
        packet.drop()


def drop(packet):
    """Inline, for the connections the denied middlebox's filter accepts: drop every packet."""
    packet.drop()


def drop_orphan(packet):
    """Inline: a TCP packet of no connection the firewall judged."""
    global orphans
    orphans += 1
    packet.drop()


def setup(stack):
    global verdicts, ticks
    stack.on(JUDGED, on_judged, hook=aiomb.Hook.SENDER)
    stack.on(aiomb.ORPHAN, drop_orphan, hook=aiomb.Hook.SENDER)
    expr = denied_expression(RULES, DEFAULT)
    if expr is not None:
        stack.middlebox("denied", filter=expr).on(aiomb.PACKET_IN, drop, hook=aiomb.Hook.SENDER)
    verdicts = stack.subscribe(JUDGED)          # made before the first packet: sees every verdict
    ticks = stack.timer(1.0, interval=1.0)


def print_verdict(ev):
    rule, key = ev.value, ev.key
    if OPTIONS.json:
        print(json.dumps({"ts": round(ev.ts, 6), "verdict": rule.action, "rule": rule.number, "line": rule.line,
                          "client": f"{key.client_ip}:{key.client_port}",
                          "server": f"{key.server_ip}:{key.server_port}"}), flush=True)
    else:
        print(f"{ev.ts:.6f} {rule.action:<6} {key}  {rule.name()}" + (f" (line {rule.line})" if rule.line else ""),
              flush=True)


def print_counters(stack, final=False):
    dropped = stack.statistics().engine.dropped_by_verdict
    everything = [*RULES, DEFAULT]
    if OPTIONS.json:
        print(json.dumps({"ts": round(stack.time(), 6), "final": final, "dropped_packets": dropped,
                          "orphans_dropped": orphans,
                          "hits": [{"rule": r.number, "line": r.line, "action": r.action, "hits": r.hits}
                                   for r in everything]}), flush=True)
    elif final:
        print(f"{'rule':<8} {'line':>4}  {'rule text':<50} {'hits':>8}")
        for r in everything:
            print(f"{r.name():<8} {r.line or '':>4}  {r.text if r.number else r.action:<50} {r.hits:>8}")
        print(f"dropped {dropped} packets ({orphans} of no connection)")
    else:
        hits = ", ".join(f"{r.name()} {r.hits}" for r in everything)
        print(f"{stack.time():.6f} hits: {hits}; dropped {dropped} packets ({orphans} of no connection)",
              flush=True)


async def run(stack):
    """Print each verdict as it comes and the counters every second; the counters at the end."""
    async with trio.open_nursery() as nursery:
        async def every_second():
            async for _ in ticks:
                print_counters(stack)
        nursery.start_soon(every_second)
        async with verdicts:
            async for ev in verdicts:
                print_verdict(ev)
        nursery.cancel_scope.cancel()
    print_counters(stack, final=True)


if __name__ == "__main__":            # python examples/firewall.py --pcap CAPTURE -- --rules FILE
    from aiomb.cli import main

    sys.exit(main(["run", __file__, *sys.argv[1:]]))
else:                                  # loaded by aiomb run: what follows -- is sys.argv[1:]
    OPTIONS = parse_options(sys.argv[1:])
    RULES, DEFAULT = OPTIONS.rule_list, OPTIONS.default_rule
