"""Toy models of superposition: the maths against hand-built weights with answers known in closed
form, the batch generator against its distribution, and training against the paper's two headline
pictures (dense: the two most important features kept orthogonal; sparse: a pentagon)."""

import math

import matplotlib
import pytest
import torch

from tinyinterp.superposition import (
    ToyModel, dimensions_per_feature, evaluate_toy_model, feature_dimensionality, generate_feature_batch,
    gram, importance_weighted_loss, plot_feature_dimensionality, plot_features_in_2d, plot_gram_and_norms,
    superposition_score, toy_model_forward, train_toy_model, train_toy_sweep,
)


def polygon(k: int, radius: float = 1.0, phase: float = 0.3) -> torch.Tensor:
    """[2, k]: k vectors of length ``radius`` evenly spaced around the circle."""
    angles = phase + 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    return (radius * torch.stack([angles.cos(), angles.sin()])).float()


# ----- feature dimensionality: closed forms -------------------------------------------------------
def test_dimensionality_of_orthogonal_features_is_one():
    W = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)))[0][:, :4]  # 4 orthonormal columns
    W = W * torch.tensor([0.5, 1.0, 2.0, 3.0])  # norms do not matter
    assert torch.allclose(feature_dimensionality(W[None]), torch.ones(1, 4), atol=1e-5)


def test_dimensionality_of_an_antipodal_pair_is_one_half():
    W = torch.tensor([[[0.8, -0.8]]])  # one hidden dimension, two features pointing opposite ways
    assert torch.allclose(feature_dimensionality(W), torch.full((1, 2), 0.5))


def test_dimensionality_of_a_pentagon_is_two_fifths():
    # sum_k cos^2(2 pi k / 5) = 5/2, so D = 1 / (5/2) = 2/5 for every feature
    W = polygon(5, radius=1.3)[None]
    assert torch.allclose(feature_dimensionality(W), torch.full((1, 5), 0.4), atol=1e-5)
    assert torch.allclose(dimensions_per_feature(polygon(5)[None]), torch.tensor([0.4]), atol=1e-5)


def test_dimensionality_mixed_instances_and_ignored_features():
    zero = torch.zeros(2, 1)
    two_orthogonal = torch.cat([torch.tensor([[1.0, 0.0], [0.0, 1.0]]), zero, zero, zero], dim=1)
    two_pairs = torch.cat([torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 2.0, -2.0]]), zero], dim=1)
    W = torch.stack([polygon(5), two_orthogonal, two_pairs])  # [3 instances, 2 hidden, 5 features]
    expected = torch.tensor([[0.4] * 5, [1.0, 1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5, 0.0]])
    D = feature_dimensionality(W)
    assert not D.isnan().any()
    assert torch.allclose(D, expected, atol=1e-5)


def test_dimensionality_is_scale_invariant_and_at_most_one():
    W = torch.randn(4, 3, 9, generator=torch.Generator().manual_seed(1))
    D = feature_dimensionality(W)
    assert torch.allclose(feature_dimensionality(7.0 * W), D, atol=1e-5)
    assert ((D > 0) & (D <= 1 + 1e-6)).all()


def test_superposition_score_and_gram():
    W = torch.stack([polygon(5), torch.tensor([[1.0, -1.0, 0, 0, 0], [0, 0, 1.0, 0, 0]])])
    score = superposition_score(W)
    assert torch.allclose(score[1], torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(score[0], torch.full((5,), 1.5), atol=1e-5)  # 5/2 minus the self term 1
    G = gram(W)
    assert torch.allclose(G[1, 0, 1], torch.tensor(-1.0)) and torch.allclose(G.diagonal(dim1=1, dim2=2)[0], torch.ones(5))


# ----- the forward pass and the loss ------------------------------------------------------------------
def test_forward_matches_a_loop_over_instances():
    gen = torch.Generator().manual_seed(2)
    x, W, b = torch.rand(7, 3, 6, generator=gen), torch.randn(3, 2, 6, generator=gen), torch.randn(3, 6, generator=gen)
    out = toy_model_forward(x, W, b)
    for i in range(3):
        expected = torch.relu(x[:, i] @ W[i].T @ W[i] + b[i])  # row vectors: x W^T W
        assert torch.allclose(out[:, i], expected, atol=1e-6)


def test_relu_filters_the_interference_of_an_antipodal_pair():
    W = torch.tensor([[[1.0, -1.0]]])  # features 0 and 1 share one dimension, opposite signs
    b = torch.zeros(1, 2)
    one_active = torch.tensor([[[0.7, 0.0]], [[0.0, 0.4]]])  # [batch 2, inst 1, feat 2]
    assert torch.allclose(toy_model_forward(one_active, W, b), one_active)  # perfect reconstruction
    both = torch.tensor([[[0.7, 0.4]]])
    assert torch.allclose(toy_model_forward(both, W, b), torch.tensor([[[0.3, 0.0]]]))  # interference


def test_importance_weighted_loss_by_hand():
    x = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.0, 0.0]]])  # [batch 2, inst 2, feat 2]
    x_hat = torch.zeros_like(x)
    importance = torch.tensor([2.0, 3.0])
    # instance 0: (2*1 + 3*1) / 2 = 2.5; instance 1: (2*0.25 + 3*0.25) / 2 = 0.625
    assert torch.allclose(importance_weighted_loss(x, x_hat, importance), torch.tensor([2.5, 0.625]))
    per_instance = torch.tensor([[2.0, 3.0], [0.0, 4.0]])  # importance given per instance
    assert torch.allclose(importance_weighted_loss(x, x_hat, per_instance), torch.tensor([2.5, 0.5]))


