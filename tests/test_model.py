"""The from-scratch transformer against independent oracles: torch's fused attention,
nn.LayerNorm, F.gelu, and the TransformerLens parameter table."""

import math

import pytest
import torch
import torch.nn.functional as TF

from tinyinterp import HookedTransformer, TransformerConfig
from tinyinterp import functional as F

from conftest import small_config

TL_SHAPES = {
    "embed.W_E": ("d_vocab", "d_model"),
    "pos_embed.W_pos": ("n_ctx", "d_model"),
    "blocks.{i}.ln1.w": ("d_model",), "blocks.{i}.ln1.b": ("d_model",),
    "blocks.{i}.attn.W_Q": ("n_heads", "d_model", "d_head"),
    "blocks.{i}.attn.W_K": ("n_heads", "d_model", "d_head"),
    "blocks.{i}.attn.W_V": ("n_heads", "d_model", "d_head"),
    "blocks.{i}.attn.W_O": ("n_heads", "d_head", "d_model"),
    "blocks.{i}.attn.b_Q": ("n_heads", "d_head"), "blocks.{i}.attn.b_K": ("n_heads", "d_head"),
    "blocks.{i}.attn.b_V": ("n_heads", "d_head"), "blocks.{i}.attn.b_O": ("d_model",),
    "blocks.{i}.ln2.w": ("d_model",), "blocks.{i}.ln2.b": ("d_model",),
    "blocks.{i}.mlp.W_in": ("d_model", "d_mlp"), "blocks.{i}.mlp.b_in": ("d_mlp",),
    "blocks.{i}.mlp.W_out": ("d_mlp", "d_model"), "blocks.{i}.mlp.b_out": ("d_model",),
    "ln_final.w": ("d_model",), "ln_final.b": ("d_model",),
    "unembed.W_U": ("d_model", "d_vocab"), "unembed.b_U": ("d_vocab",),
}


def expected_shapes(cfg: TransformerConfig) -> dict:
    dims = {k: getattr(cfg, k) for k in ("d_vocab", "n_ctx", "d_model", "n_heads", "d_head", "d_mlp")}
    out = {}
    for name, shape in TL_SHAPES.items():
        if cfg.attn_only and (".ln2." in name or ".mlp." in name):
            continue
        if cfg.normalization is None and (".ln" in name or name.startswith("ln_")):
            continue
        for i in range(cfg.n_layers) if "{i}" in name else [None]:
            out[name.format(i=i)] = tuple(dims[d] for d in shape)
    return out


@pytest.mark.parametrize("overrides", [{}, {"attn_only": True}, {"normalization": None}])
def test_parameter_names_and_shapes_follow_transformerlens(overrides):
    cfg = small_config(**overrides)
    model = HookedTransformer(cfg)
    got = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert got == expected_shapes(cfg)


def test_attention_pattern_matches_sdpa():
    gen = torch.Generator().manual_seed(0)
    for batch, pos, heads, d_head in [(2, 7, 3, 4), (1, 1, 2, 8), (3, 33, 4, 16)]:
        q, k, v = (torch.randn(batch, pos, heads, d_head, generator=gen) for _ in range(3))
        W_O = torch.eye(heads * d_head).view(heads, d_head, heads * d_head)  # concatenates heads
        ours = F.attention_output(F.attention_pattern(q, k), v, W_O)
        ref = TF.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        ref = ref.transpose(1, 2).reshape(batch, pos, heads * d_head)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_model_attention_layer_matches_sdpa(small_model):
    attn = small_model.blocks[0].attn
    x = torch.randn(2, 9, small_model.cfg.d_model)
    q = torch.einsum("bpm,hmd->bhpd", x, attn.W_Q) + attn.b_Q[None, :, None]
    k = torch.einsum("bpm,hmd->bhpd", x, attn.W_K) + attn.b_K[None, :, None]
    v = torch.einsum("bpm,hmd->bhpd", x, attn.W_V) + attn.b_V[None, :, None]
    z = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = torch.einsum("bhpd,hdm->bpm", z, attn.W_O) + attn.b_O
    with torch.no_grad():
        torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


