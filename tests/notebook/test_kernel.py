"""aiomb.notebook in a real Jupyter kernel: the stack runs in Trio guest mode on the kernel's asyncio
loop between cells, and cells read it (statistics, flows as a DataFrame, recent events), stop it,
and get its errors from ``await h.wait()``."""

import json

import pytest

from .kernel import CellError

DEMO = "examples/captures/demo.pcapng"


def value(kernel, code: str):
    """Evaluate ``code`` in the kernel and bring its value back through JSON."""
    out = kernel.run(f"import json as _json\nprint(_json.dumps({code}))")
    return json.loads(out.stdout)


def test_a_capture_runs_and_cells_read_it(kernel):
    out = kernel.run(f"""
import aiomb, aiomb.notebook
http_get = aiomb.define_event(aiomb.NEW_DATA, lambda p: p.side == aiomb.Side.CLIENT and p.value.startswith(b"GET "),
                              name="http_get")
h = aiomb.notebook.start({DEMO!r}, events=[aiomb.CONN_START, aiomb.CONN_END, http_get], recent=4, progress=False)
h""")
    assert out.text.startswith("<BackgroundStack capture('examples/captures/demo.pcapng') ")
    kernel.run("await h.wait()")
    assert value(kernel, "h.state") == "finished"
    stats = value(kernel, "[h.statistics().packets, h.statistics().stack.engine.flows_created, "
                          "h.statistics().events, h.statistics().progress]")
    assert stats == [51, 7, {"CONN_START": 6, "http_get": 3, "CONN_END": 6}, [8184, 8184]]
    kernel.run("df = h.flows().to_pandas()")
    frame = value(kernel, """[list(df.shape), df["flow"].tolist(), df["server_port"].tolist(),
                              df["server_bytes"].tolist(), df["end_reason"].tolist()]""")
    assert frame == [[7, 35], [1, 2, 3, 4, 5, 6, 7], [53, 80, 80, 25, 8080, 80, 443], [28, 51, 51, 66, 0, 27, 3072],
                     ["end_of_capture", "fin", "fin", "fin", "rst", "fin", "rst"]]
    recent = value(kernel, "[(str(ev.kind), ev.flow_id) for ev in h.recent_events()]")
    assert len(recent) == 4                                  # the ring keeps the last 4
    assert value(kernel, "[(str(ev.kind), ev.flow_id) for ev in h.recent_events(2)]") == recent[2:]
    assert value(kernel, "h.event_counts()[http_get]") == 3
    # the timeline adds up to the flows' payload, per direction
    sums = value(kernel, """(lambda t, f: [int(t.client_bytes.sum()), int(f.client_payload_bytes.sum()),
                                       int(t.server_bytes.sum()), int(f.server_payload_bytes.sum()),
                                       int(t.client_packets.sum() + t.server_packets.sum()), int(t.flows.max())])(
                              h.timeline(), h.flows().to_pandas())""")
    assert sums[0] == sums[1] > 0 and sums[2] == sums[3] > 0
    assert sums[4] == 51 and sums[5] == 7


def test_the_run_goes_on_between_cells_and_stop_ends_it(kernel):
    # nobody reads this subscription: once its queue (1 batch of 1 packet) is full the source pauses
    kernel.run(f"""
import asyncio, time
import aiomb, aiomb.notebook
def hold_back(stack):
    global held
    held = stack.subscribe(aiomb.PACKET_IN, max_batches=1)
h2 = aiomb.notebook.start({DEMO!r}, setup=hold_back, batch_size=1, progress=False)
h2.state""")
    kernel.run("""
await h2.ready()
deadline = time.monotonic() + 10
while not h2.statistics().stack.source_pauses and time.monotonic() < deadline:
    await asyncio.sleep(0.01)     # polling a counter: the pause raises no event to await
""")
    assert value(kernel, "[h2.state, h2.statistics().stack.source_pauses, h2.stack.statistics().finished]") == \
        ["running", 1, False]
    open_flows = value(kernel, "[(r['flow'], r['end_reason'], r['client_packets']) for r in h2.flows()]")
    assert open_flows == [[1, "open", 1]]
    kernel.run("h2.stop()\nawait h2.wait()")
    assert value(kernel, "h2.state") == "stopped"
    assert value(kernel, "[(r['flow'], r['end_reason']) for r in h2.flows()]") == [[1, "interrupted"]]
    assert value(kernel, "h2.statistics().packets") < 51


