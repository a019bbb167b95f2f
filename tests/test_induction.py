"""Induction heads: detectors against hand-written patterns and loops, and a 2-layer attention-only
model whose weights implement a previous-token head and an induction head exactly (known answers)."""

import copy
import math
import random

import pytest
import torch

from tinyinterp import HookedTransformer, TransformerConfig
from tinyinterp import induction as I
from tinyinterp.circuits import composition_scores, model_composition_baseline
from tinyinterp.exercises._inputs import rand_causal_pattern


# ----- detectors against loops and closed forms ------------------------------------------------------------
def _loop_score(pattern, queries, key_of):
    """Mean over batch and the given queries of pattern[b, h, q, key_of(q)], one element at a time."""
    b, h = pattern.shape[:2]
    out = torch.zeros(h)
    for head in range(h):
        vals = [pattern[i, head, q, key_of(q)].item() for i in range(b) for q in queries]
        out[head] = sum(vals) / len(vals)
    return out


@pytest.mark.parametrize("seq_len", [1, 2, 7])
def test_detectors_match_loops_over_queries(seq_len):
    gen = torch.Generator().manual_seed(seq_len)
    pattern = rand_causal_pattern(gen, 3, 4, 2 * seq_len + 1)
    second_copy = range(seq_len + 1, 2 * seq_len + 1)
    torch.testing.assert_close(I.prev_token_score(pattern),
                               _loop_score(pattern, range(1, 2 * seq_len + 1), lambda q: q - 1))
    torch.testing.assert_close(I.induction_score(pattern, seq_len),
                               _loop_score(pattern, second_copy, lambda q: q - seq_len + 1))
    torch.testing.assert_close(I.duplicate_token_score(pattern, seq_len),
                               _loop_score(pattern, second_copy, lambda q: q - seq_len))


def test_detectors_on_ideal_and_uniform_patterns():
    seq_len, pos = 6, 13
    shift = torch.zeros(pos, pos)
    shift[0, 0] = 1.0
    shift[torch.arange(1, pos), torch.arange(pos - 1)] = 1.0  # attend to q - 1
    induct = torch.zeros(pos, pos)
    induct[:, 0] = 1.0  # BOS by default ...
    q = torch.arange(seq_len + 1, pos)
    induct[q] = 0.0
    induct[q, q - seq_len + 1] = 1.0  # ... the token after the earlier copy in the second half
    uniform = torch.tril(torch.ones(pos, pos))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    pattern = torch.stack([shift, induct, uniform])[None]  # [1, 3 heads, pos, pos]
    prev = I.prev_token_score(pattern)
    ind = I.induction_score(pattern, seq_len)
    assert prev[0] == 1.0 and ind[1] == 1.0 and ind[0] == 0.0
    assert math.isclose(prev[1].item(), 1 / (pos - 1), rel_tol=1e-6)  # only query 1 looks at q - 1 (BOS)
    assert math.isclose(prev[2].item(), sum(1 / (k + 1) for k in range(1, pos)) / (pos - 1), rel_tol=1e-6)
    assert math.isclose(ind[2].item(), sum(1 / (k + 1) for k in range(seq_len + 1, pos)) / seq_len, rel_tol=1e-6)


def test_in_context_learning_score_closed_form():
    loss = torch.linspace(4.0, 1.0, 96).expand(5, 96)  # loss falls linearly with position
    score = I.in_context_learning_score(loss, early=8, late=80, width=10)
    assert math.isclose(score, (loss[0, 80:90].mean() - loss[0, 8:18].mean()).item(), rel_tol=1e-6)
    assert math.isclose(score, -3.0 * 72 / 95, rel_tol=1e-5)


# ----- data -------------------------------------------------------------------------------------------
def test_generate_repeated_tokens():
    tokens = I.generate_repeated_tokens(5, 12, 20, seed=3)
    assert tokens.shape == (5, 25) and tokens.dtype == torch.long
    assert (tokens[:, 0] == 0).all() and torch.equal(tokens[:, 1:13], tokens[:, 13:])
    r = tokens[:, 1:13]
    assert r.min() >= 1 and r.max() <= 19
    assert all(len(set(row.tolist())) == 12 for row in r)  # distinct tokens
    assert torch.equal(tokens, I.generate_repeated_tokens(5, 12, 20, seed=3))
    assert not torch.equal(tokens, I.generate_repeated_tokens(5, 12, 20, seed=4))
    every = I.generate_repeated_tokens(3, 9, 10, seed=0)[:, 1:10]
    assert all(sorted(row.tolist()) == list(range(1, 10)) for row in every)
    with pytest.raises(ValueError, match="distinct"):
        I.generate_repeated_tokens(2, 10, 10)