def test_attention_is_stable_for_large_scores():
    q = torch.randn(1, 5, 2, 4) * 1e4
    assert torch.isfinite(F.attention_pattern(q, q)).all()


def test_layer_norm_and_gelu_match_torch():
    x = torch.randn(3, 5, 16) * 3 + 2
    w, b = torch.randn(16), torch.randn(16)
    torch.testing.assert_close(F.layer_norm(x, w, b), TF.layer_norm(x, (16,), w, b, eps=1e-5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(F.gelu(x), TF.gelu(x))


def test_cross_entropy_matches_torch():
    logits, tokens = torch.randn(2, 6, 11), torch.randint(0, 11, (2, 6))
    ref = TF.cross_entropy(logits[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(F.cross_entropy_loss(logits, tokens), ref)


def test_bigram_log_probs_known_answer():
    tokens = torch.tensor([[0, 1, 1, 2]])  # pairs (0,1), (1,1), (1,2)
    lp = F.bigram_log_probs(tokens, 3, smoothing=0.0).exp()
    assert lp[0, 1] == 1 and lp[1, 1] == 0.5 and lp[1, 2] == 0.5
    assert torch.isnan(lp[2]).all()  # row never seen and no smoothing: 0/0
    torch.testing.assert_close(F.bigram_log_probs(tokens, 3).exp().sum(-1), torch.ones(3))


def test_top_k_logits_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    out = F.top_k_logits(logits, 2)
    assert out.tolist() == [[-math.inf, 5.0, -math.inf, 4.0]]
    assert torch.equal(F.top_k_logits(logits, 10), logits)


def test_causal_masking(small_model):
    """Changing a later token never changes an earlier position's logits."""
    tokens = torch.randint(0, 13, (2, 12))
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 13
    with torch.no_grad():
        a, b = small_model(tokens), small_model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=0, rtol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_forward_shapes_and_errors(small_model):
    assert small_model(torch.zeros(3, 5, dtype=torch.long)).shape == (3, 5, 13)
    assert small_model(torch.zeros(4, dtype=torch.long)).shape == (1, 4, 13)
    with pytest.raises(ValueError, match="n_ctx"):
        small_model(torch.zeros(1, 17, dtype=torch.long))


def test_functional_forward_reproduces_model(small_model):
    """The model equals a forward pass assembled from the functional (exercise reference) pieces."""
    m = small_model
    tokens = torch.randint(0, 13, (2, 10))
    resid = F.embed(tokens, m.W_E, m.W_pos)
    for blk in m.blocks:
        a = blk.attn
        resid = resid + F.causal_attention(F.layer_norm(resid, blk.ln1.w, blk.ln1.b), a.W_Q, a.b_Q, a.W_K, a.b_K,
                                           a.W_V, a.b_V, a.W_O, a.b_O)
        resid = resid + F.mlp(F.layer_norm(resid, blk.ln2.w, blk.ln2.b), blk.mlp.W_in, blk.mlp.b_in,
                              blk.mlp.W_out, blk.mlp.b_out)
    logits = F.layer_norm(resid, m.ln_final.w, m.ln_final.b) @ m.W_U + m.unembed.b_U
    with torch.no_grad():
        torch.testing.assert_close(m(tokens), logits, atol=1e-5, rtol=1e-5)


def test_init_is_seeded():
    a, b = HookedTransformer(small_config(seed=3)), HookedTransformer(small_config(seed=3))
    c = HookedTransformer(small_config(seed=4))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.W_E, c.W_E)


def test_config_validation():
    with pytest.raises(ValueError, match="normalization"):
        TransformerConfig(d_vocab=5, normalization="RMS")
    with pytest.raises(ValueError, match="d_vocab"):
        TransformerConfig(d_vocab=0)
    assert TransformerConfig.from_dict(small_config().to_dict()) == small_config()
