"""Causal interventions: activation patching, path patching and attribution patching.

Two inputs that differ in one controlled way: a **clean** one, on which the model shows the
behaviour, and a **corrupted** one, on which it does not. A scalar ``metric(logits)`` (say a
:func:`logit_diff`) measures the behaviour, and :func:`normalised_metric` puts every result on one
scale: **0 = the corrupted run, 1 = the clean run**.

- **Denoising** (the default, ``noising=False``): run the *corrupted* input and patch in one clean
  activation. A score near 1 means that activation alone is enough to restore the behaviour.
- **Noising** (``noising=True``): run the *clean* input and patch in one corrupted activation. Same
  scale, read the other way: a score near 1 means nothing was lost, near 0 means that activation
  was necessary (the behaviour fell to its corrupted level).

**Path patching** (Wang et al. 2022; Goldowsky-Dill et al. 2023) patches an activation along one
path only: the sender head's output as one receiver head's keys see it, and nowhere else.
**Attribution patching** (Nanda 2023) estimates every patch at once to first order: the gradient
of the metric at the base run times the activation difference, from one forward and one backward
pass. It is exact when the metric is affine in the patched activation.

Hook names are TransformerLens's: ``blocks.{L}.hook_resid_pre``, ``blocks.{L}.attn.hook_z``, ...
"""

from __future__ import annotations

import itertools
import math
import operator
from typing import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import functional as Fn
from .hooks import HookPoint, full_hook_name
from .model import HookedTransformer

Metric = Callable[[Tensor], Tensor]  # logits [batch, pos, d_vocab] -> a scalar tensor


