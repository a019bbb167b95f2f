"""Figures for the book: attention patterns (static and interactive), patching heat maps and loss curves.

Every interactive view also draws a static matplotlib figure, so the built site (no kernel)
still shows something useful.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch
from jaxtyping import Float
from torch import Tensor


def plot_attention(
    pattern: Float[Tensor, "query_pos key_pos"], str_tokens: Sequence[str], title: str = "", ax=None,
):
    """One head's attention pattern as a heat map, queries down the side, keys along the top."""
    pattern = pattern.detach().cpu()
    if pattern.ndim != 2 or pattern.shape[0] != pattern.shape[1] or pattern.shape[0] != len(str_tokens):
        raise ValueError(f"need a square [pos, pos] pattern and one label per position; got "
                         f"{list(pattern.shape)} and {len(str_tokens)} labels")
    fig = None
    if ax is None:
        n = len(str_tokens)
        fig, ax = plt.subplots(figsize=(1.5 + 0.22 * n, 1.2 + 0.22 * n))
    im = ax.imshow(pattern, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(str_tokens)), str_tokens, rotation=90, fontsize=7)
    ax.set_yticks(range(len(str_tokens)), str_tokens, fontsize=7)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title, fontsize=9)
    if fig is not None:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
    return fig if fig is not None else ax.figure


def plot_attention_grid(
    patterns: Float[Tensor, "n_layers n_heads query_pos key_pos"], str_tokens: Sequence[str], suptitle: str = "",
    panel_inches: float | None = None,
):
    """Every layer's and head's pattern in one figure (rows: layers, columns: heads).

    Each panel is ``panel_inches`` wide (default: grows with the sequence, capped at 4 inches)."""
    n_layers, n_heads = patterns.shape[:2]
    size = panel_inches or min(4.0, 1.0 + 0.14 * len(str_tokens))
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(size * n_heads, size * n_layers), squeeze=False)
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            ax.imshow(patterns[layer, head].detach().cpu(), cmap="Blues", vmin=0, vmax=1)
            ax.set_title(f"L{layer}H{head}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_patching(
    values: Float[Tensor, "rows cols"], x_labels: Sequence[str], y_labels: Sequence[str], title: str = "",
    xlabel: str = "", ylabel: str = "", ax=None, annotate: bool | None = None,
):
    """A patching result as a heat map on the normalised scale (0 = corrupted run, 1 = clean run):
    a diverging map centred on 0, white where patching changed nothing, red towards the clean run, blue
    past the corrupted one. ``annotate`` writes each cell's value (default: when there are <= 40 cells)."""
    values = torch.as_tensor(values).detach().cpu().float()
    if values.ndim != 2 or values.shape != (len(y_labels), len(x_labels)):
        raise ValueError(f"need a [rows, cols] tensor with one label per row and column; got "
                         f"{list(values.shape)}, {len(y_labels)} row and {len(x_labels)} column labels")
    fig = None
    if ax is None:
        rows, cols = values.shape
        fig, ax = plt.subplots(figsize=(min(12.0, 2.0 + 0.28 * cols), 1.4 + 0.4 * rows))
    bound = max(1.0, float(values.abs().max()))
    im = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(x_labels)), list(x_labels), rotation=90 if len(x_labels) > 8 else 0, fontsize=8)
    ax.set_yticks(range(len(y_labels)), list(y_labels), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if annotate if annotate is not None else values.numel() <= 40:
        for (i, j), v in zip(torch.cartesian_prod(torch.arange(values.shape[0]), torch.arange(values.shape[1])).tolist(),
                             values.flatten().tolist()):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(v) > 0.6 * bound else "black")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="normalised metric")
    if fig is not None:
        fig.tight_layout()
    return ax.figure


def stack_patterns(cache, n_layers: int, batch_index: int = 0) -> Float[Tensor, "n_layers n_heads q k"]:
    return torch.stack([cache["pattern", layer][batch_index] for layer in range(n_layers)])


def attention_viewer(patterns: Float[Tensor, "n_layers n_heads q k"], str_tokens: Sequence[str]):
    """Pick a layer and a head with two sliders and see its pattern over the tokens.

    Returns the ipywidgets box; without a live kernel (the built site) use :func:`plot_attention_grid`.
    """
    import ipywidgets as widgets
    from IPython.display import display

    n_layers, n_heads = patterns.shape[:2]
    layer = widgets.IntSlider(0, 0, n_layers - 1, description="layer")
    head = widgets.IntSlider(0, 0, n_heads - 1, description="head")
    out = widgets.Output()

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            fig = plot_attention(patterns[layer.value, head.value], str_tokens,
                                 f"layer {layer.value}, head {head.value}")
            display(fig)
            plt.close(fig)

    layer.observe(redraw, names="value")
    head.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([layer, head]), out])


def plot_loss(losses: Sequence[float], title: str = "training loss", smooth: int = 20, ax=None):
    """Per-step loss (faint) and its running mean (bold), in nats per token."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.2))
    t = torch.tensor(list(losses), dtype=torch.float64)
    ax.plot(t.numpy(), alpha=0.3, lw=0.8, label="per step")
    if len(t) >= smooth > 1:
        kernel = torch.ones(smooth, dtype=torch.float64) / smooth
        run = torch.nn.functional.conv1d(t.view(1, 1, -1), kernel.view(1, 1, -1)).view(-1)
        ax.plot(range(smooth - 1, len(t)), run.numpy(), lw=2, label=f"mean of {smooth}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend()
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else ax.figure
