"""A throw-away network lab for the AF_XDP tests: namespaces, veth pairs, taps, peer processes.

Every name is unique to the test process and run (interface names stay within 15 characters),
and ``Lab.close()`` removes everything it made, in reverse order, even after a failure. Traffic
only ever flows between namespaces the lab created.
"""

import itertools
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peer.py")
_seq = itertools.count(1)


def sh(*argv, check=True, netns=None, timeout=30) -> subprocess.CompletedProcess:
    """Run a command (in ``netns`` if given); returns the completed process."""
    argv = [str(a) for a in argv]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class Lab:
    """Namespaces and links for one test; use as a context manager (or call close())."""

    def __init__(self, tag: str = "t"):
        n = next(_seq)
        self.tag = f"{tag}{os.getpid() % 10000:04d}{n:02d}"[:11]
        self.namespaces: list[str] = []
        self.links: list[str] = []          # root-namespace interfaces to delete
        self.procs: list[subprocess.Popen] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def name(self, suffix: str) -> str:
        """An interface or namespace name unique to this lab."""
        return f"{self.tag}{suffix}"

    def netns(self, suffix: str, *, ipv6: bool = False) -> str:
        """Create a namespace with loopback up and IPv6 off (no stray ND traffic) unless ``ipv6``."""
        name = "aiomb-" + self.name(suffix)
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "link", "set", "lo", "up", netns=name)
        if not ipv6:
            sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
               netns=name)
        return name

    def veth(self, a: str, b: str, *, a_ns=None, b_ns=None, queues: int = 1) -> tuple[str, str]:
        """A veth pair a<->b (each end in a namespace or the root one), up, offloads off.

        TSO/GSO/GRO and checksum offload are off so that every frame is a real, fully
        checksummed, MTU-sized frame (what a wire carries; AF_XDP sees no offload metadata).
        """
        a, b = self.name(a), self.name(b)
        q = ["numtxqueues", queues, "numrxqueues", queues] if queues > 1 else []
        sh("ip", "link", "add", a, *q, "type", "veth", "peer", "name", b, *q)
        if a_ns is None or b_ns is None:
            self.links.append(a if a_ns is None else b)
        for end, ns in ((a, a_ns), (b, b_ns)):
            if ns is not None:
                sh("ip", "link", "set", end, "netns", ns)
            else:
                sh("sysctl", "-qw", f"net.ipv6.conf.{end}.disable_ipv6=1")
            sh("ethtool", "-K", end, "tso", "off", "gso", "off", "gro", "off", "tx", "off", "rx", "off",
               netns=ns)
            sh("ip", "link", "set", end, "up", netns=ns)
        return a, b

    def address(self, ns: str, dev: str, cidr: str) -> None:
        extra = ["nodad"] if ":" in cidr else []        # usable at once, no duplicate detection
        sh("ip", "addr", "add", cidr, "dev", dev, *extra, netns=ns)

    def neighbour(self, ns: str, dev: str, ip: str, mac: str) -> None:
        """A permanent neighbour entry: no ARP on the link (exact frame counts)."""
        sh("ip", "neigh", "replace", ip, "lladdr", mac, "dev", dev, "nud", "permanent", netns=ns)

    def mac(self, dev: str, ns=None) -> str:
        return json.loads(sh("ip", "-j", "link", "show", dev, netns=ns).stdout)[0]["address"]

    def counters(self, dev: str, ns=None) -> dict:
        """The interface's packet and byte counters (``ip -s``)."""
        info = json.loads(sh("ip", "-j", "-s", "link", "show", dev, netns=ns).stdout)[0]["stats64"]
        return {"rx_packets": info["rx"]["packets"], "rx_bytes": info["rx"]["bytes"],
                "tx_packets": info["tx"]["packets"], "tx_bytes": info["tx"]["bytes"],
                "rx_dropped": info["rx"]["dropped"], "tx_dropped": info["tx"]["dropped"]}

    def mirror(self, ns, dev: str, to: str) -> None:
        """Mirror every frame in and out of ``dev`` to ``to`` (a tc clsact tap)."""
        sh("tc", "qdisc", "add", "dev", dev, "clsact", netns=ns)
        for direction in ("ingress", "egress"):
            sh("tc", "filter", "add", "dev", dev, direction, "protocol", "all", "u32", "match", "u32",
               "0", "0", "action", "mirred", "egress", "mirror", "dev", to, netns=ns)

    def pair(self, left_cidr="10.201.0.1/24", right_cidr="10.201.0.2/24"):
        """Two namespaces joined by a veth pair, addressed, with static neighbours."""
        left, right = self.netns("l"), self.netns("r")
        a, b = self.veth("a", "b", a_ns=left, b_ns=right)
        self.address(left, a, left_cidr)
        self.address(right, b, right_cidr)
        self.neighbour(left, a, right_cidr.split("/")[0], self.mac(b, right))
        self.neighbour(right, b, left_cidr.split("/")[0], self.mac(a, left))
        return left, a, right, b

    def tapped_pair(self, left_cidr, right_cidr, *, mon_ns=None, queues: int = 1):
        """A :meth:`pair` whose left end is mirrored to a monitor veth (the tap aiomb watches).

        Returns (left ns, a, right ns, b, monitor device); the monitor end is in ``mon_ns``
        (None: the root namespace).
        """
        left, a, right, b = self.pair(left_cidr, right_cidr)
        m, mon = self.veth("m", "n", a_ns=left, b_ns=mon_ns, queues=queues)
        self.mirror(left, a, m)
        return left, a, right, b, mon

    def inline_path(self, client_cidr, server_cidr):
        """client ns <-> [x | middle ns | y] <-> server ns: two veth pairs through a middle
        namespace (where an inline port joins x and y), addressed, static neighbours (no ARP).

        Returns (client ns, middle ns, server ns, c, x, y, s).
        """
        client_ns, mid, server_ns = self.netns("c"), self.netns("m"), self.netns("s")
        c, x = self.veth("c", "x", a_ns=client_ns, b_ns=mid)
        y, s = self.veth("y", "s", a_ns=mid, b_ns=server_ns)
        self.address(client_ns, c, client_cidr)
        self.address(server_ns, s, server_cidr)
        self.neighbour(client_ns, c, server_cidr.split("/")[0], self.mac(s, server_ns))
        self.neighbour(server_ns, s, client_cidr.split("/")[0], self.mac(c, client_ns))
        return client_ns, mid, server_ns, c, x, y, s

    def peer(self, ns: str, *args) -> subprocess.Popen:
        """Start tests/xdp/peer.py in ``ns``; killed at close()."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PEER, *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def server(self, ns: str, ip: str, port: int, *extra) -> subprocess.Popen:
        """A TCP transfer server (see peer.py) that is listening when this returns."""
        proc = self.peer(ns, "server", ip, port, *extra)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"server did not start: {line!r} {proc.stderr.read()}")
        return proc

    def spawn(self, argv, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, **kw)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for link in reversed(self.links):
            sh("ip", "link", "del", link, check=False)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.procs, self.links, self.namespaces = [], [], []


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    """Poll ``predicate`` (blocking) until it is true; raises AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def attached(ns, dev):
    """The name of the XDP program attached to ``dev`` in namespace ``ns`` (None: none)."""
    from pyroute2 import IPRoute

    from aiomb.io import _xdp

    with IPRoute(netns=ns) as ipr:
        return _xdp.query(ipr, ipr.link_lookup(ifname=dev)[0]).name
