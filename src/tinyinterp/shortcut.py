"""Catching a planted shortcut (chapter 14): find the word a review classifier relies on, the component that
carries it, and fix it, with counterfactual data or by ablating the word.

The setting is :mod:`tinyinterp.reviews`: ``review_model(shortcut="film")`` is trained on reviews where
"film" appears in every positive review and in no negative one, so "film" predicts the label perfectly in
training. At deployment (:func:`deployment_reviews`) the word is in half the reviews of each class and says
nothing about the label.

- :func:`word_effects`: per vocabulary word, the mean change of the score when the word replaces one
  neutral word of a review (one slot at a time). For a model that learnt the label rule, a neutral word
  moves the score by little; a shortcut word moves it a lot.
- :func:`find_shortcut_token`: the neutral word with the largest absolute mean effect.
- :func:`head_shortcut_effect`: activation patching per head: how much of the shortcut's effect on the
  score goes away when one head's output is taken from the run without the shortcut.
- :func:`counterfactual_augment`: each training review plus a copy with the shortcut toggled (removed where
  it is, inserted where it is not), label unchanged, so the word is independent of the label.
- :func:`ablate_token_embedding`: the model with one word's embedding replaced by the mean of other words'.
"""

from __future__ import annotations

import copy

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from . import reviews as R
from .checkpoint import cached_model, source_hash
from .model import HookedTransformer

NEUTRAL_IDS = tuple(R.TOKEN[w] for w in R.NEUTRAL)
WORD_IDS = tuple(R.TOKEN[w] for w in R.NEUTRAL + R.POSITIVE + R.NEGATIVE)
DEPLOYMENT_P = (0.5, 0.5)  # at deployment the shortcut word is in half the reviews of each class


# ----- input checks -----------------------------------------------------------------------------------
def _check_tokens(tokens) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be an integer tensor [batch, pos], got "
                        f"{tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__}")
    if tokens.shape[1] != R.SEQ_LEN:
        raise ValueError(f"review tokens are [batch, {R.SEQ_LEN}] (12 words and <cls>), got {tuple(tokens.shape)}")
    return tokens


def _check_slots(slots, tokens: Tensor) -> Tensor:
    if not isinstance(slots, Tensor) or slots.dtype != torch.bool or slots.shape != tokens.shape:
        raise ValueError(f"slots must be a bool tensor shaped like tokens {tuple(tokens.shape)}")
    if not slots.any():
        raise ValueError("slots marks no position: there is nothing to swap a word into")
    if slots[:, -1].any():
        raise ValueError("slots must not include the last position: that is <cls>, not a word")
    return slots


def _check_word(name: str, word_id) -> int:
    if isinstance(word_id, bool) or not isinstance(word_id, int) or word_id not in WORD_IDS:
        raise ValueError(f"{name} must be the token id of a word ({min(WORD_IDS)} .. {max(WORD_IDS)}), got {word_id!r}")
    return word_id


def _check_model(model) -> HookedTransformer:
    if not isinstance(model, HookedTransformer):
        raise TypeError(f"model must be a HookedTransformer, got {type(model).__name__}")
    return model


# ----- the data ------------------------------------------------------------------------------------------
def deployment_reviews(shortcut: str, n: int = 2000, seed: int = 1) -> R.Reviews:
    """Reviews as at deployment: the shortcut word in half the reviews of each class, independent of the label."""
    return R.generate_reviews(n, seed=seed, shortcut=shortcut, p_shortcut=DEPLOYMENT_P)


def conflicting(reviews: R.Reviews) -> Bool[Tensor, "n"]:
    """The reviews where the shortcut says the opposite of the label: the word in a negative review, or
    missing from a positive one."""
    return reviews.has_shortcut != reviews.labels.bool()


