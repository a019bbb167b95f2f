"""Chapter 8 exercises: sparse autoencoders.

Each reference is the function the chapter and the library use (:mod:`tinyinterp.sae`,
:mod:`tinyinterp.toy_features`, :mod:`tinyinterp.sae_lm`); ``tests/test_sae.py`` checks those
against independent oracles.
"""

from __future__ import annotations

import math

import torch

from .. import sae as S
from ..functional import cross_entropy_loss
from ..harness.registry import Case, Exercise, Mistake, register
from ..sae_lm import ce_loss_recovered
from ..toy_features import mmcs, random_unit_directions
from ._inputs import randint, randn

CH8 = "08_sparse_autoencoders"

# Tolerance of the two forward passes. A reconstruction entry sums d_sae products of latents, each a sum of
# d_in products; float32's worst-case error for that, (d_in + d_sae) * 2^-24 * sum|terms|, is ~1e-5 on the
# 16 -> 64 "large batch" cases, as large as atol=1e-5 itself (over 200 seeds the float32 reference was 0.11
# of it off, and 2 ulps on the inputs moved answers by 0.13 of it). atol=1e-4 keeps a tenfold margin;
# every catalogued mistake is off by far more.
SAE_ATOL = 1e-4


def _sae_params(gen, d_in, d_sae, unit_decoder=True):
    W_dec = randn(gen, d_sae, d_in)
    if unit_decoder:
        W_dec = S.normalize_decoder(W_dec)
    return {"W_enc": randn(gen, d_in, d_sae, scale=d_in**-0.5), "b_enc": randn(gen, d_sae, scale=0.3),
            "W_dec": W_dec, "b_dec": randn(gen, d_in, scale=0.5)}


# ----- SAE forward -------------------------------------------------------------------------------
def _forward_cases(gen, hidden):
    shapes = [("batch 8, d_in 6, d_sae 16", 8, 6, 16), ("batch 1", 1, 5, 12),
              ("d_sae smaller than d_in", 4, 10, 3), ("large batch", 300, 16, 64)]
    if hidden:
        shapes += [("hidden: d_in 1", 5, 1, 7)]
    return [Case(n, {"x": randn(gen, b, d), **_sae_params(gen, d, m)}) for n, b, d, m in shapes]


def _fwd_no_center(x, W_enc, b_enc, W_dec, b_dec):
    latents = torch.relu(x @ W_enc + b_enc)
    return latents, latents @ W_dec + b_dec


def _fwd_no_bdec_out(x, W_enc, b_enc, W_dec, b_dec):
    latents, recon = S.sae_forward(x, W_enc, b_enc, W_dec, b_dec)
    return latents, recon - b_dec


def _fwd_relu_after_decode(x, W_enc, b_enc, W_dec, b_dec):
    pre = (x - b_dec) @ W_enc + b_enc
    return pre, torch.relu(pre) @ W_dec + b_dec


def _fwd_tied(x, W_enc, b_enc, W_dec, b_dec):
    latents = torch.relu((x - b_dec) @ W_dec.T + b_enc)
    return latents, latents @ W_dec + b_dec


register(Exercise(
    id="sae_forward", chapter=CH8, title="The SAE forward pass",
    signature="sae_forward(x, W_enc, b_enc, W_dec, b_dec)", reference=S.sae_forward, cases=_forward_cases,
    points=2, difficulty=1, importance=5, minutes=10, atol=SAE_ATOL, rtol=1e-4,
    mistakes=[
        Mistake("You forgot to subtract b_dec from x before encoding: latents = ReLU((x - b_dec) @ W_enc + b_enc).",
                _fwd_no_center),
        Mistake("The reconstruction is missing b_dec: add it back after decoding, latents @ W_dec + b_dec.",
                _fwd_no_bdec_out),
        Mistake("Your latents are the pre-activations: apply the ReLU to (x - b_dec) @ W_enc + b_enc and "
                "return those non-negative values as the latents.", _fwd_relu_after_decode),
        Mistake("You encoded with W_dec.T instead of W_enc: the encoder and decoder are separate matrices.",
                _fwd_tied),
    ],
))


