"""Flow filter expressions: every primitive, qualifier and operator, and every error message."""

import ipaddress
import pickle
import random
from types import SimpleNamespace

import pytest

from aiomb.flows._filter import FilterError, FlowFilter, compile_filter


def flow(proto=6, client="10.0.0.1", client_port=40000, server="192.168.1.2", server_port=80, vlan=()):
    """A flow key with the attributes a filter reads."""
    return SimpleNamespace(
        proto=proto,
        client_ip=ipaddress.ip_address(client),
        client_port=client_port,
        server_ip=ipaddress.ip_address(server),
        server_port=server_port,
        vlan=tuple(vlan),
    )


WEB = flow()
DNS = flow(proto=17, client="10.1.2.3", client_port=53000, server="8.8.8.8", server_port=53)
SSH = flow(client="172.16.5.5", client_port=22, server="172.16.5.6", server_port=22, vlan=(7,))
LOOP = flow(client="127.0.0.1", client_port=40001, server="127.0.0.1", server_port=8080)
V6 = flow(
    client="2001:db8::1", client_port=50000, server="2001:db8:1::2", server_port=443, vlan=(100, 200)
)
ICMP = flow(proto=1, client="10.0.0.1", client_port=0, server="10.0.0.2", server_port=0)
SCTP = flow(proto=132, client="10.0.0.1", client_port=3000, server="10.0.0.2", server_port=80)
KEYS = {"WEB": WEB, "DNS": DNS, "SSH": SSH, "LOOP": LOOP, "V6": V6, "ICMP": ICMP, "SCTP": SCTP}


def matching(expression):
    """The names of the keys in KEYS that ``expression`` matches."""
    compiled = FlowFilter(expression)
    return {name for name, key in KEYS.items() if compiled.matches(key)}


def error_of(expression):
    """The FilterError that compiling ``expression`` raises."""
    with pytest.raises(FilterError) as info:
        FlowFilter(expression)
    return info.value


