"""aiomb.notebook without a kernel: misuse raises clear errors, heavy packages stay unimported,
HTML views escape what they show, and the timeline stays bounded."""

import asyncio
import html
import subprocess
import sys

import pytest

import aiomb
import aiomb.notebook
import aiomb.testing
from aiomb.flows import _html

from .kernel import REPO

DEMO = str(REPO / "examples" / "captures" / "demo.pcapng")


def test_import_aiomb_imports_no_notebook_package():
    code = ("import sys, aiomb, aiomb.notebook\n"
            "h = aiomb.notebook\n"
            "print(sorted(m for m in ('matplotlib', 'pandas', 'tqdm', 'IPython', 'ipykernel', 'numpy')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout == "[]\n"
    code = "import sys, aiomb\nprint('aiomb.notebook' in sys.modules, 'trio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout == "False False\n"


def test_start_without_a_running_loop_says_what_to_do():
    with pytest.raises(RuntimeError, match=r"^aiomb\.notebook\.start\(\) runs the stack in the background of a "
                                           r"running asyncio loop, such as a Jupyter kernel's, and none is running "
                                           r"here\. In a script, call it from a coroutine run by asyncio\.run\(\)"):
        aiomb.notebook.start(DEMO)


def test_a_plain_script_runs_it_under_asyncio_run():
    async def main():
        h = aiomb.notebook.start(DEMO, progress=False)
        assert h.state == "opening" and len(h.flows()) == 0
        with pytest.raises(RuntimeError, match=r"^the stack is still opening .*`await h\.ready\(\)` waits"):
            print(h.stack)
        stack = await h.ready()
        assert h.stack is stack and h.state in ("running", "finished")
        await h.wait()
        return h

    h = asyncio.run(main())
    assert (h.state, h.done, h.error, len(h.flows()), h.statistics().packets) == ("finished", True, None, 7, 51)


def test_misuse_is_refused_in_the_calling_cell():
    async def main():
        cases = [
            (dict(source=42), TypeError,
             "source must be a capture path, aiomb.capture(...) or aiomb.port(...), got 42"),
            (dict(setup="x"), TypeError, "setup must be a function taking the stack, got 'x'"),
            (dict(run=1), TypeError, "run must be an async function taking the stack, got 1"),
            (dict(events=["CONN_START"]), TypeError, "expected an aiomb event kind or custom event, got 'CONN_START'"),
            (dict(recent=-1), ValueError, "recent must be a non-negative int, got -1"),
            (dict(interval=0), ValueError, "interval must be a positive number of seconds or None, got 0"),
            (dict(interval=float("nan")), ValueError, "interval must be a positive number of seconds or None, got nan"),
            (dict(batch_size=0), ValueError, "batch_size must be an int from 1 to 65536, got 0"),
            (dict(max_batches=0), ValueError, "max_batches must be a positive int, got 0"),
            (dict(max_flows=-5), ValueError, None),
            (dict(no_such_option=1), TypeError, None),
        ]
        for kwargs, exc, message in cases:
            source = kwargs.pop("source", DEMO)
            with pytest.raises(exc) as info:
                aiomb.notebook.start(source, **kwargs)
            if message is not None:
                assert str(info.value) == message
        h = aiomb.notebook.start(DEMO, progress=False, interval=None, events=())
        await h.wait()
        with pytest.raises(RuntimeError, match=r"^this handle keeps no timeline: start it with interval=SECONDS"):
            h.plot_throughput()
        with pytest.raises(ValueError, match=r"^n must be a non-negative int or None, got -1$"):
            h.recent_events(-1)
        assert h.recent_events() == [] and h.event_counts() == {}

    asyncio.run(main())


def test_stop_before_the_first_turn_opens_nothing():
    async def main():
        h = aiomb.notebook.start(DEMO, progress=False)
        h.stop()
        h.stop()            # idempotent
        await h.wait()
        with pytest.raises(RuntimeError, match="^the run was stopped before its stack opened"):
            await h.ready()
        return h

    h = asyncio.run(main())
    assert (h.state, len(h.flows()), h.statistics().stack) == ("stopped", 0, None)


@pytest.mark.parametrize("after", [300, 1000, 2500])
def test_stop_counts_every_event_up_to_the_stop(tmp_path, after):
    frames = []
    for i in range(200):                # overlapping flows: many are open at any moment
        c = aiomb.testing.TcpConversation((f"10.1.{i // 250}.{i % 250 + 1}", 1024 + i), start_ts=1.0 + i * 0.05,
                                               ts_step=0.1)
        c.handshake()
        for _ in range(5):
            c.send("client", b"x")
            c.ack("server")
        c.fin("client")
        c.fin("server")
        c.ack("client")
        frames += c.frames
    path = tmp_path / "many.pcap"
    aiomb.testing.write_pcap(path, sorted(frames, key=lambda f: f[0]))

    async def main():
        h = aiomb.notebook.start(str(path), progress=False, batch_size=8, max_batches=1)
        await h.ready()
        while h.statistics().packets < after:
            await asyncio.sleep(0)
        h.stop()
        await h.wait()
        return h

    h = asyncio.run(main())
    records = list(h.flows())
    reasons = [str(row["end_reason"]) for row in records]
    counts = {str(k): n for k, n in h.event_counts().items()}
    assert h.state == "stopped" and 0 < reasons.count("interrupted") and "open" not in reasons
    assert counts["CONN_START"] == h.statistics().stack.engine.flows_created == len(records)
    assert counts["CONN_END"] == len(records)                       # the interrupted ones too
    ends = [ev for ev in h.recent_events() if ev.kind is aiomb.CONN_END]
    assert sorted(str(ev.reason) for ev in ends) == sorted(reasons)


def test_a_second_start_while_a_run_is_going_on_says_what_to_do():
    async def main():
        first = aiomb.notebook.start(DEMO, progress=False)
        with pytest.raises(RuntimeError, match=r"^aiomb\.notebook\.start\(\): another Trio run is going on in this "
                                               r"thread \(<BackgroundStack .*demo\.pcapng.*\): .*`await h\.wait\(\)`"):
            aiomb.notebook.start(DEMO, progress=False)
        await first.wait()
        second = aiomb.notebook.start(DEMO, progress=False)        # once it is over, another may start
        await second.wait()
        return first, second

    first, second = asyncio.run(main())
    assert (first.state, second.state, second.statistics().packets) == ("finished", "finished", 51)


def test_html_views_escape_what_they_show():
    counts = aiomb.MalformedCounts({"<script>": 2})
    assert counts._repr_html_() == ('<table><tr><th style="text-align:left">reason</th><th style="text-align:left">'
                                    'packets</th></tr><tr><td style="text-align:left">&lt;script&gt;</td>'
                                    '<td style="text-align:left">2</td></tr></table>')
    assert _html.cell({"a&b": "<i>"}) == "a&amp;b: &lt;i&gt;"
    assert _html.cell({}) == "none" and _html.cell(None) == "&ndash;"
    engine = aiomb.Engine()
    with aiomb.capture(DEMO) as source:
        batch = aiomb.FrameBatch(64)
        while source.read(batch):
            engine.process(batch)
    shown = engine.statistics()._repr_html_()
    assert shown.startswith("<p><b>engine statistics</b></p><table>")
    assert '<td style="text-align:left">packets</td><td style="text-align:left">51</td>' in shown
    assert '<td style="text-align:left">malformed_total</td><td style="text-align:left">0</td>' in shown
    flow = engine.flows()[0]
    shown = flow._repr_html_()
    assert shown.startswith(f"<p><b>Flow #{flow.id} {html.escape(str(flow.key))} (in the table)</b></p>")
    assert "-&gt;" in shown and "->" not in shown
    stats = flow.statistics()
    assert stats._repr_html_() == _html.flow_statistics_table(stats, title="flow statistics")
    assert stats.client._repr_html_().startswith("<p><b>side statistics</b></p><table><tr><td style=\"text-align:"
                                                 "left\">packets</td>")


class Counters:
    """The engine's cumulative per-direction counters, as statistics() gives them."""

    def __init__(self):
        self.client_payload_bytes = self.server_payload_bytes = 0
        self.client_packets = self.server_packets = self.flows_active = 0

    def add(self, side, n, flows):
        if side == 0:
            self.client_payload_bytes += n
            self.client_packets += 1
        else:
            self.server_payload_bytes += n
            self.server_packets += 1
        self.flows_active = flows
        return self


def test_the_timeline_stays_bounded_and_keeps_every_byte(monkeypatch):
    """One packet per one-second tick: the bins merge as they must, no byte or packet is lost,
    and each bin's flows are the table's at its end."""
    monkeypatch.setattr(aiomb.notebook, "MAX_BINS", 8)
    series, counters = aiomb.notebook._Series(1.0), Counters()
    for t in range(100):
        series.sample(counters.add(t % 2, t, flows=t), 1)
    rows = series.rows()
    assert len(rows) <= 8 and series.interval == 16.0
    assert sum(r[1] for r in rows) == sum(range(0, 100, 2)) and sum(r[2] for r in rows) == sum(range(1, 100, 2))
    assert sum(r[3] + r[4] for r in rows) == 100
    assert [r[0] for r in rows] == [16.0 * k for k in range(len(rows))]
    assert rows[0][5] == 15          # the flows at the end of the merged bin (ticks 0..15)


def test_idle_ticks_make_no_bins_and_isolated_bins_merge_until_they_fit(monkeypatch):
    """A packet an hour apart: the timer fires 3600 times at once over each gap; only bins with
    packets are kept, and they merge until at most MAX_BINS remain; a last partial period (fired
    0: the end of the run) goes to the current bin."""
    monkeypatch.setattr(aiomb.notebook, "MAX_BINS", 4)
    series, counters = aiomb.notebook._Series(1.0), Counters()
    for _ in range(6):
        series.sample(counters.add(0, 10, flows=1), 3600)
    series.sample(counters, 0)                          # nothing new at the end: no bin
    assert len(series.bins) <= 4 and sum(r[1] for r in series.rows()) == 60
    series.sample(counters.add(1, 5, flows=2), 0)
    assert sum(r[2] for r in series.rows()) == 5 and sum(r[3] + r[4] for r in series.rows()) == 7
