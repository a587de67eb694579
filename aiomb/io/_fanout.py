"""A live interface's frames spread over N workers, both directions of a flow to one of them.

Layer: io. An AF_XDP socket receives only the frames of the RX queue it is bound to, and an XDP
program cannot move a frame to another queue; NICs' receive-side scaling is rarely symmetric
(the two directions of a connection land on different queues). So the workers do not read the
interface's queues: :class:`Fanout` makes one veth pair per worker and attaches aiomb's
steering program (``aiomb_steer``) to the interface. It hashes each frame's IP address pair,
the same for both directions, and redirects the frame into worker k's veth
(``bpf_redirect_map`` on a DEVMAP); worker k reads the far end with its own port (AF_XDP,
native XDP on the veth, :func:`worker_port`). Every packet between two hosts, fragments
included, reaches one worker; frames that are not IP go to worker 0. Passive only.

The veth pairs are named ``amb<pid>-<k>a``/``b`` (hex) after the process that made them;
closing detaches the program and deletes them. A run killed before it could close leaves them
(and its program, which then sends every frame into veths nobody reads): the next Fanout on
the interface replaces the program and deletes the pairs of makers that are gone. The veths
take the interface's MTU, and native XDP on a veth takes about 3500 bytes at most: an interface
with jumbo frames is refused when the pairs are made, with the fix.
"""

import os
import re
import time

from .._errors import PortError
from . import _bpf, _xdp

VETH_NAME = re.compile(r"^amb([0-9a-f]+)-([0-9a-f]+)[ab]$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Fanout:
    """Steering of ``iface``'s frames to ``workers`` veth pairs (see the module's text).

    ``open()`` makes the pairs and loads the program (a worker opens its port on
    ``worker_ifaces[k]`` then); ``attach()`` starts the steering; ``detach()`` stops it (frames
    go to the kernel again); ``close()`` also deletes the pairs. ``mode``, ``netns``, ``force``
    and ``prefilter`` are :func:`aiomb.port`'s. Blocking (netlink, bpf(2)).
    """

    def __init__(self, iface: str, workers: int, *, mode: str = "skb", netns: str | None = None,
                 force: bool = False, prefilter=None):
        if not isinstance(workers, int) or not 2 <= workers <= 1024:
            raise ValueError(f"workers must be an int from 2 to 1024, got {workers!r}")
        if mode not in _xdp.MODES:
            raise ValueError(f"mode must be 'skb' or 'native', got {mode!r}")
        self.iface = iface
        self.workers = workers
        self.mode = mode
        self.netns = netns
        self.force = force
        self.prefilter = prefilter
        tag = f"amb{os.getpid():x}"
        self.pairs = [(f"{tag}-{k:x}a", f"{tag}-{k:x}b") for k in range(workers)]
        self._index = 0
        self._made: list[str] = []
        self._prog_fd = self._map_fd = -1
        self._prog_id = 0
        self._attached = False

    @property
    def worker_ifaces(self) -> list[str]:
        """The interface each worker reads (in ``netns``)."""
        return [b for _, b in self.pairs]

    def open(self) -> None:
        """Make the veth pairs (up, with the interface's MTU) and load the steering program."""
        try:
            with _xdp.in_netns(self.netns), _xdp.IPRoute() as ipr:
                self._index = _xdp.ifindex(ipr, self.iface)
                mtu = ipr.get_links(self._index)[0].get_attr("IFLA_MTU")
                self._remove_stale(ipr)
                ends = []
                for a, b in self.pairs:
                    ipr.link("add", ifname=a, kind="veth", peer=b)
                    self._made.append(a)
                    ends += [a, b]
                for name in ends:
                    ipr.link("set", index=_xdp.ifindex(ipr, name), mtu=mtu, state="up")
                self._check_mtu(ipr, mtu)
                self._map_fd = _bpf.map_create(_bpf.BPF_MAP_TYPE_DEVMAP, 4, 4, self.workers, name="aiomb_workers")
                for k, (a, _) in enumerate(self.pairs):      # ifindexes of this namespace
                    _bpf.map_update(self._map_fd, k.to_bytes(4, "little"), _xdp.ifindex(ipr, a).to_bytes(4, "little"))
            self._prog_fd = _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP,
                                           _bpf.steering_program(self._map_fd, self.workers, self.prefilter),
                                           name=_bpf.STEER_NAME)
            self._prog_id = _bpf.obj_info(self._prog_fd)[0]
        except _bpf.BpfError as exc:
            self.close()
            raise PortError(f"{self.iface}: {exc}") from None
        except _xdp.NetlinkError as exc:
            self.close()
            raise PortError(f"{self.iface}: making the workers' veth pairs failed: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _check_mtu(self, ipr, mtu: int) -> None:
        """Attach a do-nothing program natively to a worker's veth, as its port will: a veth
        refuses native XDP above about 3500 bytes of MTU (4 KiB pages), so jumbo frames are
        refused here, with the fix, rather than in every worker."""
        prog = _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP, _bpf.Asm().mov(0, imm=_bpf.XDP_PASS).exit().code(),
                              name="aiomb_probe")
        index = _xdp.ifindex(ipr, self.pairs[0][1])
        try:
            _xdp.attach(ipr, index, prog, "native", ifname=self.pairs[0][1])
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
            m = VETH_NAME.match(link.get_attr("IFLA_IFNAME") or "")
            if m and link.get_attr("IFLA_IFNAME").endswith("a") and not _alive(int(m.group(1), 16)):
                try:
                    ipr.link("del", index=link["index"])
                except _xdp.NetlinkError:
                    pass

    def attach(self) -> None:
        """Start steering: attach the program to the interface (a stale one of aiomb's is
        replaced; anyone else's only with ``force``)."""
        with _xdp.in_netns(self.netns), _xdp.IPRoute() as ipr:
            _xdp.clear(ipr, self._index, ifname=self.iface, force=self.force)
            _xdp.attach(ipr, self._index, self._prog_fd, self.mode, ifname=self.iface)
        self._attached = True

    def attach_when_ready(self, gone, timeout: float) -> bool:
        """Start steering once every worker's port is open (aiomb's program on its veth); False,
        attaching nothing, once ``gone()`` says a worker ended first or ``timeout`` seconds
        passed."""
        deadline = time.monotonic() + timeout
        with _xdp.in_netns(self.netns), _xdp.IPRoute() as ipr:
            ends = [_xdp.ifindex(ipr, name) for name in self.worker_ifaces]
            while any(_xdp.query(ipr, i).name != _bpf.PROGRAM_NAME for i in ends):
                if time.monotonic() > deadline or gone():
                    return False
                time.sleep(0.02)
        self.attach()
        return True

    def detach(self) -> None:
        """Stop steering (if the program is still ours); idempotent."""
        if self._attached:
            self._attached = False
            with _xdp.in_netns(self.netns), _xdp.IPRoute() as ipr:
                _xdp.detach_if(ipr, self._index, self.mode, self._prog_id)

    def close(self) -> None:
        """Detach, delete the veth pairs, close the program and map; idempotent."""
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
            for fd in (self._prog_fd, self._map_fd):
                if fd >= 0:
                    os.close(fd)
            self._prog_fd = self._map_fd = -1
