"""Compare a learner's output with the reference and say, specifically, what is wrong."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..hooks import ActivationCache
from .bound import BoundFunction
from .registry import Case, Exercise, Mistake
from .runner import Outcome, run_case


@dataclass
class Verdict:
    ok: bool
    message: str = ""
    kind: str = "ok"  # ok | not_implemented | exception | timeout | type | shape | dtype | nan | mutated | mistake | values


Run = tuple[Case, Outcome]  # one case and what the candidate did on it


def judge(ex: Exercise, case: Case, outcome: Outcome, expected: Any, others: Sequence[Run] = ()) -> Verdict:
    """Decide whether ``outcome`` is right for ``case``; ``expected`` is the right answer
    (:meth:`Exercise.expected`). ``others``: the same candidate's runs on the exercise's other
    cases, used only to tell apart catalogued mistakes that all fit this case (see :func:`name_mistake`)."""
    where = f"on the test case '{case.name}' ({describe_inputs(case.kwargs)})"
    if outcome.timed_out:
        return Verdict(False, f"Time limit exceeded: your function ran for more than {ex.time_limit_s:g} s "
                              f"{where}. Look for an infinite loop, or a Python loop over every element "
                              f"where one tensor operation would do.", "timeout")
    if isinstance(outcome.error, NotImplementedError):
        return Verdict(False, f"Not implemented yet: replace `raise NotImplementedError()` in "
                              f"`{ex.signature}` with your code.", "not_implemented")
    if outcome.error is not None:
        name = type(outcome.error).__name__
        return Verdict(False, f"Your function raised {name} {where}:\n{outcome.traceback}", "exception")
    got = outcome.output
    v = _compare_structure(ex, got, expected, where)
    if v is not None:
        return v
    mutated = [k for k, before in case.kwargs.items() if not _same(before, outcome.inputs_after[k])]
    if mutated:
        how = ("e.g. `model = copy.deepcopy(model)` before changing its weights"
               if any(isinstance(case.kwargs[m], nn.Module) for m in mutated)
               else "e.g. use `x = x + 1`, not `x += 1`, and avoid `masked_fill_`")
        return Verdict(False, f"Your function modified its input{'s' if len(mutated) > 1 else ''} "
                              f"{', '.join(f'`{m}`' for m in mutated)} in place {where}. Work on a copy "
                              f"({how}).", "mutated")
    if _close(ex, got, expected):
        return Verdict(True)
    mistake = name_mistake(ex, case, got, expected, others)
    if mistake is not None:
        return Verdict(False, f"{mistake.message} (detected {where})", "mistake")
    for g, e, path in _leaves(got, expected):
        bad = ~torch.isfinite(g) & torch.isfinite(e)
        if bad.any():
            idx = tuple(int(i) for i in bad.nonzero()[0])
            return Verdict(False, f"Your output{path} contains {'NaN' if g[idx].isnan() else 'inf'} at index "
                                  f"{idx} where the expected value is {e[idx].item():.4g} {where}. {ex.nan_hint}", "nan")
    for g, e, path in _leaves(got, expected):
        if not _close(ex, g, e):
            diff = (g.double() - e.double()).abs().nan_to_num(float("inf"))
            idx = tuple(int(i) for i in (diff == diff.max()).nonzero()[0])
            return Verdict(False, f"Values off{path}: max abs error {diff.max().item():.3g} at index {idx} "
                                  f"(expected {e[idx].item():.5g}, got {g[idx].item():.5g}) {where}; "
                                  f"tolerance atol={ex.atol:g}, rtol={ex.rtol:g}.", "values")
    return Verdict(False, f"Output differs from the expected one {where}.", "values")


def judge_runs(ex: Exercise, runs: Sequence[Run]) -> list[Verdict]:
    """A verdict for each run, each judged with the others as evidence for naming a mistake."""
    return [judge(ex, case, outcome, ex.expected(case.kwargs), [r for r in runs if r[0] is not case])
            for case, outcome in runs]


def run_and_judge(ex: Exercise, fn, case: Case) -> Verdict:
    """Run ``fn`` on one case and judge it on its own (no other cases to tell mistakes apart)."""
    return judge(ex, case, run_case(fn, case.kwargs, ex.time_limit_s), ex.expected(case.kwargs))


# ----- naming a catalogued mistake -----------------------------------------------------------------
def name_mistake(ex: Exercise, case: Case, got: Any, expected: Any,
                 others: Sequence[Run] = ()) -> Mistake | None:
    """The catalogued mistake that explains ``got`` on ``case``, or None when none does or when it is
    ambiguous.

    A mistake *fits* a case when its output there is wrong and ``got`` matches it. When several
    fit, each must also reproduce what the candidate returned on every other case it returned
    something for (``others``), and a name is given only when exactly one survives. A candidate
    that makes mistake ``m`` agrees with ``m`` everywhere, so ``m`` always survives and no other
    mistake can be named: nobody is told about a catalogued mistake they did not make. A lone
    suspect is checked the same way (an output with few possible values, an accuracy say, can match a
    mistake on one case by chance). When the cases cannot tell the suspects apart, the report stays
    generic.
    """
    suspects = [m for m in ex.mistakes if _fits(ex, m, case, got, expected)]
    for other_case, outcome in others:
        if not suspects:
            break
        if outcome.timed_out or outcome.error is not None:
            continue  # no evidence either way
        suspects = [m for m in suspects if _agrees(ex, m, other_case, outcome.output)]
    return suspects[0] if len(suspects) == 1 else None


_FAILED = object()


_OUTPUTS: dict[tuple[int, int], tuple[Mistake, Case, Any]] = {}  # (id(m), id(case)) -> (m, case, output)


def _mistake_output(m: Mistake, case: Case) -> Any:
    """What mistake ``m`` returns on ``case``, computed once per (mistake, case) pair while both live."""
    hit = _OUTPUTS.get((id(m), id(case)))
    if hit is not None and hit[0] is m and hit[1] is case:
        return hit[2]
    try:
        out = m.fn(**copy.deepcopy(case.kwargs))
    except Exception:
        out = _FAILED
    if len(_OUTPUTS) >= 4096:
        _OUTPUTS.clear()
    _OUTPUTS[(id(m), id(case))] = (m, case, out)
    return out


def _fits(ex: Exercise, m: Mistake, case: Case, got: Any, expected: Any) -> bool:
    wrong = _mistake_output(m, case)
    return wrong is not _FAILED and not _close(ex, wrong, expected) and _close(ex, got, wrong)


def _agrees(ex: Exercise, m: Mistake, case: Case, got: Any) -> bool:
    wrong = _mistake_output(m, case)
    return wrong is not _FAILED and _close(ex, got, wrong)


# ---------------------------------------------------------------------------------------------
def _as_plain_tensor(x: Any) -> Tensor | None:
    """Only genuine tensors count: a subclass or lookalike could override comparisons."""
    if type(x) is Tensor or type(x) is nn.Parameter:
        return x.detach()
    return None


def _compare_structure(ex: Exercise, got: Any, expected: Any, where: str, path: str = "") -> Verdict | None:
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return Verdict(False, f"Expected a tuple of {len(expected)} {_kinds(expected)}, got "
                                  f"{_type_name(got, expected)} {where}.", "type")
        for i, (g, e) in enumerate(zip(got, expected)):
            v = _compare_structure(ex, g, e, where, f"{path}[{i}]")
            if v is not None:
                return v
        return None
    if isinstance(expected, Tensor):
        g = _as_plain_tensor(got)
        if g is None:
            return Verdict(False, f"Expected{_label(path)} a torch.Tensor, got {_type_name(got, expected)} {where}.",
                           "type")
        if g.shape != expected.shape:
            return Verdict(False, f"Wrong shape{_label(path)}: expected {list(expected.shape)}, got "
                                  f"{list(g.shape)} {where}.", "shape")
        if g.dtype != expected.dtype:
            return Verdict(False, f"Wrong dtype{_label(path)}: expected {expected.dtype}, got {g.dtype} {where}.", "dtype")
        return None
    if isinstance(expected, (int, float)):
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return Verdict(False, f"Expected{_label(path)} a number, got {_type_name(got, expected)} {where}.", "type")
        return None
    raise TypeError(f"unsupported reference output type {type(expected)}")


def _leaves(got: Any, expected: Any, path: str = ""):
    if isinstance(expected, tuple):
        for i, (g, e) in enumerate(zip(got, expected)):
            yield from _leaves(g, e, f"{path}[{i}]")
    else:
        yield torch.as_tensor(_as_plain_tensor(got) if isinstance(got, Tensor) else got), torch.as_tensor(expected), path


def _close(ex: Exercise, got: Any, expected: Any) -> bool:
    if isinstance(expected, tuple):
        return isinstance(got, (tuple, list)) and len(got) == len(expected) and all(
            _close(ex, g, e) for g, e in zip(got, expected))
    if isinstance(expected, Tensor):
        g = _as_plain_tensor(got)
        if g is None or g.shape != expected.shape or g.dtype != expected.dtype:
            return False
        if g.dtype == torch.bool or not g.is_floating_point():
            return bool(torch.equal(g, expected))
        return bool(torch.allclose(g, expected, atol=ex.atol, rtol=ex.rtol, equal_nan=True))
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (got, expected)):
        return False
    return abs(float(got) - float(expected)) <= ex.atol + ex.rtol * abs(float(expected))


_DIGEST = "sha256 of the state:"


def comparable(x: Any) -> Any:
    """What the in-place check compares: a tensor as itself; a model (its state_dict), an ActivationCache, a
    BoundFunction (its bound arguments) or a dict as a SHA-256 of its tensors and values; tuples and lists
    item by item; anything else not at all (None). The grading child sends this back for each input, since a
    model cannot travel back over the wire (and learner code could forge either: see the instructor guide)."""
    if isinstance(x, Tensor) or (isinstance(x, str) and x.startswith(_DIGEST)):  # a digest sent back by the child
        return x
    if isinstance(x, (nn.Module, BoundFunction, ActivationCache, dict)):
        h = hashlib.sha256()
        _digest(h, x)
        return _DIGEST + h.hexdigest()
    if isinstance(x, (tuple, list)):
        return type(x)(comparable(v) for v in x)
    return None


def _digest(h: Any, x: Any) -> None:
    if isinstance(x, Tensor):
        t = x.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(x, nn.Module):
        _digest(h, dict(x.state_dict()))
    elif isinstance(x, BoundFunction):
        h.update(x.path.encode())
        _digest(h, x.bound)
    elif isinstance(x, ActivationCache):
        _digest(h, dict(x.items()))
    elif isinstance(x, dict):
        for k in sorted(x, key=str):
            h.update(f"key {k!r}".encode())
            _digest(h, x[k])
    elif isinstance(x, (tuple, list)):
        h.update(f"seq {len(x)}".encode())
        for v in x:
            _digest(h, v)
    else:
        h.update(f"value {type(x).__name__} {x!r}"[:1000].encode())


def _same(before: Any, after: Any) -> bool:
    """Whether an input came back as it went in (compared as :func:`comparable` sees it)."""
    return _same_parts(comparable(before), comparable(after))


def _same_parts(before: Any, after: Any) -> bool:
    if isinstance(before, Tensor):
        return isinstance(after, Tensor) and before.shape == after.shape and bool(torch.equal(before, after))
    if isinstance(before, str):
        return before == after
    if isinstance(before, (tuple, list)):
        return isinstance(after, (tuple, list)) and len(before) == len(after) and all(
            _same_parts(b, a) for b, a in zip(before, after))
    return True


def _label(path: str) -> str:
    return f" for output {path}" if path else ""


def _kinds(expected: tuple) -> str:
    """"tensors", "numbers" or "values": what the elements of an expected tuple are."""
    if all(isinstance(e, Tensor) for e in expected):
        return "tensors"
    if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in expected):
        return "numbers"
    return "values"


def _type_name(x: Any, expected: Any = None) -> str:
    """What ``x`` is, with a hint where the fix is a conversion (a 0-dim tensor or a NumPy scalar for a number)."""
    if x is None:
        return "None (did you forget to `return`?)"
    if isinstance(x, Tensor) and type(x) is not Tensor and type(x) is not nn.Parameter:
        return f"a {type(x).__name__} (a tensor subclass, which is not accepted)"
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        if isinstance(x, Tensor) and x.numel() == 1:
            return f"a {x.ndim}-dim tensor (convert it with `.item()`)"
        if type(x).__module__ == "numpy" and hasattr(x, "item"):
            return f"a NumPy {type(x).__name__} (convert it with `int(...)` or `float(...)`)"
    if isinstance(expected, Tensor) and type(x).__module__ == "numpy":
        return f"a NumPy {type(x).__name__} (convert it with `torch.as_tensor(...)`)"
    name = type(x).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def describe_inputs(kwargs: dict[str, Any]) -> str:
    parts = []
    for k, v in kwargs.items():
        if isinstance(v, Tensor):
            parts.append(f"{k}: {list(v.shape)}")
        else:
            text = repr(v)
            parts.append(f"{k}={text}" if len(text) <= 40 and "\n" not in text else f"{k}: a {type(v).__name__}")
    return ", ".join(parts)
