"""Fixtures of the AF_XDP tests: they need root, `ip`, `tc` and `ethtool`, and skip with one line saying
what is missing (`.ci/run`, which runs as root on a machine it provisions, fails if any was skipped)."""

import os
import shutil

import pytest

from .lab import Lab

_TOOLS = {"ip": "iproute2", "tc": "iproute2", "ethtool": "ethtool"}


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the AF_XDP tests (tests/xdp) need root: run pytest as root (network namespaces, XDP programs)"
    lacking = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if lacking:
        packages = " ".join(sorted({_TOOLS[t] for t in lacking}))
        return (f"the AF_XDP tests (tests/xdp) need {', '.join(lacking)}: "
                f"apt-get install {packages} (Debian/Ubuntu)")
    return None


_why = _missing()
if _why is not None:
    pytest.skip(_why, allow_module_level=True)


@pytest.fixture
def lab():
    with Lab() as lab:
        yield lab
