"""AF_XDP receive and inline forwarding rates: aiomb next to a C receiver on libxdp, same run.

    python bench/xdp_bench.py [--seconds 3] [--sizes 60,1514] [--modes skb,native] [--json OUT]

Root needed. Each row floods one veth end from a sender in its own namespace: an XDP program
returning XDP_TX, run with BPF_PROG_TEST_RUN and BPF_F_TEST_XDP_LIVE_FRAMES (the kernel sends
the frame `repeat` times, as fast as it can), pinned to CPU 1. On a veth the receive work of
the kernel (NAPI, the XDP program, the copy into the UMEM) runs on the sender's core, so the
receivers run pinned to CPU 0 and only drain their rings. Rows:

* ``libxdp``: bench/xsk_rx.c (Debian's libxdp-dev), one copy-mode socket, poll() with a 100 ms
  timeout, behind aiomb's XDP program (attached by this harness);
* ``aiomb rings``: aiomb's XskSet receive/apply loop without the engine (select() wait);
* ``aiomb stack``: ``aiomb.open_stack(aiomb.port(...))``: rings, engine (parse, flow lookup,
  statistics) and the Trio pump; every frame is one UDP flow's datagram;
* ``inline``: ``aiomb.port(x, inline=y)`` forwarding to a sink namespace (frames counted at the
  sink), next to a Linux bridge doing the same forwarding in the kernel.

Frame sizes exclude the FCS: 60 bytes is a minimum-size (64-byte) Ethernet frame. Rates are
frames received (or arrived at the sink) per second of sending. The sender's offered rate is
printed too: a receiver cannot exceed it, and what it does not take is dropped by the veth ring
or the XSK ring (the kernel counts those, not the receivers).
"""

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from aiomb.io import _bpf, _xdp  # noqa: E402
from aiomb.testing import udp_frame  # noqa: E402

SENDER_CPU, RECEIVER_CPU = 1, 0
TAG = f"xb{os.getpid() % 10000:04d}"


def sh(*argv, netns=None, check=True):
    argv = [str(a) for a in argv]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    p = subprocess.run(argv, capture_output=True, text=True)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p


class Lab:
    """Namespaces and veth pairs for one row; removed by close()."""

    def __init__(self):
        self.namespaces = []

    def netns(self, name):
        ns = f"{TAG}{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "link", "set", "lo", "up", netns=ns)
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1", netns=ns)
        return ns

    def veth(self, a, a_ns, b, b_ns):
        a, b = f"{TAG}{a}", f"{TAG}{b}"
        sh("ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns)
        for dev, ns in ((a, a_ns), (b, b_ns)):
            sh("ip", "link", "set", dev, "up", netns=ns)
        return a, b

    def close(self):
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)


def ifindex(ns, dev):
    return json.loads(sh("ip", "-j", "link", "show", dev, netns=ns).stdout)[0]["ifindex"]


def mac(ns, dev):
    return json.loads(sh("ip", "-j", "link", "show", dev, netns=ns).stdout)[0]["address"]


def rx_packets(ns, dev):
    return json.loads(sh("ip", "-j", "-s", "link", "show", dev, netns=ns).stdout)[0]["stats64"]["rx"]["packets"]


def make_frame(size, dst_mac):
    base = udp_frame("10.205.0.1", "10.205.0.2", 40000, 9, b"")
    frame = udp_frame("10.205.0.1", "10.205.0.2", 40000, 9, bytes(size - len(base)))
    return bytes.fromhex(dst_mac.replace(":", "")) + frame[6:]


class Sender:
    """Floods ``dev`` (in ``ns``) with ``frame`` from a pinned thread until stop()."""

    def __init__(self, ns, dev, frame):
        self.ns, self.dev, self.frame = ns, dev, frame
        self.sent = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._prog = _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP, _bpf.Asm().mov(0, imm=_bpf.XDP_TX).exit().code(),
                                    name="aiomb_bench_tx", expected_attach_type=_bpf.BPF_XDP)
        self._ctx = struct.pack("<6I", 0, len(frame), 0, ifindex(ns, dev), 0, 0)
        self.error = None

    def run(self, seconds):
        def work():
            try:
                os.sched_setaffinity(0, {SENDER_CPU})
                with _xdp.in_netns(self.ns):
                    t0 = time.monotonic()
                    while time.monotonic() - t0 < seconds:
                        _bpf.prog_test_run(self._prog, self.frame, repeat=1 << 18, ctx=self._ctx,
                                           flags=_bpf.BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=64)
                        self.sent += 1 << 18
                    self.seconds = time.monotonic() - t0
            except BaseException as exc:
                self.error = exc
        t = threading.Thread(target=work)
        t.start()
        t.join()
        os.close(self._prog)
        if self.error:
            raise self.error
        return self.seconds


