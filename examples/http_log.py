"""An HTTP request/response logger: a coroutine per TCP flow reads the client's and the server's
reassembled streams in turn and prints one line per transaction: method, URI, Host, status code and
the response body's size (Content-Length, chunked, or until the server closes). Pipelined requests
(several before the first response) pair with their responses in order; a response to HEAD, a 1xx,
204 or 304 has no body; 1xx interim responses are skipped. A hole in a stream ends the flow's log there.

    aiomb run examples/http_log.py --pcap CAPTURE [-- [--json] [--filter "tcp port 80"]]
    aiomb run examples/http_log.py --iface MIRROR_PORT -- --json        # live (root), until Ctrl-C
"""

import argparse
import json
import re
import sys

import trio

import aiomb

REQUEST = re.compile(rb"([A-Z]+) (\S+) (HTTP/1\.[01])\r\n")
STATUS = re.compile(rb"(HTTP/1\.[01]) (\d{3})[^\r\n]*\r\n")
MAX_HEAD = 65536


class NotHttp(Exception):
    """The stream does not hold what HTTP/1.x would."""


class Reader:
    """Buffered reads on one side's stream: ``aiomb.FlowStream`` gives chunks, HTTP wants heads and sizes."""

    def __init__(self, stream):
        self.stream, self.buf = stream, b""

    async def more(self) -> None:
        self.buf += await self.stream.receive()      # trio.EndOfChannel at the end, aiomb.StreamGap at a hole

    async def until(self, delimiter: bytes) -> bytes:
        while (i := self.buf.find(delimiter)) < 0:
            if len(self.buf) > MAX_HEAD:
                raise NotHttp(f"no {delimiter!r} in {MAX_HEAD} bytes")
            await self.more()
        end = i + len(delimiter)
        data, self.buf = self.buf[:end], self.buf[end:]
        return data

    async def skip(self, n: int | None) -> int:
        """Skip ``n`` bytes (None: up to the end); returns how many there were."""
        skipped = 0
        while True:
            take = len(self.buf) if n is None else min(n - skipped, len(self.buf))
            self.buf, skipped = self.buf[take:], skipped + take
            if skipped == n:
                return skipped
            try:
                await self.more()
            except trio.EndOfChannel:
                return skipped


async def read_head(reader: Reader, pattern: re.Pattern):
    """A message's first line (matched by ``pattern``) and its headers (lower-case names)."""
    head = await reader.until(b"\r\n\r\n")
    first = pattern.match(head)
    if not first:
        raise NotHttp(f"not an HTTP message: {head[:40]!r}")
    headers = {}
    for line in head[first.end():-4].split(b"\r\n"):
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return first, headers


async def read_body(reader: Reader, headers: dict, *, until_close: bool) -> tuple[int, str]:
    """The body's size and framing: chunked, content-length, close (until the end) or none."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        size = 0
        while True:
            line = await reader.until(b"\r\n")
            try:
                chunk = int(line.split(b";")[0], 16)
            except ValueError:
                raise NotHttp(f"bad chunk size line {line!r}") from None
            if chunk == 0:
                while await reader.until(b"\r\n") != b"\r\n":     # trailers, then the empty line
                    pass
                return size, "chunked"
            size += await reader.skip(chunk)
            await reader.until(b"\r\n")
    if "content-length" in headers:
        try:
            return await reader.skip(int(headers["content-length"])), "content-length"
        except ValueError:
            raise NotHttp(f"bad Content-Length {headers['content-length']!r}") from None
    if until_close:
        return await reader.skip(None), "close"
    return 0, "none"


async def http_flow(flow) -> None:
    client = Reader(flow.stream(aiomb.Side.CLIENT))
    server = Reader(flow.stream(aiomb.Side.SERVER))
    tx = None
    try:
        while True:
            tx = None
            try:
                request, headers = await read_head(client, REQUEST)
            except trio.EndOfChannel:
                return                                          # no more requests
            method = request.group(1).decode()
            tx = {"method": method, "uri": request.group(2).decode("latin-1"), "host": headers.get("host"),
                  "version": request.group(3).decode(), "status": None, "response_bytes": 0, "body": "none"}
            await read_body(client, headers, until_close=False)  # a request body: skipped
            try:
                while True:
                    response, headers = await read_head(server, STATUS)
                    status = int(response.group(2))
                    if not (100 <= status < 200 and status != 101):
                        break                                   # 1xx: interim, the final response follows
            except trio.EndOfChannel:
                log(flow, tx)                                   # unanswered
                continue
            tx["status"] = status
            if method == "HEAD" or status in (101, 204, 304) or (method == "CONNECT" and status < 300):
                log(flow, tx)
                if status == 101 or method == "CONNECT":
                    return                                      # the rest is another protocol
                continue
            tx["response_bytes"], tx["body"] = await read_body(server, headers, until_close=True)
            log(flow, tx)
    except aiomb.StreamGap as gap:
        if tx is not None:
            tx["error"] = f"a hole of {gap.length} bytes at offset {gap.offset}"
            log(flow, tx)
    except trio.EndOfChannel:
        if tx is not None:
            tx["error"] = "the flow ended inside a message"
            log(flow, tx)
    except NotHttp as exc:
        if tx is not None:
            tx["error"] = str(exc)
            log(flow, tx)


def endpoint(ip, port) -> str:
    return f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"


def log(flow, tx: dict, out=sys.stdout) -> None:
    key = flow.key
    if OPTIONS.json:
        out.write(json.dumps({"ts": round(flow.time(), 6), "client_ip": str(key.client_ip),
                              "client_port": key.client_port, "server_ip": str(key.server_ip),
                              "server_port": key.server_port, **tx}) + "\n")
    else:
        status = "-" if tx["status"] is None else tx["status"]
        out.write(f"{endpoint(key.client_ip, key.client_port)} -> {endpoint(key.server_ip, key.server_port)}  "
                  f"{tx['method']} {tx['host'] or '-'} {tx['uri']}  {status}  {tx['response_bytes']} bytes "
                  f"({tx['body']}){'  ' + tx['error'] if 'error' in tx else ''}\n")


def parse_options(argv):
    parser = argparse.ArgumentParser(prog="http_log.py", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per transaction")
    parser.add_argument("--filter", default="tcp", help="the flows to read (tcpdump syntax; default: all TCP)")
    return parser.parse_args(argv)


OPTIONS = parse_options(sys.argv[1:])


def setup(stack):
    try:
        stack.spawn_per_flow(http_flow, OPTIONS.filter, sides="both")
    except ValueError as exc:
        print(f"http_log: error: --filter {OPTIONS.filter!r}: {exc} (give a tcpdump filter, e.g. 'tcp port 80')",
              file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    from aiomb.cli import main

    sys.exit(main(["run", __file__, *sys.argv[1:]]))
