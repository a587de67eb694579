"""``aiomb flows --workers N``: N engines in N processes give the records of one engine, byte for
byte, in the same order, whatever the capture, the format and the options; statistics sum up;
interruption, damaged captures and misuse behave as with one engine."""

import gzip
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import threading
import time

import attrs
import pytest

import aiomb
from aiomb._core import CaptureReader, FrameBatch
from aiomb._errors import CaptureError
from aiomb._records import FlowRun
from aiomb._workers import ShardedRun, WorkerError
from aiomb.io._capture import capture
from aiomb.testing import TcpConversation, udp_frame, write_pcap

from ..conftest import corpus_path
from ..core.test_shards import unordered


def corpus_captures():
    return sorted(p for p in corpus_path().rglob("*") if p.suffix in (".pcap", ".pcapng") and p.is_file())


def flows(path, *options, workers=1, check=True):
    proc = subprocess.run([sys.executable, "-m", "aiomb", "flows", str(path), "--workers", str(workers), *options],
                          capture_output=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


def busy_capture(path, flows=400, seed=3, *, stamps_go_back=False):
    """Many interleaved flows on coarse timestamps (ties), some closed, some idle past the
    default UDP timeout, a tuple reused, and flows open at the end; with ``stamps_go_back``, some
    stamps out of order (see test_shards.unordered)."""
    frames = []
    for i in range(flows):
        start = 1.0 + (i % 37) * 2.5
        if i % 7 == 0:
            frames += [(start, udp_frame(f"10.1.{i // 250}.{i % 250}", "10.2.0.1", 5000 + i, 53, b"q" * (i % 50))),
                       (start + 61.0 * (i % 3), udp_frame("10.2.0.1", f"10.1.{i // 250}.{i % 250}", 53, 5000 + i,
                                                          b"answer"))]
            continue
        client = (f"fd00::{i + 1:x}", 40000 + i % 9) if i % 3 == 0 else (f"10.0.{i // 250}.{i % 250}", 40000 + i % 9)
        c = TcpConversation(client, ("10.9.9.9", 443) if i % 3 else ("fd00::ff", 80), start_ts=start)
        c.handshake()
        c.send("client", b"x" * (1 + i * 37 % 4000))
        c.send("server", b"y" * (1 + i * 53 % 4000))
        if i % 4 == 0:
            c.fin("client")
            c.fin("server")
            c.ack("client")
        frames += [(round(ts, 1), frame) for ts, frame in c.frames]
    frames.sort(key=lambda f: f[0])
    write_pcap(path, unordered(frames, seed) if stamps_go_back else frames)
    return path


def records(run) -> bytes:
    """A run's records as JSON lines, and the error that ended it."""
    out = []
    try:
        for batch in run:
            out.append(batch.format("jsonl"))
    except CaptureError as exc:
        out.append(str(exc).encode())
    return b"".join(out)


@pytest.mark.parametrize("timeouts", [{}, dict(tcp_syn_timeout=0.4, tcp_established_timeout=0.5,
                                               tcp_closed_timeout=0.2, udp_timeout=0.3)])
def test_every_corpus_capture_gives_one_engines_records(timeouts):
    """Every capture of the corpus, with the default timeouts and with short ones (flows leave
    by timeout all along, in the middle of the workers' batches)."""
    for path in corpus_captures():
        one = records(FlowRun(capture(path), midstream=True, **timeouts))
        for workers in (2, 3):
            assert records(ShardedRun(path, workers, midstream=True, **timeouts)) == one, (path, workers)


@pytest.mark.parametrize("options", [("--format", "jsonl", "--hash", "sha256,md5", "--community-id"),
                                     ("--format", "zeek", "--community-id"), ("--format", "csv", "--sort"),
                                     ("--format", "table", "--filter", "tcp"), ("--format", "zeek-json", "--vlan")])
def test_every_format_and_option_gives_the_same_output(tmp_path, options):
    path = busy_capture(tmp_path / "busy.pcap")
    one = output(flows(path, *options))
    assert len(one) > 300
    assert output(flows(path, *options, workers=2)) == one
    assert output(flows(path, *options, workers=4)) == one


def test_a_capture_whose_stamps_go_back_gives_one_engines_records(tmp_path):
    """Stamps out of order, with timeouts short enough for flows to leave all along."""
    path = busy_capture(tmp_path / "unordered.pcap", stamps_go_back=True)
    timeouts = dict(tcp_syn_timeout=2.0, tcp_established_timeout=3.0, tcp_closed_timeout=1.0, udp_timeout=2.0)
    one = records(FlowRun(capture(path), midstream=True, **timeouts))
    rows = [json.loads(line) for line in one.splitlines()]
    assert len(rows) > 300 and any(r["last_ts"] < r["first_ts"] for r in rows)
    for workers in (2, 3):
        assert records(ShardedRun(path, workers, midstream=True, **timeouts)) == one, workers


def output(proc) -> list[bytes]:
    """The lines written, but Zeek's #open and #close (the wall-clock time of the run)."""
    return [line for line in proc.stdout.splitlines() if not line.startswith((b"#open", b"#close"))]


def test_the_statistics_add_up_to_one_engines(tmp_path):
    path = busy_capture(tmp_path / "busy.pcap")
    one = flows(path, "--format", "jsonl", "--stats").stderr.decode()
    many = flows(path, "--format", "jsonl", "--stats", workers=3).stderr.decode()
    assert one.split(";")[0] == many.split(";")[0]          # packets, flows, malformed (not the time)
    single = FlowRun(capture(path), midstream=True)
    assert sum(len(r) for r in single) > 300
    run = ShardedRun(path, 3, midstream=True)
    assert sum(len(r) for r in run) == single.statistics().flows_created
    peaks = ("stream_memory_peak", "stream_buffer_peak", "event_memory_peak")     # each worker's own: the largest
    assert {k: v for k, v in attrs.asdict(run.statistics()).items() if k not in peaks} == \
        {k: v for k, v in attrs.asdict(single.statistics()).items() if k not in peaks}


def test_a_damaged_capture_ends_alike(tmp_path):
    path = busy_capture(tmp_path / "busy.pcap")
    data = path.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3])
    one = flows(cut, "--format", "jsonl", check=False)
    many = flows(cut, "--format", "jsonl", workers=2, check=False)
    assert one.returncode == 1 and b"truncated record" in one.stderr
    assert (many.returncode, many.stdout, many.stderr) == (one.returncode, one.stdout, one.stderr)
    app_one = aiomb_run(DEMO / "flow_monitor.py", "--pcap", cut, check=False)
    app_many = aiomb_run(DEMO / "flow_monitor.py", "--pcap", cut, "--workers", "2", check=False)
    assert app_one.returncode == app_many.returncode == 1
    assert app_many.stderr == app_one.stderr and app_one.stderr.count(b"truncated record") == 1   # said once


