"""Shared fixtures: where the third-party corpus lives (read in place, never copied)."""

import json
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
CORPUS = pathlib.Path(os.environ.get("AIOMB_CORPUS", REPO.parent / "shared" / "corpus"))


def corpus_path() -> pathlib.Path:
    """The corpus directory; fails (not skips) when it is missing, saying how to point at it."""
    if not (CORPUS / "oracle-tshark.jsonl").is_file():
        pytest.fail(f"third-party corpus not found at {CORPUS}; set AIOMB_CORPUS to its directory")
    return CORPUS


def oracle_records() -> list[dict]:
    """Every per-flow record of oracle-tshark.jsonl."""
    with open(corpus_path() / "oracle-tshark.jsonl") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture
def corpus() -> pathlib.Path:
    return corpus_path()