ALL = set(KEYS)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("tcp", {"WEB", "SSH", "LOOP", "V6"}),
        ("udp", {"DNS"}),
        ("ip", ALL - {"V6"}),
        ("ip6", {"V6"}),
        ("vlan", {"SSH", "V6"}),
        ("TCP", {"WEB", "SSH", "LOOP", "V6"}),
        ("Ip6", {"V6"}),
    ],
)
def test_protocol_words(expression, expected):
    assert matching(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("host 10.0.0.1", {"WEB", "ICMP", "SCTP"}),
        ("src host 10.0.0.1", {"WEB", "ICMP", "SCTP"}),
        ("dst host 10.0.0.1", set()),
        ("host 192.168.1.2", {"WEB"}),
        ("src host 192.168.1.2", set()),
        ("dst host 192.168.1.2", {"WEB"}),
        ("src or dst host 8.8.8.8", {"DNS"}),
        ("dst or src host 10.1.2.3", {"DNS"}),
        ("src || dst host 8.8.8.8", {"DNS"}),
        ("src and dst host 127.0.0.1", {"LOOP"}),
        ("dst && src host 127.0.0.1", {"LOOP"}),
        ("src and dst host 10.0.0.1", set()),
        ("ip host 10.0.0.1", {"WEB", "ICMP", "SCTP"}),
        ("ip src host 10.1.2.3", {"DNS"}),
        ("host 2001:db8::1", {"V6"}),
        ("src host 2001:db8::1", {"V6"}),
        ("dst host 2001:db8::1", set()),
        ("ip6 dst host 2001:db8:1::2", {"V6"}),
        ("host 2001:DB8:0:0:0:0:0:1", {"V6"}),
        ("host ::1", set()),
    ],
)
def test_host(expression, expected):
    assert matching(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("net 10.0.0.0/8", {"WEB", "DNS", "ICMP", "SCTP"}),
        ("net 10.0.0.0/24", {"WEB", "ICMP", "SCTP"}),
        ("src net 10.0.0.0/8", {"WEB", "DNS", "ICMP", "SCTP"}),
        ("dst net 10.0.0.0/8", {"ICMP", "SCTP"}),
        ("dst net 192.168.0.0/16", {"WEB"}),
        ("src and dst net 172.16.0.0/12", {"SSH"}),
        ("src and dst net 10.0.0.0/8", {"ICMP", "SCTP"}),
        ("net 10", {"WEB", "DNS", "ICMP", "SCTP"}),
        ("net 10.1", {"DNS"}),
        ("net 192.168", {"WEB"}),
        ("net 192.168.1", {"WEB"}),
        ("net 10/8", {"WEB", "DNS", "ICMP", "SCTP"}),
        ("net 10.0.0.1", {"WEB", "ICMP", "SCTP"}),
        ("net 10.0.0.0 mask 255.0.0.0", {"WEB", "DNS", "ICMP", "SCTP"}),
        ("net 10.1.0.0 mask 255.255.0.0", {"DNS"}),
        ("net 10 mask 255.0.0.0", {"WEB", "DNS", "ICMP", "SCTP"}),
        ("net 172.16.0.0 MASK 255.240.0.0", {"SSH"}),
        ("net 0.0.0.0/0", ALL - {"V6"}),
        ("net 0.0.0.0 mask 0.0.0.0", ALL - {"V6"}),
        ("ip net 127.0.0.0/8", {"LOOP"}),
        ("net 2001:db8::/32", {"V6"}),
        ("net 2001:db8:1::/48", {"V6"}),
        ("src net 2001:db8:1::/48", set()),
        ("dst net 2001:db8:1::/48", {"V6"}),
        ("ip6 net ::/0", {"V6"}),
        ("net 2001:db8::1", {"V6"}),
    ],
)
def test_net(expression, expected):
    assert matching(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("port 80", {"WEB", "SCTP"}),
        ("port 0", set()),
        ("port 22", {"SSH"}),
        ("src port 80", set()),
        ("dst port 80", {"WEB", "SCTP"}),
        ("src port 53000", {"DNS"}),
        ("src or dst port 40000", {"WEB"}),
        ("src and dst port 22", {"SSH"}),
        ("src and dst port 80", set()),
        ("tcp port 80", {"WEB"}),
        ("udp port 80", set()),
        ("udp dst port 53", {"DNS"}),
        ("udp src port 53", set()),
        ("tcp src or dst port 443", {"V6"}),
        ("port http", {"WEB", "SCTP"}),
        ("port HTTPS", {"V6"}),
        ("port ssh", {"SSH"}),
        ("port dns", {"DNS"}),
        ("port domain", {"DNS"}),
        ("port 65535", set()),
    ],
)
def test_port(expression, expected):
    assert matching(expression) == expected


@pytest.mark.parametrize(
    ("name", "number"),
    [("http", 80), ("https", 443), ("ssh", 22), ("dns", 53), ("domain", 53), ("ftp", 21), ("smtp", 25),
     ("telnet", 23), ("ntp", 123)],
)
def test_service_names(name, number):
    key = flow(server_port=number)
    assert FlowFilter(f"port {name}").matches(key)
    assert not FlowFilter(f"port {name}").matches(flow(server_port=number + 1))


