"""Taking a forward pass apart: residual decomposition, direct logit attribution, the logit lens,
and head ablation.

The residual stream is a sum: ``resid_final = embed + pos_embed + sum_l (attn_out_l + mlp_out_l)``,
and each ``attn_out_l`` is itself a sum over heads plus a bias. The final LayerNorm is the only
non-linearity between that sum and the logits; *freezing* its scale (the divisor, recorded at
``ln_final.hook_scale``) makes the map from residual to logits linear, so every component gets an
exact share of every logit: its **direct logit attribution** (Elhage et al. 2021). The **logit
lens** (nostalgebraist 2020) instead reads a *partial* residual stream with the final LayerNorm
recomputed, as if the model stopped there. **Ablation** replaces a head's output (its ``z``) by
zero or by its mean and measures what changes: its total effect, direct and indirect.

Component order everywhere (TransformerLens's ``decompose_resid``):
``embed, pos_embed, 0_attn_out, 0_mlp_out, 1_attn_out, ...`` (no ``mlp_out`` in attention-only models).
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .functional import cross_entropy_loss
from .hooks import ActivationCache, HookPoint
from .model import HookedTransformer


def _n_layers(cache: ActivationCache) -> int:
    n = 0
    while f"blocks.{n}.hook_resid_post" in cache or f"blocks.{n}.hook_attn_out" in cache:
        n += 1
    return n


# ----- decomposing the residual stream ---------------------------------------------------------------
def decompose_resid(cache: ActivationCache) -> Float[Tensor, "component batch pos d_model"]:
    """Stack the outputs that sum to the final residual stream, in the order
    ``embed, pos_embed, 0_attn_out, 0_mlp_out, 1_attn_out, 1_mlp_out, ...``.

    Attention-only models (no ``mlp_out`` in the cache) give ``2 + n_layers`` components.
    ``decompose_resid(cache).sum(0)`` equals the last layer's ``resid_post``.
    """
    parts = [cache["hook_embed"], cache["hook_pos_embed"]]
    for layer in range(_n_layers(cache)):
        parts.append(cache[f"blocks.{layer}.hook_attn_out"])
        if f"blocks.{layer}.hook_mlp_out" in cache:
            parts.append(cache[f"blocks.{layer}.hook_mlp_out"])
    return torch.stack(parts)


def component_labels(cache: ActivationCache) -> list[str]:
    """Names for the rows of :func:`decompose_resid`."""
    labels = ["embed", "pos_embed"]
    for layer in range(_n_layers(cache)):
        labels.append(f"{layer}_attn_out")
        if f"blocks.{layer}.hook_mlp_out" in cache:
            labels.append(f"{layer}_mlp_out")
    return labels


def stack_head_results(
    z: Float[Tensor, "batch pos n_heads d_head"], W_O: Float[Tensor, "n_heads d_head d_model"]
) -> Float[Tensor, "n_heads batch pos d_model"]:
    """Each head's own contribution to the residual stream, ``z_h @ W_O[h]`` (no bias).

    Summed over heads and plus ``b_O``, it gives the layer's ``attn_out``.
    """
    return torch.einsum("bphd,hdm->hbpm", z, W_O)


def all_head_results(model: HookedTransformer, cache: ActivationCache
                     ) -> Float[Tensor, "n_layers n_heads batch pos d_model"]:
    """:func:`stack_head_results` for every layer."""
    return torch.stack([stack_head_results(cache["z", layer], model.blocks[layer].attn.W_O.detach())
                        for layer in range(model.cfg.n_layers)])


def accumulated_resid(cache: ActivationCache) -> Float[Tensor, "layer_plus_1 batch pos d_model"]:
    """The residual stream before each layer and after the last one:
    ``[resid_pre_0, resid_pre_1, ..., resid_post_{L-1}]`` (what the logit lens reads)."""
    n = _n_layers(cache)
    return torch.stack([cache[f"blocks.{layer}.hook_resid_pre"] for layer in range(n)]
                       + [cache[f"blocks.{n - 1}.hook_resid_post"]])


# ----- direct logit attribution ------------------------------------------------------------------
def direct_logit_attribution(
    components: Float[Tensor, "component batch pos d_model"],
    scale: Float[Tensor, "batch pos 1"],
    ln_w: Float[Tensor, "d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    targets: Int[Tensor, "batch pos"],
) -> Float[Tensor, "component batch pos"]:
    """Each component's direct contribution to the logit of ``targets[b, p]`` at position ``p``.

    With the final LayerNorm's scale frozen at its value on the full stream (``scale``, from
    ``cache["ln_final.hook_scale"]``), LN is linear: ``LN(sum_c x_c) = sum_c (x_c - mean(x_c)) / scale
    * ln_w + ln_b``. So component ``c`` adds ``((x_c - mean(x_c)) / scale * ln_w) @ W_U[:, target]``,
    and the components' sum plus ``(ln_b @ W_U + b_U)[target]`` is exactly the target's logit.
    For a model without LayerNorm pass ``scale = 1`` and ``ln_w = 1`` (and do not centre: see
    :func:`dla_from_cache`).
    """
    centred = components - components.mean(dim=-1, keepdim=True)
    directions = W_U.T[targets] * ln_w  # [batch, pos, d_model]: the unembedding of each target, through LN's w
    return torch.einsum("cbpm,bpm->cbp", centred / scale, directions)


def dla_from_cache(
    model: HookedTransformer, cache: ActivationCache,
    components: Float[Tensor, "component batch pos d_model"], tokens: Int[Tensor, "batch pos"],
) -> Float[Tensor, "component batch pos_minus_1"]:
    """Each component's direct contribution to the logit of the *correct next token*
    (position ``t`` and target ``tokens[:, t + 1]``), with the model's final LayerNorm scale frozen
    from the cache (or no LayerNorm at all)."""
    x, targets = components[:, :, :-1], tokens[:, 1:]
    if model.cfg.normalization == "LN":
        scale = cache["ln_final.hook_scale"][:, :-1]
        return direct_logit_attribution(x, scale, model.ln_final.w.detach(), model.W_U.detach(), targets)
    return torch.einsum("cbpm,bpm->cbp", x, model.W_U.detach().T[targets])


def logit_bias_term(model: HookedTransformer, targets: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos"]:
    """The part of the target logit that no component owns: ``(ln_b @ W_U + b_U)[target]``."""
    bias = model.unembed.b_U.detach()
    if model.cfg.normalization == "LN":
        bias = bias + model.ln_final.b.detach() @ model.W_U.detach()
    return bias[targets]


# ----- logit lens ------------------------------------------------------------------------------
def logit_lens(
    resid_stack: Float[Tensor, "layer batch pos d_model"],
    ln_w: Float[Tensor, "d_model"],
    ln_b: Float[Tensor, "d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    b_U: Float[Tensor, "d_vocab"],
    eps: float = 1e-5,
) -> Float[Tensor, "layer batch pos d_vocab"]:
    """Logits read from each partial residual stream as if the model ended there: the final
    LayerNorm, recomputed on that partial stream (its own mean and scale, not the frozen ones),
    then the unembedding."""
    centred = resid_stack - resid_stack.mean(dim=-1, keepdim=True)
    scale = (centred.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
    return (centred / scale * ln_w + ln_b) @ W_U + b_U


def logit_lens_from_cache(model: HookedTransformer, cache: ActivationCache
                          ) -> Float[Tensor, "layer_plus_1 batch pos d_vocab"]:
    """:func:`logit_lens` on :func:`accumulated_resid`, with the model's own final LayerNorm."""
    stack = accumulated_resid(cache)
    if model.cfg.normalization != "LN":
        return stack @ model.W_U.detach() + model.unembed.b_U.detach()
    ln = model.ln_final
    return logit_lens(stack, ln.w.detach(), ln.b.detach(), model.W_U.detach(), model.unembed.b_U.detach(), ln.eps)


