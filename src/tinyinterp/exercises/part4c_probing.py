"""Part IV exercises: probes and steering (ch. 11).

References are the library functions the chapter uses (:mod:`tinyinterp.probing`);
``tests/test_probing.py`` checks those against closed forms and hand-computed answers.
"""

from __future__ import annotations

import torch

from .. import probing as P
from ..harness.registry import Case, Exercise, Mistake, register
from ._inputs import randint, randn
from .part2_induction import _random_model, _seed

CH11 = "11_probes_and_steering"

# While chapter 11 is graded, the references and the helpers that would do an exercise's work are withheld
# (Exercise.reference / Exercise.withheld below); the rest of tinyinterp.probing stays callable, for these
# reasons (tests/test_graded_copy.py checks that every function there is in one list or the other).
CALLABLE_WHILE_GRADING = {
    "tinyinterp.probing.resid_hook_names": "a list of hook-name strings; no exercise asks for it",
    "tinyinterp.probing.resid_activations": "one cached forward pass with no hooks added: nothing steer adds",
    "tinyinterp.probing._check_count": "an input check: an int at least some minimum",
    "tinyinterp.probing._generator": "an input check that builds torch.Generator().manual_seed(seed), as stated",
    "tinyinterp.probing._check_rows": "an input check on the shapes and dtype of acts and labels",
    "tinyinterp.probing._check_class_labels": "an input check: labels are class indices below n_classes",
    "tinyinterp.probing._check_penalty": "an input check: l2 is a finite number >= 0",
    "tinyinterp.probing.selectivity": "one subtraction of two accuracies; no exercise asks for it",
    "tinyinterp.probing.random_direction_like": "a random vector of a given norm, for the demo's baseline",
}


def _labelled(gen: torch.Generator, n: int, d: int, n_classes: int, signal: float):
    """Rows ``signal * mu[label] + noise`` with random class means ``mu`` and random labels."""
    mu = randn(gen, n_classes, d, scale=signal)
    labels = randint(gen, n_classes, n)
    return mu[labels] + randn(gen, n, d), labels


# ----- diff_of_means_direction --------------------------------------------------------------------
def _dom_cases(gen, hidden):
    specs = [("n 20, d_model 5", 20, 5, 0.3), ("mostly class 0 (a quarter in class 1)", 24, 6, 0.25),
             ("one row in class 1", 9, 4, None), ("long: n 300, d_model 32", 300, 32, 0.6)]
    if hidden:
        specs += [("hidden: d_model 1", 15, 1, 0.4)]
    cases = []
    for name, n, d, p in specs:
        acts = randn(gen, n, d) + randn(gen, d, scale=2.0)
        if p is None:
            labels = torch.zeros(n, dtype=torch.bool)
            labels[int(torch.randint(0, n, (1,), generator=gen))] = True
        else:
            labels = torch.zeros(n, dtype=torch.bool)
            labels[torch.randperm(n, generator=gen)[: round(p * n)]] = True
        cases.append(Case(name, {"acts": acts, "labels": labels}))
    return cases


register(Exercise(
    id="diff_of_means_direction", chapter=CH11, title="The difference of means",
    signature="diff_of_means_direction(acts, labels)", reference=P.diff_of_means_direction,
    withheld=(P.class_means, P.mean_probe),  # class means: their difference is the answer
    cases=_dom_cases, points=1, difficulty=1, importance=4, minutes=10, atol=1e-4,
    mistakes=[
        Mistake("Wrong sign: the direction points from the False rows to the True rows, mean(True) - mean(False).",
                lambda acts, labels: acts[~labels].mean(0) - acts[labels].mean(0)),
        Mistake("You subtracted the mean of all rows; subtract the mean of the rows labelled False.",
                lambda acts, labels: acts[labels].mean(0) - acts.mean(0)),
        Mistake("Leave the direction as it is: its length is part of the answer (the distance between the "
                "two class means); you scaled it to unit norm.",
                lambda acts, labels: (lambda v: v / v.norm())(acts[labels].mean(0) - acts[~labels].mean(0))),
        Mistake("Average each class's rows; you summed them, so the bigger class weighs more.",
                lambda acts, labels: acts[labels].sum(0) - acts[~labels].sum(0)),
    ],
))