def test_ports_only_match_protocols_with_ports():
    assert not FlowFilter("port 0").matches(ICMP)
    assert not FlowFilter("portrange 0-10").matches(ICMP)
    assert FlowFilter("not port 0").matches(ICMP)
    assert FlowFilter("port 80").matches(SCTP)
    assert not FlowFilter("tcp port 80").matches(SCTP)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("portrange 70-90", {"WEB", "SCTP"}),
        ("portrange 80-80", {"WEB", "SCTP"}),
        ("portrange 81-442", set()),
        ("portrange 0-65535", ALL - {"ICMP"}),
        ("src portrange 40000-50000", {"WEB", "LOOP", "V6"}),
        ("dst portrange 40000-50000", set()),
        ("src and dst portrange 20-25", {"SSH"}),
        ("tcp portrange 50-60", set()),
        ("udp portrange 50-60", {"DNS"}),
        ("udp dst portrange 50-60", {"DNS"}),
        ("portrange ssh-http", {"WEB", "DNS", "SSH", "SCTP"}),
    ],
)
def test_portrange(expression, expected):
    assert matching(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("proto 6", {"WEB", "SSH", "LOOP", "V6"}),
        ("proto 17", {"DNS"}),
        ("proto 1", {"ICMP"}),
        ("proto 132", {"SCTP"}),
        ("proto tcp", {"WEB", "SSH", "LOOP", "V6"}),
        ("ip proto 6", {"WEB", "SSH", "LOOP"}),
        ("ip proto tcp", {"WEB", "SSH", "LOOP"}),
        ("ip proto udp", {"DNS"}),
        ("ip proto \\udp", {"DNS"}),
        ("ip6 proto 6", {"V6"}),
        ("ip6 proto 17", set()),
        ("IP PROTO TCP", {"WEB", "SSH", "LOOP"}),
    ],
)
def test_proto(expression, expected):
    assert matching(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("vlan", {"SSH", "V6"}),
        ("vlan 7", {"SSH"}),
        ("vlan 100", {"V6"}),
        ("vlan 200", {"V6"}),
        ("vlan 300", set()),
        ("not vlan", ALL - {"SSH", "V6"}),
        ("vlan and tcp", {"SSH", "V6"}),
        ("vlan 7 or 200", {"SSH", "V6"}),
        ("vlan 0", set()),
        ("vlan 4095", set()),
    ],
)
def test_vlan(expression, expected):
    assert matching(expression) == expected


def test_vlan_matches_any_tag_of_a_stack():
    qinq = flow(vlan=(10, 20, 30))
    assert all(FlowFilter(f"vlan {vid}").matches(qinq) for vid in (10, 20, 30))
    assert not FlowFilter("vlan 40").matches(qinq)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("tcp and port 80", {"WEB"}),
        ("tcp && port 80", {"WEB"}),
        ("udp or port 22", {"DNS", "SSH"}),
        ("udp || port 22", {"DNS", "SSH"}),
        ("not tcp", {"DNS", "ICMP", "SCTP"}),
        ("! tcp", {"DNS", "ICMP", "SCTP"}),
        ("!tcp", {"DNS", "ICMP", "SCTP"}),
        ("not not tcp", {"WEB", "SSH", "LOOP", "V6"}),
        ("tcp AND NOT port 80", {"SSH", "LOOP", "V6"}),
        ("tcp&&!ip6||udp", {"WEB", "SSH", "LOOP", "DNS"}),
    ],
)
def test_boolean_operators(expression, expected):
    assert matching(expression) == expected


@pytest.mark.parametrize(
    ("expression", "same_as"),
    [
        # and binds tighter than or
        ("tcp or udp and port 9", "tcp or (udp and port 9)"),
        ("udp and port 9 or tcp", "(udp and port 9) or tcp"),
        # not binds tighter than and and or
        ("not tcp and tcp", "(not tcp) and tcp"),
        ("not udp or udp", "(not udp) or udp"),
        ("not tcp or udp and vlan", "(not tcp) or (udp and vlan)"),
    ],
)
def test_precedence(expression, same_as):
    assert matching(expression) == matching(same_as)


