"""Part II exercises: induction heads (ch. 6).

References are the library functions the chapter uses (:mod:`tinyinterp.induction`);
``tests/test_induction.py`` checks those against a hand-built induction circuit with known answers.
"""

from __future__ import annotations

import torch

from .. import induction as I
from ..attribution import per_position_loss
from ..config import TransformerConfig
from ..functional import cross_entropy_loss
from ..harness.registry import Case, Exercise, Mistake, register
from ..model import HookedTransformer
from ._inputs import rand_causal_pattern, randn

CH6 = "06_induction_heads"


class _Model(HookedTransformer):
    """A :class:`HookedTransformer` that prints as one line, so that check messages stay short."""

    def __repr__(self) -> str:
        c = self.cfg
        kind = "attention-only " if c.attn_only else ""
        return f"<{kind}HookedTransformer: {c.n_layers} layers, {c.n_heads} heads, d_model {c.d_model}>"


def _shown(model: HookedTransformer) -> _Model:
    out = _Model(model.cfg)
    out.load_state_dict(model.state_dict())
    out.eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def _seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


def _random_model(gen: torch.Generator, **cfg) -> _Model:
    """A small random model with non-zero biases, seeded by ``gen``."""
    base = dict(d_vocab=25, n_ctx=41, d_model=16, n_layers=2, n_heads=3, d_head=4, d_mlp=32, init_std=0.4,
                attn_only=True, normalization=None)
    base.update(cfg)
    model = HookedTransformer(TransformerConfig(**base, seed=_seed(gen)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.split(".")[-1].startswith("W_"):
                p.add_(randn(gen, *p.shape, scale=0.1))
    return _shown(model)


def _handcrafted(gen: torch.Generator, d_vocab: int, n_ctx: int, n_heads: int, prev: tuple, ind: tuple,
                 bos: tuple = ()) -> _Model:
    return _shown(I.handcrafted_induction_model(d_vocab, n_ctx, n_heads, prev, ind, noise_std=0.1, seed=_seed(gen),
                                                bos_heads=bos))


# ----- generate_repeated_tokens -------------------------------------------------------------------------
def _repeat_cases(gen, hidden):
    shapes = [("batch 4, seq_len 10, d_vocab 57", 4, 10, 57), ("batch 1", 1, 6, 20),
              ("seq_len 1", 3, 1, 8), ("long: seq_len 40", 2, 40, 57),
              ("every token once: seq_len = d_vocab - 1", 2, 9, 10)]
    if hidden:
        shapes += [("hidden: batch 7, seq_len 15, d_vocab 31", 7, 15, 31)]
    return [Case(n, {"batch": b, "seq_len": s, "d_vocab": v, "seed": _seed(gen) % 10_000}) for n, b, s, v in shapes]


def _repeat_with_replacement(batch, seq_len, d_vocab, seed):
    r = torch.randint(1, d_vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), r, r], dim=1)


def _repeat_no_shift(batch, seq_len, d_vocab, seed):
    r = torch.rand(batch, d_vocab - 1, generator=torch.Generator().manual_seed(seed)).argsort(-1)[:, :seq_len]
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), r, r], dim=1)


def _repeat_bos_between(batch, seq_len, d_vocab, seed):
    t = I.generate_repeated_tokens(batch, seq_len, d_vocab, seed)
    return torch.cat([t[:, 1 : seq_len + 1], t[:, :1], t[:, seq_len + 1 :]], dim=1)


def _repeat_fresh_second(batch, seq_len, d_vocab, seed):
    order = torch.rand(batch, d_vocab - 1, generator=torch.Generator().manual_seed(seed)).argsort(-1) + 1
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), order[:, :seq_len], order[:, seq_len : 2 * seq_len]], 1)


