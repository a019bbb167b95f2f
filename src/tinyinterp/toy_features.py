"""Toy data with known ground-truth features, and a score for how well a dictionary recovers them.

Following Sharkey, Braun and Millidge (2022), "Taking features out of superposition with sparse
autoencoders": pick ``n_features`` random unit directions in ``d`` dimensions (more directions than
dimensions, so they cannot be orthogonal), give each input a sparse non-negative code over them,
and let the input be the code times the directions. An SAE trained on such inputs should find
the directions; :func:`mmcs` measures whether it did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from .sae import (SAEConfig, SAETrainConfig, SparseAutoencoder, encode_in_chunks, fraction_variance_explained,
                  train_sae)


@dataclass(frozen=True)
class ToyFeatureConfig:
    """``n_features`` unit directions in ``d`` dimensions; each is active in an input with
    probability ``p_active`` (so ``n_features * p_active`` active on average), with a magnitude
    drawn uniformly from [0, 1)."""

    d: int = 32
    n_features: int = 64
    p_active: float = 0.05
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def random_unit_directions(n: int, d: int, gen: torch.Generator) -> Float[Tensor, "n d"]:
    """``n`` directions drawn uniformly on the unit sphere in ``d`` dimensions."""
    v = torch.randn(n, d, generator=gen)
    return v / v.norm(dim=-1, keepdim=True)


def sparse_codes(
    batch: int, n_features: int, p_active: float, gen: torch.Generator
) -> Float[Tensor, "batch n_features"]:
    """Each entry is non-zero with probability ``p_active``, with a magnitude uniform in [0, 1)."""
    active = torch.rand(batch, n_features, generator=gen) < p_active
    return active * torch.rand(batch, n_features, generator=gen)


class ToyFeatureData:
    """Ground-truth ``features [n_features, d]`` and a sampler of inputs ``codes @ features``."""

    def __init__(self, cfg: ToyFeatureConfig = ToyFeatureConfig()) -> None:
        self.cfg = cfg
        self.features = random_unit_directions(cfg.n_features, cfg.d, torch.Generator().manual_seed(cfg.seed))

    def sample(
        self, batch: int, gen: torch.Generator
    ) -> tuple[Float[Tensor, "batch d"], Float[Tensor, "batch n_features"]]:
        """``(x, codes)`` with ``x = codes @ features``."""
        codes = sparse_codes(batch, self.cfg.n_features, self.cfg.p_active, gen)
        return codes @ self.features, codes


def mmcs(
    true_features: Float[Tensor, "n_true d"], learned_features: Float[Tensor, "n_learned d"]
) -> Float[Tensor, ""]:
    """Mean max cosine similarity: for each true feature, the cosine similarity of the learned
    direction closest to it; averaged over the true features. 1 means every true feature was found."""
    true_unit = true_features / true_features.norm(dim=-1, keepdim=True)
    learned_unit = learned_features / learned_features.norm(dim=-1, keepdim=True)
    cosine = true_unit @ learned_unit.T  # [n_true, n_learned]
    return cosine.max(dim=-1).values.mean()


# ----- the chapter's toy experiment ----------------------------------------------------------------
TOY_DATA = ToyFeatureConfig(d=32, n_features=64, p_active=0.05, seed=0)
TOY_SAE = SAEConfig(d_in=32, d_sae=128, l1_coeff=0.3, seed=0)
TOY_TRAIN = SAETrainConfig(steps=500, batch_size=256, lr=1e-2, resample_every=100, dead_window=50, seed=0)
TOY_SAMPLES = 30_000


def toy_experiment(
    sae_cfg: SAEConfig = TOY_SAE, train_cfg: SAETrainConfig = TOY_TRAIN, data_cfg: ToyFeatureConfig = TOY_DATA,
    n_samples: int = TOY_SAMPLES, sae: SparseAutoencoder | None = None,
) -> tuple[SparseAutoencoder, dict]:
    """Sample toy inputs, train an SAE on them (``sae`` if given, else a new one) and score it:
    ``(sae, {"mmcs", "l0", "fve", "dead_fraction", "true_l0", "seconds"})``. The metrics are measured
    on 5,000 fresh inputs."""
    start = time.perf_counter()
    data = ToyFeatureData(data_cfg)
    gen = torch.Generator().manual_seed(data_cfg.seed + 1)
    x, _ = data.sample(n_samples, gen)
    sae = sae if sae is not None else SparseAutoencoder(sae_cfg)
    result = train_sae(sae, x, train_cfg, progress=False)
    x_test, codes_test = data.sample(5_000, gen)
    latents, reconstruction = encode_in_chunks(sae, x_test)
    return sae, {
        "mmcs": mmcs(data.features, sae.W_dec.detach()).item(),
        "l0": (latents > 0).float().sum(-1).mean().item(),
        "true_l0": (codes_test > 0).float().sum(-1).mean().item(),
        "fve": fraction_variance_explained(x_test, reconstruction),
        "dead_fraction": ((latents > 0).sum(0) == 0).float().mean().item(),
        "resampled": sum(n for _, n in result.resampled),
        "seconds": time.perf_counter() - start,
    }


__all__ = ["ToyFeatureConfig", "random_unit_directions", "sparse_codes", "ToyFeatureData", "mmcs", "TOY_DATA",
           "TOY_SAE", "TOY_TRAIN", "TOY_SAMPLES", "toy_experiment"]
