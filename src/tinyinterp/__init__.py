"""tinyinterp: the package behind *Interpretability from Scratch*.

Importing it has no side effects beyond importing torch: no training, no downloads, no files written.
"""

from .config import TransformerConfig
from .data import CharTokenizer, corpus_dataset, generate_corpus, load_text
from .harness import CheckResult, RevisitExercise, check, progress, uses
from .hooks import ActivationCache, HookPoint, full_hook_name
from .model import HookedTransformer
from .train import TrainConfig, sample, train

__version__ = "0.1.0"

__all__ = [
    "TransformerConfig", "HookedTransformer", "HookPoint", "ActivationCache", "full_hook_name",
    "CharTokenizer", "corpus_dataset", "generate_corpus", "load_text", "TrainConfig", "train", "sample",
    "check", "progress", "CheckResult", "uses", "RevisitExercise",
]