@pytest.mark.parametrize("stats", [(), ("--stats",)], ids=["", "stats"])
@pytest.mark.parametrize("fmt", ["table", "jsonl", "csv", "zeek", "zeek-json"])
@pytest.mark.parametrize("content", [b"Not a capture: a text file.\n" * 3, b"\xd4\xc3\xb2\xa1\x02\x00",
                                     gzip.compress(b"Not a capture either.\n" * 3)], ids=["text", "short", "gzip"])
def test_a_file_that_is_no_capture_gives_one_engines_error(tmp_path, content, fmt, stats):
    """A file that is no capture fails before the workers start: the error and the exit status
    are one engine's, with --stats too (nothing was read: no figures from either, and no traceback)."""
    path = tmp_path / "input.pcap"
    path.write_bytes(content)
    one = flows(path, "--format", fmt, *stats, check=False)
    many = flows(path, "--format", fmt, *stats, workers=2, check=False)
    assert one.returncode == 1 and one.stderr.splitlines()[-1].startswith(b"aiomb: error: ")
    assert many.returncode == one.returncode
    assert many.stderr == one.stderr and b" packets, " not in one.stderr
    assert b"Traceback" not in many.stderr
    assert output(many) == output(one)


@pytest.fixture(scope="module")
def long_capture(tmp_path_factory):
    """About 300k packets: long enough to be interrupted, or to lose a worker, midway."""
    frames = []
    for i in range(2000):
        c = TcpConversation((f"10.0.{i // 250}.{i % 250}", 1000 + i), ("10.9.9.9", 80), start_ts=1.0 + i / 10)
        c.handshake()
        c.send("client", b"x" * 3000)
        if i % 2:
            c.rst("client")
        frames += c.frames
    path = tmp_path_factory.mktemp("long") / "long.pcap"
    write_pcap(path, [(ts + 1000.0 * k, frame) for k in range(20) for ts, frame in frames])
    return path


