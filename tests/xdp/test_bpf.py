"""The eBPF assembler, the bpf(2) loader and XDP attach/detach with pyroute2, on a real kernel."""

import ipaddress
import os
import socket
import struct

import pytest
from pyroute2 import IPRoute

from aiomb import PortError
from aiomb.io import _bpf, _xdp

from .lab import sh


def test_assembler_encoding():
    a = _bpf.Asm()
    a.ldx(4, 2, 1, 16).mov(3, imm=2).mov(0, 3).ld_imm64(4, 0x1122334455667788)
    a.jmp("jeq", 2, "out", imm=7).alu64("add", 2, imm=-1).label("out").call(51).exit()
    code = a.code()
    insns = [code[i:i + 8] for i in range(0, len(code), 8)]
    assert insns[0] == struct.pack("<BBhi", 0x61, 0x12, 16, 0)        # r2 = *(u32 *)(r1 + 16)
    assert insns[1] == struct.pack("<BBhi", 0xb7, 0x03, 0, 2)         # r3 = 2
    assert insns[2] == struct.pack("<BBhi", 0xbf, 0x30, 0, 0)         # r0 = r3
    assert insns[3] == struct.pack("<BBhi", 0x18, 0x04, 0, 0x55667788)
    assert insns[4] == struct.pack("<BBhi", 0x00, 0x00, 0, 0x11223344)
    assert insns[5] == struct.pack("<BBhi", 0x15, 0x02, 1, 7)         # skip one instruction
    assert insns[6] == struct.pack("<BBhi", 0x07, 0x02, 0, -1)
    assert insns[7] == struct.pack("<BBhi", 0x85, 0x00, 0, 51)
    assert insns[8] == struct.pack("<BBhi", 0x95, 0x00, 0, 0)


def test_assembler_errors():
    with pytest.raises(ValueError, match="undefined label 'nowhere'"):
        _bpf.Asm().jmp("ja", 0, "nowhere").exit().code()
    with pytest.raises(ValueError, match="r0..r10"):
        _bpf.Asm().mov(11, imm=0)
    with pytest.raises(ValueError, match="placed twice"):
        _bpf.Asm().label("x").label("x")


def test_program_loads_named_and_passes_without_sockets():
    prog, xsks = _bpf.load_xsk_program(4)
    try:
        pid, name, ptype = _bpf.obj_info(prog)
        assert (name, ptype) == ("aiomb_xsk", _bpf.BPF_PROG_TYPE_XDP)
        assert _bpf.prog_name_by_id(pid) == "aiomb_xsk"
        frame = bytes(12) + b"\x08\x00" + bytes(50)
        retval, _ = _bpf.prog_test_run(prog, frame, repeat=10)
        assert retval == _bpf.XDP_PASS           # no socket in the map: the kernel gets it
    finally:
        os.close(prog)
        os.close(xsks)


@pytest.mark.parametrize("stamp", [_bpf.STAMP_META, _bpf.STAMP_HEAD])
def test_a_frame_for_the_kernel_leaves_as_it_came(stamp):
    """Either way of stamping (the kernel's choice: stamp_mode()), a frame with no socket to go
    to reaches the kernel unchanged: a stamp put in front of it is taken off again, one in the
    metadata area stays there, beside the frame (BPF_PROG_TEST_RUN reports the metadata in
    front of the frame's bytes)."""
    _, xsks = _bpf.load_xsk_program(1)
    code = _bpf.xsk_redirect_program(xsks, stamp=stamp)
    if stamp == _bpf.STAMP_META and _bpf.stamp_mode() != stamp:     # why stamp_mode() chose "head"
        with pytest.raises(_bpf.BpfError, match="adjust_meta"):
            _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP, code, name="aiomb_xsk")
        os.close(xsks)
        return
    prog = _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP, code, name="aiomb_xsk")
    try:
        frame = bytes(range(12)) + b"\x08\x00" + bytes(range(100))
        out = bytearray()
        assert _bpf.prog_test_run(prog, frame, output=out)[0] == _bpf.XDP_PASS
        meta = _bpf.META_LEN if stamp == _bpf.STAMP_META else 0
        assert len(out) == meta + len(frame) and out[meta:] == frame
    finally:
        os.close(prog)
        os.close(xsks)
    with pytest.raises(ValueError, match="stamp must be"):
        _bpf.xsk_redirect_program(xsks, stamp="tail")


