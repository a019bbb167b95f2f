"""Part IV exercises: path patching and attribution patching (ch. 10).

References are small functions here that call the library (:mod:`tinyinterp.patching`, whose
known-answer tests are in ``tests/test_patching.py``) with a logit-difference metric built from
``answer``, ``wrong`` and ``positions`` (test inputs hold no callables), or the library itself
(:func:`tinyinterp.patching_cost.pearson_correlation`).

What a mistake can be: only what changes the outputs. Summing the metric over the batch instead of
averaging it scales the clean, corrupted and estimated values alike, and normalising cancels the
scale; a gradient left attached, or accumulated on a parameter's ``.grad``, changes no returned value.
Neither is catalogued.

While grading, each exercise's reference is withheld with the library functions that would do its work
(``withheld=``); every other function of the modules those live in stays callable, for the reason given in
:data:`CALLABLE_WHILE_GRADING` (tests/test_graded_copy.py checks that the two lists cover both modules).
"""

from __future__ import annotations

from functools import partial

import torch

from .. import functional as Fn
from .. import patching as P
from ..harness.registry import Case, Exercise, Mistake, register
from ..patching_cost import pearson_correlation
from ..prompts import induction_task
from ._inputs import randn
from .part2_induction import _handcrafted, _random_model, _seed

CH10 = "10_path_and_attribution_patching"

_REAL_PATCHING = "real activation patching (chapter 9): a different computation from every exercise of this chapter"
CALLABLE_WHILE_GRADING = {
    "tinyinterp.patching.logit_diff": "the metric, given to the learner in this chapter's statements and imports",
    "tinyinterp.patching.normalised_metric": "one division, (value - corrupted) / (clean - corrupted), given in "
                                             "full in the statements",
    "tinyinterp.patching._check_tokens": "an input check",
    "tinyinterp.patching._scalar": "an input check (the metric returned one number)",
    "tinyinterp.patching._as_index": "an input check (an index is an integer)",
    "tinyinterp.patching._check_head": "an input check (a (layer, head) of the model)",
    "tinyinterp.patching._metric_of": "one hooked forward pass and its metric: a line of any solution, "
                                      "with hooks the learner writes",
    "tinyinterp.patching._patch_scan": f"{_REAL_PATCHING}; it patches from the clean cache through _runs and "
                                       "patch_hook, both withheld here",
    "tinyinterp.patching.patch_resid_by_layer_pos": _REAL_PATCHING,
    "tinyinterp.patching.patch_head_outputs": _REAL_PATCHING,
    "tinyinterp.patching.patch_head_by_pos": _REAL_PATCHING,
    "tinyinterp.patching.run_with_head_ablated": "runs the model with one head's output ablated (chapter 9), "
                                                 "through ablate_head_z, withheld here",
    "tinyinterp.patching_cost.agreement": "reports the correlation and the largest error by calling "
                                          "pearson_correlation, withheld here, so it cannot stand in for it",
    "tinyinterp.patching_cost.plot_agreement": "draws a scatter plot; the correlation in its title comes from "
                                               "pearson_correlation, withheld here",
    "tinyinterp.patching_cost.count_passes": "counts forward and backward passes; computes no patch",
    "tinyinterp.patching_cost.random_patching_setup": "builds a random model and task for timing",
    "tinyinterp.patching_cost._threads": "sets torch's thread count",
    "tinyinterp.patching_cost._check_methods": "an input check",
    "tinyinterp.patching_cost._is_int": "an input check",
    "tinyinterp.patching_cost.measure_cost": "times the library's patching functions and returns pass counts "
                                             "and seconds, no patching result",
    "tinyinterp.patching_cost._measure": "the timing loop of measure_cost: pass counts and seconds only",
    "tinyinterp.patching_cost.cost_sweep": "measure_cost on growing random models: pass counts and seconds only",
    "tinyinterp.patching_cost.plot_cost": "draws the cost figure from rows of pass counts and seconds",
}


