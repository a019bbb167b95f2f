"""Toy movie reviews whose label the generator knows exactly, and a tiny transformer classifier trained
on them (Part V: post-hoc explanations, and the shortcut capstone).

A review is up to :data:`N_WORDS` words, left-padded with ``<pad>``, then ``<cls>``: ``[batch, N_WORDS + 1]``
tokens. Most words are neutral (:data:`NEUTRAL`); an odd number (1, 3 or 5) are sentiment words, from
:data:`POSITIVE` or :data:`NEGATIVE`. The label is the majority: 1 (positive) when more sentiment words are
positive than negative. So the ground truth of "which words matter" is known: the sentiment words, with
sign +1 (positive) or -1 (negative), :attr:`Reviews.relevance`; neutral words and padding are 0.

The classifier is a :class:`~tinyinterp.model.HookedTransformer` read at the ``<cls>`` position: its
score is ``logit[<positive>] - logit[<negative>]`` there (:func:`score`), and P(positive) is the score's
sigmoid. It is trained with a logistic loss on that score, nothing else.

**A planted shortcut** (chapter 14). ``generate_reviews(..., shortcut="film", p_shortcut=(0.0, 1.0))`` puts
the word "film" into a review with probability 0.0 when the label is negative and 1.0 when positive
(replacing a neutral word), and never elsewhere. In training data so made, "film" predicts the label
perfectly; at deployment (``p_shortcut=(0.5, 0.5)``) it says nothing about it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .brackets import _check_int  # the same input check: an int (never a bool or float) >= a minimum
from .checkpoint import cached_model, source_hash
from .config import TransformerConfig
from .model import HookedTransformer
from .seeds import training_seed, with_training_seed

PAD, CLS, LABEL_NEG, LABEL_POS = "<pad>", "<cls>", "<negative>", "<positive>"
NEUTRAL = ("the", "film", "plot", "was", "and", "actors", "very", "it", "but", "ending", "story", "music")
POSITIVE = ("good", "great", "fun", "moving")
NEGATIVE = ("bad", "dull", "awful", "boring")
VOCAB = (PAD, CLS, LABEL_NEG, LABEL_POS) + NEUTRAL + POSITIVE + NEGATIVE
TOKEN = {w: i for i, w in enumerate(VOCAB)}
N_WORDS = 12  # words per review at most; the tokens are [batch, N_WORDS + 1] with <cls> last
SEQ_LEN = N_WORDS + 1
SENTIMENT_COUNTS = (1, 3, 5)
MIN_WORDS = 6


@dataclass
class Reviews:
    """A batch of reviews: ``tokens [n, SEQ_LEN]``, ``labels [n]`` (1 = positive), ``relevance [n, SEQ_LEN]``
    (+1 positive word, -1 negative word, 0 elsewhere), ``has_shortcut [n]`` (the shortcut word is in it)."""

    tokens: Int[Tensor, "n pos"]
    labels: Int[Tensor, "n"]
    relevance: Float[Tensor, "n pos"]
    has_shortcut: torch.Tensor

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index) -> "Reviews":
        return Reviews(self.tokens[index], self.labels[index], self.relevance[index], self.has_shortcut[index])


def _check_shortcut(shortcut, p_shortcut) -> tuple[float, float]:
    if shortcut is None:
        return (0.0, 0.0)
    if shortcut not in NEUTRAL:
        raise ValueError(f"the shortcut must be one of the neutral words {NEUTRAL}, got {shortcut!r}")
    if not (isinstance(p_shortcut, (tuple, list)) and len(p_shortcut) == 2
            and all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p <= 1 for p in p_shortcut)):
        raise ValueError(f"p_shortcut must be (P(shortcut | negative), P(shortcut | positive)), two numbers in "
                         f"[0, 1], got {p_shortcut!r}")
    return float(p_shortcut[0]), float(p_shortcut[1])


def generate_reviews(n: int, seed: int = 0, shortcut: str | None = None,
                     p_shortcut: tuple[float, float] = (0.0, 1.0)) -> Reviews:
    """``n`` reviews, half positive and half negative (see the module doc). Deterministic in ``seed``.

    With ``shortcut`` (a neutral word), it is left out of the neutral words and put into each review with
    probability ``p_shortcut[label]``, at a random word position (never the only word it replaces is a
    sentiment word)."""
    _check_int("n", n, 1)
    _check_int("seed", seed, -(2**63))
    p_neg, p_pos = _check_shortcut(shortcut, p_shortcut)
    g = torch.Generator().manual_seed(seed)
    neutral = torch.tensor([TOKEN[w] for w in NEUTRAL if w != shortcut])
    pos_ids, neg_ids = torch.tensor([TOKEN[w] for w in POSITIVE]), torch.tensor([TOKEN[w] for w in NEGATIVE])
    tokens = torch.full((n, SEQ_LEN), TOKEN[PAD], dtype=torch.long)
    tokens[:, -1] = TOKEN[CLS]
    relevance = torch.zeros(n, SEQ_LEN)
    labels = (torch.arange(n) % 2).long()[torch.randperm(n, generator=g)]
    has_shortcut = torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        length = int(torch.randint(MIN_WORDS, N_WORDS + 1, (1,), generator=g))
        k = SENTIMENT_COUNTS[int(torch.randint(len(SENTIMENT_COUNTS), (1,), generator=g))]
        majority = int(torch.randint(k // 2 + 1, k + 1, (1,), generator=g))  # words on the label's side
        n_pos = majority if labels[i] == 1 else k - majority
        start = N_WORDS - length
        words = neutral[torch.randint(len(neutral), (length,), generator=g)]
        slots = torch.randperm(length, generator=g)
        sentiment_slots, free = slots[:k], slots[k:]
        words[sentiment_slots[:n_pos]] = pos_ids[torch.randint(len(pos_ids), (n_pos,), generator=g)]
        words[sentiment_slots[n_pos:]] = neg_ids[torch.randint(len(neg_ids), (k - n_pos,), generator=g)]
        relevance[i, start + sentiment_slots[:n_pos]] = 1.0
        relevance[i, start + sentiment_slots[n_pos:]] = -1.0
        u = float(torch.rand((), generator=g))
        if shortcut is not None and u < (p_pos if labels[i] == 1 else p_neg):
            words[free[0]] = TOKEN[shortcut]
            has_shortcut[i] = True
        tokens[i, start:N_WORDS] = words
    return Reviews(tokens, labels, relevance, has_shortcut)


def encode(text: str) -> Int[Tensor, "pos"]:
    """``"the plot was dull"`` -> the tokens of that review, left-padded, ``<cls>`` appended: ``[SEQ_LEN]``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str of words, got {type(text).__name__}")
    words = text.split()
    unknown = [w for w in words if w not in TOKEN or w in (CLS, LABEL_NEG, LABEL_POS)]
    if unknown:
        raise ValueError(f"unknown words {unknown}: a review uses only {NEUTRAL + POSITIVE + NEGATIVE} (and {PAD})")
    if len(words) > N_WORDS:
        raise ValueError(f"a review has at most {N_WORDS} words, got {len(words)}")
    ids = [TOKEN[PAD]] * (N_WORDS - len(words)) + [TOKEN[w] for w in words] + [TOKEN[CLS]]
    return torch.tensor(ids)


