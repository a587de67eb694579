"""Attach, detach and inspect XDP programs on interfaces with pyroute2 (rtnetlink).

Layer: io. Synchronous and blocking (one netlink round trip each); from Trio call them through
``trio.to_thread.run_sync``, because pyroute2's synchronous IPRoute runs an asyncio loop of its
own and fails inside a running one (a Jupyter cell, Trio guest mode).

aiomb's programs are named ``aiomb_xsk`` and ``aiomb_steer`` (see :mod:`aiomb.io._bpf`), so that
one left attached by a killed process is recognised as stale and replaced, while anyone else's
is refused unless the caller forces it.
"""

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import threading

import attrs
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import (
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_SKB_MODE,
    XDP_FLAGS_UPDATE_IF_NOEXIST,
)

from .._errors import PortError
from . import _bpf

MODES = {"skb": XDP_FLAGS_SKB_MODE, "native": XDP_FLAGS_DRV_MODE}
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_ATTACHED = {"xdpgeneric": "skb", "xdp": "native", "xdpdrv": "native", "xdpoffload": "hw", "xdpmulti": "multi"}


@attrs.frozen(kw_only=True)
class XdpState:
    """What is attached to an interface: ``mode`` ("skb", "native", "hw", "multi" or None),
    the program ids per mode, and the name of the program (None when nothing is attached)."""

    ifindex: int
    mode: str | None
    prog_id: int
    skb_prog_id: int
    drv_prog_id: int
    name: str | None

    @property
    def ours(self) -> bool:
        """True when the attached program is aiomb's (maybe a stale one)."""
        return self.name in _bpf.PROGRAM_NAMES

    def prog_in(self, mode: str) -> int:
        """The id of the program attached in ``mode`` (0 when none)."""
        if mode == "skb":
            return self.skb_prog_id or (self.prog_id if self.mode == "skb" else 0)
        return self.drv_prog_id or (self.prog_id if self.mode == "native" else 0)


