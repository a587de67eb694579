"""aiomb/_core.pyi declares what the extension offers: every public class, function and member."""

import ast
import inspect
import pathlib

from aiomb import _core

STUB = pathlib.Path(_core.__file__).with_name("_core.pyi")
INTERNAL = {"Emitter", "FrameBlock", "FrameBytes", "Hole", "Registration", "TimerEntry", "_GunzipStream", "_Ready"}
DUNDERS = {"__len__", "__getitem__", "__enter__", "__exit__", "__aiter__", "__anext__", "__eq__", "__hash__"}


def stub_members() -> dict[str, set[str]]:
    tree = ast.parse(STUB.read_text())
    out: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name != "__init__":   # __cinit__ at run time
                    names.add(item.name)
                elif isinstance(item, ast.AnnAssign):
                    names.add(item.target.id)
            out[node.name] = names
        elif isinstance(node, ast.FunctionDef):
            out[""].add(node.name)
        elif isinstance(node, ast.AnnAssign):
            out[""].add(node.target.id)
    return out


def runtime_members() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"": set()}
    for name, obj in vars(_core).items():
        if name.startswith("_") or name in INTERNAL:
            continue
        if inspect.isclass(obj) and obj.__module__ == "aiomb._core":
            out[name] = {m for m in vars(obj) if (not m.startswith("_") or m in DUNDERS)}
        elif not inspect.ismodule(obj) and not inspect.isclass(obj) and name != "split_kinds":
            out[""].add(name)
    return out


def test_the_stub_declares_exactly_what_the_extension_offers():
    stub, runtime = stub_members(), runtime_members()
    assert sorted(stub) == sorted(runtime)
    for cls in runtime:
        assert stub[cls] == runtime[cls], cls
