"""Part V exercises: attributions (ch. 12) on the review classifier of :mod:`tinyinterp.reviews`.

References are the library functions of :mod:`tinyinterp.posthoc` (checked in ``tests/test_posthoc.py``
against closed forms, the Shapley axioms, captum and shap) or small functions here. Inputs that are
functions (``f``, ``value_fn``) travel as :class:`~tinyinterp.harness.bound.BoundFunction`: one of the
small module-level functions at the end of :mod:`tinyinterp.posthoc` with its data bound (they live in the
library, not here, because learner code may not reach ``tinyinterp.exercises`` while graded).
"""

from __future__ import annotations

import functools
import math

import torch

from .. import patching as patching_lib
from .. import posthoc as P
from .. import reviews as R
from ..harness.bound import BoundFunction
from ..harness.registry import Case, Exercise, Mistake, register
from ._inputs import randn
from .part2_induction import _random_model, _seed, _shown

CH12 = "12_attributions"

# While chapter 12 is graded, the references and the helpers that would do an exercise's work are withheld
# (Exercise.reference / Exercise.withheld below); the rest of tinyinterp.posthoc stays callable, for these
# reasons (tests/test_graded_copy.py checks that every function there is in one list or the other).
CALLABLE_WHILE_GRADING = {
    "tinyinterp.posthoc._check_f_x": "an input check: f callable, x a floating-point [batch, *shape] tensor",
    "tinyinterp.posthoc._check_output": "an input check: f returned [batch]",
    "tinyinterp.posthoc._coalitions": "lists the 2 ** n bool masks in binary order; no values, no weights",
    "tinyinterp.posthoc._check_batched_value_fn": "an input check on value_fn and a count",
    "tinyinterp.posthoc._evaluate": "calls value_fn on a batch of masks and checks the shape of what it returns",
    "tinyinterp.posthoc.lime_kernel": "LIME's kernel is stated in the exercise text; the fit is the exercise",
    "tinyinterp.posthoc.lime_distance": "the fraction of features switched off, as the exercise text states it",
    "tinyinterp.posthoc._random_coalitions": "draws random masks; no exercise asks for sampling",
    "tinyinterp.posthoc.shapley_kernel": "KernelSHAP's regression weights, not the Shapley value weights asked for",
    "tinyinterp.posthoc._removal_scores": "a value function of the review model (scores with words removed)",
    "tinyinterp.posthoc._review_score": "the f that cases bind: the review model's score of embeddings",
    "tinyinterp.posthoc._tanh_net": "the f that cases bind: a small tanh network, [batch, d] -> [batch]",
    "tinyinterp.posthoc._table_game": "the value_fn that cases bind: a game given by its table of values",
    "tinyinterp.posthoc._review_game": "the value_fn that cases bind: a review's score with some words <pad>",
    # tinyinterp.patching.metric_and_gradients is withheld for score_saliency (metric_and_gradients(model, tokens,
    # metric, ["hook_embed"]) is its answer); the rest of tinyinterp.patching stays callable:
    "tinyinterp.patching.logit_diff": "a metric on the logits (chapter 9); computes no gradient",
    "tinyinterp.patching.normalised_metric": "one division, (value - corrupted) / (clean - corrupted); no gradient",
    "tinyinterp.patching._check_tokens": "an input check: tokens are [batch, pos] integers",
    "tinyinterp.patching._scalar": "an input check: a metric returned one number",
    "tinyinterp.patching._metric_of": "one forward pass with given hooks, returned as a float: no gradient",
    "tinyinterp.patching._runs": "forward passes on clean and corrupted tokens (chapter 9); no gradient",
    "tinyinterp.patching.patch_hook": "builds a hook that overwrites an activation (chapter 9); no gradient",
    "tinyinterp.patching._patch_scan": "activation patching, forward passes only (chapter 9)",
    "tinyinterp.patching.patch_resid_by_layer_pos": "activation patching, forward passes only (chapter 9)",
    "tinyinterp.patching.patch_head_outputs": "activation patching, forward passes only (chapter 9)",
    "tinyinterp.patching.patch_head_by_pos": "activation patching, forward passes only (chapter 9)",
    "tinyinterp.patching._as_index": "an input check: an integer index as a Python int",
    "tinyinterp.patching._check_head": "an input check on a (layer, head) pair",
    "tinyinterp.patching.head_write": "one head's write into the residual stream (chapter 10); no gradient",
    "tinyinterp.patching.head_input": "a layer's q, k or v recomputed from a residual stream (chapter 10)",
    "tinyinterp.patching.path_patch_head_to_head": "path patching (chapter 10), forward passes only",
    "tinyinterp.patching.path_patch_head_to_head_keys": "path patching through keys (chapter 10), forward passes",
    "tinyinterp.patching._attribution": "calls metric_and_gradients, which is withheld, and sums over the batch "
                                        "and d_model: it cannot return a per-review gradient",
    "tinyinterp.patching.attribution_patch_heads": "calls _attribution (above); sums over batch and positions",
    "tinyinterp.patching.attribution_patch_resid_by_layer_pos": "calls _attribution (above); sums over batch "
                                                                "and d_model",
    "tinyinterp.patching.ablate_head_z": "replaces one head's slice of hook_z (chapter 10); no gradient",
    "tinyinterp.patching.run_with_head_ablated": "a forward pass with a head ablated (chapter 10); no gradient",
}


