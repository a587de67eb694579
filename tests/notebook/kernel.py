"""A real Jupyter kernel (ipykernel) on this interpreter, for the notebook tests.

The kernel spec is written into a temporary folder (argv: ``sys.executable -m ipykernel_launcher``),
so no ``ipykernel install`` is needed and no kernel of another interpreter is picked up: a fresh
machine where only ``pip install -e '.[test]'`` ran has all it takes. The kernel inherits this
process's environment (PYTHONPATH included) and runs in the repository's folder.
"""

import json
import os
import pathlib
import shutil
import sys
import tempfile

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

REPO = pathlib.Path(__file__).resolve().parents[2]
KERNEL_NAME = "aiomb-test-python"


class CellError(Exception):
    """A cell raised: ``ename`` and ``evalue`` are the kernel's exception type name and message."""

    def __init__(self, ename: str, evalue: str, traceback: list):
        super().__init__(f"{ename}: {evalue}\n" + "\n".join(traceback))
        self.ename = ename
        self.evalue = evalue


class Output:
    """What one cell produced: ``stdout``, ``stderr``, the result's ``text`` (text/plain) and
    ``html`` (text/html, or None), and every display's data."""

    def __init__(self, messages: list):
        self.stdout = "".join(m["content"]["text"] for m in messages
                              if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")
        self.stderr = "".join(m["content"]["text"] for m in messages
                              if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")
        results = [m["content"]["data"] for m in messages if m["msg_type"] == "execute_result"]
        self.text = results[-1].get("text/plain") if results else None
        self.html = results[-1].get("text/html") if results else None
        self.displays = [m["content"]["data"] for m in messages if m["msg_type"] == "display_data"]


def kernel_spec_manager(folder: pathlib.Path) -> KernelSpecManager:
    """A kernel spec manager that knows one kernel: ipykernel on this interpreter."""
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (aiomb tests)", "language": "python",
        "env": {"JUPYTER_PLATFORM_DIRS": "1"}}))
    return KernelSpecManager(kernel_dirs=[str(folder / "kernels")])


def kernel_manager(folder: pathlib.Path) -> KernelManager:
    """A kernel manager for :data:`KERNEL_NAME` (not started), its files under ``folder``; it talks
    over Unix sockets there (no TCP port to collide with a neighbour's)."""
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_spec_manager(folder),
                         transport="ipc", ip=str(folder / "kernel-ipc"),
                         connection_file=str(folder / "kernel-connection.json"))


def short_folder() -> pathlib.Path:
    """A new temporary folder with a short path (Unix socket paths are limited to 107 bytes)."""
    return pathlib.Path(tempfile.mkdtemp(prefix="aiomb-kernel-"))


class Kernel:
    """A started kernel: ``run(code)`` executes a cell and returns its :class:`Output`, or raises
    :class:`CellError` when the cell raised. Use in ``with``; its files go in a temporary folder."""

    def __init__(self, cwd: pathlib.Path = REPO):
        self.folder = short_folder()
        self.manager = kernel_manager(self.folder)
        self.cwd = cwd
        self.client = None

    def __enter__(self) -> "Kernel":
        try:
            self.manager.start_kernel(cwd=str(self.cwd), env=dict(os.environ, JUPYTER_PLATFORM_DIRS="1"))
            self.client = self.manager.client()
            self.client.start_channels()
            self.client.wait_for_ready(timeout=60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.client is not None:
                self.client.stop_channels()
            if self.manager.has_kernel:
                self.manager.shutdown_kernel(now=True)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def run(self, code: str, timeout: float = 60) -> Output:
        messages = []
        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=messages.append,
                                                allow_stdin=False)
        content = reply["content"]
        if content["status"] == "error":
            raise CellError(content["ename"], content["evalue"], content["traceback"])
        return Output(messages)
