"""Sparse autoencoders (SAEs), from scratch: the maths as plain functions, a module, and a trainer.

An SAE rewrites an activation vector ``x`` (``d_in`` numbers) as a sparse, non-negative
combination of ``d_sae`` learned directions, the rows of ``W_dec``:

    latents        = ReLU((x - b_dec) @ W_enc + b_enc)          # [batch, d_sae], mostly zero
    reconstruction = latents @ W_dec + b_dec                    # [batch, d_in]

trained to reconstruct ``x`` (squared error) while keeping the latents sparse (an L1 penalty),
as in Bricken et al. (2023), "Towards Monosemanticity". Choices made here, and why:

- ``b_dec`` is subtracted before encoding and added back after decoding: it is the SAE's guess of
  the data's centre, so the latents only have to explain the deviation from it.
- The rows of ``W_dec`` have unit norm (:func:`normalize_decoder` after every optimiser step).
  Without a constraint the L1 penalty could be dodged by shrinking latents and growing decoder
  rows. :func:`sae_loss` weights each latent's L1 by its decoder row's norm, which is the same
  thing when the rows are unit norm and is the right penalty when they are not (the
  unconstrained variant Anthropic moved to in 2024): the loss is honest either way.
- Latents that never fire ("dead") are re-initialised towards badly reconstructed inputs
  (:func:`resample_dead_latents`, Bricken et al. 2023).
- The second architecture, TopK (Gao et al. 2024), drops the L1 penalty and keeps exactly the
  ``k`` largest pre-activations of every input (:func:`topk_forward`): sparsity is set, not tuned.

The functions are the reference solutions of chapter 8's exercises; ``tests/test_sae.py`` checks
them against independent oracles (toy data with known features, hand-made weights).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from .seeds import training_seed


# ----- the maths ---------------------------------------------------------------------------------
def sae_forward(
    x: Float[Tensor, "batch d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, "d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, "d_in"],
) -> tuple[Float[Tensor, "batch d_sae"], Float[Tensor, "batch d_in"]]:
    """``latents = ReLU((x - b_dec) @ W_enc + b_enc)``, ``reconstruction = latents @ W_dec + b_dec``."""
    latents = torch.relu((x - b_dec) @ W_enc + b_enc)
    return latents, latents @ W_dec + b_dec


def topk_forward(
    x: Float[Tensor, "batch d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, "d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, "d_in"],
    k: int,
) -> tuple[Float[Tensor, "batch d_sae"], Float[Tensor, "batch d_in"]]:
    """The TopK SAE (Gao et al. 2024): keep the ``k`` largest pre-activations of each input, set the
    rest to zero, then apply ReLU (so a kept value that is negative is zero too)."""
    pre = (x - b_dec) @ W_enc + b_enc
    top = pre.topk(min(k, pre.shape[-1]), dim=-1)
    latents = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return latents, latents @ W_dec + b_dec


def sae_loss(
    x: Float[Tensor, "batch d_in"],
    latents: Float[Tensor, "batch d_sae"],
    reconstruction: Float[Tensor, "batch d_in"],
    W_dec: Float[Tensor, "d_sae d_in"],
    l1_coeff: float,
) -> Float[Tensor, ""]:
    """Squared reconstruction error plus ``l1_coeff`` times the decoder-norm-weighted L1 of the latents.

    Both terms are summed over their feature dimension and averaged over the batch:
    ``mean_b ||x_b - x̂_b||² + l1_coeff · mean_b Σ_i |f_bi| ||W_dec[i]||``.
    """
    reconstruction_error = (reconstruction - x).pow(2).sum(-1).mean()
    sparsity = (latents.abs() * W_dec.norm(dim=-1)).sum(-1).mean()
    return reconstruction_error + l1_coeff * sparsity


def normalize_decoder(W_dec: Float[Tensor, "d_sae d_in"], eps: float = 1e-8) -> Float[Tensor, "d_sae d_in"]:
    """Each latent's decoder direction (a row of ``W_dec``) scaled to unit length."""
    return W_dec / W_dec.norm(dim=-1, keepdim=True).clamp_min(eps)