@functools.lru_cache(maxsize=None)
def _trained_state():
    return R.review_model(progress=False, follow_offset=False)[0]  # test cases never move with the seed offset


def _trained():
    return _shown(_trained_state())


def _random_review_model(gen, **overrides):
    cfg = {k: v for k, v in R.REVIEW_MODEL.to_dict().items() if k != "seed"}
    return _random_model(gen, **{**cfg, "init_std": 0.3, **overrides})


def _pad_like(tokens):
    is_word = (tokens != R.TOKEN[R.PAD]) & (tokens != R.TOKEN[R.CLS])
    return torch.where(is_word, R.TOKEN[R.PAD], tokens)


# ----- score_saliency ---------------------------------------------------------------------------------------------
def score_saliency(model, tokens):
    """The gradient of each review's score (logit<positive> - logit<negative> at <cls>) with respect to its
    token embeddings (``hook_embed``'s output): ``[batch, pos, d_model]``."""
    embed = model.embed(tokens).detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(R.score_of_embeddings(model, embed).sum(), embed)
    return grad


def _saliency_of(model, tokens, out_fn):
    embed = model.embed(tokens).detach().requires_grad_(True)
    placeholder = torch.full(tokens.shape, R.TOKEN[R.PAD], dtype=torch.long)
    logits = model.run_with_hooks(placeholder, fwd_hooks=[("hook_embed", lambda act, hook: embed)])
    (grad,) = torch.autograd.grad(out_fn(logits[:, -1]), embed)
    return grad


POS, NEG = R.TOKEN[R.LABEL_POS], R.TOKEN[R.LABEL_NEG]


def _saliency_cases(gen, hidden):
    trained = _trained()
    data = R.generate_reviews(4, seed=_seed(gen) % 10_000)
    cases = [Case("the trained classifier, 4 reviews", {"model": trained, "tokens": data.tokens}),
             Case("1 review: 'the plot was dull'", {"model": trained, "tokens": R.encode("the plot was dull")[None]}),
             Case("a random model, 3 reviews", {"model": _random_review_model(gen), "tokens": data.tokens[:3]}),
             Case("a review of 12 words, and a short one", {"model": trained, "tokens": torch.stack([
                 R.encode("good film but the ending was very dull and the music boring"),
                 R.encode("great fun")])})]
    if hidden:
        cases.append(Case("hidden: another random model, 5 reviews", {
            "model": _random_review_model(gen), "tokens": R.generate_reviews(5, seed=_seed(gen) % 10_000).tokens}))
    return cases


