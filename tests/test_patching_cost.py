"""Agreement and cost measurements for chapter 10: the Pearson correlation against hand-computed values,
pass counts against what the patching functions must do, and the figures' contents."""

import math

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from tinyinterp import patching as P
from tinyinterp import patching_cost as C


# ----- agreement --------------------------------------------------------------------------------------------
def test_pearson_correlation_against_hand_computed_values():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert C.pearson_correlation(x, 3 * x - 7).item() == pytest.approx(1.0)
    assert C.pearson_correlation(x, -x).item() == pytest.approx(-1.0)
    # centred: x -> [-1.5, -0.5, 0.5, 1.5], y = [1, 0, 0, 1] -> [0.5, -0.5, -0.5, 0.5]: dot 0 -> r = 0
    assert C.pearson_correlation(x, torch.tensor([1.0, 0.0, 0.0, 1.0])).item() == pytest.approx(0.0, abs=1e-7)
    # y = [1, 2, 3, 5]: centred [-1.75, -0.75, 0.25, 2.25]; dot 6.5; |x| sqrt(5), |y| sqrt(8.75)
    y = torch.tensor([1.0, 2.0, 3.0, 5.0])
    assert C.pearson_correlation(x, y).item() == pytest.approx(6.5 / math.sqrt(5 * 8.75))
    # tables are flattened, and an offset shared by both does not count (unlike the cosine similarity)
    a, b = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), torch.randn(3, 4)
    assert C.pearson_correlation(a + 100, b - 5).item() == pytest.approx(C.pearson_correlation(a, b).item(), abs=1e-4)


def test_pearson_correlation_refuses_what_has_no_correlation():
    with pytest.raises(ValueError, match="constant"):
        C.pearson_correlation(torch.ones(5), torch.arange(5.0))
    with pytest.raises(ValueError, match="same shape"):
        C.pearson_correlation(torch.ones(5), torch.ones(4))
    with pytest.raises(ValueError, match="same shape"):
        C.pearson_correlation(torch.ones(1), torch.ones(1))


def test_pearson_correlation_casts_integers_and_mixed_dtypes_to_one_float_dtype():
    x, y = torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 5])
    r = C.pearson_correlation(x, y)
    assert r.dtype == torch.float32 and r.ndim == 0 and r.item() == pytest.approx(6.5 / math.sqrt(5 * 8.75))
    mixed = C.pearson_correlation(x.float(), y.double())
    assert mixed.dtype == torch.float64 and mixed.item() == pytest.approx(r.item())
    assert C.pearson_correlation(torch.tensor([True, False, True]), torch.tensor([1.0, 0.0, 2.0])).item() > 0.8


@pytest.mark.parametrize("x,y,match", [
    (torch.tensor([1.0, float("nan"), 3.0]), torch.tensor([1.0, 2.0, 3.0]), "x has NaN or infinite"),
    (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, float("inf"), 3.0]), "y has NaN or infinite"),
    (torch.ones(2, 3), torch.ones(3, 2), "same shape"),
    (torch.tensor(1.0), torch.tensor(2.0), "at least 2 entries"),
    (torch.ones(0), torch.ones(0), "at least 2 entries"),
    ([1.0, 2.0], torch.tensor([1.0, 2.0]), "must be tensors"),
    (torch.tensor([1 + 1j, 2j]), torch.tensor([1.0, 2.0]), "real"),
])
def test_pearson_correlation_refuses_bad_input_with_a_clear_message(x, y, match):
    with pytest.raises(ValueError, match=match):
        C.pearson_correlation(x, y)


def test_agreement_reports_correlation_and_largest_error():
    real, est = torch.tensor([[0.0, 1.0], [0.5, -0.2]]), torch.tensor([[0.1, 0.9], [0.5, -0.6]])
    out = C.agreement(real, est)
    assert out["n"] == 4 and out["max_abs_error"] == pytest.approx(0.4)
    assert out["pearson"] == pytest.approx(C.pearson_correlation(real, est).item(), abs=1e-4)


# ----- counting passes and measuring cost ---------------------------------------------------------------------
def test_count_passes_counts_forward_and_backward_and_leaves_no_hook():
    model, task = C.random_patching_setup(n_layers=2, n_heads=3, n_pos=6, batch=2)
    with C.count_passes(model) as count:
        with torch.no_grad():
            model(task.clean)
            model(task.corrupted)
    assert (count.forward, count.backward) == (2, 0)
    with C.count_passes(model) as count:
        P.patch_head_outputs(model, task.clean, task.corrupted, task.metric)
    assert (count.forward, count.backward) == (2 * 3 + 2, 0)  # one per head, plus the two references
    with C.count_passes(model) as count:
        P.attribution_patch_resid_by_layer_pos(model, task.clean, task.corrupted, task.metric)
    assert (count.forward, count.backward) == (3, 1)
    model(task.clean)
    assert count.forward == 3, "the counting hooks must be gone after the context"
    assert all(not hp._hook_fns for hp in model.hook_dict.values())


def test_random_patching_setup_changes_only_the_first_half():
    model, task = C.random_patching_setup(n_layers=3, n_heads=2, n_pos=10, batch=4, d_head=5)
    assert model.cfg.d_model == 10 and task.clean.shape == task.corrupted.shape == (4, 10)
    assert torch.equal(task.clean[:, 5:], task.corrupted[:, 5:]) and not torch.equal(task.clean, task.corrupted)
    assert task.answer.shape == task.wrong.shape == (4,)
    with pytest.raises(ValueError):
        C.random_patching_setup(n_layers=0, n_heads=2, n_pos=10)


