"""Part V exercises: catch the shortcut (ch. 14), on the review classifiers of :mod:`tinyinterp.reviews`.

References are the library functions the chapter uses (:mod:`tinyinterp.shortcut`); ``tests/test_shortcut.py``
checks those by hand-built edits and on the planted-shortcut model. Besides the model trained with the
shortcut "film", the cases use *planted* models: the clean classifier with one neutral word's embedding
overwritten by a sentiment word's, so that the model reacts to it as to that sentiment word. The word is
drawn by the case generator, so the hidden cases plant words the public cases do not show.
"""

from __future__ import annotations

import torch

from .. import patching as P
from .. import reviews as R
from .. import shortcut as S
from ..harness.registry import Case, Exercise, Mistake, register
from .part2_induction import _random_model, _seed, _shown

CH14 = "14_catch_the_shortcut"
PUBLIC_SHORTCUT, HIDDEN_SHORTCUT = "film", "music"

# While chapter 14 is graded, the references and the helpers that would do an exercise's work are withheld
# (Exercise.reference / Exercise.withheld below); the rest of tinyinterp.shortcut stays callable, for these
# reasons (tests/test_graded_copy.py checks that every function there is in one list or the other).
CALLABLE_WHILE_GRADING = {
    "tinyinterp.shortcut._check_tokens": "an input check: integer review tokens [batch, 13]",
    "tinyinterp.shortcut._check_slots": "an input check: a bool mask shaped like tokens, not at <cls>",
    "tinyinterp.shortcut._check_word": "an input check: an int that is a word's token id",
    "tinyinterp.shortcut._check_model": "an input check: a HookedTransformer",
    "tinyinterp.shortcut.deployment_reviews": "generate_reviews with the shortcut independent of the label; data only",
    "tinyinterp.shortcut.conflicting": "one comparison, has_shortcut != label; no exercise asks for it",
    "tinyinterp.shortcut.neutral_slots": "where the neutral words are (torch.isin); the input the exercises take",
    "tinyinterp.shortcut.remove_word": "one torch.where building the corrupted tokens the exercises take",
    "tinyinterp.shortcut.augmented_model": "loads the cached retrained model; no exercise asks for it",
    "tinyinterp.shortcut.ablate_token_embedding": "edits one embedding row; no exercise asks for it",
}
# head_shortcut_effect withholds the patching functions that patch or ablate one head's output (below); the rest
# of tinyinterp.patching stays callable while chapter 14 is graded, for these reasons:
CALLABLE_WHILE_GRADING.update({
    "tinyinterp.patching.logit_diff": "a logit-difference metric at given answer tokens; the review score is "
                                      "R.score_from_logits, which the exercises use anyway",
    "tinyinterp.patching.normalised_metric": "one division, (value - corrupted) / (clean - corrupted); no exercise "
                                             "asks for a normalised value",
    "tinyinterp.patching._check_tokens": "an input check: clean and corrupted integer tokens of one shape",
    "tinyinterp.patching._scalar": "an input check: a metric returned one number",
    "tinyinterp.patching._metric_of": "one hooked forward pass and its metric: needs the patching hook, which "
                                      "the learner writes (patch_hook is withheld)",
    "tinyinterp.patching._runs": "runs the two inputs and caches them (run_with_cache); patches nothing",
    "tinyinterp.patching.patch_resid_by_layer_pos": "patches the residual stream at one position, not a head's "
                                                    "output; through _patch_scan, which is withheld",
    "tinyinterp.patching._as_index": "an input check: an integer index as a Python int",
    "tinyinterp.patching._check_head": "an input check on a (layer, head) pair",
    "tinyinterp.patching.head_write": "one head's write into the residual stream (chapter 10's path patching)",
    "tinyinterp.patching.head_input": "a layer's q, k or v recomputed from a residual stream (chapter 10)",
    "tinyinterp.patching.path_patch_head_to_head": "path patching between two heads (chapter 10), not a head's "
                                                   "whole output patched",
    "tinyinterp.patching.path_patch_head_to_head_keys": "path patching through keys (chapter 10)",
    "tinyinterp.patching.metric_and_gradients": "gradients for attribution patching (chapter 10); patches nothing",
    "tinyinterp.patching._attribution": "a first-order estimate (chapter 10), not the exact patch asked here",
    "tinyinterp.patching.attribution_patch_heads": "a first-order estimate of the head patch (chapter 10); it "
                                                   "differs from the exact patch on these nonlinear models",
    "tinyinterp.patching.attribution_patch_resid_by_layer_pos": "a first-order estimate on the residual stream "
                                                                "(chapter 10)",
})


