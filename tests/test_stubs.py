"""What a learner sees of an exercise: a stub with only the neutral comment and the raise (nothing of
the solution), and hints in collapsible blocks just above it, for every exercise of every notebook."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tinyinterp.release import BEGIN, END, stub_source

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
NEUTRAL = ("# YOUR CODE HERE", "raise NotImplementedError()")
HINT_BLOCK = re.compile(r"<details><summary>Hint (\d+)</summary>\n\n(.+?)\n\n</details>", re.S)


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _split_regions(source: str) -> tuple[list[str], list[list[str]]]:
    """The lines outside the solution regions, and the lines of each region (markers excluded)."""
    outside, regions, current = [], [], None
    for line in source.split("\n"):
        if line.strip() == BEGIN:
            current = []
        elif line.strip() == END:
            regions.append(current)
            current = None
        elif current is not None:
            current.append(line)
        else:
            outside.append(line)
    return outside, regions


def test_stub_is_only_the_neutral_comment_and_the_raise_at_the_regions_indentation():
    src = (f"def f(x):\n    \"\"\"doc\"\"\"\n    {BEGIN}\n    # Hint: add one\n    # a comment\n    y = x + 1\n"
           f"    return y\n    {END}\n\nclass A:\n    def g(self):\n        {BEGIN}\n        return 2\n        {END}")
    assert stub_source(src, "w") == ("def f(x):\n    \"\"\"doc\"\"\"\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
                                     "\nclass A:\n    def g(self):\n        # YOUR CODE HERE\n"
                                     "        raise NotImplementedError()")


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_no_stub_shows_solution_text(path):
    """Each exercise cell of the generated notebook holds the solution cell's lines outside its regions
    plus the two neutral lines per region, and not one line of a region."""
    stubs = {c["id"]: _source(c) for c in _cells(ROOT / "exercises" / path.name)}
    n_exercises = 0
    for cell in _cells(path):
        source = _source(cell)
        if cell["cell_type"] != "code" or BEGIN not in source:
            continue
        n_exercises += 1
        outside, regions = _split_regions(source)
        stub = stubs[cell["id"]].split("\n")
        neutral = Counter({line: len(regions) for line in NEUTRAL})
        assert Counter(line.strip() for line in stub if line.strip() in NEUTRAL) == neutral, cell["id"]
        assert Counter(line for line in stub if line.strip() not in NEUTRAL) == Counter(outside), cell["id"]
        leaked = {line.strip() for region in regions for line in region} - {line.strip() for line in outside} - {""}
        assert not [line for line in stub if line.strip() in leaked], cell["id"]
    assert n_exercises, f"{path.name} has no exercise"


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_hints_live_in_the_collapsible_blocks_not_in_solution_comments(path):
    for cell in _cells(path):
        for region in _split_regions(_source(cell))[1]:
            assert not [line for line in region if line.strip().startswith("# Hint")], (
                f"{path.name}, cell {cell.get('id')}: move the hint into the exercise's <details> hint blocks")


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_every_exercise_has_numbered_collapsible_hints_just_above_it(path):
    missing = []
    markdown_above: list[str] = []  # the markdown cells since the last code cell
    for cell in _cells(path):
        if cell["cell_type"] == "markdown":
            markdown_above.append(_source(cell))
            continue
        if cell["cell_type"] == "code" and BEGIN in _source(cell):
            text = "\n\n".join(markdown_above)
            blocks = HINT_BLOCK.findall(text)
            numbers = [int(n) for n, _ in blocks]
            if not blocks or numbers != list(range(1, len(blocks) + 1)) or text.count("<details>") != len(blocks):
                missing.append(f"cell {cell.get('id')}: hints {numbers}")
            assert all(body.strip() for _, body in blocks), cell.get("id")
        markdown_above = []
    assert not missing, f"{path.name}: each exercise needs <details><summary>Hint 1</summary>, 2, ... just above it: {missing}"