def test_repeated_span_sequences_repeat_earlier_spans():
    rng = random.Random(0)
    lengths = (3, 4, 5)
    seqs = [I.repeated_span_sequence(rng, 64, 30, lengths, p_copy=1.0) for _ in range(20)]
    for s in seqs:
        assert len(s) == 64 and s[0] == 0 and all(1 <= t < 30 for t in s[1:])
        # with p_copy=1 everything after the first segment is a copy: every 3-gram from position
        # 6 on (past the longest possible first segment) already occurred earlier
        later = [tuple(s[i : i + 3]) for i in range(6, 60)]
        earlier = {tuple(s[j : j + 3]) for j in range(1, 60)}
        assert sum(g in earlier for g in later) == len(later)
    fresh = I.repeated_span_sequence(random.Random(1), 200, 1000, lengths, p_copy=0.0)
    assert len(set(fresh[1:])) > 150  # no copies: almost all distinct in a big vocabulary


def test_training_data_mixture():
    spec = I.InductionData(seq_len=32, n_repeat_sequences=90, corpus_fraction=0.1, n_corpus_stories=100)
    rows = I.induction_training_data(spec)
    assert rows.shape == (100, 32) and (rows[:, 0] == 0).all()
    assert torch.equal(rows, I.induction_training_data(spec))
    cfg = I.InductionTraining(short_len=32, grow_from=10, grow_until=20)
    assert [cfg.window(s, 96) for s in (0, 10, 15, 20, 99)] == [32, 32, 64, 96, 96]


# ----- a hand-built induction circuit (written out here, independently of the library's) ------------------
def _hand_built(V=12, C=21, n_heads=3, prev_head=1, ind_head=2, s=25.0, seed=0):
    """Residual stream = [token (V) | position (C) | previous token (V) | predicted token (V)]."""
    P, R, O = V, V + C, 2 * V + C
    d_head = max(C, V + 1)
    cfg = TransformerConfig(d_vocab=V, n_ctx=C, d_model=3 * V + C, n_layers=2, n_heads=n_heads, d_head=d_head,
                            attn_only=True, normalization=None, init_std=0.05, seed=seed)
    m = HookedTransformer(cfg)
    a = s * math.sqrt(d_head)
    with torch.no_grad():
        m.embed.W_E.zero_()
        m.pos_embed.W_pos.zero_()
        m.unembed.W_U.zero_()
        for t in range(V):
            m.embed.W_E[t, t] = 1
            if t > 0:
                m.unembed.W_U[O + t, t] = 8
        for p in range(C):
            m.pos_embed.W_pos[p, P + p] = 1
        L0, L1 = m.blocks[0].attn, m.blocks[1].attn
        for W in (L0.W_Q, L0.W_K, L0.W_V, L0.W_O):
            W[prev_head] = 0
        for W in (L1.W_Q, L1.W_K, L1.W_V, L1.W_O):
            W[ind_head] = 0
        for p in range(C):
            L0.W_Q[prev_head, P + p, p] = a  # query at position p ...
            if p + 1 < d_head:
                L0.W_K[prev_head, P + p, p + 1] = 1  # ... matches the key at p - 1
        for t in range(V):
            L0.W_V[prev_head, t, t] = 1
            L0.W_O[prev_head, t, R + t] = 1  # previous token -> subspace R
            L1.W_Q[ind_head, t, t] = a  # current token ...
            L1.W_K[ind_head, R + t, t] = 1  # ... matches a key whose previous token is the same
            L1.W_V[ind_head, t, t] = 1
            L1.W_O[ind_head, t, O + t] = 1  # copy the attended token to the output subspace
    return m.eval()


@pytest.fixture(scope="module")
def hand_built():
    model = _hand_built()
    tokens = I.generate_repeated_tokens(6, 10, 12, seed=0)  # [6, 21]: seq_len 10
    return model, tokens


def test_hand_built_model_predicts_the_second_copy(hand_built):
    model, tokens = hand_built
    with torch.no_grad():
        logits = model(tokens)
    # Known answer: the second copy is predicted almost surely, the first not at all (uniform-ish).
    assert I.repeated_loss(logits, tokens) < 0.01
    assert I.first_copy_loss(logits, tokens) > 1.5


def test_detectors_score_hand_built_heads_near_one_and_random_heads_near_zero(hand_built):
    model, tokens = hand_built
    scores = I.head_scores(model, tokens)
    assert scores["prev_token"][0, 1] > 0.99 and scores["induction"][1, 2] > 0.99
    others_prev = torch.cat([scores["prev_token"][0, [0, 2]], scores["prev_token"][1]])
    others_ind = torch.cat([scores["induction"][0], scores["induction"][1, [0, 1]]])
    assert others_prev.max() < 0.2 and others_ind.max() < 0.2
    assert scores["duplicate_token"].max() < 0.2
    expected = torch.zeros(2, 3, dtype=torch.bool)
    expected[1, 2] = True
    assert torch.equal(I.find_induction_heads(model, tokens, 0.5), expected)