# ----- fit_ridge_probe ------------------------------------------------------------------------------
def _ridge_cases(gen, hidden):
    specs = [("n 40, d_model 6, 3 classes, l2 0.5", 40, 6, 3, 0.5), ("2 classes, l2 2", 30, 4, 2, 2.0),
             ("4 classes, class 3 never occurs, l2 1", 50, 5, 4, 1.0), ("long: n 400, d_model 24, 5 classes", 400, 24, 5, 3.0),
             ("more features than rows: n 10, d_model 16, l2 1", 10, 16, 3, 1.0)]
    if hidden:
        specs += [("hidden: d_model 1, l2 0.3", 25, 1, 3, 0.3)]
    cases = []
    for name, n, d, c, l2 in specs:
        acts, labels = _labelled(gen, n, d, c, 1.0)
        acts = acts + randn(gen, d, scale=1.5)  # not centred: the bias matters
        if "never occurs" in name:
            labels = labels % (c - 1)
        cases.append(Case(name, {"acts": acts, "labels": labels, "n_classes": c, "l2": l2}))
    return cases


def _onehot(labels, n_classes, like):
    return torch.nn.functional.one_hot(labels, n_classes).to(like.dtype)


def _ridge_no_bias(acts, labels, n_classes, l2):
    Y = _onehot(labels, n_classes, acts)
    W = torch.linalg.solve(acts.T @ acts + l2 * torch.eye(acts.shape[1], dtype=acts.dtype), acts.T @ Y)
    return W, torch.zeros(n_classes, dtype=acts.dtype)


def _ridge_penalised_bias(acts, labels, n_classes, l2):
    X = torch.cat([acts, torch.ones(len(acts), 1, dtype=acts.dtype)], dim=1)
    Y = _onehot(labels, n_classes, acts)
    Wb = torch.linalg.solve(X.T @ X + l2 * torch.eye(X.shape[1], dtype=acts.dtype), X.T @ Y)
    return Wb[:-1], Wb[-1]


def _ridge_scaled(acts, labels, n_classes, l2, scale):
    """The closed form with the penalty ``l2 * scale``, written as a learner would (no input checks: with
    scale 0 and fewer rows than features it returns what an unpenalised solve gives, as their code does)."""
    Y = _onehot(labels, n_classes, acts)
    x_mean, y_mean = acts.mean(0), Y.mean(0)
    Xc, Yc = acts - x_mean, Y - y_mean
    W = torch.linalg.solve(Xc.T @ Xc + l2 * scale * torch.eye(acts.shape[1], dtype=acts.dtype), Xc.T @ Yc)
    return W, y_mean - x_mean @ W


register(Exercise(
    id="fit_ridge_probe", chapter=CH11, title="A least-squares probe in closed form",
    signature="fit_ridge_probe(acts, labels, n_classes, l2)", reference=P.fit_ridge_probe,
    cases=_ridge_cases, points=2, difficulty=3, importance=4, minutes=20, atol=1e-4, rtol=1e-3,
    mistakes=[
        Mistake("Your probe has no bias (b is zero and W was fitted without one): centre acts and the one-hot "
                "targets on their means, fit W on the centred data, then b = mean(Y) - mean(acts) @ W.",
                _ridge_no_bias),
        Mistake("You penalised the bias too (a column of ones inside the ridge): only W is penalised. Centring "
                "acts and the targets first, and computing b from the means afterwards, leaves b free.",
                _ridge_penalised_bias),
        Mistake("The ridge penalty is missing: add l2 times the identity to the centred X^T X before solving.",
                lambda acts, labels, n_classes, l2: _ridge_scaled(acts, labels, n_classes, l2, 0.0)),
        Mistake("The penalty is l2 |W|^2 next to the *sum* of squared errors: add l2 * I to X^T X, not "
                "l2 * n * I (as if the errors were averaged over the n rows).",
                lambda acts, labels, n_classes, l2: _ridge_scaled(acts, labels, n_classes, l2, len(acts))),
    ],
))


# ----- held_out_accuracy -----------------------------------------------------------------------------
MIN_MARGIN = 1e-3  # the reference's test predictions never hinge on rounding


def _margin(acts, labels, n_classes, l2, train_frac, seed) -> float:
    """The smallest gap between the two best classes' scores on the test rows, in float64."""
    acts = acts.double()
    train, test = P.split_indices(len(acts), train_frac, seed)
    W, b = P.fit_ridge_probe(acts[train], labels[train], n_classes, l2)
    top = (acts[test] @ W + b).topk(2, dim=-1).values
    return float((top[:, 0] - top[:, 1]).min())