def test_verifier_log_in_error():
    with pytest.raises(_bpf.BpfError, match="verifier log") as info:
        _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP, _bpf.Asm().mov(0, imm=1).code(), name="aiomb_bad")
    assert "exit" in info.value.log


def test_xskmap_takes_only_xdp_sockets():
    _, xsks = _bpf.load_xsk_program(2)
    try:
        with socket.socket() as s, pytest.raises(_bpf.BpfError):
            _bpf.xsk_map_set(xsks, 0, s.fileno())
    finally:
        os.close(xsks)


def test_attach_detach_read_back(lab):
    a, _ = lab.veth("x", "y")
    prog, xsks = _bpf.load_xsk_program(1)
    try:
        pid = _bpf.obj_info(prog)[0]
        with IPRoute() as ipr:
            index = _xdp.ifindex(ipr, a)
            assert _xdp.query(ipr, index).mode is None
            _xdp.attach(ipr, index, prog, "skb", ifname=a)
            state = _xdp.query(ipr, index)
            assert (state.mode, state.prog_id, state.name, state.ours) == ("skb", pid, "aiomb_xsk", True)
            assert "xdpgeneric" in sh("ip", "link", "show", a).stdout
            # UPDATE_IF_NOEXIST: a second attach is refused
            with pytest.raises(PortError, match="another XDP program"):
                _xdp.attach(ipr, index, prog, "skb", ifname=a)
            assert _xdp.detach_if(ipr, index, "skb", pid + 1000) is False    # not that program
            assert _xdp.query(ipr, index).mode == "skb"
            assert _xdp.detach_if(ipr, index, "skb", pid) is True
            assert _xdp.query(ipr, index).mode is None
            _xdp.attach(ipr, index, prog, "native", ifname=a)             # veth has native XDP
            assert _xdp.query(ipr, index).mode == "native"
            _xdp.detach(ipr, index, "native")
            assert _xdp.query(ipr, index).mode is None
    finally:
        os.close(prog)
        os.close(xsks)


def test_clear_refuses_foreign_replaces_stale(lab):
    a, _ = lab.veth("x", "y")
    foreign = _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP,
                             _bpf.Asm().mov(0, imm=_bpf.XDP_PASS).exit().code(), name="someone_else")
    stale, xsks = _bpf.load_xsk_program(1)
    try:
        with IPRoute() as ipr:
            index = _xdp.ifindex(ipr, a)
            _xdp.attach(ipr, index, foreign, "skb")
            with pytest.raises(PortError, match=rf"{a} already runs an XDP program that is not "
                                                r"aiomb's .*name 'someone_else'.*force=True"):
                _xdp.clear(ipr, index, ifname=a, force=False)
            assert _xdp.query(ipr, index).name == "someone_else"
            _xdp.clear(ipr, index, ifname=a, force=True)
            assert _xdp.query(ipr, index).mode is None
            _xdp.attach(ipr, index, stale, "native")
            before = _xdp.clear(ipr, index, ifname=a, force=False)       # ours: replaced
            assert before.ours and _xdp.query(ipr, index).mode is None
    finally:
        for fd in (foreign, stale, xsks):
            os.close(fd)


def test_unknown_interface():
    with IPRoute() as ipr, pytest.raises(PortError, match="no interface named 'nosuch0'"):
        _xdp.ifindex(ipr, "nosuch0")


# -- the in-kernel pre-filter, judged by the kernel itself (BPF_PROG_TEST_RUN) -----------------

from aiomb.io import Prefilter  # noqa: E402
from aiomb.testing import icmp_frame, ipv4_fragments, tcp_frame, udp_frame  # noqa: E402