def test_precedence_differs_from_left_to_right():
    assert matching("tcp or udp and port 9") != matching("(tcp or udp) and port 9")
    assert matching("not udp or udp") != matching("not (udp or udp)")
    assert matching("not udp or udp") == ALL


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("(tcp)", {"WEB", "SSH", "LOOP", "V6"}),
        ("((tcp))", {"WEB", "SSH", "LOOP", "V6"}),
        ("not (tcp or udp)", {"ICMP", "SCTP"}),
        ("(tcp or udp) and port 53", {"DNS"}),
        ("(port 80 or port 22) and not proto 132", {"WEB", "SSH"}),
        ("tcp and (host 10.0.0.1 or host 172.16.5.6)", {"WEB", "SSH"}),
        ("(vlan)and(tcp)", {"SSH", "V6"}),
    ],
)
def test_parentheses(expression, expected):
    assert matching(expression) == expected


@pytest.mark.parametrize(
    ("shorthand", "explicit"),
    [
        ("port 80 or 443", "port 80 or port 443"),
        ("port 80 or 443 or 22", "port 80 or port 443 or port 22"),
        ("port http or https", "port 80 or port 443"),
        ("host 10.0.0.1 or 10.1.2.3", "host 10.0.0.1 or host 10.1.2.3"),
        ("src port 80 or 22", "src port 80 or src port 22"),
        ("tcp dst port 80 or 443", "tcp dst port 80 or tcp dst port 443"),
        ("udp port 53 or 80", "udp port 53 or udp port 80"),
        ("src and dst port 22 or 80", "src and dst port 22 or src and dst port 80"),
        ("not port 22 and 80", "(not port 22) and port 80"),
        ("not host 10.0.0.1 and 192.168.1.2", "(not host 10.0.0.1) and host 192.168.1.2"),
        ("net 10.0.0.0/24 or 172.16.0.0/12", "net 10.0.0.0/24 or net 172.16.0.0/12"),
        ("net 10.1 or 192.168", "net 10.1 or net 192.168"),
        ("net 10.1.0.0 mask 255.255.0.0 or 127.0.0.0 mask 255.0.0.0",
         "net 10.1.0.0/16 or net 127.0.0.0/8"),
        ("ip6 host 2001:db8::1 or 2001:db8::9", "ip6 host 2001:db8::1 or ip6 host 2001:db8::9"),
        ("portrange 1-100 and 1000-60000", "portrange 1-100 and portrange 1000-60000"),
        ("ip proto 6 or 17", "ip proto 6 or ip proto 17"),
        ("vlan 7 or 100", "vlan 7 or vlan 100"),
        ("(port 80) or 443", "port 80 or port 443"),
        ("tcp and (port 22 or 443)", "tcp and (port 22 or port 443)"),
        ("port 22 or 80 and tcp", "port 22 or (port 80 and tcp)"),
        ("host 10.0.0.1 and port 80 or 443", "host 10.0.0.1 and port 80 or port 443"),
    ],
)
def test_missing_qualifiers_are_inherited(shorthand, explicit):
    assert matching(shorthand) == matching(explicit)


def test_inheritance_is_not_negation():
    # tcpdump: 'not host a and b' is 'not host a and host b', not 'not (host a or b)'
    assert matching("not port 22 and 80") == {"WEB", "SCTP"}
    assert matching("not port 22 and 80") != matching("not (port 22 or port 80)")


def test_inheritance_examples_match():
    assert matching("port 80 or 443") == {"WEB", "SCTP", "V6"}
    assert matching("tcp dst port 53 or 80") == {"WEB"}
    assert matching("src port 80 or 81") == set()


def test_ipv4_and_ipv6_never_mix():
    assert matching("host 10.0.0.1 or host 2001:db8::1") == {"WEB", "ICMP", "SCTP", "V6"}
    assert not FlowFilter("net ::/0").matches(WEB)
    assert not FlowFilter("net 0.0.0.0/0").matches(V6)
    assert not FlowFilter("host ::ffff:10.0.0.1").matches(WEB)


def test_empty_expression_matches_everything():
    assert matching("") == ALL
    assert matching("  \t ") == ALL


def test_expression_may_span_lines():
    assert matching("tcp\nand\tport 80") == {"WEB"}


