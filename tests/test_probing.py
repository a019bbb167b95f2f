"""tinyinterp.probing against closed forms, planted directions and hand-computed answers."""

import pytest
import torch

from tinyinterp import probing as P
from tinyinterp.config import TransformerConfig
from tinyinterp.model import HookedTransformer


def _planted(n=2000, d=12, n_classes=3, scale=3.0, seed=0):
    """Rows ``noise + offset + scale * mu[label]`` with orthogonal class directions ``mu``."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0][:n_classes]
    labels = torch.randint(0, n_classes, (n,), generator=gen)
    acts = torch.randn(n, d, generator=gen, dtype=torch.float64) + 4.0 + scale * mu[labels]
    return acts, labels, mu


# ----- difference of means -------------------------------------------------------------------------
def test_diff_of_means_by_hand():
    acts = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [0.0, 0.0], [2.0, 2.0]])
    labels = torch.tensor([True, True, False, False, False])
    # mean(True) = (2, 3); mean(False) = (4, 2/3)
    assert torch.allclose(P.diff_of_means_direction(acts, labels), torch.tensor([-2.0, 3 - 2 / 3]))
    assert torch.allclose(P.diff_of_means_direction(acts, labels.long()), torch.tensor([-2.0, 3 - 2 / 3]))


def test_diff_of_means_recovers_a_planted_direction():
    acts, labels, mu = _planted(n=5000, n_classes=2)
    v = P.diff_of_means_direction(acts, labels == 1)
    want = 3.0 * (mu[1] - mu[0])
    assert torch.nn.functional.cosine_similarity(v, want, dim=0) > 0.99
    assert abs(v.norm() / want.norm() - 1) < 0.05


def test_diff_of_means_needs_both_classes_and_rows():
    with pytest.raises(ValueError, match="both classes"):
        P.diff_of_means_direction(torch.randn(4, 3), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="acts"):
        P.diff_of_means_direction(torch.randn(4, 3), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty"):
        P.diff_of_means_direction(torch.randn(0, 3), torch.ones(0, dtype=torch.bool))


def test_diff_of_means_takes_only_two_classes():
    """Labels {0, 1, 2} are not two classes: an error, not the class-1-and-2-versus-0 direction."""
    acts = torch.randn(6, 3)
    with pytest.raises(ValueError, match="bool or 0 / 1"):
        P.diff_of_means_direction(acts, torch.tensor([0, 1, 2, 0, 1, 2]))
    with pytest.raises(TypeError, match="bool"):
        P.diff_of_means_direction(acts, torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0]))


def test_mean_probe_is_the_nearest_class_mean():
    acts, labels, _ = _planted(n=300, scale=1.0)
    W, b = P.mean_probe(acts, labels, 3)
    mu = P.class_means(acts, labels, 3)
    for c in range(3):
        assert torch.allclose(mu[c], acts[labels == c].mean(0))
    nearest = torch.cdist(acts, mu).argmin(-1)
    assert torch.equal(P.probe_predict(W, b, acts), nearest)


# ----- the least-squares probe -------------------------------------------------------------------------
def _augmented_lstsq(acts, labels, n_classes, l2):
    """The same objective as one least-squares problem: [X 1; sqrt(l2) I 0] [W; b] ~ [Y; 0]."""
    n, d = acts.shape
    top = torch.cat([acts, torch.ones(n, 1, dtype=acts.dtype)], 1)
    pen = torch.cat([l2**0.5 * torch.eye(d, dtype=acts.dtype), torch.zeros(d, 1, dtype=acts.dtype)], 1)
    Y = torch.nn.functional.one_hot(labels, n_classes).to(acts.dtype)
    sol = torch.linalg.lstsq(torch.cat([top, pen]), torch.cat([Y, torch.zeros(d, n_classes, dtype=acts.dtype)])).solution
    return sol[:-1], sol[-1]


@pytest.mark.parametrize("l2", [0.0, 0.1, 10.0])
def test_ridge_probe_equals_the_augmented_least_squares_solution(l2):
    acts, labels, _ = _planted(n=200, d=7, n_classes=4, scale=1.0, seed=3)
    W, b = P.fit_ridge_probe(acts, labels, 4, l2)
    W2, b2 = _augmented_lstsq(acts, labels, 4, l2)
    assert torch.allclose(W, W2, atol=1e-9) and torch.allclose(b, b2, atol=1e-9)


def test_ridge_probe_gradient_vanishes_and_bias_is_free():
    acts, labels, _ = _planted(n=100, d=5, scale=1.0, seed=4)
    W, b = P.fit_ridge_probe(acts, labels, 3, 2.0)
    W, b = W.clone().requires_grad_(), b.clone().requires_grad_()
    Y = torch.nn.functional.one_hot(labels, 3).double()
    loss = ((acts @ W + b - Y) ** 2).sum() + 2.0 * (W**2).sum()
    loss.backward()
    assert W.grad.abs().max() < 1e-9 and b.grad.abs().max() < 1e-9


def test_ridge_probe_recovers_an_exact_linear_map():
    """Targets that are exactly one-hot = X A + c are fitted exactly with l2 = 0: the features hold the
    indicators of classes 0 and 1 (class 2's is one minus their sum, so it is left out: the centred
    features keep full rank) and two noise columns."""
    gen = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 3, (60,), generator=gen)
    acts = torch.cat([torch.nn.functional.one_hot(labels, 3)[:, :2].double(),
                      torch.randn(60, 2, generator=gen, dtype=torch.float64)], 1)
    W, b = P.fit_ridge_probe(acts, labels, 3, 0.0)
    assert torch.allclose(acts @ W + b, torch.nn.functional.one_hot(labels, 3).double(), atol=1e-10)
    assert P.probe_accuracy(W, b, acts, labels) == 1.0


def test_probe_fits_are_deterministic():
    acts, labels, _ = _planted(n=500, scale=1.0)
    acts = acts.float()
    for fit in (lambda: P.fit_ridge_probe(acts, labels, 3, 0.1), lambda: P.fit_logistic_probe(acts, labels, 3),
                lambda: P.mean_probe(acts, labels, 3)):
        (W1, b1), (W2, b2) = fit(), fit()
        assert torch.equal(W1, W2) and torch.equal(b1, b2)


def test_ridge_probe_rejects_bad_penalties_labels_and_empty_input():
    acts, labels = torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 1])
    for l2 in (-1.0, float("nan"), float("inf"), "1", None):
        with pytest.raises(ValueError, match="l2"):
            P.fit_ridge_probe(acts, labels, 2, l2)
    with pytest.raises(ValueError, match="0 .. n_classes - 1 = 1"):
        P.fit_ridge_probe(acts, torch.tensor([0, 1, 2, 1, 1]), 2, 1.0)
    with pytest.raises(ValueError, match="0 .. n_classes - 1"):
        P.fit_ridge_probe(acts, torch.tensor([0, 1, -1, 1, 1]), 2, 1.0)
    with pytest.raises(TypeError, match="class indices"):
        P.fit_ridge_probe(acts, labels.float(), 2, 1.0)
    with pytest.raises(ValueError, match="n_classes"):
        P.fit_ridge_probe(acts, torch.zeros(5, dtype=torch.long), 0, 1.0)
    with pytest.raises(ValueError, match="empty"):
        P.fit_ridge_probe(torch.randn(0, 2), torch.zeros(0, dtype=torch.long), 2, 1.0)
    with pytest.raises(TypeError, match="floating-point"):
        P.fit_ridge_probe(torch.ones(5, 2, dtype=torch.long), labels, 2, 1.0)
    W, b = P.fit_ridge_probe(acts, labels.bool(), 2, torch.tensor(1.0))  # bool labels are 0 / 1; a 0-dim l2 is a number
    assert torch.equal(W, P.fit_ridge_probe(acts, labels, 2, 1.0)[0])


def test_ridge_probe_without_penalty_needs_full_rank():
    """With l2 = 0 and no more rows than features the minimiser is not unique: a clear error, not garbage."""
    gen = torch.Generator().manual_seed(0)
    for n, d in ((4, 6), (6, 6)):  # centred, n rows have rank at most n - 1 < d
        acts, labels = torch.randn(n, d, generator=gen), torch.arange(n) % 2
        with pytest.raises(ValueError, match="l2 > 0"):
            P.fit_ridge_probe(acts, labels, 2, 0.0)
        W, b = P.fit_ridge_probe(acts, labels, 2, 0.5)  # any positive penalty makes it unique
        assert torch.isfinite(W).all() and torch.isfinite(b).all()
    acts = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    acts = torch.cat([acts, acts[:, :1]], 1)  # a repeated column: rank 3 < 4 however many rows
    with pytest.raises(ValueError, match="full rank"):
        P.fit_ridge_probe(acts, torch.arange(50) % 3, 3, 0.0)


def test_logistic_probe_separates_separable_classes_and_is_a_stationary_point():
    acts, labels, _ = _planted(n=600, d=6, scale=6.0, seed=6)
    W, b = P.fit_logistic_probe(acts, labels, 3, l2=1e-2, iters=200)
    assert P.probe_accuracy(W, b, acts, labels) > 0.99
    W, b = W.clone().requires_grad_(), b.clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(acts @ W + b, labels) + 1e-2 * (W**2).sum()
    loss.backward()
    assert W.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4


# ----- held-out evaluation -----------------------------------------------------------------------------
def test_split_indices_by_hand_and_bad_fractions():
    train, test = P.split_indices(10, 0.7, seed=3)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(train, perm[:7]) and torch.equal(test, perm[7:])
    for frac in (0.0, 1.0, 0.05, float("nan"), "half"):
        with pytest.raises(ValueError, match="train_frac"):
            P.split_indices(10, frac, seed=0)
    with pytest.raises(TypeError, match="seed"):
        P.split_indices(10, 0.5, seed=1.5)


def test_held_out_accuracy_rejects_labels_of_another_length():
    acts = torch.randn(20, 3)
    for n_labels in (19, 21):
        with pytest.raises(ValueError, match="labels"):
            P.held_out_accuracy(acts, torch.zeros(n_labels, dtype=torch.long), 2, 1.0, 0.5, seed=0)


def test_held_out_accuracy_depends_on_the_penalty_with_few_training_rows():
    """30 training rows, 40 features: the penalty shapes the probe, so l2 must reach fit_ridge_probe."""
    acts, labels, _ = _planted(n=60, d=40, scale=1.5, seed=8)
    got = {l2: P.held_out_accuracy(acts, labels, 3, l2, 0.5, seed=1).item() for l2 in (1e-6, 10.0, 1e4)}
    assert len(set(got.values())) > 1, got


def test_held_out_accuracy_reads_a_planted_variable_and_not_noise():
    acts, labels, _ = _planted(n=2000, d=12, scale=3.0)
    assert P.held_out_accuracy(acts, labels, 3, 1e-2, 0.5, seed=0) > 0.9
    # labels that mean nothing: memorised on few training rows, chance on held-out rows
    noise = torch.randint(0, 3, (2000,), generator=torch.Generator().manual_seed(9))
    train, test = P.split_indices(2000, 0.01, seed=0)  # 20 training rows, 12 features
    W, b = P.fit_ridge_probe(acts[train], noise[train], 3, 1e-6)
    assert P.probe_accuracy(W, b, acts[train], noise[train]) > 0.7
    assert abs(P.held_out_accuracy(acts, noise, 3, 1e-2, 0.5, seed=0) - 1 / 3) < 0.05


# ----- control tasks -------------------------------------------------------------------------------------
def test_control_labels_are_a_fixed_function_of_the_token_type():
    ids = torch.tensor([[3, 1, 3, 0], [1, 1, 2, 3]])
    labels = P.control_task_labels(ids, n_types=5, n_classes=4, seed=7)
    table = torch.randint(0, 4, (5,), generator=torch.Generator().manual_seed(7))
    assert torch.equal(labels, table[ids])
    assert labels.shape == ids.shape and labels.min() >= 0 and labels.max() < 4
    for t in range(4):  # every occurrence of a type has the same label, whatever the shape of the input
        assert len(set(labels[ids == t].tolist())) == 1
        assert (P.control_task_labels(torch.tensor([t]), 5, 4, seed=7) == labels[ids == t][0]).all()
    many = torch.arange(200)
    assert not torch.equal(P.control_task_labels(many, 200, 4, 7), P.control_task_labels(many, 200, 4, 8))


def test_control_labels_reject_unknown_types_and_bad_counts():
    with pytest.raises(ValueError, match="token ids"):
        P.control_task_labels(torch.tensor([0, 5]), n_types=5, n_classes=2, seed=0)
    with pytest.raises(ValueError, match="n_classes"):
        P.control_task_labels(torch.tensor([0, 1]), n_types=5, n_classes=0, seed=0)
    for n_types in (0, -3):
        with pytest.raises(ValueError, match="n_types"):
            P.control_task_labels(torch.tensor([0, 1]), n_types=n_types, n_classes=2, seed=0)
    with pytest.raises(TypeError, match="n_types"):
        P.control_task_labels(torch.tensor([0, 1]), n_types=5.0, n_classes=2, seed=0)
    with pytest.raises(TypeError, match="integer"):
        P.control_task_labels(torch.tensor([0.0, 1.0]), n_types=5, n_classes=2, seed=0)
    assert P.control_task_labels(torch.tensor([0, 1]), 5, 2, seed=0).dtype == torch.long


def test_selectivity():
    assert P.selectivity(torch.tensor(0.9), 0.6) == pytest.approx(0.3)


# ----- steering -------------------------------------------------------------------------------------------
def _model(n_layers=2, **kw):
    cfg = dict(d_vocab=11, n_ctx=12, d_model=8, n_layers=n_layers, n_heads=2, d_head=4, d_mlp=16, init_std=0.3, seed=1)
    cfg.update(kw)
    return HookedTransformer(TransformerConfig(**cfg)).eval()


def test_resid_hook_names_and_activations():
    model = _model(n_layers=3)
    for bad, error in ((0, ValueError), (-1, ValueError), (2.0, TypeError)):
        with pytest.raises(error, match="n_layers"):
            P.resid_hook_names(bad)
    names = P.resid_hook_names(3)
    assert names == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre",
                     "blocks.2.hook_resid_post"]
    tokens = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    acts = P.resid_activations(model, tokens)
    assert list(acts) == names and all(a.shape == (2, 5, 8) for a in acts.values())


def test_steering_has_the_exact_additive_effect_when_nothing_follows():
    """With every later block writing nothing and no LayerNorm, the residual stream passes straight to W_U:
    steering at blocks.{L}.hook_resid_pre changes the logits by exactly alpha * direction @ W_U."""
    model = _model(normalization=None)
    with torch.no_grad():
        for block in model.blocks[1:]:
            for p in (block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out):
                p.zero_()
    tokens = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(1))
    direction = torch.randn(8, generator=torch.Generator().manual_seed(2))
    clean = P.steer(model, tokens, 1, direction, 0.0)
    with torch.no_grad():
        assert torch.equal(clean, model(tokens))
    steered = P.steer(model, tokens, 1, direction, 2.5)
    want = (2.5 * direction @ model.W_U).expand_as(clean)
    assert torch.allclose(steered - clean, want, atol=1e-5)


def test_steering_adds_at_every_position_of_resid_pre():
    model = _model()
    tokens = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(3))
    direction = torch.randn(8, generator=torch.Generator().manual_seed(4))
    seen = {}

    def record(x, hook):
        seen[hook.name] = x.clone()

    with model.hooks([("blocks.1.hook_resid_pre", record)]):
        clean = model(tokens)
    with model.hooks([("blocks.1.hook_resid_pre", P.steering_hook(direction, -0.7)),
                      ("blocks.1.hook_resid_pre", lambda x, hook: seen.__setitem__("steered", x.clone()))]):
        steered = model(tokens)
    assert torch.allclose(seen["steered"] - seen["blocks.1.hook_resid_pre"], (-0.7 * direction).expand(2, 6, 8))
    assert torch.allclose(P.steer(model, tokens, 1, direction, -0.7), steered)
    assert not torch.allclose(steered, clean)
    with pytest.raises(ValueError, match="direction"):
        P.steer(model, tokens, 1, torch.zeros(3), 1.0)


def test_steer_casts_a_float64_direction_and_rejects_bad_layers():
    """A probe fitted in float64 steers a float32 model: the direction is cast to the model's dtype."""
    model = _model()
    tokens = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(5))
    direction = torch.randn(8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    steered = P.steer(model, tokens, 1, direction, 1.5)
    assert steered.dtype == torch.float32
    assert torch.equal(steered, P.steer(model, tokens, 1, direction.float(), 1.5))
    for layer, error in ((2, ValueError), (-1, ValueError), (1.0, TypeError)):
        with pytest.raises(error, match="layer"):
            P.steer(model, tokens, layer, direction, 1.0)
    with pytest.raises(TypeError, match="direction"):
        P.steer(model, tokens, 1, torch.zeros(8, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="alpha"):
        P.steer(model, tokens, 1, direction, float("nan"))


def test_random_direction_has_the_same_norm_and_is_seeded():
    v = torch.randn(32, generator=torch.Generator().manual_seed(0)) * 3
    r = P.random_direction_like(v, seed=1)
    assert torch.allclose(r.norm(), v.norm())
    assert torch.equal(r, P.random_direction_like(v, seed=1)) and not torch.equal(r, P.random_direction_like(v, seed=2))