# ----- sender_write_delta -------------------------------------------------------------------------------
def sender_write_delta(z_clean, z_corrupted, W_O, head):
    """How one head's write into the residual stream changes from the corrupted run to the clean one:
    ``(z_clean - z_corrupted)[:, :, head] @ W_O[head]``, ``[batch, pos, d_model]``."""
    return (z_clean - z_corrupted)[:, :, head] @ W_O[head]


def _delta_cases(gen, hidden):
    shapes = [("batch 2, pos 5, 3 heads, d_head 4, d_model 8, head 1", 2, 5, 3, 4, 8, 1),
              ("batch 1, head 0", 1, 4, 2, 3, 6, 0), ("last head of 4", 3, 3, 4, 2, 5, 3),
              ("long: pos 40", 2, 40, 2, 4, 8, 1)]
    if hidden:
        shapes += [("hidden: d_head 1, head 2", 2, 6, 3, 1, 4, 2), ("hidden: one head", 2, 5, 1, 3, 7, 0)]
    return [Case(n, {"z_clean": randn(gen, b, p, h, d), "z_corrupted": randn(gen, b, p, h, d),
                     "W_O": randn(gen, h, d, m), "head": k}) for n, b, p, h, d, m, k in shapes]


register(Exercise(
    id="sender_write_delta", chapter=CH10, title="What the sender's patch adds to the residual stream",
    signature="sender_write_delta(z_clean, z_corrupted, W_O, head)", reference=sender_write_delta,
    withheld=(P.head_write,),
    cases=_delta_cases, points=1, difficulty=1, importance=4, minutes=10, atol=1e-4,
    mistakes=[
        Mistake("Sign swapped: denoising moves the corrupted run towards the clean one, so the change is "
                "z_clean - z_corrupted, not z_corrupted - z_clean.",
                lambda z_clean, z_corrupted, W_O, head: (z_corrupted - z_clean)[:, :, head] @ W_O[head]),
        Mistake("You summed the writes of every head of the layer; path patching moves one sender head only: "
                "keep z[:, :, head] and multiply by that head's W_O[head].",
                lambda z_clean, z_corrupted, W_O, head: torch.einsum("bphd,hdm->bpm", z_clean - z_corrupted, W_O)),
        Mistake("You returned the clean write itself; the patch *adds* the difference between the clean and the "
                "corrupted write (the corrupted write is already in the residual stream).",
                lambda z_clean, z_corrupted, W_O, head: z_clean[:, :, head] @ W_O[head]),
    ],
))


# ----- path_patch_keys ------------------------------------------------------------------------------------
def _metric(answer, wrong, positions):
    return partial(P.logit_diff, answer=answer, wrong=wrong, positions=positions)


def path_patch_keys(model, clean_tokens, corrupted_tokens, sender, receiver, answer, wrong, positions):
    """Denoising path patch, sender head -> receiver head's keys, on the normalised logit-difference scale."""
    metric = _metric(answer, wrong, positions)
    return torch.tensor(P.path_patch_head_to_head(model, clean_tokens, corrupted_tokens, tuple(sender),
                                                  tuple(receiver), metric, "k"))


def _normalised_with(model, clean_tokens, corrupted_tokens, answer, wrong, positions, hooks, normalise=True):
    """The metric of the corrupted run with ``hooks``, normalised (or not)."""
    metric = _metric(answer, wrong, positions)
    with torch.no_grad():
        value = metric(model.run_with_hooks(corrupted_tokens, hooks)).item()
        if not normalise:
            return torch.tensor(value)
        clean, corrupted = metric(model(clean_tokens)).item(), metric(model(corrupted_tokens)).item()
    return torch.tensor(P.normalised_metric(value, corrupted, clean))