register(Exercise(
    id="score_saliency", chapter=CH12, title="Saliency: the gradient of the score",
    signature="score_saliency(model, tokens)", reference=score_saliency,
    withheld=(P.saliency, P.gradient_times_input, P.token_attributions, patching_lib.metric_and_gradients),
    cases=_saliency_cases, points=1, difficulty=2, importance=4, minutes=15, atol=3e-5, rtol=1e-3,
    mistakes=[
        Mistake("You differentiated P(positive) = sigmoid(score), i.e. after the softmax: the probability "
                "saturates, so its gradient vanishes on confident reviews. Differentiate the score itself.",
                lambda model, tokens: _saliency_of(model, tokens, lambda last: torch.sigmoid(
                    last[:, POS] - last[:, NEG]).sum())),
        Mistake("You differentiated logit<positive> alone; the score is logit<positive> - logit<negative>.",
                lambda model, tokens: _saliency_of(model, tokens, lambda last: last[:, POS].sum())),
        Mistake("You averaged the scores over the batch before backward, which divides every row's gradient "
                "by the batch size. Sum them: each review's score depends on its own embeddings only.",
                lambda model, tokens: _saliency_of(model, tokens, lambda last: (last[:, POS] - last[:, NEG]).mean())),
        Mistake("You took the absolute value of the gradient; keep its sign (which way the score moves).",
                lambda model, tokens: _saliency_of(
                    model, tokens, lambda last: (last[:, POS] - last[:, NEG]).sum()).abs()),
    ],
))


# ----- gradient_times_input ---------------------------------------------------------------------------------------
def _tanh_f(gen, d, hidden_units=8):
    return BoundFunction(P._tanh_net, W_in=randn(gen, d, hidden_units), b_in=randn(gen, hidden_units, scale=0.5),
                         w_out=randn(gen, hidden_units))


def _gxi_cases(gen, hidden):
    trained = _trained()
    tokens = R.generate_reviews(3, seed=_seed(gen) % 10_000).tokens
    cases = [Case("a tanh network, batch 4, d 5", {"f": _tanh_f(gen, 5), "x": randn(gen, 4, 5)}),
             Case("batch 1, d 3", {"f": _tanh_f(gen, 3), "x": randn(gen, 1, 3)}),
             Case("the review classifier's embeddings, 3 reviews", {
                 "f": BoundFunction(P._review_score, model=trained), "x": trained.embed(tokens).detach()}),
             Case("long: batch 16, d 20", {"f": _tanh_f(gen, 20, 16), "x": randn(gen, 16, 20)})]
    if hidden:
        model = _random_review_model(gen)
        cases.append(Case("hidden: a random review model", {
            "f": BoundFunction(P._review_score, model=model), "x": model.embed(tokens).detach()}))
    return cases


def _grad(f, x, reduce=torch.sum):
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(reduce(f(x)), x)
    return g


register(Exercise(
    id="gradient_times_input", chapter=CH12, title="Gradient times input",
    signature="gradient_times_input(f, x)", reference=P.gradient_times_input,
    withheld=(P.saliency, P.token_attributions),
    cases=_gxi_cases, points=1, difficulty=1, importance=3, minutes=10, atol=2e-5, rtol=2e-3,
    mistakes=[
        Mistake("You returned the gradient alone: multiply it by the input x, elementwise.", lambda f, x: _grad(f, x)),
        Mistake("You backpropagated f(x).mean(), which divides each row's gradient by the batch size; "
                "backpropagate f(x).sum().", lambda f, x: x * _grad(f, x, torch.mean)),
        Mistake("You multiplied x by the gradient's absolute value; keep the gradient's sign.",
                lambda f, x: x * _grad(f, x).abs()),
    ],
))


# ----- integrated_gradients -----------------------------------------------------------------------------------------
def _ig_cases(gen, hidden):
    trained = _trained()
    tokens = R.generate_reviews(2, seed=_seed(gen) % 10_000).tokens
    cases = [Case("a tanh network, batch 3, d 4, zero baseline, 16 steps", {
                 "f": _tanh_f(gen, 4), "x": randn(gen, 3, 4, scale=1.5), "baseline": torch.zeros(3, 4), "steps": 16}),
             Case("batch 1, a random baseline, 8 steps", {
                 "f": _tanh_f(gen, 3), "x": randn(gen, 1, 3, scale=1.5), "baseline": randn(gen, 1, 3), "steps": 8}),
             Case("the review classifier, 2 reviews, baseline all <pad>, 16 steps", {
                 "f": BoundFunction(P._review_score, model=trained), "x": trained.embed(tokens).detach(),
                 "baseline": trained.embed(_pad_like(tokens)).detach(), "steps": 16}),
             Case("long: batch 8, d 12, random baselines, 32 steps", {
                 "f": _tanh_f(gen, 12), "x": randn(gen, 8, 12), "baseline": randn(gen, 8, 12), "steps": 32})]
    if hidden:
        model = _random_review_model(gen)
        cases.append(Case("hidden: a random review model, 5 steps", {
            "f": BoundFunction(P._review_score, model=model), "x": model.embed(tokens).detach(),
            "baseline": model.embed(_pad_like(tokens)).detach(), "steps": 5}))
    return cases