register(Exercise(
    id="generate_repeated_tokens", chapter=CH6, title="A random sequence, repeated",
    signature="generate_repeated_tokens(batch, seq_len, d_vocab, seed)", reference=I.generate_repeated_tokens,
    cases=_repeat_cases, points=1, difficulty=1, importance=3, minutes=10,
    mistakes=[
        Mistake("Tokens repeat inside r: draw seq_len *distinct* tokens per row, e.g. the first seq_len entries of "
                "torch.rand(batch, d_vocab - 1, generator=gen).argsort(-1), plus 1.", _repeat_with_replacement),
        Mistake("Your r includes token 0, which is BOS (and never uses token d_vocab - 1): add 1 to the argsort "
                "indices so that r is drawn from 1 .. d_vocab - 1.", _repeat_no_shift),
        Mistake("BOS goes first, once: [BOS] + r + r, not r + [BOS] + r.", _repeat_bos_between),
        Mistake("The second half must repeat the first (the same r twice), not continue with new tokens.",
                _repeat_fresh_second),
    ],
))


# ----- prev_token_score -------------------------------------------------------------------------------
def _pattern_cases(gen, hidden, square_from_seq_len: bool):
    shapes = [("batch 2, 3 heads, seq_len 5", 2, 3, 5), ("batch 1", 1, 2, 4), ("seq_len 1", 3, 2, 1),
              ("long: seq_len 40", 2, 4, 40)]
    if hidden:
        shapes += [("hidden: one head, seq_len 12", 5, 1, 12)]
    cases = []
    for n, b, h, s in shapes:
        pattern = rand_causal_pattern(gen, b, h, 2 * s + 1)
        cases.append(Case(n, {"pattern": pattern, "seq_len": s} if square_from_seq_len else {"pattern": pattern}))
    return cases


def _prev_cases(gen, hidden):
    cases = _pattern_cases(gen, hidden, square_from_seq_len=False)
    return cases + [Case("two positions", {"pattern": rand_causal_pattern(gen, 3, 2, 2)})]


register(Exercise(
    id="prev_token_score", chapter=CH6, title="The previous-token score",
    signature="prev_token_score(pattern)", reference=I.prev_token_score, cases=_prev_cases,
    points=1, difficulty=2, importance=4, minutes=10,
    mistakes=[
        Mistake("You measured attention to the query's own position (the main diagonal); a previous-token head "
                "attends from q to q - 1.",
                lambda pattern: pattern.diagonal(0, -2, -1).mean((0, -1))),
        Mistake("Rows are queries and columns keys: read pattern[..., q, q - 1] (below the diagonal), not "
                "pattern[..., q - 1, q], which the causal mask makes zero.",
                lambda pattern: pattern.diagonal(1, -2, -1).mean((0, -1))),
        Mistake("Average over the pos - 1 queries that have a previous token (q = 1 .. pos-1); you divided by pos.",
                lambda pattern: pattern.diagonal(-1, -2, -1).sum(-1).mean(0) / pattern.shape[-1]),
        Mistake("Average over the queries, don't sum them.",
                lambda pattern: pattern.diagonal(-1, -2, -1).sum(-1).mean(0)),
    ],
))


# ----- induction_score --------------------------------------------------------------------------------
def _offset_score(pattern, seq_len, offset, n_queries=None):
    """Mean of pattern[..., q, q - offset] over the last ``n_queries`` queries (default ``seq_len``)."""
    return pattern.diagonal(-offset, -2, -1)[..., -(n_queries or seq_len):].mean((0, -1))


