"""Traffic peers for the AF_XDP tests, run inside a namespace with ``ip netns exec``.

    peer.py server IP PORT            TCP: per connection read (up, down) lengths, read `up`
                                      bytes, send `down` bytes, close; prints one JSON line
                                      per connection (lengths, upload_ok, the peer's address)
    peer.py client IP PORT UP DOWN [TIMEOUT [SOURCE_IP]]
                                      TCP: one transfer; prints JSON {ok, up_sha256, down_ok, ...}
    peer.py udp IP PORT COUNT SIZE    UDP: send COUNT datagrams of SIZE bytes; prints JSON
    peer.py udp-sink IP PORT          UDP: count datagrams (prints ready, then a JSON line per 1 s idle)

Payloads are a deterministic pattern, so byte-exactness is checked on both sides.
"""

import hashlib
import json
import socket
import struct
import sys
import threading


def pattern(n: int, seed: int) -> bytes:
    block = hashlib.sha256(seed.to_bytes(4, "big")).digest() * 64      # 2 KiB
    reps = n // len(block) + 1
    return (block * reps)[:n]


def recv_exact(s, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(min(1 << 16, n - len(out)))
        if not chunk:
            raise EOFError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def serve_one(conn, peer=None):
    try:
        with conn:
            up, down = struct.unpack("!QQ", recv_exact(conn, 16))
            h = hashlib.sha256()
            left = up
            while left:
                chunk = conn.recv(min(1 << 16, left))
                if not chunk:
                    raise EOFError("upload cut short")
                h.update(chunk)
                left -= len(chunk)
            conn.sendall(pattern(down, 2))
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)
            ok = h.hexdigest() == hashlib.sha256(pattern(up, 1)).hexdigest()
            where = f"{peer[0]}:{peer[1]}" if peer else None
            print(json.dumps({"up": up, "down": down, "upload_ok": ok, "peer": where}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": repr(exc)}), flush=True)


def server(ip, port):
    ls = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((ip, int(port)))
    ls.listen(64)
    print("ready", flush=True)
    while True:
        conn, peer = ls.accept()
        threading.Thread(target=serve_one, args=(conn, peer), daemon=True).start()


def client(ip, port, up, down, timeout="10", source=None):
    up, down = int(up), int(down)
    result = {"up": up, "down": down}
    try:
        s = socket.create_connection((ip, int(port)), timeout=float(timeout),
                                     source_address=(source, 0) if source else None)
        result["local_port"] = s.getsockname()[1]
        with s:
            s.sendall(struct.pack("!QQ", up, down) + pattern(up, 1))
            got = bytearray()
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                got += chunk
            result["down_ok"] = bytes(got) == pattern(down, 2)
            result["received"] = len(got)
        result["ok"] = result["down_ok"]
    except Exception as exc:
        result["ok"] = False
        result["error"] = repr(exc)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


def udp(ip, port, count, size):
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("::" if ":" in ip else "0.0.0.0", 0))
    for i in range(int(count)):
        s.sendto(pattern(int(size), 3 + i), (ip, int(port)))
    print(json.dumps({"sent": int(count), "local_port": s.getsockname()[1]}), flush=True)


def udp_sink(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, int(port)))
    print("ready", flush=True)
    n = 0
    s.settimeout(1.0)
    while True:
        try:
            s.recv(65536)
            n += 1
        except TimeoutError:
            print(json.dumps({"received": n}), flush=True)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    fn = {"server": server, "client": client, "udp": udp, "udp-sink": udp_sink}[cmd]
    sys.exit(fn(*args) or 0)
