"""While grading, ``tinyinterp.check`` and ``tinyinterp.progress`` do nothing.

The grading child runs every cell the learner wrote, check cells included, so that a cell which
defines an exercise's function and also calls ``tinyinterp.check(...)`` still defines it. Only the
grader's own judging counts, so the checker's results (saved or live) are irrelevant: before any
learner code runs, :func:`neutralise_checker` replaces ``check`` and ``progress`` everywhere learner
code finds them (``tinyinterp.check``, ``from tinyinterp import check as c``, ``tinyinterp.harness``,
``tinyinterp.harness.check``) and in the cells' namespace.
"""

from __future__ import annotations

import sys
from typing import Any


class CheckSkipped:
    """What ``check``/``progress`` return while grading: truthy, and says so when displayed."""

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "(tinyinterp.check does nothing while grading: the grader runs its own tests)"


def check(*args: Any, **kwargs: Any) -> CheckSkipped:
    return CheckSkipped()


def progress(*args: Any, **kwargs: Any) -> CheckSkipped:
    return CheckSkipped()


def neutralise_checker(namespace: dict) -> None:
    """Make every route to the checker that learner code can take reach the harmless versions above."""
    import tinyinterp
    import tinyinterp.harness
    import tinyinterp.harness.check

    for module in (tinyinterp, tinyinterp.harness, sys.modules["tinyinterp.harness.check"]):
        module.check = check
        module.progress = progress
    namespace["check"], namespace["progress"] = check, progress