def test_nesting_up_to_the_limit():
    assert matching("(" * 50 + "udp" + ")" * 50) == {"DNS"}
    assert matching("not " * 50 + "udp") == {"DNS"}


def test_repr_and_expression():
    compiled = FlowFilter("tcp port 80")
    assert repr(compiled) == "FlowFilter('tcp port 80')"
    assert compiled.expression == "tcp port 80"
    with pytest.raises(AttributeError):
        compiled.expression = "udp"


def test_matches_returns_bool():
    for expression in ("tcp", "vlan", "host 10.0.0.1", "port 80 or 443", "not udp", "vlan 7", ""):
        for key in KEYS.values():
            assert type(FlowFilter(expression).matches(key)) is bool


@pytest.mark.parametrize("value", [None, b"tcp", 6, ["tcp"]])
def test_flow_filter_needs_a_str(value):
    with pytest.raises(TypeError, match="must be a str"):
        FlowFilter(value)


def test_compile_filter():
    assert compile_filter(None) is None
    assert compile_filter("") is None
    assert compile_filter("   ") is None
    compiled = FlowFilter("udp")
    assert compile_filter(compiled) is compiled
    made = compile_filter("tcp port 80")
    assert isinstance(made, FlowFilter)
    assert made.expression == "tcp port 80"
    assert made.matches(WEB)
    with pytest.raises(FilterError):
        compile_filter("tcp port")
    with pytest.raises(TypeError):
        compile_filter(80)


# -- errors ------------------------------------------------------------------------------------


def test_error_message_layout():
    error = error_of("tcp port ")
    assert isinstance(error, ValueError)
    assert error.expression == "tcp port "
    assert error.position == 9
    assert str(error).splitlines() == [
        "expected a port number or service name after 'port' at position 9",
        "    tcp port ",
        "             ^",
        "write e.g. 'port 80' or 'port http'",
    ]


def test_error_caret_stays_aligned_across_lines():
    error = error_of("tcp and\n\tport x")
    lines = str(error).splitlines()
    assert lines[1] == "    tcp and  port x"
    assert lines[2].index("^") == lines[1].index("x")
    assert error.position == 14


def test_error_pickles():
    error = error_of("port 70000")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.expression, copy.position, str(copy)) == (error.expression, error.position, str(error))