# ----- metrics -------------------------------------------------------------------------------------
def logit_diff(
    logits: Float[Tensor, "batch pos d_vocab"],
    answer: Int[Tensor, "batch *n_pos"],
    wrong: Int[Tensor, "batch *n_pos"],
    positions: Int[Tensor, "n_pos"] | Sequence[int] | None = None,
) -> Float[Tensor, ""]:
    """Mean of ``logit[answer] - logit[wrong]`` over the batch (and the positions).

    ``positions=None``: at the last position, with ``answer`` and ``wrong`` of shape ``[batch]``.
    Otherwise at the given positions, with ``answer[b, i]`` and ``wrong[b, i]`` the tokens compared
    at position ``positions[i]`` (both ``[batch, n_pos]``). Linear in the logits.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be [batch, pos, d_vocab], got shape {tuple(logits.shape)}")
    pos = torch.tensor([logits.shape[1] - 1]) if positions is None else torch.as_tensor(positions).long()
    if pos.ndim != 1 or not ((-logits.shape[1] <= pos) & (pos < logits.shape[1])).all():
        raise ValueError(f"positions must be a 1-D list of positions < {logits.shape[1]}, got {pos.tolist()}")
    want = (logits.shape[0],) if positions is None else (logits.shape[0], len(pos))
    for name, t in (("answer", answer), ("wrong", wrong)):
        if tuple(getattr(t, "shape", ())) != want:
            raise ValueError(f"{name} must have shape {want} (batch{'' if positions is None else ', n_pos'}), "
                             f"got {tuple(getattr(t, 'shape', ()))}")
    at = logits[:, pos]  # [batch, n_pos, d_vocab]
    a, w = answer.reshape(len(at), -1, 1), wrong.reshape(len(at), -1, 1)
    return (at.gather(-1, a) - at.gather(-1, w)).mean()


def normalised_metric(value, corrupted_value, clean_value, eps: float = 1e-6):
    """``(value - corrupted) / (clean - corrupted)``: 0 at the corrupted run's metric, 1 at the clean
    run's. Works elementwise on tensors. Raises ``ValueError`` when the clean and corrupted values are
    within ``eps`` of each other: then the corruption changed nothing and no scale exists."""
    clean, corrupted = float(clean_value), float(corrupted_value)
    if not (math.isfinite(clean) and math.isfinite(corrupted)):
        raise ValueError(f"clean ({clean}) and corrupted ({corrupted}) metrics must be finite")
    if abs(clean - corrupted) <= eps:
        raise ValueError(f"clean ({clean:.6g}) and corrupted ({corrupted:.6g}) metrics coincide: the corruption "
                         "does not change the metric, so the patching scale 0 = corrupted, 1 = clean is undefined")
    return (value - corrupted) / (clean - corrupted)


# ----- shared plumbing ----------------------------------------------------------------------------------
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_tokens(clean: Tensor, corrupted: Tensor) -> None:
    for name, t in (("clean", clean), ("corrupted", corrupted)):
        if not isinstance(t, Tensor) or t.ndim != 2 or t.dtype not in _INT_DTYPES:
            got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} tokens must be an integer tensor [batch, pos], got {got}")
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean and corrupted tokens must have the same shape (patching swaps activations "
                         f"position by position), got {tuple(clean.shape)} and {tuple(corrupted.shape)}")


def _scalar(value: Tensor) -> Tensor:
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError(f"metric must return a scalar tensor, got {getattr(value, 'shape', type(value).__name__)}")
    return value.reshape(())


@torch.no_grad()
def _metric_of(model: HookedTransformer, tokens: Tensor, metric: Metric, hooks=()) -> float:
    return _scalar(metric(model.run_with_hooks(tokens, list(hooks)))).item()


def _runs(model, clean, corrupted, metric, names, noising):
    """The base input (patched into), the source cache (patched from), and the two reference values."""
    _check_tokens(clean, corrupted)
    base, source = (clean, corrupted) if noising else (corrupted, clean)
    with torch.no_grad():
        source_logits, source_cache = model.run_with_cache(source, names_filter=names)
        source_v, base_v = _scalar(metric(source_logits)).item(), _metric_of(model, base, metric)
    values = (base_v, source_v) if noising else (source_v, base_v)  # (clean, corrupted)
    normalised_metric(0.0, values[1], values[0])  # fail early if the corruption changes nothing
    return base, source_cache, values


def patch_hook(source: Tensor, index: tuple) -> Callable[[Tensor, HookPoint], Tensor]:
    """A hook that returns a copy of the activation with ``act[index]`` replaced by ``source[index]``."""

    def hook(act: Tensor, hook: HookPoint) -> Tensor:
        out = act.clone()
        out[index] = source[index]
        return out

    return hook


def _patch_scan(model, clean, corrupted, metric, short: str, shape: tuple, index_of, noising) -> Tensor:
    """One forward pass per cell of ``shape = (n_layers, *rest)``: hook ``short`` of that layer patched
    at ``index_of(*rest)`` only. Returns the normalised metric of each."""
    names = [full_hook_name(short, layer) for layer in range(model.cfg.n_layers)]
    base, cache, (clean_v, corrupted_v) = _runs(model, clean, corrupted, metric, names, noising)
    out = torch.zeros(shape)
    for idx in itertools.product(*map(range, shape)):
        name = names[idx[0]]
        out[idx] = _metric_of(model, base, metric, [(name, patch_hook(cache[name], index_of(*idx[1:])))])
    return normalised_metric(out, corrupted_v, clean_v)


# ----- activation patching ------------------------------------------------------------------------------
def patch_resid_by_layer_pos(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric, noising: bool = False,
) -> Float[Tensor, "n_layers pos"]:
    """Normalised metric with ``blocks.{L}.hook_resid_pre`` at one position patched, for every
    layer ``L`` and position (one forward pass each). Denoising by default; see the module docstring."""
    _check_tokens(clean_tokens, corrupted_tokens)
    pos = clean_tokens.shape[-1]
    return _patch_scan(model, clean_tokens, corrupted_tokens, metric, "resid_pre", (model.cfg.n_layers, pos),
                       lambda p: (slice(None), p), noising)


def patch_head_outputs(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric, noising: bool = False,
) -> Float[Tensor, "n_layers n_heads"]:
    """Normalised metric with one head's output (its slice of ``blocks.{L}.attn.hook_z``) patched
    at every position, for every head."""
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    return _patch_scan(model, clean_tokens, corrupted_tokens, metric, "z", shape,
                       lambda h: (slice(None), slice(None), h), noising)


def patch_head_by_pos(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric, noising: bool = False,
) -> Float[Tensor, "n_layers n_heads pos"]:
    """Normalised metric with one head's ``hook_z`` at one position patched, for every head and position."""
    _check_tokens(clean_tokens, corrupted_tokens)
    shape = (model.cfg.n_layers, model.cfg.n_heads, clean_tokens.shape[-1])
    return _patch_scan(model, clean_tokens, corrupted_tokens, metric, "z", shape,
                       lambda h, p: (slice(None), p, h), noising)


