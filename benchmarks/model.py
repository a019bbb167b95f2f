"""Training-step time of the from-scratch model vs the same model with torch's fused attention.

Prints JSON: {"step_time_ratio_vs_sdpa": ..., ...}. Goal: ratio <= 1.5.
"""

import json
import statistics
import time

import torch
import torch.nn.functional as TF

from tinyinterp import HookedTransformer
from tinyinterp.data import corpus_dataset
from tinyinterp.functional import cross_entropy_loss
from tinyinterp.model import Attention
from tinyinterp.models import PART1_MODEL


def sdpa_forward(self: Attention, x):
    q = torch.einsum("bpm,hmd->bhpd", x, self.W_Q) + self.b_Q[:, None]
    k = torch.einsum("bpm,hmd->bhpd", x, self.W_K) + self.b_K[:, None]
    v = torch.einsum("bpm,hmd->bhpd", x, self.W_V) + self.b_V[:, None]
    z = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
    return torch.einsum("bhpd,hdm->bpm", z, self.W_O) + self.b_O


def step_times(model, data, steps=30, warmup=5, batch=32):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + steps):
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        t = time.perf_counter()
        loss = cross_entropy_loss(model(data[idx]), data[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def main():
    torch.set_num_threads(2)
    data, _ = corpus_dataset(seq_len=PART1_MODEL.n_ctx, n_stories=1000)
    ours = HookedTransformer(PART1_MODEL)
    fused = HookedTransformer(PART1_MODEL)
    for blk in fused.blocks:
        blk.attn.forward = sdpa_forward.__get__(blk.attn)
    # interleave rounds so both see the same machine conditions
    t_ours, t_fused = [], []
    for _ in range(3):
        t_ours += step_times(ours, data)
        t_fused += step_times(fused, data)
    m_ours, m_fused = statistics.median(t_ours), statistics.median(t_fused)
    print(json.dumps({
        "step_time_ratio_vs_sdpa": round(m_ours / m_fused, 3),
        "step_time_s": round(m_ours, 5), "step_time_sdpa_s": round(m_fused, 5),
        "config": {"d_model": PART1_MODEL.d_model, "n_layers": PART1_MODEL.n_layers, "n_ctx": PART1_MODEL.n_ctx,
                   "batch": 32, "threads": 2},
        "goal": "<= 1.5",
    }, indent=2))


if __name__ == "__main__":
    main()