def _model(shortcut: str):
    # test cases never move with the seed offset
    return _shown(R.review_model(shortcut=shortcut, progress=False, follow_offset=False)[0])


def _pick(gen: torch.Generator, options):
    return options[int(torch.randint(len(options), (1,), generator=gen))]


def _planted(gen: torch.Generator, sign: int | None = None):
    """``(model, word, sign)``: the clean classifier with a neutral word, drawn from ``gen`` (never "film" or
    "music", the trained shortcuts), given the embedding of a sentiment word (positive for ``sign`` +1,
    negative for -1, drawn when None): the model treats the word as that sentiment word, a planted shortcut."""
    word = _pick(gen, [w for w in R.NEUTRAL if w not in (PUBLIC_SHORTCUT, HIDDEN_SHORTCUT)])
    sign = sign if sign is not None else _pick(gen, (1, -1))
    like = _pick(gen, R.POSITIVE if sign > 0 else R.NEGATIVE)
    model = _shown(R.review_model(progress=False, follow_offset=False)[0])
    with torch.no_grad():
        model.embed.W_E[R.TOKEN[word]] = model.embed.W_E[R.TOKEN[like]]
    return model, word, sign


def _word_model(gen: torch.Generator):
    """A random model with the review vocabulary and context (a score, but no learnt rule)."""
    return _random_model(gen, d_vocab=len(R.VOCAB), n_ctx=R.SEQ_LEN, n_layers=1, n_heads=2, d_head=4,
                         attn_only=False, normalization="LN")


def _some_slots(gen: torch.Generator, tokens: torch.Tensor, keep: float) -> torch.Tensor:
    """A random part (about ``keep``) of the neutral-word slots of ``tokens``, one per review at least."""
    slots = S.neutral_slots(tokens) & (torch.rand(tokens.shape, generator=gen) < keep)
    first = S.neutral_slots(tokens).float().argmax(1)
    slots[torch.arange(len(tokens)), first] = True
    return slots


# ----- word_effects --------------------------------------------------------------------------------------------
def _word_cases(gen, hidden):
    all_words = torch.tensor(S.WORD_IDS)
    specs = [("the 'film' model, 6 reviews, every word", PUBLIC_SHORTCUT, 6, None, 1.0, all_words),
             ("the 'film' model, 5 deployment reviews, some slots, neutral words", PUBLIC_SHORTCUT, 5, "deploy", 0.5,
              torch.tensor(S.NEUTRAL_IDS)),
             ("a random model, 4 reviews, three words", "random", 4, None, 0.7, torch.tensor([R.TOKEN["good"],
              R.TOKEN["plot"], R.TOKEN["dull"]])),
             ("a planted word in the clean model, 10 reviews, neutral words", "planted", 10, None, 0.8,
              torch.tensor(S.NEUTRAL_IDS))]
    if hidden:
        specs += [("hidden: the 'music' model, 6 reviews, every word", HIDDEN_SHORTCUT, 6, "deploy", 0.6, all_words)]
    cases = []
    for name, which, n, data, keep, words in specs:
        model = (_word_model(gen) if which == "random" else _planted(gen)[0] if which == "planted"
                 else _model(which))
        seed = _seed(gen) % 10_000
        reviews = S.deployment_reviews(which, n, seed) if data == "deploy" else R.generate_reviews(n, seed)
        slots = _some_slots(gen, reviews.tokens, keep)
        cases.append(Case(name, {"model": model, "tokens": reviews.tokens, "slots": slots, "word_ids": words}))
    return cases


@torch.no_grad()
def _effects_variant(model, tokens, slots, word_ids, how):
    base = R.score(model, tokens)
    out = []
    for w in word_ids.tolist():
        if how == "all_at_once":
            out.append((R.score(model, torch.where(slots, w, tokens)) - base).mean())
            continue
        rows, cols = slots.nonzero(as_tuple=True)
        swapped = tokens[rows].clone()
        swapped[torch.arange(len(rows)), cols] = w
        change = R.score(model, swapped) - base[rows]
        if how == "no_baseline":
            out.append(R.score(model, swapped).mean())
        elif how == "abs":
            out.append(change.abs().mean())
        elif how == "per_review":
            out.append(torch.stack([change[rows == i].mean() for i in rows.unique()]).mean())
    return torch.stack(out)


