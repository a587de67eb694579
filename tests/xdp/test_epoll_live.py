"""The epoll shell on a live AF_XDP port: flow sockets read what real TCP carried, poll timeouts
and timers count wall time, and the HTTP example reads real HTTP requests."""

import select
import subprocess
import sys
import threading
import time

import aiomb
from aiomb import Side

from .lab import wait_for
from .test_cli_live import AIOMB, LEFT_IP, REPO, RIGHT_IP, attached, client, watched_pair


def test_epoll_over_a_live_port_reads_both_sides_and_counts_wall_time(lab):
    left, watch, n = watched_pair(lab)
    mon = aiomb.monitor(aiomb.port(n, netns=watch, prefilter=aiomb.Prefilter(ports={5001})))
    ep = aiomb.epoll()
    try:
        ep.register(mon, select.EPOLLIN)
        tick = mon.timer(0.2, interval=0.2)
        ep.register(tick, select.EPOLLIN)
        started = time.monotonic()
        assert ep.poll(0.3, 1) == [(tick.fileno(), select.EPOLLIN)]     # the timer, in wall time
        assert 0.15 < time.monotonic() - started < 1.0
        ep.unregister(tick)
        tick.close()
        started = time.monotonic()
        assert ep.poll(0.3) == []                                       # nothing: a wall-clock timeout
        assert 0.25 < time.monotonic() - started < 1.0
        results = []
        threading.Thread(target=lambda: results.append(client(left, RIGHT_IP, 5001, 3000, 40000))).start()
        got, socks = {}, {}
        deadline = time.monotonic() + 20
        while not any(s.end_reason for s in socks.values()) and time.monotonic() < deadline:
            for fd, _ in ep.poll(1.0):
                if fd == mon.fileno():
                    while True:
                        try:
                            sock = mon.accept()
                        except BlockingIOError:
                            break
                        socks[sock.fileno()] = sock
                        got[sock.fileno()] = [b"", b""]
                        ep.register(sock, select.EPOLLIN | select.EPOLLRDHUP)
                    continue
                sock = socks[fd]
                for side in (Side.CLIENT, Side.SERVER):
                    while True:
                        try:
                            data = sock.recv(1 << 16, side)
                        except BlockingIOError:
                            break
                        if not data:
                            break
                        got[fd][side] += data
        wait_for(lambda: results, what="the client to finish")
        assert results[0]["ok"]
        (fd, sock), = socks.items()
        assert sock.getsockname() == (LEFT_IP, results[0]["local_port"])
        assert sock.end_reason is aiomb.EndReason.FIN
        assert (len(got[fd][0]), len(got[fd][1])) == (16 + 3000, 40000)
    finally:
        ep.close()
        mon.close()
    assert attached(watch, n) is None                  # closing the last monitor detached the port


def test_http_requests_example_live(lab):
    watch = lab.netns("w")
    left, _, right, _, n = lab.tapped_pair(f"{LEFT_IP}/24", f"{RIGHT_IP}/24", mon_ns=watch)
    web = lab.spawn(["ip", "netns", "exec", right, sys.executable, "-m", "http.server", "8000", "--bind",
                     RIGHT_IP], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = lab.spawn([*AIOMB, "run", "examples/http_requests.py", "--iface", n, "--netns", watch,
                      "--duration", "6"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: attached(watch, n) == "aiomb_xsk", what="the port to attach")
    fetch = ("import sys, time, urllib.request, urllib.error\n"
             "for _ in range(50):\n"
             "    try:\n"
             "        urllib.request.urlopen(sys.argv[1], timeout=5).read(); break\n"
             "    except urllib.error.HTTPError: break\n"
             "    except OSError: time.sleep(0.1)\n")
    for path in ("/", "/nothing-here"):
        subprocess.run(["ip", "netns", "exec", left, sys.executable, "-c", fetch,
                        f"http://{RIGHT_IP}:8000{path}"], check=True, timeout=30)
    out, err = proc.communicate(timeout=30)
    web.terminate()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == ["GET / HTTP/1.1", "GET /nothing-here HTTP/1.1"]
    assert all(line.startswith(f"{LEFT_IP}:") and f" -> {RIGHT_IP}:8000  " in line for line in lines)