def _held_out_cases(gen, hidden):
    # with few training rows, or a strong penalty, l2 changes the probe's predictions: pass it on
    specs = [("n 120, d_model 16, 3 classes, half for training", 120, 16, 3, 0.1, 0.5, 0.5),
             ("three quarters for training", 80, 10, 2, 0.1, 0.75, 0.6),
             ("more features than training rows: the probe memorises", 40, 30, 3, 0.01, 0.5, 0.5),
             ("30 training rows, d_model 40, l2 10: the penalty shapes the probe", 60, 40, 3, 10.0, 0.5, 0.5),
             ("a strong penalty: l2 100, n 200, d_model 20", 200, 20, 4, 100.0, 0.5, 0.5),
             ("long: n 400, d_model 8, 4 classes, a quarter for training", 400, 8, 4, 1.0, 0.25, 0.5)]
    if hidden:
        specs += [("hidden: 5 classes, weak signal", 100, 12, 5, 0.3, 0.5, 0.3),
                  ("hidden: 20 training rows, d_model 30, l2 3", 50, 30, 3, 3.0, 0.4, 0.6)]
    cases = []
    for name, n, d, c, l2, frac, signal in specs:
        while True:  # redraw the rare data set whose test predictions hinge on a near tie
            acts, labels = _labelled(gen, n, d, c, signal)
            seed = _seed(gen) % 10_000
            if _margin(acts, labels, c, l2, frac, seed) > MIN_MARGIN:
                break
        cases.append(Case(name, {"acts": acts, "labels": labels, "n_classes": c, "l2": l2,
                                 "train_frac": frac, "seed": seed}))
    return cases


def _held_out_variant(acts, labels, n_classes, l2, train_frac, seed, fit_on, score_on):
    train, test = P.split_indices(len(acts), train_frac, seed)
    rows = {"train": train, "test": test, "all": torch.arange(len(acts)),
            "first": torch.arange(len(train)), "rest": torch.arange(len(train), len(acts))}
    W, b = P.fit_ridge_probe(acts[rows[fit_on]], labels[rows[fit_on]], n_classes, l2)
    return P.probe_accuracy(W, b, acts[rows[score_on]], labels[rows[score_on]])


def _held_out_mistake(fit_on, score_on):
    return lambda acts, labels, n_classes, l2, train_frac, seed: _held_out_variant(
        acts, labels, n_classes, l2, train_frac, seed, fit_on, score_on)


register(Exercise(
    id="held_out_accuracy", chapter=CH11, title="Held-out probe accuracy",
    signature="held_out_accuracy(acts, labels, n_classes, l2, train_frac, seed)", reference=P.held_out_accuracy,
    # the split and the scoring are the exercise; a logistic probe could stand in for the ridge probe where
    # only the accuracy is compared
    withheld=(P.split_indices, P.probe_accuracy, P.probe_predict, P.fit_logistic_probe),
    cases=_held_out_cases, points=2, difficulty=2, importance=5, minutes=15,
    mistakes=[
        Mistake("You scored the probe on the rows it was fitted on: that measures memorisation as much as "
                "anything. Score it on the test rows, perm[n_train:].", _held_out_mistake("train", "train")),
        Mistake("You scored the probe on every row, training rows included; score it on the test rows only.",
                _held_out_mistake("train", "all")),
        Mistake("The probe was fitted on every row, so it has seen the test rows: fit it on the training rows "
                "perm[:n_train] only.", _held_out_mistake("all", "test")),
        Mistake("Split with the random permutation: perm = torch.randperm(n, generator=...), training rows "
                "perm[:n_train]. You took the first n_train rows in their given order.",
                _held_out_mistake("first", "rest")),
        Mistake("Training and test rows are swapped: fit on perm[:n_train] (the first int(train_frac * n) of "
                "the permutation) and score on the rest.", _held_out_mistake("test", "train")),
    ],
))


# ----- control_task_labels ----------------------------------------------------------------------------
def _control_cases(gen, hidden):
    specs = [("10 tokens from 5 types, 3 classes", (10,), 5, 3), ("a batch: [4, 12], 20 types, 4 classes", (4, 12), 20, 4),
             ("every token the same type", (7,), 3, 5), ("long: [8, 64], 99 types, 5 classes", (8, 64), 99, 5)]
    if hidden:
        specs += [("hidden: 2 classes, [3, 9]", (3, 9), 11, 2)]
    cases = []
    for name, shape, n_types, c in specs:
        ids = randint(gen, n_types, *shape)
        if "the same type" in name:
            ids = torch.full(shape, 1 + int(randint(gen, n_types - 1)), dtype=torch.long)
        cases.append(Case(name, {"token_ids": ids, "n_types": n_types, "n_classes": c,
                                 "seed": 1 + _seed(gen) % 10_000}))
    return cases


