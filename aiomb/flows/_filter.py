"""Flow filters: a tcpdump-style expression language evaluated once per new flow.

Layer: flows (stdlib and the shared exceptions only). An expression is parsed once, by a small recursive-descent parser,
into nested closures; :meth:`FlowFilter.matches` then only calls them. The filter sees a flow,
not a packet: ``src`` is the client (the initiator) and ``dst`` the server. Grammar, with
keywords case-insensitive::

    expr      := and_expr (("or" | "||") (and_expr | inherited))*
    and_expr  := unary (("and" | "&&") (unary | inherited))*
    unary     := ("not" | "!") unary | "(" expr ")" | primitive
    primitive := "tcp" | "udp" | "ip" | "ip6" | "vlan" [VLAN_ID]
               | ["tcp" | "udp"] [dir] ("port" PORT | "portrange" PORT "-" PORT)
               | ["ip" | "ip6"] [dir] ("host" ADDR | "net" NET ["mask" NETMASK])
               | ["ip" | "ip6"] "proto" (0..255 | "tcp" | "udp" | "\\tcp" | "\\udp")
    dir       := "src" | "dst" | "src or dst" | "src and dst"     (either order; "||", "&&" too)
    PORT      := 0..65535 | ftp | ssh | telnet | smtp | dns | domain | http | ntp | https
    NET       := ADDR "/" PREFIX | ADDR | 1 to 3 dotted IPv4 numbers ("10", "192.168")

``inherited`` is a bare value right after ``and``/``or``: like tcpdump, it reuses the
qualifiers of the previous primitive that took a value (host, net, port, portrange, proto,
vlan N), so ``tcp dst port 80 or 443`` means ``tcp dst port 80 or tcp dst port 443`` and
``not port 22 and 80`` means ``(not port 22) and port 80``; after a valueless primitive
(``tcp``, bare ``vlan``) a bare value is an error. As in tcpdump, port primitives match TCP, UDP and SCTP flows
only, and a bare partial IPv4 ``net`` (``net 10``, ``net 192.168``) has a prefix of eight bits
per number given.
"""

import contextlib
import difflib
import ipaddress
import operator
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from .._errors import AiombError

__all__ = ["FilterError", "FlowFilter", "check_vlan_key", "compile_filter"]

Predicate = Callable[[Any], bool]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_TCP, _UDP, _SCTP = 6, 17, 132
_PROTOCOL_NAMES = {"tcp": _TCP, "udp": _UDP}
_PROTOCOL_WORDS = frozenset(_PROTOCOL_NAMES)
_SERVICES = {
    "ftp": 21,
    "ssh": 22,
    "telnet": 23,
    "smtp": 25,
    "dns": 53,
    "domain": 53,
    "http": 80,
    "ntp": 123,
    "https": 443,
}
_MAX_PORT = 65535
_MAX_PROTOCOL = 255
_MAX_VLAN = 4095
_MAX_DEPTH = 50
"""How deeply parentheses and ``not`` may nest; keeps parsing and evaluation off the recursion limit."""

_AND = frozenset({"and", "&&"})
_OR = frozenset({"or", "||"})
_NOT = frozenset({"not", "!"})
_DIRECTIONS = frozenset({"src", "dst"})
_MASK = frozenset({"mask"})
_EITHER, _BOTH = "either", "both"
_KIND_ORDER = ("host", "net", "port", "portrange", "proto")
_QUALIFIED_KINDS = {
    None: frozenset(_KIND_ORDER),
    "tcp": frozenset({"port", "portrange"}),
    "udp": frozenset({"port", "portrange"}),
    "ip": frozenset({"host", "net", "proto"}),
    "ip6": frozenset({"host", "net", "proto"}),
}
_QUALIFIABLE = _DIRECTIONS | _QUALIFIED_KINDS[None]
_PRIMITIVE_WORDS = (
    "host", "net", "port", "portrange", "src", "dst", "tcp", "udp", "ip", "ip6", "vlan", "proto", "not",
)
_RESERVED = _AND | _OR | _NOT | frozenset(_PRIMITIVE_WORDS) | {"mask", "(", ")"}
_PRIMITIVE_HINT = "a primitive starts with one of: " + ", ".join(_PRIMITIVE_WORDS) + ", '('"
_TOKEN_RE = re.compile(r"&&|\|\||[()!]|[^\s()!&|]+|[&|]")