def ifindex(ipr: IPRoute, ifname: str) -> int:
    """The index of interface ``ifname``; raises PortError when there is none."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise PortError(f"no interface named {ifname!r} in this network namespace "
                        "(see `ip link`; run aiomb in the interface's namespace)")
    return found[0]


def rx_queues(ipr: IPRoute, index: int) -> int:
    """The number of RX queues in use on the interface (``ethtool -l``: rx + combined channels).

    Asked with the ETHTOOL_GCHANNELS ioctl in the calling thread's network namespace; netlink's
    IFLA_NUM_RX_QUEUES is only the fallback, as it counts the queues allocated (a veth
    allocates one per CPU but uses one).
    """
    link = ipr.get_links(index)[0]
    name = link.get_attr("IFLA_IFNAME")
    n = _ethtool_rx_channels(name)
    return n or link.get_attr("IFLA_NUM_RX_QUEUES") or 1


def _ethtool_rx_channels(name: str) -> int:
    ETHTOOL_GCHANNELS, SIOCETHTOOL = 0x3c, 0x8946
    chan = ctypes.create_string_buffer(struct.pack("<9I", ETHTOOL_GCHANNELS, *[0] * 8), 36)
    ifreq = struct.pack("16sP", name.encode(), ctypes.addressof(chan))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    except OSError:
        return 0
    fields = struct.unpack("<9I", chan.raw)
    return fields[5] + fields[8]        # rx_count + combined_count


@contextlib.contextmanager
def in_netns(netns: str | None):
    """Run the block with the calling thread in network namespace ``netns`` (a name under
    /run/netns, or a path), then come back; sockets made inside stay in that namespace.
    None: the block runs where the thread is."""
    if netns is None:
        yield
        return
    path = netns if "/" in netns else f"/run/netns/{netns}"
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise PortError(f"no network namespace {netns!r} ({exc.strerror}); see `ip netns list`") from None
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise PortError(f"cannot enter network namespace {netns!r}: {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:      # this thread would stay elsewhere
                os.abort()
    finally:
        os.close(target)
        os.close(home)


def query(ipr: IPRoute, index: int) -> XdpState:
    """Read what XDP program (if any) is attached to interface ``index``."""
    xdp = ipr.get_links(index)[0].get_attr("IFLA_XDP")
    get = xdp.get_attr if xdp is not None else (lambda name: None)
    mode = _ATTACHED.get(get("IFLA_XDP_ATTACHED"))
    prog = get("IFLA_XDP_PROG_ID") or 0
    skb = get("IFLA_XDP_SKB_PROG_ID") or 0
    drv = get("IFLA_XDP_DRV_PROG_ID") or 0
    if mode == "skb" and not skb:
        skb = prog
    if mode == "native" and not drv:
        drv = prog
    ident = prog or skb or drv
    name = _bpf.prog_name_by_id(ident) if ident else None
    return XdpState(ifindex=index, mode=mode, prog_id=prog, skb_prog_id=skb, drv_prog_id=drv,
                    name=name if ident else None)


def _set(ipr: IPRoute, index: int, fd: int, flags: int) -> None:
    ipr.link("set", index=index, xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]})


def attach(ipr: IPRoute, index: int, prog_fd: int, mode: str, *, ifname: str = "") -> None:
    """Attach ``prog_fd`` in ``mode`` ("skb" or "native"), refusing to replace any program.

    Raises PortError when something is attached already or the driver refuses the mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'skb' or 'native', got {mode!r}")
    try:
        _set(ipr, index, prog_fd, MODES[mode] | XDP_FLAGS_UPDATE_IF_NOEXIST)
    except NetlinkError as exc:
        what = ifname or f"interface {index}"
        if exc.code in (16, 17):
            raise PortError(f"{what}: another XDP program was attached meanwhile; "
                            "retry, or pass force=True to replace it") from None
        if exc.code == 95:
            raise PortError(f"{what}: the driver does not support XDP in {mode} mode; "
                            "use mode='skb'") from None
        if exc.code == 34:
            mtu = ipr.get_links(index)[0].get_attr("IFLA_MTU")
            raise PortError(f"{what}: its MTU ({mtu}) is more than the driver's XDP takes in {mode} mode "
                            "(a veth: about 3500 bytes with 4 KiB pages); lower the MTU, or use mode='skb'") from None
        raise PortError(f"{what}: attaching the XDP program in {mode} mode failed: "
                        f"{exc.args[1] if len(exc.args) > 1 else exc}") from None


def detach(ipr: IPRoute, index: int, mode: str) -> None:
    """Detach whatever program is attached in ``mode`` (no error when there is none)."""
    flags = MODES.get(mode)
    if flags is None:
        raise PortError(f"cannot detach an XDP program attached in {mode} mode")
    _set(ipr, index, -1, flags)


def detach_if(ipr: IPRoute, index: int, mode: str, prog_id: int) -> bool:
    """Detach the program of ``mode`` only if it is still ``prog_id``; True when it was."""
    try:
        state = query(ipr, index)
    except NetlinkError as exc:
        if exc.code == 19:          # the interface is gone (and its program with it)
            return False
        raise
    if state.prog_in(mode) != prog_id:
        return False
    detach(ipr, index, mode)
    return True


def clear(ipr: IPRoute, index: int, *, ifname: str, force: bool) -> XdpState:
    """Make the interface free for aiomb's program; returns what was there before.

    A stale program of aiomb's is detached. Anyone else's raises PortError unless ``force``,
    in which case it is detached too.
    """
    state = query(ipr, index)
    if state.mode is None:
        return state
    if not state.ours and not force:
        raise PortError(
            f"{ifname} already runs an XDP program that is not aiomb's (id {state.prog_id}, "
            f"name {state.name!r}, {state.mode} mode); detach it (`ip link set dev {ifname} "
            f"xdp off`) or pass force=True (--force) to replace it")
    for mode in ("skb", "native"):
        if state.prog_in(mode):
            detach(ipr, index, mode)
    if state.mode in ("hw", "multi") and query(ipr, index).mode is not None:
        raise PortError(f"{ifname}: cannot remove the XDP program attached in {state.mode} mode; "
                        "detach it by hand")
    return state
