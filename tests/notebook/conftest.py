"""Fixtures of the notebook tests: one real Jupyter kernel (ipykernel on this interpreter) per module."""

import pytest

from .kernel import Kernel


@pytest.fixture(scope="module")
def kernel():
    with Kernel() as kernel:
        yield kernel
