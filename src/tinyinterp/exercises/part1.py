"""Part I exercises: tokens and embeddings (ch. 1), attention (ch. 2), a tiny transformer (ch. 3).

Each exercise's reference is the function the model itself uses (:mod:`tinyinterp.functional`);
``tests/`` checks those against independent oracles.
"""

from __future__ import annotations

import math

import torch
from einops import einsum

from .. import functional as F
from ..harness.registry import Case, Exercise, Mistake, register
from ._inputs import rand_causal_pattern, randint, randn

CH1, CH2, CH3 = "01_tokens_and_embeddings", "02_attention", "03_tiny_transformer"


# ----- chapter 1 -------------------------------------------------------------------------------
def _embed_cases(gen, hidden):
    shapes = [("batch 3, pos 7", 3, 7, 11, 8, 16), ("batch 1", 1, 5, 11, 8, 16),
              ("sequence length 1", 2, 1, 11, 8, 16), ("long sequence", 2, 60, 11, 8, 64)]
    if hidden:
        shapes += [("hidden: other vocabulary", 4, 9, 29, 6, 12)]
    return [Case(n, {"tokens": randint(gen, v, b, p), "W_E": randn(gen, v, d), "W_pos": randn(gen, ctx, d)})
            for n, b, p, v, d, ctx in shapes]


register(Exercise(
    id="embed", chapter=CH1, title="Token plus positional embedding",
    signature="embed(tokens, W_E, W_pos)", reference=F.embed, cases=_embed_cases,
    points=1, difficulty=1, importance=4, minutes=5,
    mistakes=[
        Mistake("You left out the positional embedding: the residual stream starts as W_E[tokens] + W_pos[:pos].",
                lambda tokens, W_E, W_pos: W_E[tokens]),
        Mistake("You indexed W_pos by the token ids; positional embeddings are indexed by position 0..pos-1.",
                lambda tokens, W_E, W_pos: W_E[tokens] + W_pos[tokens]),
    ],
))


def _bigram_cases(gen, hidden):
    shapes = [("batch 4, pos 20", 4, 20, 7, 1.0), ("batch 1", 1, 12, 5, 1.0),
              ("two tokens per sequence", 6, 2, 5, 0.5), ("long sequences", 3, 300, 9, 1.0)]
    if hidden:
        shapes += [("hidden: small smoothing", 5, 40, 13, 0.1)]
    return [Case(n, {"tokens": randint(gen, v - 1, b, p), "d_vocab": v, "smoothing": s})  # token v-1 never seen
            for n, b, p, v, s in shapes]


def _bigram_counts(tokens, d_vocab, smoothing):
    counts = torch.full((d_vocab, d_vocab), float(smoothing))
    for a, b in zip(tokens[:, :-1].reshape(-1).tolist(), tokens[:, 1:].reshape(-1).tolist()):
        counts[a, b] += 1
    return counts


register(Exercise(
    id="bigram_log_probs", chapter=CH1, title="A bigram model by counting",
    signature="bigram_log_probs(tokens, d_vocab, smoothing)", reference=F.bigram_log_probs,
    cases=_bigram_cases, points=2, difficulty=2, importance=3, minutes=10,
    mistakes=[
        Mistake("Each row should be a distribution over the next token: normalise over the last dimension "
                "(sum over b of P(b | a) = 1), not over the first.",
                lambda tokens, d_vocab, smoothing: (lambda c: (c / c.sum(0, keepdim=True)).log())(
                    _bigram_counts(tokens, d_vocab, smoothing))),
        Mistake("Your table is transposed: row a, column b should hold log P(next = b | current = a).",
                lambda tokens, d_vocab, smoothing: F.bigram_log_probs(tokens, d_vocab, smoothing).T),
        Mistake("You forgot the smoothing: add `smoothing` to every count before normalising, so unseen pairs "
                "get a finite log-probability.",
                lambda tokens, d_vocab, smoothing: (lambda c: (c / c.sum(-1, keepdim=True)).log())(
                    _bigram_counts(tokens, d_vocab, 0.0))),
        Mistake("You returned probabilities; the exercise asks for log-probabilities.",
                lambda tokens, d_vocab, smoothing: F.bigram_log_probs(tokens, d_vocab, smoothing).exp()),
        Mistake("You counted pairs across the boundary between sequences: flatten only after taking "
                "tokens[:, :-1] and tokens[:, 1:].",
                lambda tokens, d_vocab, smoothing: F.bigram_log_probs(tokens.reshape(1, -1), d_vocab, smoothing)),
    ],
))


