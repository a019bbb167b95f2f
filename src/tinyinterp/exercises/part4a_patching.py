"""Part IV exercises: activation patching (ch. 9).

References are :mod:`tinyinterp.patching` functions (or thin wrappers of them, below);
``tests/test_patching.py`` checks those against the hand-built induction circuit, whose answers are
known. Model inputs are small random models (cheap, every mistake visible) and the hand-built
induction circuit of chapter 6 on clean ``[BOS] r r`` / corrupted ``[BOS] r' r`` (meaningful answers).
"""

from __future__ import annotations

import torch

from .. import patching as P
from ..harness.registry import Case, Exercise, Mistake, register
from ..prompts import induction_task
from ._inputs import randint, randn
from .part2_induction import _handcrafted, _random_model, _seed

CH9 = "09_activation_patching"

# While chapter 9 is graded, the rest of tinyinterp.patching stays callable (see Exercise.withheld above for
# what does not; tests/test_graded_copy.py checks that every function there is in one list or the other).
CALLABLE_WHILE_GRADING = {
    "tinyinterp.patching._check_tokens": "an input check: raises on tokens that are not [batch, pos] integers",
    "tinyinterp.patching._scalar": "an input check: raises unless a metric returned one number",
    "tinyinterp.patching._metric_of": "one forward pass with given hooks and a given metric, nothing an exercise asks",
    "tinyinterp.patching._check_head": "an input check on a (layer, head) pair",
    "tinyinterp.patching._as_index": "an input check: an integer index as a Python int",
    "tinyinterp.patching.head_write": "one head's write into the residual stream (chapter 10's path patching)",
    "tinyinterp.patching.head_input": "a layer's q, k or v recomputed from a residual stream (chapter 10)",
    "tinyinterp.patching.path_patch_head_to_head": "path patching (chapter 10), not any scan of this chapter",
    "tinyinterp.patching.path_patch_head_to_head_keys": "path patching through keys (chapter 10)",
    "tinyinterp.patching.metric_and_gradients": "gradients for attribution patching (chapter 10)",
    "tinyinterp.patching._attribution": "first-order estimates (chapter 10): not the exact patches asked here",
    "tinyinterp.patching.attribution_patch_heads": "a first-order estimate (chapter 10), not the exact head scan",
    "tinyinterp.patching.attribution_patch_resid_by_layer_pos": "a first-order estimate (chapter 10), not the "
                                                                 "exact residual scan",
    "tinyinterp.patching.run_with_head_ablated": "runs ablate_head_z, which is withheld: it computes nothing itself",
}


# ----- logit_diff -------------------------------------------------------------------------------------
def _two_tokens(gen, batch, d_vocab):
    answer = randint(gen, d_vocab, batch)
    return answer, (answer + 1 + randint(gen, d_vocab - 1, batch)) % d_vocab  # never equal to answer


def _logit_diff_cases(gen, hidden):
    shapes = [("batch 4, 6 positions, d_vocab 10", 4, 6, 10), ("batch 1", 1, 5, 8),
              ("long: 40 positions", 3, 40, 12), ("large vocabulary: d_vocab 57", 6, 9, 57)]
    if hidden:
        shapes += [("hidden: batch 7, 2 positions", 7, 2, 5)]
    cases = []
    for n, b, s, v in shapes:
        answer, wrong = _two_tokens(gen, b, v)
        cases.append(Case(n, {"logits": randn(gen, b, s, v, scale=3.0), "answer": answer, "wrong": wrong}))
    return cases


def _at(logits, position, answer, wrong):
    at = logits[:, position]
    return at.gather(-1, answer[:, None])[:, 0] - at.gather(-1, wrong[:, None])[:, 0]


def logit_diff(logits, answer, wrong):
    """Mean over the batch of ``logits[b, -1, answer[b]] - logits[b, -1, wrong[b]]``."""
    return P.logit_diff(logits, answer, wrong)


