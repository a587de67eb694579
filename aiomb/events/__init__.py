"""Event kinds and custom (predicate) events.

``Event`` values are built by the core (a readonly extension type, for speed) and re-exported
from :mod:`aiomb`.
"""

from ._kinds import ALL_BUILTIN as ALL_BUILTIN
from ._kinds import CustomEvent as CustomEvent
from ._kinds import EventKind as EventKind
from ._kinds import define_event as define_event
