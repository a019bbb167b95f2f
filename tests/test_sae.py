"""Sparse autoencoders (chapter 8), checked against independent oracles: hand-computed outputs,
closed forms, ground-truth toy features, and SAEs built by hand to reconstruct perfectly or not at all."""

import dataclasses
import math

import pytest
import torch

from tinyinterp import HookedTransformer
from tinyinterp.feature_browser import (FeatureData, boosted_tokens, context_html, feature_browser,
                                        feature_card_html, latent_logit_effect, render_feature_cards,
                                        top_activating_contexts)
from tinyinterp.functional import cross_entropy_loss
from tinyinterp.data import CharTokenizer
from tinyinterp.sae import (SAEConfig, SAETrainConfig, SparseAutoencoder, dead_latents, fraction_variance_explained,
                            l0, normalize_decoder, resample_dead_latents, sae_forward, sae_loss, topk_forward,
                            train_sae)
from tinyinterp.sae_lm import (ce_loss_recovered, cached_sae, collect_mlp_activations, evaluate_lm_sae,
                               mlp_hook_name, splice_hook)
from tinyinterp.toy_features import (ToyFeatureConfig, ToyFeatureData, mmcs, random_unit_directions, sparse_codes,
                                     toy_experiment)

from conftest import small_config


# ----- forward passes, by hand -------------------------------------------------------------------
def _hand_weights():
    W_enc = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]])  # [d_in 2, d_sae 3]
    b_enc = torch.tensor([0.0, -1.0, 0.5])
    W_dec = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # [d_sae 3, d_in 2]
    b_dec = torch.tensor([1.0, 1.0])
    return W_enc, b_enc, W_dec, b_dec


def test_sae_forward_by_hand():
    x = torch.tensor([[3.0, 2.0], [0.0, 1.0]])
    # x - b_dec = [2, 1] and [-1, 0]; pre = [2, 2-1, -2+1+0.5] = [2, 1, -0.5] and [-1, -1, 1.5]
    latents, recon = sae_forward(x, *_hand_weights())
    assert torch.allclose(latents, torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 1.5]]))
    # recon = latents @ W_dec + b_dec = [2, 1] + [1, 1] and [0.9, 1.2] + [1, 1]
    assert torch.allclose(recon, torch.tensor([[3.0, 2.0], [1.9, 2.2]]))


def test_topk_forward_by_hand():
    x = torch.tensor([[3.0, 2.0], [0.0, 1.0]])  # pre-activations [2, 1, -0.5] and [-1, -1, 1.5]
    latents, recon = topk_forward(x, *_hand_weights(), k=1)
    assert torch.allclose(latents, torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.5]]))
    assert torch.allclose(recon, torch.tensor([[3.0, 1.0], [1.9, 2.2]]))
    latents, _ = topk_forward(x, *_hand_weights(), k=2)  # a kept negative value is zeroed by the ReLU
    assert torch.allclose(latents, torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 1.5]]))


def test_topk_keeps_at_most_k_and_matches_relu_sae_when_k_is_everything():
    gen = torch.Generator().manual_seed(0)
    x, W_enc = torch.randn(50, 8, generator=gen), torch.randn(8, 32, generator=gen)
    b_enc = torch.randn(32, generator=gen)
    W_dec, b_dec = normalize_decoder(torch.randn(32, 8, generator=gen)), torch.randn(8, generator=gen)
    latents, _ = topk_forward(x, W_enc, b_enc, W_dec, b_dec, k=5)
    assert ((latents > 0).sum(-1) <= 5).all() and (latents >= 0).all()
    relu = sae_forward(x, W_enc, b_enc, W_dec, b_dec)
    for a, b in zip(topk_forward(x, W_enc, b_enc, W_dec, b_dec, k=32), relu):
        assert torch.allclose(a, b)


# ----- loss and decoder normalisation ------------------------------------------------------------
def test_sae_loss_by_hand():
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    recon = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # squared errors 4 and 9: mean 6.5
    latents = torch.tensor([[1.0, 0.0], [2.0, 3.0]])
    W_dec = torch.tensor([[3.0, 4.0], [0.0, 0.5]])  # row norms 5 and 0.5
    # weighted L1: [1*5, 2*5 + 3*0.5] = [5, 11.5], mean 8.25
    assert math.isclose(sae_loss(x, latents, recon, W_dec, 0.1).item(), 6.5 + 0.825, rel_tol=1e-6)
    assert math.isclose(sae_loss(x, latents, recon, W_dec, 0.0).item(), 6.5, rel_tol=1e-6)


