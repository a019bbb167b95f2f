"""Induction heads (Olsson et al. 2022): data that rewards in-context copying, head detectors,
the metrics that show the phase change, ablations, a hand-built induction circuit, and a 2-layer
attention-only model trained from scratch in well under a minute on a CPU.

An *induction head* completes patterns: at a token ``A`` it looks back for an earlier ``A``,
attends to the token ``B`` that followed it, and predicts ``B`` again (``... A B ... A -> B``). It
needs two heads in series: a *previous-token head* in an earlier layer writes "the token before
me was A" into each position, and the induction head's keys read that (K-composition,
Elhage et al. 2021).

Conventions: token 0 is BOS; ``[BOS] + r + r`` is a random sequence ``r`` of ``seq_len`` tokens
repeated once, ``2 * seq_len + 1`` tokens in all, so the second copy occupies positions
``seq_len + 1 .. 2 * seq_len``.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .attribution import head_ablation_hook, per_position_loss
from .checkpoint import cached_model, source_hash
from .circuits import composition_score
from .config import TransformerConfig
from .data import CharTokenizer, corpus_dataset
from .hooks import full_hook_name
from .model import HookedTransformer
from .seeds import training_seed, with_training_seed

BOS_ID = 0


# ----- data ---------------------------------------------------------------------------------------
def generate_repeated_tokens(batch: int, seq_len: int, d_vocab: int, seed: int = 0) -> Int[Tensor, "batch pos"]:
    """``[BOS] + r + r`` for ``batch`` random sequences ``r`` of ``seq_len`` tokens: ``[batch, 2*seq_len+1]``.

    Each ``r`` holds ``seq_len`` *distinct* non-BOS tokens (so every token of the second copy has
    exactly one earlier occurrence to look back to): the first ``seq_len`` entries of a random
    permutation of ``1 .. d_vocab-1``, namely
    ``torch.rand(batch, d_vocab - 1, generator=torch.Generator().manual_seed(seed)).argsort(-1)[:, :seq_len] + 1``.
    """
    if not 1 <= seq_len < d_vocab:
        raise ValueError(f"need 1 <= seq_len <= d_vocab - 1 distinct tokens, got seq_len={seq_len}, d_vocab={d_vocab}")
    gen = torch.Generator().manual_seed(seed)
    r = torch.rand(batch, d_vocab - 1, generator=gen).argsort(dim=-1)[:, :seq_len] + 1
    bos = torch.full((batch, 1), BOS_ID, dtype=torch.long)
    return torch.cat([bos, r, r], dim=1)


def repeated_span_sequence(
    rng: random.Random, seq_len: int, d_vocab: int, span_lengths: Sequence[int], p_copy: float
) -> list[int]:
    """One training sequence: BOS, then segments of random length drawn from ``span_lengths``; each
    segment is, with probability ``p_copy``, a copy of a span anywhere earlier in the sequence, and
    otherwise fresh random tokens. Lengths *and* offsets of the repeats vary, so no fixed
    "attend ``L`` tokens back" rule can stand in for induction."""
    toks = [BOS_ID]
    while len(toks) < seq_len:
        length = rng.choice(span_lengths)
        if len(toks) - 1 >= length and rng.random() < p_copy:
            start = rng.randint(1, len(toks) - length)
            toks += toks[start : start + length]
        else:
            toks += [rng.randrange(1, d_vocab) for _ in range(length)]
    return toks[:seq_len]


# ----- head detectors -------------------------------------------------------------------------------
def prev_token_score(pattern: Float[Tensor, "batch n_heads pos pos"]) -> Float[Tensor, "n_heads"]:
    """Mean attention from each query ``q = 1 .. pos-1`` to the position just before it, ``q - 1``
    (over the batch and the queries)."""
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1))


def induction_score(pattern: Float[Tensor, "batch n_heads pos pos"], seq_len: int) -> Float[Tensor, "n_heads"]:
    """On ``[BOS] + r + r``: mean attention from each query ``q`` of the second copy
    (``q = seq_len+1 .. 2*seq_len``) to ``q - seq_len + 1``, the token *after* the first occurrence
    of the query's token (over the batch and the queries)."""
    return pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1)[..., -seq_len:].mean(dim=(0, -1))


