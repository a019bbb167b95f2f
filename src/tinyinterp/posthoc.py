"""Post-hoc attributions (Part V groundwork): integrated gradients and exact Shapley values.

Two functions with pinned signatures that outside tools may rely on:

- :func:`integrated_gradients` (Sundararajan et al. 2017): the path integral of the gradient from a
  baseline to the input, times the input's difference from the baseline. Attributions sum to
  ``f(x) - f(baseline)`` up to the integration error (*completeness*).
- :func:`shapley_values` (Shapley 1953; Lundberg & Lee 2017): each player's average marginal
  contribution over every coalition, by enumeration of all ``2 ** n_players`` coalitions.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

MAX_PLAYERS = 20  # exact enumeration evaluates value_fn 2 ** n_players times


def integrated_gradients(
    f: Callable[[Tensor], Tensor], x: Float[Tensor, "batch *shape"], baseline: Float[Tensor, "batch *shape"],
    steps: int = 64,
) -> Float[Tensor, "batch *shape"]:
    """Integrated gradients of ``f`` at each row of ``x`` against the same row of ``baseline``.

    ``f`` maps a batch ``[batch, *shape]`` to ``[batch]`` (one scalar output per input); ``x`` and
    ``baseline`` are ``[batch, *shape]`` (one input: batch 1). The integral over ``alpha`` in [0, 1] of
    ``grad f(baseline + alpha (x - baseline))`` is taken with the midpoint rule on ``steps`` points, all
    ``steps * batch`` points evaluated as one batch; returns ``(x - baseline) * mean gradient``, shaped
    like ``x``, detached. Exact for ``f`` affine; the completeness gap ``attributions.sum(row) -
    (f(x) - f(baseline))`` shrinks as ``1 / steps ** 2`` for smooth ``f``."""
    if not callable(f):
        raise TypeError(f"f must be callable (a batch [batch, *shape] -> [batch]), got {type(f).__name__}")
    for name, t in (("x", x), ("baseline", baseline)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got "
                            f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
    if x.ndim < 1 or len(x) == 0:
        raise ValueError(f"x must be [batch, *shape] with batch >= 1, got shape {tuple(x.shape)}")
    if x.shape != baseline.shape:
        raise ValueError(f"baseline must have x's shape {tuple(x.shape)}, got {tuple(baseline.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    x, baseline = x.detach(), baseline.detach().to(x.dtype)
    alphas = (torch.arange(steps, dtype=x.dtype) + 0.5) / steps
    path = (baseline + alphas.view(-1, *[1] * x.ndim) * (x - baseline)).flatten(0, 1)  # [steps * batch, *shape]
    with torch.enable_grad():
        path.requires_grad_(True)
        out = f(path)
        if not isinstance(out, Tensor) or out.shape != (len(path),):
            raise ValueError(f"f must map [batch, *shape] to [batch]: on a batch of {len(path)} it returned "
                             f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
        if not out.requires_grad:  # f does not depend on its input
            return torch.zeros_like(x)
        (grads,) = torch.autograd.grad(out.sum(), path, allow_unused=True)
    if grads is None:
        return torch.zeros_like(x)
    return ((x - baseline) * grads.view(steps, *x.shape).mean(0)).detach()


def _coalitions(n_players: int) -> Bool[Tensor, "2**n n"]:
    codes = torch.arange(2 ** n_players).unsqueeze(1)
    return (codes >> torch.arange(n_players)) & 1 == 1


def shapley_values(value_fn: Callable[[Tensor], float], n_players: int) -> Float[Tensor, "n_players"]:
    """Exact Shapley values: ``phi_i = sum over S not containing i of |S|! (n - |S| - 1)! / n!
    (v(S + i) - v(S))``, with ``v = value_fn`` called once on each of the ``2 ** n_players`` coalitions,
    each a bool mask ``[n_players]`` (True = the player is in). Returns float64 ``[n_players]``; they sum
    to ``v(all) - v(none)`` (efficiency)."""
    if not callable(value_fn):
        raise TypeError(f"value_fn must be callable (a bool mask [n_players] -> float), got {type(value_fn).__name__}")
    if isinstance(n_players, bool) or not isinstance(n_players, int) or not 1 <= n_players <= MAX_PLAYERS:
        raise ValueError(f"n_players must be an int in 1..{MAX_PLAYERS} (exact enumeration calls value_fn "
                         f"2 ** n_players times), got {n_players!r}")
    masks = _coalitions(n_players)
    values = torch.empty(len(masks), dtype=torch.float64)
    for code, mask in enumerate(masks):
        v = value_fn(mask.clone())
        v = float(v.item() if isinstance(v, Tensor) and v.numel() == 1 else v)
        if not math.isfinite(v):
            raise ValueError(f"value_fn returned {v} for the coalition {mask.nonzero().flatten().tolist()}")
        values[code] = v
    size = masks.sum(1)  # |S| for each coalition
    n = n_players
    weight = torch.tensor([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) if s < n else 0.0
                           for s in range(n + 1)], dtype=torch.float64)
    phi = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        without = ~masks[:, i]  # coalitions S that leave i out; S + i has code | (1 << i)
        codes = torch.arange(len(masks))[without]
        phi[i] = (weight[size[without]] * (values[codes | (1 << i)] - values[codes])).sum()
    return phi


__all__ = ["integrated_gradients", "shapley_values", "MAX_PLAYERS"]