_PROTOCOL_PREDICATES: dict[str, Predicate] = {
    "tcp": lambda key: key.proto == _TCP,
    "udp": lambda key: key.proto == _UDP,
    "ip": lambda key: key.client_ip.version == 4,
    "ip6": lambda key: key.client_ip.version == 6,
}


class FilterError(AiombError, ValueError):
    """A filter expression does not parse.

    The message says what is wrong and at which 0-based ``position`` (with a caret under the
    quoted ``expression``), then how to fix it; ``problem`` and ``hint`` hold those two parts.
    """

    def __init__(self, problem: str, expression: str, position: int, hint: str):
        self.problem = problem
        self.expression = expression
        self.position = position
        self.hint = hint
        super().__init__(_format_error(problem, expression, position, hint))

    def __reduce__(self):
        return type(self), (self.problem, self.expression, self.position, self.hint)


def _format_error(problem: str, expression: str, position: int, hint: str) -> str:
    """Lay out an error: the problem, the expression, a caret under ``position``, the hint."""
    shown = "".join(" " if char.isspace() else char for char in expression)
    return f"{problem} at position {position}\n    {shown}\n    {' ' * position}^\n{hint}"


class _Token(NamedTuple):
    """One token of an expression and its 0-based character offset."""

    text: str
    position: int

    @property
    def keyword(self) -> str:
        """The text folded to lower case, for keyword comparisons."""
        return self.text.lower()


class _Qualifiers(NamedTuple):
    """What a valued primitive tests; a bare value after ``and``/``or`` reuses the last one."""

    protocol: str | None
    direction: str
    kind: str


def _is_value(token: _Token) -> bool:
    """Whether ``token`` is a value (address, number, name) rather than a keyword or punctuation."""
    return token.keyword not in _RESERVED


def _parses_as_network(text: str) -> bool:
    """Whether ``text`` reads as an IP address or network (host bits allowed)."""
    try:
        ipaddress.ip_network(text)
    except ValueError:
        return False
    return True


def _or_list(words: list[str]) -> str:
    """Quote and join words as "'a', 'b' or 'c'"."""
    quoted = [repr(word) for word in words]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _always(key: Any) -> bool:
    """Match every flow (the empty expression)."""
    return True


def _carries_ports(key: Any) -> bool:
    """Whether the flow's protocol has ports (TCP, UDP, SCTP), as tcpdump's ``port`` requires."""
    return key.proto in (_TCP, _UDP, _SCTP)


def _has_vlan(key: Any) -> bool:
    """Whether the flow carries any VLAN tag."""
    return bool(key.vlan)


def _negate(predicate: Predicate) -> Predicate:
    """The complement of ``predicate``."""
    return lambda key: not predicate(key)


def _all_of(predicates: list[Predicate]) -> Predicate:
    """A predicate that holds when every one of ``predicates`` does."""
    if len(predicates) == 1:
        return predicates[0]
    terms = tuple(predicates)
    return lambda key: all(term(key) for term in terms)


def _any_of(predicates: list[Predicate]) -> Predicate:
    """A predicate that holds when at least one of ``predicates`` does."""
    if len(predicates) == 1:
        return predicates[0]
    terms = tuple(predicates)
    return lambda key: any(term(key) for term in terms)