def verdicts(prefilter, frames):
    """For each frame: True if the program gives it to aiomb, False if it bypasses aiomb."""
    _, xsks = _bpf.load_xsk_program(1)
    prog = _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP,
                          _bpf.xsk_redirect_program(xsks, prefilter, bypass_ifindex=1), name="aiomb_xsk")
    try:
        out = []
        for frame in frames:
            retval, _ = _bpf.prog_test_run(prog, frame)
            assert retval in (_bpf.XDP_PASS, _bpf.XDP_REDIRECT)
            out.append(retval == _bpf.XDP_PASS)     # accepted: redirect_map found no socket
        return out
    finally:
        os.close(prog)
        os.close(xsks)


def test_prefilter_ports_protocols_networks():
    frames = [
        tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, flags="S"),
        tcp_frame("10.0.0.1", "10.0.0.2", 40000, 22, flags="S"),
        tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, flags="SA"),          # source port matches
        udp_frame("10.0.0.1", "10.0.0.2", 5353, 80, b"x"),
        udp_frame("192.168.1.1", "172.16.0.1", 5353, 80, b"x"),
        icmp_frame("10.0.0.1", "10.0.0.2"),
        tcp_frame("2001:db8::1", "2001:db8::2", 1234, 80, flags="S"),
        tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, flags="S", vlan=(7,)),
        tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, flags="S", vlan=(7, 8)),
        bytes.fromhex("ffffffffffff020000000001" "0806") + bytes(28),          # ARP
    ]
    assert verdicts(Prefilter(ports={80}), frames) == [True, False, True, True, True, False, True, True, True, False]
    assert verdicts(Prefilter(protocols={"tcp"}), frames) == \
        [True, True, True, False, False, False, True, True, True, False]
    assert verdicts(Prefilter(protocols={"udp", "icmp"}, networks=["10.0.0.0/8"]), frames) == \
        [False, False, False, True, False, True, False, False, False, False]
    assert verdicts(Prefilter(networks=["172.16.0.0/12", "2001:db8::/32"]), frames) == \
        [False, False, False, False, True, False, True, False, False, False]
    assert verdicts(Prefilter(networks=["2001:db8::2/128"]), frames) == \
        [False, False, False, False, False, False, True, False, False, False]
    assert verdicts(Prefilter(networks=["10.0.0.2/32"], ports={22}), frames) == \
        [False, True, False, False, False, False, False, False, False, False]


def test_prefilter_lets_fragments_through_the_port_check():
    first, *rest = ipv4_fragments(udp_frame("10.0.0.1", "10.0.0.2", 1000, 9, bytes(3000)), fragment_size=1000)
    assert verdicts(Prefilter(ports={53}), [first, *rest]) == [True] * (1 + len(rest))


def test_prefilter_values():
    with pytest.raises(ValueError, match="unknown protocol 'tcpp'"):
        Prefilter(protocols={"tcpp"})
    with pytest.raises(ValueError, match="ports are 0..65535"):
        Prefilter(ports={70000})
    with pytest.raises(ValueError, match="at most 64 ports"):
        Prefilter(ports=range(100))
    with pytest.raises(ValueError):
        Prefilter(networks=["10.0.0.300/8"])


def test_the_steering_program_sends_both_directions_to_the_worker_its_hash_names():
    """steering_hash() (Python) is the program's choice, judged by the kernel: with only worker
    k's slot of the DEVMAP filled, the program redirects exactly the frames it steers to k."""
    count = 3
    pairs = [("10.0.0.1", "10.0.0.2"), ("192.168.7.9", "8.8.8.8"), ("fd00::1", "fd00::2:3"),
             ("2001:db8::7", "2001:db8:1::9"), ("10.9.8.7", "10.1.2.3")]
    frames = []
    for src, dst in pairs:
        frames += [tcp_frame(src, dst, 1234, 80), tcp_frame(dst, src, 80, 1234),
                   udp_frame(src, dst, 53, 5353, vlan=[7]), udp_frame(dst, src, 5353, 53, vlan=[7, 9])]
    frames.append(b"\xff" * 12 + b"\x08\x06" + bytes(28))             # ARP: worker 0
    chosen = [_bpf.steering_hash(f, count) for f in frames]
    assert all(chosen[i] == chosen[i + 1] == chosen[i + 2] == chosen[i + 3] for i in range(0, 4 * len(pairs), 4))
    assert set(chosen) == {0, 1, 2} and chosen[-1] == 0
    assert steered_by_kernel(frames, count) == chosen


