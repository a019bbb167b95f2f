"""The transformer's configuration: one dataclass, serialisable to a plain dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of a :class:`~tinyinterp.model.HookedTransformer`.

    Names follow TransformerLens's ``HookedTransformerConfig``.
    """

    d_vocab: int
    n_ctx: int = 128
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_head: int = 16
    d_mlp: int = 256
    attn_only: bool = False
    normalization: str | None = "LN"  # "LN" or None
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_vocab", "n_ctx", "d_model", "n_layers", "n_heads", "d_head"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransformerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.normalization not in ("LN", None):
            raise ValueError(f"normalization must be 'LN' or None, got {self.normalization!r}")
        if not self.attn_only and self.d_mlp < 1:
            raise ValueError("d_mlp must be >= 1 unless attn_only=True")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields: {sorted(unknown)}")
        return cls(**d)
