"""What to run and what to test for one assignment, derived from the trusted solution notebook
(never from the submission).

``tinyinterp release`` writes what grading needs into this package (:data:`DATA_FILE`): for each
chapter, the function each exercise's learner defines and the SHA-256 of the book's narrative cells
that grading skips (hashes only, never solution code). So ``tinyinterp check`` and ``tinyinterp grade``
work from the installed package alone, on a lone notebook anywhere.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..harness import Exercise, all_exercises
from ..release import BEGIN, CHECK_RE
from .notebook import code_cells

DATA_FILE = "assignments.json"  # in this package, written by `tinyinterp release`
DATA_FORMAT = 1
CHECK_CALL_RE = re.compile(r"""check\(\s*["']([A-Za-z0-9_]+)["']\s*,\s*([A-Za-z_][A-Za-z0-9_]*)""")


@dataclass
class Assignment:
    slug: str
    exercises: list[Exercise]
    function_names: dict[str, str]  # exercise id -> the function the learner defines
    skip_hashes: set[str] = field(default_factory=set)  # SHA-256 of narrative cells after the first exercise

    @property
    def max_points(self) -> float:
        return float(sum(ex.points for ex in self.exercises))


def source_hash(src: str) -> str:
    return hashlib.sha256(src.strip().encode("utf-8")).hexdigest()


def assignment_data(nb: dict, where: str) -> dict:
    """What grading needs from one solution notebook: ``{"exercises": [{"id", "function"}, ...] (in
    notebook order), "skip_cells_sha256": [...]}``, the narrative cells being the code cells after the
    first exercise that are neither solution nor check cells."""
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
               for c in nb["cells"] if c["cell_type"] == "code"]
    registry = all_exercises()
    names: dict[str, str] = {}
    for src in sources:
        for ex_id, fn in CHECK_CALL_RE.findall(src):
            if ex_id in registry:
                names[ex_id] = fn
    if not names:
        raise ValueError(f"{where} has no check cells naming a registered exercise")
    first = next((i for i, s in enumerate(sources) if BEGIN in s), len(sources))
    skip = {source_hash(s) for s in sources[first:] if BEGIN not in s and not CHECK_RE.search(s) and s.strip()}
    return {"exercises": [{"id": i, "function": fn} for i, fn in names.items()], "skip_cells_sha256": sorted(skip)}


def book_data(root: Path) -> str:
    """The text of :data:`DATA_FILE` for the book at ``root`` (from ``solutions/*.ipynb``)."""
    assignments = {p.stem: assignment_data(json.loads(p.read_text()), f"solutions/{p.name}")
                   for p in sorted((root / "solutions").glob("*.ipynb"))}
    data = {"format": DATA_FORMAT, "generated_by": "tinyinterp release, from solutions/*.ipynb; do not edit",
            "assignments": assignments}
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def data_path_in(root: Path) -> Path:
    """Where :data:`DATA_FILE` lives in the book's source tree (it ships in the package)."""
    return root / "src" / "tinyinterp" / "grading" / DATA_FILE


def installed_data() -> dict:
    """The grading data shipped in the installed package: ``{chapter slug: assignment data}``."""
    try:
        data = json.loads(resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError) as e:
        raise FileNotFoundError(f"the installed tinyinterp has no valid grading data ({DATA_FILE}: {e}); "
                                f"run `tinyinterp release` in the book and reinstall") from None
    if data.get("format") != DATA_FORMAT:
        raise FileNotFoundError(f"{DATA_FILE} has format {data.get('format')!r}, expected {DATA_FORMAT}")
    return data["assignments"]


def known_chapters() -> list[str]:
    return sorted(installed_data())


def load_assignment(slug: str, data: dict | None = None) -> Assignment:
    """The assignment ``slug`` from the installed grading data (or from ``data``, the same shape)."""
    data = installed_data() if data is None else data
    if slug not in data:
        raise FileNotFoundError(f"no assignment {slug!r}; known: {', '.join(sorted(data))}")
    entry = data[slug]
    registry = all_exercises()
    names = {e["id"]: e["function"] for e in entry["exercises"]}
    unknown = [i for i in names if i not in registry]
    if unknown:
        raise ValueError(f"assignment {slug!r} names exercises this tinyinterp does not have: {', '.join(unknown)}")
    return Assignment(slug, [registry[i] for i in names], names, set(entry["skip_cells_sha256"]))


def chapter_of(path: Path, nb: dict, known: list[str]) -> str | None:
    """The chapter of a notebook: its ``metadata.tinyinterp.chapter`` (written by ``tinyinterp release``),
    else the one chapter slug its file name contains ("Copy of 02_attention (1).ipynb"), else None."""
    meta = nb.get("metadata") if isinstance(nb, dict) else None
    tagged = meta.get("tinyinterp", {}).get("chapter") if isinstance(meta, dict) and isinstance(
        meta.get("tinyinterp"), dict) else None
    if tagged in known:
        return tagged
    stem = path.name[: -len(".ipynb")] if path.name.lower().endswith(".ipynb") else path.stem
    name = re.sub(r"[\s\-]+", "_", stem.lower())
    found = [slug for slug in known if slug.lower() in name]
    found = [s for s in found if not any(s != t and s.lower() in t.lower() for t in found)]  # the longest
    return found[0] if len(found) == 1 else None


def cells_to_run(assignment: Assignment, nb: dict) -> list[tuple[int, str]]:
    """The submission's code cells to execute, as ``(cell index, source)``; raises
    :class:`~.notebook.NotebookError` when the notebook's cells are malformed.

    Everything the learner wrote runs, check cells included: while grading, ``tinyinterp.check`` and
    ``tinyinterp.progress`` do nothing however they are reached (:mod:`.neutral`), so a cell that defines
    a function and also calls ``check`` still defines it. Only the book's own narrative cells that come
    after the first exercise are skipped (recognised by their unchanged source; they only demo the
    learner's functions).
    """
    return [(i, strip_magics(src)) for i, src in code_cells(nb) if source_hash(src) not in assignment.skip_hashes]


def strip_magics(src: str) -> str:
    """IPython magics and shell escapes become ``pass`` (the grader installs nothing, runs no shell)."""
    lines = src.split("\n")
    if lines and lines[0].lstrip().startswith("%%"):
        return "pass"
    out = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            out.append(line[: len(line) - len(stripped)] + "pass")
        else:
            out.append(line)
    return "\n".join(out)
