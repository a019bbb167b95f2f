"""Part II exercises: hooks, caches and attribution (ch. 4) and attention-only circuits (ch. 5).

References are the library functions the chapters use (:mod:`tinyinterp.attribution`,
:mod:`tinyinterp.circuits`); ``tests/test_attribution.py`` and ``tests/test_circuits.py`` check
those against independent answers.
"""

from __future__ import annotations

import torch

from .. import attribution as A
from .. import circuits as C
from ..config import TransformerConfig
from ..functional import cross_entropy_loss
from ..harness.registry import Case, Exercise, Mistake, register
from ..model import HookedTransformer
from ._inputs import randint, randn

CH4, CH5 = "04_attribution", "05_attention_only"


def _random_model(gen: torch.Generator, **cfg) -> HookedTransformer:
    """A small random model with non-zero biases and LayerNorm parameters, seeded by ``gen``."""
    base = dict(d_vocab=11, n_ctx=24, d_model=16, n_layers=2, n_heads=3, d_head=4, d_mlp=32, init_std=0.3)
    base.update(cfg)
    base["seed"] = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    model = HookedTransformer(TransformerConfig(**base))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.split(".")[-1].startswith("W_"):
                p.add_(randn(gen, *p.shape, scale=0.1))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _cache(gen, batch, pos, **cfg):
    model = _random_model(gen, **cfg)
    tokens = randint(gen, model.cfg.d_vocab, batch, pos)
    return model, tokens, model.run_with_cache(tokens)[1]


# ===== chapter 4 ==================================================================================
def _decompose_cases(gen, hidden):
    shapes = [("2 layers, batch 2, pos 6", 2, 6, {}), ("batch 1", 1, 5, {}),
              ("sequence length 1", 2, 1, {}), ("1 layer", 2, 7, {"n_layers": 1}),
              ("attention-only model (no mlp_out in the cache)", 2, 6, {"attn_only": True}),
              ("long sequence, 3 layers", 1, 24, {"n_layers": 3})]
    if hidden:
        shapes += [("hidden: attention-only, 3 layers", 2, 5, {"attn_only": True, "n_layers": 3})]
    return [Case(n, {"cache": _cache(gen, b, p, **cfg)[2]}) for n, b, p, cfg in shapes]


def _n_layers(cache):
    return sum(1 for k in cache if k.endswith("hook_resid_post"))


def _decompose_cumulative(cache):
    parts = [cache["hook_embed"], cache["hook_pos_embed"]]
    for layer in range(_n_layers(cache)):
        if f"blocks.{layer}.hook_mlp_out" in cache:
            parts += [cache[f"blocks.{layer}.hook_resid_mid"], cache[f"blocks.{layer}.hook_resid_post"]]
        else:
            parts.append(cache[f"blocks.{layer}.hook_resid_post"])
    return torch.stack(parts)


def _decompose_grouped(cache):
    n = _n_layers(cache)
    attn = [cache[f"blocks.{i}.hook_attn_out"] for i in range(n)]
    mlp = [cache[f"blocks.{i}.hook_mlp_out"] for i in range(n) if f"blocks.{i}.hook_mlp_out" in cache]
    return torch.stack([cache["hook_embed"], cache["hook_pos_embed"], *attn, *mlp])


def _decompose_mlp_first(cache):
    parts = [cache["hook_embed"], cache["hook_pos_embed"]]
    for i in range(_n_layers(cache)):
        if f"blocks.{i}.hook_mlp_out" in cache:
            parts.append(cache[f"blocks.{i}.hook_mlp_out"])
        parts.append(cache[f"blocks.{i}.hook_attn_out"])
    return torch.stack(parts)