def duplicate_token_score(pattern: Float[Tensor, "batch n_heads pos pos"], seq_len: int) -> Float[Tensor, "n_heads"]:
    """On ``[BOS] + r + r``: mean attention from each query of the second copy to ``q - seq_len``,
    the earlier occurrence of the *same* token."""
    return pattern.diagonal(offset=-seq_len, dim1=-2, dim2=-1)[..., -seq_len:].mean(dim=(0, -1))


def head_scores(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> dict[str, Float[Tensor, "n_layers n_heads"]]:
    """All three detector scores for every head, from one forward pass on ``[BOS] + r + r`` tokens."""
    return _scores_and_logits(model, tokens)[0]


def _scores_and_logits(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]):
    seq_len = (tokens.shape[1] - 1) // 2
    names = [full_hook_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=names)
    patterns = [cache[n] for n in names]
    scores = {"prev_token": torch.stack([prev_token_score(p) for p in patterns]),
              "induction": torch.stack([induction_score(p, seq_len) for p in patterns]),
              "duplicate_token": torch.stack([duplicate_token_score(p, seq_len) for p in patterns])}
    return scores, logits


def find_induction_heads(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], threshold: float
) -> Bool[Tensor, "n_layers n_heads"]:
    """Which heads have an induction score above ``threshold`` on the ``[BOS] + r + r`` ``tokens``."""
    seq_len = (tokens.shape[1] - 1) // 2
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    scores = torch.stack([induction_score(cache["pattern", layer], seq_len) for layer in range(model.cfg.n_layers)])
    return scores > threshold


# ----- metrics ----------------------------------------------------------------------------------------
def repeated_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
    """Mean next-token loss on the second copy of ``[BOS] + r + r``, over the tokens induction can
    predict: all but its first (``r[0]`` follows ``r[-1]``, which is random)."""
    seq_len = (tokens.shape[1] - 1) // 2
    return per_position_loss(logits, tokens)[:, seq_len + 1 : 2 * seq_len].mean()


def first_copy_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
    """The same for the first copy (tokens 2 .. seq_len of ``r``), which nothing in context predicts."""
    seq_len = (tokens.shape[1] - 1) // 2
    return per_position_loss(logits, tokens)[:, 1:seq_len].mean()


def in_context_learning_score(
    loss_per_position: Float[Tensor, "batch pos"], early: int = 8, late: int = 80, width: int = 10
) -> float:
    """Olsson et al.'s ICL score: mean loss at late positions minus mean loss at early ones
    (``[late, late+width)`` and ``[early, early+width)``). Negative: the model predicts better when
    it has more context to draw on."""
    lp = loss_per_position
    return (lp[:, late : late + width].mean() - lp[:, early : early + width].mean()).item()


# ----- ablation ---------------------------------------------------------------------------------------
def per_position_loss_with_heads_ablated(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], heads: Sequence[tuple[int, int]]
) -> Float[Tensor, "batch pos_minus_1"]:
    """Next-token loss at every position with every ``(layer, head)`` in ``heads`` zero-ablated."""
    hooks = [(full_hook_name("z", layer), head_ablation_hook(head)) for layer, head in heads]
    with torch.no_grad():
        return per_position_loss(model.run_with_hooks(tokens, hooks), tokens)


def loss_with_heads_ablated(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], heads: Sequence[tuple[int, int]]
) -> Float[Tensor, ""]:
    """:func:`repeated_loss` with every ``(layer, head)`` in ``heads`` zero-ablated (its ``z`` set to 0)."""
    hooks = [(full_hook_name("z", layer), head_ablation_hook(head)) for layer, head in heads]
    with torch.no_grad():
        return repeated_loss(model.run_with_hooks(tokens, hooks), tokens)


def loss_with_head_ablated(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], layer: int, head: int
) -> Float[Tensor, ""]:
    """:func:`repeated_loss` on ``[BOS] + r + r`` with head ``head`` of layer ``layer`` zero-ablated."""
    return loss_with_heads_ablated(model, tokens, [(layer, head)])


