"""Chapter 15's measurements: the power-law fit against hand-computed values and numpy's polyfit, the
closed-form pass counts against passes counted by hooks, and the sweeps' rows. No test looks at seconds."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from tinyinterp import scaling as S


# ----- fit_power_law --------------------------------------------------------------------------------------
def test_fit_power_law_recovers_an_exact_power_law():
    x = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)
    exponent, prefactor = S.fit_power_law(x, 3 * x ** 2)
    assert exponent.ndim == prefactor.ndim == 0 and exponent.dtype == torch.float64
    assert exponent.item() == pytest.approx(2.0) and prefactor.item() == pytest.approx(3.0)


def test_fit_power_law_on_two_points_against_hand_computed_values():
    # through (4, 2) and (64, 16): exponent log(8) / log(16) = 3/4, prefactor 2 / 4^(3/4) = 2^(-1/2)
    exponent, prefactor = S.fit_power_law(torch.tensor([4.0, 64.0]), torch.tensor([2.0, 16.0]))
    assert exponent.dtype == torch.float32
    assert exponent.item() == pytest.approx(0.75, rel=1e-6) and prefactor.item() == pytest.approx(2 ** -0.5, rel=1e-6)


def test_fit_power_law_agrees_with_numpy_polyfit_on_the_logarithms_and_ignores_order():
    gen = torch.Generator().manual_seed(0)
    x = torch.logspace(0, 3, 12, dtype=torch.float64)
    y = 0.4 * x ** 1.3 * torch.exp(0.3 * torch.randn(12, generator=gen, dtype=torch.float64))
    slope, intercept = np.polyfit(np.log(x.numpy()), np.log(y.numpy()), 1)
    exponent, prefactor = S.fit_power_law(x, y)
    assert exponent.item() == pytest.approx(slope, rel=1e-10) and prefactor.item() == pytest.approx(math.exp(intercept))
    perm = torch.randperm(12, generator=gen)
    assert S.fit_power_law(x[perm], y[perm])[0].item() == pytest.approx(slope, rel=1e-10)
    assert S.fit_power_law(x.tolist(), y.tolist())[0].item() == pytest.approx(slope, rel=1e-10)


@pytest.mark.parametrize("x,y,match", [
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]), "positive"),
    (torch.tensor([-1.0, 2.0]), torch.tensor([1.0, 2.0]), "positive"),
    (torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]), "positive, finite"),
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0]), "one length"),
    (torch.tensor([2.0]), torch.tensor([3.0]), "at least 2"),
    (torch.ones(2, 2), torch.ones(2, 2), "1-D"),
    (torch.tensor([3.0, 3.0, 3.0]), torch.tensor([1.0, 2.0, 3.0]), "every x is the same"),
])
def test_fit_power_law_refuses_what_has_no_power_law_with_a_clear_message(x, y, match):
    with pytest.raises(ValueError, match=match):
        S.fit_power_law(x, y)


@pytest.mark.parametrize("x,y,match", [
    (None, torch.tensor([1.0, 2.0]), "x must be a 1-D tensor"),
    (torch.tensor([1.0, 2.0]), None, "y must be a 1-D tensor"),
    (3.0, torch.tensor([1.0, 2.0]), "got float"),
    ("12", torch.tensor([1.0, 2.0]), "got str"),
    ([1.0, "a"], [1.0, 2.0], "x must be a 1-D tensor"),
    (torch.tensor([1.0, 2.0], dtype=torch.complex64), torch.tensor([1.0, 2.0]), "complex64"),
    ([1 + 1j, 2.0], [1.0, 2.0], "complex numbers"),
    (torch.tensor([1.0, 2.0]), torch.tensor([True, True]), "torch.bool"),
])
def test_fit_power_law_refuses_what_is_not_real_numbers_with_a_type_error(x, y, match):
    with pytest.raises(TypeError, match=match):
        S.fit_power_law(x, y)


def test_fit_power_law_answers_in_the_dtype_of_x_and_reads_ints_and_numpy_as_float64():
    x32, y64 = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([3.0, 12.0, 48.0], dtype=torch.float64)
    assert {t.dtype for t in S.fit_power_law(x32, y64)} == {torch.float32}
    assert {t.dtype for t in S.fit_power_law(y64, x32)} == {torch.float64}
    for x in (torch.tensor([1, 2, 4]), np.array([1, 2, 4])):
        exponent, prefactor = S.fit_power_law(x, np.array([3.0, 12.0, 48.0]))
        assert exponent.dtype == torch.float64 and (exponent.item(), prefactor.item()) == pytest.approx((2.0, 3.0))


# ----- pass counts: closed form against hooks -------------------------------------------------------------
def test_pass_counts_in_closed_form_match_the_passes_counted_by_hooks():
    sizes = [(1, 16, 3), (2, 24, 4), (3, 8, 5)]  # (n_layers, d_model, n_pos): 2, 3 and 1 heads
    rows = S.patching_sweep(sizes, batch=2)
    assert len(rows) == len(sizes) * len(S.PATCHING_METHODS)
    for row in rows:
        counted = (row["forward"], row["backward"])
        assert counted == S.patching_pass_count(row["n_layers"], row["n_heads"], row["n_pos"], row["method"]), row
    by = {(r["method"], r["n_layers"]): r for r in rows}
    assert (by["patch head by pos", 2]["forward"], by["patch resid", 3]["forward"]) == (2 * 3 * 4 + 2, 3 * 5 + 2)
    assert by["patch heads", 1]["n_patches"] == 2 and by["patch head by pos", 2]["n_patches"] == 24
    assert all(r["seconds"] > 0 and r["n_params"] > 0 for r in rows)


def test_pass_count_of_a_frontier_sized_model_and_bad_input():
    f = S.FRONTIER
    assert S.patching_pass_count(f["n_layers"], f["n_heads"], f["n_pos"], "patch head by pos") == (80 * 64 * 512 + 2, 0)
    assert S.patching_pass_count(80, 64, 512, "attribution") == (3, 1)
    assert S.frontier_patches(80, 64, 512) == {"patch heads": 5120, "patch head by pos": 2621440, "patch resid": 40960}
    for args, match in [((0, 2, 3, "patch heads"), "ints >= 1"), ((2, 2.0, 3, "patch heads"), "ints >= 1"),
                        ((2, True, 3, "patch heads"), "ints >= 1"), ((2, 2, 3, "patch everything"), "one of")]:
        with pytest.raises(ValueError, match=match):
            S.patching_pass_count(*args)


@pytest.mark.parametrize("kwargs,match", [
    ({"sizes": []}, "non-empty"), ({"sizes": [(1, 16)]}, "tuples"), ({"sizes": [(1, 12, 4)]}, "multiple of 8"),
    ({"sizes": [(1, 16, 1)]}, "n_pos at least 2"), ({"sizes": 3}, "non-empty"),
    ({"sizes": [(1, 16, 4)], "methods": ["patch all"]}, "methods must be among"),
    ({"sizes": [(1, 16, 4)], "methods": []}, "methods must be among"),
    ({"sizes": [(1, 16, 4)], "threads": 0}, "threads must be an int >= 1"),
])
def test_patching_sweep_refuses_bad_settings_with_a_clear_message(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.patching_sweep(**kwargs)


# ----- SAEs -----------------------------------------------------------------------------------------------
def test_sae_sweep_counts_one_forward_and_one_backward_pass_per_step():
    rows = S.sae_sweep([8, 16], expansion=4, steps=5, batch_size=32)
    assert [(r["d_in"], r["d_sae"], r["forward"], r["backward"]) for r in rows] == [(8, 32, 5, 5), (16, 64, 5, 5)]
    assert [r["n_params"] for r in rows] == [S.sae_param_count(8, 32), S.sae_param_count(16, 64)] == [552, 2128]
    with pytest.raises(ValueError, match="non-empty list of widths"):
        S.sae_sweep([])
    with pytest.raises(ValueError, match="ints expansion"):
        S.sae_sweep([8], steps=0)
    with pytest.raises(ValueError, match="threads must be"):
        S.sae_sweep([8], threads=1.5)


# ----- fitting rows, extrapolating --------------------------------------------------------------------------
def _rows(patches=(4, 16, 64, 256)):
    return [{"method": m, "n_patches": n, "forward": n + 2 if m == "patch" else 3, "backward": 0 if m == "patch" else 1}
            for n in patches for m in ("patch", "attribution")]


def test_exponents_of_pass_counts_are_about_one_for_patching_and_zero_for_attribution():
    fits = S.exponents(_rows(), "n_patches", "passes")
    assert fits["attribution"] == pytest.approx((0.0, 4.0))
    assert 0.9 < fits["patch"][0] < 1.0  # n + 2: a little below 1 while n is small
    exact = S.exponents([{"n": n, "cost": 5 * n ** 2} for n in (1, 3, 9)], "n", "cost", by=None)
    assert exact["all"] == pytest.approx((2.0, 5.0))
    with pytest.raises(ValueError, match="fewer than two distinct"):
        S.exponents(_rows(patches=(4,)), "n_patches", "passes")
    with pytest.raises(ValueError, match="each row needs"):
        S.exponents([{"method": "patch"}], "n_patches", "passes")
    with pytest.raises(ValueError, match="no rows to fit"):
        S.exponents([], "n_patches", "passes")
    with pytest.raises(TypeError, match="rows must be a list of dicts"):
        S.exponents(None, "n_patches", "passes")


def test_extrapolating_a_fit_of_n_plus_2_misses_the_exact_count_far_away():
    fit = S.exponents(_rows(), "n_patches", "passes")["patch"]
    assert S.extrapolate((2.0, 3.0), 10) == pytest.approx(300.0)
    far = S.frontier_patches(**{k: S.FRONTIER[k] for k in ("n_layers", "n_heads", "n_pos")})["patch head by pos"]
    ratio = S.extrapolate(fit, far) / (far + 2)
    assert 0.2 < ratio < 0.95, ratio  # a fitted exponent below 1 underestimates, more the further it goes
    for bad in (0, -1.0, float("inf"), torch.tensor(-2.0)):
        with pytest.raises(ValueError, match="positive finite"):
            S.extrapolate(fit, bad)


def test_extrapolate_reads_numpy_and_0_dim_tensors_and_refuses_bad_fits_and_overflow():
    expected = 3.0 * 10 ** 2
    for fit, x in [((2.0, 3.0), np.int64(10)), ((torch.tensor(2.0), torch.tensor(3.0)), torch.tensor(10)),
                   ([np.float32(2.0), 3], 10.0), (S.fit_power_law(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 12.0])), 10)]:
        assert S.extrapolate(fit, x) == pytest.approx(expected, rel=1e-6)
    for fit, x, error, match in [((2.0,), 10, ValueError, "a pair"), ((2.0, 3.0, 1.0), 10, ValueError, "a pair"),
                                 (None, 10, ValueError, "a pair"), ("ab", 10, ValueError, "a pair"),
                                 (("2", 3.0), 10, TypeError, "exponent must be a real number"),
                                 ((2.0, None), 10, TypeError, "prefactor must be a real number"),
                                 ((2.0, float("nan")), 10, ValueError, "must be finite"),
                                 ((2.0, 3.0), "10", TypeError, "x must be a real number"),
                                 ((2.0, 3.0), True, TypeError, "x must be a real number"),
                                 ((2.0, 3.0), torch.ones(2), TypeError, "shape"),
                                 ((400.0, 3.0), 10.0, OverflowError, "too large"),
                                 ((1.0, 1e308), 1e10, OverflowError, "too large")]:
        with pytest.raises(error, match=match):
            S.extrapolate(fit, x)


def test_size_helpers_refuse_what_is_not_a_positive_int():
    assert S.sae_param_count(8, 32) == 2 * 8 * 32 + 8 + 32
    for args in ((0, 32), (8, 32.0), (8, None), (True, 4)):
        with pytest.raises(ValueError, match="d_in, d_sae must be ints >= 1"):
            S.sae_param_count(*args)
    with pytest.raises(ValueError, match="n_layers, n_heads, n_pos must be ints >= 1"):
        S.frontier_patches(80, -1, 512)


def test_plot_scaling_draws_log_log_panels():
    rows = [dict(r, n_params=100 * r["n_patches"], seconds_per_pass=1e-3) for r in _rows()]
    for r in rows:
        r["method"] = "patch heads" if r["method"] == "patch" else r["method"]
    sae_rows = [{"n_params": 10, "seconds_per_step": 1e-3}, {"n_params": 40, "seconds_per_step": 2e-3}]
    fig = S.plot_scaling(rows, sae_rows)
    assert len(fig.axes) == 3 and all(ax.get_xscale() == ax.get_yscale() == "log" for ax in fig.axes)
    assert fig.get_figwidth() <= 7 and all(ax.get_legend().get_texts()[0].get_fontsize() >= 9 for ax in fig.axes)
    assert [list(line.get_ydata()) for line in fig.axes[0].lines] == [[6, 18, 66, 258], [4, 4, 4, 4]]
    assert len(S.plot_scaling(rows).axes) == 2
    with pytest.raises(ValueError, match="no rows"):
        S.plot_scaling([])
    with pytest.raises(ValueError, match=r"missing \['method'\]"):
        S.plot_scaling([{k: v for k, v in rows[0].items() if k != "method"}])
    with pytest.raises(ValueError, match=r"missing \['seconds_per_step'\]"):
        S.plot_scaling(rows, [{"n_params": 10}])
    _, two = plt.subplots(1, 2)
    with pytest.raises(ValueError, match="need 3 axes"):
        S.plot_scaling(rows, sae_rows, axes=two)
    plt.close("all")
