"""`tinyinterp grade` over EVERY chapter (parametrised from solutions/*.ipynb; a new chapter is covered
the day it is added), with hidden tests, in one batch run per chapter:

- the solution notebook gets full marks on every public and hidden case;
- the generated exercise notebook gets 0 and every exercise says "not implemented";
- each catalogued mistake (``Exercise.mistakes``), injected into the solution, makes that exercise lose
  points and its feedback name the mistake, while the other exercises keep full marks. Round k injects
  mistake k of every exercise of the chapter at once: a cell appended to the solution redefines each
  learner function as a wrapper around the mistake (learner code may import tinyinterp), and rebinds
  the other exercises' functions to the solution's originals, so a mistake in one exercise cannot leak
  into another that calls it. The sandbox withholds the chapter's reference implementations (a function
  that reaches one earns 0: see tests/test_sandbox.py), and a mistake is a small change to its reference,
  so the cell puts the solution's functions in the references' places first (and the functions an exercise
  withholds with its reference, as shipped, in theirs). The sandbox's copy of the
  exercise definitions computes nothing either (tests/test_graded_copy.py), so the cell runs the catalogue's
  source as shipped, embedded by this test.

`tinyinterp check` on every chapter's solution and exercise notebook is tested from an installed wheel,
in tests/test_selfcheck_wheel.py.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tinyinterp.grading.assignment import load_assignment
from tinyinterp.grading.grader import SubmissionResult
from tinyinterp.grading.sandbox import can_isolate

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))

INJECT = '''\
# test: inject catalogued mistakes
import sys as _sys
import types as _types
import tinyinterp.harness as _harness
import tinyinterp.harness.registry as _registry
from tinyinterp.harness import all_exercises as _all_exercises
_solution = dict(globals())

def _solution_function(_name):  # the solution's function, calling only the solution's functions
    _f = _solution[_name]
    _g = _types.FunctionType(_f.__code__, _solution, _f.__name__, _f.__defaults__, _f.__closure__)
    _g.__kwdefaults__ = _f.__kwdefaults__
    return _g

for _name in {keep!r}:  # the other exercises call the solution's functions, never an injected mistake
    globals()[_name] = _solution_function(_name)

# While grading, the chapter's reference implementations are withheld (copying is not solving), and the
# catalogued mistakes are written as small changes to them: here they call the solution's functions instead
# (every name the package binds to a reference is rebound).
def _rebind(_old, _new):  # every name the package binds to _old now names _new
    for _module in [m for k, m in list(_sys.modules.items()) if k.split(".")[0] == "tinyinterp"]:
        for _attr, _value in list(vars(_module).items()):
            if _value is _old:
                setattr(_module, _attr, _new)

for _id, _name in {functions!r}.items():
    _rebind(_all_exercises()[_id].reference, _solution_function(_name))

# Library functions an exercise withholds with its reference (Exercise.withheld, e.g. what the reference
# wraps) may be what a catalogued mistake is built from: they run from their modules' source as shipped.
for _module_name, (_source, _qualnames) in {withheld!r}.items():
    _shipped_module = _types.ModuleType(_module_name + "_as_shipped")  # in sys.modules, as e.g. dataclasses need
    _shipped_module.__package__ = _module_name.rsplit(".", 1)[0]
    _sys.modules[_shipped_module.__name__] = _shipped_module
    _shipped = vars(_shipped_module)
    exec(compile(_source, _module_name, "exec"), _shipped)
    _poisoned = _sys.modules[_module_name]
    for _qualname in _qualnames:
        _rebind(getattr(_poisoned, _qualname), _shipped[_qualname])

# The sandbox's copy of the exercise definitions computes nothing (the catalogue is grading data): run the
# catalogue's source, as shipped (embedded by the test), collecting its exercises instead of registering them.
_catalogue = {{}}
_register = (_harness.register, _registry.register)
_harness.register = _registry.register = lambda _ex: _catalogue.setdefault(_ex.id, _ex)
try:
    for _module_name, _source in {sources!r}.items():
        exec(compile(_source, _module_name, "exec"), {{"__name__": _module_name + "_as_shipped",
                                                       "__package__": "tinyinterp.exercises"}})
finally:
    _harness.register, _registry.register = _register

def _wrap(_mistake):
    def learner_function(**kwargs):
        return _mistake(**kwargs)
    return learner_function

for _name, (_id, _message) in {inject!r}.items():
    _exercise = _catalogue.get(_id) or _all_exercises()[_id]
    globals()[_name] = _wrap(next(m.fn for m in _exercise.mistakes if m.message == _message))
'''


def code_cell(source: str, cell_id: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": cell_id, "metadata": {}, "outputs": [],
            "source": source}


def injected(solution: dict, assignment, k: int) -> tuple[dict, dict]:
    """The solution with mistake k of every exercise that has one; returns (notebook, {id: Mistake})."""
    mistakes = {ex.id: ex.mistakes[k] for ex in assignment.exercises if k < len(ex.mistakes)}
    inject = {assignment.function_names[i]: (i, m.message) for i, m in mistakes.items()}  # found by message
    keep = [fn for fn in assignment.function_names.values() if fn not in inject]
    nb = json.loads(json.dumps(solution))
    modules = {m.fn.__module__ for m in mistakes.values() if m.fn.__module__.startswith("tinyinterp.exercises.")}
    sources = {name: Path(sys.modules[name].__file__).read_text() for name in sorted(modules)}
    withheld = {}
    for fn in (fn for ex in assignment.exercises for fn in ex.withheld):
        source = Path(sys.modules[fn.__module__].__file__).read_text()
        withheld.setdefault(fn.__module__, (source, []))[1].append(fn.__qualname__)
    nb["cells"].append(code_cell(INJECT.format(keep=keep, inject=inject, functions=assignment.function_names,
                                               sources=sources, withheld=withheld), f"inject-{k}"))
    return nb, mistakes


def grade_chapter(slug: str, tmp: Path):
    assignment = load_assignment(slug)
    solution = json.loads((ROOT / "solutions" / f"{slug}.ipynb").read_text())
    subs = tmp / "subs"
    subs.mkdir()
    (subs / "solution_x.ipynb").write_text(json.dumps(solution))
    (subs / "exercise_x.ipynb").write_text((ROOT / "exercises" / f"{slug}.ipynb").read_text())
    rounds = {}
    for k in range(max(len(ex.mistakes) for ex in assignment.exercises)):
        nb, rounds[f"mistake{k}"] = injected(solution, assignment, k)
        (subs / f"mistake{k}_x.ipynb").write_text(json.dumps(nb))
    out, fb = tmp / "gradebook.csv", tmp / "feedback"
    p = subprocess.run([sys.executable, "-m", "tinyinterp.cli", "grade", str(subs), "--assignment", slug,
                        "--out", str(out), "--feedback", str(fb), "--workers", "2", "--quiet", "--root", str(ROOT),
                        *([] if can_isolate() else ["--unsafe-no-sandbox"])],
                       capture_output=True, text=True, timeout=1200)
    results = {r.student: r for r in (SubmissionResult.from_json(f.read_text())
                                      for f in Path(str(out) + ".state").glob("*.json"))}
    rows = {r["student"]: r for r in csv.DictReader(out.open())} if out.exists() else {}
    return assignment, rounds, p, results, rows, fb


@pytest.mark.parametrize("slug", CHAPTERS)
def test_grading_every_chapter(slug, tmp_path):
    assignment, rounds, p, results, rows, fb = grade_chapter(slug, tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert set(results) == set(rows) == {"solution", "exercise", *rounds}
    problems = []
    n_cases = {ex.id: len(ex.public_cases()) + len(ex.hidden_cases()) for ex in assignment.exercises}

    sol = results["solution"]
    if sol.status != "graded" or sol.total != sol.max_total or sol.max_total != assignment.max_points:
        problems.append(f"solution: {sol.total}/{sol.max_total}, status {sol.status}")
    for e in sol.exercises:
        if e.kind != "ok" or e.cases_passed != e.cases_total or e.cases_total != n_cases[e.id]:
            problems.append(f"solution: {e.id} passed {e.cases_passed}/{e.cases_total} of {n_cases[e.id]} "
                            f"public+hidden cases: {e.message[:300]}")

    blank = results["exercise"]
    if blank.status != "graded" or blank.total != 0:
        problems.append(f"exercise notebook: {blank.total} points, status {blank.status}")
    for e in blank.exercises:
        if e.kind != "not_implemented" or "Not implemented" not in e.message:
            problems.append(f"exercise notebook: {e.id} says {e.kind}: {e.message[:200]}")

    for student, mistakes in rounds.items():
        r = results[student]
        feedback = (fb / f"{student}.md").read_text()
        if r.status != "graded":
            problems.append(f"{student}: status {r.status}: {r.notes}")
        for e in r.exercises:
            m = mistakes.get(e.id)
            if m is None and e.points != e.max_points:
                problems.append(f"{student}: {e.id} (not injected) lost points: {e.message[:300]}")
            if m is not None and e.points >= e.max_points:
                problems.append(f"{student}: {e.id} kept full marks with the mistake {m.message!r}")
            elif m is not None and (m.message not in e.message or m.message not in feedback):
                problems.append(f"{student}: {e.id}, mistake {m.message[:80]!r}... not named; "
                                f"feedback says: {e.message[:300]}")
    assert not problems, "\n".join(problems)
