"""Activation, path and attribution patching: known answers on the hand-built induction circuit, and
exactness of attribution patching where the metric is affine in the patched activation."""

from functools import partial

import pytest
import torch

from tinyinterp import HookedTransformer, TransformerConfig
from tinyinterp import induction as I
from tinyinterp import patching as P

PREV, IND = (0, 1), (1, 2)  # the hand-set heads: previous-token head in layer 0, induction head in layer 1


def _induction_case(seed=0, sharpness=20.0, V=24, n=8, batch=8):
    """The hand-built circuit (3 heads a layer, the rest random with std 0.02) on clean ``[BOS] r r``
    and corrupted ``[BOS] r' r``, where ``r'`` (the resampled first copy) shares no token with ``r``.

    Metric: logit difference, at each second-copy position that induction can predict
    (``n+1 .. 2n-1``), between the correct next token (from the clean first copy) and the token the
    *corrupted* first copy would suggest. Clean run: about +10 (``logit_scale``); corrupted run: about
    0 (no earlier match, the induction head rests on BOS and predicts nothing)."""
    model = I.handcrafted_induction_model(V, 2 * n + 1, n_heads=3, prev_heads=(PREV[1],), induction_heads=(IND[1],),
                                          sharpness=sharpness, seed=seed)
    perm = torch.rand(batch, V - 1, generator=torch.Generator().manual_seed(seed)).argsort(-1) + 1
    bos = torch.zeros(batch, 1, dtype=torch.long)
    clean = torch.cat([bos, perm[:, :n], perm[:, :n]], 1)
    corrupted = torch.cat([bos, perm[:, n : 2 * n], perm[:, :n]], 1)
    pos = torch.arange(n + 1, 2 * n)
    metric = partial(P.logit_diff, answer=clean[:, pos + 1], wrong=corrupted[:, pos - n + 1], positions=pos)
    return model, clean, corrupted, metric


def _others(table, keep):
    mask = torch.ones_like(table, dtype=torch.bool)
    for idx in keep:
        mask[idx] = False
    return table[mask]


# ----- metrics -----------------------------------------------------------------------------------------
def test_normalised_metric_is_zero_at_corrupted_one_at_clean_and_refuses_a_null_corruption():
    assert P.normalised_metric(-2.0, -2.0, 3.0) == 0 and P.normalised_metric(3.0, -2.0, 3.0) == 1
    assert P.normalised_metric(0.5, -2.0, 3.0) == pytest.approx(0.5)
    torch.testing.assert_close(P.normalised_metric(torch.tensor([1.0, 5.0]), 1.0, 5.0), torch.tensor([0.0, 1.0]))
    for bad in [(1.0, 1.0), (2.0, 2.0 + 1e-9), (float("nan"), 1.0)]:
        with pytest.raises(ValueError, match="coincide|finite"):
            P.normalised_metric(0.0, *bad)


def test_logit_diff_against_hand_computed_values():
    logits = torch.arange(2 * 3 * 5, dtype=torch.float).reshape(2, 3, 5)
    logits[1, 2, 4] = 100.0
    # last position: batch 0: 14 - 10; batch 1: 100 - 26
    assert P.logit_diff(logits, torch.tensor([4, 4]), torch.tensor([0, 1])).item() == pytest.approx((4 + 74) / 2)
    got = P.logit_diff(logits, torch.tensor([[1, 1], [0, 0]]), torch.tensor([[0, 0], [1, 1]]), positions=[0, 2])
    assert got.item() == pytest.approx(0.0)  # +1 for batch 0, -1 for batch 1, at both positions
    with pytest.raises(ValueError, match="answer must have shape"):
        P.logit_diff(logits, torch.tensor([4, 4]), torch.tensor([0, 1]), positions=[0, 2])
    with pytest.raises(ValueError, match="positions"):
        P.logit_diff(logits, torch.tensor([[1]] * 2), torch.tensor([[0]] * 2), positions=[3])