# ----- loss --------------------------------------------------------------------------------------
def _loss_cases(gen, hidden):
    shapes = [("batch 8, d_in 6, d_sae 16", 8, 6, 16, 0.1), ("batch 1", 1, 5, 12, 0.3),
              ("no sparsity penalty (l1_coeff 0)", 6, 4, 8, 0.0), ("large batch, big penalty", 200, 16, 48, 2.0)]
    if hidden:
        shapes += [("hidden: d_in 1", 5, 1, 7, 0.5)]
    cases = []
    for n, b, d, m, c in shapes:
        x = randn(gen, b, d)
        latents = torch.relu(randn(gen, b, m))
        W_dec = randn(gen, m, d) * (0.5 + torch.rand(m, 1, generator=gen))  # rows of different norms
        cases.append(Case(n, {"x": x, "latents": latents, "reconstruction": x + randn(gen, b, d, scale=0.5),
                              "W_dec": W_dec, "l1_coeff": c}))
    return cases


def _loss_terms(x, latents, reconstruction, W_dec):
    return (reconstruction - x).pow(2).sum(-1).mean(), (latents.abs() * W_dec.norm(dim=-1)).sum(-1).mean()


register(Exercise(
    id="sae_loss", chapter=CH8, title="Reconstruction plus sparsity: the SAE loss",
    signature="sae_loss(x, latents, reconstruction, W_dec, l1_coeff)", reference=S.sae_loss, cases=_loss_cases,
    points=2, difficulty=2, importance=5, minutes=10,
    mistakes=[
        Mistake("You averaged the squared error over d_in too (F.mse_loss): sum it over d_in for each input, "
                "then average over the batch.",
                lambda x, latents, reconstruction, W_dec, l1_coeff: (reconstruction - x).pow(2).mean()
                + l1_coeff * _loss_terms(x, latents, reconstruction, W_dec)[1]),
        Mistake("Your L1 term ignores the decoder norms: weight each latent's |f_i| by ||W_dec[i]|| (the norm "
                "of its row), so that shrinking latents and growing decoder rows cannot dodge the penalty.",
                lambda x, latents, reconstruction, W_dec, l1_coeff: _loss_terms(x, latents, reconstruction, W_dec)[0]
                + l1_coeff * latents.abs().sum(-1).mean()),
        Mistake("Your sparsity penalty is an L2 (squared latents); the SAE uses the L1 norm, |f_i|.",
                lambda x, latents, reconstruction, W_dec, l1_coeff: _loss_terms(x, latents, reconstruction, W_dec)[0]
                + l1_coeff * (latents.pow(2) * W_dec.norm(dim=-1)).sum(-1).mean()),
        Mistake("You used the error's norm ||x - x̂||, not its square ||x - x̂||².",
                lambda x, latents, reconstruction, W_dec, l1_coeff: (reconstruction - x).norm(dim=-1).mean()
                + l1_coeff * _loss_terms(x, latents, reconstruction, W_dec)[1]),
        Mistake("You summed the loss over the batch; average it over the batch instead.",
                lambda x, latents, reconstruction, W_dec, l1_coeff: x.shape[0] * S.sae_loss(
                    x, latents, reconstruction, W_dec, l1_coeff)),
    ],
))


# ----- decoder normalisation ---------------------------------------------------------------------
def _norm_cases(gen, hidden):
    shapes = [("d_sae 16, d_in 6", 16, 6, 1.0), ("one latent", 1, 5, 1.0), ("d_in 1", 7, 1, 1.0),
              ("tiny and large rows", 12, 8, 1e-3), ("wide dictionary", 256, 32, 5.0)]
    if hidden:
        shapes += [("hidden: square", 9, 9, 1.0)]
    return [Case(n, {"W_dec": randn(gen, m, d) * (s * torch.rand(m, 1, generator=gen) + 1e-2)})
            for n, m, d, s in shapes]


register(Exercise(
    id="normalize_decoder", chapter=CH8, title="Unit-norm decoder directions",
    signature="normalize_decoder(W_dec)", reference=S.normalize_decoder, cases=_norm_cases,
    points=1, difficulty=1, importance=3, minutes=5,
    mistakes=[
        Mistake("You normalised the columns of W_dec (dim 0); each latent's decoder direction is a row "
                "[d_in], so divide by W_dec.norm(dim=-1, keepdim=True).",
                lambda W_dec: W_dec / W_dec.norm(dim=0, keepdim=True)),
        Mistake("You divided by the squared norm; divide each row by its norm, so its length becomes 1.",
                lambda W_dec: W_dec / W_dec.pow(2).sum(-1, keepdim=True)),
        Mistake("You divided the whole matrix by one number (its Frobenius norm); every row needs its own norm.",
                lambda W_dec: W_dec / W_dec.norm()),
    ],
))