register(Exercise(
    id="logit_diff", chapter=CH9, title="The logit difference",
    withheld=(P.logit_diff,),
    signature="logit_diff(logits, answer, wrong)", reference=logit_diff, cases=_logit_diff_cases,
    points=1, difficulty=1, importance=4, minutes=10,
    mistakes=[
        Mistake("Average over the batch, don't sum: the metric should not grow with the batch size.",
                lambda logits, answer, wrong: _at(logits, -1, answer, wrong).sum()),
        Mistake("The prediction is read at the *last* position (logits[:, -1]); you used the first.",
                lambda logits, answer, wrong: _at(logits, 0, answer, wrong).mean()),
        Mistake("The sign is swapped: the metric is logit[answer] - logit[wrong], positive when the model "
                "prefers the answer.",
                lambda logits, answer, wrong: -_at(logits, -1, answer, wrong).mean()),
        Mistake("Compare logits, not probabilities: a difference of softmax probabilities saturates and depends "
                "on every other token. (A difference of log-probabilities would equal the logit difference.)",
                lambda logits, answer, wrong: _at(logits.softmax(-1), -1, answer, wrong).mean()),
        Mistake("logits[:, -1, answer] pairs every row with every row's answer ([batch, batch]); pick one "
                "token per row, e.g. with gather or logits[torch.arange(batch), -1, answer].",
                lambda logits, answer, wrong: (logits[:, -1, answer] - logits[:, -1, wrong]).mean()),
    ],
))


# ----- normalised_metric --------------------------------------------------------------------------------
def _normalised_cases(gen, hidden):
    def ends(flip):
        corrupted = float(randn(gen, 1)) * 0.5 - 0.5
        clean = corrupted + 1.5 + float(torch.rand(1, generator=gen)) * 3
        return (clean, corrupted) if flip else (corrupted, clean)

    specs = [("a 2 x 6 scan, clean above corrupted", (2, 6), False),
             ("clean below corrupted (a loss: lower is better)", (3, 4), True),
             ("a 1 x 1 scan", (1, 1), False), ("long: 40 values", (40,), False)]
    if hidden:
        specs += [("hidden: clean below corrupted, 3 x 3 x 5", (3, 3, 5), True)]
    cases = []
    for n, shape, flip in specs:
        corrupted, clean = ends(flip)
        value = corrupted + (clean - corrupted) * (torch.rand(*shape, generator=gen) * 1.6 - 0.3)
        cases.append(Case(n, {"value": value, "corrupted_value": round(corrupted, 4), "clean_value": round(clean, 4)}))
    return cases


register(Exercise(
    id="normalised_metric", chapter=CH9, title="0 = corrupted, 1 = clean",
    signature="normalised_metric(value, corrupted_value, clean_value)", reference=P.normalised_metric,
    cases=_normalised_cases, points=1, difficulty=1, importance=5, minutes=10,
    mistakes=[
        Mistake("value / clean_value measures against zero, not against the corrupted run: subtract "
                "corrupted_value from the value and from clean_value.",
                lambda value, corrupted_value, clean_value: value / clean_value),
        Mistake("The ends are swapped: the corrupted run should score 0 and the clean run 1.",
                lambda value, corrupted_value, clean_value: (value - clean_value) / (corrupted_value - clean_value)),
        Mistake("Divide by the distance between the two ends, clean_value - corrupted_value, not by clean_value.",
                lambda value, corrupted_value, clean_value: (value - corrupted_value) / clean_value),
        Mistake("Don't take the absolute value of clean_value - corrupted_value: when the clean run's metric is "
                "the lower one (a loss), the clean run must still score +1.",
                lambda value, corrupted_value, clean_value: (value - corrupted_value) / abs(clean_value - corrupted_value)),
    ],
))


# ----- shared inputs for the patching exercises --------------------------------------------------------------
def _random_pair(gen, model, batch, n_pos):
    """Clean tokens, corrupted tokens that differ at every position, and answer/wrong tokens chosen so
    that the clean and corrupted logit differences are far apart (a well-conditioned scale)."""
    v = model.cfg.d_vocab
    clean = randint(gen, v, batch, n_pos)
    corrupted = (clean + 1 + randint(gen, v - 1, batch, n_pos)) % v
    with torch.no_grad():
        gap = model(clean)[:, -1] - model(corrupted)[:, -1]
    return clean, corrupted, gap.argmax(-1), gap.argmin(-1)


def _induction_pair(batch, seq_len, d_vocab, seed):
    """``[BOS] r r[:-1]`` against ``[BOS] r' r[:-1]``, scored at the last position: answer ``r[-1]``,
    wrong ``r'[-1]`` (what the corrupted first copy would suggest)."""
    task = induction_task(batch, seq_len, d_vocab, seed)
    return task.clean[:, :-1], task.corrupted[:, :-1], task.answer[:, -1], task.wrong[:, -1]


