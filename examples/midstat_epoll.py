"""midstat as an epoll loop: a table of the live connections, with both sides' TCP states,
every second of stack time (mOS's midstat, 325 lines of C; compare examples/midstat.py, the
same program as Trio coroutines).

    aiomb run examples/midstat_epoll.py --pcap examples/captures/demo.pcapng
    aiomb run examples/midstat_epoll.py --iface MIRROR_PORT          # live (root), until Ctrl-C
"""

import select
import sys

import aiomb


def print_table(now: float, flows, out) -> None:
    """The table midstat prints: time, count, then one row per live connection."""
    out.write(f"[{now:.3f}] {len(flows)} connection(s)\n")
    for flow in sorted(flows, key=lambda f: f.id):
        out.write(f"  #{flow.id:<4} {flow.key!s:<52} {flow.client_state.name:<12} {flow.server_state.name}\n")


def main(source, out=sys.stdout) -> None:
    """Accept every TCP flow (no bytes kept: states only), drop it at its hang-up, and print the
    table each time the one-second timer fires."""
    with aiomb.monitor(source, sides="none") as mon, aiomb.epoll() as ep:
        tick = mon.timer(1.0, interval=1.0)
        ep.register(mon, select.EPOLLIN)
        ep.register(tick, select.EPOLLIN)
        live = {}
        while True:
            ready = ep.poll()
            if not ready:
                break                                   # the capture is over
            # connections first (new ones, then those that ended), the clock last: the table
            # shows the stack as it is at the tick
            ready.sort(key=lambda e: (e[0] == tick.fileno(), e[0] != mon.fileno()))
            for fd, mask in ready:
                if fd == mon.fileno():
                    while True:
                        try:
                            sock = mon.accept()
                        except BlockingIOError:
                            break
                        if sock.end_reason is not None:     # over before we looked (as an accept
                            sock.close()                    # that reads EOF at once)
                            continue
                        live[sock.fileno()] = sock
                        ep.register(sock, 0)            # EPOLLHUP is reported whatever the mask
                    if mask & select.EPOLLHUP:
                        ep.unregister(mon)
                elif fd == tick.fileno():
                    tick.read()
                    print_table(mon.time(), [s.flow for s in live.values()], out)
                else:
                    ep.unregister(fd)
                    live.pop(fd).close()
        print_table(mon.time(), [s.flow for s in live.values()], out)


if __name__ == "__main__":
    from aiomb.cli import main as cli

    sys.exit(cli(["run", __file__, *sys.argv[1:]]))