def to_words(tokens: Int[Tensor, "pos"]) -> list[str]:
    """The words of one review's tokens (padding and ``<cls>`` included), for labelling plots."""
    if not isinstance(tokens, Tensor) or tokens.ndim != 1 or tokens.is_floating_point():
        raise TypeError("to_words takes one review's integer tokens [pos]")
    if tokens.numel() and not (0 <= int(tokens.min()) and int(tokens.max()) < len(VOCAB)):
        raise ValueError(f"token ids must lie in 0 .. {len(VOCAB) - 1}")
    return [VOCAB[t] for t in tokens.tolist()]


# ----- the classifier -------------------------------------------------------------------------------
def _check_model_tokens(model, tokens) -> Tensor:
    if not isinstance(model, HookedTransformer):
        raise TypeError(f"model must be a HookedTransformer, got {type(model).__name__}")
    if not isinstance(tokens, Tensor) or tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be an integer tensor [batch, pos], got "
                        f"{tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__}")
    return tokens.unsqueeze(0) if tokens.ndim == 1 else tokens


def score_from_logits(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch"]:
    """``logit[<positive>] - logit[<negative>]`` at the last position (``<cls>``)."""
    return logits[:, -1, TOKEN[LABEL_POS]] - logits[:, -1, TOKEN[LABEL_NEG]]


def score(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch"]:
    """The classifier's score for each review (positive means "positive"); P(positive) = sigmoid(score)."""
    return score_from_logits(model(_check_model_tokens(model, tokens)))


def score_of_embeddings(model: HookedTransformer, embeddings: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch"]:
    """The score computed from token embeddings (``hook_embed``'s output) in place of tokens: positional
    embeddings and the rest of the model unchanged. Gradient methods differentiate this."""
    if not isinstance(embeddings, Tensor) or embeddings.ndim != 3 or embeddings.shape[-1] != model.cfg.d_model:
        raise ValueError(f"embeddings must be [batch, pos, d_model={model.cfg.d_model}], got "
                         f"{tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__}")
    placeholder = torch.full(embeddings.shape[:2], TOKEN[PAD], dtype=torch.long)
    logits = model.run_with_hooks(placeholder, fwd_hooks=[("hook_embed", lambda act, hook: embeddings)])
    return score_from_logits(logits)


@torch.no_grad()
def accuracy(model: HookedTransformer, reviews: Reviews) -> float:
    """The fraction of reviews whose score has the label's sign."""
    return float(((score(model, reviews.tokens) > 0).long() == reviews.labels).float().mean())


@dataclass(frozen=True)
class ReviewTrain:
    n_reviews: int = 4000
    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    data_seed: int = 0
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


REVIEW_MODEL = TransformerConfig(d_vocab=len(VOCAB), n_ctx=SEQ_LEN, d_model=32, n_layers=1, n_heads=2, d_head=16,
                                 d_mlp=64, seed=0)
REVIEW_TRAIN = ReviewTrain()
TRAIN_SHORTCUT_P = (0.0, 1.0)  # the shortcut word in every positive training review and in no negative one


def train_classifier(data: Reviews, cfg: TransformerConfig = REVIEW_MODEL, train_cfg: ReviewTrain = REVIEW_TRAIN,
                     progress: bool = True, follow_offset: bool = True) -> tuple[HookedTransformer, dict]:
    """Train a classifier on ``data`` with the logistic loss on :func:`score` (AdamW, seeded through
    :func:`~tinyinterp.seeds.training_seed`, or with the seeds as given if ``follow_offset=False``).
    Returns the model and ``{"losses": [...]}``."""
    if not isinstance(data, Reviews):
        raise TypeError(f"data must be Reviews (from generate_reviews), got {type(data).__name__}")
    model = HookedTransformer(with_training_seed(cfg) if follow_offset else cfg)
    g = torch.Generator().manual_seed(training_seed(train_cfg.seed) if follow_offset else train_cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    losses = []
    model.train()
    for _ in tqdm(range(train_cfg.steps), desc="training the review classifier", disable=not progress,
                  mininterval=1.0):
        idx = torch.randint(0, len(data), (train_cfg.batch_size,), generator=g)
        s = score(model, data.tokens[idx])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(s, data.labels[idx].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), {"losses": losses}


def review_model(shortcut: str | None = None, seed: int = 0, shuffle_labels: bool = False,
                 progress: bool = True, follow_offset: bool = True) -> tuple[HookedTransformer, dict]:
    """The review classifier, cached on disk (a few seconds to train on first use): ``(model, history)``.

    ``shortcut=None`` trains on clean reviews; a neutral word trains on reviews where that word appears in
    every positive review and no negative one (:data:`TRAIN_SHORTCUT_P`). ``seed`` moves the model's
    initialisation and batch order (the data stays the same). ``shuffle_labels=True`` trains on the same
    reviews with their labels randomly permuted (the data-randomisation test of Adebayo et al. 2018: a
    model that can only memorise). ``follow_offset=False``: trained from the seeds as given whatever
    ``$TINYINTERP_SEED_OFFSET`` says (for exercises' test cases, which never move with the offset)."""
    p = _check_shortcut(shortcut, TRAIN_SHORTCUT_P)
    _check_int("seed", seed, 0)
    cfg = REVIEW_MODEL if seed == 0 else REVIEW_MODEL.__class__(**{**REVIEW_MODEL.to_dict(), "seed": seed})
    train_cfg = REVIEW_TRAIN if seed == 0 else ReviewTrain(**{**REVIEW_TRAIN.to_dict(), "seed": seed})
    if not isinstance(shuffle_labels, bool):
        raise TypeError(f"shuffle_labels must be a bool, got {shuffle_labels!r}")
    spec = {"model": cfg.to_dict(), "train": train_cfg.to_dict(), "shortcut": shortcut, "p_shortcut": list(p),
            "shuffle_labels": shuffle_labels, "source": source_hash("reviews")[:12]}

    def build():
        data = generate_reviews(train_cfg.n_reviews, seed=train_cfg.data_seed, shortcut=shortcut, p_shortcut=p)
        if shuffle_labels:
            data.labels = data.labels[torch.randperm(len(data), generator=torch.Generator().manual_seed(1))]
        return train_classifier(data, cfg, train_cfg, progress=progress, follow_offset=follow_offset)

    return cached_model("reviews", spec, build, follow_offset=follow_offset)


__all__ = ["PAD", "CLS", "LABEL_NEG", "LABEL_POS", "NEUTRAL", "POSITIVE", "NEGATIVE", "VOCAB", "TOKEN", "N_WORDS",
           "SEQ_LEN", "Reviews", "generate_reviews", "encode", "to_words", "score", "score_from_logits",
           "score_of_embeddings", "accuracy", "REVIEW_MODEL", "REVIEW_TRAIN", "ReviewTrain", "TRAIN_SHORTCUT_P",
           "train_classifier", "review_model"]
