"""Write demo.pcapng, the small capture bundled for the README's demo command.

It is made here, with aiomb.testing's frame builders, from documentation addresses
(RFC 5737 / RFC 3849): HTTP over IPv4 and IPv6 closed by FIN, a half-close, a refused
connection (RST), a SYN retry, a reset in the middle of a transfer and a DNS exchange.
Run ``python examples/captures/make_demo.py`` to regenerate it (the output is deterministic).
"""

import pathlib

from aiomb.testing import TcpConversation, udp_frame, write_pcapng

HERE = pathlib.Path(__file__).resolve().parent


def http(client, server, start, *, request=b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"):
    c = TcpConversation(client, server, start_ts=start, ts_step=0.01, client_isn=1000, server_isn=7000)
    c.handshake()
    c.send("client", request)
    c.ack("server")
    c.send("server", b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world\n")
    c.ack("client")
    c.fin("client")
    c.fin("server")
    c.ack("client")
    return c.frames


def half_close(start):
    c = TcpConversation(("192.0.2.11", 40100), ("198.51.100.30", 25), start_ts=start, ts_step=0.02)
    c.handshake()
    c.send("client", b"QUIT\r\n")
    c.fin("client")
    c.send("server", b"221 bye\r\n")
    c.send("server", b"(server still talking after the client closed its side)\r\n")
    c.ack("client")
    c.fin("server")
    c.ack("client")
    return c.frames


def refused(start):
    c = TcpConversation(("192.0.2.12", 40200), ("198.51.100.40", 8080), start_ts=start)
    c.syn()
    c.server_seq = 0
    c.rst("server", flags="RA")
    return c.frames


def syn_retry(start):
    c = TcpConversation(("192.0.2.13", 40300), ("198.51.100.20", 80), start_ts=start, ts_step=1.0)
    c.syn()
    c.syn()
    c.syn_ack()
    c.ack("client")
    c.send("client", b"GET /retry HTTP/1.1\r\n\r\n")
    c.send("server", b"HTTP/1.1 204 No Content\r\n\r\n")
    c.fin("server")
    c.fin("client")
    c.ack("server")
    return c.frames


def reset_mid_transfer(start):
    c = TcpConversation(("192.0.2.14", 40400), ("198.51.100.50", 443), start_ts=start, ts_step=0.005)
    c.handshake()
    c.send("client", b"\x16\x03\x01" + bytes(60))
    for _ in range(3):
        c.send("server", bytes(range(256)) * 4)
    c.rst("client", flags="RA")
    return c.frames


def dns(start):
    q = udp_frame("192.0.2.10", "198.51.100.53", 53000, 53, b"\x12\x34\x01\x00\x00\x01" + bytes(6))
    r = udp_frame("198.51.100.53", "192.0.2.10", 53, 53000, b"\x12\x34\x81\x80\x00\x01\x00\x01" + bytes(20))
    return [(start, q), (start + 0.004, r)]


def main():
    frames = []
    frames += dns(1.0)
    frames += http(("192.0.2.10", 51000), ("198.51.100.20", 80), 1.1)
    frames += http(("2001:db8::10", 51001), ("2001:db8:1::20", 80), 1.5)
    frames += half_close(2.0)
    frames += refused(2.5)
    frames += syn_retry(3.0)
    frames += reset_mid_transfer(3.2)
    frames.sort(key=lambda f: f[0])
    ts0 = 1_764_547_200  # 2025-12-01T00:00:00Z
    write_pcapng(HERE / "demo.pcapng", [(ts0 + ts, frame) for ts, frame in frames])


if __name__ == "__main__":
    main()
