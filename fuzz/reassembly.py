"""Fuzz target: random TCP segments of one flow -> the engine's reassembly, checked byte for byte
against a model.

Input: the overlap policy (one byte), the client's ISN (4 bytes: sequence numbers wrap), the
batch size (one byte: segments of one batch are referenced in the frames, not copied), then
steps of 5 bytes: a kind (even: a client segment whose bytes are of variant ``kind >> 1``, so
that retransmissions agree at variant 0 and conflict otherwise; 1 mod 4: a server ACK; 3 mod 4:
a client segment with FIN, of variant ``kind >> 2``), a stream offset (2 bytes, less 16: a
segment may start before the ISN) and a length (2 bytes, at most MAX_SEGMENT; none for an ACK).
A handshake comes first; the steps go through a pcap and the capture reader in batches;
``finish()`` ends the flow.

The model (:class:`Model`) keeps one entry per byte: bytes in order never change, bytes held out
of order are replaced when the policy's rule (Suricata's target-based rules, as in reasm.pxi)
says the new segment wins against the segment whose copy is held; a server ACK past a hole
declares the hole lost (GAP) up to the bytes the client sent (up to its FIN), and a segment
arriving beyond a hole already ACKed does too. A FIN is taken where Linux takes it: one below the
bytes in order (or below an ACK past it) is ignored; one ahead of them is held (the nearer of
two), taken when the bytes in order reach it or the server ACKs the bytes up to it or the FIN (a
GAP first), dropped once they or an ACK pass it. Bytes at or past the FIN taken are not the
client's stream (its receiver ignores them, and drops those it held); at the end every hole
before held bytes, and before the FIN taken or held, is a GAP. The engine's NEW_DATA bytes and
GAP ranges must be exactly the model's.
"""

import functools
import hashlib
import io
import socket
import struct

import aiomb
from aiomb import EventKind
from aiomb._core import CaptureReader
from aiomb.testing import TcpConversation, internet_checksum, write_pcap
from fuzz import fuzz_main

POLICIES = ("first", "last", "bsd", "linux", "old_linux", "solaris")
MAX_SEGMENT = 1024
MAX_STEPS = 128
HEADER, STEP = 6, 5         # bytes of the input's header and of each step
BEFORE_ISN = 16
CLIENT, SERVER = ("10.0.0.1", 40000), ("10.0.0.2", 80)
SERVER_ISN = 5000


CANONICAL = bytes((o * 13 + (o >> 8) * 7) & 0xFF for o in range(-BEFORE_ISN, 0x10000 - BEFORE_ISN + MAX_SEGMENT))


@functools.cache
def pattern(variant: int) -> bytes:
    """A variant's bytes of every stream offset the input format reaches, from -BEFORE_ISN."""
    return CANONICAL.translate(bytes((b + variant * 101) & 0xFF for b in range(256)))


def payload(off: int, n: int, variant: int) -> bytes:
    """The bytes of stream offsets [off, off+n) in a variant (0: the canonical stream)."""
    return pattern(variant)[off + BEFORE_ISN:off + BEFORE_ISN + n]


def segment(src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int, data: bytes = b"") -> bytes:
    """An Ethernet/IPv4/TCP frame, built quicker than aiomb.testing.tcp_frame: its TCP checksum
    is left 0 (the engine ignores checksums by default)."""
    tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq % 2**32, ack % 2**32, 0x50, flags, 65535, 0, 0)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(data), 0, 0, 64, 6, 0,
                               socket.inet_aton(src[0]), socket.inet_aton(dst[0])))
    struct.pack_into("!H", ip, 10, internet_checksum(bytes(ip)))
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\0" + bytes(ip) + tcp + data


def encode(steps: list[tuple[str, int, int, int]], *, policy: int = 0, isn: int = 1000, batch: int = 8) -> bytes:
    """A target input of steps ("data" or "fin", offset, length, variant) and ("ack", offset, 0, 0)."""
    out = [struct.pack("!BIB", policy, isn % 2**32, batch)]
    for what, off, n, variant in steps[:MAX_STEPS]:
        kind = {"ack": 1, "fin": variant << 2 | 3}.get(what, variant << 1)
        out.append(struct.pack("!BHH", kind, off + BEFORE_ISN, n))
    return b"".join(out)


def decode(data: bytes) -> tuple[str, int, int, list[tuple[str, int, int, int]]]:
    """(policy, ISN, batch size, steps) of a target input."""
    data = data.ljust(HEADER, b"\0")
    policy, isn, batch = struct.unpack_from("!BIB", data)
    steps = []
    for i in range(HEADER, min(len(data) - STEP + 1, HEADER + STEP * MAX_STEPS), STEP):
        kind, off, n = struct.unpack_from("!BHH", data, i)
        if kind & 3 == 1:
            steps.append(("ack", off - BEFORE_ISN, 0, 0))
        elif kind & 3 == 3:
            steps.append(("fin", off - BEFORE_ISN, n % (MAX_SEGMENT + 1), kind >> 2))
        else:
            steps.append(("data", off - BEFORE_ISN, n % (MAX_SEGMENT + 1), kind >> 1))
    return POLICIES[policy % len(POLICIES)], isn, 1 + batch % 32, steps


