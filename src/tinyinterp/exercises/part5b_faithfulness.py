"""Part V exercises: do explanations explain? (ch. 13).

References are the library functions the chapter uses (:mod:`tinyinterp.faithfulness`);
``tests/test_faithfulness.py`` checks those against a linear model's exact curves, ``scipy.stats.spearmanr``
and hand-counted answers.
"""

from __future__ import annotations

import torch

from .. import faithfulness as F
from .. import reviews as R
from ..harness.bound import BoundFunction
from ..harness.registry import Case, Exercise, Mistake, register
from ..model import HookedTransformer
from ._inputs import randint, randn
from .part2_induction import _random_model, _seed

CH13 = "13_do_explanations_explain"

# While chapter 13 is graded, the references and the helpers that would do an exercise's work are withheld
# (Exercise.reference / Exercise.withheld below); the rest of tinyinterp.faithfulness stays callable, for these
# reasons (tests/test_graded_copy.py checks that every function there is in one list or the other).
CALLABLE_WHILE_GRADING = {
    "tinyinterp.faithfulness._check_curve_inputs": "an input check on the shapes and dtypes of a curve's inputs",
    "tinyinterp.faithfulness.curve_area": "the trapezoid area of a curve; no exercise asks for it",
    "tinyinterp.faithfulness.randomisation_stages": "the list of stage names and parameter prefixes that the "
                                                    "exercise states in its text; it changes no parameter",
    "tinyinterp.faithfulness.attention_ov_names": "the names of an attention layer's OV parameters; it changes "
                                                  "no parameter",
    "tinyinterp.faithfulness.word_mask": "a boolean mask of the tokens that are not padding or <cls>",
    "tinyinterp.faithfulness.review_words_score": "the review classifier's score with <cls> appended: the f that "
                                                  "deletion_curve's cases pass in; it deletes nothing",
}


def _review_like_model(gen, **cfg) -> HookedTransformer:
    return _random_model(gen, **{"d_vocab": len(R.VOCAB), "n_ctx": R.SEQ_LEN, "attn_only": False,
                                 "normalization": "LN", "n_layers": 1, "init_std": 0.3, **cfg})


# ----- deletion_curve ------------------------------------------------------------------------------------------
def _deletion_cases(gen, hidden):
    specs = [("3 reviews, <pad> = 0", 3, R.TOKEN[R.PAD]), ("1 review", 1, R.TOKEN[R.PAD]),
             ("removed words become 'the'", 4, R.TOKEN["the"]), ("8 reviews, 2 layers", 8, R.TOKEN[R.PAD])]
    if hidden:
        specs += [("hidden: 5 reviews, removed words become 'it'", 5, R.TOKEN["it"])]
    cases = []
    for name, n, pad_id in specs:
        model = _review_like_model(gen, **({"n_layers": 2} if "2 layers" in name else {}))
        tokens = R.generate_reviews(n, seed=_seed(gen) % 10_000).tokens[:, :-1]
        attributions = randn(gen, n, R.N_WORDS)
        cases.append(Case(name, {"f": BoundFunction(F.review_words_score, model=model), "tokens": tokens,
                                 "attributions": attributions, "pad_id": pad_id}))
    return cases


def _deletion_variant(f, tokens, attributions, pad_id, order="desc", cumulative=True, fill=None):
    key = {"desc": attributions, "asc": -attributions, "abs": attributions.abs()}[order]
    ranked = torch.sort(key, dim=-1, descending=True, stable=True).indices
    n = tokens.shape[1]
    rows = []
    for j in range(n + 1):
        chosen = ranked[:, :j] if cumulative else ranked[:, max(j - 1, 0):j]
        t = tokens.clone()
        t.scatter_(1, chosen, pad_id if fill is None else fill)
        rows.append(f(t))
    return torch.stack(rows, dim=1)


register(Exercise(
    id="deletion_curve", chapter=CH13, title="The deletion curve",
    signature="deletion_curve(f, tokens, attributions, pad_id)", reference=F.deletion_curve,
    withheld=(F.insertion_curve, F._perturbation_curve, F.deletion_order),  # each computes the curve or its order
    cases=_deletion_cases, points=2, difficulty=2, importance=5, minutes=20, atol=1e-4, rtol=1e-4,
    mistakes=[
        Mistake("You deleted the least attributed words first: sort the attributions in descending order, so "
                "that the word the explanation calls most important goes first.",
                lambda f, tokens, attributions, pad_id: _deletion_variant(f, tokens, attributions, pad_id, "asc")),
        Mistake("Each step should delete one more word and keep the earlier ones deleted: column j has the j "
                "most attributed words replaced, not only the j-th.",
                lambda f, tokens, attributions, pad_id: _deletion_variant(f, tokens, attributions, pad_id,
                                                                          cumulative=False)),
        Mistake("Rank by the attributions as they are, signed: you ranked by their absolute value.",
                lambda f, tokens, attributions, pad_id: _deletion_variant(f, tokens, attributions, pad_id, "abs")),
        Mistake("Replace a deleted word with the token pad_id you are given; you used token 0.",
                lambda f, tokens, attributions, pad_id: _deletion_variant(f, tokens, attributions, pad_id, fill=0)),
    ],
))


