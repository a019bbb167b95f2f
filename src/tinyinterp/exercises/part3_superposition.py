"""Part III exercises, chapter 7: toy models of superposition (Elhage et al. 2022).

References are the functions the chapter itself uses (:mod:`tinyinterp.superposition`);
``tests/test_superposition.py`` checks them against hand-built weights with known answers.
"""

from __future__ import annotations

import torch

from .. import superposition as S
from ..harness.registry import Case, Exercise, Mistake, register
from ._inputs import randn

CH7 = "07_superposition"


def _sparse_features(gen: torch.Generator, *shape: int, p: float = 0.5) -> torch.Tensor:
    """Non-negative inputs with some exact zeros, like the model's real data."""
    return torch.rand(*shape, generator=gen) * (torch.rand(*shape, generator=gen) < p)


# ----- 7.1: the forward pass ----------------------------------------------------------------------
def _forward_cases(gen, hidden):
    # (name, batch, instances, features, hidden dims)
    shapes = [("batch 8, 3 instances, 5 features in 2 dimensions", 8, 3, 5, 2),
              ("batch 1", 1, 2, 5, 2),
              ("one instance", 6, 1, 4, 3),
              ("one hidden dimension", 5, 3, 6, 1),
              ("large batch, 20 features in 5 dimensions", 512, 4, 20, 5)]
    if hidden:
        shapes += [("hidden: as many hidden dimensions as features", 7, 2, 4, 4),
                   ("hidden: many instances", 9, 11, 7, 3)]
    return [Case(n, {"x": _sparse_features(gen, b, i, f), "W": randn(gen, i, h, f, scale=0.7),
                     "b": randn(gen, i, f, scale=0.3)}) for n, b, i, f, h in shapes]


def _forward_shared_W(x, W, b):
    shared = W[:1].expand_as(W)
    return S.toy_model_forward(x, shared, b)


def _forward_relu_hidden(x, W, b):
    hidden = torch.relu(torch.einsum("bif,ihf->bih", x, W))
    return torch.relu(torch.einsum("bih,ihf->bif", hidden, W) + b)


register(Exercise(
    id="toy_model_forward", chapter=CH7, title="The ReLU output model, many instances at once",
    signature="toy_model_forward(x, W, b)", reference=S.toy_model_forward, cases=_forward_cases,
    # atol: an output sums n_hidden products of hidden activations, each a sum of n_features products. Float32's
    # worst-case error for that, (n_hidden + n_features) * 2^-24 * sum|terms|, is ~2e-5 on the 20-feature cases,
    # above atol=1e-5 (2 ulps on the inputs moved answers by 0.29 of it, over 200 seeds). atol=1e-4 keeps a
    # tenfold margin (0.03 measured); every catalogued mistake is off by far more.
    points=2, difficulty=2, importance=4, minutes=10, atol=1e-4,
    mistakes=[
        Mistake("You left out the ReLU: the output is ReLU(W^T W x + b), and the ReLU is what lets the "
                "model filter out interference between features.",
                lambda x, W, b: torch.einsum("bih,ihf->bif", torch.einsum("bif,ihf->bih", x, W), W) + b),
        Mistake("You forgot the bias b: the output is ReLU(W^T W x + b).",
                lambda x, W, b: S.toy_model_forward(x, W, torch.zeros_like(b))),
        Mistake("The bias goes inside the ReLU: ReLU(W^T W x + b), not ReLU(W^T W x) + b.",
                lambda x, W, b: S.toy_model_forward(x, W, torch.zeros_like(b)) + b),
        Mistake("The hidden layer h = W x is linear: apply the ReLU only once, to W^T h + b, not to h.",
                _forward_relu_hidden),
        Mistake("Every instance has its own weights: instance i uses W[i] (keep the instance dimension in "
                "your einsum, e.g. 'batch inst feat, inst hidden feat -> batch inst hidden'); you used "
                "W[0] for all of them.", _forward_shared_W),
    ],
))