def _ce_cases(gen, hidden):
    shapes = [("batch 3, pos 8", 3, 8, 10, 1.0), ("batch 1", 1, 6, 10, 1.0),
              ("two positions", 4, 2, 10, 1.0), ("large logits (naive softmax overflows)", 2, 10, 10, 200.0),
              ("long sequence", 2, 128, 30, 3.0)]
    if hidden:
        shapes += [("hidden: big vocabulary", 3, 17, 97, 2.0)]
    return [Case(n, {"logits": randn(gen, b, p, v, scale=s), "tokens": randint(gen, v, b, p)})
            for n, b, p, v, s in shapes]


def _ce_no_shift(logits, tokens):
    return -logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).mean()


def _ce_naive(logits, tokens):
    probs = logits[:, :-1].exp() / logits[:, :-1].exp().sum(-1, keepdim=True)
    return -probs.gather(-1, tokens[:, 1:].unsqueeze(-1)).log().mean()


register(Exercise(
    id="cross_entropy_loss", chapter=CH1, title="Next-token cross-entropy",
    signature="cross_entropy_loss(logits, tokens)", reference=F.cross_entropy_loss, cases=_ce_cases,
    points=2, difficulty=2, importance=5, minutes=10,
    mistakes=[
        Mistake("Off by one: the logits at position t predict token t+1. Compare logits[:, :-1] with tokens[:, 1:].",
                _ce_no_shift),
        Mistake("Shifted the wrong way: use logits[:, :-1] with tokens[:, 1:], not logits[:, 1:] with tokens[:, :-1].",
                lambda logits, tokens: F.cross_entropy_loss(logits.flip(1), tokens.flip(1))),
        Mistake("You summed the per-token losses; the loss is their mean.",
                lambda logits, tokens: F.cross_entropy_loss(logits, tokens) * tokens[:, 1:].numel()),
        Mistake("The loss is the *negative* log-probability of the correct token.",
                lambda logits, tokens: -F.cross_entropy_loss(logits, tokens)),
        Mistake("exp() of large logits overflows to inf: use log_softmax (which subtracts the max) instead of "
                "log(exp(x) / sum(exp(x))).", _ce_naive),
    ],
))


# ----- chapter 2 -------------------------------------------------------------------------------
def _qk_cases(gen, hidden):
    shapes = [("batch 2, pos 5, 3 heads, d_head 4", 2, 5, 3, 4, 1.0), ("batch 1", 1, 6, 2, 8, 1.0),
              ("sequence length 1", 2, 1, 2, 4, 1.0), ("long sequence", 1, 96, 2, 8, 1.0),
              ("large-magnitude q and k (naive softmax overflows)", 2, 7, 2, 4, 60.0)]
    if hidden:
        shapes += [("hidden: one head", 3, 11, 1, 5, 1.0), ("hidden: d_head 1", 2, 9, 4, 1, 2.0)]
    cases = []
    for n, b, p, h, d, s in shapes:
        if s > 10:
            q, k = _separated_qk(gen, b, p, h, d, s)
        else:
            q, k = randn(gen, b, p, h, d, scale=s), randn(gen, b, p, h, d, scale=s)
        cases.append(Case(n, {"q": q, "k": k}))
    return cases


