"""A stream matcher (IDS-style): Suricata rules' byte patterns and regular expressions, matched on
each direction of every TCP flow's reassembled stream, across segment boundaries, never across a hole.

    aiomb run examples/matcher.py --pcap CAPTURE -- --rules FILE [--json]
    aiomb run examples/matcher.py --iface MIRROR_PORT -- --rules FILE --json     # live (root)

Rules are Suricata's syntax, the stream subset: ``alert tcp|tcp-stream|http ADDR PORT ->|<> ADDR PORT
(OPTIONS)`` with ``content`` (``|0d 0a|`` hex, ``nocase``), ``pcre:"/RE/ismx"``, ``flow:to_server|
to_client|from_client|from_server|only_stream``, ``msg``, ``sid`` (plus ``rev``, ``classtype``,
``metadata``, ``reference``, ``priority``, ``fast_pattern``, which change nothing here). A rule matches at
each occurrence of one of its patterns once all of them have occurred in that direction; ``http`` rules
look at every TCP stream (no protocol detection). Other keywords are errors, or skipped rules with
``--skip-unsupported``. One line per match: the sid, the flow's endpoints, the direction and the stream
offset of the match's first byte (offset 0 is the byte after the SYN). Contents go through one
Aho-Corasick automaton per case (pyahocorasick: ``pip install 'aiomb[examples]'``); each direction keeps
its last bytes (the longest content's length minus one, or ``--window`` with pcre rules) to find matches
that straddle segments; a hole (a GAP) drops them, so nothing matches across it.
"""

import argparse
import ipaddress
import json
import re
import sys

import aiomb

try:
    import ahocorasick
except ImportError:             # pragma: no cover - the message is the point
    sys.exit("matcher: needs pyahocorasick: pip install 'aiomb[examples]' (or pip install pyahocorasick)")

IGNORED = {"rev", "classtype", "metadata", "reference", "priority", "gid", "fast_pattern"}
FLOW_DIRECTIONS = {"to_server": "to_server", "from_client": "to_server", "to_client": "to_client",
                   "from_server": "to_client"}
PCRE_FLAGS = {"i": re.IGNORECASE, "s": re.DOTALL, "m": re.MULTILINE, "x": re.VERBOSE}


class RuleError(ValueError):
    """A rule outside the supported subset, or malformed."""


class Rule:
    def __init__(self, sid, msg, contents, pcres, direction, header, line):
        self.sid, self.msg, self.line = sid, msg, line
        self.contents = contents        # [(bytes, nocase)]
        self.pcres = pcres              # [compiled bytes regex]
        self.direction = direction      # "to_server", "to_client" or None (both)
        self.header = header            # (src nets, src ports, dst nets, dst ports, both ways)


def split_options(text: str) -> list[tuple[str, str | None]]:
    """``key:value; key; ...`` into pairs, honouring quotes and backslash escapes."""
    options, current, quoted, escaped = [], "", False, False
    for ch in text:
        if escaped:
            current += "\\" + ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current += ch
        elif ch == ";" and not quoted:
            options.append(current.strip())
            current = ""
        else:
            current += ch
    if quoted or current.strip():
        raise RuleError("unterminated option (a missing ';' or '\"')")
    pairs = []
    for option in filter(None, options):
        key, sep, value = option.partition(":")
        pairs.append((key.strip(), value.strip() if sep else None))
    return pairs


def unquote(value: str | None, key: str, escaped: str = '"\\;:') -> str:
    """A quoted option value with its escapes (``\\"`` and ``\\;``, and for contents ``\\\\`` and ``\\:``) undone."""
    if value is None or len(value) < 2 or value[0] != '"' or value[-1] != '"':
        raise RuleError(f"{key} needs a quoted value: {key}:\"...\"")
    return re.sub(r"\\([" + re.escape(escaped) + "])", r"\1", value[1:-1])


def content_bytes(text: str) -> bytes:
    """A content string: text, with ``|41 42|`` hex bytes."""
    out = bytearray()
    for i, part in enumerate(text.split("|")):
        if i % 2:
            try:
                out += bytes.fromhex(part)
            except ValueError:
                raise RuleError(f"bad hex bytes |{part}| in content") from None
        else:
            out += part.encode("latin-1")
    if text.count("|") % 2:
        raise RuleError("unbalanced '|' in content")
    if not out:
        raise RuleError("empty content")
    return bytes(out)


