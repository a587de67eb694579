"""``aiomb.run_workers(fn, capture, workers=N)``: a program's own function on each shard of a
capture, each in a process of its own: every flow is seen by exactly one worker, with what one
engine sees of it; results come back in worker order; failures, damage, Ctrl-C and misuse are
reported precisely."""

import gzip
import io
import os
import pathlib
import re
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import trio

import aiomb
import aiomb.testing
from aiomb._workers import WorkerError

from .test_workers import busy_capture, corpus_captures

ENDS = (aiomb.CONN_END, aiomb.UDP_END)


async def ended_flows(stack):
    """Each flow's end as the stack reports it: key, reason, both sides' packet counts."""
    ends = []
    async with stack.subscribe(*ENDS) as events:
        async for ev in events:
            ends.append((str(ev.key), ev.reason.name, ev.stats.client.packets, ev.stats.server.packets))
    return aiomb.worker(), ends


def accepted_flows(source):
    """A synchronous program: an epoll loop accepting every flow of a monitor socket."""
    keys = []
    with aiomb.monitor(source, udp=True, sides="none") as mon, aiomb.epoll() as ep:
        ep.register(mon, select.EPOLLIN)
        hung_up = False
        while not hung_up:
            for _, mask in ep.poll():
                while True:
                    try:
                        sock = mon.accept()
                    except BlockingIOError:
                        break
                    keys.append(str(sock.flow.key))
                    sock.close()
                hung_up = bool(mask & select.EPOLLHUP)      # the capture is over
    return aiomb.worker(), keys


def merged(results):
    return sorted(end for _, ends in results for end in ends)


@pytest.mark.parametrize("path", corpus_captures(), ids=lambda p: p.name)
def test_each_flow_ends_in_exactly_one_worker_as_in_one_engine(path):
    one = aiomb.run_workers(ended_flows, path, workers=1, midstream=True)
    two = aiomb.run_workers(ended_flows, path, workers=2, midstream=True)
    assert [place for place, _ in one] == [(0, 1)]
    assert [place for place, _ in two] == [(0, 2), (1, 2)]
    assert merged(two) == merged(one)
    assert len(merged(two)) == len(set(merged(two)))


async def ends_and_malformed(stack):
    """The flows' ends, and the packets the worker's engine counted malformed."""
    place, ends = await ended_flows(stack)
    return place, ends, sum(stack.engine.statistics().malformed.values())


