"""aiomb: async (Trio) middleboxes on a shared flow-processing stack.

Public names only; see README.md. Layers: flows <- events <- core <- io/_stack <- cli.
"""

from ._core import Engine as Engine
from ._core import Event as Event
from ._core import Flow as Flow
from ._core import FlowKey as FlowKey
from ._core import FrameBatch as FrameBatch
from ._core import PacketView as PacketView
from ._errors import AiombError as AiombError
from ._errors import CaptureError as CaptureError
from ._errors import PortError as PortError
from ._errors import StreamGap as StreamGap
from ._stack import FlowStream as FlowStream
from ._stack import Gap as Gap
from ._stack import Middlebox as Middlebox
from ._stack import Stack as Stack
from ._stack import StackStatistics as StackStatistics
from ._stack import Subscription as Subscription
from ._stack import open_stack as open_stack
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
from .flows import Proto as Proto
from .flows import Side as Side
from .flows import SideStatistics as SideStatistics
from .flows import TcpState as TcpState
from .flows import Verdict as Verdict
from .io import Port as Port
from .io import Prefilter as Prefilter
from .io import PortStatistics as PortStatistics
from .io import capture as capture
from .io import port as port

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

__version__ = "0.1.0"
