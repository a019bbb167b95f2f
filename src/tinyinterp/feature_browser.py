"""Browse an SAE's latents: the contexts that activate them most, and the tokens they promote.

:func:`feature_browser` is an ipywidgets view (pick a latent, see its card); every card is plain
HTML (:func:`feature_card_html`), so :func:`render_feature_cards` shows the same thing on the built
site, where no kernel runs the widgets.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .data import CharTokenizer
from .model import HookedTransformer
from .sae import SparseAutoencoder
from .sae_lm import collect_mlp_activations

_SHOW = {"\n": "⏎", "\x02": "⟨bos⟩"}


@dataclass
class FeatureData:
    """An SAE's latents on some windows, with what is needed to display them."""

    windows: Int[Tensor, "n pos"]
    latents: Float[Tensor, "n pos d_sae"]
    logit_effect: Float[Tensor, "d_sae d_vocab"]
    tokenizer: CharTokenizer

    @property
    def d_sae(self) -> int:
        return self.latents.shape[-1]

    def firing_frequency(self) -> Float[Tensor, "d_sae"]:
        """The fraction of tokens on which each latent is non-zero."""
        return (self.latents > 0).float().mean(dim=(0, 1))


@torch.no_grad()
def latent_logit_effect(model: HookedTransformer, sae: SparseAutoencoder, layer: int) -> Float[Tensor, "d_sae d_vocab"]:
    """How much each latent, at activation 1, raises each token's logit along the direct path:
    its decoder row through the MLP's ``W_out``, the final LayerNorm (centring and its weight ``w``;
    the per-token scale is positive and left out, so rankings are exact up to it) and ``W_U``."""
    out = sae.W_dec @ model.blocks[layer].mlp.W_out  # [d_sae, d_model]
    out = out - out.mean(-1, keepdim=True)
    if hasattr(model.ln_final, "w"):
        out = out * model.ln_final.w
    return out @ model.W_U


@torch.no_grad()
def feature_data(
    model: HookedTransformer, sae: SparseAutoencoder, windows: Int[Tensor, "n pos"], layer: int,
    tokenizer: CharTokenizer,
) -> FeatureData:
    """Run the model on ``windows``, encode its MLP activations with ``sae``, keep everything needed."""
    acts = collect_mlp_activations(model, windows, layer)
    latents = sae.encode(acts.reshape(-1, acts.shape[-1])).reshape(*acts.shape[:2], -1)
    return FeatureData(windows, latents, latent_logit_effect(model, sae, layer), tokenizer)


def top_activating_contexts(
    latents: Float[Tensor, "n pos d_sae"], latent: int, k: int = 8
) -> list[tuple[int, int, float]]:
    """The ``k`` windows where ``latent`` reaches its highest values, one ``(window, pos, value)``
    each (its maximum in that window), highest first; windows where it never fires are left out."""
    acts = latents[..., latent]  # [n, pos]
    best, where = acts.max(dim=-1)
    order = best.argsort(descending=True)[:k]
    return [(int(i), int(where[i]), float(best[i])) for i in order if best[i] > 0]