def _directed(direction: str, field: str, test: Callable[[Any], bool]) -> Predicate:
    """Apply ``test`` to the client's, the server's, either or both ends' ``field`` ("ip" or "port")."""
    client = operator.attrgetter(f"client_{field}")
    server = operator.attrgetter(f"server_{field}")
    if direction == "src":
        return lambda key: test(client(key))
    if direction == "dst":
        return lambda key: test(server(key))
    if direction == _BOTH:
        return lambda key: test(client(key)) and test(server(key))
    return lambda key: test(client(key)) or test(server(key))


def _expand_partial_ipv4(text: str) -> tuple[str, int | None]:
    """Pad a partial dotted IPv4 number ("10", "192.168") with zeros; also return its implied prefix."""
    parts = text.split(".")
    if len(parts) < 4 and all(part.isascii() and part.isdigit() for part in parts):
        return ".".join(parts + ["0"] * (4 - len(parts))), 8 * len(parts)
    return text, None


def _prefix_of_mask(mask: ipaddress.IPv4Address) -> int | None:
    """The prefix length of a contiguous netmask such as 255.255.0.0, or None if it has holes."""
    host_bits = ~int(mask) & 0xFFFFFFFF
    if host_bits & (host_bits + 1):
        return None
    return 32 - host_bits.bit_length()


