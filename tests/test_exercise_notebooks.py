"""Generated exercise notebooks, run as a learner would before writing any code: every check cell
reports failure with the 'Not implemented yet' message, and every cell that fails names the exercise
to revisit (through ``tinyinterp.uses``): no bare AssertionError, NameError or NotImplementedError."""

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tinyinterp.harness import all_exercises

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "exercises").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
EXERCISE_NAME = re.compile(r"Exercise `([A-Za-z0-9_]+)` \(([^)]*)\)")


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    return data.get("text/plain", "") + data.get("text/html", "") + "".join(output.get("traceback", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stubs_fail_every_check_and_every_failing_cell_names_an_exercise(path, monkeypatch):
    monkeypatch.delenv("TINYINTERP_STRICT", raising=False)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, startup_timeout=300, allow_errors=True, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    check_cells = [c for c in nb.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")]
    assert check_cells, "no check cells"
    for cell in check_cells:
        text = "".join(_text(o) for o in cell.outputs)
        assert "FAILED" in text or "✘" in text, cell.source
        assert "Not implemented yet" in text, cell.source
        assert "0/" in text

    registry = all_exercises()
    this_chapter = {i for i, ex in registry.items() if ex.chapter == path.stem}
    errors = [(cell, o) for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    for cell, error in errors:
        where = f"{path.name}, cell {cell.get('id')}:\n{cell.source}"
        assert error["ename"] == "RevisitExercise", (where, error["ename"], error["evalue"])
        headline, *rest = error["evalue"].split("\n")
        named = EXERCISE_NAME.findall(headline)
        assert named, (where, headline)
        for ex_id, title in named:
            assert ex_id in this_chapter and registry[ex_id].title == title, (where, headline)
        assert rest and rest[-1].startswith("What to do:") and 'tinyinterp.check("' in rest[-1], (where, rest)
    # and the setup cell ran without reinstalling anything (tinyinterp was importable)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    assert not any("pip" in _text(o) for o in setup.outputs)


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_asserts_about_an_exercises_result_say_what_is_expected(path):
    """In every cell that runs inside ``tinyinterp.uses``, each assert has a message, which the
    learner reads when the claim fails."""
    bare = []
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "tinyinterp.uses(" in source:
            tree = ast.parse(source)
            bare += [f"cell {cell['id']}, line {node.lineno}" for node in ast.walk(tree)
                     if isinstance(node, ast.Assert) and node.msg is None]
    assert not bare, f"{path.name}: give these asserts a message saying what is expected: {bare}"