def _scores(q, k, scale):
    return einsum(q, k, "b q h d, b k h d -> b h q k") / scale


def _separated_qk(gen, b, p, h, d, scale, margin=20.0, tries=100):
    """Large q and k (scores in the thousands, so a naive exp() overflows) whose every attention row
    is well-conditioned: its largest score beats the next by at least ``margin``. Float32 stores such
    scores only to ~1e-3, and a row whose top two scores are that close is decided by rounding; with
    the margin, a 1e-3 change in any score moves the pattern by less than 1e-3 * exp(-20) ~ 2e-12."""
    for _ in range(tries):
        q, k = randn(gen, b, p, h, d, scale=scale), randn(gen, b, p, h, d, scale=scale)
        if p < 2:
            return q, k
        top2 = F.apply_causal_mask(_scores(q.double(), k.double(), math.sqrt(d))).topk(2, dim=-1).values
        if (top2[..., 0] - top2[..., 1]).min() >= margin:
            return q, k
    raise RuntimeError(f"no well-separated scores in {tries} draws")


def _masked_softmax(scores, diagonal=1, fill=float("-inf"), dim=-1):
    n = scores.shape[-1]
    return scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(diagonal), fill).softmax(dim)


def _mask_after_softmax(q, k, fill=0.0):
    probs = _scores(q, k, math.sqrt(q.shape[-1])).softmax(-1)
    return F.apply_causal_mask(probs, fill=fill)


def _naive_pattern(q, k):
    s = F.apply_causal_mask(_scores(q, k, math.sqrt(q.shape[-1])))
    return s.exp() / s.exp().sum(-1, keepdim=True)


register(Exercise(
    id="attention_pattern", chapter=CH2, title="Causal attention pattern",
    signature="attention_pattern(q, k)", reference=F.attention_pattern, cases=_qk_cases,
    points=3, difficulty=2, importance=5, minutes=15,
    mistakes=[
        Mistake("You scaled by sqrt(d_model), not sqrt(d_head): each head's scores are divided by "
                "sqrt(q.shape[-1]).",
                lambda q, k: _masked_softmax(_scores(q, k, math.sqrt(q.shape[-1] * q.shape[-2])))),
        Mistake("You forgot the 1/sqrt(d_head) scale on the scores.",
                lambda q, k: _masked_softmax(_scores(q, k, 1.0))),
        Mistake("You divided by d_head; the scale is 1/sqrt(d_head).",
                lambda q, k: _masked_softmax(_scores(q, k, q.shape[-1]))),
        Mistake("The mask also hides the diagonal: a token may attend to itself (mask only key_pos > query_pos).",
                lambda q, k: _masked_softmax(_scores(q, k, math.sqrt(q.shape[-1])), diagonal=0)),
        Mistake("There is no causal mask: queries must not attend to later keys.",
                lambda q, k: _scores(q, k, math.sqrt(q.shape[-1])).softmax(-1)),
        Mistake("The mask is the wrong way round: it should hide keys *after* the query (upper triangle), "
                "not before it.",
                lambda q, k: _scores(q, k, math.sqrt(q.shape[-1])).masked_fill(
                    torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).tril(-1), float("-inf")).softmax(-1)),
        Mistake("You filled masked scores with 0 before the softmax: exp(0) = 1 still gives them weight. "
                "Fill with -inf.",
                lambda q, k: _masked_softmax(_scores(q, k, math.sqrt(q.shape[-1])), fill=0.0)),
        Mistake("Softmax over the wrong dimension: normalise over keys (the last dimension), so each query's "
                "row sums to 1.",
                lambda q, k: _masked_softmax(_scores(q, k, math.sqrt(q.shape[-1])), dim=-2).nan_to_num(0.0)),
        Mistake("The output's last two dimensions are swapped: the shape is [batch, head, query_pos, key_pos].",
                lambda q, k: F.attention_pattern(q, k).transpose(-1, -2)),
        Mistake("exp() of large scores overflows to inf (and inf/inf = NaN): subtract each row's max before "
                "exp, or use torch.softmax.", _naive_pattern),
        Mistake("You masked after the softmax, so each row's weights no longer sum to 1 (the future keys took "
                "their share before being zeroed). Mask the scores with -inf first, then take the softmax.",
                _mask_after_softmax),
        Mistake("You filled the future keys with -inf *after* the softmax: the pattern holds probabilities. "
                "Fill the *scores* with -inf before the softmax, which turns them into weights of exactly 0.",
                lambda q, k: _mask_after_softmax(q, k, fill=float("-inf"))),
        Mistake("q and k are swapped: scores[b, h, i, j] = q[b, i, h] · k[b, j, h] pairs query position i "
                "with key position j, i.e. einsum 'b q h d, b k h d -> b h q k' with q first.",
                lambda q, k: F.attention_pattern(k, q)),
    ],
))


