"""The in-kernel pre-filter of live ports: which frames the XDP program gives to aiomb at all.

Layer: io; pure (it only emits eBPF instructions into an :class:`~aiomb.io._bpf.Asm`).
A frame is accepted when it is IPv4 or IPv6 (after up to two VLAN tags) and matches every
criterion given: its IP protocol is one of ``protocols``, its source or destination address is
in one of ``networks``, its TCP/UDP source or destination port is one of ``ports``. IP
fragments pass the port criterion (they are reassembled by the engine), and so do IPv6 packets
with extension headers, whose transport header the program does not look for.
"""

import ipaddress

import attrs

from ._bpf import emit_network_header, htons

PROTOCOL_NAMES = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
IPV6_EXTENSIONS = (0, 43, 44, 50, 51, 60, 135, 139, 140)
MAX_ENTRIES = 64          # per criterion: each one is a compare in the program


def _protocols(value) -> frozenset:
    out = set()
    for p in value:
        if isinstance(p, str):
            if p.lower() not in PROTOCOL_NAMES:
                raise ValueError(f"unknown protocol {p!r}; use a number or one of {sorted(PROTOCOL_NAMES)}")
            p = PROTOCOL_NAMES[p.lower()]
        if not isinstance(p, int) or not 0 <= p <= 255:
            raise ValueError(f"IP protocol numbers are 0..255, got {p!r}")
        out.add(p)
    return frozenset(out)


def _ports(value) -> frozenset:
    out = frozenset(value)
    for p in out:
        if not isinstance(p, int) or not 0 <= p <= 0xffff:
            raise ValueError(f"ports are 0..65535, got {p!r}")
    return out


def _networks(value) -> tuple:
    return tuple(ipaddress.ip_network(n) for n in value)


@attrs.frozen(kw_only=True)
class Prefilter:
    """What a live port's XDP program lets through to aiomb (see the module docstring).

    ``Prefilter(protocols={"tcp"}, ports={80, 443}, networks=["10.0.0.0/8"])``. Frames it
    rejects go on to the kernel (passive ports) or straight out of the other interface
    (inline ports), unseen by aiomb. Raises ValueError for bad values or more than 64 entries
    in a criterion.
    """

    protocols: frozenset = attrs.field(default=frozenset(), converter=_protocols)
    ports: frozenset = attrs.field(default=frozenset(), converter=_ports)
    networks: tuple = attrs.field(default=(), converter=_networks)

    def __attrs_post_init__(self):
        for name in ("protocols", "ports", "networks"):
            if len(getattr(self, name)) > MAX_ENTRIES:
                raise ValueError(f"a pre-filter takes at most {MAX_ENTRIES} {name}")

    def emit(self, a, *, accept: str, reject: str) -> None:
        """Emit the filter: r6 holds ctx; jumps to ``accept`` or ``reject``; uses r0-r5, r7-r9."""
        nets4 = [n for n in self.networks if n.version == 4]
        nets6 = [n for n in self.networks if n.version == 6]
        emit_network_header(a, fail=reject, tag="_")
        a.jmp("jeq", 3, "_ipv4", imm=htons(0x0800))
        a.jmp("jeq", 3, "_ipv6", imm=htons(0x86dd))
        a.jmp("ja", 0, reject)

        # IPv4: r2 = header, r4 = protocol
        a.label("_ipv4")
        if self.networks and not nets4:
            a.jmp("ja", 0, reject)
        else:
            a.mov(2, 7).alu64("add", 2, 9)
            a.mov(3, 2).alu64("add", 3, imm=20)
            a.jmp("jgt", 3, reject, src=8)
            a.ldx(1, 4, 2, 9)
            if nets4:
                for off in (12, 16):
                    a.ldx(4, 5, 2, off)
                    for n in nets4:
                        mask = int.from_bytes(n.netmask.packed, "little")
                        net = int.from_bytes(n.network_address.packed, "little")
                        a.mov(0, 5).alu32("and", 0, imm=mask)
                        a.jmp32("jeq", 0, "_v4net", imm=net)
                a.jmp("ja", 0, reject)
                a.label("_v4net")
            self._protocol_check(a, reject)
            if self.ports:
                a.ldx(2, 5, 2, 6)                   # flags and fragment offset
                a.jmp("jset", 5, accept, imm=htons(0x3fff))
                a.ldx(1, 5, 2, 0)
                a.alu64("and", 5, imm=0x0f).alu64("lsh", 5, imm=2)
                a.alu64("add", 2, 5)                # r2 = transport header
                self._port_check(a, accept, reject)
            else:
                a.jmp("ja", 0, accept)

        # IPv6
        a.label("_ipv6")
        if self.networks and not nets6:
            a.jmp("ja", 0, reject)
            return
        a.mov(2, 7).alu64("add", 2, 9)
        a.mov(3, 2).alu64("add", 3, imm=40)
        a.jmp("jgt", 3, reject, src=8)
        a.ldx(1, 4, 2, 6)
        if nets6:
            for k, (base, n) in enumerate((b, n) for b in (8, 24) for n in nets6):
                miss = f"_v6miss{k}"
                words = (n.prefixlen + 31) // 32
                mask = n.netmask.packed
                net = n.network_address.packed
                for w in range(words):
                    a.ldx(4, 5, 2, base + 4 * w)
                    a.alu32("and", 5, imm=int.from_bytes(mask[4 * w:4 * w + 4], "little"))
                    a.jmp32("jne", 5, miss, imm=int.from_bytes(net[4 * w:4 * w + 4], "little"))
                a.jmp("ja", 0, "_v6net")
                a.label(miss)
            a.jmp("ja", 0, reject)
            a.label("_v6net")
        if self.protocols or self.ports:
            for ext in IPV6_EXTENSIONS:
                a.jmp("jeq", 4, accept, imm=ext)
        self._protocol_check(a, reject)
        if self.ports:
            a.alu64("add", 2, imm=40)
            self._port_check(a, accept, reject)
        else:
            a.jmp("ja", 0, accept)

    def _protocol_check(self, a, reject: str) -> None:
        protos = set(self.protocols)
        if self.ports:
            protos = (protos & {6, 17}) if protos else {6, 17}
        if not protos and not self.protocols:
            return
        ok = f"_proto_ok{len(a)}"
        for p in sorted(protos):
            a.jmp("jeq", 4, ok, imm=p)
        a.jmp("ja", 0, reject)
        a.label(ok)

    def _port_check(self, a, accept: str, reject: str) -> None:
        """r2 = transport header (bounds checked here), r8 = data_end."""
        a.mov(3, 2).alu64("add", 3, imm=4)
        a.jmp("jgt", 3, reject, src=8)
        a.ldx(2, 5, 2, 0)                       # source port
        a.ldx(2, 0, 2, 2)                       # destination port
        for p in sorted(self.ports):
            a.jmp("jeq", 5, accept, imm=htons(p))
            a.jmp("jeq", 0, accept, imm=htons(p))
        a.jmp("ja", 0, reject)