def test_an_exception_in_the_run_surfaces_from_wait(kernel):
    kernel.run(f"""
import aiomb, aiomb.notebook
class Boom(Exception):
    pass
def explode(packet):
    raise Boom(f"flow {{packet.flow.id}} started")
h3 = aiomb.notebook.start({DEMO!r}, setup=lambda stack: stack.on(aiomb.CONN_START, explode), progress=False)""")
    with pytest.raises(CellError) as info:
        kernel.run("await h3.wait()")
    assert (info.value.ename, info.value.evalue) == ("Boom", "flow 2 started")
    assert value(kernel, "[h3.state, type(h3.error).__name__, h3.statistics().error]") == \
        ["failed", "Boom", "Boom: flow 2 started"]
    with pytest.raises(CellError) as info:
        kernel.run("h3.flows()")
    assert info.value.ename == "RuntimeError"
    assert info.value.evalue == ("the run failed (Boom: flow 2 started): its flows are not available; "
                                 "`await h.wait()` re-raises the error")
    kernel.run("h4 = aiomb.notebook.start('no/such.pcap')")
    with pytest.raises(CellError) as info:
        kernel.run("await h4.wait()")
    assert (info.value.ename, info.value.evalue) == \
        ("CaptureError", "no/such.pcap: no such capture file; check the path")
    with pytest.raises(CellError) as info:
        kernel.run("h4.stack")
    assert info.value.evalue.startswith("the run failed before its stack opened (CaptureError: ")


def test_rich_display_in_a_cell(kernel, tmp_path):
    odd = tmp_path / "<b>&demo.pcapng"
    odd.write_bytes((kernel.cwd / DEMO).read_bytes())
    kernel.run(f"""
import aiomb, aiomb.notebook
ended = []
h5 = aiomb.notebook.start({str(odd)!r}, setup=lambda s: s.on(aiomb.CONN_END, lambda p: ended.append(p.flow)))
await h5.wait()""")
    out = kernel.run("h5")
    assert "aiomb stack in the background" in out.html and "&lt;b&gt;&amp;demo.pcapng" in out.html
    assert "<b>&demo" not in out.html and "finished" in out.html
    assert out.text.startswith("<BackgroundStack capture(") and " finished, 51 packets>" in out.text
    out = kernel.run("h5.statistics()")
    assert out.html.startswith("<p><b>run statistics</b></p><table>")
    assert '<td style="text-align:left">stack</td><td style="text-align:left"><table>' in out.html   # nested
    assert "flows_created" in out.html and out.text.startswith("RunStatistics(state='finished'")
    out = kernel.run("ended[0]")
    assert out.text == "<Flow #2 tcp 192.0.2.10:51000 -> 198.51.100.20:80 TIME_WAIT/CLOSED removed>"
    assert out.html.startswith("<p><b>Flow #2 tcp 192.0.2.10:51000 -&gt; 198.51.100.20:80 (removed from the table)"
                               "</b></p><table><tr><th style=\"text-align:left\"></th><th style=\"text-align:left\">"
                               "client</th><th style=\"text-align:left\">server</th></tr>")
    assert '<td style="text-align:left">state</td><td style="text-align:left">TIME_WAIT</td>' \
        '<td style="text-align:left">CLOSED</td>' in out.html
    assert '<td style="text-align:left">end_reason</td><td style="text-align:left"><span title="both sides">fin' \
        in out.html
    out = kernel.run("h5.flows()")
    assert out.html.startswith("<p>7 flows</p><table>") and out.text == "<FlowTable 7 flows>"
    out = kernel.run("h5.plot_throughput()")
    assert out.text.startswith("<Axes: ") and any("image/png" in d for d in out.displays)
    out = kernel.run("h5.plot_events(); h5.plot_flows()")
    assert sum("image/png" in d for d in out.displays) == 2


def test_progress_shows_in_the_starting_cell(kernel):
    out = kernel.run(f"import aiomb, aiomb.notebook\nh6 = aiomb.notebook.start({DEMO!r})")
    (bar,) = out.displays                   # tqdm's notebook bar: a widget
    assert "application/vnd.jupyter.widget-view+json" in bar
    kernel.run("await h6.wait()")
    # without ipywidgets: a text line, updated in place (its display id) to the end
    out = kernel.run(f"import sys\nsys.modules['ipywidgets'] = None\nh7 = aiomb.notebook.start({DEMO!r})")
    assert [d["text/plain"] for d in out.displays] == ["demo.pcapng:   0.0% (0 of 8,184 bytes), 0 packets"]
    kernel.run("await h7.wait()\ndel sys.modules['ipywidgets']")
    assert value(kernel, "h7._progress._shown") == 8184


def test_run_workers_from_a_cell(kernel):
    """A cell runs its own function on two workers (forked from the kernel) and merges what they
    returned; the kernel goes on afterwards."""
    kernel.run(f"""
import collections
import aiomb

async def end_reasons(stack):
    counts = collections.Counter()
    async with stack.subscribe(aiomb.CONN_END, aiomb.UDP_END) as events:
        async for ev in events:
            counts[str(ev.reason)] += 1
    return aiomb.worker(), counts

per_worker = aiomb.run_workers(end_reasons, {DEMO!r}, workers=2)""")
    assert value(kernel, "[place for place, _ in per_worker]") == [[0, 2], [1, 2]]
    assert value(kernel, "dict(sum((c for _, c in per_worker), collections.Counter()))") == \
        {"fin": 4, "rst": 2, "end_of_capture": 1}
    with pytest.raises(CellError) as info:
        kernel.run(f"aiomb.run_workers(lambda source: 1 / 0, {DEMO!r}, workers=2)")
    assert info.value.ename == "ZeroDivisionError"
    assert value(kernel, "1 + 1") == 2