@pytest.mark.parametrize(
    ("expression", "problem", "position", "hint"),
    [
        # parentheses
        ("()", "empty parentheses", 0, "put an expression inside"),
        ("tcp and ( )", "empty parentheses", 8, "put an expression inside"),
        ("(tcp", "unbalanced '(' has no matching ')'", 0, "add the missing ')'"),
        ("((tcp)", "unbalanced '(' has no matching ')'", 0, "add the missing ')'"),
        ("tcp)", "unbalanced ')'", 3, "add the matching '('"),
        ("(tcp udp)", "expected ')' or an operator, found 'udp'", 5, "close the '(' at position 0"),
        # trailing tokens and operators
        ("tcp udp",
         "unexpected 'udp' after a complete expression", 4, "join primitives with 'and' or 'or'"),
        ("tcp adn udp", "unexpected 'adn' after a complete expression", 4, "did you mean 'and'?"),
        ("port 80 443", "unexpected '443' after a complete expression", 8, "join primitives"),
        ("tcp and", "expected a primitive after 'and'", 7, "remove 'and'"),
        ("not", "expected a primitive after 'not'", 3, "remove 'not'"),
        ("and tcp", "expected a primitive, found 'and'", 0, "a primitive starts with one of: host"),
        ("tcp or or udp", "expected a primitive, found 'or'", 7, "a primitive starts with one of"),
        ("tcp & udp", "unexpected '&'", 4, "use '&&' or 'and'"),
        ("tcp | udp", "unexpected '|'", 4, "use '||' or 'or'"),
        # unknown words and missing qualifiers
        ("hots 10.0.0.1", "unknown keyword 'hots'", 0, "did you mean 'host'?"),
        ("tcp and tpc", "unknown keyword 'tpc'", 8, "did you mean 'tcp'?"),
        ("bogus", "unknown keyword 'bogus'", 0, "a primitive starts with one of"),
        ("mask 255.0.0.0", "expected a primitive, found 'mask'", 0, "a primitive starts with one of"),
        ("10.0.0.1", "address '10.0.0.1' has no qualifier", 0, "write e.g. 'host 10.0.0.1'"),
        ("10.0.0.0/8", "address '10.0.0.0/8' has no qualifier", 0, "write e.g. 'net 10.0.0.0/8'"),
        ("80", "value '80' has no qualifier", 0, "write e.g. 'port 80'"),
        ("tcp or 80", "value '80' has no qualifier", 7, "write e.g. 'port 80'"),
        ("port 80 or tcp or 443", "value '443' has no qualifier", 18, "write e.g. 'port 443'"),
        ("not 80", "value '80' has no qualifier", 4, "write e.g. 'port 80'"),
        # qualifiers
        ("src",
         "expected 'host', 'net', 'port' or 'portrange' after 'src'", 3, "write e.g. 'src host ...'"),
        ("src or dst tcp",
         "expected 'host', 'net', 'port' or 'portrange' after 'src or dst', found 'tcp'", 11,
         "write e.g. 'src or dst host"),
        ("tcp src host 10.0.0.1", "'tcp' cannot qualify 'host'", 8, "e.g. 'tcp and host ...'"),
        ("udp net 10", "'udp' cannot qualify 'net'", 4, "e.g. 'udp and net ...'"),
        ("tcp proto 6", "'tcp' cannot qualify 'proto'", 4, "combine them with 'and'"),
        ("ip port 80", "'ip' cannot qualify 'port'", 3, "e.g. 'ip and port ...'"),
        ("ip6 src portrange 1-2", "'ip6' cannot qualify 'portrange'", 8, "e.g. 'ip6 and portrange ...'"),
        ("src proto 6", "'src' cannot qualify 'proto'", 4, "'proto' has no direction"),
        ("tcp dst", "expected 'port' or 'portrange' after 'dst'", 7, "write e.g. 'dst port ...'"),
        ("ip src vlan",
         "expected 'host' or 'net' after 'src', found 'vlan'", 7, "write e.g. 'src host ...'"),
        # host
        ("host", "expected an IPv4 or IPv6 address after 'host'", 4, "write e.g. 'host 10.0.0.1'"),
        ("host or tcp",
         "expected an IPv4 or IPv6 address after 'host', found 'or'", 5, "'host 2001:db8::1'"),
        ("host example.com", "bad address 'example.com'", 5, "host names are not resolved"),
        ("host 10.0.0.256", "bad address '10.0.0.256'", 5, "write an address like 10.0.0.1"),
        ("host 10.0.0.0/8", "'host' takes one address, not a network", 5, "write 'net 10.0.0.0/8'"),
        ("host 10.0.0.1 or 10.0.0", "bad address '10.0.0'", 17, "write an address like"),
        # net
        ("net", "expected a network after 'net'", 3, "'net 10.0.0.0/8', 'net 192.168'"),
        ("net 10.0.0.1/8", "network '10.0.0.1/8' has host bits set", 4, "use 10.0.0.0/8"),
        ("net 10.1/8", "network '10.1/8' has host bits set", 4, "use 10.0.0.0/8"),
        ("net 2001:db8::1/32", "network '2001:db8::1/32' has host bits set", 4, "use 2001:db8::/32"),
        ("net 10.0.0.1 mask 255.0.0.0", "network '10.0.0.1 mask 255.0.0.0' has host bits set", 4,
         "use 10.0.0.0 mask 255.0.0.0"),
        ("net 10.0.0.0/33", "bad network '10.0.0.0/33'", 4, "write a network like 10.0.0.0/8"),
        ("net 10.0.0.0/x", "bad prefix length in network '10.0.0.0/x'", 4, "a number of bits"),
        ("net 10.0.0.0/255.0.0.0",
         "bad prefix length in network '10.0.0.0/255.0.0.0'", 4, "number of bits"),
        ("net 300", "bad network '300'", 4, "write a network like"),
        ("net lan", "bad network 'lan'", 4, "write a network like"),
        ("net 2001:db8:: mask ffff::", "'mask' only applies to IPv4 networks", 15, "'2001:db8::/32'"),
        ("net 10.0.0.0/8 mask 255.0.0.0",
         "'mask' cannot follow a network with a /prefix", 15, "not both"),
        ("net 10.0.0.0 mask",
         "expected an IPv4 netmask after 'mask'", 17, "write e.g. 'mask 255.255.0.0'"),
        ("net 10.0.0.0 mask 8", "bad netmask '8'", 18, "like 255.255.0.0"),
        ("net 10.0.0.0 mask 255.0.255.0",
         "netmask '255.0.255.0' is not contiguous", 18, "leading one bits"),
        ("net nope mask 255.0.0.0", "bad network 'nope'", 4, "before 'mask'"),
        # family mismatch
        ("ip6 host 10.0.0.1",
         "'ip6' does not match IPv4 address '10.0.0.1'", 9, "use 'ip' instead of 'ip6'"),
        ("ip host 2001:db8::1",
         "'ip' does not match IPv6 address '2001:db8::1'", 8, "use 'ip6' instead of 'ip'"),
        ("ip net 2001:db8::/32", "'ip' does not match IPv6 network '2001:db8::/32'", 7, "or drop 'ip'"),
        ("ip6 net 10", "'ip6' does not match IPv4 network '10'", 8, "use 'ip' instead"),
        ("ip6 host 2001:db8::1 or 10.0.0.1",
         "'ip6' does not match IPv4 address '10.0.0.1'", 24, "drop 'ip6'"),
        # port and portrange
        ("tcp port", "expected a port number or service name after 'port'", 8, "write e.g. 'port 80'"),
        ("port and tcp",
         "expected a port number or service name after 'port', found 'and'", 5, "'port http'"),
        ("port (80)", "expected a port number or service name after 'port', found '('", 5, "'port 80'"),
        ("port 65536", "port 65536 is out of range", 5, "use a port from 0 to 65535"),
        ("port 80 or 99999", "port 99999 is out of range", 11, "0 to 65535"),
        ("port gopher", "unknown service name 'gopher'", 5, "one of: dns, domain, ftp, http, https"),
        ("port -1", "port -1 is out of range", 5, "use a port from 0 to 65535"),
        ("portrange", "expected a port range after 'portrange'", 9, "'portrange 1000-2000'"),
        ("portrange 80", "bad port range '80'", 10, "write it as LOW-HIGH"),
        ("portrange 1-2-3", "bad port range '1-2-3'", 10, "LOW-HIGH"),
        ("portrange -80", "bad port range '-80'", 10, "LOW-HIGH"),
        ("portrange 2000-1000",
         "port range '2000-1000' is reversed", 10, "put the lower port first: '1000-2000'"),
        ("portrange 1-70000", "port 70000 is out of range", 12, "0 to 65535"),
        ("portrange 1-gopher", "unknown service name 'gopher'", 12, "use a port number"),
        # proto and vlan
        ("proto", "expected a protocol number or name after 'proto'", 5, "'proto 6', 'proto tcp'"),
        ("proto 256", "protocol 256 is out of range", 6, "from 0 to 255"),
        ("proto gre", "unknown protocol 'gre'", 6, "'proto 6'"),
        ("ip proto", "expected a protocol number or name after 'proto'", 8, "'proto udp'"),
        ("vlan 4096", "bad VLAN ID '4096'", 5, "from 0 to 4095"),
        ("vlan ten", "bad VLAN ID 'ten'", 5, "from 0 to 4095"),
        ("vlan 7 or 5000", "bad VLAN ID '5000'", 10, "from 0 to 4095"),
        # nesting
        ("(" * 51 + "tcp" + ")" * 51, "expression nests deeper than 50 levels", 50, "remove redundant"),
        ("not " * 51 + "tcp", "expression nests deeper than 50 levels", 200, "remove redundant"),
    ],
)
def test_errors(expression, problem, position, hint):
    error = error_of(expression)
    assert error.expression == expression
    assert error.position == position
    assert error.problem == problem
    assert hint in error.hint
    first, shown, caret, last = str(error).splitlines()
    assert first == f"{problem} at position {position}"
    assert shown == "    " + expression
    assert caret == " " * (4 + position) + "^"
    assert last == error.hint


