"""HTTP request lines from client streams, in the shape of a classic epoll server: an accept loop
on a monitor socket, then per-connection reads of each client's stream. Prints one line per
request: client, server, and the request line.

    aiomb run examples/http_requests.py --pcap examples/captures/demo.pcapng
    aiomb run examples/http_requests.py --iface MIRROR_PORT          # live (root), until Ctrl-C
"""

import re
import select
import sys

import aiomb

REQUEST_LINE = re.compile(rb"^([A-Z]{3,10}) (\S+) (HTTP/\d\.\d)$")
MAX_LINE = 8192             # a longer line is no request line: the rest of it is skipped


def request_lines(buffer: bytearray):
    """Complete lines taken from the front of ``buffer`` that are request lines."""
    while True:
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) > MAX_LINE:
                del buffer[:-MAX_LINE]
            return
        line = bytes(buffer[:end])
        del buffer[:end + 2]
        if REQUEST_LINE.match(line):
            yield line.decode("latin-1")


def endpoint(address: tuple) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(source, out=sys.stdout) -> None:
    with aiomb.monitor(source, "tcp", sides="client") as mon, aiomb.epoll() as ep:
        ep.register(mon, select.EPOLLIN)
        conns = {}                          # fd -> (socket, bytes read but not yet a whole line)
        while True:
            ready = ep.poll()
            if not ready:
                break
            for fd, mask in ready:
                if fd == mon.fileno():
                    while True:             # the accept loop
                        try:
                            sock = mon.accept()
                        except BlockingIOError:
                            break
                        conns[sock.fileno()] = (sock, bytearray())
                        ep.register(sock, select.EPOLLIN)
                    if mask & select.EPOLLHUP:
                        ep.unregister(mon)
                    continue
                sock, pending = conns[fd]
                while True:                 # read what the client sent
                    try:
                        data = sock.recv(65536, aiomb.Side.CLIENT)
                    except BlockingIOError:
                        break
                    except aiomb.StreamGap:
                        pending.clear()     # a hole: the line it cut is lost
                        continue
                    if not data:
                        break
                    pending += data
                    for line in request_lines(pending):
                        out.write(f"{endpoint(sock.getsockname())} -> {endpoint(sock.getpeername())}  {line}\n")
                if mask & select.EPOLLHUP:         # the connection is over: everything was read
                    ep.unregister(fd)
                    del conns[fd]
                    sock.close()


if __name__ == "__main__":
    from aiomb.cli import main as cli

    sys.exit(cli(["run", __file__, *sys.argv[1:]]))
