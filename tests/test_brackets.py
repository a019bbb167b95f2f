"""The bracket data of chapter 11, and its cached model."""

import pytest
import torch

from tinyinterp import brackets as B


def test_depth_by_hand():
    tokens = torch.tensor([[B.BOS_ID, B.OPEN, B.OPEN, B.CLOSE, B.OPEN, B.CLOSE, B.CLOSE]])
    assert B.bracket_depth(tokens).tolist() == [[0, 1, 2, 1, 2, 1, 0]]
    assert B.to_string(tokens[0]) == "(()())"


def test_generator_is_seeded_and_stays_in_range():
    a = B.generate_brackets(50, 30, 4, seed=3)
    assert a.shape == (50, 31) and (a[:, 0] == B.BOS_ID).all() and ((a[:, 1:] == B.OPEN) | (a[:, 1:] == B.CLOSE)).all()
    assert torch.equal(a, B.generate_brackets(50, 30, 4, seed=3))
    assert not torch.equal(a, B.generate_brackets(50, 30, 4, seed=4))
    depth = B.bracket_depth(a)
    assert depth.min() == 0 and depth.max() == 4
    before, nxt = depth[:, :-1], a[:, 1:]
    assert not (nxt[before == 0] == B.CLOSE).any()  # never ')' at depth 0
    assert (nxt[before == 4] == B.CLOSE).all()  # always ')' at the maximum depth


def test_generator_follows_the_stated_probabilities():
    tokens = B.generate_brackets(4000, 32, 4, seed=0)
    before, closes = B.bracket_depth(tokens)[:, :-1], tokens[:, 1:] == B.CLOSE
    for d in range(5):
        assert abs(closes[before == d].float().mean() - d / 4) < 0.02


def test_generator_rejects_bad_sizes():
    with pytest.raises(ValueError, match="max_depth"):
        B.generate_brackets(2, 5, 0)
    for kwargs, name in (({"max_depth": 2.5}, "max_depth"), ({"max_depth": 2.0}, "max_depth"),
                         ({"batch": 2.0}, "batch"), ({"batch": True}, "batch"), ({"seq_len": "5"}, "seq_len"),
                         ({"seed": 0.5}, "seed")):
        with pytest.raises(TypeError, match=name):
            B.generate_brackets(**{"batch": 2, "seq_len": 5, "max_depth": 3, **kwargs})


def test_to_string_and_depth_reject_tokens_outside_the_vocabulary():
    for bad in (-1, 5, 3):
        with pytest.raises(ValueError, match="bracket tokens"):
            B.to_string(torch.tensor([B.BOS_ID, B.OPEN, bad]))
        with pytest.raises(ValueError, match="bracket tokens"):
            B.bracket_depth(torch.tensor([[B.BOS_ID, bad]]))
    with pytest.raises(TypeError, match="integer"):
        B.to_string(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="one sequence"):
        B.to_string(torch.tensor([[B.BOS_ID, B.OPEN]]))


def test_ideal_p_close_needs_depths_the_walk_can_reach():
    assert B.ideal_p_close(torch.tensor([0, 2, 4]), 4).tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="0 .. max_depth = 4"):
        B.ideal_p_close(torch.tensor([0, 5]), 4)
    with pytest.raises(ValueError, match="0 .. max_depth"):
        B.ideal_p_close(torch.tensor([-1, 2]), 4)
    with pytest.raises(ValueError, match="max_depth"):
        B.ideal_p_close(torch.tensor([0]), 0)
    with pytest.raises(TypeError, match="max_depth"):
        B.ideal_p_close(torch.tensor([0]), 4.0)


def test_p_close_needs_logits_over_the_bracket_vocabulary():
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 10.0]])
    assert torch.allclose(B.p_close(logits), torch.tensor([1 / 3, 1 / (1 + 2 * torch.exp(torch.tensor(-10.0)))]))
    for shape in ((2, 5), (3, 2), ()):
        with pytest.raises(ValueError, match="bracket vocabulary"):
            B.p_close(torch.zeros(shape))
    with pytest.raises(TypeError, match="floating-point"):
        B.p_close(torch.zeros(2, 3, dtype=torch.long))


def test_cached_model_predicts_the_true_next_bracket_distribution():
    model, history = B.bracket_model(progress=False)
    tokens = B.generate_brackets(200, B.BRACKET_DATA.seq_len, B.BRACKET_DATA.max_depth, seed=99)
    depth = B.bracket_depth(tokens)
    with torch.no_grad():
        p = B.p_close(model(tokens))
    ideal = B.ideal_p_close(depth, B.BRACKET_DATA.max_depth)
    assert (p - ideal).abs().mean() < 0.05
    assert len(history["losses"]) == B.BRACKET_TRAIN.steps
