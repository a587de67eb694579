"""pytest-trio: a coroutine per flow reading its streams (Stack.serve, FlowStream)."""

import pytest

import aiomb
from aiomb.testing import TcpConversation, write_pcap


def capture_with(tmp_path, convs):
    frames = sorted((f for c in convs for f in c.frames), key=lambda f: f[0])
    path = tmp_path / "c.pcap"
    write_pcap(path, frames)
    return aiomb.capture(path)


def http(port, start, request, response):
    c = TcpConversation(("10.0.0.1", port), ("10.0.0.2", 80), start_ts=start)
    c.handshake()
    c.send("client", request)
    c.send("server", response)
    c.fin("client")
    c.fin("server")
    c.ack("client")
    return c


async def test_serve_runs_a_coroutine_per_flow_with_both_streams(tmp_path):
    convs = [http(40000 + i, 1 + i / 1000, b"GET /%d" % i, b"200 OK %d" % i) for i in range(20)]
    seen = {}

    async def handler(flow, client, server):
        req = b"".join([chunk async for chunk in client])
        resp = b"".join([chunk async for chunk in server])
        seen[flow.key.client_port] = (req, resp)

    async with aiomb.open_stack(capture_with(tmp_path, convs)) as stack:
        stack.serve(handler)
        await stack.run()
    assert seen == {40000 + i: (b"GET /%d" % i, b"200 OK %d" % i) for i in range(20)}


async def test_a_gap_raises_by_default_and_iteration_continues_after_it(tmp_path):
    c = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80))
    c.handshake()
    c.send("client", b"VERY")
    c.send("client", b"GOOD", advance=True)
    c.frames.pop()                                   # "GOOD" is lost
    c.send("client", b"DATA")
    c.ack("server")                                  # the server ACKs past the hole
    c.fin("client")
    got = []

    async def handler(flow, client, server):
        while True:
            try:
                async for chunk in client:
                    got.append(chunk)
                return
            except aiomb.StreamGap as gap:
                got.append((gap.offset, gap.length))

    async with aiomb.open_stack(capture_with(tmp_path, [c])) as stack:
        stack.serve(handler)
        await stack.run()
    assert got == [b"VERY", (4, 4), b"DATA"]


async def test_gaps_as_markers(tmp_path):
    c = TcpConversation()
    c.handshake()
    c.send("client", b"VERY")
    c.send("client", b"GOOD")
    c.frames.pop()
    c.send("client", b"DATA")
    c.fin("client")
    got = []

    async def handler(flow, client, server):
        got.extend([chunk async for chunk in client])

    async with aiomb.open_stack(capture_with(tmp_path, [c])) as stack:
        stack.serve(handler, gaps="mark")
        await stack.run()
    assert got == [b"VERY", aiomb.Gap(4, 4), b"DATA"]
    with pytest.raises(TypeError):
        b"".join(got)                                # a marker cannot be glued over silently


async def test_handler_exception_reaches_the_caller(tmp_path):
    async def handler(flow, client, server):
        async for _ in client:
            raise KeyError("bad request")

    with pytest.raises(KeyError):
        async with aiomb.open_stack(capture_with(tmp_path, [http(1234, 1, b"x", b"y")])) as stack:
            stack.serve(handler)
            await stack.run()


async def test_serve_after_start_and_bad_gaps_are_refused(tmp_path):
    async with aiomb.open_stack(capture_with(tmp_path, [http(1234, 1, b"x", b"y")])) as stack:
        with pytest.raises(ValueError, match="gaps must be 'raise' or 'mark'"):
            stack.serve(lambda *a: None, gaps="skip")
        stack.start()
        with pytest.raises(RuntimeError, match="before the source starts"):
            stack.serve(lambda *a: None)


async def test_serve_refuses_a_stack_that_keeps_no_bytes(tmp_path):
    async with aiomb.open_stack(capture_with(tmp_path, [http(40000, 1, b"GET /", b"200")]),
                                buffering=False) as stack:
        with pytest.raises(ValueError, match="buffering=False"):
            stack.serve(lambda flow, client, server: None)
        await stack.run()


async def test_serve_skips_bytes_of_a_side_whose_buffering_the_handler_turned_off(tmp_path):
    convs = [http(40000, 1, b"GET /", b"200 OK")]
    got = []

    async def handler(flow, client, server):
        flow.set_buffering(aiomb.Side.SERVER, False)
        got.append(b"".join([chunk async for chunk in client]))
        got.append(b"".join([chunk async for chunk in server]))

    async with aiomb.open_stack(capture_with(tmp_path, convs), batch_size=1) as stack:
        stack.serve(handler)
        await stack.run()
    assert got == [b"GET /", b""]
