"""The graded copy of the package (what the grading sandbox imports), beyond the references themselves:

- the grading data the child never needs (the mistake catalogue, its helpers, the case generators) computes
  nothing there: a catalogued mistake, adapted (e.g. "normalised over the wrong dimension" applied to the
  transpose), can be the right answer, so calling it must earn 0 like calling the reference;
- only the package's own source and data files are copied: whatever else lies in the package folder
  (submissions or feedback an instructor put there, bytecode, symlinks) never reaches the sandbox.

Parametrised over every chapter, so a new chapter is covered the day it is added.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyinterp.grading import graded_copy
from tinyinterp.grading.assignment import known_chapters, load_assignment
from tinyinterp.grading.sandbox import can_isolate

ROOT = Path(__file__).resolve().parents[1]

PROBE = r'''
import importlib, json, pkgutil
import tinyinterp.exercises as E
from tinyinterp.harness import all_exercises
for m in pkgutil.iter_modules(E.__path__):
    importlib.import_module("tinyinterp.exercises." + m.name)
found = {}
for ex in all_exercises().values():
    # a mistake is called as the learner's function is, by keyword; the case generator as (gen, hidden)
    calls = [("mistake", m.fn, (), {name: None for name in ex.parameters}) for m in ex.mistakes]
    for what, fn, args, kwargs in calls + [("cases", ex.cases, (None, None), {})]:
        try:
            fn(*args, **kwargs)
            found.setdefault(ex.id, []).append([what, "returned"])
        except Exception as e:
            found.setdefault(ex.id, []).append([what, type(e).__name__, str(e)])
print(json.dumps(found))
'''


@pytest.mark.parametrize("slug", known_chapters())
def test_the_mistake_catalogue_and_case_generators_compute_nothing_in_the_sandbox(tmp_path, slug):
    package = graded_copy.build(load_assignment(slug).exercises, tmp_path)
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(package.parent)})
    assert p.returncode == 0, p.stderr[-2000:]
    found = json.loads(p.stdout)
    assert found, "no exercise registered in the graded copy"
    for ex_id, outcomes in found.items():
        for what, *outcome in outcomes:
            assert outcome[0] == "ReferenceUnavailable", (ex_id, what, outcome)
            assert outcome[1].startswith("tinyinterp.exercises."), (ex_id, what, outcome)


def test_a_function_called_while_the_module_is_imported_keeps_working_and_what_it_builds_is_withheld():
    src = ("def factory(k):\n    def built(x):\n        return x + k\n    return built\n"
           "table = {'a': factory(1), 'b': lambda x: x * 2}\n"
           "def helper(x):\n    return x - 1\n")
    out = graded_copy.withhold_everything(src, "tinyinterp.exercises.demo")
    ns: dict = {}
    exec(compile(out, "demo.py", "exec"), ns)  # importing still works: factory() ran
    for call in (lambda: ns["table"]["a"](1), lambda: ns["table"]["b"](1), lambda: ns["helper"](1)):
        with pytest.raises(graded_copy.ReferenceUnavailable):
            call()
    assert "x + k" not in out and "x * 2" not in out and "x - 1" not in out


def test_only_the_packages_own_files_are_copied(tmp_path):
    """A careless instructor keeps submissions and feedback inside the package folder: none of it is copied."""
    import shutil

    source = tmp_path / "src" / "tinyinterp"
    shutil.copytree(graded_copy.installed_package_dir(), source, ignore=shutil.ignore_patterns("__pycache__"))
    planted = {"subs/alice_1.ipynb": "{}", "feedback/alice.md": "alice 5/5", "gradebook.csv": "alice,5",
               "grading/notes.txt": "secret", "exercises/solutions.ipynb": "{}"}
    for rel, text in planted.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(text)
    (source / "link.py").symlink_to(source / "feedback" / "alice.md")
    out = graded_copy.build(load_assignment(known_chapters()[0]).exercises, tmp_path / "copy", source=source)
    copied = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    for rel in [*planted, "link.py"]:
        assert rel not in copied, rel
    assert "grading/assignments.json" in copied and "model.py" in copied
    shipped = {str(p.relative_to(source)) for p in source.rglob("*.py") if not p.is_symlink()}
    assert shipped <= copied


CATALOGUE_ROUTE = '''import tinyinterp.harness as H
def bigram_log_probs(tokens, d_vocab, smoothing):
    # the catalogued mistake "normalised over the first dimension", on the reversed sequences, transposed
    return H.get_exercise("bigram_log_probs").mistakes[0].fn(tokens.flip(1), d_vocab, smoothing).T
'''


@pytest.mark.slow
@pytest.mark.skipif(not can_isolate(), reason="the sandbox needs root and bubblewrap (CI runs as root)")
def test_calling_the_mistake_catalogue_earns_zero_with_a_message(tmp_path):
    import csv

    slug = "01_tokens_and_embeddings"
    nb = json.loads((ROOT / "solutions" / f"{slug}.ipynb").read_text())
    nb["cells"].append({"cell_type": "code", "metadata": {}, "source": CATALOGUE_ROUTE, "outputs": [],
                        "execution_count": None, "id": "student-route"})
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "route_1.ipynb").write_text(json.dumps(nb))
    out, fb = tmp_path / "gradebook.csv", tmp_path / "fb"
    p = subprocess.run([sys.executable, "-m", "tinyinterp.cli", "grade", str(subs), "--assignment", slug, "--out",
                        str(out), "--feedback", str(fb), "--workers", "1", "--quiet", "--root", str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    row = next(csv.DictReader(out.open()))
    assert float(row["bigram_log_probs"]) == 0 and float(row["embed"]) > 0, row
    assert "reaches the book's grading code (`tinyinterp.exercises.part1" in (fb / "route.md").read_text()


# ----- library helpers that would do an exercise's work must be withheld with it ----------------------------
def _chapter_number(slug: str) -> int:
    return int(slug.split("_", 1)[0])


@pytest.mark.parametrize("slug", [s for s in known_chapters() if _chapter_number(s) >= 9])
def test_every_function_beside_a_reference_is_withheld_or_allowed_with_a_reason(slug):
    """A reference that wraps library code, or a private helper left callable next to it, lets a learner
    get full marks without writing the computation (e.g. a scan helper revived by rebinding the withheld
    function it calls to the learner's own). So in every module that holds one of the chapter's references
    or withheld functions, each top-level function is withheld for the chapter (``Exercise.reference`` or
    ``Exercise.withheld``) or listed, with its reason, in the exercise module's ``CALLABLE_WHILE_GRADING``.
    Chapters 9 and later; the earlier chapters' modules predate the rule."""
    import ast
    import importlib

    exercises = load_assignment(slug).exercises
    withheld = {f"{fn.__module__}.{fn.__qualname__}" for ex in exercises for fn in (ex.reference, *ex.withheld)}
    allowed: dict[str, str] = {}
    for module_name in {ex.cases.__module__ for ex in exercises}:
        allowed.update(getattr(importlib.import_module(module_name), "CALLABLE_WHILE_GRADING", {}))
    assert allowed, f"{slug}: its exercise module declares no CALLABLE_WHILE_GRADING"
    for reason in allowed.values():
        assert isinstance(reason, str) and len(reason) > 10, f"{slug}: say why it may stay callable: {reason!r}"
    modules = {name.rsplit(".", 1)[0] for name in withheld} - {ex.cases.__module__ for ex in exercises}
    unlisted = []
    for module_name in sorted(modules):
        tree = ast.parse(Path(importlib.import_module(module_name).__file__).read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{module_name}.{node.name}"
                if name not in withheld and name not in allowed:
                    unlisted.append(name)
    assert not unlisted, f"{slug}: withhold these or list them in CALLABLE_WHILE_GRADING with a reason: {unlisted}"
    stale = [name for name in allowed if name in withheld]
    assert not stale, f"{slug}: both withheld and allowed: {stale}"