# ----- composition -----------------------------------------------------------------------------------
def k_composition_scores(
    W_V0: Float[Tensor, "n_heads_a d_model d_head"],
    W_O0: Float[Tensor, "n_heads_a d_head d_model"],
    W_Q1: Float[Tensor, "n_heads_b d_model d_head"],
    W_K1: Float[Tensor, "n_heads_b d_model d_head"],
) -> Float[Tensor, "n_heads_a n_heads_b"]:
    """K-composition of every earlier head ``a`` (``W_OV^a = W_V W_O``) with every later head ``b``
    (``W_QK^b = W_Q W_K^T``): ``||W_OV^a W_QK^{bT}||_F / (||W_OV^a||_F ||W_QK^b||_F)``.
    (Row vectors: head ``a``'s output ``y W_OV^a`` enters ``b``'s keys, score ``x_q W_QK^b (y W_OV^a)^T``.)"""
    ov = W_V0 @ W_O0  # [h_a, m, m]
    qk_t = W_K1 @ W_Q1.transpose(-1, -2)  # [h_b, m, m]: W_QK^T
    return composition_score(ov[:, None], qk_t[None])


# ----- an induction circuit built by hand ------------------------------------------------------------
def handcrafted_induction_model(
    d_vocab: int,
    n_ctx: int,
    n_heads: int = 2,
    prev_heads: Sequence[int] = (0,),
    induction_heads: Sequence[int] = (0,),
    sharpness: float = 20.0,
    logit_scale: float = 10.0,
    noise_std: float = 0.02,
    seed: int = 0,
    bos_heads: Sequence[int] = (),
) -> HookedTransformer:
    """A 2-layer attention-only model whose weights implement induction exactly.

    The residual stream (``d_model = 3 d_vocab + n_ctx``) has four one-hot subspaces: the current
    token (``W_E``), the position (``W_pos``), the *previous* token (written by layer 0) and the
    *predicted* token (written by layer 1, the only one ``W_U`` reads).

    - Layer 0, heads ``prev_heads``: the query at position ``p`` matches the key at ``p - 1``
      (positions only); the OV circuit copies that key's token into the previous-token subspace.
    - Layer 1, heads ``induction_heads``: the query's *current* token matches keys whose
      *previous* token is the same (K-composition with layer 0); the OV circuit copies the
      attended token into the predicted-token subspace. A query with no match attends to BOS.
    - Layer 1, heads ``bos_heads``: every query attends to BOS (a resting head); they write nothing.

    Every other head keeps random weights of standard deviation ``noise_std``. ``sharpness`` is an
    attention score (after the ``1/sqrt(d_head)`` scale); ``logit_scale`` the predicted token's logit.
    """
    V, C = d_vocab, n_ctx
    d_head = max(C, V + 1)
    POS, PREV, OUT = V, V + C, 2 * V + C  # offsets of the subspaces (the current token starts at 0)
    cfg = TransformerConfig(d_vocab=V, n_ctx=C, d_model=3 * V + C, n_layers=2, n_heads=n_heads, d_head=d_head,
                            attn_only=True, normalization=None, init_std=noise_std, seed=seed)
    model = HookedTransformer(cfg)
    a = sharpness * math.sqrt(d_head)  # a query entry of `a` against a key entry of 1 scores `sharpness`
    tok, pos = torch.arange(V), torch.arange(C)
    with torch.no_grad():
        for W in (model.W_E, model.W_pos, model.W_U):
            W.zero_()
        model.W_E[tok, tok] = 1.0
        model.W_pos[pos, POS + pos] = 1.0
        model.W_U[OUT + tok[1:], tok[1:]] = logit_scale  # (predicting BOS means: no idea, uniform)
        prev, ind = model.blocks[0].attn, model.blocks[1].attn
        for attn, heads in ((prev, prev_heads), (ind, (*induction_heads, *bos_heads))):
            for h in heads:
                for W in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O, attn.b_Q, attn.b_K, attn.b_V):
                    W[h].zero_()
        for h in prev_heads:
            prev.W_Q[h, POS + pos, pos] = a  # query at p: coordinate p
            prev.W_K[h, POS + pos[:-1], pos[:-1] + 1] = 1.0  # key at p': coordinate p' + 1
            prev.W_V[h, tok, tok] = 1.0  # read the key's token ...
            prev.W_O[h, tok, PREV + tok] = 1.0  # ... and write it as "previous token"
        for h in induction_heads:
            ind.W_Q[h, tok, tok] = a  # query: my current token
            ind.W_K[h, PREV + tok, tok] = 1.0  # key: your previous token
            ind.b_Q[h, V] = a  # every query also scores sharpness / 2 on BOS (position 0):
            ind.W_K[h, POS, V] = 0.5  # the fallback when no earlier token matches
            ind.W_V[h, tok, tok] = 1.0  # read the attended token ...
            ind.W_O[h, tok, OUT + tok] = 1.0  # ... and predict it
        for h in bos_heads:
            ind.b_Q[h, V] = a  # every query scores sharpness on BOS (position 0), 0 elsewhere
            ind.W_K[h, POS, V] = 1.0
    model.eval()
    return model


