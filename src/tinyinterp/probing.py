"""Linear probes, control tasks and steering vectors (chapter 11).

A *probe* is a classifier trained to read a variable from a model's activations
(Alain & Bengio 2016; Belinkov 2022). Everything here is linear and, except the logistic probe,
closed-form, so that two runs on the same activations give the same probe:

- :func:`diff_of_means_direction` and :func:`class_means` / :func:`mean_probe`: the difference of the
  class means, and the "nearest class mean" classifier built from the means;
- :func:`fit_ridge_probe`: least squares onto one-hot targets, with an unpenalised bias;
- :func:`fit_logistic_probe`: multinomial logistic regression (full-batch L-BFGS, a fixed number of
  iterations), for comparison;
- :func:`held_out_accuracy`: fit on one random part of the data, score on the rest;
- :func:`control_task_labels` and :func:`selectivity`: Hewitt & Liang's (2019) control tasks;
- :func:`steer`: add ``alpha * direction`` to the residual stream and run the model
  (activation addition, Turner et al. 2023; Zou et al. 2023).

Activations are ``[n, d_model]`` rows (flatten ``[batch, pos, d_model]`` first); labels are class
indices ``0 .. n_classes - 1``. Probes come back in the dtype of the activations; labels (and control
labels) are ``torch.long``. Inputs that make no sense (labels out of range or of a float dtype, a NaN
penalty, a singular fit) raise a ``ValueError`` or ``TypeError`` that says what is wrong.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .hooks import HookPoint
from .model import HookedTransformer


# ----- where to probe -----------------------------------------------------------------------------
def resid_hook_names(n_layers: int) -> list[str]:
    """The residual stream before every block and after the last one:
    ``blocks.0.hook_resid_pre, ..., blocks.{n-1}.hook_resid_pre, blocks.{n-1}.hook_resid_post``."""
    _check_count("n_layers", n_layers)
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]


def resid_activations(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> dict[str, Float[Tensor, "batch pos d_model"]]:
    """Every residual-stream activation of :func:`resid_hook_names`, from one forward pass."""
    names = resid_hook_names(model.cfg.n_layers)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return {name: cache[name] for name in names}


# ----- input checks -----------------------------------------------------------------------------------
def _check_count(name: str, value, minimum: int = 1) -> int:
    """``value`` as a Python int >= ``minimum`` (a bool or a float is refused, not rounded)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _generator(seed) -> torch.Generator:
    """``torch.Generator().manual_seed(seed)``, for an int ``seed`` only."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    return torch.Generator().manual_seed(seed)


def _check_rows(acts: Tensor, labels: Tensor) -> None:
    """``acts`` a floating-point ``[n, d_model]`` tensor with ``n, d_model >= 1``, ``labels`` ``[n]``."""
    if not isinstance(acts, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"acts and labels must be tensors, got {type(acts).__name__} and {type(labels).__name__}")
    if acts.ndim != 2 or labels.shape != acts.shape[:1]:
        raise ValueError(f"need acts [n, d_model] and labels [n], got {tuple(acts.shape)} and {tuple(labels.shape)}")
    if acts.shape[0] == 0 or acts.shape[1] == 0:
        raise ValueError(f"acts is empty ({tuple(acts.shape)}): a probe needs at least one row and one feature")
    if not acts.is_floating_point():
        raise TypeError(f"acts must be a floating-point tensor, got {acts.dtype}")


def _check_class_labels(labels: Tensor, n_classes: int) -> Tensor:
    """``labels`` as ``torch.long`` class indices in ``0 .. n_classes - 1`` (bool labels are 0 / 1)."""
    _check_count("n_classes", n_classes)
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be class indices (an integer or bool tensor), got {labels.dtype}")
    labels = labels.long()
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < n_classes):
        raise ValueError(f"labels must lie in 0 .. n_classes - 1 = {n_classes - 1}, "
                         f"got values from {int(labels.min())} to {int(labels.max())}")
    return labels


def _check_penalty(l2) -> float:
    if isinstance(l2, Tensor) and l2.numel() == 1 and not l2.dtype == torch.bool:
        l2 = l2.item()
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not math.isfinite(l2) or l2 < 0:
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    return float(l2)


# ----- difference of means --------------------------------------------------------------------------
def diff_of_means_direction(acts: Float[Tensor, "n d_model"], labels: Bool[Tensor, "n"]) -> Float[Tensor, "d_model"]:
    """Mean activation of the rows labelled ``True`` (or 1) minus the mean of those labelled ``False`` (0),
    in the dtype of ``acts``. ``labels``: a bool tensor, or an integer one holding only 0 and 1."""
    _check_rows(acts, labels)
    if labels.dtype != torch.bool:
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"labels must be bool (or integers 0 / 1), got {labels.dtype}")
        if not ((labels == 0) | (labels == 1)).all():
            raise ValueError(f"labels must be bool or 0 / 1, got the values {sorted(set(labels.unique().tolist()))}")
    positive = labels.bool()
    if positive.all() or not positive.any():
        raise ValueError("both classes need at least one row")
    return acts[positive].mean(dim=0) - acts[~positive].mean(dim=0)


def class_means(acts: Float[Tensor, "n d_model"], labels: Int[Tensor, "n"], n_classes: int) -> Float[Tensor, "n_classes d_model"]:
    """The mean activation of each class (a class with no rows: zeros)."""
    _check_rows(acts, labels)
    labels = _check_class_labels(labels, n_classes)
    onehot = torch.nn.functional.one_hot(labels, n_classes).to(acts.dtype)  # [n, C]
    return (onehot.T @ acts) / onehot.sum(0).clamp(min=1)[:, None]


def mean_probe(acts: Float[Tensor, "n d_model"], labels: Int[Tensor, "n"], n_classes: int
               ) -> tuple[Float[Tensor, "d_model n_classes"], Float[Tensor, "n_classes"]]:
    """The difference-of-means probe for several classes: predict the class whose mean is nearest.
    ``argmin_c |x - mu_c|^2 = argmax_c (x . mu_c - |mu_c|^2 / 2)``, a linear classifier ``(W, b)``."""
    mu = class_means(acts, labels, n_classes)
    return mu.T, -0.5 * (mu * mu).sum(-1)


# ----- least-squares and logistic probes ----------------------------------------------------------------
def fit_ridge_probe(acts: Float[Tensor, "n d_model"], labels: Int[Tensor, "n"], n_classes: int, l2: float
                    ) -> tuple[Float[Tensor, "d_model n_classes"], Float[Tensor, "n_classes"]]:
    """``(W, b)`` minimising ``|acts @ W + b - onehot(labels)|^2 + l2 |W|^2`` (the bias is not penalised).

    Closed form: centre ``acts`` and the one-hot targets ``Y`` on their means, then
    ``W = (X_c^T X_c + l2 I)^{-1} X_c^T Y_c`` and ``b = mean(Y) - mean(acts) @ W``, both in the dtype
    of ``acts``. With ``l2 = 0`` the centred activations must have full rank ``d_model`` (so more than
    ``d_model`` rows), else the minimiser is not unique and this raises ``ValueError``.
    """
    _check_rows(acts, labels)
    labels = _check_class_labels(labels, n_classes)
    l2 = _check_penalty(l2)
    Y = torch.nn.functional.one_hot(labels, n_classes).to(acts.dtype)
    x_mean, y_mean = acts.mean(0), Y.mean(0)
    Xc, Yc = acts - x_mean, Y - y_mean
    if l2 == 0 and int(torch.linalg.matrix_rank(Xc)) < acts.shape[1]:
        raise ValueError(f"with l2 = 0 the fit needs centred activations of full rank d_model = {acts.shape[1]} "
                         f"(so more than d_model rows; got {acts.shape[0]}): the probe is not unique; use l2 > 0")
    gram = Xc.T @ Xc + l2 * torch.eye(acts.shape[1], dtype=acts.dtype)
    try:
        W = torch.linalg.solve(gram, Xc.T @ Yc)
    except torch.linalg.LinAlgError as e:
        raise ValueError(f"the ridge system is singular (l2 = {l2}); use a larger l2") from e
    return W, y_mean - x_mean @ W


def fit_logistic_probe(acts: Float[Tensor, "n d_model"], labels: Int[Tensor, "n"], n_classes: int,
                       l2: float = 1e-3, iters: int = 100) -> tuple[Float[Tensor, "d_model n_classes"], Float[Tensor, "n_classes"]]:
    """Multinomial logistic regression: minimise the mean cross-entropy plus ``l2 |W|^2``, by full-batch
    L-BFGS from zero for ``iters`` iterations. Unlike the closed forms, the result depends on the optimiser."""
    _check_rows(acts, labels)
    labels = _check_class_labels(labels, n_classes)
    l2 = _check_penalty(l2)
    _check_count("iters", iters)
    acts = acts.detach()
    W = torch.zeros(acts.shape[1], n_classes, dtype=acts.dtype, requires_grad=True)
    b = torch.zeros(n_classes, dtype=acts.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(acts @ W + b, labels) + l2 * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach()


def probe_predict(W: Float[Tensor, "d_model n_classes"], b: Float[Tensor, "n_classes"],
                  acts: Float[Tensor, "n d_model"]) -> Int[Tensor, "n"]:
    """The class each row is assigned: ``argmax(acts @ W + b)``."""
    return (acts @ W + b).argmax(dim=-1)


def probe_accuracy(W: Float[Tensor, "d_model n_classes"], b: Float[Tensor, "n_classes"],
                   acts: Float[Tensor, "n d_model"], labels: Int[Tensor, "n"]) -> Float[Tensor, ""]:
    """The fraction of rows whose predicted class is their label (a 0-dim tensor in the dtype of ``acts``)."""
    _check_rows(acts, labels)
    return (probe_predict(W, b, acts) == labels).to(acts.dtype).mean()


def split_indices(n: int, train_frac: float, seed: int) -> tuple[Int[Tensor, "n_train"], Int[Tensor, "n_test"]]:
    """A random split of ``0 .. n-1``: ``perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))``,
    the first ``int(train_frac * n)`` indices for training and the rest for testing."""
    _check_count("n", n)
    if isinstance(train_frac, bool) or not isinstance(train_frac, (int, float)) or not math.isfinite(train_frac):
        raise ValueError(f"train_frac must be a number between 0 and 1, got {train_frac!r}")
    n_train = int(train_frac * n)
    if not 0 < n_train < n:
        raise ValueError(f"train_frac={train_frac} of n={n} rows leaves no training or no test rows")
    perm = torch.randperm(n, generator=_generator(seed))
    return perm[:n_train], perm[n_train:]


def held_out_accuracy(acts: Float[Tensor, "n d_model"], labels: Int[Tensor, "n"], n_classes: int, l2: float,
                      train_frac: float, seed: int) -> Float[Tensor, ""]:
    """Fit :func:`fit_ridge_probe` on the training rows of :func:`split_indices`; its accuracy on the test rows,
    a 0-dim tensor in the dtype of ``acts``."""
    _check_rows(acts, labels)
    train, test = split_indices(len(acts), train_frac, seed)
    W, b = fit_ridge_probe(acts[train], labels[train], n_classes, l2)
    return probe_accuracy(W, b, acts[test], labels[test])


# ----- control tasks ------------------------------------------------------------------------------
def control_task_labels(token_ids: Int[Tensor, "..."], n_types: int, n_classes: int, seed: int) -> Int[Tensor, "..."]:
    """Hewitt & Liang's control task: every token *type* gets one fixed random label, and each
    occurrence of the type carries it. The table of labels is
    ``torch.randint(0, n_classes, (n_types,), generator=torch.Generator().manual_seed(seed))``; the labels
    come back as ``torch.long``, in the shape of ``token_ids``."""
    if not isinstance(token_ids, Tensor) or token_ids.is_floating_point() or token_ids.is_complex() \
            or token_ids.dtype == torch.bool:
        raise TypeError(f"token_ids must be an integer tensor, got "
                        f"{token_ids.dtype if isinstance(token_ids, Tensor) else type(token_ids).__name__}")
    _check_count("n_types", n_types)
    _check_count("n_classes", n_classes)
    if token_ids.numel() and not (0 <= int(token_ids.min()) and int(token_ids.max()) < n_types):
        raise ValueError(f"token ids must lie in 0 .. {n_types - 1}")
    table = torch.randint(0, n_classes, (n_types,), generator=_generator(seed))
    return table[token_ids]


def selectivity(task_accuracy: float | Tensor, control_accuracy: float | Tensor) -> float:
    """Accuracy on the real task minus accuracy on the control task, for probes of the same kind on
    the same activations (Hewitt & Liang 2019). High when the probe reads the variable rather than
    memorising whatever labels it is given."""
    return float(task_accuracy) - float(control_accuracy)


# ----- steering -----------------------------------------------------------------------------------------
def steering_hook(direction: Float[Tensor, "d_model"], alpha: float):
    """A hook that adds ``alpha * direction`` at every position of the activation it is attached to
    (``direction`` cast to the activation's dtype and device)."""
    def hook(resid: Tensor, hook: HookPoint) -> Tensor:
        return resid + alpha * direction.to(resid)
    return hook


def steer(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], layer: int,
          direction: Float[Tensor, "d_model"], alpha: float) -> Float[Tensor, "batch pos d_vocab"]:
    """The logits with ``alpha * direction`` added to ``blocks.{layer}.hook_resid_pre`` at every position.
    ``direction`` may be in another float dtype (a probe fitted in float64, say): it is cast to the model's."""
    _check_count("layer", layer, minimum=0)
    if layer >= model.cfg.n_layers:
        raise ValueError(f"layer must lie in 0 .. n_layers - 1 = {model.cfg.n_layers - 1}, got {layer}")
    if not isinstance(direction, Tensor) or not direction.is_floating_point():
        raise TypeError(f"direction must be a floating-point tensor, got "
                        f"{direction.dtype if isinstance(direction, Tensor) else type(direction).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__} {alpha!r}")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha}")
    if direction.shape != (model.cfg.d_model,):
        raise ValueError(f"direction must be [d_model] = [{model.cfg.d_model}], got {tuple(direction.shape)}")
    with torch.no_grad():
        return model.run_with_hooks(tokens, [(f"blocks.{layer}.hook_resid_pre", steering_hook(direction, alpha))])


def random_direction_like(direction: Float[Tensor, "d_model"], seed: int) -> Float[Tensor, "d_model"]:
    """A random (Gaussian) direction with the same norm as ``direction``, seeded by ``seed``."""
    if not isinstance(direction, Tensor) or not direction.is_floating_point() or not direction.norm() > 0:
        raise ValueError("direction must be a floating-point tensor with a nonzero norm")
    r = torch.randn(direction.shape, generator=_generator(seed), dtype=direction.dtype)
    return r * direction.norm() / r.norm()
