"""The corpus copy in tests/corpus/data holds every file of the workspace's ../shared/corpus, unchanged.

Later additions there are copied in the same way (`cp -a ../shared/corpus/. tests/corpus/data/`); this
test says which are missing. On a clone with no ../shared beside it there is nothing to compare.
"""

import hashlib
import pathlib

import pytest

from ..conftest import REPO

SHARED = REPO.parent / "shared" / "corpus"
COPY = REPO / "tests" / "corpus" / "data"


def digests(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared/corpus beside this clone to compare with")
def test_the_copy_holds_every_shared_corpus_file():
    shared, copy = digests(SHARED), digests(COPY)
    missing = sorted(set(shared) - set(copy))
    changed = sorted(k for k in shared if k in copy and copy[k] != shared[k])
    assert not missing and not changed, (
        f"tests/corpus/data is behind {SHARED}: missing {missing}, changed {changed}; "
        "copy it with `cp -a ../shared/corpus/. tests/corpus/data/`")


def test_the_copy_carries_its_manifest_and_licences():
    for name in ("MANIFEST.md", "oracle-tshark.jsonl", "suricata-verify/LICENSE.txt", "zeek/COPYING",
                 "pcapplusplus/LICENSE"):
        assert (COPY / name).is_file(), name