def start_receiver(argv, ns, pass_fds=()):
    argv = ["ip", "netns", "exec", ns, "taskset", "-c", str(RECEIVER_CPU), *map(str, argv)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, pass_fds=pass_fds)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"receiver did not start: {line!r} {proc.stderr.read()}")
    return proc


def finish_receiver(proc, cpu_before):
    """The receiver's JSON result, plus the CPU seconds it used (user + system)."""
    time.sleep(0.2)                 # let the rings drain
    out, err = proc.communicate("", timeout=30)
    if proc.returncode:
        raise RuntimeError(f"receiver failed: {err}")
    result = json.loads(out.strip().splitlines()[-1])
    result["cpu_seconds"] = children_cpu() - cpu_before
    return result


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def receive_row(kind, mode, size, seconds, xsk_rx):
    """One receive measurement; returns (offered rate, received rate, details)."""
    lab = Lab()
    try:
        gen, rcv = lab.netns("g"), lab.netns("r")
        g0, r0 = lab.veth("g0", gen, "r0", rcv)
        if mode == "skb":
            sh("ethtool", "-K", r0, "gro", "on", netns=rcv)   # a NAPI for XDP-sent frames to arrive in
        frame = make_frame(size, mac(rcv, r0))
        cpu = children_cpu()
        if kind == "libxdp":
            prog, xsks = _bpf.load_xsk_program(1)
            with _xdp.in_netns(rcv), _xdp.IPRoute() as ipr:
                _xdp.attach(ipr, ipr.link_lookup(ifname=r0)[0], prog, mode)
            proc = start_receiver([xsk_rx, r0, 0, xsks], rcv, pass_fds=(xsks,))
        else:
            proc = start_receiver([sys.executable, __file__, "_recv", kind, r0, mode], rcv)
        sender = Sender(gen, g0, frame)
        elapsed = sender.run(seconds)
        result = finish_receiver(proc, cpu)
        if kind == "libxdp":
            os.close(prog)
            os.close(xsks)
        extra = {k: v for k, v in result.items() if k not in ("received", "bytes")}
        extra["cpu_ns_per_frame"] = round(result["cpu_seconds"] * 1e9 / max(1, result["received"]), 1)
        extra["cpu_seconds"] = round(result["cpu_seconds"], 3)
        return sender.sent / elapsed, result["received"] / elapsed, extra
    finally:
        lab.close()


def inline_row(kind, mode, size, seconds):
    lab = Lab()
    try:
        gen, mid, sink = lab.netns("g"), lab.netns("m"), lab.netns("s")
        g0, x0 = lab.veth("g0", gen, "x0", mid)
        x1, s0 = lab.veth("x1", mid, "s0", sink)
        frame = make_frame(size, mac(sink, s0))
        if kind == "bridge" or mode == "skb":
            sh("ethtool", "-K", x0, "gro", "on", netns=mid)
        if kind == "bridge":
            br = f"{TAG}br"
            sh("ip", "link", "add", br, "type", "bridge", netns=mid)
            for dev in (x0, x1):
                sh("ip", "link", "set", dev, "master", br, netns=mid)
            sh("ip", "link", "set", br, "up", netns=mid)
            proc = None
        else:
            proc = start_receiver([sys.executable, __file__, "_recv", "inline", x0, mode, x1], mid)
        before = rx_packets(sink, s0)
        cpu = children_cpu()
        sender = Sender(gen, g0, frame)
        elapsed = sender.run(seconds)
        extra = finish_receiver(proc, cpu) if proc else {}
        if extra:
            extra["cpu_seconds"] = round(extra["cpu_seconds"], 3)
        time.sleep(0.1)
        arrived = rx_packets(sink, s0) - before
        return sender.sent / elapsed, arrived / elapsed, extra
    finally:
        lab.close()


# ---- receivers (run in the receiving namespace, pinned) ------------------------------------------

def recv_rings(iface, mode):
    import select

    from aiomb._core import FrameBatch, XskSet
    with _xdp.IPRoute() as ipr:
        index = ipr.link_lookup(ifname=iface)[0]
        prog, xsks = _bpf.load_xsk_program(1)
        xs = XskSet(2048, 4096)
        xs.add(index, 0, zerocopy=None if mode == "native" else False)
        _bpf.xsk_map_set(xsks, 0, xs.fileno(0))
        xs.start()
        _xdp.attach(ipr, index, prog, mode)
        batch = FrameBatch(2048)
        print("ready", flush=True)
        fd = xs.fileno(0)
        while True:
            r, _, _ = select.select([fd, 0], [], [], 0.1)
            if 0 in r:
                break
            xs.receive(batch, 0)
            xs.apply(batch)
        received = xs.counters(0)["received"]
        drops = xs.counters(0)["rx_ring_full"] + xs.counters(0)["rx_dropped"]
        _xdp.detach(ipr, index, mode)
        xs.close()
    print(json.dumps({"received": received, "ring_drops": drops}))


