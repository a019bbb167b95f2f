"""The tables in book/appendix_parameters.md and book/notation.md agree with the model.

Each table row names a parameter (or hook point) with ``{i}`` for the layer, a symbolic shape such
as ``[n_heads, d_model, d_head]`` and the configurations in which it is absent. The model is built
with a different size for every dimension, so each concrete shape can be turned back into names.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch

from tinyinterp import HookedTransformer, TransformerConfig

BOOK = Path(__file__).resolve().parents[1] / "book"

# Every dimension a different size (and none equal to 1, used by LayerNorm's hook_scale).
SIZES = {"d_vocab": 23, "n_ctx": 19, "d_model": 12, "n_heads": 3, "d_head": 5, "d_mlp": 17}
N_LAYERS = 2
BATCH, POS = 2, 7
CONFIGS = [dict(attn_only=a, normalization=n) for a, n in itertools.product([False, True], ["LN", None])]
ROW_RE = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*`\[([^\]]*)\]`\s*\|([^|]*)\|")
CONDITION_RE = re.compile(r"`(attn_only=True|normalization=None)`")


def _config(attn_only: bool, normalization: str | None) -> TransformerConfig:
    return TransformerConfig(n_layers=N_LAYERS, attn_only=attn_only, normalization=normalization, **SIZES)


def parse_table(path: Path, header: str) -> list[tuple[str, tuple[str, ...], set[str]]]:
    """Rows (name, shape, absent_when) of the markdown table whose header row starts with ``header``."""
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"| {header} |")), None)
    assert start is not None, f"{path.name}: no table with a '{header}' column"
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        m = ROW_RE.match(line)
        assert m, f"{path.name}: cannot parse table row {line!r} (want | `name` | `[dims]` | absent when | ...)"
        name, dims, absent = m.groups()
        shape = tuple(d.strip() for d in dims.split(",") if d.strip())
        conditions = set(CONDITION_RE.findall(absent))
        assert conditions or absent.strip() == "never", f"{path.name}: unknown 'absent when' in {line!r}"
        rows.append((name, shape, conditions))
    assert rows, f"{path.name}: the '{header}' table is empty"
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)), f"{path.name}: a row appears twice"
    return rows


def expected_from_table(rows, attn_only: bool, normalization: str | None) -> dict[str, tuple[str, ...]]:
    active = {"attn_only=True"} if attn_only else set()
    if normalization is None:
        active.add("normalization=None")
    out = {}
    for name, shape, absent_when in rows:
        if absent_when & active:
            continue
        layers = range(N_LAYERS) if "{i}" in name else [None]
        for i in layers:
            out[name.replace("{i}", str(i))] = shape
    return out


def symbolic(shape: torch.Size, sizes: dict[str, int]) -> tuple[str, ...]:
    names = {v: k for k, v in sizes.items()}
    assert len(names) == len(sizes), "test set-up: two dimensions share a size"
    return tuple(names.get(n, str(n)) for n in shape)


def _describe_diff(doc: dict, code: dict) -> str:
    lines = [f"  in the book but not the model: {n}" for n in sorted(set(doc) - set(code))]
    lines += [f"  in the model but not the book: {n} {list(code[n])}" for n in sorted(set(code) - set(doc))]
    lines += [f"  {n}: book says {list(doc[n])}, model has {list(code[n])}"
              for n in sorted(set(doc) & set(code)) if doc[n] != code[n]]
    return "\n".join(lines)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"attn_only={c['attn_only']},normalization={c['normalization']}")
def test_parameter_table_matches_named_parameters(cfg):
    rows = parse_table(BOOK / "appendix_parameters.md", "Parameter")
    model = HookedTransformer(_config(**cfg))
    code = {name: symbolic(p.shape, SIZES) for name, p in model.named_parameters()}
    doc = expected_from_table(rows, **cfg)
    assert doc == code, "book/appendix_parameters.md disagrees with model.named_parameters():\n" + _describe_diff(doc, code)


def test_parameter_table_order_follows_the_model():
    """Rows appear in the order of ``named_parameters()`` (layer 0 only), so the page reads like the model."""
    rows = parse_table(BOOK / "appendix_parameters.md", "Parameter")
    model = HookedTransformer(_config(attn_only=False, normalization="LN"))
    order = [n for n, _ in model.named_parameters() if not n.startswith("blocks.") or n.startswith("blocks.0.")]
    documented = [name.replace("{i}", "0") for name, _, _ in rows]
    assert documented == order, "book/appendix_parameters.md should list the parameters in named_parameters() order"


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"attn_only={c['attn_only']},normalization={c['normalization']}")
def test_hook_table_matches_run_with_cache(cfg):
    rows = parse_table(BOOK / "notation.md", "Hook point")
    rows = [(n, tuple("pos" if d in ("query_pos", "key_pos") else d for d in s), a) for n, s, a in rows]
    model = HookedTransformer(_config(**cfg))
    tokens = torch.randint(0, SIZES["d_vocab"], (BATCH, POS))
    _, cache = model.run_with_cache(tokens)
    sizes = {**SIZES, "batch": BATCH, "pos": POS}
    code = {name: symbolic(act.shape, sizes) for name, act in cache.items()}
    doc = expected_from_table(rows, **cfg)
    assert doc == code, "book/notation.md's hook table disagrees with run_with_cache:\n" + _describe_diff(doc, code)
    layer0 = [n for n in cache.keys() if not n.startswith("blocks.") or n.startswith("blocks.0.")]
    documented = [n.replace("{i}", "0") for n in expected_from_table(rows, **cfg)
                  if not n.startswith("blocks.") or n.startswith("blocks.0.")]
    assert documented == layer0, "book/notation.md should list the hook points in forward-pass order"
