"""Data with no downloads: a character-level tokenizer and a corpus from a small stochastic grammar.

The stories reuse a handful of names, places and objects within each story, so a model that
copies a name it saw earlier in its context predicts better: later chapters need that
(in-context copying, induction heads).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

BOS = "\x02"  # beginning-of-sequence character, token id 0

NAMES = ["Ada", "Bram", "Cleo", "Dov", "Esme", "Finn", "Gus", "Hana", "Ivo", "Juno",
         "Kai", "Lena", "Milo", "Nia", "Otto", "Pia", "Quin", "Rosa", "Sami", "Tove"]
PLACES = ["the market", "the harbour", "the library", "the garden", "the mill", "the station",
          "the bakery", "the bridge", "the forest", "the tower"]
OBJECTS = ["lantern", "map", "kettle", "violin", "compass", "basket", "clock", "kite", "key", "book"]
ADJECTIVES = ["old", "red", "small", "shiny", "heavy", "strange", "blue", "broken"]
VERBS_GO = ["walked to", "ran to", "went to", "hurried to"]
VERBS_FIND = ["found", "lost", "bought", "saw", "dropped"]
FEELINGS = ["happy", "tired", "curious", "worried", "glad"]


def generate_story(rng: random.Random) -> str:
    """One short story. Characters and objects introduced early come back later."""
    a, b = rng.sample(NAMES, 2)
    place, place2 = rng.sample(PLACES, 2)
    obj = rng.choice(OBJECTS)
    adj = rng.choice(ADJECTIVES)
    sentences = [f"{a} and {b} {rng.choice(VERBS_GO)} {place}."]
    templates = [
        lambda: f"{a} {rng.choice(VERBS_FIND)} a {adj} {obj}.",
        lambda: f"{b} said that the {obj} was {adj}.",
        lambda: f"Then {a} gave the {obj} to {b}.",
        lambda: f"{b} {rng.choice(VERBS_GO)} {place2} with the {obj}.",
        lambda: f"{a} felt {rng.choice(FEELINGS)}.",
        lambda: f"Later, {b} asked {a} about the {obj}.",
        lambda: f"At {place}, {a} saw {b} again.",
    ]
    for _ in range(rng.randint(2, 5)):
        sentences.append(rng.choice(templates)())
    sentences.append(f"In the end, {rng.choice([a, b])} kept the {obj}.")
    return " ".join(sentences)


def generate_corpus(n_stories: int = 2000, seed: int = 0) -> str:
    """A seeded corpus of ``n_stories`` stories, one per line."""
    rng = random.Random(seed)
    return "\n".join(generate_story(rng) for _ in range(n_stories)) + "\n"


def load_text(path: str | Path) -> str:
    """Read any local UTF-8 text file to train on instead of the built-in corpus."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no text file at {path}")
    return path.read_text(encoding="utf-8")


class CharTokenizer:
    """Characters to integer ids. Id 0 is reserved for BOS."""

    def __init__(self, chars: str | list[str]) -> None:
        vocab = sorted(set(chars) - {BOS})
        self.itos: list[str] = [BOS] + vocab
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @classmethod
    def default(cls) -> "CharTokenizer":
        """The tokenizer of the built-in corpus (a fixed alphabet, independent of the seed)."""
        words = NAMES + PLACES + OBJECTS + ADJECTIVES + VERBS_GO + VERBS_FIND + FEELINGS
        extra = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,\n"
        return cls(sorted(set("".join(words) + extra)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str, prepend_bos: bool = False) -> Int[Tensor, "pos"]:
        unknown = sorted(set(text) - set(self.stoi))
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown!r}")
        ids = ([0] if prepend_bos else []) + [self.stoi[c] for c in text]
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Tensor | list[int]) -> str:
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return "".join(self.itos[i] for i in ids)

    def to_str_tokens(self, ids: Tensor | list[int]) -> list[str]:
        """One display string per token (BOS shown as <bos>, newline as \\n, space as ␣)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        show = {BOS: "<bos>", "\n": "\\n", " ": "␣"}
        return [show.get(self.itos[i], self.itos[i]) for i in ids]


def make_windows(
    token_ids: Int[Tensor, "n"], seq_len: int, prepend_bos: bool = True
) -> Int[Tensor, "n_windows seq"]:
    """Cut a long token stream into non-overlapping windows, each optionally starting with BOS."""
    body = seq_len - 1 if prepend_bos else seq_len
    n = len(token_ids) // body
    if n == 0:
        raise ValueError(f"text of {len(token_ids)} tokens is shorter than one window of {body}")
    windows = token_ids[: n * body].view(n, body)
    if prepend_bos:
        windows = torch.cat([torch.zeros(n, 1, dtype=torch.long), windows], dim=1)
    return windows


def corpus_dataset(
    seq_len: int = 128, n_stories: int = 4000, seed: int = 0, tokenizer: CharTokenizer | None = None
) -> tuple[Int[Tensor, "n seq"], CharTokenizer]:
    """The built-in corpus, tokenized and cut into BOS-prefixed windows of ``seq_len``."""
    tok = tokenizer or CharTokenizer.default()
    return make_windows(tok.encode(generate_corpus(n_stories, seed)), seq_len), tok