# ----- path patching ---------------------------------------------------------------------------------------
def _as_index(x) -> int | None:
    """``x`` as a Python int when it is an integer (an int, a NumPy integer, a 0-dim integer tensor such as
    ``argmax()`` returns), else None. ``True``/``False`` are not indices."""
    if isinstance(x, bool) or (isinstance(x, Tensor) and (x.ndim != 0 or x.dtype == torch.bool)):
        return None
    try:
        return operator.index(x)
    except TypeError:
        return None


def _check_head(model: HookedTransformer, name: str, head: tuple[int, int]) -> tuple[int, int]:
    ok = isinstance(head, (tuple, list)) and len(head) == 2 and all(_as_index(i) is not None for i in head)
    layer, h = tuple(map(_as_index, head)) if ok else (-1, -1)
    if not (0 <= layer < model.cfg.n_layers and 0 <= h < model.cfg.n_heads):
        raise ValueError(f"{name}={head} is not a (layer, head) of this model "
                         f"({model.cfg.n_layers} layers x {model.cfg.n_heads} heads)")
    return layer, h


def head_write(model: HookedTransformer, layer: int, head: int, z: Float[Tensor, "batch pos n_heads d_head"]
               ) -> Float[Tensor, "batch pos d_model"]:
    """What one head writes into the residual stream: ``z[:, :, head] @ W_O[head]`` (no bias)."""
    return z[:, :, head] @ model.blocks[layer].attn.W_O[head].detach()


def head_input(model: HookedTransformer, layer: int, resid_pre: Float[Tensor, "batch pos d_model"],
               which: str) -> Float[Tensor, "batch pos n_heads d_head"]:
    """Layer ``layer``'s queries, keys or values (``which`` = ``"q"``, ``"k"``, ``"v"``) recomputed from
    a residual stream, through the layer's own ``ln1``: what ``blocks.{layer}.attn.hook_{which}`` would hold."""
    attn = model.blocks[layer].attn
    W, b = {"q": (attn.W_Q, attn.b_Q), "k": (attn.W_K, attn.b_K), "v": (attn.W_V, attn.b_V)}[which]
    with torch.no_grad():
        return Fn.project_to_heads(model.blocks[layer].ln1(resid_pre), W, b)