def _path_variant(model, clean_tokens, corrupted_tokens, sender, receiver, answer, wrong, positions,
                  which="k", sign=1.0, ln=True, normalise=True):
    (s_layer, s_head), (r_layer, r_head) = sender, receiver
    z_name, resid_name = f"blocks.{s_layer}.attn.hook_z", f"blocks.{r_layer}.hook_resid_pre"
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens, names_filter=[z_name])
        _, base = model.run_with_cache(corrupted_tokens, names_filter=[z_name, resid_name])
    delta = sign * P.head_write(model, s_layer, s_head, clean_cache[z_name] - base[z_name])
    attn = model.blocks[r_layer].attn
    W, b = {"q": (attn.W_Q, attn.b_Q), "k": (attn.W_K, attn.b_K)}[which]
    resid = base[resid_name] + delta
    with torch.no_grad():
        new = Fn.project_to_heads(model.blocks[r_layer].ln1(resid) if ln else resid, W, b)
    hook = P.patch_hook(new, (slice(None), slice(None), r_head))
    return _normalised_with(model, clean_tokens, corrupted_tokens, answer, wrong, positions,
                            [(f"blocks.{r_layer}.attn.hook_{which}", hook)], normalise)


def _patch_from_clean(model, clean_tokens, corrupted_tokens, answer, wrong, positions, name, head):
    with torch.no_grad():
        _, cache = model.run_with_cache(clean_tokens, names_filter=[name])
    hook = P.patch_hook(cache[name], (slice(None), slice(None), head))
    return _normalised_with(model, clean_tokens, corrupted_tokens, answer, wrong, positions, [(name, hook)])


def _gapped_task(model, batch, seq_len, gen, min_gap=0.3):
    """An induction task on which the clean and corrupted logit differences are at least ``min_gap``
    apart, so that the normalised scale (which divides by that gap) is well-conditioned."""
    for _ in range(100):
        task = induction_task(batch, seq_len, model.cfg.d_vocab, _seed(gen) % 10_000)
        with torch.no_grad():
            gap = task.metric(model(task.clean)) - task.metric(model(task.corrupted))
        if abs(gap) >= min_gap:
            return task
    raise RuntimeError("no well-conditioned task found for this model")


def _path_cases(gen, hidden):
    # First a random model with LayerNorm, MLPs and non-zero biases: every catalogued mistake gives its own
    # wrong answer there, so the first failing case names it by itself.
    specs = [("random model with LayerNorm and MLPs, batch 4, seq_len 6",
              _random_model(gen, attn_only=False, normalization="LN", d_vocab=25), 4, 6, (0, 1), (1, 2))]
    V = 13
    specs.append(("hand-built circuit: previous-token head -> induction head",
                  _handcrafted(gen, V, 13, 3, (1,), (2,)), 4, 5, (0, 1), (1, 2)))
    specs.append(("hand-built circuit: previous-token head -> a head that is not the induction head",
                  _handcrafted(gen, V, 13, 3, (1,), (2,)), 4, 5, (0, 1), (1, 0)))
    specs.append(("random attention-only model, batch 1", _random_model(gen), 1, 5, (0, 2), (1, 1)))
    specs.append(("long: seq_len 16, random model with LayerNorm",
                  _random_model(gen, normalization="LN", d_vocab=40), 2, 16, (0, 0), (1, 0)))
    if hidden:
        specs.append(("hidden: hand-built circuit with 2 heads, other places", _handcrafted(gen, V, 13, 2, (0,), (1,)),
                      3, 6, (0, 0), (1, 1)))
        specs.append(("hidden: random model with LayerNorm, 2 heads",
                      _random_model(gen, normalization="LN", attn_only=False, n_heads=2), 3, 7, (0, 1), (1, 0)))
    cases = []
    for name, model, batch, seq_len, sender, receiver in specs:
        task = _gapped_task(model, batch, seq_len, gen)
        cases.append(Case(name, {"model": model, "clean_tokens": task.clean, "corrupted_tokens": task.corrupted,
                                 "sender": sender, "receiver": receiver, "answer": task.answer, "wrong": task.wrong,
                                 "positions": task.positions}))
    return cases


def _plain_sender_patch(model, clean_tokens, corrupted_tokens, sender, receiver, answer, wrong, positions):
    return _patch_from_clean(model, clean_tokens, corrupted_tokens, answer, wrong, positions,
                             f"blocks.{sender[0]}.attn.hook_z", sender[1])


