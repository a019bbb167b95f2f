"""``tinyinterp.check``: instant, specific feedback on a learner's function, and the progress table."""

from __future__ import annotations

import html
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .judge import Verdict, judge_runs
from .registry import Exercise, all_exercises, get_exercise
from .runner import run_case

STRICT_ENV = "TINYINTERP_STRICT"  # "1": a failed check raises (used by CI on solution notebooks)


@dataclass
class CheckResult:
    exercise_id: str
    passed: bool
    points: float
    max_points: float
    message: str
    cases_passed: int = 0
    cases_total: int = 0
    kind: str = "ok"
    details: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        mark = "PASSED" if self.passed else "FAILED"
        return (f"[{mark}] {self.exercise_id}: {self.points:g}/{self.max_points:g} points "
                f"({self.cases_passed}/{self.cases_total} test cases)\n{self.message}")

    __repr__ = __str__

    def _repr_html_(self) -> str:
        color, icon = ("#1a7f37", "✔") if self.passed else ("#cf222e", "✘")
        return (f'<div style="border-left:4px solid {color};padding:6px 10px;margin:4px 0;'
                f'font-family:sans-serif"><b style="color:{color}">{icon} {html.escape(self.exercise_id)}'
                f"</b> — {self.points:g}/{self.max_points:g} points "
                f"({self.cases_passed}/{self.cases_total} test cases)"
                f'<pre style="white-space:pre-wrap;margin:4px 0 0 0">{html.escape(self.message)}</pre></div>')


_PROGRESS: dict[str, CheckResult] = {}  # this Python session's results, newest per exercise


def check(exercise_id: str, candidate: Callable[..., Any]) -> CheckResult:
    """Run ``candidate`` on the exercise's test cases and explain the first problem found.

    Never raises on bad learner code. Set the environment variable ``TINYINTERP_STRICT=1`` to make
    a failed check raise ``AssertionError`` (CI does this on the solution notebooks).
    """
    try:
        ex = get_exercise(exercise_id)
    except KeyError as e:
        return _finish(CheckResult(exercise_id, False, 0, 0, str(e.args[0]), kind="unknown"))
    result = _check(ex, candidate)
    _PROGRESS[ex.id] = result
    return _finish(result)


def _finish(result: CheckResult) -> CheckResult:
    if not result.passed and os.environ.get(STRICT_ENV) == "1":
        raise AssertionError(str(result))
    return result


def _check(ex: Exercise, candidate: Any) -> CheckResult:
    def fail(msg: str, kind: str, n_ok: int = 0, n: int = 0) -> CheckResult:
        return CheckResult(ex.id, False, 0, ex.points, msg, n_ok, n, kind)

    if not callable(candidate):
        return fail(f"check() needs your function itself, e.g. check({ex.id!r}, {ex.id}); "
                    f"got {type(candidate).__name__}.", "type")
    problem = signature_problem(ex, candidate)
    if problem:
        return fail(problem, "signature")
    cases = ex.public_cases()
    runs = []
    for case in cases:
        outcome = run_case(candidate, case.kwargs, ex.time_limit_s)
        runs.append((case, outcome))
        if outcome.timed_out or isinstance(outcome.error, NotImplementedError):
            break  # no point running the rest
    verdicts: list[Verdict] = judge_runs(ex, runs)  # each with the other runs as evidence to name a mistake
    n_ok = sum(v.ok for v in verdicts)
    first_bad = next((v for v in verdicts if not v.ok), None)
    if first_bad is None:
        return CheckResult(ex.id, True, ex.points, ex.points,
                           f"All {len(cases)} test cases pass. Well done!", n_ok, len(cases))
    return fail(first_bad.message, first_bad.kind, n_ok, len(cases))


def signature_problem(ex: Exercise, candidate: Callable[..., Any]) -> str | None:
    try:
        sig = inspect.signature(candidate)
    except (TypeError, ValueError):
        return None  # builtins etc.: let the call itself tell
    try:
        sig.bind(**{p: None for p in ex.parameters})
    except TypeError:
        return (f"Your function's signature is {getattr(candidate, '__name__', 'f')}{sig}, but the exercise "
                f"asks for {ex.signature}: keep the parameter names, the check passes inputs by name.")
    return None


@dataclass
class ProgressTable:
    rows: list[tuple[Exercise, CheckResult | None]]

    @property
    def points(self) -> float:
        return sum(r.points for _, r in self.rows if r is not None)

    @property
    def max_points(self) -> float:
        return sum(ex.points for ex, _ in self.rows)

    def __str__(self) -> str:
        lines = [f"{'exercise':28} {'status':12} points"]
        for ex, r in self.rows:
            status = "not checked" if r is None else ("passed" if r.passed else "failed")
            lines.append(f"{ex.id:28} {status:12} {0 if r is None else r.points:g}/{ex.points:g}")
        lines.append(f"{'total':28} {'':12} {self.points:g}/{self.max_points:g}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        body = []
        for ex, r in self.rows:
            status = "—" if r is None else ("✔ passed" if r.passed else "✘ failed")
            body.append(f"<tr><td><code>{ex.id}</code></td><td>{html.escape(ex.title)}</td><td>{status}</td>"
                        f"<td>{0 if r is None else r.points:g} / {ex.points:g}</td></tr>")
        return ("<table><thead><tr><th>exercise</th><th>title</th><th>status</th><th>points</th></tr></thead>"
                f"<tbody>{''.join(body)}</tbody><tfoot><tr><td colspan=3><b>total</b></td>"
                f"<td><b>{self.points:g} / {self.max_points:g}</b></td></tr></tfoot></table>")


def progress(chapter: str | None = None) -> ProgressTable:
    """The exercises of ``chapter`` (default: every chapter you have checked something in)
    with your latest result and points."""
    registry = all_exercises(strict=False)
    chapters = {chapter} if chapter else {registry[i].chapter for i in _PROGRESS if i in registry}
    exercises = registry.values()
    return ProgressTable([(ex, _PROGRESS.get(ex.id)) for ex in exercises if ex.chapter in chapters])


def reset_progress() -> None:
    _PROGRESS.clear()
