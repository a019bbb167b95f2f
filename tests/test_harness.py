"""The harness: every reference passes, and bad learner code (stubs, exceptions, NaN, mutation,
sleeping, wrong types) is reported, never crashed on."""

import os
import time

import pytest
import torch

from tinyinterp import check
from tinyinterp.harness import all_exercises, get_exercise, progress, reset_progress
from tinyinterp.harness.judge import run_and_judge

EXERCISES = all_exercises()


@pytest.fixture(autouse=True)
def _not_strict(monkeypatch):
    monkeypatch.delenv("TINYINTERP_STRICT", raising=False)
    reset_progress()


@pytest.mark.parametrize("ex_id", list(EXERCISES))
def test_reference_passes_public_and_hidden_cases(ex_id):
    ex = EXERCISES[ex_id]
    r = check(ex_id, ex.reference)
    assert r.passed and r.points == ex.points == r.max_points, r.message
    assert r.cases_total >= 4
    names = {c.name for c in ex.public_cases()}
    assert any("1" in n or "long" in n or "large" in n for n in names)
    for case in ex.hidden_cases():
        assert run_and_judge(ex, ex.reference, case).ok


# Catalogued mistakes (rejected, named, and never mistaken for one another): tests/test_mistakes.py.
# Float64 expected outputs, well-conditioned cases, torch's built-ins: tests/test_numerics.py.


def _stub(*args, **kwargs):
    raise NotImplementedError()


def test_stub_is_rejected_with_a_clear_message():
    r = check("attention_pattern", lambda q, k: _stub())
    assert not r.passed and r.kind == "not_implemented"
    assert "Not implemented yet" in r.message and "attention_pattern(q, k)" in r.message


def test_exception_shows_the_learners_traceback():
    def attention_pattern(q, k):
        scores = q @ k  # wrong shapes for matmul
        return scores

    r = check("attention_pattern", attention_pattern)
    assert r.kind == "exception" and "RuntimeError" in r.message and "scores = q @ k" in r.message
    assert "tinyinterp/harness" not in r.message  # harness frames trimmed


def test_nan_is_reported():
    r = check("attention_pattern", lambda q, k: torch.full((q.shape[0], q.shape[2], q.shape[1], q.shape[1]), float("nan")))
    assert not r.passed and r.kind == "nan" and "NaN" in r.message


def test_wrong_shape_and_dtype_and_type():
    ref = get_exercise("attention_pattern").reference
    r = check("attention_pattern", lambda q, k: ref(q, k).transpose(1, 2).contiguous().clone()[:, :, :, :])
    assert r.kind in ("shape", "mistake") and not r.passed
    r = check("attention_pattern", lambda q, k: ref(q, k)[..., :-1])
    assert r.kind == "shape" and "expected [" in r.message and "got [" in r.message
    r = check("attention_pattern", lambda q, k: ref(q, k).double())
    assert r.kind == "dtype" and "torch.float64" in r.message
    r = check("attention_pattern", lambda q, k: ref(q, k).numpy())
    assert r.kind == "type" and "ndarray" in r.message
    r = check("attention_pattern", lambda q, k: None)
    assert r.kind == "type" and "forget to `return`" in r.message


def test_input_mutation_is_reported():
    ref = get_exercise("attention_pattern").reference

    def sneaky(q, k):
        out = ref(q, k)
        q.mul_(2)
        return out

    r = check("attention_pattern", sneaky)
    assert r.kind == "mutated" and "`q`" in r.message


def test_sleeping_past_the_limit_is_reported(monkeypatch):
    ex = get_exercise("top_k_logits")
    monkeypatch.setattr(ex, "time_limit_s", 0.3)

    def slow(logits, k):
        while True:
            try:
                time.sleep(10)
            except Exception:  # learner code trying to swallow the interrupt
                pass

    t = time.perf_counter()
    r = check("top_k_logits", slow)
    assert r.kind == "timeout" and "Time limit exceeded" in r.message
    assert time.perf_counter() - t < 5


def test_system_exit_in_learner_code_is_reported():
    def quitter(logits, k):
        raise SystemExit(0)

    r = check("top_k_logits", quitter)
    assert r.kind == "exception" and "SystemExit" in r.message


def test_lookalike_tensors_are_not_accepted():
    ref = get_exercise("top_k_logits").reference

    class AlwaysEqual(torch.Tensor):
        def __eq__(self, other):
            return True

    r = check("top_k_logits", lambda logits, k: ref(logits, k).as_subclass(AlwaysEqual))
    assert not r.passed and r.kind == "type"

    class Fake:
        shape = None

        def __eq__(self, other):
            return True

    r = check("top_k_logits", lambda logits, k: Fake())
    assert not r.passed and r.kind == "type"


def test_signature_and_argument_errors():
    r = check("attention_pattern", lambda queries, keys: None)
    assert r.kind == "signature" and "attention_pattern(q, k)" in r.message
    r = check("attention_pattern", "not a function")
    assert not r.passed and "needs your function" in r.message
    r = check("atention_pattern", lambda q, k: None)
    assert not r.passed and "Did you mean 'attention_pattern'" in r.message


def test_values_off_reports_max_error_and_where():
    ref = get_exercise("mlp").reference
    r = check("mlp", lambda x, W_in, b_in, W_out, b_out: ref(x, W_in, b_in, W_out, b_out) + 0.01)
    assert r.kind == "values" and "max abs error" in r.message and "at index" in r.message


def test_strict_mode_raises(monkeypatch):
    monkeypatch.setenv("TINYINTERP_STRICT", "1")
    with pytest.raises(AssertionError, match="FAILED"):
        check("mlp", lambda x, W_in, b_in, W_out, b_out: _stub())
    assert check("mlp", get_exercise("mlp").reference).passed


def test_progress_table():
    check("mlp", get_exercise("mlp").reference)
    check("layer_norm", lambda x, w, b, eps: _stub())
    table = progress()
    text = str(table)
    assert "mlp" in text and "passed" in text and "failed" in text and "not checked" in text
    ex = EXERCISES
    assert table.points == ex["mlp"].points
    assert table.max_points == sum(e.points for e in ex.values() if e.chapter == ex["mlp"].chapter)
    assert "<table>" in table._repr_html_()
    assert "✔" in check("mlp", ex["mlp"].reference)._repr_html_()


def test_harness_never_crashes_on_weird_returns():
    weird = [lambda **kw: object(), lambda **kw: (1, 2), lambda **kw: "text", lambda **kw: torch.tensor(float("inf")),
             lambda **kw: [torch.zeros(1)], lambda **kw: True]
    for ex_id in EXERCISES:
        for fn in weird:
            r = check(ex_id, fn)
            assert not r.passed and r.message
