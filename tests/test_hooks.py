import pytest
import torch

from tinyinterp import HookedTransformer, full_hook_name

from conftest import small_config

EXPECTED = {
    "hook_embed": (2, 6, 24), "hook_pos_embed": (2, 6, 24),
    "blocks.0.hook_resid_pre": (2, 6, 24), "blocks.0.hook_resid_mid": (2, 6, 24),
    "blocks.0.hook_resid_post": (2, 6, 24), "blocks.0.hook_attn_out": (2, 6, 24),
    "blocks.0.hook_mlp_out": (2, 6, 24),
    "blocks.1.attn.hook_q": (2, 6, 3, 8), "blocks.1.attn.hook_k": (2, 6, 3, 8),
    "blocks.1.attn.hook_v": (2, 6, 3, 8), "blocks.1.attn.hook_z": (2, 6, 3, 8),
    "blocks.1.attn.hook_attn_scores": (2, 3, 6, 6), "blocks.1.attn.hook_pattern": (2, 3, 6, 6),
    "blocks.1.mlp.hook_pre": (2, 6, 40), "blocks.1.mlp.hook_post": (2, 6, 40),
    "blocks.0.ln1.hook_scale": (2, 6, 1), "ln_final.hook_normalized": (2, 6, 24),
}


def test_cache_names_and_shapes(small_model):
    tokens = torch.randint(0, 13, (2, 6))
    logits, cache = small_model.run_with_cache(tokens)
    for name, shape in EXPECTED.items():
        assert tuple(cache[name].shape) == shape, name
    assert torch.equal(logits, small_model(tokens))
    assert torch.equal(cache["pattern", 1], cache["blocks.1.attn.hook_pattern"])
    assert full_hook_name("resid_post", 0) == "blocks.0.hook_resid_post"


def test_cache_is_consistent_with_the_residual_stream(small_model):
    tokens = torch.randint(0, 13, (2, 6))
    _, c = small_model.run_with_cache(tokens)
    torch.testing.assert_close(c["blocks.0.hook_resid_pre"], c["hook_embed"] + c["hook_pos_embed"])
    torch.testing.assert_close(c["blocks.0.hook_resid_mid"], c["blocks.0.hook_resid_pre"] + c["blocks.0.hook_attn_out"])
    torch.testing.assert_close(c["blocks.1.hook_resid_post"], c["blocks.1.hook_resid_mid"] + c["blocks.1.hook_mlp_out"])
    pat = c["pattern", 0]
    torch.testing.assert_close(pat.sum(-1), torch.ones_like(pat.sum(-1)))
    assert (pat.triu(1) == 0).all()


def test_hooks_replace_activations_and_are_removed(small_model):
    tokens = torch.randint(0, 13, (1, 5))
    clean = small_model(tokens)

    def zero_head_0(z, hook):
        z = z.clone()
        z[:, :, 0] = 0
        return z

    ablated = small_model.run_with_hooks(tokens, [("blocks.0.attn.hook_z", zero_head_0)])
    assert not torch.allclose(clean, ablated)
    # the hook only affected that run
    assert torch.equal(small_model(tokens), clean)
    # zeroing every head's z is the same as removing the attention output except its bias
    def zero_all(z, hook):
        return torch.zeros_like(z)

    _, cache = small_model.run_with_cache(tokens)
    with small_model.hooks([("blocks.0.attn.hook_z", zero_all)]):
        _, c2 = small_model.run_with_cache(tokens)
    b_O = small_model.blocks[0].attn.b_O
    torch.testing.assert_close(c2["blocks.0.hook_attn_out"], b_O.expand_as(c2["blocks.0.hook_attn_out"]))


def test_hook_errors_are_clear(small_model):
    with pytest.raises(KeyError, match="no hook point"):
        small_model.run_with_hooks(torch.zeros(1, 3, dtype=torch.long), [("blocks.9.hook_nothing", lambda x, h: x)])
    with pytest.raises(ValueError, match="must return None or a tensor of shape"):
        small_model.run_with_hooks(torch.zeros(1, 3, dtype=torch.long), [("hook_embed", lambda x, h: x[:, :1])])
    # hooks are removed even after an error
    assert all(not hp._hook_fns for hp in small_model.hook_dict.values())
    _, cache = small_model.run_with_cache(torch.zeros(1, 3, dtype=torch.long), names_filter=["hook_embed"])
    assert list(cache) == ["hook_embed"]
    with pytest.raises(KeyError, match="no activation"):
        cache["blocks.0.attn.hook_pattern"]


def test_attn_only_model_has_no_mlp_hooks():
    model = HookedTransformer(small_config(attn_only=True))
    _, cache = model.run_with_cache(torch.zeros(1, 4, dtype=torch.long))
    assert not any("mlp" in k or "resid_mid" in k for k in cache)