# ----- MMCS --------------------------------------------------------------------------------------
def _mmcs_cases(gen, hidden):
    def feats(n, d, scale_range=True):
        f = random_unit_directions(n, d, gen)
        return f * (0.2 + 3 * torch.rand(n, 1, generator=gen)) if scale_range else f

    cases = [Case("8 true, 12 learned, d 5", {"true_features": feats(8, 5), "learned_features": feats(12, 5)}),
             Case("1 true feature", {"true_features": feats(1, 4), "learned_features": feats(6, 4)}),
             Case("1 learned feature", {"true_features": feats(5, 4), "learned_features": feats(1, 4)})]
    true = feats(20, 16, scale_range=False)
    noisy = true[torch.randperm(20, generator=gen)[:15]] + randn(gen, 15, 16, scale=0.1)
    cases.append(Case("learned = some true features, shuffled, noisy and sign-flipped",
                      {"true_features": true, "learned_features": torch.cat([noisy, -true[:5] * 2.0])}))
    cases.append(Case("large: 64 true, 256 learned",
                      {"true_features": feats(64, 32), "learned_features": feats(256, 32)}))
    if hidden:
        cases.append(Case("hidden: d 1", {"true_features": feats(3, 1), "learned_features": feats(4, 1)}))
    return cases


def _unit(v):
    return v / v.norm(dim=-1, keepdim=True)


register(Exercise(
    id="mmcs", chapter=CH8, title="Mean max cosine similarity",
    signature="mmcs(true_features, learned_features)", reference=mmcs, cases=_mmcs_cases,
    points=2, difficulty=2, importance=4, minutes=10,
    mistakes=[
        Mistake("You took the max over the true features for each learned one (and averaged over learned): "
                "MMCS asks, for every *true* feature, how close the best learned direction comes.",
                lambda true_features, learned_features: mmcs(learned_features, true_features)),
        Mistake("You used raw dot products; normalise both sets of directions to unit length first, so that "
                "you compare cosine similarities.",
                lambda true_features, learned_features: (true_features @ learned_features.T).max(-1).values.mean()),
        Mistake("You took the absolute value of the cosine similarity. An SAE's latents are non-negative, so "
                "a decoder direction -f does not represent the feature f: keep the sign.",
                lambda true_features, learned_features: (_unit(true_features) @ _unit(learned_features).T)
                .abs().max(-1).values.mean()),
        Mistake("You averaged the cosine similarities over the learned features instead of taking the max.",
                lambda true_features, learned_features: (_unit(true_features) @ _unit(learned_features).T).mean()),
    ],
))


# ----- resampling --------------------------------------------------------------------------------
def _resample_cases(gen, hidden):
    shapes = [("batch 64, d_in 6, d_sae 16, 3 dead", 64, 6, 16, [1, 7, 8]),
              ("one dead latent", 32, 5, 10, [4]),
              ("no dead latents", 16, 4, 8, []),
              ("more dead latents than inputs", 4, 6, 12, [0, 2, 3, 5, 6, 9, 11]),
              ("large batch", 512, 16, 64, list(range(0, 64, 5)))]
    if hidden:
        shapes += [("hidden: every latent dead", 20, 5, 6, list(range(6)))]
    cases = []
    for n, b, d, m, dead_list in shapes:
        dead = torch.zeros(m, dtype=torch.bool)
        dead[dead_list] = True
        params = _sae_params(gen, d, m)
        params["W_enc"] = params["W_enc"] * (0.5 + torch.rand(m, generator=gen))  # columns of different norms
        cases.append(Case(n, {"x": randn(gen, b, d) + 1.0, "dead": dead, **params,
                              "seed": int(torch.randint(0, 1000, (1,), generator=gen))}))
    return cases


def _resample_variant(x, dead, W_enc, b_enc, W_dec, b_dec, seed, *, power=2, center=True, zero_bias=True,
                      alive_only=True, scale_enc=True, uniform=False):
    W_enc, b_enc, W_dec = W_enc.clone(), b_enc.clone(), W_dec.clone()
    idx = dead.nonzero().squeeze(-1)
    if len(idx) == 0:
        return W_enc, b_enc, W_dec
    _, recon = S.sae_forward(x, W_enc, b_enc, W_dec, b_dec)
    probs = (recon - x).pow(2).sum(-1).pow(power)
    if uniform:
        probs = torch.ones_like(probs)
    chosen = torch.multinomial(probs, len(idx), replacement=True, generator=torch.Generator().manual_seed(seed))
    directions = S.normalize_decoder(x[chosen] - b_dec if center else x[chosen])
    norms = W_enc[:, ~dead].norm(dim=0) if alive_only else W_enc.norm(dim=0)
    enc_norm = norms.mean() if len(norms) else torch.tensor(1.0)
    W_dec[idx] = directions
    W_enc[:, idx] = directions.T * (0.2 * enc_norm if scale_enc else 1.0)
    if zero_bias:
        b_enc[idx] = 0.0
    return W_enc, b_enc, W_dec


