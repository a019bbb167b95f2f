"""tinyinterp.shortcut: word effects against a brute-force loop, head patching against the exact linear
decomposition of a one-layer attention-only model, counterfactual augmentation's independence of word and
label, and the planted shortcut found on the book's models (the public "film" and the hidden "music")."""

import pytest
import torch

from tinyinterp import reviews as R
from tinyinterp import shortcut as S
from tinyinterp.config import TransformerConfig
from tinyinterp.model import HookedTransformer


def _model(**cfg):
    base = dict(d_vocab=len(R.VOCAB), n_ctx=R.SEQ_LEN, d_model=16, n_layers=1, n_heads=2, d_head=4, d_mlp=32,
                init_std=0.5, attn_only=False, normalization="LN", seed=3)
    return HookedTransformer(TransformerConfig(**{**base, **cfg})).eval()


def test_word_effects_match_a_brute_force_loop():
    model, reviews = _model(), R.generate_reviews(5, seed=2)
    slots = S.neutral_slots(reviews.tokens)
    slots[0] = False  # a review with no marked slot takes no part
    words = torch.tensor([R.TOKEN["good"], R.TOKEN["plot"], R.TOKEN["awful"]])
    changes = {w: [] for w in words.tolist()}
    with torch.no_grad():
        for i, pos in slots.nonzero().tolist():
            before = R.score(model, reviews.tokens[i]).item()
            for w in changes:
                t = reviews.tokens[i].clone()
                t[pos] = w
                changes[w].append(R.score(model, t).item() - before)
    want = torch.tensor([sum(c) / len(c) for c in changes.values()])
    assert torch.allclose(S.word_effects(model, reviews.tokens, slots, words), want, atol=1e-5)


def test_a_word_swapped_into_its_own_slots_changes_nothing():
    model, reviews = _model(), R.generate_reviews(6, seed=4)
    the = R.TOKEN["the"]
    slots = reviews.tokens == the
    assert slots.any()
    assert S.word_effects(model, reviews.tokens, slots, torch.tensor([the])).abs().max() < 1e-6


def test_word_effects_refuse_bad_inputs():
    model, reviews = _model(), R.generate_reviews(3, seed=0)
    slots = S.neutral_slots(reviews.tokens)
    with pytest.raises(ValueError, match="no position"):
        S.word_effects(model, reviews.tokens, torch.zeros_like(slots), torch.tensor([4]))
    cls_too = slots.clone()
    cls_too[:, -1] = True
    with pytest.raises(ValueError, match="<cls>"):
        S.word_effects(model, reviews.tokens, cls_too, torch.tensor([4]))
    with pytest.raises(ValueError, match="word token ids"):
        S.word_effects(model, reviews.tokens, slots, torch.tensor([R.TOKEN[R.CLS]]))
    with pytest.raises(TypeError, match="integer"):
        S.word_effects(model, reviews.tokens.float(), slots, torch.tensor([4]))
    with pytest.raises(ValueError, match="bool"):
        S.word_effects(model, reviews.tokens, slots.long(), torch.tensor([4]))


def test_head_effects_add_up_in_a_linear_model():
    """One layer, attention only, no LayerNorm: the score at <cls> is its embedding's direct path plus each
    head's output, linear in z; so the head effects add up to score(clean) - score(corrupted) exactly."""
    model = _model(attn_only=True, normalization=None)
    reviews = S.deployment_reviews("film", 40, seed=3)
    clean = reviews.tokens[reviews.has_shortcut][:8]
    corrupted = S.remove_word(clean, R.TOKEN["film"], R.TOKEN["the"])
    effects = S.head_shortcut_effect(model, clean, corrupted)
    assert effects.shape == (1, 2)
    with torch.no_grad():
        total = (R.score(model, clean) - R.score(model, corrupted)).mean()
    assert torch.allclose(effects.sum(), total, atol=1e-5)
    assert effects.abs().min() > 1e-4  # both heads take part: the check is not 0 == 0
    assert S.head_shortcut_effect(model, clean, clean).abs().max() < 1e-6


def test_counterfactual_augment_makes_the_word_independent_of_the_label():
    data = R.generate_reviews(400, seed=5, shortcut="film", p_shortcut=(0.0, 1.0))
    film, the = R.TOKEN["film"], R.TOKEN["the"]
    tokens, labels = S.counterfactual_augment(data.tokens, data.labels, film, the)
    assert tokens.shape == (800, R.SEQ_LEN) and torch.equal(labels, torch.cat([data.labels, data.labels]))
    assert torch.equal(tokens[:400], data.tokens)
    has = (tokens == film).any(1)
    for label in (0, 1):
        assert has[labels == label].float().mean() == 0.5
    changed = tokens[400:] != data.tokens
    assert (changed.sum(1) >= 1).all()
    # sentiment words and padding untouched; only neutral slots changed
    assert (data.relevance[changed] == 0).all()
    assert torch.isin(data.tokens[changed], torch.tensor(S.NEUTRAL_IDS)).all()
    # a review without the word gets it over its first neutral word
    i = int((~data.tokens.eq(film).any(1)).nonzero()[0])
    first = int(S.neutral_slots(data.tokens[i:i + 1]).float().argmax())
    assert tokens[400 + i, first] == film and changed[i].sum() == 1
    with pytest.raises(ValueError, match="filler"):
        S.counterfactual_augment(data.tokens, data.labels, film, film)
    with pytest.raises(ValueError, match="labels"):
        S.counterfactual_augment(data.tokens, data.labels[:3], film, the)


