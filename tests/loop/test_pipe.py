"""A capture read from a pipe whose writer is quiet (``tcpdump -w - | ...``, a named pipe).

Under Trio the source waits for the pipe's next bytes without holding the loop: other tasks,
Trio's clock, cancellation and ``stop()`` go on; a synchronous ``read()`` waits as before.
The writer is the test's own: it holds the named pipe open (read-write, so opening the source
does not wait for it) and writes only when told. A watchdog thread closes it after WATCHDOG
seconds, so that a source that blocks the loop fails a test (``rescued``) instead of hanging it.
"""

import gzip
import io
import os
import threading
import zlib

import pytest
import trio
import trio.testing

import aiomb
from aiomb import CONN_END, CONN_START, EndReason, open_stack
from aiomb.testing import TcpConversation, write_pcap

WATCHDOG = 10.0


def pcap_bytes(frames) -> bytes:
    data = io.BytesIO()
    write_pcap(data, frames)
    return data.getvalue()


def conversation():
    """A whole connection, and the length of the pcap's header and first four records (the
    handshake and the request): what the writer gives before it goes quiet."""
    c = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80))
    c.handshake()
    c.send("client", b"GET / HTTP/1.0\r\n\r\n")
    first = len(pcap_bytes(c.frames))
    c.send("server", b"HTTP/1.0 200 OK\r\n\r\n")
    c.fin("server")
    c.fin("client")
    c.ack("server")
    return pcap_bytes(c.frames), first


def written_as(data: bytes, first: int, form: str) -> tuple[bytes, bytes]:
    """``data`` as a writer gives it (``form``: plain, gzip, or gzip in two members), in two
    pieces: what decompresses to ``data[:first]``, then the rest."""
    if form == "plain":
        return data[:first], data[first:]
    if form == "gzip members":
        return gzip.compress(data[:first], mtime=0), gzip.compress(data[first:], mtime=0)
    z = zlib.compressobj(wbits=31)
    return z.compress(data[:first]) + z.flush(zlib.Z_SYNC_FLUSH), z.compress(data[first:]) + z.flush()


FORMS = ["plain", "gzip", "gzip members"]


class QuietWriter:
    """The write end of a named pipe made at ``path``, which has had ``head`` written."""

    def __init__(self, path, head: bytes):
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDWR)
        self.rescued = False
        self._lock = threading.Lock()
        os.write(self.fd, head)
        self._watchdog = threading.Timer(WATCHDOG, self._rescue)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _rescue(self) -> None:
        self.rescued = True
        self.close()

    def feed(self, data: bytes) -> None:
        """Write ``data`` and close the pipe (its reader then sees the end), unless the watchdog did."""
        with self._lock:
            if self.fd >= 0:
                os.write(self.fd, data)
        self.close()

    def close(self) -> None:
        self._watchdog.cancel()
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


@pytest.mark.parametrize("form", FORMS)
async def test_trio_s_clock_runs_while_a_pipe_is_quiet(tmp_path, autojump_clock, form):
    """The writer stops in the middle of a record (of a gzip member, or between two): the stack
    takes the whole records, then the loop goes on (the clock jumps once every task waits), and
    the rest of the record comes later."""
    data, first = conversation()
    head, rest = written_as(data, first + 10, form)
    path = tmp_path / "live.pcap"
    writer = QuietWriter(path, head)
    try:
        async with open_stack(aiomb.capture(path)) as stack:
            async with stack.subscribe(CONN_START, CONN_END) as events:
                stack.start()
                await trio.sleep(60)
                assert not writer.rescued, "the source held the Trio loop while the pipe was quiet"
                assert stack.statistics().packets == 4
                writer.feed(rest)
                reasons = [ev.reason async for ev in events if ev.kind == CONN_END]
        assert reasons == [EndReason.FIN]
        assert stack.statistics().packets == 8
    finally:
        writer.close()


async def test_other_tasks_run_while_a_pipe_is_quiet(tmp_path):
    """A consumer handed the flow's start waits until every other task is blocked (the source on
    the quiet pipe), then writes the rest of the capture."""
    data, first = conversation()
    path = tmp_path / "live.pcap"
    writer = QuietWriter(path, data[:first])
    kinds = []
    try:
        async with open_stack(aiomb.capture(path)) as stack:
            async with stack.subscribe(CONN_START, CONN_END) as events:
                async for ev in events:
                    kinds.append((ev.kind, ev.reason))
                    if ev.kind == CONN_START:
                        await trio.testing.wait_all_tasks_blocked()
                        assert not writer.rescued, "the source held the Trio loop while the pipe was quiet"
                        writer.feed(data[first:])
        assert kinds == [(CONN_START, None), (CONN_END, EndReason.FIN)]
    finally:
        writer.close()


async def test_a_stack_on_a_quiet_pipe_is_cancelled_at_once(tmp_path):
    data, first = conversation()
    path = tmp_path / "live.pcap"
    writer = QuietWriter(path, data[:first])
    try:
        with trio.CancelScope() as scope:
            async with open_stack(aiomb.capture(path)) as stack:
                stack.start()
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
        assert scope.cancelled_caught
        assert not writer.rescued, "the source held the Trio loop while the pipe was quiet"
    finally:
        writer.close()


