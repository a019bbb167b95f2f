"""What the book's methods cost as the model grows, and what that says about frontier models (chapter 15).

Two kinds of measurement, kept apart on purpose:

- **Passes** (forward and backward passes of the model, counted by hooks with
  :func:`tinyinterp.patching_cost.count_passes`) depend only on the model's shape and the prompt's
  length, not on the machine or the weights. They scale exactly, and :func:`patching_pass_count`
  gives them in closed form.
- **Seconds** depend on the machine, the thread count and, for models this small, mostly on fixed
  overheads (Python, hooks, small matrix products). They are measured here for illustration only.

The models are random (:func:`tinyinterp.patching_cost.random_patching_setup`): what a method costs
does not depend on whether the model was trained. :func:`fit_power_law` fits ``y = c x^a`` by least
squares on the logarithms, and :func:`extrapolate` uses such a fit to predict a count far outside the
measured range.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Sequence

import torch
from torch import Tensor

from . import patching as P
from . import sae as S
from .patching_cost import _threads, count_passes, random_patching_setup

# what each patching method of the book runs (tinyinterp.patching)
PATCHING_METHODS = {
    "patch heads": P.patch_head_outputs,  # one pass per head (all positions at once)
    "patch head by pos": P.patch_head_by_pos,  # one pass per head and position
    "patch resid": P.patch_resid_by_layer_pos,  # one pass per layer and position
    "attribution": P.attribution_patch_heads,  # every head at once (the resid version runs the same passes)
}
D_HEAD = 8  # the sweeps keep d_head fixed and grow the number of heads with d_model, as real models do

# roughly the shape of an open 70-billion-parameter model (80 layers, 64 heads, d_model 8192), and a prompt
FRONTIER = {"n_layers": 80, "n_heads": 64, "d_model": 8192, "n_pos": 512}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _real_tensor(v, name: str) -> Tensor:
    """A tensor of real numbers from a tensor, a list or tuple of numbers, or a numpy array."""
    if not isinstance(v, Tensor):
        if v is None or isinstance(v, (str, bytes, dict, set)) or not hasattr(v, "__len__"):
            raise TypeError(f"{name} must be a 1-D tensor (or a list) of positive numbers, got {type(v).__name__}")
        try:
            v = torch.as_tensor(v, dtype=torch.float64) if not any(isinstance(e, complex) for e in v) else None
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a 1-D tensor (or a list) of positive numbers: {e}") from None
        if v is None:
            raise TypeError(f"{name} holds complex numbers: a power law is fitted to positive real numbers")
    if v.is_complex() or v.dtype == torch.bool:
        raise TypeError(f"{name} must hold positive real numbers, got dtype {v.dtype}")
    return v


def _real_number(v, name: str) -> float:
    """A float from a Python or numpy real number, or a 0-dim (or one-element) real tensor."""
    if isinstance(v, Tensor):
        if v.numel() != 1 or v.is_complex() or v.dtype == torch.bool:
            raise TypeError(f"{name} must be a real number, got a tensor of shape {tuple(v.shape)} and dtype {v.dtype}")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {v!r} ({type(v).__name__})")
    return float(v)


# ----- the two exercises' references ---------------------------------------------------------------------
def fit_power_law(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares fit of ``y = prefactor * x ** exponent``: the straight line through the points
    ``(log x, log y)``, with ``exponent`` its slope and ``prefactor`` the exponential of its intercept.
    ``x``, ``y``: 1-D tensors of positive numbers, at least two, not all ``x`` equal. Returns
    ``(exponent, prefactor)``, two 0-dim tensors in the dtype of ``x`` (lists, numpy arrays and integer
    tensors are read as float64)."""
    x, y = _real_tensor(x, "x"), _real_tensor(y, "y")
    if x.ndim != 1 or y.shape != x.shape or len(x) < 2:
        raise ValueError(f"x and y must be 1-D and of one length, at least 2; got shapes {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    dtype = x.dtype if x.is_floating_point() else torch.float64
    x, y = x.to(dtype), y.to(dtype)
    if not (torch.isfinite(x).all() and torch.isfinite(y).all() and (x > 0).all() and (y > 0).all()):
        raise ValueError("a power law is fitted to positive, finite x and y (their logarithms); got a zero, "
                         "negative, NaN or infinite entry")
    lx, ly = x.log(), y.log()
    dx = lx - lx.mean()
    if (dx.abs() == 0).all():
        raise ValueError("every x is the same: the exponent is undefined")
    exponent = (dx * (ly - ly.mean())).sum() / (dx * dx).sum()
    return exponent.to(dtype), torch.exp(ly.mean() - exponent * lx.mean()).to(dtype)


def patching_pass_count(n_layers: int, n_heads: int, n_pos: int, method: str) -> tuple[int, int]:
    """``(forward, backward)`` passes that the book's implementation of ``method`` (a key of
    :data:`PATCHING_METHODS`) runs on a model with ``n_layers`` layers of ``n_heads`` heads and a prompt of
    ``n_pos`` tokens. Activation patching runs one forward pass per patch, plus one on each of the clean and
    the corrupted input (the activations to patch in, and the metric's two reference values); attribution
    patching runs three forward passes (the source cache, the base's metric, the base again with
    gradients) and one backward pass, whatever the model's size."""
    _check_shape(n_layers=n_layers, n_heads=n_heads, n_pos=n_pos)
    if not isinstance(method, str) or method not in PATCHING_METHODS:
        raise ValueError(f"method must be one of {list(PATCHING_METHODS)}, got {method!r}")
    if method == "attribution":
        return 3, 1
    per_layer = {"patch heads": n_heads, "patch head by pos": n_heads * n_pos, "patch resid": n_pos}[method]
    return n_layers * per_layer + 2, 0


def _check_shape(**sizes) -> None:
    bad = {k: v for k, v in sizes.items() if not _is_int(v) or v < 1}
    if bad:
        raise ValueError(f"{', '.join(sizes)} must be ints >= 1, got {bad}")


# ----- measuring -------------------------------------------------------------------------------------------
def _check_threads(threads) -> None:
    if threads is not None and (not _is_int(threads) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 (torch's thread count while timing) or None (leave it "
                         f"alone), got {threads!r}")


def _check_sizes(sizes, what: str) -> list[tuple[int, ...]]:
    try:
        sizes = [tuple(s) for s in sizes]
    except TypeError:
        sizes = []
    if not sizes or not all(len(s) == 3 and all(_is_int(v) and v >= 1 for v in s) for s in sizes):
        raise ValueError(f"sizes must be a non-empty list of {what} tuples of ints >= 1, got {sizes!r}")
    return sizes


def patching_sweep(sizes: Sequence[tuple[int, int, int]], methods: Sequence[str] = tuple(PATCHING_METHODS),
                   batch: int = 2, threads: int | None = 1) -> list[dict]:
    """Run each method on a random model of each ``(n_layers, d_model, n_pos)`` (``d_head = 8``, so
    ``n_heads = d_model / 8``; MLPs and LayerNorm), counting its passes with hooks and timing it (one run;
    ``threads``: torch's thread count meanwhile, restored after). One row per size and method: the shape, ``batch``,
    ``n_params``, ``n_patches``, ``forward``, ``backward``, ``seconds`` and ``seconds_per_pass``."""
    sizes = _check_sizes(sizes, "(n_layers, d_model, n_pos)")
    _check_threads(threads)
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    unknown = [m for m in methods if not isinstance(m, str) or m not in PATCHING_METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be among {list(PATCHING_METHODS)}, got {unknown or 'none'}")
    if any(d % D_HEAD or n_pos < 2 for _, d, n_pos in sizes):
        raise ValueError(f"each d_model must be a multiple of {D_HEAD} and each n_pos at least 2, got {sizes}")
    rows = []
    with _threads(threads):
        for i, (n_layers, d_model, n_pos) in enumerate(sizes):
            model, task = random_patching_setup(n_layers, d_model // D_HEAD, n_pos, batch=batch, d_head=D_HEAD, seed=i)
            n_params = sum(p.numel() for p in model.parameters())
            for name in methods:
                with count_passes(model) as count:
                    start = time.perf_counter()
                    out = PATCHING_METHODS[name](model, task.clean, task.corrupted, task.metric)
                    seconds = time.perf_counter() - start
                rows.append({"method": name, "n_layers": n_layers, "d_model": d_model, "n_heads": d_model // D_HEAD,
                             "n_pos": n_pos, "batch": batch, "n_params": n_params, "n_patches": out.numel(),
                             "forward": count.forward, "backward": count.backward, "seconds": round(seconds, 5),
                             "seconds_per_pass": round(seconds / (count.forward + count.backward), 7)})
    return rows


def sae_sweep(d_ins: Sequence[int], expansion: int = 8, steps: int = 20, batch_size: int = 256,
              threads: int | None = 1) -> list[dict]:
    """Train an SAE (:func:`tinyinterp.sae.train_sae`, ReLU latents) for ``steps`` steps on random
    activations of each width ``d_in``, with ``d_sae = expansion * d_in``. Counts the SAE's forward passes
    (a forward hook) and backward passes (a gradient hook on ``W_dec``) and times the training. One row per
    width: ``d_in``, ``d_sae``, ``n_params``, ``forward``, ``backward``, ``seconds_per_step``."""
    try:
        d_ins = list(d_ins)
    except TypeError:
        d_ins = []
    settings = [*d_ins, expansion, steps, batch_size]
    if not d_ins or not all(_is_int(v) and v >= 1 for v in settings):
        raise ValueError(f"need a non-empty list of widths d_ins and ints expansion, steps, batch_size, all >= 1; "
                         f"got d_ins={d_ins!r}, expansion={expansion!r}, steps={steps!r}, batch_size={batch_size!r}")
    _check_threads(threads)
    rows = []
    with _threads(threads):
        for d_in in d_ins:
            sae = S.SparseAutoencoder(S.SAEConfig(d_in=d_in, d_sae=expansion * d_in, l1_coeff=1e-3))
            acts = torch.randn(4 * batch_size, d_in, generator=torch.Generator().manual_seed(d_in))
            counts = {"forward": 0, "backward": 0}
            handles = [sae.register_forward_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1)),
                       sae.W_dec.register_hook(lambda g: counts.__setitem__("backward", counts["backward"] + 1))]
            try:
                cfg = S.SAETrainConfig(steps=steps, batch_size=batch_size, resample_every=steps + 1)
                result = S.train_sae(sae, acts, cfg, progress=False)
            finally:
                for h in handles:
                    h.remove()
            rows.append({"d_in": d_in, "d_sae": expansion * d_in, "n_params": sum(p.numel() for p in sae.parameters()),
                         **counts, "seconds_per_step": round(result.seconds / steps, 7)})
    return rows


# ----- fitting and extrapolating -----------------------------------------------------------------------------
def exponents(rows: Sequence[dict], x: str, y: str, by: str | None = "method") -> dict:
    """``{group: (exponent, prefactor)}``: :func:`fit_power_law` of ``row[y]`` against ``row[x]`` for each
    value of ``row[by]`` (all rows as one group, named ``"all"``, when ``by`` is None), as floats. ``y`` may
    be ``"passes"``: forward + backward."""
    try:
        rows = list(rows)
    except TypeError:
        raise TypeError(f"rows must be a list of dicts (as the sweeps return them), got {type(rows).__name__}") from None
    if not rows:
        raise ValueError("no rows to fit: pass the rows that patching_sweep or sae_sweep returned")
    groups: dict = {}
    for row in rows:
        if not isinstance(row, dict) or x not in row or (by is not None and by not in row) or (
                y not in row and not (y == "passes" and "forward" in row)):
            raise ValueError(f"each row needs {x!r}, {y!r} and {by!r} (as the sweeps return them), got {row!r}")
        value = row["forward"] + row["backward"] if y == "passes" and y not in row else row[y]
        groups.setdefault("all" if by is None else row[by], []).append((row[x], value))
    out = {}
    for name, points in groups.items():
        if len({p[0] for p in points}) < 2:
            raise ValueError(f"group {name!r} has fewer than two distinct {x!r}: no power law to fit")
        a, c = fit_power_law(torch.tensor([float(p[0]) for p in points], dtype=torch.float64),
                             torch.tensor([float(p[1]) for p in points], dtype=torch.float64))
        out[name] = (a.item(), c.item())
    return out


def extrapolate(fit: tuple[float, float], x: float) -> float:
    """``prefactor * x ** exponent`` for a fit ``(exponent, prefactor)`` as :func:`exponents` returns it.
    Python and numpy numbers and 0-dim tensors are all accepted."""
    if isinstance(fit, (str, bytes, dict)) or not hasattr(fit, "__len__") or len(fit) != 2:
        raise ValueError(f"fit must be a pair (exponent, prefactor), as exponents or fit_power_law return it, "
                         f"got {fit!r}")
    exponent, prefactor = _real_number(fit[0], "the fit's exponent"), _real_number(fit[1], "the fit's prefactor")
    if not (math.isfinite(exponent) and math.isfinite(prefactor)):
        raise ValueError(f"the fit must be finite, got exponent {exponent} and prefactor {prefactor}")
    x = _real_number(x, "x")
    if not (x > 0 and math.isfinite(x)):
        raise ValueError(f"x must be a positive finite number, got {x!r}")
    try:
        y = prefactor * x ** exponent
    except OverflowError:
        y = math.inf
    if not math.isfinite(y):
        raise OverflowError(f"{prefactor:.3g} * {x:.3g} ** {exponent:.3g} is too large for a float")
    return y


def frontier_patches(n_layers: int, n_heads: int, n_pos: int) -> dict[str, int]:
    """Patches each method answers on a model of this shape: heads, heads x positions, layers x positions."""
    _check_shape(n_layers=n_layers, n_heads=n_heads, n_pos=n_pos)
    return {"patch heads": n_layers * n_heads, "patch head by pos": n_layers * n_heads * n_pos,
            "patch resid": n_layers * n_pos}


def sae_param_count(d_in: int, d_sae: int) -> int:
    """Parameters of an SAE: ``W_enc`` and ``W_dec`` (``d_in x d_sae`` each) and the two biases."""
    _check_shape(d_in=d_in, d_sae=d_sae)
    return 2 * d_in * d_sae + d_in + d_sae


def plot_scaling(patch_rows: Sequence[dict], sae_rows: Sequence[dict] = (), axes=None):
    """Log-log panels, stacked (to read on a narrow screen): passes against patches per method; seconds
    per pass against the model's parameters; and, given SAE rows, seconds per SAE step against the SAE's
    parameters. ``axes``: a sequence of at least 2 (3 with SAE rows) matplotlib axes to draw on."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    patch_rows, sae_rows = list(patch_rows), list(sae_rows)
    if not patch_rows:
        raise ValueError("no rows to plot: pass the rows patching_sweep returned")
    need = {"method", "n_patches", "forward", "backward", "n_params", "seconds_per_pass"}
    for rows, keys, what in ((patch_rows, need, "patching_sweep"), (sae_rows, {"n_params", "seconds_per_step"}, "sae_sweep")):
        for r in rows:
            missing = sorted(keys - set(r)) if isinstance(r, dict) else sorted(keys)
            if missing:
                raise ValueError(f"each row needs the keys {what} returns; missing {missing} in {r!r}")
    n = 3 if sae_rows else 2
    if axes is None:
        _, axes = plt.subplots(n, 1, figsize=(6.5, 2.8 * n))
    axes = list(np.ravel(axes))
    if len(axes) < n:
        raise ValueError(f"need {n} axes ({'with' if sae_rows else 'without'} SAE rows), got {len(axes)}")
    for name in dict.fromkeys(r["method"] for r in patch_rows):
        mine = sorted((r for r in patch_rows if r["method"] == name), key=lambda r: r["n_patches"])
        axes[0].plot([r["n_patches"] for r in mine], [r["forward"] + r["backward"] for r in mine], "o-", label=name)
    by_size = {r["n_params"]: r["seconds_per_pass"] for r in patch_rows if r["method"] == "patch heads"}
    if by_size:
        axes[1].plot(list(by_size), list(by_size.values()), "o-", label="one forward pass")
    labels = [("patches", "forward + backward passes"), ("model parameters", "seconds per pass")]
    if sae_rows:
        axes[2].plot([r["n_params"] for r in sae_rows], [r["seconds_per_step"] for r in sae_rows], "s-",
                     label="one SAE training step")
        labels.append(("SAE parameters", "seconds per step"))
    for ax, (xl, yl) in zip(axes, labels):
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis, lims in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            axis.set_minor_formatter(NullFormatter())  # minor labels overlap
            if math.log10(lims[1] / lims[0]) < 2:  # under two decades: label 1, 2 and 5 of each decade
                axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=9)
    axes[0].figure.tight_layout()
    return axes[0].figure


__all__ = ["PATCHING_METHODS", "D_HEAD", "FRONTIER", "fit_power_law", "patching_pass_count", "patching_sweep",
           "sae_sweep", "exponents", "extrapolate", "frontier_patches", "sae_param_count", "plot_scaling"]