def new_bytes_win(policy: str, s0: int, s1: int, h0: int, h1: int) -> bool:
    """Whether a new segment [s0, s1) replaces the held copy of bytes it overlaps, brought by
    segment [h0, h1) (the last one whose copy won there)."""
    if policy in ("first", "last"):
        return policy == "last"
    if s0 < h0:
        return policy != "solaris" or s1 >= h1
    if s0 == h0:
        if s1 > h1:
            return policy != "bsd"
        return s1 == h1 and policy in ("old_linux", "solaris")
    return policy == "solaris" and s1 > h1


class Model:
    """One side's stream, a byte at a time: what reassembly should deliver."""

    def __init__(self, policy: str):
        self.policy = policy
        self.next_off = 0           # bytes before it are in order (delivered or lost)
        self.held = {}              # offset -> [byte, start, end of the segment that brought it]
        self.acked = 0              # the highest ACK seen from the peer
        self.sent_end = 0           # the end of the side's sequence space used (its FIN counts)
        self.fin = None             # the offset of the side's FIN taken
        self.held_fin = None        # the offset of a FIN ahead of the bytes in order, waiting for them
        self.out = []               # ("data", offset, bytes) and ("gap", offset, length)

    def deliver(self, off: int, data: bytes) -> None:
        if self.out and self.out[-1][0] == "data" and self.out[-1][1] + len(self.out[-1][2]) == off:
            self.out[-1] = ("data", self.out[-1][1], self.out[-1][2] + data)
        else:
            self.out.append(("data", off, data))

    def drain(self) -> None:
        start, run = self.next_off, bytearray()
        while self.next_off in self.held:
            run.append(self.held.pop(self.next_off)[0])
            self.next_off += 1
        if run:
            self.deliver(start, bytes(run))

    def skip(self, upto: int) -> None:
        """Bytes before ``upto`` will never come: a GAP, then what follows is delivered."""
        self.out.append(("gap", self.next_off, upto - self.next_off))
        self.next_off = upto
        self.drain()

    def lost_to(self, upto: int) -> None:
        while self.next_off < upto:
            target = min([upto, *self.held])
            if target <= self.next_off:
                break
            self.skip(target)

    def take_fin(self, at: int) -> None:
        """The FIN at ``at`` takes effect: the bytes held past it go."""
        self.fin, self.held_fin = at, None
        self.held = {o: piece for o, piece in self.held.items() if o < at}

    def settle(self) -> None:
        """A held FIN the bytes in order (or the server's ACK) reached is taken; one they passed goes."""
        at = self.held_fin
        if at is None:
            return
        if self.next_off < at <= self.acked <= at + 1:
            self.lost_to(at)
        if self.next_off == at and self.acked <= at + 1:
            self.take_fin(at)
        elif self.next_off > at or self.acked > at + 1:
            self.held_fin = None

    def segment(self, off: int, data: bytes, fin: bool = False) -> None:
        end = off + len(data)
        self.sent_end = max(self.sent_end, end + fin)
        if fin and self.fin is None and not (end < self.next_off or self.acked > end + 1):
            if off <= self.next_off:
                self.take_fin(end)
            elif self.held_fin is None or end < self.held_fin:
                self.held_fin = end
        self.receive(off, end, data)
        self.settle()

    def receive(self, off: int, end: int, data: bytes) -> None:
        if self.fin is not None and end > self.fin:
            data = data[:max(self.fin - off, 0)]
            end = off + len(data)
        if off < 0:
            data, off = data[-off:], 0
        if not data:
            return
        if self.next_off < off <= self.acked:
            self.lost_to(off)
        if end <= self.next_off:
            return
        if off < self.next_off:
            data, off = data[self.next_off - off:], self.next_off
        for o, byte in zip(range(off, end), data):
            piece = self.held.get(o)
            if piece is None:
                self.held[o] = [byte, off, end]
            elif new_bytes_win(self.policy, off, end, piece[1], piece[2]):
                piece[:] = [byte, off, end]     # the copy is the new segment's: later ones are judged against it
        self.drain()

    def ack(self, off: int) -> None:
        self.acked = max(self.acked, off)
        end = self.sent_end if self.fin is None else self.fin
        if self.held_fin is not None and off == self.held_fin + 1:
            end = self.held_fin             # the ACK of the held FIN: no byte at its place
        self.lost_to(min(off, end))
        self.settle()

    def finish(self) -> None:
        while self.held:
            self.skip(min(self.held))
        fin = self.fin if self.fin is not None else self.held_fin
        if fin is not None and fin > self.next_off:
            self.skip(fin)


