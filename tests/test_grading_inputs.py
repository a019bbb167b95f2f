"""Test inputs reach the grading sandbox intact: every case of every exercise survives
encode -> torch.save -> torch.load(weights_only=True) -> decode, with the same types and the same
reference output; anything the codec cannot carry is refused with a message naming where it is."""

import copy
import io

import pytest
import torch

from tinyinterp.config import TransformerConfig
from tinyinterp.grading import inputs as I
from tinyinterp.harness import Case, all_exercises
from tinyinterp.harness.bound import BoundFunction
from tinyinterp.harness.precision import float_dtypes, to_float64
from tinyinterp.hooks import ActivationCache
from tinyinterp.model import HookedTransformer

EXERCISES = list(all_exercises().values())


def round_trip(encoded):
    buf = io.BytesIO()
    I.save(encoded, buf)
    buf.seek(0)
    return I.load(buf)  # torch.load(weights_only=True), then decode


def same_structure(a, b, where=""):
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
        assert a.requires_grad == b.requires_grad, where
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_structure(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            same_structure(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, ActivationCache):
        same_structure(dict(a.items()), dict(b.items()), where)
    elif isinstance(a, BoundFunction):
        assert a.func is b.func, where
        same_structure(a.bound, b.bound, f"{where}.bound")
    elif isinstance(a, torch.nn.Module):
        assert a.cfg == b.cfg and a.training == b.training, where
        sa, sb = a.state_dict(), b.state_dict()
        same_structure(dict(sa), dict(sb), f"{where}.state_dict()")
        assert [p.requires_grad for p in a.parameters()] == [p.requires_grad for p in b.parameters()], where
    else:
        assert a == b, where


def same_output(a, b):
    if isinstance(a, tuple):
        return all(same_output(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("ex", EXERCISES, ids=lambda ex: ex.id)
def test_every_case_reaches_the_child_intact(ex):
    cases = ex.public_cases() + ex.hidden_cases()
    decoded = round_trip(I.encode_cases({ex.id: cases}))[ex.id]
    assert len(decoded) == len(cases)
    for case, kwargs in zip(cases, decoded):
        same_structure(case.kwargs, kwargs, f"{ex.id}/{case.name}")
        expected = ex.reference(**copy.deepcopy(case.kwargs))
        assert same_output(expected, ex.reference(**copy.deepcopy(kwargs))), f"{ex.id}/{case.name}"


def test_the_book_uses_every_tagged_kind():
    """The richer inputs really occur (so the test above covers them), and only allowlisted models."""
    seen, models = set(), set()

    def walk(x):
        if isinstance(x, dict):
            if I.TAG in x:
                seen.add(x[I.TAG])
                if x[I.TAG] == "model":
                    models.add(x["class"])
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, (tuple, list)):
            for v in x:
                walk(v)

    for ex in EXERCISES:
        walk(I.encode_cases({ex.id: ex.public_cases() + ex.hidden_cases()}))
    assert {"model", "activation_cache", "function"} <= seen and models <= I.MODEL_CLASSES


def test_unsupported_input_is_refused_with_a_message_naming_it():
    with pytest.raises(I.InputEncodingError, match=r"exercise 'demo', case 'odd'.*\['gen'\].*Generator.*inputs\.py"):
        I.encode_cases({"demo": [Case("odd", {"x": torch.zeros(2), "gen": torch.Generator()})]})
    with pytest.raises(I.InputEncodingError, match="string keys"):
        I.encode({I.TAG: "model"})


def test_every_exercise_is_checked_before_release():
    I.check_encodable(EXERCISES)  # what `tinyinterp release` runs


def test_model_classes_outside_the_allowlist_are_refused():
    class Other(HookedTransformer):
        pass

    cfg = TransformerConfig(d_vocab=5, n_ctx=4, d_model=8, n_layers=1, n_heads=2, d_head=4, d_mlp=8)
    with pytest.raises(I.InputEncodingError, match="cannot be sent"):
        I.encode(Other(cfg))
    forged = I.encode(HookedTransformer(cfg))
    forged["class"] = "os:system"
    with pytest.raises(I.InputEncodingError, match="not in MODEL_CLASSES"):
        I.decode(forged)


def test_a_model_with_hooks_attached_is_refused():
    model = HookedTransformer(TransformerConfig(d_vocab=5, n_ctx=4, d_model=8, n_layers=1, n_heads=2, d_head=4,
                                                d_mlp=8))
    model.hook_dict["hook_embed"].add_hook(lambda x, hp: x)
    with pytest.raises(I.InputEncodingError, match="hooks"):
        I.encode(model)


def _tiny_model():
    return HookedTransformer(TransformerConfig(d_vocab=5, n_ctx=4, d_model=8, n_layers=1, n_heads=2, d_head=4,
                                               d_mlp=8))


def _first_logit(tokens, model, position=0):  # a module-level function of the tests, not of tinyinterp
    return model(tokens)[:, position, 0]


def test_a_bound_function_travels_as_its_path_and_plain_arguments():
    from tinyinterp.functional import gelu

    f = BoundFunction(gelu)
    encoded = I.encode({"f": f})
    assert encoded["f"] == {I.TAG: "function", "path": "tinyinterp.functional:gelu", "bound": {}}
    g = round_trip(encoded)["f"]
    x = torch.randn(4)
    assert isinstance(g, BoundFunction) and g.func is gelu and torch.equal(g(x), f(x))


def test_a_bound_model_is_made_float64_for_the_reference():
    from tinyinterp.reviews import score_of_embeddings

    f = BoundFunction(score_of_embeddings, model=_tiny_model())
    assert float_dtypes({"f": f}) == {torch.float32}
    g = to_float64(f)
    assert g.func is score_of_embeddings and float_dtypes(g) == {torch.float64}
    assert f.bound["model"].W_E.dtype == torch.float32  # the original is untouched


def test_only_the_packages_own_functions_can_be_bound_or_named():
    for func in (lambda x: x, _first_logit, print, torch.sigmoid):
        with pytest.raises(ValueError, match="module-level function of the tinyinterp package"):
            BoundFunction(func)
    from tinyinterp.harness.judge import judge_runs

    with pytest.raises(ValueError, match="grading code"):
        BoundFunction(judge_runs)
    forged = I.encode({"f": BoundFunction(__import__("tinyinterp.functional").functional.gelu)})
    for path in ("os:system", "builtins:eval", "tinyinterp.functional:os", "tinyinterp.functional:nope",
                 "tinyinterp.nope:f", "tinyinterp.functional:gelu.__globals__",
                 "tinyinterp.harness.judge:judge_runs"):
        forged["f"]["path"] = path
        with pytest.raises(I.InputEncodingError, match="function input"):
            I.decode(forged)
