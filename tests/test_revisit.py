"""``tinyinterp.uses``: a failing cell that uses an exercise's result names the exercise, says what
happened and what to do, and reports the exercise's last check; the original error stays chained."""

import traceback

import pytest
import torch

import tinyinterp
from tinyinterp import RevisitExercise, check, uses
from tinyinterp import functional as F
from tinyinterp.harness import get_exercise, reset_progress

PATTERN = get_exercise("attention_pattern")
OUTPUT = get_exercise("attention_output")
CHECK_PATTERN = 'tinyinterp.check("attention_pattern", attention_pattern)'


@pytest.fixture(autouse=True)
def _fresh_session(monkeypatch):
    monkeypatch.delenv("TINYINTERP_STRICT", raising=False)
    reset_progress()
    yield
    reset_progress()


def attention_pattern(q, k):  # a learner's stub, named after the exercise as in the notebooks
    raise NotImplementedError()


def attention_output(pattern, v, W_O):  # a learner's buggy function
    return pattern.sum() + v["no such key"]


def _failure(*ids, run) -> RevisitExercise:
    with pytest.raises(RevisitExercise) as info:
        with uses(*ids):
            run()
    return info.value


def test_exported_from_the_package():
    assert tinyinterp.uses is uses and "uses" in tinyinterp.__all__


def test_a_stub_names_the_exercise_and_what_to_do():
    error = _failure("attention_pattern", run=lambda: attention_pattern(torch.ones(1), torch.ones(1)))
    message = str(error)
    assert message.startswith(f"Exercise `attention_pattern` ({PATTERN.title}) is not written yet")
    assert "NotImplementedError" in message
    assert CHECK_PATTERN in message and "revisit `attention_pattern`" in message
    assert "check has not run in this session yet" in message


def test_the_original_error_and_its_traceback_are_kept():
    error = _failure("attention_pattern", run=lambda: attention_pattern(1, 2))
    assert isinstance(error.__cause__, NotImplementedError)
    frames = [f.name for f in traceback.extract_tb(error.__cause__.__traceback__)]
    assert frames[-1] == "attention_pattern"  # down to the line that raised


def test_a_failed_claim_quotes_the_asserts_message():
    def run():
        demo = torch.full((3, 3), 0.5)
        assert torch.allclose(demo.sum(-1), torch.ones(3)), "every row of the pattern sums to 1"

    message = str(_failure("attention_pattern", run=run))
    assert message.startswith(f"This cell uses the result of Exercise `attention_pattern` ({PATTERN.title})")
    assert "a claim about it failed: every row of the pattern sums to 1" in message


def test_a_failed_claim_without_a_message_quotes_the_assert(tmp_path):
    cell = tmp_path / "cell.py"  # a plain file: pytest rewrites the asserts of test modules
    cell.write_text("total = 2\nassert total == 1\n")
    code = compile(cell.read_text(), str(cell), "exec")
    message = str(_failure("attention_pattern", run=lambda: exec(code, {})))
    assert "a claim about it failed: `assert total == 1`" in message


def test_an_error_raised_inside_the_learners_function_names_it():
    def run():
        attention_output(torch.ones(2), {}, None)

    message = str(_failure("attention_pattern", "attention_output", run=run))
    assert message.startswith(f"Exercise `attention_output` ({OUTPUT.title}) raised KeyError")
    assert "`attention_pattern`" not in message  # the culprit alone, not every exercise the cell uses


def test_an_error_in_the_cell_itself_names_every_exercise_the_cell_uses():
    def run():
        torch.ones(2) @ torch.ones(3)

    message = str(_failure("attention_pattern", "attention_output", run=run))
    assert "Exercise `attention_pattern`" in message and "Exercise `attention_output`" in message
    assert "raised RuntimeError" in message
    assert CHECK_PATTERN in message and 'tinyinterp.check("attention_output", attention_output)' in message


def test_the_books_own_function_of_the_same_name_is_not_blamed():
    def run():
        F.attention_pattern(torch.ones(2, 3), None)  # the library's, misused by the cell

    message = str(_failure("layer_norm", run=run))
    assert message.startswith("This cell uses the result of Exercise `layer_norm`")
    assert "Exercise `attention_pattern`" not in message


def test_an_undefined_exercise_function_means_run_its_cell():
    def run():
        return causal_attention(1)  # noqa: F821 - the learner has not run the exercise's cell

    message = str(_failure("causal_attention", run=run))
    assert message.startswith("Exercise `causal_attention`") and "is not defined yet" in message
    assert "run the cell that defines `causal_attention`" in message


def test_an_undefined_variable_is_named():
    def run():
        return table_from_a_failed_cell  # noqa: F821

    message = str(_failure("attention_pattern", run=run))
    assert "'table_from_a_failed_cell' is not defined" in message and "Exercise `attention_pattern`" in message


def test_a_failed_last_check_is_reported():
    result = check("attention_pattern", lambda q, k: q)
    assert not result.passed
    message = str(_failure("attention_pattern", run=lambda: attention_pattern(1, 2)))
    assert f"last check in this session failed (0/{PATTERN.points} points): " in message
    assert result.message.splitlines()[0] in message
    assert CHECK_PATTERN in message


def test_a_passed_last_check_says_the_cause_may_be_elsewhere():
    assert check("attention_pattern", PATTERN.reference).passed

    def run():
        assert False, "nothing above the diagonal"

    message = str(_failure("attention_pattern", run=run))
    assert f"last check in this session passed ({PATTERN.points}/{PATTERN.points} points)" in message
    assert "the cause may be elsewhere" in message and "run the cells above this one again" in message


def test_with_several_exercises_only_the_failing_ones_are_to_revisit():
    assert check("attention_pattern", PATTERN.reference).passed

    def run():
        assert False, "the previous-token head copies values forward"

    message = str(_failure("attention_pattern", "attention_output", run=run))
    assert "`attention_pattern`'s last check in this session passed" in message
    assert "`attention_output`'s check has not run in this session yet" in message
    what_to_do = message.splitlines()[-1]
    assert "revisit `attention_output`" in what_to_do and "attention_pattern" not in what_to_do


def test_an_unknown_exercise_is_a_clear_error_at_the_with_line():
    ran = []
    with pytest.raises(ValueError, match="no exercise with id 'attn_pattern'. Did you mean 'attention_pattern'"):
        with uses("attn_pattern"):
            ran.append(True)
    assert not ran
    with pytest.raises(TypeError, match="needs the id"):
        with uses():
            pass


def test_success_passes_through_and_interrupts_are_not_wrapped():
    with uses("attention_pattern"):
        value = 1 + 1
    assert value == 2
    with pytest.raises(KeyboardInterrupt):
        with uses("attention_pattern"):
            raise KeyboardInterrupt


def test_nested_uses_keep_the_inner_message():
    with pytest.raises(RevisitExercise) as info:
        with uses("attention_output"):
            with uses("attention_pattern"):
                attention_pattern(1, 2)
    assert str(info.value).startswith("Exercise `attention_pattern`")
    assert isinstance(info.value.__cause__, NotImplementedError)