def frames(isn: int, steps) -> list[tuple[float, bytes]]:
    conv = TcpConversation(CLIENT, SERVER, client_isn=isn, server_isn=SERVER_ISN)
    conv.handshake()
    out = list(conv.frames)
    ts = out[-1][0]
    for what, off, n, variant in steps:
        ts += 0.001
        if what == "ack":
            out.append((ts, segment(SERVER, CLIENT, SERVER_ISN + 1, isn + 1 + off, 0x10)))
        else:
            flags = 0x19 if what == "fin" else 0x18
            out.append((ts, segment(CLIENT, SERVER, isn + 1 + off, SERVER_ISN + 1, flags, payload(off, n, variant))))
    return out


def engine_stream(policy: str, isn: int, batch: int, steps) -> list[tuple]:
    """What the engine delivers of the client's stream, in the model's terms."""
    pcap = io.BytesIO()
    write_pcap(pcap, frames(isn, steps))
    pcap.seek(0)
    engine = aiomb.Engine(overlap_policy=policy)
    d = aiomb.Dispatcher(engine)
    sub = d.subscribe(EventKind.NEW_DATA | EventKind.GAP | EventKind.BUFFER_OVERRUN)
    out = Model(policy)
    fb = aiomb.FrameBatch(batch)

    def take():
        for ev in d.drain(sub):
            assert ev.kind is not EventKind.BUFFER_OVERRUN, f"no limit is near, yet {ev}"
            assert ev.side is aiomb.Side.CLIENT, ev
            if ev.kind is EventKind.GAP:
                out.out.append(("gap", ev.offset, ev.length))
            else:
                value = bytes(ev.value)
                assert len(value) == ev.length, (ev, len(value))
                out.deliver(ev.offset, value)
    with CaptureReader(pcap, chunk_size=4096) as reader:
        while reader.fill(fb):
            engine.process(fb)
            take()
    engine.finish()
    take()
    assert engine.statistics().stream_memory == 0
    engine.close()
    return out.out


def model_stream(policy: str, steps) -> list[tuple]:
    model = Model(policy)
    for what, off, n, variant in steps:
        if what == "ack":
            model.ack(off)
        else:
            model.segment(off, payload(off, n, variant), what == "fin")
    model.finish()
    return model.out


def TestOneInput(data: bytes) -> None:
    policy, isn, batch, steps = decode(data)
    got, want = engine_stream(policy, isn, batch, steps), model_stream(policy, steps)
    if got != want:
        raise AssertionError(f"reassembly differs from the model ({policy}, ISN {isn}, batches of {batch}):\n"
                             f"  steps:  {steps}\n  engine: {summary(got)}\n  model:  {summary(want)}")


def summary(stream: list[tuple]) -> list[tuple]:
    """Data as (offset, length, digest) for a readable failure."""
    return [("gap", o, n) if what == "gap" else ("data", o, len(n), hashlib.sha1(n).hexdigest()[:12])
            for what, o, n in stream]


def tcp_conversations(linktype: int, captured: list[tuple[float, bytes]]) -> list[list[tuple]]:
    """The steps of each TCP connection of a capture that starts with a SYN: the client's data
    segments and FINs (variant 0, at most MAX_SEGMENT bytes) and the server's ACKs, at offsets from the
    client's ISN that the input format can hold."""
    engine = aiomb.Engine()
    seen = []

    def record(p):
        if p.tcp_flags is not None:
            seen.append(((p.src, p.sport), (p.dst, p.dport), p.tcp_flags, p.seq, p.ack, p.payload_length))
    engine.add_handler(EventKind.PACKET_IN, record, hook=aiomb.Hook.SENDER)
    for ts, frame in captured:
        engine.feed(frame, ts, linktype=linktype)
    engine.close()
    conversations = {}
    for src, dst, flags, seq, ack, n in seen:
        key = frozenset((src, dst))
        if key not in conversations:
            if flags & 0x12 == 0x02:                    # a SYN without ACK: src is the client
                conversations[key] = (src, seq, [])
            continue
        client, isn, steps = conversations[key]
        rel = ((seq if src == client else ack) - isn - 1 + 2**31) % 2**32 - 2**31
        if not -BEFORE_ISN <= rel <= 0xFFFF - BEFORE_ISN:
            continue
        if src == client and (n or flags & 0x01):
            steps.append(("fin" if flags & 0x01 else "data", rel, min(n, MAX_SEGMENT), 0))
        elif src != client and flags & 0x10:
            steps.append(("ack", rel, 0, 0))
    return [steps[:MAX_STEPS] for _, _, steps in conversations.values() if any(s[0] == "data" for s in steps)]


if __name__ == "__main__":
    fuzz_main(TestOneInput)
