"""How well attribution patching agrees with real patching, and what each costs (chapter 10).

Real activation patching (:func:`tinyinterp.patching.patch_head_outputs`,
:func:`~tinyinterp.patching.patch_resid_by_layer_pos`) runs the model once per patch: ``n_layers x
n_heads`` forward passes for the heads, ``n_layers x pos`` for the residual stream. Attribution patching
(:func:`~tinyinterp.patching.attribution_patch_heads`, ...) estimates every patch from a fixed number of
passes, whatever the model's size. :func:`measure_cost` counts the passes (with hooks, not by formula)
and times them on one model; :func:`cost_sweep` does it for growing random models; :func:`agreement`
and :func:`plot_agreement` compare an estimate with the real thing.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from . import patching as P
from .config import TransformerConfig
from .hooks import HookPoint
from .model import HookedTransformer
from .prompts import PatchingTask


# ----- agreement --------------------------------------------------------------------------------------------
def pearson_correlation(x: Float[Tensor, "..."], y: Float[Tensor, "..."]) -> Float[Tensor, ""]:
    """Pearson correlation of the entries of ``x`` and ``y`` (same shape, flattened): the cosine
    similarity of the two after subtracting each one's mean, a 0-dim tensor. Integer or boolean tensors
    are cast to float first (both to one dtype). Raises ``ValueError`` when the shapes differ, when there
    are fewer than 2 entries, when an entry is NaN or infinite, or when either is constant (the
    correlation is undefined)."""
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
        raise ValueError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape or x.numel() < 2:
        raise ValueError(f"need two tensors of the same shape with at least 2 entries, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    if dtype.is_complex:
        raise ValueError(f"x and y must be real, got {x.dtype} and {y.dtype}")
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    x, y = x.to(dtype), y.to(dtype)
    for name, t in (("x", x), ("y", y)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} has NaN or infinite entries: their correlation is undefined")
    dx, dy = x.flatten() - x.mean(), y.flatten() - y.mean()
    nx, ny = dx.norm(), dy.norm()
    if nx == 0 or ny == 0:
        raise ValueError("one of the two tensors is constant: its correlation with anything is undefined")
    return (dx @ dy) / (nx * ny)


def agreement(real: Tensor, estimate: Tensor) -> dict[str, float]:
    """How well ``estimate`` matches ``real`` (two patching results on the normalised scale):
    Pearson correlation, the largest absolute error, and the number of patches compared."""
    real, estimate = torch.as_tensor(real).detach().double(), torch.as_tensor(estimate).detach().double()
    return {"pearson": round(pearson_correlation(real, estimate).item(), 4),
            "max_abs_error": round((real - estimate).abs().max().item(), 4), "n": real.numel()}


def plot_agreement(real: Tensor, estimate: Tensor, title: str = "", ax=None, labels: Sequence[str] | None = None,
                   groups: Sequence[str] | None = None):
    """Scatter of attribution estimates against real patching results, with the line y = x (perfect
    agreement) and the Pearson correlation (of all points) in the title. ``labels``: one per point,
    written next to it; ``groups``: one name per point, each group drawn in its own colour."""
    import matplotlib.pyplot as plt

    real = torch.as_tensor(real).detach().double().flatten()
    estimate = torch.as_tensor(estimate).detach().double().flatten()
    for name, extra in (("labels", labels), ("groups", groups)):
        if extra is not None and len(extra) != real.numel():
            raise ValueError(f"{name} needs one entry per point ({real.numel()}), got {len(extra)}")
    if estimate.shape != real.shape:
        raise ValueError(f"real and estimate differ in size: {real.numel()} and {estimate.numel()}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    lo = min(real.min().item(), estimate.min().item(), 0.0) - 0.1
    hi = max(real.max().item(), estimate.max().item(), 1.0) + 0.1
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="y = x")
    names = list(groups) if groups is not None else [None] * real.numel()
    for group in sorted(set(names), key=str):
        mine = torch.tensor([g == group for g in names])
        ax.scatter(real[mine].numpy(), estimate[mine].numpy(), s=18, alpha=0.7, label=group)
    if groups is not None:
        ax.legend(fontsize=7, loc="upper left")
    for i, text in enumerate(labels or []):
        ax.annotate(text, (real[i].item(), estimate[i].item()), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("real patching (normalised)")
    ax.set_ylabel("attribution estimate")
    r = pearson_correlation(real, estimate).item()
    ax.set_title(f"{title}{chr(10) if title else ''}Pearson r = {r:.2f} ({real.numel()} patches)", fontsize=9)
    return ax.figure


# ----- counting passes ---------------------------------------------------------------------------------------
@dataclass
class PassCount:
    forward: int = 0
    backward: int = 0


@contextlib.contextmanager
def count_passes(model: HookedTransformer) -> Iterator[PassCount]:
    """Count the model's forward passes (calls of ``hook_embed``) and backward passes (gradients that
    flow back through the last block's ``hook_resid_post``) while the context is open. Uses hook points
    that the patching functions never hook themselves."""
    count = PassCount()
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"

    def on_embed(act: Tensor, hook: HookPoint) -> None:
        count.forward += 1

    def on_last(act: Tensor, hook: HookPoint) -> None:
        if act.requires_grad:
            act.register_hook(lambda grad: setattr(count, "backward", count.backward + 1))

    with model.hooks([("hook_embed", on_embed), (last, on_last)]):
        yield count


# ----- cost on growing models ---------------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def random_patching_setup(n_layers: int, n_heads: int, n_pos: int, batch: int = 4, d_head: int = 8,
                          d_vocab: int = 64, seed: int = 0) -> tuple[HookedTransformer, PatchingTask]:
    """A random transformer (MLPs and LayerNorm, ``d_model = n_heads * d_head``) and a task on it:
    random clean tokens, the first half of each sequence resampled for the corrupted run, and the
    logit difference between two random tokens at the last position. For timing, not interpretation."""
    sizes = {"n_layers": n_layers, "n_heads": n_heads, "n_pos": n_pos, "batch": batch, "d_head": d_head,
             "d_vocab": d_vocab}
    bad = {k: v for k, v in sizes.items() if not _is_int(v) or v < (2 if k in ("n_pos", "d_vocab") else 1)}
    if bad or not _is_int(seed):
        raise ValueError(f"need ints n_layers, n_heads, batch, d_head >= 1, n_pos, d_vocab >= 2 and an int seed, "
                         f"got {bad or {'seed': seed}}")
    d_model = n_heads * d_head
    cfg = TransformerConfig(d_vocab=d_vocab, n_ctx=n_pos, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                            d_head=d_head, d_mlp=4 * d_model, init_std=0.3, seed=seed)
    model = HookedTransformer(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, d_vocab, (batch, n_pos), generator=gen)
    corrupted = clean.clone()
    corrupted[:, : n_pos // 2] = torch.randint(0, d_vocab, (batch, n_pos // 2), generator=gen)
    answer, wrong = torch.randint(0, d_vocab, (2, batch), generator=gen)
    return model, PatchingTask(clean, corrupted, answer, wrong)


SLOW_S = 2.0  # a run slower than this is not repeated

METHODS = {  # name -> (function, what is patched)
    "patch heads": (P.patch_head_outputs, "heads"),
    "attribution heads": (P.attribution_patch_heads, "heads"),
    "patch resid": (P.patch_resid_by_layer_pos, "resid"),
    "attribution resid": (P.attribution_patch_resid_by_layer_pos, "resid"),
}


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_methods(methods, repeats, threads) -> list[str]:
    """``methods`` as a list of names of :data:`METHODS` (one name alone is one method); clear errors."""
    if isinstance(methods, str):
        methods = [methods]
    try:
        methods = list(methods)
    except TypeError:
        raise ValueError(f"methods must be a list of names among {list(METHODS)}, got {methods!r}") from None
    unknown = [m for m in methods if not isinstance(m, str) or m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be among {list(METHODS)}, got {unknown or 'none'}")
    if not _is_int(repeats) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if threads is not None and (not _is_int(threads) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 (torch's thread count while timing) or None (leave it "
                         f"alone), got {threads!r}")
    return methods


def measure_cost(model: HookedTransformer, task: PatchingTask, methods: Sequence[str] | str = tuple(METHODS),
                 repeats: int = 1, threads: int | None = 1) -> list[dict]:
    """Run each method of :data:`METHODS` on ``task``: the number of patches it answers, the forward and
    backward passes it took (counted), and its runtime in seconds (the best of ``repeats`` runs; a
    single run when it takes over ``SLOW_S`` seconds). ``methods``: names of :data:`METHODS`, or one name.
    ``threads``: torch's thread count while timing (restored afterwards; ``None`` leaves it alone).
    One thread by default: on small models, extra threads mostly measure contention with other programs."""
    methods = _check_methods(methods, repeats, threads)
    if not isinstance(task, PatchingTask):
        raise ValueError(f"task must be a PatchingTask, got {type(task).__name__}")
    with _threads(threads):
        return _measure(model, task, methods, repeats)


def _measure(model, task, methods, repeats) -> list[dict]:
    cfg, rows = model.cfg, []
    for name in methods:
        fn, what = METHODS[name]
        best = float("inf")
        for _ in range(repeats):
            with count_passes(model) as count:
                start = time.perf_counter()
                fn(model, task.clean, task.corrupted, task.metric)
                best = min(best, time.perf_counter() - start)
            if best > SLOW_S:
                break  # one slow run is timing enough
        n_patches = cfg.n_layers * (cfg.n_heads if what == "heads" else task.clean.shape[1])
        rows.append({"method": name, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "pos": task.clean.shape[1],
                     "n_patches": n_patches, "forward": count.forward, "backward": count.backward,
                     "seconds": round(best, 5)})
    return rows


def cost_sweep(sizes: Sequence[tuple[int, int, int]], batch: int = 4, repeats: int = 1,
               methods: Sequence[str] | str = tuple(METHODS), threads: int | None = 1) -> list[dict]:
    """:func:`measure_cost` on a random model of each ``(n_layers, n_heads, pos)`` in ``sizes``."""
    methods = _check_methods(methods, repeats, threads)
    try:
        sizes = list(sizes)
    except TypeError:
        sizes = []
    if not sizes:
        raise ValueError("sizes must be a non-empty list of (n_layers, n_heads, pos) tuples")
    for size in sizes:
        if not (isinstance(size, (tuple, list)) and len(size) == 3 and all(_is_int(v) for v in size)):
            raise ValueError(f"each size must be a tuple of three ints (n_layers, n_heads, pos), got {size!r}")
    rows = []
    for i, (n_layers, n_heads, n_pos) in enumerate(sizes):
        model, task = random_patching_setup(n_layers, n_heads, n_pos, batch=batch, seed=i)
        rows += measure_cost(model, task, methods, repeats, threads)
    return rows


def plot_cost(rows: Sequence[dict], axes=None):
    """Two log-log panels against the number of patches: forward passes, and seconds, one line per method."""
    import matplotlib.pyplot as plt

    rows = list(rows)
    need = ("method", "n_patches", "forward", "backward", "seconds")
    if not rows:
        raise ValueError("no rows to plot: pass the rows measure_cost or cost_sweep returned")
    for row in rows:
        missing = [k for k in need if not isinstance(row, dict) or k not in row]
        if missing:
            raise ValueError(f"each row needs {list(need)} (as measure_cost returns them); "
                             f"missing {missing} in {row!r}")
        if row["method"] not in METHODS:
            raise ValueError(f"unknown method {row['method']!r}: plot_cost draws the methods {list(METHODS)}")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"patch": "-o", "attribution": "--s"}
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == name), key=lambda r: r["n_patches"])
        x = [r["n_patches"] for r in mine]
        style = styles[name.split()[0]]
        axes[0].plot(x, [r["forward"] + r["backward"] for r in mine], style, label=name)
        axes[1].plot(x, [r["seconds"] for r in mine], style, label=name)
    for ax, ylabel in zip(axes, ("forward + backward passes", "seconds")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("number of patches (heads or layer x position)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return axes[0].figure


__all__ = ["pearson_correlation", "agreement", "plot_agreement", "PassCount", "count_passes",
           "random_patching_setup", "METHODS", "measure_cost", "cost_sweep", "plot_cost"]
