"""The seed offset: retrain every model of the book from other seeds, to check its claims.

Every model the book *trains* (the cached book models and the small ones chapters train inline)
takes its seeds, for initialisation and for the order of the training batches, through
:func:`training_seed`. Normally that is the identity. Set the environment variable
``TINYINTERP_SEED_OFFSET`` to an integer ``k`` and every such seed moves by ``k * SEED_STRIDE``:
the book then trains (and caches, under keys of their own) a different set of models, and
``benchmarks/claims.py`` checks that every claim of the book still holds.

Data (the story corpus, the held-out windows, toy ground truth) and exercise test cases never
move: the offset changes what is learnt, not what it is learnt from or tested on.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TypeVar

C = TypeVar("C")

SEED_OFFSET_VAR = "TINYINTERP_SEED_OFFSET"
SEED_STRIDE = 1_000_003  # a shifted seed never equals another unshifted seed the book uses


def seed_offset() -> int:
    """The integer in ``$TINYINTERP_SEED_OFFSET`` (0 when unset or empty).

    Read on every call, so a changed environment takes effect at once. Anything but an integer
    raises ``ValueError`` naming the variable.
    """
    raw = os.environ.get(SEED_OFFSET_VAR, "").strip()
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{SEED_OFFSET_VAR} must be an integer (e.g. 0, 1, 2), got {raw!r}") from None


def training_seed(seed: int) -> int:
    """``seed`` moved by the seed offset: the seed to initialise or train a model with.

    ``training_seed(s) == s`` unless ``$TINYINTERP_SEED_OFFSET`` is set. The result is never
    negative (``torch.Generator.manual_seed`` refuses negatives).
    """
    return (int(seed) + seed_offset() * SEED_STRIDE) % 2**63


def with_training_seed(cfg: C) -> C:
    """A copy of the config dataclass ``cfg`` whose ``seed`` is :func:`training_seed` of its own."""
    return dataclasses.replace(cfg, seed=training_seed(cfg.seed))


__all__ = ["SEED_OFFSET_VAR", "SEED_STRIDE", "seed_offset", "training_seed", "with_training_seed"]
