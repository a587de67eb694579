"""pytest-trio: a coroutine per flow (Stack.spawn_per_flow, FlowTask).

Captures are written with aiomb.testing; time is packet time (the stack's clock) or Trio's
``autojump_clock``: nothing sleeps for real.
"""

import functools
import gc
import logging
import weakref

import pytest
import trio

import aiomb
from aiomb import CONN_START, ESTABLISHED, FIN, RETRANSMIT, UDP_START, EndReason, Side
from aiomb.testing import TcpConversation, udp_frame, write_pcap

REQUEST = b"GET /index.html HTTP/1.1\r\nHost: example\r\n\r\n"


def capture_of(tmp_path, frames, name="c.pcap"):
    path = tmp_path / name
    write_pcap(path, sorted(frames, key=lambda f: f[0]))
    return aiomb.capture(path)


def client_of(i: int) -> tuple[str, int]:
    return (f"10.{1 + i // 60000}.{i // 250 % 240}.{i % 250 + 1}", 1024 + i % 60000)


@functools.cache
def lockstep_flows(n: int) -> tuple:
    """``n`` HTTP-like flows that all start before any ends: step k of every flow is at second
    1 + k (flow i at + i µs): handshake, a request, a two-segment response, FIN close."""
    frames = []
    for i in range(n):
        c = TcpConversation(client_of(i), ("10.0.0.2", 80))
        c.handshake()
        c.send("client", REQUEST)
        c.send("server", b"HTTP/1.1 200 OK\r\n\r\n")
        c.send("server", b"%d" % i)
        c.fin("client")
        c.fin("server")
        c.ack("client")
        frames += [(1.0 + k + i * 1e-6, f) for k, (_, f) in enumerate(c.frames)]
    return tuple(frames)


def open_flows(n: int) -> list:
    """``n`` flows whose handshakes all come first (one batch), then their data and FIN closes."""
    frames = []
    for i in range(n):
        c = TcpConversation(client_of(i), ("10.0.0.2", 80))
        c.handshake()
        c.send("client", b"hello %d" % i)
        c.fin("client")
        c.fin("server")
        c.ack("client")
        frames += [(1.0 + k + i * 1e-6, f) for k, (_, f) in enumerate(c.frames)]
    return frames


# -- many flows at once -------------------------------------------------------------------


async def test_thousands_of_concurrent_coroutines_each_see_their_own_flow(tmp_path):
    n = 3000
    results = {}
    tasks = weakref.WeakSet()

    async def handle(flow):
        tasks.add(flow)
        est = await flow.wait(ESTABLISHED)
        assert est.kind is ESTABLISHED and est.key == flow.key
        request = await flow.read_until(b"\r\n\r\n", Side.CLIENT)
        response = b"".join([chunk async for chunk in flow.stream(Side.SERVER)])
        end = await flow.ended()
        results[str(flow.key.client_ip), flow.key.client_port] = (request, response, end.reason)

    async with aiomb.open_stack(capture_of(tmp_path, lockstep_flows(n))) as stack:
        per_flow = stack.spawn_per_flow(handle, "tcp port 80")
        await stack.run()
        stats = per_flow.statistics()
        assert stack.flows() == []                                 # the flow table is empty
        assert per_flow._nursery.child_tasks == frozenset()        # and the coroutines' nursery
    assert results == {client_of(i): (REQUEST, b"HTTP/1.1 200 OK\r\n\r\n%d" % i, EndReason.FIN) for i in range(n)}
    assert (stats.accepted, stats.started, stats.finished, stats.running, stats.queued) == (n, n, n, 0, 0)
    assert stats.max_running == n                                  # all alive at once
    assert (stats.failed, stats.skipped, stats.overruns) == (0, 0, 0)
    gc.collect()
    assert len(tasks) == 0                                         # no FlowTask outlives its coroutine


# -- bounds ------------------------------------------------------------------------------


