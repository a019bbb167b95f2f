"""Attribution (chapter 4) against independent answers: the model's own forward pass, torch's
LayerNorm, and models whose weights were edited instead of hooked."""

import copy

import pytest
import torch

from tinyinterp import HookedTransformer, attribution as A
from tinyinterp.functional import cross_entropy_loss

from conftest import small_config


def _tokens(model, batch=3, pos=9, seed=0):
    return torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _attn_only_model():
    model = HookedTransformer(small_config(attn_only=True, n_layers=3, init_std=0.2))
    model.eval()
    return model


@torch.no_grad()
@pytest.mark.parametrize("which", ["mlp", "attn_only"])
def test_decomposition_sums_to_the_final_residual(small_model, which):
    model = small_model if which == "mlp" else _attn_only_model()
    _, cache = model.run_with_cache(_tokens(model))
    comps = A.decompose_resid(cache)
    n = model.cfg.n_layers
    assert comps.shape[0] == 2 + n * (1 if model.cfg.attn_only else 2) == len(A.component_labels(cache))
    torch.testing.assert_close(comps.sum(0), cache[f"blocks.{n - 1}.hook_resid_post"], atol=1e-5, rtol=1e-5)
    assert A.component_labels(cache)[:3] == ["embed", "pos_embed", "0_attn_out"]


