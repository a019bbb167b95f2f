"""The toy reviews of Part V (labels and ground-truth relevance the generator knows), and the classifier."""

import pytest
import torch

from tinyinterp import reviews as R


def test_labels_are_the_majority_of_the_sentiment_words_and_relevance_marks_them():
    data = R.generate_reviews(500, seed=3)
    assert data.tokens.shape == (500, R.SEQ_LEN) and (data.tokens[:, -1] == R.TOKEN[R.CLS]).all()
    positive = torch.isin(data.tokens, torch.tensor([R.TOKEN[w] for w in R.POSITIVE]))
    negative = torch.isin(data.tokens, torch.tensor([R.TOKEN[w] for w in R.NEGATIVE]))
    assert torch.equal(data.relevance, positive.float() - negative.float())
    n_pos, n_neg = positive.sum(1), negative.sum(1)
    assert torch.equal(data.labels, (n_pos > n_neg).long())
    assert set((n_pos + n_neg).tolist()) == set(R.SENTIMENT_COUNTS)
    assert data.labels.sum() == 250  # balanced
    words = (data.tokens != R.TOKEN[R.PAD]).sum(1) - 1
    assert words.min() == R.MIN_WORDS and words.max() == R.N_WORDS
    # padding only on the left: once a word starts, no <pad> follows
    started = (data.tokens != R.TOKEN[R.PAD]).long().cummax(1).values.bool()
    assert not ((data.tokens == R.TOKEN[R.PAD]) & started).any()


def test_the_generator_is_seeded():
    a, b = R.generate_reviews(40, seed=1), R.generate_reviews(40, seed=1)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.tokens, R.generate_reviews(40, seed=2).tokens)


@pytest.mark.parametrize("p_shortcut", [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)])
def test_a_planted_shortcut_appears_with_the_stated_probability_given_the_label(p_shortcut):
    data = R.generate_reviews(2000, seed=0, shortcut="film", p_shortcut=p_shortcut)
    present = (data.tokens == R.TOKEN["film"]).any(1)
    assert torch.equal(present, data.has_shortcut) and ((data.tokens == R.TOKEN["film"]).sum(1) <= 1).all()
    for label in (0, 1):
        rate = float(present[data.labels == label].float().mean())
        assert abs(rate - p_shortcut[label]) < 0.04, (label, rate)
    assert not (data.relevance[data.tokens == R.TOKEN["film"]] != 0).any()  # never replaces a sentiment word
    clean = R.generate_reviews(500, seed=0)
    assert not clean.has_shortcut.any()


def test_bad_arguments_are_refused_with_a_message():
    with pytest.raises(ValueError, match="neutral words"):
        R.generate_reviews(4, shortcut="great")
    for bad in ((0.5,), (0.2, 1.2), ("a", 0.1), (True, 0.0)):
        with pytest.raises(ValueError, match="p_shortcut"):
            R.generate_reviews(4, shortcut="film", p_shortcut=bad)
    with pytest.raises(TypeError, match="n must be an int"):
        R.generate_reviews(2.0)
    with pytest.raises(ValueError, match="unknown words"):
        R.encode("the plot was <cls>")
    with pytest.raises(ValueError, match="at most"):
        R.encode(" ".join(["the"] * (R.N_WORDS + 1)))
    with pytest.raises(TypeError, match="HookedTransformer"):
        R.score("model", R.encode("good"))
    with pytest.raises(ValueError, match="d_model"):
        R.score_of_embeddings(R.review_model()[0], torch.zeros(1, R.SEQ_LEN, 3))
    with pytest.raises(TypeError, match="shuffle_labels"):
        R.review_model(shuffle_labels=1)


def test_encode_and_to_words_round_trip():
    tokens = R.encode("the plot was dull")
    assert tokens.shape == (R.SEQ_LEN,)
    assert R.to_words(tokens) == [R.PAD] * (R.N_WORDS - 4) + ["the", "plot", "was", "dull", R.CLS]


def test_the_score_from_embeddings_is_the_score():
    model, _ = R.review_model()
    tokens = R.generate_reviews(16, seed=5).tokens
    assert torch.allclose(R.score_of_embeddings(model, model.W_E[tokens]), R.score(model, tokens), atol=1e-5)
    logits = model(tokens)
    assert torch.allclose(R.score(model, tokens),
                          logits[:, -1, R.TOKEN[R.LABEL_POS]] - logits[:, -1, R.TOKEN[R.LABEL_NEG]])


def test_the_clean_classifier_learns_the_rule_and_a_shortcut_classifier_fails_at_deployment():
    """Held out (another data seed): the clean model is right on almost every review; the model trained
    with "film" in every positive review is right in distribution but not when "film" says nothing."""
    clean, _ = R.review_model()
    assert R.accuracy(clean, R.generate_reviews(1000, seed=99)) > 0.97
    shortcut, _ = R.review_model(shortcut="film")
    assert R.accuracy(shortcut, R.generate_reviews(1000, seed=99, shortcut="film")) > 0.97
    deployment = R.generate_reviews(1000, seed=99, shortcut="film", p_shortcut=(0.5, 0.5))
    assert R.accuracy(shortcut, deployment) < 0.85