# ----- spearman_rank_correlation ------------------------------------------------------------------------------------
def _spearman_cases(gen, hidden):
    # Float inputs have no ties (2 ulps would break them: an ill-conditioned case). Ties come as integer
    # attributions (counts, votes), which are exact; the answer is then float32.
    def counts(*shape):
        x = randint(gen, 7, *shape) - 3  # -3..3: many ties, signs mixed
        x[..., -1] = 5  # never a constant row
        return x

    cases = [Case("4 rows of 10 floats, no ties", {"a": randn(gen, 4, 10), "b": randn(gen, 4, 10)}),
             Case("one row of 12 integer attributions, with ties", {"a": counts(12), "b": counts(12)}),
             Case("6 rows of 12 integers with ties, b close to -a", None),
             Case("long: 3 rows of 40 integers with ties", {"a": counts(3, 40), "b": counts(3, 40)})]
    a = counts(6, 12)
    cases[2].kwargs = {"a": a, "b": -a + randint(gen, 3, 6, 12) - 1}
    if hidden:
        cases.append(Case("hidden: 2 rows of 5 integers", {"a": counts(2, 5), "b": counts(2, 5)}))
        cases.append(Case("hidden: floats, b = a with signs flipped", None))
        f = randn(gen, 3, 7)
        cases[-1].kwargs = {"a": f, "b": -f * (1 + 0.5 * torch.rand(3, 7, generator=gen))}
    return cases


def _out_dtype(a):
    return a.dtype if a.is_floating_point() else torch.get_default_dtype()


def _index_ranks(x):
    return torch.argsort(torch.argsort(x, dim=-1, stable=True), dim=-1).double() + 1


def _pearson(x, y):
    x, y = x - x.mean(-1, keepdim=True), y - y.mean(-1, keepdim=True)
    return (x * y).sum(-1) / (x.square().sum(-1) * y.square().sum(-1)).sqrt()


def _no_ties_formula(a, b):
    d = F.average_ranks(a.abs()) - F.average_ranks(b.abs())
    n = a.shape[-1]
    return (1 - 6 * d.square().sum(-1) / (n * (n ** 2 - 1))).to(_out_dtype(a))


register(Exercise(
    id="spearman_rank_correlation", chapter=CH13, title="Rank correlation of two attributions",
    signature="spearman_rank_correlation(a, b)", reference=F.abs_rank_correlation,
    withheld=(F.spearman, F.average_ranks),
    cases=_spearman_cases, points=2, difficulty=3, importance=4, minutes=20, atol=1e-4, rtol=1e-4,
    mistakes=[
        Mistake("Rank the magnitudes |a| and |b|: a large negative attribution is as important as a large "
                "positive one. You ranked the signed values.",
                lambda a, b: F.spearman(a, b)),
        Mistake("Tied values must share the average of the ranks they span (two values tied for ranks 3 and 4 "
                "both get 3.5); you broke ties by position (argsort of argsort).",
                lambda a, b: _pearson(_index_ranks(a.abs()), _index_ranks(b.abs())).to(_out_dtype(a))),
        Mistake("Correlate the ranks, not the values: you computed the Pearson correlation of |a| and |b|.",
                lambda a, b: _pearson(a.abs().double(), b.abs().double()).to(_out_dtype(a))),
        Mistake("The formula 1 - 6 sum d^2 / (n (n^2 - 1)) holds only without ties; with ties, take the "
                "Pearson correlation of the average ranks.", _no_ties_formula),
    ],
))


# ----- top_k_precision --------------------------------------------------------------------------------------------
def _top_k_cases(gen, hidden):
    specs = [("5 reviews, k = 1", 5, 1), ("8 reviews, k = 3", 8, 3), ("1 review, k = 5", 1, 5),
             ("long: 50 reviews, k = 2", 50, 2)]
    if hidden:
        specs += [("hidden: 6 reviews, k = 12 (every word)", 6, 12)]
    cases = []
    for name, n, k in specs:
        relevance = R.generate_reviews(n, seed=_seed(gen) % 10_000).relevance[:, :-1].long()  # -1, 0, +1
        attributions = randn(gen, n, R.N_WORDS) + 1.5 * relevance * randn(gen, n, R.N_WORDS).sign()
        cases.append(Case(name, {"attributions": attributions, "relevance": relevance, "k": k}))
    return cases


