"""A decoder-only transformer written from scratch, with TransformerLens names and hook points.

Read it top to bottom: embeddings -> blocks (attention, MLP) -> final LayerNorm -> unembedding.
No ``nn.MultiheadAttention`` and no fused attention: the maths lives in :mod:`tinyinterp.functional`.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from . import functional as Fn
from .config import TransformerConfig
from .hooks import ActivationCache, HookFn, HookPoint


class Embed(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        batch, seq_len = tokens.shape
        return self.W_pos[:seq_len].expand(batch, seq_len, -1)


class LayerNorm(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.eps = cfg.layer_norm_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]: the divisor, for freezing LN later
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        centred = x - x.mean(dim=-1, keepdim=True)
        scale = self.hook_scale((centred.pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(centred / scale) * self.w + self.b


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        h, m, d = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, m, d))
        self.W_K = nn.Parameter(torch.empty(h, m, d))
        self.W_V = nn.Parameter(torch.empty(h, m, d))
        self.W_O = nn.Parameter(torch.empty(h, d, m))
        self.b_Q = nn.Parameter(torch.zeros(h, d))
        self.b_K = nn.Parameter(torch.zeros(h, d))
        self.b_V = nn.Parameter(torch.zeros(h, d))
        self.b_O = nn.Parameter(torch.zeros(m))
        self.d_head = d
        for name in ("q", "k", "v", "attn_scores", "pattern", "z"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        q = self.hook_q(Fn.project_to_heads(x, self.W_Q, self.b_Q))  # [batch, pos, head, d_head]
        k = self.hook_k(Fn.project_to_heads(x, self.W_K, self.b_K))
        v = self.hook_v(Fn.project_to_heads(x, self.W_V, self.b_V))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / self.d_head**0.5
        scores = self.hook_attn_scores(Fn.apply_causal_mask(scores))  # [batch, head, q, k]
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))  # [batch, pos, head, d_head]
        return torch.einsum("bqhd,hdm->bqm", z, self.W_O) + self.b_O


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        post = self.hook_post(Fn.gelu(pre))
        return post @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        use_ln = cfg.normalization == "LN"
        self.ln1 = LayerNorm(cfg) if use_ln else nn.Identity()
        self.attn = Attention(cfg)
        if not cfg.attn_only:
            self.ln2 = LayerNorm(cfg) if use_ln else nn.Identity()
            self.mlp = MLP(cfg)
        for name in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, resid_pre: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre)))
        if self.cfg.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)


class Unembed(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return x @ self.W_U + self.b_U


class HookedTransformer(nn.Module):
    """A GPT-style decoder whose every intermediate activation is a named :class:`HookPoint`."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg) if cfg.normalization == "LN" else nn.Identity()
        self.unembed = Unembed(cfg)
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module
        self.init_weights()

    def init_weights(self) -> None:
        """Normal(0, init_std) for weight matrices, seeded by ``cfg.seed``; biases zero, LN scale one."""
        gen = torch.Generator().manual_seed(self.cfg.seed)
        for name, p in self.named_parameters():
            if name.split(".")[-1].startswith("W_"):
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen) * self.cfg.init_std)

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        if tokens.ndim == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.shape[-1] > self.cfg.n_ctx:
            raise ValueError(f"sequence of length {tokens.shape[-1]} is longer than n_ctx={self.cfg.n_ctx}")
        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(tokens))
        for block in self.blocks:
            resid = block(resid)
        return self.unembed(self.ln_final(resid))

    # ----- hooks ---------------------------------------------------------------------------
    def _resolve(self, names: str | Iterable[str]) -> list[HookPoint]:
        names = [names] if isinstance(names, str) else list(names)
        missing = [n for n in names if n not in self.hook_dict]
        if missing:
            raise KeyError(f"no hook point named {missing}; see model.hook_dict for the names")
        return [self.hook_dict[n] for n in names]

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: list[tuple[str, HookFn]]) -> Iterator["HookedTransformer"]:
        """Context manager: attach ``(hook_name, fn)`` pairs, always removed on exit."""
        attached: list[HookPoint] = []
        try:
            for name, fn in fwd_hooks:
                (hp,) = self._resolve(name)
                hp.add_hook(fn)
                attached.append(hp)
            yield self
        finally:
            for hp in attached:
                hp.remove_hooks()

    def run_with_hooks(self, tokens: Tensor, fwd_hooks: list[tuple[str, HookFn]]) -> Tensor:
        """Forward pass with hooks that read or replace activations (ablations, patching)."""
        with self.hooks(fwd_hooks):
            return self(tokens)

    def run_with_cache(
        self, tokens: Tensor, names_filter: str | Iterable[str] | None = None
    ) -> tuple[Float[Tensor, "batch pos d_vocab"], ActivationCache]:
        """Forward pass that records every (or the selected) activation into an :class:`ActivationCache`."""
        store: dict[str, Tensor] = {}
        names = list(self.hook_dict) if names_filter is None else [p.name for p in self._resolve(names_filter)]

        def save(act: Tensor, hook: HookPoint) -> None:
            store[hook.name] = act.detach()

        with self.hooks([(n, save) for n in names]):
            logits = self(tokens)
        return logits, ActivationCache(store)

    # ----- helpers ---------------------------------------------------------------------------
    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return torch.stack([b.attn.W_Q for b in self.blocks])

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return torch.stack([b.attn.W_K for b in self.blocks])

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return torch.stack([b.attn.W_V for b in self.blocks])

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        return torch.stack([b.attn.W_O for b in self.blocks])

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        return self.pos_embed.W_pos
