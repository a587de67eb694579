"""Packet sources: capture files now; live AF_XDP ports implement the same interface."""

from ._capture import CaptureSource as CaptureSource
from ._capture import capture as capture