def test_normalized_decoder_has_unit_rows_and_same_directions():
    W = torch.randn(20, 7) * torch.rand(20, 1) * 10
    N = normalize_decoder(W)
    assert torch.allclose(N.norm(dim=-1), torch.ones(20), atol=1e-6)
    assert torch.allclose(torch.cosine_similarity(N, W, dim=-1), torch.ones(20), atol=1e-6)
    # with unit rows, the norm-weighted L1 is the plain L1
    x, lat = torch.randn(4, 7), torch.rand(4, 20)
    assert math.isclose(sae_loss(x, lat, x, N, 1.0).item(), lat.sum(-1).mean().item(), rel_tol=1e-5)


def test_parallel_gradient_is_removed():
    sae = SparseAutoencoder(SAEConfig(d_in=6, d_sae=10))
    loss, _ = sae.loss(torch.randn(32, 6))
    loss.backward()
    sae.remove_parallel_decoder_grad_()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(-1), torch.zeros(10), atol=1e-6)


# ----- MMCS --------------------------------------------------------------------------------------
def test_mmcs_known_answers():
    gen = torch.Generator().manual_seed(0)
    true = random_unit_directions(10, 6, gen)
    assert math.isclose(mmcs(true, true).item(), 1.0, rel_tol=1e-6)
    shuffled = true[torch.randperm(10, generator=gen)] * torch.rand(10, 1, generator=gen) * 5  # permuted, rescaled
    assert math.isclose(mmcs(true, shuffled).item(), 1.0, rel_tol=1e-6)
    extra = torch.cat([shuffled, torch.randn(30, 6, generator=gen)])  # more learned directions cannot hurt
    assert math.isclose(mmcs(true, extra).item(), 1.0, rel_tol=1e-6)
    ortho = torch.eye(4)
    assert abs(mmcs(ortho, -ortho).item()) < 1e-7  # sign-flipped orthonormal: best cosine is 0, not 1
    # 2-D: a learned direction at 45 degrees to both true ones
    assert math.isclose(mmcs(torch.eye(2), torch.tensor([[1.0, 1.0]])).item(), math.sqrt(0.5), rel_tol=1e-6)
    # half the true features found exactly, the rest orthogonal to everything learned
    assert math.isclose(mmcs(torch.eye(4), torch.eye(4)[:2]).item(), 0.5, rel_tol=1e-6)


# ----- toy data and training ---------------------------------------------------------------------
def test_toy_data_is_what_it_says():
    cfg = ToyFeatureConfig(d=16, n_features=40, p_active=0.1, seed=3)
    data = ToyFeatureData(cfg)
    assert torch.allclose(data.features.norm(dim=-1), torch.ones(40), atol=1e-6)
    x, codes = data.sample(20_000, torch.Generator().manual_seed(0))
    assert torch.allclose(x, codes @ data.features, atol=1e-5)
    assert abs((codes > 0).float().mean().item() - 0.1) < 0.005
    assert codes.min() >= 0 and codes.max() < 1
    assert abs(codes[codes > 0].mean().item() - 0.5) < 0.02  # uniform magnitudes
    assert sparse_codes(5, 3, 0.0, torch.Generator()).abs().sum() == 0


def test_untrained_sae_is_far_from_the_toy_features():
    # guards against the SAE's initialisation sharing a random stream with the ground truth
    data = ToyFeatureData(ToyFeatureConfig(d=32, n_features=64, seed=0))
    for d_sae in (64, 128):
        assert mmcs(data.features, SparseAutoencoder(SAEConfig(d_in=32, d_sae=d_sae, seed=0)).W_dec).item() < 0.6


