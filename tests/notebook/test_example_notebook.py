"""examples/notebook.ipynb runs top to bottom on a real Jupyter kernel (nbclient + ipykernel) and shows
what the capture holds: its flows, the custom event's count, one stream's bytes, the plots."""

import shutil

import nbformat
from nbclient import NotebookClient

from .kernel import REPO, kernel_manager, short_folder

NOTEBOOK = REPO / "examples" / "notebook.ipynb"


def tagged(nb, tag: str):
    (cell,) = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    return cell


def stdout(cell) -> str:
    return "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stdout")


def test_the_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_the_example_notebook_runs_on_a_kernel():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    folder = short_folder()
    km = kernel_manager(folder)
    client = NotebookClient(nb, km=km, timeout=120, resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute()
    finally:
        if client.kc is not None:           # nbclient leaves the client and kernel it was handed open
            client.kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        shutil.rmtree(folder, ignore_errors=True)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o["output_type"] == "error"]
    assert errors == []
    table = tagged(nb, "flows").outputs[0]["data"]
    assert "text/html" in table and table["text/plain"].splitlines()[-1].startswith("6  ")   # 7 rows, 0..6
    assert stdout(tagged(nb, "counts")) == (
        "flows: 7\n"
        "HTTP GET requests: 3\n"
        "  tcp 192.0.2.10:51000 -> 198.51.100.20:80\n"
        "  tcp [2001:db8::10]:51001 -> [2001:db8:1::20]:80\n"
        "  tcp 192.0.2.13:40300 -> 198.51.100.20:80\n")
    assert stdout(tagged(nb, "stream")) == "51 bytes\nHTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world\n\n"
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3
