"""Live ports: AF_XDP sockets on one interface (passive) or two (inline) as a packet source.

Layer: io. ``port(iface, ...)`` returns a :class:`Port` for :func:`aiomb.open_stack`. Opening
it loads aiomb's XDP program (``bpf_redirect_map(&xsks, rx_queue_index, XDP_PASS)``), binds one
AF_XDP socket per RX queue (one UMEM shared by all of them), and attaches the program in SKB
(generic) or native mode. Closing detaches the program and closes the sockets; it runs on
every exit path of ``open_stack`` (normal end, cancellation, a handler's exception). If the
process dies instead, the program stays attached but its sockets are gone, so every frame
goes on to the kernel (XDP_PASS), and the next start replaces the stale program.

Passive: frames are processed and given back to the kernel's fill ring (the interface should
be a mirror port or the far end of a monitoring veth pair: frames redirected to AF_XDP do not
reach the kernel's stack). Inline: frames received on one interface are sent on the other
through its TX ring (same UMEM, no copy) unless a handler dropped them.
"""

import errno
import os
import select
import time
import warnings

import attrs

from .._core import XskSet
from .._errors import PortError
from . import _bpf, _xdp
from ._prefilter import Prefilter

BIND_BUSY_WAIT = 2.0    # seconds a bind refused with EBUSY is retried (a killed process's sockets)


@attrs.frozen(kw_only=True)
class QueueStatistics:
    """Counters of one AF_XDP socket (one interface queue)."""

    interface: str
    queue: int
    received: int
    received_bytes: int
    ring_drops: int            # frames the kernel could not put in the RX ring (full, or no frame)
    fill_ring_empty: int       # times the kernel found the fill ring empty
    forwarded: int             # frames sent out of this queue (inline)
    dropped_by_verdict: int    # frames received here that a handler dropped
    tx_dropped: int            # forwarded frames lost: TX ring full or a send error


@attrs.frozen(kw_only=True)
class PortStatistics:
    """A snapshot of a live port: totals over its queues, and each queue's counters."""

    interfaces: tuple
    mode: str
    zerocopy: bool
    inline: bool
    open: bool
    received: int
    received_bytes: int
    ring_drops: int
    fill_ring_empty: int
    forwarded: int
    dropped_by_verdict: int
    tx_dropped: int
    queues: tuple


@attrs.define
class _Attachment:
    ifname: str
    index: int
    queues: list
    prog_fd: int = -1
    map_fd: int = -1
    prog_id: int = 0
    attached: bool = False
    sockets: list = attrs.Factory(list)