# ----- training a model in which induction heads form ---------------------------------------------------
@dataclass(frozen=True)
class InductionData:
    """The training rows, all ``seq_len`` tokens long and led by BOS: random sequences with repeated
    spans (:func:`repeated_span_sequence`), plus corpus windows if ``corpus_fraction > 0``."""

    seq_len: int = 96
    span_lengths: tuple[int, ...] = tuple(range(5, 10))  # never 10..40: the lengths we test on
    p_copy: float = 0.8
    corpus_fraction: float = 0.0
    n_repeat_sequences: int = 6000
    n_corpus_stories: int = 4000
    seed: int = 0

    def to_dict(self) -> dict:
        return {**self.__dict__, "span_lengths": list(self.span_lengths)}


def induction_training_data(spec: InductionData) -> Int[Tensor, "n seq"]:
    """``[n, seq_len]`` rows: ``spec.n_repeat_sequences`` repeated-span sequences plus enough corpus
    windows to make up ``spec.corpus_fraction`` of the rows (in random order)."""
    d_vocab = CharTokenizer.default().vocab_size
    rng = random.Random(spec.seed)
    rows = torch.tensor([repeated_span_sequence(rng, spec.seq_len, d_vocab, spec.span_lengths, spec.p_copy)
                         for _ in range(spec.n_repeat_sequences)])
    gen = torch.Generator().manual_seed(spec.seed)
    n_corpus = round(spec.n_repeat_sequences * spec.corpus_fraction / (1 - spec.corpus_fraction))
    if n_corpus > 0:
        corpus, _ = corpus_dataset(seq_len=spec.seq_len, n_stories=spec.n_corpus_stories, seed=spec.seed)
        rows = torch.cat([corpus[torch.randperm(len(corpus), generator=gen)[:n_corpus]], rows])
    return rows[torch.randperm(len(rows), generator=gen)]