def _av_cases(gen, hidden):
    shapes = [("batch 2, pos 5, 3 heads, d_head 4, d_model 6", 2, 5, 3, 4, 6), ("batch 1", 1, 4, 2, 3, 5),
              ("sequence length 1", 2, 1, 2, 3, 5), ("long sequence", 1, 80, 2, 8, 16)]
    if hidden:
        shapes += [("hidden: one head", 2, 7, 1, 4, 4)]
    # W_O at the usual init scale 1/sqrt(n_heads * d_head), so outputs are O(1). With W_O ~ N(0, 1) an output
    # (a sum of n_heads * d_head products) has a float32 rounding error of up to 0.1 of atol.
    return [Case(n, {"pattern": rand_causal_pattern(gen, b, h, p), "v": randn(gen, b, p, h, d),
                     "W_O": randn(gen, h, d, m, scale=(h * d) ** -0.5)}) for n, b, p, h, d, m in shapes]


register(Exercise(
    id="attention_output", chapter=CH2, title="Mixing values and the output projection",
    signature="attention_output(pattern, v, W_O)", reference=F.attention_output, cases=_av_cases,
    points=2, difficulty=2, importance=5, minutes=10,
    mistakes=[
        Mistake("You used the pattern transposed: pattern[b, h, q, k] weighs the value at key position k "
                "for the query at position q.",
                lambda pattern, v, W_O: F.attention_output(pattern.transpose(-1, -2), v, W_O)),
        Mistake("You averaged over heads; each head writes into the residual stream, so sum over heads.",
                lambda pattern, v, W_O: F.attention_output(pattern, v, W_O) / v.shape[2]),
    ],
))


def _attn_layer_cases(gen, hidden):
    shapes = [("batch 2, pos 6, d_model 8, 2 heads, d_head 4", 2, 6, 8, 2, 4), ("batch 1", 1, 5, 6, 3, 2),
              ("sequence length 1", 2, 1, 8, 2, 4), ("long sequence", 1, 64, 16, 4, 4)]
    if hidden:
        shapes += [("hidden: one head, d_head = d_model", 2, 7, 5, 1, 5)]
    cases = []
    for n, b, p, m, h, d in shapes:
        s = 1 / math.sqrt(m)
        cases.append(Case(n, {
            "x": randn(gen, b, p, m),
            "W_Q": randn(gen, h, m, d, scale=s), "b_Q": randn(gen, h, d, scale=0.1),
            "W_K": randn(gen, h, m, d, scale=s), "b_K": randn(gen, h, d, scale=0.1),
            "W_V": randn(gen, h, m, d, scale=s), "b_V": randn(gen, h, d, scale=0.1),
            "W_O": randn(gen, h, d, m, scale=s), "b_O": randn(gen, m, scale=0.1)}))
    return cases


def _attn_no_bO(x, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O):
    return F.causal_attention(x, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, torch.zeros_like(b_O))


def _attn_no_qkv_bias(x, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O):
    z = torch.zeros_like(b_Q)
    return F.causal_attention(x, W_Q, z, W_K, z, W_V, z, W_O, b_O)


