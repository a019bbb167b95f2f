"""tinyinterp.posthoc against answers computed independently: closed-form integrals, the permutation
definition of the Shapley value, a textbook game, and the axioms."""

import itertools
import math

import pytest
import torch

from tinyinterp.posthoc import MAX_PLAYERS, integrated_gradients, shapley_values


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
