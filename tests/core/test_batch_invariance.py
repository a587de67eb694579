"""The same answer at any batch size, over generated conversations: several TCP flows and a UDP
flow interleaved, segments split, reordered, duplicated, re-sent with other bytes, lost, idle
long enough to time out, stray FINs (old, or ahead of a hole), closed by FIN or RST, and a tuple
reused by a new connection. Every
event and every flow's final figures are the same whether the frames come one at a time or in
batches of any size (the corpus version is tests/corpus/test_batch_invariance.py)."""

import io

from hypothesis import given, settings
from hypothesis import strategies as st

import aiomb
from aiomb import EventKind
from aiomb._core import CaptureReader
from aiomb.testing import TcpConversation, udp_frame, write_pcap


def conversation(rnd, n: int, start: float):
    """One TCP flow's frames, scripted with the generator's choices."""
    c = TcpConversation((f"10.0.{n}.1", 40000 + n), ("10.9.0.1", 80), client_isn=rnd.randrange(2**32),
                        server_isn=rnd.randrange(2**32), start_ts=start, ts_step=rnd.choice([0.001, 0.5, 7.0]))
    c.handshake()
    for _ in range(rnd.randint(1, 6)):
        side = rnd.choice(["client", "server"])
        data = rnd.randbytes(rnd.randint(1, 900))
        cut = rnd.randint(0, len(data))
        first, second = data[:cut], data[cut:]
        if first:
            c.send(side, first)
        if second and rnd.random() < 0.2:
            c.send(side, second, advance=False, seq_offset=len(first) + 3)     # ahead of a hole
        if second:
            c.send(side, second)
        if rnd.random() < 0.3:
            c.send(side, rnd.randbytes(len(data)), advance=False, seq_offset=-len(data))  # again, other bytes
        if rnd.random() < 0.1:              # a stray FIN: old, at the next byte, or ahead of a hole
            c.send(side, b"", flags="FA", advance=False, seq_offset=rnd.randint(-len(data) - 3, len(data) + 3))
        if rnd.random() < 0.3:
            c.ack("server" if side == "client" else "client")
    ending = rnd.choice(["fin", "rst", "none"])
    if ending == "fin":
        c.fin("client")
        c.fin("server")
        c.ack("client")
    elif ending == "rst":
        c.rst(rnd.choice(["client", "server"]))
    frames = c.frames
    lost = [f for f in frames[3:] if rnd.random() < 0.1]
    return [f for f in frames if f not in lost]


def capture(rnd) -> bytes:
    frames = []
    for n in range(rnd.randint(1, 4)):
        frames += conversation(rnd, n, 1.0 + rnd.random() * 20)
    if rnd.random() < 0.5:          # the first tuple again, much later: a new connection
        frames += conversation(rnd, 0, 500.0)
    frames += [(1.0 + i * 9.0, udp_frame("10.1.0.1", "10.1.0.2", 5000, 53, b"q%d" % i)) for i in range(4)]
    frames.sort(key=lambda f: f[0])
    # some neighbours swap places (reordering in the network), timestamps kept in order
    for i in range(len(frames) - 1):
        if rnd.random() < 0.15:
            (t0, a), (t1, b) = frames[i], frames[i + 1]
            frames[i], frames[i + 1] = (t0, b), (t1, a)
    buf = io.BytesIO()
    write_pcap(buf, frames)
    return buf.getvalue()


def run(data: bytes, batch_size: int):
    engine = aiomb.Engine(tcp_syn_timeout=10, tcp_established_timeout=30, udp_timeout=12,
                          tcp_closed_timeout=3, overlap_policy="linux")
    dispatcher = aiomb.Dispatcher(engine)
    sub = dispatcher.subscribe(aiomb.ALL_BUILTIN)
    handles = []
    engine.add_handler(EventKind.CONN_START, lambda pv: handles.append(pv.flow))
    events, runs = [], {}

    def take():
        for ev in dispatcher.drain(sub):
            if ev.kind is EventKind.NEW_DATA:
                side = runs.setdefault((ev.flow_id, ev.side), [])
                if side and side[-1][1] == ev.offset:
                    side[-1][1] += ev.length
                    side[-1][2] += ev.value
                else:
                    side.append([ev.offset, ev.offset + ev.length, bytearray(ev.value)])
            else:
                events.append((ev.kind, ev.key, ev.flow_id, ev.side, ev.ts, ev.reason, ev.old_state,
                               ev.new_state, ev.value, ev.offset, ev.length, ev.stats))

    batch = aiomb.FrameBatch(batch_size)
    with CaptureReader(io.BytesIO(data)) as reader:
        while reader.fill(batch):
            engine.process(batch)
            take()
    engine.finish()
    take()
    return events, runs, [h.statistics() for h in handles]


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(2, 300))
def test_any_batch_size_gives_the_same_events_and_figures(rnd, size):
    data = capture(rnd)
    one = run(data, 1)
    other = run(data, size)
    assert other[0] == one[0]
    assert other[1] == one[1]
    assert other[2] == one[2]