# ----- 7.2: generating a batch --------------------------------------------------------------------
def _batch_cases(gen, hidden):
    def seed() -> int:
        return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))

    cases = [
        # first: as many instances as features, so that broadcasting the probability the wrong way
        # gives a wrong answer instead of an error
        Case("batch 16, 4 instances, 4 features", {
            "batch_size": 16, "feature_probability": torch.tensor([1.0, 0.7, 0.3, 0.05]),
            "n_features": 4, "rng": seed()}),
        Case("batch 1", {"batch_size": 1, "feature_probability": torch.tensor([0.9, 0.5]),
                         "n_features": 6, "rng": seed()}),
        Case("one instance, dense features (p = 1)", {
            "batch_size": 10, "feature_probability": torch.tensor([1.0]), "n_features": 5, "rng": seed()}),
        Case("large batch, very sparse features", {
            "batch_size": 2000, "feature_probability": torch.tensor([0.01, 0.001, 0.1]),
            "n_features": 20, "rng": seed()}),
    ]
    if hidden:
        cases += [Case("hidden: 7 instances, 3 features", {
            "batch_size": 33, "feature_probability": torch.rand(7, generator=gen), "n_features": 3,
            "rng": seed()})]
    return cases


def _batch_with(rule):
    """A wrong generator: ``rule(gen, shape, prob)`` draws and returns the batch."""
    def fn(batch_size, feature_probability, n_features, rng):
        gen = torch.Generator().manual_seed(int(rng))
        return rule(gen, (batch_size, len(feature_probability), n_features), feature_probability)
    return fn


def _present_when_above(gen, shape, p):
    mag = torch.rand(shape, generator=gen)
    return torch.where(torch.rand(shape, generator=gen) >= p[:, None], mag, 0.0)


def _presence_only(gen, shape, p):
    torch.rand(shape, generator=gen)
    return (torch.rand(shape, generator=gen) < p[:, None]).float()


def _presence_first(gen, shape, p):
    present = torch.rand(shape, generator=gen) < p[:, None]
    return torch.where(present, torch.rand(shape, generator=gen), 0.0)


def _normal_magnitudes(gen, shape, p):
    mag = torch.randn(shape, generator=gen)
    return torch.where(torch.rand(shape, generator=gen) < p[:, None], mag, 0.0)


def _broadcast_along_features(gen, shape, p):
    mag = torch.rand(shape, generator=gen)
    return torch.where(torch.rand(shape, generator=gen) < p, mag, 0.0)


register(Exercise(
    id="generate_feature_batch", chapter=CH7, title="Sparse synthetic features",
    signature="generate_feature_batch(batch_size, feature_probability, n_features, rng)",
    reference=S.generate_feature_batch, cases=_batch_cases,
    points=2, difficulty=2, importance=3, minutes=10,
    mistakes=[
        Mistake("A feature is present where its presence draw is *below* feature_probability, so it is "
                "present with probability p; you kept it where the draw is above, i.e. with probability 1 - p.",
                _batch_with(_present_when_above)),
        Mistake("A present feature takes its magnitude from the first draw (uniform in [0, 1)); you "
                "returned 1.0 for every present feature.", _batch_with(_presence_only)),
        Mistake("You drew the presence numbers before the magnitudes. Draw the magnitudes first, then the "
                "presence numbers, both from the generator, so that a seed gives exactly the reference's batch.",
                _batch_with(_presence_first)),
        Mistake("Feature magnitudes are uniform on [0, 1): use torch.rand, not torch.randn (a normal "
                "draw gives negative features).", _batch_with(_normal_magnitudes)),
        Mistake("feature_probability has one entry per *instance*: compare with feature_probability[:, None] "
                "(shape [inst, 1]) so that it broadcasts over the features. Without [:, None] it lines up "
                "with the feature dimension instead.", _batch_with(_broadcast_along_features)),
    ],
))


# ----- 7.3: the loss ------------------------------------------------------------------------------
def _loss_cases(gen, hidden):
    def case(name, b, i, f, per_instance=False):
        imp = torch.rand(i, f, generator=gen) + 0.1 if per_instance else 0.9 ** torch.arange(f, dtype=torch.float32)
        return Case(name, {"x": _sparse_features(gen, b, i, f), "x_hat": torch.rand(b, i, f, generator=gen),
                           "importance": imp})

    cases = [case("batch 32, 3 instances, 5 features", 32, 3, 5), case("batch 1", 1, 2, 5),
             case("one instance", 16, 1, 7), case("importance given per instance, [inst, feat]", 8, 4, 6, True),
             case("large batch", 4096, 2, 20)]
    if hidden:
        cases += [case("hidden: many instances, per-instance importance", 10, 9, 3, True)]
    return cases