def _attn_bO_per_head(x, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O):
    return F.causal_attention(x, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O) + (W_O.shape[0] - 1) * b_O


def _attn_kq_swapped(x, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O):
    return F.causal_attention(x, W_K, b_K, W_Q, b_Q, W_V, b_V, W_O, b_O)


register(Exercise(
    id="causal_attention", chapter=CH2, title="A whole multi-head attention layer",
    signature="causal_attention(x, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O)",
    reference=F.causal_attention, cases=_attn_layer_cases, points=3, difficulty=3, importance=4, minutes=15,
    mistakes=[
        Mistake("You forgot the output bias b_O (added once, after summing the heads).", _attn_no_bO),
        Mistake("You added b_O once per head (n_heads times): the heads' outputs z_h @ W_O[h] are summed first, "
                "and b_O is added once to that sum.", _attn_bO_per_head),
        Mistake("You forgot the biases b_Q, b_K, b_V of the query, key and value projections.", _attn_no_qkv_bias),
        Mistake("Queries and keys are swapped: queries come from W_Q and attend to keys from W_K.",
                _attn_kq_swapped),
    ],
))


# ----- chapter 3 -------------------------------------------------------------------------------
def _ln_cases(gen, hidden):
    def case(name, x, d):
        return Case(name, {"x": x, "w": 1 + randn(gen, d, scale=0.2), "b": randn(gen, d, scale=0.2), "eps": 1e-5})

    cases = [case("batch 2, pos 5, d_model 8", randn(gen, 2, 5, 8), 8),
             case("batch 1, pos 1", randn(gen, 1, 1, 16), 16),
             case("large values", randn(gen, 2, 3, 32, scale=1e3) + 5e3, 32),
             # spread 1e-3 (variance 1e-6 < eps) around 0. Around a large mean such as 3.0 the case would be
             # ill-conditioned: float32 stores 3.0 + x only to +-1.2e-7, which LayerNorm divides by
             # sqrt(var + eps) = 3.3e-3, an error of ~4e-5 in the output, close to atol (1e-4)
             case("nearly constant rows (eps matters)", randn(gen, 2, 4, 8, scale=1e-3), 8)]
    if hidden:
        cases.append(case("hidden: d_model 1 (every row constant)", randn(gen, 3, 4, 1), 1))
    return cases