async def test_stop_ends_a_quiet_pipe_s_flows_interrupted(tmp_path):
    """``stop()`` ends the input while the source waits: the open flow ends ``interrupted``
    and the subscription finishes, the writer still quiet."""
    data, first = conversation()
    path = tmp_path / "live.pcap"
    writer = QuietWriter(path, data[:first])
    source = aiomb.capture(path)
    ends = []
    try:
        async with open_stack(source) as stack:
            async with stack.subscribe(CONN_START, CONN_END) as events:
                async for ev in events:
                    if ev.kind == CONN_START:
                        await trio.testing.wait_all_tasks_blocked()
                        source.stop()
                    else:
                        ends.append((ev.reason, ev.stats.client.packets))
        assert not writer.rescued, "the source held the Trio loop while the pipe was quiet"
        assert ends == [(EndReason.INTERRUPTED, 3)]
    finally:
        writer.close()


@pytest.mark.parametrize("form", FORMS)
def test_read_waits_for_a_quiet_pipe(tmp_path, form):
    """The synchronous ``read()`` waits for the pipe's next bytes (the end of a record the writer
    stopped in, within a gzip member or between two) rather than taking a quiet pipe for its
    end or for damage."""
    data, first = conversation()
    head, rest = written_as(data, first + 10, form)
    path = tmp_path / "live.pcap"
    writer = QuietWriter(path, head)
    later = threading.Timer(0.1, writer.feed, (rest,))
    counts = []
    try:
        with aiomb.capture(path) as source:
            batch = aiomb.FrameBatch(64)
            later.start()
            while (count := source.read(batch)) is not None:
                counts.append(count)
        assert counts[0] == 4 and sum(counts) == 8
        assert not writer.rescued
    finally:
        later.cancel()
        writer.close()


def test_read_after_stop_ends_the_input(tmp_path):
    data, first = conversation()
    path = tmp_path / "file.pcap"
    path.write_bytes(data)
    with aiomb.capture(path) as source:
        batch = aiomb.FrameBatch(4)
        assert source.read(batch) == 4
        source.stop()
        assert source.read(batch) is None
        assert source.end_reason == EndReason.INTERRUPTED


class LateWriter:
    """A named pipe made at ``path`` that no one writes yet: ``write(data)`` opens it for
    writing, writes and closes. A watchdog thread does that with the whole ``data`` after
    WATCHDOG seconds (``rescued``), so that a source whose open() waits for a writer in the
    Trio thread fails a test instead of hanging it."""

    def __init__(self, path, data: bytes):
        os.mkfifo(path)
        self.path = path
        self.rescued = False
        self._written = threading.Event()
        self._watchdog = threading.Timer(WATCHDOG, self._rescue, (data,))
        self._watchdog.daemon = True
        self._watchdog.start()

    def _rescue(self, data: bytes) -> None:
        if not self._written.is_set():
            self.rescued = True
            self.write(data)

    def write(self, data: bytes) -> None:
        self._written.set()
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._watchdog.cancel()


async def test_a_stack_waits_for_a_named_pipe_s_writer_in_the_loop(tmp_path):
    """Opening a named pipe no one writes yet does not hold the Trio loop: the stack opens it
    when the writer comes, and reads the whole capture."""
    data, _ = conversation()
    path = tmp_path / "fifo.pcap"
    writer = LateWriter(path, data)
    kinds = []
    try:
        async with trio.open_nursery() as nursery:
            async def run():
                async with open_stack(aiomb.capture(path)) as stack:
                    async with stack.subscribe(CONN_START, CONN_END) as events:
                        async for ev in events:
                            kinds.append((ev.kind, ev.reason))
            nursery.start_soon(run)
            await trio.testing.wait_all_tasks_blocked()
            assert not writer.rescued, "opening the named pipe held the Trio loop until its writer came"
            await trio.to_thread.run_sync(writer.write, data)
        assert kinds == [(CONN_START, None), (CONN_END, EndReason.FIN)]
    finally:
        writer.close()


async def test_a_stack_waiting_for_a_named_pipe_s_writer_is_cancelled_or_stopped_at_once(tmp_path):
    data, _ = conversation()
    path = tmp_path / "fifo.pcap"
    writer = LateWriter(path, data)
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                async def cancel_when_blocked():
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
                nursery.start_soon(cancel_when_blocked)
                async with open_stack(aiomb.capture(path)):
                    pytest.fail("the stack opened without a writer")
        assert scope.cancelled_caught and not writer.rescued

        source = aiomb.capture(path)
        packets = []
        async with trio.open_nursery() as nursery:
            async def run():
                async with open_stack(source) as stack:
                    await stack.run()
                    packets.append(stack.statistics().engine.packets)
            nursery.start_soon(run)
            await trio.testing.wait_all_tasks_blocked()
            source.stop()           # as `aiomb run` on SIGTERM: the input ends, here before it began
        assert packets == [0] and not writer.rescued
    finally:
        writer.close()
