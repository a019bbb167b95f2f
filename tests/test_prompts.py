"""Clean and corrupted prompt pairs (tinyinterp.prompts): shapes, alignment, and the tokens the metric compares."""

import pytest
import torch

from tinyinterp import prompts
from tinyinterp.data import CharTokenizer

TOK = CharTokenizer.default()


@pytest.mark.parametrize("batch,seq_len,d_vocab,seed", [(4, 5, 20, 0), (1, 2, 5, 3), (8, 10, 57, 1)])
def test_induction_task_shapes_and_the_span_it_corrupts(batch, seq_len, d_vocab, seed):
    task = prompts.induction_task(batch, seq_len, d_vocab, seed)
    assert task.clean.shape == task.corrupted.shape == (batch, 2 * seq_len + 1)
    assert task.clean.dtype == task.corrupted.dtype == torch.long
    assert (task.clean[:, 0] == 0).all() and (task.corrupted[:, 0] == 0).all()  # BOS
    r, r_other = task.clean[:, 1 : seq_len + 1], task.corrupted[:, 1 : seq_len + 1]
    assert torch.equal(task.clean[:, seq_len + 1 :], r) and torch.equal(task.corrupted[:, seq_len + 1 :], r)
    for row, other in zip(r, r_other):  # distinct non-BOS tokens, and the two first copies share none
        assert len(set(row.tolist())) == seq_len and len(set(other.tolist())) == seq_len
        assert not set(row.tolist()) & set(other.tolist()) and 0 not in row and 0 not in other
    # only the first copy differs, and there every position does
    assert (task.clean[:, 1 : seq_len + 1] != task.corrupted[:, 1 : seq_len + 1]).all()
    pos = task.positions
    assert pos.tolist() == list(range(seq_len + 1, 2 * seq_len))
    assert task.answer.shape == task.wrong.shape == (batch, seq_len - 1)
    for i, p in enumerate(pos.tolist()):  # answer: the next token of r; wrong: what r' has in its place
        assert torch.equal(task.answer[:, i], task.clean[:, p + 1])
        assert torch.equal(task.wrong[:, i], r_other[:, p - seq_len])


def test_induction_task_is_deterministic_per_seed():
    a, b, c = (prompts.induction_task(3, 4, 12, s) for s in (5, 5, 6))
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupted, b.corrupted)
    assert not torch.equal(a.clean, c.clean)


@pytest.mark.parametrize("seq_len,d_vocab", [(1, 10), (5, 10), (0, 10)])
def test_induction_task_rejects_impossible_sizes(seq_len, d_vocab):
    with pytest.raises(ValueError, match="seq_len"):
        prompts.induction_task(2, seq_len, d_vocab)


def test_induction_task_metric_is_the_logit_difference_at_its_positions():
    task = prompts.induction_task(2, 3, 9, seed=0)
    logits = torch.zeros(2, 7, 9)
    for b in range(2):
        for i, p in enumerate(task.positions.tolist()):
            logits[b, p, task.answer[b, i]] = 2.0 + b
    assert task.metric(logits).item() == pytest.approx(2.5)


@pytest.mark.parametrize("batch,seed", [(16, 0), (1, 2), (40, 1)])
def test_object_completion_pairs_are_aligned_and_differ_only_in_the_object(batch, seed):
    task = prompts.object_completion_task(batch, seed=seed)
    assert task.clean.shape == task.corrupted.shape and task.clean.shape[0] == batch
    assert task.answer.shape == task.wrong.shape == (batch,) and task.positions is None
    pairs = dict(prompts.OBJECT_PAIRS)
    objects = {o for pair in prompts.OBJECT_PAIRS for o in pair}
    for clean, corrupted, answer, wrong in zip(task.clean, task.corrupted, task.answer, task.wrong):
        assert clean[0] == corrupted[0] == TOK.encode("", prepend_bos=True)[0]  # BOS
        a, b = TOK.decode(clean[1:]), TOK.decode(corrupted[1:])
        # the stories read "... found a <adj> <obj>. Then <name> gave the <first letter>"
        head_a, rest_a = a.split(" found a ")
        head_b, rest_b = b.split(" found a ")
        assert head_a == head_b  # names and place unchanged
        obj_a, tail_a = rest_a.split(".", 1)[0].split(" ")[1], rest_a.split(".", 1)[1]
        obj_b, tail_b = rest_b.split(".", 1)[0].split(" ")[1], rest_b.split(".", 1)[1]
        assert tail_a == tail_b and obj_a in objects and obj_b in objects and obj_a != obj_b
        assert (obj_a, obj_b) in prompts.OBJECT_PAIRS or pairs.get(obj_a) == obj_b
        assert obj_a[0] == obj_b[0] == a[-1] == b[-1]  # same first letter, which ends both prompts
        assert TOK.itos[answer.item()] == obj_a[1] and TOK.itos[wrong.item()] == obj_b[1] and answer != wrong
        # the tokens differ only inside the adjective and object span
        diff = (clean != corrupted).nonzero()[:, 0]
        start = len(head_a) + len(" found a ") + 1  # +1 for BOS
        assert diff.min() >= start and diff.max() < start + len(rest_a.split(".", 1)[0])