class _Parser:
    """Recursive-descent parser from an expression to a predicate; one instance per expression."""

    def __init__(self, expression: str):
        self._expression = expression
        self._tokens = self._tokenize(expression)
        self._index = 0
        self._depth = 0
        self._inherit: _Qualifiers | None = None
        self.vlan_position: int | None = None     # where the expression first tests VLAN tags

    def parse(self) -> Predicate:
        """Parse the whole expression; an empty one matches every flow."""
        if not self._tokens:
            return _always
        predicate = self._parse_or()
        token = self._peek()
        if token is None:
            return predicate
        if token.text == ")":
            raise self._error("unbalanced ')'", token.position, "remove it or add the matching '('")
        close = difflib.get_close_matches(token.keyword, ("and", "or"), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "join primitives with 'and' or 'or'"
        raise self._error(f"unexpected {token.text!r} after a complete expression", token.position, hint)

    # -- tokens ------------------------------------------------------------------------------

    def _tokenize(self, expression: str) -> list[_Token]:
        """Split ``expression`` into words, parentheses, ``!``, ``&&`` and ``||``."""
        tokens = []
        for match in _TOKEN_RE.finditer(expression):
            text = match.group()
            if text in ("&", "|"):
                word = "and" if text == "&" else "or"
                raise self._error(f"unexpected {text!r}", match.start(), f"use {text * 2!r} or {word!r}")
            tokens.append(_Token(text, match.start()))
        return tokens

    def _peek(self, offset: int = 0) -> _Token | None:
        """The token ``offset`` places ahead, or None past the end."""
        index = self._index + offset
        return self._tokens[index] if index < len(self._tokens) else None

    def _accept(self, words: frozenset) -> _Token | None:
        """Consume and return the next token if its keyword is in ``words``."""
        token = self._peek()
        if token is None or token.keyword not in words:
            return None
        self._index += 1
        return token

    def _take_value(
        self, after: str, expected: str, hint: str, names: frozenset = frozenset()
    ) -> _Token:
        """Consume the value that must follow keyword ``after``; keywords in ``names`` count too."""
        token = self._peek()
        if token is None or not (_is_value(token) or token.keyword in names):
            raise self._expected(expected, after, token, hint)
        self._index += 1
        return token

    # -- errors ------------------------------------------------------------------------------

    def _error(self, problem: str, position: int, hint: str) -> FilterError:
        """A FilterError about this parser's expression."""
        return FilterError(problem, self._expression, position, hint)

    def _expected(self, expected: str, after: str, token: _Token | None, hint: str) -> FilterError:
        """A FilterError for a missing or wrong token after keyword ``after``."""
        if token is None:
            return self._error(f"expected {expected} after {after!r}", len(self._expression), hint)
        problem = f"expected {expected} after {after!r}, found {token.text!r}"
        return self._error(problem, token.position, hint)

    def _primitive_error(self, token: _Token | None) -> FilterError:
        """A FilterError for a token (or the end) where a primitive should start."""
        if token is None:
            previous = self._tokens[self._index - 1].text
            hint = f"end with a primitive such as 'tcp' or 'port 80', or remove {previous!r}"
            return self._error(f"expected a primitive after {previous!r}", len(self._expression), hint)
        text = token.text
        if not _is_value(token):
            problem, hint = f"expected a primitive, found {text!r}", _PRIMITIVE_HINT
        elif text.isascii() and text.isdigit():
            problem, hint = f"value {text!r} has no qualifier", f"write e.g. 'port {text}'"
        elif _parses_as_network(text):
            kind = "net" if "/" in text else "host"
            problem, hint = f"address {text!r} has no qualifier", f"write e.g. '{kind} {text}'"
        else:
            close = difflib.get_close_matches(token.keyword, _PRIMITIVE_WORDS, n=1)
            problem = f"unknown keyword {text!r}"
            hint = f"did you mean {close[0]!r}?" if close else _PRIMITIVE_HINT
        return self._error(problem, token.position, hint)

    def _qualifier_error(
        self,
        protocol: _Token | None,
        direction: str | None,
        kind: _Token | None,
        allowed: frozenset,
    ) -> FilterError:
        """A FilterError for a qualifier that cannot precede ``kind``, or for a missing kind."""
        found = kind.keyword if kind is not None else None
        if found in _QUALIFIED_KINDS[None]:
            if found == "proto" and direction is not None:
                hint = "'proto' has no direction; remove the direction"
                return self._error(f"{direction!r} cannot qualify 'proto'", kind.position, hint)
            hint = f"combine them with 'and', e.g. '{protocol.keyword} and {found} ...'"
            return self._error(f"{protocol.text!r} cannot qualify {found!r}", kind.position, hint)
        kinds = [word for word in _KIND_ORDER if word in allowed]
        hint = f"write e.g. '{direction} {kinds[0]} ...'"
        return self._expected(_or_list(kinds), direction, kind, hint)

    def _check_family(self, protocol: str | None, version: int, what: str, token: _Token) -> None:
        """Reject ``ip`` before an IPv6 value and ``ip6`` before an IPv4 one."""
        wanted = {"ip": 4, "ip6": 6}.get(protocol, version)
        if version != wanted:
            right = "ip6" if version == 6 else "ip"
            problem = f"'{protocol}' does not match IPv{version} {what} {token.text!r}"
            hint = f"use '{right}' instead of '{protocol}', or drop '{protocol}'"
            raise self._error(problem, token.position, hint)

    # -- boolean structure -------------------------------------------------------------------

    def _parse_or(self) -> Predicate:
        """expr := and_expr (or (and_expr | inherited))*"""
        terms = [self._parse_and(after_operator=False)]
        while self._accept(_OR):
            terms.append(self._parse_and(after_operator=True))
        return _any_of(terms)

    def _parse_and(self, after_operator: bool) -> Predicate:
        """and_expr := unary (and (unary | inherited))*"""
        terms = [self._parse_term(after_operator)]
        while self._accept(_AND):
            terms.append(self._parse_term(after_operator=True))
        return _all_of(terms)

    def _parse_term(self, after_operator: bool) -> Predicate:
        """A unary term, or right after an operator a bare value that inherits the last qualifiers."""
        token = self._peek()
        if after_operator and self._inherit is not None and token is not None and _is_value(token):
            return self._parse_id(self._inherit)
        return self._parse_unary()

    def _parse_unary(self) -> Predicate:
        """unary := not unary | "(" expr ")" | primitive"""
        token = self._peek()
        if token is not None and token.keyword in _NOT:
            self._index += 1
            with self._nested(token):
                return _negate(self._parse_unary())
        if token is not None and token.text == "(":
            return self._parse_group(token)
        return self._parse_primitive()

    def _parse_group(self, opening: _Token) -> Predicate:
        """A parenthesised expression; ``opening`` is its "(" token, not yet consumed."""
        self._index += 1
        token = self._peek()
        if token is not None and token.text == ")":
            hint = "put an expression inside '( )' or remove them"
            raise self._error("empty parentheses", opening.position, hint)
        with self._nested(opening):
            predicate = self._parse_or()
        token = self._peek()
        if token is None:
            problem = "unbalanced '(' has no matching ')'"
            raise self._error(problem, opening.position, "add the missing ')'")
        if token.text != ")":
            hint = f"join primitives with 'and' or 'or', or close the '(' at position {opening.position}"
            raise self._error(f"expected ')' or an operator, found {token.text!r}", token.position, hint)
        self._index += 1
        return predicate

    @contextlib.contextmanager
    def _nested(self, token: _Token) -> Iterator[None]:
        """Count one level of nesting (parenthesis or ``not``) while parsing inside it."""
        self._depth += 1
        try:
            if self._depth > _MAX_DEPTH:
                problem = f"expression nests deeper than {_MAX_DEPTH} levels"
                hint = "remove redundant parentheses or 'not's, or split the filter"
                raise self._error(problem, token.position, hint)
            yield
        finally:
            self._depth -= 1

    # -- primitives --------------------------------------------------------------------------

    def _parse_primitive(self) -> Predicate:
        """A primitive, possibly qualified: ``tcp``, ``vlan 10``, ``src net 10/8``, ``ip proto 6``..."""
        token = self._peek()
        word = token.keyword if token is not None else None
        if word in _PROTOCOL_PREDICATES:
            return self._parse_protocol_word(token)
        if word == "vlan":
            return self._parse_vlan()
        if word in _QUALIFIABLE:
            return self._parse_qualified(None)
        raise self._primitive_error(token)

    def _parse_protocol_word(self, token: _Token) -> Predicate:
        """``tcp``/``udp``/``ip``/``ip6`` alone, or qualifying the primitive after it."""
        self._index += 1
        following = self._peek()
        if following is not None and following.keyword in _QUALIFIABLE:
            return self._parse_qualified(token)
        self._inherit = None
        return _PROTOCOL_PREDICATES[token.keyword]

    def _parse_vlan(self) -> Predicate:
        """``vlan`` (any tag) or ``vlan N`` (some tag equals N)."""
        if self.vlan_position is None:
            self.vlan_position = self._tokens[self._index].position
        self._index += 1
        token = self._peek()
        if token is None or not _is_value(token):
            self._inherit = None
            return _has_vlan
        self._inherit = _Qualifiers(None, _EITHER, "vlan")
        return self._parse_id(self._inherit)

    def _parse_qualified(self, protocol: _Token | None) -> Predicate:
        """[dir] kind value, after an optional protocol word (already consumed)."""
        protocol_word = protocol.keyword if protocol is not None else None
        direction, written = self._parse_direction()
        allowed = _QUALIFIED_KINDS[protocol_word]
        if written is not None:
            allowed = allowed - {"proto"}
        kind = self._peek()
        if kind is None or kind.keyword not in allowed:
            raise self._qualifier_error(protocol, written, kind, allowed)
        self._index += 1
        self._inherit = _Qualifiers(protocol_word, direction, kind.keyword)
        return self._parse_id(self._inherit)

    def _parse_direction(self) -> tuple[str, str | None]:
        """dir := src | dst | src or dst | src and dst (either order); none means either end.

        Returns the direction ("src", "dst", "either" or "both") and the words as written, or
        None for the words when there was no direction.
        """
        first = self._accept(_DIRECTIONS)
        if first is None:
            return _EITHER, None
        joiner, second = self._peek(), self._peek(1)
        if (
            joiner is not None
            and second is not None
            and joiner.keyword in _AND | _OR
            and second.keyword in _DIRECTIONS - {first.keyword}
        ):
            self._index += 2
            written = f"{first.keyword} {joiner.keyword} {second.keyword}"
            return (_BOTH if joiner.keyword in _AND else _EITHER), written
        return first.keyword, first.keyword

    def _parse_id(self, qualifiers: _Qualifiers) -> Predicate:
        """The value of a valued primitive and the predicate it makes, per ``qualifiers.kind``."""
        parse = {
            "host": self._parse_host,
            "net": self._parse_net,
            "port": self._parse_port,
            "portrange": self._parse_portrange,
            "proto": self._parse_proto,
            "vlan": self._parse_vlan_id,
        }[qualifiers.kind]
        return parse(qualifiers)

    def _parse_host(self, qualifiers: _Qualifiers) -> Predicate:
        """``host ADDR``: an end's address equals ADDR."""
        hint = "write e.g. 'host 10.0.0.1' or 'host 2001:db8::1'"
        token = self._take_value("host", "an IPv4 or IPv6 address", hint)
        try:
            address = ipaddress.ip_address(token.text)
        except ValueError:
            if _parses_as_network(token.text):
                problem, hint = "'host' takes one address, not a network", f"write 'net {token.text}'"
            else:
                problem = f"bad address {token.text!r}"
                hint = "write an address like 10.0.0.1 or 2001:db8::1 (host names are not resolved)"
            raise self._error(problem, token.position, hint) from None
        self._check_family(qualifiers.protocol, address.version, "address", token)
        return _directed(qualifiers.direction, "ip", lambda value: value == address)

    def _parse_net(self, qualifiers: _Qualifiers) -> Predicate:
        """``net CIDR``, ``net PARTIAL`` or ``net ADDR mask MASK``: an end's address is in it."""
        hint = "write e.g. 'net 10.0.0.0/8', 'net 192.168' or 'net 2001:db8::/32'"
        token = self._take_value("net", "a network", hint)
        mask_keyword = self._accept(_MASK)
        if mask_keyword is None:
            network = self._cidr_network(token)
        else:
            network = self._masked_network(token, mask_keyword)
        self._check_family(qualifiers.protocol, network.version, "network", token)
        return _directed(qualifiers.direction, "ip", lambda value: value in network)

    def _cidr_network(self, token: _Token) -> Network:
        """The network written as ADDR/PREFIX, a partial IPv4 number, or a lone address (full prefix)."""
        address, slash, prefix = token.text.partition("/")
        address, implied_prefix = _expand_partial_ipv4(address)
        if slash and not (prefix.isascii() and prefix.isdigit()):
            hint = "write the prefix as a number of bits, e.g. 10.0.0.0/8"
            raise self._error(f"bad prefix length in network {token.text!r}", token.position, hint)
        if not slash and implied_prefix is not None:
            prefix, slash = str(implied_prefix), "/"
        return self._strict_network(f"{address}{slash}{prefix}", token.text, token)

    def _masked_network(self, token: _Token, mask_keyword: _Token) -> ipaddress.IPv4Network:
        """The IPv4 network written as ``ADDR mask MASK``; ``mask`` is already consumed."""
        if "/" in token.text:
            problem = "'mask' cannot follow a network with a /prefix"
            hint = f"write either '{token.text}' or the address and 'mask', not both"
            raise self._error(problem, mask_keyword.position, hint)
        address_text, _ = _expand_partial_ipv4(token.text)
        try:
            address = ipaddress.ip_address(address_text)
        except ValueError:
            hint = "write an IPv4 network address like 10.0.0.0 before 'mask'"
            raise self._error(f"bad network {token.text!r}", token.position, hint) from None
        if address.version != 4:
            hint = f"write the IPv6 network with a prefix length instead, e.g. '{address}/32'"
            raise self._error("'mask' only applies to IPv4 networks", mask_keyword.position, hint)
        mask_token = self._take_value("mask", "an IPv4 netmask", "write e.g. 'mask 255.255.0.0'")
        try:
            mask = ipaddress.IPv4Address(mask_token.text)
        except ValueError:
            hint = "write an IPv4 netmask like 255.255.0.0"
            raise self._error(f"bad netmask {mask_token.text!r}", mask_token.position, hint) from None
        prefix = _prefix_of_mask(mask)
        if prefix is None:
            problem = f"netmask {mask_token.text!r} is not contiguous"
            hint = "use leading one bits only, e.g. 255.255.0.0 (non-contiguous masks are not supported)"
            raise self._error(problem, mask_token.position, hint)
        written = f"{token.text} mask {mask_token.text}"
        return self._strict_network(f"{address}/{prefix}", written, token, masked=True)

    def _strict_network(self, spec: str, written: str, token: _Token, masked: bool = False) -> Network:
        """The network ``spec`` ("ADDR" or "ADDR/PREFIX"), rejecting host bits as tcpdump does."""
        try:
            interface = ipaddress.ip_interface(spec)
        except ValueError:
            hint = "write a network like 10.0.0.0/8, 192.168 or 2001:db8::/32"
            raise self._error(f"bad network {written!r}", token.position, hint) from None
        network = interface.network
        if interface.ip != network.network_address:
            fixed = f"{network.network_address} mask {network.netmask}" if masked else str(network)
            raise self._error(f"network {written!r} has host bits set", token.position, f"use {fixed}")
        return network

    def _parse_port(self, qualifiers: _Qualifiers) -> Predicate:
        """``port N``: an end's port equals N (TCP, UDP or SCTP flows only, unless qualified)."""
        hint = "write e.g. 'port 80' or 'port http'"
        token = self._take_value("port", "a port number or service name", hint)
        number = self._port_number(token.text, token.position)
        return self._port_predicate(qualifiers, lambda port: port == number)

    def _parse_portrange(self, qualifiers: _Qualifiers) -> Predicate:
        """``portrange A-B``: an end's port is in A..B inclusive."""
        hint = "write it as LOW-HIGH, e.g. 'portrange 1000-2000'"
        token = self._take_value("portrange", "a port range", hint)
        low_text, _, high_text = token.text.partition("-")
        if token.text.count("-") != 1 or not low_text or not high_text:
            raise self._error(f"bad port range {token.text!r}", token.position, hint)
        low = self._port_number(low_text, token.position)
        high = self._port_number(high_text, token.position + len(low_text) + 1)
        if low > high:
            hint = f"put the lower port first: '{high}-{low}'"
            raise self._error(f"port range {token.text!r} is reversed", token.position, hint)
        return self._port_predicate(qualifiers, lambda port: low <= port <= high)

    def _port_number(self, text: str, position: int) -> int:
        """A port given as a number (0..65535) or one of the known service names."""
        if text.isascii() and text.removeprefix("-").isdigit():
            number = int(text)
            if not 0 <= number <= _MAX_PORT:
                hint = f"use a port from 0 to {_MAX_PORT}"
                raise self._error(f"port {text} is out of range", position, hint)
            return number
        try:
            return _SERVICES[text.lower()]
        except KeyError:
            hint = f"use a port number or one of: {', '.join(sorted(_SERVICES))}"
            raise self._error(f"unknown service name {text!r}", position, hint) from None

    @staticmethod
    def _port_predicate(qualifiers: _Qualifiers, test: Callable[[int], bool]) -> Predicate:
        """Guard a directed port test with the protocol: the qualifier's, else any with ports."""
        guard = _PROTOCOL_PREDICATES[qualifiers.protocol] if qualifiers.protocol else _carries_ports
        return _all_of([guard, _directed(qualifiers.direction, "port", test)])

    def _parse_proto(self, qualifiers: _Qualifiers) -> Predicate:
        """``proto N``: the flow's IP protocol number is N (0..255, or ``tcp``/``udp``)."""
        hint = "write e.g. 'proto 6', 'proto tcp' or 'proto udp'"
        token = self._take_value("proto", "a protocol number or name", hint, names=_PROTOCOL_WORDS)
        text = token.keyword.removeprefix("\\")
        if text.isascii() and text.isdigit():
            number = int(text)
            if number > _MAX_PROTOCOL:
                hint = f"use a protocol number from 0 to {_MAX_PROTOCOL}"
                raise self._error(f"protocol {token.text} is out of range", token.position, hint)
        elif text in _PROTOCOL_NAMES:
            number = _PROTOCOL_NAMES[text]
        else:
            raise self._error(f"unknown protocol {token.text!r}", token.position, hint)
        terms = [_PROTOCOL_PREDICATES[qualifiers.protocol]] if qualifiers.protocol else []
        return _all_of(terms + [lambda key: key.proto == number])

    def _parse_vlan_id(self, qualifiers: _Qualifiers) -> Predicate:
        """``vlan N``: some tag in the flow's VLAN tuple equals N (0..4095)."""
        token = self._take_value("vlan", "a VLAN ID", "write e.g. 'vlan 10'")
        if not (token.text.isascii() and token.text.isdigit()) or int(token.text) > _MAX_VLAN:
            hint = f"use a VLAN ID from 0 to {_MAX_VLAN}"
            raise self._error(f"bad VLAN ID {token.text!r}", token.position, hint)
        vlan_id = int(token.text)
        return lambda key: vlan_id in key.vlan


class FlowFilter:
    """A compiled flow filter expression; :meth:`matches` tests one flow key against it.

    Layer: flows. Parsing happens once, here; raises :class:`FilterError` if ``expression``
    does not parse and TypeError if it is not a str. The empty expression matches every flow.
    """

    __slots__ = ("_expression", "_predicate", "_vlan_position")

    def __init__(self, expression: str):
        if not isinstance(expression, str):
            raise TypeError(f"filter expression must be a str, not {type(expression).__name__}")
        self._expression = expression
        parser = _Parser(expression)
        self._predicate = parser.parse()
        self._vlan_position = parser.vlan_position

    @property
    def expression(self) -> str:
        """The expression as written."""
        return self._expression

    @property
    def vlan_position(self) -> int | None:
        """Where the expression first tests VLAN tags (``vlan``, ``vlan N``), or None."""
        return self._vlan_position

    def matches(self, key: Any) -> bool:
        """Whether the flow ``key`` passes the filter; never blocks, never raises for a valid key.

        ``key`` has ``proto``, ``client_ip``, ``client_port``, ``server_ip``, ``server_port``
        (ipaddress objects and ints) and ``vlan`` (a tuple of IDs, outermost first).
        """
        return self._predicate(key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FlowFilter):
            return NotImplemented
        return self._expression == other._expression

    def __hash__(self) -> int:
        return hash(self._expression)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._expression!r})"


