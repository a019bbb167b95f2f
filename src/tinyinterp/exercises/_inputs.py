"""Seeded random inputs for exercise test cases."""

from __future__ import annotations

import torch
from torch import Tensor


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=gen) * scale


def randint(gen: torch.Generator, high: int, *shape: int) -> Tensor:
    return torch.randint(0, high, shape, generator=gen)


def rand_causal_pattern(gen: torch.Generator, batch: int, heads: int, pos: int) -> Tensor:
    """A valid causal attention pattern: rows sum to 1, zero above the diagonal, not symmetric."""
    scores = torch.randn(batch, heads, pos, pos, generator=gen) * 2
    future = torch.ones(pos, pos, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)