async def test_the_limit_holds_and_queued_flows_keep_their_events(tmp_path):
    alive = peak = 0
    got = {}

    async def handle(flow):
        nonlocal alive, peak
        alive += 1
        peak = max(peak, alive)
        try:
            est = await flow.wait(ESTABLISHED)
            data = b"".join([chunk async for chunk in flow.stream(Side.CLIENT)])
            got[flow.key.client_port] = (est.kind, data, flow.end_reason)
        finally:
            alive -= 1

    async with aiomb.open_stack(capture_of(tmp_path, open_flows(50))) as stack:
        per_flow = stack.spawn_per_flow(handle, limit=10, max_queued=100)
        await stack.run()
    stats = per_flow.statistics()
    assert peak == stats.max_running == 10
    assert (stats.started, stats.skipped, stats.finished, stats.queued) == (50, 0, 50, 0)
    assert got == {client_of(i)[1]: (ESTABLISHED, b"hello %d" % i, EndReason.FIN) for i in range(50)}


@pytest.mark.parametrize(("overflow", "max_queued", "started"), [("skip", 1024, 10), ("queue", 5, 15)])
async def test_flows_beyond_the_limit_and_the_queue_are_skipped_and_counted(tmp_path, overflow, max_queued, started):
    handled = []

    async def handle(flow):
        await flow.ended()
        handled.append(flow.key.client_port)

    async with aiomb.open_stack(capture_of(tmp_path, open_flows(50))) as stack:     # 50 starts in one batch
        per_flow = stack.spawn_per_flow(handle, limit=10, overflow=overflow, max_queued=max_queued)
        await stack.run()
    stats = per_flow.statistics()
    assert (stats.accepted, stats.started, stats.skipped) == (50, started, 50 - started)
    assert sorted(handled) == [client_of(i)[1] for i in range(started)]
    assert stats.max_running == 10


async def test_a_coroutine_behind_pauses_the_capture_and_loses_nothing(tmp_path, autojump_clock):
    c = TcpConversation()
    c.handshake()
    parts = [b"%04d" % i for i in range(40)]
    for part in parts:
        c.send("client", part)
    c.fin("client")
    got = []

    async def handle(flow):
        async for chunk in flow.stream(Side.CLIENT):
            got.append(chunk)
            await trio.sleep(1)                    # busy elsewhere: the pump must wait

    async with aiomb.open_stack(capture_of(tmp_path, c.frames), batch_size=1) as stack:
        per_flow = stack.spawn_per_flow(handle, max_chunks=2)
        await stack.run()
        assert stack.statistics().source_pauses >= 30
    assert b"".join(got) == b"".join(parts)
    assert per_flow.statistics().overruns == 0 and per_flow.statistics().pauses >= 30


async def test_a_side_nobody_reads_becomes_a_hole_past_its_bound_instead_of_a_deadlock(tmp_path):
    c = TcpConversation()
    c.handshake()
    c.send("client", b"request")
    for i in range(10):
        c.send("server", b"%02d" % i)
    c.fin("server")
    c.fin("client")
    c.ack("server")
    got = []

    async def handle(flow):
        got.append(b"".join([chunk async for chunk in flow.stream(Side.CLIENT)]))   # ends with the flow
        try:
            async for chunk in flow.stream(Side.SERVER):
                got.append(chunk)
        except aiomb.StreamGap as gap:
            got.append((gap.offset, gap.length))

    async with aiomb.open_stack(capture_of(tmp_path, c.frames), batch_size=1) as stack:
        per_flow = stack.spawn_per_flow(handle, max_chunks=4)
        await stack.run()
    assert got == [b"request", b"00", b"01", b"02", b"03", (8, 12)]
    assert (per_flow.statistics().overruns, per_flow.statistics().overrun_bytes) == (6, 12)


