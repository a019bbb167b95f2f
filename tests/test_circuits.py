"""Circuits (chapter 5) against independent answers: dense linear algebra, the model's own attention
scores and logits, closed forms, and a hand-built model whose composition is known exactly."""

import math

import pytest
import torch

from tinyinterp import HookedTransformer, TransformerConfig
from tinyinterp import circuits as C

from conftest import small_config


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----- FactoredMatrix --------------------------------------------------------------------------
def test_factored_matrix_readouts_match_the_dense_product():
    g = _gen(1)
    A = torch.randn(3, 20, 4, generator=g, dtype=torch.float64)
    B = torch.randn(3, 4, 20, generator=g, dtype=torch.float64)
    fm, dense = C.FactoredMatrix(A, B), A @ B
    assert fm.shape == dense.shape and fm.mdim == 4
    torch.testing.assert_close(fm.AB, dense)
    torch.testing.assert_close(fm.norm(), torch.linalg.matrix_norm(dense))
    torch.testing.assert_close(fm.diagonal(), torch.diagonal(dense, dim1=-2, dim2=-1))
    torch.testing.assert_close(fm.T.AB, dense.transpose(-1, -2))
    # the 4 non-zero eigenvalues of the 20x20 product are the eigenvalues of B @ A
    full = torch.linalg.eigvals(dense)
    for h in range(3):
        big = full[h][full[h].abs() > 1e-8]
        small = fm.eigenvalues()[h]
        assert len(big) == 4
        for lam in small:
            assert (big - lam).abs().min() < 1e-6
    M = torch.randn(20, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close((fm @ M).AB, dense @ M)
    torch.testing.assert_close((fm @ fm).AB, dense @ dense)
    torch.testing.assert_close((M.T @ fm).AB, M.T @ dense)
    torch.testing.assert_close(fm[1].AB, dense[1])


def test_factored_matrix_rejects_mismatched_factors():
    with pytest.raises(ValueError, match="inner"):
        C.FactoredMatrix(torch.zeros(3, 4), torch.zeros(5, 3))


# ----- full QK and OV circuits against the model ----------------------------------------------------
def _one_layer_no_pos(n_heads=2):
    cfg = TransformerConfig(d_vocab=9, n_ctx=8, d_model=12, n_layers=1, n_heads=n_heads, d_head=3,
                            attn_only=True, normalization=None, init_std=0.5, seed=3)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        model.pos_embed.W_pos.zero_()  # the token circuits describe the token-only path
    model.eval()
    return model


@torch.no_grad()
def test_qk_circuit_gives_the_models_attention_scores():
    model = _one_layer_no_pos()
    tokens = torch.tensor([[3, 7, 1, 4, 4, 0]])
    _, cache = model.run_with_cache(tokens)
    scores = cache["attn_scores", 0][0]  # [head, q, k]
    qk = C.qk_circuit(model.W_E, model.W_Q[0], model.W_K[0]).AB / math.sqrt(model.cfg.d_head)
    for q in range(6):
        for k in range(q + 1):
            torch.testing.assert_close(scores[:, q, k], qk[:, tokens[0, q], tokens[0, k]], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_ov_circuit_gives_the_logits_of_a_repeated_token():
    """A sequence of one repeated token: every head attends to copies of it, so the logits are the
    direct path plus each head's OV row (biases are zero at init)."""
    model = _one_layer_no_pos(n_heads=3)
    ov = C.ov_circuit(model.W_E, model.W_V[0], model.W_O[0], model.W_U).AB
    for t in range(model.cfg.d_vocab):
        logits = model(torch.full((1, 5), t))[0, -1]
        expected = model.W_E[t] @ model.W_U + ov[:, t].sum(0)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


# ----- copying ------------------------------------------------------------------------------------
def test_copying_score_closed_forms():
    g = _gen(2)
    E = torch.randn(15, 4, generator=g)
    assert C.copying_score(C.FactoredMatrix(E, E.T)).item() == pytest.approx(1.0, abs=1e-5)  # PSD: copies
    assert C.copying_score(C.FactoredMatrix(E, -E.T)).item() == pytest.approx(-1.0, abs=1e-5)
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # eigenvalues +-i: neither copies nor suppresses
    assert C.copying_score(rotation).item() == pytest.approx(0.0, abs=1e-6)
    diag = torch.diag(torch.tensor([3.0, -1.0, 2.0, 0.0]))  # (3 - 1 + 2) / (3 + 1 + 2)
    assert C.copying_score(diag).item() == pytest.approx(4 / 6, abs=1e-6)
    # factored and dense agree on random matrices
    A, B = torch.randn(2, 30, 5, generator=g), torch.randn(2, 5, 30, generator=g)
    torch.testing.assert_close(C.factored_copying_score(A, B), C.copying_score(A @ B), atol=1e-3, rtol=1e-3)


def test_top1_diagonal_score():
    m = torch.tensor([[5.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])  # rows 0 and 2 peak on the diagonal
    assert C.top1_diagonal_score(m).item() == pytest.approx(2 / 3)
    E = torch.randn(10, 10, generator=_gen(3))
    assert C.top1_diagonal_score(C.FactoredMatrix(E, 100 * torch.linalg.inv(E))).item() == 1.0


# ----- composition ---------------------------------------------------------------------------------
def test_composition_score_closed_forms_and_bounds():
    e = torch.eye(6)
    u = e[:, :1]
    assert C.composition_score(u @ u.T, u @ u.T).item() == pytest.approx(1.0)  # rank 1, aligned
    assert C.composition_score(e[:, :1] @ e[:, :1].T, e[:, 1:2] @ e[:, 1:2].T).item() == pytest.approx(0.0)
    P = e[:, :3] @ e[:, :3].T  # a rank-3 projection composed with itself: sqrt(3) / 3
    assert C.composition_score(P, P).item() == pytest.approx(1 / math.sqrt(3), abs=1e-6)
    g = _gen(4)
    W_A, W_B = torch.randn(5, 7, 9, generator=g), torch.randn(5, 9, 4, generator=g)
    s = C.composition_score(W_A, W_B)
    assert s.shape == (5,) and ((s > 0) & (s <= 1)).all()
    fa = C.FactoredMatrix(torch.randn(7, 2, generator=g), torch.randn(2, 9, generator=g))
    fb = C.FactoredMatrix(torch.randn(9, 3, generator=g), torch.randn(3, 4, generator=g))
    torch.testing.assert_close(C.composition_score(fa, fb), C.composition_score(fa.AB, fb.AB), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(C.composition_score(fa, fb.AB), C.composition_score(fa.AB, fb.AB), atol=1e-5, rtol=1e-5)


def _hand_built(d_head=2, swap_qk=False):
    """2-layer attention-only model on 16 residual dimensions. Head 0.1 reads dims 0-1 and writes dims
    2-3; head 1.2's keys read dims 2-3 (K-composition with 0.1), its queries dims 4-5 and its values
    dims 6-7. Every other head reads and writes dims 8-15, disjoint from all of that."""
    cfg = TransformerConfig(d_vocab=5, n_ctx=8, d_model=16, n_layers=2, n_heads=3, d_head=d_head,
                            attn_only=True, normalization=None, seed=0)
    model = HookedTransformer(cfg)
    e = torch.eye(16)
    g = _gen(5)

    def block(start):
        return e[:, start:start + d_head]

    with torch.no_grad():
        for layer in range(2):
            att = model.blocks[layer].attn
            for h in range(3):  # "other" heads: random, inside dims 8..15 only
                for W in (att.W_Q, att.W_K, att.W_V):
                    W[h] = torch.zeros(16, d_head)
                    W[h][8:] = torch.randn(8, d_head, generator=g)
                att.W_O[h] = torch.zeros(d_head, 16)
                att.W_O[h][:, 8:] = torch.randn(d_head, 8, generator=g)
        a, b = model.blocks[0].attn, model.blocks[1].attn
        a.W_V[1], a.W_O[1] = block(0), block(2).T
        q, k = (block(2), block(4)) if swap_qk else (block(4), block(2))
        b.W_Q[2], b.W_K[2], b.W_V[2], b.W_O[2] = q, k, block(6), block(10).T
    return model


def test_hand_built_k_composition_is_found_in_the_row_vector_convention():
    model = _hand_built()
    K, Q, V = (C.composition_scores(model, kind) for kind in "KQV")
    assert K.shape == (3, 3)
    # W_OV^a (W_QK^b)^T = (e0 e2^T + e1 e3^T)(e2 e4^T + e3 e5^T) = e0 e4^T + e1 e5^T: norm sqrt(2) / (sqrt(2) sqrt(2))
    assert K[1, 2].item() == pytest.approx(1 / math.sqrt(2), abs=1e-5)
    assert Q[1, 2].item() == pytest.approx(0.0, abs=1e-6) and V[1, 2].item() == pytest.approx(0.0, abs=1e-6)
    assert K.flatten().argmax().item() == 1 * 3 + 2  # the pair ranks first
    assert K[1].abs().sum() == pytest.approx(K[1, 2].item(), abs=1e-6)  # head 0.1 composes with nothing else
    # swap the later head's query and key reads: now it is Q-composition
    model = _hand_built(swap_qk=True)
    assert C.composition_scores(model, "Q")[1, 2].item() == pytest.approx(1 / math.sqrt(2), abs=1e-5)
    assert C.composition_scores(model, "K")[1, 2].item() == pytest.approx(0.0, abs=1e-6)


def test_rank_one_composition_scores_one():
    model = _hand_built(d_head=1)
    assert C.composition_scores(model, "K")[1, 2].item() == pytest.approx(1.0, abs=1e-5)


def test_composition_scores_agree_with_dense_definition(small_model):
    m = small_model
    W_Q, W_K, W_V, W_O = (w.detach() for w in (m.W_Q, m.W_K, m.W_V, m.W_O))
    for kind in "QKV":
        table = C.composition_scores(m, kind)
        for i in range(3):
            for j in range(3):
                ov_a = W_V[0, i] @ W_O[0, i]
                qk_b = W_Q[1, j] @ W_K[1, j].T
                right = {"Q": qk_b, "K": qk_b.T, "V": W_V[1, j] @ W_O[1, j]}[kind]
                dense = torch.linalg.matrix_norm(ov_a @ right) / (
                    torch.linalg.matrix_norm(ov_a) * torch.linalg.matrix_norm(right))
                assert table[i, j].item() == pytest.approx(dense.item(), rel=1e-4)
    with pytest.raises(ValueError):
        C.composition_scores(m, "X")
    with pytest.raises(ValueError):
        C.composition_scores(m, "K", layer_a=1, layer_b=0)


def test_composition_baseline_matches_the_closed_form_for_dense_gaussians():
    # ||AB||_F^2 ~ n^3 and ||A||_F^2 ~ ||B||_F^2 ~ n^2 for n x n standard Gaussians: score ~ 1/sqrt(n)
    for n in (16, 64):
        assert C.composition_baseline((n, n), (n, n), "K", n_samples=400) == pytest.approx(1 / math.sqrt(n), rel=0.05)
    low = C.composition_baseline((32, 4, 32), (32, 4, 32), "Q", n_samples=400, seed=1)
    g = _gen(7)
    dense = [C.composition_score(torch.randn(32, 4, generator=g) @ torch.randn(4, 32, generator=g),
                                 torch.randn(32, 4, generator=g) @ torch.randn(4, 32, generator=g)).item()
             for _ in range(400)]
    assert low == pytest.approx(sum(dense) / len(dense), rel=0.05)
    assert C.model_composition_baseline(HookedTransformer(small_config()), "V", n_samples=50) > 0