# -- properties --------------------------------------------------------------------------------

ATOMS = [
    "tcp", "udp", "ip", "ip6", "vlan", "vlan 7", "vlan 100",
    "host 10.0.0.1", "src host 10.1.2.3", "dst host 2001:db8:1::2", "src and dst host 127.0.0.1",
    "net 10", "dst net 192.168.0.0/16", "ip6 net 2001:db8::/32", "net 172.16.0.0 mask 255.240.0.0",
    "port 80", "src port 22", "dst port 53", "tcp port 443", "udp dst port dns", "src or dst port 8080",
    "portrange 20-80", "tcp src portrange 40000-50000", "proto 1", "ip proto tcp", "ip6 proto 6",
    "(port 80 or 443)", "(not host 10.0.0.1 and 192.168.1.2)",
]
PROPERTY_KEYS = list(KEYS.values()) + [
    flow(proto=17, client="192.168.9.9", client_port=8080, server="10.0.0.1", server_port=123,
         vlan=(9,)),
    flow(proto=6, client="2001:db8::5", client_port=53, server="2001:db8::1", server_port=22),
    flow(proto=6, client="10.9.9.9", client_port=30000, server="192.168.1.2", server_port=443),
]


def random_expression(rng, depth):
    """A random expression over ATOMS with and/or/not and parentheses."""
    choice = rng.random()
    if depth == 0 or choice < 0.3:
        return rng.choice(ATOMS)
    if choice < 0.45:
        return f"not ({random_expression(rng, depth - 1)})"
    operator = rng.choice(["and", "or", "&&", "||"])
    return f"({random_expression(rng, depth - 1)}) {operator} ({random_expression(rng, depth - 1)})"


def expressions(count, seed):
    """``count`` random expressions, reproducibly."""
    rng = random.Random(seed)
    return [random_expression(rng, 3) for _ in range(count)]


@pytest.mark.parametrize("expression", expressions(60, seed=1))
def test_not_is_the_complement(expression):
    compiled, negated = FlowFilter(expression), FlowFilter(f"not ({expression})")
    bang = FlowFilter(f"!({expression})")
    for key in PROPERTY_KEYS:
        assert negated.matches(key) is not compiled.matches(key)
        assert bang.matches(key) is negated.matches(key)


@pytest.mark.parametrize("left, right", list(zip(expressions(40, seed=2), expressions(40, seed=3))))
def test_and_or_are_pythons(left, right):
    first, second = FlowFilter(left), FlowFilter(right)
    both = FlowFilter(f"({left}) and ({right})")
    either = FlowFilter(f"({left}) or ({right})")
    for key in PROPERTY_KEYS:
        assert both.matches(key) == (first.matches(key) and second.matches(key))
        assert either.matches(key) == (first.matches(key) or second.matches(key))


def test_atoms_are_not_trivial():
    for atom in ATOMS:
        results = {FlowFilter(atom).matches(key) for key in PROPERTY_KEYS}
        assert results == {True, False}, atom
