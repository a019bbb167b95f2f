"""The release pipeline: stubs, nbgrader metadata, staleness, and the repository's own notebooks."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tinyinterp.grading.assignment import data_path_in
from tinyinterp.release import (BEGIN, END, ReleaseError, colab_url, plan_release, release, release_notebook,
                                repository_url, setup_cell_source, stub_source)

ROOT = Path(__file__).resolve().parents[1]
REPO = "https://github.com/example/book"


def _nb(cells):
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _md(src, id_="m"):
    return {"cell_type": "markdown", "id": id_, "metadata": {}, "source": src}


def _code(src, id_="c"):
    return {"cell_type": "code", "id": id_, "metadata": {}, "source": src, "outputs": [], "execution_count": None}


def _solution_nb(path="solutions/09_demo.ipynb", repo=REPO):
    return _nb([
        _md(f"# Demo\n[Open in Colab]({colab_url(repo, path)})", "m0"),
        _code(setup_cell_source(repo), "c0"),
        _code(f"def f(x):\n    \"\"\"doc\"\"\"\n    {BEGIN}\n    # Hint: add one\n    y = x + 1\n    return y\n    {END}", "c1"),
        _code('tinyinterp.check("mlp", f)', "c2"),
    ])


def test_stub_keeps_indentation_and_nothing_of_the_solution():
    src = f"def f(x):\n    {BEGIN}\n    # Hint: think\n    return x\n    {END}\n\nprint(1)"
    assert stub_source(src, "w") == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\nprint(1)"
    with pytest.raises(ReleaseError, match="without"):
        stub_source(f"{BEGIN}\nx = 1", "w")
    with pytest.raises(ReleaseError, match="without"):
        stub_source(f"x = 1\n{END}", "w")


def test_release_notebook_metadata_and_links():
    nb = _solution_nb()
    nb["cells"][2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "secret"}]
    out = release_notebook(nb, "solutions/09_demo.ipynb", REPO, {"mlp": 1})
    cells = out["cells"]
    assert colab_url(REPO, "exercises/09_demo.ipynb") in cells[0]["source"]
    assert "y = x + 1" not in cells[2]["source"] and "raise NotImplementedError()" in cells[2]["source"]
    assert cells[2]["metadata"]["nbgrader"] == {"grade": False, "grade_id": "solution_c1", "locked": False,
                                                "schema_version": 3, "solution": True}
    assert cells[3]["metadata"]["nbgrader"]["points"] == 1 and cells[3]["metadata"]["nbgrader"]["locked"]
    assert all(c.get("outputs", []) == [] for c in cells)
    assert "y = x + 1" in nb["cells"][2]["source"]  # input untouched


def test_release_rejects_broken_notebooks():
    nb = _solution_nb()
    nb["cells"][1]["source"] = "import tinyinterp"
    with pytest.raises(ReleaseError, match="setup cell"):
        release_notebook(nb, "solutions/09_demo.ipynb", REPO, {"mlp": 1})
    nb = _solution_nb()
    nb["cells"][3]["source"] = 'tinyinterp.check("nope", f)'
    with pytest.raises(ReleaseError, match="names no registered exercise"):
        release_notebook(nb, "solutions/09_demo.ipynb", REPO, {"mlp": 1})


def _make_book(tmp_path):
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    for d in ("solutions", "exercises", "chapters"):
        (tmp_path / d).mkdir()
    url = repository_url(tmp_path)
    nb = _solution_nb(repo=url)
    (tmp_path / "solutions" / "09_demo.ipynb").write_text(json.dumps(nb))
    return tmp_path


def test_release_check_detects_stale_and_hand_edited_exercises(tmp_path):
    root = _make_book(tmp_path)
    cli = [sys.executable, "-m", "tinyinterp.cli", "release"]
    assert subprocess.run([*cli, "--check", "--root", str(root)], capture_output=True).returncode == 1
    assert subprocess.run([*cli, "--root", str(root)], capture_output=True).returncode == 0
    assert subprocess.run([*cli, "--check", "--root", str(root)], capture_output=True).returncode == 0
    ex = root / "exercises" / "09_demo.ipynb"
    ex.write_text(ex.read_text().replace("YOUR CODE HERE", "hand edit"))
    p = subprocess.run([*cli, "--check", "--root", str(root)], capture_output=True, text=True)
    assert p.returncode == 1 and "exercises/09_demo.ipynb" in p.stderr
    (root / "exercises" / "99_orphan.ipynb").write_text("{}")
    release(root)
    assert not (root / "exercises" / "99_orphan.ipynb").exists()
    assert not plan_release(root).stale


def test_repository_exercises_match_solutions():
    plan = plan_release(ROOT)
    assert plan.outputs, "no solution notebooks found"
    assert not plan.stale and not plan.orphans, "run `tinyinterp release`"
    notebooks = {p.name for p in plan.outputs if p.parent == ROOT / "exercises"}
    assert notebooks == {p.name for p in (ROOT / "solutions").glob("*.ipynb")}
    assert data_path_in(ROOT) in plan.outputs


def test_every_chapter_has_its_three_notebooks_and_is_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    chapters = sorted(p.stem for p in (ROOT / "chapters").glob("*.ipynb"))
    assert chapters
    for slug in chapters:
        assert (ROOT / "solutions" / f"{slug}.ipynb").exists()
        assert (ROOT / "exercises" / f"{slug}.ipynb").exists()
        assert f"chapters/{slug}" in toc


def test_exercise_headers_match_the_registry():
    """Each exercise's difficulty/importance/minutes/points line equals its registry entry."""
    from tinyinterp.harness import all_exercises

    for ex in all_exercises().values():
        path = ROOT / "solutions" / f"{ex.chapter}.ipynb"
        if not path.exists():
            continue
        cells = json.loads(path.read_text())["cells"]
        srcs = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells]
        i = next(i for i, s in enumerate(srcs) if f'check("{ex.id}"' in s)
        header = next(s[s.index("### Exercise"):] for s in reversed(srcs[:i]) if "### Exercise" in s)
        assert "🔴" * ex.difficulty + "⚪" * (5 - ex.difficulty) in header, ex.id
        assert "🔵" * ex.importance + "⚪" * (5 - ex.importance) in header, ex.id
        assert f"~{ex.minutes} minutes" in header and f"{ex.points} point" in header, ex.id
        assert "<details>" in "".join(srcs[:i]), f"{ex.id}: no collapsible hint"