def test_k_composition_ranks_the_hand_built_pair_first(hand_built):
    model, _ = hand_built
    att0, att1 = model.blocks[0].attn, model.blocks[1].attn
    with torch.no_grad():
        ours = I.k_composition_scores(att0.W_V, att0.W_O, att1.W_Q, att1.W_K)
    torch.testing.assert_close(ours, composition_scores(model, "K"), atol=1e-5, rtol=1e-4)
    assert ours.argmax().item() == 1 * 3 + 2  # (previous-token head 1, induction head 2)
    # Known answer: W_OV^prev W_QK^indT is the identity on the V token directions, so the score is 1/sqrt(V).
    assert math.isclose(ours[1, 2].item(), 1 / math.sqrt(12), rel_tol=1e-4)
    assert ours[1, 2] > 2 * model_composition_baseline(model, "K", n_samples=200)
    # Q- and V-composition do not single out the pair: the induction head's queries and values read tokens.
    assert composition_scores(model, "Q")[1, 2] < 0.01 and composition_scores(model, "V")[1, 2] < 0.01


def test_ablation_matches_removing_the_heads_output_weights(hand_built):
    model, tokens = hand_built
    for layer, head in [(0, 1), (1, 2), (1, 0)]:
        cut = copy.deepcopy(model)
        with torch.no_grad():
            cut.blocks[layer].attn.W_O[head] = 0  # z @ W_O with z = 0 is what zero-ablation removes
            expected = I.repeated_loss(cut(tokens), tokens)
        torch.testing.assert_close(I.loss_with_head_ablated(model, tokens, layer, head), expected)
    clean = I.loss_with_heads_ablated(model, tokens, [])
    assert I.loss_with_head_ablated(model, tokens, 1, 2) > 1.5 > 0.01 > clean  # induction head
    assert I.loss_with_head_ablated(model, tokens, 0, 1) > 1.5  # previous-token head (K-composition)
    assert I.loss_with_head_ablated(model, tokens, 1, 0) < 0.05  # a random head


def test_library_hand_built_model_has_exact_patterns():
    V, seq_len = 12, 9
    model = I.handcrafted_induction_model(V, 2 * seq_len + 1, n_heads=2, prev_heads=(1,), induction_heads=(0,))
    tokens = I.generate_repeated_tokens(3, seq_len, V, seed=1)
    _, cache = model.run_with_cache(tokens)
    pos = 2 * seq_len + 1
    want_prev = torch.zeros(pos, pos)
    want_prev[0, 0] = 1
    want_prev[torch.arange(1, pos), torch.arange(pos - 1)] = 1
    want_ind = torch.zeros(pos, pos)
    want_ind[: seq_len + 1, 0] = 1  # no earlier match: BOS
    q = torch.arange(seq_len + 1, pos)
    want_ind[q, q - seq_len + 1] = 1
    torch.testing.assert_close(cache["pattern", 0][:, 1], want_prev.expand(3, pos, pos), atol=1e-4, rtol=0)
    torch.testing.assert_close(cache["pattern", 1][:, 0], want_ind.expand(3, pos, pos), atol=1e-3, rtol=0)
    logits = model(tokens)
    assert I.repeated_loss(logits, tokens) < 0.01
    assert math.isclose(I.first_copy_loss(logits, tokens).item(), math.log(V), rel_tol=0.05)


# ----- training -----------------------------------------------------------------------------------------
def test_training_logs_the_metrics():
    cfg = TransformerConfig(d_vocab=57, n_ctx=96, d_model=16, n_layers=2, n_heads=2, d_head=8, attn_only=True,
                            normalization=None)
    data = I.InductionData(n_repeat_sequences=50, n_corpus_stories=60)
    train_cfg = I.InductionTraining(steps=12, batch_size=4, short_len=16, grow_from=4, grow_until=8)
    model, h = I.train_induction_model(cfg, data, train_cfg, log_every=5, progress=False)
    assert h["step"] == [0, 5, 10, 12] and len(h["train_loss"]) == len(h["train_loss_first"]) == 12
    assert h["window"][0] == 16 and h["window"][-1] == 96
    assert all(len(x) == len(I.TEST_LENGTHS) for x in h["repeat_loss"])
    assert all(0 <= s <= 1 for s in h["induction"] + h["prev_token"])
    assert not model.training
    assert I.phase_change_index(h) is None  # 12 steps form no induction head
    fake = {"mean_repeat_loss": [3.0, 0.9, 0.8, 0.5], "induction": [0.1, 0.5, 0.75, 0.9]}
    assert I.phase_change_index(fake) == 2