class Port:
    """A live interface (or, inline, a pair of interfaces) read through AF_XDP sockets.

    Made by :func:`port`; opened and closed by :func:`aiomb.open_stack`. ``statistics()`` can be
    read at any time. ``translation_hook`` is what the engines this port feeds take as their
    ``Engine.translation_hook`` (stacks and monitors give it to theirs): None, except on a steered
    worker's port, where it steers translated flows' replies to the worker (README "Inline workers").
    Blocking: ``open()``/``close()`` do netlink and bpf(2) calls (the stack runs them in a worker
    thread); ``receive()`` waits for frames without busy-polling.
    """

    live = True

    def __init__(self, iface: str, *, queues=None, mode: str = "skb", inline: str | None = None,
                 frame_size: int = 2048, frames: int = 4096, force: bool = False,
                 zerocopy: bool | None = None, netns: str | None = None, prefilter=None,
                 tick: float = 0.1):
        if not isinstance(iface, str) or not iface:
            raise TypeError(f"port() takes an interface name, got {iface!r}")
        if inline is not None and (not isinstance(inline, str) or not inline or inline == iface):
            raise ValueError(f"inline must name a second interface, got {inline!r}")
        if mode not in _xdp.MODES:
            raise ValueError(f"mode must be 'skb' (generic XDP, any driver) or 'native' "
                             f"(the driver's XDP), got {mode!r}")
        if frame_size not in (2048, 4096):
            raise ValueError(f"frame_size must be 2048 or 4096, got {frame_size!r}")
        if not isinstance(frames, int) or not 64 <= frames <= 1 << 20:
            raise ValueError(f"frames must be an int from 64 to {1 << 20}, got {frames!r}")
        if queues is not None:
            queues = sorted(set(int(q) for q in queues))
            if not queues or queues[0] < 0:
                raise ValueError("queues must be a non-empty list of queue numbers >= 0")
        if isinstance(prefilter, dict):
            prefilter = Prefilter(**prefilter)
        if prefilter is not None and not isinstance(prefilter, Prefilter):
            raise TypeError(f"prefilter must be an aiomb.io.Prefilter (or a dict of its fields), got {prefilter!r}")
        if not tick > 0:
            raise ValueError(f"tick must be a positive number of seconds, got {tick!r}")
        self.iface = iface
        self.inline = inline
        self.mode = mode
        self.frame_size = frame_size
        self.frames = frames
        self.force = force
        self.tick = tick
        self.netns = netns
        self.prefilter = prefilter
        self._queues = queues
        self._zerocopy = False if mode == "skb" else zerocopy
        self._xs: XskSet | None = None
        self._ports: list[_Attachment] = []
        self._epoll = None
        self._wait_fd = -1
        self._opened_at = None
        self._stopping = False
        self.translation_hook = None    # what the engines fed by this port give Engine.translation_hook

    def __repr__(self) -> str:
        via = f" <-> {self.inline!r}" if self.inline else ""
        ns = f", netns={self.netns!r}" if self.netns else ""
        return f"port({self.iface!r}{via}, mode={self.mode!r}{ns})"

    @property
    def queues(self) -> list | None:
        """The RX queues asked for (None: every queue of the interface)."""
        return self._queues

    # ---- opening and closing --------------------------------------------------------------

    async def aopen(self) -> None:
        """Open from Trio: :meth:`open` in a worker thread (pyroute2 must not run in an event loop).

        A cancellation arriving while the thread works takes effect once it is done (the stack
        then closes the port as on any exit); if anything is raised here after the port opened,
        it is closed again before the exception goes on.
        """
        import trio

        try:
            await trio.to_thread.run_sync(self.open)
        except BaseException:
            if self._xs is not None:        # opened, but cancelled meanwhile: undo it
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.close)
            raise

    async def aclose(self) -> None:
        """Close from Trio, shielded from cancellation (the program must be detached)."""
        import trio

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.close)

    def _bind(self, p: "_Attachment", q: int) -> int:
        """Bind a socket to queue ``q`` of ``p``; returns its index in the set.

        The kernel lets go of a killed process's sockets shortly after it exits, not at once: a
        bind refused with EBUSY is tried again for up to BIND_BUSY_WAIT seconds before PortError.
        """
        deadline = time.monotonic() + BIND_BUSY_WAIT
        while True:
            try:
                return self._xs.add(p.index, q, rx=True, tx=self.inline is not None, zerocopy=self._zerocopy)
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    raise PortError(f"{p.ifname} queue {q}: cannot bind an AF_XDP socket "
                                    f"({exc.strerror}){_bind_hint(exc)}") from None
            time.sleep(0.01)

    def open(self) -> None:
        """Load the program, bind the sockets, attach; raises PortError saying what failed.

        Whatever was set up before a failure is undone. Blocks (netlink, bpf(2)).
        """
        if self._xs is not None:
            raise RuntimeError(f"{self!r} is already open")
        self._stopping = False
        self._final = None
        names = [self.iface] + ([self.inline] if self.inline else [])
        try:
            with _xdp.in_netns(self.netns), _xdp.IPRoute() as ipr:
                self._ports = []
                for name in names:
                    index = _xdp.ifindex(ipr, name)
                    nq = _xdp.rx_queues(ipr, index)
                    qs = list(range(nq)) if self._queues is None else list(self._queues)
                    if qs[-1] >= nq:
                        raise PortError(f"{name} has {nq} RX queue(s) (0..{nq - 1}); "
                                        f"queue {qs[-1]} does not exist")
                    self._ports.append(_Attachment(ifname=name, index=index, queues=qs))
                # refuse foreign programs before changing anything
                for p in self._ports:
                    state = _xdp.query(ipr, p.index)
                    if state.mode is not None and not state.ours and not self.force:
                        _xdp.clear(ipr, p.index, ifname=p.ifname, force=False)   # raises
                # bind first: a queue still used by a running aiomb refuses the bind (EBUSY),
                # and its program must then be left alone; a killed one's sockets are gone
                self._xs = XskSet(self.frame_size, self.frames)
                self._xs.prefixed = _bpf.stamp_mode() == _bpf.STAMP_HEAD
                for p in self._ports:
                    for q in p.queues:
                        p.sockets.append(self._bind(p, q))
                for k, p in enumerate(self._ports):
                    _xdp.clear(ipr, p.index, ifname=p.ifname, force=self.force)   # stale: detached
                    # inline: what the pre-filter rejects goes straight out of the other interface
                    bypass = self._ports[1 - k].index if self.inline and self.prefilter else 0
                    p.prog_fd, p.map_fd = _bpf.load_xsk_program(max(p.queues) + 1, self.prefilter, bypass)
                    p.prog_id = _bpf.obj_info(p.prog_fd)[0]
                    for q, sock in zip(p.queues, p.sockets):
                        _bpf.xsk_map_set(p.map_fd, q, self._xs.fileno(sock))
                if self.inline:
                    a, b = self._ports
                    for k, s in enumerate(a.sockets):
                        self._xs.set_peer(s, b.sockets[k % len(b.sockets)])
                    for k, s in enumerate(b.sockets):
                        self._xs.set_peer(s, a.sockets[k % len(a.sockets)])
                self._xs.start()
                for p in self._ports:
                    _xdp.attach(ipr, p.index, p.prog_fd, self.mode, ifname=p.ifname)
                    p.attached = True
        except _bpf.BpfError as exc:
            self.close()
            raise PortError(f"{self.iface}: {exc}") from None
        except BaseException:
            self.close()
            raise
        fds = [self._xs.fileno(i) for i in range(self._xs.count)]
        if len(fds) == 1:
            self._wait_fd = fds[0]
        else:
            self._epoll = select.epoll()
            for fd in fds:
                self._epoll.register(fd, select.EPOLLIN)
            self._wait_fd = self._epoll.fileno()
        self._opened_at = time.monotonic()

    def close(self) -> None:
        """Detach the program (if it is still ours) and close the sockets; idempotent. Blocks."""
        errors = []
        ports, self._ports = self._ports, []
        if any(p.attached for p in ports):
            try:
                with _xdp.in_netns(self.netns), _xdp.IPRoute() as ipr:
                    for p in ports:
                        if p.attached:
                            try:
                                _xdp.detach_if(ipr, p.index, self.mode, p.prog_id)
                            except Exception as exc:           # keep closing the rest
                                errors.append(exc)
                            p.attached = False
            except Exception as exc:
                errors.append(exc)
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        self._wait_fd = -1
        if self._xs is not None:
            self._final = self._snapshot(ports, open=False)
            self._xs.close()
            self._xs = None
        for p in ports:
            for fd in (p.prog_fd, p.map_fd):
                if fd >= 0:
                    os.close(fd)
            p.prog_fd = p.map_fd = -1
        if errors:
            raise PortError(f"{self.iface}: detaching the XDP program failed: {errors[0]}")

    def __del__(self):
        if getattr(self, "_xs", None) is not None:
            warnings.warn(f"{self!r} was not closed: its XDP program stays attached until the "
                          "next start replaces it; use it through aiomb.open_stack()",
                          ResourceWarning, stacklevel=2)

    # ---- the source interface -------------------------------------------------------------

    async def receive(self, batch) -> int | None:
        """Fill ``batch`` with waiting frames; 0 after a tick without any, None once closed.

        Waits for readability of the sockets (poll semantics, no busy-polling), at most one
        tick, so that live time advances.
        """
        import trio

        xs = self._xs
        if xs is None or self._stopping:
            return None
        n = xs.receive(batch, time.time_ns(), _mono_to_real())
        if n:
            await trio.lowlevel.checkpoint()
            return n
        xs.service()
        with trio.move_on_after(self.tick):
            await trio.lowlevel.wait_readable(self._wait_fd)
        if self._xs is None or self._stopping:
            return None
        return xs.receive(batch, time.time_ns(), _mono_to_real())

    def read(self, batch, timeout: float | None = None) -> int | None:
        """``receive()`` for a synchronous program: waits at most ``timeout`` seconds (default one
        tick) for frames; 0 when none came, None once stopped or closed. Blocks."""
        xs = self._xs
        if xs is None or self._stopping:
            return None
        n = xs.receive(batch, time.time_ns(), _mono_to_real())
        if n:
            return n
        xs.service()
        wait = select.poll()
        wait.register(self._wait_fd, select.POLLIN)
        wait.poll(1000 * (self.tick if timeout is None else max(timeout, 0.0)))
        if self._xs is None or self._stopping:
            return None
        return xs.receive(batch, time.time_ns(), _mono_to_real())

    def wait_fds(self) -> list[int]:
        """The descriptors that turn readable when frames arrive (to wait on them in an outer
        event loop)."""
        return [self._wait_fd] if self._wait_fd >= 0 else []

    def stop(self) -> None:
        """End the input: the next receive returns None, so the stack ends every open flow
        (reason ``end_of_capture``) and its subscriptions finish. The port stays open (and
        attached) until the stack closes it. Does not block."""
        self._stopping = True

    def apply(self, batch) -> None:
        """Give the batch's frames back (passive), or forward those not dropped (inline)."""
        if self._xs is not None:
            self._xs.apply(batch)

    def now(self) -> float:
        """The clock packets are stamped with (seconds since the epoch)."""
        return time.time()

    def progress(self) -> tuple[int, int]:
        """(frames received, 0): a live port has no known end."""
        st = self.statistics()
        return (st.received, 0)

    # ---- statistics -----------------------------------------------------------------------

    def _snapshot(self, ports, *, open: bool) -> PortStatistics:
        xs = self._xs
        queues = []
        for p in ports:
            for q, sock in zip(p.queues, p.sockets):
                c = xs.counters(sock)
                queues.append(QueueStatistics(
                    interface=p.ifname, queue=q, received=c["received"],
                    received_bytes=c["received_bytes"],
                    ring_drops=c["rx_dropped"] + c["rx_ring_full"],
                    fill_ring_empty=c["rx_fill_ring_empty"], forwarded=c["forwarded"],
                    dropped_by_verdict=c["dropped_by_verdict"],
                    tx_dropped=c["tx_ring_full"] + c["tx_errors"] + c["tx_invalid_descs"]))
        total = {f: sum(getattr(q, f) for q in queues) for f in (
            "received", "received_bytes", "ring_drops", "fill_ring_empty", "forwarded",
            "dropped_by_verdict", "tx_dropped")}
        return PortStatistics(interfaces=tuple(p.ifname for p in ports), mode=self.mode,
                              zerocopy=bool(xs.zerocopy), inline=self.inline is not None,
                              open=open, queues=tuple(queues), **total)

    def statistics(self) -> PortStatistics:
        """A :class:`PortStatistics` snapshot (the last one taken at close, once closed)."""
        if self._xs is None:
            final = getattr(self, "_final", None)
            if final is not None:
                return final
            return PortStatistics(interfaces=(self.iface,) + ((self.inline,) if self.inline else ()),
                                  mode=self.mode, zerocopy=False, inline=self.inline is not None,
                                  open=False, received=0, received_bytes=0, ring_drops=0,
                                  fill_ring_empty=0, forwarded=0, dropped_by_verdict=0,
                                  tx_dropped=0, queues=())
        return self._snapshot(self._ports, open=True)