def _control_per_occurrence(token_ids, n_types, n_classes, seed):
    return torch.randint(0, n_classes, token_ids.shape, generator=torch.Generator().manual_seed(seed))


register(Exercise(
    id="control_task_labels", chapter=CH11, title="A control task",
    signature="control_task_labels(token_ids, n_types, n_classes, seed)", reference=P.control_task_labels,
    cases=_control_cases, points=1, difficulty=2, importance=4, minutes=10,
    mistakes=[
        Mistake("You drew a fresh label for every occurrence: a control task gives each token *type* one label, "
                "drawn once (a table of n_types labels), and every occurrence of the type looks it up.",
                _control_per_occurrence),
        Mistake("Use the seed you are given: make the generator with torch.Generator().manual_seed(seed).",
                lambda token_ids, n_types, n_classes, seed: P.control_task_labels(token_ids, n_types, n_classes, 0)),
        Mistake("The labels should be random (one random draw per type); token_id % n_classes is a fixed "
                "pattern, not the random table the task asks for.",
                lambda token_ids, n_types, n_classes, seed: token_ids % n_classes),
        Mistake("Labels run from 0 to n_classes - 1: torch.randint's upper bound is exclusive, so use "
                "torch.randint(0, n_classes, ...).",
                lambda token_ids, n_types, n_classes, seed: torch.randint(
                    1, n_classes + 1, (n_types,), generator=torch.Generator().manual_seed(seed))[token_ids]),
    ],
))


# ----- steer ----------------------------------------------------------------------------------------------
def _steer_cases(gen, hidden):
    specs = [("2 layers, layer 1, alpha 1.5", {}, 1, 1.5, 3, 6), ("layer 0, negative alpha", {}, 0, -0.7, 2, 5),
             ("attention-only, no LayerNorm", {"attn_only": True, "normalization": None}, 1, 2.5, 2, 7),
             ("long: 3 layers, 30 positions, middle layer", {"n_layers": 3}, 1, 0.8, 2, 30)]
    if hidden:
        specs += [("hidden: batch 1, alpha 3", {}, 1, 3.0, 1, 4)]
    cases = []
    for name, cfg, layer, alpha, batch, pos in specs:
        model = _random_model(gen, **{"attn_only": False, "normalization": "LN", **cfg})
        tokens = randint(gen, model.cfg.d_vocab, batch, pos)
        direction = randn(gen, model.cfg.d_model, scale=0.7)
        cases.append(Case(name, {"model": model, "tokens": tokens, "layer": layer, "direction": direction,
                                 "alpha": alpha}))
    return cases


def _steer_variant(model, tokens, layer, direction, alpha, hook="resid_pre", positions=slice(None)):
    def add(resid, hp):
        resid = resid.clone()
        resid[:, positions] += alpha * direction
        return resid
    with torch.no_grad():
        return model.run_with_hooks(tokens, [(f"blocks.{layer}.hook_{hook}", add)])


register(Exercise(
    id="steer", chapter=CH11, title="Adding a steering vector",
    signature="steer(model, tokens, layer, direction, alpha)", reference=P.steer,
    withheld=(P.steering_hook,),  # the hook that adds the vector is the exercise
    cases=_steer_cases, points=2, difficulty=2, importance=5, minutes=15, atol=1e-4, rtol=1e-4,
    mistakes=[
        Mistake("You added the vector at the last position only; add it at every position (it broadcasts "
                "over [batch, pos, d_model]).",
                lambda model, tokens, layer, direction, alpha: _steer_variant(
                    model, tokens, layer, direction, alpha, positions=slice(-1, None))),
        Mistake("You added the vector after the block (hook_resid_post); add it where the block reads the "
                "residual stream, blocks.{layer}.hook_resid_pre.",
                lambda model, tokens, layer, direction, alpha: _steer_variant(
                    model, tokens, layer, direction, alpha, hook="resid_post")),
        Mistake("Wrong sign: add alpha * direction to the residual stream, don't subtract it.",
                lambda model, tokens, layer, direction, alpha: P.steer(model, tokens, layer, direction, -alpha)),
        Mistake("Scale the direction by alpha: you added the direction itself.",
                lambda model, tokens, layer, direction, alpha: P.steer(model, tokens, layer, direction, 1.0)),
        Mistake("Don't normalise the direction: add alpha * direction as given (its length is part of the "
                "steering vector).",
                lambda model, tokens, layer, direction, alpha: P.steer(
                    model, tokens, layer, direction / direction.norm(), alpha)),
    ],
))