def _clean_receiver_keys(model, clean_tokens, corrupted_tokens, sender, receiver, answer, wrong, positions):
    return _patch_from_clean(model, clean_tokens, corrupted_tokens, answer, wrong, positions,
                             f"blocks.{receiver[0]}.attn.hook_k", receiver[1])


register(Exercise(
    id="path_patch_keys", chapter=CH10, title="Path patching into the receiver's keys",
    # ablate_head_z(k, head, "resample", new_k) is patch_hook's slice replacement under another name
    withheld=(P.path_patch_head_to_head, P.path_patch_head_to_head_keys, P.head_input, P.patch_hook,
              P.ablate_head_z),
    signature="path_patch_keys(model, clean_tokens, corrupted_tokens, sender, receiver, answer, wrong, positions)",
    reference=path_patch_keys, cases=_path_cases, points=3, difficulty=4, importance=5, minutes=30,
    atol=1e-4, rtol=1e-3,
    mistakes=[
        Mistake("That is plain activation patching of the sender: its clean output reached everything downstream. "
                "Path patching adds the sender's change only to the residual stream that the receiver's keys read, "
                "and patches only the receiver's hook_k.", _plain_sender_patch),
        Mistake("You patched the receiver's queries (hook_q, through W_Q and b_Q); in K-composition the sender "
                "feeds the receiver's keys: recompute hook_k with W_K and b_K.",
                lambda **kwargs: _path_variant(**kwargs, which="q")),
        Mistake("You copied the receiver's keys from the clean run: that carries every path into them, not only "
                "the sender's. Recompute the keys from the corrupted run's resid_pre plus the sender's change.",
                _clean_receiver_keys),
        Mistake("The receiver's keys are computed from the *normalised* residual stream: apply the receiver "
                "layer's ln1 (model.blocks[layer].ln1) before W_K and b_K.",
                lambda **kwargs: _path_variant(**kwargs, ln=False)),
        Mistake("Sign swapped: the sender's change is its clean write minus its corrupted write (denoising "
                "starts from the corrupted run).", lambda **kwargs: _path_variant(**kwargs, sign=-1.0)),
        Mistake("Normalise the result: (patched - corrupted) / (clean - corrupted), so that 0 is the corrupted "
                "run and 1 the clean run; you returned the raw logit difference.",
                lambda **kwargs: _path_variant(**kwargs, normalise=False)),
    ],
))


# ----- attribution_scores ---------------------------------------------------------------------------------
def attribution_scores(grad_z, z_clean, z_corrupted):
    """First-order change of the metric for each head: ``grad . (z_clean - z_corrupted)`` summed over
    batch, positions and ``d_head``. ``[n_heads]``."""
    return (grad_z * (z_clean - z_corrupted)).sum(dim=(0, 1, 3))


def _score_cases(gen, hidden):
    shapes = [("batch 2, pos 5, 3 heads, d_head 4", 2, 5, 3, 4), ("batch 1", 1, 6, 2, 3),
              ("one position, one head", 3, 1, 1, 5), ("long: pos 40", 2, 40, 4, 8)]
    if hidden:
        shapes += [("hidden: d_head 1", 4, 7, 3, 1)]
    return [Case(n, {"grad_z": randn(gen, b, p, h, d, scale=0.3), "z_clean": randn(gen, b, p, h, d),
                     "z_corrupted": randn(gen, b, p, h, d)}) for n, b, p, h, d in shapes]


