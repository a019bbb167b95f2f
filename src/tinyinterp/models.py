"""The book's models, trained on first use and cached on disk (see :mod:`tinyinterp.checkpoint`).

Every chapter that needs "the Part I model" calls :func:`part1_model` and gets the same weights;
only the first caller pays for training.
"""

from __future__ import annotations

from .checkpoint import cached_model
from .config import TransformerConfig
from .data import CharTokenizer, corpus_dataset
from .model import HookedTransformer
from .seeds import with_training_seed
from .train import TrainConfig, train

PART1_MODEL = TransformerConfig(
    d_vocab=CharTokenizer.default().vocab_size, n_ctx=128, d_model=64, n_layers=2, n_heads=4,
    d_head=16, d_mlp=256, seed=0,
)
PART1_TRAIN = TrainConfig(steps=600, batch_size=32, lr=3e-3, seed=0)
PART1_DATA = {"seq_len": 128, "n_stories": 4000, "seed": 0}


def part1_model(progress: bool = True) -> tuple[HookedTransformer, CharTokenizer, list[float]]:
    """The tiny 2-layer language model of chapter 3: ``(model, tokenizer, loss_history)``."""
    data, tok = corpus_dataset(**PART1_DATA)

    def build():
        model = HookedTransformer(with_training_seed(PART1_MODEL))  # seeds move with $TINYINTERP_SEED_OFFSET
        result = train(model, data, PART1_TRAIN, progress=progress)
        return model, {"losses": result.losses, "seconds": result.seconds}

    spec = {"model": PART1_MODEL.to_dict(), "train": PART1_TRAIN.to_dict(), "data": PART1_DATA}
    model, extra = cached_model("part1", spec, build)
    return model, tok, list(extra["losses"])