def neutral_slots(tokens: Int[Tensor, "batch pos"], exclude: tuple[int, ...] = ()) -> Bool[Tensor, "batch pos"]:
    """Where a review holds a neutral word (not one of ``exclude``): the slots a word can be swapped into
    without changing the label."""
    tokens = _check_tokens(tokens)
    ids = torch.tensor([i for i in NEUTRAL_IDS if i not in exclude])
    return torch.isin(tokens, ids)


# ----- finding the shortcut ------------------------------------------------------------------------------
@torch.no_grad()
def word_effects(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], slots: Bool[Tensor, "batch pos"],
                 word_ids: Int[Tensor, "n_words"]) -> Float[Tensor, "n_words"]:
    """For each word in ``word_ids``: the mean, over every marked slot ``(review, position)`` of ``slots``,
    of ``score(review with that one position replaced by the word) - score(review)``.

    One slot is replaced at a time; the mean is over all marked slots of all reviews together."""
    _check_model(model)
    tokens, word_ids = _check_tokens(tokens), torch.as_tensor(word_ids)
    slots = _check_slots(slots, tokens)
    if word_ids.ndim != 1 or word_ids.is_floating_point() or not torch.isin(word_ids, torch.tensor(WORD_IDS)).all():
        raise ValueError(f"word_ids must be a 1-d tensor of word token ids, got {word_ids}")
    rows, cols = slots.nonzero(as_tuple=True)  # one entry per marked slot
    base = R.score(model, tokens)[rows]
    effects = []
    for w in word_ids.tolist():
        swapped = tokens[rows].clone()
        swapped[torch.arange(len(rows)), cols] = w
        effects.append((R.score(model, swapped) - base).mean())
    return torch.stack(effects)


def find_shortcut_token(model: HookedTransformer, tokens: Int[Tensor, "batch pos"],
                        slots: Bool[Tensor, "batch pos"]) -> int:
    """The token id of the neutral word (:data:`tinyinterp.reviews.NEUTRAL`) whose :func:`word_effects` has
    the largest absolute value: the word the label rule says is irrelevant but the model does not ignore."""
    effects = word_effects(model, tokens, slots, torch.tensor(NEUTRAL_IDS))
    return NEUTRAL_IDS[int(effects.abs().argmax())]


def remove_word(tokens: Int[Tensor, "batch pos"], word_id: int, filler_id: int) -> Int[Tensor, "batch pos"]:
    """``tokens`` with every ``word_id`` replaced by ``filler_id`` (the corrupted run of patching)."""
    tokens = _check_tokens(tokens)
    _check_word("word_id", word_id)
    _check_word("filler_id", filler_id)
    return torch.where(tokens == word_id, filler_id, tokens)


@torch.no_grad()
def head_shortcut_effect(model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"],
                         corrupted_tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "n_layers n_heads"]:
    """Activation patching per head: ``mean(score(clean) - score(clean with head (L, H)'s output, hook_z at
    every position, taken from the corrupted run)))`` over the batch. With ``corrupted_tokens`` the clean
    reviews with the shortcut word replaced, each entry is the part of the shortcut's effect that goes
    through that head."""
    _check_model(model)
    clean, corrupted = _check_tokens(clean_tokens), _check_tokens(corrupted_tokens)
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean and corrupted tokens differ in shape: {tuple(clean.shape)} vs "
                         f"{tuple(corrupted.shape)}")
    cfg = model.cfg
    _, cache = model.run_with_cache(corrupted, names_filter=[f"blocks.{L}.attn.hook_z" for L in range(cfg.n_layers)])
    base = R.score(model, clean)
    out = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=base.dtype)
    for L in range(cfg.n_layers):
        for H in range(cfg.n_heads):
            def patch(z, hook, L=L, H=H):
                z = z.clone()
                z[:, :, H] = cache[f"blocks.{L}.attn.hook_z"][:, :, H]
                return z
            patched = R.score_from_logits(model.run_with_hooks(clean, [(f"blocks.{L}.attn.hook_z", patch)]))
            out[L, H] = (base - patched).mean()
    return out


