"""Feedback that names the learner's mistake, and only theirs.

For every exercise and every catalogued mistake ``m_j`` used as the candidate:
- ``check`` rejects it, names it, and names no other catalogued mistake ``m_i``;
- on hidden cases over several seeds the judge (what the grader uses) never names another ``m_i``.
Plus the rule itself on a made-up exercise: several mistakes that fit a case are told apart by the
candidate's other outputs, and the message stays generic while they cannot be.
"""

from __future__ import annotations

import pytest
import torch

from tinyinterp import check
from tinyinterp.harness import Case, Exercise, Mistake, all_exercises
from tinyinterp.harness.judge import judge, judge_runs
from tinyinterp.harness.runner import run_case

EXERCISES = all_exercises()
MISTAKES = [(ex_id, j) for ex_id, ex in EXERCISES.items() for j in range(len(ex.mistakes))]
HIDDEN_SEEDS = (1, 2, 3)


@pytest.fixture(autouse=True)
def _not_strict(monkeypatch):
    monkeypatch.delenv("TINYINTERP_STRICT", raising=False)


def _others_named(ex, j: int, message: str) -> list[int]:
    return [i for i, m in enumerate(ex.mistakes) if i != j and m.message in message]


@pytest.mark.parametrize("ex_id,j", MISTAKES)
def test_check_names_the_mistake_made_and_no_other(ex_id, j):
    ex = EXERCISES[ex_id]
    r = check(ex_id, ex.mistakes[j].fn)
    assert not r.passed and r.points == 0
    assert r.kind == "mistake" and ex.mistakes[j].message in r.message, r.message
    assert not _others_named(ex, j, r.message), r.message


@pytest.mark.parametrize("ex_id,j", MISTAKES)
def test_judge_names_the_mistake_made_and_no_other_on_hidden_cases(ex_id, j):
    """Every case judged with the others as evidence never names another mistake; the first failing
    case, judged on its own (as a grader that judges case by case does), names this one."""
    ex = EXERCISES[ex_id]
    mistake = ex.mistakes[j]
    for seed in HIDDEN_SEEDS:
        runs = [(case, run_case(mistake.fn, case.kwargs, ex.time_limit_s)) for case in ex.hidden_cases(seed)]
        verdicts = judge_runs(ex, runs)
        for (case, _), verdict in zip(runs, verdicts):
            wrong = _others_named(ex, j, verdict.message)
            assert not wrong, f"seed {seed}, '{case.name}': mistake {j} was told it made mistake {wrong}"
        first = next((k for k, v in enumerate(verdicts) if not v.ok), None)
        assert first is not None, f"seed {seed}: the mistake passes every hidden case"
        case, outcome = runs[first]
        alone = judge(ex, case, outcome, ex.expected(case.kwargs))
        assert mistake.message in alone.message and mistake.message in verdicts[first].message, alone.message


@pytest.mark.parametrize("ex_id", list(EXERCISES))
def test_mistake_messages_are_distinct(ex_id):
    others = [m.message for other_id, ex in EXERCISES.items() if other_id != ex_id for m in ex.mistakes]
    mine = [m.message for m in EXERCISES[ex_id].mistakes]
    assert len(mine) == len(set(mine)) and not set(mine) & set(others)
    assert not any(a in b for a in mine for b in [*mine, *others] if a is not b), "a message inside another"


# ----- the naming rule on a made-up exercise -----------------------------------------------------
def _toy_exercise() -> Exercise:
    """Answer x + 1. Mistake A returns 2x, mistake B x * x: both give 4 at x = 2, not at x = 3."""
    return Exercise(
        id="toy", chapter="toy", title="toy", signature="f(x)", reference=lambda x: x + 1,
        cases=lambda gen, hidden: [Case(f"x = {v}", {"x": torch.tensor([v])}) for v in (2.0, 3.0)],
        mistakes=[Mistake("Mistake A: you doubled x.", lambda x: 2 * x),
                  Mistake("Mistake B: you squared x.", lambda x: x * x)])


def _runs(ex, fn):
    return [(case, run_case(fn, case.kwargs, 5.0)) for case in ex.public_cases()]


def test_several_fitting_mistakes_are_told_apart_by_the_other_cases():
    ex = _toy_exercise()
    for fn, named, not_named in ((lambda x: 2 * x, "Mistake A", "Mistake B"),
                                 (lambda x: x * x, "Mistake B", "Mistake A")):
        verdicts = judge_runs(ex, _runs(ex, fn))
        assert verdicts[0].kind == "mistake" and named in verdicts[0].message
        assert not_named not in verdicts[0].message


def test_ambiguous_mistakes_fall_back_to_the_generic_message():
    ex = _toy_exercise()
    case, outcome = _runs(ex, lambda x: 2 * x)[0]
    alone = judge(ex, case, outcome, ex.expected(case.kwargs))  # both fit x = 2 and nothing else is known
    assert alone.kind == "values" and "Mistake" not in alone.message
    # a candidate that is 2x at x = 2 but neither 2x nor x*x at x = 3: neither mistake survives
    odd = judge_runs(ex, _runs(ex, lambda x: torch.where(x == 2, 2 * x, -x)))
    assert odd[0].kind == "values" and "Mistake" not in odd[0].message
    # a candidate the other cases cannot separate (it crashed on them): no name either
    crashed = [(c, run_case(lambda x: 2 * x if x.item() == 2 else 1 / 0, c.kwargs, 5.0)) for c in ex.public_cases()]
    assert "Mistake" not in judge_runs(ex, crashed)[0].message

