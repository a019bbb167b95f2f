"""Do explanations explain? Measures of an attribution's faithfulness (Part V, chapter 13).

- **Deletion and insertion curves** (Petsiuk et al. 2018): remove the inputs in the order an attribution
  ranks them (most important first) and record the model's output after each step; or start from an empty
  input and put them back in that order. A faithful ranking makes the deletion curve fall fast and the
  insertion curve rise fast; :func:`curve_area` summarises a curve by its area.
- **Rank agreement**: :func:`spearman` (Spearman's rank correlation, ties given their average rank) and
  :func:`abs_rank_correlation` (of the attributions' magnitudes, as Adebayo et al. 2018 compare maps);
  :func:`top_k_precision`, how many of the k most attributed positions are truly relevant.
- **The model-parameter randomisation test** (Adebayo et al. 2018): :func:`randomise_parameters` re-initialises
  a model's parameters from the top (unembedding) down, stage by stage (:func:`randomisation_stages`), in a copy.
  An explanation that stays the same while the model's weights are destroyed does not explain the model.
  :func:`reinitialise` re-initialises any named parameters, e.g. an attention layer's OV weights alone
  (:func:`attention_ov_names`), which changes what the layer writes and leaves its pattern as it was.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .config import TransformerConfig
from .model import HookedTransformer


# ----- deletion and insertion ----------------------------------------------------------------------------
def _check_curve_inputs(f, tokens, attributions, pad_id) -> None:
    if not callable(f):
        raise TypeError(f"f must be callable (tokens [batch, pos] -> [batch]), got {type(f).__name__}")
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise TypeError("tokens must be an integer tensor [batch, pos]")
    if not isinstance(attributions, Tensor) or not attributions.is_floating_point():
        raise TypeError("attributions must be a floating-point tensor [batch, pos]")
    if attributions.shape != tokens.shape:
        raise ValueError(f"attributions must have the tokens' shape {tuple(tokens.shape)}, got {tuple(attributions.shape)}")
    if attributions.isnan().any():
        raise ValueError("attributions contain NaN: they cannot rank the positions")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"pad_id must be a non-negative int (the token that replaces a removed one), got {pad_id!r}")


def deletion_order(attributions: Float[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """The positions of each row from the highest attribution to the lowest; ties keep their order (the
    earlier position first)."""
    return torch.sort(attributions, dim=-1, descending=True, stable=True).indices


def _perturbation_curve(f, tokens, attributions, pad_id, keep_top: bool) -> Float[Tensor, "batch steps"]:
    _check_curve_inputs(f, tokens, attributions, pad_id)
    batch, n = tokens.shape
    rank = torch.empty_like(tokens)
    rank.scatter_(1, deletion_order(attributions), torch.arange(n).expand(batch, n))  # rank[b, p]: p's place
    steps = torch.arange(n + 1).view(-1, 1, 1)
    top = rank.unsqueeze(0) < steps  # [n + 1, batch, pos]: the positions among the first `step`
    absent = top if not keep_top else ~top
    perturbed = torch.where(absent, torch.full_like(tokens, pad_id), tokens.unsqueeze(0)).reshape(-1, n)
    with torch.no_grad():
        out = f(perturbed)
    if not isinstance(out, Tensor) or out.shape != (len(perturbed),):
        raise ValueError(f"f must map tokens [batch, pos] to [batch]; on {len(perturbed)} rows it returned "
                         f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
    return out.view(n + 1, batch).T


def deletion_curve(f: Callable[[Tensor], Tensor], tokens: Int[Tensor, "batch pos"],
                   attributions: Float[Tensor, "batch pos"], pad_id: int) -> Float[Tensor, "batch pos_plus_1"]:
    """``f`` of each row after deleting its positions one by one, highest attribution first.

    ``f`` maps tokens ``[batch, pos]`` to one number per row (a score, a probability). Column ``j`` of the
    result is ``f`` of the row with its ``j`` most attributed positions replaced by ``pad_id`` (column 0:
    the row as it is; column ``pos``: every position replaced). Ties in the attributions: the earlier
    position goes first. A position that should never be deleted early gets attribution ``-inf``."""
    return _perturbation_curve(f, tokens, attributions, pad_id, keep_top=False)


def insertion_curve(f: Callable[[Tensor], Tensor], tokens: Int[Tensor, "batch pos"],
                    attributions: Float[Tensor, "batch pos"], pad_id: int) -> Float[Tensor, "batch pos_plus_1"]:
    """The reverse of :func:`deletion_curve`: column ``j`` is ``f`` of the row in which only the ``j`` most
    attributed positions are kept and every other one is ``pad_id`` (column 0: all ``pad_id``)."""
    return _perturbation_curve(f, tokens, attributions, pad_id, keep_top=True)


def curve_area(curve: Float[Tensor, "... steps"]) -> Float[Tensor, "..."]:
    """The area under each curve by the trapezoid rule, its ``steps`` points spread evenly over [0, 1]
    (so a constant curve ``c`` has area ``c``, whatever its number of points)."""
    if not isinstance(curve, Tensor) or not curve.is_floating_point() or curve.ndim < 1 or curve.shape[-1] < 2:
        raise ValueError("curve must be a floating-point tensor [..., steps] with at least 2 steps")
    return ((curve[..., 1:] + curve[..., :-1]) / 2).mean(-1)


# ----- rank agreement -------------------------------------------------------------------------------------
def average_ranks(x: Float[Tensor, "... n"]) -> Float[Tensor, "... n"]:
    """The rank of each entry along the last dimension, 1 for the smallest; tied entries share the average of
    the ranks they span (``[5, 1, 5]`` -> ``[2.5, 1, 2.5]``). Float64."""
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError("x must be a tensor [..., n] with n >= 1")
    x = x.double()
    less = (x.unsqueeze(-1) > x.unsqueeze(-2)).sum(-1)  # how many entries are smaller
    equal = (x.unsqueeze(-1) == x.unsqueeze(-2)).sum(-1)  # how many equal (itself included)
    return less.double() + (equal.double() + 1) / 2


def spearman(x: Float[Tensor, "... n"], y: Float[Tensor, "... n"]) -> Float[Tensor, "..."]:
    """Spearman's rank correlation of ``x`` and ``y`` along the last dimension: the Pearson correlation of
    their :func:`average_ranks` (computed in float64, returned in the inputs' floating dtype, or the default
    dtype, float32, for integer inputs); NaN where either row is constant (no ranking to correlate)."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must be a real tensor [..., n] (floating-point or integer)")
    if x.shape != y.shape or x.ndim < 1 or x.shape[-1] < 2:
        raise ValueError(f"x and y must have the same shape [..., n] with n >= 2, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.isnan().any() or y.isnan().any():
        raise ValueError("x and y must not contain NaN")
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(-1, keepdim=True), ry - ry.mean(-1, keepdim=True)
    rho = (rx * ry).sum(-1) / (rx.square().sum(-1) * ry.square().sum(-1)).sqrt()
    dtype = torch.promote_types(x.dtype, y.dtype)
    return rho.to(dtype if dtype.is_floating_point else torch.get_default_dtype())


def abs_rank_correlation(a: Float[Tensor, "... n"], b: Float[Tensor, "... n"]) -> Float[Tensor, "..."]:
    """:func:`spearman` of the magnitudes ``|a|`` and ``|b|``: do two attributions rank the inputs alike by
    importance, whatever the sign (the similarity of Adebayo et al. 2018)."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor) or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must be a real tensor [..., n] (floating-point or integer)")
    return spearman(a.abs(), b.abs())


def top_k_precision(attributions: Float[Tensor, "batch pos"], relevance: Float[Tensor, "batch pos"],
                    k: int | Int[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """The fraction of each row's ``k`` positions of largest ``|attribution|`` where ``relevance`` is non-zero
    (a truly relevant input, whatever its sign). ``k`` is an int, or one per row (e.g. each row's number of
    relevant positions). ``[batch]``, in the attributions' dtype."""
    if not isinstance(attributions, Tensor) or not attributions.is_floating_point() or attributions.ndim != 2:
        raise TypeError("attributions must be a floating-point tensor [batch, pos]")
    if not isinstance(relevance, Tensor) or relevance.shape != attributions.shape:
        raise ValueError(f"relevance must be a tensor shaped like attributions {tuple(attributions.shape)}")
    n = attributions.shape[1]
    if isinstance(k, Tensor):
        k = k.long()
        if k.shape != (len(attributions),):
            raise ValueError(f"k must be an int or a tensor [batch={len(attributions)}], got {tuple(k.shape)}")
    elif isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int or an integer tensor [batch], got {type(k).__name__}")
    k = torch.as_tensor(k).expand(len(attributions))
    if (k < 1).any() or (k > n).any():
        raise ValueError(f"k must lie in 1..{n} (the number of positions)")
    order = torch.sort(attributions.abs(), dim=-1, descending=True, stable=True).indices
    hit = (relevance != 0).gather(1, order).double()  # hit[b, j]: is the j-th most attributed relevant?
    in_top = torch.arange(n).unsqueeze(0) < k.unsqueeze(1)
    return ((hit * in_top).sum(1) / k.double()).to(attributions.dtype)


# ----- the model-parameter randomisation test ---------------------------------------------------------------
def randomisation_stages(model: HookedTransformer) -> list[tuple[str, tuple[str, ...]]]:
    """The groups of parameters the cascading randomisation re-initialises, top (unembedding) first:
    ``("unembed", ("unembed.", "ln_final."))``, then for each block from the last to the first its MLP
    (``ln2`` and ``mlp``) and its attention (``ln1`` and ``attn``), then ``("embed", ("embed.", "pos_embed."))``.
    Each is ``(name, parameter-name prefixes)``; groups without parameters (an attention-only model's MLPs)
    are left out."""
    if not isinstance(model, HookedTransformer):
        raise TypeError(f"model must be a HookedTransformer, got {type(model).__name__}")
    groups = [("unembed", ("unembed.", "ln_final."))]
    for layer in reversed(range(model.cfg.n_layers)):
        groups += [(f"blocks.{layer}.mlp", (f"blocks.{layer}.ln2.", f"blocks.{layer}.mlp.")),
                   (f"blocks.{layer}.attn", (f"blocks.{layer}.ln1.", f"blocks.{layer}.attn."))]
    groups.append(("embed", ("embed.", "pos_embed.")))
    names = [n for n, _ in model.named_parameters()]
    return [(g, prefixes) for g, prefixes in groups if any(n.startswith(prefixes) for n in names)]


def reinitialise(model: HookedTransformer, prefixes: tuple[str, ...], seed: int) -> HookedTransformer:
    """A copy of ``model`` in which every parameter whose name starts with one of ``prefixes`` is re-initialised
    as a fresh ``HookedTransformer`` with ``cfg.seed = seed`` initialises it (weights Normal(0, init_std),
    biases zero, LayerNorm scales one); every other parameter is the model's own. ``model`` is never changed."""
    if not isinstance(model, HookedTransformer):
        raise TypeError(f"model must be a HookedTransformer, got {type(model).__name__}")
    if isinstance(prefixes, str) or not isinstance(prefixes, tuple) or not all(isinstance(p, str) for p in prefixes):
        raise TypeError(f"prefixes must be a tuple of parameter-name prefixes (str), got {prefixes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    fresh = dict(HookedTransformer(TransformerConfig(**{**model.cfg.to_dict(), "seed": seed})).named_parameters())
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if prefixes and name.startswith(prefixes):
                p.copy_(fresh[name])
    return out


def randomise_parameters(model: HookedTransformer, stage: int, seed: int) -> HookedTransformer:
    """A copy of ``model`` whose first ``stage`` groups of :func:`randomisation_stages` (from the top) are
    re-initialised (:func:`reinitialise`); every other parameter is the model's own. ``stage = 0`` is an
    unchanged copy. ``model`` itself is never changed."""
    stages = randomisation_stages(model)
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage <= len(stages):
        raise ValueError(f"stage must be an int in 0..{len(stages)} (this model has the stages "
                         f"{[g for g, _ in stages]}), got {stage!r}")
    return reinitialise(model, tuple(p for _, group in stages[:stage] for p in group), seed)


def attention_ov_names(model: HookedTransformer, layer: int) -> tuple[str, ...]:
    """The names of block ``layer``'s OV parameters, ``W_V``, ``W_O``, ``b_V`` and ``b_O``: what an attention
    layer moves and writes. Re-initialising them (:func:`reinitialise`) changes the layer's output while its
    attention pattern, computed from ``ln1``, ``W_Q``, ``W_K`` and their biases, stays exactly the same."""
    if not isinstance(model, HookedTransformer):
        raise TypeError(f"model must be a HookedTransformer, got {type(model).__name__}")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must be an int in 0..{model.cfg.n_layers - 1}, got {layer!r}")
    names = [n for n, _ in model.named_parameters()]
    return tuple(f"blocks.{layer}.attn.{w}" for w in ("W_V", "W_O", "b_V", "b_O") if f"blocks.{layer}.attn.{w}" in names)


def randomised_logits(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], stage: int,
                      seed: int) -> Float[Tensor, "batch pos d_vocab"]:
    """The logits on ``tokens`` of :func:`randomise_parameters` ``(model, stage, seed)``."""
    with torch.no_grad():
        return randomise_parameters(model, stage, seed)(tokens)


def review_words_score(tokens: Int[Tensor, "batch n_words"], model: HookedTransformer) -> Float[Tensor, "batch"]:
    """The review classifier's score (:func:`tinyinterp.reviews.score`) of word tokens ``[batch, N_WORDS]``,
    ``<cls>`` appended: an ``f`` for :func:`deletion_curve` over a review's words."""
    from . import reviews as R

    cls = torch.full((len(tokens), 1), R.TOKEN[R.CLS], dtype=tokens.dtype)
    return R.score(model, torch.cat([tokens, cls], dim=1))


def word_mask(tokens: Int[Tensor, "batch pos"], not_words: tuple[int, ...]) -> Bool[Tensor, "batch pos"]:
    """True where a token is none of ``not_words`` (e.g. padding and ``<cls>``)."""
    return ~torch.isin(tokens, torch.tensor(not_words, dtype=tokens.dtype))


__all__ = ["deletion_order", "deletion_curve", "insertion_curve", "curve_area", "average_ranks", "spearman",
           "abs_rank_correlation", "top_k_precision", "randomisation_stages", "reinitialise", "randomise_parameters",
           "attention_ov_names", "randomised_logits", "review_words_score", "word_mask"]
