"""A test input that is a function: one of the package's own module-level functions with some keyword
arguments fixed (e.g. "the score of this model", for an exercise that takes ``f``).

Test inputs must be plain data so that the grading child can read them without running code
(:mod:`tinyinterp.grading.inputs`); a :class:`BoundFunction` travels as the function's import path and its
bound arguments (plain data themselves), and is rebuilt by importing that path, which must lie inside
``tinyinterp`` (never learner code). The float64 reference sees float64 copies of the bound arguments
(:mod:`tinyinterp.harness.precision`).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

PACKAGE = "tinyinterp."
# The grading code: while a chapter is graded, a learner's function that reaches into these modules earns 0
# ("copying is not solving"), so a function handed to the learner must live in the library instead.
GRADING_MODULES = ("tinyinterp.exercises", "tinyinterp.harness", "tinyinterp.grading")


class BoundFunction:
    """``func`` with the keyword arguments ``bound`` fixed: calling it calls ``func(*args, **bound, **kwargs)``.

    ``func`` must be a module-level function of the ``tinyinterp`` package (its import path is what travels)."""

    def __init__(self, func: Callable[..., Any], **bound: Any) -> None:
        path = function_path(func)
        if resolve(path) is not func:
            raise ValueError(f"{path} does not name the function it was built from")
        self.func, self.bound = func, bound

    @property
    def path(self) -> str:
        return function_path(self.func)

    def with_bound(self, bound: dict[str, Any]) -> "BoundFunction":
        return BoundFunction(self.func, **bound)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **self.bound, **kwargs)

    def __repr__(self) -> str:
        return f"{self.func.__name__}(..., {', '.join(self.bound)} bound)"


def function_path(func: Callable[..., Any]) -> str:
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", "")
    if not isinstance(module, str) or not module.startswith(PACKAGE) or "." in qualname or "<" in qualname:
        raise ValueError(f"a BoundFunction takes a module-level function of the tinyinterp package, got {func!r}")
    if module.startswith(GRADING_MODULES):
        raise ValueError(f"{module}.{qualname} is grading code, which a learner's function may not call while "
                         f"graded: bind a function of the library (e.g. tinyinterp.posthoc) instead")
    return f"{module}:{qualname}"


def resolve(path: str) -> Callable[..., Any]:
    """The function at ``"module:qualname"``, which must be inside ``tinyinterp``."""
    module, _, qualname = path.partition(":")
    if not module.startswith(PACKAGE) or module.startswith(GRADING_MODULES) or not qualname.isidentifier():
        raise ValueError(f"not a tinyinterp function path: {path!r}")
    func = getattr(importlib.import_module(module), qualname)
    if not callable(func):
        raise ValueError(f"{path} is not callable")
    return func
