"""A live interface's frames spread over N workers, both directions of a flow to one of them.

Layer: io. An AF_XDP socket receives only the frames of the RX queue it is bound to, and an XDP
program cannot move a frame to another queue; NICs' receive-side scaling is rarely symmetric
(the two directions of a connection land on different queues). So the workers do not read the
interface's queues: :class:`Fanout` makes one veth pair per worker and attaches aiomb's
steering program (``aiomb_steer``) to the interface. It hashes each frame's IP address pair,
the same for both directions, and redirects the frame into worker k's veth
(``bpf_redirect_map`` on a DEVMAP); worker k reads the far end with its own port (AF_XDP,
native XDP on the veth, :meth:`Fanout.worker_port`). Every packet between two hosts, fragments
included, reaches one worker, and an ICMP error the worker of the flow it quotes; frames that
are not IP go to worker 0.

A flow bound to an outer tuple (``Flow.translate``: a NAT) gets replies whose address pair is
not the flow's: the worker's port gives its engines a translation hook (:class:`Steering`) that
puts each binding's outer reply tuple in a map the steering programs share, naming the worker;
once the first binding is made, the programs look each TCP/UDP packet up there first (not
fragments: they go by the address pair, see README "Inline workers").

Inline (``inline=IF2``): each worker has a second pair, fed by the same steering on IF2, and
its port joins its two far ends inline. What it sends out of one far end comes out of the near
end, where a forwarding program (``aiomb_fwd``: ``bpf_redirect``) sends it on out of the other
interface: a frame from IF leaves by IF2 and back, unless the worker's handlers dropped it.

The veth pairs are named ``amb<pid>-<k>a``/``b`` (and ``c``/``d`` inline; hex) after the process
that made them; closing detaches the programs and deletes them. If that process is killed
before it could close, its workers (sent SIGTERM as it dies) each stop the steering and delete
their own pairs (:meth:`Fanout.release`); what a worker killed too leaves (and the program,
which then sends every frame into veths nobody reads), the next Fanout on the interface
replaces (the program) and deletes (the pairs of makers that are gone). The veths take the
interface's MTU, and native XDP on a veth takes about 3500 bytes at most: an interface with
jumbo frames is refused when the pairs are made, with the fix.
"""

import errno
import os
import re
import time

from .._errors import PortError
from . import _bpf, _xdp

VETH_NAME = re.compile(r"^amb([0-9a-f]+)-([0-9a-f]+)[abcd]$")
FORWARD_NAME = "aiomb_fwd"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Side:
    """One interface the workers take frames from: its veth pairs, steering map and program."""

    def __init__(self, iface: str, pairs: list):
        self.iface = iface
        self.pairs = pairs              # (near end, the worker's end) per worker
        self.index = 0
        self.map_fd = self.prog_fd = -1
        self.prog_id = 0
        self.attached = False


class Steering:
    """A steered worker's translation hook (``Engine.translation_hook``, given by its port):
    each binding its engine makes puts the flow's outer reply tuple in the steering programs'
    bindings map with the worker's index, so that the replies reach this worker whatever their
    address pair; the binding's end takes it out (unless another worker's binding has it by
    then). Called once per binding and once per end, never per packet; blocks for the bpf(2)
    call. A full map (``_bpf.MAX_BINDINGS``) raises PortError from ``translate()``.
    """

    def __init__(self, bindings: tuple[int, int], index: int):
        self.table, self.switch = bindings
        self.value = index.to_bytes(4, "little")
        self.on = False

    def __call__(self, bound: bool, protocol: int, source, destination) -> None:
        key = _bpf.binding_key(protocol, source, destination)
        if not bound:
            if _bpf.map_lookup(self.table, key, 4) == self.value:
                try:
                    _bpf.map_delete(self.table, key)
                except _bpf.BpfError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
            return
        try:
            _bpf.map_update(self.table, key, self.value)
        except _bpf.BpfError as exc:
            if exc.errno != errno.E2BIG:
                raise
            raise PortError(f"the workers' map of translated flows is full ({_bpf.MAX_BINDINGS} bindings at once): "
                            "this flow's replies cannot be steered to its worker; end flows sooner (shorter "
                            "timeouts) or run fewer translated flows at once") from None
        if not self.on:
            _bpf.bindings_switch_on(self.switch)
            self.on = True


