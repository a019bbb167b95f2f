"""``tinyinterp.uses``: a cell that uses an exercise's result says which exercise to revisit when it fails.

In an exercise notebook, the cells after an exercise use the learner's function::

    with tinyinterp.uses("attention_pattern"):
        demo = attention_pattern(q_demo, k_demo)[0, 0]
        assert torch.allclose(demo.sum(-1), torch.ones(7)), "every row of the pattern sums to 1"

If anything in the block raises, ``uses`` re-raises it as a ``RevisitExercise`` chained to the original
(whose traceback is kept), with a message that names the exercise, says what happened (not written
yet, raised an error, or a claim about its result failed), what to do, and what the last
``tinyinterp.check`` of that exercise in this session said.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from .check import CheckResult, progress
from .registry import Exercise, all_exercises, get_exercise


class RevisitExercise(Exception):
    """A cell that uses an exercise's result failed; the message names the exercise to revisit."""


@contextmanager
def uses(*exercise_ids: str) -> Iterator[None]:
    """Run a block that uses the learner's functions for ``exercise_ids``; name them if it fails."""
    if not exercise_ids:
        raise TypeError('tinyinterp.uses() needs the id of the exercise the cell uses, '
                        'e.g. tinyinterp.uses("attention_pattern")')
    exercises = []
    for exercise_id in exercise_ids:
        try:
            exercises.append(get_exercise(exercise_id))
        except KeyError as e:
            raise ValueError(f"tinyinterp.uses: {e.args[0]}") from None
    try:
        yield
    except RevisitExercise:
        raise  # an inner `uses` already named the exercise
    except Exception as error:
        raise RevisitExercise(revisit_message(exercises, error)) from error


def revisit_message(exercises: list[Exercise], error: Exception) -> str:
    """What happened, to which exercise, what its last check said, and what to do."""
    culprit = _undefined_exercise(error)
    if culprit:
        headline = (f"{_name(culprit)} is not defined yet: run the cell that defines `{culprit.id}` "
                    f"(and the cells above it), then this one.")
    else:
        culprit = _raised_in(error)
        headline = _what_happened(culprit, exercises, error)
    named = [culprit] if culprit else exercises
    results = {ex.id: _latest_result(ex) for ex in named}
    lines = [headline, *(_last_check(ex, results[ex.id], len(named) > 1) for ex in named)]
    to_fix = [ex for ex in named if not (results[ex.id] and results[ex.id].passed)]
    if to_fix:
        calls = " and ".join(f'tinyinterp.check("{ex.id}", {ex.id})' for ex in to_fix)
        cells = "its check cell" if len(to_fix) == 1 else "their check cells"
        lines.append(f"What to do: revisit {_ids(to_fix)} and run {cells}, {calls}, until "
                     f"{'it passes' if len(to_fix) == 1 else 'they pass'}; then run this cell again.")
    else:
        lines.append(f"What to do: run the cells above this one again, in order, then this one; if it still fails, "
                     f"revisit {_ids(named)} and check {'it' if len(named) == 1 else 'them'} again.")
    return "\n".join(lines)


def _name(ex: Exercise) -> str:
    return f"Exercise `{ex.id}` ({ex.title})"


def _names(exercises: list[Exercise]) -> str:
    return _join([_name(ex) for ex in exercises])


def _ids(exercises: list[Exercise]) -> str:
    return _join([f"`{ex.id}`" for ex in exercises])


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _undefined_exercise(error: Exception) -> Exercise | None:
    """The exercise whose function is not defined, if that is what a NameError says."""
    name = getattr(error, "name", None) if isinstance(error, NameError) else None
    return all_exercises(strict=False).get(name) if name else None


def _raised_in(error: Exception) -> Exercise | None:
    """The exercise whose function (the learner's, named after it) raised the error, innermost call
    first. The book's own functions of the same name (in ``tinyinterp``) do not count."""
    registry = all_exercises(strict=False)
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    for frame in reversed(frames):
        module = frame.f_globals.get("__name__", "")
        if frame.f_code.co_name in registry and not module.startswith("tinyinterp"):
            return registry[frame.f_code.co_name]
    return None


def _what_happened(culprit: Exercise | None, exercises: list[Exercise], error: Exception) -> str:
    what = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if culprit and isinstance(error, NotImplementedError):
        return f"{_name(culprit)} is not written yet: this cell uses `{culprit.id}`, which still raises NotImplementedError."
    if culprit:
        return f"{_name(culprit)} raised {what} when this cell used it."
    one = len(exercises) == 1
    uses = f"This cell uses the {'result' if one else 'results'} of {_names(exercises)}"
    if isinstance(error, NotImplementedError):
        return f"{uses}, and {'it is' if one else 'one is'} not written yet: it raised NotImplementedError."
    if isinstance(error, AssertionError):
        return f"{uses}, and a claim about {'it' if one else 'them'} failed: {_claim(error)}"
    if isinstance(error, NameError):
        return (f"{uses}, and a name it needs is not defined ({error}): the cell above that defines it "
                f"has not run, or failed.")
    return f"{uses}, and it raised {what}"


def _claim(error: AssertionError) -> str:
    """The assert's message, or the failing line itself when the assert has none."""
    if str(error):
        return str(error)
    frames = traceback.extract_tb(error.__traceback__)
    line = frames[-1].line if frames else None
    return f"`{line.strip()}`" if line else "an assert without a message"


def _latest_result(ex: Exercise) -> CheckResult | None:
    return dict((row_ex.id, result) for row_ex, result in progress(ex.chapter).rows).get(ex.id)


def _last_check(ex: Exercise, result: CheckResult | None, several: bool) -> str:
    its = f"`{ex.id}`'s" if several else "Its"
    if result is None:
        return f"{its} check has not run in this session yet."
    score = f"{result.points:g}/{result.max_points:g} points"
    if result.passed:
        return (f"{its} last check in this session passed ({score}), so the cause may be elsewhere: a cell "
                f"above that has not run again since you changed something, or a variable you overwrote.")
    first_line = (result.message.strip().splitlines() or ["no message"])[0]
    return f"{its} last check in this session failed ({score}): {first_line}"