register(Exercise(
    id="decompose_resid", chapter=CH4, title="The residual stream as a sum of components",
    signature="decompose_resid(cache)", reference=A.decompose_resid, cases=_decompose_cases,
    points=2, difficulty=2, importance=4, minutes=10,
    mistakes=[
        Mistake("You stacked the residual stream itself (resid_mid / resid_post), which already contains "
                "everything before it; stack what each component *writes*: hook_attn_out and hook_mlp_out.",
                _decompose_cumulative),
        Mistake("Wrong order: interleave the layers (0_attn_out, 0_mlp_out, 1_attn_out, ...), not all "
                "attention outputs first and then all MLP outputs.", _decompose_grouped),
        Mistake("Within a layer the attention output comes before the MLP output (attn_out, then mlp_out).",
                _decompose_mlp_first),
    ],
))


def _dla_cases(gen, hidden):
    shapes = [("4 components, batch 2, pos 5, d_model 8, d_vocab 10", 4, 2, 5, 8, 10),
              ("batch 1, one component", 1, 1, 4, 8, 10), ("sequence length 1", 3, 2, 1, 6, 7),
              ("long sequence", 6, 1, 64, 16, 30)]
    if hidden:
        shapes += [("hidden: d_model 1", 2, 2, 3, 1, 5)]
    cases = []
    for n, c, b, p, m, v in shapes:
        components = randn(gen, c, b, p, m) + randn(gen, c, 1, 1, m)  # non-zero means per component
        full = components.sum(0)
        centred = full - full.mean(-1, keepdim=True)
        scale = (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
        cases.append(Case(n, {"components": components, "scale": scale, "ln_w": 1 + randn(gen, m, scale=0.3),
                              "W_U": randn(gen, m, v), "targets": randint(gen, v, b, p)}))
    return cases


def _dla_no_centre(components, scale, ln_w, W_U, targets):
    return torch.einsum("cbpm,bpm->cbp", components / scale, W_U.T[targets] * ln_w)


def _dla_own_scale(components, scale, ln_w, W_U, targets):
    centred = components - components.mean(-1, keepdim=True)
    own = (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    return torch.einsum("cbpm,bpm->cbp", centred / own, W_U.T[targets] * ln_w)


register(Exercise(
    id="direct_logit_attribution", chapter=CH4, title="Direct logit attribution with a frozen LayerNorm",
    signature="direct_logit_attribution(components, scale, ln_w, W_U, targets)",
    reference=A.direct_logit_attribution, cases=_dla_cases,
    points=3, difficulty=3, importance=5, minutes=20, atol=1e-4, rtol=1e-4,
    mistakes=[
        Mistake("You did not centre the components: LayerNorm subtracts the mean over d_model, and since the "
                "mean is linear each component must be centred on its own before dividing by the scale.",
                _dla_no_centre),
        Mistake("You forgot to divide by the frozen LayerNorm scale (the `scale` argument, "
                "cache['ln_final.hook_scale']).",
                lambda components, scale, ln_w, W_U, targets: A.direct_logit_attribution(
                    components, torch.ones_like(scale), ln_w, W_U, targets)),
        Mistake("You left out LayerNorm's weight ln_w: after normalising, each coordinate is multiplied by ln_w "
                "before the unembedding.",
                lambda components, scale, ln_w, W_U, targets: A.direct_logit_attribution(
                    components, scale, torch.ones_like(ln_w), W_U, targets)),
        Mistake("You recomputed a LayerNorm scale for each component; freeze the scale of the *full* residual "
                "stream (the `scale` argument) so that the attributions add up to the logit.", _dla_own_scale),
        Mistake("You multiplied by the LayerNorm scale; LayerNorm divides by it.",
                lambda components, scale, ln_w, W_U, targets: A.direct_logit_attribution(
                    components, 1 / scale, ln_w, W_U, targets)),
    ],
))


def _lens_cases(gen, hidden):
    shapes = [("3 layers, batch 2, pos 5, d_model 8, d_vocab 10", 3, 2, 5, 8, 10),
              ("batch 1", 2, 1, 4, 8, 6), ("sequence length 1", 3, 2, 1, 8, 6),
              ("long sequence", 3, 1, 64, 16, 20), ("large residual norms (late layers)", 3, 2, 3, 8, 10)]
    if hidden:
        shapes += [("hidden: one layer", 1, 2, 3, 4, 7)]
    cases = []
    for n, l, b, p, m, v in shapes:
        scale = 30.0 if "large" in n else 1.0
        cases.append(Case(n, {"resid_stack": randn(gen, l, b, p, m, scale=scale) + randn(gen, l, 1, 1, m),
                              "ln_w": 1 + randn(gen, m, scale=0.3), "ln_b": randn(gen, m, scale=0.3),
                              "W_U": randn(gen, m, v), "b_U": randn(gen, v), "eps": 1e-5}))
    return cases


def _lens_no_centre(resid_stack, ln_w, ln_b, W_U, b_U, eps):
    scale = (resid_stack.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return (resid_stack / scale * ln_w + ln_b) @ W_U + b_U


register(Exercise(
    id="logit_lens", chapter=CH4, title="The logit lens",
    signature="logit_lens(resid_stack, ln_w, ln_b, W_U, b_U, eps)", reference=A.logit_lens, cases=_lens_cases,
    points=2, difficulty=2, importance=4, minutes=15, atol=1e-4, rtol=1e-4,
    mistakes=[
        Mistake("You skipped the final LayerNorm: the logit lens applies ln_final (recomputed on each partial "
                "stream) before W_U, as the model does.",
                lambda resid_stack, ln_w, ln_b, W_U, b_U, eps: resid_stack @ W_U + b_U),
        Mistake("You forgot the unembedding bias b_U.",
                lambda resid_stack, ln_w, ln_b, W_U, b_U, eps: A.logit_lens(resid_stack, ln_w, ln_b, W_U,
                                                                             torch.zeros_like(b_U), eps)),
        Mistake("LayerNorm subtracts the mean over d_model before dividing by the scale; you normalised "
                "without centring.", _lens_no_centre),
        Mistake("You normalised but left out LayerNorm's learned weight and bias (ln_w, ln_b).",
                lambda resid_stack, ln_w, ln_b, W_U, b_U, eps: A.logit_lens(
                    resid_stack, torch.ones_like(ln_w), torch.zeros_like(ln_b), W_U, b_U, eps)),
    ],
))


def _ablate_cases(gen, hidden):
    shapes = [("zero-ablation: batch 2, pos 6, 4 heads, head 1", 2, 6, 4, 3, 1, False),
              ("zero-ablation: batch 1, last head", 1, 5, 3, 4, 2, False),
              ("mean-ablation: batch 3, pos 5, head 0", 3, 5, 4, 3, 0, True),
              ("mean-ablation: long sequence, head 2", 2, 40, 3, 8, 2, True),
              ("zero-ablation: sequence length 1", 2, 1, 2, 3, 0, False)]
    if hidden:
        shapes += [("hidden: mean-ablation, one head", 2, 4, 1, 5, 0, True)]
    return [Case(n, {"z": randn(gen, b, p, h, d) + 2.0, "head": k,
                     "mean_z": randn(gen, p, h, d) - 1.0 if mean else None})
            for n, b, p, h, d, k, mean in shapes]


def _ablate_position(z, head, mean_z):
    out = z.clone()
    out[:, min(head, z.shape[1] - 1)] = 0.0 if mean_z is None else mean_z[min(head, z.shape[1] - 1)]
    return out


def _ablate_batch_mean(z, head, mean_z):
    out = z.clone()
    out[:, :, head] = 0.0 if mean_z is None else z[:, :, head].mean(0)
    return out


def _ablate_all_but(z, head, mean_z):
    out = A.ablate_head(z, head, mean_z)
    keep = torch.zeros_like(z) if mean_z is None else mean_z.expand_as(z).clone()
    keep[:, :, head] = out[:, :, head]
    return keep


register(Exercise(
    id="ablate_head", chapter=CH4, title="A head-ablation hook",
    signature="ablate_head(z, head, mean_z)", reference=A.ablate_head, cases=_ablate_cases,
    points=2, difficulty=2, importance=5, minutes=10,
    mistakes=[
        Mistake("You indexed the position axis: z is [batch, pos, n_heads, d_head], so the head is the third "
                "index, z[:, :, head].", _ablate_position),
        Mistake("You replaced the head by its mean over *this* batch; mean-ablation uses the given mean_z "
                "(computed on a reference batch), mean_z[:, head].", _ablate_batch_mean),
        Mistake("When mean_z is given, replace the head's z by mean_z[:, head] (mean-ablation), not by zero.",
                lambda z, head, mean_z: A.ablate_head(z, head, None)),
        Mistake("You ablated every head except the chosen one; ablate only z[:, :, head] and leave the "
                "others untouched.", _ablate_all_but),
    ],
))


def _effects_cases(gen, hidden):
    shapes = [("zero: 2 layers, 3 heads, batch 4, pos 8", 4, 8, "zero", {}),
              ("zero: batch 1", 1, 6, "zero", {"n_heads": 2}),
              ("mean: batch 4, pos 8", 4, 8, "mean", {}),
              ("mean: long sequence, 1 layer", 2, 24, "mean", {"n_layers": 1}),
              ("zero: attention-only, 3 layers", 3, 6, "zero", {"attn_only": True, "n_layers": 3})]
    if hidden:
        shapes += [("hidden: mean, 1 head", 3, 5, "mean", {"n_heads": 1})]
    cases = []
    for n, b, p, mode, cfg in shapes:
        model = _random_model(gen, **cfg)
        cases.append(Case(n, {"model": model, "tokens": randint(gen, model.cfg.d_vocab, b, p), "mode": mode}))
    return cases


def _effects_general(model, tokens, mode, which, pooled_mean=False, cumulative=False):
    """Wrong variants of ablation_effects; ``which(layer, head)`` lists the heads ablated together."""
    means = A.mean_z(model, tokens) if mode == "mean" else None
    if pooled_mean and means is not None:
        means = means.mean(1, keepdim=True).expand_as(means)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    clean = cross_entropy_loss(model(tokens), tokens)
    done: list[tuple[int, int]] = []
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            done.append((layer, head))
            group = done if cumulative else which(model, layer, head)
            hooks = []
            for lay in sorted({lay for lay, _ in group}):
                heads = [h for la, h in group if la == lay]

                def hook(z, hp, heads=heads, lay=lay):
                    for h in heads:
                        z = A.ablate_head(z, h, None if means is None else means[lay])
                    return z
                hooks.append((f"blocks.{lay}.attn.hook_z", hook))
            out[layer, head] = cross_entropy_loss(model.run_with_hooks(tokens, hooks), tokens) - clean
    return out


def _one(model, layer, head):
    return [(layer, head)]


def _whole_layer(model, layer, head):
    return [(layer, h) for h in range(model.cfg.n_heads)]


def _effects_ablated_loss(model, tokens, mode):
    return A.ablation_effects(model, tokens, mode) + cross_entropy_loss(model(tokens), tokens)


register(Exercise(
    id="ablation_effects", chapter=CH4, title="An ablation-effect table",
    signature="ablation_effects(model, tokens, mode)", reference=A.ablation_effects, cases=_effects_cases,
    points=3, difficulty=3, importance=5, minutes=20, atol=1e-4, rtol=1e-4, time_limit_s=30.0,
    mistakes=[
        Mistake("Return the *change* in loss, ablated minus clean; you returned the ablated loss itself.",
                _effects_ablated_loss),
        Mistake("Sign flipped: the effect is loss(ablated) - loss(clean), positive when the head helps.",
                lambda model, tokens, mode: -A.ablation_effects(model, tokens, mode)),
        Mistake("Your ablations pile up: each head must be ablated alone, with every other head restored "
                "(attach the hook for one forward pass only, e.g. with model.run_with_hooks).",
                lambda model, tokens, mode: _effects_general(model, tokens, mode, _one, cumulative=True)),
        Mistake("You ablated every head of the layer at once; ablate one head (z[:, :, head]) per forward pass.",
                lambda model, tokens, mode: _effects_general(model, tokens, mode, _whole_layer)),
        Mistake("For mean-ablation, average z over the batch only, keeping one mean per position "
                "(z.mean(0)); you also averaged over positions.",
                lambda model, tokens, mode: _effects_general(model, tokens, mode, _one, pooled_mean=True)),
        Mistake("With mode='mean' the head's z must be replaced by its mean over the batch; you zero-ablated.",
                lambda model, tokens, mode: A.ablation_effects(model, tokens, "zero")),
    ],
))


# ===== chapter 5 ==================================================================================
def _circuit_weights(gen, hidden, ov: bool):
    shapes = [("3 heads, d_vocab 10, d_model 8, d_head 4", 3, 10, 8, 4), ("1 head", 1, 7, 6, 3),
              ("d_head 1", 2, 9, 8, 1), ("large vocabulary", 2, 60, 16, 4)]
    if hidden:
        shapes += [("hidden: d_head = d_model", 2, 5, 4, 4)]
    # Weights at the usual init scale (1/sqrt(fan_in)), so entries of the full circuits are O(1). With
    # every weight ~ N(0, 1) the entries are sums of products of size ~d_model, and the float32 rounding
    # error of a correct answer (a few ulps of those products) came within a few times of atol.
    cases = []
    for n, h, v, m, d in shapes:
        kw = {"W_E": randn(gen, v, m)}
        if ov:
            kw.update(W_V=randn(gen, h, m, d, scale=m**-0.5), W_O=randn(gen, h, d, m, scale=d**-0.5),
                      W_U=randn(gen, m, v, scale=m**-0.5))
        else:
            kw.update(W_Q=randn(gen, h, m, d, scale=m**-0.5), W_K=randn(gen, h, m, d, scale=m**-0.5))
        cases.append(Case(n, kw))
    return cases


register(Exercise(
    id="qk_circuit", chapter=CH5, title="The full QK circuit",
    signature="qk_circuit(W_E, W_Q, W_K)", reference=C.qk_circuit_dense,
    cases=lambda gen, hidden: _circuit_weights(gen, hidden, ov=False),
    points=2, difficulty=2, importance=5, minutes=10, atol=1e-4, rtol=1e-4,
    mistakes=[
        Mistake("Rows and columns are swapped: row i is the *query* token, column j the *key* token, "
                "so compute (W_E W_Q)(W_E W_K)^T, not (W_E W_K)(W_E W_Q)^T.",
                lambda W_E, W_Q, W_K: C.qk_circuit_dense(W_E, W_K, W_Q)),
        Mistake("The QK circuit is the bilinear form itself: leave out the 1/sqrt(d_head) that the model "
                "applies to attention scores.",
                lambda W_E, W_Q, W_K: C.qk_circuit_dense(W_E, W_Q, W_K) / W_Q.shape[-1] ** 0.5),
        Mistake("You used W_Q on both sides; the key side goes through W_K: W_E W_Q W_K^T W_E^T.",
                lambda W_E, W_Q, W_K: C.qk_circuit_dense(W_E, W_Q, W_Q)),
    ],
))

register(Exercise(
    id="ov_circuit", chapter=CH5, title="The full OV circuit",
    signature="ov_circuit(W_E, W_V, W_O, W_U)", reference=C.ov_circuit_dense,
    cases=lambda gen, hidden: _circuit_weights(gen, hidden, ov=True),
    points=2, difficulty=2, importance=5, minutes=10, atol=1e-4, rtol=1e-4,
    mistakes=[
        Mistake("Your OV circuit is transposed: row i is the token attended to, column j the logit it "
                "changes, i.e. W_E W_V W_O W_U.",
                lambda W_E, W_V, W_O, W_U: C.ov_circuit_dense(W_E, W_V, W_O, W_U).transpose(-1, -2)),
        Mistake("You read out with W_E^T; the model's logits come from the unembedding W_U, which is a "
                "separate matrix (embeddings are not tied).",
                lambda W_E, W_V, W_O, W_U: C.ov_circuit_dense(W_E, W_V, W_O, W_E.T)),
        Mistake("You added the direct path W_E W_U; the OV circuit is only the head's path, W_E W_V W_O W_U.",
                lambda W_E, W_V, W_O, W_U: C.ov_circuit_dense(W_E, W_V, W_O, W_U) + W_E @ W_U),
    ],
))


def _copy_cases(gen, hidden):
    shapes = [("3 heads, n 12, rank 4", 3, 12, 4, 0.0), ("1 head, copying (A = B^T)", 1, 10, 3, 1.0),
              ("rank 1", 2, 8, 1, 0.0), ("large n (60 tokens)", 2, 60, 8, 0.5)]
    if hidden:
        shapes += [("hidden: anti-copying (A = -B^T)", 2, 9, 3, -1.0)]
    cases = []
    for n, h, v, r, sym in shapes:
        A_ = randn(gen, h, v, r)
        B_ = sym * A_.transpose(-1, -2) + randn(gen, h, r, v, scale=1.0 - abs(sym) * 0.8)
        cases.append(Case(n, {"A": A_, "B": B_}))
    return cases


def _copy_real_abs(A, B):
    eig = torch.linalg.eigvals(B @ A)
    return (eig.real.sum(-1) / eig.real.abs().sum(-1)).float()


def _copy_diag(A, B):
    return ((A * B.transpose(-1, -2)).sum(-1) > 0).float().mean(-1)


register(Exercise(
    id="copying_score", chapter=CH5, title="A copying score from the OV circuit's eigenvalues",
    signature="copying_score(A, B)", reference=C.factored_copying_score, cases=_copy_cases,
    points=2, difficulty=3, importance=3, minutes=15, atol=1e-3, rtol=1e-3,
    mistakes=[
        Mistake("The numerator is the plain sum of the eigenvalues (its real part); with absolute values "
                "there too the score is always 1.",
                lambda A, B: torch.ones(torch.broadcast_shapes(A.shape[:-2], B.shape[:-2]))),
        Mistake("Eigenvalues can be complex: divide by the sum of their moduli |lambda| (eig.abs()), not by "
                "the sum of |Re lambda|.", _copy_real_abs),
        Mistake("You counted positive diagonal entries; the copying score uses eigenvalues: "
                "sum(lambda) / sum(|lambda|).", _copy_diag),
    ],
))


def _comp_cases(gen, hidden):
    shapes = [("square 8x8 and 8x8", (8, 8), (8, 8)), ("batch of 3 pairs", (3, 6, 6), (3, 6, 6)),
              ("broadcast: 2 x 1 against 1 x 4", (2, 1, 8, 8), (1, 4, 8, 8)),
              ("rank 1 matrices", None, None), ("large d_model 64", (64, 64), (64, 64))]
    if hidden:
        shapes += [("hidden: rectangular 5x7 and 7x3", (5, 7), (7, 3))]
    cases = []
    for n, sa, sb in shapes:
        if sa is None:
            u, v, w = randn(gen, 6, 1), randn(gen, 1, 6), randn(gen, 6, 1)
            cases.append(Case(n, {"W_A": u @ v, "W_B": w @ randn(gen, 1, 6)}))
        else:
            cases.append(Case(n, {"W_A": randn(gen, *sa), "W_B": randn(gen, *sb)}))
    return cases


def _fro(x):
    return torch.linalg.matrix_norm(x)


register(Exercise(
    id="composition_score", chapter=CH5, title="The composition score",
    signature="composition_score(W_A, W_B)", reference=C.composition_score, cases=_comp_cases,
    points=1, difficulty=1, importance=4, minutes=5, atol=1e-4, rtol=1e-4,
    mistakes=[
        Mistake("You forgot to normalise: divide ||W_A W_B||_F by ||W_A||_F * ||W_B||_F so that the score "
                "lies between 0 and 1.", lambda W_A, W_B: _fro(W_A @ W_B)),
        Mistake("Order matters: the earlier matrix W_A comes first, ||W_A @ W_B||_F, not ||W_B @ W_A||_F.",
                lambda W_A, W_B: _fro(W_B @ W_A) / (_fro(W_A) * _fro(W_B))),
        Mistake("Use the Frobenius norm (the default of torch.linalg.matrix_norm), not the spectral norm.",
                lambda W_A, W_B: torch.linalg.matrix_norm(W_A @ W_B, ord=2)
                / (torch.linalg.matrix_norm(W_A, ord=2) * torch.linalg.matrix_norm(W_B, ord=2))),
        Mistake("The denominator is the product of the two norms, not their sum.",
                lambda W_A, W_B: _fro(W_A @ W_B) / (_fro(W_A) + _fro(W_B))),
    ],
))


def _comps_cases(gen, hidden):
    shapes = [("Q-composition, 3 heads per layer", "Q", {}), ("K-composition, 3 heads per layer", "K", {}),
              ("V-composition, 3 heads per layer", "V", {}), ("K-composition, 1 head per layer", "K", {"n_heads": 1}),
              ("Q-composition, 3 layers (scores of layer 0 into layer 1)", "Q", {"n_layers": 3}),
              ("V-composition, large d_model 64", "V", {"d_model": 64, "d_head": 16, "n_heads": 4})]
    if hidden:
        shapes += [("hidden: K-composition, d_head 8", "K", {"d_head": 8, "n_heads": 2})]
    return [Case(n, {"model": _random_model(gen, attn_only=True, **cfg), "kind": kind}) for n, kind, cfg in shapes]


def _comps_manual(model, kind, first_later=False, swap_qk=False, single=False):
    W_Q, W_K, W_V, W_O = (w.detach() for w in (model.W_Q, model.W_K, model.W_V, model.W_O))
    ov_a = (W_V[0] @ W_O[0])[:, None]
    if swap_qk:
        kind = {"Q": "K", "K": "Q", "V": "V"}[kind]
    if single:
        right = {"Q": W_Q[1], "K": W_K[1], "V": W_V[1]}[kind][None]
    else:
        right = {"Q": W_Q[1] @ W_K[1].transpose(-1, -2), "K": W_K[1] @ W_Q[1].transpose(-1, -2),
                 "V": W_V[1] @ W_O[1]}[kind][None]
    if first_later:
        return _fro(right @ ov_a) / (_fro(right) * _fro(ov_a))
    return _fro(ov_a @ right) / (_fro(ov_a) * _fro(right))


register(Exercise(
    id="composition_scores", chapter=CH5, title="Q-, K- and V-composition between two layers",
    signature="composition_scores(model, kind)", reference=C.composition_scores, cases=_comps_cases,
    points=3, difficulty=3, importance=4, minutes=20, atol=1e-4, rtol=1e-3,
    mistakes=[
        Mistake("Q and K are swapped: with row vectors, Q-composition is score(W_OV^a, W_QK^b) and "
                "K-composition is score(W_OV^a, W_QK^b.T) (the earlier head's output enters the key side).",
                lambda model, kind: _comps_manual(model, kind, swap_qk=True)),
        Mistake("Your table is transposed: row i is head i of the *earlier* layer (layer 0), column j head j "
                "of the later layer.",
                lambda model, kind: C.composition_scores(model, kind).T),
        Mistake("The earlier head's W_OV^a comes first in the product (row vectors: its output x W_OV^a is "
                "what the later head reads), so score(W_OV^a, W), not score(W, W_OV^a).",
                lambda model, kind: _comps_manual(model, kind, first_later=True)),
        Mistake("Compose with the later head's full [d_model, d_model] circuit (W_QK^b = W_Q W_K^T or "
                "W_OV^b = W_V W_O), not a single weight matrix W_Q, W_K or W_V.",
                lambda model, kind: _comps_manual(model, kind, single=True)),
    ],
))