# ----- activation patching: known answers ----------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_head_patching_singles_out_the_hand_set_heads(seed):
    """Measured (seeds 0-2): every other head within 0.001 of its baseline; thresholds 0.95 / 0.01.

    Noising (clean run, one head corrupted): both hand-set heads are necessary, each drops the metric
    to its corrupted level (about 0.0004); the others stay at 1. Denoising (corrupted run, one head
    clean): the induction head alone restores the clean run (about 1.000). The previous-token head
    alone gives about -1.000: the induction head's keys now point at the right first-copy position,
    but the value it copies from there is the corrupted token, the ``wrong`` of the metric."""
    model, clean, corrupted, metric = _induction_case(seed)
    noising = P.patch_head_outputs(model, clean, corrupted, metric, noising=True)
    effect = 1 - noising
    assert effect[PREV] > 0.95 and effect[IND] > 0.95
    assert _others(effect, [PREV, IND]).abs().max() < 0.01
    denoising = P.patch_head_outputs(model, clean, corrupted, metric)
    assert denoising[IND] > 0.95 and denoising[PREV] < -0.95
    assert _others(denoising, [PREV, IND]).abs().max() < 0.01


def test_position_patching_localises_the_circuit():
    """Each of the 7 answer positions is one-seventh of the metric. Patching the clean residual into
    layer 1 at first-copy position ``p = 2 .. n`` gives the induction head there a matching key *and*
    the right value: +1/7 each. Into layer 0 at ``p = 1 .. n-1``: the previous-token head at ``p + 1``
    reads the clean token, so a key matches, but the value at ``p + 1`` stays corrupted: -1/7 each.
    Per head: the induction head acts at the answer positions, the previous-token head at ``2 .. n``."""
    model, clean, corrupted, metric = _induction_case()
    n, seventh = 8, 1 / 7
    want_resid = torch.zeros(2, 2 * n + 1)
    want_resid[0, 1:n] = -seventh
    want_resid[1, 2 : n + 1] = seventh
    torch.testing.assert_close(P.patch_resid_by_layer_pos(model, clean, corrupted, metric), want_resid,
                               atol=0.005, rtol=0)
    by_pos = P.patch_head_by_pos(model, clean, corrupted, metric)
    want = torch.zeros(2, 3, 2 * n + 1)
    want[IND][n + 1 : 2 * n] = seventh
    want[PREV][2 : n + 1] = -seventh
    torch.testing.assert_close(by_pos, want, atol=0.005, rtol=0)
    torch.testing.assert_close(by_pos.sum(-1), P.patch_head_outputs(model, clean, corrupted, metric), atol=0.01, rtol=0)


# ----- path patching ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_path_patching_finds_the_k_composition_path_only(seed):
    """Measured (seeds 0, 1): noising the path previous-token head -> induction head keys leaves 0.0003
    of the clean metric (it carries the whole effect); every other (sender, receiver, q/k/v) path from
    layer 0 to layer 1 leaves 1.000 +- 0.0006. Thresholds 0.95 / 0.01.
    Denoising the same path reproduces plain activation patching of the sender (-1.00 both)."""
    model, clean, corrupted, metric = _induction_case(seed)
    keys = partial(P.path_patch_head_to_head_keys, model, clean, corrupted, metric=metric, noising=True)
    assert 1 - keys(PREV, IND) > 0.95
    for sender, receiver in [((0, 0), IND), ((0, 2), IND), (PREV, (1, 0)), (PREV, (1, 1))]:
        assert abs(1 - keys(sender, receiver)) < 0.01, (sender, receiver)
    for which in ("q", "v"):  # the induction head reads its query and its value from the token subspace
        got = P.path_patch_head_to_head(model, clean, corrupted, PREV, IND, metric, which, noising=True)
        assert abs(1 - got) < 0.01, which
    act = P.patch_head_outputs(model, clean, corrupted, metric)[PREV]
    assert abs(P.path_patch_head_to_head_keys(model, clean, corrupted, PREV, IND, metric) - act) < 0.01