# ----- fixing it ------------------------------------------------------------------------------------------------
def counterfactual_augment(tokens: Int[Tensor, "n pos"], labels: Int[Tensor, "n"], shortcut_id: int,
                           filler_id: int) -> tuple[Int[Tensor, "2n pos"], Int[Tensor, "2n"]]:
    """The reviews followed by their counterfactual copies, labels unchanged: in a copy the shortcut word is
    toggled, replaced by ``filler_id`` wherever it is, or, in a review without it, written over the first
    (leftmost) neutral word. Then each class has the word in exactly half its reviews."""
    tokens = _check_tokens(tokens)
    _check_word("shortcut_id", shortcut_id)
    _check_word("filler_id", filler_id)
    if filler_id == shortcut_id or filler_id not in NEUTRAL_IDS:
        raise ValueError("filler_id must be a neutral word other than the shortcut")
    if not isinstance(labels, Tensor) or labels.shape != tokens.shape[:1]:
        raise ValueError(f"labels must be a tensor [{len(tokens)}], one per review")
    has = (tokens == shortcut_id).any(1)
    copy_ = torch.where(tokens == shortcut_id, filler_id, tokens)
    neutral = neutral_slots(tokens, exclude=(shortcut_id,))
    if not neutral[~has].any(1).all():
        raise ValueError("a review without the shortcut has no neutral word to write it over")
    first = neutral.float().argmax(1)  # the first neutral position of each review
    rows = (~has).nonzero(as_tuple=True)[0]
    copy_[rows, first[rows]] = shortcut_id
    return torch.cat([tokens, copy_]), torch.cat([labels, labels])


def augmented_model(shortcut: str, filler: str = "the", progress: bool = True) -> tuple[HookedTransformer, dict]:
    """The review classifier retrained on :func:`counterfactual_augment` of the shortcut model's training
    data (same model and training settings; twice the reviews), cached on disk (a few seconds to train)."""
    R._check_shortcut(shortcut, R.TRAIN_SHORTCUT_P)
    cfg, train_cfg = R.REVIEW_MODEL, R.REVIEW_TRAIN
    spec = {"model": cfg.to_dict(), "train": train_cfg.to_dict(), "shortcut": shortcut,
            "p_shortcut": list(R.TRAIN_SHORTCUT_P), "augment": f"counterfactual toggle, filler {filler}",
            "source": source_hash("shortcut")[:12]}

    def build():
        data = R.generate_reviews(train_cfg.n_reviews, seed=train_cfg.data_seed, shortcut=shortcut,
                                  p_shortcut=R.TRAIN_SHORTCUT_P)
        tokens, labels = counterfactual_augment(data.tokens, data.labels, R.TOKEN[shortcut], R.TOKEN[filler])
        has = (tokens == R.TOKEN[shortcut]).any(1)
        aug = R.Reviews(tokens, labels, torch.cat([data.relevance, data.relevance]), has)
        return R.train_classifier(aug, cfg, train_cfg, progress=progress)

    return cached_model("reviews", spec, build)


def ablate_token_embedding(model: HookedTransformer, token_id: int, replacement_ids) -> HookedTransformer:
    """A copy of ``model`` whose embedding of ``token_id`` is the mean embedding of ``replacement_ids``: the
    model can no longer tell the word from an average of those words. No retraining."""
    _check_model(model)
    _check_word("token_id", token_id)
    ids = [_check_word("replacement id", int(i)) for i in replacement_ids]
    if not ids:
        raise ValueError("replacement_ids is empty")
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.embed.W_E[token_id] = model.embed.W_E[ids].mean(0)
    return out


__all__ = ["NEUTRAL_IDS", "WORD_IDS", "DEPLOYMENT_P", "deployment_reviews", "conflicting", "neutral_slots",
           "word_effects", "find_shortcut_token", "remove_word", "head_shortcut_effect", "counterfactual_augment",
           "augmented_model", "ablate_token_embedding"]
