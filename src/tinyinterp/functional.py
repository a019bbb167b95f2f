"""The transformer's maths as plain functions.

The model in :mod:`tinyinterp.model` calls these, and they are the reference solutions of the
Part I exercises: one source of truth. They are checked against independent oracles in
``tests/`` (torch's ``scaled_dot_product_attention``, ``nn.LayerNorm``, ``F.gelu``).
"""

from __future__ import annotations

import math

import torch
from einops import einsum
from jaxtyping import Float, Int
from torch import Tensor


def embed(
    tokens: Int[Tensor, "batch pos"],
    W_E: Float[Tensor, "d_vocab d_model"],
    W_pos: Float[Tensor, "n_ctx d_model"],
) -> Float[Tensor, "batch pos d_model"]:
    """The start of the residual stream: token embedding plus learned positional embedding."""
    seq_len = tokens.shape[-1]
    return W_E[tokens] + W_pos[:seq_len]


def cross_entropy_loss(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, ""]:
    """Mean next-token loss: position t predicts token t+1 (the last position predicts nothing)."""
    log_probs = logits[:, :-1].log_softmax(dim=-1)
    targets = tokens[:, 1:]
    return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).mean()


def bigram_log_probs(
    tokens: Int[Tensor, "batch pos"], d_vocab: int, smoothing: float = 1.0
) -> Float[Tensor, "d_vocab d_vocab"]:
    """The zero-layer transformer fitted by counting: ``out[a, b] = log P(next = b | current = a)``,
    with add-``smoothing`` (Laplace) counts so that unseen pairs keep a finite log-probability."""
    prev = tokens[:, :-1].reshape(-1)
    nxt = tokens[:, 1:].reshape(-1)
    counts = torch.full((d_vocab, d_vocab), float(smoothing), dtype=torch.float32)
    counts.index_put_((prev, nxt), torch.ones_like(prev, dtype=torch.float32), accumulate=True)
    return (counts / counts.sum(dim=-1, keepdim=True)).log()


def attention_pattern(
    q: Float[Tensor, "batch pos n_heads d_head"], k: Float[Tensor, "batch pos n_heads d_head"]
) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
    """Causal attention probabilities: softmax over keys of q·k / sqrt(d_head), future keys masked."""
    d_head = q.shape[-1]
    scores = einsum(q, k, "b q h d, b k h d -> b h q k") / math.sqrt(d_head)
    return apply_causal_mask(scores).softmax(dim=-1)


def apply_causal_mask(
    scores: Float[Tensor, "... query_pos key_pos"], fill: float = float("-inf")
) -> Float[Tensor, "... query_pos key_pos"]:
    """Replace scores of keys after the query (key_pos > query_pos) by ``fill``."""
    n_q, n_k = scores.shape[-2:]
    future = torch.ones(n_q, n_k, dtype=torch.bool, device=scores.device).triu(diagonal=1)
    return scores.masked_fill(future, fill)


def attention_output(
    pattern: Float[Tensor, "batch n_heads query_pos key_pos"],
    v: Float[Tensor, "batch pos n_heads d_head"],
    W_O: Float[Tensor, "n_heads d_head d_model"],
) -> Float[Tensor, "batch pos d_model"]:
    """Mix values by the pattern (z), project each head with W_O and sum over heads (no bias)."""
    z = einsum(pattern, v, "b h q k, b k h d -> b q h d")
    return einsum(z, W_O, "b q h d, h d m -> b q m")


def causal_attention(
    x: Float[Tensor, "batch pos d_model"],
    W_Q: Float[Tensor, "n_heads d_model d_head"],
    b_Q: Float[Tensor, "n_heads d_head"],
    W_K: Float[Tensor, "n_heads d_model d_head"],
    b_K: Float[Tensor, "n_heads d_head"],
    W_V: Float[Tensor, "n_heads d_model d_head"],
    b_V: Float[Tensor, "n_heads d_head"],
    W_O: Float[Tensor, "n_heads d_head d_model"],
    b_O: Float[Tensor, "d_model"],
) -> Float[Tensor, "batch pos d_model"]:
    """A whole multi-head causal attention layer, from residual stream to residual stream."""
    q = project_to_heads(x, W_Q, b_Q)
    k = project_to_heads(x, W_K, b_K)
    v = project_to_heads(x, W_V, b_V)
    return attention_output(attention_pattern(q, k), v, W_O) + b_O


def project_to_heads(
    x: Float[Tensor, "batch pos d_model"],
    W: Float[Tensor, "n_heads d_model d_head"],
    b: Float[Tensor, "n_heads d_head"],
) -> Float[Tensor, "batch pos n_heads d_head"]:
    return einsum(x, W, "b p m, h m d -> b p h d") + b


def layer_norm(
    x: Float[Tensor, "... d_model"], w: Float[Tensor, "d_model"], b: Float[Tensor, "d_model"],
    eps: float = 1e-5,
) -> Float[Tensor, "... d_model"]:
    """Centre, divide by sqrt(biased variance + eps), then scale by w and shift by b."""
    centred = x - x.mean(dim=-1, keepdim=True)
    scale = (centred.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
    return centred / scale * w + b


def gelu(x: Tensor) -> Tensor:
    """Exact GELU, x·Φ(x) (Hendrycks & Gimpel 2016)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def mlp(
    x: Float[Tensor, "batch pos d_model"],
    W_in: Float[Tensor, "d_model d_mlp"], b_in: Float[Tensor, "d_mlp"],
    W_out: Float[Tensor, "d_mlp d_model"], b_out: Float[Tensor, "d_model"],
) -> Float[Tensor, "batch pos d_model"]:
    """Two-layer MLP with a GELU between: GELU(x W_in + b_in) W_out + b_out."""
    return gelu(x @ W_in + b_in) @ W_out + b_out


def top_k_logits(logits: Float[Tensor, "... d_vocab"], k: int) -> Float[Tensor, "... d_vocab"]:
    """Keep the k largest logits of each row, set the rest to -inf (ties at the k-th value kept)."""
    k = min(k, logits.shape[-1])
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


__all__ = [
    "embed", "cross_entropy_loss", "bigram_log_probs", "attention_pattern", "apply_causal_mask",
    "attention_output", "causal_attention", "project_to_heads", "layer_norm", "gelu", "mlp",
    "top_k_logits",
]