def path_patch_head_to_head(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
    sender: tuple[int, int], receiver: tuple[int, int], metric: Metric,
    receiver_input: str = "k", noising: bool = False,
) -> float:
    """Normalised metric when the sender head's patched output reaches the receiver head only through
    its ``receiver_input`` (``"q"``, ``"k"`` or ``"v"``), everything else frozen at the base run.

    Plain activation patching of the sender (:func:`patch_head_outputs`) changes its output
    *everywhere*: the logits directly, and every later head's queries, keys and values. Here:

    1. the sender's write into the residual stream changes by ``delta = (z_source - z_base) @ W_O``;
    2. the receiver's layer sees the base run's ``resid_pre`` plus ``delta`` (every other component,
       and the paths through intermediate layers, stay frozen at the base run);
    3. only the receiver head's ``hook_{receiver_input}`` is recomputed from that stream; its queries,
       values and every other head read the unchanged base stream;
    4. the base input is run with that one slice replaced; what lies downstream of the receiver is
       recomputed, so the receiver's change reaches the logits by every route.

    Base = corrupted and source = clean by default (denoising); ``noising=True`` swaps them.
    """
    s_layer, s_head = _check_head(model, "sender", sender)
    r_layer, r_head = _check_head(model, "receiver", receiver)
    if s_layer >= r_layer:
        raise ValueError(f"the sender {sender} must sit in an earlier layer than the receiver {receiver}")
    if receiver_input not in ("q", "k", "v"):
        raise ValueError(f"receiver_input must be 'q', 'k' or 'v', got {receiver_input!r}")
    z_name, resid_name = full_hook_name("z", s_layer), full_hook_name("resid_pre", r_layer)
    base, source_cache, (clean_v, corrupted_v) = _runs(model, clean_tokens, corrupted_tokens, metric,
                                                       [z_name], noising)
    with torch.no_grad():
        _, base_cache = model.run_with_cache(base, names_filter=[z_name, resid_name])
    delta = head_write(model, s_layer, s_head, source_cache[z_name] - base_cache[z_name])  # step 1
    patched = head_input(model, r_layer, base_cache[resid_name] + delta, receiver_input)  # steps 2 and 3
    hook = patch_hook(patched, (slice(None), slice(None), r_head))
    value = _metric_of(model, base, metric, [(full_hook_name(receiver_input, r_layer), hook)])  # step 4
    return normalised_metric(value, corrupted_v, clean_v)


def path_patch_head_to_head_keys(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
    sender: tuple[int, int], receiver: tuple[int, int], metric: Metric, noising: bool = False,
) -> float:
    """:func:`path_patch_head_to_head` through the receiver's keys (K-composition, as in induction)."""
    return path_patch_head_to_head(model, clean_tokens, corrupted_tokens, sender, receiver, metric, "k", noising)


# ----- attribution patching ------------------------------------------------------------------------------
def metric_and_gradients(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], metric: Metric, names: Sequence[str]
) -> tuple[float, dict[str, Tensor], dict[str, Tensor]]:
    """The metric on ``tokens``, the named activations, and the metric's gradient with respect to each
    (one forward and one backward pass). A zero tensor that requires grad is added at each hook point,
    so its gradient is the activation's and the graph upstream stays whole; ``torch.autograd.grad``
    returns the gradients without writing ``.grad`` on any parameter. Everything returned is detached."""
    zeros: dict[str, Tensor] = {}
    acts: dict[str, Tensor] = {}

    def add_zero(act: Tensor, hook: HookPoint) -> Tensor:
        acts[hook.name] = act.detach()
        zeros[hook.name] = torch.zeros_like(acts[hook.name], requires_grad=True)
        return act + zeros[hook.name]

    with torch.enable_grad(), model.hooks([(n, add_zero) for n in names]):
        value = _scalar(metric(model(tokens)))
        grads = torch.autograd.grad(value, [zeros[n] for n in names], allow_unused=True)
    grads = [torch.zeros_like(acts[n]) if g is None else g.detach() for n, g in zip(names, grads)]
    return value.item(), acts, dict(zip(names, grads))


def _attribution(model, clean, corrupted, metric, short: str, reduce_dims: tuple, noising: bool) -> Tensor:
    """Per layer: ``sum(grad * (source - base))`` over ``reduce_dims``, as a normalised estimate."""
    names = [full_hook_name(short, layer) for layer in range(model.cfg.n_layers)]
    base, source_cache, (clean_v, corrupted_v) = _runs(model, clean, corrupted, metric, names, noising)
    base_v, base_acts, grads = metric_and_gradients(model, base, metric, names)
    est = torch.stack([(grads[n] * (source_cache[n] - base_acts[n])).sum(dim=reduce_dims) for n in names])
    return normalised_metric(base_v + est, corrupted_v, clean_v)


def attribution_patch_heads(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric, noising: bool = False,
) -> Float[Tensor, "n_layers n_heads"]:
    """First-order estimate of :func:`patch_head_outputs`: ``metric(base) + grad_z . (z_source - z_base)``
    summed over batch, positions and ``d_head`` for each head, normalised the same way."""
    return _attribution(model, clean_tokens, corrupted_tokens, metric, "z", (0, 1, 3), noising)


