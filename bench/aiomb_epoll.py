"""aiomb measurement for the benchmarks: an epoll program (monitor socket, accept loop, recv of
both sides of every connection) counting connections and bytes. The time is taken around the
loop. Prints one JSON line (``{"unavailable": reason}`` when aiomb lacks the API).

Usage: python bench/aiomb_epoll.py FILE.pcap
"""

import json
import select
import sys
import time


def run(path):
    try:
        import aiomb
    except ImportError as exc:
        return {"unavailable": f"import aiomb failed: {exc}"}
    if not hasattr(aiomb, "epoll"):
        return {"unavailable": "aiomb API missing: epoll"}
    started = time.perf_counter()
    conns, sides = 0, [0, 0]
    both = (aiomb.Side.CLIENT, aiomb.Side.SERVER)
    epollin, epollhup, not_now = select.EPOLLIN, select.EPOLLHUP, (BlockingIOError, aiomb.StreamGap)
    with aiomb.monitor(aiomb.capture(path)) as mon, aiomb.epoll() as ep:
        ep.register(mon, epollin)
        mon_fd = mon.fileno()
        socks = {}
        while True:
            ready = ep.poll()
            if not ready:
                break
            for fd, mask in ready:
                if fd == mon_fd:
                    while True:
                        try:
                            sock = mon.accept()
                        except BlockingIOError:
                            break
                        conns += 1
                        socks[sock.fileno()] = sock
                        ep.register(sock, epollin)
                    if mask & epollhup:
                        ep.unregister(fd)
                    continue
                sock = socks[fd]
                if mask & epollin:       # level-triggered: one read per side and report
                    for side in both:
                        try:
                            sides[side] += len(sock.recv(1 << 20, side))
                        except not_now:
                            pass
                if mask & epollhup:
                    ep.unregister(fd)
                    del socks[fd]
                    sock.close()
        packets = mon.statistics().packets
    seconds = time.perf_counter() - started
    return {"packets": packets, "seconds": round(seconds, 6), "conn_starts": conns,
            "client_bytes": sides[0], "server_bytes": sides[1]}


if __name__ == "__main__":
    print(json.dumps(dict(run(sys.argv[1]), tool="aiomb-epoll")))