def holey_flow(holes: int, after: int = 0) -> list:
    """A client stream of ``holes`` 10-byte chunks, each followed by a lost 3-byte segment; one
    server ACK past them all makes every hole a gap at once: a batch of GAP, NEW_DATA, ... .
    Then ``after`` 10-byte segments in order."""
    c = TcpConversation()
    c.handshake()
    for i in range(holes):
        c.send("client", b"%09d\n" % i)
        c.send("client", b"---")
        c.frames.pop()                               # lost
    c.ack("server")
    for i in range(after):
        c.send("client", b"after %03d\n" % i)
    c.fin("client")
    c.fin("server")
    c.ack("client")
    return c.frames


def holey_stream(holes: int) -> list:
    return [item for i in range(holes) for item in (b"%09d\n" % i, aiomb.Gap(13 * i + 10, 3))]


def coalesced(items: list) -> list:
    """``items`` with adjacent byte chunks joined (chunk boundaries follow receive batches)."""
    out = []
    for item in items:
        if isinstance(item, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += item
        else:
            out.append(item)
    return out


async def read_all(stream, gaps: str) -> list:
    """Every chunk and hole of ``stream`` in order, holes as Gap whichever way they come."""
    got = []
    while True:
        try:
            async for chunk in stream:
                got.append(chunk)
            return got
        except aiomb.StreamGap as gap:
            assert gaps == "raise"
            got.append(aiomb.Gap(gap.offset, gap.length))


@pytest.mark.parametrize("gaps", ["mark", "raise"])
@pytest.mark.parametrize("batch_size", [1, 7, 2048])
async def test_a_reader_that_keeps_up_gets_every_chunk_and_hole_however_many_one_batch_brings(
        tmp_path, gaps, batch_size):
    got = []

    async def handle(flow):
        got.extend(await read_all(flow.stream(Side.CLIENT), gaps))

    with trio.fail_after(60):
        async with aiomb.open_stack(capture_of(tmp_path, holey_flow(200)), batch_size=batch_size) as stack:
            per_flow = stack.spawn_per_flow(handle, gaps=gaps, max_chunks=64, errors="raise")
            await stack.run()
    assert coalesced(got) == holey_stream(200)      # 400 items, many more than max_chunks in one batch
    stats = per_flow.statistics()
    assert (stats.finished, stats.overruns, stats.overrun_bytes) == (1, 0, 0)


async def test_a_side_nobody_reads_takes_a_batch_of_many_holes_whole_and_overruns_after_it(tmp_path):
    got = []

    async def handle(flow):
        await flow.ended()                           # reads the stream only after the flow's end
        got.extend(await read_all(flow.stream(Side.CLIENT), "mark"))

    async with aiomb.open_stack(capture_of(tmp_path, holey_flow(200, after=10)), batch_size=1) as stack:
        per_flow = stack.spawn_per_flow(handle, gaps="mark", max_chunks=64)
        await stack.run()
    assert got == holey_stream(200)[:-1] + [aiomb.Gap(13 * 199 + 10, 3 + 100)]     # the last hole grown
    stats = per_flow.statistics()
    assert (stats.overruns, stats.overrun_bytes, stats.pauses) == (10, 100, 0)       # the last hole is no byte


@pytest.mark.parametrize("waits_for", ["a stack timer", "a subscription"])
async def test_a_reader_waiting_for_the_stack_is_not_waited_for(tmp_path, autojump_clock, waits_for):
    c = TcpConversation(ts_step=0.1)
    c.handshake()
    for i in range(40):
        c.send("client", b"%02d" % i)
    c.fin("client")
    c.fin("server")
    c.ack("client")
    got = []

    async def handle(flow):
        stream = flow.stream(Side.CLIENT)
        got.append(await stream.receive())
        if waits_for == "a stack timer":
            await stack.timer(1.0).wait()           # only the pump fires it
        else:
            await sub.receive_batch()               # only the pump fills it
        try:
            async for chunk in stream:
                got.append(chunk)
        except aiomb.StreamGap as gap:
            got.append(("gap", gap.offset, gap.length))

    with trio.fail_after(60):                       # the autojump clock: a deadlock fails at once
        async with aiomb.open_stack(capture_of(tmp_path, c.frames), batch_size=1) as stack:
            sub = stack.subscribe(aiomb.CONN_END)
            per_flow = stack.spawn_per_flow(handle, max_chunks=4)
            await stack.run()
    stats = per_flow.statistics()
    assert got[:5] == [b"00", b"01", b"02", b"03", b"04"]        # max_chunks held, then a hole
    assert got[5][:2] == ("gap", 10) and 0 < got[5][2] <= stats.overrun_bytes
    assert stats.finished == 1 and stats.pauses == 0


# -- exceptions ----------------------------------------------------------------------------


async def test_an_exception_is_logged_with_the_flow_key_and_other_flows_go_on(tmp_path, caplog):
    done = []

    async def handle(flow):
        data = await flow.read_until(b" ", Side.CLIENT)
        if flow.key.client_port == client_of(3)[1]:
            raise KeyError("bad flow")
        await flow.ended()
        done.append(data)

    with caplog.at_level(logging.ERROR, logger="aiomb"):
        async with aiomb.open_stack(capture_of(tmp_path, open_flows(5))) as stack:
            per_flow = stack.spawn_per_flow(handle)
            await stack.run()
    assert sorted(done) == [b"hello "] * 4
    stats = per_flow.statistics()
    assert (stats.failed, stats.finished, stats.running) == (1, 4, 0)
    [record] = caplog.records
    assert record.name == "aiomb" and record.exc_info[0] is KeyError
    assert str(aiomb.FlowKey(proto=6, client_ip=client_of(3)[0], client_port=client_of(3)[1],
                             server_ip="10.0.0.2", server_port=80)) in record.getMessage()


async def test_errors_raise_fails_the_stack_with_the_exception_itself(tmp_path):
    async def handle(flow):
        await flow.wait(ESTABLISHED)
        raise KeyError("bad flow")

    with pytest.raises(KeyError, match="bad flow"):
        async with aiomb.open_stack(capture_of(tmp_path, open_flows(5))) as stack:
            stack.spawn_per_flow(handle, errors="raise")
            await stack.run()


@pytest.mark.parametrize("late", [False, True])
@pytest.mark.parametrize("api", ["spawn_per_flow", "serve"])
async def test_run_raises_the_error_of_a_coroutine_that_fails_the_stack(tmp_path, api, late):
    after_run = []

    async def handle(flow):             # late: at the flow's end, in the capture's last batch
        await (flow.ended() if late else flow.wait(ESTABLISHED))
        raise KeyError("bad flow")

    async def handler(flow, client, server):
        await client.receive()
        if late:
            await stack.finished.wait()     # serve's handlers outlive their flow
        raise KeyError("bad flow")

    with pytest.raises(KeyError, match="bad flow"):
        async with aiomb.open_stack(capture_of(tmp_path, open_flows(1))) as stack:
            if api == "serve":
                stack.serve(handler)
            else:
                stack.spawn_per_flow(handle, errors="raise")
            with pytest.raises(KeyError, match="bad flow"):
                await stack.run()               # not a normal return, nor trio.Cancelled
            after_run.append("ran")
    assert after_run == ["ran"]


# -- the flow's end and the stack's exit ------------------------------------------------------


async def test_a_coroutine_is_cancelled_when_its_flow_ends_after_being_handed_the_end(tmp_path):
    c = TcpConversation()
    c.handshake()
    c.send("client", b"abc")
    c.rst("client")
    log = []

    async def waits_for_fin(flow):
        try:
            await flow.wait(FIN)
        except aiomb.FlowEnded as exc:
            log.append(("fin", exc.reason, exc.key == flow.key))
            assert (await flow.ended()).reason is EndReason.RST       # answered, not cancelled
            log.append(b"".join([chunk async for chunk in flow.stream(Side.CLIENT)]))
            try:
                await trio.sleep_forever()                              # anything else: cancelled
            finally:
                log.append("cancelled")

    async with aiomb.open_stack(capture_of(tmp_path, c.frames)) as stack:
        per_flow = stack.spawn_per_flow(waits_for_fin)
        await stack.run()
    assert log == [("fin", EndReason.RST, True), b"abc", "cancelled"]
    assert (per_flow.statistics().cancelled, per_flow.statistics().finished) == (1, 0)


async def test_evicted_flows_end_their_coroutines(tmp_path):
    ended = []

    async def handle(flow):
        ended.append((await flow.ended()).reason)

    frames = []
    for i in range(6):
        c = TcpConversation(client_of(i), start_ts=1.0 + i)
        c.syn()
        frames += c.frames
    async with aiomb.open_stack(capture_of(tmp_path, frames), max_flows=2) as stack:
        stack.spawn_per_flow(handle)
        await stack.run()
    assert sorted(ended) == [EndReason.EVICTED] * 4 + [EndReason.END_OF_CAPTURE] * 2


async def test_leaving_the_stack_cancels_every_coroutine(tmp_path):
    c = TcpConversation()
    c.handshake()
    for i in range(10):
        c.send("client", b"%d" % i)
    log = []
    reading = trio.Event()

    async def handle(flow):
        try:
            async for _ in flow.stream(Side.CLIENT):
                reading.set()
                await trio.Event().wait()             # busy forever: the capture pauses
        finally:
            log.append("cleaned up")

    async with aiomb.open_stack(capture_of(tmp_path, c.frames), batch_size=1) as stack:
        per_flow = stack.spawn_per_flow(handle, max_chunks=1)
        stack.start()
        await reading.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert not stack.finished.is_set() and stack.statistics().source_pauses == 1
    assert log == ["cleaned up"]
    assert (per_flow.statistics().cancelled, per_flow.statistics().running) == (1, 0)


# -- reading the flow ---------------------------------------------------------------------


@pytest.mark.parametrize("split", [1, 3, 7])
async def test_read_until_across_segment_boundaries(tmp_path, split):
    data = REQUEST + b"BODY" + b"second\r\n\r\n" + b"tail"
    c = TcpConversation()
    c.handshake()
    for i in range(0, len(data), split):
        c.send("client", data[i:i + split])
    c.fin("client")
    got = []

    async def handle(flow):
        got.append(await flow.read_until(b"\r\n\r\n", Side.CLIENT))
        got.append(await flow.read_until(b"\r\n\r\n", Side.CLIENT))
        try:
            await flow.read_until(b"\r\n\r\n", Side.CLIENT)
        except aiomb.FlowEnded as exc:
            got.append(exc.partial)

    async with aiomb.open_stack(capture_of(tmp_path, c.frames), batch_size=1) as stack:
        stack.spawn_per_flow(handle)
        await stack.run()
    assert got == [REQUEST, b"BODYsecond\r\n\r\n", b"tail"]


async def test_read_until_bounds_and_gaps(tmp_path):
    c = TcpConversation()
    c.handshake()
    c.send("client", b"x" * 50)
    c.send("client", b"y" * 50 + b"\n")
    c.send("client", b"GOOD")
    c.frames.pop()                                   # lost
    c.send("client", b"after\n")
    c.ack("server")                                  # ACKed past the hole: a gap
    c.fin("client")
    got = []

    async def handle(flow):
        with pytest.raises(aiomb.DelimiterNotFound) as info:
            await flow.read_until(b"\n", Side.CLIENT, max_size=64)
        got.append(info.value.buffered)
        got.append(await flow.read_until(b"\n", Side.CLIENT, max_size=200))     # the bytes stayed
        with pytest.raises(aiomb.StreamGap) as gap:
            await flow.read_until(b"\n", Side.CLIENT)
        got.append((gap.value.offset, gap.value.length, gap.value.partial))
        got.append(await flow.read_until(b"\n", Side.CLIENT))
        with pytest.raises(ValueError, match="non-empty bytes delimiter"):
            await flow.read_until(b"", Side.CLIENT)

    async with aiomb.open_stack(capture_of(tmp_path, c.frames), batch_size=1) as stack:
        stack.spawn_per_flow(handle)
        await stack.run()
    assert got == [101, b"x" * 50 + b"y" * 50 + b"\n", (101, 4, b""), b"after\n"]


async def test_wait_returns_the_flows_first_events_by_kind_and_side(tmp_path):
    c = TcpConversation()
    c.handshake()
    c.send("client", b"x")
    c.fin("client")
    c.fin("server")
    c.ack("client")
    got = {}

    async def handle(flow):
        got["est"] = await flow.wait(ESTABLISHED)
        got["fin"] = await flow.wait(FIN)
        got["server_fin"] = await flow.wait(FIN, side=Side.SERVER)
        got["start"] = await flow.wait(CONN_START)
        got["states"] = (flow.client_state, flow.server_state)
        got["repr"] = repr(flow)
        with pytest.raises(ValueError, match="events="):
            await flow.wait(RETRANSMIT)
        with pytest.raises(ValueError, match="flow.stream"):
            await flow.wait(aiomb.NEW_DATA)

    async with aiomb.open_stack(capture_of(tmp_path, c.frames)) as stack:
        stack.spawn_per_flow(handle)
        await stack.run()
    assert (got["est"].kind, got["est"].side, got["est"].ts) == (ESTABLISHED, Side.CLIENT, pytest.approx(1.002))
    assert (got["fin"].kind, got["fin"].side, got["fin"].ts) == (FIN, Side.CLIENT, pytest.approx(1.004))
    assert (got["server_fin"].side, got["server_fin"].ts) == (Side.SERVER, pytest.approx(1.005))
    assert got["start"].kind is CONN_START
    assert "FlowTask #1 tcp 10.0.0.1:40000 -> 10.0.0.2:80" in got["repr"] and "running" in got["repr"]


async def test_udp_flows_and_extra_event_kinds(tmp_path):
    frames = [(1.0, udp_frame("10.0.0.1", "10.0.0.2", 5000, 53, b"q")),
              (1.5, udp_frame("10.0.0.2", "10.0.0.1", 53, 5000, b"a"))]
    c = TcpConversation(("10.0.0.3", 40000), start_ts=2.0)
    c.syn()
    c.syn(); c.frames[-1] = (2.5, c.frames[-1][1])              # noqa: E702  a retransmitted SYN
    got = {}

    async def handle(flow):
        if flow.key.proto == aiomb.Proto.UDP:
            got["udp"] = ((await flow.wait(UDP_START)).kind, (await flow.ended()).reason)
        else:
            got["tcp"] = ((await flow.wait(RETRANSMIT)).ts, flow.client_state)

    async with aiomb.open_stack(capture_of(tmp_path, frames + c.frames)) as stack:
        stack.spawn_per_flow(handle, events=[RETRANSMIT])
        await stack.run()
    assert got == {"udp": (UDP_START, EndReason.END_OF_CAPTURE), "tcp": (pytest.approx(2.5), aiomb.TcpState.SYN_SENT)}


# -- the stack's clock ----------------------------------------------------------------------


async def test_sleep_and_move_on_after_count_packet_time(tmp_path):
    c = TcpConversation()
    c.handshake()
    c.send("client", b"first")
    c.send("client", b"late")
    c.fin("client")
    c.frames[4:] = [(ts + 10.0, f) for ts, f in c.frames[4:]]     # 10 s of silence in packet time
    got = []

    async def handle(flow):
        await flow.read_until(b"first", Side.CLIENT)
        t0 = flow.time()
        with flow.move_on_after(4) as scope:
            await flow.read_until(b"late", Side.CLIENT)
        got.append((scope.cancelled_caught, round(flow.time() - t0, 6)))
        await flow.sleep(2)
        got.append(round(flow.time() - t0, 6))
        got.append(await flow.read_until(b"late", Side.CLIENT))

    async with aiomb.open_stack(capture_of(tmp_path, c.frames), batch_size=1) as stack:
        stack.spawn_per_flow(handle)
        await stack.run()
    assert got == [(True, 4.0), 6.0, b"late"]


# -- misuse --------------------------------------------------------------------------------


async def test_bad_options_and_late_calls_are_refused_clearly(tmp_path):
    async def handle(flow):
        await flow.ended()

    async with aiomb.open_stack(capture_of(tmp_path, open_flows(1))) as stack:
        for kwargs, message in [
            ({"limit": 0}, "limit must be a positive int"), ({"limit": True}, "limit must be a positive int"),
            ({"overflow": "drop"}, "overflow must be 'queue' or 'skip'"),
            ({"max_queued": -1}, "max_queued must be an int >= 0"),
            ({"errors": "ignore"}, "errors must be 'log'"), ({"sides": "left"}, "sides must be one of"),
            ({"max_chunks": 0}, "max_chunks must be a positive int"), ({"events": [aiomb.GAP]}, "flow.stream"),
        ]:
            with pytest.raises(ValueError, match=message):
                stack.spawn_per_flow(handle, **kwargs)
        with pytest.raises(aiomb.FilterError):
            stack.spawn_per_flow(handle, "port nonsense")
        with pytest.raises(TypeError, match="async function"):
            stack.spawn_per_flow(None)
        await stack.run()
        with pytest.raises(RuntimeError, match="source has ended"):
            stack.spawn_per_flow(handle)


async def test_a_stack_without_bytes_takes_only_coroutines_that_read_none(tmp_path):
    seen = []

    async def handle(flow):
        with pytest.raises(ValueError, match="sides='both'"):
            flow.stream(Side.CLIENT)
        seen.append((await flow.ended()).reason)

    async with aiomb.open_stack(capture_of(tmp_path, open_flows(2)), buffering=False) as stack:
        with pytest.raises(ValueError, match="buffering=False"):
            stack.spawn_per_flow(handle)
        stack.spawn_per_flow(handle, sides="none")
        await stack.run()
    assert seen == [EndReason.FIN] * 2


async def test_spawn_after_the_start_takes_the_flows_that_start_later(tmp_path):
    frames = open_flows(3)
    late = TcpConversation(("10.9.9.9", 5555), start_ts=100.0)
    late.handshake()
    late.fin("client")
    seen = []

    async def handle(flow):
        seen.append(flow.key.client_port)
        await flow.ended()

    async with aiomb.open_stack(capture_of(tmp_path, frames + late.frames), batch_size=4) as stack:
        async with stack.subscribe(CONN_START, max_batches=1) as sub:
            await sub.receive_batch()                  # the source has started: the first flows are open
            per_flow = stack.spawn_per_flow(handle)
        await stack.run()
    assert seen == [5555] and per_flow.statistics().accepted == 1


async def test_serve_shares_the_bounds_a_side_read_later_overruns_instead_of_stalling_the_capture(tmp_path):
    c = TcpConversation()
    c.handshake()
    c.send("client", b"GET /")
    for i in range(6):
        c.send("server", b"%d" % i)
    c.fin("server")
    c.fin("client")
    c.ack("server")
    got = []

    async def handler(flow, client, server):
        got.append(b"".join([chunk async for chunk in client]))
        got.extend([chunk async for chunk in server])

    async with aiomb.open_stack(capture_of(tmp_path, c.frames), batch_size=1) as stack:
        stack.serve(handler, gaps="mark", max_chunks=2)
        await stack.run()
    assert got == [b"GET /", b"0", b"1", aiomb.Gap(2, 4)]
