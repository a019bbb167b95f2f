"""Expected outputs you can trust: the reference evaluated in float64.

A float32 reference carries its own rounding error, and where an exercise's tolerance is tight
that error can be as large as the tolerance itself (a correct ``F.layer_norm`` was once rejected
that way). So the harness evaluates the reference on float64 copies of every floating-point input
(tensors, a model's parameters, an ``ActivationCache``) and rounds the answer once, at the end,
to the dtype the learner's float32 computation gives. ``tests/test_numerics.py`` checks, for every
exercise and case, that the float32 reference agrees with this to a tenth of the tolerance and
that the cases are well-conditioned.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..hooks import ActivationCache
from .bound import BoundFunction

TensorFn = Callable[[Tensor], Tensor]


def map_float_tensors(value: Any, fn: TensorFn) -> Any:
    """A copy of ``value`` with ``fn`` applied to every floating-point tensor in it: plain tensors,
    a module's parameters and buffers, an ``ActivationCache``'s activations, and tensors inside
    tuples, lists and dicts. Everything else (ints, generators, integer tensors) is deep-copied."""
    if isinstance(value, Tensor):
        return fn(value.detach()) if value.is_floating_point() else value.detach().clone()
    if isinstance(value, nn.Module):
        module = copy.deepcopy(value)
        module._apply(lambda t: fn(t) if t.is_floating_point() else t)  # what Module.to uses
        return module
    if isinstance(value, ActivationCache):
        return ActivationCache({k: map_float_tensors(v, fn) for k, v in value.items()})
    if isinstance(value, BoundFunction):
        return value.with_bound(map_float_tensors(value.bound, fn))
    if isinstance(value, (tuple, list)):
        return type(value)(map_float_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_float_tensors(v, fn) for k, v in value.items()}
    return copy.deepcopy(value)


def float_dtypes(value: Any) -> set[torch.dtype]:
    """The floating-point dtypes of the tensors in ``value`` (walked as :func:`map_float_tensors` does)."""
    if isinstance(value, Tensor):
        return {value.dtype} if value.is_floating_point() else set()
    if isinstance(value, nn.Module):
        return {t.dtype for t in (*value.parameters(), *value.buffers()) if t.is_floating_point()}
    if isinstance(value, BoundFunction):
        value = value.bound
    if isinstance(value, (ActivationCache, dict)):
        value = [v for _, v in value.items()]
    if isinstance(value, (tuple, list)):
        return set().union(*(float_dtypes(v) for v in value))
    return set()


def to_float64(value: Any) -> Any:
    """A float64 copy of ``value`` (see :func:`map_float_tensors`)."""
    return map_float_tensors(value, lambda t: t.to(torch.float64))


def narrow_output(output: Any, dtype: torch.dtype) -> Any:
    """``output`` with its float64 tensors rounded to ``dtype`` (tuples walked; numbers, integer and
    boolean tensors, and tensors already in a narrower dtype left alone)."""
    if isinstance(output, tuple):
        return tuple(narrow_output(o, dtype) for o in output)
    if isinstance(output, Tensor) and output.dtype == torch.float64:
        return output.to(dtype)
    return output


def expected_output(reference: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """``reference(**kwargs)`` computed in float64 and rounded to the dtype a float32 computation gives.

    That dtype is the promotion of the inputs' floating-point dtypes (float32 for every exercise):
    a float64 output is rounded to it, once. With no floating-point input, or float64 inputs, the
    reference runs on plain copies and its output is returned unchanged.
    """
    dtypes = float_dtypes(kwargs)
    if not dtypes:
        return reference(**copy.deepcopy(kwargs))
    narrow = dtypes.pop()
    for d in dtypes:
        narrow = torch.promote_types(narrow, d)
    output = reference(**to_float64(kwargs))
    return narrow_output(output, narrow) if narrow != torch.float64 else output
