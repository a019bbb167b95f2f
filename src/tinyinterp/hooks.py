"""Hook points: named identity modules where activations can be read or replaced.

A :class:`HookPoint` returns its input unchanged unless a hook function is attached.
A hook has the TransformerLens signature ``hook(activation, hook) -> activation | None``:
returning ``None`` keeps the activation, returning a tensor replaces it.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor, nn

HookFn = Callable[[Tensor, "HookPoint"], "Tensor | None"]


class HookPoint(nn.Module):
    """An identity layer with a name, where hooks can be attached."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self._hook_fns: list[HookFn] = []

    def add_hook(self, fn: HookFn) -> None:
        self._hook_fns.append(fn)

    def remove_hooks(self) -> None:
        self._hook_fns.clear()

    def forward(self, x: Tensor) -> Tensor:
        for fn in self._hook_fns:
            out = fn(x, self)
            if out is not None:
                if not isinstance(out, Tensor) or out.shape != x.shape:
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(
                        f"hook on {self.name!r} must return None or a tensor of shape "
                        f"{tuple(x.shape)}, got {got}"
                    )
                x = out
        return x

    def extra_repr(self) -> str:
        return repr(self.name)


class ActivationCache:
    """A read-only mapping from hook names to activations, with a few helpers."""

    def __init__(self, activations: dict[str, Tensor]) -> None:
        self._acts = activations

    def __getitem__(self, key: str | tuple) -> Tensor:
        if isinstance(key, tuple):  # cache["pattern", 0] -> "blocks.0.attn.hook_pattern"
            key = full_hook_name(*key)
        if key not in self._acts:
            close = [k for k in self._acts if key.split(".")[-1] in k][:5]
            hint = f"; similar names: {close}" if close else ""
            raise KeyError(f"no activation {key!r} in the cache{hint}")
        return self._acts[key]

    def __contains__(self, key: str) -> bool:
        return key in self._acts

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def keys(self):
        return self._acts.keys()

    def items(self):
        return self._acts.items()

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations: {list(self._acts)[:4]} ...)"


_SHORT_NAMES = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "resid_pre": "blocks.{}.hook_resid_pre",
    "resid_mid": "blocks.{}.hook_resid_mid",
    "resid_post": "blocks.{}.hook_resid_post",
    "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "q": "blocks.{}.attn.hook_q",
    "k": "blocks.{}.attn.hook_k",
    "v": "blocks.{}.attn.hook_v",
    "z": "blocks.{}.attn.hook_z",
    "attn_scores": "blocks.{}.attn.hook_attn_scores",
    "pattern": "blocks.{}.attn.hook_pattern",
    "pre": "blocks.{}.mlp.hook_pre",
    "post": "blocks.{}.mlp.hook_post",
}


def full_hook_name(short: str, layer: int | None = None) -> str:
    """``full_hook_name("pattern", 0) == "blocks.0.attn.hook_pattern"`` (TransformerLens's utils.get_act_name)."""
    if short not in _SHORT_NAMES:
        raise KeyError(f"unknown activation name {short!r}; known: {sorted(_SHORT_NAMES)}")
    template = _SHORT_NAMES[short]
    if "{}" in template:
        if layer is None:
            raise KeyError(f"{short!r} needs a layer index")
        return template.format(layer)
    return template


@torch.no_grad()
def _detach(x: Tensor) -> Tensor:
    return x.detach().clone()