register(Exercise(
    id="attribution_scores", chapter=CH10, title="Gradient times activation difference",
    signature="attribution_scores(grad_z, z_clean, z_corrupted)", reference=attribution_scores,
    cases=_score_cases, points=1, difficulty=1, importance=5, minutes=10, atol=1e-4,
    mistakes=[
        Mistake("Sign swapped: the patch moves z from its corrupted value to its clean value, so multiply the "
                "gradient by z_clean - z_corrupted.",
                lambda grad_z, z_clean, z_corrupted: (grad_z * (z_corrupted - z_clean)).sum(dim=(0, 1, 3))),
        Mistake("You summed the gradient alone: the first-order change is the gradient *times* how far the "
                "activation moves, grad_z * (z_clean - z_corrupted).",
                lambda grad_z, z_clean, z_corrupted: grad_z.sum(dim=(0, 1, 3))),
        Mistake("That is gradient x input (grad_z * z_clean); attribution patching multiplies by the "
                "*difference* z_clean - z_corrupted, the move the patch makes.",
                lambda grad_z, z_clean, z_corrupted: (grad_z * z_clean).sum(dim=(0, 1, 3))),
        Mistake("Sum over batch, positions and d_head, don't average: the changes that the patch makes at every "
                "entry add up.",
                lambda grad_z, z_clean, z_corrupted: (grad_z * (z_clean - z_corrupted)).mean(dim=(0, 1, 3))),
    ],
))


# ----- attribution_patch_heads --------------------------------------------------------------------------
def attribution_patch_heads(model, clean_tokens, corrupted_tokens, answer, wrong, positions):
    """Denoising attribution patching of every head's output, normalised: ``[n_layers, n_heads]``."""
    return P.attribution_patch_heads(model, clean_tokens, corrupted_tokens, _metric(answer, wrong, positions))


def _attribution_variant(model, clean_tokens, corrupted_tokens, answer, wrong, positions,
                         grad_at="corrupted", sign=1.0, reduce="sum", normalise=True):
    metric = _metric(answer, wrong, positions)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    clean_v, clean_acts, clean_grads = P.metric_and_gradients(model, clean_tokens, metric, names)
    corrupted_v, corrupted_acts, corrupted_grads = P.metric_and_gradients(model, corrupted_tokens, metric, names)
    grads = clean_grads if grad_at == "clean" else corrupted_grads
    est = torch.stack([getattr(grads[n] * sign * (clean_acts[n] - corrupted_acts[n]), reduce)(dim=(0, 1, 3))
                       for n in names])
    return P.normalised_metric(corrupted_v + est, corrupted_v, clean_v) if normalise else est


def _cut_graph_variant(model, clean_tokens, corrupted_tokens, answer, wrong, positions):
    """Each hook returns ``z.detach().requires_grad_()``: later layers no longer depend on earlier heads."""
    metric = _metric(answer, wrong, positions)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    leaves = {}

    def cut(z, hook):
        leaves[hook.name] = z.detach().requires_grad_(True)
        return leaves[hook.name]

    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean_tokens, names_filter=names)
    with torch.enable_grad():
        value = metric(model.run_with_hooks(corrupted_tokens, [(n, cut) for n in names]))
        grads = torch.autograd.grad(value, [leaves[n] for n in names], allow_unused=True)
    est = torch.stack([(torch.zeros_like(leaves[n]) if g is None else g) * (clean_cache[n] - leaves[n].detach())
                       for g, n in zip(grads, names)]).sum(dim=(1, 2, 4))
    value = value.detach()
    return P.normalised_metric(value + est, value, metric(clean_logits).item())


