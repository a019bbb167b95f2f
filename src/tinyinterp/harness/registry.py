"""The exercise registry: what each exercise asks, its reference, its test cases and known mistakes."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .precision import expected_output

# Every public module of this package defines exercises; importing it registers them.
EXERCISE_PACKAGE = "tinyinterp.exercises"


@dataclass
class Case:
    """One test input. ``kwargs`` are passed to the learner's function by name."""

    name: str
    kwargs: dict[str, Any]


@dataclass
class Mistake:
    """A known wrong implementation and the message that names it."""

    message: str
    fn: Callable[..., Any]


@dataclass
class Exercise:
    id: str
    chapter: str  # notebook slug, e.g. "02_attention"
    title: str
    signature: str  # what the learner implements, e.g. "attention_pattern(q, k)"
    reference: Callable[..., Any]
    cases: Callable[[torch.Generator, bool], list[Case]]  # (generator, hidden) -> cases
    points: int = 1
    difficulty: int = 1  # 1-5
    importance: int = 3  # 1-5
    minutes: int = 10
    mistakes: list[Mistake] = field(default_factory=list)
    # other functions of this package that compute the answer (say, the library function the reference
    # wraps): while grading they are withheld like the reference, so calling them earns 0 too
    withheld: tuple[Callable[..., Any], ...] = ()
    atol: float = 1e-5
    rtol: float = 1e-4
    time_limit_s: float = 5.0
    # shown when the learner's output has NaN/inf where the reference is finite
    nan_hint: str = ("Large inputs overflow a naive exp(); subtract the maximum first, or use "
                     "torch.softmax / log_softmax.")

    def __post_init__(self) -> None:
        for name in ("difficulty", "importance"):
            if not 1 <= getattr(self, name) <= 5:
                raise ValueError(f"exercise {self.id}: {name} must be in 1..5")
        params = list(inspect.signature(self.reference).parameters)
        declared_names = self.parameters
        if declared_names != params[: len(declared_names)]:
            raise ValueError(f"exercise {self.id}: signature {self.signature} != reference {params}")

    @property
    def parameters(self) -> list[str]:
        """The parameter names in ``signature``, in order."""
        sig = self.signature
        return [p.split("=")[0].strip() for p in sig[sig.index("(") + 1 : sig.rindex(")")].split(",") if p.strip()]

    def expected(self, kwargs: dict[str, Any]) -> Any:
        """The right answer for these inputs: the reference evaluated on float64 copies of the
        floating-point inputs, rounded once to the dtype the float32 computation gives
        (:func:`~tinyinterp.harness.precision.expected_output`). The one place that computes it."""
        return expected_output(self.reference, kwargs)

    def public_cases(self) -> list[Case]:
        return self.cases(torch.Generator().manual_seed(0), False)

    def hidden_cases(self, seed: int = 1) -> list[Case]:
        """Cases the learner never sees: another seed and the hidden shapes."""
        return self.cases(torch.Generator().manual_seed(10_000 + seed), True)

    def describe(self) -> dict:
        return {
            "id": self.id, "chapter": self.chapter, "title": self.title, "signature": self.signature,
            "points": self.points, "difficulty": self.difficulty, "importance": self.importance,
            "minutes": self.minutes, "reference": f"{self.reference.__module__}.{self.reference.__qualname__}",
            "mistakes": [m.message for m in self.mistakes],
            "withheld": [f"{f.__module__}.{f.__qualname__}" for f in self.withheld],
            "tolerance": {"atol": self.atol, "rtol": self.rtol}, "time_limit_s": self.time_limit_s,
        }


_REGISTRY: dict[str, Exercise] = {}


def register(ex: Exercise) -> Exercise:
    if ex.id in _REGISTRY and _REGISTRY[ex.id] is not ex:
        raise ValueError(f"exercise id {ex.id!r} registered twice")
    _REGISTRY[ex.id] = ex
    return ex


def _import_exercise_modules(strict: bool) -> list[str]:
    """Import every exercise module; with ``strict=False`` a module that fails to import is reported
    (returned) instead of raised, so one broken part of the book cannot break the others' checks."""
    import pkgutil

    failures = []
    pkg = importlib.import_module(EXERCISE_PACKAGE)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{EXERCISE_PACKAGE}.{info.name}")
        except Exception as e:
            if strict:
                raise
            failures.append(f"{EXERCISE_PACKAGE}.{info.name}: {type(e).__name__}: {e}")
    return failures


def all_exercises(strict: bool = True) -> dict[str, Exercise]:
    """Every registered exercise, in registration order (chapter by chapter). ``strict=False`` skips
    exercise modules that fail to import instead of raising."""
    _import_exercise_modules(strict=strict)
    return dict(_REGISTRY)


def get_exercise(exercise_id: str) -> Exercise:
    failures = _import_exercise_modules(strict=False)
    if exercise_id not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(exercise_id, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        broken = f" (some exercise modules failed to import: {'; '.join(failures)})" if failures else ""
        raise KeyError(f"no exercise with id {exercise_id!r}.{hint}{broken}")
    return _REGISTRY[exercise_id]
