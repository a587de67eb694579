"""Fixtures of the AF_XDP tests: root is required (the tests fail, never skip, without it)."""

import os
import shutil

import pytest

from .lab import Lab


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/xdp/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.usefixtures("_xdp_requirements"))


@pytest.fixture(scope="session")
def _xdp_requirements():
    if os.geteuid() != 0:
        pytest.fail("the AF_XDP tests need root (network namespaces, XDP programs); run them as root")
    for tool in ("ip", "tc", "ethtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"the AF_XDP tests need `{tool}` (Debian: apt-get install iproute2 ethtool)")


@pytest.fixture
def lab():
    with Lab() as lab:
        yield lab