def boosted_tokens(logit_effect: Float[Tensor, "d_sae d_vocab"], latent: int, tokenizer: CharTokenizer,
                   k: int = 6) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The ``k`` tokens whose logits the latent raises most, and the ``k`` it lowers most."""
    effect = logit_effect[latent]
    up, down = effect.topk(k), (-effect).topk(k)
    name = lambda i: _display(tokenizer.itos[i])  # noqa: E731
    return ([(name(i), v) for i, v in zip(up.indices.tolist(), up.values.tolist())],
            [(name(i), -v) for i, v in zip(down.indices.tolist(), down.values.tolist())])


def _display(char: str) -> str:
    return _SHOW.get(char, "␣" if char == " " else char)


def context_html(
    chars: Sequence[str], acts: Sequence[float], center: int, max_act: float, before: int = 30, after: int = 6,
) -> str:
    """One line of text around position ``center``, each token shaded by its activation (orange, by
    ``act / max_act``), the ``center`` token boxed. Hover a token to see its value."""
    lo, hi = max(0, center - before), min(len(chars), center + after + 1)
    spans = []
    for i in range(lo, hi):
        a = max(0.0, float(acts[i]))
        alpha = min(1.0, a / max_act) if max_act > 0 else 0.0
        shown = html.escape(_SHOW.get(chars[i], chars[i]))
        if a == 0 and i != center:
            spans.append(shown)  # plain text keeps the page small
            continue
        style = f"background:rgba(255,140,0,{alpha:.2f});"
        if i == center:
            style += "outline:1.5px solid #b35900;font-weight:bold;"
        spans.append(f'<span style="{style}" title="{a:.2f}">{shown}</span>')
    prefix = "…" if lo > 0 else ""
    return (f'<div style="font-family:monospace;white-space:pre;line-height:1.7;overflow-x:auto">'
            f"{prefix}{''.join(spans)}</div>")


def feature_card_html(data: FeatureData, latent: int, k: int = 6) -> str:
    """A card for one latent: firing frequency, top-activating contexts, boosted and suppressed tokens."""
    if not 0 <= latent < data.d_sae:
        raise IndexError(f"latent {latent} out of range: the SAE has {data.d_sae} latents")
    freq = data.firing_frequency()[latent].item()
    contexts = top_activating_contexts(data.latents, latent, k)
    max_act = contexts[0][2] if contexts else 0.0
    head = (f"<b>Latent {latent}</b> · fires on {freq:.2%} of tokens · max activation {max_act:.2f}")
    if not contexts:
        body = "<div><i>never fires on these windows (a dead latent)</i></div>"
    else:
        body = "".join(
            context_html(list(data.tokenizer.decode(data.windows[w])), data.latents[w, :, latent].tolist(), p, max_act)
            for w, p, _ in contexts)
    up, down = boosted_tokens(data.logit_effect, latent, data.tokenizer)
    fmt = lambda pairs: " ".join(  # noqa: E731
        f'<code>{html.escape(t)}</code>&nbsp;{v:+.2f}' for t, v in pairs)
    logits = (f'<div style="margin-top:4px;font-size:90%">boosts: {fmt(up)}<br>suppresses: {fmt(down)}</div>')
    return (f'<div style="border:1px solid #ccc;border-radius:4px;padding:6px 10px;margin:6px 0;'
            f'font-family:sans-serif">{head}{body}{logits}</div>')


def render_feature_cards(data: FeatureData, latents: Sequence[int], k: int = 6):
    """Several cards as one ``IPython.display.HTML`` object: the static view for the built site."""
    from IPython.display import HTML

    return HTML("".join(feature_card_html(data, int(i), k) for i in latents))


def feature_browser(data: FeatureData, start: int = 0, k: int = 8):
    """An ipywidgets browser: type or step through latent indices, or pick one of the most frequent
    latents from a list, and see its card. Needs a live kernel; on the built site use
    :func:`render_feature_cards`."""
    import ipywidgets as widgets

    freq = data.firing_frequency()
    by_freq = freq.argsort(descending=True).tolist()
    picker = widgets.BoundedIntText(value=start, min=0, max=data.d_sae - 1, description="latent")
    common = widgets.Dropdown(
        options=[("(most frequent latents)", -1)] + [(f"{i}  ({freq[i]:.1%} of tokens)", i) for i in by_freq[:50]],
        value=-1, description="or pick")
    card = widgets.HTML(feature_card_html(data, start, k))

    def show(change) -> None:
        card.value = feature_card_html(data, int(picker.value), k)

    def pick(change) -> None:
        if change["new"] >= 0:
            picker.value = change["new"]

    picker.observe(show, names="value")
    common.observe(pick, names="value")
    return widgets.VBox([widgets.HBox([picker, common]), card])


__all__ = ["FeatureData", "latent_logit_effect", "feature_data", "top_activating_contexts", "boosted_tokens",
           "context_html", "feature_card_html", "render_feature_cards", "feature_browser"]
