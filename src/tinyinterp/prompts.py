"""Clean and corrupted prompt pairs for patching (Part IV), each with the tokens its metric compares.

A :class:`PatchingTask` holds two token tensors of the same shape that differ in one controlled way,
and the logit difference that measures the behaviour: ``logit[answer] - logit[wrong]`` at
``positions`` (the last position when ``positions`` is ``None``).

- :func:`induction_task`: ``[BOS] r r`` against ``[BOS] r' r`` (the first copy resampled, no token
  shared with ``r``). On the second copy, induction predicts the next token of ``r`` on the clean
  run and nothing on the corrupted one; ``wrong`` is the token the corrupted first copy suggests.
- :func:`object_completion_task`: a story in the Part I corpus's words where an object was named,
  and a later sentence starts to name it again: "... Ada found a small kettle. Then Ada gave the k"
  → ``e`` (kettle), against the same story with another object of the same first letter ("a broken
  kite" → ``i``), adjectives chosen so both prompts have the same length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from .data import ADJECTIVES, NAMES, PLACES, CharTokenizer
from .patching import logit_diff


_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _shape(x) -> str:
    return f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


@dataclass
class PatchingTask:
    """Checked on creation: ``clean`` and ``corrupted`` are integer tensors ``[batch, pos]`` of one shape;
    ``answer`` and ``wrong`` are integer tensors ``[batch]`` when ``positions`` is ``None``, else
    ``[batch, n_pos]`` with ``positions`` ``n_pos`` positions below ``pos`` (stored as int64 tensors)."""

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answer: Int[Tensor, "batch *n_pos"]  # the token the clean run should predict
    wrong: Int[Tensor, "batch *n_pos"]  # the token the corrupted run would predict
    positions: Int[Tensor, "n_pos"] | None = None  # None: the last position only

    def __post_init__(self) -> None:
        for name in ("clean", "corrupted"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.ndim != 2 or t.dtype not in _INT_DTYPES or 0 in t.shape:
                raise ValueError(f"{name} must be a non-empty integer tensor [batch, pos], got {_shape(t)}")
        if self.clean.shape != self.corrupted.shape:
            raise ValueError(f"clean and corrupted must have the same shape (patching swaps activations position "
                             f"by position), got {tuple(self.clean.shape)} and {tuple(self.corrupted.shape)}")
        batch, pos = self.clean.shape
        if self.positions is not None:
            try:
                positions = torch.as_tensor(self.positions)
            except (TypeError, ValueError, RuntimeError):
                positions = None
            if (positions is None or positions.ndim != 1 or positions.dtype not in _INT_DTYPES or not len(positions)
                    or not ((-pos <= positions) & (positions < pos)).all()):
                raise ValueError(f"positions must be None (the last position) or a non-empty 1-D list of integer "
                                 f"positions in -{pos}..{pos - 1}, got {self.positions!r}")
            self.positions = positions.long()
        want = (batch,) if self.positions is None else (batch, len(self.positions))
        for name in ("answer", "wrong"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.dtype not in _INT_DTYPES or tuple(t.shape) != want:
                shape = "[batch]" if self.positions is None else "[batch, n_pos] (one token per position)"
                raise ValueError(f"{name} must be an integer tensor {shape} = {want}, got {_shape(t)}")
            setattr(self, name, t.long())

    def metric(self, logits) -> Tensor:
        """Mean logit difference ``answer - wrong`` (see :func:`tinyinterp.patching.logit_diff`)."""
        return logit_diff(logits, self.answer, self.wrong, self.positions)


def _check_batch(batch) -> None:
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")


def _check_int(name: str, x) -> None:
    if not isinstance(x, int) or isinstance(x, bool):
        raise ValueError(f"{name} must be an int, got {x!r}")


def induction_task(batch: int, seq_len: int, d_vocab: int, seed: int = 0) -> PatchingTask:
    """``[BOS] r r`` (clean) and ``[BOS] r' r`` (corrupted), ``r`` and ``r'`` disjoint draws of
    ``seq_len`` distinct non-BOS tokens. Scored at the second-copy positions ``seq_len + 1 ..
    2 seq_len - 1``, each of which has a next token in ``r`` to predict."""
    _check_batch(batch)
    for name, x in (("seq_len", seq_len), ("d_vocab", d_vocab), ("seed", seed)):
        _check_int(name, x)
    if not (2 <= seq_len and 2 * seq_len <= d_vocab - 1):
        raise ValueError(f"need 2 <= seq_len and 2 * seq_len <= d_vocab - 1, got seq_len={seq_len}, d_vocab={d_vocab}")
    perm = torch.rand(batch, d_vocab - 1, generator=torch.Generator().manual_seed(seed)).argsort(-1) + 1
    r, r_other = perm[:, :seq_len], perm[:, seq_len : 2 * seq_len]
    bos = torch.zeros(batch, 1, dtype=torch.long)
    clean, corrupted = torch.cat([bos, r, r], 1), torch.cat([bos, r_other, r], 1)
    pos = torch.arange(seq_len + 1, 2 * seq_len)
    return PatchingTask(clean, corrupted, clean[:, pos + 1], corrupted[:, pos - seq_len + 1], pos)


# objects of the corpus that share a first letter but not a second: (object, its stand-in)
OBJECT_PAIRS = [("kettle", "kite"), ("kite", "kettle"), ("key", "kite"), ("kite", "key"),
                ("compass", "clock"), ("clock", "compass"), ("basket", "book"), ("book", "basket")]
# "a {adj}" even before a vowel ("a old map"): the corpus the Part I model learned from says it that way
STORY = "{a} and {b} went to {place}. {a} found a {adj} {obj}. Then {a} gave the {initial}"


def object_completion_task(batch: int, seed: int = 0, tokenizer: CharTokenizer | None = None) -> PatchingTask:
    """``batch`` stories (template :data:`STORY`), each ending on an object's first letter; the
    corrupted story names another object with that first letter (:data:`OBJECT_PAIRS`) and an
    adjective of the length that keeps every position aligned. All ``batch`` stories have the length
    of the first one drawn (others are drawn again), so no padding is needed. ``answer``/``wrong``: the
    second letter of the clean/corrupted object, at the last position."""
    _check_batch(batch)
    _check_int("seed", seed)
    tok = tokenizer or CharTokenizer.default()
    rng = random.Random(seed)
    clean, corrupted, answer, wrong = [], [], [], []
    while len(clean) < batch:
        a, b = rng.sample(NAMES, 2)
        place = rng.choice(PLACES)
        obj, other = rng.choice(OBJECT_PAIRS)
        adj = rng.choice(ADJECTIVES)
        fits = [x for x in ADJECTIVES if len(x) + len(other) == len(adj) + len(obj)]
        if not fits:
            continue
        text = STORY.format(a=a, b=b, place=place, adj=adj, obj=obj, initial=obj[0])
        if clean and len(text) + 1 != len(clean[0]):
            continue
        other_text = STORY.format(a=a, b=b, place=place, adj=rng.choice(fits), obj=other, initial=obj[0])
        clean.append(tok.encode(text, prepend_bos=True))
        corrupted.append(tok.encode(other_text, prepend_bos=True))
        answer.append(tok.stoi[obj[1]])
        wrong.append(tok.stoi[other[1]])
    return PatchingTask(torch.stack(clean), torch.stack(corrupted), torch.tensor(answer), torch.tensor(wrong))


__all__ = ["PatchingTask", "induction_task", "object_completion_task", "OBJECT_PAIRS", "STORY"]