def test_object_completion_is_deterministic_and_uses_the_tokenizer():
    a, b = prompts.object_completion_task(5, seed=3), prompts.object_completion_task(5, seed=3)
    assert torch.equal(a.clean, b.clean) and torch.equal(a.answer, b.answer)
    c = prompts.object_completion_task(5, seed=3, tokenizer=TOK)
    assert torch.equal(a.corrupted, c.corrupted)


def test_object_completion_metric_reads_the_last_position():
    task = prompts.object_completion_task(3, seed=0)
    logits = torch.zeros(3, task.clean.shape[1], TOK.vocab_size)
    logits[torch.arange(3), -1, task.answer] = 1.0
    logits[torch.arange(3), 0, task.wrong] = 5.0  # not the last position: ignored
    assert task.metric(logits).item() == pytest.approx(1.0)


@pytest.mark.parametrize("batch", [0, -3, 2.5, True, "4"])
def test_object_completion_rejects_a_batch_that_is_not_a_positive_int(batch):
    with pytest.raises(ValueError, match="batch must be a positive int"):
        prompts.object_completion_task(batch)
    with pytest.raises(ValueError, match="batch must be a positive int"):
        prompts.induction_task(batch, 5, 20)


# ----- bad input: a clear ValueError, never a torch error or a task that scores the wrong tokens ---------------
def _tokens(*shape, dtype=torch.long):
    return torch.arange(int(torch.tensor(shape).prod())).reshape(shape).to(dtype) % 7


@pytest.mark.parametrize("clean,corrupted,match", [
    (_tokens(2, 5), _tokens(2, 6), "same shape"),
    (_tokens(2, 5), _tokens(3, 5), "same shape"),
    (_tokens(2, 5).float(), _tokens(2, 5), "clean must be a non-empty integer tensor"),
    (_tokens(10), _tokens(10), "clean must be"),
    (_tokens(2, 5), [[1, 2, 3, 4, 5]] * 2, "corrupted must be"),
    (_tokens(2, 0), _tokens(2, 0), "non-empty"),
])
def test_patching_task_rejects_token_tensors_that_cannot_be_patched(clean, corrupted, match):
    with pytest.raises(ValueError, match=match):
        prompts.PatchingTask(clean, corrupted, torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long))


@pytest.mark.parametrize("answer,wrong,positions,match", [
    (torch.zeros(3, dtype=torch.long), torch.ones(2, dtype=torch.long), None, r"answer must be .*\[batch\] = \(2,\)"),
    (torch.zeros(2, dtype=torch.long), torch.ones(2, 1, dtype=torch.long), None, "wrong must be"),
    (torch.zeros(2), torch.ones(2, dtype=torch.long), None, "answer must be an integer tensor"),
    ([0, 1], torch.ones(2, dtype=torch.long), None, "answer must be"),
    (torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long), [3], r"\[batch, n_pos\]"),
    (torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 3, dtype=torch.long), [3, 4], r"wrong must be .*\(2, 2\)"),
    (torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long), [5], "positions must be"),
    (torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long), [1.5], "positions must be"),
    (torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long), [[1]], "positions must be"),
    (torch.zeros(2, 0, dtype=torch.long), torch.ones(2, 0, dtype=torch.long), [], "positions must be"),
])
def test_patching_task_rejects_answers_that_do_not_match_the_positions(answer, wrong, positions, match):
    with pytest.raises(ValueError, match=match):
        prompts.PatchingTask(_tokens(2, 5), _tokens(2, 5), answer, wrong, positions)


def test_patching_task_accepts_positions_as_a_list_and_narrow_ints_and_scores_the_same():
    a = prompts.PatchingTask(_tokens(2, 5, dtype=torch.int32), _tokens(2, 5), torch.tensor([[1, 2], [3, 4]]),
                             torch.tensor([[0, 0], [5, 6]], dtype=torch.int32), [1, -1])
    b = prompts.PatchingTask(_tokens(2, 5), _tokens(2, 5), torch.tensor([[1, 2], [3, 4]]),
                             torch.tensor([[0, 0], [5, 6]]), torch.tensor([1, 4]))
    assert a.positions.dtype == a.wrong.dtype == torch.long
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    assert a.metric(logits).item() == pytest.approx(b.metric(logits).item())


@pytest.mark.parametrize("kwargs,name", [({"seq_len": 3.5}, "seq_len"), ({"seq_len": "4"}, "seq_len"),
                                         ({"d_vocab": 20.0}, "d_vocab"), ({"seed": 1.5}, "seed"),
                                         ({"seq_len": True}, "seq_len")])
def test_induction_task_rejects_sizes_and_seeds_that_are_not_ints(kwargs, name):
    with pytest.raises(ValueError, match=f"{name} must be an int"):
        prompts.induction_task(**{"batch": 2, "seq_len": 4, "d_vocab": 20, **kwargs})


def test_object_completion_rejects_a_seed_that_is_not_an_int():
    with pytest.raises(ValueError, match="seed must be an int"):
        prompts.object_completion_task(2, seed="a")
