"""What to run and what to test for one assignment, derived from the trusted solution notebook
(never from the submission)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..harness import Exercise, all_exercises
from ..release import BEGIN, CHECK_RE

CHECK_CALL_RE = re.compile(r"""check\(\s*["']([A-Za-z0-9_]+)["']\s*,\s*([A-Za-z_][A-Za-z0-9_]*)""")
HARNESS_CALL_RE = re.compile(r"tinyinterp\s*\.\s*(check|progress)\s*\(|^\s*(check|progress)\s*\(", re.M)


@dataclass
class Assignment:
    slug: str
    exercises: list[Exercise]
    function_names: dict[str, str]  # exercise id -> the function the learner defines
    skip_sources: set[str] = field(default_factory=set)  # narrative cells after the first exercise

    @property
    def max_points(self) -> float:
        return float(sum(ex.points for ex in self.exercises))


def load_assignment(root: Path, slug: str) -> Assignment:
    path = root / "solutions" / f"{slug}.ipynb"
    if not path.exists():
        known = sorted(p.stem for p in (root / "solutions").glob("*.ipynb"))
        raise FileNotFoundError(f"no assignment {slug!r}; known: {', '.join(known)}")
    cells = json.loads(path.read_text())["cells"]
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
               for c in cells if c["cell_type"] == "code"]
    registry = all_exercises()
    names: dict[str, str] = {}
    for src in sources:
        for ex_id, fn in CHECK_CALL_RE.findall(src):
            if ex_id in registry:
                names[ex_id] = fn
    if not names:
        raise ValueError(f"solutions/{slug}.ipynb has no check cells naming a registered exercise")
    first = next(i for i, s in enumerate(sources) if BEGIN in s)
    skip = {s.strip() for s in sources[first:] if BEGIN not in s and not CHECK_RE.search(s) and s.strip()}
    return Assignment(slug, [registry[i] for i in names], names, skip)


def cells_to_run(assignment: Assignment, nb: dict) -> list[tuple[int, str]]:
    """The submission's code cells to execute, as ``(cell index, source)``.

    Everything the learner wrote runs, except: check/progress calls (their saved results are never
    trusted and their live results are irrelevant), and the book's own narrative cells that come after
    the first exercise (recognised by their unchanged source; they only demo the learner's functions).
    """
    out = []
    for i, cell in enumerate(nb.get("cells", [])):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else str(src)
        if HARNESS_CALL_RE.search(src) or src.strip() in assignment.skip_sources:
            continue
        out.append((i, strip_magics(src)))
    return out


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