class Fanout:
    """Steering of ``iface``'s frames (and ``inline``'s) to ``workers`` veth pairs (see the
    module's text).

    ``open()`` makes the pairs and loads the programs (a worker opens :meth:`worker_port` then);
    ``attach()`` starts the steering; ``detach()`` stops it (frames go to the kernel again);
    ``close()`` also deletes the pairs. ``mode``, ``netns``, ``force`` and ``prefilter`` are
    :func:`aiomb.port`'s (inline, the frames the pre-filter rejects go straight out of the
    other interface). Blocking (netlink, bpf(2)).
    """

    def __init__(self, iface: str, workers: int, *, inline: str | None = None, mode: str = "skb",
                 netns: str | None = None, force: bool = False, prefilter=None):
        if not isinstance(workers, int) or not 2 <= workers <= 1024:
            raise ValueError(f"workers must be an int from 2 to 1024, got {workers!r}")
        if mode not in _xdp.MODES:
            raise ValueError(f"mode must be 'skb' or 'native', got {mode!r}")
        if inline == iface:
            raise ValueError(f"inline must be another interface than {iface!r}")
        self.iface = iface
        self.inline = inline
        self.workers = workers
        self.mode = mode
        self.netns = netns
        self.force = force
        self.prefilter = prefilter
        tag = f"amb{os.getpid():x}"
        self.sides = [_Side(name, [(f"{tag}-{k:x}{near}", f"{tag}-{k:x}{far}") for k in range(workers)])
                      for name, (near, far) in zip((iface, inline), ("ab", "cd")) if name is not None]
        self._made: list[str] = []
        self._forwards: list[int] = []          # the forwarding programs (inline)
        self.bindings: tuple[int, int] | None = None    # translated flows' replies -> worker, and its switch

    def worker_port(self, index: int, **options):
        """Worker ``index``'s port (not opened): its veth's far end, joined inline to its second
        one's if the Fanout is inline. ``options``: :func:`aiomb.port`'s ``frame_size``,
        ``frames``, ``tick``."""
        from ._port import Port

        ends = [side.pairs[index][1] for side in self.sides]
        port = Port(ends[0], inline=ends[1] if self.inline else None, mode="native", netns=self.netns, **options)
        port.translation_hook = Steering(self.bindings, index)
        return port

    def open(self) -> None:
        """Make the pairs (up, with the interface's MTU) and load the programs."""
        try:
            with _xdp.in_netns(self.netns), _xdp.IPRoute() as ipr:
                for side in self.sides:
                    side.index = _xdp.ifindex(ipr, side.iface)
                mtu = ipr.get_links(self.sides[0].index)[0].get_attr("IFLA_MTU")
                self._remove_stale(ipr)
                for side in self.sides:
                    ends = []
                    for a, b in side.pairs:
                        ipr.link("add", ifname=a, kind="veth", peer=b)
                        self._made.append(a)
                        ends += [a, b]
                    for name in ends:
                        ipr.link("set", index=_xdp.ifindex(ipr, name), mtu=mtu, state="up")
                self._check_mtu(ipr, mtu)
                for side in self.sides:
                    side.map_fd = _bpf.map_create(_bpf.BPF_MAP_TYPE_DEVMAP, 4, 4, self.workers, name="aiomb_workers")
                    for k, (a, _) in enumerate(side.pairs):      # ifindexes of this namespace
                        _bpf.map_update(side.map_fd, k.to_bytes(4, "little"),
                                        _xdp.ifindex(ipr, a).to_bytes(4, "little"))
                if self.inline:
                    self._forward(ipr)
            self.bindings = _bpf.bindings_create()
            for side in self.sides:
                other = [o for o in self.sides if o is not side]
                side.prog_fd = _bpf.prog_load(
                    _bpf.BPF_PROG_TYPE_XDP,
                    _bpf.steering_program(side.map_fd, self.workers, self.prefilter,
                                          bypass_ifindex=other[0].index if other else 0, bindings=self.bindings),
                    name=_bpf.STEER_NAME)
                side.prog_id = _bpf.obj_info(side.prog_fd)[0]
        except _bpf.BpfError as exc:
            self.close()
            raise PortError(f"{self.iface}: {exc}") from None
        except _xdp.NetlinkError as exc:
            self.close()
            raise PortError(f"{self.iface}: making the workers' veth pairs failed: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _forward(self, ipr) -> None:
        """On each near end, the program that sends what comes out of it on out of its side's
        interface: a frame that came in by IF went into the worker's first pair, the worker sent
        it out of its second pair's far end, and it comes out of that pair's near end: out of
        IF2 (and back)."""
        for side in self.sides:
            prog = _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP, _bpf.forward_program(side.index), name=FORWARD_NAME)
            self._forwards.append(prog)
            for near, _ in side.pairs:
                _xdp.attach(ipr, _xdp.ifindex(ipr, near), prog, "native", ifname=near)

    def _check_mtu(self, ipr, mtu: int) -> None:
        """Attach a do-nothing program natively to a worker's veth, as its port will: a veth
        refuses native XDP above about 3500 bytes of MTU (4 KiB pages), so jumbo frames are
        refused here, with the fix, rather than in every worker."""
        prog = _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP, _bpf.Asm().mov(0, imm=_bpf.XDP_PASS).exit().code(),
                              name="aiomb_probe")
        far = self.sides[0].pairs[0][1]
        index = _xdp.ifindex(ipr, far)
        try:
            _xdp.attach(ipr, index, prog, "native", ifname=far)
            _xdp.detach(ipr, index, "native")
        except PortError:
            raise PortError(f"{self.iface}: its MTU ({mtu}) is more than native XDP on a veth takes (about "
                            "3500 bytes with 4 KiB pages), and the workers read their frames through veth "
                            "pairs: lower the MTU to use --workers, or run one engine") from None
        finally:
            os.close(prog)

    def _remove_stale(self, ipr) -> None:
        """Delete the veth pairs of earlier runs whose process is gone."""
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME") or ""
            m = VETH_NAME.match(name)
            if m and name[-1] in "ac" and not _alive(int(m.group(1), 16)):
                try:
                    ipr.link("del", index=link["index"])
                except _xdp.NetlinkError:
                    pass

    def attach(self) -> None:
        """Start steering: attach the program to each interface (a stale one of aiomb's is
        replaced; anyone else's only with ``force``)."""
        with _xdp.in_netns(self.netns), _xdp.IPRoute() as ipr:
            for side in self.sides:
                _xdp.clear(ipr, side.index, ifname=side.iface, force=self.force)
                _xdp.attach(ipr, side.index, side.prog_fd, self.mode, ifname=side.iface)
                side.attached = True

    def attach_when_ready(self, gone, timeout: float) -> bool:
        """Start steering once every worker's port is open (aiomb's program on its veths); False,
        attaching nothing, once ``gone()`` says a worker ended first or ``timeout`` seconds
        passed."""
        deadline = time.monotonic() + timeout
        with _xdp.in_netns(self.netns), _xdp.IPRoute() as ipr:
            ends = [_xdp.ifindex(ipr, far) for side in self.sides for _, far in side.pairs]
            while any(_xdp.query(ipr, i).name != _bpf.PROGRAM_NAME for i in ends):
                if time.monotonic() > deadline or gone():
                    return False
                time.sleep(0.02)
        self.attach()
        return True

    def detach(self) -> None:
        """Stop steering (where the program is still ours); idempotent."""
        attached = [side for side in self.sides if side.attached]
        if attached:
            with _xdp.in_netns(self.netns), _xdp.IPRoute() as ipr:
                for side in attached:
                    side.attached = False
                    _xdp.detach_if(ipr, side.index, self.mode, side.prog_id)

    def release(self, index: int) -> None:
        """In worker ``index``, once the process that made the Fanout died without closing it
        (SIGKILL): what its close() would have done for this worker. Stop the steering (where
        the program is still ours: the first worker to come does it) and delete the worker's
        veth pairs."""
        with _xdp.in_netns(self.netns), _xdp.IPRoute() as ipr:
            for side in self.sides:
                _xdp.detach_if(ipr, side.index, self.mode, side.prog_id)
                try:
                    ipr.link("del", index=_xdp.ifindex(ipr, side.pairs[index][0]))
                except (PortError, _xdp.NetlinkError):
                    pass            # gone already

    def close(self) -> None:
        """Detach, delete the veth pairs, close the programs and maps; idempotent."""
        try:
            self.detach()
        finally:
            made, self._made = self._made, []
            if made:
                with _xdp.in_netns(self.netns), _xdp.IPRoute() as ipr:
                    for name in made:
                        try:
                            ipr.link("del", index=_xdp.ifindex(ipr, name))
                        except (PortError, _xdp.NetlinkError):
                            pass            # gone already
            for side in self.sides:
                for fd in (side.prog_fd, side.map_fd):
                    if fd >= 0:
                        os.close(fd)
                side.prog_fd = side.map_fd = -1
            for fd in self._forwards:
                os.close(fd)
            self._forwards = []
            for fd in self.bindings or ():
                os.close(fd)
            self.bindings = None
