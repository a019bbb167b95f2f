import random

import pytest
import torch

from tinyinterp import HookedTransformer, TrainConfig, sample, train
from tinyinterp.checkpoint import cached_model, code_version, load_checkpoint, save_checkpoint
from tinyinterp.data import CharTokenizer, corpus_dataset, generate_corpus, generate_story, load_text, make_windows
from tinyinterp.functional import bigram_log_probs, cross_entropy_loss

from conftest import small_config


def test_corpus_is_seeded_fast_and_reuses_names():
    import time

    t = time.perf_counter()
    a = generate_corpus(2000, seed=1)
    assert time.perf_counter() - t < 1.0
    assert a == generate_corpus(2000, seed=1) != generate_corpus(2000, seed=2)
    story = generate_story(random.Random(0))
    first_name = story.split()[0]
    assert story.count(first_name) >= 2 or story.split()[2] in story[story.index(".") :]


def test_tokenizer_round_trip_and_errors():
    tok = CharTokenizer.default()
    text = generate_corpus(50, seed=3)
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("Ada", prepend_bos=True)[0] == 0
    assert tok.to_str_tokens(tok.encode(" \n", prepend_bos=True)) == ["<bos>", "␣", "\\n"]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("Zoë")


def test_local_text_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("hello world, hello again. " * 20)
    text = load_text(p)
    tok = CharTokenizer.from_text(text)
    windows = make_windows(tok.encode(text), 16)
    assert windows.shape[1] == 16 and (windows[:, 0] == 0).all()
    with pytest.raises(FileNotFoundError):
        load_text(tmp_path / "missing.txt")


def test_loss_falls_on_the_corpus_and_beats_bigram():
    data, tok = corpus_dataset(seq_len=64, n_stories=600, seed=0)
    cfg = small_config(d_vocab=tok.vocab_size, n_ctx=64, d_model=48, n_heads=4, d_head=12, d_mlp=96)
    model = HookedTransformer(cfg)
    result = train(model, data, TrainConfig(steps=150, batch_size=16, lr=3e-3), progress=False)
    assert len(result.losses) == 150
    start, end = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert end < start - 1.0
    held, _ = corpus_dataset(seq_len=64, n_stories=100, seed=99)
    bigram = bigram_log_probs(data, tok.vocab_size)
    bigram_loss = -bigram[held[:, :-1], held[:, 1:]].mean()
    with torch.no_grad():
        model_loss = cross_entropy_loss(model(held), held)
    assert model_loss < bigram_loss


def test_training_is_deterministic():
    data, tok = corpus_dataset(seq_len=32, n_stories=100, seed=0)
    cfg = small_config(d_vocab=tok.vocab_size, n_ctx=32)
    runs = [train(HookedTransformer(cfg), data, TrainConfig(steps=5, batch_size=4), progress=False).losses
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_sampling(small_model):
    prompt = torch.tensor([0, 3, 4])
    a = sample(small_model, prompt, 10, temperature=1.0, top_k=3, seed=1)
    assert a.shape == (13,) and torch.equal(a[:3], prompt)
    assert torch.equal(a, sample(small_model, prompt, 10, temperature=1.0, top_k=3, seed=1))
    greedy = sample(small_model, prompt, 5, temperature=0)
    logits = small_model(prompt.unsqueeze(0))[0, -1]
    assert greedy[3] == logits.argmax()
    top1 = sample(small_model, prompt, 5, temperature=1.0, top_k=1, seed=7)
    assert torch.equal(top1, greedy)
    with pytest.raises(ValueError):
        sample(small_model, prompt, 1, temperature=-1)


def test_checkpoint_round_trip_is_weights_only(tmp_path, small_model):
    path = tmp_path / "m.pt"
    save_checkpoint(small_model, path, {"losses": [1.0, 0.5]})
    model, extra = load_checkpoint(path)
    assert extra == {"losses": [1.0, 0.5]}
    assert model.cfg == small_model.cfg
    x = torch.randint(0, 13, (1, 5))
    with torch.no_grad():
        assert torch.equal(model(x), small_model(x))
    # a checkpoint that smuggles code is refused by the weights_only loader
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"config": {}, "state_dict": {}, "extra": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception):
        load_checkpoint(tmp_path / "evil.pt")


def test_cached_model_trains_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYINTERP_CACHE", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        return HookedTransformer(small_config()), {"n": 1}

    m1, e1 = cached_model("demo", {"a": 1}, build)
    m2, e2 = cached_model("demo", {"a": 1}, build)
    assert len(calls) == 1 and e2 == {"n": 1}
    assert torch.equal(m1.W_E, m2.W_E)
    cached_model("demo", {"a": 2}, build)  # another spec: another key
    assert len(calls) == 2
    assert len(code_version()) == 12
    # a corrupted cache file is rebuilt, not crashed on
    for f in tmp_path.glob("demo-*.pt"):
        f.write_bytes(b"garbage")
    cached_model("demo", {"a": 1}, build)
    assert len(calls) == 3