def pcre(value: str | None):
    text = unquote(value, "pcre", '";')            # \\ stays: the regex's own escape
    if not text.startswith("/") or text.rfind("/") == 0:
        raise RuleError('pcre needs the form pcre:"/REGEX/FLAGS"')
    end = text.rfind("/")
    flags = 0
    for f in text[end + 1:]:
        if f not in PCRE_FLAGS:
            raise RuleError(f"pcre flag {f!r} is outside the stream subset (use i, s, m, x)")
        flags |= PCRE_FLAGS[f]
    try:
        regex = re.compile(text[1:end].encode("latin-1"), flags)
    except re.error as exc:
        raise RuleError(f"bad pcre /{text[1:end]}/: {exc}") from None
    if regex.fullmatch(b""):
        raise RuleError(f"pcre /{text[1:end]}/ matches the empty string")
    return regex


def addresses(text: str, what: str):
    """``any``, an address, a network, ``!x`` or ``[a,b,...]`` -> (include nets, exclude nets) or None for any."""
    if text == "any":
        return None
    negate = text.startswith("!")
    items = text.lstrip("!").strip("[]").split(",")
    try:
        nets = [ipaddress.ip_network(item.strip(), strict=False) for item in items]
    except ValueError:
        raise RuleError(f"{what} {text!r}: give any, an address, a network or a [list] (no $VARIABLES)") from None
    return (negate, nets)


def ports(text: str, what: str):
    if text == "any":
        return None
    negate = text.startswith("!")
    ranges = []
    for item in text.lstrip("!").strip("[]").split(","):
        low, sep, high = item.strip().partition(":")
        try:
            ranges.append((int(low or 0), int(high or 65535) if sep else int(low)))
        except ValueError:
            raise RuleError(f"{what} {text!r}: give any, a port, a range a:b or a [list] (no $VARIABLES)") from None
    return (negate, ranges)


HEADER = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(->|<>)\s+(\S+)\s+(\S+)\s*\((.*)\)\s*$")


def parse_rule(text: str, line: int) -> Rule:
    m = HEADER.match(text)
    if not m:
        raise RuleError("not a rule: expected 'alert tcp SRC SPORT -> DST DPORT (OPTIONS)'")
    action, proto, src, sport, arrow, dst, dport, body = m.groups()
    if action != "alert":
        raise RuleError(f"action {action!r}: only 'alert' (a stream matcher cannot drop or pass)")
    if proto not in ("tcp", "tcp-stream", "http"):
        raise RuleError(f"protocol {proto!r}: only tcp, tcp-stream and http (the stream subset)")
    header = (addresses(src, "source"), ports(sport, "source port"), addresses(dst, "destination"),
              ports(dport, "destination port"), arrow == "<>")
    sid, msg, contents, pcres, direction = None, "", [], [], None
    for key, value in split_options(body):
        if key == "sid":
            if value is None or not value.isdigit():
                raise RuleError("sid needs a number: sid:1000001")
            sid = int(value)
        elif key == "msg":
            msg = unquote(value, "msg")
        elif key == "content":
            text = unquote(value, "content")
            if text.startswith("!"):
                raise RuleError("negated content (content:!\"...\") is outside the stream subset")
            contents.append((content_bytes(text), False))
        elif key == "nocase":
            if not contents or value is not None:
                raise RuleError("nocase must follow a content")
            contents[-1] = (contents[-1][0], True)
        elif key == "pcre":
            pcres.append(pcre(value))
        elif key == "flow":
            for word in (w.strip() for w in (value or "").split(",")):
                if word in FLOW_DIRECTIONS:
                    direction = FLOW_DIRECTIONS[word]
                elif word != "only_stream":
                    raise RuleError(f"flow:{word} is outside the stream subset (to_server, to_client, only_stream)")
        elif key not in IGNORED:
            raise RuleError(f"keyword {key!r} is outside the stream subset")
    if sid is None:
        raise RuleError("no sid: add sid:NUMBER;")
    if not contents and not pcres:
        raise RuleError("no content or pcre: a stream rule needs a pattern")
    return Rule(sid, msg, contents, pcres, direction, header, line)