def _scan_cases(gen, hidden):
    specs = [("random model, batch 4, 7 positions", {}, 4, 7), ("random model with MLPs and LayerNorm",
             {"attn_only": False, "normalization": "LN"}, 3, 6), ("batch 1", {}, 1, 5),
             ("long: 16 positions", {"n_heads": 2}, 2, 16)]
    if hidden:
        specs += [("hidden: 3 layers, 1 head per layer", {"n_layers": 3, "n_heads": 1}, 3, 5)]
    cases = []
    for n, cfg, b, s in specs:
        model = _random_model(gen, **cfg)
        clean, corrupted, answer, wrong = _random_pair(gen, model, b, s)
        cases.append(Case(n, {"model": model, "clean_tokens": clean, "corrupted_tokens": corrupted,
                              "answer": answer, "wrong": wrong}))
    seq_len, d_vocab = 6, 15
    model = _handcrafted(gen, d_vocab, 2 * seq_len + 1, 2, (0,), (1,))
    clean, corrupted, answer, wrong = _induction_pair(4, seq_len, d_vocab, _seed(gen) % 10_000)
    cases.append(Case("hand-built induction circuit, first copy resampled", {
        "model": model, "clean_tokens": clean, "corrupted_tokens": corrupted, "answer": answer, "wrong": wrong}))
    return cases


def _metric(answer, wrong):
    return lambda logits: P.logit_diff(logits, answer, wrong)


def _scan(short, index_of, shape_of, noising=False, normalise=True, baseline_zero=False):
    """A scan like the library's, with the variations that the mistakes below make."""
    def scan(model, clean_tokens, corrupted_tokens, answer, wrong):
        metric = _metric(answer, wrong)
        base, source = (clean_tokens, corrupted_tokens) if noising else (corrupted_tokens, clean_tokens)
        names = [f"blocks.{layer}.{short}" for layer in range(model.cfg.n_layers)]
        with torch.no_grad():
            _, cache = model.run_with_cache(source, names_filter=names)
            clean_v, corrupted_v = metric(model(clean_tokens)).item(), metric(model(corrupted_tokens)).item()
            shape = shape_of(model, clean_tokens)
            out = torch.zeros(shape)
            for layer in range(shape[0]):
                for j in range(shape[1]):
                    hook = P.patch_hook(cache[names[layer]], index_of(j))
                    out[layer, j] = metric(model.run_with_hooks(base, [(names[layer], hook)])).item()
        if not normalise:
            return out
        return out / clean_v if baseline_zero else P.normalised_metric(out, corrupted_v, clean_v)
    return scan


# ----- patch_resid_pre ----------------------------------------------------------------------------------------
def patch_resid_pre(model, corrupted_tokens, clean_resid_pre, layer, pos):
    """Logits of the corrupted run with ``blocks.{layer}.hook_resid_pre`` at position ``pos`` (every
    batch row) replaced by ``clean_resid_pre[:, pos]``."""
    with torch.no_grad():
        return model.run_with_hooks(corrupted_tokens, [(f"blocks.{layer}.hook_resid_pre",
                                                        P.patch_hook(clean_resid_pre, (slice(None), pos)))])


def _patch_cases(gen, hidden):
    specs = [("random model, layer 1, position 3", {}, 4, 7, 1, 3),
             ("random model with MLPs and LayerNorm, layer 0", {"attn_only": False, "normalization": "LN"}, 3, 6, 0, 4),
             ("batch 1, the last position", {}, 1, 5, 1, 4), ("long: 20 positions, position 0", {}, 2, 20, 0, 0)]
    if hidden:
        specs += [("hidden: 3 layers, layer 2", {"n_layers": 3}, 3, 6, 2, 2)]
    cases = []
    for n, cfg, b, s, layer, pos in specs:
        model = _random_model(gen, **cfg)
        clean, corrupted, _, _ = _random_pair(gen, model, b, s)
        cases.append((n, model, clean, corrupted, layer, pos))
    seq_len, d_vocab = 6, 15
    model = _handcrafted(gen, d_vocab, 2 * seq_len + 1, 2, (0,), (1,))
    clean, corrupted, _, _ = _induction_pair(4, seq_len, d_vocab, _seed(gen) % 10_000)
    cases.append(("hand-built induction circuit, layer 1, the last token of the first copy", model, clean, corrupted,
                  1, seq_len))
    out = []
    for n, model, clean, corrupted, layer, pos in cases:
        name = f"blocks.{layer}.hook_resid_pre"
        with torch.no_grad():
            _, cache = model.run_with_cache(clean, names_filter=[name])
        out.append(Case(n, {"model": model, "corrupted_tokens": corrupted, "clean_resid_pre": cache[name],
                            "layer": layer, "pos": pos}))
    return out


