"""Post-hoc attributions (Part V, chapter 12): gradients, integrated gradients, LIME and Shapley values.

Gradient methods take ``f`` mapping a batch ``[batch, *shape]`` to ``[batch]``: :func:`saliency` (Simonyan
et al. 2014), :func:`gradient_times_input`, :func:`integrated_gradients`. Removal methods take a *value
function* of coalitions: :func:`shapley_values` (exact, one bool mask at a time), and, with a batched
``value_fn`` (bool masks ``[n_samples, n_players]`` -> ``[n_samples]``), :func:`lime` (Ribeiro et al. 2016)
and :func:`kernel_shap` (Lundberg & Lee 2017). :func:`token_attributions` applies each of them to the
review classifier of :mod:`tinyinterp.reviews`, one number per token.

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
from jaxtyping import Bool, Float, Int
from torch import Tensor

from . import reviews as R

MAX_PLAYERS = 20  # exact enumeration evaluates value_fn 2 ** n_players times


def _check_f_x(f, x, name="x") -> None:
    if not callable(f):
        raise TypeError(f"f must be callable (a batch [batch, *shape] -> [batch]), got {type(f).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got "
                        f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    if x.ndim < 1 or len(x) == 0:
        raise ValueError(f"{name} must be [batch, *shape] with batch >= 1, got shape {tuple(x.shape)}")


def _check_output(out, n: int) -> None:
    if not isinstance(out, Tensor) or out.shape != (n,):
        raise ValueError(f"f must map [batch, *shape] to [batch]: on a batch of {n} it returned "
                         f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")


def saliency(f: Callable[[Tensor], Tensor], x: Float[Tensor, "batch *shape"]) -> Float[Tensor, "batch *shape"]:
    """The raw, signed gradient ``d f(x)_b / d x_b`` for each row ``b`` of ``x`` (Simonyan et al. 2014 take
    its absolute value; we keep the sign). ``f`` maps ``[batch, *shape]`` to ``[batch]``, rows independent.
    Shaped like ``x``, detached; zeros where ``f`` does not depend on ``x``."""
    _check_f_x(f, x)
    x = x.detach().clone()
    with torch.enable_grad():
        x.requires_grad_(True)
        out = f(x)
        _check_output(out, len(x))
        if not out.requires_grad:
            return torch.zeros_like(x)
        (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad.detach()


def gradient_times_input(f: Callable[[Tensor], Tensor], x: Float[Tensor, "batch *shape"],
                         ) -> Float[Tensor, "batch *shape"]:
    """``x * saliency(f, x)``: the first-order Taylor share of each input in ``f(x) - f(0)`` (exact for
    ``f`` linear without bias; integrated gradients with a zero baseline and one step)."""
    return x.detach() * saliency(f, x)


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


# ----- LIME and KernelSHAP: weighted linear surrogates on coalitions ----------------------------------------
def _check_batched_value_fn(value_fn, name: str, n: int, what: str) -> int:
    if not callable(value_fn):
        raise TypeError(f"value_fn must be callable (bool masks [n_samples, {what}] -> [n_samples]), "
                        f"got {type(value_fn).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return n


def _evaluate(value_fn, masks: Tensor) -> Float[Tensor, "n_samples"]:
    out = value_fn(masks.clone())
    out = torch.as_tensor(out.detach() if isinstance(out, Tensor) else out, dtype=torch.float64)
    if out.shape != (len(masks),):
        raise ValueError(f"value_fn must map bool masks [n_samples, n] to [n_samples]: on {len(masks)} masks it "
                         f"returned shape {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        raise ValueError("value_fn returned a non-finite value for some coalition")
    return out


def lime_distance(masks: Bool[Tensor, "n_samples n"]) -> Float[Tensor, "n_samples"]:
    """Each coalition's distance from the all-present input: the fraction of features switched off (0 .. 1)."""
    return 1.0 - masks.double().mean(1)


def lime_kernel(masks: Bool[Tensor, "n_samples n"], kernel_width: float) -> Float[Tensor, "n_samples"]:
    """LIME's proximity weight of each coalition: ``exp(-d ** 2 / kernel_width ** 2)`` with ``d`` its
    :func:`lime_distance`."""
    return torch.exp(-(lime_distance(masks) ** 2) / kernel_width ** 2)


