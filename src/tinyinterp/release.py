"""Generate exercises/ from solutions/ (the source of truth), and check that it is up to date.

In a solution notebook:
- code between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` becomes a stub, only the neutral
  ``# YOUR CODE HERE`` and ``raise NotImplementedError()`` at the region's indentation: nothing of the
  solution, comments included, reaches the learner (hints live in the collapsible ``<details>``
  blocks of the markdown cell before the exercise);
- a cell that calls ``tinyinterp.check("<id>", ...)`` becomes a locked nbgrader grade cell
  worth that exercise's points;
- the "Open in Colab" link is pointed at the exercise notebook; outputs and execution counts are
  dropped; the notebook's metadata names its chapter (``metadata["tinyinterp"]["chapter"]``), which
  ``tinyinterp check`` reads whatever the file is renamed to.

``release`` also writes the grading data that ships in the package
(:data:`tinyinterp.grading.assignment.DATA_FILE`), and checks that every test input of every exercise
can be sent to the grading sandbox.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CHECK_RE = re.compile(r"""check\(\s*["']([A-Za-z0-9_]+)["']""")
SETUP_MARK = "# Setup: installs tinyinterp"


class ReleaseError(Exception):
    """A solution notebook breaks a convention; the message says which and where."""


def repository_url(root: Path) -> str:
    """``repository.url`` from ``_config.yml`` (a tiny reader: no YAML dependency at run time)."""
    text = (root / "_config.yml").read_text()
    m = re.search(r"^repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:\s*(\S+)", text, re.M)
    if not m:
        raise ReleaseError("_config.yml has no repository.url")
    return m.group(1).strip("'\"").rstrip("/")


def colab_url(repo_url: str, path: str, branch: str = "main") -> str:
    return repo_url.replace("https://github.com/", "https://colab.research.google.com/github/") + f"/blob/{branch}/{path}"


def setup_cell_source(repo_url: str) -> str:
    return (f"{SETUP_MARK} where it is missing (Colab); never reinstalls torch.\n"
            "try:\n    import tinyinterp\nexcept ImportError:\n"
            f'    %pip install --quiet "tinyinterp @ git+{repo_url}"\n    import tinyinterp')


def stub_source(source: str, where: str) -> str:
    """Replace each BEGIN/END SOLUTION region by the neutral stub, keeping its indentation."""
    out: list[str] = []
    lines = source.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == BEGIN:
            indent = line[: len(line) - len(line.lstrip())]
            i += 1
            while i < len(lines) and lines[i].strip() != END:
                if lines[i].strip() == BEGIN:
                    raise ReleaseError(f"{where}: nested {BEGIN}")
                i += 1
            if i == len(lines):
                raise ReleaseError(f"{where}: {BEGIN} without {END}")
            out += [indent + "# YOUR CODE HERE", indent + "raise NotImplementedError()"]
        elif line.strip() == END:
            raise ReleaseError(f"{where}: {END} without {BEGIN}")
        else:
            out.append(line)
        i += 1
    return "\n".join(out)


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def release_notebook(nb: dict, rel_path: str, repo_url: str, points: dict[str, int],
                     keep_solutions: bool = False) -> dict:
    """The exercise version of one solution notebook (a new dict; ``nb`` is untouched).

    ``keep_solutions=True`` gives nbgrader's *source* version instead: the same metadata, solutions kept.
    """
    nb = copy.deepcopy(nb)
    sol_url = colab_url(repo_url, rel_path)
    ex_url = colab_url(repo_url, rel_path.replace("solutions/", "exercises/", 1))
    validate_header(nb, rel_path, repo_url)
    n_solutions = 0
    for idx, cell in enumerate(nb["cells"]):
        src = _src(cell)
        where = f"{rel_path}, cell {idx}"
        meta = {k: v for k, v in cell.get("metadata", {}).items() if k not in ("nbgrader", "execution")}
        cell_id = cell.get("id") or f"cell-{idx}"
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            if BEGIN in src:
                n_solutions += 1
                src = src if keep_solutions else stub_source(src, where)
                meta["nbgrader"] = _nbgrader(f"solution_{cell_id}", solution=True, grade=False, locked=False)
            elif (m := CHECK_RE.search(src)) and "tinyinterp" in src:
                ex_id = m.group(1)
                if ex_id not in points:
                    raise ReleaseError(f"{where}: check({ex_id!r}) names no registered exercise")
                meta["nbgrader"] = _nbgrader(f"check_{ex_id}", solution=False, grade=True, locked=True,
                                             points=points[ex_id])
        elif END in src or BEGIN in src:
            raise ReleaseError(f"{where}: solution markers in a {cell['cell_type']} cell")
        elif not keep_solutions:
            src = src.replace(sol_url, ex_url)
        cell["source"] = src
        cell["metadata"] = meta
    if n_solutions == 0:
        raise ReleaseError(f"{rel_path}: no {BEGIN} region; is it an exercise notebook?")
    nb.setdefault("metadata", {})["tinyinterp"] = {"chapter": Path(rel_path).stem}
    return nb


def _nbgrader(grade_id: str, solution: bool, grade: bool, locked: bool, points: int | None = None) -> dict:
    d = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution}
    if points is not None:
        d["points"] = points
    return d


def validate_header(nb: dict, rel_path: str, repo_url: str) -> None:
    """Every book notebook links to itself in Colab and installs tinyinterp only where it is missing."""
    cells = nb.get("cells", [])
    md = next((c for c in cells if c["cell_type"] == "markdown"), None)
    url = colab_url(repo_url, rel_path)
    if md is None or url not in _src(md):
        raise ReleaseError(f"{rel_path}: the first markdown cell must link to {url} (Open in Colab)")
    code = next((c for c in cells if c["cell_type"] == "code"), None)
    if code is None or _src(code).strip() != setup_cell_source(repo_url):
        raise ReleaseError(f"{rel_path}: the first code cell must be the setup cell:\n{setup_cell_source(repo_url)}")


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


@dataclass
class ReleasePlan:
    outputs: dict[Path, str]  # exercise path -> text
    stale: list[Path]  # exercise files that differ or are missing
    orphans: list[Path]  # exercise files with no solution


def plan_release(root: Path) -> ReleasePlan:
    from .grading.assignment import data_path_in
    from .harness import all_exercises

    repo_url = repository_url(root)
    points = {i: ex.points for i, ex in all_exercises().items()}
    outputs: dict[Path, str] = {}
    for sol in sorted((root / "solutions").glob("*.ipynb")):
        rel = f"solutions/{sol.name}"
        try:
            nb = json.loads(sol.read_text())
        except json.JSONDecodeError as e:
            raise ReleaseError(f"{rel} is not valid JSON: {e}") from None
        outputs[root / "exercises" / sol.name] = dumps(release_notebook(nb, rel, repo_url, points))
    for chap in sorted((root / "chapters").glob("*.ipynb")):
        validate_header(json.loads(chap.read_text()), f"chapters/{chap.name}", repo_url)
    for nb_path in sorted([*(root / "chapters").glob("*.ipynb"), *(root / "solutions").glob("*.ipynb")]):
        cells = json.loads(nb_path.read_text())["cells"]
        if any(c.get("outputs") for c in cells if c["cell_type"] == "code"):
            raise ReleaseError(f"{nb_path.relative_to(root)} is stored with outputs; clear them "
                               f"(jupyter nbconvert --clear-output --inplace {nb_path.relative_to(root)})")
    outputs[data_path_in(root)] = _grading_data(root)
    stale = [p for p, text in outputs.items() if not p.exists() or p.read_text() != text]
    orphans = [p for p in sorted((root / "exercises").glob("*.ipynb")) if p not in outputs]
    return ReleasePlan(outputs, stale, orphans)


def _grading_data(root: Path) -> str:
    """The package's grading data for this book; every test input must reach the sandbox intact."""
    from .grading.assignment import book_data
    from .grading.inputs import InputEncodingError, check_encodable
    from .harness import all_exercises

    try:
        text = book_data(root)
    except ValueError as e:
        raise ReleaseError(str(e)) from None
    registry = all_exercises()
    used = [registry[e["id"]] for a in json.loads(text)["assignments"].values() for e in a["exercises"]]
    try:
        check_encodable(used)
    except InputEncodingError as e:
        raise ReleaseError(f"grading could not send a test input to the sandbox: {e}") from None
    return text


def release(root: Path, check_only: bool = False) -> ReleasePlan:
    plan = plan_release(root)
    if not check_only:
        (root / "exercises").mkdir(exist_ok=True)
        for p in plan.stale:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(plan.outputs[p])
        for p in plan.orphans:
            p.unlink()
    return plan


def write_nbgrader_source(root: Path, course_dir: Path) -> list[Path]:
    """An nbgrader course tree: ``course_dir/source/<slug>/<slug>.ipynb`` with solutions and metadata,
    ready for ``nbgrader generate_assignment <slug>``."""
    from .harness import all_exercises

    repo_url = repository_url(root)
    points = {i: ex.points for i, ex in all_exercises().items()}
    written = []
    for sol in sorted((root / "solutions").glob("*.ipynb")):
        nb = release_notebook(json.loads(sol.read_text()), f"solutions/{sol.name}", repo_url, points, keep_solutions=True)
        out = course_dir / "source" / sol.stem / sol.name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(dumps(nb))
        written.append(out)
    return written