register(Exercise(
    id="importance_weighted_loss", chapter=CH7, title="Importance-weighted reconstruction loss",
    signature="importance_weighted_loss(x, x_hat, importance)", reference=S.importance_weighted_loss,
    cases=_loss_cases, points=1, difficulty=1, importance=4, minutes=5,
    mistakes=[
        Mistake("You left out the importance: multiply feature i's squared error by importance[i] before "
                "summing over features.",
                lambda x, x_hat, importance: (x - x_hat).pow(2).sum(-1).mean(0)),
        Mistake("The importance multiplies the *squared* error; you squared the importance too "
                "((importance * (x - x_hat))**2 weights feature i by importance[i]**2).",
                lambda x, x_hat, importance: (importance * (x - x_hat)).pow(2).sum(-1).mean(0)),
        Mistake("Sum the weighted squared errors over the features (average only over the batch); you "
                "averaged over the features, which divides the loss by n_features.",
                lambda x, x_hat, importance: (importance * (x - x_hat).pow(2)).mean(-1).mean(0)),
        Mistake("Average over the batch, do not sum over it: the loss should not grow with the batch size.",
                lambda x, x_hat, importance: (importance * (x - x_hat).pow(2)).sum(-1).sum(0)),
    ],
))


# ----- 7.4: feature dimensionality ----------------------------------------------------------------
def _dim_cases(gen, hidden):
    def case(name, i, h, f):
        return Case(name, {"W": randn(gen, i, h, f)})

    zero_column = randn(gen, 2, 3, 6)
    zero_column[1, :, 2] = 0.0
    cases = [
        # first: a square W, so that using its rows instead of its columns gives a wrong answer
        # rather than a wrong shape
        case("2 instances, 4 features in 4 dimensions", 2, 4, 4),
        case("3 instances, 5 features in 2 dimensions", 3, 2, 5),
        case("one instance, 1 hidden dimension", 1, 1, 6),
        case("large: 40 features in 10 dimensions", 2, 10, 40),
        Case("a feature the model ignores (an all-zero column of W)", {"W": zero_column}),
    ]
    if hidden:
        cases += [case("hidden: more dimensions than features", 3, 7, 3), case("hidden: many instances", 12, 3, 8)]
    return cases


def _overlaps(W, normalise=True):
    norms = W.norm(dim=1)
    left = W / norms.clamp(min=1e-8)[:, None, :] if normalise else W
    return norms, torch.einsum("ihf,ihg->ifg", left, W)


def _dim_unnormalised(W):
    norms, ov = _overlaps(W, normalise=False)
    return norms.pow(2) / ov.pow(2).sum(-1).clamp(min=1e-8)


def _dim_without_self(W):
    norms, ov = _overlaps(W)
    off = ov.pow(2).sum(-1) - torch.diagonal(ov, dim1=-2, dim2=-1).pow(2)
    return norms.pow(2) / off.clamp(min=1e-8)


def _dim_norm_not_squared(W):
    norms, ov = _overlaps(W)
    return norms / ov.pow(2).sum(-1).clamp(min=1e-8)


def _dim_unguarded(W):
    norms = W.norm(dim=1)
    ov = torch.einsum("ihf,ihg->ifg", W / norms[:, None, :], W)
    return norms.pow(2) / ov.pow(2).sum(-1)


register(Exercise(
    id="feature_dimensionality", chapter=CH7, title="Feature dimensionality",
    signature="feature_dimensionality(W)", reference=S.feature_dimensionality, cases=_dim_cases,
    points=3, difficulty=3, importance=4, minutes=15, atol=1e-5, rtol=1e-4,
    mistakes=[
        Mistake("Use the unit vector Ŵ_i = W_i / ||W_i|| in the denominator's dot products, "
                "sum_j (Ŵ_i · W_j)^2; with W_i itself, D_i changes when W is scaled.", _dim_unnormalised),
        Mistake("The denominator's sum runs over every feature j *including i itself* (that term is "
                "||W_i||^2); you left it out.", _dim_without_self),
        Mistake("The numerator is the *squared* norm ||W_i||^2, not the norm ||W_i||.", _dim_norm_not_squared),
        Mistake("Feature i's direction is column i of W (W[inst, :, i]), not row i: W is [inst, hidden, "
                "feat] and the model computes h = W x.",
                lambda W: S.feature_dimensionality(W.transpose(1, 2))),
        Mistake("A feature the model ignores has an all-zero column: its dimensionality is 0, but you "
                "divided 0 by 0 and got NaN. Guard the divisions, e.g. clamp the norm with "
                ".clamp(min=1e-8).", _dim_unguarded),
    ],
))
