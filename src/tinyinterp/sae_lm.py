"""Sparse autoencoders on the Part I language model: collect MLP activations, train, splice back, score.

The pipeline of chapter 8:

1. run :func:`tinyinterp.models.part1_model` over the corpus and record ``blocks.{layer}.mlp.hook_post``
   (:func:`collect_mlp_activations`);
2. train an SAE on those vectors (:func:`tinyinterp.sae.train_sae`);
3. score it (:func:`evaluate_lm_sae`): sparsity (L0), fraction of variance explained, dead latents,
   and the loss of the language model when its MLP activations are replaced by the SAE's
   reconstruction, compared with replacing them by zeros (:func:`ce_loss_recovered`).

:func:`lm_sae` returns the book's trained SAE, cached on disk like the book's models.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .checkpoint import cached_build, source_hash
from .data import corpus_dataset
from .functional import cross_entropy_loss
from .hooks import HookPoint
from .model import HookedTransformer
from .sae import (SAEConfig, SAETrainConfig, SparseAutoencoder, encode_in_chunks, fraction_variance_explained,
                  train_sae)

LM_SAE_LAYER = 1  # the last MLP: its output reaches the unembedding directly
LM_SAE_DATA = {"n_windows": 512, "seed": 0}  # the first 512 training windows of PART1_DATA: 65,536 tokens
LM_SAE_EVAL = {"n_windows": 64, "seed": 1}  # held-out stories (another seed), as in Part I
LM_SAE = SAEConfig(d_in=256, d_sae=512, l1_coeff=0.3, seed=0)
LM_SAE_TOPK = SAEConfig(d_in=256, d_sae=512, l1_coeff=0.0, k=24, seed=0)
LM_SAE_TRAIN = SAETrainConfig(steps=800, batch_size=256, lr=3e-3, resample_every=200, dead_window=100, seed=0)


def mlp_hook_name(layer: int) -> str:
    """The MLP's hidden activations (after the GELU) of block ``layer``."""
    return f"blocks.{layer}.mlp.hook_post"


@torch.no_grad()
def collect_mlp_activations(
    model: HookedTransformer, windows: Int[Tensor, "n pos"], layer: int, batch_size: int = 64
) -> Float[Tensor, "n pos d_mlp"]:
    """Record ``blocks.{layer}.mlp.hook_post`` on every window, a batch at a time."""
    name = mlp_hook_name(layer)
    return torch.cat([model.run_with_cache(w, names_filter=name)[1][name] for w in windows.split(batch_size)])


def splice_hook(sae: SparseAutoencoder) -> Callable[[Tensor, HookPoint], Tensor]:
    """A hook that replaces activations ``[..., d_in]`` by the SAE's reconstruction of them."""
    def hook(act: Tensor, hook: HookPoint) -> Tensor:
        return sae(act.reshape(-1, act.shape[-1]))[1].reshape(act.shape)
    return hook


def zero_ablation_hook(act: Tensor, hook: HookPoint) -> Tensor:
    """A hook that replaces activations by zeros (the layer's neurons all switched off)."""
    return torch.zeros_like(act)


def ce_loss_recovered(
    clean_logits: Float[Tensor, "batch pos d_vocab"],
    spliced_logits: Float[Tensor, "batch pos d_vocab"],
    ablated_logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
) -> Float[Tensor, ""]:
    """``(L_ablated - L_spliced) / (L_ablated - L_clean)`` with next-token cross-entropy losses ``L``.

    1 when splicing in the reconstruction costs nothing, 0 when it is as bad as zero-ablating the layer.
    """
    clean = cross_entropy_loss(clean_logits, tokens)
    spliced = cross_entropy_loss(spliced_logits, tokens)
    ablated = cross_entropy_loss(ablated_logits, tokens)
    return (ablated - spliced) / (ablated - clean)


@dataclass
class LMSAEMetrics:
    l0: float  # mean number of active latents per token
    fve: float  # fraction of variance explained
    dead_fraction: float  # latents that never fire on the evaluation tokens
    clean_loss: float
    spliced_loss: float
    ablated_loss: float
    ce_recovered: float

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"L0 {self.l0:.1f} | variance explained {self.fve:.3f} | dead {self.dead_fraction:.1%} | "
                f"loss clean {self.clean_loss:.3f}, spliced {self.spliced_loss:.3f}, zero-ablated "
                f"{self.ablated_loss:.3f} | CE loss recovered {self.ce_recovered:.3f}")