def _mistake(**kw):
    return lambda x, dead, W_enc, b_enc, W_dec, b_dec, seed: _resample_variant(
        x, dead, W_enc, b_enc, W_dec, b_dec, seed, **kw)


register(Exercise(
    id="resample_dead_latents", chapter=CH8, title="Resampling dead latents",
    signature="resample_dead_latents(x, dead, W_enc, b_enc, W_dec, b_dec, seed)",
    reference=S.resample_dead_latents, cases=_resample_cases,
    points=3, difficulty=3, importance=3, minutes=20, atol=1e-5, rtol=1e-4,
    mistakes=[
        Mistake("Inputs should be drawn with probability proportional to the *square* of their squared "
                "reconstruction error (loss², as Bricken et al. do); you used the error itself.", _mistake(power=1)),
        Mistake("You drew inputs uniformly; draw them with probability proportional to the square of their "
                "reconstruction loss, so badly reconstructed inputs are favoured.", _mistake(uniform=True)),
        Mistake("The new directions must be the *centred* inputs x - b_dec (then normalised), not x itself.",
                _mistake(center=False)),
        Mistake("You left the dead latents' encoder biases as they were; set b_enc to 0 for each resampled latent.",
                _mistake(zero_bias=False)),
        Mistake("The new encoder columns are too long: scale the unit direction by 0.2 times the mean encoder "
                "norm of the live latents.", _mistake(scale_enc=False)),
        Mistake("You averaged the encoder norms over every latent; average them over the live (not dead) "
                "latents only.", _mistake(alive_only=False)),
    ],
))


# ----- TopK --------------------------------------------------------------------------------------
def _topk_cases(gen, hidden):
    shapes = [("batch 8, d_sae 16, k 3", 8, 6, 16, 3), ("batch 1, k 1", 1, 5, 12, 1),
              ("k larger than the positive pre-activations", 6, 4, 10, 8), ("large batch", 200, 16, 64, 10)]
    if hidden:
        shapes += [("hidden: k = d_sae", 5, 4, 6, 6)]
    cases = []
    for n, b, d, m, k in shapes:
        params = _sae_params(gen, d, m)
        params["b_enc"] = params["b_enc"] - 0.5  # many negative pre-activations
        cases.append(Case(n, {"x": randn(gen, b, d), **params, "k": k}))
    return cases


def _topk_no_relu(x, W_enc, b_enc, W_dec, b_dec, k):
    pre = (x - b_dec) @ W_enc + b_enc
    top = pre.topk(k, dim=-1)
    latents = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    return latents, latents @ W_dec + b_dec


def _topk_abs(x, W_enc, b_enc, W_dec, b_dec, k):
    pre = (x - b_dec) @ W_enc + b_enc
    idx = pre.abs().topk(k, dim=-1).indices
    latents = torch.zeros_like(pre).scatter(-1, idx, torch.relu(pre.gather(-1, idx)))
    return latents, latents @ W_dec + b_dec


def _topk_per_latent(x, W_enc, b_enc, W_dec, b_dec, k):
    pre = (x - b_dec) @ W_enc + b_enc
    kk = min(k, pre.shape[0])
    top = pre.topk(kk, dim=0)
    latents = torch.zeros_like(pre).scatter(0, top.indices, torch.relu(top.values))
    return latents, latents @ W_dec + b_dec


