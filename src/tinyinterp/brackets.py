"""Bracket strings whose nesting depth the data generator knows exactly, and a tiny language model
trained on them (chapter 11: probes and steering).

Tokens: ``0`` is BOS, ``1`` is ``(`` and ``2`` is ``)``. A sequence is BOS followed by ``seq_len``
brackets written by a random walk on the depth ``d`` (the number of open brackets not yet closed),
kept between 0 and ``max_depth``: at depth ``d`` the next bracket is ``)`` with probability
``d / max_depth`` and ``(`` otherwise. So ``)`` is impossible at depth 0 and certain at
``max_depth``, and every depth has its own next-token distribution: a model that predicts well
*must* know the depth at every position. (The walk is the Ehrenfest urn; in the long run the depth
is binomial, ``Binomial(max_depth, 1/2)``.)

The depth after each token, :func:`bracket_depth`, is the latent variable chapter 11 probes for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .checkpoint import cached_model, source_hash
from .config import TransformerConfig
from .model import HookedTransformer
from .seeds import with_training_seed
from .train import TrainConfig, train

BOS_ID, OPEN, CLOSE = 0, 1, 2
SYMBOLS = ("BOS", "(", ")")


# ----- input checks -----------------------------------------------------------------------------------
def _check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; a bool or a float (2.5, or even 2.0) is refused, not rounded."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_tokens(tokens) -> None:
    if not isinstance(tokens, Tensor) or tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be an integer tensor, got "
                        f"{tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__}")
    if tokens.numel() and not (int(tokens.min()) >= 0 and int(tokens.max()) < len(SYMBOLS)):
        raise ValueError(f"bracket tokens are 0 (BOS), 1 '(' and 2 ')'; got values from {int(tokens.min())} "
                         f"to {int(tokens.max())}")


# ----- data ---------------------------------------------------------------------------------------
def generate_brackets(batch: int, seq_len: int, max_depth: int, seed: int = 0) -> Int[Tensor, "batch pos"]:
    """``batch`` sequences of BOS + ``seq_len`` brackets, ``[batch, seq_len + 1]`` (see the module doc).

    The walk uses ``u = torch.rand(batch, seq_len, generator=torch.Generator().manual_seed(seed))``:
    at step ``t``, the bracket is ``)`` if ``u[:, t] < depth / max_depth``, else ``(``.
    """
    for name, value in (("batch", batch), ("seq_len", seq_len), ("max_depth", max_depth)):
        _check_int(name, value, 1)
    _check_int("seed", seed, -(2**63))
    u = torch.rand(batch, seq_len, generator=torch.Generator().manual_seed(seed))
    tokens = torch.full((batch, seq_len + 1), BOS_ID, dtype=torch.long)
    depth = torch.zeros(batch, dtype=torch.long)
    for t in range(seq_len):
        close = u[:, t] < depth / max_depth
        tokens[:, t + 1] = torch.where(close, CLOSE, OPEN)
        depth = depth + torch.where(close, -1, 1)
    return tokens


def bracket_depth(tokens: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """The depth *after* each token: ``+1`` per ``(``, ``-1`` per ``)``, summed from the start (BOS: 0)."""
    _check_tokens(tokens)
    step = (tokens == OPEN).long() - (tokens == CLOSE).long()
    return step.cumsum(dim=-1)


def ideal_p_close(depth: Int[Tensor, "..."], max_depth: int) -> Float[Tensor, "..."]:
    """The true probability that the next bracket is ``)``, given the depth: ``depth / max_depth``
    (float32). Depths must lie in ``0 .. max_depth``: outside it the walk never goes, and no probability fits."""
    _check_int("max_depth", max_depth, 1)
    if not isinstance(depth, Tensor) or depth.is_floating_point() or depth.is_complex() or depth.dtype == torch.bool:
        raise TypeError(f"depth must be an integer tensor, got "
                        f"{depth.dtype if isinstance(depth, Tensor) else type(depth).__name__}")
    if depth.numel() and not (int(depth.min()) >= 0 and int(depth.max()) <= max_depth):
        raise ValueError(f"depths must lie in 0 .. max_depth = {max_depth}, got values from {int(depth.min())} "
                         f"to {int(depth.max())}")
    return depth.float() / max_depth


def to_string(tokens: Int[Tensor, "pos"]) -> str:
    """``"(()(..."``: the brackets of one sequence (BOS left out)."""
    _check_tokens(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"to_string takes one sequence [pos], got shape {tuple(tokens.shape)}")
    return "".join(SYMBOLS[t] for t in tokens.tolist() if t != BOS_ID)


def p_close(logits: Float[Tensor, "... d_vocab"]) -> Float[Tensor, "..."]:
    """The model's probability of ``)`` next, from its logits (over all three tokens)."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got "
                        f"{logits.dtype if isinstance(logits, Tensor) else type(logits).__name__}")
    if logits.ndim == 0 or logits.shape[-1] != len(SYMBOLS):
        raise ValueError(f"logits must end in the bracket vocabulary, [..., {len(SYMBOLS)}], got {tuple(logits.shape)}")
    return logits.softmax(dim=-1)[..., CLOSE]


# ----- the model ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BracketData:
    n_sequences: int = 4000
    seq_len: int = 32
    max_depth: int = 4
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


BRACKET_DATA = BracketData()
BRACKET_MODEL = TransformerConfig(d_vocab=3, n_ctx=BRACKET_DATA.seq_len + 1, d_model=32, n_layers=2, n_heads=2,
                                  d_head=16, d_mlp=64, seed=0)
BRACKET_TRAIN = TrainConfig(steps=400, batch_size=64, lr=1e-2, seed=0)


def train_bracket_model(progress: bool = True) -> tuple[HookedTransformer, dict]:
    """Train :data:`BRACKET_MODEL` on :data:`BRACKET_DATA`; returns the model and its loss history."""
    d = BRACKET_DATA
    data = generate_brackets(d.n_sequences, d.seq_len, d.max_depth, seed=d.seed)
    model = HookedTransformer(with_training_seed(BRACKET_MODEL))  # seeds move with $TINYINTERP_SEED_OFFSET
    result = train(model, data, BRACKET_TRAIN, progress=progress)
    return model, {"losses": result.losses, "seconds": result.seconds}


def bracket_model(progress: bool = True) -> tuple[HookedTransformer, dict]:
    """Chapter 11's model, cached on disk (trained in seconds on first use): ``(model, history)``."""
    spec = {"model": BRACKET_MODEL.to_dict(), "data": BRACKET_DATA.to_dict(), "train": BRACKET_TRAIN.to_dict(),
            "source": source_hash("brackets")[:12]}
    return cached_model("brackets", spec, lambda: train_bracket_model(progress=progress))