def load_rules(path: str, skip_unsupported: bool) -> list[Rule]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise SystemExit(usage_error(f"cannot read the rule file: {exc}; pass --rules FILE")) from None
    rules, sids = [], set()
    for number, text in enumerate(lines, 1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        try:
            rule = parse_rule(text, number)
            if rule.sid in sids:
                raise RuleError(f"sid {rule.sid} is used twice: give each rule its own sid")
        except RuleError as exc:
            if not skip_unsupported:
                raise SystemExit(usage_error(f"{path} line {number}: {exc} (fix the rule, or pass "
                                             "--skip-unsupported to skip such rules)")) from None
            sid = re.search(r"\bsid\s*:\s*(\d+)", text)
            print(f"matcher: skipped sid {sid.group(1) if sid else '?'} ({path} line {number}): {exc}",
                  file=sys.stderr)
            continue
        sids.add(rule.sid)
        rules.append(rule)
    if not rules:
        raise SystemExit(usage_error(f"{path} holds no usable rule: add one, e.g. "
                                     "alert tcp any any -> any any (content:\"GET\"; sid:1;)"))
    return rules


def usage_error(message: str) -> int:
    print(f"matcher: error: {message}", file=sys.stderr)
    return 2


def in_nets(ip, spec) -> bool:
    if spec is None:
        return True
    negate, nets = spec
    address = ipaddress.ip_address(ip)
    return any(address in net for net in nets if net.version == address.version) != negate


def in_ports(port, spec) -> bool:
    if spec is None:
        return True
    negate, ranges = spec
    return any(low <= port <= high for low, high in ranges) != negate


def header_matches(rule: Rule, sender: tuple, receiver: tuple) -> bool:
    src, sport, dst, dport, both_ways = rule.header

    def one_way(a, b):
        return in_nets(a[0], src) and in_ports(a[1], sport) and in_nets(b[0], dst) and in_ports(b[1], dport)
    return one_way(sender, receiver) or (both_ways and one_way(receiver, sender))


class Matcher:
    """All rules' patterns; ``scan`` finds the occurrences a direction's new bytes complete."""

    def __init__(self, rules: list[Rule], window: int):
        self.rules = rules
        self.automata = {}
        longest = 1
        for nocase in (False, True):
            automaton = ahocorasick.Automaton()
            for r, rule in enumerate(rules):
                for p, (pattern, case) in enumerate(rule.contents):
                    if case == nocase:
                        key = (pattern.lower() if nocase else pattern).decode("latin-1")
                        automaton.add_word(key, automaton.get(key, ()) + ((r, p, len(pattern)),))
                        longest = max(longest, len(pattern))
            if len(automaton):
                automaton.make_automaton()
                self.automata[nocase] = automaton
        self.pcres = [(r, len(rule.contents) + i, regex) for r, rule in enumerate(rules)
                      for i, regex in enumerate(rule.pcres)]
        self.longest = longest
        self.keep = max(longest - 1, window if self.pcres else 0)

    def scan(self, state: "Direction", offset: int, data: bytes) -> list[tuple[int, int, int, int]]:
        """The (start offset, end offset, rule, pattern) occurrences that end in ``data``, in order."""
        if offset != state.next:                # a hole: nothing matches across it
            state.tail, state.pcre_done = b"", {}
        text = state.tail + data
        base = offset - len(state.tail)
        found = []
        for nocase, automaton in self.automata.items():
            start = max(0, len(state.tail) - self.longest + 1)
            for end, entries in automaton.iter((text.lower() if nocase else text).decode("latin-1"), start):
                if end >= len(state.tail):      # ends in the new bytes: not seen before
                    found.extend((base + end + 1 - n, base + end + 1, r, p) for r, p, n in entries)
        for r, p, regex in self.pcres:
            done = state.pcre_done.get((r, p), base)        # where its last match ended
            for m in regex.finditer(text, max(0, done - base)):
                if m.end() > len(state.tail) and m.end() > m.start():
                    found.append((base + m.start(), base + m.end(), r, p))
                    state.pcre_done[(r, p)] = base + m.end()
        state.tail = text[-self.keep:] if self.keep else b""
        state.next = offset + len(data)
        found.sort(key=lambda f: (f[1], f[0]))
        return found


class Direction:
    """One direction of one flow: its tail, and which patterns of each rule it has seen."""

    def __init__(self, offset: int, rules: list[int]):
        self.next = offset
        self.tail = b""
        self.pcre_done = {}
        self.rules = set(rules)         # indices of the rules that apply to this direction
        self.seen = {}                  # rule index -> set of pattern indices seen


def endpoint(ip, port) -> str:
    return f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"


def parse_options(argv):
    parser = argparse.ArgumentParser(prog="matcher.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rules", required=True, metavar="FILE", help="a Suricata rule file (the stream subset)")
    parser.add_argument("--json", action="store_true", help="one JSON object per match")
    parser.add_argument("--skip-unsupported", action="store_true",
                        help="skip rules outside the subset (named on stderr) instead of failing")
    parser.add_argument("--window", type=int, default=4096, metavar="BYTES",
                        help="how far back a pcre match may start before a segment boundary (default 4096)")
    args = parser.parse_args(argv)
    if args.window < 0:
        parser.error("--window must be 0 or more bytes")
    return args


OPTIONS = parse_options(sys.argv[1:])
RULES = load_rules(OPTIONS.rules, OPTIONS.skip_unsupported)
MATCHER = Matcher(RULES, OPTIONS.window)


def report(ev, direction: str, start: int, end: int, rule: Rule, out=sys.stdout) -> None:
    key = ev.key
    if OPTIONS.json:
        out.write(json.dumps({"ts": round(ev.ts, 6), "sid": rule.sid, "msg": rule.msg,
                              "client_ip": str(key.client_ip), "client_port": key.client_port,
                              "server_ip": str(key.server_ip), "server_port": key.server_port,
                              "direction": direction, "offset": start, "length": end - start}) + "\n")
    else:
        out.write(f"{ev.ts:.6f} sid {rule.sid} {endpoint(key.client_ip, key.client_port)} -> "
                  f"{endpoint(key.server_ip, key.server_port)} {direction} offset {start} "
                  f"{rule.msg!r}\n")


async def run(stack):
    flows = {}                  # (flow id, side) -> Direction
    matches = chunks = 0
    async with stack.subscribe(aiomb.NEW_DATA, aiomb.CONN_END) as events:
        async for ev in events:
            if ev.kind == aiomb.CONN_END:
                flows.pop((ev.flow_id, aiomb.Side.CLIENT), None)
                flows.pop((ev.flow_id, aiomb.Side.SERVER), None)
                continue
            if ev.value is None:
                continue
            chunks += 1
            direction = "to_server" if ev.side == aiomb.Side.CLIENT else "to_client"
            state = flows.get((ev.flow_id, ev.side))
            if state is None:
                key = ev.key
                client, server = (key.client_ip, key.client_port), (key.server_ip, key.server_port)
                sender, receiver = (client, server) if direction == "to_server" else (server, client)
                applies = [r for r, rule in enumerate(RULES) if rule.direction in (None, direction)
                           and header_matches(rule, sender, receiver)]
                state = flows[(ev.flow_id, ev.side)] = Direction(ev.offset, applies)
            if not state.rules:
                continue
            for start, end, r, p in MATCHER.scan(state, ev.offset, ev.value):
                if r not in state.rules:
                    continue
                rule = RULES[r]
                seen = state.seen.setdefault(r, set())
                seen.add(p)
                if len(seen) == len(rule.contents) + len(rule.pcres):
                    matches += 1
                    report(ev, direction, start, end, rule)
    print(f"matcher: {matches} matches, {len(RULES)} rules, {chunks} stream chunks", file=sys.stderr)


if __name__ == "__main__":
    from aiomb.cli import main

    sys.exit(main(["run", __file__, *sys.argv[1:]]))
