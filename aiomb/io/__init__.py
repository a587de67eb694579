"""Packet sources: capture files and live AF_XDP ports (one interface, or two inline)."""

from ._capture import CaptureSource as CaptureSource
from ._capture import capture as capture
from ._port import Port as Port
from ._port import PortStatistics as PortStatistics
from ._port import QueueStatistics as QueueStatistics
from ._port import port as port
from ._prefilter import Prefilter as Prefilter