def resample_dead_latents(
    x: Float[Tensor, "batch d_in"],
    dead: Bool[Tensor, "d_sae"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, "d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, "d_in"],
    seed: int,
    scale: float = 0.2,
) -> tuple[Float[Tensor, "d_in d_sae"], Float[Tensor, "d_sae"], Float[Tensor, "d_sae d_in"]]:
    """Bricken et al. (2023)'s resampling: point each dead latent at an input the SAE reconstructs badly.

    1. Score each input by its squared reconstruction error ``||x - x̂||²`` under the current SAE.
    2. Draw one input per dead latent, with probability proportional to the *square* of that score:
       ``torch.multinomial(p, n_dead, replacement=True, generator=torch.Generator().manual_seed(seed))``.
    3. The dead latent's decoder row becomes the centred input ``x - b_dec``, scaled to unit norm; its
       encoder column becomes the same unit vector times ``scale`` times the mean encoder-column norm
       of the live latents (1 if none is alive); its encoder bias becomes 0.

    Dead latents are filled in increasing index order. Returns new ``(W_enc, b_enc, W_dec)``; the
    inputs are not modified.
    """
    W_enc, b_enc, W_dec = W_enc.clone(), b_enc.clone(), W_dec.clone()
    dead_idx = dead.nonzero().squeeze(-1)
    if len(dead_idx) == 0:
        return W_enc, b_enc, W_dec
    _, reconstruction = sae_forward(x, W_enc, b_enc, W_dec, b_dec)
    score = (reconstruction - x).pow(2).sum(-1)
    probs = score.pow(2)
    if probs.sum() <= 0:  # perfect reconstructions everywhere: draw uniformly
        probs = torch.ones_like(probs)
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.multinomial(probs, len(dead_idx), replacement=True, generator=gen)
    directions = normalize_decoder(x[chosen] - b_dec)  # [n_dead, d_in]
    alive_norms = W_enc[:, ~dead].norm(dim=0)
    enc_norm = alive_norms.mean() if len(alive_norms) else torch.tensor(1.0)
    W_dec[dead_idx] = directions
    W_enc[:, dead_idx] = directions.T * (scale * enc_norm)
    b_enc[dead_idx] = 0.0
    return W_enc, b_enc, W_dec


# ----- metrics -----------------------------------------------------------------------------------
def l0(latents: Float[Tensor, "batch d_sae"]) -> float:
    """Mean number of non-zero latents per input."""
    return (latents != 0).float().sum(-1).mean().item()


def fraction_variance_explained(x: Float[Tensor, "batch d_in"], reconstruction: Float[Tensor, "batch d_in"]) -> float:
    """``1 - Σ||x - x̂||² / Σ||x - mean(x)||²``: 1 is perfect, 0 is no better than the mean input."""
    residual = (x - reconstruction).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    return (1 - residual / total).item()


# ----- the module --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SAEConfig:
    """An SAE's shape and sparsity. ``k=None``: ReLU latents with an L1 penalty ``l1_coeff``;
    ``k`` an int: a TopK SAE (``l1_coeff`` unused)."""

    d_in: int
    d_sae: int
    l1_coeff: float = 1e-3
    k: int | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class SparseAutoencoder(nn.Module):
    """Parameters ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``.

    Initialised as Bricken et al. and Gao et al. recommend: unit-norm random decoder rows, the
    encoder their transpose ("tied" at the start only), zero biases; drawn from
    ``training_seed(cfg.seed)`` (:mod:`tinyinterp.seeds`).
    """

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(training_seed(cfg.seed))
        W_enc = torch.randn(cfg.d_in, cfg.d_sae, generator=gen)
        W_dec = normalize_decoder(W_enc.T)
        self.W_enc = nn.Parameter(W_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    def forward(
        self, x: Float[Tensor, "batch d_in"]
    ) -> tuple[Float[Tensor, "batch d_sae"], Float[Tensor, "batch d_in"]]:
        """``(latents, reconstruction)``, by :func:`sae_forward` or :func:`topk_forward`."""
        if self.cfg.k is None:
            return sae_forward(x, self.W_enc, self.b_enc, self.W_dec, self.b_dec)
        return topk_forward(x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.cfg.k)

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return self(x)[0]

    def loss(self, x: Float[Tensor, "batch d_in"]) -> tuple[Float[Tensor, ""], Float[Tensor, "batch d_sae"]]:
        """The training loss (L1 term only for ReLU SAEs) and the latents."""
        latents, reconstruction = self(x)
        l1_coeff = self.cfg.l1_coeff if self.cfg.k is None else 0.0
        return sae_loss(x, latents, reconstruction, self.W_dec, l1_coeff), latents

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec.copy_(normalize_decoder(self.W_dec))

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Drop the part of each decoder row's gradient along the row: with the rows held at unit
        norm it could only change their length, which :meth:`normalize_decoder_` undoes anyway."""
        if self.W_dec.grad is not None:
            W = normalize_decoder(self.W_dec)
            self.W_dec.grad -= (self.W_dec.grad * W).sum(-1, keepdim=True) * W


# ----- training ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SAETrainConfig:
    """Adam on random minibatches of activations. Every ``resample_every`` steps (until
    ``resample_until``), latents that have not fired for ``dead_window`` steps are resampled."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 3e-3
    resample_every: int = 500
    resample_until: float = 0.75  # fraction of training after which no more resampling
    dead_window: int = 200
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SAETrainResult:
    losses: list[float] = field(default_factory=list)  # one per step
    l0: list[float] = field(default_factory=list)  # one per step
    resampled: list[tuple[int, int]] = field(default_factory=list)  # (step, number of latents)
    seconds: float = 0.0


def dead_latents(steps_since_fired: Tensor, window: int) -> Bool[Tensor, "d_sae"]:
    """Latents that have not fired on any input for at least ``window`` training steps."""
    return steps_since_fired >= window


def train_sae(
    sae: SparseAutoencoder,
    activations: Float[Tensor, "n d_in"],
    cfg: SAETrainConfig = SAETrainConfig(),
    progress: bool = True,
) -> SAETrainResult:
    """Train ``sae`` on rows of ``activations``. ``b_dec`` starts at their mean; decoder rows are kept
    at unit norm; dead latents are resampled as in Bricken et al. (2023). Batches and resampling draw
    from ``training_seed(cfg.seed)`` (:mod:`tinyinterp.seeds`)."""
    if activations.ndim != 2 or activations.shape[1] != sae.cfg.d_in:
        raise ValueError(f"activations must be [n, d_in={sae.cfg.d_in}], got {tuple(activations.shape)}")
    seed = training_seed(cfg.seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_dec.copy_(activations.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear decay over the last fifth
        opt, lambda s: min(1.0, 5 * (1 - s / cfg.steps)))
    steps_since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    result = SAETrainResult()
    start = time.perf_counter()
    sae.train()
    for step in tqdm(range(cfg.steps), desc="training SAE", disable=not progress, mininterval=1.0):
        x = activations[torch.randint(0, len(activations), (cfg.batch_size,), generator=gen)]
        loss, latents = sae.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_decoder_grad_()
        opt.step()
        sched.step()
        sae.normalize_decoder_()
        fired = (latents > 0).any(0)
        steps_since_fired = torch.where(fired, 0, steps_since_fired + 1)
        result.losses.append(loss.item())
        result.l0.append((latents > 0).float().sum(-1).mean().item())
        if (step + 1) % cfg.resample_every == 0 and step + 1 < cfg.resample_until * cfg.steps:
            dead = dead_latents(steps_since_fired, cfg.dead_window)
            if dead.any():
                pool = activations[torch.randint(0, len(activations), (16 * cfg.batch_size,), generator=gen)]
                _resample_(sae, opt, pool, dead, seed=(seed * 100_003 + step) % 2**63)
                steps_since_fired[dead] = 0
                result.resampled.append((step + 1, int(dead.sum())))
    sae.eval()
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def _resample_(sae: SparseAutoencoder, opt: torch.optim.Adam, pool: Tensor, dead: Tensor, seed: int) -> None:
    """Resample in place and zero the Adam moments of the resampled entries."""
    W_enc, b_enc, W_dec = resample_dead_latents(pool, dead, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, seed)
    sae.W_enc.copy_(W_enc)
    sae.b_enc.copy_(b_enc)
    sae.W_dec.copy_(W_dec)
    for param, index in ((sae.W_enc, (slice(None), dead)), (sae.b_enc, (dead,)), (sae.W_dec, (dead,))):
        state = opt.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0.0


@torch.no_grad()
def encode_in_chunks(sae: SparseAutoencoder, activations: Float[Tensor, "n d_in"], chunk: int = 8192):
    """``(latents, reconstruction)`` of many activations, a chunk at a time."""
    outs = [sae(a) for a in activations.split(chunk)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


__all__ = [
    "sae_forward", "topk_forward", "sae_loss", "normalize_decoder", "resample_dead_latents", "l0",
    "fraction_variance_explained", "SAEConfig", "SparseAutoencoder", "SAETrainConfig", "SAETrainResult",
    "dead_latents", "train_sae", "encode_in_chunks",
]
