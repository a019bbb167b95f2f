"""The seed offset ($TINYINTERP_SEED_OFFSET): it moves every trained model and its cache key, and
nothing else (exercise cases and reference answers stay put)."""

import dataclasses

import pytest
import torch

from tinyinterp.harness.bound import BoundFunction
from torch import nn

from tinyinterp import HookedTransformer, TrainConfig, train
from tinyinterp import circuits, induction, models, sae_lm
from tinyinterp.checkpoint import cache_key
from tinyinterp.data import corpus_dataset
from tinyinterp.harness import all_exercises
from tinyinterp.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, train_sae
from tinyinterp.seeds import SEED_OFFSET_VAR, seed_offset, training_seed, with_training_seed
from tinyinterp.superposition import ToyModel, train_toy_model
from tinyinterp.toy_features import TOY_SAE, TOY_TRAIN, toy_experiment

from conftest import small_config

EXERCISES = all_exercises()


@pytest.fixture
def offset(monkeypatch):
    """``offset(k)`` sets $TINYINTERP_SEED_OFFSET to ``k`` (None: unset) for the rest of the test."""
    def set_offset(k):
        if k is None:
            monkeypatch.delenv(SEED_OFFSET_VAR, raising=False)
        else:
            monkeypatch.setenv(SEED_OFFSET_VAR, str(k))
    return set_offset


def test_offset_defaults_to_zero_and_moves_seeds(offset):
    offset(None)
    assert seed_offset() == 0 and training_seed(7) == 7
    offset("")
    assert seed_offset() == 0
    offset(" 2 ")
    assert seed_offset() == 2 and training_seed(7) != 7
    shifted = {training_seed(s) for s in range(100)}
    offset(0)
    assert shifted.isdisjoint(range(100))  # offset 2 never reuses a seed of offset 0
    offset(-1)
    assert training_seed(0) >= 0  # torch.Generator refuses negative seeds
    torch.Generator().manual_seed(training_seed(0))


@pytest.mark.parametrize("bad", ["one", "1.5", "0x2", "1e3", "2 3"])
def test_invalid_offset_is_a_clear_error(offset, bad):
    offset(bad)
    with pytest.raises(ValueError, match=f"{SEED_OFFSET_VAR} must be an integer.*{bad!r}"):
        seed_offset()
    with pytest.raises(ValueError, match=SEED_OFFSET_VAR):  # and so does everything that trains
        SparseAutoencoder(SAEConfig(d_in=4, d_sae=8))


def test_offset_is_part_of_the_cache_key(offset):
    offset(None)
    key0 = cache_key("demo", {"a": 1})
    offset(0)
    assert cache_key("demo", {"a": 1}) == key0
    offset(1)
    key1 = cache_key("demo", {"a": 1})
    offset(2)
    assert len({key0, key1, cache_key("demo", {"a": 1})}) == 3


# ----- every way the book trains something moves with the offset ------------------------------------
def _tiny_lm():
    data, tok = corpus_dataset(seq_len=16, n_stories=40, seed=0)
    model = HookedTransformer(with_training_seed(small_config(d_vocab=tok.vocab_size, n_ctx=16)))
    train(model, data, TrainConfig(steps=3, batch_size=4), progress=False)
    return model


def _sae():
    acts = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    sae = SparseAutoencoder(SAEConfig(d_in=6, d_sae=12, l1_coeff=0.1))
    train_sae(sae, acts, SAETrainConfig(steps=4, batch_size=16, resample_every=2, dead_window=1), progress=False)
    return sae


def _toy_model():
    model = ToyModel(5, 2, torch.tensor([0.1, 0.5]))
    train_toy_model(model, steps=3, batch_size=8)
    return model


def _toy_sae():
    return toy_experiment(train_cfg=dataclasses.replace(TOY_TRAIN, steps=3), n_samples=300)[0]


_train_induction_model = induction.train_induction_model


def _induction():
    data = induction.InductionData(n_repeat_sequences=40)
    model_cfg = induction.INDUCTION_MODEL
    cfg = induction.InductionTraining(steps=3, batch_size=4, short_len=8, grow_from=1, grow_until=2, decay_from=2,
                                      warmup_steps=1)
    return _train_induction_model(model_cfg, data, cfg, log_every=10, progress=False)[0]