def recv_stack(iface, mode, inline=None):
    import trio

    import aiomb

    async def main():
        port = aiomb.port(iface, mode=mode, inline=inline)
        async with aiomb.open_stack(port) as stack:
            stack.start()
            print("ready", flush=True)
            await trio.lowlevel.wait_readable(0)
            st = port.statistics()
            engine = stack.statistics().engine
        out = {"received": st.received, "ring_drops": st.ring_drops, "engine_packets": engine.packets,
               "batches": stack.statistics().batches}
        if inline:
            out.update(forwarded=st.forwarded, tx_dropped=st.tx_dropped)
        print(json.dumps(out))
    trio.run(main)


# ---- the table ------------------------------------------------------------------------------------

def build_xsk_rx(workdir):
    src = os.path.join(HERE, "xsk_rx.c")
    out = os.path.join(workdir, "xsk_rx")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        if not os.path.exists("/usr/include/xdp/xsk.h"):
            raise SystemExit("bench: libxdp-dev is missing: apt-get update && apt-get install -y "
                             "libxdp-dev libbpf-dev")
        subprocess.run(["gcc", "-O2", "-o", out, src, "-lxdp", "-lbpf"], check=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="sending time per row (default 3)")
    p.add_argument("--sizes", default="60,1514", help="frame sizes without FCS (default 60,1514)")
    p.add_argument("--modes", default="skb,native", help="XDP modes (default skb,native)")
    p.add_argument("--workdir", default=os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser(
        "~/.cache")), "aiomb-bench"))
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (namespaces, XDP)")
    if os.cpu_count() < 2:
        raise SystemExit("bench: needs two CPUs (sender and receiver are pinned apart)")
    for tool in ("ip", "ethtool", "taskset", "gcc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: `{tool}` is missing")
    os.makedirs(args.workdir, exist_ok=True)
    xsk_rx = build_xsk_rx(args.workdir)
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    rows = []

    def show(kind, mode, size, offered, rate, extra, ratio=None):
        r = f"{ratio:7.2f}" if ratio is not None else "       "
        print(f"{kind:<14} {mode:<7} {size:>5}  {offered / 1e6:8.3f}  {rate / 1e6:8.3f}  {r}  "
              f"{json.dumps(extra) if extra else ''}", flush=True)
        rows.append({"row": kind, "mode": mode, "size": size, "offered_pps": offered, "pps": rate, **extra})

    print("Receive: Mpps = frames the receiver took per second of sending; cpu/libxdp = the receiver "
          "process's CPU time per frame relative to libxdp's (lower is cheaper).")
    print(f"{'row':<14} {'mode':<7} {'size':>5}  {'offered':>8}  {'Mpps':>8}  {'cpu/libxdp':>7}")
    for mode in modes:
        for size in sizes:
            base = None
            for kind in ("libxdp", "rings", "stack"):
                offered, rate, extra = receive_row(kind, mode, size, args.seconds, xsk_rx)
                if kind == "libxdp":
                    base = extra["cpu_ns_per_frame"]
                show("libxdp" if kind == "libxdp" else f"aiomb {kind}", mode, size, offered, rate, extra,
                     extra["cpu_ns_per_frame"] / base if base else None)
    print("\nInline: Mpps = frames arriving at the sink per second; /bridge = relative to a Linux "
          "bridge forwarding the same flood in the kernel.")
    print(f"{'row':<14} {'mode':<7} {'size':>5}  {'offered':>8}  {'Mpps':>8}  {'/bridge':>7}")
    for size in sizes:
        offered, base, _ = inline_row("bridge", "skb", size, args.seconds)
        show("linux bridge", "-", size, offered, base, {})
        for mode in modes:
            offered, rate, extra = inline_row("aiomb", mode, size, args.seconds)
            show("aiomb inline", mode, size, offered, rate, extra, rate / base if base else None)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_recv":
        kind, iface, mode, *rest = sys.argv[2:]
        if kind == "rings":
            recv_rings(iface, mode)
        elif kind == "stack":
            recv_stack(iface, mode)
        else:
            recv_stack(iface, mode, inline=rest[0])
    else:
        main()