def steered_by_kernel(frames, count, bindings=None):
    """The worker the loaded steering program sends each frame to: with only worker k's slot
    of the DEVMAP filled, it redirects exactly the frames it steers to k."""
    chosen = [None] * len(frames)
    for k in range(count):
        devmap = _bpf.map_create(_bpf.BPF_MAP_TYPE_DEVMAP, 4, 4, count, name="aiomb_workers")
        _bpf.map_update(devmap, k.to_bytes(4, "little"), (1).to_bytes(4, "little"))     # lo
        prog = _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP, _bpf.steering_program(devmap, count, bindings=bindings),
                              name=_bpf.STEER_NAME)
        try:
            for i, frame in enumerate(frames):
                if _bpf.prog_test_run(prog, frame)[0] == _bpf.XDP_REDIRECT:
                    assert chosen[i] is None
                    chosen[i] = k
        finally:
            os.close(prog)
            os.close(devmap)
    return chosen


def quoting(router, frame, *, type, keep=28, vlan=()):
    """An ICMP error from ``router`` about ``frame`` (Ethernet), quoting its first ``keep`` bytes
    of IP packet, sent back to the frame's sender."""
    packet = frame[14:]
    src = str(ipaddress.ip_address(packet[12:16] if packet[0] >> 4 == 4 else packet[8:24]))
    return icmp_frame(router, src, type=type, payload=bytes(4) + packet[:keep], vlan=vlan)


def test_an_icmp_error_goes_to_the_worker_of_the_flow_it_quotes():
    """A router's ICMP error (its own address pair with the client) is steered by the packet it
    quotes: to the flow's worker, in the kernel as in steering_hash()."""
    count = 3
    flows = [tcp_frame(f"10.0.{i}.1", "10.9.9.9", 40000 + i, 80) for i in range(6)] + \
            [udp_frame(f"fd00::{i + 1:x}", "fd00::ff", 5000 + i, 53) for i in range(6)]
    errors = []
    for frame in flows:
        v4 = frame[14] >> 4 == 4
        router = "192.0.2.254" if v4 else "2001:db8::fe"
        for t in ((3, 11, 12, 4, 5) if v4 else (1, 2, 3, 4)):
            errors.append((frame, quoting(router, frame, type=t, keep=28 if v4 else 48)))
    errors.append((flows[0], quoting("192.0.2.254", flows[0], type=3, vlan=[7, 9])))
    want = [_bpf.steering_hash(flow, count) for flow, _ in errors]
    assert set(want) == {0, 1, 2}
    assert [_bpf.steering_hash(error, count) for _, error in errors] == want
    # what is not an error quoting a whole header of its family is steered by its own pair
    outer = [icmp_frame("192.0.2.254", "10.0.0.1", type=8, payload=bytes(4) + flows[0][14:42]),   # echo
             quoting("192.0.2.254", flows[0], type=3, keep=19),                                   # quote cut short
             icmp_frame("192.0.2.254", "10.0.0.1", type=3, payload=bytes(4) + flows[6][14:62])]    # IPv6 inside
    for frame in outer:
        assert _bpf.steering_hash(frame, count) == _bpf.steering_hash(
            tcp_frame("192.0.2.254", "10.0.0.1", 1, 1), count)
    frames = [error for _, error in errors] + outer
    assert steered_by_kernel(frames, count) == [_bpf.steering_hash(f, count) for f in frames]