register(Exercise(
    id="induction_score", chapter=CH6, title="The induction score",
    signature="induction_score(pattern, seq_len)", reference=I.induction_score,
    cases=lambda gen, hidden: _pattern_cases(gen, hidden, square_from_seq_len=True),
    points=2, difficulty=2, importance=5, minutes=15,
    mistakes=[
        Mistake("You measured attention to the earlier copy of the *same* token (q - seq_len): that is the "
                "duplicate-token score. An induction head attends to the token after it, q - seq_len + 1.",
                lambda pattern, seq_len: _offset_score(pattern, seq_len, seq_len)),
        Mistake("Off by one: the token after the first occurrence of the query's token is at q - seq_len + 1, "
                "not q - seq_len + 2.",
                lambda pattern, seq_len: _offset_score(pattern, seq_len, seq_len - 2)
                if seq_len >= 2 else torch.zeros(pattern.shape[1])),
        Mistake("Average only over the queries of the second copy (q = seq_len+1 .. 2*seq_len); you also "
                "included earlier queries.",
                lambda pattern, seq_len: pattern.diagonal(-(seq_len - 1), -2, -1).mean((0, -1))),
        Mistake("The second copy starts at position seq_len + 1 (after BOS and the first copy): your queries "
                "start one position early.",
                lambda pattern, seq_len: _offset_score(pattern, seq_len, seq_len - 1, seq_len + 1)),
        Mistake("You kept the first seq_len entries of the diagonal at offset -(seq_len - 1); they belong to "
                "queries seq_len - 1 .. 2*seq_len - 1, mostly in the first copy. Keep the *last* seq_len entries "
                "([..., -seq_len:]), the queries of the second copy.",
                lambda pattern, seq_len: pattern.diagonal(-(seq_len - 1), -2, -1)[..., :seq_len].mean((0, -1))),
    ],
))


# ----- loss_with_head_ablated -------------------------------------------------------------------------
def _ablation_cases(gen, hidden):
    cases = []
    specs = [("random model, batch 4, seq_len 8", 4, 8, {}, (1, 2)), ("batch 1", 1, 6, {}, (0, 1)),
             ("random model with MLPs and LayerNorm", 3, 7, {"attn_only": False, "normalization": "LN"}, (1, 0)),
             ("long: seq_len 20", 2, 20, {}, (0, 0))]
    if hidden:
        specs += [("hidden: 1 head per layer", 3, 5, {"n_heads": 1}, (1, 0))]
    for n, b, s, cfg, (layer, head) in specs:
        model = _random_model(gen, **cfg)
        tokens = I.generate_repeated_tokens(b, s, model.cfg.d_vocab, _seed(gen) % 10_000)
        cases.append(Case(n, {"model": model, "tokens": tokens, "layer": layer, "head": head}))
    model = _handcrafted(gen, 13, 25, 2, (1,), (0,))
    cases.append(Case("hand-built induction circuit, ablating its induction head",
                      {"model": model, "tokens": I.generate_repeated_tokens(4, 12, 13, 3), "layer": 1, "head": 0}))
    return cases


def _ablated_logits(model, tokens, heads, mean=False):
    hooks = []
    for layer, head in heads:
        def hook(z, hp, head=head):
            z = z.clone()
            z[:, :, head] = z[:, :, head].mean(0) if mean else 0.0
            return z
        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    with torch.no_grad():
        return model.run_with_hooks(tokens, hooks)


def _second_copy_loss(logits, tokens, start):
    seq_len = (tokens.shape[1] - 1) // 2
    return per_position_loss(logits, tokens)[:, start(seq_len) : 2 * seq_len].mean()


def _unshifted_second_copy_loss(logits, tokens):
    seq_len = (tokens.shape[1] - 1) // 2
    log_probs = logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return -log_probs[:, seq_len + 1 : 2 * seq_len].mean()