def _shrink_book_models(monkeypatch, tmp_path):
    """The cached book models, shrunk to a few steps and cached in ``tmp_path``."""
    monkeypatch.setenv("TINYINTERP_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "PART1_TRAIN", dataclasses.replace(models.PART1_TRAIN, steps=2, batch_size=2))
    monkeypatch.setattr(models, "PART1_DATA", {**models.PART1_DATA, "n_stories": 30})
    monkeypatch.setattr(circuits, "ATTN_ONLY_1L_TRAIN", {**circuits.ATTN_ONLY_1L_TRAIN, "steps": 2, "batch_size": 2})
    monkeypatch.setattr(circuits, "ATTN_ONLY_1L_DATA", {**circuits.ATTN_ONLY_1L_DATA, "n_stories": 30})
    monkeypatch.setattr(sae_lm, "LM_SAE_DATA", {**sae_lm.LM_SAE_DATA, "n_windows": 2})
    monkeypatch.setattr(sae_lm, "LM_SAE_TRAIN", dataclasses.replace(sae_lm.LM_SAE_TRAIN, steps=2, batch_size=8))
    monkeypatch.setattr(induction, "train_induction_model", lambda progress: (_induction(), {"steps": 3}))


BOOK_TRAINERS = {
    "train": _tiny_lm, "train_sae": _sae, "train_toy_model": _toy_model, "toy_experiment": _toy_sae,
    "train_induction_model": _induction,
    "part1_model": lambda: models.part1_model(progress=False)[0],
    "one_layer_attn_only_model": lambda: circuits.one_layer_attn_only_model(progress=False)[0],
    "induction_model": lambda: induction.induction_model(progress=False)[0],
    "lm_sae": lambda: sae_lm.lm_sae(progress=False)[0],
    "lm_sae_topk": lambda: sae_lm.lm_sae(topk=True, progress=False)[0],
}
CACHED = {"part1_model", "one_layer_attn_only_model", "induction_model", "lm_sae", "lm_sae_topk"}


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", BOOK_TRAINERS)
def test_offset_moves_every_trained_model(name, offset, monkeypatch, tmp_path):
    _shrink_book_models(monkeypatch, tmp_path)
    trained = {}
    for k in (None, 0, 1, 2):
        offset(k)
        trained[k] = _weights(BOOK_TRAINERS[name]())
    same = lambda a, b: all(torch.equal(a[n], b[n]) for n in a)  # noqa: E731
    assert same(trained[None], trained[0])  # offset 0 is the book as it always was
    assert not same(trained[0], trained[1]) and not same(trained[1], trained[2]) and not same(trained[0], trained[2])
    offset(1)
    assert same(_weights(BOOK_TRAINERS[name]()), trained[1])  # each offset is itself deterministic
    if name in CACHED:  # one cache file per offset (None and 0 share one)
        assert len(list(tmp_path.glob("*.pt"))) == (3 if name != "lm_sae" and name != "lm_sae_topk" else 6)


# ----- ... and the exercises do not ------------------------------------------------------------------
def _frozen(value):
    """A comparable snapshot of a case argument or a reference answer."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, tuple(value.shape), value.detach().contiguous().numpy().tobytes())
    if isinstance(value, nn.Module):
        return ("module", type(value).__name__, _frozen(dict(value.state_dict())))
    if isinstance(value, BoundFunction):
        return ("bound function", value.path, _frozen(value.bound))
    if isinstance(value, torch.Generator):
        return ("generator", _frozen(value.get_state()))
    if isinstance(value, dict) or hasattr(value, "items"):  # dicts and ActivationCache
        return (type(value).__name__, tuple((k, _frozen(v)) for k, v in sorted(value.items())))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, _frozen(dataclasses.asdict(value)))
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype)):
        return value
    raise TypeError(f"no way to compare a {type(value).__name__} yet: teach _frozen about it")


def _cases_and_answers(ex) -> list:
    out = []
    for case in [*ex.public_cases(), *ex.hidden_cases(seed=3)]:
        before = _frozen(case.kwargs)
        out.append((case.name, before))
    for case in ex.public_cases():
        with torch.no_grad():
            out.append((case.name, "answer", _frozen(ex.reference(**case.kwargs))))
    return out


@pytest.mark.parametrize("ex_id", EXERCISES)
def test_offset_leaves_exercise_cases_and_answers_alone(ex_id, offset):
    ex = EXERCISES[ex_id]
    offset(None)
    expected = _cases_and_answers(ex)
    for k in (1, 2):
        offset(k)
        assert _cases_and_answers(ex) == expected, f"{ex_id}: its cases or answers moved with {SEED_OFFSET_VAR}={k}"
