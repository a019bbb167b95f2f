"""Part V exercises: interpretability at scale (ch. 15).

References are the library functions the chapter uses (:mod:`tinyinterp.scaling`);
``tests/test_scaling.py`` checks them against hand-computed answers and against pass counts measured
with hooks.
"""

from __future__ import annotations

import torch

from .. import scaling as S
from ..harness.registry import Case, Exercise, Mistake, register
from ._inputs import randn

CH15 = "15_interpretability_at_scale"

# While chapter 15 is graded, its references and the helpers that would do an exercise's work are withheld
# (Exercise.reference / Exercise.withheld below); the rest of tinyinterp.scaling stays callable, for these
# reasons (tests/test_graded_copy.py checks that every function there is in one list or the other).
CALLABLE_WHILE_GRADING = {
    "tinyinterp.scaling._is_int": "an input check: an int that is not a bool",
    "tinyinterp.scaling._check_sizes": "an input check on a list of size tuples",
    "tinyinterp.scaling._check_threads": "an input check: a thread count is an int >= 1 or None",
    "tinyinterp.scaling._check_shape": "an input check: sizes are ints >= 1",
    "tinyinterp.scaling._real_tensor": "an input check: turns a list of numbers into a tensor, refuses the rest",
    "tinyinterp.scaling._real_number": "an input check: a real number or a one-element real tensor, as a float",
    "tinyinterp.scaling.patching_sweep": "measures passes by running models; the cases include frontier-sized "
                                         "models that no measurement finishes within the time limit",
    "tinyinterp.scaling.sae_sweep": "times SAE training steps; no exercise asks about SAEs",
    "tinyinterp.scaling.extrapolate": "evaluates prefactor * x ** exponent for a fit it is given; fits nothing",
    "tinyinterp.scaling.sae_param_count": "the parameters of an SAE; no exercise asks for it",
    "tinyinterp.scaling.plot_scaling": "draws a figure and returns it; computes no answer",
}