register(Exercise(
    id="layer_norm", chapter=CH3, title="LayerNorm",
    signature="layer_norm(x, w, b, eps)", reference=F.layer_norm, cases=_ln_cases,
    points=2, difficulty=2, importance=4, minutes=10, atol=1e-4, rtol=1e-4,
    mistakes=[
        Mistake("You used the unbiased variance (divide by d_model - 1); LayerNorm uses the biased one "
                "(x.var(-1, unbiased=False) or mean of squared deviations).",
                lambda x, w, b, eps: (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + eps).sqrt() * w + b),
        Mistake("eps goes inside the square root: divide by sqrt(var + eps), not sqrt(var) + eps.",
                lambda x, w, b, eps: (x - x.mean(-1, keepdim=True))
                / ((x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True).sqrt() + eps) * w + b),
        Mistake("You forgot to centre x (subtract its mean over d_model) before dividing.",
                lambda x, w, b, eps: x / ((x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + eps).sqrt()
                * w + b),
        Mistake("You normalised over the wrong dimension: LayerNorm normalises each position's d_model vector "
                "(the last dimension).",
                lambda x, w, b, eps: (x - x.mean(-2, keepdim=True))
                / ((x - x.mean(-2, keepdim=True)).pow(2).mean(-2, keepdim=True) + eps).sqrt() * w + b),
    ],
))


def _mlp_cases(gen, hidden):
    shapes = [("batch 2, pos 5, d_model 8, d_mlp 32", 2, 5, 8, 32, 1.0), ("batch 1, pos 1", 1, 1, 4, 16, 1.0),
              ("large pre-activations", 2, 3, 8, 16, 4.0), ("long sequence", 1, 64, 16, 64, 1.0)]
    if hidden:
        shapes += [("hidden: d_mlp 1", 2, 3, 4, 1, 1.0)]
    return [Case(n, {"x": randn(gen, b, p, m, scale=s), "W_in": randn(gen, m, k, scale=1.0),
                     "b_in": randn(gen, k, scale=0.5), "W_out": randn(gen, k, m, scale=1 / math.sqrt(k)),
                     "b_out": randn(gen, m, scale=0.5)}) for n, b, p, m, k, s in shapes]


register(Exercise(
    id="mlp", chapter=CH3, title="The MLP block",
    signature="mlp(x, W_in, b_in, W_out, b_out)", reference=F.mlp, cases=_mlp_cases,
    points=1, difficulty=1, importance=4, minutes=5, atol=1e-4,
    mistakes=[
        Mistake("You used ReLU; this model's MLP uses GELU (torch.nn.functional.gelu, the exact erf form).",
                lambda x, W_in, b_in, W_out, b_out: torch.relu(x @ W_in + b_in) @ W_out + b_out),
        Mistake("You used the tanh approximation of GELU; the model uses the exact form, x * Phi(x) "
                "(F.gelu(x) with the default approximate='none').",
                lambda x, W_in, b_in, W_out, b_out: torch.nn.functional.gelu(x @ W_in + b_in, approximate="tanh")
                @ W_out + b_out),
        Mistake("You forgot the bias b_in before the nonlinearity.",
                lambda x, W_in, b_in, W_out, b_out: F.mlp(x, W_in, torch.zeros_like(b_in), W_out, b_out)),
        Mistake("You forgot the output bias b_out.",
                lambda x, W_in, b_in, W_out, b_out: F.mlp(x, W_in, b_in, W_out, torch.zeros_like(b_out))),
        Mistake("There is no nonlinearity between W_in and W_out: apply GELU to x @ W_in + b_in.",
                lambda x, W_in, b_in, W_out, b_out: (x @ W_in + b_in) @ W_out + b_out),
    ],
))


def _topk_cases(gen, hidden):
    shapes = [("4 rows of 10 logits, k=3", (4, 10), 3), ("one row, k=1", (1, 8), 1),
              ("k equals the vocabulary", (2, 6), 6), ("batch and position dims, k=5", (2, 3, 20), 5)]
    if hidden:
        shapes += [("hidden: k larger than the vocabulary", (3, 4), 9)]
    return [Case(n, {"logits": randn(gen, *s, scale=3.0), "k": k}) for n, s, k in shapes]


register(Exercise(
    id="top_k_logits", chapter=CH3, title="Top-k filtering for sampling",
    signature="top_k_logits(logits, k)", reference=F.top_k_logits, cases=_topk_cases,
    points=1, difficulty=2, importance=2, minutes=10,
    mistakes=[
        Mistake("Set the filtered logits to -inf, not 0: a logit of 0 still has probability after softmax.",
                lambda logits, k: (lambda kth: logits.masked_fill(logits < kth, 0.0))(
                    logits.topk(min(k, logits.shape[-1]), -1).values[..., -1:])),
        Mistake("You kept the k *smallest* logits; keep the largest.",
                lambda logits, k: (lambda kth: logits.masked_fill(logits > kth, float("-inf")))(
                    logits.topk(min(k, logits.shape[-1]), -1, largest=False).values[..., -1:])),
        Mistake("Off by one: you kept k+1 logits (or k-1). Keep exactly the k largest.",
                lambda logits, k: F.top_k_logits(logits, k + 1)),
        Mistake("Off by one: you kept k-1 logits. Keep exactly the k largest.",
                lambda logits, k: F.top_k_logits(logits, max(k - 1, 1)) if k > 1 else logits * 0),
    ],
))
