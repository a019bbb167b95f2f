"""Save/load checkpoints, and a disk cache so a model is trained once and reused.

A cached model's key hashes its model config, training config, data description, the seed
offset (:mod:`tinyinterp.seeds`) and the source code of the files that define the model, its
training and its data: change any of them and the model is retrained.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, TypeVar

import torch

from .config import TransformerConfig
from .model import HookedTransformer
from .seeds import seed_offset

T = TypeVar("T")
_CODE_FILES = ("config.py", "model.py", "functional.py", "train.py", "data.py", "hooks.py", "seeds.py")


def save_checkpoint(model: HookedTransformer, path: str | Path, extra: dict | None = None) -> None:
    """Write ``{"config", "state_dict", "extra"}`` atomically (tmp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict(), "extra": extra or {}}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> tuple[HookedTransformer, dict]:
    """Load with ``weights_only=True``: a checkpoint can hold tensors and plain data, never code."""
    return _model_from_checkpoint(torch.load(Path(path), map_location="cpu", weights_only=True))


# The package source files each kind of cached artifact depends on (its cache key hashes them).
SOURCE_SETS = {"model": _CODE_FILES, "induction": ("induction.py",), "sae": ("sae.py", "sae_lm.py"),
               "brackets": ("brackets.py",), "reviews": ("reviews.py",),
               "shortcut": ("reviews.py", "shortcut.py")}
# In a graded copy of the package (see tinyinterp.grading.graded_copy), whose reference implementations are
# withheld, this file records the hash of each SOURCE_SETS entry as shipped, so cache keys do not change.
SOURCE_HASHES_FILE = "_source_hashes.json"


def source_hash(kind: str) -> str:
    """SHA-256 (hex) of the concatenated bytes of the source files ``SOURCE_SETS[kind]``."""
    here = Path(__file__).parent
    recorded = here / SOURCE_HASHES_FILE
    if recorded.is_file():
        return json.loads(recorded.read_text())[kind]
    h = hashlib.sha256()
    for name in SOURCE_SETS[kind]:
        h.update((here / name).read_bytes())
    return h.hexdigest()


def code_version() -> str:
    """A hash of the source files that determine what a trained model is."""
    return source_hash("model")[:12]


def cache_dir() -> Path:
    """``$TINYINTERP_CACHE``, else ``~/.cache/tinyinterp``."""
    return Path(os.environ.get("TINYINTERP_CACHE", Path.home() / ".cache" / "tinyinterp"))


def cache_key(name: str, spec: dict, follow_offset: bool = True) -> str:
    """``name-<hash>`` of the name, the spec, the code version and the seed offset
    (``$TINYINTERP_SEED_OFFSET``, see :mod:`tinyinterp.seeds`): each offset trains its own models.
    ``follow_offset=False`` (a model an exercise's test cases use, trained from the seeds as given): the key
    of offset 0 under every offset."""
    offset = seed_offset() if follow_offset else 0
    blob = json.dumps({"name": name, "spec": spec, "code": code_version(), "seed_offset": offset},
                      sort_keys=True)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def cached_model(
    name: str, spec: dict, build: Callable[[], tuple[HookedTransformer, dict]], follow_offset: bool = True,
) -> tuple[HookedTransformer, dict]:
    """Return the model cached under ``(name, spec, code version)``, building it on first use.

    ``build()`` trains and returns ``(model, extra)``; ``extra`` (e.g. the loss history) is stored
    with it. A file lock makes concurrent callers (pytest-xdist workers) train only once.
    """

    def to_checkpoint(model: HookedTransformer, extra: dict) -> dict:
        return {"config": model.cfg.to_dict(), "state_dict": model.state_dict(), "extra": extra}

    return cached_build(name, spec, build, to_checkpoint, _model_from_checkpoint, follow_offset)


def _model_from_checkpoint(ckpt: dict) -> tuple[HookedTransformer, dict]:
    model = HookedTransformer(TransformerConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt.get("extra", {})


def cached_build(
    name: str, spec: dict, build: Callable[[], tuple[T, dict]],
    to_checkpoint: Callable[[T, dict], dict], from_checkpoint: Callable[[dict], tuple[T, dict]],
    follow_offset: bool = True,
) -> tuple[T, dict]:
    """The disk cache behind :func:`cached_model`, for any trained object.

    ``to_checkpoint(obj, extra)`` gives a dict of tensors and plain data (saved atomically);
    ``from_checkpoint(dict)`` rebuilds ``(obj, extra)`` from it (loaded with ``weights_only=True``).
    """
    path = cache_dir() / f"{cache_key(name, spec, follow_offset)}.pt"

    def load() -> tuple[T, dict]:
        return from_checkpoint(torch.load(path, map_location="cpu", weights_only=True))

    if path.exists() and not os.access(path.parent, os.W_OK):  # a read-only cache (e.g. a grading sandbox)
        return load()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock, _locked(lock):
        if path.exists():
            try:
                return load()
            except Exception:  # a truncated or stale file: rebuild it
                path.unlink(missing_ok=True)
        obj, extra = build()
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        torch.save(to_checkpoint(obj, extra), tmp)
        os.replace(tmp, path)
        return obj, extra


@contextlib.contextmanager
def _locked(f):
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