def test_path_patching_differs_from_activation_patching_off_the_path():
    """Activation patching the previous-token head moves the metric by a full unit; the same patch sent
    only into a *non-induction* head's keys moves it by nothing."""
    model, clean, corrupted, metric = _induction_case()
    assert P.patch_head_outputs(model, clean, corrupted, metric)[PREV] < -0.95
    assert abs(P.path_patch_head_to_head_keys(model, clean, corrupted, PREV, (1, 0), metric)) < 0.01


def test_path_patching_rejects_impossible_paths():
    model, clean, corrupted, metric = _induction_case(batch=2)
    for sender, receiver, match in [((1, 0), (1, 2), "earlier layer"), ((1, 0), (0, 1), "earlier layer"),
                                    ((0, 3), (1, 2), "not a"), ((0, 1), (2, 0), "not a"), (1, (1, 2), "not a")]:
        with pytest.raises(ValueError, match=match):
            P.path_patch_head_to_head_keys(model, clean, corrupted, sender, receiver, metric)
    with pytest.raises(ValueError, match="receiver_input"):
        P.path_patch_head_to_head(model, clean, corrupted, PREV, IND, metric, receiver_input="z")


# ----- attribution patching ---------------------------------------------------------------------------------
def _random_case(uniform_attention, seed=1):
    cfg = TransformerConfig(d_vocab=10, n_ctx=12, d_model=16, n_layers=2, n_heads=3, d_head=4, attn_only=True,
                            normalization=None, init_std=0.3, seed=seed)
    model = HookedTransformer(cfg).eval()
    if uniform_attention:
        with torch.no_grad():
            for block in model.blocks:
                block.attn.W_Q.zero_()
                block.attn.W_K.zero_()
    gen = torch.Generator().manual_seed(seed + 2)
    clean, corrupted = torch.randint(0, 10, (2, 4, 12), generator=gen)
    answer = torch.randint(0, 10, (4,), generator=gen)
    return model, clean, corrupted, partial(P.logit_diff, answer=answer, wrong=(answer + 1) % 10)