def test_a_translated_flows_replies_go_to_the_worker_that_bound_it():
    """The replies of a translated flow (its outer reply tuple in the bindings map) go to the
    worker the map names, in the kernel as in steering_hash(); everything else by the address
    pair: the other direction, another port, a fragment (no ports to look up), ICMP, and every
    frame while no binding was ever made (the switch is off: no lookup)."""
    count = 3
    nat4, nat6 = "192.0.2.1", "2001:db8::1"
    replies = [tcp_frame(f"198.51.100.{i}", nat4, 80, 20000 + i) for i in range(4)] + \
              [udp_frame(f"2001:db8:5::{i}", nat6, 53, 20000 + i, vlan=[7]) for i in range(1, 4)] + \
              [tcp_frame("198.51.100.9", nat4, 443, 20009, vlan=[7, 9], ip_options=b"\x01\x01\x01\x01"),
               udp_frame("198.51.100.1", nat4, 53, 20001)]             # its fragments are not looked up
    bound = {}
    for frame in replies:
        key = _bpf.binding_key_of(frame)
        assert key is not None
        bound[key] = (_bpf.steering_hash(frame, count) + 1) % count      # never the worker of its pair
    big = udp_frame("198.51.100.1", nat4, 53, 20001, b"x" * 100)
    unbound = [tcp_frame(nat4, "198.51.100.0", 20000, 80),                # the other direction
               tcp_frame("198.51.100.0", nat4, 81, 20000),                # another port
               udp_frame("198.51.100.0", nat4, 80, 20000),                # another protocol
               *ipv4_fragments(big, fragment_size=48),                    # fragments, the first one too
               udp_frame("2001:db8:5::1", nat6, 53, 20001, ipv6_ext=[(0, bytes(6))]),     # ports not at 40
               icmp_frame("198.51.100.0", nat4, type=8, payload=bytes(8))]
    frames = replies + unbound
    by_pair = [_bpf.steering_hash(f, count) for f in frames]
    want = [bound[_bpf.binding_key_of(f)] for f in replies] + by_pair[len(replies):]
    assert [_bpf.steering_hash(f, count, bound) for f in frames] == want
    assert all(a != b for a, b in zip(want, by_pair[:len(replies)]))
    table, switch = _bpf.bindings_create()
    try:
        for key, k in bound.items():
            _bpf.map_update(table, key, k.to_bytes(4, "little"))
        assert steered_by_kernel(frames, count, (table, switch)) == by_pair     # switch off: not looked up
        _bpf.bindings_switch_on(switch)
        assert steered_by_kernel(frames, count, (table, switch)) == want
    finally:
        os.close(table)
        os.close(switch)


def test_a_workers_translation_hook_fills_the_bindings_map():
    """Fanout's Steering (a worker port's Engine.translation_hook): a binding puts its outer
    reply tuple in the map with the worker's index and turns the switch on; its end takes it
    out, unless another worker's binding has the tuple by then."""
    from aiomb.io._fanout import Steering

    table, switch = _bpf.bindings_create()
    try:
        one, two = Steering((table, switch), 1), Steering((table, switch), 2)
        reply = (6, (ipaddress.ip_address("198.51.100.7"), 80), (ipaddress.ip_address("192.0.2.1"), 20000))
        key = _bpf.binding_key(*reply)
        assert key == _bpf.binding_key_of(tcp_frame("198.51.100.7", "192.0.2.1", 80, 20000))
        assert _bpf.map_lookup(switch, bytes(4), 4) == bytes(4)
        one(True, *reply)
        assert _bpf.map_lookup(table, key, 4) == (1).to_bytes(4, "little")
        assert _bpf.map_lookup(switch, bytes(4), 4) == (1).to_bytes(4, "little")
        two(True, *reply)                               # worker 2 bound it since
        one(False, *reply)
        assert _bpf.map_lookup(table, key, 4) == (2).to_bytes(4, "little")
        two(False, *reply)
        two(False, *reply)                              # gone already: nothing to do
        assert _bpf.map_lookup(table, key, 4) is None
    finally:
        os.close(table)
        os.close(switch)