def _ig_variant(f, x, baseline, steps, alphas="middle", times="difference", average=True):
    if alphas == "middle":
        a = (torch.arange(steps, dtype=x.dtype) + 0.5) / steps
    elif alphas == "left":
        a = torch.arange(steps, dtype=x.dtype) / steps
    else:
        a = torch.linspace(0, 1, steps, dtype=x.dtype)
    path = (baseline + a.view(-1, *[1] * x.ndim) * (x - baseline)).flatten(0, 1)
    grads = _grad(f, path).view(steps, *x.shape)
    g = grads.mean(0) if average else grads.sum(0)
    return {"difference": (x - baseline) * g, "none": g, "x": x * g}[times]


register(Exercise(
    id="integrated_gradients", chapter=CH12, title="Integrated gradients",
    signature="integrated_gradients(f, x, baseline, steps)", reference=P.integrated_gradients,
    withheld=(P.saliency, P.gradient_times_input, P.token_attributions),
    cases=_ig_cases, points=2, difficulty=3, importance=5, minutes=25, atol=3e-5, rtol=3e-4,
    mistakes=[
        Mistake("You returned the average gradient along the path: multiply it by (x - baseline), elementwise; "
                "that is what makes the attributions add up to f(x) - f(baseline).",
                lambda f, x, baseline, steps: _ig_variant(f, x, baseline, steps, times="none")),
        Mistake("You multiplied the average gradient by x; multiply by (x - baseline) (they differ when the "
                "baseline is not zero).", lambda f, x, baseline, steps: _ig_variant(f, x, baseline, steps, times="x")),
        Mistake("Your alphas are k / steps for k = 0 .. steps - 1 (the left Riemann rule); use the midpoints "
                "(k + 0.5) / steps.", lambda f, x, baseline, steps: _ig_variant(f, x, baseline, steps, alphas="left")),
        Mistake("Your alphas run from 0 to 1 inclusive (torch.linspace(0, 1, steps)); use the midpoints "
                "(k + 0.5) / steps, k = 0 .. steps - 1.",
                lambda f, x, baseline, steps: _ig_variant(f, x, baseline, steps, alphas="linspace")),
        Mistake("You summed the gradients over the steps; average them (the integral over alpha in [0, 1] is "
                "the mean over the midpoints).",
                lambda f, x, baseline, steps: _ig_variant(f, x, baseline, steps, average=False)),
    ],
))


# ----- shapley_values ------------------------------------------------------------------------------------------------
def _table(gen, n):
    return BoundFunction(P._table_game, table=randn(gen, 2 ** n).double())  # float64: the answer is float64


def _shapley_cases(gen, hidden):
    trained = _trained()
    review = R.encode("the plot was dull but the music great")
    words = [int(i) for i in ((review != R.TOKEN[R.PAD]) & (review != R.TOKEN[R.CLS])).nonzero().flatten()][:5]
    cases = [Case("a random game of 3 players", {"value_fn": _table(gen, 3), "n_players": 3}),
             Case("1 player", {"value_fn": _table(gen, 1), "n_players": 1}),
             Case("the review classifier: 5 words of 'the plot was dull but the music great'", {
                 "value_fn": BoundFunction(P._review_game, model=trained.double(), tokens=review, words=words),
                 "n_players": 5}),
             Case("long: a random game of 8 players", {"value_fn": _table(gen, 8), "n_players": 8})]
    if hidden:
        cases.append(Case("hidden: a random game of 5 players", {"value_fn": _table(gen, 5), "n_players": 5}))
    return cases


def _shapley_variant(value_fn, n_players, weight=None, sign=1.0):
    n = n_players
    values = [value_fn(torch.tensor([(code >> j) & 1 == 1 for j in range(n)])) for code in range(2 ** n)]
    phi = torch.zeros(n, dtype=torch.float64)
    for code in range(2 ** n):
        s = bin(code).count("1")
        for i in range(n):
            if not (code >> i) & 1:
                phi[i] += weight(s, n) * sign * (values[code | (1 << i)] - values[code])
    return phi