def test_sae_recovers_known_toy_features():
    data_cfg = ToyFeatureConfig(d=16, n_features=32, p_active=0.06, seed=1)
    sae_cfg = SAEConfig(d_in=16, d_sae=64, l1_coeff=0.3, seed=2)
    train_cfg = SAETrainConfig(steps=600, batch_size=256, lr=1e-2, resample_every=200, dead_window=100)
    sae, m = toy_experiment(sae_cfg, train_cfg, data_cfg, n_samples=20_000)
    assert m["mmcs"] > 0.95, m
    assert m["fve"] > 0.7 and m["l0"] < 3 * m["true_l0"], m
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(64), atol=1e-5)  # unit rows held throughout
    # the TopK SAE finds them too
    _, m = toy_experiment(dataclasses.replace(sae_cfg, k=3), train_cfg, data_cfg, n_samples=20_000)
    assert m["mmcs"] > 0.95 and m["l0"] <= 3, m


def test_resampling_revives_latents_that_were_dead_from_the_start():
    gen = torch.Generator().manual_seed(0)
    data = ToyFeatureData(ToyFeatureConfig(d=8, n_features=12, p_active=0.15, seed=4))
    x, _ = data.sample(5_000, gen)
    results = {}
    for resample in (True, False):
        sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, l1_coeff=0.1, seed=5))
        with torch.no_grad():
            sae.b_enc[:8] = -10.0  # half the latents never fire, so get no gradient
        cfg = SAETrainConfig(steps=300, batch_size=128, resample_every=50 if resample else 10**9, dead_window=25)
        result = train_sae(sae, x, cfg, progress=False)
        latents, _ = sae(x)
        results[resample] = ((latents > 0).sum(0) == 0).float().mean().item(), result.resampled
    assert results[False] == (0.5, [])
    assert results[True][0] < 0.2 and results[True][1][0] == (50, 8)


# ----- resampling, by its definition ----------------------------------------------------------------
def _resample_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    d_in, d_sae = 5, 9
    W_enc = torch.randn(d_in, d_sae, generator=gen) * torch.rand(d_sae, generator=gen)
    return dict(x=torch.randn(40, d_in, generator=gen) + 2.0, W_enc=W_enc, b_enc=torch.randn(d_sae, generator=gen),
                W_dec=normalize_decoder(torch.randn(d_sae, d_in, generator=gen)),
                b_dec=torch.randn(d_in, generator=gen))


def test_resample_changes_only_dead_latents_as_specified():
    p = _resample_inputs()
    dead = torch.tensor([False, True, False, False, True, True, False, False, False])
    W_enc, b_enc, W_dec = resample_dead_latents(p["x"], dead, p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"], seed=3)
    alive = ~dead
    assert torch.equal(W_enc[:, alive], p["W_enc"][:, alive]) and torch.equal(W_dec[alive], p["W_dec"][alive])
    assert torch.equal(b_enc[alive], p["b_enc"][alive]) and (b_enc[dead] == 0).all()
    centred = normalize_decoder(p["x"] - p["b_dec"])  # every candidate direction
    for i in dead.nonzero().squeeze(-1).tolist():
        assert math.isclose(W_dec[i].norm().item(), 1.0, rel_tol=1e-5)
        assert (centred @ W_dec[i]).max() > 1 - 1e-5  # the direction of one of the inputs, centred
        expected_norm = 0.2 * p["W_enc"][:, alive].norm(dim=0).mean()
        assert math.isclose(W_enc[:, i].norm().item(), expected_norm.item(), rel_tol=1e-5)
        assert torch.cosine_similarity(W_enc[:, i], W_dec[i], dim=0) > 1 - 1e-5
    again = resample_dead_latents(p["x"], dead, p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"], seed=3)
    assert all(torch.equal(a, b) for a, b in zip(again, (W_enc, b_enc, W_dec)))  # deterministic given the seed


def _reconstruct_nothing(d_in: int, d_sae: int):
    """Weights whose latents never fire: every reconstruction is b_dec."""
    gen = torch.Generator().manual_seed(1)
    return dict(W_enc=torch.randn(d_in, d_sae, generator=gen), b_enc=torch.full((d_sae,), -100.0),
                W_dec=normalize_decoder(torch.randn(d_sae, d_in, generator=gen)), b_dec=torch.tensor([1.0, -2.0]))


def test_resample_draws_only_badly_reconstructed_inputs():
    p = _reconstruct_nothing(2, 6)
    x = p["b_dec"].repeat(30, 1)  # reconstructed exactly (x = b_dec)...
    x[7] += torch.tensor([3.0, -4.0])  # ...except input 7
    dead = torch.tensor([True, False, True, True, False, False])
    _, _, W_dec = resample_dead_latents(x, dead, p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"], seed=0)
    assert torch.allclose(W_dec[dead], torch.tensor([0.6, -0.8]).expand(3, 2), atol=1e-6)


def test_resample_weights_inputs_by_squared_loss():
    # squared errors 1 and 4, so probabilities (1² : 4²) = 1 : 16, not 1 : 4
    n_dead = 4000
    p = _reconstruct_nothing(2, n_dead + 1)
    x = torch.stack([p["b_dec"] + torch.tensor([1.0, 0.0]), p["b_dec"] + torch.tensor([0.0, 2.0])])
    dead = torch.ones(n_dead + 1, dtype=torch.bool)
    dead[-1] = False
    _, _, W_dec = resample_dead_latents(x, dead, p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"], seed=0)
    picked_second = (W_dec[:n_dead, 1] > 0.5).float().mean().item()
    assert abs(picked_second - 16 / 17) < 0.02


def test_dead_latents_window():
    assert dead_latents(torch.tensor([0, 5, 10, 11]), 10).tolist() == [False, False, True, True]


# ----- metrics on the language model -------------------------------------------------------------
def _perfect_sae(d: int) -> SparseAutoencoder:
    """ReLU(x) - ReLU(-x) = x: two latents per dimension reconstruct anything exactly."""
    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=2 * d))
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 1))
        sae.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _zero_sae(d: int) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=3))
    with torch.no_grad():
        sae.b_enc.fill_(-1e4)  # no latent ever fires, and b_dec = 0: the reconstruction is all zeros
        sae.b_dec.zero_()
    return sae


