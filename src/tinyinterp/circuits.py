"""Circuits read straight off the weights (Elhage et al. 2021, "A Mathematical Framework").

Conventions (TransformerLens's row vectors: an activation is a row, ``x @ W``):

- A head's **QK circuit** ``W_QK = W_Q W_K^T`` is ``[d_model, d_model]``; the attention score of a
  query row ``x_q`` on a key row ``x_k`` is ``x_q W_QK x_k^T / sqrt(d_head)`` (biases left out).
  The *full* QK circuit on tokens is ``W_E W_Q W_K^T W_E^T``: ``[d_vocab (query), d_vocab (key)]``.
- A head's **OV circuit** ``W_OV = W_V W_O`` is ``[d_model, d_model]``: an attended-to row ``x``
  is written to the residual stream as ``x W_OV`` (times its attention weight). The full OV circuit
  ``W_E W_V W_O W_U`` is ``[d_vocab (attended-to token), d_vocab (logit it raises)]``.

Every such matrix has rank at most ``d_head``, so we keep it as a product of two thin factors
(:class:`FactoredMatrix`, like TransformerLens's) and compute norms, eigenvalues and diagonals
from the factors, never materialising a ``[d_vocab, d_vocab]`` product unless asked (``.AB``).

**Composition scores.** The paper (column vectors) defines, for an earlier head ``a`` and a later
head ``b``, ``score(W, W_OV^a) = ||W W_OV^a||_F / (||W||_F ||W_OV^a||_F)`` with ``W`` equal to
``W_QK^{bT}`` (Q-), ``W_QK^b`` (K-) or ``W_OV^b`` (V-composition). In row vectors every matrix
is transposed and the product order flips. Head ``a`` writes ``y W_OV^a``; if that reaches head
``b``'s query side, ``b``'s score is ``(y W_OV^a) W_QK^b x_k^T``, so Q-composition measures
``W_OV^a W_QK^b``; on the key side the score is ``x_q W_QK^b (y W_OV^a)^T``, i.e. the product
``W_QK^b W_OV^{aT}``, whose Frobenius norm equals that of ``W_OV^a W_QK^{bT}``; on the value side
``b`` writes ``y W_OV^a W_OV^b``. Hence (exactly TransformerLens's ``all_composition_scores``)::

    Q: composition_score(W_OV^a, W_QK^b)
    K: composition_score(W_OV^a, W_QK^b.T)
    V: composition_score(W_OV^a, W_OV^b)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from .model import HookedTransformer

if TYPE_CHECKING:
    from .data import CharTokenizer

COMPOSITION_KINDS = ("Q", "K", "V")


class FactoredMatrix:
    """The matrix ``A @ B`` (``[..., m, r] @ [..., r, n]``), stored as its two factors.

    Leading dimensions broadcast (e.g. one matrix per head). ``r`` is typically ``d_head``, much
    smaller than ``m`` and ``n``: norms, eigenvalues and the diagonal cost ``O((m + n) r^2)``
    instead of ``O(m n r)``.
    """

    def __init__(self, A: Float[Tensor, "... m r"], B: Float[Tensor, "... r n"]) -> None:
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"inner dimensions differ: A is {tuple(A.shape)}, B is {tuple(B.shape)}")
        self.A, self.B = A, B

    # ----- shape ----------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        batch = torch.broadcast_shapes(self.A.shape[:-2], self.B.shape[:-2])
        return torch.Size([*batch, self.A.shape[-2], self.B.shape[-1]])

    @property
    def mdim(self) -> int:
        """The inner (low-rank) dimension ``r``."""
        return self.A.shape[-1]

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={list(self.shape)}, inner dim={self.mdim})"

    # ----- algebra --------------------------------------------------------------------------
    @property
    def T(self) -> "FactoredMatrix":
        return FactoredMatrix(self.B.transpose(-1, -2), self.A.transpose(-1, -2))

    @property
    def AB(self) -> Float[Tensor, "... m n"]:
        """The full product (materialised: use only when the matrix is small enough to look at)."""
        return self.A @ self.B

    @property
    def BA(self) -> Float[Tensor, "... r r"]:
        """``B @ A``: same non-zero eigenvalues as ``A @ B`` (needs a square ``A @ B``)."""
        return self.B @ self.A

    def __matmul__(self, other: Union[Tensor, "FactoredMatrix"]) -> "FactoredMatrix":
        if isinstance(other, FactoredMatrix):
            return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: Tensor) -> "FactoredMatrix":
        return FactoredMatrix(other @ self.A, self.B)

    def __getitem__(self, idx) -> "FactoredMatrix":
        """Index the leading (batch) dimensions only, e.g. ``qk[layer, head]``."""
        batch = self.shape[:-2]
        A = self.A.expand(*batch, *self.A.shape[-2:])
        B = self.B.expand(*batch, *self.B.shape[-2:])
        return FactoredMatrix(A[idx], B[idx])

    # ----- readouts computed from the factors -------------------------------------------------
    def norm(self) -> Float[Tensor, "..."]:
        """Frobenius norm: ``||AB||_F^2 = trace((A^T A)(B B^T))``, via ``[r, r]`` Gram matrices."""
        gram_a = self.A.transpose(-1, -2) @ self.A
        gram_b = self.B @ self.B.transpose(-1, -2)
        return (gram_a * gram_b).sum((-1, -2)).clamp_min(0).sqrt()

    def diagonal(self) -> Float[Tensor, "... m"]:
        """``(AB)[..., i, i] = sum_r A[i, r] B[r, i]`` without forming ``AB``."""
        n = min(self.A.shape[-2], self.B.shape[-1])
        return torch.einsum("...ir,...ri->...i", self.A[..., :n, :], self.B[..., :, :n])

    def eigenvalues(self) -> Tensor:
        """The ``r`` eigenvalues of ``BA`` (complex): the non-zero eigenvalues of the square ``AB``."""
        if self.A.shape[-2] != self.B.shape[-1]:
            raise ValueError(f"eigenvalues need a square matrix, got shape {list(self.shape)}")
        return torch.linalg.eigvals(self.BA)


Matrix = Union[Tensor, FactoredMatrix]


# ----- per-head circuits -------------------------------------------------------------------------
def qk_matrix(model: HookedTransformer) -> FactoredMatrix:
    """``W_QK = W_Q W_K^T`` for every head: ``[n_layers, n_heads, d_model, d_model]``, factored."""
    return FactoredMatrix(model.W_Q, model.W_K.transpose(-1, -2))


def ov_matrix(model: HookedTransformer) -> FactoredMatrix:
    """``W_OV = W_V W_O`` for every head: ``[n_layers, n_heads, d_model, d_model]``, factored."""
    return FactoredMatrix(model.W_V, model.W_O)


def qk_circuit(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_Q: Float[Tensor, "n_heads d_model d_head"],
    W_K: Float[Tensor, "n_heads d_model d_head"],
) -> FactoredMatrix:
    """Full QK circuit ``W_E W_Q W_K^T W_E^T`` per head, ``[n_heads, d_vocab(query), d_vocab(key)]``,
    as the factors ``(W_E W_Q) @ (W_E W_K)^T``: entry ``[h, i, j]`` is head h's (unscaled) attention
    score of a query token i on a key token j, through the direct path only."""
    return FactoredMatrix(W_E @ W_Q, (W_E @ W_K).transpose(-1, -2))


def ov_circuit(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_V: Float[Tensor, "n_heads d_model d_head"],
    W_O: Float[Tensor, "n_heads d_head d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
) -> FactoredMatrix:
    """Full OV circuit ``W_E W_V W_O W_U`` per head, ``[n_heads, d_vocab(source), d_vocab(logit)]``,
    as the factors ``(W_E W_V) @ (W_O W_U)``: entry ``[h, i, j]`` is how much attending (with weight
    1) to token i raises the logit of token j."""
    return FactoredMatrix(W_E @ W_V, W_O @ W_U)


def qk_circuit_dense(W_E, W_Q, W_K) -> Float[Tensor, "n_heads d_vocab d_vocab"]:
    """:func:`qk_circuit` materialised (for small vocabularies and for the exercise)."""
    return qk_circuit(W_E, W_Q, W_K).AB


def ov_circuit_dense(W_E, W_V, W_O, W_U) -> Float[Tensor, "n_heads d_vocab d_vocab"]:
    """:func:`ov_circuit` materialised (for small vocabularies and for the exercise)."""
    return ov_circuit(W_E, W_V, W_O, W_U).AB


# ----- copying --------------------------------------------------------------------------------
def copying_score(ov: Matrix) -> Float[Tensor, "..."]:
    """Positive-eigenvalue score of a (full) OV circuit: ``sum(lambda) / sum(|lambda|)`` over its
    eigenvalues (Elhage et al. 2021). Near +1: attending to a token raises that same token's logit
    (a copying head); near -1: it lowers it (anti-copying). Accepts a dense ``[..., n, n]`` tensor or
    a :class:`FactoredMatrix` (then only the ``[r, r]`` matrix ``BA`` is decomposed)."""
    eig = ov.eigenvalues() if isinstance(ov, FactoredMatrix) else torch.linalg.eigvals(ov)
    return eig.sum(-1).real / eig.abs().sum(-1).clamp_min(1e-12)  # real: float32 for float32 weights


def factored_copying_score(
    A: Float[Tensor, "... n r"], B: Float[Tensor, "... r n"]
) -> Float[Tensor, "..."]:
    """:func:`copying_score` of the ``[n, n]`` matrix ``A @ B`` given only its factors: the non-zero
    eigenvalues of ``A @ B`` are the eigenvalues of the small ``[r, r]`` matrix ``B @ A``."""
    return copying_score(FactoredMatrix(A, B))


def top1_diagonal_score(ov: Matrix) -> Float[Tensor, "..."]:
    """Fraction of source tokens ``i`` whose largest output logit is ``i`` itself (row-wise argmax
    on the diagonal). Needs the rows, so a factored matrix is materialised one head at a time."""
    dense = ov.AB if isinstance(ov, FactoredMatrix) else ov
    idx = torch.arange(dense.shape[-1], device=dense.device)
    return (dense.argmax(-1) == idx).float().mean(-1)


# ----- composition ---------------------------------------------------------------------------
def _factors(W: Matrix) -> tuple[Tensor, Tensor]:
    if isinstance(W, FactoredMatrix):
        return W.A, W.B
    return W, torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)


def composition_score(W_A: Matrix, W_B: Matrix) -> Float[Tensor, "..."]:
    """``||W_A W_B||_F / (||W_A||_F ||W_B||_F)``, broadcasting over leading dimensions.

    ``W_A``: ``[..., a, b]``, ``W_B``: ``[..., b, c]``, dense tensors or :class:`FactoredMatrix`.
    Between 0 and 1 (Cauchy-Schwarz): near 1 when what ``W_A`` writes lies in what ``W_B`` reads.
    For factored inputs only ``[r, r]``-sized products are formed.
    """
    if isinstance(W_A, Tensor) and isinstance(W_B, Tensor):
        top = torch.linalg.matrix_norm(W_A @ W_B)
        return top / (torch.linalg.matrix_norm(W_A) * torch.linalg.matrix_norm(W_B))
    A = W_A if isinstance(W_A, FactoredMatrix) else FactoredMatrix(*_factors(W_A))
    B = W_B if isinstance(W_B, FactoredMatrix) else FactoredMatrix(*_factors(W_B))
    return (A @ B).norm() / (A.norm() * B.norm())


def composition_scores(
    model: HookedTransformer, kind: str, layer_a: int = 0, layer_b: int = 1
) -> Float[Tensor, "n_heads_a n_heads_b"]:
    """Q-, K- or V-composition score of every head of ``layer_a`` with every head of ``layer_b``.

    Row-vector convention (see the module docstring): with ``W_OV^a = W_V^a W_O^a`` and
    ``W_QK^b = W_Q^b W_K^{bT}``, Q is ``score(W_OV^a, W_QK^b)``, K is ``score(W_OV^a, W_QK^{bT})``
    and V is ``score(W_OV^a, W_OV^b)``. LayerNorm and biases are ignored, as in the paper.
    """
    kind = kind.upper()
    if kind not in COMPOSITION_KINDS:
        raise ValueError(f"kind must be one of {COMPOSITION_KINDS}, got {kind!r}")
    if not layer_a < layer_b:
        raise ValueError(f"the writing layer must come first: got layer_a={layer_a}, layer_b={layer_b}")
    blocks = model.blocks
    ov_a = FactoredMatrix(blocks[layer_a].attn.W_V, blocks[layer_a].attn.W_O)  # [h_a, m, m]
    att_b = blocks[layer_b].attn
    right = {"Q": FactoredMatrix(att_b.W_Q, att_b.W_K.transpose(-1, -2)),
             "K": FactoredMatrix(att_b.W_K, att_b.W_Q.transpose(-1, -2)),  # (W_QK^b)^T
             "V": FactoredMatrix(att_b.W_V, att_b.W_O)}[kind]
    left = FactoredMatrix(ov_a.A[:, None], ov_a.B[:, None])  # [h_a, 1, m, m]
    right = FactoredMatrix(right.A[None], right.B[None])  # [1, h_b, m, m]
    with torch.no_grad():
        return composition_score(left, right)


def composition_baseline(
    shape_a: Sequence[int],
    shape_b: Sequence[int],
    kind: str = "K",
    n_samples: int = 1000,
    seed: int = 0,
) -> float:
    """Mean composition score of random Gaussian matrices shaped like the real ones: the baseline
    that a learned score should be compared with (Elhage et al. 2021).

    Each shape is ``(rows, cols)`` for a dense Gaussian matrix, or ``(rows, rank, cols)`` for a
    product of two Gaussian factors (the shape of ``W_OV = W_V W_O``: ``(d_model, d_head,
    d_model)``), which matches the low rank of a real head. ``shape_b`` is the later head's
    ``W_QK`` (kinds Q, K) or ``W_OV`` (kind V), before the transpose that K-composition applies.
    """
    kind = kind.upper()
    if kind not in COMPOSITION_KINDS:
        raise ValueError(f"kind must be one of {COMPOSITION_KINDS}, got {kind!r}")
    gen = torch.Generator().manual_seed(seed)

    def sample(shape: Sequence[int]) -> FactoredMatrix:
        if len(shape) == 2:
            return FactoredMatrix(torch.randn(n_samples, *shape, generator=gen),
                                  torch.eye(shape[1]).expand(n_samples, -1, -1))
        if len(shape) == 3:
            m, r, n = shape
            return FactoredMatrix(torch.randn(n_samples, m, r, generator=gen),
                                  torch.randn(n_samples, r, n, generator=gen))
        raise ValueError(f"a shape is (rows, cols) or (rows, rank, cols), got {tuple(shape)}")

    a, b = sample(shape_a), sample(shape_b)
    if kind == "K":
        b = b.T
    return float(composition_score(a, b).mean())


def model_composition_baseline(model: HookedTransformer, kind: str = "K", n_samples: int = 1000,
                               seed: int = 0) -> float:
    """:func:`composition_baseline` for this model's heads: both matrices rank-``d_head``
    ``[d_model, d_model]`` products."""
    m, d = model.cfg.d_model, model.cfg.d_head
    return composition_baseline((m, d, m), (m, d, m), kind, n_samples, seed)


__all__ = [
    "FactoredMatrix", "qk_matrix", "ov_matrix", "qk_circuit", "ov_circuit", "qk_circuit_dense",
    "ov_circuit_dense", "copying_score", "factored_copying_score", "top1_diagonal_score", "composition_score",
    "composition_scores", "composition_baseline", "model_composition_baseline", "COMPOSITION_KINDS",
    "one_layer_attn_only_model",
]


# ----- the chapter-5 model -----------------------------------------------------------------------
ATTN_ONLY_1L_MODEL = dict(n_ctx=64, d_model=64, n_layers=1, n_heads=4, d_head=16, attn_only=True,
                          normalization=None, seed=0)
ATTN_ONLY_1L_TRAIN = dict(steps=600, batch_size=32, lr=1e-2, seed=0)
ATTN_ONLY_1L_DATA = {"seq_len": 64, "n_stories": 4000, "seed": 0}


def one_layer_attn_only_model(progress: bool = True) -> tuple[HookedTransformer, "CharTokenizer", list[float]]:
    """Chapter 5's one-layer attention-only model on the built-in corpus: ``(model, tokenizer, losses)``.

    No LayerNorm and no MLP, so the QK and OV circuits above describe it exactly (up to biases and
    positional embeddings). Trained once (about half a minute on two CPU cores) and cached on disk.
    """
    from .checkpoint import cached_model
    from .config import TransformerConfig
    from .data import CharTokenizer, corpus_dataset
    from .seeds import with_training_seed
    from .train import TrainConfig, train

    data, tok = corpus_dataset(**ATTN_ONLY_1L_DATA)
    cfg = TransformerConfig(**{**ATTN_ONLY_1L_MODEL, "d_vocab": tok.vocab_size})

    def build():
        model = HookedTransformer(with_training_seed(cfg))  # seeds move with $TINYINTERP_SEED_OFFSET
        result = train(model, data, TrainConfig(**ATTN_ONLY_1L_TRAIN), progress=progress)
        return model, {"losses": result.losses, "seconds": result.seconds}

    spec = {"model": cfg.to_dict(), "train": ATTN_ONLY_1L_TRAIN, "data": ATTN_ONLY_1L_DATA}
    model, extra = cached_model("attn-only-1l", spec, build)
    return model, tok, list(extra["losses"])
