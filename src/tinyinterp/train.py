"""Training (AdamW, seeded, with a progress bar) and sampling."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from .functional import cross_entropy_loss, top_k_logits
from .model import HookedTransformer
from .seeds import training_seed


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # one per step, for plotting
    seconds: float = 0.0


def train(
    model: HookedTransformer,
    data: Int[Tensor, "n seq"],
    cfg: TrainConfig = TrainConfig(),
    progress: bool = True,
    callback=None,
) -> TrainResult:
    """Train ``model`` on random windows of ``data`` with next-token cross-entropy.

    ``callback(step, model, loss)``, if given, runs after every step (for logging metrics).
    Returns the loss history. Deterministic for a fixed seed on a fixed torch build and thread count.
    The batches are drawn with ``training_seed(cfg.seed)`` (see :mod:`tinyinterp.seeds`).
    """
    import time

    if data.ndim != 2 or data.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"data must be [n, seq] with seq <= n_ctx={model.cfg.n_ctx}, got {tuple(data.shape)}")
    gen = torch.Generator().manual_seed(training_seed(cfg.seed))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)) * max(0.1, 1 - s / cfg.steps)
    )
    result = TrainResult()
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(cfg.steps), desc="training", disable=not progress, mininterval=1.0)
    for step in bar:
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        loss = cross_entropy_loss(model(data[idx]), data[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        result.losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if callback is not None:
            callback(step, model, loss.item())
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def sample(
    model: HookedTransformer,
    prompt: Int[Tensor, "pos"],
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> Int[Tensor, "pos_out"]:
    """Autoregressive sampling. ``temperature=0`` is greedy decoding."""
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    gen = torch.Generator().manual_seed(seed)
    tokens = prompt.clone()
    for _ in range(max_new_tokens):
        context = tokens if len(tokens) <= model.cfg.n_ctx else torch.cat([tokens[:1], tokens[-(model.cfg.n_ctx - 1):]])
        logits = model(context.unsqueeze(0))[0, -1]  # past n_ctx: keep the first token (BOS), drop the oldest
        if temperature == 0:
            nxt = logits.argmax()
        else:
            logits = logits / temperature
            if top_k is not None:
                logits = top_k_logits(logits, top_k)
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=gen)[0]
        tokens = torch.cat([tokens, nxt.view(1)])
    return tokens
