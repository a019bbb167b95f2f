"""Toy models of superposition (Elhage et al. 2022), with many small models trained at once.

The model compresses ``n_features`` sparse features into ``d_hidden < n_features`` dimensions and
reconstructs them with a ReLU:

    h = W x,    x' = ReLU(W^T h + b) = ReLU(W^T W x + b),

with ``W`` of shape ``[d_hidden, n_features]``: **column i of W is feature i's direction** in the
hidden space. Each feature is, independently, present with probability ``p`` (the *feature
probability*; the *sparsity* is ``S = 1 - p``) and then uniform in ``[0, 1)``; the loss weights
each feature's squared error by its importance ``I_i``.

Every tensor has a leading **instance** dimension: ``n_instances`` independent models (one per
sparsity, say) live in one ``W`` of shape ``[n_instances, d_hidden, n_features]`` and train
together in one batched loop, so a whole sparsity sweep costs about as much as one model.
Shapes follow the convention ``[batch, instance, feature]`` for data.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor, nn

from .seeds import training_seed

EPS = 1e-8  # guards divisions by a zero norm (a feature the model ignores has a zero column)


# ----- the maths (the references of the chapter 7 exercises) ---------------------------------------
def toy_model_forward(
    x: Float[Tensor, "batch inst feat"],
    W: Float[Tensor, "inst hidden feat"],
    b: Float[Tensor, "inst feat"],
) -> Float[Tensor, "batch inst feat"]:
    """The ReLU output model, every instance at once: ``ReLU(W^T W x + b)``, instance by instance."""
    hidden = einsum(x, W, "batch inst feat, inst hidden feat -> batch inst hidden")
    out = einsum(hidden, W, "batch inst hidden, inst hidden feat -> batch inst feat") + b
    return torch.relu(out)


def generate_feature_batch(
    batch_size: int,
    feature_probability: Float[Tensor, "inst"] | Float[Tensor, "inst feat"],
    n_features: int,
    rng: torch.Generator | int,
) -> Float[Tensor, "batch inst feat"]:
    """Sparse synthetic features: each is present with its instance's probability, then U[0, 1).

    ``rng`` is a ``torch.Generator`` (a training loop passes one for the whole run) or an int seed
    for a fresh one. The draws happen in a fixed order, so a seed fixes the batch: first the
    magnitudes ``torch.rand(batch, inst, feat)``, then the uniform numbers that decide presence
    (a feature is present where that number is ``< feature_probability``).
    """
    gen = rng if isinstance(rng, torch.Generator) else torch.Generator().manual_seed(int(rng))
    prob = feature_probability if feature_probability.ndim == 2 else feature_probability[:, None]
    shape = (batch_size, prob.shape[0], n_features)
    magnitudes = torch.rand(shape, generator=gen)
    present = torch.rand(shape, generator=gen) < prob
    return torch.where(present, magnitudes, torch.zeros(()))


def importance_weighted_loss(
    x: Float[Tensor, "batch inst feat"],
    x_hat: Float[Tensor, "batch inst feat"],
    importance: Float[Tensor, "feat"] | Float[Tensor, "inst feat"],
) -> Float[Tensor, "inst"]:
    """Each instance's loss: the importance-weighted squared error, summed over features and
    averaged over the batch, ``mean_batch sum_i I_i (x_i - x'_i)^2``."""
    return (importance * (x - x_hat).pow(2)).sum(dim=-1).mean(dim=0)


def feature_dimensionality(W: Float[Tensor, "inst hidden feat"]) -> Float[Tensor, "inst feat"]:
    """Elhage et al.'s dimensionality of each feature, ``D_i = ||W_i||^2 / sum_j (Ŵ_i · W_j)^2``.

    ``W_i`` is column ``i`` of ``W`` and ``Ŵ_i`` its unit vector; the sum runs over every feature
    ``j``, ``i`` included. A feature with a dimension to itself has ``D_i = 1``, one of an antipodal
    pair ``1/2``, one of a pentagon in a plane ``2/5``; a feature the model ignores (zero column) ``0``.
    """
    norms, overlaps = _norms_and_overlaps(W)
    return norms.pow(2) / overlaps.pow(2).sum(dim=-1).clamp(min=EPS)


def _norms_and_overlaps(W: Float[Tensor, "inst hidden feat"]) -> tuple[Tensor, Tensor]:
    """``||W_i||`` as ``[inst, feat]`` and ``Ŵ_i · W_j`` as ``[inst, i, j]`` (zero rows for zero columns)."""
    norms = W.norm(dim=1)
    W_hat = W / norms.clamp(min=EPS)[:, None, :]
    return norms, einsum(W_hat, W, "inst hidden i, inst hidden j -> inst i j")


# ----- other measurements ----------------------------------------------------------------------
def superposition_score(W: Float[Tensor, "inst hidden feat"]) -> Float[Tensor, "inst feat"]:
    """How much other features interfere with feature ``i``: ``sum_{j != i} (Ŵ_i · W_j)^2``.

    Zero when ``W_i`` is orthogonal to every other column; the paper colours its norm bars by it.
    """
    _, overlaps = _norms_and_overlaps(W)
    return overlaps.pow(2).sum(dim=-1) - torch.diagonal(overlaps, dim1=-2, dim2=-1).pow(2)


def dimensions_per_feature(W: Float[Tensor, "inst hidden feat"]) -> Float[Tensor, "inst"]:
    """``d_hidden / ||W||_F^2``: hidden dimensions per (fully represented) feature. Each represented
    feature has ``||W_i|| ≈ 1``, so ``||W||_F^2`` counts them."""
    return W.shape[1] / W.pow(2).sum(dim=(1, 2))


def gram(W: Float[Tensor, "inst hidden feat"]) -> Float[Tensor, "inst feat feat"]:
    """``W^T W`` per instance: entry ``(i, j)`` is the dot product of features ``i`` and ``j``."""
    return einsum(W, W, "inst hidden i, inst hidden j -> inst i j")


# ----- the model and its training ----------------------------------------------------------------
class ToyModel(nn.Module):
    """``n_instances`` independent ReLU output models, each with its own feature probability.

    ``feature_probability``: ``[n_instances]`` (or ``[n_instances, n_features]``);
    ``importance``: ``[n_features]`` (or ``[n_instances, n_features]``). ``W`` is initialised
    Xavier-normal from ``training_seed(seed)`` (:mod:`tinyinterp.seeds`); the bias ``b_final`` starts at zero.
    """

    def __init__(
        self, n_features: int, d_hidden: int, feature_probability: Tensor, importance: Tensor | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        prob = torch.as_tensor(feature_probability, dtype=torch.float32)
        prob = prob[:, None].expand(-1, n_features) if prob.ndim == 1 else prob
        n_instances = prob.shape[0]
        imp = torch.ones(n_features) if importance is None else torch.as_tensor(importance, dtype=torch.float32)
        self.n_features, self.d_hidden, self.n_instances = n_features, d_hidden, n_instances
        self.register_buffer("feature_probability", prob.clone())
        self.register_buffer("importance", imp.expand(n_instances, n_features).clone())
        gen = torch.Generator().manual_seed(training_seed(seed))
        std = math.sqrt(2.0 / (n_features + d_hidden))
        self.W = nn.Parameter(torch.randn(n_instances, d_hidden, n_features, generator=gen) * std)
        self.b_final = nn.Parameter(torch.zeros(n_instances, n_features))

    def forward(self, x: Float[Tensor, "batch inst feat"]) -> Float[Tensor, "batch inst feat"]:
        return toy_model_forward(x, self.W, self.b_final)

    def generate_batch(self, batch_size: int, rng: torch.Generator | int) -> Float[Tensor, "batch inst feat"]:
        return generate_feature_batch(batch_size, self.feature_probability, self.n_features, rng)

    @property
    def sparsity(self) -> Float[Tensor, "inst"]:
        """``1 - p`` per instance (the mean over features where probabilities differ by feature)."""
        return 1 - self.feature_probability.mean(dim=-1)


@dataclass
class ToyTrainResult:
    steps: list[int] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)  # [n_logged][n_instances]
    seconds: float = 0.0

    @property
    def final_loss(self) -> Tensor:
        """Each instance's loss at the last logged step, ``[n_instances]``."""
        return torch.tensor(self.losses[-1])


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one CPU thread, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_toy_model(
    model: ToyModel, steps: int = 5000, batch_size: int = 1024, lr: float = 1e-3, seed: int = 0,
    log_every: int = 50,
) -> ToyTrainResult:
    """Adam on the sum of the instances' losses (so each instance gets its own gradient), with the
    learning rate decayed linearly to 10% over the last half of training. Deterministic for a
    fixed seed and torch build; batches are drawn from ``training_seed(seed)`` (:mod:`tinyinterp.seeds`).

    It runs on one thread: every tensor here is tiny, so splitting the work across threads only
    adds synchronisation, which becomes ruinous (over 10x slower) when other programs keep the
    machine's cores busy.
    """
    gen = torch.Generator().manual_seed(training_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < steps // 2 else 1.0 - 0.9 * (s - steps // 2) / max(1, steps - steps // 2))
    result = ToyTrainResult()
    start = time.perf_counter()
    with one_thread():
        for step in range(steps):
            x = model.generate_batch(batch_size, gen)
            per_instance = importance_weighted_loss(x, model(x), model.importance)
            opt.zero_grad(set_to_none=True)
            per_instance.sum().backward()
            opt.step()
            sched.step()
            if step % log_every == 0 or step == steps - 1:
                result.steps.append(step)
                result.losses.append(per_instance.detach().tolist())
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def evaluate_toy_model(model: ToyModel, batch_size: int = 8192, seed: int = 12345) -> Float[Tensor, "inst"]:
    """Each instance's loss on one large fixed batch (less noisy than a training batch). On one
    thread, like training, so that the result does not depend on the thread count."""
    with one_thread():
        x = model.generate_batch(batch_size, seed)
        return importance_weighted_loss(x, model(x), model.importance)


def train_toy_sweep(
    n_features: int, d_hidden: int, feature_probability: Float[Tensor, "sweep"],
    importance: Tensor | None = None, restarts: int = 1, steps: int = 5000, batch_size: int = 1024,
    lr: float = 1e-3, seed: int = 0,
) -> tuple[ToyModel, ToyTrainResult]:
    """Train one model per feature probability, all at once, keeping the best of ``restarts``.

    Gradient descent sometimes settles in a poor local minimum (a feature dropped for a worse
    one, say). Training ``restarts`` instances per probability from different initialisations and
    keeping the one with the lowest evaluation loss (:func:`evaluate_toy_model`) makes a sweep
    reliable, and costs little: the instances share every batched operation. Returns the selected
    models (one instance per probability) and the training log of all the instances.
    """
    prob = torch.as_tensor(feature_probability, dtype=torch.float32)
    everyone = ToyModel(n_features, d_hidden, prob.repeat_interleave(restarts, dim=0), importance, seed)
    result = train_toy_model(everyone, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    losses = evaluate_toy_model(everyone).view(len(prob), restarts)
    best = losses.argmin(dim=1) + torch.arange(len(prob)) * restarts
    chosen = ToyModel(n_features, d_hidden, prob, importance, seed)
    with torch.no_grad():
        chosen.W.copy_(everyone.W[best])
        chosen.b_final.copy_(everyone.b_final[best])
    return chosen, result


# ----- figures ---------------------------------------------------------------------------------
def _instance_titles(titles: Sequence[str] | None, n: int) -> list[str]:
    return list(titles) if titles is not None else [f"instance {i}" for i in range(n)]


def plot_features_in_2d(
    W: Float[Tensor, "inst 2 feat"], importance: Float[Tensor, "feat"] | None = None,
    titles: Sequence[str] | None = None,
):
    """One panel per instance: each feature's column of ``W`` as an arrow in the 2-D hidden space,
    coloured by importance (dark = important)."""
    import matplotlib.pyplot as plt  # here, not at the top: the maths needs no plotting library
    W = W.detach().cpu()
    if W.ndim != 3 or W.shape[1] != 2:
        raise ValueError(f"need W of shape [inst, 2, feat], got {list(W.shape)}")
    n_inst, _, n_feat = W.shape
    imp = torch.ones(n_feat) if importance is None else importance.detach().cpu().reshape(-1)[-n_feat:]
    colours = plt.cm.viridis(0.85 * (1 - ((imp - imp.min()) / (imp.max() - imp.min() + 1e-12)).numpy()))
    lim = max(1.1, 1.1 * W.norm(dim=1).max().item())
    fig, axes = plt.subplots(1, n_inst, figsize=(2.3 * n_inst, 2.6), squeeze=False)
    for i, (ax, title) in enumerate(zip(axes[0], _instance_titles(titles, n_inst))):
        ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, ls=":", lw=0.8, color="#999999"))
        for f in range(n_feat):
            x, y = W[i, :, f].tolist()
            ax.plot([0, x], [0, y], color=colours[f], lw=1.8)
            ax.scatter([x], [y], color=colours[f], s=18, zorder=3)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_gram_and_norms(W: Float[Tensor, "inst hidden feat"], titles: Sequence[str] | None = None):
    """Top row: ``W^T W`` per instance (red +, blue -). Bottom row: each feature's norm ``||W_i||``,
    coloured by its superposition score (dark blue: orthogonal to every other feature; yellow: shares its
    direction)."""
    import matplotlib.pyplot as plt  # here, not at the top: the maths needs no plotting library
    W = W.detach().cpu()
    n_inst, _, n_feat = W.shape
    G = gram(W)
    norms = W.norm(dim=1)
    # a score of 1 means the other features' overlap with W_i equals ||W_i||^2
    share = (superposition_score(W) / norms.pow(2).clamp(min=EPS)).clamp(0, 1)
    fig, axes = plt.subplots(2, n_inst, figsize=(2.0 * n_inst, 5.0), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1.15]})
    for i, title in enumerate(_instance_titles(titles, n_inst)):
        ax = axes[0, i]
        ax.imshow(G[i].numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
        ax = axes[1, i]
        ax.barh(range(n_feat), norms[i].numpy(), color=plt.cm.plasma(0.9 * share[i].numpy()), height=0.8)
        ax.set_xlim(0, max(1.2, 1.05 * norms.max().item()))
        ax.set_ylim(n_feat - 0.5, -0.5)
        ax.set_yticks([0, n_feat - 1], ["0", str(n_feat - 1)] if i == 0 else ["", ""], fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("$\\|W_i\\|$", fontsize=8)
    axes[0, 0].set_ylabel("$W^\\top W$", fontsize=9)
    axes[1, 0].set_ylabel("feature (most important at top)", fontsize=8)
    fig.tight_layout()
    return fig


# Equal-norm features spread evenly over a space ("tight frames") share it fairly: k features in m
# dimensions each get D = m / k. Some of the arrangements the paper finds, with their dimensionality:
STICKY_FRACTIONS = {
    "1: a dimension of its own": 1.0, "3/4: tetrahedron": 3 / 4, "2/3: triangle": 2 / 3,
    "1/2: antipodal pair": 1 / 2, "2/5: pentagon": 2 / 5,
}


def plot_feature_dimensionality(
    feature_probability: Float[Tensor, "inst"], W: Float[Tensor, "inst hidden feat"], min_norm: float = 0.5,
    ax=None,
):
    """Dimensions per feature ``d_hidden / ||W||_F^2`` (line) and each represented feature's
    dimensionality ``D_i`` (dots; features with ``||W_i|| < min_norm`` left out) against ``1/p``
    on a log axis, with reference lines at the fractions of :data:`STICKY_FRACTIONS`."""
    import matplotlib.pyplot as plt  # here, not at the top: the maths needs no plotting library
    W = W.detach().cpu()
    x = (1 / feature_probability.detach().cpu().reshape(-1)).numpy()
    D = feature_dimensionality(W)
    kept = W.norm(dim=1) >= min_norm
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 3.8))
    for label, frac in STICKY_FRACTIONS.items():
        ax.axhline(frac, color="#cccccc", lw=0.8, zorder=0)
        ax.annotate(label, (1.01, frac), xycoords=("axes fraction", "data"), va="center", fontsize=7,
                    color="#666666")
    for i in range(W.shape[0]):
        d = D[i][kept[i]].numpy()
        ax.scatter([x[i]] * len(d), d, s=14, alpha=0.5, color="#2171b5", lw=0,
                   label="$D_i$ of each represented feature" if i == 0 else None)
    ax.plot(x, dimensions_per_feature(W).numpy(), color="black", lw=1.8, marker="o", ms=3,
            label="dimensions per feature, $m / \\|W\\|_F^2$")
    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 500, 1000) if x.min() <= t <= x.max()]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xticks([], minor=True)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("1 / feature probability  (= 1 / (1 - S))")
    ax.set_ylabel("dimensions per feature")
    ax.legend(loc="lower left", fontsize=8)
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else ax.figure


__all__ = [
    "toy_model_forward", "generate_feature_batch", "importance_weighted_loss", "feature_dimensionality",
    "superposition_score", "dimensions_per_feature", "gram", "ToyModel", "ToyTrainResult", "train_toy_model",
    "evaluate_toy_model", "train_toy_sweep", "one_thread",
    "plot_features_in_2d", "plot_gram_and_norms", "plot_feature_dimensionality", "STICKY_FRACTIONS",
]