register(Exercise(
    id="topk_forward", chapter=CH8, title="The TopK SAE",
    signature="topk_forward(x, W_enc, b_enc, W_dec, b_dec, k)", reference=S.topk_forward, cases=_topk_cases,
    points=2, difficulty=2, importance=4, minutes=15, atol=SAE_ATOL, rtol=1e-4,
    mistakes=[
        Mistake("Some of your kept latents are negative: after keeping the top k pre-activations, apply a "
                "ReLU to them (when fewer than k are positive, the rest are zero).", _topk_no_relu),
        Mistake("You kept the k pre-activations of largest absolute value; keep the k largest values "
                "(topk on the pre-activations themselves).", _topk_abs),
        Mistake("You took the top k over the batch (dim 0): each input keeps its own k largest latents, so "
                "take topk over the last dimension.", _topk_per_latent),
        Mistake("You kept k + 1 latents per input; keep exactly k.",
                lambda x, W_enc, b_enc, W_dec, b_dec, k: S.topk_forward(x, W_enc, b_enc, W_dec, b_dec, k + 1)),
        Mistake("You forgot to subtract b_dec from x before encoding: pre-activations are (x - b_dec) @ W_enc "
                "+ b_enc, as in the ReLU SAE.",
                lambda x, W_enc, b_enc, W_dec, b_dec, k: S.topk_forward(x + b_dec, W_enc, b_enc, W_dec, b_dec, k)),
    ],
))


# ----- CE loss recovered -------------------------------------------------------------------------
def _ce_rec_cases(gen, hidden):
    shapes = [("batch 4, pos 10, d_vocab 7", 4, 10, 7), ("batch 1", 1, 12, 5), ("two positions", 6, 2, 9),
              ("long sequences", 2, 128, 30)]
    if hidden:
        shapes += [("hidden: big vocabulary", 3, 20, 97)]
    cases = []
    for n, b, p, v in shapes:
        # Well-conditioned by construction: the clean model puts log(d_vocab) + 4 extra on the next token
        # (loss < 0.1), the ablated one knows nothing (loss ~ log(d_vocab) + 0.5), so the denominator
        # L_ablated - L_clean is large (over 1 nat on each of the first 1000 seeds). Ablated logits derived
        # from the clean ones could give a loss within 1e-3 of the clean loss, and then float32 rounding of
        # the losses decided the ratio.
        tokens = randint(gen, v, b, p)
        boost = (math.log(v) + 4.0) * torch.nn.functional.one_hot(tokens.roll(-1, dims=1), v)
        clean = randn(gen, b, p, v) + boost  # a good model
        ablated = randn(gen, b, p, v)  # a model that knows nothing
        spliced = 0.5 * clean + randn(gen, b, p, v, scale=0.5)  # in between
        cases.append(Case(n, {"clean_logits": clean, "spliced_logits": spliced, "ablated_logits": ablated,
                              "tokens": tokens}))
    return cases


def _ce_rec_from(loss_fn):
    def f(clean_logits, spliced_logits, ablated_logits, tokens):
        clean, spliced, ablated = (loss_fn(lg, tokens) for lg in (clean_logits, spliced_logits, ablated_logits))
        return (ablated - spliced) / (ablated - clean)
    return f


def _ce_unshifted(logits, tokens):
    return -logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).mean()


register(Exercise(
    id="ce_loss_recovered", chapter=CH8, title="Cross-entropy loss recovered",
    signature="ce_loss_recovered(clean_logits, spliced_logits, ablated_logits, tokens)",
    reference=ce_loss_recovered, cases=_ce_rec_cases,
    points=2, difficulty=2, importance=4, minutes=10, atol=1e-4, rtol=1e-4,
    mistakes=[
        Mistake("You computed the fraction of the loss *lost* (spliced - clean) / (ablated - clean); the "
                "fraction recovered is (ablated - spliced) / (ablated - clean), so perfect reconstruction gives 1.",
                lambda clean_logits, spliced_logits, ablated_logits, tokens: 1 - ce_loss_recovered(
                    clean_logits, spliced_logits, ablated_logits, tokens)),
        Mistake("You forgot the next-token shift in the losses: logits at position t are scored against token "
                "t+1 (use cross_entropy_loss from chapter 1).", _ce_rec_from(_ce_unshifted)),
        Mistake("You divided by the zero-ablated loss alone; divide by the gap between the zero-ablated and "
                "the clean loss, (ablated - spliced) / (ablated - clean), so that the clean model scores 1.",
                lambda clean_logits, spliced_logits, ablated_logits, tokens: (lambda c, s, a: (a - s) / a)(
                    *(cross_entropy_loss(lg, tokens) for lg in (clean_logits, spliced_logits, ablated_logits)))),
        Mistake("You compared probabilities instead of losses: work with the cross-entropy losses (negative "
                "log-probabilities) of the three runs.",
                lambda clean_logits, spliced_logits, ablated_logits, tokens: _ce_rec_from(
                    lambda lg, t: lg[:, :-1].softmax(-1).gather(-1, t[:, 1:].unsqueeze(-1)).mean())(
                    clean_logits, spliced_logits, ablated_logits, tokens)),
    ],
))