def test_ce_loss_recovered_known_answers(small_model):
    tokens = torch.randint(0, small_model.cfg.d_vocab, (4, 12), generator=torch.Generator().manual_seed(0))
    d_mlp = small_model.cfg.d_mlp
    perfect = evaluate_lm_sae(small_model, _perfect_sae(d_mlp), tokens, layer=1)
    assert math.isclose(perfect.ce_recovered, 1.0, abs_tol=1e-4) and perfect.fve > 1 - 1e-5
    assert math.isclose(perfect.clean_loss, perfect.spliced_loss, abs_tol=1e-5)
    zero = evaluate_lm_sae(small_model, _zero_sae(d_mlp), tokens, layer=1)
    assert math.isclose(zero.ce_recovered, 0.0, abs_tol=1e-4) and zero.l0 == 0 and zero.dead_fraction == 1.0
    assert zero.ablated_loss != zero.clean_loss
    # the formula itself, on logits whose losses we know
    clean, worse = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    toks = torch.randint(0, 7, (2, 5))
    assert math.isclose(ce_loss_recovered(clean, clean, worse, toks).item(), 1.0, rel_tol=1e-6)
    assert abs(ce_loss_recovered(clean, worse, worse, toks).item()) < 1e-6
    l_c, l_w = cross_entropy_loss(clean, toks), cross_entropy_loss(worse, toks)
    half = torch.log(torch.tensor(0.5))  # a constant shift of every logit leaves the loss unchanged
    assert math.isclose(ce_loss_recovered(clean, clean + half, worse, toks).item(), 1.0, rel_tol=1e-5)
    between = (l_w - cross_entropy_loss((clean + worse) / 2, toks)) / (l_w - l_c)
    assert math.isclose(ce_loss_recovered(clean, (clean + worse) / 2, worse, toks).item(), between.item(), rel_tol=1e-6)


def test_collect_and_splice(small_model):
    tokens = torch.randint(0, small_model.cfg.d_vocab, (5, 9))
    acts = collect_mlp_activations(small_model, tokens, layer=0, batch_size=2)
    _, cache = small_model.run_with_cache(tokens)
    assert torch.allclose(acts, cache[mlp_hook_name(0)], atol=1e-6)
    with torch.no_grad():
        spliced = small_model.run_with_hooks(tokens, [(mlp_hook_name(0), splice_hook(_perfect_sae(acts.shape[-1])))])
        assert torch.allclose(spliced, small_model(tokens), atol=1e-5)


def test_l0_and_fve():
    assert l0(torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.5]])) == 1.5
    x = torch.randn(100, 4)
    assert math.isclose(fraction_variance_explained(x, x), 1.0)
    assert abs(fraction_variance_explained(x, x.mean(0).expand_as(x))) < 1e-6