def _effects_mistake(how):
    return lambda model, tokens, slots, word_ids: _effects_variant(model, tokens, slots, word_ids, how)


register(Exercise(
    id="word_effects", chapter=CH14, title="The effect of each word",
    signature="word_effects(model, tokens, slots, word_ids)", reference=S.word_effects,
    cases=_word_cases, points=2, difficulty=2, importance=5, minutes=20, atol=1e-4, rtol=1e-3,
    mistakes=[
        Mistake("You wrote the word into every marked slot of a review at once: replace one slot at a time, "
                "one swapped review per (review, position) pair, and average over all of them.",
                _effects_mistake("all_at_once")),
        Mistake("Subtract the review's own score: the effect is score(swapped) - score(review), not the "
                "swapped review's score.", _effects_mistake("no_baseline")),
        Mistake("Average the signed changes: you took their absolute values, which hides the direction "
                "(a shortcut for 'positive' raises the score) and counts noise as effect.",
                _effects_mistake("abs")),
        Mistake("Average over every marked slot together: you averaged each review's slots first, so a review "
                "with few slots weighs as much as one with many.", _effects_mistake("per_review")),
    ],
))


# ----- find_shortcut_token ---------------------------------------------------------------------------------------
def _find_cases(gen, hidden):
    # 16 reviews or more, every neutral slot: on a handful of reviews a word's mean effect is noisy (a review the
    # model already scores at its ceiling hardly moves), and the planted word need not stand out. Most cases
    # plant a word drawn from gen (see _planted), so the hidden ones plant words the public ones do not show;
    # tests/test_shortcut.py checks that the reference's answer wins by a wide margin on every case.
    specs = [("the 'film' model, 32 reviews", PUBLIC_SHORTCUT, 32, 1.0),
             ("a word planted as a positive one, 16 reviews", 1, 16, 1.0),
             ("a word planted as a negative one, 20 reviews", -1, 20, 1.0),
             ("a planted word, 24 reviews, some neutral slots", None, 24, 0.6)]
    if hidden:
        specs += [("hidden: a trained shortcut model, 32 reviews", HIDDEN_SHORTCUT, 32, 1.0),
                  ("hidden: a planted word, 18 reviews", None, 18, 1.0)]
    cases = []
    for name, which, n, keep in specs:
        if isinstance(which, str):
            model, reviews = _model(which), R.generate_reviews(n, _seed(gen) % 10_000)
        else:
            # the planted word as a shortcut of the data: in every review of its sentiment's class, none of the
            # other (as often as a common neutral word, so neither its absence nor its rarity gives it away).
            # Reviews with it where it agrees with the label: removing it hardly moves the score, inserting it
            # elsewhere does, which leaves the planted word far ahead (tests/test_shortcut.py)
            model, word, sign = _planted(gen, which)
            reviews = R.generate_reviews(n, _seed(gen) % 10_000, shortcut=word,
                                         p_shortcut=(0.0, 1.0) if sign > 0 else (1.0, 0.0))
        slots = S.neutral_slots(reviews.tokens) if keep == 1.0 else _some_slots(gen, reviews.tokens, keep)
        cases.append(Case(name, {"model": model, "tokens": reviews.tokens, "slots": slots}))
    return cases


def _find_index(model, tokens, slots):
    return int(S.word_effects(model, tokens, slots, torch.tensor(S.NEUTRAL_IDS)).abs().argmax())


def _find_least(model, tokens, slots):
    effects = S.word_effects(model, tokens, slots, torch.tensor(S.NEUTRAL_IDS))
    return S.NEUTRAL_IDS[int(effects.abs().argmin())]


register(Exercise(
    id="find_shortcut_token", chapter=CH14, title="Find the shortcut word",
    signature="find_shortcut_token(model, tokens, slots)", reference=S.find_shortcut_token,
    cases=_find_cases, points=2, difficulty=2, importance=5, minutes=10,
    mistakes=[
        Mistake("Return the word's token id (reviews.TOKEN[word]), not its index in reviews.NEUTRAL.",
                _find_index),
        Mistake("You took the word with the smallest effect: the shortcut is the neutral word the model does "
                "NOT ignore, the largest absolute effect.", _find_least),
    ],
))