@dataclass(frozen=True)
class InductionTraining:
    """AdamW with a warm-up and a final decay of the learning rate, and a *window-length* schedule:
    the model first sees only the first ``short_len`` tokens of each row, and from ``grow_from`` to
    ``grow_until`` the window grows linearly to the full row. While attention is still spread evenly, the signal that
    rewards looking at the right earlier token is diluted over every earlier position; short
    windows make it stronger, so the circuit forms sooner (and each step is cheaper)."""

    steps: int = 850
    batch_size: int = 32
    lr: float = 2e-2
    warmup_steps: int = 50
    weight_decay: float = 0.01
    decay_from: int = 650
    short_len: int = 32
    grow_from: int = 350
    grow_until: int = 600
    seed: int = 0

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then a linear decay to a tenth from ``decay_from`` on."""
        decay = max(0.0, (step - self.decay_from) / max(1, self.steps - self.decay_from))
        return self.lr * min(1.0, (step + 1) / self.warmup_steps) * (1 - 0.9 * decay)

    def window(self, step: int, seq_len: int) -> int:
        frac = min(1.0, max(0.0, (step - self.grow_from) / max(1, self.grow_until - self.grow_from)))
        return round(self.short_len + frac * (seq_len - self.short_len))

    def to_dict(self) -> dict:
        return dict(self.__dict__)


TEST_LENGTHS = (10, 20, 30, 40)


class InductionLogger:
    """Metrics measured every ``every`` steps during training (call it after each step):

    - ``repeat_loss``: :func:`repeated_loss` on held-out ``[BOS] + r + r`` for each of ``TEST_LENGTHS``
      (a list per log point) and ``mean_repeat_loss``, their mean;
    - ``induction`` and ``prev_token``: the best head's score (per head: mean over the lengths);
    - ``icl``: the in-context-learning score on ``icl_rows`` (held-out corpus windows);
    - ``seconds`` since the logger was made (training and logging together), and ``cpu_seconds``,
      the CPU time of this process over the same span (all threads).
    """

    def __init__(self, d_vocab: int, icl_rows: Int[Tensor, "n seq"], every: int = 20, seed: int = 1) -> None:
        self.every = every
        self.tests = [generate_repeated_tokens(16, n, d_vocab, seed=seed + n) for n in TEST_LENGTHS]
        self.icl_rows = icl_rows
        self.history: dict[str, list] = {k: [] for k in (
            "step", "seconds", "cpu_seconds", "repeat_loss", "mean_repeat_loss", "induction", "prev_token", "icl")}
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    @torch.no_grad()
    def __call__(self, step: int, model: HookedTransformer, force: bool = False) -> None:
        """Measure ``model`` if ``step`` is a multiple of ``every`` (or ``force``)."""
        if step % self.every and not force:
            return
        losses, induction, prev = [], [], []
        for tokens in self.tests:
            scores, logits = _scores_and_logits(model, tokens)
            losses.append(repeated_loss(logits, tokens).item())
            induction.append(scores["induction"])
            prev.append(scores["prev_token"])
        h = self.history
        h["step"].append(step)
        h["seconds"].append(time.perf_counter() - self.start)
        h["cpu_seconds"].append(time.process_time() - self.cpu_start)
        h["repeat_loss"].append(losses)
        h["mean_repeat_loss"].append(sum(losses) / len(losses))
        h["induction"].append(torch.stack(induction).mean(0).max().item())
        h["prev_token"].append(torch.stack(prev).mean(0).max().item())
        h["icl"].append(in_context_learning_score(per_position_loss(model(self.icl_rows), self.icl_rows)))


def phase_change_index(history: dict, loss_below: float = 1.0, score_above: float = 0.7) -> int | None:
    """The first log point where the mean repeat loss is below ``loss_below`` nats and the best
    induction score above ``score_above`` (``None`` if that never happens)."""
    for i, (loss, score) in enumerate(zip(history["mean_repeat_loss"], history["induction"])):
        if loss < loss_below and score > score_above:
            return i
    return None


INDUCTION_DATA = InductionData()
INDUCTION_MODEL = TransformerConfig(
    d_vocab=CharTokenizer.default().vocab_size, n_ctx=INDUCTION_DATA.seq_len, d_model=64, n_layers=2, n_heads=2,
    d_head=32, attn_only=True, normalization=None, seed=0,
)
INDUCTION_TRAIN = InductionTraining()


def train_induction_model(
    model_cfg: TransformerConfig = INDUCTION_MODEL,
    data: InductionData = INDUCTION_DATA,
    cfg: InductionTraining = INDUCTION_TRAIN,
    log_every: int = 20,
    progress: bool = True,
) -> tuple[HookedTransformer, dict]:
    """Train the attention-only model on the induction mixture, measuring it with :class:`InductionLogger`.

    Returns the model and the history: the logger's lists plus, for every step, ``train_loss``,
    ``train_loss_first`` (the loss on the first ``short_len`` positions, which every window covers)
    and ``window`` (the window length).
    """
    rows = induction_training_data(data)  # made before the clock starts
    held_out_text = corpus_dataset(seq_len=data.seq_len, n_stories=400, seed=data.seed + 1)[0][:64]
    model = HookedTransformer(with_training_seed(model_cfg))  # seeds move with $TINYINTERP_SEED_OFFSET
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(training_seed(cfg.seed))
    logger = InductionLogger(model_cfg.d_vocab, held_out_text, every=log_every)
    train_loss, train_loss_first, windows = [], [], []
    model.train()
    for step in tqdm(range(cfg.steps), desc="training", disable=not progress, mininterval=1.0):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        window = cfg.window(step, rows.shape[1])
        batch = rows[torch.randint(0, len(rows), (cfg.batch_size,), generator=gen), :window]
        per_token = per_position_loss(model(batch), batch)
        loss = per_token.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_loss.append(loss.item())
        train_loss_first.append(per_token[:, : cfg.short_len - 1].mean().item())
        windows.append(window)
        logger(step, model)
    logger(cfg.steps, model, force=True)  # the final model
    model.eval()
    return model, {**logger.history, "train_loss": train_loss, "train_loss_first": train_loss_first,
                   "window": windows, "log_every": log_every}


def induction_model(progress: bool = True) -> tuple[HookedTransformer, CharTokenizer, dict]:
    """The chapter's trained model, cached on disk: ``(model, tokenizer, history)``."""
    source = source_hash("induction")[:12]
    spec = {"model": INDUCTION_MODEL.to_dict(), "data": INDUCTION_DATA.to_dict(), "train": INDUCTION_TRAIN.to_dict(),
            "source": source}
    model, history = cached_model("induction", spec, lambda: train_induction_model(progress=progress))
    return model, CharTokenizer.default(), history