# ----- cache -------------------------------------------------------------------------------------
def test_cached_sae_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYINTERP_CACHE", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        sae = SparseAutoencoder(SAEConfig(d_in=3, d_sae=5, seed=7))
        return sae, {"losses": [1.0, 0.5], "resampled": [(1, 2)]}

    a, extra_a = cached_sae("sae-test", {"x": 1}, build)
    b, extra_b = cached_sae("sae-test", {"x": 1}, build)
    assert calls == [1] and extra_b["losses"] == [1.0, 0.5]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    cached_sae("sae-test", {"x": 2}, build)
    assert calls == [1, 1]


# ----- feature browser ---------------------------------------------------------------------------
def test_logit_effect_is_the_direct_effect_through_a_frozen_final_layernorm():
    model = HookedTransformer(small_config())
    with torch.no_grad():
        model.ln_final.w.add_(torch.rand(model.cfg.d_model))
    sae = SparseAutoencoder(SAEConfig(d_in=model.cfg.d_mlp, d_sae=6, seed=3))
    effect = latent_logit_effect(model, sae, layer=1)  # [d_sae, d_vocab]
    tokens = torch.randint(0, model.cfg.d_vocab, (1, 7))
    _, cache = model.run_with_cache(tokens)
    scale = cache["ln_final.hook_scale"]  # [1, pos, 1]
    eps = 1.0  # with the scale frozen, the LayerNorm is affine: the difference is exactly linear
    latent = 4
    extra = eps * (sae.W_dec[latent] @ model.blocks[1].mlp.W_out)

    hooks = [("blocks.1.hook_mlp_out", lambda act, hook: act + extra),
             ("ln_final.hook_scale", lambda act, hook: scale)]  # freeze the LayerNorm's scale
    with torch.no_grad():
        diff = (model.run_with_hooks(tokens, hooks) - model(tokens)) * scale / eps  # [1, pos, d_vocab]
    assert effect[latent].abs().max() > 1e-3
    assert torch.allclose(diff[0], effect[latent].detach().expand_as(diff[0]), atol=1e-6, rtol=1e-3)


def _feature_data():
    tok = CharTokenizer(list("<>&abcdefghijklmnopqrstuvwxyz "))
    windows = torch.stack([tok.encode("<a & b> the end"), tok.encode("nothing here ye")])  # both 15 long
    latents = torch.zeros(2, windows.shape[1], 3)
    latents[0, 2, 0] = 2.0  # latent 0 fires on the "&" of window 0...
    latents[1, 5, 0] = 1.0  # ...and weaker in window 1
    latents[1, 3, 1] = 0.5
    return FeatureData(windows, latents, torch.randn(3, tok.vocab_size), tok)


def test_top_activating_contexts_and_cards():
    data = _feature_data()
    assert top_activating_contexts(data.latents, 0, k=5) == [(0, 2, 2.0), (1, 5, 1.0)]
    assert top_activating_contexts(data.latents, 2, k=5) == []  # never fires
    card = feature_card_html(data, 0)
    assert "&lt;" in card and "&amp;" in card and ">&<" not in card  # the text is escaped
    assert "Latent 0" in card and "fires on" in card and "boosts" in card
    assert "dead latent" in feature_card_html(data, 2)
    with pytest.raises(IndexError):
        feature_card_html(data, 3)
    up, down = boosted_tokens(data.logit_effect, 1, data.tokenizer, k=3)
    assert [v for _, v in up] == sorted([v for _, v in up], reverse=True) and up[0][1] == data.logit_effect[1].max()
    assert down[0][1] == data.logit_effect[1].min()
    assert "Latent 1" in render_feature_cards(data, [0, 1]).data


def test_context_html_shades_by_activation():
    out = context_html(list("abc<"), [0.0, 1.0, 0.5, 0.0], center=1, max_act=1.0)
    assert "rgba(255,140,0,1.00)" in out and "rgba(255,140,0,0.50)" in out and "&lt;" in out
    assert out.count("outline") == 1


def test_feature_browser_widget_updates():
    data = _feature_data()
    box = feature_browser(data, start=0)
    picker, dropdown = box.children[0].children
    card = box.children[1]
    assert "Latent 0" in card.value
    picker.value = 1
    assert "Latent 1" in card.value
    dropdown.value = 0
    assert picker.value == 0 and "Latent 0" in card.value
