"""tinyinterp.faithfulness against known answers: a linear model whose deletion curves are sums we can write
down, scipy's spearmanr (an independent oracle, tests only), hand-counted top-k precisions, and a check that
the cascading randomisation changes exactly the stated parameters in a copy."""

import pytest
import torch

from tinyinterp import faithfulness as F
from tinyinterp.config import TransformerConfig
from tinyinterp.model import HookedTransformer

W = torch.tensor([3.0, -1.0, 0.5, 2.0, 0.0])  # a linear "model": f(tokens) = sum_p W[token_p], token 0 = pad


def linear_f(tokens):
    return W[tokens].sum(-1)


def test_deletion_and_insertion_curves_of_a_linear_model():
    tokens = torch.tensor([[1, 2, 3, 4], [3, 3, 1, 2]])
    contrib = W[tokens]  # the exact attribution of each position (pad contributes W[0] = 3 on removal)
    dc = F.deletion_curve(linear_f, tokens, contrib, pad_id=4)  # pad 4 has weight 0
    # row 0: contributions [-1, .5, 2, 0] -> deleted in the order 2 (2), 1 (.5), 3 (0), 0 (-1)
    assert torch.allclose(dc[0], torch.tensor([1.5, -0.5, -1.0, -1.0, 0.0]))
    # row 1: [2, 2, -1, .5]: the tie goes to the earlier position
    assert torch.allclose(dc[1], torch.tensor([3.5, 1.5, -0.5, -1.0, 0.0]))
    ic = F.insertion_curve(linear_f, tokens, contrib, pad_id=4)
    assert torch.allclose(ic[0], torch.tensor([0.0, 2.0, 2.5, 2.5, 1.5]))
    assert torch.allclose(ic[:, -1], dc[:, 0]) and torch.allclose(ic[:, 0], dc[:, -1])
    # with the exact contributions, deletion falls at least as fast as under any other order
    for seed in range(5):
        other = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(seed))
        assert (F.curve_area(dc) <= F.curve_area(F.deletion_curve(linear_f, tokens, other, 4)) + 1e-6).all()
    # -inf is deleted last
    last = F.deletion_curve(linear_f, tokens[:1], torch.tensor([[0.0, float("-inf"), 1.0, 2.0]]), 4)
    assert torch.allclose(last[0], torch.tensor([1.5, 1.5, -0.5, 0.5, 0.0]))


def test_curve_area_is_the_trapezoid_on_the_unit_interval():
    assert F.curve_area(torch.full((3, 7), 0.25)).allclose(torch.full((3,), 0.25))
    assert F.curve_area(torch.linspace(0, 1, 11)).item() == pytest.approx(0.5)
    assert F.curve_area(torch.tensor([1.0, 0.0, 0.0])).item() == pytest.approx(0.25)


@pytest.mark.parametrize("n,ties", [(8, False), (12, True), (30, True), (2, False)])
def test_spearman_matches_scipy_with_and_without_ties(n, ties):
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(n)
    for _ in range(5):
        x = torch.randn(n, generator=g, dtype=torch.float64)
        y = torch.randn(n, generator=g, dtype=torch.float64) + 0.5 * x
        if ties:
            x, y = x.round(), (y * 2).round()
        if x.unique().numel() < 2 or y.unique().numel() < 2:
            continue
        expected = stats.spearmanr(x.numpy(), y.numpy()).statistic
        assert F.spearman(x, y).item() == pytest.approx(expected, abs=1e-10)


def test_average_ranks_and_batched_spearman():
    assert F.average_ranks(torch.tensor([5.0, 1.0, 5.0, 0.0])).tolist() == [3.5, 2.0, 3.5, 1.0]
    x = torch.randn(4, 9, generator=torch.Generator().manual_seed(0))
    y = torch.randn(4, 9, generator=torch.Generator().manual_seed(1))
    batched = F.spearman(x, y)
    assert batched.shape == (4,)
    assert torch.allclose(batched, torch.stack([F.spearman(a, b) for a, b in zip(x, y)]))
    assert torch.allclose(F.spearman(x, x.exp()), torch.ones(4))
    assert torch.allclose(F.spearman(x, -x), -torch.ones(4))
    # magnitudes: a sign flip of some entries changes nothing
    assert torch.allclose(F.abs_rank_correlation(x, x * torch.tensor([1, -1.0] * 4 + [1])), torch.ones(4))
    assert F.spearman(torch.ones(5), torch.arange(5.0)).isnan()
    with pytest.raises(ValueError, match="same shape"):
        F.spearman(torch.ones(3), torch.ones(4))


def test_top_k_precision_by_hand():
    attr = torch.tensor([[0.1, -0.9, 0.5, 0.0], [3.0, 2.0, 1.0, 0.5]])
    rel = torch.tensor([[0.0, -1.0, 0.0, 1.0], [1.0, 0.0, 0.0, -1.0]])
    assert F.top_k_precision(attr, rel, 1).tolist() == [1.0, 1.0]
    assert F.top_k_precision(attr, rel, 2).tolist() == [0.5, 0.5]  # |-0.9| is the largest: it counts
    assert F.top_k_precision(attr, rel, 4).tolist() == [0.5, 0.5]
    assert F.top_k_precision(attr, rel, torch.tensor([2, 4])).tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="k must lie"):
        F.top_k_precision(attr, rel, 0)