register(Exercise(
    id="loss_with_head_ablated", chapter=CH6, title="Ablating a head on repeated tokens",
    signature="loss_with_head_ablated(model, tokens, layer, head)", reference=I.loss_with_head_ablated,
    cases=_ablation_cases, points=2, difficulty=3, importance=5, minutes=20, atol=1e-4, rtol=1e-4,
    mistakes=[
        Mistake("You returned the loss of the intact model: attach a hook to blocks.{layer}.attn.hook_z that "
                "zeroes z[:, :, head], and run the model with it.",
                lambda model, tokens, layer, head: I.repeated_loss(_ablated_logits(model, tokens, []), tokens)),
        Mistake("You ablated every head of the layer; zero only z[:, :, head].",
                lambda model, tokens, layer, head: I.repeated_loss(
                    _ablated_logits(model, tokens, [(layer, h) for h in range(model.cfg.n_heads)]), tokens)),
        Mistake("Zero-ablate: set the head's z to 0; you replaced it by its mean over the batch (mean-ablation).",
                lambda model, tokens, layer, head: I.repeated_loss(
                    _ablated_logits(model, tokens, [(layer, head)], mean=True), tokens)),
        Mistake("Measure the loss on the second copy only; you averaged over the whole sequence.",
                lambda model, tokens, layer, head: cross_entropy_loss(
                    _ablated_logits(model, tokens, [(layer, head)]), tokens)),
        Mistake("Leave out the first token of the second copy (nothing predicts it): the loss covers the "
                "predictions made at positions seq_len+1 .. 2*seq_len-1.",
                lambda model, tokens, layer, head: _second_copy_loss(
                    _ablated_logits(model, tokens, [(layer, head)]), tokens, lambda s: s)),
        Mistake("You scored the logits at position t against token t itself; they predict the *next* token. "
                "Shift: logits[:, :-1].log_softmax(-1) gathered at tokens[:, 1:].",
                lambda model, tokens, layer, head: _unshifted_second_copy_loss(
                    _ablated_logits(model, tokens, [(layer, head)]), tokens)),
    ],
))


# ----- k_composition_scores -----------------------------------------------------------------------------
def _kcomp_cases(gen, hidden):
    shapes = [("3 heads per layer, d_model 16, d_head 4", 3, 3, 16, 4), ("1 head per layer", 1, 1, 12, 3),
              ("2 heads in layer 0, 4 in layer 1", 2, 4, 16, 4), ("large: d_model 64, d_head 16", 4, 4, 64, 16)]
    if hidden:
        shapes += [("hidden: d_head 1", 2, 2, 8, 1)]
    return [Case(n, {"W_V0": randn(gen, a, m, d), "W_O0": randn(gen, a, d, m),
                     "W_Q1": randn(gen, b, m, d), "W_K1": randn(gen, b, m, d)}) for n, a, b, m, d in shapes]


def _kcomp_variant(W_V0, W_O0, W_Q1, W_K1, transpose=True, normalise=True, flipped=False):
    ov = (W_V0 @ W_O0)[:, None]
    qk = W_Q1 @ W_K1.transpose(-1, -2)
    right = (qk.transpose(-1, -2) if transpose else qk)[None]
    prod = right @ ov if flipped else ov @ right
    top = torch.linalg.matrix_norm(prod)
    return top / (torch.linalg.matrix_norm(ov) * torch.linalg.matrix_norm(right)) if normalise else top


register(Exercise(
    id="k_composition_scores", chapter=CH6, title="K-composition from the weights",
    signature="k_composition_scores(W_V0, W_O0, W_Q1, W_K1)", reference=I.k_composition_scores,
    cases=_kcomp_cases, points=2, difficulty=3, importance=4, minutes=20, atol=1e-4, rtol=1e-3,
    mistakes=[
        Mistake("That is Q-composition, ||W_OV W_QK||: for K-composition the earlier head's output enters the "
                "*keys*, so use the transpose, ||W_OV W_QK^T|| (with W_QK = W_Q W_K^T).",
                lambda W_V0, W_O0, W_Q1, W_K1: _kcomp_variant(W_V0, W_O0, W_Q1, W_K1, transpose=False)),
        Mistake("Divide by ||W_OV||_F ||W_QK||_F: without the normalisation the score depends on the weights' "
                "scale, not on how well the subspaces line up.",
                lambda W_V0, W_O0, W_Q1, W_K1: _kcomp_variant(W_V0, W_O0, W_Q1, W_K1, normalise=False)),
        Mistake("Product in the wrong order: with row vectors the earlier head's W_OV comes first, "
                "W_OV @ W_QK^T, not W_QK^T @ W_OV.",
                lambda W_V0, W_O0, W_Q1, W_K1: _kcomp_variant(W_V0, W_O0, W_Q1, W_K1, flipped=True)),
        Mistake("Your table is the wrong way round: entry [i, j] pairs head i of layer 0 (rows) with head j of "
                "layer 1 (columns).",
                lambda W_V0, W_O0, W_Q1, W_K1: I.k_composition_scores(W_V0, W_O0, W_Q1, W_K1).T),
    ],
))


