"""Shared fixtures: the third-party corpus, copied into the repository under tests/corpus/data."""

import json
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
CORPUS = pathlib.Path(os.environ.get("AIOMB_CORPUS", REPO / "tests" / "corpus" / "data"))


def corpus_path() -> pathlib.Path:
    """The corpus directory ($AIOMB_CORPUS overrides the copy in the repository); fails (not skips)
    when it is missing, saying how to point at it."""
    if not (CORPUS / "oracle-tshark.jsonl").is_file():
        pytest.fail(f"third-party corpus not found at {CORPUS}: unset AIOMB_CORPUS to use the copy in "
                    "tests/corpus/data, or set it to a directory holding oracle-tshark.jsonl")
    return CORPUS


def oracle_records() -> list[dict]:
    """Every per-flow record of oracle-tshark.jsonl."""
    with open(corpus_path() / "oracle-tshark.jsonl") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture
def corpus() -> pathlib.Path:
    return corpus_path()


def children(pid: int) -> list[int]:
    """The pids of the processes whose parent is ``pid`` (from /proc: no /proc/PID/task/*/children
    on every kernel)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
