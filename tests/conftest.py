import os

import pytest
import torch

# Tests must not depend on (or pollute) a learner's cache unless CI shares it on purpose.
os.environ.setdefault("TINYINTERP_CACHE", os.path.expanduser("~/.cache/tinyinterp"))
os.environ.setdefault("MPLBACKEND", "Agg")

from tinyinterp import HookedTransformer, TransformerConfig  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


def small_config(**overrides) -> TransformerConfig:
    base = dict(d_vocab=13, n_ctx=16, d_model=24, n_layers=2, n_heads=3, d_head=8, d_mlp=40, seed=1)
    base.update(overrides)
    return TransformerConfig(**base)


@pytest.fixture
def small_model() -> HookedTransformer:
    model = HookedTransformer(small_config())
    # non-zero biases and LN params so that tests exercise them
    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        for name, p in model.named_parameters():
            if not name.split(".")[-1].startswith("W_"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    model.eval()
    return model


def pytest_collection_modifyitems(config, items):
    """Tests that share a module-scoped fixture (a graded batch, a built wheel, an export) run on one
    pytest-xdist worker (``--dist loadgroup``, as the Makefile runs them), so the fixture is built once,
    not once per worker."""
    for item in items:
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        if any(d and d[-1].scope == "module" for d in defs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