# ----- find_induction_heads -------------------------------------------------------------------------------
def _find_cases(gen, hidden):
    # First, a case on which every catalogued mistake gives its own wrong answer, so the first failing
    # case names it by itself. Every head has a job (no random head near the low threshold): two
    # previous-token heads, an induction head, and a resting head that attends to BOS. With seq_len + 1
    # instead of seq_len the induction score reads the duplicate-token diagonal plus query seq_len, which
    # attends to BOS in the induction head (no earlier match) and in the resting head, scoring both
    # ~1/(seq_len + 1) = 0.2, clear of the 0.1 threshold; their duplicate-token scores are ~0.
    seq_len = 4
    model = _handcrafted(gen, seq_len + 3, 2 * seq_len + 1, 2, (0, 1), (0,), bos=(1,))
    tokens = I.generate_repeated_tokens(2, seq_len, seq_len + 3, _seed(gen) % 10_000)
    cases = [Case("a resting head (attends to BOS) and a low threshold (0.1)",
                  {"model": model, "tokens": tokens, "threshold": 0.1})]
    specs = [("prev-token head 0, induction head 0, 2 heads", 2, (0,), (0,), 8, 4),
             ("batch 1, 3 heads", 3, (0,), (2,), 10, 1),
             ("two induction heads", 3, (2,), (0, 1), 8, 3),
             ("no induction head (only a previous-token head)", 2, (0,), (), 8, 4),
             ("long: seq_len 20, 4 heads", 4, (3,), (1,), 20, 2)]
    if hidden:
        specs += [("hidden: 1 head per layer", 1, (0,), (0,), 6, 3)]
    for n, heads, prev, ind, s, b in specs:
        d_vocab = s + 3
        model = _handcrafted(gen, d_vocab, 2 * s + 1, heads, prev, ind)
        tokens = I.generate_repeated_tokens(b, s, d_vocab, _seed(gen) % 10_000)
        cases.append(Case(n, {"model": model, "tokens": tokens, "threshold": 0.5}))
    model = _random_model(gen, n_heads=2)
    cases.append(Case("random model, 2 heads", {"model": model, "tokens": I.generate_repeated_tokens(
        3, 9, model.cfg.d_vocab, 5), "threshold": 0.3}))
    return cases


def _find_with(score_fn):
    def find(model, tokens, threshold):
        seq_len = (tokens.shape[1] - 1) // 2
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
        return torch.stack([score_fn(cache["pattern", layer], seq_len) for layer in range(model.cfg.n_layers)]) > threshold
    return find


register(Exercise(
    id="find_induction_heads", chapter=CH6, title="Find the induction heads of a fresh model",
    signature="find_induction_heads(model, tokens, threshold)", reference=I.find_induction_heads,
    cases=_find_cases, points=2, difficulty=2, importance=5, minutes=15,
    mistakes=[
        Mistake("You found the previous-token heads: score each head with the induction score "
                "(attention from q to q - seq_len + 1 in the second copy), not the previous-token score.",
                _find_with(lambda pattern, seq_len: I.prev_token_score(pattern))),
        Mistake("You scored attention to the earlier copy of the same token (the duplicate-token offset "
                "q - seq_len); induction heads attend one position further on, to q - seq_len + 1.",
                _find_with(I.duplicate_token_score)),
        Mistake("Rows are layers and columns are heads: the result is [n_layers, n_heads]; you returned its transpose.",
                lambda model, tokens, threshold: I.find_induction_heads(model, tokens, threshold).T),
        Mistake("Your seq_len is one too large: tokens is [BOS] + r + r, [batch, 2 * seq_len + 1], so "
                "seq_len = (tokens.shape[1] - 1) // 2, not (tokens.shape[1] + 1) // 2.",
                _find_with(lambda pattern, seq_len: I.induction_score(pattern, seq_len + 1))),
    ],
))
