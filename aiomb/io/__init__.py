"""Packet sources: capture files and live AF_XDP ports (one interface, or two inline).

Live ports (``port``, ``Port``, ``PortStatistics``, ``QueueStatistics``) are imported when first
used: they need pyroute2 and Trio, which a program reading captures does without.
"""

import importlib

from ._capture import CaptureSource as CaptureSource
from ._capture import capture as capture
from ._prefilter import Prefilter as Prefilter

_LAZY = ("Port", "PortStatistics", "QueueStatistics", "port")


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'aiomb.io' has no attribute {name!r}")
    value = getattr(importlib.import_module("._port", __name__), name)
    globals()[name] = value
    return value
