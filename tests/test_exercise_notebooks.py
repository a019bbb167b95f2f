"""Generated exercise notebooks, run as a learner would before writing any code: every check cell
reports failure with the 'Not implemented yet' message, and nothing else goes wrong."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "exercises").glob("*.ipynb"))


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    return data.get("text/plain", "") + data.get("text/html", "") + "".join(output.get("traceback", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stubs_fail_every_check_with_a_clear_message(path, monkeypatch):
    monkeypatch.delenv("TINYINTERP_STRICT", raising=False)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, allow_errors=True, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    check_cells = [c for c in nb.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")]
    assert check_cells, "no check cells"
    for cell in check_cells:
        text = "".join(_text(o) for o in cell.outputs)
        assert "FAILED" in text or "✘" in text, cell.source
        assert "Not implemented yet" in text, cell.source
        assert "0/" in text
    # the only errors allowed: NotImplementedError from cells that use a learner's function, and
    # NameError for a variable that an earlier, failed cell would have defined
    failed_sources = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") != "error":
                continue
            if o["ename"] == "NameError":
                name = o["evalue"].split("'")[1]
                assert any(name in src for src in failed_sources), (cell.source, o["evalue"])
            else:
                assert o["ename"] == "NotImplementedError", (cell.source, o["ename"], o["evalue"])
            failed_sources.append(cell.source)
    # and the setup cell ran without reinstalling anything (tinyinterp was importable)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    assert not any("pip" in _text(o) for o in setup.outputs)
