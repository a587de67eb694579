"""HTTP request lines from client streams, in the shape of a classic epoll server: an accept loop
on a monitor socket, then per-connection reads of each client's stream. Prints one line per
request: client, server, and the request line. Each request's body is skipped by its framing
(Content-Length, or chunked with its extensions and trailers), so every request of a keep-alive
connection is found, and nothing in a body is taken for one.

    aiomb run examples/http_requests.py --pcap examples/captures/demo.pcapng
    aiomb run examples/http_requests.py --iface MIRROR_PORT          # live (root), until Ctrl-C
"""

import re
import select
import sys

import aiomb

REQUEST_LINE = re.compile(rb"^([A-Z]{3,10}) (\S+) (HTTP/\d\.\d)$")
MAX_LINE = 8192             # a longer line is no request line: the rest of it is skipped


class Requests:
    """The request lines of one client stream, fed as it comes (no I/O): ``feed(data)`` returns
    those that ``data`` completed. After a request line come its headers, then its body, skipped
    by its framing: chunked if Transfer-Encoding says so (chunk sizes, their extensions, the
    trailers), else Content-Length bytes, else none. Where a request should start, a line that is
    no request line is skipped (a hole, the middle of a stream picked up late)."""

    def __init__(self):
        self.length = 0             # the request's Content-Length
        self.chunked = False        # and whether its body is chunked
        self.hole()

    def hole(self) -> None:
        """A hole in the stream: the message it cut is lost; look for the next request line."""
        self.buffer = bytearray()
        self.state = "request"      # request, header, body, chunk size, chunk data, chunk end, trailer
        self.left = 0               # the bytes of the body or chunk still to skip

    def feed(self, data: bytes) -> list[str]:
        self.buffer += data
        lines = []
        while True:
            if self.state in ("body", "chunk data"):
                take = min(self.left, len(self.buffer))
                del self.buffer[:take]
                self.left -= take
                if self.left:
                    return lines
                self.state = "request" if self.state == "body" else "chunk end"
                continue
            line = self.line()
            if line is None:
                return lines
            if self.state == "request":
                if REQUEST_LINE.match(line):
                    lines.append(line.decode("latin-1"))
                    self.state, self.length, self.chunked = "header", 0, False
            elif self.state == "header":
                self.header(line)
            elif self.state == "chunk size":
                try:
                    self.left = int(line.split(b";")[0], 16)
                except ValueError:
                    self.state = "request"      # no chunked body after all: look for the next request
                    continue
                self.state = "chunk data" if self.left else "trailer"
            elif self.state == "chunk end":
                self.state = "chunk size"
            elif line == b"":               # the end of the trailers
                self.state = "request"

    def header(self, line: bytes) -> None:
        if line:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif name == b"content-length":
                try:
                    self.length = int(value.strip())
                except ValueError:
                    self.length = 0
        elif self.chunked:                  # chunked framing wins over a Content-Length
            self.state = "chunk size"
        elif self.length > 0:
            self.state, self.left = "body", self.length
        else:
            self.state = "request"

    def line(self) -> bytes | None:
        """The next whole line from the front of the buffer (None: none yet)."""
        end = self.buffer.find(b"\r\n")
        if end < 0:
            if len(self.buffer) > MAX_LINE:
                del self.buffer[:-MAX_LINE]
            return None
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 2]
        return line


def endpoint(address: tuple) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(source, out=sys.stdout) -> None:
    with aiomb.monitor(source, "tcp", sides="client") as mon, aiomb.epoll() as ep:
        ep.register(mon, select.EPOLLIN)
        conns = {}                          # fd -> (socket, its client stream's Requests)
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
                        conns[sock.fileno()] = (sock, Requests())
                        ep.register(sock, select.EPOLLIN)
                    if mask & select.EPOLLHUP:
                        ep.unregister(mon)
                    continue
                sock, requests = conns[fd]
                while True:                 # read what the client sent
                    try:
                        data = sock.recv(65536, aiomb.Side.CLIENT)
                    except BlockingIOError:
                        break
                    except aiomb.StreamGap:
                        requests.hole()
                        continue
                    if not data:
                        break
                    for line in requests.feed(data):
                        out.write(f"{endpoint(sock.getsockname())} -> {endpoint(sock.getpeername())}  {line}\n")
                if mask & select.EPOLLHUP:         # the connection is over: everything was read
                    ep.unregister(fd)
                    del conns[fd]
                    sock.close()


if __name__ == "__main__":
    from aiomb.cli import main as cli

    sys.exit(cli(["run", __file__, *sys.argv[1:]]))