def _model(**kw):
    cfg = dict(d_vocab=11, n_ctx=6, d_model=8, n_layers=2, n_heads=2, d_head=4, d_mlp=16, seed=3)
    m = HookedTransformer(TransformerConfig(**{**cfg, **kw}))
    with torch.no_grad():  # move every parameter away from its initial value, as training would
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return m


def test_cascading_randomisation_changes_exactly_the_stated_parameters_in_a_copy():
    model = _model()
    before = {n: p.clone() for n, p in model.named_parameters()}
    stages = F.randomisation_stages(model)
    assert [s for s, _ in stages] == ["unembed", "blocks.1.mlp", "blocks.1.attn", "blocks.0.mlp", "blocks.0.attn",
                                      "embed"]
    fresh = dict(HookedTransformer(TransformerConfig(**{**model.cfg.to_dict(), "seed": 7})).named_parameters())
    for stage in range(len(stages) + 1):
        out = F.randomise_parameters(model, stage, seed=7)
        assert out is not model
        changed = tuple(p for _, group in stages[:stage] for p in group)
        for name, p in out.named_parameters():
            if name.startswith(changed):
                assert torch.equal(p, fresh[name]), (stage, name)
            else:
                assert torch.equal(p, before[name]), (stage, name)
        for name, p in model.named_parameters():
            assert torch.equal(p, before[name]), f"the original model changed at {name}"
    # every parameter belongs to one stage
    names = [n for n, _ in model.named_parameters()]
    assert all(sum(n.startswith(g) for _, g in stages) == 1 for n in names)
    tokens = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(F.randomised_logits(model, tokens, 0, seed=7), model(tokens))
    assert not torch.allclose(F.randomised_logits(model, tokens, 1, seed=7), model(tokens))


def test_attention_only_model_has_no_mlp_stages_and_bad_input_is_refused():
    model = _model(attn_only=True, normalization=None)
    assert [s for s, _ in F.randomisation_stages(model)] == ["unembed", "blocks.1.attn", "blocks.0.attn", "embed"]
    with pytest.raises(ValueError, match="stage must be an int in 0..4"):
        F.randomise_parameters(model, 5, seed=0)
    with pytest.raises(ValueError, match="seed"):
        F.randomise_parameters(model, 1, seed=-1)
    with pytest.raises(ValueError, match="tokens' shape"):
        F.deletion_curve(linear_f, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4), 0)
    with pytest.raises(TypeError, match="callable"):
        F.deletion_curve(None, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), 0)
    with pytest.raises(ValueError, match="NaN"):
        F.insertion_curve(linear_f, torch.zeros(1, 3, dtype=torch.long), torch.tensor([[0.0, float("nan"), 1]]), 0)


def test_reinitialising_the_ov_weights_keeps_the_pattern_and_changes_the_output():
    model = _model(n_layers=1)
    names = F.attention_ov_names(model, 0)
    assert names == ("blocks.0.attn.W_V", "blocks.0.attn.W_O", "blocks.0.attn.b_V", "blocks.0.attn.b_O")
    before = {n: p.clone() for n, p in model.named_parameters()}
    out = F.reinitialise(model, names, seed=5)
    fresh = dict(HookedTransformer(TransformerConfig(**{**model.cfg.to_dict(), "seed": 5})).named_parameters())
    for name, p in out.named_parameters():
        assert torch.equal(p, fresh[name] if name in names else before[name]), name
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "the original model changed"
    tokens = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        logits, cache_ov = out.run_with_cache(tokens)
    assert torch.equal(cache["blocks.0.attn.hook_pattern"], cache_ov["blocks.0.attn.hook_pattern"])
    assert not torch.allclose(logits, model(tokens))
    by_stage = F.randomise_parameters(model, 2, seed=5).state_dict()  # the unembedding and the MLP
    by_name = F.reinitialise(model, ("unembed.", "ln_final.", "blocks.0.ln2.", "blocks.0.mlp."), seed=5).state_dict()
    assert by_stage.keys() == by_name.keys() and all(torch.equal(by_stage[k], by_name[k]) for k in by_stage)
    with pytest.raises(ValueError, match="layer must be an int in 0..0"):
        F.attention_ov_names(model, 1)
    with pytest.raises(TypeError, match="tuple of parameter-name prefixes"):
        F.reinitialise(model, "blocks.0.attn.W_V", seed=0)


def test_a_randomisation_done_in_place_is_graded_as_a_mutation():
    import copy

    from tinyinterp import check

    def in_place(model, tokens, stage, seed):  # right logits, but the learner's model is changed
        fresh = F.randomise_parameters(model, stage, seed)
        with torch.no_grad():
            for p, q in zip(model.parameters(), fresh.parameters()):
                p.copy_(q)
            return copy.deepcopy(model)(tokens)

    r = check("randomise_from_top", in_place)
    assert not r.passed and r.kind == "mutated" and "`model` in place" in r.message, r.message