def attribution_patch_resid_by_layer_pos(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric, noising: bool = False,
) -> Float[Tensor, "n_layers pos"]:
    """First-order estimate of :func:`patch_resid_by_layer_pos` (``hook_resid_pre``, summed over
    batch and ``d_model`` at each position)."""
    return _attribution(model, clean_tokens, corrupted_tokens, metric, "resid_pre", (0, 2), noising)


# ----- ablation: what replaces a head's output -------------------------------------------------------------
ABLATIONS = ("zero", "mean", "resample")


def ablate_head_z(
    z: Float[Tensor, "batch pos n_heads d_head"], head: int, kind: str,
    z_reference: Float[Tensor, "ref_batch ref_pos n_heads d_head"] | None = None,
) -> Float[Tensor, "batch pos n_heads d_head"]:
    """A copy of ``z`` (one layer's ``hook_z``) with head ``head``'s slice replaced, the other heads untouched:

    - ``"zero"``: by zeros (``z_reference`` is ignored);
    - ``"mean"``: by the head's mean over the batch *and* the positions of ``z_reference`` (a run on
      other inputs), one ``d_head`` vector for every position;
    - ``"resample"``: by ``z_reference[:, :, head]``, the head's output on another input of the same shape.
    """
    if kind not in ABLATIONS:
        raise ValueError(f"kind must be one of {ABLATIONS}, got {kind!r}")
    if not isinstance(z, Tensor) or z.ndim != 4:
        raise ValueError(f"z must be [batch, pos, n_heads, d_head], got {getattr(z, 'shape', type(z).__name__)}")
    if _as_index(head) is None or not 0 <= _as_index(head) < z.shape[2]:
        raise ValueError(f"head must be an int in 0..{z.shape[2] - 1}, got {head!r}")
    head = _as_index(head)
    if kind != "zero":
        ok = isinstance(z_reference, Tensor) and z_reference.ndim == 4 and z_reference.shape[2:] == z.shape[2:]
        if not ok or (kind == "resample" and z_reference.shape != z.shape):
            want = "the shape of z" if kind == "resample" else "[*, *, n_heads, d_head] like z"
            raise ValueError(f"{kind}-ablation needs z_reference of {want} {tuple(z.shape)}, "
                             f"got {getattr(z_reference, 'shape', type(z_reference).__name__)}")
    out = z.clone()
    if kind == "zero":
        out[:, :, head] = 0.0
    elif kind == "mean":
        out[:, :, head] = z_reference[:, :, head].mean(dim=(0, 1))
    else:
        out[:, :, head] = z_reference[:, :, head]
    return out


def run_with_head_ablated(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], layer: int, head: int, kind: str,
    reference_tokens: Int[Tensor, "ref_batch ref_pos"] | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits on ``tokens`` with one head ablated by :func:`ablate_head_z`; its reference ``z`` comes
    from a run on ``reference_tokens`` (needed for ``"mean"`` and ``"resample"``)."""
    layer, head = _check_head(model, "(layer, head)", (layer, head))
    name = full_hook_name("z", layer)
    z_ref = None
    if kind != "zero":
        if not isinstance(reference_tokens, Tensor):
            raise ValueError(f"{kind}-ablation needs reference_tokens (the inputs its replacement comes from)")
        with torch.no_grad():
            _, cache = model.run_with_cache(reference_tokens, names_filter=[name])
        z_ref = cache[name]
    with torch.no_grad():
        return model.run_with_hooks(tokens, [(name, lambda z, hook: ablate_head_z(z, head, kind, z_ref))])


__all__ = [
    "logit_diff", "normalised_metric", "patch_hook", "patch_resid_by_layer_pos", "patch_head_outputs",
    "patch_head_by_pos", "head_write", "head_input", "path_patch_head_to_head", "path_patch_head_to_head_keys",
    "metric_and_gradients", "attribution_patch_heads", "attribution_patch_resid_by_layer_pos",
    "ABLATIONS", "ablate_head_z", "run_with_head_ablated",
]