def per_position_loss(logits: Float[Tensor, "... batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
                      ) -> Float[Tensor, "... batch pos_minus_1"]:
    """Next-token loss at each position (position t predicts token t+1), for any leading dims."""
    log_probs = logits[..., :-1, :].log_softmax(-1)
    targets = tokens[:, 1:].expand(*log_probs.shape[:-1])
    return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# ----- ablation ---------------------------------------------------------------------------------
def ablate_head(
    z: Float[Tensor, "batch pos n_heads d_head"],
    head: int,
    mean_z: Float[Tensor, "pos n_heads d_head"] | None = None,
) -> Float[Tensor, "batch pos n_heads d_head"]:
    """A copy of ``z`` with head ``head``'s output replaced: by zero (``mean_z is None``: zero-ablation)
    or by ``mean_z[:, head]``, its mean over a reference batch at each position (mean-ablation).
    Never modifies ``z`` in place."""
    out = z.clone()
    out[:, :, head] = 0.0 if mean_z is None else mean_z[: z.shape[1], head]
    return out


def head_ablation_hook(head: int, mean_z: Float[Tensor, "pos n_heads d_head"] | None = None
                       ) -> Callable[[Tensor, HookPoint], Tensor]:
    """A hook for ``blocks.{layer}.attn.hook_z`` that ablates one head (see :func:`ablate_head`)."""

    def hook(z: Tensor, hook: HookPoint) -> Tensor:
        return ablate_head(z, head, mean_z)

    return hook


def mean_z(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "n_layers pos n_heads d_head"]:
    """Each layer's ``z`` averaged over the batch, per position: the replacement for mean-ablation."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return torch.stack([cache[n].mean(0) for n in names])


def ablation_effects(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    mode: str = "zero",
    metric: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Float[Tensor, "n_layers n_heads"]:
    """``metric(ablated) - metric(clean)`` for every head, ablated alone (one forward pass each).

    ``mode``: ``"zero"`` or ``"mean"`` (the mean of ``z`` over this batch, per position).
    ``metric(logits, tokens)`` defaults to the mean next-token cross-entropy, so the table holds
    how much the loss *rises* without each head.
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    metric = metric or cross_entropy_loss
    means = mean_z(model, tokens) if mode == "mean" else None
    with torch.no_grad():
        clean = metric(model(tokens), tokens)
        out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.as_tensor(clean).dtype)
        for layer in range(model.cfg.n_layers):
            for head in range(model.cfg.n_heads):
                hook = head_ablation_hook(head, None if means is None else means[layer])
                logits = model.run_with_hooks(tokens, [(f"blocks.{layer}.attn.hook_z", hook)])
                out[layer, head] = metric(logits, tokens) - clean
    return out


def correct_logit(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
    """Mean *centred* logit of the correct next token: ``logit[target] - mean(logits)`` at each position,
    averaged. Softmax ignores a shift of every logit, and so does this metric; it is in the same
    units as direct logit attribution through the centred unembedding ``W_U - W_U.mean(-1)``."""
    logits = logits[:, :-1]
    return (logits.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1) - logits.mean(-1)).mean()


__all__ = [
    "decompose_resid", "component_labels", "stack_head_results", "all_head_results", "accumulated_resid",
    "direct_logit_attribution", "dla_from_cache", "logit_bias_term", "logit_lens", "logit_lens_from_cache",
    "per_position_loss", "ablate_head", "head_ablation_hook", "mean_z", "ablation_effects", "correct_logit",
]
