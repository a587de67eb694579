"""aiomb.notebook on a live veth port in a real Jupyter kernel: the port attaches in a worker thread
under Trio guest mode on the kernel's loop, a transfer shows up in the live flow table between cells,
and ``h.stop()`` ends the run and detaches the XDP program."""

from ..notebook.kernel import Kernel
from .lab import attached
from .test_cli_live import client

LEFT_IP, RIGHT_IP = "10.209.0.1", "10.209.0.2"


def test_notebook_on_a_live_port(lab):
    watch = lab.netns("w")
    left, _, right, _, n = lab.tapped_pair(f"{LEFT_IP}/24", f"{RIGHT_IP}/24", mon_ns=watch)
    lab.server(right, RIGHT_IP, 5001)
    with Kernel() as kernel:
        kernel.run(f"""
import asyncio, time
import aiomb, aiomb.notebook
h = aiomb.notebook.start(aiomb.port({n!r}, netns={watch!r}), events=[aiomb.CONN_START])""")
        kernel.run("stack = await h.ready()")
        assert attached(watch, n) == "aiomb_xsk"
        result = client(left, RIGHT_IP, 5001, 2000, 30000)
        assert result["ok"]
        port = result["local_port"]
        # the port's frames arrive on the kernel's loop: poll the live table (the cell raises no event)
        out = kernel.run(f"""
deadline = time.monotonic() + 15
def mine():
    return [r for r in h.flows() if r["client_port"] == {port} and r["server_payload_bytes"] == 30000
            and (r["client_state"], r["server_state"]) == ("CLOSED", "TIME_WAIT")]
while not mine() and time.monotonic() < deadline:
    await asyncio.sleep(0.05)
print(h.state, [(r["client_ip"], r["server_ip"], r["server_port"], r["client_payload_bytes"]) for r in mine()])
print([ev.key.client_port for ev in h.recent_events()])""")
        lines = out.stdout.splitlines()
        assert lines[0] == f"running [('{LEFT_IP}', '{RIGHT_IP}', 5001, 2016)]"
        assert str(port) in lines[1]
        out = kernel.run("h.stop()\nawait h.wait()\n"
                         "print(h.state, h.statistics().port.open, h.statistics().port.received > 0)\n"
                         f"print([r['end_reason'] for r in h.flows() if r['client_port'] == {port}])")
        lines = out.stdout.splitlines()
        assert lines[0] == "stopped False True"
        assert lines[1] == "['fin']"       # it had ended by its FINs; the stop left its record as it was
        assert attached(watch, n) is None