def lime_surrogate(masks: Bool[Tensor, "n_samples n"], outputs: Float[Tensor, "n_samples"], kernel_width: float = 0.25,
             ridge: float = 1e-6) -> Float[Tensor, "n"]:
    """LIME's surrogate on given samples: the weighted least-squares fit ``outputs ~ b + masks @ w`` with the
    weights of :func:`lime_kernel`, a ridge penalty ``ridge * |w| ** 2`` (not on the intercept ``b``).
    Returns ``w``, computed in float64, in ``outputs``' dtype. Closed form:
    ``(Z^T K Z + ridge I') ^-1 Z^T K y`` with ``Z = [1, masks]``."""
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool or masks.ndim != 2 or len(masks) == 0:
        raise TypeError(f"masks must be a bool tensor [n_samples, n], got "
                        f"{(masks.dtype, tuple(masks.shape)) if isinstance(masks, Tensor) else type(masks).__name__}")
    if not isinstance(outputs, Tensor) or outputs.shape != (len(masks),) or not torch.isfinite(outputs).all():
        raise ValueError(f"outputs must be finite numbers [n_samples={len(masks)}]")
    for name, v, low in (("kernel_width", kernel_width, 0.0), ("ridge", ridge, -1e-300)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > low:
            raise ValueError(f"{name} must be a finite number > {max(low, 0)}, got {v!r}")
    z = torch.cat([torch.ones(len(masks), 1, dtype=torch.float64), masks.double()], 1)
    k = lime_kernel(masks, kernel_width)
    penalty = torch.eye(z.shape[1], dtype=torch.float64) * ridge
    penalty[0, 0] = 0.0
    coef = torch.linalg.solve(z.T @ (k[:, None] * z) + penalty, z.T @ (k * outputs.double()))
    return coef[1:].to(outputs.dtype)


def _random_coalitions(n: int, n_samples: int, sizes: Tensor, probs: Tensor, gen: torch.Generator) -> Tensor:
    """``n_samples`` masks: a size drawn from ``sizes`` with ``probs``, then that many players uniformly."""
    size = sizes[torch.multinomial(probs, n_samples, replacement=True, generator=gen)]
    ranks = torch.rand(n_samples, n, generator=gen).argsort(1).argsort(1)
    return ranks < size[:, None]


def lime(value_fn: Callable[[Tensor], Tensor], n_features: int, n_samples: int = 500, kernel_width: float = 0.25,
         seed: int = 0) -> Float[Tensor, "n_features"]:
    """LIME (Ribeiro et al. 2016) from scratch: ``n_samples`` random coalitions (the first is the input itself,
    all features present; each other switches off a uniformly random number 1 .. n of them, as LIME does for
    text), scored by ``value_fn`` in one batch, then :func:`lime_surrogate` (exponential kernel on the fraction
    switched off, weighted least squares with an intercept, ridge 1e-6). Returns the surrogate's weights."""
    n = _check_batched_value_fn(value_fn, "n_features", n_features, "n_features")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    gen = torch.Generator().manual_seed(seed)
    masks = _random_coalitions(n, n_samples - 1, n - torch.arange(1, n + 1), torch.ones(n), gen)
    masks = torch.cat([torch.ones(1, n, dtype=torch.bool), masks])
    return lime_surrogate(masks, _evaluate(value_fn, masks), kernel_width)


def shapley_kernel(n_players: int, size: Tensor) -> Float[Tensor, "..."]:
    """The Shapley kernel ``(n - 1) / (C(n, s) s (n - s))`` of coalitions of size ``s`` (0 < s < n); the empty
    and full coalitions (infinite weight) are handled as constraints by :func:`kernel_shap`."""
    n, s = n_players, size.double()
    binom = torch.exp(torch.lgamma(torch.tensor(n + 1.0)) - torch.lgamma(s + 1) - torch.lgamma(n - s + 1))
    return (n - 1) / (binom * s * (n - s))


def kernel_shap(value_fn: Callable[[Tensor], Tensor], n_players: int, n_samples: int | None = None,
                seed: int = 0) -> Float[Tensor, "n_players"]:
    """KernelSHAP (Lundberg & Lee 2017): the weighted least-squares fit ``v(S) ~ phi_0 + sum_{i in S} phi_i``
    with Shapley kernel weights, constrained to ``phi_0 = v(empty)`` and ``sum phi = v(full) - v(empty)``
    (efficiency). With ``n_samples >= 2 ** n_players - 2`` every proper coalition is used with its exact
    kernel weight, and the answer equals :func:`shapley_values`; otherwise ``n_samples`` coalitions are drawn
    (sizes with probability proportional to their total kernel weight, in complementary pairs) and weighted
    equally. Default ``n_samples = 2 * n_players + 2048`` (shap's default). ``value_fn`` is batched."""
    n = _check_batched_value_fn(value_fn, "n_players", n_players, "n_players")
    if n_samples is None:
        n_samples = 2 * n + 2048
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    ends = _evaluate(value_fn, torch.stack([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]))
    v0, total = ends[0], ends[1] - ends[0]
    if n == 1:
        return total.reshape(1)
    if n <= 30 and n_samples >= 2 ** n - 2:
        masks = _coalitions(n)[1:-1]
        weights = shapley_kernel(n, masks.sum(1))
    else:
        sizes = torch.arange(1, n)
        gen = torch.Generator().manual_seed(seed)
        half = _random_coalitions(n, (n_samples + 1) // 2, sizes, shapley_kernel(n, sizes) * torch.exp(
            torch.lgamma(torch.tensor(n + 1.0)) - torch.lgamma(sizes + 1.0) - torch.lgamma(n - sizes + 1.0)), gen)
        masks = torch.cat([half, ~half])[:n_samples]
        weights = torch.ones(len(masks), dtype=torch.float64)
    y = _evaluate(value_fn, masks) - v0
    z = masks.double()
    # eliminate phi_last = total - sum(others): y - z_last total = sum_{i < last} phi_i (z_i - z_last)
    a, b = z[:, :-1] - z[:, -1:], y - z[:, -1] * total
    aw = a * weights[:, None]
    head = torch.linalg.lstsq(a.T @ aw, aw.T @ b).solution
    return torch.cat([head, (total - head.sum()).reshape(1)])


