"""tinyinterp.posthoc against answers computed independently: closed-form integrals and gradients, the
permutation definition of the Shapley value, a textbook game, the axioms, weighted least squares, and two
oracles from the dev extra (captum's IntegratedGradients, shap's KernelExplainer)."""

import itertools
import math

import pytest
import torch

from tinyinterp import reviews as R
from tinyinterp.posthoc import (
    MAX_PLAYERS, METHODS, gradient_times_input, integrated_gradients, kernel_shap, lime, lime_surrogate, saliency,
    shapley_values, token_attributions,
)


# ----- integrated gradients -------------------------------------------------------------------------------
def test_ig_is_exact_for_an_affine_function_with_any_number_of_steps():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    x, b = (torch.randn(5, 3, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    f = lambda batch: (batch * w).sum((1, 2)) + 2.5  # noqa: E731
    for steps in (1, 7, 64):
        torch.testing.assert_close(integrated_gradients(f, x, b, steps), w * (x - b))


def test_ig_of_a_sum_of_squares_is_the_difference_of_squares():
    """f(x) = sum x_i^2: the gradient along the path is linear in alpha, so IG_i = x_i^2 - b_i^2 exactly."""
    gen = torch.Generator().manual_seed(1)
    x, b = (torch.randn(3, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(integrated_gradients(lambda t: (t ** 2).sum(1), x, b, steps=3), x ** 2 - b ** 2)


def test_ig_of_a_product_from_zero_splits_it_evenly():
    x = torch.tensor([[3.0, -2.0], [1.0, 4.0]], dtype=torch.float64)
    got = integrated_gradients(lambda t: t[:, 0] * t[:, 1], x, torch.zeros_like(x), steps=5)
    torch.testing.assert_close(got, torch.tensor([[-3.0, -3.0], [2.0, 2.0]], dtype=torch.float64))


def test_ig_completeness_gap_shrinks_with_steps_on_a_nonlinear_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    f = lambda t: net(t).squeeze(-1)  # noqa: E731
    x, b = torch.randn(4, 6, dtype=torch.float64), torch.zeros(4, 6, dtype=torch.float64)
    with torch.no_grad():
        total = f(x) - f(b)  # [batch]
    gaps = [(integrated_gradients(f, x, b, steps).sum(1) - total).abs().max().item() for steps in (4, 16, 64)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3 * max(1.0, total.abs().max().item()), gaps
    assert not any(p.grad is not None for p in net.parameters()), "IG must not leave gradients on the model"


def test_ig_of_a_constant_is_zero_and_bad_input_is_refused():
    x, zero = torch.ones(2, 3), torch.zeros(2, 3)
    torch.testing.assert_close(integrated_gradients(lambda t: torch.zeros(len(t)), x, zero), zero)
    with pytest.raises(ValueError, match="baseline must have x's shape"):
        integrated_gradients(lambda t: t.sum(1), x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"f must map \[batch, \*shape\] to \[batch\]"):
        integrated_gradients(lambda t: t.sum(), x, zero)
    with pytest.raises(ValueError, match="batch >= 1"):
        integrated_gradients(lambda t: t.sum(1), torch.ones(0, 3), torch.zeros(0, 3))
    for steps in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps must be a positive int"):
            integrated_gradients(lambda t: t.sum(1), x, zero, steps)
    with pytest.raises(TypeError, match="floating-point"):
        integrated_gradients(lambda t: t.sum(1), torch.ones(2, 3, dtype=torch.long), zero)
    with pytest.raises(TypeError, match="callable"):
        integrated_gradients("f", x, zero)


# ----- Shapley values -----------------------------------------------------------------------------------------
def _by_permutations(value, n):
    """The definition: each player's marginal contribution averaged over all n! orders of arrival."""
    phi = [0.0] * n
    for order in itertools.permutations(range(n)):
        mask = torch.zeros(n, dtype=torch.bool)
        for i in order:
            before = value(mask.clone())
            mask[i] = True
            phi[i] += value(mask.clone()) - before
    return torch.tensor(phi, dtype=torch.float64) / math.factorial(n)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shapley_values_match_the_permutation_definition_on_random_games(n):
    table = torch.randn(2 ** n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    value = lambda mask: table[int((mask.long() << torch.arange(n)).sum())].item()  # noqa: E731
    torch.testing.assert_close(shapley_values(value, n), _by_permutations(value, n))


def test_the_glove_game():
    """One left glove (player 0), two right gloves: a pair is worth 1. Textbook answer (2/3, 1/6, 1/6)."""
    value = lambda m: float(bool(m[0]) and bool(m[1] or m[2]))  # noqa: E731
    torch.testing.assert_close(shapley_values(value, 3), torch.tensor([2 / 3, 1 / 6, 1 / 6], dtype=torch.float64))


def test_the_axioms_efficiency_symmetry_dummy_additivity():
    n = 4
    weights = torch.tensor([1.0, 2.0, 2.0, 0.0])
    v = lambda m: float((weights * m).sum() ** 2)  # players 1 and 2 symmetric, player 3 a dummy  # noqa: E731
    u = lambda m: float(m[0] and m[3]) - 0.5 * float(m[1])  # noqa: E731
    phi_v, phi_u = shapley_values(v, n), shapley_values(u, n)
    full, empty = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    assert phi_v.sum().item() == pytest.approx(v(full) - v(empty))
    assert phi_v[1].item() == pytest.approx(phi_v[2].item()) and phi_v[3].item() == 0.0
    torch.testing.assert_close(shapley_values(lambda m: v(m) + u(m), n), phi_v + phi_u)


def test_shapley_refuses_what_it_cannot_enumerate_or_score():
    for n in (0, MAX_PLAYERS + 1, 2.0, True):
        with pytest.raises(ValueError, match="n_players must be an int"):
            shapley_values(lambda m: 0.0, n)
    with pytest.raises(ValueError, match="returned nan"):
        shapley_values(lambda m: float("nan") if m.all() else 0.0, 3)
    with pytest.raises(TypeError, match="callable"):
        shapley_values(None, 3)
    calls = []
    shapley_values(lambda m: calls.append(m.clone()) or 0.0, 4)
    assert len(calls) == 16 and len({tuple(m.tolist()) for m in calls}) == 16


def test_ig_rows_are_independent_a_batch_equals_its_rows_one_at_a_time():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.GELU(), torch.nn.Linear(8, 1)).double()
    f = lambda t: net(t).squeeze(-1)  # noqa: E731
    x, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    rows = torch.cat([integrated_gradients(f, x[i : i + 1], b[i : i + 1], steps=16) for i in range(4)])
    torch.testing.assert_close(integrated_gradients(f, x, b, steps=16), rows)


# ----- saliency and gradient x input ------------------------------------------------------------------------------
def test_saliency_is_the_gradient_and_gradient_times_input_its_product_with_x():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)
    f = lambda t: (t * w).sum((1, 2)) + (t ** 3).sum((1, 2))  # noqa: E731
    torch.testing.assert_close(saliency(f, x), w.expand_as(x) + 3 * x ** 2)
    torch.testing.assert_close(gradient_times_input(f, x), x * (w + 3 * x ** 2))
    lin = lambda t: (t * w).sum((1, 2))  # noqa: E731  (linear, no bias: grad x input is exact, as IG from 0)
    torch.testing.assert_close(gradient_times_input(lin, x), integrated_gradients(lin, x, torch.zeros_like(x), 1))


def test_saliency_refuses_bad_input_and_is_zero_for_a_constant():
    x = torch.ones(2, 3)
    torch.testing.assert_close(saliency(lambda t: torch.zeros(len(t)), x), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"f must map \[batch, \*shape\] to \[batch\]"):
        saliency(lambda t: t, x)
    with pytest.raises(TypeError, match="floating-point"):
        gradient_times_input(lambda t: t.sum(1), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="callable"):
        saliency(3, x)
    with pytest.raises(ValueError, match="batch >= 1"):
        saliency(lambda t: t.sum(1), torch.ones(0, 3))


# ----- LIME ---------------------------------------------------------------------------------------------------------
def _batched(value):
    return lambda masks: torch.tensor([value(m) for m in masks], dtype=torch.float64)


def test_lime_recovers_the_weights_of_a_linear_value_function():
    """On v(S) = c + sum_{i in S} w_i the surrogate is exact whatever the kernel and the samples."""
    w = torch.tensor([2.0, -1.0, 0.0, 0.5, 3.0], dtype=torch.float64)
    value_fn = lambda masks: 0.7 + masks.double() @ w  # noqa: E731
    for kernel_width, seed in ((0.25, 0), (1.0, 3)):
        torch.testing.assert_close(lime(value_fn, 5, 200, kernel_width, seed), w, atol=1e-4, rtol=0)


def test_lime_fit_is_weighted_least_squares_with_an_intercept():
    gen = torch.Generator().manual_seed(4)
    masks = torch.rand(40, 4, generator=gen) < 0.6
    y = torch.randn(40, generator=gen, dtype=torch.float64)
    k = torch.exp(-((1 - masks.double().mean(1)) ** 2) / 0.5 ** 2)  # exponential kernel, width 0.5
    z = torch.cat([torch.ones(40, 1, dtype=torch.float64), masks.double()], 1) * k.sqrt()[:, None]
    expected = torch.linalg.lstsq(z, y * k.sqrt()).solution[1:]  # minimise sum k (y - b - z w)^2
    torch.testing.assert_close(lime_surrogate(masks, y, kernel_width=0.5, ridge=1e-12), expected)
    unweighted = lime_surrogate(masks, y, kernel_width=1e6)  # a huge width = equal weights
    assert (unweighted - expected).abs().max() > 1e-2, "the kernel weights must change the fit"


def test_lime_is_deterministic_in_its_seed_and_refuses_bad_input():
    value_fn = _batched(lambda m: float(m[0] and m[1]) + 0.3 * float(m[2]))
    torch.testing.assert_close(lime(value_fn, 4, 100, seed=1), lime(value_fn, 4, 100, seed=1))
    assert not torch.equal(lime(value_fn, 4, 100, seed=1), lime(value_fn, 4, 100, seed=2))
    for n in (0, 2.0, True):
        with pytest.raises(ValueError, match="n_features must be a positive int"):
            lime(value_fn, n)
    with pytest.raises(ValueError, match="n_samples must be an int >= 2"):
        lime(value_fn, 4, n_samples=1)
    with pytest.raises(ValueError, match="kernel_width must be a finite number > 0"):
        lime(value_fn, 4, kernel_width=0.0)
    with pytest.raises(ValueError, match=r"to \[n_samples\]"):
        lime(lambda masks: masks.double(), 4)
    with pytest.raises(ValueError, match="non-finite"):
        lime(lambda masks: torch.full((len(masks),), float("inf")), 4)
    with pytest.raises(TypeError, match="masks must be a bool tensor"):
        lime_surrogate(torch.ones(3, 2), torch.zeros(3))


# ----- KernelSHAP ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 6])
def test_kernel_shap_with_every_coalition_is_the_exact_shapley_value(n):
    table = torch.randn(2 ** n, generator=torch.Generator().manual_seed(10 + n), dtype=torch.float64)
    value = lambda mask: table[int((mask.long() << torch.arange(n)).sum())].item()  # noqa: E731
    torch.testing.assert_close(kernel_shap(_batched(value), n, n_samples=2 ** n - 2), shapley_values(value, n))


def test_sampled_kernel_shap_keeps_efficiency_is_exact_when_additive_and_close_otherwise():
    n = 10
    w = torch.linspace(-1, 2, n, dtype=torch.float64)
    additive = lambda masks: 1.5 + masks.double() @ w  # noqa: E731
    torch.testing.assert_close(kernel_shap(additive, n, n_samples=200), w)
    def game(masks):
        return additive(masks) + 2.0 * (masks[:, 0] & masks[:, 1]).double() - masks[:, 2:5].all(1).double()
    exact = kernel_shap(game, n, n_samples=2 ** n)
    sampled = kernel_shap(game, n, n_samples=400, seed=0)
    full, empty = torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.bool)
    assert sampled.sum().item() == pytest.approx((game(full) - game(empty)).item())
    assert (sampled - exact).abs().max() < 0.1, (sampled - exact).abs().max()
    exact_expected = w.clone()
    exact_expected[:2] += 1.0
    exact_expected[2:5] -= 1 / 3
    torch.testing.assert_close(exact, exact_expected)


def test_kernel_shap_refuses_bad_input():
    with pytest.raises(ValueError, match="n_players must be a positive int"):
        kernel_shap(lambda m: m.double().sum(1), 0)
    with pytest.raises(ValueError, match="n_samples must be an int >= 2"):
        kernel_shap(lambda m: m.double().sum(1), 3, n_samples=0)
    with pytest.raises(ValueError, match=r"to \[n_samples\]"):
        kernel_shap(lambda m: m.double().sum(), 3)
    with pytest.raises(TypeError, match="callable"):
        kernel_shap("v", 3)
    one_player = kernel_shap(lambda m: 2.0 * m.double().sum(1), 1)
    torch.testing.assert_close(one_player, torch.tensor([2.0], dtype=torch.float64))


# ----- oracles: captum and shap --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def review():
    model, _ = R.review_model()
    return model.double(), R.generate_reviews(3, seed=11)


def test_ig_matches_captum_on_a_small_mlp():
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 1)).double()
    f = lambda t: net(t).squeeze(-1)  # noqa: E731
    x, b = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    oracle = captum_attr.IntegratedGradients(f).attribute(x, baselines=b, n_steps=20, method="riemann_middle")
    torch.testing.assert_close(integrated_gradients(f, x, b, steps=20), oracle)


def test_ig_matches_captum_on_the_review_classifiers_embeddings(review):
    captum_attr = pytest.importorskip("captum.attr")
    model, data = review
    f = lambda e: R.score_of_embeddings(model, e)  # noqa: E731
    x = model.embed(data.tokens).detach()
    b = model.embed(torch.full_like(data.tokens, R.TOKEN[R.PAD])).detach()
    oracle = captum_attr.IntegratedGradients(f).attribute(x, baselines=b, n_steps=16, method="riemann_middle")
    torch.testing.assert_close(integrated_gradients(f, x, b, steps=16), oracle)


def test_exact_and_kernel_shap_match_shap_kernel_explainer():
    """The game v(S) = g(1_S) explained at x = all ones against the background all zeros: shap's KernelExplainer
    enumerates every coalition when nsamples allows, so it returns the exact Shapley values of v."""
    shap = pytest.importorskip("shap")
    np = pytest.importorskip("numpy")
    n = 5
    table = torch.randn(2 ** n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    codes = lambda z: (torch.as_tensor(np.asarray(z)).round().long() << torch.arange(n)).sum(-1)  # noqa: E731
    g = lambda z: table[codes(z)].numpy()  # noqa: E731
    explainer = shap.KernelExplainer(g, np.zeros((1, n)))
    oracle = torch.as_tensor(np.asarray(explainer.shap_values(np.ones((1, n)), nsamples=2 ** n, silent=True))).flatten()
    value = lambda mask: table[codes(mask.double().numpy())].item()  # noqa: E731
    torch.testing.assert_close(shapley_values(value, n), oracle.double())
    torch.testing.assert_close(kernel_shap(lambda masks: table[codes(masks.double().numpy())], n), oracle.double())


# ----- token_attributions on the review classifier --------------------------------------------------------------------
def test_token_attributions_completeness_and_exact_shap_on_reviews(review):
    model, data = review
    is_word = (data.tokens != R.TOKEN[R.PAD]) & (data.tokens != R.TOKEN[R.CLS])
    with torch.no_grad():
        gap = R.score(model, data.tokens) - R.score(model, torch.where(is_word, R.TOKEN[R.PAD], data.tokens))
    ig = token_attributions(model, data.tokens, "integrated_gradients", steps=64)
    torch.testing.assert_close(ig.sum(1), gap, atol=0.05 * gap.abs().max().item() + 1e-3, rtol=0)
    shap_values = token_attributions(model, data.tokens[:1], "shap")
    torch.testing.assert_close(shap_values.sum(1), gap[:1], rtol=1e-6, atol=1e-6)  # efficiency
    for method in METHODS:
        attr = token_attributions(model, data.tokens, method, **({"n_samples": 64} if method == "lime" else {}))
        assert attr.shape == data.tokens.shape
        if method != "attention":
            assert (attr[~is_word] == 0).all(), method
    pattern = token_attributions(model, data.tokens, "attention")
    torch.testing.assert_close(pattern.sum(1), torch.ones(len(data.tokens), dtype=pattern.dtype))
    with pytest.raises(ValueError, match="method must be one of"):
        token_attributions(model, data.tokens, "grad")
    with pytest.raises(TypeError, match="keyword arguments"):
        token_attributions(model, data.tokens, "saliency", steps=3)


def test_token_saliency_is_the_gradient_norm_and_grad_x_input_the_signed_sum(review):
    """Per token: saliency = |d score / d embedding| (L2 over d_model, unsigned, so invariant to a rotation of
    the embedding basis); gradient x input = sum over d_model of embedding * gradient (signed)."""
    model, data = review
    is_word = (data.tokens != R.TOKEN[R.PAD]) & (data.tokens != R.TOKEN[R.CLS])
    embed = model.embed(data.tokens).detach()
    grad = saliency(lambda e: R.score_of_embeddings(model, e), embed)
    sal = token_attributions(model, data.tokens, "saliency")
    torch.testing.assert_close(sal, grad.norm(dim=-1) * is_word)
    assert (sal >= 0).all() and (sal[is_word] > 0).all()
    gxi = token_attributions(model, data.tokens, "gradient_times_input")
    torch.testing.assert_close(gxi, (grad * embed).sum(-1) * is_word)
    assert (gxi[is_word] < 0).any() and (gxi[is_word] > 0).any(), "gradient x input keeps its sign"