# ----- head_shortcut_effect --------------------------------------------------------------------------------------
def _head_cases(gen, hidden):
    specs = [("the 'film' model, 6 reviews with the word", PUBLIC_SHORTCUT, 6),
             ("the 'film' model, 1 review", PUBLIC_SHORTCUT, 1),
             ("a random 2-layer model, 4 reviews", "random", 4),
             ("a word planted in the clean model, 5 reviews with it", "planted", 5)]
    if hidden:
        specs += [("hidden: the 'music' model, 5 reviews with the word", HIDDEN_SHORTCUT, 5)]
    cases = []
    for name, which, n in specs:
        if which == "planted":
            planted, word = _planted(gen)[:2]
        else:
            planted, word = None, PUBLIC_SHORTCUT if which == "random" else which
        filler = S.NEUTRAL_IDS[int(torch.randint(len(S.NEUTRAL_IDS), (1,), generator=gen))]
        while filler == R.TOKEN[word]:
            filler = S.NEUTRAL_IDS[int(torch.randint(len(S.NEUTRAL_IDS), (1,), generator=gen))]
        reviews = S.deployment_reviews(word, 6 * n + 10, _seed(gen) % 10_000)
        clean = reviews.tokens[reviews.has_shortcut][:n]
        if which == "random":
            model = _random_model(gen, d_vocab=len(R.VOCAB), n_ctx=R.SEQ_LEN, n_layers=2, n_heads=2, d_head=4,
                                  attn_only=False, normalization="LN")
        else:
            model = planted if planted is not None else _model(which)
        cases.append(Case(name, {"model": model, "clean_tokens": clean,
                                 "corrupted_tokens": S.remove_word(clean, R.TOKEN[word], filler)}))
    return cases


@torch.no_grad()
def _head_variant(model, clean_tokens, corrupted_tokens, how):
    cfg = model.cfg
    _, clean_cache = model.run_with_cache(clean_tokens)
    _, cor_cache = model.run_with_cache(corrupted_tokens)
    base, base_cor = R.score(model, clean_tokens), R.score(model, corrupted_tokens)
    at = clean_tokens != corrupted_tokens
    out = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=base.dtype)
    for L in range(cfg.n_layers):
        name = f"blocks.{L}.attn.hook_z"
        for H in range(cfg.n_heads):
            def hook(z, hook, H=H):
                z = z.clone()
                if how == "zero":
                    z[:, :, H] = 0.0
                elif how == "shortcut_position":
                    z[:, :, H][at] = cor_cache[name][:, :, H][at]
                elif how == "denoise":
                    z[:, :, H] = clean_cache[name][:, :, H]
                else:
                    z[:, :, H] = cor_cache[name][:, :, H]
                return z
            if how == "denoise":
                patched = R.score_from_logits(model.run_with_hooks(corrupted_tokens, [(name, hook)]))
                out[L, H] = (patched - base_cor).mean()
            else:
                change = base - R.score_from_logits(model.run_with_hooks(clean_tokens, [(name, hook)]))
                out[L, H] = change.sum() if how == "sum" else change.mean()
    return out


def _head_mistake(how):
    return lambda model, clean_tokens, corrupted_tokens: _head_variant(model, clean_tokens, corrupted_tokens, how)


register(Exercise(
    id="head_shortcut_effect", chapter=CH14, title="Which head carries the shortcut",
    signature="head_shortcut_effect(model, clean_tokens, corrupted_tokens)", reference=S.head_shortcut_effect,
    # the library's patching and ablation of one head's output would do the exercise's work (run_with_head_ablated
    # with "resample" from the corrupted tokens is the patched run; patch_head_outputs with noising its normalised
    # score): withheld while chapter 14 is graded
    withheld=(P.run_with_head_ablated, P.ablate_head_z, P.patch_head_outputs, P.patch_head_by_pos, P._patch_scan,
              P.patch_hook),
    cases=_head_cases, points=2, difficulty=3, importance=5, minutes=20, atol=1e-4, rtol=1e-3,
    mistakes=[
        Mistake("You set the head's output to zero: patch it with the head's output on the corrupted tokens "
                "(the same reviews without the shortcut), so only the shortcut's part is taken away.",
                _head_mistake("zero")),
        Mistake("You patched the head only at the shortcut word's position; the score is read at <cls>, which "
                "reads the head's output at its own position. Patch hook_z at every position.",
                _head_mistake("shortcut_position")),
        Mistake("Run the clean tokens and patch in the corrupted head output (noising); you ran the corrupted "
                "tokens with the clean head output (denoising).", _head_mistake("denoise")),
        Mistake("Average over the reviews of the batch; you summed them.", _head_mistake("sum")),
    ],
))


