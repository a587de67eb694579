"""A synchronous program runs a capture through the core and the dispatcher without importing
Trio or pyroute2 (``python -X importtime`` lists every module a process imported)."""

import json
import subprocess
import sys

from ..conftest import REPO, corpus_path, oracle_records

PCAP = "zeek/testing/btest/Traces/ftp/ipv6.pcap"

PROGRAM = """
import json, sys
import aiomb

engine = aiomb.Engine()
dispatcher = aiomb.Dispatcher(engine)
sub = dispatcher.subscribe(aiomb.NEW_DATA)
streams = {}

def take():
    for ev in dispatcher.drain(sub):
        key = (str(ev.key.client_ip), ev.key.client_port, str(ev.key.server_ip), ev.key.server_port)
        streams.setdefault(key, [0, 0])[ev.side] += len(ev.value)

with aiomb.capture(sys.argv[1]) as source:
    batch = aiomb.FrameBatch(64)
    while count := source.read(batch):
        pos = 0
        while (pos := engine.process(batch, pos)) < count:
            take()
        take()
while not engine.finish():
    take()
take()
print(json.dumps(sorted([list(k) + v for k, v in streams.items()])))
"""


def test_a_synchronous_program_needs_neither_trio_nor_pyroute2():
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", PROGRAM, str(corpus_path() / PCAP)],
                         capture_output=True, text=True, cwd=REPO, check=True)
    imported = {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "aiomb._core" in imported
    assert not {m for m in imported if m.split(".")[0] in ("trio", "pyroute2")}
    expected = sorted([r["client_ip"], r["client_port"], r["server_ip"], r["server_port"],
                       r["client_bytes"], r["server_bytes"]]
                      for r in oracle_records() if r["pcap"] == PCAP and r["proto"] == "tcp"
                      and r["client_bytes"] + r["server_bytes"])
    assert json.loads(run.stdout) == expected