def test_sigint_ends_the_workers_and_writes_the_open_flows(long_capture):
    with subprocess.Popen([sys.executable, "-m", "aiomb", "flows", str(long_capture), "--format", "jsonl",
                           "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        first = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()               # (communicate() would skip what readline() buffered)
        err = proc.stderr.read()
        proc.wait(timeout=60)
    rows = [json.loads(line) for line in (first + rest).splitlines()]
    assert proc.returncode == 128 + signal.SIGINT, err.decode()
    assert rows[-1]["end_reason"] == "interrupted"
    assert len({r["flow"] for r in rows}) == len(rows)
    assert len(rows) < 40000                                # stopped early
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and running(pid, str(long_capture))]


def running(pid: str, arg: str) -> bool:
    """Whether process ``pid`` runs with ``arg`` on its command line (forked workers keep their
    parent's)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return arg.encode() in f.read().split(b"\0")
    except OSError:
        return False


def test_misuse_is_refused_with_the_fix(tmp_path):
    path = busy_capture(tmp_path / "busy.pcap", flows=10)
    proc = flows(path, workers=0, check=False)
    assert proc.returncode == 2 and b"--workers 0" in proc.stderr
    with pytest.raises(ValueError, match="workers must be"):
        ShardedRun(path, 1)


def through_fifo(tmp_path, path, command):
    """``command(fifo)``'s result while a thread writes the capture at ``path`` into a named pipe."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(path.read_bytes()))
    writer.start()
    try:
        return command(fifo)
    finally:
        writer.join(timeout=60)
        fifo.unlink()


def test_a_capture_from_a_pipe_is_read_once_for_every_worker(tmp_path):
    """One reader feeds the workers: a named pipe will do, for aiomb flows and aiomb run."""
    path = busy_capture(tmp_path / "busy.pcap")
    piped = through_fifo(tmp_path, path, lambda fifo: flows(fifo, "--format", "jsonl", workers=2))
    assert piped.stdout == flows(path, "--format", "jsonl").stdout
    demo = DEMO / "captures" / "demo.pcapng"
    one = aiomb_run(DEMO / "flow_monitor.py", "--pcap", demo).stdout.decode().splitlines()
    two = through_fifo(tmp_path, demo, lambda fifo: aiomb_run(DEMO / "flow_monitor.py", "--pcap", fifo,
                                                              "--workers", "2")).stdout.decode().splitlines()
    assert sorted(line for line in two if " flows: " not in line) == sorted(one[:-1])


def closed_then_quiet(tmp_path):
    """Two pieces of a capture, for a pipe: six TCP flows closed, then a UDP packet 100 s later
    (the closed flows have lingered: one engine writes them there); the rest (records only, no
    file header) comes after a pause: another UDP flow. Returns (first, rest, the whole file)."""
    frames = []
    for i in range(6):                  # different ports: the flows fall to both workers
        c = TcpConversation((f"10.0.0.{i + 1}", 40000 + i), ("10.0.0.100", 80), start_ts=1.0 + i / 10)
        c.handshake()
        c.send("client", b"GET / HTTP/1.0\r\n\r\n")
        c.send("server", b"HTTP/1.0 200 OK\r\n\r\n")
        c.fin("client")
        c.fin("server")
        c.ack("client")
        frames += c.frames
    frames.sort(key=lambda f: f[0])
    frames.append((101.0, udp_frame("10.1.1.1", "10.1.1.2", 5353, 53, b"q")))
    write_pcap(tmp_path / "first.pcap", frames)
    write_pcap(tmp_path / "whole.pcap", frames + [(102.0, udp_frame("10.2.2.1", "10.2.2.2", 5354, 53, b"r"))])
    first, whole = (tmp_path / "first.pcap").read_bytes(), (tmp_path / "whole.pcap").read_bytes()
    return first, whole[len(first):], tmp_path / "whole.pcap"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_pipe_s_records_come_as_the_flows_end(tmp_path, workers):
    """A pipe's writer pauses after flows have ended: their records are written at once, with
    one engine as with workers (the workers held them back until more input came, as long as
    the pause lasted); the whole output is one engine's on the whole capture."""
    first, rest, whole = closed_then_quiet(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with subprocess.Popen([sys.executable, "-m", "aiomb", "flows", str(fifo), "--format", "jsonl",
                           "--workers", str(workers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            with open(fifo, "wb") as writer:
                writer.write(first)
                writer.flush()
                ended = b""
                deadline = time.monotonic() + 10
                while ended.count(b"\n") < 6 and select.select([proc.stdout], [], [],
                                                                  max(0, deadline - time.monotonic()))[0]:
                    chunk = os.read(proc.stdout.fileno(), 1 << 16)
                    if not chunk:
                        break
                    ended += chunk
                writer.write(rest)      # (the writer still open above: the pause)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert [json.loads(line)["end_reason"] for line in ended.splitlines()] == ["fin"] * 6, \
        "the ended flows' records did not come while the pipe paused"
    assert ended + out == flows(whole, "--format", "jsonl").stdout


@pytest.mark.parametrize("members", [1, 2])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_gzip_capture_from_a_slow_writer_s_pipe_gives_the_file_s_records(tmp_path, workers, members):
    """`slow-writer | aiomb flows -`: the reader finds the pipe empty now and then, within a gzip
    member and between two (one engine, or the reader process feeding the workers); that is
    neither damage nor the end: the records are the file's."""
    path = busy_capture(tmp_path / "busy.pcap")
    data = path.read_bytes()
    half = len(data) // 2
    gz = gzip.compress(data, mtime=0) if members == 1 else \
        gzip.compress(data[:half], mtime=0) + gzip.compress(data[half:], mtime=0)
    with subprocess.Popen([sys.executable, "-m", "aiomb", "flows", "-", "--format", "jsonl", "--workers",
                           str(workers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        try:
            def write_slowly():
                step = len(gz) // 12 + 1
                try:
                    for at in range(0, len(gz), step):
                        proc.stdin.write(gz[at:at + step])
                        proc.stdin.flush()
                        time.sleep(0.05)
                    proc.stdin.close()
                except BrokenPipeError:
                    pass                # aiomb gave up early: its status says why
            writer = threading.Thread(target=write_slowly)
            writer.start()
            out = proc.stdout.read()
            err = proc.stderr.read()
            writer.join(timeout=60)
            proc.wait(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert out == flows(path, "--format", "jsonl").stdout


@pytest.mark.parametrize("command", ["flows", "run"])
def test_a_signal_ends_a_quiet_pipe_at_once(tmp_path, command):
    """The reader waits for a pipe's next bytes that do not come: SIGTERM still ends the run at
    once, the open flows ending ``interrupted`` (before, it waited for the writer to close)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    conversation = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80), start_ts=1.0)
    conversation.handshake()
    conversation.send("client", b"hello")
    write_pcap(tmp_path / "open.pcap", conversation.frames)
    argv = (["flows", str(fifo), "--format", "jsonl"] if command == "flows" else
            ["run", str(DEMO / "flow_monitor.py"), "--pcap", str(fifo)])
    with subprocess.Popen([sys.executable, "-m", "aiomb", *argv, "--workers", "2"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        with open(fifo, "wb") as writer:
            writer.write((tmp_path / "open.pcap").read_bytes())
            writer.flush()
            time.sleep(1.0)                     # the reader has the frames and waits for more
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)     # the writer is still open
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    if command == "flows":
        assert [json.loads(line)["end_reason"] for line in out.splitlines()] == ["interrupted"]


def test_a_worker_killed_is_reported(long_capture):
    run = ShardedRun(long_capture, 2, midstream=True)
    with pytest.raises(WorkerError, match="worker 1 ended without a word"):
        for n, _ in enumerate(run):
            if n == 0:
                os.kill(run._procs[1].pid, signal.SIGKILL)


def test_the_reader_killed_is_reported(long_capture, tmp_path):
    """A compressed capture comes through a reader process (the workers read a plain pcap file
    themselves)."""
    packed = tmp_path / "long.pcap.gz"
    packed.write_bytes(gzip.compress(long_capture.read_bytes(), compresslevel=1))
    run = ShardedRun(packed, 2, midstream=True)
    with pytest.raises(WorkerError, match="the reader ended without a word"):
        for n, _ in enumerate(run):
            if n == 0:
                os.kill(run._procs[-1].pid, signal.SIGKILL)
    assert not any(proc.is_alive() for proc in run._procs)


def test_read_flows_with_workers_gives_the_same_table(tmp_path):
    path = busy_capture(tmp_path / "busy.pcap")
    one = aiomb.read_flows(path)
    two = aiomb.read_flows(str(path), workers=2)
    assert len(one) > 300
    assert bytes(memoryview(two.records)) == bytes(memoryview(one.records))
    with pytest.raises(TypeError, match="give its path"):
        aiomb.read_flows(capture(path), workers=2)


DEMO = pathlib.Path(__file__).resolve().parents[2] / "examples"


def aiomb_run(*argv, check=True):
    proc = subprocess.run([sys.executable, "-m", "aiomb", "run", *map(str, argv)], capture_output=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


def test_aiomb_run_workers_split_the_flows_of_an_app(tmp_path):
    """Each worker runs the app on its shard: every flow is reported once, by one worker."""
    capture_file = DEMO / "captures" / "demo.pcapng"
    one = [line for line in aiomb_run(DEMO / "flow_monitor.py", "--pcap", capture_file).stdout.decode().splitlines()
           if line]
    two = [line for line in aiomb_run(DEMO / "flow_monitor.py", "--pcap", capture_file, "--workers", "2")
           .stdout.decode().splitlines() if line]
    summaries = [line for line in two if " flows: " in line]
    assert len(summaries) == 2
    assert sum(int(line.split()[0]) for line in summaries) == int(one[-1].split()[0]) == 7
    assert sorted(line for line in two if line not in summaries) == sorted(one[:-1])


def test_aiomb_run_workers_tell_each_app_its_place(tmp_path):
    app = tmp_path / "count.py"
    app.write_text(
        "import json, aiomb\n"
        "seen = []\n"
        "def setup(stack):\n"
        "    stack.on(aiomb.CONN_START, lambda packet: seen.append(packet.flow.id))\n"
        "async def run(stack):\n"
        "    await stack.finished.wait()\n"
        "    print(json.dumps({'worker': aiomb.worker(), 'flows': len(seen)}))\n")
    path = busy_capture(tmp_path / "busy.pcap")
    single = json.loads(aiomb_run(app, "--pcap", path, "--midstream").stdout)
    assert single["worker"] == [0, 1]
    out = aiomb_run(app, "--pcap", path, "--midstream", "--workers", "3").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(tuple(r["worker"]) for r in rows) == [(0, 3), (1, 3), (2, 3)]
    assert sum(r["flows"] for r in rows) == single["flows"] > 300


def test_aiomb_run_workers_epoll_program_and_misuse(tmp_path):
    capture_file = DEMO / "captures" / "demo.pcapng"
    one = aiomb_run(DEMO / "midstat_epoll.py", "--pcap", capture_file)
    two = aiomb_run(DEMO / "midstat_epoll.py", "--pcap", capture_file, "--workers", "2")
    assert one.stdout and two.stdout
    bad = aiomb_run(DEMO / "flow_monitor.py", "--pcap", capture_file, "--workers", "0", check=False)
    assert bad.returncode == 2 and b"--workers 0" in bad.stderr
    missing = aiomb_run(tmp_path / "nope.py", "--pcap", capture_file, "--workers", "2", check=False)
    assert missing.returncode == 2 and b"not found" in missing.stderr


def test_aiomb_run_worker_whose_app_returns_early_lets_the_others_finish(long_capture, tmp_path):
    """An app's main(source) that returns at once in worker 1: the worker takes the rest of its
    share unread, and worker 0 reads every frame (its own and the others' as ticks)."""
    app = tmp_path / "early.py"
    app.write_text("import aiomb\n\n\ndef main(source):\n"
                   "    if aiomb.worker()[0] == 1:\n        return\n"
                   "    batch, count = aiomb.FrameBatch(2048), 0\n"
                   "    while (got := source.read(batch)) is not None:\n        count += got\n"
                   "    print(count)\n")
    with CaptureReader(long_capture) as reader:
        batch, frames = FrameBatch(4096), 0
        while got := reader.fill(batch):
            frames += got
    proc = aiomb_run(app, "--pcap", long_capture, "--workers", "2")
    assert proc.stdout.decode().split() == [str(frames)]