def _leave_one_out(value_fn, n_players):
    full = torch.ones(n_players, dtype=torch.bool)
    out = []
    for i in range(n_players):
        without = full.clone()
        without[i] = False
        out.append(value_fn(full) - value_fn(without))
    return torch.tensor(out, dtype=torch.float64)


register(Exercise(
    id="shapley_values", chapter=CH12, title="Exact Shapley values by enumeration",
    signature="shapley_values(value_fn, n_players)", reference=P.shapley_values,
    withheld=(P.kernel_shap, P.token_attributions),  # KernelSHAP with every coalition is the exact value
    cases=_shapley_cases, points=2, difficulty=3, importance=5, minutes=25, atol=1e-5, rtol=1e-4,
    mistakes=[
        Mistake("Your weights are off by one: |S|! (n - |S|)! / n!. A coalition S without i is weighted "
                "|S|! (n - |S| - 1)! / n! (the orders in which exactly S arrives before i).",
                lambda value_fn, n_players: _shapley_variant(
                    value_fn, n_players, lambda s, n: math.factorial(s) * math.factorial(n - s) / math.factorial(n))),
        Mistake("You averaged the marginal contributions uniformly over the 2^(n-1) coalitions without i (the "
                "Banzhaf value); weight each by |S|! (n - |S| - 1)! / n!, so that coalition sizes count equally.",
                lambda value_fn, n_players: _shapley_variant(value_fn, n_players, lambda s, n: 0.5 ** (n - 1))),
        Mistake("The marginal contribution is v(S with i) - v(S); you subtracted the other way round.",
                lambda value_fn, n_players: _shapley_variant(value_fn, n_players, lambda s, n: math.factorial(s)
                                                             * math.factorial(n - s - 1) / math.factorial(n), -1.0)),
        Mistake("You computed leave-one-out (occlusion): v(all) - v(all without i). The Shapley value averages "
                "i's marginal contribution over every coalition, not only the full one.", _leave_one_out),
    ],
))


# ----- lime_surrogate ------------------------------------------------------------------------------------------------
def _lime_cases(gen, hidden):
    def case(name, n_samples, n, width, p=0.6):
        masks = torch.rand(n_samples, n, generator=gen) < p
        masks[0] = True
        w = randn(gen, n)
        outputs = masks.float() @ w + 0.8 * (masks[:, 0] & masks[:, 1 % n]).float() + randn(gen, n_samples, scale=0.3)
        return Case(name, {"masks": masks, "outputs": outputs, "kernel_width": width})

    cases = [case("40 samples of 4 features, width 0.5", 40, 4, 0.5),
             case("1 feature, 10 samples, width 1", 10, 1, 1.0),
             case("60 samples of 6 features, width 0.25", 60, 6, 0.25),
             case("long: 300 samples of 12 features, width 0.75", 300, 12, 0.75)]
    if hidden:
        cases.append(case("hidden: 80 samples of 5 features, width 0.4", 80, 5, 0.4, p=0.5))
    return cases


def _wls(masks, outputs, weights, intercept=True):
    z = masks.double()
    if intercept:
        z = torch.cat([torch.ones(len(z), 1, dtype=torch.float64), z], 1)
    sw = weights.double().sqrt()[:, None]
    coef = torch.linalg.lstsq(z * sw, outputs.double()[:, None] * sw).solution.flatten()
    return (coef[1:] if intercept else coef).to(outputs.dtype)


