"""Flow vocabulary: sides, TCP states, protocols, end reasons, filters, statistics.

``FlowKey`` and the live ``Flow`` handle are built by the core (readonly extension types, for
speed) and re-exported from :mod:`aiomb`.
"""

from ._filter import FilterError as FilterError
from ._filter import FlowFilter as FlowFilter
from ._filter import compile_filter as compile_filter
from ._stats import EngineStatistics as EngineStatistics
from ._stats import FlowStatistics as FlowStatistics
from ._stats import MalformedCounts as MalformedCounts
from ._stats import SideStatistics as SideStatistics
from ._types import EndReason as EndReason
from ._types import Hook as Hook
from ._types import Proto as Proto
from ._types import Side as Side
from ._types import TcpState as TcpState
from ._types import Verdict as Verdict