def test_verified_checksums_go_with_the_workers(tmp_path):
    """checksums="verify": a frame with a bad checksum goes to every worker (each counts it
    malformed, as one engine does), and the flows end as in one engine."""
    path = busy_capture(tmp_path / "busy.pcap", flows=200)
    data = bytearray(path.read_bytes())
    offset, spoilt = 24, 0
    while offset < len(data):
        caplen = int.from_bytes(data[offset + 8:offset + 12], "little")
        if caplen > 60 and (offset // 7) % 9 == 0:
            data[offset + 16 + caplen - 1] ^= 0xFF              # the payload's last byte: the TCP/UDP sum fails
            spoilt += 1
        offset += 16 + caplen
    bad = tmp_path / "bad-sums.pcap"
    bad.write_bytes(bytes(data))
    one = aiomb.run_workers(ends_and_malformed, bad, workers=1, midstream=True, checksums="verify")
    two = aiomb.run_workers(ends_and_malformed, bad, workers=2, midstream=True, checksums="verify")
    assert spoilt > 20 and one[0][2] > 20
    assert [malformed for _, _, malformed in two] == [one[0][2]] * 2
    assert sorted(e for _, ends, _ in two for e in ends) == sorted(one[0][1])
    assert sorted(one[0][1]) != merged(aiomb.run_workers(ended_flows, bad, workers=1, midstream=True))


def test_results_come_back_in_worker_order_and_split_the_flows(tmp_path):
    path = busy_capture(tmp_path / "busy.pcap")
    one = merged(aiomb.run_workers(ended_flows, path, workers=1, midstream=True))
    three = aiomb.run_workers(ended_flows, aiomb.capture(path), workers=3, midstream=True)
    assert [place for place, _ in three] == [(0, 3), (1, 3), (2, 3)]
    assert all(len(ends) > 50 for _, ends in three)             # each worker got its share
    assert merged(three) == one and len(one) >= 400             # a UDP tuple reused ends twice


def test_a_synchronous_program_gets_its_share(tmp_path):
    path = busy_capture(tmp_path / "busy.pcap", flows=120)
    whole = aiomb.run_workers(accepted_flows, path, workers=1)[0][1]
    parts = aiomb.run_workers(accepted_flows, path, workers=2)
    assert [place for place, _ in parts] == [(0, 2), (1, 2)]
    assert sorted(parts[0][1] + parts[1][1]) == sorted(whole) and len(whole) >= 120   # UDP tuples reused
    assert not set(parts[0][1]) & set(parts[1][1])


EARLY = """
import sys

import aiomb


def frames_unless_worker_1(source):
    if aiomb.worker()[0] == 1:
        return "stopped"
    batch, count = aiomb.FrameBatch(2048), 0
    while (got := source.read(batch)) is not None:
        count += got
    return count


print(aiomb.run_workers(frames_unless_worker_1, sys.argv[1], workers=2))
"""


@pytest.mark.parametrize("packed", [False, True])
def test_a_worker_that_stops_reading_early_lets_the_others_finish(tmp_path, packed):
    """Worker 1 returns without reading: it takes the rest of its share unread, so worker 0 (which
    needs its place in every slot and, on a plain pcap file, the blocks it reads) gets every
    frame. A gzip file comes through a reader process: the same. (A process of its own: a
    regression would hang, and fails here at the timeout.)"""
    frames = [(1.0 + i / 100, aiomb.testing.udp_frame(f"10.0.{i // 250}.{i % 250}", "10.1.0.1", 1000 + i, 53,
                                                     bytes(1400))) for i in range(6000)]
    path = tmp_path / "many.pcap"                   # more blocks than the workers read ahead, more
    aiomb.testing.write_pcap(path, frames)          # slots than a reader fills
    if packed:
        path = tmp_path / "many.pcap.gz"
        path.write_bytes(gzip.compress((tmp_path / "many.pcap").read_bytes(), compresslevel=1))
    script = tmp_path / "early.py"
    script.write_text(EARLY)
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == f"[{len(frames)}, 'stopped']"


def test_a_named_pipe_is_read_once(tmp_path):
    path = busy_capture(tmp_path / "busy.pcap", flows=60)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    pid = os.fork()
    if pid == 0:
        try:
            with open(fifo, "wb") as out:
                out.write(path.read_bytes())
        finally:
            os._exit(0)
    try:
        through_pipe = aiomb.run_workers(ended_flows, fifo, workers=2, midstream=True)
    finally:
        os.waitpid(pid, 0)
    assert merged(through_pipe) == merged(aiomb.run_workers(ended_flows, path, workers=1, midstream=True))


async def tick_while_quiet(stack):
    """When a task sleeping half a second woke, and when the worker's flow ended (None: not its flow)."""
    times = {}
    async with trio.open_nursery() as nursery:
        async def tick():
            await trio.sleep(0.5)
            times["tick"] = time.monotonic()
        nursery.start_soon(tick)
        async with stack.subscribe(aiomb.CONN_END) as events:
            async for _ in events:
                times["end"] = time.monotonic()
    return times.get("tick"), times.get("end")


def test_a_workers_trio_loop_goes_on_while_a_pipe_is_quiet(tmp_path):
    """The writer gives the flow's handshake, then is quiet for 3 s: each worker's other tasks
    run meanwhile (the stack waits for the ring outside the Trio loop)."""
    c = aiomb.testing.TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80))
    c.handshake()
    head = len(c.frames)
    c.fin("client")
    c.fin("server")
    c.ack("client")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    pid = os.fork()
    if pid == 0:
        try:
            with open(fifo, "wb", buffering=0) as out:
                aiomb.testing.write_pcap(out, c.frames[:head])
                time.sleep(3)
                out.write(pcap_records(c.frames[head:]))
        finally:
            os._exit(0)
    try:
        results = aiomb.run_workers(tick_while_quiet, fifo, workers=2)
    finally:
        os.waitpid(pid, 0)
    ends = [end for _, end in results if end is not None]
    assert len(ends) == 1
    for tick, _ in results:
        assert tick is not None and tick < ends[0] - 1.5, "a worker's Trio loop stopped while the pipe was quiet"


def pcap_records(frames) -> bytes:
    """The records of a pcap of ``frames``, without the file's header."""
    data = io.BytesIO()
    aiomb.testing.write_pcap(data, frames)
    return data.getvalue()[24:]


class Refused(Exception):
    pass


def test_a_workers_exception_is_raised_with_its_traceback(tmp_path):
    path = busy_capture(tmp_path / "busy.pcap", flows=40)

    async def fails_in_worker_1(stack):
        await stack.finished.wait()
        if aiomb.worker()[0] == 1:
            raise Refused("not this shard")

    with pytest.raises(Refused, match="not this shard") as info:
        aiomb.run_workers(fails_in_worker_1, path, workers=2)
    assert "raised in worker 1 of run_workers()" in info.value.__notes__[0]
    assert "fails_in_worker_1" in info.value.__notes__[0]


def test_a_result_that_does_not_pickle_is_named(tmp_path):
    path = busy_capture(tmp_path / "busy.pcap", flows=10)
    with pytest.raises(WorkerError, match="its result generator does not pickle"):
        aiomb.run_workers(lambda source: (n for n in range(3)), path, workers=2)


def test_a_damaged_capture_raises_with_its_offset(tmp_path):
    path = busy_capture(tmp_path / "busy.pcap", flows=40)
    data = path.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(aiomb.CaptureError, match="truncated record") as one:
        aiomb.run_workers(ended_flows, cut, workers=1)
    with pytest.raises(aiomb.CaptureError, match="truncated record") as two:
        aiomb.run_workers(ended_flows, cut, workers=2)
    assert two.value.offset == one.value.offset > 0