register(Exercise(
    id="lime_surrogate", chapter=CH12, title="LIME's weighted linear surrogate",
    signature="lime_surrogate(masks, outputs, kernel_width)", reference=P.lime_surrogate,
    withheld=(P.lime, P.token_attributions),
    cases=_lime_cases, points=2, difficulty=3, importance=4, minutes=20, atol=1e-4, rtol=1e-3,
    mistakes=[
        Mistake("Every sample weighs the same in your fit: weight each by the kernel "
                "exp(-d^2 / kernel_width^2), d the fraction of features switched off, so that samples near "
                "the input count more.",
                lambda masks, outputs, kernel_width: _wls(masks, outputs, torch.ones(len(masks)))),
        Mistake("Your fit has no intercept: add a column of ones to the masks (and drop its coefficient from "
                "the answer); without it the weights must also explain the output of the empty input.",
                lambda masks, outputs, kernel_width: _wls(masks, outputs, torch.exp(
                    -P.lime_distance(masks) ** 2 / kernel_width ** 2), intercept=False)),
        Mistake("Your distance is the fraction of features kept; LIME's is the distance from the input, "
                "the fraction switched off (0 for the input itself).",
                lambda masks, outputs, kernel_width: _wls(masks, outputs, torch.exp(
                    -(1 - P.lime_distance(masks)) ** 2 / kernel_width ** 2))),
        Mistake("Square the distance in the kernel: exp(-d^2 / kernel_width^2), not exp(-d / kernel_width^2).",
                lambda masks, outputs, kernel_width: _wls(masks, outputs, torch.exp(
                    -P.lime_distance(masks) / kernel_width ** 2))),
        Mistake("Your weights are sqrt(exp(-d^2 / kernel_width^2)), the kernel of the `lime` package (which "
                "weights samples by it); the weight asked for here is pi = exp(-d^2 / kernel_width^2) itself.",
                lambda masks, outputs, kernel_width: _wls(masks, outputs, torch.exp(
                    -P.lime_distance(masks) ** 2 / kernel_width ** 2).sqrt())),
        Mistake("You scaled the rows of [1, masks] and the outputs by the kernel pi; least squares squares the "
                "residuals, so that weights each sample by pi^2. Scale the rows by sqrt(pi).",
                lambda masks, outputs, kernel_width: _wls(masks, outputs, torch.exp(
                    -P.lime_distance(masks) ** 2 / kernel_width ** 2) ** 2)),
    ],
))


# ----- cls_attention -------------------------------------------------------------------------------------------------
def _pattern(model, tokens, layer=-1):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return cache[f"blocks.{layer % model.cfg.n_layers}.attn.hook_pattern"]


def _attention_cases(gen, hidden):
    trained = _trained()
    tokens = R.generate_reviews(5, seed=_seed(gen) % 10_000).tokens
    cases = [Case("the trained classifier, 5 reviews", {"model": trained, "tokens": tokens}),
             Case("1 review: 'great plot but dull actors'", {"model": trained,
                                                              "tokens": R.encode("great plot but dull actors")[None]}),
             Case("a random model of 2 layers (read the last), 4 reviews", {
                 "model": _random_review_model(gen, n_layers=2), "tokens": tokens[1:]}),
             Case("long: 12 words", {"model": trained, "tokens": R.encode(
                 "the film was boring and the plot dull but the music good")[None]})]
    if hidden:
        cases.append(Case("hidden: another random model", {"model": _random_review_model(gen), "tokens": tokens}))
    return cases


register(Exercise(
    id="cls_attention", chapter=CH12, title="Attention from <cls>: the naive explanation",
    signature="cls_attention(model, tokens)", reference=P.cls_attention,
    withheld=(P.token_attributions,),
    cases=_attention_cases, points=1, difficulty=1, importance=3, minutes=10, atol=1e-5, rtol=1e-4,
    mistakes=[
        Mistake("You read layer 0's pattern; the explanation is the last layer's, "
                "blocks.{n_layers - 1}.attn.hook_pattern (the same layer in a one-layer model).",
                lambda model, tokens: _pattern(model, tokens, 0)[:, :, -1, :].mean(1)),
        Mistake("You took head 0 only; average the pattern over the heads.",
                lambda model, tokens: _pattern(model, tokens)[:, 0, -1, :]),
        Mistake("You summed over the heads; average them (each head's row sums to 1, so the mean does too).",
                lambda model, tokens: _pattern(model, tokens)[:, :, -1, :].sum(1)),
        Mistake("You read the first query position's row; <cls> is the last position (query -1).",
                lambda model, tokens: _pattern(model, tokens)[:, :, 0, :].mean(1)),
        Mistake("You averaged the pattern over the query positions; take the <cls> row (query -1) only.",
                lambda model, tokens: _pattern(model, tokens)[:, :, :, :].mean((1, 2))),
    ],
))
