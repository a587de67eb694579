"""The package's shape: its public names, and imports that go one way only (DESIGN.md section 3:
flows <- events <- core <- io/_stack <- cli), with nothing inside aiomb importing the package root."""

import ast
import pathlib
import re

import aiomb

PACKAGE = pathlib.Path(aiomb.__file__).resolve().parent

PUBLIC = {
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
}

# the layer of each part: a module may import from its own layer and the layers below
LAYERS = {
    "aiomb._errors": 0, "aiomb.testing": 0,
    "aiomb.flows": 1,
    "aiomb.events": 2,
    "aiomb._core": 3, "aiomb._cy": 3,
    "aiomb.io": 4,
    "aiomb._stack": 5, "aiomb._perflow": 5, "aiomb._epoll": 5, "aiomb._records": 5, "aiomb._zeek": 5,
    "aiomb._workers": 5, "aiomb._run_workers": 5, "aiomb._live_workers": 5, "aiomb._ipfix": 5,
    "aiomb.cli": 6, "aiomb.__main__": 6, "aiomb.notebook": 6,
    "aiomb": 7,
}


def layer_of(module: str) -> int:
    while module not in LAYERS:
        module = module.rpartition(".")[0]
    return LAYERS[module]


def module_name(path: pathlib.Path) -> str:
    if path.suffix in (".pyx", ".pxi", ".pxd"):
        return "aiomb._core"
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file() or path.with_suffix(".pyx").is_file()


def imports_of(path: pathlib.Path, text: str | None = None) -> set[str]:
    """The aiomb modules a file imports (at any depth, lazily or not); ``from . import NAME`` of
    a name that is not a module is an import of the package itself."""
    text = path.read_text() if text is None else text
    if path.suffix in (".pyx", ".pxi", ".pxd"):
        return set(re.findall(r"^\s*(?:from|c?import)\s+(aiomb[\w.]*)", text, re.M))
    name = module_name(path)
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "aiomb"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:      # from . import x: a module of that package, or a name of it
                    found |= {f"{target}.{a.name}" if is_module(f"{target}.{a.name}") else target
                              for a in node.names}
                    continue
            else:
                target = node.module
            if target.split(".")[0] == "aiomb":
                found.add(target)
    return found


def test_public_names_are_pinned_and_all_resolve():
    assert set(aiomb.__all__) == PUBLIC and len(aiomb.__all__) == len(PUBLIC)
    for name in PUBLIC:
        assert getattr(aiomb, name) is not None, name


def test_imports_go_one_way_and_never_to_the_package_root():
    wrong = []
    files = [p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".pyx", ".pxi", ".pxd")]
    assert len(files) > 20
    for path in files:
        name = module_name(path)
        for target in imports_of(path):
            if target == "aiomb" and name != "aiomb":
                wrong.append(f"{path.relative_to(PACKAGE)} imports the package root")
            elif layer_of(target) > layer_of(name):
                wrong.append(f"{path.relative_to(PACKAGE)} ({name}) imports {target}, a higher layer")
    assert wrong == []


def test_the_checker_resolves_relative_imports_and_sees_the_package_root():
    cli = PACKAGE / "cli" / "stream.py"
    assert {"aiomb._core", "aiomb.io._capture", "aiomb.cli._common"} <= imports_of(cli)
    shell = PACKAGE / "_epoll.py"
    assert imports_of(shell, "from . import CONN_START, Side\n") == {"aiomb"}
    assert imports_of(shell, "from . import _stack\n") == {"aiomb._stack"}
    assert imports_of(cli, "from .. import _stack\n") == {"aiomb._stack"}
    assert imports_of(PACKAGE / "flows" / "_stats.py", "from ..events import EventKind\n") == {"aiomb.events"}