# ----- counterfactual_augment ------------------------------------------------------------------------------------
def _augment_cases(gen, hidden):
    # the first case has reviews of all four kinds (either label, with and without the word), so that each
    # catalogued mistake is told apart from the others on it alone
    specs = [("12 reviews: the word in half of each class, filler 'plot'", PUBLIC_SHORTCUT, 12, (0.5, 0.5), "plot"),
             ("8 training reviews, 'film' in every positive one", PUBLIC_SHORTCUT, 8, (0.0, 1.0), "the"),
             ("one review", PUBLIC_SHORTCUT, 1, (0.0, 1.0), "and"),
             ("10 reviews, another word, in 30% of negatives and 80% of positives", None, 10, (0.3, 0.8), None)]
    if hidden:
        specs += [("hidden: 'music' in every positive review", HIDDEN_SHORTCUT, 12, (0.0, 1.0), "story")]
    cases = []
    for name, word, n, p, filler in specs:
        if word is None:  # a word and a filler drawn from gen
            word = _pick(gen, [w for w in R.NEUTRAL if w != PUBLIC_SHORTCUT])
            filler = _pick(gen, [w for w in R.NEUTRAL if w != word])
        while True:
            data = R.generate_reviews(n, _seed(gen) % 10_000, shortcut=word, p_shortcut=p)
            kinds = {(int(y), bool(h)) for y, h in zip(data.labels, data.has_shortcut)}
            if p != (0.5, 0.5) or len(kinds) == 4:
                break
        cases.append(Case(name, {"tokens": data.tokens, "labels": data.labels, "shortcut_id": R.TOKEN[word],
                                 "filler_id": R.TOKEN[filler]}))
    return cases


def _augment_variant(tokens, labels, shortcut_id, filler_id, how):
    has = (tokens == shortcut_id).any(1)
    copy_ = torch.where(tokens == shortcut_id, filler_id, tokens)
    if how == "first_word":
        target = (tokens != R.TOKEN[R.PAD]).float().argmax(1)
    else:
        target = S.neutral_slots(tokens, exclude=(shortcut_id,)).float().argmax(1)
    insert = ~has if how != "remove_only" else torch.zeros_like(has)
    rows = insert.nonzero(as_tuple=True)[0]
    copy_[rows, target[rows]] = shortcut_id
    if how == "positives_only":
        copy_ = torch.where((labels == 1)[:, None], copy_, tokens)
    new_labels = 1 - labels if how == "flip" else labels
    return torch.cat([tokens, copy_]), torch.cat([labels, new_labels])


def _augment_mistake(how):
    return lambda tokens, labels, shortcut_id, filler_id: _augment_variant(tokens, labels, shortcut_id, filler_id, how)


register(Exercise(
    id="counterfactual_augment", chapter=CH14, title="Counterfactual data",
    signature="counterfactual_augment(tokens, labels, shortcut_id, filler_id)", reference=S.counterfactual_augment,
    cases=_augment_cases, points=2, difficulty=2, importance=5, minutes=20,
    mistakes=[
        Mistake("Toggle the word in the copies of every review, negative ones too: toggling it only in the "
                "positive reviews leaves it a sign of 'positive'.", _augment_mistake("positives_only")),
        Mistake("Keep each copy's label: the shortcut word does not decide the label, so toggling it must not "
                "change it.", _augment_mistake("flip")),
        Mistake("Write the word over the first *neutral* word of the review; you overwrote its first word, which "
                "can be a sentiment word (and so change what the label should be).", _augment_mistake("first_word")),
        Mistake("Insert the word into the copies of the reviews that lack it, too: only removing it gives a "
                "data set where the word is still more common among positives.", _augment_mistake("remove_only")),
    ],
))
