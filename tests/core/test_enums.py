"""C and Python enums have one source of truth: the core's C values equal the Python enums."""

import pytest

from aiomb import _core
from aiomb.events import EventKind
from aiomb.flows import EndReason, Hook, TcpState, Verdict

ENUMS = {"TcpState": TcpState, "EndReason": EndReason, "EventKind": EventKind,
         "Hook": Hook, "Verdict": Verdict}


@pytest.mark.parametrize("name", sorted(ENUMS))
def test_c_enum_matches_python(name):
    py = {m.name: m.value for m in ENUMS[name]}
    assert _core.C_ENUMS[name] == py


def test_malformed_reason_names_are_unique_and_snake_case():
    names = _core.MALFORMED_REASONS
    assert len(set(names)) == len(names)
    assert all(n == n.lower() and " " not in n for n in names)
