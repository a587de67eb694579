"""The fuzz targets (fuzz/) without libFuzzer: each takes its seeds made from the corpus, and the
reassembly target's model catches a reassembly that differs from it."""

import base64

import pytest

from fuzz import capture_reader, frame_parser, reassembly, seeds
from fuzz.run import TARGETS, split_options

MODULES = {"capture_reader": capture_reader, "frame_parser": frame_parser, "reassembly": reassembly}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_each_target_takes_its_seeds(target):
    inputs = TARGETS[target]()
    assert len(inputs) >= len(seeds.captures()) // 2       # from most captures: some hold no TCP connection
    for data in inputs:
        MODULES[target].TestOneInput(data)


def test_the_capture_seeds_are_pcap_pcapng_and_one_gzip():
    magics = [data[:4] for data in seeds.capture_seeds()]
    assert magics.count(b"\n\r\r\n") == len(seeds.captures())        # each capture as pcapng too
    assert sum(m[:2] == b"\x1f\x8b" for m in magics) == 1
    assert all(m in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\n\r\r\n") or m[:2] == b"\x1f\x8b" for m in magics)


def test_the_reassembly_input_format_round_trips():
    steps = [("data", -16, 1024, 3), ("ack", 500, 0, 0), ("fin", 600, 7, 2), ("data", 65519, 0, 0)]
    assert reassembly.decode(reassembly.encode(steps, policy=4, isn=2**32 - 1, batch=7)) == \
        ("old_linux", 2**32 - 1, 8, steps)


CONFLICTS = [("data", 100, 10, 1), ("data", 100, 10, 0), ("data", 0, 100, 0)]   # two copies held, then the hole


@pytest.mark.parametrize("policy", range(len(reassembly.POLICIES)))
def test_the_model_agrees_with_the_engine_on_conflicting_copies(policy):
    reassembly.TestOneInput(reassembly.encode(CONFLICTS, policy=policy))


def test_the_reassembly_target_catches_a_stream_that_differs_from_the_model(monkeypatch):
    rule = reassembly.new_bytes_win
    monkeypatch.setattr(reassembly, "new_bytes_win", lambda policy, *segments: rule("last", *segments))
    with pytest.raises(AssertionError, match="reassembly differs from the model"):
        reassembly.TestOneInput(reassembly.encode(CONFLICTS, policy=0))


def test_the_model_agrees_with_the_engine_on_a_hole_before_the_fin():
    reassembly.TestOneInput(reassembly.encode([("data", 0, 5, 0), ("fin", 10, 5, 0)]))
    assert reassembly.model_stream("first", [("data", 0, 5, 0), ("fin", 10, 5, 0)]) == \
        [("data", 0, reassembly.payload(0, 5, 0)), ("gap", 5, 5), ("data", 10, reassembly.payload(10, 5, 0))]


def test_the_reassembly_target_catches_a_wrong_gap(monkeypatch):
    monkeypatch.setattr(reassembly.Model, "finish", lambda self: None)     # holes at the end not reported
    with pytest.raises(AssertionError, match="reassembly differs from the model"):
        reassembly.TestOneInput(reassembly.encode([("data", 10, 5, 0)]))


REGRESSIONS = {     # inputs that once failed (base64 of libFuzzer's crash files), with what was wrong
    "reassembly": [
        "MM87AABfX2MAAAABAA==",     # a bare FIN past bytes never seen: no GAP (the side had no stream)
    ],
    "frame_parser": [               # an empty last fragment at offset 512: a write past the fragment bitmap
        "AAAiAAIAAAAAAgIAAAAAAQgARQAAFAABAEBABmahCgAAAQoAAAI=",
        "AAA+AAIAAAAAAgIAAAAAAYbdYAAAAAAILEAgAQ24AAAAAAAAAAAAAAABIAENuAAAAAAAAAAAAAAAAhEAAgAAAAAH",
    ],
}


def test_libfuzzer_options_follow_a_double_dash():
    assert split_options(["reassembly", "--seconds", "5", "--", "-runs=10"]) == \
        (["reassembly", "--seconds", "5"], ["-runs=10"])
    assert split_options(["--sanitized"]) == (["--sanitized"], [])


@pytest.mark.parametrize(("target", "data"), [(t, d) for t, inputs in REGRESSIONS.items() for d in inputs])
def test_inputs_that_once_failed(target, data):
    MODULES[target].TestOneInput(base64.b64decode(data))