def test_misuse_is_refused_with_the_fix(tmp_path):
    path = busy_capture(tmp_path / "busy.pcap", flows=4)
    with pytest.raises(ValueError, match="workers must be an int from 1 to 1024"):
        aiomb.run_workers(ended_flows, path, workers=0)
    with pytest.raises(TypeError, match="give async def fn"):
        aiomb.run_workers(None, path, workers=2)
    with pytest.raises(TypeError, match=r"give a capture's path, aiomb.capture\(path\) or aiomb.port\(IF\)"):
        aiomb.run_workers(ended_flows, object(), workers=2)
    with pytest.raises(ValueError, match="duration= is for a live port"):
        aiomb.run_workers(ended_flows, path, workers=2, duration=5)
    with pytest.raises(ValueError, match="runs for duration= seconds"):
        aiomb.run_workers(ended_flows, aiomb.port("lo"), workers=2)
    with pytest.raises(ValueError, match="without queues="):
        aiomb.run_workers(ended_flows, aiomb.port("lo", queues=[0]), workers=2, duration=1)
    with pytest.raises(TypeError, match=r"def fn\(source\) makes its own engine$"):
        aiomb.run_workers(accepted_flows, aiomb.port("lo"), workers=2, duration=1, vlan_in_key=True)
    with pytest.raises(TypeError, match="only vlan_in_key and checksums"):
        aiomb.run_workers(accepted_flows, path, workers=2, midstream=True)
    with pytest.raises(aiomb.CaptureError, match="no such capture file"):
        aiomb.run_workers(ended_flows, tmp_path / "missing.pcap", workers=2)

    async def inside_trio():
        aiomb.run_workers(ended_flows, path, workers=2)

    with pytest.raises(RuntimeError, match="call it outside trio.run"):
        trio.run(inside_trio)

    async def open_with_workers():
        async with aiomb.open_stack(aiomb.capture(path), workers=2):
            pass

    with pytest.raises(TypeError, match=r"aiomb.run_workers\(fn, capture_path, workers=N\)"):
        trio.run(open_with_workers)


def test_ctrl_c_ends_the_input_and_the_workers_finish_on_what_they_got(tmp_path):
    """SIGINT in the parent: the reader ends the input, every worker's open flows end
    ``INTERRUPTED`` and its function returns; then KeyboardInterrupt is raised."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    program = tmp_path / "program.py"
    program.write_text(textwrap.dedent(f"""
        import os, sys, aiomb

        async def ends(stack):
            reasons = []
            async with stack.subscribe(aiomb.CONN_END) as events:
                async for ev in events:
                    reasons.append(ev.reason.name)
            # one write for the whole line: the two workers share the pipe (and print() writes
            # its pieces one by one when Python runs unbuffered)
            os.write(1, f"{{aiomb.worker()[0]}} {{','.join(sorted(set(reasons)))}}\\n".encode())

        print("started", flush=True)
        try:
            aiomb.run_workers(ends, {str(fifo)!r}, workers=2)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """))
    conversation = busy_capture(tmp_path / "busy.pcap", flows=40).read_bytes()
    with subprocess.Popen([sys.executable, str(program)], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout.readline() == b"started\n"
        with open(fifo, "wb") as writer:
            writer.write(conversation)          # the pipe stays open: the input has not ended
            writer.flush()
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
    lines = sorted(out.decode().splitlines())
    assert proc.returncode == 0, err.decode()
    assert lines[-1] == "interrupted"
    assert [line.split()[0] for line in lines[:-1]] == ["0", "1"]
    assert all("INTERRUPTED" in line for line in lines[:-1]), lines


def test_the_readme_example_runs_as_written(tmp_path):
    """README's run_workers example, run from the repository's root: the two workers' counts add
    up to the demo capture's 7 flows (4 fin, 2 rst, 1 end_of_capture)."""
    repo = pathlib.Path(__file__).resolve().parents[2]
    blocks = re.findall(r"```python\n(.*?)```", (repo / "README.md").read_text(), re.S)
    (example,) = [block for block in blocks if "aiomb.run_workers(end_reasons" in block]
    script = tmp_path / "example.py"
    script.write_text(example)
    proc = subprocess.run([sys.executable, str(script)], cwd=repo, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().rstrip().endswith("Counter({'fin': 4, 'rst': 2, 'end_of_capture': 1})")


def test_a_synchronous_program_on_workers_needs_neither_trio_nor_pyroute2(tmp_path):
    path = busy_capture(tmp_path / "busy.pcap", flows=20)
    program = ("import sys, aiomb\n"
               f"places = aiomb.run_workers(lambda source: aiomb.worker(), {str(path)!r}, workers=2)\n"
               "assert places == [(0, 2), (1, 2)], places\n"
               "print(sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'pyroute2')))\n")
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[]\n"