# ----- fit_power_law ----------------------------------------------------------------------------------
def _line(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares slope and intercept of v against u."""
    du = u - u.mean()
    slope = (du * (v - v.mean())).sum() / (du * du).sum()
    return slope, v.mean() - slope * u.mean()


def _power_law_cases(gen, hidden):
    specs = [("exact: y = 3 x^2 at x = 1..8", torch.arange(1.0, 9.0), 2.0, 3.0, 0.0),
             ("noisy: y = 0.5 x^1.5 from x = 10 to 10^4", torch.logspace(1, 4, 10), 1.5, 0.5, 0.2),
             ("decreasing: y = 40 x^-0.7, noisy", torch.logspace(0, 2, 7), -0.7, 40.0, 0.1),
             ("two points", torch.tensor([4.0, 64.0]), 0.75, 2.0, 0.0)]
    if hidden:
        specs += [("hidden: noisy, x unsorted", torch.logspace(0.5, 3, 9)[torch.randperm(9, generator=gen)], 1.2,
                   7.0, 0.15),
                  ("hidden: passes of patching, n + 2", torch.tensor([4.0, 16.0, 64.0, 256.0, 1024.0]), None, None,
                   0.0)]
    cases = []
    for name, x, exponent, prefactor, noise in specs:
        y = x + 2 if exponent is None else prefactor * x ** exponent
        y = y * torch.exp(randn(gen, len(x), scale=noise))
        cases.append(Case(name, {"x": x, "y": y}))
    return cases


def _fit_in_linear_space(x, y):
    return _line(x, y)


def _fit_log_y_only(x, y):
    slope, intercept = _line(x, y.log())
    return slope, intercept.exp()


def _fit_swapped_axes(x, y):
    slope, intercept = _line(y.log(), x.log())
    return slope, intercept.exp()


def _fit_log_prefactor(x, y):
    return _line(x.log(), y.log())


def _fit_prefactor_first(x, y):
    slope, intercept = _line(x.log(), y.log())
    return intercept.exp(), slope


def _fit_log10_then_exp(x, y):
    slope, intercept = _line(x.log10(), y.log10())
    return slope, intercept.exp()


register(Exercise(
    id="fit_power_law", chapter=CH15, title="Fit a power law",
    signature="fit_power_law(x, y)", reference=S.fit_power_law,
    withheld=(S.exponents,),  # fits a power law to each group of rows
    cases=_power_law_cases, points=1, difficulty=2, importance=4, minutes=15, atol=1e-4, rtol=1e-3,
    mistakes=[
        Mistake("You fitted a straight line to the raw values of y against the raw values of x; a power law is a "
                "straight line between log x and log y, so take the logarithm of both first.", _fit_in_linear_space),
        Mistake("You took the logarithm of y only (an exponential fit, y = c e^(a x)); a power law needs the "
                "logarithm of x as well.", _fit_log_y_only),
        Mistake("Axes swapped: you regressed log x on log y. Least squares is not symmetric; regress log y "
                "(the cost) on log x (the size).", _fit_swapped_axes),
        Mistake("The prefactor is the exponential of the intercept, not the intercept (which is log c).",
                _fit_log_prefactor),
        Mistake("Right numbers, wrong order: return (exponent, prefactor), the exponent first.",
                _fit_prefactor_first),
        Mistake("Logarithms of two bases: you fitted with log10 but turned the intercept back with exp. Use one "
                "base both ways (10 ** intercept for log10, or natural logarithms throughout).", _fit_log10_then_exp),
    ],
))


# ----- patching_pass_count -------------------------------------------------------------------------------
def _count_cases(gen, hidden):
    specs = [("patch heads: 2 layers x 4 heads, 10 positions", 2, 4, 10, "patch heads"),
             ("patch head by pos: 3 layers x 2 heads, 5 positions", 3, 2, 5, "patch head by pos"),
             ("patch resid: 4 layers, 7 positions", 4, 3, 7, "patch resid"),
             ("attribution: the shape of GPT-2 small (12 x 12), 20 positions", 12, 12, 20, "attribution"),
             ("frontier-sized: 80 layers x 64 heads, 512 positions, patch head by pos", 80, 64, 512,
              "patch head by pos")]
    if hidden:
        for method in S.PATCHING_METHODS:
            n_layers, n_heads = (int(v) for v in torch.randint(1, 30, (2,), generator=gen))
            n_pos = int(torch.randint(4, 200, (1,), generator=gen))
            specs.append((f"hidden: {method}, {n_layers} x {n_heads}, {n_pos} positions", n_layers, n_heads, n_pos,
                          method))
        specs.append(("hidden: frontier-sized, patch resid", 80, 64, 512, "patch resid"))
    return [Case(name, {"n_layers": n_layers, "n_heads": n_heads, "n_pos": n_pos, "method": method})
            for name, n_layers, n_heads, n_pos, method in specs]


def _patches(n_layers, n_heads, n_pos, method):
    return {"patch heads": n_layers * n_heads, "patch head by pos": n_layers * n_heads * n_pos,
            "patch resid": n_layers * n_pos}.get(method)


def _no_baselines(n_layers, n_heads, n_pos, method):
    return (3, 1) if method == "attribution" else (_patches(n_layers, n_heads, n_pos, method), 0)


def _one_baseline(n_layers, n_heads, n_pos, method):
    return (3, 1) if method == "attribution" else (_patches(n_layers, n_heads, n_pos, method) + 1, 0)


def _attribution_minimum(n_layers, n_heads, n_pos, method):
    return (2, 1) if method == "attribution" else (_patches(n_layers, n_heads, n_pos, method) + 2, 0)


def _positions_forgotten(n_layers, n_heads, n_pos, method):
    method = "patch heads" if method == "patch head by pos" else method
    return (3, 1) if method == "attribution" else (_patches(n_layers, n_heads, n_pos, method) + 2, 0)


def _resid_post_too(n_layers, n_heads, n_pos, method):
    if method == "patch resid":
        return (n_layers + 1) * n_pos + 2, 0
    return (3, 1) if method == "attribution" else (_patches(n_layers, n_heads, n_pos, method) + 2, 0)


register(Exercise(
    id="patching_pass_count", chapter=CH15, title="Count the passes",
    signature="patching_pass_count(n_layers, n_heads, n_pos, method)", reference=S.patching_pass_count,
    withheld=(S.frontier_patches,),  # the number of patches of each method
    cases=_count_cases, points=1, difficulty=1, importance=4, minutes=10, atol=0.0, rtol=0.0,
    mistakes=[
        Mistake("You counted one pass per patch and nothing else; activation patching also runs the clean and "
                "the corrupted input once each (the activations to patch in, and the metric's two reference "
                "values).", _no_baselines),
        Mistake("One reference run is missing: both the clean and the corrupted input are run once, besides "
                "the patched runs.", _one_baseline),
        Mistake("Attribution patching could run 2 forward passes, but the book's implementation runs 3 (the "
                "source cache, the base's metric, and the base again with gradients) and 1 backward.",
                _attribution_minimum),
        Mistake("Patching each head at each position is one run per head per position: multiply by n_pos too.",
                _positions_forgotten),
        Mistake("The residual stream is patched at blocks.{L}.hook_resid_pre, once per layer: n_layers layers, "
                "not n_layers + 1.", _resid_post_too),
    ],
))