def _mono_to_real() -> int:
    """ns to add to CLOCK_MONOTONIC (the XDP program's stamps) to get the epoch clock."""
    return time.time_ns() - time.monotonic_ns()


def _bind_hint(exc: OSError) -> str:
    if exc.errno == errno.EBUSY:
        return "; another AF_XDP socket is bound to that queue (is another aiomb running on it?)"
    if exc.errno == errno.EOPNOTSUPP:
        return "; the driver refuses zero-copy here: pass zerocopy=None or False"
    return ""


def port(iface: str, *, queues=None, mode: str = "skb", inline: str | None = None,
         frame_size: int = 2048, frames: int = 4096, force: bool = False,
         zerocopy: bool | None = None, netns: str | None = None, prefilter=None) -> Port:
    """A live interface as a packet source for :func:`aiomb.open_stack` (AF_XDP; root needed).

    ``queues``: the RX queues to read (default: all); one socket each, one UMEM of ``frames``
    frames of ``frame_size`` bytes shared by all. ``mode``: "skb" (generic XDP, works on any
    interface) or "native" (the driver's XDP; zero-copy when the driver supports it, copy
    otherwise; ``zerocopy=True`` requires it). ``inline``: a second interface; frames received
    on either are sent out of the other unless a handler drops them. ``force``: replace an XDP
    program that is not aiomb's (otherwise refused with PortError). ``netns``: the network
    namespace the interfaces are in (a name from `ip netns list`, or a path); default: this
    process's. ``prefilter``: an :class:`aiomb.io.Prefilter` (or a dict of its fields) run in
    the kernel: the frames it rejects never reach aiomb (passive: they go on to the kernel;
    inline: they are forwarded by the kernel to the other interface). Errors are raised when
    the stack opens the port.
    """
    return Port(iface, queues=queues, mode=mode, inline=inline, frame_size=frame_size,
                frames=frames, force=force, zerocopy=zerocopy, netns=netns, prefilter=prefilter)