def _top_k_variant(attributions, relevance, k, key="abs", hit="nonzero", denominator="k", taken=0):
    score = {"abs": attributions.abs(), "signed": attributions}[key]
    top = score.argsort(dim=-1, descending=True)[:, :k + taken]
    relevant = (relevance != 0) if hit == "nonzero" else (relevance > 0)
    hits = relevant.gather(1, top).sum(1).to(attributions.dtype)
    if denominator == "k":
        return hits / k
    return hits / relevant.sum(1).clamp(min=1).to(attributions.dtype)


register(Exercise(
    id="top_k_precision", chapter=CH13, title="Top-k precision against the ground truth",
    signature="top_k_precision(attributions, relevance, k)", reference=F.top_k_precision,
    cases=_top_k_cases, points=1, difficulty=2, importance=4, minutes=10,
    mistakes=[
        Mistake("Take the k largest |attributions|: a word with a large negative attribution is important too. "
                "You took the k largest signed values.",
                lambda attributions, relevance, k: _top_k_variant(attributions, relevance, k, key="signed")),
        Mistake("Take exactly k positions: you took k + 1.",
                lambda attributions, relevance, k: _top_k_variant(attributions, relevance, k, taken=1)),
        Mistake("A relevant position is one where relevance is non-zero, negative words included; you counted "
                "only relevance > 0.",
                lambda attributions, relevance, k: _top_k_variant(attributions, relevance, k, hit="positive")),
        Mistake("Precision divides the number of hits by k; you divided by the number of relevant positions "
                "(that is recall).",
                lambda attributions, relevance, k: _top_k_variant(attributions, relevance, k, denominator="relevant")),
    ],
))


# ----- randomise_from_top -----------------------------------------------------------------------------------------
def _randomise_cases(gen, hidden):
    specs = [("stage 1: the unembedding", 1, {}), ("stage 2: and the last MLP", 2, {}),
             ("stage 3: and the last attention layer", 3, {}), ("every stage (6)", 6, {}),
             ("attention-only, stage 2", 2, {"attn_only": True})]
    if hidden:
        specs += [("hidden: stage 4", 4, {})]
    cases = []
    for name, stage, cfg in specs:
        model = _random_model(gen, **{"attn_only": False, "normalization": "LN", "d_vocab": 13, "n_ctx": 8,
                                      "d_model": 12, **cfg})
        tokens = randint(gen, model.cfg.d_vocab, 3, 6)
        cases.append(Case(name, {"model": model, "tokens": tokens, "stage": stage, "seed": 1 + _seed(gen) % 1000}))
    return cases


def _randomise_variant(model, tokens, stage, seed, which="top", own_seed=False):
    stages = F.randomisation_stages(model)
    chosen = {"top": stages[:stage], "bottom": stages[::-1][:stage], "only": stages[stage - 1:stage],
              "one_more": stages[:stage + 1]}[which]
    prefixes = tuple(p for _, group in chosen for p in group)
    cfg = model.cfg.to_dict()
    fresh = dict(HookedTransformer(type(model.cfg)(**{**cfg, "seed": cfg["seed"] if own_seed else seed}))
                 .named_parameters())
    out = HookedTransformer(model.cfg)
    out.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name.startswith(prefixes):
                p.copy_(fresh[name])
        return out.to(next(model.parameters()).dtype)(tokens)


register(Exercise(
    id="randomise_from_top", chapter=CH13, title="Cascading randomisation",
    signature="randomise_from_top(model, tokens, stage, seed)", reference=F.randomised_logits,
    withheld=(F.randomise_parameters, F.reinitialise),  # each re-initialises parameters in a copy
    cases=_randomise_cases, points=2, difficulty=3, importance=5, minutes=20, atol=1e-4, rtol=1e-4,
    mistakes=[
        Mistake("Randomise from the top: the first stages are the unembedding, then the last block's MLP and "
                "attention, down to the embeddings. You started from the embeddings.",
                lambda model, tokens, stage, seed: _randomise_variant(model, tokens, stage, seed, "bottom")),
        Mistake("The randomisation cascades: stage s re-initialises the first s stages together, not only the "
                "s-th (that is the independent variant).",
                lambda model, tokens, stage, seed: _randomise_variant(model, tokens, stage, seed, "only")),
        Mistake("Re-initialise exactly `stage` stages, stages[:stage]; you took one more.",
                lambda model, tokens, stage, seed: _randomise_variant(model, tokens, stage, seed, "one_more")),
        Mistake("Build the fresh model with cfg.seed = seed, the seed you are given; you used the model's own "
                "cfg.seed.",
                lambda model, tokens, stage, seed: _randomise_variant(model, tokens, stage, seed, own_seed=True)),
    ],
))