def test_release_writes_the_grading_data_and_check_notices_it_stale(tmp_path):
    root = _make_book(tmp_path)
    release(root)
    data = data_path_in(root)
    entry = json.loads(data.read_text())["assignments"]["09_demo"]
    assert entry["exercises"] == [{"id": "mlp", "function": "f"}]
    exercise = json.loads((root / "exercises" / "09_demo.ipynb").read_text())
    assert exercise["metadata"]["tinyinterp"] == {"chapter": "09_demo"}
    cli = [sys.executable, "-m", "tinyinterp.cli", "release", "--check", "--root", str(root)]
    assert subprocess.run(cli, capture_output=True).returncode == 0
    nb = json.loads((root / "solutions" / "09_demo.ipynb").read_text())  # a new narrative cell after the exercise
    nb["cells"].append(_code("print(f(1))", "c9"))
    (root / "solutions" / "09_demo.ipynb").write_text(json.dumps(nb))
    p = subprocess.run(cli, capture_output=True, text=True)
    assert p.returncode == 1 and "assignments.json" in p.stderr


def test_grading_data_holds_hashes_never_solution_code():
    from tinyinterp.grading.assignment import source_hash

    text = data_path_in(ROOT).read_text()
    for sol in (ROOT / "solutions").glob("*.ipynb"):
        for cell in json.loads(sol.read_text())["cells"]:
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            if BEGIN in src:
                body = src[src.index(BEGIN) + len(BEGIN): src.index(END)]
                assert not any(len(line.strip()) > 12 and line.strip() in text for line in body.splitlines())
                assert source_hash(src) not in text  # solution cells are never skipped


def test_released_notebooks_name_their_chapter():
    for ex in (ROOT / "exercises").glob("*.ipynb"):
        assert json.loads(ex.read_text())["metadata"]["tinyinterp"] == {"chapter": ex.stem}