def _patched(model, tokens, name, source, index):
    with torch.no_grad():
        return model.run_with_hooks(tokens, [(name, P.patch_hook(source, index))])


register(Exercise(
    id="patch_resid_pre", chapter=CH9, title="Patch one residual-stream position",
    withheld=(P.patch_hook,),
    signature="patch_resid_pre(model, corrupted_tokens, clean_resid_pre, layer, pos)", reference=patch_resid_pre,
    cases=_patch_cases, points=2, difficulty=2, importance=5, minutes=15, atol=1e-3, rtol=1e-3,
    mistakes=[
        Mistake("You patched every position: replace only act[:, pos] (every batch row, one position).",
                lambda model, corrupted_tokens, clean_resid_pre, layer, pos: _patched(
                    model, corrupted_tokens, f"blocks.{layer}.hook_resid_pre", clean_resid_pre, (slice(None),))),
        Mistake("Off by one: patch position pos itself, act[:, pos], not pos - 1.",
                lambda model, corrupted_tokens, clean_resid_pre, layer, pos: _patched(
                    model, corrupted_tokens, f"blocks.{layer}.hook_resid_pre", clean_resid_pre,
                    (slice(None), pos - 1))),
        Mistake("Hook blocks.{layer}.hook_resid_pre, the stream *entering* the layer, not hook_resid_post "
                "(leaving it).",
                lambda model, corrupted_tokens, clean_resid_pre, layer, pos: _patched(
                    model, corrupted_tokens, f"blocks.{layer}.hook_resid_post", clean_resid_pre, (slice(None), pos))),
        Mistake("These are the corrupted run's logits, unpatched: the hook must *return* the patched copy (or "
                "edit the activation it was given), and the model must run with the hook attached.",
                lambda model, corrupted_tokens, clean_resid_pre, layer, pos: _patched(
                    model, corrupted_tokens, f"blocks.{layer}.hook_resid_pre", clean_resid_pre, (slice(0, 0),))),
    ],
))


# ----- resid_patching_scan ---------------------------------------------------------------------------------
def resid_patching_scan(model, clean_tokens, corrupted_tokens, answer, wrong):
    """Denoising: normalised logit difference with ``hook_resid_pre`` of one layer at one position
    patched from the clean run into the corrupted one, ``[n_layers, pos]``."""
    return P.patch_resid_by_layer_pos(model, clean_tokens, corrupted_tokens, _metric(answer, wrong))


def _resid_scan(**kw):
    return _scan("hook_resid_pre", lambda p: (slice(None), p),
                 lambda model, tokens: (model.cfg.n_layers, tokens.shape[1]), **kw)


register(Exercise(
    id="resid_patching_scan", chapter=CH9, title="Patch the residual stream, layer by position",
    withheld=(P.patch_resid_by_layer_pos, P._patch_scan, P._runs),
    signature="resid_patching_scan(model, clean_tokens, corrupted_tokens, answer, wrong)",
    reference=resid_patching_scan, cases=_scan_cases, points=2, difficulty=3, importance=5, minutes=20,
    atol=1e-4, rtol=1e-3,
    mistakes=[
        Mistake("Normalise: (patched - corrupted) / (clean - corrupted), so that 0 = the corrupted run's logit "
                "difference and 1 = the clean run's; you returned raw logit differences.",
                _resid_scan(normalise=False)),
        Mistake("That is noising (a corrupted activation patched into the clean run). Denoise: run the "
                "*corrupted* tokens and patch in the clean activation.",
                _resid_scan(noising=True)),
        Mistake("Your scale starts at zero logit difference, not at the corrupted run: normalise with "
                "(patched - corrupted) / (clean - corrupted), not patched / clean.",
                _resid_scan(baseline_zero=True)),
        Mistake("Scan blocks.{layer}.hook_resid_pre (the stream entering each layer); you scanned hook_resid_post.",
                _scan("hook_resid_post", lambda p: (slice(None), p),
                      lambda model, tokens: (model.cfg.n_layers, tokens.shape[1]))),
    ],
))


# ----- head_patching_scan ----------------------------------------------------------------------------------
def head_patching_scan(model, clean_tokens, corrupted_tokens, answer, wrong):
    """Denoising: normalised logit difference with one head's slice of ``hook_z`` patched at every
    position, ``[n_layers, n_heads]``."""
    return P.patch_head_outputs(model, clean_tokens, corrupted_tokens, _metric(answer, wrong))


