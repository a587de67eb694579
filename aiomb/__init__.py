"""aiomb: async (Trio) middleboxes on a shared flow-processing stack.

Public names only; see README.md. Layers: flows <- events <- core <- io/_stack <- cli.
The names that need Trio or pyroute2 (the stack, live ports) are imported when first used, so
that a synchronous program (Engine + Dispatcher over a capture) never imports either.
"""

import importlib

from ._core import Dispatcher as Dispatcher
from ._core import Engine as Engine
from ._core import Event as Event
from ._core import EventLog as EventLog
from ._core import Flow as Flow
from ._core import FlowInbox as FlowInbox
from ._core import FlowKey as FlowKey
from ._core import FlowRecords as FlowRecords
from ._core import FrameBatch as FrameBatch
from ._core import PacketView as PacketView
from ._epoll import Epoll as Epoll
from ._epoll import FlowSocket as FlowSocket
from ._epoll import MonitorSocket as MonitorSocket
from ._epoll import TimerSocket as TimerSocket
from ._epoll import epoll as epoll
from ._epoll import event_mask as event_mask
from ._epoll import monitor as monitor
from ._errors import AiombError as AiombError
from ._errors import CaptureError as CaptureError
from ._errors import DelimiterNotFound as DelimiterNotFound
from ._errors import ExportError as ExportError
from ._errors import FlowEnded as FlowEnded
from ._errors import PortError as PortError
from ._errors import StreamGap as StreamGap
from ._records import FlowRun as FlowRun
from ._records import FlowTable as FlowTable
from ._records import read_flows as read_flows
from ._run_workers import run_workers as run_workers
from ._workers import worker as worker
from .events import ALL_BUILTIN as ALL_BUILTIN
from .events import CustomEvent as CustomEvent
from .events import EventKind as EventKind
from .events import define_event as define_event
from .flows import EndReason as EndReason
from .flows import EngineStatistics as EngineStatistics
from .flows import FilterError as FilterError
from .flows import FlowFilter as FlowFilter
from .flows import FlowStatistics as FlowStatistics
from .flows import Hook as Hook
from .flows import MalformedCounts as MalformedCounts
from .flows import Proto as Proto
from .flows import Side as Side
from .flows import SideStatistics as SideStatistics
from .flows import TcpState as TcpState
from .flows import Verdict as Verdict
from .io import CaptureSource as CaptureSource
from .io import Prefilter as Prefilter
from .io import capture as capture

PACKET_IN = EventKind.PACKET_IN
CONN_START = EventKind.CONN_START
SYN_ACK = EventKind.SYN_ACK
ESTABLISHED = EventKind.ESTABLISHED
FIN = EventKind.FIN
RST = EventKind.RST
STATE_CHANGE = EventKind.STATE_CHANGE
CONN_END = EventKind.CONN_END
ORPHAN = EventKind.ORPHAN
UDP_START = EventKind.UDP_START
UDP_END = EventKind.UDP_END
RETRANSMIT = EventKind.RETRANSMIT
NEW_DATA = EventKind.NEW_DATA
GAP = EventKind.GAP
OVERLAP = EventKind.OVERLAP
BUFFER_OVERRUN = EventKind.BUFFER_OVERRUN
ERROR = EventKind.ERROR
TIMER = EventKind.TIMER
REJECTED = EventKind.REJECTED
WINDOW = EventKind.WINDOW

__version__ = "0.1.0"

_LAZY = {
    "FlowStream": "._perflow", "FlowTask": "._perflow", "Gap": "._perflow", "PerFlow": "._perflow",
    "PerFlowStatistics": "._perflow", "Middlebox": "._stack", "Stack": "._stack",
    "StackStatistics": "._stack", "Subscription": "._stack", "open_stack": "._stack",
    "Port": ".io._port", "PortStatistics": ".io._port", "port": ".io._port",
    "ExporterStatistics": "._ipfix", "IpfixExporter": "._ipfix",
}

__all__ = [
    "ALL_BUILTIN", "AiombError", "BUFFER_OVERRUN", "CONN_END", "CONN_START", "CaptureError",
    "CaptureSource", "CustomEvent", "DelimiterNotFound", "Dispatcher", "ERROR", "ESTABLISHED", "EndReason",
    "Engine", "EngineStatistics", "Epoll", "Event", "EventKind", "EventLog", "ExportError", "ExporterStatistics",
    "FIN", "FilterError", "Flow", "FlowEnded", "FlowFilter", "FlowInbox", "FlowKey", "FlowSocket", "FlowStatistics",
    "FlowStream", "FlowTask", "FrameBatch", "GAP", "Gap", "Hook", "IpfixExporter", "MalformedCounts", "Middlebox",
    "MonitorSocket", "NEW_DATA", "ORPHAN",
    "OVERLAP", "PACKET_IN", "PacketView", "PerFlow", "PerFlowStatistics", "Port", "PortError", "PortStatistics",
    "Prefilter", "Proto",
    "REJECTED", "RETRANSMIT", "RST", "STATE_CHANGE", "SYN_ACK", "Side", "SideStatistics", "Stack", "StackStatistics",
    "StreamGap", "Subscription", "TIMER", "TcpState", "TimerSocket", "UDP_END", "UDP_START", "Verdict", "WINDOW",
    "capture", "define_event", "epoll", "event_mask", "monitor", "open_stack", "port", "run_workers", "worker",
]


def __getattr__(name: str):
    if name == "notebook":              # aiomb.notebook.start(...): the Jupyter shell, imported when first used
        return importlib.import_module(".notebook", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aiomb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