# ----- the review classifier, one number per token -------------------------------------------------------------
METHODS = ("saliency", "gradient_times_input", "integrated_gradients", "attention", "lime", "shap")


def _removal_scores(model, row: Tensor, words: Tensor):
    """A batched value function: masks over the review's words -> its score with the absent words <pad>."""
    def value_fn(masks: Tensor) -> Tensor:
        batch = row.repeat(len(masks), 1)
        batch[:, words] = torch.where(masks, row[words], R.TOKEN[R.PAD])
        with torch.no_grad():
            return R.score(model, batch).double()
    return value_fn


def cls_attention(model, tokens: Int[Tensor, "batch pos"], layer: int | None = None) -> Float[Tensor, "batch pos"]:
    """The attention paid by the ``<cls>`` position (the last) to each position, averaged over the heads of
    ``layer`` (default: the model's last layer): ``[batch, pos]`` (each row sums to 1)."""
    name = f"blocks.{model.cfg.n_layers - 1 if layer is None else layer}.attn.hook_pattern"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[name])
    return cache[name][:, :, -1, :].mean(1)


def token_attributions(model, tokens: Int[Tensor, "batch pos"], method: str, **kw) -> Float[Tensor, "batch pos"]:
    """Attributions of the review classifier's score (:func:`tinyinterp.reviews.score`) to each token.

    Gradient methods differentiate :func:`~tinyinterp.reviews.score_of_embeddings`. ``"saliency"`` is the L2
    norm over ``d_model`` of the gradient at each token (unsigned: Simonyan et al. take the largest absolute
    gradient over colour channels; a signed sum would be the derivative along the all-ones direction, which
    depends on the embedding basis). ``"gradient_times_input"`` and ``"integrated_gradients"`` sum their
    per-dimension attributions over ``d_model`` (signed); ``"integrated_gradients"`` integrates from the review with every word replaced by ``<pad>`` (``steps``,
    default 64), so its row sums are ``score(x) - score(all <pad>)``. ``"attention"`` is the ``<cls>``
    position's attention pattern over positions, averaged over heads (``layer``, default the last): the naive
    explanation. ``"lime"`` and ``"shap"`` treat the review's words (not ``<pad>``, not ``<cls>``) as players,
    removing a word = replacing it with ``<pad>``; ``"shap"`` is :func:`kernel_shap`, exact by default
    (``n_samples = 2 ** n_words``); ``lime`` takes ``n_samples``, ``kernel_width``, ``seed``. Padding and
    ``<cls>`` get 0 (except under "attention", which reports the pattern as it is). Float64 for lime/shap."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    tokens = R._check_model_tokens(model, tokens)
    if tokens.ndim != 2 or tokens.shape[1] > model.cfg.n_ctx or len(tokens) == 0:
        raise ValueError(f"tokens must be [batch, pos] with batch >= 1 and pos <= {model.cfg.n_ctx}, got "
                         f"{tuple(tokens.shape)}")
    allowed = {"integrated_gradients": {"steps"}, "attention": {"layer"}, "lime": {"n_samples", "kernel_width", "seed"},
               "shap": {"n_samples", "seed"}}.get(method, set())
    if set(kw) - allowed:
        raise TypeError(f"method {method!r} takes the keyword arguments {sorted(allowed)}, got {sorted(kw)}")
    is_word = (tokens != R.TOKEN[R.PAD]) & (tokens != R.TOKEN[R.CLS])
    if method == "attention":
        return cls_attention(model, tokens, kw.get("layer"))
    if method in ("lime", "shap"):
        out = torch.zeros(tokens.shape, dtype=torch.float64)
        for b, row in enumerate(tokens):
            words = is_word[b].nonzero().flatten()
            if len(words) == 0:
                continue
            fn = _removal_scores(model, row, words)
            if method == "lime":
                out[b, words] = lime(fn, len(words), **kw)
            else:
                out[b, words] = kernel_shap(fn, len(words), **{"n_samples": 2 ** len(words), **kw})
        return out
    embed = model.embed(tokens).detach()
    f = lambda e: R.score_of_embeddings(model, e)  # noqa: E731
    if method == "saliency":  # the magnitude of the gradient per token: its L2 norm over d_model
        return saliency(f, embed).norm(dim=-1) * is_word
    if method == "gradient_times_input":
        attr = gradient_times_input(f, embed)
    else:
        baseline = model.embed(torch.where(is_word, R.TOKEN[R.PAD], tokens)).detach()
        attr = integrated_gradients(f, embed, baseline, **kw)
    return attr.sum(-1) * is_word


# ----- small functions that exercise cases bind as f or value_fn (harness.bound.BoundFunction) ---------------
def _review_score(embeddings, model):
    """``f`` for chapter 12's gradient exercises: the review model's score from token embeddings
    [batch, pos, d_model]."""
    return R.score_of_embeddings(model, embeddings)


def _tanh_net(x, W_in, b_in, w_out):
    """``f`` for chapter 12's gradient exercises: a one-hidden-layer tanh network, [batch, d] -> [batch]."""
    return torch.tanh(x @ W_in + b_in) @ w_out


def _table_game(mask, table):
    """``value_fn`` for chapter 12's Shapley exercises: a game given by its value on each coalition (binary code)."""
    return float(table[int((mask.long() << torch.arange(len(mask))).sum())])


def _review_game(mask, model, tokens, words):
    """``value_fn`` for chapter 12's Shapley exercises: the review's score with the words ``words[i]`` not in ``mask``
    replaced by ``<pad>``."""
    row = tokens.clone()
    absent = torch.tensor(words)[~mask]
    row[absent] = R.TOKEN[R.PAD]
    with torch.no_grad():
        return float(R.score(model, row[None])[0])


__all__ = ["saliency", "gradient_times_input", "integrated_gradients", "shapley_values", "lime", "lime_surrogate",
           "lime_distance", "lime_kernel", "cls_attention", "kernel_shap", "shapley_kernel", "token_attributions",
           "METHODS", "MAX_PLAYERS"]