@pytest.mark.parametrize("noising", [False, True])
def test_attribution_patching_is_exact_when_the_model_is_affine_in_every_activation(noising):
    """Construction: attention-only, no LayerNorm, ``W_Q = W_K = 0``. Every attention pattern is then
    uniform over the causal prefix *whatever the input*, so each layer is an affine map of its input,
    the logits are affine in every ``hook_z`` and ``hook_resid_pre``, and so is the logit difference.
    A first-order Taylor expansion of an affine function is exact: attribution = real patching, for
    every head and every (layer, position). Measured max error 2e-6 (float32); tolerance 1e-4."""
    model, clean, corrupted, metric = _random_case(uniform_attention=True)
    real = P.patch_head_outputs(model, clean, corrupted, metric, noising=noising)
    assert (real - real.mean()).abs().max() > 0.3  # not a trivially flat table
    torch.testing.assert_close(P.attribution_patch_heads(model, clean, corrupted, metric, noising=noising), real,
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(P.attribution_patch_resid_by_layer_pos(model, clean, corrupted, metric, noising),
                               P.patch_resid_by_layer_pos(model, clean, corrupted, metric, noising), atol=1e-4, rtol=0)


@pytest.mark.parametrize("noising", [False, True])
def test_attribution_patching_is_exact_on_the_last_layer_only(noising):
    """With ordinary random ``W_Q``, ``W_K``: the last layer's ``hook_z`` reaches the logits through
    ``W_O`` and ``W_U`` alone (affine, exact: measured error 1e-6), but layer 0's passes through layer
    1's softmax (measured errors 0.49 and 0.65 in normalised units)."""
    model, clean, corrupted, metric = _random_case(uniform_attention=False)
    err = (P.attribution_patch_heads(model, clean, corrupted, metric, noising)
           - P.patch_head_outputs(model, clean, corrupted, metric, noising)).abs()
    assert err[1].max() < 1e-4
    assert err[0].max() > 0.1


def test_attribution_patching_on_the_hand_built_circuit_misses_the_saturated_head():
    """Measured on the default circuit (sharpness 20): the induction head is exact (it is the last
    layer) but the previous-token head's effect only acts through a saturated softmax, whose gradient
    is about ``e^-10``: attribution -0.001 against real -1.00 (denoising), 0.999 against 0.000 (noising).
    Correlation of attribution with real patching over all 6 heads: 0.775 (denoising), 0.633 (noising);
    over the 34 residual (layer, position) patches: -0.12 to 0.09 (denoising, seeds 0-2), 0.82
    (noising). Thresholds: induction head within 1e-3, previous-token head off by > 0.9. With a soft circuit
    (sharpness 1) the estimate is close: -0.128 against -0.147, head correlation 1.000."""
    for sharpness, close in [(20.0, False), (1.0, True)]:
        model, clean, corrupted, metric = _induction_case(sharpness=sharpness)
        real = P.patch_head_outputs(model, clean, corrupted, metric)
        attr = P.attribution_patch_heads(model, clean, corrupted, metric)
        assert abs(attr[IND] - real[IND]) < 1e-3
        assert abs(attr[PREV] - real[PREV]) < 0.05 if close else abs(attr[PREV] - real[PREV]) > 0.9


def test_attribution_patching_leaves_no_gradients_and_works_under_no_grad():
    model, clean, corrupted, metric = _induction_case(batch=2)
    with torch.no_grad():
        heads = P.attribution_patch_heads(model, clean, corrupted, metric)
    resid = P.attribution_patch_resid_by_layer_pos(model, clean, corrupted, metric)
    assert not heads.requires_grad and not resid.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    name = "blocks.1.attn.hook_z"
    value, acts, grads = P.metric_and_gradients(model, corrupted, metric, [name])
    with torch.no_grad():
        logits, cache = model.run_with_cache(corrupted, names_filter=[name])
    assert value == pytest.approx(metric(logits).item()) and torch.equal(acts[name], cache[name])
    assert grads[name].abs().sum() > 0 and all(p.grad is None for p in model.parameters())
    assert not grads[name].requires_grad and not acts[name].requires_grad


# ----- shapes and bad input -------------------------------------------------------------------------------
def test_every_output_has_its_documented_shape():
    model, clean, corrupted, metric = _induction_case(batch=2)  # 2 layers, 3 heads, 17 positions
    L, H, pos = 2, 3, 17
    for fn, shape in [(P.patch_resid_by_layer_pos, (L, pos)), (P.patch_head_outputs, (L, H)),
                      (P.patch_head_by_pos, (L, H, pos)), (P.attribution_patch_heads, (L, H)),
                      (P.attribution_patch_resid_by_layer_pos, (L, pos))]:
        for noising in (False, True):
            out = fn(model, clean, corrupted, metric, noising=noising)
            assert out.shape == shape and torch.isfinite(out).all(), fn.__name__
    assert isinstance(P.path_patch_head_to_head_keys(model, clean, corrupted, PREV, IND, metric), float)


def test_bad_inputs_get_clear_errors():
    model, clean, corrupted, metric = _induction_case(batch=2)
    for fn in (P.patch_head_outputs, P.patch_head_by_pos, P.attribution_patch_heads, P.patch_resid_by_layer_pos,
               lambda m, c, k, met: P.path_patch_head_to_head_keys(m, c, k, PREV, IND, met)):
        with pytest.raises(ValueError, match="same shape"):
            fn(model, clean, corrupted[:1], metric)
        with pytest.raises(ValueError, match="same shape"):
            fn(model, clean, corrupted[:, :-1], metric)
        with pytest.raises(ValueError, match="integer tensor"):
            fn(model, clean.float(), corrupted, metric)
        with pytest.raises(ValueError, match="integer tensor"):
            fn(model, clean[0], corrupted[0], metric)
        with pytest.raises(ValueError, match="integer tensor"):
            fn(model, clean.tolist(), corrupted, metric)
        with pytest.raises(ValueError, match="coincide"):  # a corruption that changes nothing
            fn(model, clean, clean.clone(), metric)
        with pytest.raises(ValueError, match="scalar"):
            fn(model, clean, corrupted, lambda logits: logits[:, -1, 0])


@pytest.mark.parametrize("noising", [False, True])
def test_resid_patching_on_a_layernorm_mlp_model_where_inputs_differ_at_one_position(noising):
    """Any model (here with LayerNorm and MLPs): if clean and corrupted differ at position ``k`` only,
    patching ``resid_pre`` of layer 0 at ``k`` turns one run into the other (1 denoising, 0 noising),
    and at any other position changes nothing; in every layer, positions before ``k`` (identical in
    both runs, by causality) change nothing."""
    cfg = TransformerConfig(d_vocab=13, n_ctx=16, d_model=24, n_layers=3, n_heads=2, d_head=8, d_mlp=40,
                            init_std=0.3, seed=4)
    model = HookedTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 13, (3, 9), generator=gen)
    corrupted, k = clean.clone(), 5
    corrupted[:, k] = (clean[:, k] + 1) % 13
    metric = partial(P.logit_diff, answer=clean[:, -1], wrong=(clean[:, -1] + 3) % 13)
    table = P.patch_resid_by_layer_pos(model, clean, corrupted, metric, noising=noising)
    want_row0 = torch.full((9,), 1.0 if noising else 0.0)
    want_row0[k] = 0.0 if noising else 1.0
    torch.testing.assert_close(table[0], want_row0, atol=1e-4, rtol=0)
    torch.testing.assert_close(table[:, :k], torch.full((3, k), 1.0 if noising else 0.0), atol=1e-4, rtol=0)
    for fn in (P.patch_head_by_pos, P.attribution_patch_heads, P.attribution_patch_resid_by_layer_pos):
        assert torch.isfinite(fn(model, clean, corrupted, metric, noising=noising)).all()
    path = partial(P.path_patch_head_to_head, model, clean, corrupted, (0, 1), (2, 0), metric, "v", noising)
    assert abs(path() - (1.0 if noising else 0.0)) > 1e-3  # the path carries something ...
    with torch.no_grad():
        model.blocks[0].attn.W_O[1].zero_()  # ... and nothing once the sender writes nothing
    assert path() == pytest.approx(1.0 if noising else 0.0, abs=1e-5)


def test_heads_given_as_numpy_or_tensor_integers_are_accepted_and_booleans_are_not():
    import numpy as np

    model, clean, corrupted, metric = _induction_case(0)
    want = P.path_patch_head_to_head(model, clean, corrupted, PREV, IND, metric)
    for sender in [(np.int64(0), torch.tensor(1)), (torch.tensor(0), 1)]:
        assert P.path_patch_head_to_head(model, clean, corrupted, sender, IND, metric) == pytest.approx(want)
    with pytest.raises(ValueError, match="is not a \\(layer, head\\)"):
        P.path_patch_head_to_head(model, clean, corrupted, (False, True), IND, metric)
    z = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(P.ablate_head_z(z, torch.tensor(2), "zero"), P.ablate_head_z(z, 2, "zero"))
    for bad in [True, 4, 1.0, torch.tensor([1])]:
        with pytest.raises(ValueError, match="head must be an int"):
            P.ablate_head_z(z, bad, "zero")
    logits = P.run_with_head_ablated(model, clean, torch.tensor(1), np.int64(2), "zero")
    torch.testing.assert_close(logits, P.run_with_head_ablated(model, clean, 1, 2, "zero"))