def _with_grad(model):
    """The model with every parameter requiring grad, as the notebook's models have them: so that the usual
    ``z.retain_grad()`` + ``.backward()`` route works (on a model without any, it raises)."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _attribution_cases(gen, hidden):
    specs = [("random model with LayerNorm and MLPs, batch 4, seq_len 6",
              _random_model(gen, attn_only=False, normalization="LN", d_vocab=25), 4, 6),
             ("hand-built induction circuit", _handcrafted(gen, 13, 13, 3, (1,), (2,)), 4, 5),
             ("random attention-only model, batch 1", _random_model(gen), 1, 5),
             ("long: seq_len 16, 3 layers", _random_model(gen, n_layers=3, d_vocab=40), 2, 16)]
    if hidden:
        specs.append(("hidden: random model with LayerNorm, 2 heads",
                      _random_model(gen, normalization="LN", attn_only=False, n_heads=2), 3, 7))
    cases = []
    for name, model, batch, seq_len in specs:
        task = _gapped_task(model, batch, seq_len, gen)
        cases.append(Case(name, {"model": _with_grad(model), "clean_tokens": task.clean,
                                 "corrupted_tokens": task.corrupted, "answer": task.answer, "wrong": task.wrong,
                                 "positions": task.positions}))
    return cases


register(Exercise(
    id="attribution_patch_heads", chapter=CH10, title="Attribution patching of every head",
    withheld=(P.attribution_patch_heads, P._attribution, P.metric_and_gradients, P._runs,
              P.attribution_patch_resid_by_layer_pos),
    signature="attribution_patch_heads(model, clean_tokens, corrupted_tokens, answer, wrong, positions)",
    reference=attribution_patch_heads, cases=_attribution_cases, points=2, difficulty=3, importance=5, minutes=25,
    atol=1e-4, rtol=1e-3,
    mistakes=[
        Mistake("You took the gradient at the clean run. Denoising estimates patching *into the corrupted run*, "
                "so expand the metric around the corrupted run: its gradient, at the corrupted input.",
                lambda **kwargs: _attribution_variant(**kwargs, grad_at="clean")),
        Mistake("Normalise the estimate like a real patch: (corrupted metric + estimated change - corrupted) / "
                "(clean - corrupted); you returned the raw estimated change of the logit difference.",
                lambda **kwargs: _attribution_variant(**kwargs, normalise=False)),
        Mistake("Sign swapped: multiply the gradient by z_clean - z_corrupted, the move that denoising makes.",
                lambda **kwargs: _attribution_variant(**kwargs, sign=-1.0)),
        Mistake("You averaged grad * (z_clean - z_corrupted) over batch, positions and d_head; the first-order "
                "changes add up: sum them.", lambda **kwargs: _attribution_variant(**kwargs, reduce="mean")),
        Mistake("Your hooks returned a detached copy of z, which cuts the graph: later layers no longer depend on "
                "earlier heads, so an early head's gradient misses every path through later heads. Keep the graph: "
                "return z + zero, with zero = torch.zeros_like(z, requires_grad=True), and differentiate with "
                "respect to zero.", _cut_graph_variant),
    ],
))


# ----- pearson_correlation --------------------------------------------------------------------------------
def _table_cases(gen, hidden):
    shapes = [("3 x 4 table, correlated", (3, 4), 0.5), ("1-D, 6 entries", (6,), 1.0),
              ("two entries per row", (5, 2), 0.3), ("large: 8 x 64 table", (8, 64), 0.8),
              ("uncorrelated noise", (4, 5), 5.0)]
    if hidden:
        shapes += [("hidden: 2 x 3, strong offset", (2, 3), 0.2)]
    cases = []
    for name, shape, noise in shapes:
        x = randn(gen, *shape) + 1.0
        cases.append(Case(name, {"x": x, "y": 0.7 * x - 0.3 + randn(gen, *shape, scale=noise)}))
    return cases


def _centred(t):
    return t.flatten() - t.mean()


register(Exercise(
    id="pearson_correlation", chapter=CH10, title="Agreement: the Pearson correlation",
    signature="pearson_correlation(x, y)", reference=pearson_correlation, cases=_table_cases,
    points=1, difficulty=1, importance=3, minutes=10,
    mistakes=[
        Mistake("That is the cosine similarity: subtract each tensor's mean first, so that a shared offset does "
                "not count as agreement.",
                lambda x, y: (x.flatten() @ y.flatten()) / (x.norm() * y.norm())),
        Mistake("You returned the covariance; divide by the two norms (or standard deviations) so that the "
                "result lies in [-1, 1].", lambda x, y: (_centred(x) @ _centred(y)) / x.numel()),
        Mistake("Centre both tensors, not only x: subtract y.mean() from y as well.",
                lambda x, y: (_centred(x) @ y.flatten()) / (_centred(x).norm() * y.norm())),
        Mistake("Correlate all the entries at once (flatten both tables); you correlated row by row and "
                "averaged.",
                lambda x, y: torch.stack([pearson_correlation(a, b) for a, b in zip(x, y)]).mean()
                if x.ndim > 1 else pearson_correlation(x, y)),
    ],
))