@torch.no_grad()
def evaluate_lm_sae(
    model: HookedTransformer, sae: SparseAutoencoder, windows: Int[Tensor, "n pos"], layer: int,
    batch_size: int = 64,
) -> LMSAEMetrics:
    """Every metric of chapter 8 on ``windows`` (use held-out ones)."""
    acts = collect_mlp_activations(model, windows, layer, batch_size).reshape(-1, sae.cfg.d_in)
    latents, reconstruction = encode_in_chunks(sae, acts)
    name = mlp_hook_name(layer)
    clean, spliced, ablated = [], [], []
    for w in windows.split(batch_size):
        clean.append(model(w))
        spliced.append(model.run_with_hooks(w, [(name, splice_hook(sae))]))
        ablated.append(model.run_with_hooks(w, [(name, zero_ablation_hook)]))
    clean, spliced, ablated = torch.cat(clean), torch.cat(spliced), torch.cat(ablated)
    return LMSAEMetrics(
        l0=(latents > 0).float().sum(-1).mean().item(),
        fve=fraction_variance_explained(acts, reconstruction),
        dead_fraction=((latents > 0).sum(0) == 0).float().mean().item(),
        clean_loss=cross_entropy_loss(clean, windows).item(),
        spliced_loss=cross_entropy_loss(spliced, windows).item(),
        ablated_loss=cross_entropy_loss(ablated, windows).item(),
        ce_recovered=ce_loss_recovered(clean, spliced, ablated, windows).item(),
    )


def lm_sae_windows(split: str = "train") -> Int[Tensor, "n pos"]:
    """The windows the book's LM SAE is trained (``"train"``) or evaluated (``"eval"``) on."""
    from .models import PART1_DATA

    spec = LM_SAE_DATA if split == "train" else LM_SAE_EVAL
    n_stories = PART1_DATA["n_stories"] if split == "train" else 500
    windows, _ = corpus_dataset(seq_len=PART1_DATA["seq_len"], n_stories=n_stories, seed=spec["seed"])
    return windows[: spec["n_windows"]]


def train_lm_sae(
    model: HookedTransformer, cfg: SAEConfig = LM_SAE, train_cfg: SAETrainConfig = LM_SAE_TRAIN,
    layer: int = LM_SAE_LAYER, progress: bool = True,
) -> tuple[SparseAutoencoder, dict]:
    """Collect activations on the training windows and train an SAE on them (no cache)."""
    start = time.perf_counter()
    acts = collect_mlp_activations(model, lm_sae_windows("train"), layer).reshape(-1, cfg.d_in)
    sae = SparseAutoencoder(cfg)
    result = train_sae(sae, acts, train_cfg, progress=progress)
    return sae, {"losses": result.losses, "l0": result.l0, "resampled": result.resampled,
                 "train_seconds": result.seconds, "seconds": time.perf_counter() - start}


def lm_sae(topk: bool = False, progress: bool = True) -> tuple[SparseAutoencoder, dict]:
    """The book's SAE on the Part I model's last MLP (``topk=True``: the TopK one), trained on first
    use and cached on disk: ``(sae, info)`` with the training history in ``info``."""
    from .models import PART1_DATA, PART1_MODEL, PART1_TRAIN, part1_model

    cfg = LM_SAE_TOPK if topk else LM_SAE
    spec = {"sae": cfg.to_dict(), "train": LM_SAE_TRAIN.to_dict(), "layer": LM_SAE_LAYER, "data": LM_SAE_DATA,
            "lm": {"model": PART1_MODEL.to_dict(), "train": PART1_TRAIN.to_dict(), "data": PART1_DATA},
            "code": _source_hash()}

    def build():
        model, _, _ = part1_model(progress=progress)
        return train_lm_sae(model, cfg, LM_SAE_TRAIN, LM_SAE_LAYER, progress=progress)

    return cached_sae("sae-topk" if topk else "sae", spec, build)


# ----- the disk cache for SAEs -----------------------------------------------------------------
def _source_hash() -> str:
    return source_hash("sae")[:12]


def cached_sae(
    name: str, spec: dict, build: Callable[[], tuple[SparseAutoencoder, dict]]
) -> tuple[SparseAutoencoder, dict]:
    """Return the SAE cached under ``(name, spec)``, building it on first use (the same file-locked,
    ``weights_only`` disk cache as the book's transformers)."""

    def to_checkpoint(sae: SparseAutoencoder, extra: dict) -> dict:
        return {"config": sae.cfg.to_dict(), "state_dict": sae.state_dict(), "extra": extra}

    def from_checkpoint(ckpt: dict) -> tuple[SparseAutoencoder, dict]:
        sae = SparseAutoencoder(SAEConfig(**ckpt["config"]))
        sae.load_state_dict(ckpt["state_dict"])
        return sae.eval(), ckpt["extra"]

    sae, extra = cached_build(name, spec, build, to_checkpoint, from_checkpoint)
    return sae.eval(), extra


__all__ = [
    "LM_SAE_LAYER", "LM_SAE", "LM_SAE_TOPK", "LM_SAE_TRAIN", "LM_SAE_DATA", "LM_SAE_EVAL", "mlp_hook_name",
    "collect_mlp_activations", "splice_hook", "zero_ablation_hook", "ce_loss_recovered", "LMSAEMetrics",
    "evaluate_lm_sae", "lm_sae_windows", "train_lm_sae", "lm_sae", "cached_sae",
]