@torch.no_grad()
def test_head_results_sum_to_attn_out(small_model):
    _, cache = small_model.run_with_cache(_tokens(small_model))
    heads = A.all_head_results(small_model, cache)
    for layer in range(small_model.cfg.n_layers):
        torch.testing.assert_close(heads[layer].sum(0) + small_model.blocks[layer].attn.b_O,
                                   cache["attn_out", layer], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_direct_logit_attribution_adds_up_to_the_logit(small_model):
    tokens = _tokens(small_model)
    logits, cache = small_model.run_with_cache(tokens)
    target_logit = logits[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    dla = A.dla_from_cache(small_model, cache, A.decompose_resid(cache), tokens)
    assert dla.shape == (6, 3, 8)
    torch.testing.assert_close(dla.sum(0) + A.logit_bias_term(small_model, tokens[:, 1:]), target_logit,
                               atol=1e-4, rtol=1e-4)
    # the heads of a layer plus its b_O share out that layer's attention attribution
    heads = A.dla_from_cache(small_model, cache, A.all_head_results(small_model, cache)[1], tokens)
    b_O = small_model.blocks[1].attn.b_O.expand(1, 3, 9, -1)
    torch.testing.assert_close(heads.sum(0) + A.dla_from_cache(small_model, cache, b_O, tokens)[0], dla[4],
                               atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_direct_logit_attribution_of_one_component_by_hand():
    """A single component with the scale of its own LayerNorm: DLA = the LN-then-unembed logit minus the
    bias term (torch's nn.functional.layer_norm as the oracle)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 4, 6, generator=gen)
    w, W_U = torch.rand(6, generator=gen) + 0.5, torch.randn(6, 5, generator=gen)
    targets = torch.randint(0, 5, (2, 4), generator=gen)
    centred = x[0] - x[0].mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    expected = (torch.nn.functional.layer_norm(x[0], (6,), w, None, 1e-5) @ W_U).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(A.direct_logit_attribution(x, scale, w, W_U, targets)[0], expected)


@torch.no_grad()
def test_dla_without_layernorm_is_a_dot_product():
    model_no_ln = HookedTransformer(small_config(attn_only=True, normalization=None))
    tokens = _tokens(model_no_ln)
    logits, cache = model_no_ln.run_with_cache(tokens)
    dla = A.dla_from_cache(model_no_ln, cache, A.decompose_resid(cache), tokens)
    target_logit = logits[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    torch.testing.assert_close(dla.sum(0) + A.logit_bias_term(model_no_ln, tokens[:, 1:]), target_logit,
                               atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_logit_lens_last_layer_is_the_model_output_and_first_is_layernorm_of_embeddings(small_model):
    tokens = _tokens(small_model)
    logits, cache = small_model.run_with_cache(tokens)
    lens = A.logit_lens_from_cache(small_model, cache)
    assert lens.shape == (small_model.cfg.n_layers + 1, *logits.shape)
    torch.testing.assert_close(lens[-1], logits, atol=1e-5, rtol=1e-5)
    ln = small_model.ln_final
    x0 = cache["hook_embed"] + cache["hook_pos_embed"]
    expected = torch.nn.functional.layer_norm(x0, (x0.shape[-1],), ln.w, ln.b, ln.eps) @ small_model.W_U \
        + small_model.unembed.b_U
    torch.testing.assert_close(lens[0], expected, atol=1e-5, rtol=1e-5)


def test_per_position_loss_matches_cross_entropy(small_model):
    tokens = _tokens(small_model)
    with torch.no_grad():
        logits = small_model(tokens)
    torch.testing.assert_close(A.per_position_loss(logits, tokens).mean(), cross_entropy_loss(logits, tokens))


def _large_init_model():
    """Weights large enough that every head changes the loss noticeably."""
    model = HookedTransformer(small_config(init_std=0.3))
    model.eval()
    return model


def _zero_head_weights(model, layer, head):
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.blocks[layer].attn.W_O[head].zero_()
    return edited


@torch.no_grad()
def test_zero_ablation_hook_equals_zeroing_the_heads_output_weights(small_model):
    tokens = _tokens(small_model)
    for layer, head in [(0, 1), (1, 2)]:
        hooked = small_model.run_with_hooks(tokens, [(f"blocks.{layer}.attn.hook_z", A.head_ablation_hook(head))])
        torch.testing.assert_close(hooked, _zero_head_weights(small_model, layer, head)(tokens), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_ablation_table_matches_edited_models():
    small_model = _large_init_model()
    tokens = _tokens(small_model, batch=4, pos=10)
    table = A.ablation_effects(small_model, tokens, "zero")
    clean = cross_entropy_loss(small_model(tokens), tokens)
    assert table.shape == (2, 3)
    for layer in range(2):
        for head in range(3):
            edited = _zero_head_weights(small_model, layer, head)
            expected = cross_entropy_loss(edited(tokens), tokens) - clean
            assert abs(table[layer, head].item() - expected.item()) < 1e-5
    assert table.abs().max() > 1e-3  # the heads matter in this model: the test can fail


@torch.no_grad()
def test_mean_ablation_is_a_no_op_when_every_batch_row_is_the_same():
    small_model = _large_init_model()
    tokens = _tokens(small_model, batch=1, pos=10).expand(4, -1)
    torch.testing.assert_close(A.ablation_effects(small_model, tokens, "mean"), torch.zeros(2, 3), atol=1e-5, rtol=0)
    assert A.ablation_effects(small_model, tokens, "zero").abs().max() > 1e-3


def test_mean_ablation_replaces_by_the_given_mean_and_does_not_mutate():
    z = torch.randn(2, 3, 4, 5)
    before = z.clone()
    means = torch.randn(3, 4, 5)
    out = A.ablate_head(z, 2, means)
    torch.testing.assert_close(out[:, :, 2], means[:, 2].expand(2, -1, -1))
    torch.testing.assert_close(out[:, :, [0, 1, 3]], z[:, :, [0, 1, 3]])
    assert torch.equal(z, before)
    assert (A.ablate_head(z, 0)[:, :, 0] == 0).all()


def test_correct_logit_metric_ignores_a_shift_of_every_logit():
    logits, tokens = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    torch.testing.assert_close(A.correct_logit(logits + 3.0, tokens), A.correct_logit(logits, tokens))
    by_hand = torch.stack([logits[b, p, tokens[b, p + 1]] - logits[b, p].mean() for b in range(2) for p in range(4)])
    torch.testing.assert_close(A.correct_logit(logits, tokens), by_hand.mean())


def test_bad_mode_is_rejected(small_model):
    with pytest.raises(ValueError, match="mode"):
        A.ablation_effects(small_model, _tokens(small_model), "random")