def compile_filter(expression: str | FlowFilter | None) -> FlowFilter | None:
    """Compile ``expression``, or return None when it is None or blank (match every flow).

    A FlowFilter is returned as is. Raises :class:`FilterError` or TypeError like FlowFilter.
    """
    if expression is None or isinstance(expression, FlowFilter):
        return expression
    if isinstance(expression, str) and not expression.strip():
        return None
    return FlowFilter(expression)


def check_vlan_key(flow_filter: Any, vlan_in_key: bool) -> None:
    """Raise :class:`FilterError` when ``flow_filter`` tests VLAN tags and flow keys hold none.

    Without ``vlan_in_key`` one flow gathers its packets from every VLAN they came in on, so its
    key has no VLAN ID: ``vlan 20`` would match no flow and ``not vlan`` every flow, silently.
    Filters without ``vlan_position`` (any object with ``matches(key)``) pass. Layer: flows.
    """
    position = getattr(flow_filter, "vlan_position", None)
    if position is not None and not vlan_in_key:
        raise FilterError("a filter on VLAN IDs needs VLAN tags in the flow key", flow_filter.expression, position,
                          "without them a flow gathers the packets of every VLAN and has no VLAN ID to test: "
                          "add --vlan (vlan_in_key=True), or leave the vlan primitive out")