def test_measure_cost_counts_patches_and_passes_and_restores_threads():
    model, task = C.random_patching_setup(n_layers=2, n_heads=2, n_pos=5, batch=2)
    threads = torch.get_num_threads()
    rows = {r["method"]: r for r in C.measure_cost(model, task, repeats=2, threads=1)}
    assert torch.get_num_threads() == threads
    assert rows["patch heads"]["n_patches"] == 4 and rows["patch resid"]["n_patches"] == 10
    assert (rows["patch heads"]["forward"], rows["patch resid"]["forward"]) == (6, 12)
    for name in ("attribution heads", "attribution resid"):
        assert (rows[name]["forward"], rows[name]["backward"]) == (3, 1)
    assert all(r["seconds"] > 0 for r in rows.values())
    with pytest.raises(ValueError, match="methods"):
        C.measure_cost(model, task, methods=["patch everything"])
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        C.measure_cost(model, task, repeats=0)


def test_measure_cost_takes_one_method_name_as_one_method():
    model, task = C.random_patching_setup(n_layers=1, n_heads=2, n_pos=4, batch=2)
    rows = C.measure_cost(model, task, methods="attribution heads")
    assert [r["method"] for r in rows] == ["attribution heads"] and (rows[0]["forward"], rows[0]["backward"]) == (3, 1)


@pytest.mark.parametrize("kwargs,match", [
    ({"threads": 0}, "threads must be an int >= 1"), ({"threads": 1.5}, "threads must be"),
    ({"repeats": 2.0}, "repeats must be"), ({"methods": []}, "methods must be among"),
    ({"methods": "patch"}, "methods must be among"), ({"methods": 3}, "methods must be a list"),
])
def test_measure_cost_and_cost_sweep_refuse_bad_settings_with_a_clear_message(kwargs, match):
    model, task = C.random_patching_setup(n_layers=1, n_heads=2, n_pos=4, batch=2)
    with pytest.raises(ValueError, match=match):
        C.measure_cost(model, task, **kwargs)
    with pytest.raises(ValueError, match=match):
        C.cost_sweep([(1, 2, 4)], **kwargs)


@pytest.mark.parametrize("sizes,match", [
    ([(1, 1)], "three ints"), ([(1, 2, 4.0)], "three ints"), ([], "non-empty"), (5, "non-empty"),
    ([(1, 2, 1)], "n_pos"), ([(0, 2, 4)], "n_layers"),
])
def test_cost_sweep_refuses_sizes_that_are_not_n_layers_n_heads_pos(sizes, match):
    with pytest.raises(ValueError, match=match):
        C.cost_sweep(sizes)


def test_cost_sweep_covers_every_size_and_method():
    rows = C.cost_sweep([(1, 2, 4), (2, 2, 6)], batch=2, methods=["patch resid", "attribution resid"])
    assert [(r["n_layers"], r["pos"], r["method"]) for r in rows] == [
        (1, 4, "patch resid"), (1, 4, "attribution resid"), (2, 6, "patch resid"), (2, 6, "attribution resid")]
    assert [r["forward"] for r in rows] == [4 + 2, 3, 12 + 2, 3]


# ----- figures -------------------------------------------------------------------------------------------------
def test_plot_agreement_draws_the_diagonal_and_names_the_correlation():
    real, est = torch.tensor([0.0, 0.5, 1.0, -0.2]), torch.tensor([0.1, 0.4, 0.8, 0.0])
    fig = C.plot_agreement(real, est, "heads", groups=["a", "a", "b", "b"], labels=list("wxyz"))
    ax = fig.axes[0]
    r = C.pearson_correlation(real, est).item()
    assert f"Pearson r = {r:.2f}" in ax.get_title() and "4 patches" in ax.get_title()
    assert len(ax.collections) == 2  # one scatter per group
    assert ax.lines[0].get_xdata()[0] == ax.lines[0].get_ydata()[0]  # y = x
    with pytest.raises(ValueError, match="one entry per point"):
        C.plot_agreement(real, est, groups=["a"])


def test_plot_cost_draws_one_line_per_method_on_log_axes():
    rows = [{"method": m, "n_patches": n, "forward": f, "backward": b, "seconds": s}
            for m, n, f, b, s in [("patch resid", 4, 6, 0, 0.01), ("patch resid", 16, 18, 0, 0.04),
                                  ("attribution resid", 4, 3, 1, 0.005), ("attribution resid", 16, 3, 1, 0.006)]]
    fig = C.plot_cost(rows)
    passes, seconds = fig.axes[:2]
    assert passes.get_xscale() == passes.get_yscale() == "log"
    assert [list(line.get_ydata()) for line in passes.lines] == [[6, 18], [4, 4]]
    assert [list(line.get_ydata()) for line in seconds.lines] == [[0.01, 0.04], [0.005, 0.006]]


@pytest.mark.parametrize("rows,match", [
    ([{"method": "patch everything", "n_patches": 4, "forward": 6, "backward": 0, "seconds": 0.01}], "unknown method"),
    ([{"method": "patch resid", "n_patches": 4}], r"missing \['forward', 'backward', 'seconds'\]"),
    ([], "no rows"),
])
def test_plot_cost_refuses_rows_it_cannot_draw(rows, match):
    with pytest.raises(ValueError, match=match):
        C.plot_cost(rows)