def test_ablating_an_embedding_replaces_one_row_of_a_copy():
    model = _model()
    ids = [R.TOKEN["the"], R.TOKEN["plot"]]
    ablated = S.ablate_token_embedding(model, R.TOKEN["film"], ids)
    assert torch.allclose(ablated.embed.W_E[R.TOKEN["film"]], model.embed.W_E[ids].mean(0))
    assert not torch.allclose(model.embed.W_E[R.TOKEN["film"]], ablated.embed.W_E[R.TOKEN["film"]])
    others = torch.ones(len(R.VOCAB), dtype=torch.bool)
    others[R.TOKEN["film"]] = False
    assert torch.equal(ablated.embed.W_E[others], model.embed.W_E[others])


@pytest.mark.parametrize("shortcut", ["film", "music"])
def test_the_planted_shortcut_is_found_and_carried_by_attention(shortcut):
    """On the book's models: accuracy on the training distribution is perfect, at deployment it is not;
    the planted word is the neutral word with the largest effect; patching the heads takes most of its effect
    away (the heads, not the MLP alone, move it to <cls>)."""
    model, _ = R.review_model(shortcut=shortcut)
    word = R.TOKEN[shortcut]
    train_like = R.generate_reviews(500, seed=7, shortcut=shortcut, p_shortcut=R.TRAIN_SHORTCUT_P)
    deploy = S.deployment_reviews(shortcut, 500, seed=7)
    assert R.accuracy(model, train_like) > 0.98
    assert R.accuracy(model, deploy[S.conflicting(deploy)]) < 0.7  # measured 0.17 (film), 0.48 (music)
    reviews = R.generate_reviews(24, seed=8)
    assert S.find_shortcut_token(model, reviews.tokens, S.neutral_slots(reviews.tokens)) == word
    with_word = deploy.tokens[deploy.has_shortcut][:40]
    corrupted = S.remove_word(with_word, word, R.TOKEN["the"] if shortcut != "the" else R.TOKEN["plot"])
    with torch.no_grad():
        total = float((R.score(model, with_word) - R.score(model, corrupted)).mean())
    heads = S.head_shortcut_effect(model, with_word, corrupted)
    assert total > 2.0  # measured 13.9 (film), 7.0 (music)
    assert heads.sum() > 0.5 * total


def _planted_word(model, clean):
    """The word of a case's model that was planted (its embedding differs from the clean model's), or, for a
    trained shortcut model, None."""
    changed = (model.embed.W_E != clean.embed.W_E).any(1).nonzero().flatten().tolist()
    return changed[0] if len(changed) == 1 else None


def test_every_case_of_find_shortcut_token_has_one_clear_answer_that_cannot_be_guessed():
    """On the public cases and the hidden ones of seeds 1..20: the reference's answer is the planted word
    (or the trained model's shortcut), and its effect is over twice the runner-up's and 0.1 larger (the grading
    tolerance is 1e-4), so the answer is unambiguous; the hidden cases plant several different words, so no fixed
    guess passes them."""
    from tinyinterp.harness.registry import get_exercise

    ex = get_exercise("find_shortcut_token")
    clean, _ = R.review_model()
    trained = {R.TOKEN["film"], R.TOKEN["music"]}
    planted_words = set()
    for cases in [ex.public_cases()] + [ex.hidden_cases(seed) for seed in range(1, 21)]:
        answers = set()
        for case in cases:
            effects = S.word_effects(case.kwargs["model"], case.kwargs["tokens"], case.kwargs["slots"],
                                     torch.tensor(S.NEUTRAL_IDS)).abs().sort(descending=True)
            answer = S.NEUTRAL_IDS[int(effects.indices[0])]  # what find_shortcut_token returns (tested above)
            top, second = effects.values[:2].tolist()
            assert top > 2 * second and top - second > 0.1, (case.name, top, second)
            planted = _planted_word(case.kwargs["model"], clean)
            assert answer == planted if planted is not None else answer in trained, case.name
            if planted is not None:
                planted_words.add(planted)
            answers.add(answer)
        assert len(answers) >= 2, "the cases of one seed must not all have the same answer"
    assert len(planted_words) >= 6, "the hidden cases plant many different words"
    assert not planted_words & trained