def _head_scan(index_of=lambda h: (slice(None), slice(None), h), **kw):
    return _scan("attn.hook_z", index_of, lambda model, tokens: (model.cfg.n_layers, model.cfg.n_heads), **kw)


register(Exercise(
    id="head_patching_scan", chapter=CH9, title="Patch each head's output",
    withheld=(P.patch_head_outputs, P.patch_head_by_pos),
    signature="head_patching_scan(model, clean_tokens, corrupted_tokens, answer, wrong)",
    reference=head_patching_scan, cases=_scan_cases, points=2, difficulty=3, importance=5, minutes=15,
    atol=1e-4, rtol=1e-3,
    mistakes=[
        Mistake("You patched the whole layer (every head at once): patch z[:, :, head] only.",
                _head_scan(index_of=lambda h: (slice(None),))),
        Mistake("Patch the head at every position, z[:, :, head]; you patched the last position only.",
                _head_scan(index_of=lambda h: (slice(None), -1, h))),
        Mistake("Denoise: run the corrupted tokens and patch in the clean run's z; you patched the corrupted "
                "z into the clean run (noising).",
                _head_scan(noising=True)),
        Mistake("Put the results on the normalised scale, (patched - corrupted) / (clean - corrupted); you "
                "returned raw logit differences.",
                _head_scan(normalise=False)),
    ],
))


# ----- ablate_head_z ----------------------------------------------------------------------------------------
def _ablate_cases(gen, hidden):
    specs = [("mean-ablation, batch 4, 6 positions, 3 heads", "mean", 4, 5, 6, 3, 1),
             ("resample-ablation", "resample", 3, 3, 5, 3, 2), ("zero-ablation", "zero", 2, 3, 4, 2, 0),
             ("mean-ablation, batch 1, head 0", "mean", 1, 6, 5, 2, 0),
             ("long: 30 positions, resample", "resample", 2, 2, 30, 4, 3)]
    if hidden:
        specs += [("hidden: mean-ablation, one head", "mean", 3, 7, 4, 1, 0)]
    cases = []
    for n, kind, b, rb, s, h, head in specs:
        d_head = 4
        z = randn(gen, b, s, h, d_head)
        ref = randn(gen, rb, s, h, d_head) + randn(gen, 1, 1, h, d_head)  # a mean far from zero
        cases.append(Case(n, {"z": z, "head": head, "kind": kind, "z_reference": ref}))
    return cases


def _replace(z, head, value, all_heads=False):
    out = z.clone()
    if all_heads:
        out[:] = value
    else:
        out[:, :, head] = value
    return out


def _whole_layer(z, head, kind, z_reference):
    if kind == "zero":
        return torch.zeros_like(z)
    return _replace(z, head, z_reference.mean(dim=(0, 1)) if kind == "mean" else z_reference, all_heads=True)


def _variant(mean_of):
    """The reference, with the mean-ablation's mean computed by ``mean_of(z, z_reference, head)``."""
    def ablate(z, head, kind, z_reference):
        if kind == "mean":
            return _replace(z, head, mean_of(z, z_reference, head))
        return P.ablate_head_z(z, head, kind, z_reference)
    return ablate


register(Exercise(
    id="ablate_head_z", chapter=CH9, title="Zero-, mean- and resample-ablation of a head",
    signature="ablate_head_z(z, head, kind, z_reference)", reference=P.ablate_head_z, cases=_ablate_cases,
    points=2, difficulty=2, importance=4, minutes=15,
    mistakes=[
        Mistake("The mean runs over the batch *and* the positions of z_reference (dims 0 and 1): one d_head "
                "vector for every position. You averaged over the batch only.",
                _variant(lambda z, z_ref, head: z_ref[:, :, head].mean(0))),
        Mistake("Mean-ablation replaces the head by its mean on the *reference* run, z_reference; you took "
                "the mean of z, the run being ablated, which still carries the information you meant to remove.",
                _variant(lambda z, z_ref, head: z[:, :, head].mean(dim=(0, 1)))),
        Mistake("Keep the d_head dimension: the mean is a vector of d_head numbers (mean over dims 0 and 1), "
                "not one number for the whole head.",
                _variant(lambda z, z_ref, head: z_ref[:, :, head].mean())),
        Mistake("You replaced every head of the layer; replace only z[:, :, head] and leave the others as they are.",
                _whole_layer),
    ],
))
