"""Test inputs as plain data, so that the sandboxed child can read them with
``torch.load(weights_only=True)`` (which runs no code) and rebuild them before any learner code runs.

Plain data is a tensor, a number, a string, ``None``, or a tuple/list/dict (string keys) of plain data.
The book's richer inputs travel in a tagged form, ``{TAG: kind, ...}``:

- a model: its class (one of :data:`MODEL_CLASSES`), its ``TransformerConfig`` as a dict, its
  ``state_dict``, its train/eval mode and which parameters require grad;
- an :class:`~tinyinterp.hooks.ActivationCache`: its dict of tensors;
- a :class:`~tinyinterp.config.TransformerConfig`: its dict;
- a :class:`~tinyinterp.harness.bound.BoundFunction`: the import path of its function (inside ``tinyinterp``)
  and its bound keyword arguments, as plain data.

Anything else raises :class:`InputEncodingError` naming the exercise, the case and the argument, so a
new kind of input fails at release and in the tests (``tinyinterp release`` encodes every case), never
as a silent zero for the learner.
"""

from __future__ import annotations

import importlib
import io
from typing import Any

import torch
from torch import Tensor, nn

TAG = "__tinyinterp_input__"
# Model classes the child may rebuild, as "module:qualname". Each must be built by ``cls(cfg)``.
MODEL_CLASSES = frozenset({
    "tinyinterp.model:HookedTransformer",
    "tinyinterp.exercises.part2_induction:_Model",
})
_PLAIN_SCALARS = (bool, int, float, str, type(None))


class InputEncodingError(Exception):
    """A test input cannot be sent to the grading child (a grader problem, never the learner's)."""


def _class_name(x: Any) -> str:
    return f"{type(x).__module__}:{type(x).__qualname__}"


def encode(x: Any, where: str = "input") -> Any:
    """``x`` as plain data (tagged forms for models, caches and configs); raises InputEncodingError."""
    from ..config import TransformerConfig
    from ..harness.bound import BoundFunction
    from ..hooks import ActivationCache
    from ..model import HookedTransformer

    if type(x) is Tensor or type(x) is nn.Parameter:
        return x
    if type(x) in _PLAIN_SCALARS:
        return x
    if type(x) in (tuple, list):
        return type(x)(encode(v, f"{where}[{i}]") for i, v in enumerate(x))
    if type(x) is dict:
        if TAG in x or not all(type(k) is str for k in x):
            raise InputEncodingError(f"{where}: a dict must have string keys other than {TAG!r}")
        return {k: encode(v, f"{where}[{k!r}]") for k, v in x.items()}
    if type(x) is TransformerConfig:
        return {TAG: "config", "fields": x.to_dict()}
    if type(x) is BoundFunction:
        return {TAG: "function", "path": x.path, "bound": encode(x.bound, f"{where} (bound arguments)")}
    if type(x) is ActivationCache:
        return {TAG: "activation_cache", "activations": encode(dict(x.items()), f"{where} (cache)")}
    if isinstance(x, HookedTransformer) and _class_name(x) in MODEL_CLASSES:
        if any(hp._hook_fns for hp in x.hook_dict.values()):
            raise InputEncodingError(f"{where}: a model with hooks attached cannot be sent (hooks are code)")
        dtypes = {str(t.dtype).removeprefix("torch.") for t in x.state_dict().values() if t.is_floating_point()}
        if len(dtypes) > 1:
            raise InputEncodingError(f"{where}: a model with parameters of several dtypes {sorted(dtypes)}")
        return {TAG: "model", "class": _class_name(x), "config": x.cfg.to_dict(), "dtype": min(dtypes, default=None),
                "state": {k: v.detach().clone() for k, v in x.state_dict().items()}, "training": x.training,
                "requires_grad": {k: p.requires_grad for k, p in x.named_parameters()}}
    kinds = ("tensors, numbers, strings, None, tuples/lists/dicts of them, a TransformerConfig, an ActivationCache, "
             "a BoundFunction")
    raise InputEncodingError(
        f"{where}: a {_class_name(x)} cannot be sent to the grading process (supported: {kinds}, and models of "
        f"the classes in MODEL_CLASSES: {', '.join(sorted(MODEL_CLASSES))}); add it to tinyinterp/grading/inputs.py")


def decode(x: Any) -> Any:
    """The inverse of :func:`encode` (run in the child, before any learner code)."""
    if type(x) in (tuple, list):
        return type(x)(decode(v) for v in x)
    if type(x) is not dict:
        return x
    if TAG not in x:
        return {k: decode(v) for k, v in x.items()}
    kind = x[TAG]
    from ..config import TransformerConfig

    if kind == "config":
        return TransformerConfig.from_dict(x["fields"])
    if kind == "activation_cache":
        from ..hooks import ActivationCache

        return ActivationCache(decode(x["activations"]))
    if kind == "model":
        return _rebuild_model(x)
    if kind == "function":
        from ..harness.bound import BoundFunction, resolve

        try:
            return BoundFunction(resolve(x["path"]), **decode(x["bound"]))
        except (ValueError, AttributeError, ImportError) as e:
            raise InputEncodingError(f"function input {x['path']!r}: {e}") from None
    raise InputEncodingError(f"unknown tagged input {kind!r}")


def _rebuild_model(x: dict) -> nn.Module:
    if x["class"] not in MODEL_CLASSES:
        raise InputEncodingError(f"model class {x['class']!r} is not in MODEL_CLASSES")
    module, qualname = x["class"].split(":")
    cls = getattr(importlib.import_module(module), qualname)
    from ..config import TransformerConfig

    model = cls(TransformerConfig.from_dict(x["config"]))
    if x.get("dtype") in ("float64", "float32", "float16", "bfloat16"):
        model.to(getattr(torch, x["dtype"]))  # before loading, so the state keeps its own precision
    model.load_state_dict(x["state"])
    model.train(bool(x["training"]))
    for name, p in model.named_parameters():
        p.requires_grad_(bool(x["requires_grad"][name]))
    return model


def encode_cases(cases: dict[str, list]) -> dict[str, list]:
    """``{exercise id: [Case, ...]}`` -> ``{exercise id: [encoded kwargs, ...]}``."""
    return {ex_id: [encode(c.kwargs, f"exercise {ex_id!r}, case {c.name!r}, inputs") for c in cs]
            for ex_id, cs in cases.items()}


def save(encoded: Any, path) -> None:
    torch.save(encoded, path)


def load(path) -> Any:
    """What :func:`save` wrote, decoded; the file is read with ``weights_only=True`` (no code runs)."""
    return decode(torch.load(path, weights_only=True))


def check_encodable(exercises) -> None:
    """Send every public and hidden case of ``exercises`` through :func:`save` and :func:`load`, as a
    grading run does (``tinyinterp release`` and the tests call this)."""
    for ex in exercises:
        buf = io.BytesIO()
        try:
            save(encode_cases({ex.id: ex.public_cases() + ex.hidden_cases()}), buf)
            buf.seek(0)
            load(buf)
        except InputEncodingError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. torch.load refusing a type: say which exercise
            raise InputEncodingError(f"exercise {ex.id!r}: {type(e).__name__}: {str(e)[:300]}") from e