# ----- the batch generator ------------------------------------------------------------------------
def test_feature_batch_has_the_right_distribution():
    p = torch.tensor([1.0, 0.3, 0.02])
    x = generate_feature_batch(20_000, p, 10, rng=0)
    assert x.shape == (20_000, 3, 10) and x.dtype == torch.float32
    assert ((x >= 0) & (x < 1)).all()
    present = (x > 0).float().mean(dim=(0, 2))
    n = 20_000 * 10
    assert (present - p).abs().max() < 4 * torch.sqrt(p * (1 - p) / n).max() + 1e-4  # binomial, 4 sigma
    assert abs(x[x > 0].mean().item() - 0.5) < 0.01  # present features are U[0, 1)


def test_feature_batch_is_reproducible_and_accepts_a_generator():
    p = torch.tensor([0.5, 0.1])
    a = generate_feature_batch(64, p, 5, rng=123)
    assert torch.equal(a, generate_feature_batch(64, p, 5, rng=123))
    assert torch.equal(a, generate_feature_batch(64, p, 5, rng=torch.Generator().manual_seed(123)))
    assert not torch.equal(a, generate_feature_batch(64, p, 5, rng=124))


def test_feature_batch_with_per_feature_probabilities():
    p = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # [inst, feat]
    x = generate_feature_batch(50, p, 3, rng=1)
    assert (x[:, 0, [0, 2]] > 0).all() and (x[:, 0, 1] == 0).all() and (x[:, 1] == 0).all()


# ----- training: the paper's pictures -----------------------------------------------------------------
@pytest.fixture(scope="module")
def five_in_two():
    """5 features in 2 dimensions, importance 0.9^i: one dense model, one sparse (p = 0.02)."""
    torch.set_num_threads(1)
    model, _ = train_toy_sweep(5, 2, torch.tensor([1.0, 0.02]), 0.9 ** torch.arange(5.0), restarts=3,
                               steps=3000, batch_size=512, lr=1e-2, seed=0)
    return model.W.detach()


def test_dense_features_keep_the_two_most_important_orthogonal(five_in_two):
    W = five_in_two[0]
    norms = W.norm(dim=0)
    assert (norms[:2] > 0.9).all() and (norms[2:] < 0.2).all(), norms
    assert abs(torch.dot(W[:, 0], W[:, 1]).item()) < 0.1


def test_sparse_features_form_a_pentagon(five_in_two):
    W = five_in_two[1]
    norms = W.norm(dim=0)
    assert (norms > 0.8).all() and norms.max() / norms.min() < 1.2, norms  # all five, similar lengths
    angles = torch.atan2(W[1], W[0]).sort().values
    gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi]))
    assert (gaps - 2 * math.pi / 5).abs().max() < 0.2, gaps  # evenly spaced: 72 degrees apart
    assert (feature_dimensionality(W[None]) - 0.4).abs().max() < 0.05


def test_training_is_deterministic_and_lowers_the_loss():
    def run():
        model = ToyModel(6, 2, torch.tensor([0.5, 0.1]), seed=3)
        before = evaluate_toy_model(model)
        result = train_toy_model(model, steps=60, batch_size=64, lr=1e-2, seed=4, log_every=20)
        return model, before, result

    torch.set_num_threads(2)
    m1, before, r1 = run()
    assert torch.get_num_threads() == 2  # training runs on one thread, then restores the setting
    torch.set_num_threads(1)
    m2, _, r2 = run()
    assert torch.equal(m1.W, m2.W) and r1.losses == r2.losses
    assert r1.steps == [0, 20, 40, 59] and len(r1.losses[0]) == 2
    assert (evaluate_toy_model(m1) < before).all()


def test_toy_model_shapes_and_buffers():
    model = ToyModel(7, 3, torch.tensor([1.0, 0.5, 0.1]), importance=0.9 ** torch.arange(7.0))
    assert model.W.shape == (3, 3, 7) and model.b_final.shape == (3, 7)
    assert model.importance.shape == (3, 7) and model.feature_probability.shape == (3, 7)
    assert torch.allclose(model.sparsity, torch.tensor([0.0, 0.5, 0.9]))
    assert model(model.generate_batch(4, 0)).shape == (4, 3, 7)


def test_figures_draw_one_panel_per_instance():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    W = torch.stack([polygon(5), polygon(5, 0.5)])
    fig = plot_features_in_2d(W, 0.9 ** torch.arange(5.0), ["a", "b"])
    assert len(fig.axes) == 2
    fig2 = plot_gram_and_norms(torch.randn(3, 2, 6), ["x", "y", "z"])
    assert len(fig2.axes) == 6
    fig3 = plot_feature_dimensionality(torch.tensor([1.0, 0.1]), W)
    assert len(fig3.axes) == 1
    with pytest.raises(ValueError):
        plot_features_in_2d(torch.randn(2, 3, 5))
    plt.close("all")
